//! The one place that knows every connector: maps a configured kind to its
//! probes and status readers (the supervisor maps kinds to sources and
//! sinks). Adding a connector means adding arms here and in the supervisor.

use tidemark_core::check::{Probe, SinkStatus, SourceStatus};
use tidemark_core::config::{PipelineConfig, SinkConfig, SinkKind, SourceKind};
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
