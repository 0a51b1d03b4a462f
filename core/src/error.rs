//! Retry classes shared by every component.
//!
//! Each module has its own error enum; each enum answers one question here:
//! is this worth retrying (a server restarted, a network blip) or is it
//! definite (bad credentials, a missing table, a value the target rejects)
//! and must reach the user? The supervisor decides what to do in one place.

/// How a failure should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Transient: reconnect with backoff and resume from the durable position.
    Transient,
    /// Definite: retrying will not help until someone changes something. The daemon keeps
    /// retrying slowly (a human may fix it) but reports it loudly and stays not-ready.
    Definite,
}

/// Errors that know their retry class and a short metric label.
pub trait Classify {
    /// Transient or definite.
    fn retry(&self) -> Retry;
    /// A short, low-cardinality label for `tidemark_errors_total{kind}`.
    fn kind(&self) -> &'static str;
}

/// A boxed error with a retry class, for crossing component boundaries.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// Transient or definite.
    pub retry: Retry,
    /// Metric label.
    pub kind: &'static str,
    /// What happened, with context; never contains secrets.
    pub message: String,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Failure {
    /// A transient failure.
    pub fn transient(kind: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            retry: Retry::Transient,
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A definite failure.
    pub fn definite(kind: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            retry: Retry::Definite,
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Wraps a classified error.
    pub fn from_err<E: Classify + std::error::Error + Send + Sync + 'static>(e: E) -> Failure {
        Failure {
            retry: e.retry(),
            kind: e.kind(),
            message: display_chain(&e),
            source: Some(Box::new(e)),
        }
    }
}

impl Classify for Failure {
    fn retry(&self) -> Retry {
        self.retry
    }
    fn kind(&self) -> &'static str {
        self.kind
    }
}

/// `error: cause: cause` — the whole chain on one line.
pub fn display_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}
