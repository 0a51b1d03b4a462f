//! The Postgres [`SinkWriter`]: envelopes → multi-row statements inside one transaction.
//!
//! Consecutive events of one table with the same shape are buffered into a *batch* (column-
//! major text arrays) and sent as one statement:
//!
//! ```text
//! upsert: INSERT INTO t (a, b) SELECT u.c0::int8, u.c1::text FROM UNNEST($1::text[], $2::text[]) u(c0, c1)
//!         ON CONFLICT (a) DO UPDATE SET b = EXCLUDED.b
//! delete: DELETE FROM t USING UNNEST($1::text[]) u(c0) WHERE t.a = u.c0::int8
//! ```
//!
//! A batch is flushed when the next event has another table, op or column set, when it
//! reaches [`FLUSH_ROWS`], and before commit — so stream order is preserved and memory stays
//! bounded however large the source transaction.
//!
//! Flushes are *pipelined*: a flushed batch's statement runs in its own task while the runtime
//! parses and converts the next events, so the target's work overlaps ours. At most one
//! statement is in flight, and every other use of the connection first waits for it
//! ([`PostgresSink::settle`]), so statements still run one after another in stream order and
//! the in-flight statement's error surfaces on the next flush, apply of an uncached table, or
//! commit (the trait allows a buffered event's error to surface later). Two upserts of the same key with the same
//! column set collapse into the later one inside a batch (same end state, and Postgres refuses
//! to touch one row twice in one `ON CONFLICT` statement).
//!
//! c / r / u are upserts of the columns present (`unchanged` columns are absent from `after`
//! and therefore left alone; an update of a row that does not exist inserts it). An update
//! whose key changed deletes the old key first, unless it has `unchanged` columns: then the
//! row is moved in place (`UPDATE … SET key = new … WHERE key = old`) so that they survive.
//! Tables without a primary key in the target get plain inserts; their updates and deletes
//! match one row on every column of the `before` image (needs REPLICA IDENTITY FULL /
//! binlog_row_image FULL at the source; `json` columns compare as jsonb).

use crate::catalog::{self, Kind, TargetTable};
use crate::client::{self, qualified, quote_ident, Connection};
use crate::convert::to_text;
use crate::error::{describe, is_data_exception, shorten, PgSinkError};
use std::collections::HashMap;
use std::sync::Arc;
use tidemark_core::cell;
use tidemark_core::config::{PipelineConfig, SinkConfig};
use tidemark_core::envelope::{CanonicalType, Column, Envelope, Image, Op};
use tidemark_core::sink::{Offset, SinkWriter, OFFSETS_TABLE};
use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

/// Rows per multi-row statement. Small enough that a 2000-event commit is several
/// pipelined statements (the server works on one while the next is being built), large
/// enough that per-statement overhead stays small.
pub(crate) const FLUSH_ROWS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchKind {
    Upsert,
    Insert,
    Delete,
}

/// Buffered rows of one statement.
struct Batch {
    table: Arc<TargetTable>,
    kind: BatchKind,
    /// Target column indexes (delete: the key columns).
    cols: Vec<usize>,
    /// Column-major text values.
    values: Vec<Vec<Option<String>>>,
    /// Upserts: key → row index, to collapse repeated keys.
    index: HashMap<String, usize>,
    rows: usize,
    first_pos: String,
    last_pos: String,
}

/// A flushed statement still running in its own task.
struct InFlight {
    handle: tokio::task::JoinHandle<Result<u64, PgSinkError>>,
    context: String,
}

/// Cached description of the last target table used (runs of one table are the common case).
struct Cached {
    source_schema: String,
    source_table: String,
    version: String,
    table: Arc<TargetTable>,
}

/// A Postgres sink connection.
pub struct PostgresSink {
    conn: Connection,
    pipeline: String,
    sink: String,
    schema_override: Option<String>,
    offsets: String,
    offsets_schema: String,
    create_tables: bool,
    last: Option<Cached>,
    tables: HashMap<(String, String), Cached>,
    statements: HashMap<String, Statement>,
    batch: Option<Batch>,
    /// The flushed statement still running, if any.
    inflight: Option<InFlight>,
}

impl PostgresSink {
    fn sql_err(
        &self,
        context: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> PgSinkError {
        let context = context.into();
        move |source| PgSinkError::Sql { context, source }
    }

    /// Waits for the in-flight statement (if any) and returns its error. Every use of the
    /// connection other than starting the next flush goes through here first.
    async fn settle(&mut self) -> Result<(), PgSinkError> {
        let Some(f) = self.inflight.take() else {
            return Ok(());
        };
        match f.handle.await {
            Ok(res) => res.map(|_| ()),
            Err(e) => Err(PgSinkError::Task {
                context: f.context,
                message: e.to_string(),
            }),
        }
    }

    /// Sends the buffered batch and waits until it and every earlier statement are done.
    async fn flush_wait(&mut self) -> Result<(), PgSinkError> {
        self.flush().await?;
        self.settle().await
    }

    async fn statement(&mut self, sql: &str) -> Result<Statement, PgSinkError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        self.settle().await?;
        let stmt = self
            .conn
            .client
            .prepare(sql)
            .await
            .map_err(self.sql_err(format!("preparing {}", shorten(sql))))?;
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    /// The target table of `env`, loading (or creating) and caching its description.
    async fn table(&mut self, env: &Envelope) -> Result<Arc<TargetTable>, PgSinkError> {
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
        if let Some(c) = self.tables.get(&key) {
            if c.version == env.schema.version {
                let table = c.table.clone();
                self.last = Some(Cached {
                    source_schema: c.source_schema.clone(),
                    source_table: c.source_table.clone(),
                    version: c.version.clone(),
                    table: table.clone(),
                });
                return Ok(table);
            }
        }
        let table = self.load_table(env).await?;
        let cached = |t: &Arc<TargetTable>| Cached {
            source_schema: src.schema.clone(),
            source_table: src.table.clone(),
            version: env.schema.version.clone(),
            table: t.clone(),
        };
        self.tables.insert(key, cached(&table));
        self.last = Some(cached(&table));
        Ok(table)
    }

    fn target_name(&self, env: &Envelope) -> (String, String) {
        let schema = self
            .schema_override
            .clone()
            .unwrap_or_else(|| env.source.schema.clone());
        (schema, env.source.table.clone())
    }

    async fn load_table(&mut self, env: &Envelope) -> Result<Arc<TargetTable>, PgSinkError> {
        self.settle().await?;
        let (schema, name) = self.target_name(env);
        if let Some(t) = catalog::load(&self.conn.client, &schema, &name).await? {
            return Ok(Arc::new(t));
        }
        if !self.create_tables {
            return Err(PgSinkError::MissingTable {
                table: qualified(&schema, &name),
            });
        }
        let ddl = create_table_sql(&schema, &name, &env.source.connector, &env.schema.columns);
        tracing::info!(sink = %self.sink, table = %qualified(&schema, &name), "creating missing target table");
        self.conn
            .client
            .batch_execute(&ddl)
            .await
            .map_err(self.sql_err(format!("creating {}", qualified(&schema, &name))))?;
        match catalog::load(&self.conn.client, &schema, &name).await? {
            Some(t) => Ok(Arc::new(t)),
            None => Err(PgSinkError::MissingTable {
                table: qualified(&schema, &name),
            }),
        }
    }

    /// Forgets the cached description of `env`'s table (after a missing column).
    fn forget(&mut self, env: &Envelope) {
        self.last = None;
        self.tables
            .remove(&(env.source.schema.clone(), env.source.table.clone()));
    }

    /// Resolves the columns of `image` to target columns, reloading the table once if one is
    /// missing. Generated target columns are skipped.
    async fn resolve(
        &mut self,
        env: &Envelope,
        table: Arc<TargetTable>,
        image: &Image,
    ) -> Result<(Arc<TargetTable>, Vec<(usize, String)>), PgSinkError> {
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
                    return Err(PgSinkError::MissingColumn {
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
        Err(PgSinkError::BadEvent {
            table: table.qualified.clone(),
            message: "column resolution failed".into(),
        })
    }

    /// Adds one row to the current batch, flushing first when the shape differs.
    async fn push(
        &mut self,
        table: &Arc<TargetTable>,
        kind: BatchKind,
        cols: Vec<usize>,
        values: Vec<Option<String>>,
        key: Option<String>,
        pos: &str,
    ) -> Result<(), PgSinkError> {
        let same = self
            .batch
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(&b.table, table) && b.kind == kind && b.cols == cols);
        if !same {
            self.flush().await?;
            self.batch = Some(Batch {
                table: table.clone(),
                kind,
                values: vec![Vec::with_capacity(64); cols.len()],
                cols,
                index: HashMap::new(),
                rows: 0,
                first_pos: pos.to_owned(),
                last_pos: pos.to_owned(),
            });
        }
        let Some(b) = self.batch.as_mut() else {
            return Ok(());
        };
        b.last_pos.clear();
        b.last_pos.push_str(pos);
        if let Some(k) = key.filter(|_| kind == BatchKind::Upsert) {
            if let Some(&row) = b.index.get(&k) {
                for (col, v) in b.values.iter_mut().zip(values) {
                    if let Some(slot) = col.get_mut(row) {
                        *slot = v;
                    }
                }
                return Ok(());
            }
            b.index.insert(k, b.rows);
        }
        for (col, v) in b.values.iter_mut().zip(values) {
            col.push(v);
        }
        b.rows += 1;
        if b.rows >= FLUSH_ROWS {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the buffered batch without waiting for its result: the statement runs in its
    /// own task after the previous one finished (see [`settle`](Self::settle)).
    async fn flush(&mut self) -> Result<(), PgSinkError> {
        let Some(b) = self.batch.take() else {
            return Ok(());
        };
        if b.rows == 0 {
            return Ok(());
        }
        let sql = batch_sql(&b);
        let stmt = self.statement(&sql).await?;
        self.settle().await?;
        let what = match b.kind {
            BatchKind::Upsert => "upserting",
            BatchKind::Insert => "inserting",
            BatchKind::Delete => "deleting",
        };
        let context = format!(
            "{what} {} rows of {} (pos {} .. {})",
            b.rows, b.table.qualified, b.first_pos, b.last_pos
        );
        let client = self.conn.client.clone();
        let values = b.values;
        let task_context = context.clone();
        let handle = tokio::spawn(async move {
            let params: Vec<&(dyn ToSql + Sync)> =
                values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
            client
                .execute(&stmt, &params)
                .await
                .map_err(|source| PgSinkError::Sql {
                    context: task_context,
                    source,
                })
        });
        self.inflight = Some(InFlight { handle, context });
        Ok(())
    }

    async fn apply_event(&mut self, env: &Envelope) -> Result<(), PgSinkError> {
        let table = self.table(env).await?;
        let pos = env.source.pos.as_str();
        match env.op {
            Op::Truncate => {
                self.flush_wait().await?;
                let sql = format!("TRUNCATE {}", table.qualified);
                self.conn
                    .client
                    .batch_execute(&sql)
                    .await
                    .map_err(self.sql_err(format!("truncating {} (pos {pos})", table.qualified)))?;
            }
            Op::Create | Op::Read | Op::Update => {
                let Some(after) = env.after.as_ref() else {
                    return Err(PgSinkError::BadEvent {
                        table: table.qualified.clone(),
                        message: format!("{} event at pos {pos} has no after image", env.op.code()),
                    });
                };
                let (table, cols) = self.resolve(env, table, after).await?;
                if table.pk.is_empty() {
                    if env.op == Op::Update {
                        self.flush_wait().await?;
                        return self.keyless_change(env, &table, Some(after)).await;
                    }
                    let values = convert_row(&table, env, after, &cols)?;
                    let idx = cols.iter().map(|(i, _)| *i).collect();
                    return self
                        .push(&table, BatchKind::Insert, idx, values, None, pos)
                        .await;
                }
                for &k in &table.pk {
                    if !cols.iter().any(|(i, _)| *i == k) {
                        return Err(PgSinkError::BadEvent {
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
                        if let Some(old_key) = changed_key(&table, env, before, after)? {
                            if !env.unchanged.is_empty() {
                                // The new image lacks the unchanged (TOASTed) columns: move the
                                // row in place so they come along (delete + insert loses them).
                                self.flush_wait().await?;
                                if self.move_row(&table, env, after, &cols, old_key).await? {
                                    return Ok(());
                                }
                                // No old row in the target: upsert what the event carries.
                            } else {
                                self.push(
                                    &table,
                                    BatchKind::Delete,
                                    table.pk.clone(),
                                    old_key,
                                    None,
                                    pos,
                                )
                                .await?;
                            }
                        }
                    }
                }
                let values = convert_row(&table, env, after, &cols)?;
                let idx: Vec<usize> = cols.iter().map(|(i, _)| *i).collect();
                let key = key_string(&idx, &values, &table.pk);
                self.push(&table, BatchKind::Upsert, idx, values, Some(key), pos)
                    .await?;
            }
            Op::Delete => {
                if table.pk.is_empty() {
                    self.flush_wait().await?;
                    return self.keyless_change(env, &table, None).await;
                }
                let key = delete_key(&table, env)?;
                self.push(&table, BatchKind::Delete, table.pk.clone(), key, None, pos)
                    .await?;
            }
        }
        Ok(())
    }

    /// A key-changing update with `unchanged` columns: `UPDATE … SET <key and present columns>
    /// WHERE <old key>`, which keeps the unchanged values. Returns false when no row has the
    /// old key.
    async fn move_row(
        &mut self,
        table: &Arc<TargetTable>,
        env: &Envelope,
        after: &Image,
        cols: &[(usize, String)],
        old_key: Vec<Option<String>>,
    ) -> Result<bool, PgSinkError> {
        let values = convert_row(table, env, after, cols)?;
        let mut params: Vec<Option<String>> = Vec::with_capacity(values.len() + old_key.len());
        let mut set = Vec::with_capacity(cols.len());
        for ((i, _), v) in cols.iter().zip(values) {
            params.push(v);
            let c = &table.columns[*i];
            set.push(format!(
                "{} = ${}::text::{}",
                quote_ident(&c.name),
                params.len(),
                c.cast
            ));
        }
        let mut conds = Vec::with_capacity(table.pk.len());
        for (&k, v) in table.pk.iter().zip(old_key) {
            params.push(v);
            let c = &table.columns[k];
            conds.push(format!(
                "{} = ${}::text::{}",
                quote_ident(&c.name),
                params.len(),
                c.cast
            ));
        }
        let sql = format!(
            "UPDATE {} SET {} WHERE {}",
            table.qualified,
            set.join(", "),
            conds.join(" AND ")
        );
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let n = self
            .conn
            .client
            .execute(sql.as_str(), &refs)
            .await
            .map_err(self.sql_err(format!(
                "moving a row of {} to its new key (pos {})",
                table.qualified, env.source.pos
            )))?;
        Ok(n > 0)
    }

    /// Update or delete of one row of a table without primary key, matched on `before`.
    async fn keyless_change(
        &mut self,
        env: &Envelope,
        table: &Arc<TargetTable>,
        after: Option<&Image>,
    ) -> Result<(), PgSinkError> {
        let pos = &env.source.pos;
        let Some(before) = env.before.as_ref().filter(|b| !b.is_empty()) else {
            return Err(PgSinkError::BadEvent {
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
        let mut params: Vec<Option<String>> = Vec::new();
        let mut set = Vec::new();
        if let Some(after) = after {
            let (_, cols) = self.resolve(env, table.clone(), after).await?;
            let values = convert_row(&table, env, after, &cols)?;
            for ((i, _), v) in cols.iter().zip(values) {
                params.push(v);
                let c = &table.columns[*i];
                set.push(format!(
                    "{} = ${}::text::{}",
                    quote_ident(&c.name),
                    params.len(),
                    c.cast
                ));
            }
        }
        let values = convert_row(&table, env, before, &match_cols)?;
        let mut conds = Vec::new();
        for ((i, _), v) in match_cols.iter().zip(values) {
            let c = &table.columns[*i];
            let col = quote_ident(&c.name);
            match v {
                None => conds.push(format!("{col} IS NULL")),
                Some(v) => {
                    params.push(Some(v));
                    let n = params.len();
                    conds.push(match c.kind {
                        Kind::JsonPlain => format!("{col}::jsonb = ${n}::text::jsonb"),
                        _ => format!("{col} = ${n}::text::{}", c.cast),
                    });
                }
            }
        }
        let target = format!(
            "ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)",
            table.qualified,
            if conds.is_empty() {
                "true".to_owned()
            } else {
                conds.join(" AND ")
            }
        );
        let sql = match after {
            Some(_) if set.is_empty() => return Ok(()),
            Some(_) => format!(
                "UPDATE {} SET {} WHERE {target}",
                table.qualified,
                set.join(", ")
            ),
            None => format!("DELETE FROM {} WHERE {target}", table.qualified),
        };
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        self.conn
            .client
            .execute(sql.as_str(), &refs)
            .await
            .map_err(self.sql_err(format!(
                "{} of a row of {} without primary key (pos {pos})",
                if after.is_some() { "update" } else { "delete" },
                table.qualified
            )))?;
        Ok(())
    }

    /// After a data exception: find the column whose value the server refuses.
    async fn probe(&mut self, env: &Envelope) -> Option<PgSinkError> {
        let table = self.table(env).await.ok()?;
        let images = [env.after.as_ref(), env.before.as_ref(), env.key.as_ref()];
        for image in images.into_iter().flatten() {
            for (name, value) in image {
                let Some(i) = table.column(name) else {
                    continue;
                };
                let c = &table.columns[i];
                let canonical = canonical_of(&env.schema.columns, name);
                let Ok(Some(text)) = to_text(value, canonical, &c.kind) else {
                    continue;
                };
                let sql = format!("SELECT $1::text::{}", c.cast);
                if let Err(e) = self.conn.client.execute(sql.as_str(), &[&text]).await {
                    return Some(PgSinkError::Convert {
                        table: table.qualified.clone(),
                        column: name.clone(),
                        value: shorten(&value.json_text()),
                        target_type: c.display.clone(),
                        reason: describe(&e),
                    });
                }
            }
        }
        None
    }
}

fn canonical_of(columns: &[Column], name: &str) -> Option<CanonicalType> {
    columns.iter().find(|c| c.name == name).map(|c| c.ty)
}

/// Converts the values of `cols` (resolved from `image`) to text.
fn convert_row(
    table: &TargetTable,
    env: &Envelope,
    image: &Image,
    cols: &[(usize, String)],
) -> Result<Vec<Option<String>>, PgSinkError> {
    let mut out = Vec::with_capacity(cols.len());
    for (i, name) in cols {
        let c = &table.columns[*i];
        let v = image.get(name).unwrap_or(&cell::NULL);
        let canonical = canonical_of(&env.schema.columns, name);
        let text = to_text(v, canonical, &c.kind).map_err(|e| PgSinkError::Convert {
            table: table.qualified.clone(),
            column: name.clone(),
            value: shorten(&v.json_text()),
            target_type: c.display.clone(),
            reason: format!("{} (pos {})", e.0, env.source.pos),
        })?;
        out.push(text);
    }
    Ok(out)
}

/// Text values of the key columns taken from `image`.
fn key_values(
    table: &TargetTable,
    env: &Envelope,
    image: &Image,
) -> Result<Option<Vec<Option<String>>>, PgSinkError> {
    let mut cols = Vec::with_capacity(table.pk.len());
    for &k in &table.pk {
        let name = &table.columns[k].name;
        if !image.contains_key(name) {
            return Ok(None);
        }
        cols.push((k, name.clone()));
    }
    convert_row(table, env, image, &cols).map(Some)
}

/// The old key of an update, when it differs from the new one.
fn changed_key(
    table: &TargetTable,
    env: &Envelope,
    before: &Image,
    after: &Image,
) -> Result<Option<Vec<Option<String>>>, PgSinkError> {
    let changed = table.pk.iter().any(|&k| {
        let name = &table.columns[k].name;
        matches!((before.get(name), after.get(name)), (Some(b), Some(a)) if a != b)
    });
    if !changed {
        return Ok(None);
    }
    key_values(table, env, before)
}

/// The key of a delete: from `key`, else from `before`.
fn delete_key(table: &TargetTable, env: &Envelope) -> Result<Vec<Option<String>>, PgSinkError> {
    for image in [env.key.as_ref(), env.before.as_ref()]
        .into_iter()
        .flatten()
    {
        if let Some(values) = key_values(table, env, image)? {
            return Ok(values);
        }
    }
    Err(PgSinkError::BadEvent {
        table: table.qualified.clone(),
        message: format!(
            "delete at pos {} carries no value for the key columns {:?}",
            env.source.pos,
            table
                .pk
                .iter()
                .map(|&k| table.columns[k].name.as_str())
                .collect::<Vec<_>>()
        ),
    })
}

/// A string identifying the key of a row of `cols`/`values`.
fn key_string(cols: &[usize], values: &[Option<String>], pk: &[usize]) -> String {
    let mut s = String::new();
    for k in pk {
        if let Some(pos) = cols.iter().position(|c| c == k) {
            match values.get(pos) {
                Some(Some(v)) => {
                    s.push('v');
                    s.push_str(v);
                }
                _ => s.push('n'),
            }
            s.push('\u{0}');
        }
    }
    s
}

fn batch_sql(b: &Batch) -> String {
    let t = &b.table;
    let n = b.cols.len();
    let unnest = (1..=n)
        .map(|i| format!("${i}::text[]"))
        .collect::<Vec<_>>()
        .join(", ");
    let aliases = (0..n)
        .map(|i| format!("c{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    match b.kind {
        BatchKind::Upsert | BatchKind::Insert => {
            let cols = b
                .cols
                .iter()
                .map(|&i| quote_ident(&t.columns[i].name))
                .collect::<Vec<_>>()
                .join(", ");
            let casts = b
                .cols
                .iter()
                .enumerate()
                .map(|(j, &i)| format!("tm_u.c{j}::{}", t.columns[i].cast))
                .collect::<Vec<_>>()
                .join(", ");
            let mut sql = format!(
                "INSERT INTO {} ({cols}) SELECT {casts} FROM UNNEST({unnest}) AS tm_u({aliases})",
                t.qualified
            );
            if b.kind == BatchKind::Upsert {
                let pk =
                    t.pk.iter()
                        .map(|&i| quote_ident(&t.columns[i].name))
                        .collect::<Vec<_>>()
                        .join(", ");
                let set = b
                    .cols
                    .iter()
                    .filter(|i| !t.pk.contains(i))
                    .map(|&i| {
                        let c = quote_ident(&t.columns[i].name);
                        format!("{c} = EXCLUDED.{c}")
                    })
                    .collect::<Vec<_>>();
                if set.is_empty() {
                    sql.push_str(&format!(" ON CONFLICT ({pk}) DO NOTHING"));
                } else {
                    sql.push_str(&format!(
                        " ON CONFLICT ({pk}) DO UPDATE SET {}",
                        set.join(", ")
                    ));
                }
            }
            sql
        }
        BatchKind::Delete => {
            let conds = b
                .cols
                .iter()
                .enumerate()
                .map(|(j, &i)| {
                    let c = &t.columns[i];
                    format!("tm_t.{} = tm_u.c{j}::{}", quote_ident(&c.name), c.cast)
                })
                .collect::<Vec<_>>()
                .join(" AND ");
            format!(
                "DELETE FROM {} AS tm_t USING UNNEST({unnest}) AS tm_u({aliases}) WHERE {conds}",
                t.qualified
            )
        }
    }
}

/// Whether the envelope comes from a MySQL/MariaDB source (`source.connector`).
fn from_mysql(connector: &str) -> bool {
    connector == "mysql"
}

/// Postgres type for a canonical column (used only with `create_tables = true`).
///
/// A MySQL TIME spans `-838:59:59` … `838:59:59` (an elapsed time as much as a time of day):
/// its canonical `time` values go into `interval`, which holds them all; Postgres `time`
/// would reject anything negative or from 24 h on.
fn native_type(c: &Column, connector: &str) -> String {
    if c.ty == CanonicalType::Time && from_mysql(connector) {
        return "interval".to_owned();
    }
    fn scalar(t: CanonicalType) -> &'static str {
        match t {
            CanonicalType::Bool => "boolean",
            CanonicalType::Int64 => "bigint",
            CanonicalType::Uint64 => "numeric(20,0)",
            CanonicalType::Decimal => "numeric",
            CanonicalType::Float64 => "double precision",
            CanonicalType::String => "text",
            CanonicalType::Bytes => "bytea",
            CanonicalType::Json => "jsonb",
            CanonicalType::Uuid => "uuid",
            CanonicalType::Date => "date",
            CanonicalType::Time => "time",
            CanonicalType::Timestamp => "timestamp",
            CanonicalType::Timestamptz => "timestamptz",
            CanonicalType::Interval => "interval",
            CanonicalType::Array => "jsonb",
            CanonicalType::Set => "text[]",
            CanonicalType::Bits => "varbit",
        }
    }
    match (c.ty, c.element) {
        (CanonicalType::Array, Some(e)) if e != CanonicalType::Array => format!("{}[]", scalar(e)),
        (t, _) => scalar(t).to_owned(),
    }
}

/// Whether a NOT NULL source column may still carry `null`: a MySQL zero date (`0000-00-00`,
/// `2024-00-15`) has no calendar value and arrives as `null` even from a NOT NULL column.
fn may_be_substituted(c: &Column, connector: &str) -> bool {
    from_mysql(connector)
        && matches!(
            c.ty,
            CanonicalType::Date | CanonicalType::Timestamp | CanonicalType::Timestamptz
        )
}

fn create_table_sql(schema: &str, table: &str, connector: &str, columns: &[Column]) -> String {
    let mut defs: Vec<String> = columns
        .iter()
        .map(|c| {
            let mut d = format!("{} {}", quote_ident(&c.name), native_type(c, connector));
            if c.pk || (!c.nullable && !may_be_substituted(c, connector)) {
                d.push_str(" NOT NULL");
            }
            d
        })
        .collect();
    let pk: Vec<String> = columns
        .iter()
        .filter(|c| c.pk)
        .map(|c| quote_ident(&c.name))
        .collect();
    if !pk.is_empty() {
        defs.push(format!("PRIMARY KEY ({})", pk.join(", ")));
    }
    format!(
        "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {} ({})",
        quote_ident(schema),
        qualified(schema, table),
        defs.join(", ")
    )
}

impl SinkWriter for PostgresSink {
    type Error = PgSinkError;

    async fn connect(sink: &SinkConfig, pipeline: &PipelineConfig) -> Result<Self, PgSinkError> {
        let app = format!("tidemark sink {}/{}", pipeline.name, sink.name);
        let conn = client::connect(&sink.url, &app).await?;
        let offsets_schema = sink.schema.clone().unwrap_or_else(|| "public".to_owned());
        Ok(PostgresSink {
            conn,
            pipeline: pipeline.name.clone(),
            sink: sink.name.clone(),
            schema_override: sink.schema.clone(),
            offsets: qualified(&offsets_schema, OFFSETS_TABLE),
            offsets_schema,
            create_tables: sink.create_tables,
            last: None,
            tables: HashMap::new(),
            statements: HashMap::new(),
            batch: None,
            inflight: None,
        })
    }

    async fn read_offset(&mut self) -> Result<Option<Offset>, PgSinkError> {
        read_offset(
            &self.conn.client,
            &self.offsets_schema,
            &self.pipeline,
            &self.sink,
            true,
        )
        .await
    }

    async fn begin(&mut self) -> Result<(), PgSinkError> {
        self.batch = None;
        self.settle().await?;
        self.conn
            .client
            .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(self.sql_err("BEGIN"))
    }

    async fn apply(&mut self, event: &Envelope) -> Result<(), PgSinkError> {
        self.apply_event(event).await
    }

    async fn apply_isolated(&mut self, event: &Envelope) -> Result<(), PgSinkError> {
        self.flush_wait().await?;
        self.conn
            .client
            .batch_execute("SAVEPOINT tidemark_isolate")
            .await
            .map_err(self.sql_err("SAVEPOINT"))?;
        let result = match self.apply_event(event).await {
            Ok(()) => self.flush_wait().await,
            // A statement this event already sent failed first: that is the cause.
            Err(e) => Err(self.settle().await.err().unwrap_or(e)),
        };
        self.batch = None;
        match result {
            Ok(()) => self
                .conn
                .client
                .batch_execute("RELEASE SAVEPOINT tidemark_isolate")
                .await
                .map_err(self.sql_err("RELEASE SAVEPOINT")),
            Err(e) => {
                self.conn
                    .client
                    .batch_execute("ROLLBACK TO SAVEPOINT tidemark_isolate")
                    .await
                    .map_err(self.sql_err("ROLLBACK TO SAVEPOINT"))?;
                if let PgSinkError::Sql { source, .. } = &e {
                    if is_data_exception(source) {
                        // Probing runs statements that fail: keep them in their own savepoint.
                        self.conn
                            .client
                            .batch_execute("SAVEPOINT tidemark_probe")
                            .await
                            .map_err(self.sql_err("SAVEPOINT"))?;
                        let found = self.probe(event).await;
                        self.conn
                            .client
                            .batch_execute(
                                "ROLLBACK TO SAVEPOINT tidemark_probe; RELEASE SAVEPOINT tidemark_probe",
                            )
                            .await
                            .map_err(self.sql_err("ROLLBACK TO SAVEPOINT"))?;
                        if let Some(found) = found {
                            return Err(found);
                        }
                    }
                }
                Err(e)
            }
        }
    }

    async fn commit(
        &mut self,
        offset: &Offset,
        previous: Option<&Offset>,
    ) -> Result<(), PgSinkError> {
        self.flush_wait().await?;
        let seq = i64::try_from(offset.stream_seq).unwrap_or(i64::MAX);
        let rows = match previous {
            Some(prev) => {
                let prev_seq = i64::try_from(prev.stream_seq).unwrap_or(i64::MAX);
                let sql = format!(
                    "UPDATE {} SET pos = $3, stream_seq = $4, updated_at = now() \
                     WHERE pipeline = $1 AND sink = $2 AND stream_seq = $5 AND pos IS NOT DISTINCT FROM $6",
                    self.offsets
                );
                // Prepared once per connection: one round trip per commit, not two.
                let stmt = self.statement(&sql).await?;
                self.conn
                    .client
                    .execute(
                        &stmt,
                        &[
                            &self.pipeline,
                            &self.sink,
                            &offset.pos,
                            &seq,
                            &prev_seq,
                            &prev.pos,
                        ],
                    )
                    .await
                    .map_err(self.sql_err("updating tidemark_offsets"))?
            }
            None => {
                let sql = format!(
                    "INSERT INTO {} (pipeline, sink, pos, stream_seq, updated_at) \
                     VALUES ($1, $2, $3, $4, now()) ON CONFLICT (pipeline, sink) DO NOTHING",
                    self.offsets
                );
                self.conn
                    .client
                    .execute(
                        sql.as_str(),
                        &[&self.pipeline, &self.sink, &offset.pos, &seq],
                    )
                    .await
                    .map_err(self.sql_err("inserting into tidemark_offsets"))?
            }
        };
        if rows != 1 {
            return Err(PgSinkError::OffsetConflict {
                pipeline: self.pipeline.clone(),
                sink: self.sink.clone(),
            });
        }
        self.conn
            .client
            .batch_execute("COMMIT")
            .await
            .map_err(self.sql_err("COMMIT"))
    }

    async fn rollback(&mut self) -> Result<(), PgSinkError> {
        self.batch = None;
        // The in-flight statement's outcome no longer matters; the transaction is discarded.
        let _ = self.settle().await;
        self.conn
            .client
            .batch_execute("ROLLBACK")
            .await
            .map_err(self.sql_err("ROLLBACK"))
    }
}

/// Reads the offset row; with `create`, creates the table (and its schema) first.
pub(crate) async fn read_offset(
    client: &tokio_postgres::Client,
    schema: &str,
    pipeline: &str,
    sink: &str,
    create: bool,
) -> Result<Option<Offset>, PgSinkError> {
    let table = qualified(schema, OFFSETS_TABLE);
    if create {
        // Several sinks may share one target database and start together: concurrent
        // `CREATE TABLE IF NOT EXISTS` of one table can still fail on the catalog's unique
        // index, so creators take a transaction-level advisory lock first (the statements of
        // one simple query run as one implicit transaction, which holds it to the end).
        let ddl = format!(
            "SELECT pg_advisory_xact_lock(hashtext('tidemark_offsets')); \
             CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {table} (\
               pipeline text NOT NULL, sink text NOT NULL, pos text, stream_seq bigint NOT NULL, \
               updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (pipeline, sink))",
            quote_ident(schema)
        );
        client
            .batch_execute(&ddl)
            .await
            .map_err(|source| PgSinkError::Sql {
                context: format!("creating {table}"),
                source,
            })?;
    }
    let sql = format!("SELECT pos, stream_seq FROM {table} WHERE pipeline = $1 AND sink = $2");
    let row = client
        .query_opt(sql.as_str(), &[&pipeline, &sink])
        .await
        .map_err(|source| PgSinkError::Sql {
            context: format!("reading {table}"),
            source,
        })?;
    let Some(row) = row else { return Ok(None) };
    let pos: Option<String> = row.try_get(0).map_err(|source| PgSinkError::Sql {
        context: format!("reading {table}"),
        source,
    })?;
    let seq: i64 = row.try_get(1).map_err(|source| PgSinkError::Sql {
        context: format!("reading {table}"),
        source,
    })?;
    Ok(Some(Offset {
        pos,
        stream_seq: u64::try_from(seq).unwrap_or(0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: CanonicalType, source_type: &str, nullable: bool) -> Column {
        Column {
            name: name.into(),
            ty,
            source_type: source_type.into(),
            pk: false,
            nullable,
            element: None,
        }
    }

    #[test]
    fn mysql_time_becomes_interval_and_zero_dates_stay_nullable() {
        let mut id = col("id", CanonicalType::Int64, "int(11)", false);
        id.pk = true;
        let cols = [
            id,
            col("t", CanonicalType::Time, "time(2)", false),
            col("d", CanonicalType::Date, "date", false),
            col("dt", CanonicalType::Timestamp, "datetime", false),
            col("n", CanonicalType::Int64, "int(11)", false),
        ];
        assert_eq!(
            create_table_sql("s", "x", "mysql", &cols),
            "CREATE SCHEMA IF NOT EXISTS \"s\"; CREATE TABLE IF NOT EXISTS \"s\".\"x\" \
             (\"id\" bigint NOT NULL, \"t\" interval NOT NULL, \"d\" date, \"dt\" timestamp, \
             \"n\" bigint NOT NULL, PRIMARY KEY (\"id\"))"
        );
        // A Postgres time stays a time, and its NOT NULL dates stay NOT NULL.
        let sql = create_table_sql("s", "x", "postgres", &cols);
        assert!(sql.contains("\"t\" time NOT NULL"), "{sql}");
        assert!(sql.contains("\"d\" date NOT NULL"), "{sql}");
    }
}
