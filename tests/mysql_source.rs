//! MySQL/MariaDB source against the real MariaDB and NATS: the type matrix
//! (every PROTOCOL-NOTES defect case) rendered identically by snapshot and
//! stream, transactions, key changes, TRUNCATE, ALTER, XA, statement-format
//! DML, a snapshot racing writers, restart and crash resume, a > 16 MiB
//! event, a purged/unknown GTID, duplicate server ids and the preflight.
//!
//! Each test has its own database, stream, KV key and replica server_id. The
//! source runs in-process with a hand-built `SourceContext` (outbox + real
//! publisher + real KV) under a tiny supervisor loop that, like the
//! daemon's, calls `run` again after an error.

use crate::common::{
    self, js, mysql_conn, mysql_create_db, mysql_drop_db, read_envelopes, unique, wait_until,
};
use mysql_async::prelude::Queryable as _;
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tidemark_core::config::{NatsConfig, PipelineConfig};
use tidemark_core::envelope::Naming;
use tidemark_core::error::{Failure, Retry};
use tidemark_core::health::Health;
use tidemark_core::publisher::Publisher;
use tidemark_core::source::{Outbox, Source, SourceContext};
use tidemark_core::state::StateStore;
use tidemark_core::CancellationToken;
use tidemark_mysql_source::{MysqlCheckpoint, MysqlSource};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const BUCKET: &str = "tidemark_state";

fn server_id() -> u32 {
    10_000 + (rand::random::<u32>() % 2_000_000_000)
}

/// One pipeline's names and servers, cleaned up by [`Env::cleanup`].
struct Env {
    db: String,
    pipeline: PipelineConfig,
}

impl Env {
    async fn new(prefix: &str, extra: Json) -> Env {
        let db = unique(prefix);
        mysql_create_db(&db).await;
        let mut source = serde_json::json!({
            "kind": "mysql",
            "url": common::mysql_url(&db),
            "tables": [format!("{db}.*")],
            "server_id": server_id(),
            "snapshot_chunk_size": 100,
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

    async fn sql(&self) -> mysql_async::Conn {
        mysql_conn(&self.db).await
    }

    async fn exec(&self, statements: &[&str]) {
        let mut c = self.sql().await;
        for s in statements {
            c.query_drop(*s)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        let _ = c.disconnect().await;
    }

    async fn cleanup(self) {
        mysql_drop_db(&self.db).await;
        common::delete_stream(&self.stream()).await;
        common::purge_state(&self.pipeline.name).await;
    }
}

/// Opens the state bucket (creating its stream the way async-nats would, which it cannot do
/// itself against nats-server 2.9).
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

/// A source under a minimal supervisor loop.
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
                    let definite = f.retry == Retry::Definite;
                    failures.push(f);
                    if definite {
                        break;
                    }
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
    let publishing = tokio::spawn(Publisher::new(js, 256, &p.name).run(rx, acked_tx));
    let ctx = SourceContext {
        pipeline: p.clone(),
        naming: Naming {
            pipeline: p.name.clone(),
            connector: "mysql",
            subject_prefix: p.subject_prefix.clone(),
        },
        outbox,
        acked: acked_rx,
        state,
        shutdown: shutdown.clone(),
        health: health.clone(),
    };
    let result = MysqlSource::run(ctx).await;
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

    async fn stop(self) -> Vec<Failure> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(40), self.task)
            .await
            .expect("source stops within 40 s")
            .expect("source task")
    }

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

fn assert_ordered_and_unique(events: &[Json]) {
    let mut ids = HashSet::new();
    for e in events {
        assert!(
            ids.insert(e["id"].as_str().unwrap_or("").to_owned()),
            "duplicate id {}",
            e["id"]
        );
    }
    let streamed: Vec<&str> = events
        .iter()
        .filter(|e| e["source"]["snapshot"] == false)
        .map(pos)
        .collect();
    for w in streamed.windows(2) {
        assert!(
            w[0] < w[1],
            "positions out of order: {} then {}",
            w[0],
            w[1]
        );
    }
}

/// Waits until the stream holds `n` envelopes and returns them.
async fn expect_events(env: &Env, n: usize) -> Vec<Json> {
    let events = read_envelopes(&env.stream(), n, Duration::from_secs(30)).await;
    assert_eq!(
        events.len(),
        n,
        "expected {n} envelopes, got {}: {:#?}",
        events.len(),
        events.last()
    );
    events
}

const TYPES_TABLE: &str = "CREATE TABLE types (
    id INT PRIMARY KEY,
    ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT, mu MEDIUMINT UNSIGNED,
    i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED, b1 TINYINT(1),
    d DECIMAL(65,30), d2 DECIMAL(10,2), f FLOAT, db DOUBLE,
    bt BIT(10), b64 BIT(64), y YEAR, y0 YEAR,
    dt DATE, dz DATE, dtm DATETIME(6), dtm0 DATETIME, dtz DATETIME,
    ts TIMESTAMP(3) NULL, ts0 TIMESTAMP NULL,
    t1 TIME(1), t2 TIME(2), t6 TIME(6), t0 TIME,
    c CHAR(5), cu CHAR(3) CHARACTER SET utf8mb4, vc VARCHAR(300),
    l1 VARCHAR(10) CHARACTER SET latin1, tx TEXT, ltx LONGTEXT CHARACTER SET latin1,
    bn BINARY(4), vb VARBINARY(10), bl BLOB,
    e ENUM('small','medium','large'), e0 ENUM('a','b'), s SET('x','y','z'), s0 SET('x','y'),
    j LONGTEXT CHECK (json_valid(j)), jn JSON, g GEOMETRY, n INT NULL
)";

fn types_insert(id: u32) -> String {
    format!(
        "INSERT INTO types VALUES ({id},
        -128, 255, -32768, -1, 16777215, -2147483648, 4294967295,
        -9223372036854775808, 18446744073709551615, 1,
        '-12345678901234567890123456789012345.123456789012345678901234567890', 0.5, 1.1, 0.1,
        b'1010101010', b'1000000000000000000000000000000000000000000000000000000000000001', 2024, 0,
        '2024-02-29', '0000-00-00', '2024-02-29 13:45:00.123456', '2024-02-29 13:45:00', '0000-00-00 00:00:00',
        '2024-02-29 18:45:00.123', '0000-00-00 00:00:00',
        '-00:00:01.5', '-00:00:01.25', '-838:59:59.000000', '12:34:56',
        'ab  ', 'é', REPEAT('x', 300), 'x€', 'text', 'Grüße €',
        'a', X'00FF00', X'DEADBEEF',
        'medium', 'zzz', 'x,z', '',
        '{{\"a\": [1, 2.5, \"x\"]}}', '[true, null]', ST_GeomFromText('POINT(1 2)'), NULL)"
    )
}

fn expected_types() -> Json {
    let parts = [
        serde_json::json!({
            "ti": -128, "tu": 255, "si": -32768, "mi": -1, "mu": 16777215,
            "i": -2147483648i64, "iu": 4294967295u64, "bi": i64::MIN, "bu": u64::MAX, "b1": true,
        }),
        serde_json::json!({
            "d": "-12345678901234567890123456789012345.123456789012345678901234567890",
            "d2": "0.50", "f": 1.1, "db": 0.1,
            "bt": "1010101010",
            "b64": "1000000000000000000000000000000000000000000000000000000000000001",
            "y": 2024, "y0": 0,
        }),
        serde_json::json!({
            "dt": "2024-02-29", "dz": null, "dtm": "2024-02-29T13:45:00.123456",
            "dtm0": "2024-02-29T13:45:00", "dtz": null, "ts": "2024-02-29T13:45:00.123Z", "ts0": null,
            "t1": "-00:00:01.5", "t2": "-00:00:01.25", "t6": "-838:59:59.000000", "t0": "12:34:56",
        }),
        serde_json::json!({
            "c": "ab", "cu": "é", "vc": "x".repeat(300), "l1": "x€", "tx": "text", "ltx": "Grüße €",
            "bn": "YQAAAA==", "vb": "AP8A", "bl": "3q2+7w==",
        }),
        serde_json::json!({
            "e": "medium", "e0": "", "s": ["x", "z"], "s0": [],
            "j": {"a": [1, 2.5, "x"]}, "jn": [true, null], "n": null,
        }),
    ];
    let mut all = serde_json::Map::new();
    for p in parts {
        if let Json::Object(m) = p {
            all.extend(m);
        }
    }
    Json::Object(all)
}

/// The after image without the key column and the geometry (compared between paths only).
fn comparable(after: &Json) -> Json {
    let mut m = after.as_object().cloned().unwrap_or_default();
    m.remove("id");
    m.remove("g");
    Json::Object(m)
}

#[tokio::test]
async fn type_matrix_snapshot_and_stream_render_identically() {
    let env = Env::new("mysrc_types", serde_json::json!({"tinyint1_as_bool": true})).await;
    let setup = [
        "SET SESSION sql_mode = ''",
        "SET SESSION time_zone = '+05:00'",
        TYPES_TABLE,
    ];
    env.exec(&setup).await;
    let insert1 = types_insert(1);
    env.exec(&[
        "SET SESSION sql_mode = ''",
        "SET SESSION time_zone = '+05:00'",
        &insert1,
    ])
    .await;
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(60)).await;
    let insert2 = types_insert(2);
    env.exec(&[
        "SET SESSION sql_mode = ''",
        "SET SESSION time_zone = '+05:00'",
        &insert2,
    ])
    .await;
    let events = expect_events(&env, 2).await;
    let (snap, streamed) = (&events[0], &events[1]);
    assert_eq!((op(snap), op(streamed)), ("r", "c"));
    assert_eq!(snap["source"]["snapshot"], true);
    assert_eq!(snap["source"]["tx"]["last"], true);
    assert_eq!(streamed["source"]["tx"]["last"], true);
    assert_eq!(streamed["source"]["connector"], "mysql");
    assert_eq!(streamed["source"]["db"], env.db.as_str());
    assert_eq!(streamed["source"]["schema"], env.db.as_str());
    assert!(pos(snap) < pos(streamed));
    let expected = expected_types();
    assert_eq!(comparable(&snap["after"]), expected, "snapshot rendering");
    assert_eq!(
        comparable(&streamed["after"]),
        expected,
        "streamed rendering"
    );
    assert_eq!(snap["after"]["g"], streamed["after"]["g"]);
    assert!(snap["after"]["g"].as_str().is_some_and(|g| !g.is_empty()));
    assert_eq!(
        snap["schema"], streamed["schema"],
        "snapshot and stream describe the table alike"
    );
    let types: BTreeMap<String, String> = streamed["schema"]["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_owned(),
                c["type"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for (col, ty) in [
        ("bu", "uint64"),
        ("b1", "bool"),
        ("ti", "int64"),
        ("d", "decimal"),
        ("bt", "bits"),
        ("dtm", "timestamp"),
        ("ts", "timestamptz"),
        ("t1", "time"),
        ("bn", "bytes"),
        ("s", "set"),
        ("e", "string"),
        ("j", "json"),
        ("jn", "json"),
        ("ltx", "string"),
        ("bl", "bytes"),
    ] {
        assert_eq!(
            types.get(col).map(String::as_str),
            Some(ty),
            "type of {col}"
        );
    }
    assert_eq!(streamed["key"], serde_json::json!({"id": 2}));
    assert!(running.stop().await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn transactions_key_change_truncate_alter_xa_and_statement_dml() {
    let env = Env::new("mysrc_tx", serde_json::json!({})).await;
    env.exec(&[
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))",
        "CREATE TABLE m (id INT PRIMARY KEY) ENGINE=MyISAM",
    ])
    .await;
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(60)).await;
    env.exec(&[
        "BEGIN",
        "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
        "INSERT INTO t VALUES (3, 'c')",
        "UPDATE t SET v = 'bb' WHERE id = 2",
        "COMMIT",
        "UPDATE t SET id = 10 WHERE id = 1",
        "DELETE FROM t WHERE id = 3",
        "INSERT INTO m VALUES (1)",
        "TRUNCATE TABLE t",
        "ALTER TABLE t ADD COLUMN extra INT DEFAULT 7",
        "INSERT INTO t VALUES (20, 'x', 8)",
        "SET SESSION binlog_format = 'STATEMENT'",
        "INSERT INTO t VALUES (30, 'stmt', 1)",
        "SET SESSION binlog_format = 'ROW'",
    ])
    .await;
    // The XA transaction stays on its own connection until XA COMMIT: committing it from
    // another one races the server's detaching of the first (XAER_NOTA now and then).
    // XIDs are server-wide: one of this test's own.
    let xid = format!("'{}'", env.db);
    let mut xa = env.sql().await;
    for stmt in [
        format!("XA START {xid}"),
        "INSERT INTO t VALUES (40, 'xa', 1)".to_owned(),
        format!("XA END {xid}"),
        format!("XA PREPARE {xid}"),
    ] {
        xa.query_drop(&stmt)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    env.exec(&["INSERT INTO t VALUES (41, 'plain', 1)"]).await;
    xa.query_drop(format!("XA COMMIT {xid}"))
        .await
        .unwrap_or_else(|e| panic!("XA COMMIT: {e}"));
    let _ = xa.disconnect().await;
    env.exec(&["INSERT INTO t VALUES (42, 'after', 1)"]).await;
    let events = expect_events(&env, 12).await;
    assert_ordered_and_unique(&events);
    let ops: Vec<&str> = events.iter().map(op).collect();
    assert_eq!(
        ops,
        ["c", "c", "c", "u", "u", "d", "c", "t", "c", "c", "c", "c"]
    );
    // One transaction: one tx id, seq 1..4, last only on the final event.
    let tx = &events[0]["source"]["tx"];
    for (i, e) in events[..4].iter().enumerate() {
        assert_eq!(e["source"]["tx"]["id"], tx["id"]);
        assert_eq!(e["source"]["tx"]["seq"], i as u64 + 1);
        assert_eq!(e["source"]["tx"]["last"].as_bool().unwrap_or(false), i == 3);
    }
    assert!(
        tx["id"]
            .as_str()
            .is_some_and(|id| id.split('-').count() == 3),
        "GTID tx id: {tx}"
    );
    assert_ne!(events[4]["source"]["tx"]["id"], tx["id"]);
    // Key change: one update with the old key in before.
    let key_change = &events[4];
    assert_eq!(key_change["before"]["id"], 1);
    assert_eq!(key_change["after"]["id"], 10);
    assert_eq!(key_change["key"], serde_json::json!({"id": 10}));
    assert_eq!(events[5]["before"], serde_json::json!({"id": 3, "v": "c"}));
    assert_eq!(events[5]["after"], Json::Null);
    // MyISAM (non-transactional, ends with a COMMIT query).
    assert_eq!(events[6]["source"]["table"], "m");
    assert_eq!(events[6]["source"]["tx"]["last"], true);
    // TRUNCATE.
    assert_eq!(events[7]["source"]["table"], "t");
    assert_eq!(events[7]["key"], Json::Null);
    // ALTER then insert: the new column is there and the schema version changed.
    assert_eq!(
        events[8]["after"],
        serde_json::json!({"id": 20, "v": "x", "extra": 8})
    );
    assert_ne!(
        events[8]["schema"]["version"],
        events[0]["schema"]["version"]
    );
    // The statement-format insert (30) was not captured; 41 committed before the XA commit.
    let ids: Vec<i64> = events[9..]
        .iter()
        .map(|e| e["after"]["id"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(ids, [41, 40, 42]);
    let xa = &events[10];
    assert_eq!(xa["source"]["tx"]["last"], true);
    assert_ne!(xa["source"]["tx"]["id"], events[9]["source"]["tx"]["id"]);
    assert!(running.stop().await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn snapshot_under_concurrent_writers_has_no_gap_and_no_overlap() {
    let env = Env::new("mysrc_snap", serde_json::json!({})).await;
    env.exec(&[
        "CREATE TABLE s (id INT PRIMARY KEY, v INT NOT NULL)",
        "INSERT INTO s SELECT seq, 0 FROM seq_1_to_3000",
    ])
    .await;
    let mut writer_conn = env.sql().await;
    let writer = tokio::spawn(async move {
        for i in 0..600u32 {
            let stmt = match i % 3 {
                0 => format!("INSERT INTO s VALUES ({}, 1)", 10_000 + i),
                1 => format!("UPDATE s SET v = v + 1 WHERE id = {}", 1 + (i * 7) % 3000),
                _ => format!("DELETE FROM s WHERE id = {}", 2 + (i * 13) % 3000),
            };
            writer_conn.query_drop(stmt).await.expect("writer");
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = writer_conn.disconnect().await;
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let running = start(&env.pipeline).await;
    writer.await.expect("writer task");
    running.wait_ready(Duration::from_secs(60)).await;
    // Wait until the stream stops growing.
    let mut last = 0;
    let events = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ev = read_envelopes(&env.stream(), usize::MAX, Duration::from_secs(3)).await;
        if ev.len() == last && last > 0 {
            break ev;
        }
        last = ev.len();
    };
    assert_ordered_and_unique(&events);
    let mut state: BTreeMap<i64, i64> = BTreeMap::new();
    let mut snapshot_done = false;
    for e in &events {
        let key = |img: &Json| img["id"].as_i64().expect("id");
        match op(e) {
            "r" => {
                assert!(!snapshot_done, "snapshot row after a streamed change");
                assert!(
                    state
                        .insert(key(&e["after"]), e["after"]["v"].as_i64().unwrap_or(-1))
                        .is_none(),
                    "snapshot row twice"
                );
            }
            "c" => {
                snapshot_done = true;
                let k = key(&e["after"]);
                assert!(
                    state
                        .insert(k, e["after"]["v"].as_i64().unwrap_or(-1))
                        .is_none(),
                    "overlap: insert of {k} already in the snapshot"
                );
            }
            "u" => {
                snapshot_done = true;
                let k = key(&e["before"]);
                assert!(state.remove(&k).is_some(), "gap: update of {k} never seen");
                state.insert(key(&e["after"]), e["after"]["v"].as_i64().unwrap_or(-1));
            }
            "d" => {
                snapshot_done = true;
                let k = key(&e["before"]);
                assert!(state.remove(&k).is_some(), "gap: delete of {k} never seen");
            }
            other => panic!("unexpected op {other}"),
        }
    }
    let mut c = env.sql().await;
    let rows: Vec<(i64, i64)> = c
        .query("SELECT id, v FROM s ORDER BY id")
        .await
        .expect("select");
    let _ = c.disconnect().await;
    let table: BTreeMap<i64, i64> = rows.into_iter().collect();
    assert_eq!(state.len(), table.len());
    assert!(state == table, "replayed events differ from the table");
    assert!(running.stop().await.is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_snapshot_redoes_it_after_a_truncate() {
    let env = Env::new("mysrc_snapcrash", serde_json::json!({})).await;
    env.exec(&[
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))",
        "INSERT INTO t SELECT seq, 'v' FROM seq_1_to_50000",
    ])
    .await;
    let running = start(&env.pipeline).await;
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stream_len(&env.stream()).await >= 500
        })
        .await
    );
    running.crash().await;
    let kv = js().await.get_key_value(BUCKET).await.expect("bucket");
    let entry = kv
        .get(format!("source.{}", env.pipeline.name))
        .await
        .expect("kv get")
        .expect("a checkpoint marking the unfinished snapshot");
    let cp: MysqlCheckpoint = serde_json::from_slice(&entry).expect("checkpoint json");
    assert!(!cp.snapshot_done, "{cp:?}");
    // Published by the first attempt, deleted before the second: the redo must not leave them
    // in a sink (its truncate does that), and must not contain them.
    env.exec(&["DELETE FROM t WHERE id <= 10"]).await;
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(120)).await;
    env.exec(&["INSERT INTO t VALUES (50001, 'after')"]).await;
    let total = stream_len(&env.stream()).await as usize + 1;
    let events = read_envelopes(&env.stream(), total, Duration::from_secs(30)).await;
    assert!(running.stop().await.is_empty());
    let last = events.last().expect("events");
    assert_eq!((op(last), last["after"]["id"].as_i64()), ("c", Some(50001)));
    let truncates: Vec<usize> = (0..events.len())
        .filter(|&i| op(&events[i]) == "t")
        .collect();
    assert_eq!(truncates.len(), 1, "one truncate for the one table");
    let cut = truncates[0];
    assert_eq!(events[cut]["source"]["snapshot"], true, "{}", events[cut]);
    let ids = |range: &[Json]| -> Vec<i64> {
        range
            .iter()
            .filter(|e| op(e) == "r")
            .map(|e| e["after"]["id"].as_i64().unwrap_or(-1))
            .collect()
    };
    let first = ids(&events[..cut]);
    let redo = ids(&events[cut + 1..]);
    assert!(first.contains(&1), "the first attempt published row 1");
    assert_eq!(
        redo,
        (11..=50_000).collect::<Vec<i64>>(),
        "the redone snapshot"
    );
    assert!(pos(&events[cut]) < pos(&events[cut + 1]));
    env.cleanup().await;
}

#[tokio::test]
async fn restart_and_crash_resume_every_row_exactly_once() {
    let env = Env::new("mysrc_resume", serde_json::json!({"snapshot": "never"})).await;
    env.exec(&["CREATE TABLE r (id INT PRIMARY KEY, v VARCHAR(10))"])
        .await;
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(60)).await;
    let mut c = env.sql().await;
    for i in 1..=100 {
        c.query_drop(format!("INSERT INTO r VALUES ({i}, 'a')"))
            .await
            .expect("insert");
    }
    // Graceful stop and restart.
    assert!(running.stop().await.is_empty());
    for i in 101..=150 {
        c.query_drop(format!("INSERT INTO r VALUES ({i}, 'b')"))
            .await
            .expect("insert");
    }
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(60)).await;
    for i in 151..=250 {
        c.query_drop(format!("INSERT INTO r VALUES ({i}, 'c')"))
            .await
            .expect("insert");
    }
    // Crash: checkpoints lag behind what was published; the restart re-reads and dedups.
    running.crash().await;
    for i in 251..=300 {
        c.query_drop(format!("INSERT INTO r VALUES ({i}, 'd')"))
            .await
            .expect("insert");
    }
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(60)).await;
    let _ = c.disconnect().await;
    let events = expect_events(&env, 300).await;
    // Nothing beyond the 300.
    let more = read_envelopes(&env.stream(), 301, Duration::from_secs(3)).await;
    assert_eq!(more.len(), 300, "duplicates reached the stream");
    assert_ordered_and_unique(&events);
    let ids: Vec<i64> = events
        .iter()
        .map(|e| e["after"]["id"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(ids, (1..=300).collect::<Vec<i64>>());
    assert!(running.stop().await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn event_over_16_mib_does_not_kill_the_stream() {
    let env = Env::new("mysrc_big", serde_json::json!({})).await;
    // Only `small` is captured: a 20 MiB envelope would exceed NATS' max_payload anyway.
    let mut p = env.pipeline.clone();
    p.source.tables = vec![format!("{}.small", env.db)];
    let env = Env {
        db: env.db,
        pipeline: p,
    };
    env.exec(&[
        "CREATE TABLE big (id INT PRIMARY KEY, b LONGBLOB)",
        "CREATE TABLE small (id INT PRIMARY KEY)",
    ])
    .await;
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(60)).await;
    env.exec(&[
        "INSERT INTO big VALUES (1, REPEAT('x', 20 * 1024 * 1024))",
        "INSERT INTO small VALUES (1)",
    ])
    .await;
    let events = expect_events(&env, 1).await;
    assert_eq!(events[0]["source"]["table"], "small");
    assert!(running.stop().await.is_empty());
    env.cleanup().await;
}

/// The server's binlog position and GTID position right now, and its server_id.
async fn master_position(c: &mut mysql_async::Conn) -> (String, u64, String, u32) {
    let (file, pos): (String, u64) = c
        .query_first("SHOW MASTER STATUS")
        .await
        .expect("master status")
        .map(|row: mysql_async::Row| {
            (
                row.get(0).unwrap_or_default(),
                row.get(1).unwrap_or_default(),
            )
        })
        .expect("a binlog");
    let (gtid, server): (String, u32) = c
        .query_first("SELECT @@gtid_binlog_pos, @@server_id")
        .await
        .expect("gtid position")
        .expect("a row");
    (file, pos, gtid, server)
}

/// Stores `c` as the pipeline's checkpoint.
async fn store_checkpoint(env: &Env, c: &MysqlCheckpoint) {
    let state = open_state(&js().await).await;
    state
        .save(
            &tidemark_core::state::source_key(&env.pipeline.name),
            c,
            None,
        )
        .await
        .expect("save checkpoint");
}

/// A MariaDB checkpoint taken on `server_id`.
fn checkpoint(gtid_state: String, file: String, pos: u64, server_id: u32) -> MysqlCheckpoint {
    MysqlCheckpoint {
        gtid_state,
        file,
        pos,
        snapshot_done: true,
        flavour: None,
        server_id: Some(server_id),
        server_uuid: None,
        ts_ms: 0,
    }
}

/// The source's last failure once it gave up.
async fn definite_failure(env: &Env) -> Failure {
    let running = start(&env.pipeline).await;
    let mut failures = tokio::time::timeout(Duration::from_secs(60), running.task)
        .await
        .expect("source gives up on a definite error")
        .expect("task");
    let f = failures.pop().expect("a failure");
    assert_eq!(f.retry, Retry::Definite, "{}", f.message);
    assert!(f.message.contains("Re-snapshot"), "{}", f.message);
    // The message names the state store's own bucket and the pipeline's key.
    let delete = format!(
        "nats kv del {BUCKET} {}",
        tidemark_core::state::source_key(&env.pipeline.name)
    );
    assert!(f.message.contains(&delete), "{}", f.message);
    f
}

/// MariaDB resumes by file/pos when the checkpoint was taken on this server (a direct seek;
/// `@slave_connect_state` scans the binlog file from its start), and by GTID otherwise. The
/// checkpoint here holds a GTID one transaction *behind* its file/pos, so the two paths differ:
/// by file/pos only row 2 streams, by GTID rows 1 and 2.
#[tokio::test]
async fn resume_seeks_by_file_pos_on_the_same_server_and_by_gtid_after_a_server_change() {
    for same_server in [true, false] {
        let env = Env::new("mysrc_seek", serde_json::json!({"snapshot": "never"})).await;
        env.exec(&["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
        let mut c = env.sql().await;
        let (_, _, gtid_before, server) = master_position(&mut c).await;
        c.query_drop("INSERT INTO t VALUES (1)")
            .await
            .expect("insert");
        let (file, pos, _, _) = master_position(&mut c).await;
        c.query_drop("INSERT INTO t VALUES (2)")
            .await
            .expect("insert");
        let _ = c.disconnect().await;
        let taken_on = if same_server { server } else { server + 1 };
        store_checkpoint(&env, &checkpoint(gtid_before, file, pos, taken_on)).await;
        let running = start(&env.pipeline).await;
        running.wait_ready(Duration::from_secs(60)).await;
        let want = if same_server { vec![2] } else { vec![1, 2] };
        let events = expect_events(&env, want.len()).await;
        let more = read_envelopes(&env.stream(), want.len() + 1, Duration::from_secs(2)).await;
        assert_eq!(
            more.len(),
            want.len(),
            "same server: {same_server}: {more:#?}"
        );
        let ids: Vec<i64> = events
            .iter()
            .map(|e| e["after"]["id"].as_i64().unwrap_or(-1))
            .collect();
        assert_eq!(ids, want, "same server: {same_server}");
        assert!(running.stop().await.is_empty());
        env.cleanup().await;
    }
}

/// A GTID the server never had (by GTID: another server_id in the checkpoint) is a definite
/// error asking for a re-snapshot, never a replay from the oldest binlog.
#[tokio::test]
async fn unknown_gtid_is_a_definite_error_asking_for_a_resnapshot() {
    let env = Env::new("mysrc_purged", serde_json::json!({})).await;
    env.exec(&["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let mut c = env.sql().await;
    let (file, _, _, server) = master_position(&mut c).await;
    let _ = c.disconnect().await;
    // Taken on another server: resumed by GTID, which this server does not have.
    let fake = checkpoint(format!("0-{server}-4000000000"), file, 4, server + 1);
    store_checkpoint(&env, &fake).await;
    assert_eq!(definite_failure(&env).await.kind, "binlog_purged");
    env.cleanup().await;
}

/// A file/pos of this server whose binlog does not continue the checkpoint's GTIDs (the binlog
/// was reset or replaced since: RESET MASTER, a restored backup) is a definite error too.
#[tokio::test]
async fn file_pos_that_does_not_continue_the_checkpoint_gtid_is_a_definite_error() {
    let env = Env::new("mysrc_diverged", serde_json::json!({})).await;
    env.exec(&["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let mut c = env.sql().await;
    let (file, pos, gtid, server) = master_position(&mut c).await;
    c.query_drop("INSERT INTO t VALUES (1)")
        .await
        .expect("insert");
    let _ = c.disconnect().await;
    // The checkpoint claims this server's domain 0 already stands far beyond its binlog.
    let mut ahead: Vec<String> = gtid
        .split(',')
        .filter(|g| !g.is_empty() && !g.starts_with("0-"))
        .map(str::to_owned)
        .collect();
    ahead.push(format!("0-{server}-4000000000"));
    let ahead = ahead.join(",");
    store_checkpoint(&env, &checkpoint(ahead, file, pos, server)).await;
    let f = definite_failure(&env).await;
    assert_eq!(f.kind, "binlog_diverged", "{}", f.message);
    assert!(f.message.contains("4000000000"), "{}", f.message);
    env.cleanup().await;
}

#[tokio::test]
async fn second_stream_with_the_same_server_id_is_reported() {
    let env = Env::new("mysrc_dupid", serde_json::json!({"snapshot": "never"})).await;
    env.exec(&["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(60)).await;
    // A second replica with the same id.
    let server_id = env.pipeline.source.server_id.unwrap_or(0);
    let conn = env.sql().await;
    let mut other = conn
        .get_binlog_stream(mysql_async::BinlogStreamRequest::new(server_id))
        .await
        .expect("second stream");
    use futures_util::StreamExt as _;
    let _ = tokio::time::timeout(Duration::from_secs(2), other.next()).await;
    // The first stream is dropped by the server; the source notices and names the server id.
    let h = running.health.clone();
    let noticed = wait_until(Duration::from_secs(20), || {
        let h = h.clone();
        async move {
            let (_, failing) = h.report();
            failing.iter().any(|(_, why)| why.contains("server_id"))
        }
    })
    .await;
    drop(other);
    let failures = running.stop().await;
    assert!(
        noticed
            || failures
                .iter()
                .any(|f| f.message.contains(&server_id.to_string())),
        "failures: {:?}",
        failures.iter().map(|f| &f.message).collect::<Vec<_>>()
    );
    env.cleanup().await;
}

#[tokio::test]
async fn check_passes_on_the_real_server() {
    let env = Env::new("mysrc_check", serde_json::json!({})).await;
    env.exec(&["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let probes = tidemark_mysql_source::check(&env.pipeline).await;
    let failed: Vec<_> = probes.iter().filter(|p| !p.ok).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(probes
        .iter()
        .any(|p| p.what == "binlog_row_metadata = FULL"));
    // A table without a primary key is named with the statement that fixes it.
    env.exec(&["CREATE TABLE nokey (v INT)"]).await;
    let probes = tidemark_mysql_source::check(&env.pipeline).await;
    let bad: Vec<_> = probes.iter().filter(|p| !p.ok).collect();
    assert_eq!(bad.len(), 1, "{bad:#?}");
    assert!(bad[0]
        .fix
        .as_deref()
        .unwrap_or("")
        .contains("ADD PRIMARY KEY"));
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
    let env = Env::new("mysrc_kill", serde_json::json!({})).await;
    env.exec(&[
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))",
        "INSERT INTO t SELECT seq, 'snap' FROM seq_1_to_500",
    ])
    .await;
    open_state(&js().await).await;
    let config = format!(
        "[nats]\nurl = \"{}\"\n\n[metrics]\nlisten = \"\"\n\n[[pipelines]]\nname = \"{}\"\n\n  [pipelines.source]\n  \
         kind = \"mysql\"\n  url = \"{}\"\n  tables = [\"{}.*\"]\n  server_id = {}\n  heartbeat_secs = 2\n",
        common::NATS,
        env.pipeline.name,
        common::mysql_url(&env.db),
        env.db,
        server_id()
    );
    let mut daemon = common::Daemon::start(&config);
    let db = env.db.clone();
    let writer = tokio::spawn(async move {
        let mut c = mysql_conn(&db).await;
        for i in 501..=4000 {
            c.query_drop(format!("INSERT INTO t VALUES ({i}, 'w')"))
                .await
                .expect("insert");
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        let _ = c.disconnect().await;
    });
    let stream = env.stream();
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stream_len(&stream).await >= 1500
        })
        .await,
        "daemon published too little: {}",
        daemon.logs()
    );
    daemon.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.restart();
    writer.await.expect("writer");
    let events = read_envelopes(&stream, 4000, Duration::from_secs(90)).await;
    let extra = read_envelopes(&stream, 4001, Duration::from_secs(3)).await;
    assert_eq!(daemon.terminate().await, 0, "{}", daemon.logs());
    assert_eq!(extra.len(), 4000, "duplicates beyond the expected rows");
    assert_ordered_and_unique(&events);
    let mut ids: Vec<i64> = events
        .iter()
        .map(|e| e["after"]["id"].as_i64().unwrap_or(-1))
        .collect();
    // The writer starts with the daemon, so its first rows may be read by the snapshot too:
    // every pre-existing row is a snapshot read, and each id appears exactly once either way.
    let snapshot_reads = events.iter().filter(|e| op(e) == "r").count();
    assert!(snapshot_reads >= 500, "snapshot reads: {snapshot_reads}");
    ids.sort_unstable();
    assert_eq!(ids, (1..=4000).collect::<Vec<i64>>());
    env.cleanup().await;
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Times the source catching up on `rows` binlog rows already written.
async fn time_catch_up(env: &Env, already: u64, rows: u64) -> f64 {
    let started = std::time::Instant::now();
    let running = start(&env.pipeline).await;
    let stream = env.stream();
    let want = already + rows;
    assert!(
        wait_until(Duration::from_secs(900), || async {
            stream_len(&stream).await >= want
        })
        .await,
        "source did not catch up"
    );
    let secs = started.elapsed().as_secs_f64();
    assert!(running.stop().await.is_empty());
    secs
}

/// Times publishing `n` copies of `payload` through the same publisher, as a reference.
async fn time_raw_publish(n: u64, payload: &[u8]) -> f64 {
    let name = unique("mysrc_raw");
    let p: PipelineConfig = serde_json::from_value(serde_json::json!({
        "name": name, "source": {"kind": "mysql", "url": "mysql://x@127.0.0.1/x", "server_id": 1}
    }))
    .expect("config");
    let js = js().await;
    tidemark_core::nats::ensure_stream(&js, &p, &NatsConfig::default())
        .await
        .expect("stream");
    let (outbox, rx) = Outbox::<u64>::channel(1024);
    let (acked_tx, _acked_rx) = watch::channel(None);
    let publishing = tokio::spawn(Publisher::new(js, 256, &name).run(rx, acked_tx));
    let subject: async_nats::Subject = format!("tidemark.{name}.db.t").into();
    let bytes = bytes::Bytes::copy_from_slice(payload);
    let started = std::time::Instant::now();
    for i in 0..n {
        outbox
            .event(tidemark_core::envelope::OutMessage {
                subject: subject.clone(),
                id: format!("{name}:{i:016X}"),
                payload: bytes.clone(),
            })
            .await
            .expect("publisher alive");
    }
    outbox.flush().await.expect("flush");
    let secs = started.elapsed().as_secs_f64();
    drop(outbox);
    let _ = publishing.await;
    common::delete_stream(&p.stream_name()).await;
    secs
}

/// Informal benchmark (run with `--ignored --nocapture`): MariaDB → JetStream rows/s for 1M rows
/// in 1000-row transactions and 50k single-row transactions, beside a raw publish loop.
#[tokio::test]
#[ignore = "benchmark; minutes of load on the shared servers"]
async fn bench_mariadb_to_jetstream() {
    let big: u64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let small: u64 = std::env::var("BENCH_TXS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let env = Env::new("mysrc_bench", serde_json::json!({"snapshot": "never"})).await;
    env.exec(&["CREATE TABLE b (id INT PRIMARY KEY, v VARCHAR(32), n INT, ts DATETIME(6))"])
        .await;
    // Establish the start position, then write while the source is down.
    let running = start(&env.pipeline).await;
    running.wait_ready(Duration::from_secs(60)).await;
    assert!(running.stop().await.is_empty());
    let mut c = env.sql().await;
    for chunk in 0..big / 1000 {
        let first = chunk * 1000 + 1;
        c.query_drop(format!(
            "INSERT INTO b SELECT seq, CONCAT('value-', seq), seq % 1000, NOW(6) FROM seq_{first}_to_{}",
            first + 999
        ))
        .await
        .expect("insert");
    }
    let big_secs = time_catch_up(&env, 0, big).await;
    for i in 0..small {
        c.query_drop(format!(
            "INSERT INTO b VALUES ({}, 'single', 1, NOW(6))",
            big + 1 + i
        ))
        .await
        .expect("insert");
    }
    let _ = c.disconnect().await;
    let small_secs = time_catch_up(&env, big, small).await;
    let sample = read_envelopes(&env.stream(), 1, Duration::from_secs(5)).await;
    let payload = serde_json::to_vec(&sample[0]).expect("payload");
    let raw_big = time_raw_publish(big, &payload).await;
    let raw_small = time_raw_publish(small, &payload).await;
    let rate = |n: u64, s: f64| n as f64 / s;
    eprintln!(
        "bench: envelope {} bytes\n  {big} rows in 1000-row txs: {:.0} rows/s (raw publish {:.0} msg/s, ratio {:.2})\n  \
         {small} single-row txs: {:.0} rows/s (raw publish {:.0} msg/s, ratio {:.2})\n  peak RSS of the test process: {} MiB",
        payload.len(),
        rate(big, big_secs),
        rate(big, raw_big),
        raw_big / big_secs,
        rate(small, small_secs),
        rate(small, raw_small),
        raw_small / small_secs,
        peak_rss_kib() / 1024
    );
    env.cleanup().await;
}
