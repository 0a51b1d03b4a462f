//! NATS connection and the per-pipeline stream.

use crate::config::{NatsConfig, PipelineConfig};
use crate::error::{Classify, Retry};
use crate::subject;
use async_nats::jetstream::{self, stream};
use std::time::Duration;

/// Errors talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// Could not connect or authenticate.
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect {
        /// Server URL (no secrets).
        url: String,
        /// Cause.
        message: String,
    },
    /// A credentials / key file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    File {
        /// Which setting.
        what: &'static str,
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// JetStream is not enabled or the stream cannot be created.
    #[error("JetStream stream {stream}: {message}")]
    Stream {
        /// Stream name.
        stream: String,
        /// Cause.
        message: String,
    },
}

impl NatsError {
    /// Whether the server's TLS certificate was refused (untrusted CA, wrong name, expired):
    /// no retry fixes that until someone changes the CA file or the server's certificate.
    fn certificate_refused(&self) -> bool {
        matches!(self, NatsError::Connect { message, .. } if message.contains("invalid peer certificate"))
    }
}

impl Classify for NatsError {
    fn retry(&self) -> Retry {
        match self {
            _ if self.certificate_refused() => Retry::Definite,
            NatsError::Connect { .. } | NatsError::Stream { .. } => Retry::Transient,
            NatsError::File { .. } => Retry::Definite,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            _ if self.certificate_refused() => "tls",
            NatsError::Connect { .. } => "connect",
            NatsError::File { .. } => "config",
            NatsError::Stream { .. } => "stream",
        }
    }
}

/// Connects with the configured auth and TLS. `name` shows up in the server's connection list.
pub async fn connect(cfg: &NatsConfig, name: &str) -> Result<async_nats::Client, NatsError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .ping_interval(Duration::from_secs(cfg.ping_interval_secs.max(1)))
        .require_tls(cfg.tls_required || cfg.url.starts_with("tls://"));
    if let (Some(user), Some(pass)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(user.clone(), pass.clone());
    }
    if let Some(token) = &cfg.token {
        opts = opts.token(token.clone());
    }
    if let Some(path) = &cfg.nkey_file {
        let seed = std::fs::read_to_string(path).map_err(|source| NatsError::File {
            what: "nats.nkey_file",
            path: path.clone(),
            source,
        })?;
        opts = opts.nkey(seed.trim().to_owned());
    }
    if let Some(path) = &cfg.credentials_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|source| NatsError::File {
                what: "nats.credentials_file",
                path: path.clone(),
                source,
            })?;
    }
    // async-nats reads the TLS files only while connecting and then reports a bare
    // "No such file or directory" (a transient connect error); check them first so a wrong
    // path is a definite configuration error that names the setting and the file.
    let readable = |what: &'static str, path: &String| {
        std::fs::File::open(path)
            .map(drop)
            .map_err(|source| NatsError::File {
                what,
                path: path.clone(),
                source,
            })
    };
    if let Some(ca) = &cfg.tls_ca_file {
        readable("nats.tls_ca_file", ca)?;
        opts = opts.add_root_certificates(ca.into());
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
        readable("nats.tls_cert_file", cert)?;
        readable("nats.tls_key_file", key)?;
        opts = opts.add_client_certificate(cert.into(), key.into());
    }
    // Split the comma-separated list here: the client parses a single string as one URL.
    let servers = cfg.server_addrs().map_err(|message| NatsError::Connect {
        url: crate::redact::url(&cfg.url),
        message,
    })?;
    opts.connect(servers).await.map_err(|e| NatsError::Connect {
        url: crate::redact::url(&cfg.url),
        message: e.to_string(),
    })
}

/// The JetStream stream configuration of a pipeline.
pub fn stream_config(p: &PipelineConfig, nats: &NatsConfig) -> stream::Config {
    stream::Config {
        name: p.stream_name(),
        subjects: vec![subject::pipeline_wildcard(&p.subject_prefix, &p.name)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: Duration::from_secs(nats.duplicate_window_secs.max(120)),
        max_age: Duration::from_secs(nats.max_age_secs),
        num_replicas: nats.replicas.max(1),
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

/// Creates the pipeline's stream, or updates its settings if it exists.
pub async fn ensure_stream(
    js: &jetstream::Context,
    p: &PipelineConfig,
    nats: &NatsConfig,
) -> Result<stream::Stream, NatsError> {
    let cfg = stream_config(p, nats);
    let name = cfg.name.clone();
    let err = |message: String| NatsError::Stream {
        stream: name.clone(),
        message,
    };
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(|e| err(e.to_string()))?;
            let current = &info.config;
            if current.subjects != cfg.subjects
                || current.duplicate_window != cfg.duplicate_window
                || current.max_age != cfg.max_age
            {
                let mut updated = current.clone();
                updated.subjects = cfg.subjects.clone();
                updated.duplicate_window = cfg.duplicate_window;
                updated.max_age = cfg.max_age;
                js.update_stream(updated)
                    .await
                    .map_err(|e| err(e.to_string()))?;
            }
            Ok(existing)
        }
        Err(_) => js.create_stream(cfg.clone()).await.map_err(|e| {
            err(format!(
                "{e} (is JetStream enabled on the server? start nats-server with -js)"
            ))
        }),
    }
}
