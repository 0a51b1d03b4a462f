//! Database faults under a running pipeline, through the real `tidemark run` binary.
//!
//! Every test runs a whole pipeline (source → shared NATS → sink) while a writer keeps changing
//! the source, injects one fault into the database on one side, lets the pipeline recover and
//! then asserts:
//!
//! * **nothing lost**: every sink table equals its source table row by row;
//! * **nothing applied twice**: the target table carries an audit trigger that records every
//!   row version `(id, v)` the sink writes; each source version is written at most once
//!   (`v` only ever grows, ids are never reused, so a second write of one version is a replay
//!   the position guard should have skipped);
//! * **nothing published twice**: the stream holds each row version at most once.
//!
//! Restart and crash faults need a server of their own: the faulted database is a private
//! instance ([`private_db`](crate::common::private_db)); the other side uses the shared servers.
//! Partitions put the fault [`proxy`](crate::common::proxy) between the daemon and the database
//! (blackhole: connections stay open and every byte is dropped, so only the daemon's own
//! timeouts can notice; blackholed connections stay dead, i.e. half-open, after the partition
//! heals).
//!
//! Cases: Postgres source restarted / crashed (the slot's confirmed position and the KV
//! checkpoint are sampled throughout), MariaDB source restarted / crashed, Postgres and MariaDB
//! sinks restarted and crashed (`/readyz` must name the sink while it is down), partitions on
//! each side for both engines, and a Postgres slot dropped or invalidated under the daemon (a
//! definite error that says what to run, reported by `/readyz` and `tidemark_errors_total`).

use crate::common::private_db::{free_port, PrivateMaria, PrivatePg};
use crate::common::proxy::Proxy;
use crate::common::*;
use futures_util::FutureExt as _;
use mysql_async::prelude::Queryable as _;
use rand::{Rng as _, SeedableRng as _};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

// ───────────────────────────── endpoints and connections ─────────────────────────────

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Pg,
    My,
}

/// One database as the test and the daemon see it.
#[derive(Debug, Clone)]
struct Ep {
    engine: Engine,
    db: String,
    /// Port of a private instance; `None`: the shared server.
    private: Option<u16>,
    /// Port the daemon uses instead (a proxy in front of the server).
    via: Option<u16>,
}

/// `host:port` of a URL such as `postgres://user@127.0.0.1:5432`.
fn authority(url: &str) -> (usize, usize) {
    let start = url
        .find('@')
        .map(|i| i + 1)
        .unwrap_or_else(|| url.find("//").unwrap() + 2);
    let end = url[start..]
        .find('/')
        .map(|i| start + i)
        .unwrap_or(url.len());
    (start, end)
}

/// The shared server's address, for a proxy in front of it.
fn shared_addr(engine: Engine) -> SocketAddr {
    let url = match engine {
        Engine::Pg => PG.get(),
        Engine::My => MYSQL.get(),
    };
    let (s, e) = authority(url);
    url[s..e]
        .replace("localhost", "127.0.0.1")
        .parse()
        .unwrap_or_else(|err| panic!("address of {url}: {err}"))
}

fn with_port(url: &str, port: u16) -> String {
    let (s, e) = authority(url);
    format!("{}127.0.0.1:{port}{}", &url[..s], &url[e..])
}

impl Ep {
    fn url_direct(&self) -> String {
        match (self.engine, self.private) {
            (Engine::Pg, Some(p)) => format!("postgres://postgres@127.0.0.1:{p}/{}", self.db),
            (Engine::My, Some(p)) => {
                format!("mysql://tidemark:tidemark@127.0.0.1:{p}/{}", self.db)
            }
            (Engine::Pg, None) => pg_url(&self.db),
            (Engine::My, None) => mysql_url(&self.db),
        }
    }

    /// The URL written into the daemon's configuration.
    fn url_daemon(&self) -> String {
        match self.via {
            Some(p) => with_port(&self.url_direct(), p),
            None => self.url_direct(),
        }
    }

    async fn open(&self) -> Result<Conn, String> {
        let url = self.url_direct();
        match self.engine {
            Engine::Pg => {
                let (c, conn) = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio_postgres::connect(&url, tokio_postgres::NoTls),
                )
                .await
                .map_err(|_| "connect timeout".to_owned())?
                .map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(Conn::Pg(c))
            }
            Engine::My => {
                let opts = mysql_async::Opts::from_url(&url).map_err(|e| e.to_string())?;
                let c = tokio::time::timeout(Duration::from_secs(5), mysql_async::Conn::new(opts))
                    .await
                    .map_err(|_| "connect timeout".to_owned())?
                    .map_err(|e| e.to_string())?;
                Ok(Conn::My(c))
            }
        }
    }

    async fn must_open(&self) -> Conn {
        self.open()
            .await
            .unwrap_or_else(|e| panic!("connect to {:?} {}: {e}", self.engine, self.db))
    }

    async fn create_db(&self) {
        let admin = Ep {
            db: match self.engine {
                Engine::Pg => "postgres".into(),
                Engine::My => String::new(),
            },
            ..self.clone()
        };
        let q = match self.engine {
            Engine::Pg => format!("CREATE DATABASE \"{}\"", self.db),
            Engine::My => format!("CREATE DATABASE `{}`", self.db),
        };
        admin.must_open().await.must(&q).await;
    }

    /// Drops a database on a shared server (private ones vanish with their instance).
    async fn drop_shared(&self) {
        if self.private.is_none() {
            match self.engine {
                Engine::Pg => pg_drop_db(&self.db).await,
                Engine::My => mysql_drop_db(&self.db).await,
            }
        }
    }
}

/// A SQL connection; every value comes back as text.
enum Conn {
    Pg(tokio_postgres::Client),
    My(mysql_async::Conn),
}

impl Conn {
    async fn exec(&mut self, sql: &str) -> Result<(), String> {
        let fut = async {
            match self {
                Conn::Pg(c) => c.batch_execute(sql).await.map_err(|e| format!("{e:?}")),
                Conn::My(c) => c.query_drop(sql).await.map_err(|e| e.to_string()),
            }
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| format!("timeout: {sql}"))?
    }

    async fn must(&mut self, sql: &str) {
        if let Err(e) = self.exec(sql).await {
            panic!("{sql}: {e}");
        }
    }

    async fn rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        match self {
            Conn::Pg(c) => Ok(c
                .simple_query(sql)
                .await
                .map_err(|e| format!("{sql}: {e:?}"))?
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                    }
                    _ => None,
                })
                .collect()),
            Conn::My(c) => {
                let rows: Vec<mysql_async::Row> =
                    c.query(sql).await.map_err(|e| format!("{sql}: {e}"))?;
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

// ───────────────────────────── tables ─────────────────────────────

const TABLE_DDL: &str =
    "CREATE TABLE items (id BIGINT PRIMARY KEY, v BIGINT NOT NULL, note VARCHAR(100))";

async fn create_source_table(ep: &Ep) {
    ep.must_open().await.must(TABLE_DDL).await;
}

/// The target table plus `tm_audit`, filled by triggers with every row version written.
async fn create_target_table(ep: &Ep) {
    let mut c = ep.must_open().await;
    c.must(TABLE_DDL).await;
    c.must("CREATE TABLE tm_audit (id BIGINT NOT NULL, v BIGINT NOT NULL)")
        .await;
    match ep.engine {
        Engine::Pg => {
            c.must(
                "CREATE FUNCTION tm_audit_f() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN INSERT INTO tm_audit VALUES (NEW.id, NEW.v); RETURN NEW; END $$; \
                 CREATE TRIGGER tm_audit_t AFTER INSERT OR UPDATE ON items \
                 FOR EACH ROW EXECUTE FUNCTION tm_audit_f()",
            )
            .await
        }
        Engine::My => {
            c.must(
                "CREATE TRIGGER tm_audit_i AFTER INSERT ON items FOR EACH ROW \
                 INSERT INTO tm_audit VALUES (NEW.id, NEW.v)",
            )
            .await;
            c.must(
                "CREATE TRIGGER tm_audit_u AFTER UPDATE ON items FOR EACH ROW \
                 INSERT INTO tm_audit VALUES (NEW.id, NEW.v)",
            )
            .await;
        }
    }
}

type Rows = Vec<Vec<Option<String>>>;

/// `CAST(<expr> AS <text type>)` for the engine.
fn text(engine: Engine, expr: &str) -> String {
    match engine {
        Engine::Pg => format!("CAST({expr} AS text)"),
        Engine::My => format!("CAST({expr} AS CHAR)"),
    }
}

async fn dump(ep: &Ep) -> Result<Rows, String> {
    let mut c = ep.open().await?;
    let e = ep.engine;
    c.rows(&format!(
        "SELECT {}, {}, note FROM items ORDER BY items.id",
        text(e, "id"),
        text(e, "v")
    ))
    .await
}

// ───────────────────────────── the writer ─────────────────────────────

#[derive(Debug, Default)]
struct WriterStats {
    ok: u64,
    failed: u64,
    reconnects: u64,
}

/// Inserts (fresh ids, `v = 0`), updates (`v = v + 1`), deletes and small multi-row
/// transactions against the source until `stop`; reconnects through any outage.
fn spawn_writer(ep: Ep, seed: u64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<WriterStats> {
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut st = WriterStats::default();
        let mut next_id: i64 = 1;
        let mut live: Vec<i64> = Vec::new();
        let mut conn: Option<Conn> = None;
        while !stop.load(Ordering::Relaxed) {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match ep.open().await {
                    Ok(c) => {
                        st.reconnects += 1;
                        conn.insert(c)
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            let roll = rng.random_range(0..100);
            let sql = if roll < 45 || live.len() < 5 {
                let id = next_id;
                next_id += 1;
                live.push(id);
                format!("INSERT INTO items (id, v, note) VALUES ({id}, 0, 'n{id}')")
            } else if roll < 85 {
                let id = live[rng.random_range(0..live.len())];
                format!(
                    "UPDATE items SET v = v + 1, note = 'u{}' WHERE id = {id}",
                    rng.random::<u16>()
                )
            } else if roll < 92 {
                let id = live.swap_remove(rng.random_range(0..live.len()));
                format!("DELETE FROM items WHERE id = {id}")
            } else {
                let (a, b) = (next_id, next_id + 1);
                next_id += 2;
                live.extend([a, b]);
                let u = live[rng.random_range(0..live.len() - 2)];
                format!(
                    "BEGIN; INSERT INTO items (id, v, note) VALUES ({a}, 0, 't'), ({b}, 0, 't'); \
                     UPDATE items SET v = v + 1 WHERE id = {u}; COMMIT"
                )
            };
            match c.exec(&sql).await {
                Ok(()) => st.ok += 1,
                Err(_) => {
                    st.failed += 1;
                    conn = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(2..8))).await;
        }
        st
    })
}

// ───────────────────────────── HTTP ─────────────────────────────

/// `GET path` on 127.0.0.1:port; `(status, body)` or None.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        let code = buf.split_whitespace().nth(1)?.parse().ok()?;
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

/// Sum of every sample of `family` whose labels contain all `labels` fragments.
fn metric_sum(body: &str, family: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(family))
        .filter(|l| labels.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn ready(port: u16) -> bool {
    http_get(port, "/readyz").await.map(|r| r.0) == Some(200)
}

// ───────────────────────────── the pipeline ─────────────────────────────

fn daemon_config(pipeline: &str, metrics: u16, src: &Ep, sink: &Ep) -> String {
    let source = match src.engine {
        Engine::Pg => format!(
            "  kind = \"postgres\"\n  url = \"{}\"\n  tables = [\"public.*\"]\n",
            src.url_daemon()
        ),
        Engine::My => format!(
            "  kind = \"mysql\"\n  url = \"{}\"\n  tables = [\"{}.*\"]\n  server_id = {}\n",
            src.url_daemon(),
            src.db,
            1000 + rand::random::<u32>() % 1_000_000_000
        ),
    };
    let (kind, schema) = match sink.engine {
        Engine::Pg => ("postgres", "  schema = \"public\"\n"),
        Engine::My => ("mysql", ""),
    };
    format!(
        "[nats]\nurl = \"{NATS}\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n\
         [[pipelines]]\nname = \"{pipeline}\"\n  [pipelines.source]\n{source}  heartbeat_secs = 1\n\
         \n  [[pipelines.sinks]]\n  name = \"target\"\n  kind = \"{kind}\"\n  url = \"{}\"\n  timeout_secs = 5\n{schema}",
        sink.url_daemon()
    )
}

/// A running test pipeline.
struct Run {
    test: &'static str,
    pipeline: String,
    src: Ep,
    sink: Ep,
    metrics: u16,
    daemon: Daemon,
}

impl Run {
    async fn start(test: &'static str, src: Ep, sink: Ep) -> Run {
        let pipeline = unique("fdb");
        src.create_db().await;
        sink.create_db().await;
        create_source_table(&src).await;
        create_target_table(&sink).await;
        let metrics = free_port();
        let daemon = Daemon::start(&daemon_config(&pipeline, metrics, &src, &sink));
        let run = Run {
            test,
            pipeline,
            src,
            sink,
            metrics,
            daemon,
        };
        run.wait_ready(Duration::from_secs(60), "at start").await;
        run
    }

    fn stream(&self) -> String {
        format!("TIDEMARK_{}", self.pipeline.to_uppercase())
    }

    async fn wait_ready(&self, timeout: Duration, when: &str) {
        let ok = wait_until(timeout, || ready(self.metrics)).await;
        assert!(
            ok,
            "[{}] /readyz not 200 {when} within {timeout:?}: {:?}\n{}",
            self.test,
            http_get(self.metrics, "/readyz").await,
            self.log_tail(60)
        );
    }

    /// Waits until `/readyz` is 503 and names `component`; returns the body.
    async fn wait_not_ready(&self, component: &str, timeout: Duration) -> String {
        let body = Arc::new(Mutex::new(String::new()));
        let ok = wait_until(timeout, || {
            let body = body.clone();
            async move {
                match http_get(self.metrics, "/readyz").await {
                    Some((503, b)) if b.contains(component) => {
                        *body.lock().unwrap() = b;
                        true
                    }
                    _ => false,
                }
            }
        })
        .await;
        assert!(
            ok,
            "[{}] /readyz never reported {component} within {timeout:?}: {:?}\n{}",
            self.test,
            http_get(self.metrics, "/readyz").await,
            self.log_tail(60)
        );
        let b = body.lock().unwrap().clone();
        b
    }

    fn log_tail(&self, n: usize) -> String {
        let logs = self.daemon.logs();
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    async fn metrics_text(&self) -> String {
        http_get(self.metrics, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default()
    }

    /// Target equals source, within `timeout`.
    async fn converge(&self, timeout: Duration) {
        let started = Instant::now();
        let mut last;
        loop {
            match (dump(&self.src).await, dump(&self.sink).await) {
                (Ok(s), Ok(t)) if s == t => {
                    eprintln!(
                        "[{}] converged: {} rows, {:.1} s after the writer stopped",
                        self.test,
                        s.len(),
                        started.elapsed().as_secs_f64()
                    );
                    return;
                }
                (Ok(s), Ok(t)) => last = describe_diff(&s, &t),
                (a, b) => last = format!("source: {:?}, target: {:?}", a.err(), b.err()),
            }
            if started.elapsed() > timeout {
                panic!(
                    "[{}] target never equalled the source within {timeout:?}: {last}\n{}",
                    self.test,
                    self.log_tail(80)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// No row version was written to the target twice.
    async fn assert_applied_once(&self) {
        let mut c = self.sink.must_open().await;
        let dup = c
            .rows(&format!(
                "SELECT {}, {}, {} FROM tm_audit GROUP BY id, v HAVING COUNT(*) > 1 \
                 ORDER BY id LIMIT 20",
                text(self.sink.engine, "id"),
                text(self.sink.engine, "v"),
                text(self.sink.engine, "COUNT(*)")
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let total = c
            .rows(&format!(
                "SELECT {} FROM tm_audit",
                text(self.sink.engine, "COUNT(*)")
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            dup.is_empty(),
            "[{}] row versions applied twice to the target (id, v, times): {dup:?}\n{}",
            self.test,
            self.log_tail(60)
        );
        eprintln!(
            "[{}] {:?} row versions written, none twice",
            self.test, total
        );
    }

    /// No row version was published twice (the source's skip of re-sent transactions and the
    /// JetStream de-duplication both held).
    async fn assert_published_once(&self) {
        let info = js()
            .await
            .get_stream(self.stream())
            .await
            .expect("stream")
            .info()
            .await
            .expect("stream info")
            .state
            .messages;
        let envs = read_envelopes(&self.stream(), info as usize, Duration::from_secs(30)).await;
        assert_eq!(
            envs.len() as u64,
            info,
            "[{}] could not read the whole stream",
            self.test
        );
        let mut seen: HashMap<(i64, i64), u32> = HashMap::new();
        let mut ids: HashMap<String, u32> = HashMap::new();
        for e in &envs {
            *ids.entry(e["id"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
            if let Some(after) = e.get("after").filter(|a| a.is_object()) {
                let (Some(id), Some(v)) = (after["id"].as_i64(), after["v"].as_i64()) else {
                    continue;
                };
                *seen.entry((id, v)).or_default() += 1;
            }
        }
        let dup: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(10).collect();
        let dup_ids: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).take(10).collect();
        assert!(
            dup.is_empty() && dup_ids.is_empty(),
            "[{}] published twice: versions {dup:?}, ids {dup_ids:?}",
            self.test
        );
        eprintln!(
            "[{}] {} events in the stream, none twice",
            self.test,
            envs.len()
        );
    }

    /// Stops the daemon (SIGTERM → exit 0) and removes the stream, checkpoint, shared databases.
    /// Unless `errors_expected`, the daemon must not have logged an ERROR line: a server
    /// restart or a partition is transient (WARN and retry), never "needs attention".
    async fn finish(mut self, errors_expected: bool) {
        if !errors_expected {
            let logs = self.daemon.logs();
            let errors: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains(" ERROR "))
                .take(5)
                .collect();
            assert!(
                errors.is_empty(),
                "[{}] a transient fault was logged as ERROR (definite):\n{}",
                self.test,
                errors.join("\n")
            );
        }
        let code = self.daemon.terminate().await;
        assert_eq!(
            code,
            0,
            "[{}] exit code after SIGTERM\n{}",
            self.test,
            self.log_tail(40)
        );
        self.cleanup().await;
    }

    async fn cleanup(&self) {
        delete_stream(&self.stream()).await;
        purge_state(&self.pipeline).await;
        self.src.drop_shared().await;
        self.sink.drop_shared().await;
    }
}

fn describe_diff(s: &Rows, t: &Rows) -> String {
    let sm: BTreeMap<_, _> = s.iter().map(|r| (r[0].clone(), r)).collect();
    let tm: BTreeMap<_, _> = t.iter().map(|r| (r[0].clone(), r)).collect();
    let missing: Vec<_> = sm.keys().filter(|k| !tm.contains_key(*k)).take(5).collect();
    let extra: Vec<_> = tm.keys().filter(|k| !sm.contains_key(*k)).take(5).collect();
    let differ: Vec<_> = sm
        .iter()
        .filter(|(k, r)| tm.get(*k).is_some_and(|t| t != *r))
        .map(|(k, _)| k)
        .take(5)
        .collect();
    let first = s.iter().zip(t.iter()).find(|(a, b)| a != b);
    format!(
        "{} source rows, {} target rows; missing {missing:?}, extra {extra:?}, differ {differ:?}, \
         first difference in order {first:?}",
        s.len(),
        t.len()
    )
}

/// Runs `body`; on a panic the daemon log is printed by `Daemon`'s Drop, and the shared
/// databases are removed either way by the body's own `finish` or here.
async fn guarded(
    cleanup_eps: Vec<Ep>,
    pipeline_hint: Arc<Mutex<Option<String>>>,
    body: impl std::future::Future<Output = ()>,
) {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    if outcome.is_err() {
        let pipeline = pipeline_hint.lock().unwrap().clone();
        if let Some(p) = pipeline {
            delete_stream(&format!("TIDEMARK_{}", p.to_uppercase())).await;
            purge_state(&p).await;
        }
        for ep in cleanup_eps {
            ep.drop_shared().await;
        }
    }
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

// ───────────────────────────── restarts and crashes ─────────────────────────────

/// Which database is faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Sink,
}

/// A private instance of either engine.
enum Private {
    Pg(PrivatePg),
    My(PrivateMaria),
}

impl Private {
    fn start(engine: Engine, extra: &[(&str, &str)]) -> Private {
        tokio::task::block_in_place(|| match engine {
            Engine::Pg => Private::Pg(PrivatePg::start(extra)),
            Engine::My => Private::My(PrivateMaria::start()),
        })
    }

    fn port(&self) -> u16 {
        match self {
            Private::Pg(p) => p.port(),
            Private::My(m) => m.port(),
        }
    }

    /// Graceful stop, or SIGKILL of the whole server when `crash`.
    fn down(&mut self, crash: bool) {
        tokio::task::block_in_place(|| match (self, crash) {
            (Private::Pg(p), false) => p.stop(),
            (Private::Pg(p), true) => p.crash(),
            (Private::My(m), false) => m.stop(),
            (Private::My(m), true) => m.crash(),
        })
    }

    fn up(&mut self) {
        tokio::task::block_in_place(|| match self {
            Private::Pg(p) => p.restart(),
            Private::My(m) => m.restart(),
        })
    }
}

/// `X/Y` → u64.
fn lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// One sample of a Postgres source's positions.
#[derive(Debug, Clone, Copy)]
struct PosSample {
    at: Duration,
    /// The slot's `confirmed_flush_lsn` (None while the server is down).
    slot: Option<u64>,
    /// The KV checkpoint's LSN: everything up to it is in JetStream.
    kv: Option<u64>,
}

/// Samples the slot and the checkpoint every 100 ms until `stop`.
fn spawn_pos_sampler(
    src: Ep,
    pipeline: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<PosSample>> {
    tokio::spawn(async move {
        let started = Instant::now();
        let slot = format!("tidemark_{pipeline}");
        let kv = js().await.get_key_value("tidemark_state").await.ok();
        let mut out = Vec::new();
        let mut conn: Option<Conn> = None;
        while !stop.load(Ordering::Relaxed) {
            if conn.is_none() {
                conn = src.open().await.ok();
            }
            let mut slot_lsn = None;
            if let Some(c) = conn.as_mut() {
                match c
                    .rows(&format!(
                        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots \
                         WHERE slot_name = '{slot}'"
                    ))
                    .await
                {
                    Ok(rows) => slot_lsn = rows.first().and_then(|r| r[0].as_deref()).and_then(lsn),
                    Err(_) => conn = None,
                }
            }
            let mut kv_lsn = None;
            if let Some(kv) = &kv {
                if let Ok(Some(v)) = kv.get(format!("source.{pipeline}")).await {
                    kv_lsn = serde_json::from_slice::<serde_json::Value>(&v)
                        .ok()
                        .and_then(|j| j["lsn"].as_str().and_then(lsn));
                }
            }
            out.push(PosSample {
                at: started.elapsed(),
                slot: slot_lsn,
                kv: kv_lsn,
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out
    })
}

/// Checks the sampled positions: the KV checkpoint (what is known to be in JetStream) never
/// moves backwards, and in the end the slot has caught up with it again.
///
/// The slot itself may go back over a restart: Postgres 15 writes a logical slot's
/// `confirmed_flush_lsn` to disk only when the slot is dirty for another reason (a graceful
/// shutdown checkpoint does not save it; fixed in Postgres 17), and a crash loses everything
/// since the last checkpoint. The server then re-sends transactions the source already
/// published; [`Run::assert_published_once`] proves they were skipped.
fn check_positions(test: &str, samples: &[PosSample]) {
    let mut max_kv = 0u64;
    let mut max_slot = 0u64;
    let mut slot_regressions = Vec::new();
    for s in samples {
        if let Some(kv) = s.kv {
            assert!(
                kv >= max_kv,
                "[{test}] the KV checkpoint moved backwards at {:?}: {kv:X} < {max_kv:X}",
                s.at
            );
            max_kv = kv;
        }
        if let Some(slot) = s.slot {
            if slot < max_slot {
                slot_regressions.push((s.at, slot, max_slot));
            }
            max_slot = max_slot.max(slot);
        }
    }
    eprintln!(
        "[{test}] {} position samples; final kv {max_kv:X}, slot {max_slot:X}; slot went back {} times: {:?}",
        samples.len(),
        slot_regressions.len(),
        slot_regressions.iter().take(3).collect::<Vec<_>>()
    );
    assert!(max_kv > 0, "[{test}] never saw a KV checkpoint");
    let last_slot = samples.iter().rev().find_map(|s| s.slot).unwrap_or(0);
    assert!(
        last_slot >= max_kv,
        "[{test}] at the end the slot ({last_slot:X}) is behind the checkpoint ({max_kv:X})"
    );
}

/// Restart (or crash) the database on `side` while the writer runs.
async fn restart_case(test: &'static str, side: Side, src: Engine, sink: Engine, crash: bool) {
    let seed: u64 = rand::random();
    eprintln!("[{test}] seed {seed}");
    let engine = if side == Side::Source { src } else { sink };
    let mut server = Private::start(engine, &[]);
    let private_ep = |e: Engine, name: &str| Ep {
        engine: e,
        db: unique(name),
        private: Some(server.port()),
        via: None,
    };
    let shared_ep = |e: Engine, name: &str| Ep {
        engine: e,
        db: unique(name),
        private: None,
        via: None,
    };
    let (src_ep, sink_ep) = match side {
        Side::Source => (private_ep(src, "tm_fsrc"), shared_ep(sink, "tm_fdst")),
        Side::Sink => (shared_ep(src, "tm_fsrc"), private_ep(sink, "tm_fdst")),
    };
    let hint = Arc::new(Mutex::new(None));
    let eps = vec![src_ep.clone(), sink_ep.clone()];
    let hint2 = hint.clone();
    let body = async move {
        let run = Run::start(test, src_ep, sink_ep).await;
        *hint2.lock().unwrap() = Some(run.pipeline.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let sampler_stop = Arc::new(AtomicBool::new(false));
        let sampler = (side == Side::Source && src == Engine::Pg).then(|| {
            spawn_pos_sampler(run.src.clone(), run.pipeline.clone(), sampler_stop.clone())
        });
        let writer = spawn_writer(run.src.clone(), seed, stop.clone());
        tokio::time::sleep(Duration::from_secs(4)).await;
        let errors_before = metric_sum(&run.metrics_text().await, "tidemark_errors_total", &[]);
        let down_at = Instant::now();
        server.down(crash);
        eprintln!(
            "[{test}] {engine:?} {side:?} {} at {:?}",
            if crash { "crashed" } else { "stopped" },
            down_at
        );
        let component = match side {
            Side::Source => format!("{}/source", run.pipeline),
            Side::Sink => format!("{}/sink/target", run.pipeline),
        };
        let body = run
            .wait_not_ready(&component, Duration::from_secs(20))
            .await;
        eprintln!("[{test}] /readyz while down: {body}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        server.up();
        eprintln!(
            "[{test}] back after {:.1} s",
            down_at.elapsed().as_secs_f64()
        );
        run.wait_ready(Duration::from_secs(45), "after the restart")
            .await;
        eprintln!(
            "[{test}] ready again {:.1} s after the fault",
            down_at.elapsed().as_secs_f64()
        );
        let errors_after = metric_sum(&run.metrics_text().await, "tidemark_errors_total", &[]);
        assert!(
            errors_after > errors_before,
            "[{test}] tidemark_errors_total did not count the outage ({errors_before} → {errors_after})"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        let st = writer.await.expect("writer");
        eprintln!("[{test}] writer: {st:?}");
        assert!(st.ok > 300, "[{test}] the writer did too little: {st:?}");
        if side == Side::Source {
            assert!(
                st.failed > 0 || crash,
                "[{test}] the writer never saw the outage: {st:?}"
            );
        }
        run.converge(Duration::from_secs(60)).await;
        run.assert_applied_once().await;
        run.assert_published_once().await;
        if let Some(sampler) = sampler {
            // Let the slot catch up with the last checkpoint.
            tokio::time::sleep(Duration::from_secs(3)).await;
            sampler_stop.store(true, Ordering::Relaxed);
            let samples = sampler.await.expect("sampler");
            check_positions(test, &samples);
        }
        run.finish(false).await;
    };
    guarded(eps, hint.clone(), Box::pin(body)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_source_restarted_mid_stream_loses_nothing() {
    restart_case(
        "pg_source_restart",
        Side::Source,
        Engine::Pg,
        Engine::Pg,
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_source_crash_mid_stream_loses_nothing() {
    restart_case(
        "pg_source_crash",
        Side::Source,
        Engine::Pg,
        Engine::My,
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_source_restarted_mid_stream_loses_nothing() {
    restart_case(
        "my_source_restart",
        Side::Source,
        Engine::My,
        Engine::Pg,
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_source_crash_mid_stream_loses_nothing() {
    restart_case(
        "my_source_crash",
        Side::Source,
        Engine::My,
        Engine::My,
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_restarted_mid_stream_catches_up_once() {
    Box::pin(restart_case(
        "pg_sink_restart",
        Side::Sink,
        Engine::Pg,
        Engine::Pg,
        false,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_crash_mid_stream_catches_up_once() {
    Box::pin(restart_case(
        "pg_sink_crash",
        Side::Sink,
        Engine::My,
        Engine::Pg,
        true,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_sink_restarted_mid_stream_catches_up_once() {
    Box::pin(restart_case(
        "my_sink_restart",
        Side::Sink,
        Engine::My,
        Engine::My,
        false,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_sink_crash_mid_stream_catches_up_once() {
    Box::pin(restart_case(
        "my_sink_crash",
        Side::Sink,
        Engine::Pg,
        Engine::My,
        true,
    ))
    .await;
}

// ───────────────────────────── a lost Postgres slot ─────────────────────────────

/// Drops the pipeline's slot on the server, terminating its walsender first (the daemon may
/// reconnect in between, so this retries for a while).
async fn drop_slot(src: &Ep, slot: &str) {
    let mut c = src.must_open().await;
    for _ in 0..100 {
        let _ = c
            .exec(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = '{slot}' AND active_pid IS NOT NULL"
            ))
            .await;
        if c.exec(&format!("SELECT pg_drop_replication_slot('{slot}')"))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("could not drop slot {slot}");
}

/// The slot's `wal_status`, or None when it does not exist.
async fn slot_status(src: &Ep, slot: &str) -> Option<String> {
    let mut c = src.must_open().await;
    c.rows(&format!(
        "SELECT coalesce(wal_status, 'null') FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .first()
    .and_then(|r| r[0].clone())
}

/// The daemon must stop streaming with one definite error that says what to do, retried
/// slowly (no hot loop), visible in `/readyz`, `tidemark_component_ready` and
/// `tidemark_errors_total{kind="slot"}`, and must not quietly create a new slot (that would
/// skip the changes in between). Returns the `/readyz` reason.
async fn assert_slot_error(run: &Run, slot: &str, words: &[&str]) -> String {
    let component = format!("{}/source", run.pipeline);
    let body = run
        .wait_not_ready(&component, Duration::from_secs(30))
        .await;
    let watched = Instant::now();
    // Watch a while: the error stays, the slot is not re-created behind our back.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let body = http_get(run.metrics, "/readyz")
        .await
        .map(|r| r.1)
        .unwrap_or(body);
    eprintln!("[{}] /readyz: {body}", run.test);
    for w in words {
        assert!(
            body.contains(w),
            "[{}] /readyz reason lacks {w:?}: {body}\n{}",
            run.test,
            run.log_tail(30)
        );
    }
    let status = slot_status(&run.src, slot).await;
    assert!(
        status.is_none() || status.as_deref() == Some("lost"),
        "[{}] the daemon re-created slot {slot} by itself ({status:?}): the changes in between \
         would be skipped silently",
        run.test
    );
    let metrics = run.metrics_text().await;
    let errors = metric_sum(&metrics, "tidemark_errors_total", &["kind=\"slot\""]);
    let ready = metric_sum(
        &metrics,
        "tidemark_component_ready",
        &[&format!("component=\"{component}\"")],
    );
    assert!(
        errors >= 1.0,
        "[{}] tidemark_errors_total{{kind=\"slot\"}} = {errors}:\n{}",
        run.test,
        metrics
            .lines()
            .filter(|l| l.contains("errors_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        ready, 0.0,
        "[{}] tidemark_component_ready of the source",
        run.test
    );
    let logs = run.daemon.logs();
    let error_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(" ERROR ") && l.contains(slot))
        .collect();
    assert!(
        !error_lines.is_empty(),
        "[{}] no ERROR line names the slot:\n{}",
        run.test,
        run.log_tail(30)
    );
    // Definite errors are retried slowly: a handful of attempts, not a hot loop.
    assert!(
        error_lines.len() <= 4,
        "[{}] {} ERROR lines in {:?}: retried too fast",
        run.test,
        error_lines.len(),
        watched.elapsed()
    );
    body
}

/// The documented recovery (docs/operations.md, "Lost Postgres slot"): stop, drop a lost slot,
/// delete the checkpoint, truncate the target, start; the re-snapshot makes the target exact.
async fn recover_lost_slot(run: &mut Run, slot: &str, writer_stop: &AtomicBool) {
    assert_eq!(run.daemon.terminate().await, 0, "[{}] SIGTERM", run.test);
    if slot_status(&run.src, slot).await.is_some() {
        drop_slot(&run.src, slot).await;
    }
    purge_state(&run.pipeline).await;
    run.sink
        .must_open()
        .await
        .must("TRUNCATE TABLE items")
        .await;
    run.sink
        .must_open()
        .await
        .must("TRUNCATE TABLE tm_audit")
        .await;
    run.daemon.restart();
    run.wait_ready(Duration::from_secs(60), "after the recovery")
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    writer_stop.store(true, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_slot_dropped_under_the_daemon_is_a_definite_error_with_the_fix() {
    let test = "pg_slot_dropped";
    let seed: u64 = rand::random();
    let server = Private::start(Engine::Pg, &[]);
    let src = Ep {
        engine: Engine::Pg,
        db: unique("tm_fsrc"),
        private: Some(server.port()),
        via: None,
    };
    let sink = Ep {
        engine: Engine::Pg,
        db: unique("tm_fdst"),
        private: None,
        via: None,
    };
    let hint = Arc::new(Mutex::new(None));
    let hint2 = hint.clone();
    let eps = vec![src.clone(), sink.clone()];
    let body = async move {
        let mut run = Run::start(test, src, sink).await;
        *hint2.lock().unwrap() = Some(run.pipeline.clone());
        let slot = format!("tidemark_{}", run.pipeline);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = spawn_writer(run.src.clone(), seed, stop.clone());
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop_slot(&run.src, &slot).await;
        eprintln!("[{test}] slot dropped");
        assert_slot_error(&run, &slot, &["missing", "kv del", "source."]).await;
        recover_lost_slot(&mut run, &slot, &stop).await;
        let st = writer.await.expect("writer");
        eprintln!("[{test}] writer: {st:?}");
        run.converge(Duration::from_secs(60)).await;
        run.assert_applied_once().await;
        run.finish(true).await;
    };
    guarded(eps, hint, Box::pin(body)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_slot_invalidated_is_a_definite_error_with_the_fix() {
    let test = "pg_slot_invalidated";
    let seed: u64 = rand::random();
    // A slot may hold back at most 1 MB of WAL beyond max_wal_size; then a checkpoint
    // invalidates it (wal_status = lost).
    let server = Private::start(
        Engine::Pg,
        &[
            ("max_slot_wal_keep_size", "1MB"),
            ("wal_keep_size", "0"),
            ("min_wal_size", "32MB"),
            ("max_wal_size", "32MB"),
        ],
    );
    let src = Ep {
        engine: Engine::Pg,
        db: unique("tm_fsrc"),
        private: Some(server.port()),
        via: None,
    };
    let sink = Ep {
        engine: Engine::Pg,
        db: unique("tm_fdst"),
        private: None,
        via: None,
    };
    let hint = Arc::new(Mutex::new(None));
    let hint2 = hint.clone();
    let eps = vec![src.clone(), sink.clone()];
    let body = async move {
        let mut run = Run::start(test, src, sink).await;
        *hint2.lock().unwrap() = Some(run.pipeline.clone());
        let slot = format!("tidemark_{}", run.pipeline);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = spawn_writer(run.src.clone(), seed, stop.clone());
        tokio::time::sleep(Duration::from_secs(3)).await;
        // tidemark is down for a long time while the server writes WAL.
        assert_eq!(run.daemon.terminate().await, 0);
        let mut c = run.src.must_open().await;
        c.must("CREATE SCHEMA other; CREATE TABLE other.ballast (b text)")
            .await;
        let lost = wait_until(Duration::from_secs(60), || {
            let src = run.src.clone();
            let slot = slot.clone();
            async move {
                let mut c = src.must_open().await;
                c.must(
                    "INSERT INTO other.ballast SELECT repeat('x', 1000) FROM generate_series(1, 2000); \
                     SELECT pg_switch_wal(); CHECKPOINT",
                )
                .await;
                slot_status(&src, &slot).await.as_deref() == Some("lost")
            }
        })
        .await;
        assert!(
            lost,
            "[{test}] the slot never became lost: {:?}",
            slot_status(&run.src, &slot).await
        );
        eprintln!("[{test}] slot invalidated (wal_status = lost)");
        run.daemon.restart();
        assert_slot_error(&run, &slot, &["lost", "pg_drop_replication_slot", "kv del"]).await;
        recover_lost_slot(&mut run, &slot, &stop).await;
        let st = writer.await.expect("writer");
        eprintln!("[{test}] writer: {st:?}");
        run.converge(Duration::from_secs(60)).await;
        run.assert_applied_once().await;
        run.finish(true).await;
    };
    guarded(eps, hint, Box::pin(body)).await;
}

// ───────────────────────────── partitions ─────────────────────────────

/// Blackholes the traffic between the daemon and the database on `side` (a shared server
/// behind the proxy) for `hold` while the writer runs, then lets new connections through
/// again. The daemon must notice on its own (timeouts: nothing closes the connections),
/// report the component not ready, reconnect, and lose nothing.
async fn partition_case(test: &'static str, side: Side, src: Engine, sink: Engine) {
    let seed: u64 = rand::random();
    eprintln!("[{test}] seed {seed}");
    let engine = if side == Side::Source { src } else { sink };
    let proxy = Proxy::start(shared_addr(engine)).await;
    let mut src_ep = Ep {
        engine: src,
        db: unique("tm_fsrc"),
        private: None,
        via: None,
    };
    let mut sink_ep = Ep {
        engine: sink,
        db: unique("tm_fdst"),
        private: None,
        via: None,
    };
    match side {
        Side::Source => src_ep.via = Some(proxy.port()),
        Side::Sink => sink_ep.via = Some(proxy.port()),
    }
    let hint = Arc::new(Mutex::new(None));
    let hint2 = hint.clone();
    let eps = vec![src_ep.clone(), sink_ep.clone()];
    let body = async move {
        let run = Run::start(test, src_ep, sink_ep).await;
        *hint2.lock().unwrap() = Some(run.pipeline.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let writer = spawn_writer(run.src.clone(), seed, stop.clone());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let component = match side {
            Side::Source => format!("{}/source", run.pipeline),
            Side::Sink => format!("{}/sink/target", run.pipeline),
        };
        let accepted = proxy.accepted();
        let cut = Instant::now();
        proxy.blackhole();
        eprintln!("[{test}] partition on the {side:?} side");
        let body = run
            .wait_not_ready(&component, Duration::from_secs(30))
            .await;
        eprintln!(
            "[{test}] detected after {:.1} s: {body}",
            cut.elapsed().as_secs_f64()
        );
        // Stay partitioned a little longer: reconnect attempts meet a dead network too.
        tokio::time::sleep(Duration::from_secs(4)).await;
        proxy.pass();
        let healed = Instant::now();
        run.wait_ready(Duration::from_secs(45), "after the partition healed")
            .await;
        eprintln!(
            "[{test}] ready {:.1} s after the partition healed ({} new connections)",
            healed.elapsed().as_secs_f64(),
            proxy.accepted() - accepted
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        let st = writer.await.expect("writer");
        eprintln!("[{test}] writer: {st:?}");
        run.converge(Duration::from_secs(60)).await;
        run.assert_applied_once().await;
        run.assert_published_once().await;
        run.finish(false).await;
    };
    guarded(eps, hint, Box::pin(body)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_source_partition_is_detected_and_survived() {
    Box::pin(partition_case(
        "pg_source_partition",
        Side::Source,
        Engine::Pg,
        Engine::Pg,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_source_partition_is_detected_and_survived() {
    Box::pin(partition_case(
        "my_source_partition",
        Side::Source,
        Engine::My,
        Engine::Pg,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_partition_is_detected_and_survived() {
    Box::pin(partition_case(
        "pg_sink_partition",
        Side::Sink,
        Engine::My,
        Engine::Pg,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_sink_partition_is_detected_and_survived() {
    Box::pin(partition_case(
        "my_sink_partition",
        Side::Sink,
        Engine::Pg,
        Engine::My,
    ))
    .await;
}
