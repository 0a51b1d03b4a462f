//! The one place that knows every connector: maps a configured kind to its
//! probes and status readers (the supervisor maps kinds to sources and
//! sinks). Adding a connector means adding arms here and in the supervisor.

use tidemark_core::check::{Probe, SinkStatus, SourceStatus};
use tidemark_core::config::{
    url_secrets, Config, PipelineConfig, SinkConfig, SinkKind, SourceKind, ValidationError,
};
use tidemark_core::error::Failure;
use tidemark_core::state::StateStore;

/// Probes a pipeline's source prerequisites.
pub async fn check_source(p: &PipelineConfig) -> Vec<Probe> {
    match p.source.kind {
        SourceKind::Postgres => tidemark_postgres_source::check::check(p).await,
        SourceKind::Mysql => tidemark_mysql_source::check(p).await,
    }
}

/// Probes a sink's prerequisites.
pub async fn check_sink(s: &SinkConfig, p: &PipelineConfig) -> Vec<Probe> {
    match s.kind {
        SinkKind::Postgres => tidemark_postgres_sink::check(s, p).await,
        SinkKind::Mysql => tidemark_mysql_sink::check(s, p).await,
    }
}

/// Reads a source's durable position and server-side retention.
pub async fn source_status(
    p: &PipelineConfig,
    state: &StateStore,
) -> Result<SourceStatus, Failure> {
    match p.source.kind {
        SourceKind::Postgres => tidemark_postgres_source::status::status(p, state).await,
        SourceKind::Mysql => tidemark_mysql_source::status(p, state).await,
    }
}

/// Reads a sink's applied position from its store.
pub async fn sink_status(s: &SinkConfig, pipeline: &str) -> Result<SinkStatus, Failure> {
    match s.kind {
        SinkKind::Postgres => tidemark_postgres_sink::status(s, pipeline).await,
        SinkKind::Mysql => tidemark_mysql_sink::status(s, pipeline).await,
    }
}

/// Parses every source and sink URL with the parser its connector uses at run time (no I/O),
/// so a URL that could never connect is a configuration error, not a retry loop. The error
/// names the key path and never holds the URL's password.
pub fn validate_urls(config: &Config) -> Result<(), ValidationError> {
    for (i, p) in config.pipelines.iter().enumerate() {
        if let Err((key, message)) = source_settings(p) {
            return Err(url_error(
                format!("pipelines[{i}].source.{key}"),
                &p.source.url,
                &message,
            ));
        }
        for (j, s) in p.sinks.iter().enumerate() {
            let sink = match s.kind {
                SinkKind::Postgres => {
                    tidemark_postgres_sink::validate_url(&s.url).map_err(|e| e.to_string())
                }
                SinkKind::Mysql => {
                    tidemark_mysql_sink::validate_url(&s.url).map_err(|e| e.to_string())
                }
            };
            if let Err(message) = sink {
                return Err(url_error(
                    format!("pipelines[{i}].sinks[{j}].url"),
                    &s.url,
                    &message,
                ));
            }
        }
    }
    Ok(())
}

/// Derives the source's connection settings as the source will; on error the key at fault
/// (`url`, or the slot / publication name) and the message.
fn source_settings(p: &PipelineConfig) -> Result<(), (&'static str, String)> {
    use tidemark_postgres_source::config::{ConfigError, PgSettings};
    match p.source.kind {
        SourceKind::Postgres => match PgSettings::from_pipeline(p) {
            Ok(_) => Ok(()),
            Err(e @ ConfigError::Name { what, .. }) => Err((what, e.to_string())),
            Err(e) => Err(("url", e.to_string())),
        },
        SourceKind::Mysql => {
            tidemark_mysql_source::validate_url(&p.source.url).map_err(|e| ("url", e.to_string()))
        }
    }
}

/// A URL error with every secret of `url` scrubbed from the parser's message.
fn url_error(path: String, url: &str, message: &str) -> ValidationError {
    let secrets = url_secrets(url);
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    ValidationError {
        path,
        message: tidemark_core::redact::scrub(message, &secrets),
    }
}
