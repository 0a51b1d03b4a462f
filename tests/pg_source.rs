//! Postgres source against the real Postgres and NATS: CRUD end to end,
//! ordering under concurrent writers, a snapshot racing writers, SCRAM,
//! idle-slot WAL retention, restart and crash resume.
//!
//! Most tests drive the source in-process with a hand-built `SourceContext`
//! (outbox + real publisher + real KV) and a tiny supervisor loop that, like
//! the daemon's, calls `run` again after an error; the kill -9 test runs the
//! real binary.

use crate::common::{
    self, js, pg_connect, pg_create_db, pg_drop_db, read_envelopes, unique, wait_until,
};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use tidemark_core::config::{NatsConfig, PipelineConfig};
use tidemark_core::envelope::Naming;
use tidemark_core::error::{Failure, Retry};
use tidemark_core::health::Health;
use tidemark_core::publisher::Publisher;
use tidemark_core::source::{Outbox, Source, SourceContext};
use tidemark_core::state::StateStore;
use tidemark_core::CancellationToken;
use tidemark_postgres_source::PostgresSource;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const BUCKET: &str = "tidemark_state";

/// One pipeline's names and servers, cleaned up by [`Env::cleanup`].
struct Env {
    db: String,
    pipeline: PipelineConfig,
}

impl Env {
    async fn new(prefix: &str, extra: Json) -> Env {
        let db = unique(prefix);
        pg_create_db(&db).await;
        let mut source = serde_json::json!({
            "kind": "postgres",
            "url": common::pg_url(&db),
            "tables": ["public.*"],
            "snapshot_chunk_size": 500,
            "heartbeat_secs": 2,
        });
        if let (Some(s), Some(e)) = (source.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        let pipeline: PipelineConfig = serde_json::from_value(serde_json::json!({
            "name": db.clone(),
            "source": source,
        }))
        .expect("pipeline config");
        Env { db, pipeline }
    }

    fn stream(&self) -> String {
        self.pipeline.stream_name()
    }

    async fn sql(&self) -> tokio_postgres::Client {
        pg_connect(&self.db).await
    }

    async fn cleanup(self) {
        pg_drop_db(&self.db).await;
        common::delete_stream(&self.stream()).await;
        common::purge_state(&self.pipeline.name).await;
    }
}

/// Opens the state bucket. async-nats' `create_key_value` cannot parse nats-server 2.9's
/// account info, so the bucket's stream is created here with the configuration async-nats
/// would use when it is missing.
async fn open_state(js: &async_nats::jetstream::Context) -> StateStore {
    use async_nats::jetstream::stream;
    if js.get_key_value(BUCKET).await.is_err() {
        let _ = js
            .create_stream(stream::Config {
                name: format!("KV_{BUCKET}"),
                subjects: vec![format!("$KV.{BUCKET}.>")],
                max_messages_per_subject: 5,
                storage: stream::StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                num_replicas: 1,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await;
    }
    StateStore::open(js, BUCKET, 1).await.expect("state bucket")
}

/// A source running under a minimal supervisor: on error it waits and calls `run` again with
/// a fresh context, exactly as the daemon does.
struct Running {
    shutdown: CancellationToken,
    health: Health,
    task: JoinHandle<Vec<Failure>>,
}

async fn start(p: &PipelineConfig) -> Running {
    let shutdown = CancellationToken::new();
    let health = Health::new();
    let js = js().await;
    tidemark_core::nats::ensure_stream(&js, p, &NatsConfig::default())
        .await
        .expect("stream");
    let state = open_state(&js).await;
    let (p, sd, h) = (p.clone(), shutdown.clone(), health.clone());
    let task = tokio::spawn(async move {
        let mut failures = Vec::new();
        while !sd.is_cancelled() {
            match run_once(&p, js.clone(), state.clone(), &h, &sd).await {
                Ok(()) => break,
                Err(f) => {
                    eprintln!("source failed ({:?}): {}", f.retry, f.message);
                    failures.push(f);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        failures
    });
    Running {
        shutdown,
        health,
        task,
    }
}

async fn run_once(
    p: &PipelineConfig,
    js: async_nats::jetstream::Context,
    state: StateStore,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<(), Failure> {
    let (outbox, rx) = Outbox::channel(1024);
    let (acked_tx, acked_rx) = watch::channel(None);
    let publishing = tokio::spawn(Publisher::new(js, 1024, &p.name).run(rx, acked_tx));
    let ctx = SourceContext {
        pipeline: p.clone(),
        naming: Naming {
            pipeline: p.name.clone(),
            connector: "postgres",
            subject_prefix: p.subject_prefix.clone(),
        },
        outbox,
        acked: acked_rx,
        state,
        shutdown: shutdown.clone(),
        health: health.clone(),
    };
    let result = PostgresSource::run(ctx).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), publishing).await;
    result
}

impl Running {
    async fn wait_ready(&self, timeout: Duration) {
        let h = self.health.clone();
        let ok = wait_until(timeout, || {
            let h = h.clone();
            async move { h.report().0 }
        })
        .await;
        assert!(ok, "source not ready in time: {:?}", self.health.report());
    }

    /// Graceful stop; returns the failures seen while running.
    async fn stop(self) -> Vec<Failure> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(40), self.task)
            .await
            .expect("source stops within 40 s")
            .expect("source task")
    }

    /// No graceful anything: the task (and its connections) just vanish, like a crash.
    async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn op(e: &Json) -> &str {
    e["op"].as_str().unwrap_or("?")
}

fn pos(e: &Json) -> &str {
    e["source"]["pos"].as_str().unwrap_or("")
}

#[tokio::test]
async fn crud_end_to_end() {
    let env = Env::new("pgsrc_crud", serde_json::json!({})).await;
    let c = env.sql().await;
    c.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int, note text);
         CREATE TABLE full_items (id int PRIMARY KEY, name text);
         ALTER TABLE full_items REPLICA IDENTITY FULL;
         CREATE TABLE \"odd \"\"name\" (k text PRIMARY KEY);",
    )
    .await
    .unwrap();
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(30)).await;
    c.batch_execute(
        "INSERT INTO items VALUES (1, 'a', 1, NULL), (2, 'b', 2, 'x');
         UPDATE items SET name = 'a2' WHERE id = 1;
         UPDATE items SET id = 10 WHERE id = 1;
         DELETE FROM items WHERE id = 2;
         INSERT INTO full_items VALUES (7, 'seven');
         UPDATE full_items SET name = 'SEVEN' WHERE id = 7;
         DELETE FROM full_items WHERE id = 7;
         INSERT INTO \"odd \"\"name\" VALUES ('k1');
         TRUNCATE items, full_items;",
    )
    .await
    .unwrap();
    let events = read_envelopes(&env.stream(), 11, Duration::from_secs(30)).await;
    let failures = running.stop().await;
    assert!(
        failures.is_empty(),
        "unexpected failures: {:?}",
        failures.iter().map(|f| &f.message).collect::<Vec<_>>()
    );
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["source"]["table"].as_str().unwrap_or("").to_string(),
                op(e).to_string(),
            )
        })
        .collect();
    let expect: Vec<(String, String)> = [
        ("items", "c"),
        ("items", "c"),
        ("items", "u"),
        ("items", "u"),
        ("items", "d"),
        ("full_items", "c"),
        ("full_items", "u"),
        ("full_items", "d"),
        ("odd \"name", "c"),
        ("items", "t"),
        ("full_items", "t"),
    ]
    .iter()
    .map(|(t, o)| (t.to_string(), o.to_string()))
    .collect();
    assert_eq!(summary, expect);
    // Insert: key and full after, no before.
    assert_eq!(events[0]["key"], serde_json::json!({"id": 1}));
    assert_eq!(
        events[0]["after"],
        serde_json::json!({"id": 1, "name": "a", "qty": 1, "note": null})
    );
    assert!(events[0]["before"].is_null());
    // Plain update: no old image with the default replica identity.
    assert_eq!(events[2]["after"]["name"], "a2");
    assert!(events[2]["before"].is_null());
    // Key change: old key in before (key columns only), new key in key/after.
    assert_eq!(events[3]["key"], serde_json::json!({"id": 10}));
    assert_eq!(events[3]["before"], serde_json::json!({"id": 1}));
    assert_eq!(events[3]["after"]["id"], 10);
    // Delete: key from the old image.
    assert_eq!(events[4]["key"], serde_json::json!({"id": 2}));
    assert_eq!(events[4]["before"], serde_json::json!({"id": 2}));
    assert!(events[4]["after"].is_null());
    // REPLICA IDENTITY FULL: full old rows.
    assert_eq!(
        events[6]["before"],
        serde_json::json!({"id": 7, "name": "seven"})
    );
    assert_eq!(
        events[7]["before"],
        serde_json::json!({"id": 7, "name": "SEVEN"})
    );
    // Hostile identifiers are just names.
    assert_eq!(events[8]["key"], serde_json::json!({"k": "k1"}));
    assert!(events[8]["schema"]["columns"][0]["pk"]
        .as_bool()
        .unwrap_or(false));
    // Truncate: one event per relation, no key/before/after, the last one closes the tx.
    assert!(events[9]["key"].is_null() && events[9]["after"].is_null());
    assert_eq!(events[10]["source"]["tx"]["last"], true);
    assert_ne!(events[9]["source"]["tx"]["last"], true);
    // One batch_execute is one transaction: all share tx id/commit_pos, seq 1..=11.
    let tx_ids: HashSet<&str> = events
        .iter()
        .map(|e| e["source"]["tx"]["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(tx_ids.len(), 1);
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["source"]["tx"]["seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(seqs, (1..=11).collect::<Vec<u64>>());
    for e in &events {
        assert_eq!(
            e["id"].as_str().unwrap_or(""),
            format!("{}:{}", env.pipeline.name, pos(e))
        );
        assert_eq!(e["source"]["snapshot"], false);
        assert_eq!(e["source"]["connector"], "postgres");
        assert_eq!(e["source"]["db"], env.db.as_str());
    }
    // The checkpoint reached the KV and the slot.
    let kv = js().await.get_key_value(BUCKET).await.unwrap();
    let entry = kv
        .get(format!("source.{}", env.pipeline.name))
        .await
        .unwrap()
        .expect("checkpoint");
    let cp: Json = serde_json::from_slice(&entry).unwrap();
    assert_eq!(cp["snapshot_done"], true);
    let commit_pos = events[10]["source"]["tx"]["commit_pos"]
        .as_str()
        .unwrap_or("");
    assert!(
        lsn(cp["lsn"].as_str().unwrap_or("0/0")) > lsn(commit_pos),
        "checkpoint {cp} after commit {commit_pos}"
    );
    env.cleanup().await;
}

fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap_or(("0", "0"));
    (u64::from_str_radix(hi, 16).unwrap_or(0) << 32) | u64::from_str_radix(lo, 16).unwrap_or(0)
}

#[tokio::test]
async fn concurrent_writers_keep_order_and_tx_boundaries() {
    let env = Env::new("pgsrc_order", serde_json::json!({})).await;
    let c = env.sql().await;
    c.batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, writer int, n int)")
        .await
        .unwrap();
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(30)).await;
    const WRITERS: i64 = 4;
    const TXS: i64 = 40;
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let db = env.db.clone();
        handles.push(tokio::spawn(async move {
            let c = pg_connect(&db).await;
            for i in 0..TXS {
                let a = w * 1_000_000 + i * 2;
                c.batch_execute(&format!(
                    "BEGIN; INSERT INTO t VALUES ({a}, {w}, 0); UPDATE t SET n = n + 1 WHERE id = {a};
                     INSERT INTO t VALUES ({}, {w}, 0); COMMIT;",
                    a + 1
                ))
                .await
                .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let expected = (WRITERS * TXS * 3) as usize;
    let events = read_envelopes(&env.stream(), expected, Duration::from_secs(60)).await;
    let failures = running.stop().await;
    assert!(failures.is_empty());
    assert_eq!(events.len(), expected);
    for w in events.windows(2) {
        assert!(
            pos(&w[0]) < pos(&w[1]),
            "positions not increasing: {} then {}",
            pos(&w[0]),
            pos(&w[1])
        );
    }
    let mut by_tx: BTreeMap<String, Vec<&Json>> = BTreeMap::new();
    for e in &events {
        by_tx
            .entry(format!(
                "{}@{}",
                e["source"]["tx"]["id"], e["source"]["tx"]["commit_pos"]
            ))
            .or_default()
            .push(e);
    }
    assert_eq!(by_tx.len(), (WRITERS * TXS) as usize);
    for (tx, evs) in &by_tx {
        assert_eq!(evs.len(), 3, "tx {tx}");
        let ops: Vec<&str> = evs.iter().map(|e| op(e)).collect();
        assert_eq!(ops, ["c", "u", "c"], "tx {tx}");
        for (i, e) in evs.iter().enumerate() {
            assert_eq!(e["source"]["tx"]["seq"].as_u64(), Some(i as u64 + 1));
            assert_eq!(
                e["source"]["tx"]["last"].as_bool().unwrap_or(false),
                i == 2,
                "tx {tx} event {i}"
            );
        }
    }
    env.cleanup().await;
}

/// Applies envelopes in stream order to a map key → row.
fn replay(events: &[Json]) -> BTreeMap<String, Json> {
    let mut state = BTreeMap::new();
    for e in events {
        let table = e["source"]["table"].as_str().unwrap_or("");
        match op(e) {
            "r" | "c" | "u" => {
                if let Some(before) = e["before"].as_object() {
                    if let Some(id) = before.get("id") {
                        if Some(id) != e["after"].get("id") {
                            state.remove(&format!("{table}:{id}"));
                        }
                    }
                }
                state.insert(format!("{table}:{}", e["after"]["id"]), e["after"].clone());
            }
            "d" => {
                state.remove(&format!("{table}:{}", e["before"]["id"]));
            }
            _ => {}
        }
    }
    state
}

#[tokio::test]
async fn snapshot_with_concurrent_writers_is_exact() {
    let env = Env::new(
        "pgsrc_snap",
        serde_json::json!({"snapshot_chunk_size": 700, "snapshot_parallelism": 2}),
    )
    .await;
    let c = env.sql().await;
    c.batch_execute(
        "CREATE TABLE big (id int PRIMARY KEY, v int, pad text);
         INSERT INTO big SELECT g, 0, repeat('p', 50) FROM generate_series(1, 20000) g;
         CREATE TABLE nopk (id int, v int);
         ALTER TABLE nopk REPLICA IDENTITY FULL;
         INSERT INTO nopk SELECT g, 0 FROM generate_series(1, 3000) g;
         ANALYZE big; ANALYZE nopk;",
    )
    .await
    .unwrap();
    // Writers start before the source and keep going through the snapshot.
    let stop_writers = CancellationToken::new();
    let mut writers = Vec::new();
    for w in 0..2i64 {
        let db = env.db.clone();
        let stop = stop_writers.clone();
        writers.push(tokio::spawn(async move {
            let c = pg_connect(&db).await;
            let mut ops = 0usize;
            let mut i = 0i64;
            while !stop.is_cancelled() {
                i += 1;
                let new_id = 100_000 + w * 1_000_000 + i;
                let upd = (i * 7919 + w * 13) % 20_000 + 1;
                c.batch_execute(&format!(
                    "BEGIN; INSERT INTO big VALUES ({new_id}, 1, 'new'); UPDATE big SET v = v + 1 WHERE id = {upd};
                     INSERT INTO nopk VALUES ({new_id}, 1); COMMIT;"
                ))
                .await
                .unwrap();
                ops += 3;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            ops
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_writers.cancel();
    let mut streamed_ops = 0usize;
    for w in writers {
        streamed_ops += w.await.unwrap();
    }
    let rows_now: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM big) + (SELECT count(*) FROM nopk)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Every row exactly once as r-or-c: r rows + c rows == rows in the tables (no deletes).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut events;
    loop {
        events = read_envelopes(&env.stream(), usize::MAX, Duration::from_secs(3)).await;
        let rc = events.iter().filter(|e| matches!(op(e), "r" | "c")).count() as i64;
        if rc >= rows_now || Instant::now() > deadline {
            break;
        }
    }
    let failures = running.stop().await;
    assert!(
        failures.is_empty(),
        "{:?}",
        failures.iter().map(|f| &f.message).collect::<Vec<_>>()
    );
    let snapshot_rows = events.iter().filter(|e| op(e) == "r").count();
    assert!(snapshot_rows >= 23_000, "snapshot rows {snapshot_rows}");
    assert!(streamed_ops > 0);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in events.iter().filter(|e| matches!(op(e), "r" | "c")) {
        *seen
            .entry(format!("{}:{}", e["source"]["table"], e["after"]["id"]))
            .or_default() += 1;
    }
    let dup: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).take(5).collect();
    assert!(dup.is_empty(), "rows seen more than once: {dup:?}");
    assert_eq!(
        seen.len() as i64,
        rows_now,
        "every row exactly once as r-or-c"
    );
    // Snapshot rows all sort before every streamed change and are flagged.
    let last_snapshot = events
        .iter()
        .filter(|e| op(e) == "r")
        .map(pos)
        .max()
        .unwrap_or_default()
        .to_string();
    let first_stream = events
        .iter()
        .filter(|e| op(e) != "r")
        .map(pos)
        .min()
        .unwrap_or_default()
        .to_string();
    assert!(
        last_snapshot < first_stream,
        "{last_snapshot} !< {first_stream}"
    );
    assert!(events
        .iter()
        .filter(|e| op(e) == "r")
        .all(|e| e["source"]["snapshot"] == true && e["source"]["tx"]["last"] == true));
    // The state reconstructed from the stream equals the tables.
    let state = replay(&events);
    let rows = c
        .query(
            "SELECT 'big' AS t, id, v, pad FROM big UNION ALL SELECT 'nopk', id, v, NULL FROM nopk",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(state.len(), rows.len());
    for r in rows {
        let t: &str = r.get(0);
        let id: i32 = r.get(1);
        let v: i32 = r.get(2);
        let got = state
            .get(&format!("{t}:{id}"))
            .unwrap_or_else(|| panic!("{t}:{id} missing"));
        assert_eq!(got["v"], v, "{t}:{id}");
        if t == "big" {
            let pad: &str = r.get(3);
            assert_eq!(got["pad"], pad);
        }
    }
    env.cleanup().await;
}

#[tokio::test]
async fn scram_login_and_wrong_password() {
    use tidemark_core::error::Classify as _;
    use tidemark_postgres_source::client::ReplicationClient;
    use tidemark_postgres_source::config::PgSettings;
    let env = Env::new("pgsrc_scram", serde_json::json!({})).await;
    let settings = |password: &str| {
        let mut p = env.pipeline.clone();
        p.source.url = format!(
            "{}?sslmode=disable",
            common::pg_url_as("tidemark_scram", password, &env.db)
        );
        PgSettings::from_pipeline(&p).unwrap()
    };
    let mut good = ReplicationClient::connect(&settings("scram-secret"))
        .await
        .expect("SCRAM login");
    let sys = good.identify_system().await.unwrap();
    assert!(!sys.system_id.is_empty());
    assert_eq!(sys.dbname.as_deref(), Some(env.db.as_str()));
    good.close().await;
    // sslmode=prefer falls back to plain TCP on a server without TLS.
    let mut p = env.pipeline.clone();
    p.source.url = common::pg_url_as("tidemark_scram", "scram-secret", &env.db);
    let prefer = ReplicationClient::connect(&PgSettings::from_pipeline(&p).unwrap()).await;
    assert!(prefer.is_ok(), "{:?}", prefer.err());
    let err = ReplicationClient::connect(&settings("wrong"))
        .await
        .expect_err("wrong password must fail");
    assert_eq!(err.retry(), Retry::Definite, "{err}");
    assert_eq!(err.kind(), "auth");
    assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
    assert!(!err.to_string().contains("wrong"), "no secret in {err}");
    // A missing database is definite too; an unreachable port is transient.
    let mut p = env.pipeline.clone();
    p.source.url = format!(
        "{}?sslmode=disable",
        common::pg_url_as("tidemark_scram", "scram-secret", "no_such_db_x")
    );
    let e = ReplicationClient::connect(&PgSettings::from_pipeline(&p).unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        (e.sqlstate(), e.retry()),
        (Some("3D000"), Retry::Definite),
        "{e}"
    );
    p.source.url = "postgres://u@127.0.0.1:1/x?sslmode=disable".into();
    let e = ReplicationClient::connect(&PgSettings::from_pipeline(&p).unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.retry(), Retry::Transient, "{e}");
    // The probes say the same.
    let mut p = env.pipeline.clone();
    p.source.url = common::pg_url_as("tidemark_scram", "wrong", &env.db);
    let probes = tidemark_postgres_source::check::check(&p).await;
    assert!(
        probes
            .iter()
            .any(|pr| !pr.ok && pr.what.contains("authentication")),
        "{probes:?}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn check_probes_report_prerequisites() {
    let env = Env::new("pgsrc_check", serde_json::json!({})).await;
    let c = env.sql().await;
    c.batch_execute("CREATE TABLE ok_t (id int PRIMARY KEY); CREATE TABLE bad_t (v int);")
        .await
        .unwrap();
    let probes = tidemark_postgres_source::check::check(&env.pipeline).await;
    let find = |w: &str| {
        probes
            .iter()
            .find(|p| p.what.contains(w))
            .unwrap_or_else(|| panic!("no probe {w}: {probes:?}"))
    };
    assert!(find("wal_level").ok);
    assert!(find("replication connection").ok);
    assert!(find("replication privilege").ok);
    assert!(find("slot").ok);
    let bad = find("table public.bad_t");
    assert!(
        !bad.ok
            && bad
                .fix
                .as_deref()
                .unwrap_or("")
                .contains("REPLICA IDENTITY FULL"),
        "{bad:?}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn idle_slot_follows_other_databases_wal() {
    let env = Env::new("pgsrc_idle", serde_json::json!({"heartbeat_secs": 1})).await;
    let c = env.sql().await;
    c.batch_execute("CREATE TABLE quiet (id int PRIMARY KEY)")
        .await
        .unwrap();
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(30)).await;
    let busy = unique("pgsrc_busy");
    pg_create_db(&busy).await;
    let b = pg_connect(&busy).await;
    let started = Instant::now();
    let begin: String = b
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    b.batch_execute(
        "CREATE TABLE w (id int, pad text);
         INSERT INTO w SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 100000) g;",
    )
    .await
    .unwrap();
    let end: String = b
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let admin = pg_connect("postgres").await;
    let slot = tidemark_postgres_source::config::default_slot_name(&env.pipeline.name);
    let written: f64 = admin
        .query_one(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)::float8",
            &[&end, &begin],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        written > 100.0 * 1024.0 * 1024.0,
        "only {written} bytes of WAL written"
    );
    let advanced = wait_until(Duration::from_secs(45), || {
        let admin = &admin;
        let (end, slot) = (end.clone(), slot.clone());
        async move {
            admin
                .query_one(
                    "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2",
                    &[&end, &slot],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
        }
    })
    .await;
    let retained: f64 = admin
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        advanced,
        "idle slot did not advance past {end} (still {retained} bytes behind)"
    );
    assert!(
        retained < 16.0 * 1024.0 * 1024.0,
        "slot still retains {retained} bytes"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    let failures = running.stop().await;
    assert!(failures.is_empty());
    // Nothing was published for the other database.
    assert!(read_envelopes(&env.stream(), 1, Duration::from_secs(1))
        .await
        .is_empty());
    pg_drop_db(&busy).await;
    env.cleanup().await;
}

/// Inserts `n` rows into `t` in transactions of `per_tx` rows, slowly.
async fn slow_writer(db: String, from: i64, n: i64, per_tx: i64) {
    let c = pg_connect(&db).await;
    let mut i = from;
    while i < from + n {
        let hi = (i + per_tx).min(from + n);
        c.batch_execute(&format!(
            "INSERT INTO t SELECT g, 'row ' || g FROM generate_series({i}, {}) g",
            hi - 1
        ))
        .await
        .unwrap();
        i = hi;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn assert_exactly_once(events: &[Json], rows: usize) {
    let ids: HashSet<&str> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap_or(""))
        .collect();
    let positions: HashSet<&str> = events.iter().map(pos).collect();
    let keys: HashSet<String> = events.iter().map(|e| e["key"]["id"].to_string()).collect();
    assert_eq!(keys.len(), rows, "distinct rows");
    assert_eq!(
        ids.len(),
        events.len(),
        "duplicate envelope ids in the stream"
    );
    assert_eq!(positions.len(), rows, "distinct positions");
    assert_eq!(events.len(), rows, "messages in the stream");
}

#[tokio::test]
async fn restart_and_crash_resume_exactly_once() {
    let env = Env::new("pgsrc_resume", serde_json::json!({})).await;
    let c = env.sql().await;
    c.batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, v text)")
        .await
        .unwrap();
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(30)).await;
    let writer = tokio::spawn(slow_writer(env.db.clone(), 0, 6000, 20));
    // Graceful stop mid-stream, then restart.
    let stream = env.stream();
    wait_until(Duration::from_secs(30), || async {
        read_envelopes(&stream, 1000, Duration::from_millis(500))
            .await
            .len()
            >= 1000
    })
    .await;
    let failures = running.stop().await;
    assert!(failures.is_empty());
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(30)).await;
    // Crash mid-stream (no flush, no final status, connections just drop), then restart.
    wait_until(Duration::from_secs(30), || async {
        read_envelopes(&stream, 3000, Duration::from_millis(500))
            .await
            .len()
            >= 3000
    })
    .await;
    running.crash().await;
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(60)).await;
    writer.await.unwrap();
    let events = read_envelopes(&stream, 6000, Duration::from_secs(60)).await;
    let extra = read_envelopes(&stream, 6001, Duration::from_secs(2)).await;
    let failures = running.stop().await;
    assert!(
        failures.iter().all(|f| f.retry == Retry::Transient),
        "{:?}",
        failures.iter().map(|f| &f.message).collect::<Vec<_>>()
    );
    assert_eq!(extra.len(), 6000, "duplicates beyond the expected rows");
    assert_exactly_once(&events, 6000);
    env.cleanup().await;
}

#[tokio::test]
async fn resume_refuses_checkpoint_of_another_system() {
    let env = Env::new("pgsrc_sysid", serde_json::json!({"snapshot": "never"})).await;
    env.sql()
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let js = js().await;
    let state = open_state(&js).await;
    let key = tidemark_core::state::source_key(&env.pipeline.name);
    let fake = tidemark_postgres_source::SourceCheckpoint {
        system_id: "1".into(),
        timeline: 1,
        slot: tidemark_postgres_source::config::default_slot_name(&env.pipeline.name),
        lsn: "0/1000".into(),
        snapshot_done: true,
    };
    state.save(&key, &fake, None).await.unwrap();
    let running = start(&env.pipeline).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failures = running.stop().await;
    let f = failures.first().expect("the source must refuse to start");
    assert_eq!(f.retry, Retry::Definite);
    assert!(f.message.contains("reset"), "{}", f.message);
    env.cleanup().await;
}

/// Informal throughput figure (run by hand, ideally with `--release`):
/// `cargo test --test integration pg_source::throughput -- --ignored --nocapture`.
/// `TIDEMARK_BENCH_ROWS` overrides the row count (default 1,000,000, one transaction);
/// `TIDEMARK_BENCH_NULL=1` replaces JetStream by a sink that acknowledges at once, which
/// measures the source alone (walsender + decode + convert + encode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_one_big_transaction() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tidemark_core::source::Outgoing;
    let rows: i64 = std::env::var("TIDEMARK_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let null = std::env::var("TIDEMARK_BENCH_NULL").is_ok_and(|v| v == "1");
    let env = Env::new("pgsrc_bench", serde_json::json!({})).await;
    let mut p = env.pipeline.clone();
    p.source.url = format!("{}?sslmode=disable", common::pg_url(&env.db));
    let c = env.sql().await;
    c.batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, name text, qty int, at timestamptz)")
        .await
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let (running, null_task) = if null {
        let shutdown = CancellationToken::new();
        let health = Health::new();
        let js = js().await;
        let state = open_state(&js).await;
        let (outbox, mut rx) = Outbox::channel(1024);
        let (acked_tx, acked_rx) = watch::channel(None);
        let (n, b) = (count.clone(), bytes.clone());
        let sink = tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                match item {
                    Outgoing::Event(m) => {
                        n.fetch_add(1, Ordering::Relaxed);
                        b.fetch_add(m.payload.len() as u64, Ordering::Relaxed);
                    }
                    Outgoing::Checkpoint(c) => {
                        acked_tx.send_replace(Some(c));
                    }
                    Outgoing::Flush(r) => {
                        let _ = r.send(());
                    }
                }
            }
        });
        let ctx = SourceContext {
            pipeline: p.clone(),
            naming: Naming {
                pipeline: p.name.clone(),
                connector: "postgres",
                subject_prefix: p.subject_prefix.clone(),
            },
            outbox,
            acked: acked_rx,
            state,
            shutdown: shutdown.clone(),
            health: health.clone(),
        };
        let task = tokio::spawn(async move {
            match PostgresSource::run(ctx).await {
                Ok(()) => Vec::new(),
                Err(f) => vec![f],
            }
        });
        (
            Running {
                shutdown,
                health,
                task,
            },
            Some(sink),
        )
    } else {
        (start(&p).await, None)
    };
    running.wait_ready(Duration::from_secs(30)).await;
    let t0 = Instant::now();
    c.batch_execute(&format!(
        "INSERT INTO t SELECT g, 'name ' || g, g % 1000, now() FROM generate_series(1, {rows}) g"
    ))
    .await
    .unwrap();
    let committed = t0.elapsed();
    let js = js().await;
    let stream = env.stream();
    let mut first: Option<Duration> = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n = if null {
            count.load(Ordering::Relaxed)
        } else {
            js.get_stream(&stream)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .messages
        };
        if n > 0 && first.is_none() {
            first = Some(t0.elapsed());
        }
        if n as i64 >= rows || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = t0.elapsed();
    let first = first.unwrap_or(done);
    eprintln!(
        "throughput ({}): {rows} rows; insert+commit {:.2}s; first envelope after {:.2}s; all {} after {:.2}s; \
         {:.0} rows/s from commit, {:.0} rows/s from first envelope{}",
        if null { "source only" } else { "to JetStream" },
        committed.as_secs_f64(),
        first.as_secs_f64(),
        if null { "encoded" } else { "acked" },
        done.as_secs_f64(),
        rows as f64 / (done - committed).as_secs_f64(),
        rows as f64 / (done - first).as_secs_f64().max(0.001),
        if null {
            format!("; {:.0} bytes/envelope", bytes.load(Ordering::Relaxed) as f64 / rows as f64)
        } else {
            String::new()
        }
    );
    running.stop().await;
    if let Some(t) = null_task {
        let _ = t.await;
    }
    env.cleanup().await;
}

/// Number of messages in `stream` (0 when it does not exist yet).
async fn stream_len(stream: &str) -> u64 {
    match js().await.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

#[tokio::test]
async fn kill_9_of_the_daemon_loses_and_duplicates_nothing() {
    let env = Env::new("pgsrc_kill", serde_json::json!({})).await;
    env.sql()
        .await
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, v text)")
        .await
        .unwrap();
    open_state(&js().await).await;
    let config = format!(
        "[nats]\nurl = \"{}\"\n\n[metrics]\nlisten = \"\"\n\n[[pipelines]]\nname = \"{}\"\n\n  [pipelines.source]\n  \
         kind = \"postgres\"\n  url = \"{}\"\n  tables = [\"public.*\"]\n",
        common::NATS,
        env.pipeline.name,
        common::pg_url(&env.db)
    );
    let mut daemon = common::Daemon::start(&config);
    let writer = tokio::spawn(slow_writer(env.db.clone(), 0, 8000, 20));
    let stream = env.stream();
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stream_len(&stream).await >= 2000
        })
        .await,
        "daemon published nothing: {}",
        daemon.logs()
    );
    daemon.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.restart();
    writer.await.unwrap();
    let events = read_envelopes(&stream, 8000, Duration::from_secs(90)).await;
    let extra = read_envelopes(&stream, 8001, Duration::from_secs(3)).await;
    assert_eq!(daemon.terminate().await, 0, "{}", daemon.logs());
    assert_eq!(extra.len(), 8000, "duplicates beyond the expected rows");
    assert_exactly_once(&events, 8000);
    env.cleanup().await;
}

#[tokio::test]
async fn crash_during_snapshot_redoes_it() {
    let env = Env::new(
        "pgsrc_snapcrash",
        serde_json::json!({"snapshot_chunk_size": 200}),
    )
    .await;
    let c = env.sql().await;
    c.batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, 30000) g;")
        .await
        .unwrap();
    let running = start(&env.pipeline).await;
    let stream = env.stream();
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stream_len(&stream).await >= 1000
        })
        .await
    );
    running.crash().await;
    let kv = js().await.get_key_value(BUCKET).await.unwrap();
    let entry = kv
        .get(format!("source.{}", env.pipeline.name))
        .await
        .unwrap()
        .expect("checkpoint");
    let cp: Json = serde_json::from_slice(&entry).unwrap();
    assert_eq!(cp["snapshot_done"], false, "{cp}");
    // Rows the first attempt already published, deleted before the second: the changes between
    // the two attempts are never streamed, so only a truncate ahead of the redone snapshot
    // keeps them from lingering in the sinks.
    c.batch_execute("DELETE FROM t WHERE id <= 10")
        .await
        .unwrap();
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(120)).await;
    c.batch_execute("INSERT INTO t VALUES (30001, 'after')")
        .await
        .unwrap();
    let total = stream_len(&stream).await as usize + 1;
    let events = read_envelopes(&stream, total, Duration::from_secs(30)).await;
    let failures = running.stop().await;
    assert!(failures.iter().all(|f| f.retry == Retry::Transient));
    let last = events.last().expect("events");
    assert_eq!((op(last), last["key"]["id"].as_i64()), ("c", Some(30001)));
    // Two snapshots (grouped by consistent point); the redone one is complete on its own.
    let commit_pos = |e: &Json| e["source"]["tx"]["commit_pos"].to_string();
    let mut snapshots: HashMap<String, HashSet<i64>> = HashMap::new();
    for e in events.iter().filter(|e| op(e) == "r") {
        snapshots
            .entry(commit_pos(e))
            .or_default()
            .insert(e["key"]["id"].as_i64().unwrap_or(-1));
    }
    assert_eq!(
        snapshots.len(),
        2,
        "one interrupted and one complete snapshot"
    );
    let (redo_cp, redo_keys) = snapshots
        .iter()
        .find(|(_, keys)| keys.len() == 29_990)
        .expect("a complete second snapshot without the deleted rows");
    assert!(redo_keys.iter().all(|k| *k > 10 && *k <= 30_000));
    assert!(snapshots.values().any(|keys| keys.contains(&1)));
    // Exactly one truncate, a snapshot event of the redo, after every row of the first attempt
    // and before every row of the second.
    let truncates: Vec<usize> = (0..events.len())
        .filter(|&i| op(&events[i]) == "t")
        .collect();
    assert_eq!(truncates.len(), 1, "one truncate per table");
    let t = &events[truncates[0]];
    assert_eq!(t["source"]["snapshot"], true, "{t}");
    assert_eq!(&commit_pos(t), redo_cp, "{t}");
    assert_eq!(t["source"]["table"], "t");
    for (i, e) in events.iter().enumerate().filter(|(_, e)| op(e) == "r") {
        let redo = &commit_pos(e) == redo_cp;
        assert_eq!(
            i > truncates[0],
            redo,
            "event {i} {e} on the wrong side of the truncate"
        );
    }
    env.cleanup().await;
}
