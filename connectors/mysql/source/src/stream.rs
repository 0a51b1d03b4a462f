//! The binlog stream: events → transaction groups → envelopes and checkpoints.
//!
//! ```text
//!  GTID ─┬─ TABLE_MAP ─ ROWS … ─ XID / COMMIT ──▶ group ends: last event flagged, checkpoint token
//!        ├─ QUERY (standalone: DDL, TRUNCATE) ───▶ group ends after the one statement
//!        └─ … XA_PREPARE ─────────────────────────▶ rows held until XA COMMIT (checkpoints held too)
//! ```
//!
//! * Every change of a group shares `source.tx.id` (the GTID) and the commit
//!   prefix of `source.pos`: binlog file index and the end offset of the
//!   group's GTID event, both fixed-width hex, so positions sort in change
//!   order across rotations; `seq` numbers the group's captured changes.
//!   Re-reading a group after a restart yields the same ids.
//! * The encoder needs `tx.last` before writing an event, so the newest
//!   change is held back one step and written when the next one arrives
//!   (`last = false`) or the group ends (`last = true`).
//! * Checkpoint tokens follow whole groups (at most one per 20 ms, and at
//!   idle ticks and shutdown), so the durable position is always a
//!   transaction boundary.
//! * A dead connection is noticed through heartbeats: the server sends one
//!   every `heartbeat_secs` when idle; three missed means reconnect.
//!
//! Where the stream starts (MariaDB). `@slave_connect_state` makes MariaDB
//! 10.x search the binlog file for the GTID from its first byte: measured
//! here, 0.27 s for a 220 MB file, so about 1.3 s per (re)connect with the
//! default 1 GiB `max_binlog_size`, on every restart. A checkpoint holds both
//! positions, so when it was taken on this very server (same `server_id`)
//! and its file still exists and reaches the offset, the stream is requested
//! by file/pos, a direct seek. GTID resume remains for everything else: a
//! new server after failover, a purged or renumbered file. A binlog reset
//! in place (RESET MASTER) would leave a file/pos that points into other
//! history, so the first GTID from a server the checkpoint knows must
//! continue that server's sequence, else [`SourceError::Diverged`].

use crate::binlog::{
    self, gtid_flags, ty, FormatDescription, Header, MariaGtidEvent, MysqlGtidEvent, Query, Rotate,
    Rows, RowsKind, TableMap,
};
use crate::checkpoint::{MysqlCheckpoint, Persister};
use crate::client;
use crate::convert::Plan;
use crate::ddl::{self, Statement};
use crate::error::{code, server_code, SourceError};
use crate::gtid::{GtidSet, GtidState, MariaGtid};
use crate::runtime::Runtime;
use futures_util::StreamExt as _;
use mysql_async::binlog::events::Event;
use mysql_async::BinlogStreamRequest;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_core::envelope::{Change, Op, Row, TxInfo};
use tidemark_core::metrics as m;
use tidemark_core::position;
use tidemark_core::source::SourceContext;

/// Least time between two checkpoint tokens.
const TOKEN_EVERY: Duration = Duration::from_millis(20);

/// One captured change waiting to be encoded.
#[derive(Debug)]
struct Pending {
    op: Op,
    plan: Arc<Plan>,
    before: Option<Row>,
    after: Option<Row>,
    seq: u64,
}

/// The transaction group being read.
#[derive(Debug)]
struct Group {
    /// `source.tx` of its events: id and `commit_pos` are the GTID (or `file:pos` without one);
    /// `seq` and `last` are set per event as it is encoded.
    tx: TxInfo,
    /// `<file index>:<offset>` prefix of `source.pos`.
    commit_prefix: String,
    /// Captured changes so far.
    seq: u64,
    /// Commit time (ms).
    ts_ms: i64,
    /// One statement, no BEGIN/COMMIT.
    standalone: bool,
    /// The group is an XA PREPARE: its rows wait for XA COMMIT.
    xa_prepare: bool,
    /// MariaDB GTID of the group.
    maria: Option<MariaGtid>,
    /// MySQL GTID of the group.
    mysql: Option<([u8; 16], u64)>,
    /// Changes of an XA PREPARE group, held.
    held: Vec<Pending>,
}

impl Group {
    /// A group whose first event (GTID, BEGIN or ROWS) is `h`; neither standalone nor XA.
    fn new(tx_id: String, commit_prefix: String, h: &Header) -> Group {
        Group {
            tx: TxInfo {
                id: tx_id.clone(),
                seq: 0,
                commit_pos: tx_id,
                last: false,
            },
            commit_prefix,
            seq: 0,
            ts_ms: i64::from(h.timestamp) * 1000,
            standalone: false,
            xa_prepare: false,
            maria: None,
            mysql: None,
            held: Vec::new(),
        }
    }
}

/// Reads the binlog from a checkpoint until shutdown or error.
pub struct Streamer<'r> {
    rt: &'r mut Runtime,
    file: String,
    file_idx: u32,
    pos: u64,
    fde: FormatDescription,
    seen_fde: bool,
    maria: GtidState,
    mysql: GtidSet,
    /// Events carry a CRC32 (`binlog_checksum`), read once.
    checksums: bool,
    /// Wall clock (ms) when the current binlog event was read: the envelopes' `ts_ms`.
    event_ms: i64,
    /// The KV bucket holding the checkpoint, named in errors that ask for a re-snapshot.
    state_bucket: String,
    /// `server_id` of the server the start checkpoint was taken on.
    start_server_id: Option<u32>,
    /// Set when resumed by file/pos with GTIDs known: the state the next GTIDs must continue.
    continues: Option<GtidState>,
    /// Table id → (TABLE_MAP body, plan or `None` when not captured). MariaDB repeats the same
    /// TABLE_MAP before every transaction: an identical body skips parsing altogether.
    table_ids: HashMap<u64, (Vec<u8>, Option<Arc<Plan>>)>,
    group: Option<Group>,
    pending: Option<Pending>,
    /// Prepared XA transactions by xid key.
    xa: HashMap<String, Vec<Pending>>,
    /// Xid of the last XA_PREPARE event / statement in the current group.
    last_ts_ms: i64,
    last_token: Instant,
    dirty: bool,
    lag: metrics::Gauge,
    lag_bytes: metrics::Gauge,
}

fn map_stream_error(e: mysql_async::Error, rt: &Runtime, bucket: &str) -> SourceError {
    match server_code(&e) {
        Some(code::MASTER_FATAL_READING_BINLOG) => SourceError::Purged {
            detail: match &e {
                mysql_async::Error::Server(s) => s.message.clone(),
                other => other.to_string(),
            },
            bucket: bucket.to_owned(),
            key: tidemark_core::state::source_key(&rt.settings.pipeline),
        },
        Some(code::SLAVE_SAME_ID) => SourceError::DuplicateServerId {
            server_id: rt.settings.server_id,
            detail: e.to_string(),
        },
        _ => SourceError::Stream { source: e },
    }
}

impl<'r> Streamer<'r> {
    /// A streamer starting at `start`, whose checkpoint lives in `state_bucket`.
    pub fn new(
        rt: &'r mut Runtime,
        start: &MysqlCheckpoint,
        state_bucket: &str,
    ) -> Result<Streamer<'r>, SourceError> {
        let maria = if rt.flavour() == binlog::Flavour::Mariadb {
            GtidState::parse(&start.gtid_state).map_err(|e| SourceError::Config {
                message: format!("stored checkpoint: {e}"),
            })?
        } else {
            GtidState::default()
        };
        let mysql = if rt.flavour() == binlog::Flavour::Mysql {
            GtidSet::parse(&start.gtid_state).map_err(|e| SourceError::Config {
                message: format!("stored checkpoint: {e}"),
            })?
        } else {
            GtidSet::default()
        };
        let pipeline = rt.settings.pipeline.clone();
        Ok(Streamer {
            file_idx: binlog::file_index(&start.file).unwrap_or(0),
            file: start.file.clone(),
            pos: start.pos,
            fde: FormatDescription::default(),
            seen_fde: false,
            maria,
            mysql,
            checksums: rt.server.checksums(),
            event_ms: 0,
            state_bucket: state_bucket.to_owned(),
            start_server_id: start.server_id,
            continues: None,
            table_ids: HashMap::new(),
            group: None,
            pending: None,
            xa: HashMap::new(),
            last_ts_ms: start.ts_ms,
            last_token: Instant::now(),
            dirty: false,
            lag: metrics::gauge!(m::SOURCE_LAG, m::L_PIPELINE => pipeline.clone()),
            lag_bytes: metrics::gauge!(m::SOURCE_SLOT_LAG, m::L_PIPELINE => pipeline),
            rt,
        })
    }

    fn gtid_text(&self) -> String {
        match self.rt.flavour() {
            binlog::Flavour::Mariadb => self.maria.to_string(),
            binlog::Flavour::Mysql => self.mysql.to_string(),
        }
    }

    /// The checkpoint for the current position (a transaction boundary).
    fn checkpoint(&self) -> MysqlCheckpoint {
        MysqlCheckpoint {
            gtid_state: self.gtid_text(),
            file: self.file.clone(),
            pos: self.pos,
            snapshot_done: true,
            flavour: Some(self.rt.flavour()),
            server_id: Some(self.rt.server.server_id()),
            server_uuid: Some(self.rt.server.var("server_uuid").to_owned())
                .filter(|s| !s.is_empty()),
            ts_ms: self.last_ts_ms,
        }
    }

    /// Whether MariaDB must position the stream by GTID (see the module notes): only when the
    /// checkpoint has GTIDs and its file/pos cannot be trusted on this server.
    async fn maria_resume_by_gtid(&mut self) -> bool {
        if self.maria.is_empty() {
            return false;
        }
        if self.start_server_id != Some(self.rt.server.server_id()) || self.pos < 4 {
            return true;
        }
        match client::binary_logs(&mut self.rt.meta).await {
            Ok(logs) => !logs
                .iter()
                .any(|(name, size)| *name == self.file && *size >= self.pos),
            Err(e) => {
                tracing::warn!(pipeline = %self.rt.settings.pipeline, error = %e,
                    "cannot list binary logs; resuming by GTID");
                true
            }
        }
    }

    async fn open(&mut self) -> Result<mysql_async::BinlogStream, SourceError> {
        let by_gtid = match self.rt.flavour() {
            binlog::Flavour::Mariadb => self.maria_resume_by_gtid().await,
            binlog::Flavour::Mysql => !self.mysql.is_empty(),
        };
        if !by_gtid && !self.maria.is_empty() {
            self.continues = Some(self.maria.clone());
        }
        let rt = &*self.rt;
        let mut conn = rt.settings.spec.binlog().await?;
        let hb_ns = rt.settings.heartbeat.as_nanos();
        let gtid = self.gtid_text();
        let what = "preparing the binlog connection";
        client::exec(
            &mut conn,
            &format!("SET @master_heartbeat_period = {hb_ns}"),
            what,
        )
        .await?;
        client::exec(
            &mut conn,
            "SET @master_binlog_checksum = @@global.binlog_checksum",
            what,
        )
        .await?;
        let mut request = BinlogStreamRequest::new(rt.settings.server_id);
        let file = self.file.clone();
        match rt.flavour() {
            binlog::Flavour::Mariadb => {
                // Without capability 4 MariaDB rewrites GTID events as BEGIN queries.
                client::exec(&mut conn, "SET @mariadb_slave_capability = 4", what).await?;
                if by_gtid {
                    client::exec(
                        &mut conn,
                        &format!("SET @slave_connect_state = {}", client::quote_str(&gtid)),
                        what,
                    )
                    .await?;
                    client::exec(&mut conn, "SET @slave_gtid_strict_mode = 1", what).await?;
                    client::exec(&mut conn, "SET @slave_gtid_ignore_duplicates = 0", what).await?;
                } else {
                    request = request.with_filename(file.as_bytes()).with_pos(self.pos);
                }
            }
            binlog::Flavour::Mysql => {
                client::exec(
                    &mut conn,
                    &format!("SET @source_heartbeat_period = {hb_ns}"),
                    what,
                )
                .await?;
                if by_gtid {
                    request = request.with_gtid().with_gtid_set(self.mysql.to_sids());
                } else {
                    request = request.with_filename(file.as_bytes()).with_pos(self.pos);
                }
            }
        }
        tracing::info!(
            pipeline = %rt.settings.pipeline,
            server_id = rt.settings.server_id,
            file = %self.file,
            pos = self.pos,
            gtid = %gtid,
            by = if by_gtid { "gtid" } else { "file/pos" },
            "requesting binlog stream"
        );
        let stream = conn
            .get_binlog_stream(request)
            .await
            .map_err(|e| map_stream_error(e, rt, &self.state_bucket))?;
        Ok(stream)
    }

    /// Streams until shutdown (then flushes and persists) or an error.
    pub async fn run(
        mut self,
        ctx: &SourceContext<MysqlCheckpoint>,
        persister: &mut Persister,
    ) -> Result<(), SourceError> {
        let stream = self.open().await?;
        // mysql_common's event framing can panic on malformed packets; a panic becomes an error.
        let mut stream = std::panic::AssertUnwindSafe(stream).catch_unwind();
        let component = self.rt.settings.component();
        ctx.health.ready(&component);
        let read_timeout = (self.rt.settings.heartbeat * 3).max(Duration::from_secs(3));
        // Liveness is judged at the ticks: an event count that moved since the last tick means
        // the stream is alive (no clock read per event on the hot path).
        let mut events = 0u64;
        let mut events_at_tick = 0u64;
        let mut last_event = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_lag_check = Instant::now() - Duration::from_secs(60);
        let shutdown = ctx.shutdown.cancelled();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = tick.tick() => {
                    if events != events_at_tick {
                        events_at_tick = events;
                        last_event = Instant::now();
                    }
                    if last_event.elapsed() > read_timeout {
                        return Err(SourceError::Timeout {
                            what: format!("reading the binlog: no event or heartbeat for {} s", read_timeout.as_secs()),
                        });
                    }
                    self.idle_token(ctx).await?;
                    persister.tick(&ctx.state, &ctx.acked).await?;
                    if last_lag_check.elapsed() >= Duration::from_secs(10) {
                        last_lag_check = Instant::now();
                        self.measure_retained(persister).await;
                    }
                }
                item = stream.next() => {
                    events += 1;
                    match item {
                        None => return Err(SourceError::StreamEnded { server_id: self.rt.settings.server_id }),
                        Some(Err(_panic)) => return Err(SourceError::Decode {
                            file: self.file.clone(),
                            pos: self.pos,
                            source: binlog::DecodeError::invalid("binlog packet", "event framing failed on a malformed packet"),
                        }),
                        Some(Ok(Err(e))) => return Err(map_stream_error(e, self.rt, &self.state_bucket)),
                        Some(Ok(Ok(event))) => self.handle(ctx, &event).await?,
                    }
                }
            }
        }
        tracing::info!(pipeline = %self.rt.settings.pipeline, "binlog stream stopping");
        if self.dirty && self.group.is_none() && self.xa.is_empty() {
            self.send_token(ctx).await?;
        }
        ctx.outbox.flush().await?;
        persister.flush(&ctx.state, &ctx.acked).await?;
        Ok(())
    }

    async fn measure_retained(&mut self, persister: &Persister) {
        let Some(saved) = persister.saved().cloned() else {
            return;
        };
        match client::binary_logs(&mut self.rt.meta).await {
            Ok(logs) => self
                .lag_bytes
                .set(client::bytes_after(&logs, &saved.file, saved.pos) as f64),
            Err(e) => {
                tracing::warn!(pipeline = %self.rt.settings.pipeline, error = %e, "cannot measure binlog retention")
            }
        }
    }

    /// Between groups, lets the checkpoint follow the stream even when nothing is captured.
    async fn idle_token(
        &mut self,
        ctx: &SourceContext<MysqlCheckpoint>,
    ) -> Result<(), SourceError> {
        if self.dirty
            && self.group.is_none()
            && self.xa.is_empty()
            && self.last_token.elapsed() >= TOKEN_EVERY
        {
            self.send_token(ctx).await?;
        }
        Ok(())
    }

    async fn send_token(
        &mut self,
        ctx: &SourceContext<MysqlCheckpoint>,
    ) -> Result<(), SourceError> {
        ctx.outbox.checkpoint(self.checkpoint()).await?;
        self.last_token = Instant::now();
        self.dirty = false;
        Ok(())
    }

    fn decode_err(&self, source: binlog::DecodeError) -> SourceError {
        SourceError::Decode {
            file: self.file.clone(),
            pos: self.pos,
            source,
        }
    }

    /// Verifies the CRC and returns the event body without checksum.
    fn body<'e>(&self, event: &'e Event, h: &Header) -> Result<&'e [u8], SourceError> {
        let data = event.data();
        if !self.checksums {
            return Ok(data);
        }
        match event.checksum() {
            Some(sum) => {
                let alg = if h.type_code == ty::FORMAT_DESCRIPTION {
                    match event.footer().get_checksum_alg() {
                        Ok(Some(a)) => Some(a as u8),
                        _ => None,
                    }
                } else {
                    None
                };
                binlog::verify_crc(h, data, alg, u32::from_le_bytes(sum))
                    .map_err(|e| self.decode_err(e))?;
                Ok(data)
            }
            None if !self.seen_fde && h.type_code != ty::FORMAT_DESCRIPTION => {
                // Before the first FORMAT_DESCRIPTION the framing does not know checksums are
                // on: the CRC is still at the end of the body (the fake ROTATE).
                binlog::strip_trailing_crc(h, data).map_err(|e| self.decode_err(e))
            }
            None => Ok(data),
        }
    }

    async fn handle(
        &mut self,
        ctx: &SourceContext<MysqlCheckpoint>,
        event: &Event,
    ) -> Result<(), SourceError> {
        let eh = event.header();
        let h = Header {
            timestamp: eh.timestamp(),
            type_code: eh.event_type_raw(),
            server_id: eh.server_id(),
            event_size: eh.event_size(),
            log_pos: eh.log_pos(),
            flags: eh.flags_raw(),
        };
        let data = self.body(event, &h)?;
        match h.type_code {
            ty::FORMAT_DESCRIPTION => {
                self.fde = FormatDescription::parse(data).map_err(|e| self.decode_err(e))?;
                self.seen_fde = true;
            }
            ty::ROTATE => {
                let r = Rotate::parse(data).map_err(|e| self.decode_err(e))?;
                let idx = binlog::file_index(&r.file).ok_or_else(|| SourceError::Unsupported {
                    what: format!("binlog file name {:?} has no numeric suffix", r.file),
                    fix: "use the default log_bin naming (basename.NNNNNN)".into(),
                })?;
                if self.file != r.file {
                    // Table ids are per file on the server side; a new file starts a new map.
                    self.table_ids.clear();
                }
                self.file = r.file;
                self.file_idx = idx;
                self.pos = r.pos;
            }
            ty::HEARTBEAT if self.group.is_none() => self.lag.set(0.0),
            ty::MARIA_GTID => {
                let g = MariaGtidEvent::parse(data, h.server_id).map_err(|e| self.decode_err(e))?;
                self.check_continues(g.gtid)?;
                self.close_dangling(ctx, h.log_pos).await?;
                self.group = Some(Group {
                    standalone: g.flags & gtid_flags::STANDALONE != 0,
                    xa_prepare: g.flags & gtid_flags::PREPARED_XA != 0,
                    maria: Some(g.gtid),
                    ..Group::new(g.gtid.to_string(), self.commit_prefix(h.log_pos), &h)
                });
            }
            ty::MARIA_GTID_LIST => {
                let list = binlog::parse_gtid_list(data).map_err(|e| self.decode_err(e))?;
                self.maria.add_missing(&list);
            }
            ty::MYSQL_GTID | ty::MYSQL_ANONYMOUS_GTID => {
                let g = MysqlGtidEvent::parse(data).map_err(|e| self.decode_err(e))?;
                self.close_dangling(ctx, h.log_pos).await?;
                let anonymous = h.type_code == ty::MYSQL_ANONYMOUS_GTID || g.gno == 0;
                let tx_id = if anonymous {
                    format!("{}:{}", self.file, h.log_pos)
                } else {
                    g.text()
                };
                self.group = Some(Group {
                    standalone: true, // until a BEGIN says otherwise
                    mysql: (!anonymous).then_some((g.uuid, g.gno)),
                    ..Group::new(tx_id, self.commit_prefix(h.log_pos), &h)
                });
            }
            ty::QUERY => {
                self.event_ms = m::now_ms();
                let q = Query::parse(data).map_err(|e| self.decode_err(e))?;
                self.query(ctx, &h, &q).await?;
            }
            ty::XID => {
                self.end_group(ctx, &h).await?;
            }
            ty::XA_PREPARE => {
                let key = xa_prepare_key(data);
                if let Some(g) = self.group.as_mut() {
                    g.xa_prepare = true;
                }
                self.end_xa_prepare(key, &h);
            }
            ty::TABLE_MAP => {
                let id_len = self.fde.table_id_len();
                let id = data.get(..id_len).map(crate::bytes::le);
                if id.is_some_and(|id| {
                    self.table_ids
                        .get(&id)
                        .is_some_and(|(d, _)| d.as_slice() == data)
                }) {
                    return Ok(());
                }
                let map = TableMap::parse(data, id_len, self.rt.flavour())
                    .map_err(|e| self.decode_err(e))?;
                let plan = if self.rt.settings.selected(&map.db, &map.table) {
                    let def = binlog::table_map_definition(data, id_len);
                    Some(self.rt.plan_for_map(&map, def).await?)
                } else {
                    None
                };
                self.table_ids.insert(map.table_id, (data.to_vec(), plan));
            }
            t if binlog::rows_kind(t).is_some() => {
                if let Some((kind, v2)) = binlog::rows_kind(t) {
                    self.event_ms = m::now_ms();
                    self.rows(ctx, &h, data, kind, v2).await?;
                }
            }
            t if binlog::refused(t).is_some() => {
                if let Some((what, fix)) = binlog::refused(t) {
                    return Err(SourceError::Unsupported {
                        what,
                        fix: fix.into(),
                    });
                }
            }
            // STOP, ANNOTATE_ROWS, BINLOG_CHECKPOINT, PREVIOUS_GTIDS, START_ENCRYPTION,
            // ROWS_QUERY, INTVAR, RAND, USER_VAR, …: nothing to capture.
            _ => {}
        }
        Ok(())
    }

    /// After a file/pos resume: the first GTID of a (domain, server) the checkpoint knows must
    /// come after it, else the file holds other history than the one the checkpoint was taken in.
    fn check_continues(&mut self, g: MariaGtid) -> Result<(), SourceError> {
        let Some(known) = self
            .continues
            .as_ref()
            .and_then(|c| c.get(g.domain))
            .filter(|k| k.server == g.server)
        else {
            return Ok(());
        };
        self.continues = None;
        if g.seq > known.seq {
            return Ok(());
        }
        Err(SourceError::Diverged {
            detail: format!(
                "GTID {g} follows {}:{} where the checkpoint stands at {known}",
                self.file, self.pos
            ),
            bucket: self.state_bucket.clone(),
            key: tidemark_core::state::source_key(&self.rt.settings.pipeline),
        })
    }

    fn commit_prefix(&self, log_pos: u32) -> String {
        let mut prefix = String::with_capacity(25);
        position::push_hex(&mut prefix, u64::from(self.file_idx), 8);
        prefix.push(':');
        position::push_hex(&mut prefix, u64::from(log_pos), 16);
        prefix
    }

    /// A new group began while one was open (should not happen): finish the old one.
    async fn close_dangling(
        &mut self,
        ctx: &SourceContext<MysqlCheckpoint>,
        log_pos: u32,
    ) -> Result<(), SourceError> {
        if let Some(g) = &self.group {
            tracing::warn!(pipeline = %self.rt.settings.pipeline, tx = %g.tx.id, log_pos, "event group ended without commit; closing it");
            self.flush_pending(ctx, true).await?;
            self.group = None;
        }
        Ok(())
    }

    async fn query(
        &mut self,
        ctx: &SourceContext<MysqlCheckpoint>,
        h: &Header,
        q: &Query<'_>,
    ) -> Result<(), SourceError> {
        let sql = String::from_utf8_lossy(q.statement);
        let stmt = ddl::classify(&sql);
        match &stmt {
            Statement::Begin => {
                match self.group.as_mut() {
                    Some(g) => g.standalone = false,
                    None => {
                        // No GTID (old server, gtid disabled): the group starts here.
                        self.group = Some(Group::new(
                            format!("{}:{}", self.file, h.log_pos),
                            self.commit_prefix(h.log_pos),
                            h,
                        ))
                    }
                }
                return Ok(());
            }
            Statement::Commit | Statement::Rollback => {
                return self.end_group(ctx, h).await;
            }
            Statement::XaStart => {
                if let Some(g) = self.group.as_mut() {
                    g.xa_prepare = true;
                    g.standalone = false;
                }
                return Ok(());
            }
            Statement::XaCommit | Statement::XaRollback => {
                // One-phase commit: the rows are in this very group.
                let own = match self.group.as_mut() {
                    Some(g) => {
                        g.xa_prepare = false;
                        std::mem::take(&mut g.held)
                    }
                    None => Vec::new(),
                };
                let held = if own.is_empty() {
                    let key = xa_statement_key(&sql);
                    match key.as_ref().and_then(|k| self.xa.remove(k)) {
                        Some(v) => Some(v),
                        None if self.xa.len() == 1 => self.xa.drain().map(|(_, v)| v).next(),
                        None => None,
                    }
                } else {
                    Some(own)
                };
                match (held, &stmt) {
                    (Some(changes), Statement::XaCommit) => {
                        for p in changes {
                            self.emit(ctx, p.op, p.plan, p.before, p.after).await?;
                        }
                    }
                    (None, Statement::XaCommit) => {
                        m::error("source", "xa_unknown");
                        tracing::error!(
                            pipeline = %self.rt.settings.pipeline, statement = %truncate(&sql),
                            "XA COMMIT of a transaction prepared before the stream start: its rows were not captured"
                        );
                    }
                    _ => {}
                }
                return self.end_group(ctx, h).await;
            }
            Statement::Truncate { db, table } => {
                let schema = String::from_utf8_lossy(q.schema).into_owned();
                let db = db.clone().unwrap_or(schema);
                if self.rt.settings.selected(&db, table) {
                    match self.rt.plan_for_table(&db, table).await? {
                        Some(plan) => self.emit(ctx, Op::Truncate, plan, None, None).await?,
                        None => {
                            tracing::warn!(pipeline = %self.rt.settings.pipeline, db = %db, table = %table,
                            "TRUNCATE of a table that no longer exists; no envelope")
                        }
                    }
                }
            }
            Statement::Ddl => {
                tracing::info!(pipeline = %self.rt.settings.pipeline, statement = %truncate(&sql), "DDL; table descriptions refreshed");
                self.rt.invalidate();
                self.table_ids.clear();
            }
            Statement::Dml { verb } => {
                m::error("source", "statement_dml");
                tracing::error!(
                    pipeline = %self.rt.settings.pipeline,
                    schema = %String::from_utf8_lossy(q.schema),
                    verb = %verb,
                    statement = %truncate(&sql),
                    "DML logged in STATEMENT format cannot be captured; set binlog_format=ROW for every session"
                );
            }
            Statement::Other => {}
        }
        if self.group.as_ref().is_some_and(|g| g.standalone) {
            self.end_group(ctx, h).await?;
        } else if self.group.is_none() {
            // A statement outside any group (should not happen with GTIDs): still a boundary.
            if h.log_pos != 0 {
                self.pos = u64::from(h.log_pos);
                self.dirty = true;
            }
        }
        Ok(())
    }

    async fn rows(
        &mut self,
        ctx: &SourceContext<MysqlCheckpoint>,
        h: &Header,
        data: &[u8],
        kind: RowsKind,
        v2: bool,
    ) -> Result<(), SourceError> {
        let rows =
            Rows::parse(data, kind, v2, self.fde.table_id_len()).map_err(|e| self.decode_err(e))?;
        let plan = match self.table_ids.get(&rows.table_id) {
            Some((_, Some(plan))) => plan.clone(),
            Some((_, None)) => return Ok(()),
            None => {
                return Err(self.decode_err(binlog::DecodeError::invalid(
                    "ROWS",
                    format!("table id {} without a preceding TABLE_MAP", rows.table_id),
                )))
            }
        };
        if rows.ncols != plan.kinds.len() {
            return Err(self.decode_err(binlog::DecodeError::invalid(
                "ROWS",
                format!(
                    "{} columns for {} whose TABLE_MAP has {}",
                    rows.ncols,
                    plan.meta.qualified_name(),
                    plan.kinds.len()
                ),
            )));
        }
        if self.group.is_none() {
            // Rows outside a group: treat the event as its own group.
            self.group = Some(Group::new(
                format!("{}:{}", self.file, h.log_pos),
                self.commit_prefix(h.log_pos),
                h,
            ));
        }
        if let Some(g) = self.group.as_mut() {
            g.standalone = false;
        }
        let mut c = crate::bytes::Cursor::new(rows.rows);
        while !c.is_empty() {
            let (op, before, after) = match kind {
                RowsKind::Write => {
                    let after = plan
                        .decode_row(rows.present, &mut c)
                        .map_err(|e| self.decode_err(e))?;
                    (Op::Create, None, Some(after))
                }
                RowsKind::Delete => {
                    let before = plan
                        .decode_row(rows.present, &mut c)
                        .map_err(|e| self.decode_err(e))?;
                    (Op::Delete, Some(before), None)
                }
                RowsKind::Update => {
                    let before = plan
                        .decode_row(rows.present, &mut c)
                        .map_err(|e| self.decode_err(e))?;
                    let after = plan
                        .decode_row(rows.present_after, &mut c)
                        .map_err(|e| self.decode_err(e))?;
                    (Op::Update, Some(before), Some(after))
                }
            };
            self.emit(ctx, op, plan.clone(), before, after).await?;
        }
        Ok(())
    }

    async fn emit(
        &mut self,
        ctx: &SourceContext<MysqlCheckpoint>,
        op: Op,
        plan: Arc<Plan>,
        before: Option<Row>,
        after: Option<Row>,
    ) -> Result<(), SourceError> {
        let Some(g) = self.group.as_mut() else {
            return Ok(());
        };
        if g.xa_prepare {
            g.held.push(Pending {
                op,
                plan,
                before,
                after,
                seq: 0,
            });
            return Ok(());
        }
        g.seq += 1;
        let seq = g.seq;
        plan.count(op);
        self.flush_pending(ctx, false).await?;
        self.pending = Some(Pending {
            op,
            plan,
            before,
            after,
            seq,
        });
        Ok(())
    }

    /// Encodes and sends the held-back change.
    async fn flush_pending(
        &mut self,
        ctx: &SourceContext<MysqlCheckpoint>,
        last: bool,
    ) -> Result<(), SourceError> {
        let (Some(p), Some(g)) = (self.pending.take(), self.group.as_mut()) else {
            return Ok(());
        };
        let pos = position::streamed(&g.commit_prefix, p.seq);
        g.tx.seq = p.seq;
        g.tx.last = last;
        let change = Change {
            op: p.op,
            table: &p.plan.meta,
            pos: &pos,
            tx: &g.tx,
            ts_ms: g.ts_ms,
            snapshot: false,
            before: p.before.as_ref(),
            after: p.after.as_ref(),
        };
        let msg = self
            .rt
            .encoder
            .encode(&self.rt.naming, &change, self.event_ms);
        ctx.outbox.event(msg).await?;
        Ok(())
    }

    /// The group ended at the event `h`.
    async fn end_group(
        &mut self,
        ctx: &SourceContext<MysqlCheckpoint>,
        h: &Header,
    ) -> Result<(), SourceError> {
        self.flush_pending(ctx, true).await?;
        let Some(g) = self.group.take() else {
            if h.log_pos != 0 {
                self.pos = u64::from(h.log_pos);
                self.dirty = true;
            }
            return Ok(());
        };
        if let Some(gtid) = g.maria {
            self.maria.update(gtid);
        }
        if let Some((uuid, gno)) = g.mysql {
            self.mysql.add(uuid, gno);
        }
        if h.log_pos != 0 {
            self.pos = u64::from(h.log_pos);
        }
        self.last_ts_ms = g.ts_ms;
        self.lag
            .set(((m::now_ms() - i64::from(h.timestamp) * 1000).max(0) as f64) / 1000.0);
        self.dirty = true;
        // Tokens are cheap but not free: one per group is plenty for busy streams of large
        // transactions; for floods of tiny ones a token every few ms moves the checkpoint just
        // as well (the rest follows at idle ticks and at shutdown).
        let every = if g.seq > 0 {
            TOKEN_EVERY
        } else {
            Duration::from_secs(1)
        };
        if self.xa.is_empty() && self.last_token.elapsed() >= every {
            self.send_token(ctx).await?;
        }
        Ok(())
    }

    /// An XA PREPARE group ended: hold its rows (and the checkpoint) until XA COMMIT.
    fn end_xa_prepare(&mut self, key: Option<String>, h: &Header) {
        let Some(g) = self.group.take() else { return };
        if let Some(gtid) = g.maria {
            self.maria.update(gtid);
        }
        if let Some((uuid, gno)) = g.mysql {
            self.mysql.add(uuid, gno);
        }
        if h.log_pos != 0 {
            self.pos = u64::from(h.log_pos);
        }
        let key = key.unwrap_or_else(|| g.tx.id.clone());
        tracing::info!(pipeline = %self.rt.settings.pipeline, xid = %key, rows = g.held.len(),
            "XA transaction prepared; its rows wait for XA COMMIT and checkpoints pause");
        self.xa.insert(key, g.held);
    }
}

fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(200).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Key of an XA_PREPARE event body: one_phase u8, format u32, gtrid len u32, bqual len u32, data.
pub(crate) fn xa_prepare_key(data: &[u8]) -> Option<String> {
    let mut c = crate::bytes::Cursor::new(data);
    c.u8("one phase").ok()?;
    let format = c.u32("format").ok()?;
    let gl = c.u32("gtrid length").ok()? as usize;
    let bl = c.u32("bqual length").ok()? as usize;
    let g = c.take(gl, "gtrid").ok()?;
    let b = c.take(bl, "bqual").ok()?;
    Some(format!("{format}:{}:{}", hex(g), hex(b)))
}

/// Key of an `XA COMMIT X'..',X'..',n` / `XA ROLLBACK …` statement.
pub(crate) fn xa_statement_key(sql: &str) -> Option<String> {
    let upper = sql.to_ascii_uppercase();
    let start = upper.find("X'")?;
    let rest = &sql[start..];
    let mut parts = Vec::new();
    let mut s = rest;
    for _ in 0..2 {
        let body = s.strip_prefix("X'").or_else(|| s.strip_prefix("x'"))?;
        let end = body.find('\'')?;
        parts.push(body[..end].to_ascii_lowercase());
        s = body[end + 1..]
            .trim_start()
            .strip_prefix(',')
            .unwrap_or("")
            .trim_start();
    }
    let format: u32 = s
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    Some(format!("{format}:{}:{}", parts[0], parts[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xa_keys_agree() {
        let mut data = vec![0u8];
        data.extend_from_slice(&1u32.to_le_bytes());
        data.extend_from_slice(&2u32.to_le_bytes());
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(b"t1");
        assert_eq!(xa_prepare_key(&data).as_deref(), Some("1:7431:"));
        assert_eq!(
            xa_statement_key("XA COMMIT X'7431',X'',1").as_deref(),
            Some("1:7431:")
        );
        assert_eq!(
            xa_statement_key("XA ROLLBACK X'7431',X'62',7").as_deref(),
            Some("7:7431:62")
        );
        assert_eq!(xa_statement_key("XA COMMIT 't1'"), None);
        assert_eq!(xa_prepare_key(&data[..5]), None);
    }
}
