//! The MySQL [`SinkWriter`]: envelopes → multi-row statements inside one transaction.
//!
//! Consecutive events of one table with the same shape are rendered into one statement:
//!
//! ```text
//! upsert: INSERT INTO `db`.`t` (`a`,`b`) VALUES (1,_utf8mb4 X'…'),(…) ON DUPLICATE KEY UPDATE `b`=VALUES(`b`)
//! delete: DELETE FROM `db`.`t` WHERE (`a`) IN ((1),(2))
//! ```
//!
//! flushed when the shape changes, at [`FLUSH_ROWS`] rows or [`FLUSH_BYTES`] of SQL, and
//! before commit, so stream order is kept and memory is bounded. c / r / u upsert the present
//! columns (`unchanged` ones are absent and stay as they are); a key-changing update deletes
//! the old key first (with `unchanged` columns it moves the row in place instead, `UPDATE …
//! SET key = new … WHERE key = old`, so they survive); `t` is `DELETE FROM` (TRUNCATE would commit the open transaction
//! implicitly and break atomicity). Tables without a primary key get plain inserts; their
//! updates and deletes change one row matching every column of `before` (`<=>`, `LIMIT 1`).
//! DDL (`create_tables`) runs on a separate connection for the same reason as TRUNCATE.
//!
//! Flushes are *pipelined*: the flushed statement runs in its own task (which owns the
//! connection meanwhile) while the runtime parses and renders the next events, so the server's
//! work overlaps ours. At most one statement is in flight; every other use of the connection
//! first takes it back ([`MysqlSink::settle`]), so statements run in stream order, and the
//! in-flight statement's error surfaces on the next flush, table load or commit (the trait
//! allows a buffered event's error to surface later).

use crate::catalog::{self, TargetTable};
use crate::client::{self, qualified, quote_ident};
use crate::convert::push_literal;
use crate::error::{shorten, MySinkError};
use mysql_async::prelude::Queryable as _;
use mysql_async::Conn;
use std::collections::HashMap;
use std::sync::Arc;
use tidemark_core::cell::{self, Cell};
use tidemark_core::config::{PipelineConfig, SinkConfig};
use tidemark_core::envelope::{CanonicalType, Column, Envelope, Image, Op};
use tidemark_core::sink::{Offset, SinkWriter, OFFSETS_TABLE};

/// Rows per multi-row statement. Small enough that a 2000-event commit is several
/// pipelined statements (the server works on one while the next is being built), large
/// enough that per-statement overhead stays small.
pub(crate) const FLUSH_ROWS: usize = 500;
/// SQL bytes per statement (well below the default max_allowed_packet of 16 MiB).
pub(crate) const FLUSH_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchKind {
    Upsert,
    Insert,
    Delete,
}

struct Batch {
    table: Arc<TargetTable>,
    kind: BatchKind,
    cols: Vec<usize>,
    /// `(…),(…)` rendered so far.
    rows_sql: String,
    rows: usize,
    first_pos: String,
    last_pos: String,
}

struct Cached {
    source_schema: String,
    source_table: String,
    version: String,
    table: Arc<TargetTable>,
}

/// A flushed statement running in its own task, which hands the connection back.
struct InFlight {
    handle: tokio::task::JoinHandle<(Conn, Result<(), MySinkError>)>,
    context: String,
}

/// A MySQL / MariaDB sink connection.
pub struct MysqlSink {
    /// The connection; `None` while a flushed statement holds it (then `inflight` is set) or
    /// after that statement's task failed.
    conn: Option<Conn>,
    /// The flushed statement still running, if any.
    inflight: Option<InFlight>,
    url: String,
    db: String,
    pipeline: String,
    sink: String,
    create_tables: bool,
    last: Option<Cached>,
    tables: HashMap<(String, String), Cached>,
    batch: Option<Batch>,
}

fn canonical_of(columns: &[Column], name: &str) -> Option<CanonicalType> {
    columns.iter().find(|c| c.name == name).map(|c| c.ty)
}

/// The error for a connection lost with a failed statement task.
fn lost() -> MySinkError {
    MySinkError::Task {
        context: "mysql sink connection".into(),
        message: "lost with a failed statement; reconnecting".into(),
    }
}

impl MysqlSink {
    /// Waits for the in-flight statement (if any), takes the connection back and returns the
    /// statement's error.
    async fn settle(&mut self) -> Result<(), MySinkError> {
        let Some(f) = self.inflight.take() else {
            return Ok(());
        };
        match f.handle.await {
            Ok((conn, res)) => {
                self.conn = Some(conn);
                res
            }
            Err(e) => Err(MySinkError::Task {
                context: f.context,
                message: e.to_string(),
            }),
        }
    }

    /// The idle connection, after the in-flight statement finished.
    async fn conn(&mut self) -> Result<&mut Conn, MySinkError> {
        self.settle().await?;
        self.conn.as_mut().ok_or_else(lost)
    }

    /// Sends the buffered batch and waits until it and every earlier statement are done.
    async fn flush_wait(&mut self) -> Result<(), MySinkError> {
        self.flush().await?;
        self.settle().await
    }

    async fn exec(
        &mut self,
        sql: &str,
        context: impl FnOnce() -> String,
    ) -> Result<(), MySinkError> {
        self.conn()
            .await?
            .query_drop(sql)
            .await
            .map_err(|source| MySinkError::Sql {
                context: context(),
                source,
            })
    }

    async fn table(&mut self, env: &Envelope) -> Result<Arc<TargetTable>, MySinkError> {
        let src = &env.source;
        if let Some(c) = &self.last {
            if c.source_table == src.table
                && c.source_schema == src.schema
                && c.version == env.schema.version
            {
                return Ok(c.table.clone());
            }
        }
        let key = (src.schema.clone(), src.table.clone());
        let table = match self.tables.get(&key) {
            Some(c) if c.version == env.schema.version => c.table.clone(),
            _ => self.load_table(env).await?,
        };
        let cached = || Cached {
            source_schema: src.schema.clone(),
            source_table: src.table.clone(),
            version: env.schema.version.clone(),
            table: table.clone(),
        };
        self.tables.insert(key, cached());
        self.last = Some(cached());
        Ok(table)
    }

    async fn load_table(&mut self, env: &Envelope) -> Result<Arc<TargetTable>, MySinkError> {
        let name = env.source.table.clone();
        self.settle().await?;
        let conn = self.conn.as_mut().ok_or_else(lost)?;
        if let Some(t) = catalog::load(conn, &self.db, &name).await? {
            return Ok(Arc::new(t));
        }
        let q = qualified(&self.db, &name);
        if !self.create_tables {
            return Err(MySinkError::MissingTable { table: q });
        }
        tracing::info!(sink = %self.sink, table = %q, "creating missing target table");
        // DDL commits implicitly: run it on its own connection.
        let (mut ddl_conn, _) = client::connect(&self.url).await?;
        let ddl = create_table_sql(&q, &env.source.connector, &env.schema.columns);
        let res = ddl_conn.query_drop(&ddl).await;
        let _ = ddl_conn.disconnect().await;
        res.map_err(|source| MySinkError::Sql {
            context: format!("creating {q}"),
            source,
        })?;
        let conn = self.conn.as_mut().ok_or_else(lost)?;
        match catalog::load(conn, &self.db, &name).await? {
            Some(t) => Ok(Arc::new(t)),
            None => Err(MySinkError::MissingTable { table: q }),
        }
    }

    fn forget(&mut self, env: &Envelope) {
        self.last = None;
        self.tables
            .remove(&(env.source.schema.clone(), env.source.table.clone()));
    }

    /// Target columns of `image` (reloading the table once for an unknown column); generated
    /// columns are skipped.
    async fn resolve(
        &mut self,
        env: &Envelope,
        table: Arc<TargetTable>,
        image: &Image,
    ) -> Result<(Arc<TargetTable>, Vec<(usize, String)>), MySinkError> {
        let mut table = table;
        for attempt in 0..2 {
            let mut cols = Vec::with_capacity(image.len());
            let mut missing = None;
            for name in image.keys() {
                match table.column(name) {
                    Some(i) => {
                        if !table.columns[i].generated {
                            cols.push((i, name.clone()));
                        }
                    }
                    None => {
                        missing = Some(name.clone());
                        break;
                    }
                }
            }
            match missing {
                None => {
                    cols.sort_by_key(|(i, _)| *i);
                    return Ok((table, cols));
                }
                Some(column) if attempt == 1 => {
                    return Err(MySinkError::MissingColumn {
                        table: table.qualified.clone(),
                        column,
                    })
                }
                Some(_) => {
                    self.forget(env);
                    table = self.table(env).await?;
                }
            }
        }
        Err(MySinkError::BadEvent {
            table: table.qualified.clone(),
            message: "column resolution failed".into(),
        })
    }

    /// Adds one rendered row `(…)`, flushing first when the shape differs.
    async fn push(
        &mut self,
        table: &Arc<TargetTable>,
        kind: BatchKind,
        cols: Vec<usize>,
        row: &str,
        pos: &str,
    ) -> Result<(), MySinkError> {
        let same = self
            .batch
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(&b.table, table) && b.kind == kind && b.cols == cols);
        if !same {
            self.flush().await?;
            self.batch = Some(Batch {
                table: table.clone(),
                kind,
                cols,
                rows_sql: String::with_capacity(64 * 1024),
                rows: 0,
                first_pos: pos.to_owned(),
                last_pos: pos.to_owned(),
            });
        }
        let Some(b) = self.batch.as_mut() else {
            return Ok(());
        };
        if b.rows > 0 {
            b.rows_sql.push(',');
        }
        b.rows_sql.push_str(row);
        b.rows += 1;
        b.last_pos.clear();
        b.last_pos.push_str(pos);
        if b.rows >= FLUSH_ROWS || b.rows_sql.len() >= FLUSH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), MySinkError> {
        let Some(b) = self.batch.take() else {
            return Ok(());
        };
        if b.rows == 0 {
            return Ok(());
        }
        let t = &b.table;
        let names = |cols: &[usize]| {
            cols.iter()
                .map(|&i| quote_ident(&t.columns[i].name))
                .collect::<Vec<_>>()
                .join(",")
        };
        let sql = match b.kind {
            BatchKind::Upsert | BatchKind::Insert => {
                let mut sql = format!(
                    "INSERT INTO {} ({}) VALUES {}",
                    t.qualified,
                    names(&b.cols),
                    b.rows_sql
                );
                if b.kind == BatchKind::Upsert {
                    let set: Vec<String> = b
                        .cols
                        .iter()
                        .filter(|i| !t.pk.contains(i))
                        .map(|&i| {
                            let c = quote_ident(&t.columns[i].name);
                            format!("{c}=VALUES({c})")
                        })
                        .collect();
                    let set = if set.is_empty() {
                        t.pk.first()
                            .map(|&i| {
                                let c = quote_ident(&t.columns[i].name);
                                format!("{c}={c}")
                            })
                            .unwrap_or_default()
                    } else {
                        set.join(",")
                    };
                    sql.push_str(" ON DUPLICATE KEY UPDATE ");
                    sql.push_str(&set);
                }
                sql
            }
            BatchKind::Delete => format!(
                "DELETE FROM {} WHERE ({}) IN ({})",
                t.qualified,
                names(&b.cols),
                b.rows_sql
            ),
        };
        let what = match b.kind {
            BatchKind::Upsert => "upserting",
            BatchKind::Insert => "inserting",
            BatchKind::Delete => "deleting",
        };
        let context = format!(
            "{what} {} rows of {} (pos {} .. {})",
            b.rows, t.qualified, b.first_pos, b.last_pos
        );
        self.settle().await?;
        let mut conn = self.conn.take().ok_or_else(lost)?;
        let task_context = context.clone();
        let handle = tokio::spawn(async move {
            let res = conn
                .query_drop(sql)
                .await
                .map_err(|source| MySinkError::Sql {
                    context: task_context,
                    source,
                });
            (conn, res)
        });
        self.inflight = Some(InFlight { handle, context });
        Ok(())
    }

    async fn apply_event(&mut self, env: &Envelope) -> Result<(), MySinkError> {
        let table = self.table(env).await?;
        let pos = env.source.pos.as_str();
        match env.op {
            Op::Truncate => {
                self.flush().await?;
                let sql = format!("DELETE FROM {}", table.qualified);
                self.exec(&sql, || {
                    format!("truncating {} (pos {pos})", table.qualified)
                })
                .await?;
            }
            Op::Create | Op::Read | Op::Update => {
                let Some(after) = env.after.as_ref() else {
                    return Err(MySinkError::BadEvent {
                        table: table.qualified.clone(),
                        message: format!("{} event at pos {pos} has no after image", env.op.code()),
                    });
                };
                let (table, cols) = self.resolve(env, table, after).await?;
                if table.pk.is_empty() {
                    if env.op == Op::Update {
                        self.flush().await?;
                        return self.keyless_change(env, &table, Some(after)).await;
                    }
                    let row = render_row(&table, env, after, &cols)?;
                    let idx = cols.iter().map(|(i, _)| *i).collect();
                    return self.push(&table, BatchKind::Insert, idx, &row, pos).await;
                }
                for &k in &table.pk {
                    if !cols.iter().any(|(i, _)| *i == k) {
                        return Err(MySinkError::BadEvent {
                            table: table.qualified.clone(),
                            message: format!(
                                "after image at pos {pos} lacks key column {:?}",
                                table.columns[k].name
                            ),
                        });
                    }
                }
                if env.op == Op::Update {
                    if let Some(before) = env.before.as_ref() {
                        let changed = table.pk.iter().any(|&k| {
                            let n = &table.columns[k].name;
                            matches!((before.get(n), after.get(n)), (Some(b), Some(a)) if a != b)
                        });
                        if changed {
                            if let Some(old) = key_row(&table, env, before)? {
                                if !env.unchanged.is_empty() {
                                    // The new image lacks the unchanged (TOASTed) columns: move
                                    // the row in place so they come along.
                                    self.flush_wait().await?;
                                    if self.move_row(&table, env, after, &cols, &old).await? {
                                        return Ok(());
                                    }
                                    // No old row in the target: upsert what the event carries.
                                } else {
                                    self.push(
                                        &table,
                                        BatchKind::Delete,
                                        table.pk.clone(),
                                        &old,
                                        pos,
                                    )
                                    .await?;
                                }
                            }
                        }
                    }
                }
                let row = render_row(&table, env, after, &cols)?;
                let idx = cols.iter().map(|(i, _)| *i).collect();
                self.push(&table, BatchKind::Upsert, idx, &row, pos).await?;
            }
            Op::Delete => {
                if table.pk.is_empty() {
                    self.flush().await?;
                    return self.keyless_change(env, &table, None).await;
                }
                let mut key = None;
                for image in [env.key.as_ref(), env.before.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    if let Some(k) = key_row(&table, env, image)? {
                        key = Some(k);
                        break;
                    }
                }
                let Some(key) = key else {
                    return Err(MySinkError::BadEvent {
                        table: table.qualified.clone(),
                        message: format!(
                            "delete at pos {pos} carries no value for the key columns"
                        ),
                    });
                };
                self.push(&table, BatchKind::Delete, table.pk.clone(), &key, pos)
                    .await?;
            }
        }
        Ok(())
    }

    /// A key-changing update with `unchanged` columns: `UPDATE … SET <key and present columns>
    /// WHERE (<key>) = <old key>`, which keeps the unchanged values. Returns false when no row
    /// has the old key (the session counts found rows, not changed ones).
    async fn move_row(
        &mut self,
        table: &Arc<TargetTable>,
        env: &Envelope,
        after: &Image,
        cols: &[(usize, String)],
        old_key: &str,
    ) -> Result<bool, MySinkError> {
        let pos = &env.source.pos;
        let mut sets = Vec::with_capacity(cols.len());
        for (i, name) in cols {
            let c = &table.columns[*i];
            let mut lit = String::new();
            let v = after.get(name).unwrap_or(&cell::NULL);
            push_literal(&mut lit, v, canonical_of(&env.schema.columns, name), c)
                .map_err(|e| convert_err(table, name, v, c, &e.0, pos))?;
            sets.push(format!("{}={lit}", quote_ident(name)));
        }
        let key_cols: Vec<String> = table
            .pk
            .iter()
            .map(|&k| quote_ident(&table.columns[k].name))
            .collect();
        let sql = format!(
            "UPDATE {} SET {} WHERE ({}) = {old_key}",
            table.qualified,
            sets.join(","),
            key_cols.join(",")
        );
        let qualified = table.qualified.clone();
        let conn = self.conn().await?;
        conn.query_drop(sql)
            .await
            .map_err(|source| MySinkError::Sql {
                context: format!("moving a row of {qualified} to its new key (pos {pos})"),
                source,
            })?;
        Ok(conn.affected_rows() > 0)
    }

    async fn keyless_change(
        &mut self,
        env: &Envelope,
        table: &Arc<TargetTable>,
        after: Option<&Image>,
    ) -> Result<(), MySinkError> {
        let pos = &env.source.pos;
        let Some(before) = env.before.as_ref().filter(|b| !b.is_empty()) else {
            return Err(MySinkError::BadEvent {
                table: table.qualified.clone(),
                message: format!(
                    "{} at pos {pos} on a table without primary key needs the full old row \
                     (REPLICA IDENTITY FULL / binlog_row_image=FULL), or give the target table a \
                     primary key",
                    env.op.code()
                ),
            });
        };
        let (table, match_cols) = self.resolve(env, table.clone(), before).await?;
        let mut conds = Vec::with_capacity(match_cols.len());
        for (i, name) in &match_cols {
            let c = &table.columns[*i];
            let mut lit = String::new();
            let v = before.get(name).unwrap_or(&cell::NULL);
            push_literal(&mut lit, v, canonical_of(&env.schema.columns, name), c)
                .map_err(|e| convert_err(&table, name, v, c, &e.0, pos))?;
            conds.push(format!("{} <=> {lit}", quote_ident(name)));
        }
        let cond = if conds.is_empty() {
            "1".to_owned()
        } else {
            conds.join(" AND ")
        };
        let sql = match after {
            Some(after) => {
                let (_, cols) = self.resolve(env, table.clone(), after).await?;
                let mut sets = Vec::with_capacity(cols.len());
                for (i, name) in &cols {
                    let c = &table.columns[*i];
                    let mut lit = String::new();
                    let v = after.get(name).unwrap_or(&cell::NULL);
                    push_literal(&mut lit, v, canonical_of(&env.schema.columns, name), c)
                        .map_err(|e| convert_err(&table, name, v, c, &e.0, pos))?;
                    sets.push(format!("{}={lit}", quote_ident(name)));
                }
                if sets.is_empty() {
                    return Ok(());
                }
                format!(
                    "UPDATE {} SET {} WHERE {cond} LIMIT 1",
                    table.qualified,
                    sets.join(",")
                )
            }
            None => format!("DELETE FROM {} WHERE {cond} LIMIT 1", table.qualified),
        };
        let q = table.qualified.clone();
        self.exec(&sql, || {
            format!("change of a row of {q} without primary key (pos {pos})")
        })
        .await
    }
}

fn convert_err(
    table: &TargetTable,
    name: &str,
    v: &Cell,
    c: &catalog::TargetColumn,
    reason: &str,
    pos: &str,
) -> MySinkError {
    MySinkError::Convert {
        table: table.qualified.clone(),
        column: name.to_owned(),
        value: shorten(&v.json_text()),
        target_type: c.column_type.clone(),
        reason: format!("{reason} (pos {pos})"),
    }
}

/// `(v1,v2,…)` for the columns `cols` of `image`.
fn render_row(
    table: &TargetTable,
    env: &Envelope,
    image: &Image,
    cols: &[(usize, String)],
) -> Result<String, MySinkError> {
    let mut out = String::with_capacity(16 * cols.len());
    out.push('(');
    for (j, (i, name)) in cols.iter().enumerate() {
        if j > 0 {
            out.push(',');
        }
        let c = &table.columns[*i];
        let v = image.get(name).unwrap_or(&cell::NULL);
        push_literal(&mut out, v, canonical_of(&env.schema.columns, name), c)
            .map_err(|e| convert_err(table, name, v, c, &e.0, &env.source.pos))?;
    }
    out.push(')');
    Ok(out)
}

/// `(k1,k2)` from `image`, or `None` when it lacks a key column.
fn key_row(
    table: &TargetTable,
    env: &Envelope,
    image: &Image,
) -> Result<Option<String>, MySinkError> {
    let mut cols = Vec::with_capacity(table.pk.len());
    for &k in &table.pk {
        let name = &table.columns[k].name;
        if !image.contains_key(name) {
            return Ok(None);
        }
        cols.push((k, name.clone()));
    }
    render_row(table, env, image, &cols).map(Some)
}

/// MySQL type for a canonical column (only with `create_tables = true`).
fn native_type(c: &Column) -> &'static str {
    match c.ty {
        CanonicalType::Bool => "TINYINT(1)",
        CanonicalType::Int64 => "BIGINT",
        CanonicalType::Uint64 => "BIGINT UNSIGNED",
        CanonicalType::Decimal => "DECIMAL(65,30)",
        CanonicalType::Float64 => "DOUBLE",
        CanonicalType::String if c.pk => "VARCHAR(255)",
        CanonicalType::String => "LONGTEXT",
        CanonicalType::Bytes if c.pk => "VARBINARY(255)",
        CanonicalType::Bytes => "LONGBLOB",
        CanonicalType::Json | CanonicalType::Array => "JSON",
        CanonicalType::Uuid => "CHAR(36)",
        CanonicalType::Date => "DATE",
        CanonicalType::Time => "TIME(6)",
        CanonicalType::Timestamp | CanonicalType::Timestamptz => "DATETIME(6)",
        CanonicalType::Interval => "VARCHAR(64)",
        CanonicalType::Set => "LONGTEXT",
        CanonicalType::Bits => "VARCHAR(64)",
    }
}

/// Whether a NOT NULL source column may still carry `null`: a MySQL zero date (`0000-00-00`,
/// `2024-00-15`) has no canonical value and arrives as `null` even from a NOT NULL column.
fn may_be_substituted(c: &Column, connector: &str) -> bool {
    connector == "mysql"
        && matches!(
            c.ty,
            CanonicalType::Date | CanonicalType::Timestamp | CanonicalType::Timestamptz
        )
}

fn create_table_sql(qualified_name: &str, connector: &str, columns: &[Column]) -> String {
    let mut defs: Vec<String> = columns
        .iter()
        .map(|c| {
            let not_null = c.pk || (!c.nullable && !may_be_substituted(c, connector));
            let null = if not_null { " NOT NULL" } else { "" };
            format!("{} {}{null}", quote_ident(&c.name), native_type(c))
        })
        .collect();
    let pk: Vec<String> = columns
        .iter()
        .filter(|c| c.pk)
        .map(|c| quote_ident(&c.name))
        .collect();
    if !pk.is_empty() {
        defs.push(format!("PRIMARY KEY ({})", pk.join(",")));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {qualified_name} ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        defs.join(", ")
    )
}

impl SinkWriter for MysqlSink {
    type Error = MySinkError;

    async fn connect(sink: &SinkConfig, pipeline: &PipelineConfig) -> Result<Self, MySinkError> {
        let (conn, db) = client::connect(&sink.url).await?;
        Ok(MysqlSink {
            conn: Some(conn),
            inflight: None,
            url: sink.url.clone(),
            db,
            pipeline: pipeline.name.clone(),
            sink: sink.name.clone(),
            create_tables: sink.create_tables,
            last: None,
            tables: HashMap::new(),
            batch: None,
        })
    }

    async fn read_offset(&mut self) -> Result<Option<Offset>, MySinkError> {
        self.settle().await?;
        let conn = self.conn.as_mut().ok_or_else(lost)?;
        read_offset(conn, &self.db, &self.pipeline, &self.sink, true).await
    }

    async fn begin(&mut self) -> Result<(), MySinkError> {
        self.batch = None;
        self.exec("START TRANSACTION", || "START TRANSACTION".into())
            .await
    }

    async fn apply(&mut self, event: &Envelope) -> Result<(), MySinkError> {
        self.apply_event(event).await
    }

    async fn apply_isolated(&mut self, event: &Envelope) -> Result<(), MySinkError> {
        self.flush_wait().await?;
        self.exec("SAVEPOINT tidemark_isolate", || "SAVEPOINT".into())
            .await?;
        let result = match self.apply_event(event).await {
            Ok(()) => self.flush_wait().await,
            // A statement this event already sent failed first: that is the cause.
            Err(e) => Err(self.settle().await.err().unwrap_or(e)),
        };
        self.batch = None;
        match result {
            Ok(()) => {
                self.exec("RELEASE SAVEPOINT tidemark_isolate", || {
                    "RELEASE SAVEPOINT".into()
                })
                .await
            }
            Err(e) => {
                self.exec("ROLLBACK TO SAVEPOINT tidemark_isolate", || {
                    "ROLLBACK TO SAVEPOINT".into()
                })
                .await?;
                Err(e)
            }
        }
    }

    async fn commit(
        &mut self,
        offset: &Offset,
        previous: Option<&Offset>,
    ) -> Result<(), MySinkError> {
        self.flush_wait().await?;
        let table = qualified(&self.db, OFFSETS_TABLE);
        let conn = self.conn.as_mut().ok_or_else(lost)?;
        let res = match previous {
            Some(prev) => {
                let sql = format!(
                    "UPDATE {table} SET pos = ?, stream_seq = ?, updated_at = UTC_TIMESTAMP(6) \
                     WHERE pipeline = ? AND sink = ? AND stream_seq = ? AND pos <=> ?"
                );
                conn.exec_drop(
                    sql,
                    (
                        offset.pos.clone(),
                        offset.stream_seq,
                        self.pipeline.clone(),
                        self.sink.clone(),
                        prev.stream_seq,
                        prev.pos.clone(),
                    ),
                )
                .await
            }
            None => {
                let sql = format!(
                    "INSERT IGNORE INTO {table} (pipeline, sink, pos, stream_seq, updated_at) \
                     VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6))"
                );
                conn.exec_drop(
                    sql,
                    (
                        self.pipeline.clone(),
                        self.sink.clone(),
                        offset.pos.clone(),
                        offset.stream_seq,
                    ),
                )
                .await
            }
        };
        res.map_err(|source| MySinkError::Sql {
            context: format!("writing {table}"),
            source,
        })?;
        if conn.affected_rows() != 1 {
            return Err(MySinkError::OffsetConflict {
                pipeline: self.pipeline.clone(),
                sink: self.sink.clone(),
            });
        }
        self.exec("COMMIT", || "COMMIT".into()).await
    }

    async fn rollback(&mut self) -> Result<(), MySinkError> {
        self.batch = None;
        // The in-flight statement's outcome no longer matters; the transaction is discarded.
        let _ = self.settle().await;
        self.exec("ROLLBACK", || "ROLLBACK".into()).await
    }
}

/// Reads the offset row; with `create`, creates the table first.
pub(crate) async fn read_offset(
    conn: &mut Conn,
    db: &str,
    pipeline: &str,
    sink: &str,
    create: bool,
) -> Result<Option<Offset>, MySinkError> {
    let table = qualified(db, OFFSETS_TABLE);
    if create {
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {table} (pipeline VARCHAR(191) NOT NULL, sink VARCHAR(191) NOT NULL, \
             pos VARCHAR(255) NULL, stream_seq BIGINT UNSIGNED NOT NULL, updated_at DATETIME(6) NOT NULL, \
             PRIMARY KEY (pipeline, sink)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        );
        conn.query_drop(ddl)
            .await
            .map_err(|source| MySinkError::Sql {
                context: format!("creating {table}"),
                source,
            })?;
    }
    let sql = format!("SELECT pos, stream_seq FROM {table} WHERE pipeline = ? AND sink = ?");
    let row: Option<mysql_async::Row> =
        conn.exec_first(sql, (pipeline, sink))
            .await
            .map_err(|source| MySinkError::Sql {
                context: format!("reading {table}"),
                source,
            })?;
    Ok(row.map(|r| Offset {
        pos: r
            .get_opt::<Option<String>, usize>(0)
            .and_then(Result::ok)
            .flatten(),
        stream_seq: r.get_opt::<u64, usize>(1).and_then(Result::ok).unwrap_or(0),
    }))
}
