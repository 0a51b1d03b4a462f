//! The initial snapshot, consistent with the point where streaming starts.
//!
//! ```text
//!  MariaDB (no locks)                         MySQL 8 (brief global read lock)
//!  START TRANSACTION WITH CONSISTENT SNAPSHOT  FLUSH TABLES WITH READ LOCK
//!  SHOW STATUS LIKE 'binlog_snapshot_%'       SHOW MASTER STATUS (+ Executed_Gtid_Set)
//!  SELECT BINLOG_GTID_POS(file, pos)          START TRANSACTION WITH CONSISTENT SNAPSHOT
//!                                             UNLOCK TABLES
//!           └──── read every table in primary-key chunks inside that transaction ────┘
//!                      stream from (gtid, file, pos): nothing missed, nothing twice
//! ```
//!
//! MariaDB records the binlog position that belongs to the transaction's
//! read view (`binlog_snapshot_file/position`), so every change after it is
//! in the binlog after it and every change before it is in the snapshot
//! (InnoDB tables). The snapshot rows are `r` events whose `source.pos` sits
//! just below that position (`<file>:<pos-1>:S<table>:<row>`), so they sort
//! before every streamed change. One connection reads all tables: MariaDB
//! cannot share a read view between connections.
//!
//! A checkpoint with `snapshot_done = false` is stored as the snapshot starts. When
//! the process dies before the snapshot finishes, the next start sees it and takes a
//! new snapshot at a later position; the changes between the two positions are never
//! streamed, so a row the first attempt published and that was deleted (or re-keyed)
//! since would linger in every sink. The redo therefore sends a `t` (truncate) event
//! before each table's rows (snapshot position row 0, below them).
//!
//! Tables are read with keyset pagination on the primary key
//! (`WHERE (k) > (last) ORDER BY k LIMIT chunk`) through the binary protocol;
//! a table without a primary key is read in one pass.

use crate::binlog::{self, Flavour};
use crate::checkpoint::{MysqlCheckpoint, Persister};
use crate::client::{self, quote_ident};
use crate::convert::{plan_from_info, Plan};
use crate::error::SourceError;
use crate::runtime::Runtime;
use mysql_async::prelude::Queryable as _;
use mysql_async::Conn;
use std::sync::Arc;
use tidemark_core::envelope::{Change, Op, TxInfo};
use tidemark_core::metrics as m;
use tidemark_core::position;
use tidemark_core::source::SourceContext;

/// Where the stream must start for a snapshot (or a start without one).
#[derive(Debug, Clone)]
pub struct StartPoint {
    /// Binlog file.
    pub file: String,
    /// Offset of the first change not in the snapshot.
    pub pos: u64,
    /// GTID position at that point.
    pub gtid: String,
}

impl StartPoint {
    /// The checkpoint that resumes streaming here.
    pub fn checkpoint(&self, rt: &Runtime, ts_ms: i64) -> MysqlCheckpoint {
        MysqlCheckpoint {
            gtid_state: self.gtid.clone(),
            file: self.file.clone(),
            pos: self.pos,
            snapshot_done: true,
            flavour: Some(rt.flavour()),
            server_id: Some(rt.server.server_id()),
            server_uuid: Some(rt.server.var("server_uuid").to_owned()).filter(|s| !s.is_empty()),
            ts_ms,
        }
    }
}

fn snap_err(message: impl Into<String>) -> SourceError {
    SourceError::Snapshot {
        message: message.into(),
    }
}

/// `SHOW MASTER STATUS`-style current position (no snapshot wanted).
pub async fn current_position(rt: &mut Runtime) -> Result<StartPoint, SourceError> {
    let rows: Vec<mysql_async::Row> = client::query(
        &mut rt.meta,
        "SHOW MASTER STATUS",
        "reading the binlog position",
    )
    .await?;
    let row = rows
        .into_iter()
        .next()
        .ok_or_else(|| snap_err("SHOW MASTER STATUS returned nothing: is log_bin enabled?"))?;
    let file: String = row
        .get(0)
        .ok_or_else(|| snap_err("SHOW MASTER STATUS: no file"))?;
    let pos: u64 = row
        .get(1)
        .ok_or_else(|| snap_err("SHOW MASTER STATUS: no position"))?;
    let gtid = match rt.flavour() {
        Flavour::Mariadb => binlog_gtid_pos(&mut rt.meta, &file, pos).await?,
        Flavour::Mysql => row
            .get::<Option<String>, _>(4)
            .flatten()
            .unwrap_or_default(),
    };
    Ok(StartPoint { file, pos, gtid })
}

async fn binlog_gtid_pos(conn: &mut Conn, file: &str, pos: u64) -> Result<String, SourceError> {
    let rows: Vec<Option<String>> = client::query(
        conn,
        &format!("SELECT BINLOG_GTID_POS({}, {pos})", client::quote_str(file)),
        "reading BINLOG_GTID_POS",
    )
    .await?;
    Ok(rows.into_iter().next().flatten().unwrap_or_default())
}

async fn status_value(conn: &mut Conn, name: &str) -> Result<Option<String>, SourceError> {
    let rows: Vec<(String, String)> = client::query(
        conn,
        &format!("SHOW SESSION STATUS LIKE {}", client::quote_str(name)),
        "reading the snapshot position",
    )
    .await?;
    Ok(rows.into_iter().next().map(|(_, v)| v))
}

/// Opens the consistent read view on `conn` and returns the stream start that matches it.
async fn begin(conn: &mut Conn, flavour: Flavour) -> Result<StartPoint, SourceError> {
    let what = "starting the snapshot transaction";
    client::exec(
        conn,
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        what,
    )
    .await?;
    match flavour {
        Flavour::Mariadb => {
            client::exec(
                conn,
                "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
                what,
            )
            .await?;
            let file = status_value(conn, "binlog_snapshot_file")
                .await?
                .filter(|f| !f.is_empty())
                .ok_or_else(|| snap_err("binlog_snapshot_file is empty: is log_bin enabled?"))?;
            let pos: u64 = status_value(conn, "binlog_snapshot_position")
                .await?
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| snap_err("binlog_snapshot_position missing"))?;
            let gtid = binlog_gtid_pos(conn, &file, pos).await?;
            Ok(StartPoint { file, pos, gtid })
        }
        Flavour::Mysql => {
            client::exec(conn, "FLUSH TABLES WITH READ LOCK", what).await?;
            let result = async {
                let rows: Vec<mysql_async::Row> =
                    match client::query(conn, "SHOW BINARY LOG STATUS", what).await {
                        Ok(r) => r,
                        Err(_) => client::query(conn, "SHOW MASTER STATUS", what).await?,
                    };
                let row = rows.into_iter().next().ok_or_else(|| {
                    snap_err("SHOW MASTER STATUS returned nothing: is log_bin enabled?")
                })?;
                let file: String = row.get(0).ok_or_else(|| snap_err("no binlog file"))?;
                let pos: u64 = row.get(1).ok_or_else(|| snap_err("no binlog position"))?;
                let gtid: String = row
                    .get::<Option<String>, _>(4)
                    .flatten()
                    .unwrap_or_default();
                client::exec(
                    conn,
                    "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
                    what,
                )
                .await?;
                Ok::<_, SourceError>(StartPoint { file, pos, gtid })
            }
            .await;
            let unlock = client::exec(conn, "UNLOCK TABLES", what).await;
            let start = result?;
            unlock?;
            Ok(start)
        }
    }
}

/// Reads every selected table and publishes `r` events; returns the stream start. With
/// `replaces_unfinished` (an earlier snapshot was interrupted) each table's rows are preceded
/// by a `t` event. Stores a `snapshot_done = false` checkpoint first, so that an interruption
/// of this snapshot is recognised in turn.
pub async fn run(
    rt: &mut Runtime,
    ctx: &SourceContext<crate::MysqlCheckpoint>,
    persister: &mut Persister,
    replaces_unfinished: bool,
) -> Result<StartPoint, SourceError> {
    let started_ms = m::now_ms();
    let mut conn = rt.settings.spec.sql().await?;
    let start = begin(&mut conn, rt.flavour()).await?;
    let file_idx = binlog::file_index(&start.file).ok_or_else(|| SourceError::Unsupported {
        what: format!("binlog file name {:?} has no numeric suffix", start.file),
        fix: "use the default log_bin naming (basename.NNNNNN)".into(),
    })?;
    let below = format!("{:08X}:{:016X}", file_idx, start.pos.saturating_sub(1));
    let tx_id = if start.gtid.is_empty() {
        format!("snapshot:{}:{}", start.file, start.pos)
    } else {
        format!("snapshot:{}", start.gtid)
    };
    let mut marker = start.checkpoint(rt, 0);
    marker.snapshot_done = false;
    persister.save(&ctx.state, &marker).await?;
    tracing::info!(
        pipeline = %rt.settings.pipeline, file = %start.file, pos = start.pos, gtid = %start.gtid,
        replaces_unfinished, "snapshot started"
    );
    let tables = client::selected_tables(&mut conn, &rt.settings.tables).await?;
    for (index, (db, table)) in tables.iter().enumerate() {
        let Some(info) = client::table_info(&mut conn, rt.flavour(), db, table).await? else {
            continue;
        };
        let plan = Arc::new(plan_from_info(
            &rt.naming,
            db,
            table,
            &info,
            rt.plan_options(),
        ));
        let label = plan.meta.qualified_name();
        metrics::gauge!(m::SNAPSHOT_ROWS_ESTIMATED, m::L_PIPELINE => rt.settings.pipeline.clone(), m::L_TABLE => label.clone())
            .set(info.rows_estimate as f64);
        let counter = metrics::counter!(m::SNAPSHOT_ROWS, m::L_PIPELINE => rt.settings.pipeline.clone(), m::L_TABLE => label.clone());
        // A snapshot event of this table at row `seq`: `r` with the row, `t` (a redo's
        // truncate, row 0) without.
        let event = |encoder: &mut tidemark_core::envelope::Encoder,
                     naming: &tidemark_core::envelope::Naming,
                     seq: u64,
                     row: Option<&tidemark_core::envelope::Row>| {
            let pos = position::snapshot(&below, index as u32, seq);
            let tx = TxInfo {
                id: tx_id.clone(),
                seq,
                commit_pos: start.gtid.clone(),
                last: true,
            };
            let change = Change {
                op: if row.is_some() {
                    Op::Read
                } else {
                    Op::Truncate
                },
                table: &plan.meta,
                pos: &pos,
                tx: &tx,
                ts_ms: started_ms,
                snapshot: true,
                before: None,
                after: row,
            };
            encoder.encode(naming, &change, m::now_ms())
        };
        if replaces_unfinished {
            let msg = event(&mut rt.encoder, &rt.naming, 0, None);
            ctx.outbox.event(msg).await?;
            tracing::info!(pipeline = %rt.settings.pipeline, table = %label, "an earlier snapshot was interrupted; truncating the table in the sinks first");
        }
        let reader = TableReader {
            plan: &plan,
            pk: &info.pk,
            chunk: rt.settings.chunk,
        };
        let rows = reader
            .read(
                &mut conn,
                |seq, row| {
                    plan.count(Op::Read);
                    counter.increment(1);
                    event(&mut rt.encoder, &rt.naming, seq, Some(&row))
                },
                ctx,
            )
            .await?;
        tracing::info!(pipeline = %rt.settings.pipeline, table = %label, rows, "snapshot of table done");
    }
    client::exec(&mut conn, "COMMIT", "ending the snapshot transaction").await?;
    let _ = conn.disconnect().await;
    tracing::info!(pipeline = %rt.settings.pipeline, tables = tables.len(), "snapshot done");
    Ok(start)
}

/// Reads one table in primary-key order.
struct TableReader<'a> {
    plan: &'a Plan,
    pk: &'a [String],
    chunk: u64,
}

impl TableReader<'_> {
    fn select(&self, with_bound: bool) -> String {
        let cols = self
            .plan
            .meta
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let from = format!(
            "{}.{}",
            quote_ident(&self.plan.meta.db),
            quote_ident(&self.plan.meta.table)
        );
        if self.pk.is_empty() {
            return format!("SELECT {cols} FROM {from}");
        }
        let order = self
            .pk
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!("SELECT {cols} FROM {from}");
        if with_bound {
            // (k1 > ?) OR (k1 = ? AND k2 > ?) OR …: a range the optimizer can use.
            let mut ors = Vec::new();
            for i in 0..self.pk.len() {
                let mut ands: Vec<String> = self.pk[..i]
                    .iter()
                    .map(|k| format!("{} = ?", quote_ident(k)))
                    .collect();
                ands.push(format!("{} > ?", quote_ident(&self.pk[i])));
                ors.push(format!("({})", ands.join(" AND ")));
            }
            sql.push_str(&format!(" WHERE {}", ors.join(" OR ")));
        }
        sql.push_str(&format!(" ORDER BY {order} LIMIT {}", self.chunk));
        sql
    }

    fn bound_params(&self, last: &[mysql_async::Value]) -> Vec<mysql_async::Value> {
        let mut out = Vec::new();
        for i in 0..self.pk.len() {
            for v in last.iter().take(i + 1) {
                out.push(v.clone());
            }
        }
        out
    }

    async fn read<F>(
        &self,
        conn: &mut Conn,
        mut encode: F,
        ctx: &SourceContext<crate::MysqlCheckpoint>,
    ) -> Result<u64, SourceError>
    where
        F: FnMut(u64, tidemark_core::envelope::Row) -> tidemark_core::envelope::OutMessage,
    {
        let pk_idx: Vec<usize> = self
            .pk
            .iter()
            .filter_map(|k| {
                self.plan
                    .meta
                    .columns
                    .iter()
                    .position(|c| c.name.eq_ignore_ascii_case(k))
            })
            .collect();
        let what = "reading snapshot rows";
        let mut seq = 0u64;
        let mut last: Option<Vec<mysql_async::Value>> = None;
        let first = conn
            .prep(self.select(false))
            .await
            .map_err(|source| SourceError::Query { what, source })?;
        let next = if self.pk.is_empty() {
            None
        } else {
            Some(
                conn.prep(self.select(true))
                    .await
                    .map_err(|source| SourceError::Query { what, source })?,
            )
        };
        loop {
            let params = match (&last, &next) {
                (Some(l), Some(_)) => mysql_async::Params::Positional(self.bound_params(l)),
                _ => mysql_async::Params::Empty,
            };
            let stmt = match (&last, &next) {
                (Some(_), Some(n)) => n,
                _ => &first,
            };
            let mut result = conn
                .exec_iter(stmt, params)
                .await
                .map_err(|source| SourceError::Query { what, source })?;
            let mut in_chunk = 0u64;
            let mut chunk_last: Option<Vec<mysql_async::Value>> = None;
            while let Some(row) = result
                .next()
                .await
                .map_err(|source| SourceError::Query { what, source })?
            {
                let raw = row.unwrap_raw();
                if !pk_idx.is_empty() {
                    chunk_last = Some(
                        pk_idx
                            .iter()
                            .map(|&i| {
                                raw.get(i)
                                    .cloned()
                                    .flatten()
                                    .unwrap_or(mysql_async::Value::NULL)
                            })
                            .collect(),
                    );
                }
                let values = self.plan.snapshot_row(raw);
                seq += 1;
                in_chunk += 1;
                ctx.outbox.event(encode(seq, values)).await?;
            }
            drop(result);
            if self.pk.is_empty() || in_chunk < self.chunk {
                break;
            }
            last = chunk_last;
        }
        let _ = conn.close(first).await;
        if let Some(n) = next {
            let _ = conn.close(n).await;
        }
        Ok(seq)
    }
}
