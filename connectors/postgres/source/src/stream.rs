//! Streaming: pgoutput transactions → envelopes → outbox, and the slot
//! feedback that frees WAL only behind what JetStream acknowledged.
//!
//! ```text
//!  walsender ─CopyData─▶ recv ─▶ decode ─▶ Begin ─ I/U/D/T… ─ Commit
//!                                             │       │          │
//!                             held back one ──┘ encode ┘  last=true, then Checkpoint(end_lsn)
//!                                                     ▼
//!                                       outbox (bounded) ─▶ publisher ─▶ JetStream
//!                                                     acked ◀─────────────┘
//!  every second: status update (write = flush = apply = acked) and, at most
//!  once per second, the acked LSN to the KV checkpoint (compare-and-set)
//! ```
//!
//! Invariants, each one a way to lose data if broken:
//! * **Feedback only from `acked`.** The slot is told `flush = X` only when
//!   every event of every transaction ending at or before `X` was acknowledged
//!   by JetStream; never an XLogData LSN.
//! * **Idle slots still advance.** When nothing is in flight (no open
//!   transaction, everything seen is acknowledged), the keepalive's WAL end is
//!   reported instead: otherwise a quiet database's slot retains every byte
//!   of WAL that busy *other* databases write.
//! * **Re-sent transactions are skipped.** After a server crash the server may
//!   send again transactions we already acknowledged (confirmed_flush reaches
//!   disk only at checkpoints); a transaction whose commit starts below the
//!   resume position is dropped.
//! * **Never buffer a transaction.** Events go to the outbox as they are
//!   decoded; only one encoded-to-be event is held back so the transaction's
//!   final event can carry `tx.last = true`.
//! * **Status updates never wait for JetStream.** While the outbox is full the
//!   loop keeps answering the server (its `wal_sender_timeout` would otherwise
//!   close the connection).
//! * **A silent server is a dead server.** A partition or a half-open TCP
//!   connection (server gone, no RST) leaves our writes succeeding and our reads
//!   waiting forever. When the loop has read nothing for `heartbeat`, it sends a
//!   status update with "reply requested" (the walsender answers at once with a
//!   keepalive); with no message at all [`silence_timeout`] after that, the
//!   connection is given up as transient and the source reconnects.

use crate::client::{ReplicationClient, SqlError};
use crate::config::PgSettings;
use crate::convert;
use crate::pgoutput::{self, format_lsn, pg_micros_to_unix_ms, PgMessage, ReplicationMessage};
use crate::relcache::{RelCache, TypeCatalog, PRIMARY_KEY_QUERY, TYPE_CATALOG_QUERY};
use crate::source::Durable;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_core::envelope::{Change, Encoder, Naming, Op, OutMessage, Row, TableMeta, TxInfo};
use tidemark_core::error::{Classify, Failure, Retry};
use tidemark_core::metrics as m;
use tidemark_core::position;
use tidemark_core::source::{Outbox, PublisherGone, SourceContext};
use tidemark_core::state::StateError;
use tidemark_core::CancellationToken;
use tokio::sync::watch;
use tokio_postgres::{Client, SimpleQueryMessage};

/// How long a graceful stop waits for JetStream to acknowledge what is in flight.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages handled from the read buffer before the loop looks at timers and shutdown again.
const MAX_BURST: usize = 512;
/// How often the slot's retained WAL is measured.
const SLOT_LAG_INTERVAL: Duration = Duration::from_secs(10);

/// How long the loop waits for any message after asking the server for a reply:
/// three heartbeats, at least 5 s (a loaded server or network may be slow to answer).
fn silence_timeout(heartbeat: Duration) -> Duration {
    (heartbeat * 3).max(Duration::from_secs(5))
}

/// Errors while streaming.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The replication connection failed.
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    /// A catalog query failed.
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// A message could not be decoded.
    #[error("replication stream: {0}")]
    Decode(#[from] pgoutput::DecodeError),
    /// A row could not be converted.
    #[error("replication stream: {0}")]
    Convert(#[from] convert::ConvertError),
    /// The type catalog could not be parsed.
    #[error("replication stream: {0}")]
    Catalog(#[from] crate::relcache::CatalogError),
    /// The messages do not follow the protocol (change outside a transaction, unknown relation).
    #[error("replication stream out of order: {0}")]
    Sequence(String),
    /// Nothing came from the server for this long after a reply was requested.
    #[error("no message from postgres for {0} s after a reply was requested; connection presumed dead (network partition or half-open TCP)")]
    Silent(u64),
    /// The server ended the copy on its own (CopyDone, or CommandComplete at server shutdown).
    #[error("postgres ended the replication stream (server shutting down or walsender stopped)")]
    Ended,
    /// The publisher stopped.
    #[error("the publisher stopped")]
    PublisherGone,
    /// The checkpoint could not be written.
    #[error(transparent)]
    State(#[from] StateError),
}

impl Classify for StreamError {
    fn retry(&self) -> Retry {
        match self {
            StreamError::Client(e) => e.retry(),
            StreamError::Sql(e) => e.retry(),
            StreamError::Decode(e) => e.retry(),
            StreamError::Convert(e) => e.retry(),
            StreamError::Catalog(e) => e.retry(),
            StreamError::State(e) => e.retry(),
            StreamError::Sequence(_) => Retry::Definite,
            StreamError::Ended | StreamError::Silent(_) | StreamError::PublisherGone => {
                Retry::Transient
            }
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            StreamError::Client(e) => e.kind(),
            StreamError::Sql(e) => e.kind(),
            StreamError::Decode(e) => e.kind(),
            StreamError::Convert(e) => e.kind(),
            StreamError::Catalog(e) => e.kind(),
            StreamError::State(e) => e.kind(),
            StreamError::Sequence(_) => "protocol",
            StreamError::Ended | StreamError::Silent(_) => "connection",
            StreamError::PublisherGone => "publish",
        }
    }
}

impl From<PublisherGone> for StreamError {
    fn from(_: PublisherGone) -> StreamError {
        StreamError::PublisherGone
    }
}

/// Why the event loop stopped.
enum Stop {
    Shutdown,
    Failed(Box<StreamError>),
}

impl<E: Into<StreamError>> From<E> for Stop {
    fn from(e: E) -> Stop {
        Stop::Failed(Box::new(e.into()))
    }
}

/// What the slot may be told, as pure bookkeeping (no I/O, unit-tested).
#[derive(Debug, Clone, PartialEq, Eq)]
struct AckWindow {
    /// The position streaming resumed from (already durable).
    resume: u64,
    /// End LSN of the newest commit seen (skipped ones included).
    last_commit_end: u64,
    /// A transaction is open.
    in_tx: bool,
    /// `(wal_end, requires)`: a keepalive's WAL end seen while no transaction was open; it may
    /// be confirmed once everything up to `requires` is acknowledged.
    idle: Option<(u64, u64)>,
}

impl AckWindow {
    fn new(resume: u64) -> AckWindow {
        AckWindow {
            resume,
            last_commit_end: resume,
            in_tx: false,
            idle: None,
        }
    }

    fn begin(&mut self) {
        self.in_tx = true;
    }

    fn commit(&mut self, end_lsn: u64) {
        self.in_tx = false;
        self.last_commit_end = self.last_commit_end.max(end_lsn);
    }

    /// A keepalive: between transactions its WAL end is a safe idle position (the walsender
    /// has sent every transaction that commits below it).
    fn keepalive(&mut self, wal_end: u64) {
        if !self.in_tx {
            self.idle = Some((wal_end, self.last_commit_end));
        }
    }

    /// The position the slot may forget everything before, given the newest acknowledged
    /// commit end.
    fn flush(&self, acked: Option<u64>) -> u64 {
        let acked = acked.unwrap_or(0).max(self.resume);
        match self.idle {
            Some((wal_end, requires)) if acked >= requires => acked.max(wal_end),
            _ => acked,
        }
    }

    /// Whether everything seen is acknowledged and no transaction is open.
    fn caught_up(&self, acked: Option<u64>) -> bool {
        !self.in_tx && acked.unwrap_or(0).max(self.resume) >= self.last_commit_end
    }
}

/// The slot feedback: what may be confirmed, when to say it, and the durable copy.
struct Feedback {
    repl: ReplicationClient,
    acked: watch::Receiver<Option<u64>>,
    durable: Durable,
    window: AckWindow,
    last_reported: u64,
    last_status: Instant,
    last_persist: Instant,
    heartbeat: Duration,
    pipeline: String,
    /// When the main loop last read a message from the server.
    last_recv: Instant,
    /// When a status update asking for a reply was sent and not yet answered.
    ping_sent: Option<Instant>,
}

impl Feedback {
    /// The position the slot may forget everything before.
    fn flush_lsn(&self) -> u64 {
        self.window.flush(*self.acked.borrow())
    }

    async fn send_status(&mut self) -> Result<(), StreamError> {
        let flush = self.flush_lsn();
        self.repl.send_status(flush, false).await?;
        if flush != self.last_reported {
            tracing::trace!(pipeline = %self.pipeline, flush = %format_lsn(flush), "standby status");
        }
        self.last_reported = flush;
        self.last_status = Instant::now();
        Ok(())
    }

    async fn persist(&mut self, force: bool) -> Result<(), StreamError> {
        let flush = self.flush_lsn();
        if flush <= self.durable.lsn()
            || (!force && self.last_persist.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        self.last_persist = Instant::now();
        match self.durable.advance(flush).await {
            Ok(()) => Ok(()),
            Err(e @ StateError::Conflict { .. }) | Err(e @ StateError::Corrupt { .. }) => {
                Err(e.into())
            }
            Err(e) => {
                // NATS hiccup: the slot still holds everything; try again next second.
                m::error("source", e.kind());
                tracing::warn!(pipeline = %self.pipeline, error = %e, "could not persist the checkpoint; will retry");
                Ok(())
            }
        }
    }

    /// A message arrived: the connection is alive.
    fn heard(&mut self) {
        self.last_recv = Instant::now();
        self.ping_sent = None;
    }

    /// Called by the reading loop once a second: after `heartbeat` of silence, ask the server
    /// for a reply; fail when that request stays unanswered for [`silence_timeout`]. Only the
    /// loop that reads calls this (while it waits on a full outbox, nothing is read and
    /// silence means nothing).
    async fn check_alive(&mut self) -> Result<(), StreamError> {
        let timeout = silence_timeout(self.heartbeat);
        match self.ping_sent {
            Some(sent) if sent.elapsed() >= timeout => Err(StreamError::Silent(timeout.as_secs())),
            Some(_) => Ok(()),
            None if self.last_recv.elapsed() >= self.heartbeat => {
                let flush = self.flush_lsn();
                self.repl.send_status(flush, true).await?;
                self.last_reported = flush;
                self.last_status = Instant::now();
                self.ping_sent = Some(Instant::now());
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Housekeeping, once a second: status update when the position moved or the heartbeat is
    /// due, and the durable checkpoint.
    async fn tick(&mut self) -> Result<(), StreamError> {
        if self.flush_lsn() != self.last_reported || self.last_status.elapsed() >= self.heartbeat {
            self.send_status().await?;
        }
        self.persist(false).await
    }
}

/// Sends `fut` (an outbox send) while keeping the slot feedback alive and watching shutdown.
async fn deliver<F>(
    fut: F,
    fb: &mut Feedback,
    ticker: &mut tokio::time::Interval,
    shutdown: &CancellationToken,
) -> Result<(), Stop>
where
    F: Future<Output = Result<(), PublisherGone>>,
{
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            r = &mut fut => return r.map_err(Stop::from),
            _ = shutdown.cancelled() => return Err(Stop::Shutdown),
            _ = ticker.tick() => fb.tick().await?,
        }
    }
}

/// The open transaction.
struct Tx {
    commit_lsn: u64,
    commit_hex: String,
    info: TxInfo,
    ts_ms: i64,
    seq: u64,
    skip: bool,
}

/// A decoded change waiting for the next one (or the Commit) to learn whether it is the last.
struct Pending {
    op: Op,
    rel_oid: u32,
    table: Arc<TableMeta>,
    before: Option<Row>,
    after: Option<Row>,
    seq: u64,
}

/// The streaming state machine.
struct Streamer {
    naming: Naming,
    settings: PgSettings,
    sql: Arc<Client>,
    relcache: RelCache,
    /// Relation OID → captured (matches the table globs)?
    selected: HashMap<u32, bool>,
    catalog_stale: bool,
    encoder: Encoder,
    tx: Option<Tx>,
    pending: Option<Pending>,
    counters: HashMap<(u32, &'static str), metrics::Counter>,
    lag: metrics::Gauge,
}

/// Streams from `start` until shutdown (`Ok`) or an error.
pub(crate) async fn run(
    ctx: &SourceContext<u64>,
    settings: &PgSettings,
    mut repl: ReplicationClient,
    sql: Arc<Client>,
    durable: Durable,
    start: u64,
) -> Result<(), Failure> {
    let component = format!("{}/source", settings.pipeline);
    let mut relcache = RelCache::new(ctx.naming.clone(), settings.dbname.clone());
    relcache.set_catalog(read_type_catalog(&sql).await.map_err(Failure::from_err)?);
    for (oid, cols) in read_primary_keys(&sql).await.map_err(Failure::from_err)? {
        relcache.set_primary_key(oid, cols);
    }
    repl.start_replication(&settings.slot, start, &settings.publication)
        .await
        .map_err(Failure::from_err)?;
    tracing::info!(
        pipeline = %settings.pipeline,
        slot = %settings.slot,
        publication = %settings.publication,
        start = %format_lsn(start),
        "streaming started"
    );
    ctx.health.ready(&component);
    let lag_token = CancellationToken::new();
    let _lag_guard = lag_token.clone().drop_guard();
    tokio::spawn(slot_lag_loop(
        sql.clone(),
        settings.slot.clone(),
        settings.pipeline.clone(),
        lag_token,
    ));

    let mut fb = Feedback {
        repl,
        acked: ctx.acked.clone(),
        durable,
        window: AckWindow::new(start),
        last_reported: 0,
        last_status: Instant::now(),
        last_persist: Instant::now(),
        heartbeat: settings.heartbeat,
        pipeline: settings.pipeline.clone(),
        last_recv: Instant::now(),
        ping_sent: None,
    };
    let mut st = Streamer {
        naming: ctx.naming.clone(),
        settings: settings.clone(),
        sql,
        relcache,
        selected: HashMap::new(),
        catalog_stale: false,
        encoder: Encoder::new(),
        tx: None,
        pending: None,
        counters: HashMap::new(),
        lag: metrics::gauge!(m::SOURCE_LAG, m::L_PIPELINE => settings.pipeline.clone()),
    };
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = loop {
        let step: Result<(), Stop> = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => Err(Stop::Shutdown),
            _ = ticker.tick() => match fb.tick().await {
                Ok(()) => fb.check_alive().await.map_err(Stop::from),
                Err(e) => Err(Stop::from(e)),
            },
            r = fb.repl.recv() => match r {
                Ok(Some(bytes)) => {
                    fb.heard();
                    let mut step = st.handle(&bytes, &ctx.outbox, &mut fb, &mut ticker, &ctx.shutdown).await;
                    // Drain what is already buffered without a select! per message.
                    let mut burst = 0;
                    while step.is_ok() && burst < MAX_BURST {
                        match fb.repl.try_recv_buffered() {
                            Ok(Some(bytes)) => {
                                step = st.handle(&bytes, &ctx.outbox, &mut fb, &mut ticker, &ctx.shutdown).await;
                                burst += 1;
                            }
                            Ok(None) => break,
                            Err(e) => step = Err(Stop::from(e)),
                        }
                    }
                    step
                }
                Ok(None) => Err(Stop::Failed(Box::new(StreamError::Ended))),
                Err(e) => Err(Stop::from(e)),
            },
        };
        if let Err(stop) = step {
            break stop;
        }
    };
    match stop {
        Stop::Failed(e) => {
            ctx.health
                .not_ready(&component, format!("postgres source failed: {e}"));
            Err(Failure::from_err(*e))
        }
        Stop::Shutdown => {
            ctx.health.not_ready(&component, "shutting down");
            shutdown(ctx, fb).await
        }
    }
}

/// Graceful stop: wait for JetStream, persist, tell the server, end the copy.
async fn shutdown(ctx: &SourceContext<u64>, mut fb: Feedback) -> Result<(), Failure> {
    match tokio::time::timeout(FLUSH_TIMEOUT, ctx.outbox.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => tracing::warn!(pipeline = %fb.pipeline, "publisher gone during shutdown"),
        Err(_) => {
            tracing::warn!(pipeline = %fb.pipeline, "JetStream did not acknowledge in-flight events in time")
        }
    }
    fb.persist(true).await.map_err(Failure::from_err)?;
    if let Err(e) = fb.send_status().await {
        tracing::debug!(error = %e, "final status update failed");
    }
    let flushed = fb.flush_lsn();
    if let Err(e) = fb.repl.finish(Duration::from_secs(5)).await {
        tracing::debug!(error = %e, "ending the replication stream");
    }
    tracing::info!(pipeline = %fb.pipeline, confirmed = %format_lsn(flushed), "postgres source stopped");
    Ok(())
}

async fn read_type_catalog(sql: &Client) -> Result<TypeCatalog, StreamError> {
    let msgs = sql
        .simple_query(TYPE_CATALOG_QUERY)
        .await
        .map_err(|e| SqlError::new("reading the type catalog", e))?;
    let rows: Vec<Vec<Option<&str>>> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i)).collect()),
            _ => None,
        })
        .collect();
    Ok(TypeCatalog::from_text_rows(rows)?)
}

async fn read_primary_keys(sql: &Client) -> Result<HashMap<u32, Vec<String>>, StreamError> {
    let rows = sql
        .query(PRIMARY_KEY_QUERY, &[])
        .await
        .map_err(|e| SqlError::new("reading primary keys", e))?;
    let mut out: HashMap<u32, Vec<String>> = HashMap::new();
    for r in rows {
        let oid: i64 = r
            .try_get(0)
            .map_err(|e| SqlError::new("reading primary keys", e))?;
        let name: String = r
            .try_get(1)
            .map_err(|e| SqlError::new("reading primary keys", e))?;
        if let Ok(oid) = u32::try_from(oid) {
            out.entry(oid).or_default().push(name);
        }
    }
    Ok(out)
}

/// Measures the slot's unconfirmed WAL every few seconds (`tidemark_source_slot_lag_bytes`).
async fn slot_lag_loop(sql: Arc<Client>, slot: String, pipeline: String, stop: CancellationToken) {
    let gauge = metrics::gauge!(m::SOURCE_SLOT_LAG, m::L_PIPELINE => pipeline.clone());
    let mut ticker = tokio::time::interval(SLOT_LAG_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match crate::catalog::slot(&sql, &slot).await {
            Ok(Some(info)) => {
                if let Some(lag) = info.lag_bytes {
                    gauge.set(lag.max(0.0));
                }
            }
            Ok(None) => {
                tracing::warn!(%pipeline, %slot, "replication slot not found while measuring lag")
            }
            Err(e) => tracing::debug!(%pipeline, error = %e, "measuring slot lag failed"),
        }
    }
}

impl Streamer {
    async fn handle(
        &mut self,
        bytes: &[u8],
        outbox: &Outbox<u64>,
        fb: &mut Feedback,
        ticker: &mut tokio::time::Interval,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        match pgoutput::decode_copy_data(bytes)? {
            ReplicationMessage::PrimaryKeepalive(k) => {
                fb.window.keepalive(k.wal_end);
                if fb.window.caught_up(*fb.acked.borrow()) {
                    self.lag.set(0.0);
                }
                if k.reply_requested {
                    fb.send_status().await?;
                }
                Ok(())
            }
            ReplicationMessage::XLogData(x) => {
                let msg = pgoutput::decode(x.data)?;
                self.message(msg, outbox, fb, ticker, shutdown).await
            }
        }
    }

    async fn message(
        &mut self,
        msg: PgMessage<'_>,
        outbox: &Outbox<u64>,
        fb: &mut Feedback,
        ticker: &mut tokio::time::Interval,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        match msg {
            PgMessage::Begin(b) => {
                if self.tx.is_some() {
                    return Err(sequence("Begin inside an open transaction"));
                }
                let commit_hex = position::hex16(b.final_lsn);
                self.tx = Some(Tx {
                    commit_lsn: b.final_lsn,
                    info: TxInfo {
                        id: b.xid.to_string(),
                        seq: 0,
                        commit_pos: format_lsn(b.final_lsn),
                        last: false,
                    },
                    commit_hex,
                    ts_ms: pg_micros_to_unix_ms(b.commit_ts),
                    seq: 0,
                    // A transaction whose commit starts below the resume point was acknowledged
                    // before (the server re-sends them after a crash).
                    skip: b.final_lsn < fb.window.resume,
                });
                fb.window.begin();
                Ok(())
            }
            PgMessage::Commit(c) => {
                let Some(tx) = self.tx.as_ref() else {
                    return Err(sequence("Commit without Begin"));
                };
                if tx.commit_lsn != c.commit_lsn {
                    return Err(sequence(&format!(
                        "Commit at {} does not match Begin's {}",
                        format_lsn(c.commit_lsn),
                        format_lsn(tx.commit_lsn)
                    )));
                }
                let skip = tx.skip;
                let ts_ms = tx.ts_ms;
                if let Some(p) = self.pending.take() {
                    let out = self.encode(p, true)?;
                    deliver(outbox.event(out), fb, ticker, shutdown).await?;
                }
                if !skip {
                    deliver(outbox.checkpoint(c.end_lsn), fb, ticker, shutdown).await?;
                    self.lag.set((m::now_ms() - ts_ms).max(0) as f64 / 1000.0);
                }
                self.tx = None;
                fb.window.commit(c.end_lsn);
                Ok(())
            }
            PgMessage::Relation(r) => {
                if self.catalog_stale || !self.relcache.missing_types(&r).is_empty() {
                    self.relcache
                        .set_catalog(read_type_catalog(&self.sql).await?);
                    self.catalog_stale = false;
                }
                let table = self.relcache.apply_relation(&r);
                let selected = self.settings.selects(&table.schema, &table.table);
                self.selected.insert(r.oid, selected);
                Ok(())
            }
            PgMessage::Type(t) => {
                if self.relcache.apply_type(&t) {
                    self.catalog_stale = true;
                }
                Ok(())
            }
            PgMessage::Insert(ins) => {
                let Some(entry) = self.capture(ins.rel_oid)? else {
                    return Ok(());
                };
                let after = convert::tuple_to_row(entry, &ins.new)?;
                let table = entry.table.clone();
                self.push(
                    Op::Create,
                    ins.rel_oid,
                    table,
                    None,
                    Some(after),
                    outbox,
                    fb,
                    ticker,
                    shutdown,
                )
                .await
            }
            PgMessage::Update(upd) => {
                let Some(entry) = self.capture(upd.rel_oid)? else {
                    return Ok(());
                };
                let before = match &upd.old {
                    Some(old) => Some(convert::old_tuple_to_row(entry, old)?),
                    None => None,
                };
                let after = convert::tuple_to_row(entry, &upd.new)?;
                let table = entry.table.clone();
                self.push(
                    Op::Update,
                    upd.rel_oid,
                    table,
                    before,
                    Some(after),
                    outbox,
                    fb,
                    ticker,
                    shutdown,
                )
                .await
            }
            PgMessage::Delete(del) => {
                let Some(entry) = self.capture(del.rel_oid)? else {
                    return Ok(());
                };
                let before = convert::old_tuple_to_row(entry, &del.old)?;
                let table = entry.table.clone();
                self.push(
                    Op::Delete,
                    del.rel_oid,
                    table,
                    Some(before),
                    None,
                    outbox,
                    fb,
                    ticker,
                    shutdown,
                )
                .await
            }
            PgMessage::Truncate(t) => {
                for oid in t.rel_oids {
                    let Some(entry) = self.capture(oid)? else {
                        continue;
                    };
                    let table = entry.table.clone();
                    self.push(
                        Op::Truncate,
                        oid,
                        table,
                        None,
                        None,
                        outbox,
                        fb,
                        ticker,
                        shutdown,
                    )
                    .await?;
                }
                Ok(())
            }
            PgMessage::Origin(_) | PgMessage::Message(_) => Ok(()),
        }
    }

    /// The cached relation of a change, or `None` when the change is not captured (table not
    /// selected, or the transaction is being skipped).
    fn capture(&self, rel_oid: u32) -> Result<Option<&crate::relcache::RelationEntry>, Stop> {
        let Some(tx) = &self.tx else {
            return Err(sequence("row change outside a transaction"));
        };
        if tx.skip {
            return Ok(None);
        }
        if !self.selected.get(&rel_oid).copied().unwrap_or(false) {
            if self.relcache.relation(rel_oid).is_none() {
                return Err(sequence(&format!(
                    "change for relation {rel_oid} before its Relation message"
                )));
            }
            return Ok(None);
        }
        Ok(self.relcache.relation(rel_oid))
    }

    #[allow(clippy::too_many_arguments)]
    async fn push(
        &mut self,
        op: Op,
        rel_oid: u32,
        table: Arc<TableMeta>,
        before: Option<Row>,
        after: Option<Row>,
        outbox: &Outbox<u64>,
        fb: &mut Feedback,
        ticker: &mut tokio::time::Interval,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(sequence("row change outside a transaction"));
        };
        tx.seq += 1;
        let next = Pending {
            op,
            rel_oid,
            table,
            before,
            after,
            seq: tx.seq,
        };
        if let Some(prev) = self.pending.replace(next) {
            let out = self.encode(prev, false)?;
            deliver(outbox.event(out), fb, ticker, shutdown).await?;
        }
        Ok(())
    }

    fn encode(&mut self, p: Pending, last: bool) -> Result<OutMessage, Stop> {
        let pipeline = &self.settings.pipeline;
        self.counters
            .entry((p.rel_oid, p.op.code()))
            .or_insert_with(|| {
                metrics::counter!(m::SOURCE_EVENTS, m::L_PIPELINE => pipeline.clone(),
                    m::L_TABLE => p.table.qualified_name(), m::L_OP => p.op.code())
            })
            .increment(1);
        let Some(tx) = self.tx.as_mut() else {
            return Err(sequence("row change outside a transaction"));
        };
        tx.info.seq = p.seq;
        tx.info.last = last;
        let pos = position::streamed(&tx.commit_hex, p.seq);
        let change = Change {
            op: p.op,
            table: &p.table,
            pos: &pos,
            tx: &tx.info,
            ts_ms: tx.ts_ms,
            snapshot: false,
            before: p.before.as_ref(),
            after: p.after.as_ref(),
        };
        Ok(self.encoder.encode(&self.naming, &change, m::now_ms()))
    }
}

fn sequence(what: &str) -> Stop {
    Stop::Failed(Box::new(StreamError::Sequence(what.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::AckWindow;

    #[test]
    fn confirms_only_acknowledged_commits() {
        let mut w = AckWindow::new(100);
        assert_eq!(w.flush(None), 100);
        w.begin();
        w.commit(200);
        assert_eq!(w.flush(Some(150)), 150);
        assert_eq!(w.flush(Some(200)), 200);
    }

    #[test]
    fn idle_keepalive_advances_only_when_nothing_is_in_flight() {
        let mut w = AckWindow::new(100);
        w.begin();
        w.commit(200);
        // Keepalive after the commit: usable once the commit is acknowledged.
        w.keepalive(5000);
        assert_eq!(w.flush(Some(100)), 100);
        assert!(!w.caught_up(Some(100)));
        assert_eq!(w.flush(Some(200)), 5000);
        assert!(w.caught_up(Some(200)));
        // A keepalive inside a transaction is ignored.
        w.begin();
        w.keepalive(9000);
        assert_eq!(w.flush(Some(200)), 5000);
        w.commit(9100);
        assert_eq!(w.flush(Some(200)), 5000);
        assert_eq!(w.flush(Some(9100)), 9100);
        // Never below the resume point.
        assert_eq!(AckWindow::new(700).flush(Some(10)), 700);
    }
}
