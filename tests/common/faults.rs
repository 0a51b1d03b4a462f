//! Harness for fault tests: a pipeline on fresh databases, a writer that keeps changing rows
//! while a fault is injected, and the checks that follow (targets equal the source row for
//! row, the sinks applied every change exactly once, readiness and metrics over HTTP).
//!
//! The workload is one table `items(id, ver, note)`: inserts, updates that bump `ver` by one,
//! deletes, and small multi-statement transactions. A change applied twice or lost shows up
//! either in the row comparison (`ver` differs) or in the sinks' applied-events counter, which
//! must equal the number of row changes the writer committed.

#![allow(dead_code)]

use super::*;
use mysql_async::prelude::Queryable as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Database engine of a source or sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Postgres.
    Pg,
    /// MariaDB.
    My,
}

/// One sink of the pipeline.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// Sink name.
    pub name: String,
    /// Target engine.
    pub engine: Engine,
    /// Target database.
    pub db: String,
}

/// A pipeline on fresh databases.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Pipeline name (also the stream's `TIDEMARK_<NAME>`).
    pub name: String,
    /// Source engine.
    pub source: Engine,
    /// Source database.
    pub src_db: String,
    /// Sinks.
    pub sinks: Vec<SinkSpec>,
    /// Port of the daemon's HTTP endpoint.
    pub metrics_port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

const PG_DDL: &str =
    "CREATE TABLE items (id bigint PRIMARY KEY, ver bigint NOT NULL, note text NOT NULL)";
const MY_DDL: &str = "CREATE TABLE items (id bigint PRIMARY KEY, ver bigint NOT NULL, \
                      note longtext NOT NULL) DEFAULT CHARSET=utf8mb4";

impl Pipeline {
    /// Creates the source and sink databases with an empty `items` table in each.
    pub async fn create(prefix: &str, source: Engine, sinks: &[(&str, Engine)]) -> Pipeline {
        let p = Pipeline {
            name: unique(prefix),
            source,
            src_db: unique("tm_flt_src"),
            sinks: sinks
                .iter()
                .map(|(name, engine)| SinkSpec {
                    name: (*name).to_owned(),
                    engine: *engine,
                    db: unique("tm_flt_dst"),
                })
                .collect(),
            metrics_port: free_port(),
        };
        let mut all = vec![(source, p.src_db.clone())];
        all.extend(p.sinks.iter().map(|s| (s.engine, s.db.clone())));
        for (engine, db) in all {
            match engine {
                Engine::Pg => {
                    pg_create_db(&db).await;
                    pg_connect(&db).await.batch_execute(PG_DDL).await.unwrap();
                }
                Engine::My => {
                    mysql_create_db(&db).await;
                    let mut c = mysql_conn(&db).await;
                    c.query_drop(MY_DDL).await.unwrap();
                    let _ = c.disconnect().await;
                }
            }
        }
        p
    }

    /// The stream name.
    pub fn stream(&self) -> String {
        format!("TIDEMARK_{}", self.name.to_uppercase())
    }

    /// `pipelines.toml` for this pipeline with NATS at `nats_url`; `nats_extra` lines go into
    /// `[nats]`, `source_extra` lines into `[pipelines.source]`.
    pub fn config(&self, nats_url: &str, nats_extra: &str, source_extra: &str) -> String {
        let mut s = format!(
            "[nats]\nurl = \"{nats_url}\"\n{nats_extra}\n\n[metrics]\nlisten = \"127.0.0.1:{}\"\n\n\
             [[pipelines]]\nname = \"{}\"\n",
            self.metrics_port, self.name
        );
        match self.source {
            Engine::Pg => s.push_str(&format!(
                "  [pipelines.source]\n  kind = \"postgres\"\n  url = \"{}\"\n  \
                 tables = [\"public.items\"]\n  heartbeat_secs = 2\n{source_extra}\n",
                pg_url(&self.src_db)
            )),
            Engine::My => s.push_str(&format!(
                "  [pipelines.source]\n  kind = \"mysql\"\n  url = \"{}\"\n  tables = [\"{}.items\"]\n  \
                 server_id = {}\n  heartbeat_secs = 2\n{source_extra}\n",
                mysql_url(&self.src_db),
                self.src_db,
                1000 + rand::random::<u32>() % 1_000_000_000
            )),
        }
        for sink in &self.sinks {
            let (kind, url) = match sink.engine {
                Engine::Pg => ("postgres", pg_url(&sink.db)),
                Engine::My => ("mysql", mysql_url(&sink.db)),
            };
            s.push_str(&format!(
                "\n  [[pipelines.sinks]]\n  name = \"{}\"\n  kind = \"{kind}\"\n  url = \"{url}\"\n",
                sink.name
            ));
            if sink.engine == Engine::Pg && self.source == Engine::My {
                s.push_str("  schema = \"public\"\n");
            }
        }
        s
    }

    /// Drops the Postgres slot of this pipeline (after the daemon stopped), for a re-snapshot.
    pub async fn drop_pg_slot(&self) {
        let c = pg_connect("postgres").await;
        let _ = c
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE database = $1 AND NOT active",
                &[&self.src_db],
            )
            .await;
    }

    /// Drops every database of the pipeline.
    pub async fn drop_dbs(&self) {
        let mut all = vec![(self.source, self.src_db.clone())];
        all.extend(self.sinks.iter().map(|s| (s.engine, s.db.clone())));
        for (engine, db) in all {
            match engine {
                Engine::Pg => pg_drop_db(&db).await,
                Engine::My => mysql_drop_db(&db).await,
            }
        }
    }

    /// `GET path` on the daemon's HTTP endpoint.
    pub async fn http(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics_port, path).await
    }

    /// Sum of every sample of `family` for this pipeline whose labels contain all `labels`.
    pub async fn metric(&self, family: &str, labels: &[&str]) -> f64 {
        let body = self.http("/metrics").await.map(|r| r.1).unwrap_or_default();
        let pipeline = format!("pipeline=\"{}\"", self.name);
        let mut all: Vec<&str> = labels.to_vec();
        all.push(&pipeline);
        metric_sum(&body, family, &all)
    }

    /// Sum of every sample of `family` (any pipeline) whose labels contain all `labels`.
    pub async fn metric_any(&self, family: &str, labels: &[&str]) -> f64 {
        let body = self.http("/metrics").await.map(|r| r.1).unwrap_or_default();
        metric_sum(&body, family, labels)
    }

    /// Events applied by sink `sink` (every op).
    pub async fn applied(&self, sink: &str) -> f64 {
        let label = format!("sink=\"{sink}\"");
        self.metric("tidemark_sink_applied_events_total", &[&label])
            .await
    }

    /// Waits until `/readyz` answers `code`.
    pub async fn wait_ready_code(&self, code: u16, timeout: Duration) -> bool {
        wait_until(timeout, || async {
            self.http("/readyz").await.map(|r| r.0) == Some(code)
        })
        .await
    }

    /// Rows of `items` in a database, in key order.
    pub async fn rows(engine: Engine, db: &str) -> Vec<(i64, i64, String)> {
        match engine {
            Engine::Pg => pg_connect(db)
                .await
                .query("SELECT id, ver, note FROM items ORDER BY id", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect(),
            Engine::My => {
                let mut c = mysql_conn(db).await;
                let rows: Vec<(i64, i64, String)> = c
                    .query("SELECT id, ver, note FROM items ORDER BY id")
                    .await
                    .unwrap();
                let _ = c.disconnect().await;
                rows
            }
        }
    }

    /// Waits until every sink's `items` equals the source's; panics with a summary otherwise.
    pub async fn converge(&self, timeout: Duration, daemon: &Daemon) {
        let started = Instant::now();
        let source = Pipeline::rows(self.source, &self.src_db).await;
        loop {
            let mut diffs = Vec::new();
            for s in &self.sinks {
                let target = Pipeline::rows(s.engine, &s.db).await;
                if target != source {
                    diffs.push(summary(&s.name, &source, &target));
                }
            }
            if diffs.is_empty() {
                eprintln!(
                    "[{}] {} rows converged after {:.1} s",
                    self.name,
                    source.len(),
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            if started.elapsed() > timeout {
                panic!(
                    "[{}] targets did not converge within {timeout:?}:\n{}\n---- daemon log tail ----\n{}",
                    self.name,
                    diffs.join("\n"),
                    tail(&daemon.logs(), 80)
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Every sink applied exactly `changes` events: nothing lost, nothing applied twice.
    pub async fn assert_applied_once(&self, changes: u64, daemon: &Daemon) {
        for s in &self.sinks {
            // The counter is updated right after the commit the rows came from.
            let mut applied = 0.0;
            for _ in 0..50 {
                applied = self.applied(&s.name).await;
                if applied as u64 == changes {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let dup_label = format!("sink=\"{}\"", s.name);
            let dups = self
                .metric("tidemark_sink_duplicates_skipped_total", &[&dup_label])
                .await;
            eprintln!(
                "[{}] sink {}: applied {applied}, duplicates skipped {dups}, source changes {changes}",
                self.name, s.name
            );
            assert_eq!(
                applied as u64,
                changes,
                "[{}] sink {} applied {applied} events for {changes} source row changes\n{}",
                self.name,
                s.name,
                tail(&daemon.logs(), 60)
            );
        }
    }

    /// Deletes the stream and checkpoint on `nats_url` and drops every database.
    pub async fn cleanup(&self, nats_url: &str) {
        if let Ok(c) = async_nats::connect(nats_url).await {
            let js = async_nats::jetstream::new(c);
            let _ = js.delete_stream(self.stream()).await;
            if let Ok(kv) = js.get_key_value("tidemark_state").await {
                let _ = kv.purge(format!("source.{}", self.name)).await;
                let _ = kv.purge(format!("stream.{}", self.name)).await;
            }
        }
        self.drop_dbs().await;
    }
}

fn summary(sink: &str, source: &[(i64, i64, String)], target: &[(i64, i64, String)]) -> String {
    use std::collections::BTreeMap;
    let s: BTreeMap<i64, (i64, &String)> = source.iter().map(|r| (r.0, (r.1, &r.2))).collect();
    let t: BTreeMap<i64, (i64, &String)> = target.iter().map(|r| (r.0, (r.1, &r.2))).collect();
    let missing = s.keys().filter(|k| !t.contains_key(k)).count();
    let extra = t.keys().filter(|k| !s.contains_key(k)).count();
    let differ: Vec<String> = s
        .iter()
        .filter_map(|(k, v)| match t.get(k) {
            Some(w) if w != v => Some(format!("id {k}: ver {} vs {}", v.0, w.0)),
            _ => None,
        })
        .take(5)
        .collect();
    format!(
        "sink {sink}: source {} rows, target {} rows, {missing} missing, {extra} extra, differing: {differ:?}",
        source.len(),
        target.len()
    )
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `GET path` on 127.0.0.1:port; returns (status code, body), or None if nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
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

/// Sum of the samples of `family` whose label set contains every `labels` fragment.
pub fn metric_sum(body: &str, family: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let end = l.find(['{', ' ']).unwrap_or(l.len());
            &l[..end] == family
        })
        .filter(|l| labels.iter().all(|frag| l.contains(frag)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A connection to the source database.
enum Conn {
    Pg(tokio_postgres::Client),
    My(mysql_async::Conn),
}

impl Conn {
    async fn exec(&mut self, sql: &str) -> u64 {
        match self {
            Conn::Pg(c) => c
                .execute(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Conn::My(c) => {
                c.query_drop(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                c.affected_rows()
            }
        }
    }
}

/// A writer changing `items` in the source until stopped.
pub struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, i64)>,
}

/// Writer settings.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Pause between transactions.
    pub pace: Duration,
    /// Bytes of `note` per insert/update.
    pub note_len: usize,
}

impl Default for Load {
    fn default() -> Load {
        Load {
            pace: Duration::from_millis(10),
            note_len: 40,
        }
    }
}

impl Writer {
    /// Starts writing to `p`'s source.
    pub async fn start(p: &Pipeline, load: Load) -> Writer {
        let mut conn = match p.source {
            Engine::Pg => Conn::Pg(pg_connect(&p.src_db).await),
            Engine::My => Conn::My(mysql_conn(&p.src_db).await),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(rand::random());
            let mut live: Vec<i64> = Vec::new();
            let mut next_id = 1i64;
            let mut changes = 0u64;
            while !flag.load(Ordering::SeqCst) {
                let ops = if rand::Rng::random_ratio(&mut rng, 1, 5) {
                    3
                } else {
                    1
                };
                let mut sqls = Vec::new();
                let mut inserted = Vec::new();
                let mut removed = Vec::new();
                for _ in 0..ops {
                    let roll: u32 = rand::Rng::random_range(&mut rng, 0..10);
                    let note: String = format!(
                        "{:x}{}",
                        rand::random::<u32>(),
                        "n".repeat(load.note_len.saturating_sub(8))
                    );
                    let pick = |rng: &mut rand::rngs::StdRng, live: &Vec<i64>| {
                        (!live.is_empty())
                            .then(|| live[rand::Rng::random_range(rng, 0..live.len())])
                    };
                    match (roll, pick(&mut rng, &live)) {
                        (0..=4, _) | (_, None) => {
                            sqls.push(format!(
                                "INSERT INTO items (id, ver, note) VALUES ({next_id}, 1, '{note}')"
                            ));
                            inserted.push(next_id);
                            next_id += 1;
                        }
                        (5..=8, Some(id)) if !removed.contains(&id) => sqls.push(format!(
                            "UPDATE items SET ver = ver + 1, note = '{note}' WHERE id = {id}"
                        )),
                        (_, Some(id)) if !removed.contains(&id) => {
                            sqls.push(format!("DELETE FROM items WHERE id = {id}"));
                            removed.push(id);
                        }
                        _ => {}
                    }
                }
                if sqls.len() > 1 {
                    conn.exec(match conn {
                        Conn::Pg(_) => "BEGIN",
                        Conn::My(_) => "START TRANSACTION",
                    })
                    .await;
                }
                let mut n = 0;
                for sql in &sqls {
                    n += conn.exec(sql).await;
                }
                if sqls.len() > 1 {
                    conn.exec("COMMIT").await;
                }
                changes += n;
                live.extend(inserted);
                live.retain(|id| !removed.contains(id));
                tokio::time::sleep(load.pace).await;
            }
            (changes, next_id - 1)
        });
        Writer { stop, task }
    }

    /// Stops the writer; returns the number of row changes it committed.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let (changes, inserted) = self.task.await.expect("writer task");
        eprintln!("writer: {changes} row changes, {inserted} inserts");
        changes
    }
}

/// A `tidemark run --role <role>` process (for split-role tests), killed on drop.
pub struct RoleDaemon {
    child: Option<std::process::Child>,
    log: std::path::PathBuf,
}

impl RoleDaemon {
    /// Starts `tidemark run -c <config> --role <role>`.
    pub fn start(config_toml: &str, role: &str) -> RoleDaemon {
        ensure_services();
        let config = temp_file("pipelines.toml", config_toml);
        let log = config.with_file_name("daemon.log");
        let out = std::fs::File::create(&log).expect("daemon log");
        let err = out.try_clone().expect("daemon log");
        let child = std::process::Command::new(tidemark_bin())
            .args(["run", "-c"])
            .arg(&config)
            .args(["--role", role])
            .env("RUST_LOG", "info,tidemark=debug")
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn tidemark");
        RoleDaemon {
            child: Some(child),
            log,
        }
    }

    /// Everything it printed.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL after 15 s.
    pub async fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for RoleDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- daemon log ----\n{}\n---- end ----",
                tail(&self.logs(), 60)
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
