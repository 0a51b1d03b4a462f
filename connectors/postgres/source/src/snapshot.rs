//! The initial snapshot: every existing row once, consistent with the slot.
//!
//! ```text
//!  replication conn: CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT ─▶ (consistent_point, snapshot "S")
//!                                       │  no further command here until every reader imported S
//!  reader 1..N:  BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT 'S'
//!                 └─ tables from a shared queue, chunk by chunk ─▶ op "r" envelopes ─▶ outbox
//!  then: outbox.flush() ─▶ checkpoint {snapshot_done: true} ─▶ START_REPLICATION at consistent_point
//! ```
//!
//! Why this is gap-free and overlap-free: the exported snapshot sees exactly the
//! transactions that committed before the slot's consistent point, and the slot
//! streams exactly those that commit after it. All readers import the same
//! snapshot, so reading in parallel changes nothing.
//!
//! Snapshot rows carry positions just below the consistent point
//! (`position::snapshot(hex16(consistent_point − 1), table, row)`), so they sort
//! before every streamed change. Each row is its own "transaction"
//! (`tx.last = true`): a sink may commit whenever it likes. Streaming starts only
//! after every row was acknowledged, because a sink skips a snapshot row once a
//! streamed change above it was committed.
//!
//! Memory stays bounded: a table with a primary key is read in keyset pages
//! (`WHERE (pk) > (last) ORDER BY pk LIMIT chunk`), one without through a cursor
//! (`FETCH FORWARD chunk`). Values are read as text with the simple query
//! protocol under the same pinned session settings as the walsender, so
//! `convert` turns them into exactly the values the stream would produce.
//!
//! A kill during the snapshot leaves the checkpoint at `snapshot_done = false`;
//! the next start drops the slot and does it all again (rows already published
//! are published again under new positions: at-least-once). The redone snapshot
//! starts at a later consistent point, and the changes between the two points
//! are never streamed, so a row the first attempt published and that was deleted
//! (or re-keyed) before the second would linger in every sink. The redo therefore
//! opens with one `t` (truncate) event per table, with snapshot positions below
//! its rows: sinks empty the table, then receive the complete second snapshot.

use crate::catalog::TableInfo;
use crate::client::{sql_connect, SqlError};
use crate::config::{quote_ident, quote_literal, PgSettings};
use crate::convert;
use crate::pgoutput::{format_lsn, ReplicaIdentity};
use crate::relcache::{
    RelCache, RelationColumnInfo, RelationEntry, RelationInfo, TypeCatalog, PRIMARY_KEY_QUERY,
    RELATION_COLUMNS_QUERY, TYPE_CATALOG_QUERY,
};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tidemark_core::envelope::{Change, Encoder, Naming, Op, TxInfo};
use tidemark_core::error::{Classify, Failure, Retry};
use tidemark_core::metrics as m;
use tidemark_core::position;
use tidemark_core::source::Outbox;
use tidemark_core::CancellationToken;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Errors of the snapshot reader.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A query failed.
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// A value could not be converted.
    #[error("snapshot of {table}: {source}")]
    Convert {
        /// `schema.table`.
        table: String,
        /// Cause.
        #[source]
        source: convert::ConvertError,
    },
    /// The type catalog could not be read.
    #[error("snapshot: reading the type catalog: {0}")]
    Catalog(#[from] crate::relcache::CatalogError),
    /// Something the catalog said makes no sense.
    #[error("snapshot of {table}: {message}")]
    Inconsistent {
        /// `schema.table`.
        table: String,
        /// What.
        message: String,
    },
    /// The publisher stopped.
    #[error("snapshot: the publisher stopped")]
    PublisherGone,
    /// A reader task died.
    #[error("snapshot reader task failed: {0}")]
    Task(String),
}

impl Classify for SnapshotError {
    fn retry(&self) -> Retry {
        match self {
            SnapshotError::Sql(e) => e.retry(),
            SnapshotError::Convert { .. }
            | SnapshotError::Catalog(_)
            | SnapshotError::Inconsistent { .. } => Retry::Definite,
            SnapshotError::PublisherGone | SnapshotError::Task(_) => Retry::Transient,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            SnapshotError::Sql(e) => e.kind(),
            SnapshotError::Convert { source, .. } => source.kind(),
            SnapshotError::Catalog(e) => e.kind(),
            SnapshotError::Inconsistent { .. } => "snapshot",
            SnapshotError::PublisherGone => "publish",
            SnapshotError::Task(_) => "snapshot",
        }
    }
}

/// How a snapshot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every table was read and every row sent to the outbox.
    Completed {
        /// Rows sent.
        rows: u64,
    },
    /// Shutdown fired first; the snapshot must be redone on the next start.
    Interrupted,
}

/// Opens `n` connections that all see the exported snapshot `snapshot_name`. Must complete
/// before the replication connection runs any further command.
pub async fn import(
    s: &PgSettings,
    snapshot_name: &str,
    n: usize,
) -> Result<Vec<Client>, SnapshotError> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let c = sql_connect(s).await?;
        c.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot_name)
        ))
        .await
        .map_err(|e| SqlError::new(format!("importing snapshot {snapshot_name:?}"), e))?;
        conns.push(c);
    }
    Ok(conns)
}

/// One table to read.
struct Job {
    index: u32,
    entry: RelationEntry,
    sql_name: String,
    select_list: String,
    /// Quoted primary-key column names, in key order.
    pk_names: Vec<String>,
    /// `format_type` of each primary-key column, for casts of the last-seen key.
    pk_types: Vec<String>,
    /// Indexes of the primary-key columns in the select list.
    pk_idx: Vec<usize>,
    estimated: f64,
}

/// Everything the readers share.
struct Shared {
    pipeline: String,
    naming: Naming,
    outbox: Outbox<u64>,
    shutdown: CancellationToken,
    below_start: String,
    tx: TxInfo,
    ts_ms: i64,
    chunk: u64,
}

fn ident_of(c: char) -> ReplicaIdentity {
    match c {
        'f' => ReplicaIdentity::Full,
        'n' => ReplicaIdentity::Nothing,
        'i' => ReplicaIdentity::Index,
        _ => ReplicaIdentity::Default,
    }
}

fn text_rows(msgs: Vec<SimpleQueryMessage>) -> Vec<tokio_postgres::SimpleQueryRow> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// Describes `tables` exactly as the stream's relation cache will (same schema version), from
/// inside the snapshot transaction of `c`.
async fn plan(
    c: &Client,
    naming: &Naming,
    db: &str,
    tables: &[TableInfo],
) -> Result<Vec<Job>, SnapshotError> {
    let types = text_rows(
        c.simple_query(TYPE_CATALOG_QUERY)
            .await
            .map_err(|e| SqlError::new("reading the type catalog", e))?,
    );
    let catalog = TypeCatalog::from_text_rows(
        types
            .iter()
            .map(|r| (0..r.len()).map(|i| r.get(i)).collect::<Vec<_>>()),
    )?;
    let mut cache = RelCache::new(naming.clone(), db);
    cache.set_catalog(catalog);
    let pks = primary_keys(c).await?;
    let mut jobs = Vec::with_capacity(tables.len());
    for (index, t) in tables.iter().enumerate() {
        let rows = c
            .query(RELATION_COLUMNS_QUERY, &[&t.oid])
            .await
            .map_err(|e| SqlError::new(format!("reading columns of {}", t.qualified_name()), e))?;
        let mut columns = Vec::with_capacity(rows.len());
        for r in &rows {
            let ctx = || format!("reading columns of {}", t.qualified_name());
            let type_oid: i64 = r.try_get(1).map_err(|e| SqlError::new(ctx(), e))?;
            columns.push(RelationColumnInfo {
                name: r.try_get(0).map_err(|e| SqlError::new(ctx(), e))?,
                type_oid: u32::try_from(type_oid).unwrap_or(0),
                type_modifier: r.try_get(2).map_err(|e| SqlError::new(ctx(), e))?,
                key: r.try_get(3).map_err(|e| SqlError::new(ctx(), e))?,
            });
        }
        if let Some(pk) = pks.get(&t.oid) {
            cache.set_primary_key(t.oid, pk.iter().map(|(n, _)| n.clone()).collect());
        }
        cache.apply_relation_info(RelationInfo {
            oid: t.oid,
            namespace: t.schema.clone(),
            name: t.name.clone(),
            replica_identity: ident_of(t.replica_identity),
            columns,
        });
        let entry = cache
            .relation(t.oid)
            .cloned()
            .ok_or_else(|| SnapshotError::Inconsistent {
                table: t.qualified_name(),
                message: "relation vanished from the cache".into(),
            })?;
        let select_list = entry
            .info
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let (mut pk_names, mut pk_types, mut pk_idx) = (Vec::new(), Vec::new(), Vec::new());
        for (name, ty) in pks.get(&t.oid).map(Vec::as_slice).unwrap_or_default() {
            let i = entry
                .info
                .columns
                .iter()
                .position(|c| &c.name == name)
                .ok_or_else(|| SnapshotError::Inconsistent {
                    table: t.qualified_name(),
                    message: format!("primary key column {name:?} is not a readable column"),
                })?;
            pk_names.push(quote_ident(name));
            pk_types.push(ty.clone());
            pk_idx.push(i);
        }
        jobs.push(Job {
            index: index as u32,
            sql_name: t.sql_name(),
            select_list,
            pk_names,
            pk_types,
            pk_idx,
            estimated: t.estimated_rows,
            entry,
        });
    }
    Ok(jobs)
}

/// Primary keys of every table: oid → [(column, format_type)] in key order.
async fn primary_keys(c: &Client) -> Result<HashMap<u32, Vec<(String, String)>>, SnapshotError> {
    let _ = PRIMARY_KEY_QUERY; // same facts, plus the type names the keyset casts need
    let rows = c
        .query(
            "SELECT i.indrelid, a.attname::text, format_type(a.atttypid, a.atttypmod)
               FROM pg_index i
              CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indisprimary
              ORDER BY i.indrelid, k.ord",
            &[],
        )
        .await
        .map_err(|e| SqlError::new("reading primary keys", e))?;
    let mut out: HashMap<u32, Vec<(String, String)>> = HashMap::new();
    for r in rows {
        let oid: u32 = r
            .try_get(0)
            .map_err(|e| SqlError::new("reading primary keys", e))?;
        let name: String = r
            .try_get(1)
            .map_err(|e| SqlError::new("reading primary keys", e))?;
        let ty: String = r
            .try_get(2)
            .map_err(|e| SqlError::new("reading primary keys", e))?;
        out.entry(oid).or_default().push((name, ty));
    }
    Ok(out)
}

/// Where a snapshot sits in the stream, and whether it replaces an interrupted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotStart {
    /// The slot's consistent point: the snapshot sees exactly what committed before it.
    pub consistent_point: u64,
    /// An earlier snapshot of this pipeline was interrupted (its rows may be in the stream):
    /// every table is truncated first, so that none of its rows outlive this snapshot.
    pub replaces_unfinished: bool,
}

/// Reads `tables` through the imported connections `conns` and sends one `r` envelope per row
/// (after one `t` per table when `start.replaces_unfinished`).
pub async fn run(
    conns: Vec<Client>,
    s: &PgSettings,
    naming: &Naming,
    outbox: &Outbox<u64>,
    shutdown: &CancellationToken,
    start: SnapshotStart,
    tables: &[TableInfo],
) -> Result<Outcome, SnapshotError> {
    let consistent_point = start.consistent_point;
    let Some(first) = conns.first() else {
        return Ok(Outcome::Completed { rows: 0 });
    };
    let mut jobs = plan(first, naming, &s.dbname, tables).await?;
    // Biggest first: the long tail is one small table, not one huge one.
    jobs.sort_by(|a, b| b.estimated.total_cmp(&a.estimated));
    for j in &jobs {
        metrics::gauge!(m::SNAPSHOT_ROWS_ESTIMATED, m::L_PIPELINE => s.pipeline.clone(),
            m::L_TABLE => j.entry.table.qualified_name())
        .set(j.estimated);
    }
    tracing::info!(
        pipeline = %s.pipeline,
        tables = jobs.len(),
        readers = conns.len(),
        consistent_point = %format_lsn(consistent_point),
        "snapshot started"
    );
    let shared = Arc::new(Shared {
        pipeline: s.pipeline.clone(),
        naming: naming.clone(),
        outbox: outbox.clone(),
        shutdown: shutdown.clone(),
        below_start: position::hex16(consistent_point.saturating_sub(1)),
        tx: TxInfo {
            id: "snapshot".into(),
            seq: 1,
            commit_pos: format_lsn(consistent_point),
            last: true,
        },
        ts_ms: m::now_ms(),
        chunk: s.chunk_size,
    });
    if start.replaces_unfinished && !discard_unfinished(&jobs, &shared).await? {
        return Ok(Outcome::Interrupted);
    }
    let queue = Arc::new(Mutex::new(VecDeque::from(jobs)));
    let mut set = tokio::task::JoinSet::new();
    for conn in conns {
        set.spawn(worker(conn, queue.clone(), shared.clone()));
    }
    let mut total = 0u64;
    let mut interrupted = false;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(Some(n))) => total += n,
            Ok(Ok(None)) => interrupted = true,
            Ok(Err(e)) => {
                set.abort_all();
                return Err(e);
            }
            Err(e) => {
                set.abort_all();
                return Err(SnapshotError::Task(e.to_string()));
            }
        }
    }
    if interrupted {
        tracing::info!(pipeline = %s.pipeline, rows = total, "snapshot interrupted by shutdown");
        return Ok(Outcome::Interrupted);
    }
    tracing::info!(pipeline = %s.pipeline, rows = total, "snapshot read every table");
    Ok(Outcome::Completed { rows: total })
}

impl Shared {
    /// A snapshot event of `job`'s table: `r` with the row, or `t` (a redo's truncate) without.
    fn change<'a>(
        &'a self,
        job: &'a Job,
        pos: &'a str,
        row: Option<&'a tidemark_core::envelope::Row>,
    ) -> Change<'a> {
        Change {
            op: if row.is_some() {
                Op::Read
            } else {
                Op::Truncate
            },
            table: &job.entry.table,
            pos,
            tx: &self.tx,
            ts_ms: self.ts_ms,
            snapshot: true,
            before: None,
            after: row,
        }
    }
}

/// Publishes one `t` event per table ahead of every row of a redone snapshot (see the module
/// note). Its position is row 0 of the table's snapshot positions, below all of its rows.
/// `Ok(false)` when shutdown interrupted it.
async fn discard_unfinished(jobs: &[Job], shared: &Shared) -> Result<bool, SnapshotError> {
    tracing::warn!(
        pipeline = %shared.pipeline,
        tables = jobs.len(),
        "an earlier snapshot was interrupted; truncating every table in the sinks before the new one"
    );
    let mut encoder = Encoder::new();
    for job in jobs {
        let pos = position::snapshot(&shared.below_start, job.index, 0);
        let msg = encoder.encode(&shared.naming, &shared.change(job, &pos, None), m::now_ms());
        tokio::select! {
            biased;
            sent = shared.outbox.event(msg) => sent.map_err(|_| SnapshotError::PublisherGone)?,
            _ = shared.shutdown.cancelled() => return Ok(false),
        }
    }
    Ok(true)
}

/// Reads tables from the queue until it is empty. `Ok(None)` when shutdown interrupted it.
async fn worker(
    conn: Client,
    queue: Arc<Mutex<VecDeque<Job>>>,
    shared: Arc<Shared>,
) -> Result<Option<u64>, SnapshotError> {
    let mut total = 0u64;
    let mut encoder = Encoder::new();
    loop {
        let job = match queue.lock() {
            Ok(mut q) => q.pop_front(),
            Err(_) => return Err(SnapshotError::Task("work queue poisoned".into())),
        };
        let Some(job) = job else { break };
        match read_table(&conn, &job, &shared, &mut encoder).await? {
            Some(n) => total += n,
            None => return Ok(None),
        }
    }
    let _ = conn.batch_execute("COMMIT").await;
    Ok(Some(total))
}

async fn read_table(
    conn: &Client,
    job: &Job,
    shared: &Shared,
    encoder: &mut Encoder,
) -> Result<Option<u64>, SnapshotError> {
    let table = job.entry.table.qualified_name();
    let started = std::time::Instant::now();
    let rows_counter = metrics::counter!(m::SNAPSHOT_ROWS, m::L_PIPELINE => shared.pipeline.clone(),
        m::L_TABLE => table.clone());
    let events_counter = metrics::counter!(m::SOURCE_EVENTS, m::L_PIPELINE => shared.pipeline.clone(),
        m::L_TABLE => table.clone(), m::L_OP => Op::Read.code());
    let mut row_no = 0u64;
    let keyset = !job.pk_idx.is_empty();
    let mut last_key: Option<Vec<String>> = None;
    let ctx = |what: &str| format!("snapshot of {table}: {what}");
    if !keyset {
        conn.batch_execute(&format!(
            "DECLARE tidemark_snapshot NO SCROLL CURSOR FOR SELECT {} FROM {}",
            job.select_list, job.sql_name
        ))
        .await
        .map_err(|e| SqlError::new(ctx("opening cursor"), e))?;
    }
    loop {
        let sql = if keyset {
            let filter = match &last_key {
                None => String::new(),
                Some(key) => format!(
                    " WHERE ({}) > ({})",
                    job.pk_names.join(", "),
                    key.iter()
                        .zip(&job.pk_types)
                        .map(|(v, t)| format!("CAST({} AS {t})", quote_literal(v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            format!(
                "SELECT {} FROM {}{filter} ORDER BY {} LIMIT {}",
                job.select_list,
                job.sql_name,
                job.pk_names.join(", "),
                shared.chunk
            )
        } else {
            format!("FETCH FORWARD {} FROM tidemark_snapshot", shared.chunk)
        };
        let rows = text_rows(
            conn.simple_query(&sql)
                .await
                .map_err(|e| SqlError::new(ctx("reading rows"), e))?,
        );
        let n = rows.len() as u64;
        for r in &rows {
            row_no += 1;
            let row = convert::text_cells_to_row(&job.entry, (0..r.len()).map(|i| r.get(i)))
                .map_err(|source| SnapshotError::Convert {
                    table: table.clone(),
                    source,
                })?;
            let pos = position::snapshot(&shared.below_start, job.index, row_no);
            let change = shared.change(job, &pos, Some(&row));
            let msg = encoder.encode(&shared.naming, &change, m::now_ms());
            tokio::select! {
                biased;
                sent = shared.outbox.event(msg) => sent.map_err(|_| SnapshotError::PublisherGone)?,
                _ = shared.shutdown.cancelled() => return Ok(None),
            }
        }
        rows_counter.increment(n);
        events_counter.increment(n);
        if n < shared.chunk {
            break;
        }
        if keyset {
            let Some(last) = rows.last() else { break };
            let mut key = Vec::with_capacity(job.pk_idx.len());
            for &i in &job.pk_idx {
                let v = last.get(i).ok_or_else(|| SnapshotError::Inconsistent {
                    table: table.clone(),
                    message: "a primary key column is NULL".into(),
                })?;
                key.push(v.to_owned());
            }
            last_key = Some(key);
        }
        if shared.shutdown.is_cancelled() {
            return Ok(None);
        }
    }
    if !keyset {
        conn.batch_execute("CLOSE tidemark_snapshot")
            .await
            .map_err(|e| SqlError::new(ctx("closing cursor"), e))?;
    }
    tracing::info!(
        pipeline = %shared.pipeline,
        table = %table,
        rows = row_no,
        secs = started.elapsed().as_secs_f64(),
        "snapshot table done"
    );
    Ok(Some(row_no))
}

impl From<SnapshotError> for Failure {
    fn from(e: SnapshotError) -> Failure {
        Failure::from_err(e)
    }
}
