//! Results of `tidemark check` probes, shared by every connector.

/// One prerequisite checked against a live server.
#[derive(Debug, Clone)]
pub struct Probe {
    /// What was checked, e.g. `postgres wal_level`.
    pub what: String,
    /// Whether it is satisfied.
    pub ok: bool,
    /// What was found (never contains secrets).
    pub detail: String,
    /// How to fix it, when not ok: a statement or setting the user can apply.
    pub fix: Option<String>,
}

impl Probe {
    /// A satisfied prerequisite.
    pub fn ok(what: impl Into<String>, detail: impl Into<String>) -> Probe {
        Probe {
            what: what.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A failed prerequisite with its fix.
    pub fn fail(
        what: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Probe {
        Probe {
            what: what.into(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// What `tidemark status` shows about a source, read from its server and the state store.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SourceStatus {
    /// Durable position (checkpoint), in the source's notation.
    pub position: Option<String>,
    /// Seconds between the newest change on the server and the durable position, when known.
    pub lag_seconds: Option<f64>,
    /// WAL / binlog bytes the server retains for this pipeline.
    pub retained_bytes: Option<u64>,
    /// Extra facts worth showing (slot active, snapshot state …).
    pub detail: String,
}

/// What `tidemark status` shows about a sink, read from its store.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SinkStatus {
    /// Highest `source.pos` committed in the target.
    pub applied_pos: Option<String>,
    /// JetStream stream sequence of the last committed message.
    pub applied_stream_seq: Option<u64>,
    /// When it was committed (target clock), as text.
    pub applied_at: Option<String>,
}
