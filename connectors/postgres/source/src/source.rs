//! [`PostgresSource`]: the core `Source` implementation, from connect to stream.
//!
//! ```text
//!  run(ctx):
//!    settings ─▶ SQL conn + replication conn ─▶ IDENTIFY_SYSTEM ─▶ load KV checkpoint
//!    publication in step with the table globs
//!    checkpoint.snapshot_done?
//!      yes ─▶ slot must exist ─▶ stream from checkpoint.lsn
//!      no  ─▶ drop a leftover slot ─▶ CREATE_REPLICATION_SLOT (EXPORT_SNAPSHOT)
//!             ─▶ import the snapshot on N readers ─▶ checkpoint {done: false}
//!             ─▶ snapshot ─▶ outbox.flush() ─▶ checkpoint {done: true} ─▶ stream from consistent point
//! ```
//!
//! `run` keeps nothing between calls: every call starts again from the KV
//! checkpoint, so the supervisor's answer to any error (wait, call `run` again)
//! is also the reconnect logic. The checkpoint is the source of truth for where
//! the *pipeline* is (the slot's `confirmed_flush_lsn` may be ahead of it
//! after an idle-slot advance, which is harmless: the server moves a lower
//! start position up to it).

use crate::catalog::{self, PublicationChange, SlotInfo};
use crate::client::{sql_connect, CreatedSlot, ReplicationClient, SystemInfo};
use crate::config::{PgSettings, SLOT_CREATE_TIMEOUT};
use crate::pgoutput::{format_lsn, parse_lsn};
use crate::snapshot::{self, Outcome};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_core::config::SnapshotMode;
use tidemark_core::error::{Classify, Failure, Retry};
use tidemark_core::source::{Source, SourceContext};
use tidemark_core::state::{source_key, StateError, StateStore};
use tidemark_core::CancellationToken;

/// The Postgres source connector. The checkpoint token is a commit's end LSN.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresSource;

impl Source for PostgresSource {
    type Checkpoint = u64;

    fn run(
        ctx: SourceContext<u64>,
    ) -> impl std::future::Future<Output = Result<(), Failure>> + Send {
        run(ctx)
    }
}

/// What the source keeps in the KV bucket under `source.<pipeline>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCheckpoint {
    /// `IDENTIFY_SYSTEM` system id of the server the position belongs to.
    pub system_id: String,
    /// Timeline at the last start.
    pub timeline: u32,
    /// Replication slot name.
    pub slot: String,
    /// Everything up to this LSN (`X/Y`, a commit's end) is in JetStream.
    pub lsn: String,
    /// The initial snapshot finished (or was not wanted).
    pub snapshot_done: bool,
}

impl SourceCheckpoint {
    /// The LSN as a number.
    pub fn lsn_value(&self) -> Option<u64> {
        parse_lsn(&self.lsn)
    }
}

/// Errors decided by the source itself.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The stored position belongs to another server.
    #[error("the stored checkpoint of pipeline {pipeline:?} belongs to postgres system {stored}, but {url} is \
             system {actual}: its LSN means nothing here. If the server was replaced on purpose, reset the \
             pipeline (delete key {key:?} from the KV bucket) to take a new snapshot")]
    OtherSystem {
        /// Pipeline.
        pipeline: String,
        /// Stored system id.
        stored: String,
        /// The server's system id.
        actual: String,
        /// URL (redacted).
        url: String,
        /// KV key.
        key: String,
    },
    /// The checkpoint names another slot than the configuration.
    #[error("the stored checkpoint of pipeline {pipeline:?} belongs to slot {stored:?}, but the configuration \
             says {configured:?}; restore the slot setting, or reset the pipeline (delete key {key:?} from the \
             KV bucket and drop slot {stored:?}) to take a new snapshot")]
    OtherSlot {
        /// Pipeline.
        pipeline: String,
        /// Stored slot.
        stored: String,
        /// Configured slot.
        configured: String,
        /// KV key.
        key: String,
    },
    /// The slot the checkpoint refers to is gone: changes since then are lost to us.
    #[error("replication slot {slot:?} is missing, but pipeline {pipeline:?} has a checkpoint at {lsn}: \
             changes after it may be lost. Re-snapshot: stop tidemark, delete the checkpoint \
             (nats kv del {bucket} {key}), truncate the selected target tables for an exact copy, and \
             start again; tidemark creates the slot and takes a new snapshot")]
    SlotMissing {
        /// Pipeline.
        pipeline: String,
        /// Slot.
        slot: String,
        /// Stored LSN.
        lsn: String,
        /// State bucket.
        bucket: String,
        /// KV key.
        key: String,
    },
    /// The server invalidated the slot (`wal_status = lost`): the WAL after the checkpoint is
    /// gone.
    #[error("replication slot {slot:?} was invalidated by the server (wal_status = lost: it held back more \
             WAL than max_slot_wal_keep_size allows), so the changes after checkpoint {lsn} of pipeline \
             {pipeline:?} are gone. Re-snapshot: stop tidemark, run SELECT pg_drop_replication_slot('{slot}'); \
             and nats kv del {bucket} {key}, truncate the selected target tables for an exact copy, and start \
             again. To avoid it: raise max_slot_wal_keep_size, alert on tidemark_source_slot_lag_bytes")]
    SlotLost {
        /// Pipeline.
        pipeline: String,
        /// Slot.
        slot: String,
        /// Stored LSN.
        lsn: String,
        /// State bucket.
        bucket: String,
        /// KV key.
        key: String,
    },
    /// The slot exists but is not a pgoutput slot of this database.
    #[error(
        "replication slot {slot:?} exists but is not a pgoutput slot of database {db:?} \
             (plugin {plugin:?}, database {slot_db:?}); choose another slot name"
    )]
    ForeignSlot {
        /// Slot.
        slot: String,
        /// Configured database.
        db: String,
        /// Its plugin.
        plugin: Option<String>,
        /// Its database.
        slot_db: Option<String>,
    },
    /// No table matches the globs.
    #[error("no table of database {db:?} matches tables = {globs:?}")]
    NoTables {
        /// Database.
        db: String,
        /// Globs.
        globs: Vec<String>,
    },
    /// The checkpoint holds an LSN we cannot read.
    #[error("the stored checkpoint has an invalid lsn {0:?}")]
    BadCheckpoint(String),
    /// Slot creation waited too long for open transactions.
    #[error("creating replication slot {slot:?} waited {secs} s for transactions that were open when it \
             started and gave up; end them (pg_terminate_backend) or retry later. Still open: {blockers}")]
    SlotWait {
        /// Slot.
        slot: String,
        /// Seconds waited.
        secs: u64,
        /// Description of the blocking backends.
        blockers: String,
    },
}

impl Classify for SourceError {
    fn retry(&self) -> Retry {
        Retry::Definite
    }
    fn kind(&self) -> &'static str {
        match self {
            SourceError::OtherSystem { .. }
            | SourceError::OtherSlot { .. }
            | SourceError::BadCheckpoint(_) => "checkpoint",
            SourceError::SlotMissing { .. }
            | SourceError::SlotLost { .. }
            | SourceError::ForeignSlot { .. } => "slot",
            SourceError::NoTables { .. } => "config",
            SourceError::SlotWait { .. } => "slot_wait",
        }
    }
}

/// The KV checkpoint with the revision it was read or written at (compare-and-set).
pub(crate) struct Durable {
    state: StateStore,
    key: String,
    revision: Option<u64>,
    value: SourceCheckpoint,
    lsn: u64,
}

impl Durable {
    /// The durable LSN.
    pub(crate) fn lsn(&self) -> u64 {
        self.lsn
    }

    async fn save(&mut self) -> Result<(), StateError> {
        let rev = self
            .state
            .save(&self.key, &self.value, self.revision)
            .await?;
        self.revision = Some(rev);
        Ok(())
    }

    /// Moves the checkpoint forward to `lsn` (never backwards) and writes it.
    pub(crate) async fn advance(&mut self, lsn: u64) -> Result<(), StateError> {
        if lsn <= self.lsn {
            return Ok(());
        }
        let previous = (self.lsn, self.value.lsn.clone());
        self.lsn = lsn;
        self.value.lsn = format_lsn(lsn);
        if let Err(e) = self.save().await {
            (self.lsn, self.value.lsn) = previous;
            return Err(e);
        }
        Ok(())
    }
}

fn fail<E: Classify + std::error::Error + Send + Sync + 'static>(e: E) -> Failure {
    Failure::from_err(e)
}

/// Runs the source until shutdown (`Ok`) or an error (the supervisor calls it again).
pub async fn run(ctx: SourceContext<u64>) -> Result<(), Failure> {
    let component = format!("{}/source", ctx.pipeline.name);
    let result = Box::pin(run_inner(&ctx, &component)).await;
    if let Err(e) = &result {
        // Counted in tidemark_errors_total by the supervisor, which sees every returned failure.
        ctx.health.not_ready(&component, e.message.clone());
    }
    result
}

/// Runs `fut` unless shutdown fires first (then `None`).
async fn unless_shutdown<T>(
    shutdown: &CancellationToken,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => None,
        v = fut => Some(v),
    }
}

struct Prepared {
    settings: PgSettings,
    sql: Arc<tokio_postgres::Client>,
    repl: ReplicationClient,
    system: SystemInfo,
    stored: Option<tidemark_core::state::Versioned<SourceCheckpoint>>,
    tables: Vec<catalog::TableInfo>,
    slot: Option<SlotInfo>,
}

async fn prepare(ctx: &SourceContext<u64>, key: &str) -> Result<Prepared, Failure> {
    let settings = PgSettings::from_pipeline(&ctx.pipeline).map_err(fail)?;
    let sql = Arc::new(sql_connect(&settings).await.map_err(fail)?);
    let mut repl = ReplicationClient::connect(&settings).await.map_err(fail)?;
    let system = repl.identify_system().await.map_err(fail)?;
    let stored = ctx
        .state
        .load::<SourceCheckpoint>(key)
        .await
        .map_err(fail)?;
    if let Some(v) = &stored {
        if v.value.system_id != system.system_id {
            return Err(fail(SourceError::OtherSystem {
                pipeline: settings.pipeline.clone(),
                stored: v.value.system_id.clone(),
                actual: system.system_id.clone(),
                url: settings.redacted_url.clone(),
                key: key.to_owned(),
            }));
        }
        if v.value.slot != settings.slot {
            return Err(fail(SourceError::OtherSlot {
                pipeline: settings.pipeline.clone(),
                stored: v.value.slot.clone(),
                configured: settings.slot.clone(),
                key: key.to_owned(),
            }));
        }
    }
    let tables = catalog::selected_tables(&sql, &settings)
        .await
        .map_err(fail)?;
    if tables.is_empty() {
        return Err(fail(SourceError::NoTables {
            db: settings.dbname.clone(),
            globs: settings.tables.clone(),
        }));
    }
    for t in tables.iter().filter(|t| !t.has_identity()) {
        tracing::warn!(
            pipeline = %settings.pipeline,
            table = %t.qualified_name(),
            "table has no primary key or replica identity: postgres rejects UPDATE and DELETE on it while it \
             is published; add a primary key or run ALTER TABLE … REPLICA IDENTITY FULL"
        );
    }
    match catalog::ensure_publication(&sql, &settings, &tables)
        .await
        .map_err(fail)?
    {
        PublicationChange::Unchanged => {}
        PublicationChange::Created => {
            tracing::info!(pipeline = %settings.pipeline, publication = %settings.publication, tables = tables.len(), "publication created")
        }
        PublicationChange::Updated => {
            tracing::info!(pipeline = %settings.pipeline, publication = %settings.publication, tables = tables.len(), "publication updated")
        }
        PublicationChange::Foreign => tracing::warn!(
            pipeline = %settings.pipeline,
            publication = %settings.publication,
            "the configured publication does not publish every selected table; those tables are not captured"
        ),
    }
    let slot = catalog::slot(&sql, &settings.slot).await.map_err(fail)?;
    if let Some(info) = &slot {
        if info.plugin.as_deref() != Some("pgoutput")
            || info.database.as_deref() != Some(settings.dbname.as_str())
        {
            return Err(fail(SourceError::ForeignSlot {
                slot: settings.slot.clone(),
                db: settings.dbname.clone(),
                plugin: info.plugin.clone(),
                slot_db: info.database.clone(),
            }));
        }
    }
    Ok(Prepared {
        settings,
        sql,
        repl,
        system,
        stored,
        tables,
        slot,
    })
}

async fn run_inner(ctx: &SourceContext<u64>, component: &str) -> Result<(), Failure> {
    let key = source_key(&ctx.pipeline.name);
    ctx.health.not_ready(component, "connecting to postgres");
    let Some(prepared) = unless_shutdown(&ctx.shutdown, prepare(ctx, &key)).await else {
        return Ok(());
    };
    let Prepared {
        settings,
        sql,
        mut repl,
        system,
        stored,
        tables,
        slot,
    } = prepared?;

    // Resume: the snapshot is done and the slot holds everything after the checkpoint.
    if let Some(v) = stored.as_ref().filter(|v| v.value.snapshot_done) {
        let lsn = v
            .value
            .lsn_value()
            .ok_or_else(|| fail(SourceError::BadCheckpoint(v.value.lsn.clone())))?;
        match &slot {
            None => {
                return Err(fail(SourceError::SlotMissing {
                    pipeline: settings.pipeline.clone(),
                    slot: settings.slot.clone(),
                    lsn: v.value.lsn.clone(),
                    bucket: ctx.state.bucket().to_owned(),
                    key,
                }))
            }
            Some(info) if info.wal_status.as_deref() == Some("lost") => {
                return Err(fail(SourceError::SlotLost {
                    pipeline: settings.pipeline.clone(),
                    slot: settings.slot.clone(),
                    lsn: v.value.lsn.clone(),
                    bucket: ctx.state.bucket().to_owned(),
                    key,
                }))
            }
            Some(_) => {}
        }
        let mut durable = Durable {
            state: ctx.state.clone(),
            key,
            revision: Some(v.revision),
            value: v.value.clone(),
            lsn,
        };
        if durable.value.timeline != system.timeline {
            tracing::warn!(
                pipeline = %settings.pipeline,
                stored = durable.value.timeline,
                now = system.timeline,
                "postgres timeline changed (failover or point-in-time recovery); resuming from the slot"
            );
            durable.value.timeline = system.timeline;
            durable.save().await.map_err(fail)?;
        }
        tracing::info!(pipeline = %settings.pipeline, lsn = %format_lsn(lsn), "resuming from checkpoint");
        return crate::stream::run(ctx, &settings, repl, sql, durable, lsn).await;
    }

    // Fresh start, or a snapshot that was interrupted (a checkpoint with snapshot_done = false).
    let replaces_unfinished = stored.is_some();
    let mut durable_revision = stored.as_ref().map(|v| v.revision);
    if let Some(info) = &slot {
        if stored.is_none() && settings.snapshot == SnapshotMode::Never {
            // No checkpoint (state was reset) but the slot still holds everything it did not
            // confirm: continue from it instead of losing those changes.
            if let Some(lsn) = info.confirmed_flush_lsn.as_deref().and_then(parse_lsn) {
                let mut durable = new_durable(ctx, &key, &settings, &system, lsn, true, None);
                durable.save().await.map_err(fail)?;
                tracing::info!(pipeline = %settings.pipeline, lsn = %format_lsn(lsn), "no checkpoint; continuing from the existing slot");
                return crate::stream::run(ctx, &settings, repl, sql, durable, lsn).await;
            }
        }
        tracing::warn!(
            pipeline = %settings.pipeline,
            slot = %settings.slot,
            "dropping replication slot left by an unfinished snapshot; the snapshot starts over"
        );
        let dropped = unless_shutdown(&ctx.shutdown, repl.drop_slot(&settings.slot)).await;
        match dropped {
            None => return Ok(()),
            Some(r) => r.map_err(fail)?,
        }
    }
    let export = settings.snapshot == SnapshotMode::Initial;
    ctx.health
        .not_ready(component, "creating the replication slot");
    let Some(created) = create_slot(&mut repl, &sql, &settings, export, &ctx.shutdown).await?
    else {
        return Ok(());
    };
    let cp = created.consistent_point;
    tracing::info!(
        pipeline = %settings.pipeline,
        slot = %settings.slot,
        consistent_point = %format_lsn(cp),
        "replication slot created"
    );
    if !export {
        let mut durable = new_durable(
            ctx,
            &key,
            &settings,
            &system,
            cp,
            true,
            durable_revision.take(),
        );
        durable.save().await.map_err(fail)?;
        return crate::stream::run(ctx, &settings, repl, sql, durable, cp).await;
    }
    let Some(snapshot_name) = created.snapshot_name else {
        return Err(Failure::definite(
            "protocol",
            "CREATE_REPLICATION_SLOT returned no snapshot name",
        ));
    };
    // Import before anything else runs on the replication connection: the exported snapshot
    // lives only until its next command.
    let readers = settings.parallelism.min(tables.len()).max(1);
    let conns = snapshot::import(&settings, &snapshot_name, readers)
        .await
        .map_err(fail)?;
    let mut durable = new_durable(
        ctx,
        &key,
        &settings,
        &system,
        cp,
        false,
        durable_revision.take(),
    );
    durable.save().await.map_err(fail)?;
    ctx.health
        .not_ready(component, "initial snapshot in progress");
    let outcome = snapshot::run(
        conns,
        &settings,
        &ctx.naming,
        &ctx.outbox,
        &ctx.shutdown,
        snapshot::SnapshotStart {
            consistent_point: cp,
            replaces_unfinished,
        },
        &tables,
    )
    .await
    .map_err(fail)?;
    if outcome == Outcome::Interrupted {
        repl.close().await;
        return Ok(());
    }
    let flushed = unless_shutdown(&ctx.shutdown, ctx.outbox.flush()).await;
    match flushed {
        None => {
            repl.close().await;
            return Ok(());
        }
        Some(Err(_)) => {
            return Err(Failure::transient(
                "publish",
                "the publisher stopped during the snapshot",
            ))
        }
        Some(Ok(())) => {}
    }
    durable.value.snapshot_done = true;
    durable.save().await.map_err(fail)?;
    if let Outcome::Completed { rows } = outcome {
        tracing::info!(pipeline = %settings.pipeline, rows, "snapshot complete and acknowledged");
    }
    crate::stream::run(ctx, &settings, repl, sql, durable, cp).await
}

fn new_durable(
    ctx: &SourceContext<u64>,
    key: &str,
    s: &PgSettings,
    system: &SystemInfo,
    lsn: u64,
    snapshot_done: bool,
    revision: Option<u64>,
) -> Durable {
    Durable {
        state: ctx.state.clone(),
        key: key.to_owned(),
        revision,
        value: SourceCheckpoint {
            system_id: system.system_id.clone(),
            timeline: system.timeline,
            slot: s.slot.clone(),
            lsn: format_lsn(lsn),
            snapshot_done,
        },
        lsn,
    }
}

/// Creates the slot, logging which transactions it waits for; gives up after
/// [`SLOT_CREATE_TIMEOUT`]. `None` when shutdown fired.
async fn create_slot(
    repl: &mut ReplicationClient,
    sql: &tokio_postgres::Client,
    s: &PgSettings,
    export: bool,
    shutdown: &CancellationToken,
) -> Result<Option<CreatedSlot>, Failure> {
    let cancel = repl.cancel_handle();
    let started = Instant::now();
    let fut = repl.create_slot(&s.slot, export);
    tokio::pin!(fut);
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(5),
        Duration::from_secs(10),
    );
    loop {
        tokio::select! {
            biased;
            r = &mut fut => return r.map(Some).map_err(fail),
            _ = shutdown.cancelled() => {
                cancel.cancel().await;
                return Ok(None);
            }
            _ = ticker.tick() => {
                let blockers = catalog::blocking_transactions(sql)
                    .await
                    .map(|b| b.join("; "))
                    .unwrap_or_else(|e| format!("(cannot list them: {e})"));
                if started.elapsed() >= SLOT_CREATE_TIMEOUT {
                    cancel.cancel().await;
                    return Err(fail(SourceError::SlotWait {
                        slot: s.slot.clone(),
                        secs: started.elapsed().as_secs(),
                        blockers,
                    }));
                }
                tracing::warn!(
                    pipeline = %s.pipeline,
                    slot = %s.slot,
                    waited_secs = started.elapsed().as_secs(),
                    open_transactions = %blockers,
                    "creating the replication slot waits for transactions that were open when it started"
                );
            }
        }
    }
}
