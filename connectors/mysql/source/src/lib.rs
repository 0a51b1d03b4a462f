//! MySQL / MariaDB source: the row binlog as canonical envelopes on JetStream.
//!
//! ```text
//!  run ─▶ preflight (check.rs) ─▶ checkpoint? ─no─▶ snapshot.rs (consistent read view + position)
//!                                     │ yes                    │
//!                                     ▼                        ▼
//!                        stream.rs: binlog from (GTID, file/pos) ─▶ binlog.rs events
//!                                     │                              convert.rs rows
//!                                     ▼
//!                        outbox: envelopes + a checkpoint token per transaction
//!                                     │ acked by JetStream
//!                                     ▼
//!                        checkpoint.rs: KV compare-and-set, ≤ 1/s and at shutdown
//! ```
//!
//! Module map: `client` (connections, server facts, information_schema),
//! `binlog` (event decoding), `convert` (column plans, values), `charset`,
//! `gtid`, `ddl` (what a QUERY event means), `snapshot`, `stream`,
//! `checkpoint`, `check` (preflight), `status`.
//!
//! Reconnects are the supervisor's: any transient error returns from
//! [`MysqlSource::run`]; the next call resumes from the durable checkpoint,
//! re-reading at most the transactions after it (same envelope ids, so
//! JetStream deduplicates them).

mod binlog;
mod bytes;
mod charset;
mod check;
mod checkpoint;
mod client;
mod convert;
mod ddl;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod gtid;
mod runtime;
mod snapshot;
mod status;
mod stream;

pub use check::check;
pub use checkpoint::MysqlCheckpoint;
pub use error::SourceError;
pub use status::status;

/// Parses a source URL exactly as the source will, without connecting: `check --offline`.
pub fn validate_url(url: &str) -> Result<(), SourceError> {
    client::ConnSpec::parse(url).map(drop)
}

use checkpoint::Persister;
use runtime::{Runtime, Settings};
use tidemark_core::config::SnapshotMode;
use tidemark_core::error::Failure;
use tidemark_core::source::{Source, SourceContext};

/// The MySQL / MariaDB source connector.
#[derive(Debug, Clone, Copy, Default)]
pub struct MysqlSource;

impl Source for MysqlSource {
    type Checkpoint = MysqlCheckpoint;

    async fn run(ctx: SourceContext<MysqlCheckpoint>) -> Result<(), Failure> {
        let result = run(&ctx).await;
        if let Err(e) = &result {
            let component = format!("{}/source", ctx.pipeline.name);
            ctx.health.not_ready(&component, e.to_string());
        }
        result.map_err(Failure::from_err)
    }
}

async fn run(ctx: &SourceContext<MysqlCheckpoint>) -> Result<(), SourceError> {
    let settings = Settings::from_pipeline(&ctx.pipeline)?;
    let component = settings.component();
    ctx.health.not_ready(&component, "connecting");
    let mut rt = Runtime::connect(settings, ctx.naming.clone()).await?;
    let probes = check::evaluate_settings(rt.flavour(), &rt.server.vars, rt.settings.server_id);
    if let Some(problems) = check::problems(&probes) {
        return Err(SourceError::Preflight { problems });
    }
    let key = tidemark_core::state::source_key(&rt.settings.pipeline);
    let (stored, mut persister) = Persister::load(&ctx.state, &key).await?;
    // A stored checkpoint without snapshot_done marks a snapshot that was interrupted.
    let replaces_unfinished = stored.as_ref().is_some_and(|c| !c.snapshot_done);
    let start = match stored {
        Some(c) if c.snapshot_done => {
            verify_identity(&rt, &c, &key)?;
            tracing::info!(pipeline = %rt.settings.pipeline, position = %c.describe(), "resuming from checkpoint");
            c
        }
        _ if rt.settings.snapshot == SnapshotMode::Initial => {
            ctx.health.not_ready(&component, "initial snapshot running");
            let start = tokio::select! {
                r = snapshot::run(&mut rt, ctx, &mut persister, replaces_unfinished) => r?,
                _ = ctx.shutdown.cancelled() => {
                    tracing::info!(pipeline = %rt.settings.pipeline, "shutdown during the snapshot; it restarts next time");
                    return Ok(());
                }
            };
            let c = start.checkpoint(&rt, 0);
            ctx.outbox.checkpoint(c.clone()).await?;
            ctx.outbox.flush().await?;
            persister.save(&ctx.state, &c).await?;
            c
        }
        _ => {
            let start = snapshot::current_position(&mut rt).await?;
            let c = start.checkpoint(&rt, 0);
            persister.save(&ctx.state, &c).await?;
            tracing::info!(pipeline = %rt.settings.pipeline, position = %c.describe(), "no snapshot wanted; streaming from the current position");
            c
        }
    };
    if ctx.shutdown.is_cancelled() {
        return Ok(());
    }
    let streamer = stream::Streamer::new(&mut rt, &start, ctx.state.bucket())?;
    streamer.run(ctx, &mut persister).await
}

/// A checkpoint of another server or flavour is only usable by GTID (MariaDB domains are global).
fn verify_identity(rt: &Runtime, c: &MysqlCheckpoint, key: &str) -> Result<(), SourceError> {
    if let Some(f) = c.flavour {
        if f != rt.flavour() {
            return Err(SourceError::Config {
                message: format!(
                    "the checkpoint ({key}) belongs to a {f:?} server but the source is {:?}; delete the checkpoint to re-snapshot",
                    rt.flavour()
                ),
            });
        }
    }
    let server_id = rt.server.server_id();
    if c.server_id.is_some_and(|id| id != server_id) {
        if c.gtid_state.is_empty() {
            return Err(SourceError::Config {
                message: format!(
                    "the checkpoint ({key}) holds a file/pos of server_id {:?}, but the source server is {server_id}; a binlog position does not carry over between servers: delete the checkpoint to re-snapshot",
                    c.server_id
                ),
            });
        }
        tracing::warn!(pipeline = %rt.settings.pipeline, stored = ?c.server_id, server_id, "server changed since the checkpoint; resuming by GTID");
    }
    Ok(())
}
