//! End to end through the real `tidemark run` binary against the real Postgres, MariaDB and
//! NATS: sources, JetStream and sinks together, with random workloads, SIGKILLs of the daemon
//! in the middle, and row-by-row comparisons of source and target afterwards.
//!
//! * `pg_to_pg_random_workload_survives_two_kills`: three writers run inserts, updates next to
//!   an unchanged TOASTed column, deletes, key changes, truncates and multi-statement
//!   transactions for ~22 s while the daemon is killed twice; the target must then equal the
//!   source.
//! * `*_transfers_*`: money moves between accounts while the daemon is killed once; a
//!   concurrent reader of the target must never see another `sum(balance)` (a source
//!   transaction is applied whole or not at all). Postgres → Postgres, MariaDB → MariaDB (the
//!   target table created by the sink), Postgres → MariaDB and MariaDB → Postgres.
//! * `mariadb_to_postgres_…`, `postgres_to_mariadb_…`, `mariadb_to_mariadb_…`: cross-engine
//!   pipelines with a mixed workload and a SIGKILL, compared on normalised renderings of every
//!   column (types chosen to round-trip exactly between the engines).
//! * `hostile_identifiers_…`: a table called `x"; drop table y; --` with columns named by
//!   spaces, backticks, dots, a reserved word and non-ASCII, through both sinks.
//!
//! Workloads use a seeded RNG; the seed is printed and can be pinned with
//! `TIDEMARK_E2E_SEED=<n>` to replay a failing run's workload.

use crate::common::*;
use futures_util::FutureExt as _;
use mysql_async::prelude::Queryable as _;
use rand::distr::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;

// ───────────────────────────── plumbing ─────────────────────────────

/// The workload seed: `TIDEMARK_E2E_SEED` or random; printed so a failure can be replayed.
fn seed(test: &str) -> u64 {
    let s = std::env::var("TIDEMARK_E2E_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("[{test}] seed = {s} (replay with TIDEMARK_E2E_SEED={s})");
    s
}

/// A replica server id no other test uses (MariaDB refuses two dumps with one id).
fn server_id() -> u32 {
    1000 + rand::random::<u32>() % 1_000_000_000
}

/// Runs `body`, then `cleanup` whether or not `body` panicked (unless `TIDEMARK_E2E_KEEP` is
/// set and it panicked), then re-raises the panic.
async fn guarded(body: impl Future<Output = ()>, cleanup: impl Future<Output = ()>) {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    if outcome.is_err() && std::env::var_os("TIDEMARK_E2E_KEEP").is_some() {
        eprintln!("TIDEMARK_E2E_KEEP is set: databases and stream left for inspection");
    } else {
        cleanup.await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Pg,
    My,
}

/// One SQL connection to either engine; every value goes in and comes out as text.
enum Db {
    Pg(tokio_postgres::Client),
    My(mysql_async::Conn),
}

fn short(sql: &str) -> String {
    if sql.len() > 300 {
        let mut end = 300;
        while !sql.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &sql[..end])
    } else {
        sql.to_owned()
    }
}

impl Db {
    async fn open(engine: Engine, db: &str) -> Db {
        match engine {
            Engine::Pg => Db::Pg(pg_connect(db).await),
            Engine::My => {
                let mut c = mysql_conn(db).await;
                c.query_drop("SET NAMES utf8mb4")
                    .await
                    .unwrap_or_else(|e| panic!("SET NAMES on {db}: {e}"));
                Db::My(c)
            }
        }
    }

    /// Runs a statement with text parameters (`$n` / `?`); returns the affected rows.
    async fn exec(&mut self, sql: &str, params: &[Option<String>]) -> Result<u64, String> {
        match self {
            Db::Pg(c) => {
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                c.execute(sql, &refs)
                    .await
                    .map_err(|e| format!("{}: {e:?}", short(sql)))
            }
            Db::My(c) => {
                let res = if params.is_empty() {
                    c.query_drop(sql).await
                } else {
                    let values: Vec<mysql_async::Value> =
                        params.iter().map(|p| p.clone().into()).collect();
                    c.exec_drop(sql, mysql_async::Params::Positional(values))
                        .await
                };
                res.map_err(|e| format!("{}: {e}", short(sql)))?;
                Ok(c.affected_rows())
            }
        }
    }

    /// Runs statements without parameters.
    async fn batch(&mut self, sql: &str) -> Result<(), String> {
        match self {
            Db::Pg(c) => c
                .batch_execute(sql)
                .await
                .map_err(|e| format!("{}: {e:?}", short(sql))),
            Db::My(c) => c
                .query_drop(sql)
                .await
                .map_err(|e| format!("{}: {e}", short(sql))),
        }
    }

    async fn must(&mut self, sql: &str) {
        if let Err(e) = self.batch(sql).await {
            panic!("{e}");
        }
    }

    /// Every column of every row as text (NULL as `None`).
    async fn rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        match self {
            Db::Pg(c) => {
                let msgs = c
                    .simple_query(sql)
                    .await
                    .map_err(|e| format!("{}: {e:?}", short(sql)))?;
                Ok(msgs
                    .into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                        }
                        _ => None,
                    })
                    .collect())
            }
            Db::My(c) => {
                let rows: Vec<mysql_async::Row> = c
                    .query(sql)
                    .await
                    .map_err(|e| format!("{}: {e}", short(sql)))?;
                Ok(rows
                    .into_iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| match r.as_ref(i) {
                                None | Some(mysql_async::Value::NULL) => None,
                                Some(mysql_async::Value::Bytes(b)) => {
                                    Some(String::from_utf8_lossy(b).into_owned())
                                }
                                Some(mysql_async::Value::Int(v)) => Some(v.to_string()),
                                Some(mysql_async::Value::UInt(v)) => Some(v.to_string()),
                                Some(other) => Some(format!("{other:?}")),
                            })
                            .collect()
                    })
                    .collect())
            }
        }
    }
}

fn quote(engine: Engine, ident: &str) -> String {
    match engine {
        Engine::Pg => format!("\"{}\"", ident.replace('"', "\"\"")),
        Engine::My => format!("`{}`", ident.replace('`', "``")),
    }
}

// ───────────────────────────── tables and values ─────────────────────────────

/// Column kinds chosen to round-trip exactly between the engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum K {
    /// bigint primary key.
    Id,
    /// bigint.
    Int,
    /// varchar(200).
    Text,
    /// numeric(12,2) / decimal(12,2).
    Dec,
    /// timestamp(6) / datetime(6), wall clock.
    Ts,
    /// boolean / tinyint(1).
    Bool,
    /// jsonb / json.
    Json,
    /// text / mediumtext, sometimes 20–30 kB (TOASTed out of line in Postgres).
    Big,
}

#[derive(Debug, Clone)]
struct Tbl {
    name: String,
    cols: Vec<(String, K)>,
}

impl Tbl {
    fn new(name: &str, cols: &[(&str, K)]) -> Tbl {
        Tbl {
            name: name.to_owned(),
            cols: cols.iter().map(|(n, k)| (n.to_string(), *k)).collect(),
        }
    }

    fn key(&self) -> &str {
        self.cols
            .iter()
            .find(|c| c.1 == K::Id)
            .map(|c| c.0.as_str())
            .unwrap_or("id")
    }

    fn ddl(&self, engine: Engine, qualified: &str) -> String {
        let defs: Vec<String> = self
            .cols
            .iter()
            .map(|(n, k)| {
                let ty = match (engine, k) {
                    (Engine::Pg, K::Id) => "bigint PRIMARY KEY",
                    (Engine::Pg, K::Int) => "bigint",
                    (Engine::Pg, K::Text) => "varchar(200)",
                    (Engine::Pg, K::Dec) => "numeric(12,2)",
                    (Engine::Pg, K::Ts) => "timestamp(6)",
                    (Engine::Pg, K::Bool) => "boolean",
                    (Engine::Pg, K::Json) => "jsonb",
                    (Engine::Pg, K::Big) => "text",
                    (Engine::My, K::Id) => "BIGINT NOT NULL PRIMARY KEY",
                    (Engine::My, K::Int) => "BIGINT",
                    (Engine::My, K::Text) => "VARCHAR(200)",
                    (Engine::My, K::Dec) => "DECIMAL(12,2)",
                    (Engine::My, K::Ts) => "DATETIME(6)",
                    (Engine::My, K::Bool) => "TINYINT(1)",
                    (Engine::My, K::Json) => "JSON",
                    (Engine::My, K::Big) => "MEDIUMTEXT",
                };
                format!("{} {ty}", quote(engine, n))
            })
            .collect();
        match engine {
            Engine::Pg => format!("CREATE TABLE {qualified} ({})", defs.join(", ")),
            Engine::My => format!(
                "CREATE TABLE {qualified} ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
                defs.join(", ")
            ),
        }
    }

    /// `SELECT` of every column rendered as comparable text, ordered by key.
    fn dump_sql(&self, engine: Engine, qualified: &str) -> String {
        let exprs: Vec<String> = self
            .cols
            .iter()
            .map(|(n, k)| {
                let c = quote(engine, n);
                match (engine, k) {
                    (Engine::Pg, K::Id | K::Int | K::Dec | K::Json) => format!("{c}::text"),
                    (Engine::Pg, K::Text) => c,
                    (Engine::Pg, K::Ts) => format!("to_char({c}, 'YYYY-MM-DD HH24:MI:SS.US')"),
                    (Engine::Pg, K::Bool) => {
                        format!("CASE WHEN {c} THEN '1' WHEN NOT {c} THEN '0' END")
                    }
                    (Engine::Pg, K::Big) => format!("md5({c}) || ':' || length({c})"),
                    (Engine::My, K::Id | K::Int | K::Dec | K::Bool) => {
                        format!("CAST({c} AS CHAR)")
                    }
                    (Engine::My, K::Text | K::Json) => c,
                    (Engine::My, K::Ts) => format!("DATE_FORMAT({c}, '%Y-%m-%d %H:%i:%s.%f')"),
                    (Engine::My, K::Big) => format!("CONCAT(MD5({c}), ':', CHAR_LENGTH({c}))"),
                }
            })
            .collect();
        format!(
            // The alias keeps ORDER BY on the column, not on the text rendering of the same name.
            "SELECT {} FROM {qualified} AS tm_d ORDER BY tm_d.{}",
            exprs.join(", "),
            quote(engine, self.key())
        )
    }
}

/// Where a table lives: engine, database, and (Postgres) schema.
#[derive(Debug, Clone)]
struct Loc {
    engine: Engine,
    db: String,
    schema: Option<String>,
    label: String,
}

impl Loc {
    fn qualified(&self, table: &str) -> String {
        match (self.engine, &self.schema) {
            (Engine::Pg, Some(s)) => {
                format!("{}.{}", quote(Engine::Pg, s), quote(Engine::Pg, table))
            }
            (Engine::Pg, None) => format!("public.{}", quote(Engine::Pg, table)),
            (Engine::My, _) => quote(Engine::My, table),
        }
    }
}

/// JSON with object keys sorted, so that jsonb and MariaDB renderings compare.
fn canon_json(text: &str) -> String {
    fn walk(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                let sorted: BTreeMap<&String, &serde_json::Value> = m.iter().collect();
                out.push('{');
                for (i, (k, v)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    walk(v, out);
                }
                out.push('}');
            }
            serde_json::Value::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    walk(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => {
            let mut s = String::new();
            walk(&v, &mut s);
            s
        }
        Err(_) => format!("<invalid json {text}>"),
    }
}

type Rows = Vec<Vec<Option<String>>>;

/// The normalised rows of `t` at `loc`, or the error (e.g. a table not created yet).
async fn dump(db: &mut Db, loc: &Loc, t: &Tbl) -> Result<Rows, String> {
    let mut rows = db
        .rows(&t.dump_sql(loc.engine, &loc.qualified(&t.name)))
        .await?;
    for row in &mut rows {
        for (v, (_, k)) in row.iter_mut().zip(&t.cols) {
            if *k == K::Json {
                if let Some(s) = v.as_mut() {
                    *s = canon_json(s);
                }
            }
        }
    }
    Ok(rows)
}

/// A readable description of how `target` differs from `source` (first few rows).
fn diff(t: &Tbl, source: &Rows, target: &Rows) -> String {
    let by_key = |rows: &Rows| -> BTreeMap<String, Vec<Option<String>>> {
        rows.iter()
            .map(|r| (r.first().cloned().flatten().unwrap_or_default(), r.clone()))
            .collect()
    };
    let (s, d) = (by_key(source), by_key(target));
    let mut out = format!(
        "table {}: source {} rows, target {} rows\n",
        t.name,
        source.len(),
        target.len()
    );
    let mut shown = 0;
    for (k, sr) in &s {
        if shown >= 12 {
            break;
        }
        match d.get(k) {
            None => {
                out.push_str(&format!("  missing in target: {sr:?}\n"));
                shown += 1;
            }
            Some(dr) if dr != sr => {
                let cols: Vec<String> = t
                    .cols
                    .iter()
                    .zip(sr.iter().zip(dr))
                    .filter(|(_, (a, b))| a != b)
                    .map(|((n, _), (a, b))| format!("{n}: source {a:?} target {b:?}"))
                    .collect();
                out.push_str(&format!("  key {k} differs: {}\n", cols.join("; ")));
                shown += 1;
            }
            _ => {}
        }
    }
    for (k, dr) in &d {
        if shown >= 20 {
            break;
        }
        if !s.contains_key(k) {
            out.push_str(&format!("  extra in target: {dr:?}\n"));
            shown += 1;
        }
    }
    out
}

/// Random values of each kind (text is a mix of ASCII, quotes, backslashes and non-ASCII).
fn gen(rng: &mut StdRng, k: K) -> Option<String> {
    if k != K::Id && rng.random_ratio(1, 10) {
        return None;
    }
    Some(match k {
        K::Id | K::Int => rng
            .random_range(-1_000_000_000_000i64..1_000_000_000_000)
            .to_string(),
        K::Text => {
            const PIECES: &[&str] = &[
                "a", "b", "Z", "0", "7", " ", "'", "\"", "\\", "`", ";", "--", "%", "_", "é", "ß",
                "日本", "🦀", "\n", "\t", "x", "y",
            ];
            let n = rng.random_range(0..30);
            (0..n)
                .map(|_| PIECES[rng.random_range(0..PIECES.len())])
                .collect()
        }
        K::Dec => {
            let c = rng.random_range(-99_999_999_999i64..99_999_999_999);
            format!(
                "{}{}.{:02}",
                if c < 0 { "-" } else { "" },
                c.abs() / 100,
                c.abs() % 100
            )
        }
        K::Ts => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
            rng.random_range(1990..2036),
            rng.random_range(1..13),
            rng.random_range(1..29),
            rng.random_range(0..24),
            rng.random_range(0..60),
            rng.random_range(0..60),
            if rng.random_bool(0.2) {
                0
            } else {
                rng.random_range(0..1_000_000)
            }
        ),
        K::Bool => if rng.random_bool(0.5) { "1" } else { "0" }.to_owned(),
        K::Json => {
            let s: String = (0..rng.random_range(0..8))
                .map(|_| ["a", "\"", "é", "🦀", " ", "\\", "q"][rng.random_range(0..7)])
                .collect();
            serde_json::json!({
                "n": rng.random_range(-1000i64..1000),
                "s": s,
                "list": (0..rng.random_range(0..4)).map(|i| i * 3).collect::<Vec<i64>>(),
                "nested": {"ok": rng.random_bool(0.5), "z": null}
            })
            .to_string()
        }
        K::Big => {
            if rng.random_bool(0.5) {
                let n = rng.random_range(20_000..30_000);
                (&mut *rng)
                    .sample_iter(Alphanumeric)
                    .take(n)
                    .map(char::from)
                    .collect()
            } else {
                format!("small {}", rng.random_range(0..1000))
            }
        }
    })
}

/// Placeholder `n` (1-based) for a column of kind `k`.
fn ph(engine: Engine, n: usize, k: K) -> String {
    match engine {
        Engine::My => "?".to_owned(),
        Engine::Pg => {
            let cast = match k {
                K::Id | K::Int => "::bigint",
                K::Text | K::Big => "",
                K::Dec => "::numeric",
                K::Ts => "::timestamp",
                K::Bool => "::boolean",
                K::Json => "::jsonb",
            };
            format!("${n}::text{cast}")
        }
    }
}

// ───────────────────────────── random workload ─────────────────────────────

/// The two tables every random workload writes: `items` (with the TOAST column) and `ledger`.
fn workload_tables() -> Vec<Tbl> {
    vec![
        Tbl::new(
            "items",
            &[
                ("id", K::Id),
                ("grp", K::Int),
                ("name", K::Text),
                ("price", K::Dec),
                ("ts", K::Ts),
                ("flag", K::Bool),
                ("doc", K::Json),
                ("note", K::Text),
                ("big", K::Big),
            ],
        ),
        Tbl::new(
            "ledger",
            &[
                ("id", K::Id),
                ("qty", K::Int),
                ("label", K::Text),
                ("amount", K::Dec),
                ("at", K::Ts),
                ("ok", K::Bool),
                ("meta", K::Json),
            ],
        ),
    ]
}

/// What a writer did (for the report and for sanity checks).
#[derive(Debug, Default)]
struct Stats {
    txs: u64,
    rolled_back: u64,
    errors: u64,
    inserts: u64,
    updates: u64,
    toast_updates: u64,
    deletes: u64,
    rekeys: u64,
    truncates: u64,
    last_error: Option<String>,
}

/// One writer: owns the keys `k * writers + w`, so writers never contend for a row.
struct Writer {
    engine: Engine,
    db: Db,
    rng: StdRng,
    tables: Vec<Tbl>,
    w: i64,
    writers: i64,
    next: i64,
    live: Vec<Vec<i64>>,
    /// Keys this writer deleted or moved away from, per table: reused now and then, so that a
    /// key comes back (insert after delete, key change onto a freed key).
    dead: Vec<Vec<i64>>,
    stats: Stats,
}

impl Writer {
    async fn new(engine: Engine, db: &str, seed: u64, w: i64, writers: i64) -> Writer {
        Writer {
            engine,
            db: Db::open(engine, db).await,
            rng: StdRng::seed_from_u64(seed ^ (w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            tables: workload_tables(),
            w,
            writers,
            next: 1,
            live: vec![Vec::new(); workload_tables().len()],
            dead: vec![Vec::new(); workload_tables().len()],
            stats: Stats::default(),
        }
    }

    fn fresh_id(&mut self) -> i64 {
        let id = self.next * self.writers + self.w;
        self.next += 1;
        id
    }

    /// A key for a new row of table `t`: usually fresh, sometimes one freed earlier.
    fn new_key(&mut self, t: usize) -> i64 {
        if !self.dead[t].is_empty() && self.rng.random_ratio(1, 4) {
            let i = self.rng.random_range(0..self.dead[t].len());
            return self.dead[t].swap_remove(i);
        }
        self.fresh_id()
    }

    fn pick(&mut self, t: usize) -> Option<i64> {
        let live = &self.live[t];
        if live.is_empty() {
            None
        } else {
            Some(live[self.rng.random_range(0..live.len())])
        }
    }

    fn forget(&mut self, t: usize, id: i64) {
        self.live[t].retain(|x| *x != id);
        self.dead[t].push(id);
    }

    async fn insert(&mut self, t: usize, n: usize) -> Result<(), String> {
        let tbl = self.tables[t].clone();
        let mut params = Vec::new();
        let mut rows = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..n {
            let mut ph_row = Vec::new();
            for (_, k) in &tbl.cols {
                let v = if *k == K::Id {
                    let id = self.new_key(t);
                    ids.push(id);
                    Some(id.to_string())
                } else {
                    gen(&mut self.rng, *k)
                };
                params.push(v);
                ph_row.push(ph(self.engine, params.len(), *k));
            }
            rows.push(format!("({})", ph_row.join(", ")));
        }
        let cols: Vec<String> = tbl
            .cols
            .iter()
            .map(|(c, _)| quote(self.engine, c))
            .collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES {}",
            quote(self.engine, &tbl.name),
            cols.join(", "),
            rows.join(", ")
        );
        self.db.exec(&sql, &params).await?;
        self.live[t].extend(ids);
        self.stats.inserts += n as u64;
        Ok(())
    }

    /// Updates 1–4 non-key columns of a row; `toast` = set the big column (only), else the big
    /// column is left alone (unchanged TOAST on the Postgres side).
    async fn update(&mut self, t: usize, toast: bool) -> Result<(), String> {
        let Some(id) = self.pick(t) else {
            return self.insert(t, 1).await;
        };
        let tbl = self.tables[t].clone();
        let candidates: Vec<(String, K)> = tbl
            .cols
            .iter()
            .filter(|(_, k)| {
                if toast {
                    *k == K::Big
                } else {
                    *k != K::Id && *k != K::Big
                }
            })
            .cloned()
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let n = self.rng.random_range(1..=candidates.len().min(4));
        let mut params = Vec::new();
        let mut sets = Vec::new();
        for i in rand::seq::index::sample(&mut self.rng, candidates.len(), n) {
            let (c, k) = &candidates[i];
            params.push(gen(&mut self.rng, *k));
            sets.push(format!(
                "{} = {}",
                quote(self.engine, c),
                ph(self.engine, params.len(), *k)
            ));
        }
        params.push(Some(id.to_string()));
        let sql = format!(
            "UPDATE {} SET {} WHERE {} = {}",
            quote(self.engine, &tbl.name),
            sets.join(", "),
            quote(self.engine, tbl.key()),
            ph(self.engine, params.len(), K::Id)
        );
        self.db.exec(&sql, &params).await?;
        if toast {
            self.stats.toast_updates += 1;
        } else {
            self.stats.updates += 1;
        }
        Ok(())
    }

    async fn delete(&mut self, t: usize) -> Result<(), String> {
        let Some(id) = self.pick(t) else {
            return Ok(());
        };
        let tbl = &self.tables[t];
        let sql = format!(
            "DELETE FROM {} WHERE {} = {}",
            quote(self.engine, &tbl.name),
            quote(self.engine, tbl.key()),
            ph(self.engine, 1, K::Id)
        );
        self.db.exec(&sql, &[Some(id.to_string())]).await?;
        self.forget(t, id);
        self.stats.deletes += 1;
        Ok(())
    }

    /// `UPDATE … SET id = new` (sometimes with another column), the big column untouched.
    async fn rekey(&mut self, t: usize) -> Result<(), String> {
        let Some(old) = self.pick(t) else {
            return Ok(());
        };
        let new = self.new_key(t);
        let tbl = self.tables[t].clone();
        let mut params = vec![Some(new.to_string())];
        let mut sets = vec![format!(
            "{} = {}",
            quote(self.engine, tbl.key()),
            ph(self.engine, 1, K::Id)
        )];
        if self.rng.random_bool(0.5) {
            let (c, k) = tbl.cols[self.rng.random_range(1..tbl.cols.len())].clone();
            if k != K::Big {
                params.push(gen(&mut self.rng, k));
                sets.push(format!(
                    "{} = {}",
                    quote(self.engine, &c),
                    ph(self.engine, params.len(), k)
                ));
            }
        }
        params.push(Some(old.to_string()));
        let sql = format!(
            "UPDATE {} SET {} WHERE {} = {}",
            quote(self.engine, &tbl.name),
            sets.join(", "),
            quote(self.engine, tbl.key()),
            ph(self.engine, params.len(), K::Id)
        );
        self.db.exec(&sql, &params).await?;
        self.forget(t, old);
        self.live[t].push(new);
        self.stats.rekeys += 1;
        Ok(())
    }

    /// One random row operation.
    async fn one_op(&mut self) -> Result<(), String> {
        let t = if self.rng.random_bool(0.6) { 0 } else { 1 };
        match self.rng.random_range(0..100) {
            0..30 => {
                let n = self.rng.random_range(1..=4);
                self.insert(t, n).await
            }
            30..58 => self.update(t, false).await,
            58..66 => self.update(0, true).await,
            66..80 => self.delete(t).await,
            _ => self.rekey(t).await,
        }
    }

    /// One source transaction: a single statement, or BEGIN … COMMIT (sometimes ROLLBACK).
    async fn one_tx(&mut self) {
        let res = if self.rng.random_bool(0.3) {
            let n = self.rng.random_range(2..=6);
            let rollback = self.rng.random_ratio(1, 12);
            // What the model looked like before: restored if the transaction does not commit.
            let saved = (self.live.clone(), self.dead.clone());
            let mut res = self.db.batch("BEGIN").await;
            for _ in 0..n {
                if res.is_err() {
                    break;
                }
                res = self.one_op().await;
            }
            if res.is_ok() {
                if rollback {
                    self.stats.rolled_back += 1;
                    res = self.db.batch("ROLLBACK").await;
                } else {
                    res = self.db.batch("COMMIT").await;
                }
            }
            if res.is_err() {
                let _ = self.db.batch("ROLLBACK").await;
            }
            if res.is_err() || rollback {
                (self.live, self.dead) = saved;
            }
            res
        } else {
            self.one_op().await
        };
        self.stats.txs += 1;
        if let Err(e) = res {
            self.stats.errors += 1;
            self.stats.last_error = Some(e);
        }
    }

    /// TRUNCATE of table `t` (Postgres: in a transaction with inserts after it).
    async fn truncate(&mut self, t: usize) {
        let name = quote(self.engine, &self.tables[t].name);
        let res = match self.engine {
            Engine::Pg => {
                let mut res = self.db.batch(&format!("BEGIN; TRUNCATE {name}")).await;
                if res.is_ok() {
                    res = self.insert(t, 3).await;
                }
                if res.is_ok() {
                    res = self.db.batch("COMMIT").await;
                }
                if res.is_err() {
                    let _ = self.db.batch("ROLLBACK").await;
                }
                res
            }
            Engine::My => self.db.batch(&format!("TRUNCATE TABLE {name}")).await,
        };
        match res {
            Ok(()) => self.stats.truncates += 1,
            Err(e) => {
                self.stats.errors += 1;
                self.stats.last_error = Some(e);
            }
        }
    }
}

/// What a writer task returns: its index, statistics and the keys it believes live.
type WriterOutcome = (i64, Stats, Vec<Vec<i64>>);

/// Runs `writers` writers on `db` for `secs`; writer 0 truncates `items` at 40 % and
/// `ledger` at 65 % of the run. Kills of the daemon happen meanwhile in the caller.
fn spawn_writers(
    engine: Engine,
    db: &str,
    seed: u64,
    writers: i64,
    start_next: i64,
    secs: f64,
    truncates: bool,
) -> Vec<tokio::task::JoinHandle<WriterOutcome>> {
    (0..writers)
        .map(|w| {
            let db = db.to_owned();
            tokio::spawn(async move {
                let mut wr = Writer::new(engine, &db, seed.wrapping_add(1), w, writers).await;
                wr.next = start_next;
                // Rows seeded before the daemon started: ids k * writers + w for k < start_next.
                for k in 1..start_next {
                    for t in 0..wr.live.len() {
                        wr.live[t].push(k * writers + w);
                    }
                }
                let start = Instant::now();
                let total = Duration::from_secs_f64(secs);
                let mut truncated = [false, false];
                while start.elapsed() < total {
                    let frac = start.elapsed().as_secs_f64() / secs;
                    if truncates && w == 0 && frac > 0.4 && !truncated[0] {
                        truncated[0] = true;
                        wr.truncate(0).await;
                    } else if truncates && w == 0 && frac > 0.65 && !truncated[1] {
                        truncated[1] = true;
                        wr.truncate(1).await;
                    } else {
                        wr.one_tx().await;
                    }
                    let pause = wr.rng.random_range(1..12);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                (w, wr.stats, wr.live)
            })
        })
        .collect()
}

/// Seeds `per_writer` rows per writer and table (so the initial snapshot has work to do).
async fn seed_rows(engine: Engine, db: &str, seed: u64, writers: i64, per_writer: i64) {
    for w in 0..writers {
        let mut wr = Writer::new(engine, db, seed.wrapping_add(7), w, writers).await;
        for t in 0..wr.tables.len() {
            // Every table gets the keys k * writers + w for k in 1..=per_writer.
            wr.next = 1;
            let mut left = per_writer;
            while left > 0 {
                let n = left.min(20);
                if let Err(e) = wr.insert(t, n as usize).await {
                    panic!("seeding {db}: {e}");
                }
                left -= n;
            }
        }
    }
}

/// Inserts plain rows with keys `lo..=hi` into both workload tables (every 20th with a 22 kB
/// `big` value).
async fn bulk_seed(db: &mut Db, engine: Engine, lo: i64, hi: i64) {
    let sql = match engine {
        Engine::Pg => format!(
            "INSERT INTO items SELECT g, g * 7, 'seed ' || g, round((g % 100000) * 1.37, 2), \
               timestamp '2020-01-01' + g * interval '1.000123 second', g % 2 = 0, \
               jsonb_build_object('n', g, 's', 'x' || g), NULL, \
               CASE WHEN g % 20 = 0 THEN repeat(md5(g::text), 700) ELSE 'small ' || g END \
             FROM generate_series({lo}, {hi}) g; \
             INSERT INTO ledger SELECT g, -g, 'bulk', (g % 1000) * 3.5, \
               timestamp '2021-06-01' + g * interval '17 minutes', g % 3 = 0, \
               jsonb_build_object('g', g) \
             FROM generate_series({lo}, {hi}) g"
        ),
        Engine::My => format!(
            "INSERT INTO items SELECT seq, seq * 7, CONCAT('seed ', seq), \
               ROUND((seq % 100000) * 1.37, 2), \
               TIMESTAMP('2020-01-01') + INTERVAL seq * 1000123 MICROSECOND, seq % 2 = 0, \
               JSON_OBJECT('n', seq, 's', CONCAT('x', seq)), NULL, \
               IF(seq % 20 = 0, REPEAT(MD5(seq), 700), CONCAT('small ', seq)) \
             FROM seq_{lo}_to_{hi}; \
             INSERT INTO ledger SELECT seq, -seq, 'bulk', (seq % 1000) * 3.5, \
               TIMESTAMP('2021-06-01') + INTERVAL seq * 17 MINUTE, seq % 3 = 0, \
               JSON_OBJECT('g', seq) \
             FROM seq_{lo}_to_{hi}"
        ),
    };
    db.must(&sql).await;
}

// ───────────────────────────── daemon configuration ─────────────────────────────

/// One sink of a test pipeline.
#[derive(Debug, Clone)]
struct SinkSpec {
    name: String,
    loc: Loc,
    /// Postgres sink `schema = …` key.
    schema_key: Option<String>,
    create_tables: bool,
}

fn source_toml(engine: Engine, db: &str) -> String {
    match engine {
        Engine::Pg => format!(
            "  [pipelines.source]\n  kind = \"postgres\"\n  url = \"{}\"\n  tables = [\"public.*\"]\n  heartbeat_secs = 2\n",
            pg_url(db)
        ),
        Engine::My => format!(
            "  [pipelines.source]\n  kind = \"mysql\"\n  url = \"{}\"\n  tables = [\"{db}.*\"]\n  server_id = {}\n  heartbeat_secs = 2\n  tinyint1_as_bool = true\n",
            mysql_url(db),
            server_id()
        ),
    }
}

fn config(pipeline: &str, source: Engine, source_db: &str, sinks: &[SinkSpec]) -> String {
    let mut s = format!(
        "[nats]\nurl = \"{NATS}\"\n\n[metrics]\nlisten = \"\"\n\n[[pipelines]]\nname = \"{pipeline}\"\n{}",
        source_toml(source, source_db)
    );
    for sink in sinks {
        let url = match sink.loc.engine {
            Engine::Pg => pg_url(&sink.loc.db),
            Engine::My => mysql_url(&sink.loc.db),
        };
        let kind = match sink.loc.engine {
            Engine::Pg => "postgres",
            Engine::My => "mysql",
        };
        s.push_str(&format!(
            "\n  [[pipelines.sinks]]\n  name = \"{}\"\n  kind = \"{kind}\"\n  url = \"{url}\"\n",
            sink.name
        ));
        if let Some(schema) = &sink.schema_key {
            s.push_str(&format!("  schema = \"{schema}\"\n"));
        }
        if sink.create_tables {
            s.push_str("  create_tables = true\n");
        }
    }
    s
}

async fn create_db(engine: Engine, name: &str) {
    match engine {
        Engine::Pg => pg_create_db(name).await,
        Engine::My => mysql_create_db(name).await,
    }
}

async fn drop_db(engine: Engine, name: &str) {
    match engine {
        Engine::Pg => pg_drop_db(name).await,
        Engine::My => mysql_drop_db(name).await,
    }
}

/// Removes a pipeline's stream, checkpoint and databases.
async fn cleanup(pipeline: &str, dbs: &[(Engine, String)]) {
    delete_stream(&format!("TIDEMARK_{}", pipeline.to_uppercase())).await;
    purge_state(pipeline).await;
    for (engine, db) in dbs {
        drop_db(*engine, db).await;
    }
}

/// Waits until every table of every sink equals the source; panics with a diff otherwise.
async fn converge(
    test: &str,
    seed: u64,
    src: &Loc,
    sinks: &[Loc],
    tables: &[Tbl],
    timeout: Duration,
    daemon: &Daemon,
) {
    let started = Instant::now();
    let mut source = Db::open(src.engine, &src.db).await;
    let mut targets = Vec::new();
    for s in sinks {
        targets.push(Db::open(s.engine, &s.db).await);
    }
    let mut last = String::new();
    loop {
        let mut all_equal = true;
        last.clear();
        for t in tables {
            let s_rows = dump(&mut source, src, t)
                .await
                .unwrap_or_else(|e| panic!("[{test}] seed {seed}: source dump: {e}"));
            for (loc, db) in sinks.iter().zip(targets.iter_mut()) {
                match dump(db, loc, t).await {
                    Ok(d_rows) if d_rows == s_rows => {}
                    Ok(d_rows) => {
                        all_equal = false;
                        last.push_str(&format!(
                            "sink {}: {}",
                            loc.label,
                            diff(t, &s_rows, &d_rows)
                        ));
                    }
                    Err(e) => {
                        all_equal = false;
                        last.push_str(&format!("sink {}: {e}\n", loc.label));
                    }
                }
            }
        }
        if all_equal {
            eprintln!(
                "[{test}] converged {:.1} s after the workload",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        if started.elapsed() > timeout {
            let logs = daemon.logs();
            let tail: Vec<&str> = logs.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "[{test}] seed {seed}: targets did not converge within {timeout:?}:\n{last}\n\
                 ---- last daemon log lines ----\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Lines of the daemon log at level `level` (`WARN`, `ERROR`).
fn log_lines(daemon: &Daemon, level: &str) -> Vec<String> {
    // The level is the line's second field (after the timestamp); a message may quote a
    // server's own "ERROR" (for example a retried `ERROR 55006` from Postgres).
    daemon
        .logs()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(level))
        .map(short)
        .collect()
}

/// Stops the daemon with SIGTERM: it must exit 0, and a SIGKILL/restart is no reason for an
/// ERROR line (those mean a halted sink, a definite source error …). Warnings are printed.
async fn finish(test: &str, seed: u64, daemon: &mut Daemon) {
    let code = daemon.terminate().await;
    let warns = log_lines(daemon, "WARN");
    eprintln!(
        "[{test}] {} warning lines; first: {:?}",
        warns.len(),
        warns.iter().take(3).collect::<Vec<_>>()
    );
    let errors = log_lines(daemon, "ERROR");
    assert!(
        errors.is_empty(),
        "[{test}] seed {seed}: the daemon logged errors:\n{}",
        errors.join("\n")
    );
    assert_eq!(
        code, 0,
        "[{test}] seed {seed}: daemon exit code after SIGTERM"
    );
}

// ───────────────────────────── random workload tests ─────────────────────────────

struct RandomRun {
    test: &'static str,
    src_db: String,
    source: Engine,
    sinks: Vec<SinkSpec>,
    writers: i64,
    secs: f64,
    /// Fractions of the run at which the daemon is SIGKILLed (and restarted).
    kills: Vec<f64>,
    truncates: bool,
}

async fn random_workload(run: RandomRun) {
    let seed = seed(run.test);
    let pipeline = unique("e2e");
    let src_db = run.src_db.clone();
    let mut dbs = vec![(run.source, src_db.clone())];
    for s in &run.sinks {
        if !dbs
            .iter()
            .any(|(e, d)| *e == s.loc.engine && *d == s.loc.db)
        {
            dbs.push((s.loc.engine, s.loc.db.clone()));
        }
    }
    let body = async {
        for (engine, db) in &dbs {
            create_db(*engine, db).await;
        }
        let tables = workload_tables();
        let src = Loc {
            engine: run.source,
            db: src_db.clone(),
            schema: None,
            label: "source".into(),
        };
        let mut sdb = Db::open(run.source, &src_db).await;
        for t in &tables {
            sdb.must(&t.ddl(run.source, &src.qualified(&t.name))).await;
        }
        if run.source == Engine::Pg {
            // Out of line and uncompressed: every big value is a TOAST pointer.
            sdb.must("ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL")
                .await;
        }
        for s in &run.sinks {
            if s.create_tables {
                continue;
            }
            let mut d = Db::open(s.loc.engine, &s.loc.db).await;
            if let (Engine::Pg, Some(schema)) = (s.loc.engine, &s.loc.schema) {
                d.must(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    quote(Engine::Pg, schema)
                ))
                .await;
            }
            for t in &tables {
                d.must(&t.ddl(s.loc.engine, &s.loc.qualified(&t.name)))
                    .await;
            }
        }
        // Keys k * writers + w: k ≤ 40 random rows, then plain bulk rows up to BULK, so the
        // snapshot takes long enough for an early SIGKILL to land in it.
        const RANDOM_SEEDED: i64 = 40;
        const SEEDED: i64 = 1500;
        seed_rows(run.source, &src_db, seed, run.writers, RANDOM_SEEDED).await;
        bulk_seed(
            &mut sdb,
            run.source,
            run.writers * (RANDOM_SEEDED + 1),
            run.writers * (SEEDED + 1) - 1,
        )
        .await;

        let mut daemon = Daemon::start(&config(&pipeline, run.source, &src_db, &run.sinks));
        let started = Instant::now();
        let handles = spawn_writers(
            run.source,
            &src_db,
            seed,
            run.writers,
            SEEDED + 1,
            run.secs,
            run.truncates,
        );
        for frac in &run.kills {
            let at = Duration::from_secs_f64(run.secs * frac);
            if let Some(wait) = at.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            daemon.kill9();
            eprintln!(
                "[{}] SIGKILL at {:.1} s",
                run.test,
                started.elapsed().as_secs_f64()
            );
            tokio::time::sleep(Duration::from_millis(400)).await;
            daemon.restart();
        }
        let mut total = Stats::default();
        for h in handles {
            let (w, st, _) = h.await.expect("writer task");
            eprintln!("[{}] writer {w}: {st:?}", run.test);
            total.txs += st.txs;
            total.errors += st.errors;
            total.inserts += st.inserts;
            total.updates += st.updates;
            total.toast_updates += st.toast_updates;
            total.deletes += st.deletes;
            total.rekeys += st.rekeys;
            total.truncates += st.truncates;
        }
        assert!(
            total.txs > 200 && total.rekeys > 10 && total.deletes > 10,
            "[{}] seed {seed}: the workload did too little: {total:?}",
            run.test
        );
        assert!(
            total.errors * 20 <= total.txs,
            "[{}] seed {seed}: too many workload errors: {total:?}",
            run.test
        );
        if run.truncates {
            assert_eq!(total.truncates, 2, "[{}] seed {seed}: truncates", run.test);
        }
        let sink_locs: Vec<Loc> = run.sinks.iter().map(|s| s.loc.clone()).collect();
        converge(
            run.test,
            seed,
            &src,
            &sink_locs,
            &tables,
            Duration::from_secs(120),
            &daemon,
        )
        .await;
        // Sanity: the comparison saw real data, including TOASTed values.
        let rows = dump(&mut sdb, &src, &tables[0]).await.unwrap_or_default();
        let toasted = rows
            .iter()
            .filter(|r| {
                r.last()
                    .cloned()
                    .flatten()
                    .and_then(|s| s.rsplit(':').next().and_then(|n| n.parse::<u64>().ok()))
                    .is_some_and(|n| n >= 20_000)
            })
            .count();
        eprintln!(
            "[{}] final: {} items rows ({toasted} with 20+ kB big values), {} elapsed",
            run.test,
            rows.len(),
            started.elapsed().as_secs_f64()
        );
        assert!(
            rows.len() > 20,
            "[{}] seed {seed}: too few rows left",
            run.test
        );
        finish(run.test, seed, &mut daemon).await;
    };
    guarded(Box::pin(body), cleanup(&pipeline, &dbs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_to_pg_random_workload_survives_two_kills() {
    let dst = unique("tm_e2e_dst");
    Box::pin(random_workload(RandomRun {
        test: "pg_to_pg",
        src_db: unique("tm_e2e_src"),
        source: Engine::Pg,
        sinks: vec![SinkSpec {
            name: "replica".into(),
            loc: Loc {
                engine: Engine::Pg,
                db: dst,
                schema: None,
                label: "postgres".into(),
            },
            schema_key: None,
            create_tables: false,
        }],
        writers: 3,
        secs: 22.0,
        kills: vec![0.035, 0.3, 0.65],
        truncates: true,
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_to_postgres_default_and_public_schema_survive_a_kill() {
    // Both sinks write to one Postgres database: one into the schema named after the MariaDB
    // database (the default), one into `public` (schema = "public").
    let dst = unique("tm_e2e_dst");
    let src_db = unique("tm_e2e_src");
    let sinks = vec![
        SinkSpec {
            name: "by_db".into(),
            loc: Loc {
                engine: Engine::Pg,
                db: dst.clone(),
                schema: Some(src_db.clone()),
                label: "postgres schema = source db".into(),
            },
            schema_key: None,
            create_tables: false,
        },
        SinkSpec {
            name: "public".into(),
            loc: Loc {
                engine: Engine::Pg,
                db: dst,
                schema: Some("public".into()),
                label: "postgres schema = public".into(),
            },
            schema_key: Some("public".into()),
            create_tables: false,
        },
    ];
    Box::pin(random_workload(RandomRun {
        test: "mariadb_to_postgres",
        src_db,
        source: Engine::My,
        sinks,
        writers: 2,
        secs: 10.0,
        kills: vec![0.08, 0.5],
        truncates: true,
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_mariadb_random_workload_survives_a_kill() {
    Box::pin(random_workload(RandomRun {
        test: "postgres_to_mariadb",
        src_db: unique("tm_e2e_src"),
        source: Engine::Pg,
        sinks: vec![SinkSpec {
            name: "maria".into(),
            loc: Loc {
                engine: Engine::My,
                db: unique("tm_e2e_dst"),
                schema: None,
                label: "mariadb".into(),
            },
            schema_key: None,
            create_tables: false,
        }],
        writers: 2,
        secs: 10.0,
        kills: vec![0.5],
        truncates: true,
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_to_mariadb_random_workload_survives_a_kill() {
    Box::pin(random_workload(RandomRun {
        test: "mariadb_to_mariadb",
        src_db: unique("tm_e2e_src"),
        source: Engine::My,
        sinks: vec![SinkSpec {
            name: "maria".into(),
            loc: Loc {
                engine: Engine::My,
                db: unique("tm_e2e_dst"),
                schema: None,
                label: "mariadb".into(),
            },
            schema_key: None,
            create_tables: false,
        }],
        writers: 2,
        secs: 10.0,
        kills: vec![0.5],
        truncates: true,
    }))
    .await;
}

// ───────────────────────────── transfers (atomicity) ─────────────────────────────

const ACCOUNTS: i64 = 40;
const OPENING: i64 = 1000;

fn accounts() -> Tbl {
    Tbl::new("accounts", &[("id", K::Id), ("balance", K::Int)])
}

/// What the target reader saw.
#[derive(Debug, Default)]
struct Observed {
    reads: u64,
    complete_reads: u64,
    failed_reads: u64,
    violations: Vec<String>,
}

/// Polls `count(*), sum(balance)` of the target until `stop`; every read that shows all
/// accounts must show the opening total, and once all accounts are there they stay.
async fn read_sums(loc: Loc, stop: Arc<AtomicBool>, seen_full: Arc<AtomicU64>) -> Observed {
    let mut db = Db::open(loc.engine, &loc.db).await;
    let table = loc.qualified("accounts");
    let sql = match loc.engine {
        Engine::Pg => {
            format!("SELECT count(*)::text, coalesce(sum(balance), 0)::text FROM {table}")
        }
        Engine::My => format!(
            "SELECT CAST(COUNT(*) AS CHAR), CAST(COALESCE(SUM(balance), 0) AS CHAR) FROM {table}"
        ),
    };
    let mut o = Observed::default();
    let total = ACCOUNTS * OPENING;
    let mut full = false;
    while !stop.load(Ordering::Relaxed) {
        match db.rows(&sql).await {
            Ok(rows) => {
                o.reads += 1;
                let row = rows.first().cloned().unwrap_or_default();
                let num = |i: usize| -> i64 {
                    row.get(i)
                        .cloned()
                        .flatten()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(-1)
                };
                let (count, sum) = (num(0), num(1));
                if count == ACCOUNTS {
                    full = true;
                    o.complete_reads += 1;
                    seen_full.fetch_add(1, Ordering::Relaxed);
                    if sum != total && o.violations.len() < 20 {
                        o.violations.push(format!(
                            "read {}: {count} accounts sum to {sum}, not {total}",
                            o.reads
                        ));
                    }
                } else if (full || count > ACCOUNTS) && o.violations.len() < 20 {
                    o.violations.push(format!(
                        "read {}: {count} accounts (sum {sum}) after all {ACCOUNTS} were present",
                        o.reads
                    ));
                }
            }
            Err(_) => o.failed_reads += 1,
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    o
}

/// 6000 updates in one transaction over the 40 accounts: even ones gain 150, odd ones lose 150.
const BIG_TX_PG: &str = "BEGIN; DO $$ BEGIN FOR i IN 1..6000 LOOP \
    UPDATE accounts SET balance = balance + CASE WHEN id % 2 = 0 THEN 1 ELSE -1 END \
    WHERE id = 1 + (i - 1) % 40; END LOOP; END $$; COMMIT";
/// The same for MariaDB (run between START TRANSACTION and COMMIT).
const BIG_TX_MY: &str = "BEGIN NOT ATOMIC DECLARE i INT DEFAULT 1; WHILE i <= 6000 DO \
    UPDATE accounts SET balance = balance + IF(id % 2 = 0, 1, -1) \
    WHERE id = 1 + (i - 1) % 40; SET i = i + 1; END WHILE; END";

/// Two writers move money between random accounts (1–3 transfers per transaction, net
/// deltas applied in key order so writers cannot deadlock) for `secs`.
fn spawn_transfers(
    engine: Engine,
    db: &str,
    seed: u64,
    secs: f64,
) -> Vec<tokio::task::JoinHandle<Stats>> {
    (0..2u64)
        .map(|w| {
            let db = db.to_owned();
            tokio::spawn(async move {
                let mut c = Db::open(engine, &db).await;
                let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(w));
                let mut st = Stats::default();
                let start = Instant::now();
                let sql = format!(
                    "UPDATE accounts SET balance = balance + {} WHERE id = {}",
                    ph(engine, 1, K::Int),
                    ph(engine, 2, K::Id)
                );
                let mut big_done = 0;
                while start.elapsed().as_secs_f64() < secs {
                    let frac = start.elapsed().as_secs_f64() / secs;
                    if w == 0 && big_done < 2 && frac > [0.25, 0.7][big_done] {
                        // One transaction of 6000 row changes (more than a sink batch and a
                        // fetch), net zero, locking rows in key order like the others.
                        big_done += 1;
                        let res = match engine {
                            Engine::Pg => c.batch(BIG_TX_PG).await,
                            Engine::My => {
                                let mut res = c.batch("START TRANSACTION").await;
                                if res.is_ok() {
                                    res = c.batch(BIG_TX_MY).await;
                                }
                                if res.is_ok() {
                                    res = c.batch("COMMIT").await;
                                }
                                res
                            }
                        };
                        if let Err(e) = res {
                            let _ = c.batch("ROLLBACK").await;
                            panic!("big transfer transaction: {e}");
                        }
                        st.txs += 1;
                        st.updates += 6000;
                        continue;
                    }
                    let mut deltas: BTreeMap<i64, i64> = BTreeMap::new();
                    for _ in 0..rng.random_range(1..=3) {
                        let a = rng.random_range(1..=ACCOUNTS);
                        let b = rng.random_range(1..=ACCOUNTS);
                        let amount = rng.random_range(1..=300);
                        *deltas.entry(a).or_default() -= amount;
                        *deltas.entry(b).or_default() += amount;
                    }
                    let rollback = rng.random_ratio(1, 20);
                    let mut res = c.batch("BEGIN").await;
                    for (id, d) in &deltas {
                        if res.is_err() {
                            break;
                        }
                        if *d != 0 {
                            res = c
                                .exec(&sql, &[Some(d.to_string()), Some(id.to_string())])
                                .await
                                .map(|_| ());
                        }
                    }
                    if res.is_ok() {
                        res = c.batch(if rollback { "ROLLBACK" } else { "COMMIT" }).await;
                        if rollback {
                            st.rolled_back += 1;
                        }
                    }
                    if let Err(e) = res {
                        let _ = c.batch("ROLLBACK").await;
                        st.errors += 1;
                        st.last_error = Some(e);
                    }
                    st.txs += 1;
                    st.updates += deltas.len() as u64;
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..4))).await;
                }
                st
            })
        })
        .collect()
}

async fn transfers(test: &'static str, source: Engine, sink: Engine, create_tables: bool) {
    let seed = seed(test);
    let pipeline = unique("e2e_tx");
    let (src_db, dst_db) = (unique("tm_e2e_src"), unique("tm_e2e_dst"));
    let dbs = vec![(source, src_db.clone()), (sink, dst_db.clone())];
    let body = async {
        create_db(source, &src_db).await;
        create_db(sink, &dst_db).await;
        let t = accounts();
        let src = Loc {
            engine: source,
            db: src_db.clone(),
            schema: None,
            label: "source".into(),
        };
        // A MariaDB source's database becomes the Postgres schema: use `public` explicitly.
        let dst = Loc {
            engine: sink,
            db: dst_db.clone(),
            schema: Some("public".into()),
            label: format!("{sink:?} target"),
        };
        let mut s = Db::open(source, &src_db).await;
        s.must(&t.ddl(source, &src.qualified("accounts"))).await;
        s.must(&format!(
            "INSERT INTO accounts (id, balance) VALUES {}",
            (1..=ACCOUNTS)
                .map(|i| format!("({i}, {OPENING})"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await;
        if !create_tables {
            let mut d = Db::open(sink, &dst_db).await;
            d.must(&t.ddl(sink, &dst.qualified("accounts"))).await;
        }
        let spec = SinkSpec {
            name: "bank".into(),
            loc: dst.clone(),
            schema_key: (sink == Engine::Pg).then(|| "public".to_owned()),
            create_tables,
        };
        let mut daemon = Daemon::start(&config(&pipeline, source, &src_db, &[spec]));
        let stop = Arc::new(AtomicBool::new(false));
        let seen_full = Arc::new(AtomicU64::new(0));
        let reader = tokio::spawn(read_sums(dst.clone(), stop.clone(), seen_full.clone()));
        // Let the snapshot land first, so the transfers race the streaming apply.
        let landed = wait_until(Duration::from_secs(60), || {
            let seen = seen_full.clone();
            async move { seen.load(Ordering::Relaxed) > 0 }
        })
        .await;
        assert!(
            landed,
            "[{test}] seed {seed}: the snapshot never reached the target"
        );
        let secs = 12.0;
        let started = Instant::now();
        let writers = spawn_transfers(source, &src_db, seed, secs);
        tokio::time::sleep(Duration::from_secs_f64(secs * 0.45)).await;
        daemon.kill9();
        eprintln!(
            "[{test}] SIGKILL at {:.1} s",
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        daemon.restart();
        let mut txs = 0;
        for w in writers {
            let st = w.await.expect("transfer writer");
            eprintln!("[{test}] writer: {st:?}");
            assert!(
                st.errors * 20 <= st.txs.max(1),
                "[{test}] seed {seed}: {st:?}"
            );
            txs += st.txs;
        }
        assert!(txs > 200, "[{test}] seed {seed}: only {txs} transfers");
        let sum: Rows = s
            .rows(match source {
                Engine::Pg => "SELECT CAST(SUM(balance) AS text) FROM accounts",
                Engine::My => "SELECT CAST(SUM(balance) AS CHAR) FROM accounts",
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            sum,
            vec![vec![Some((ACCOUNTS * OPENING).to_string())]],
            "[{test}] the source itself lost money"
        );
        converge(
            test,
            seed,
            &src,
            std::slice::from_ref(&dst),
            std::slice::from_ref(&t),
            Duration::from_secs(90),
            &daemon,
        )
        .await;
        // A little more reading of the settled target, then stop the reader.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let o = reader.await.expect("reader");
        eprintln!(
            "[{test}] {txs} transfers; reader: {} reads, {} with every account, {} failed",
            o.reads, o.complete_reads, o.failed_reads
        );
        assert!(
            o.violations.is_empty(),
            "[{test}] seed {seed}: a reader of the target saw a partial source transaction:\n{}",
            o.violations.join("\n")
        );
        assert!(
            o.complete_reads > 200,
            "[{test}] seed {seed}: the reader saw too little to mean anything: {o:?}"
        );
        finish(test, seed, &mut daemon).await;
    };
    guarded(Box::pin(body), cleanup(&pipeline, &dbs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_to_pg_transfers_keep_the_sum_for_a_concurrent_reader() {
    Box::pin(transfers("pg_transfers", Engine::Pg, Engine::Pg, false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_target_transfers_keep_the_sum_for_a_concurrent_reader() {
    // MariaDB → MariaDB, with the target table created by the sink (create_tables = true).
    Box::pin(transfers("mariadb_transfers", Engine::My, Engine::My, true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_engine_transfers_keep_the_sum_for_a_concurrent_reader() {
    // Postgres → MariaDB (pre-created target table) and MariaDB → Postgres (`schema = public`).
    Box::pin(transfers(
        "pg_to_mariadb_transfers",
        Engine::Pg,
        Engine::My,
        false,
    ))
    .await;
    Box::pin(transfers(
        "mariadb_to_pg_transfers",
        Engine::My,
        Engine::Pg,
        false,
    ))
    .await;
}

// ───────────────────────────── hostile identifiers ─────────────────────────────

const HOSTILE_TABLE: &str = "x\"; drop table y; --";

fn hostile() -> Tbl {
    Tbl::new(
        HOSTILE_TABLE,
        &[
            ("id", K::Id),
            ("my col", K::Text),
            ("back`tick", K::Text),
            ("dot.ted", K::Text),
            ("select", K::Text),
            ("ünïcødé_名前", K::Text),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identifiers_replicate_through_both_sinks() {
    let test = "hostile_identifiers";
    let seed = seed(test);
    let pipeline = unique("e2e_id");
    let (src_db, pg_dst, my_dst) = (
        unique("tm_e2e_src"),
        unique("tm_e2e_dst"),
        unique("tm_e2e_dst"),
    );
    let dbs = vec![
        (Engine::Pg, src_db.clone()),
        (Engine::Pg, pg_dst.clone()),
        (Engine::My, my_dst.clone()),
    ];
    let body = async {
        for (e, d) in &dbs {
            create_db(*e, d).await;
        }
        let t = hostile();
        let y = Tbl::new("y", &[("id", K::Id), ("v", K::Text)]);
        let src = Loc {
            engine: Engine::Pg,
            db: src_db.clone(),
            schema: None,
            label: "source".into(),
        };
        let pg = Loc {
            engine: Engine::Pg,
            db: pg_dst.clone(),
            schema: None,
            label: "postgres".into(),
        };
        let my = Loc {
            engine: Engine::My,
            db: my_dst.clone(),
            schema: None,
            label: "mariadb".into(),
        };
        let mut s = Db::open(Engine::Pg, &src_db).await;
        s.must(&t.ddl(Engine::Pg, &src.qualified(HOSTILE_TABLE)))
            .await;
        s.must(&y.ddl(Engine::Pg, &src.qualified("y"))).await;
        s.must("INSERT INTO y VALUES (1, 'source row')").await;
        // `y` exists in both targets with a row of its own: nothing may drop it.
        let mut dpg = Db::open(Engine::Pg, &pg_dst).await;
        dpg.must(&y.ddl(Engine::Pg, &pg.qualified("y"))).await;
        dpg.must("INSERT INTO y VALUES (999, 'target only')").await;
        let mut dmy = Db::open(Engine::My, &my_dst).await;
        dmy.must(&y.ddl(Engine::My, &my.qualified("y"))).await;
        dmy.must("INSERT INTO y VALUES (999, 'target only')").await;

        let mut rng = StdRng::seed_from_u64(seed);
        let cols: Vec<String> = t.cols.iter().map(|(c, _)| quote(Engine::Pg, c)).collect();
        let insert = |rng: &mut StdRng, id: i64| -> (String, Vec<Option<String>>) {
            let mut params = vec![Some(id.to_string())];
            for (_, k) in t.cols.iter().skip(1) {
                params.push(gen(rng, *k));
            }
            let phs: Vec<String> = t
                .cols
                .iter()
                .enumerate()
                .map(|(i, (_, k))| ph(Engine::Pg, i + 1, *k))
                .collect();
            (
                format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    src.qualified(HOSTILE_TABLE),
                    cols.join(", "),
                    phs.join(", ")
                ),
                params,
            )
        };
        for id in 1..=20 {
            let (sql, p) = insert(&mut rng, id);
            s.exec(&sql, &p).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let sinks = [
            SinkSpec {
                name: "pg".into(),
                loc: pg.clone(),
                schema_key: None,
                create_tables: true,
            },
            SinkSpec {
                name: "maria".into(),
                loc: my.clone(),
                schema_key: None,
                create_tables: true,
            },
        ];
        let mut daemon = Daemon::start(&config(&pipeline, Engine::Pg, &src_db, &sinks));
        // Let the snapshot arrive (tables created by both sinks), then stream changes.
        let snap = wait_until(Duration::from_secs(60), || async {
            let mut a = Db::open(Engine::Pg, &pg_dst).await;
            let mut b = Db::open(Engine::My, &my_dst).await;
            dump(&mut a, &pg, &t).await.map(|r| r.len()).ok() == Some(20)
                && dump(&mut b, &my, &t).await.map(|r| r.len()).ok() == Some(20)
        })
        .await;
        assert!(snap, "[{test}] the snapshot did not reach both targets");
        // Streamed changes to every hostile column, deletes and a key change.
        for id in 21..=40 {
            let (sql, p) = insert(&mut rng, id);
            s.exec(&sql, &p).await.unwrap_or_else(|e| panic!("{e}"));
        }
        for (i, (c, k)) in t.cols.iter().enumerate().skip(1) {
            let sql = format!(
                "UPDATE {} SET {} = $1 WHERE id = $2::text::bigint",
                src.qualified(HOSTILE_TABLE),
                quote(Engine::Pg, c)
            );
            s.exec(&sql, &[gen(&mut rng, *k), Some((i as i64 * 3).to_string())])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        s.must(&format!(
            "DELETE FROM {} WHERE id IN (2, 22); UPDATE {} SET id = 100 WHERE id = 5; \
             INSERT INTO y VALUES (2, 'streamed')",
            src.qualified(HOSTILE_TABLE),
            src.qualified(HOSTILE_TABLE)
        ))
        .await;
        converge(
            test,
            seed,
            &src,
            &[pg.clone(), my.clone()],
            std::slice::from_ref(&t),
            Duration::from_secs(60),
            &daemon,
        )
        .await;
        // `y` survived everywhere: the source's rows plus the target's own row.
        let want: Rows = vec![
            vec![Some("1".into()), Some("source row".into())],
            vec![Some("2".into()), Some("streamed".into())],
            vec![Some("999".into()), Some("target only".into())],
        ];
        let ok = wait_until(Duration::from_secs(30), || async {
            let mut a = Db::open(Engine::Pg, &pg_dst).await;
            let mut b = Db::open(Engine::My, &my_dst).await;
            dump(&mut a, &pg, &y).await.ok() == Some(want.clone())
                && dump(&mut b, &my, &y).await.ok() == Some(want.clone())
        })
        .await;
        assert!(
            ok,
            "[{test}] table y in the targets: postgres {:?}, mariadb {:?}",
            dump(&mut dpg, &pg, &y).await,
            dump(&mut dmy, &my, &y).await
        );
        assert_eq!(
            dump(&mut s, &src, &y).await.map(|r| r.len()),
            Ok(2),
            "[{test}] source y"
        );
        finish(test, seed, &mut daemon).await;
    };
    guarded(Box::pin(body), cleanup(&pipeline, &dbs)).await;
}
