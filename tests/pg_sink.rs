//! Postgres sink against real Postgres and NATS: synthetic envelopes with deterministic
//! positions are published into a fresh JetStream stream and the sink runtime applies them.
//!
//! The helpers at the top (`Bus`, `Table`, `start_sink` …) are shared with `mysql_sink`.

use crate::common::*;
use async_nats::jetstream;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_core::config::{OnError, PipelineConfig, SinkConfig, SinkKind};
use tidemark_core::error::Failure;
use tidemark_core::health::Health;
use tidemark_core::position::{hex16, streamed};
use tidemark_core::sink::SinkContext;
use tidemark_core::CancellationToken;

// ───────────────────────────── shared helpers ─────────────────────────────

/// A pipeline's stream with a publisher of synthetic envelopes.
pub(crate) struct Bus {
    pub pipeline: PipelineConfig,
    pub js: jetstream::Context,
}

impl Bus {
    pub async fn new(prefix: &str) -> Bus {
        let name = unique(prefix);
        let pipeline: PipelineConfig = serde_json::from_value(json!({
            "name": name,
            "source": { "kind": "postgres", "url": "postgres://nobody@127.0.0.1:1/none" }
        }))
        .expect("pipeline config");
        let js = js().await;
        tidemark_core::nats::ensure_stream(&js, &pipeline, &Default::default())
            .await
            .expect("create stream");
        Bus { pipeline, js }
    }

    pub fn name(&self) -> &str {
        &self.pipeline.name
    }

    /// Publishes envelopes in order (message id = envelope id + `id_suffix`); returns the
    /// stream sequence of the last one.
    pub async fn publish_with(&self, envs: &[Value], id_suffix: &str) -> u64 {
        let mut last = 0;
        for chunk in envs.chunks(500) {
            let mut acks = Vec::with_capacity(chunk.len());
            for e in chunk {
                let subject = tidemark_core::subject::table_subject(
                    "tidemark",
                    self.name(),
                    e["source"]["schema"].as_str().unwrap_or_default(),
                    e["source"]["table"].as_str().unwrap_or_default(),
                );
                let mut headers = async_nats::HeaderMap::new();
                let id = format!("{}{}", e["id"].as_str().unwrap_or_default(), id_suffix);
                headers.insert("Nats-Msg-Id", id.as_str());
                let payload = serde_json::to_vec(e).expect("encode");
                acks.push(
                    self.js
                        .publish_with_headers(subject, headers, payload.into())
                        .await
                        .expect("publish"),
                );
            }
            for a in acks {
                last = a.await.expect("publish ack").sequence;
            }
        }
        last
    }

    pub async fn publish(&self, envs: &[Value]) -> u64 {
        self.publish_with(envs, "").await
    }

    pub async fn cleanup(&self) {
        delete_stream(&self.pipeline.stream_name()).await;
    }
}

/// A synthetic source table: names and canonical column types.
#[derive(Clone)]
pub(crate) struct Table {
    pub schema: String,
    pub table: String,
    /// (name, canonical type, pk)
    pub columns: Vec<(String, String, bool)>,
}

/// One change of a synthetic transaction.
pub(crate) struct Ch {
    pub op: &'static str,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub unchanged: Vec<String>,
}

pub(crate) fn ins(after: Value) -> Ch {
    Ch {
        op: "c",
        before: None,
        after: Some(after),
        unchanged: vec![],
    }
}
pub(crate) fn upd(before: Option<Value>, after: Value) -> Ch {
    Ch {
        op: "u",
        before,
        after: Some(after),
        unchanged: vec![],
    }
}
pub(crate) fn del(before: Value) -> Ch {
    Ch {
        op: "d",
        before: Some(before),
        after: None,
        unchanged: vec![],
    }
}
pub(crate) fn trunc() -> Ch {
    Ch {
        op: "t",
        before: None,
        after: None,
        unchanged: vec![],
    }
}

impl Table {
    pub fn new(schema: &str, table: &str, columns: &[(&str, &str, bool)]) -> Table {
        Table {
            schema: schema.into(),
            table: table.into(),
            columns: columns
                .iter()
                .map(|(n, t, p)| (n.to_string(), t.to_string(), *p))
                .collect(),
        }
    }

    fn schema_block(&self) -> Value {
        let cols: Vec<Value> = self
            .columns
            .iter()
            .map(|(n, t, p)| {
                let mut c =
                    json!({"name": n, "type": t, "source_type": t, "pk": p, "nullable": !p});
                if t == "array" {
                    c["element"] = json!("string");
                }
                c
            })
            .collect();
        let version = format!(
            "{:016x}",
            tidemark_core::envelope::fnv1a64(Value::Array(cols.clone()).to_string().as_bytes())
        );
        json!({"version": version, "columns": cols})
    }

    /// The envelopes of one source transaction committed at `commit` (positions
    /// `commit:1..n`, `last` on the final one).
    pub fn tx(&self, pipeline: &str, commit: u64, changes: Vec<Ch>) -> Vec<Value> {
        let n = changes.len();
        let schema = self.schema_block();
        changes
            .into_iter()
            .enumerate()
            .map(|(i, ch)| {
                let pos = streamed(&hex16(commit), i as u64 + 1);
                let image = ch.after.as_ref().or(ch.before.as_ref());
                let key = if ch.op == "t" || !self.columns.iter().any(|c| c.2) {
                    Value::Null
                } else {
                    let mut k = serde_json::Map::new();
                    for (name, _, pk) in &self.columns {
                        if *pk {
                            k.insert(name.clone(), image.and_then(|r| r.get(name)).cloned().unwrap_or(Value::Null));
                        }
                    }
                    Value::Object(k)
                };
                let mut e = json!({
                    "v": 1,
                    "id": format!("{pipeline}:{pos}"),
                    "op": ch.op,
                    "source": {
                        "pipeline": pipeline, "connector": "postgres", "db": "src",
                        "schema": self.schema, "table": self.table, "pos": pos,
                        "tx": {"id": format!("tx{commit}"), "seq": i + 1, "commit_pos": format!("{commit:X}"), "last": i + 1 == n},
                        "ts_ms": tidemark_core::metrics::now_ms(), "snapshot": false
                    },
                    "key": key,
                    "before": ch.before.unwrap_or(Value::Null),
                    "after": ch.after.unwrap_or(Value::Null),
                    "schema": schema,
                    "ts_ms": tidemark_core::metrics::now_ms()
                });
                if !ch.unchanged.is_empty() {
                    e["unchanged"] = json!(ch.unchanged);
                }
                e
            })
            .collect()
    }
}

pub(crate) fn sink_config(name: &str, kind: SinkKind, url: &str) -> SinkConfig {
    serde_json::from_value(json!({
        "name": name,
        "kind": match kind { SinkKind::Postgres => "postgres", SinkKind::Mysql => "mysql" },
        "url": url,
    }))
    .expect("sink config")
}

/// A sink runtime running in this process.
pub(crate) struct Running {
    pub token: CancellationToken,
    pub handle: tokio::task::JoinHandle<Result<(), Failure>>,
    pub health: Health,
}

impl Running {
    pub async fn stop(self) {
        self.token.cancel();
        let r = tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("sink stops within 20 s")
            .expect("sink task");
        r.expect("sink returns Ok on shutdown");
    }

    pub fn ready_report(&self) -> (bool, Vec<(String, String)>) {
        self.health.report()
    }
}

pub(crate) fn start_sink(bus: &Bus, sink: SinkConfig) -> Running {
    let token = CancellationToken::new();
    let health = Health::new();
    let ctx = SinkContext {
        pipeline: bus.pipeline.clone(),
        sink: sink.clone(),
        js: bus.js.clone(),
        shutdown: token.clone(),
        health: health.clone(),
    };
    let handle = match sink.kind {
        SinkKind::Postgres => tokio::spawn(tidemark_postgres_sink::run(ctx)),
        SinkKind::Mysql => tokio::spawn(tidemark_mysql_sink::run(ctx)),
    };
    Running {
        token,
        handle,
        health,
    }
}

// ───────────────────────────── postgres helpers ─────────────────────────────

#[allow(dead_code)]
async fn pg_offset_seq(db: &str, pipeline: &str, sink: &str) -> Option<i64> {
    let c = pg_connect(db).await;
    c.query_opt(
        "SELECT stream_seq FROM public.tidemark_offsets WHERE pipeline = $1 AND sink = $2",
        &[&pipeline, &sink],
    )
    .await
    .ok()
    .flatten()
    .map(|r| r.get(0))
}

async fn wait_pg_seq(db: &str, pipeline: &str, sink: &str, seq: u64, timeout: Duration) -> bool {
    let client = pg_connect(db).await;
    wait_until(timeout, || {
        let client = &client;
        async move {
            client
                .query_opt(
                    "SELECT stream_seq FROM public.tidemark_offsets WHERE pipeline = $1 AND sink = $2",
                    &[&pipeline, &sink],
                )
                .await
                .ok()
                .flatten()
                .is_some_and(|r| r.get::<_, i64>(0) >= seq as i64)
        }
    })
    .await
}

async fn pg_rows(db: &str, sql: &str) -> Vec<String> {
    let c = pg_connect(db).await;
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

// ───────────────────────────── tests ─────────────────────────────

#[tokio::test]
async fn apply_semantics_and_types() {
    let db = unique("pgsink_sem");
    pg_create_db(&db).await;
    let c = pg_connect(&db).await;
    c.batch_execute(
        "CREATE TABLE public.items (id bigint PRIMARY KEY, name varchar(20) NOT NULL, amount numeric(10,2),
           ts timestamptz, data bytea, doc jsonb, tags text[], flag boolean, u uuid, big text,
           f double precision, d date, iv interval, b bit(4), n int[]);
         CREATE TABLE public.other (k text PRIMARY KEY, v int);",
    )
    .await
    .unwrap();
    let bus = Bus::new("pgsem").await;
    let p = bus.name().to_owned();
    let items = Table::new(
        "public",
        "items",
        &[
            ("id", "int64", true),
            ("name", "string", false),
            ("amount", "decimal", false),
            ("ts", "timestamptz", false),
            ("data", "bytes", false),
            ("doc", "json", false),
            ("tags", "array", false),
            ("flag", "bool", false),
            ("u", "uuid", false),
            ("big", "string", false),
            ("f", "float64", false),
            ("d", "date", false),
            ("iv", "interval", false),
            ("b", "bits", false),
            ("n", "array", false),
        ],
    );
    let other = Table::new(
        "public",
        "other",
        &[("k", "string", true), ("v", "int64", false)],
    );
    let full = |id: i64, name: &str| {
        json!({"id": id, "name": name, "amount": "12.30", "ts": "2024-02-29T12:45:00.123456Z",
               "data": "AP8=", "doc": {"a": [1, "x"], "s": "q\"uote"}, "tags": ["a\"b", null, "c,d"],
               "flag": true, "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "big": "BIG", "f": "NaN",
               "d": "2024-02-29", "iv": "P1Y2M3DT4H5M6S", "b": "1010", "n": [1, 2, 3]})
    };
    let mut envs = Vec::new();
    envs.extend(items.tx(
        &p,
        10,
        vec![
            ins(full(1, "one")),
            ins(full(2, "two")),
            ins(full(3, "three")),
        ],
    ));
    // Update with an unchanged (TOASTed) column: big must stay "BIG".
    let mut after = full(1, "uno");
    after.as_object_mut().unwrap().remove("big");
    let mut u = upd(Some(json!({"id": 1})), after);
    u.unchanged = vec!["big".into()];
    envs.extend(items.tx(&p, 11, vec![u]));
    // Key change 2 → 20, and delete 3, in one transaction.
    envs.extend(items.tx(
        &p,
        12,
        vec![
            upd(Some(json!({"id": 2})), full(20, "twenty")),
            del(json!({"id": 3})),
        ],
    ));
    // An update of a row that does not exist yet inserts it.
    envs.extend(items.tx(&p, 13, vec![upd(None, json!({"id": 7, "name": "seven"}))]));
    // Another table, then its truncate.
    envs.extend(other.tx(
        &p,
        14,
        vec![
            ins(json!({"k": "a", "v": 1})),
            ins(json!({"k": "b", "v": 2})),
        ],
    ));
    envs.extend(other.tx(&p, 15, vec![trunc()]));
    envs.extend(other.tx(&p, 16, vec![ins(json!({"k": "c", "v": 3}))]));
    let last = bus.publish(&envs).await;

    let sink = start_sink(
        &bus,
        sink_config("replica", SinkKind::Postgres, &pg_url(&db)),
    );
    assert!(
        wait_pg_seq(&db, &p, "replica", last, Duration::from_secs(30)).await,
        "sink caught up"
    );
    assert!(
        sink.ready_report().0,
        "ready after catching up: {:?}",
        sink.ready_report()
    );

    let rows = pg_rows(
        &db,
        "SELECT concat_ws('|', id, name, amount, ts, encode(data, 'hex'), doc::text, tags::text, flag, u, big, f, d, iv, b, n::text)
           FROM items ORDER BY id",
    )
    .await;
    assert_eq!(
        rows,
        vec![
            "1|uno|12.30|2024-02-29 12:45:00.123456+00|00ff|{\"a\": [1, \"x\"], \"s\": \"q\\\"uote\"}|{\"a\\\"b\",NULL,\"c,d\"}|t|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|BIG|NaN|2024-02-29|1 year 2 mons 3 days 04:05:06|1010|{1,2,3}",
            "7|seven",
            "20|twenty|12.30|2024-02-29 12:45:00.123456+00|00ff|{\"a\": [1, \"x\"], \"s\": \"q\\\"uote\"}|{\"a\\\"b\",NULL,\"c,d\"}|t|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|BIG|NaN|2024-02-29|1 year 2 mons 3 days 04:05:06|1010|{1,2,3}",
        ]
    );
    assert_eq!(
        pg_rows(&db, "SELECT k || '=' || v FROM other ORDER BY k").await,
        vec!["c=3"]
    );

    // Duplicates: re-publish everything with new message ids (beyond the dedup window), plus an
    // old version of row 1 that would move it backwards. Nothing may change.
    let mut old = items.tx(&p, 10, vec![ins(full(1, "one"))]);
    old.extend(envs.clone());
    let last = bus.publish_with(&old, ":again").await;
    assert!(wait_pg_seq(&db, &p, "replica", last, Duration::from_secs(30)).await);
    let names = pg_rows(&db, "SELECT id || name FROM items ORDER BY id").await;
    assert_eq!(names, vec!["1uno", "7seven", "20twenty"]);
    assert_eq!(
        pg_rows(&db, "SELECT k FROM other ORDER BY k").await,
        vec!["c"]
    );
    let pos = pg_rows(&db, "SELECT pos FROM tidemark_offsets").await;
    assert_eq!(pos, vec![streamed(&hex16(16), 1)]);

    sink.stop().await;
    bus.cleanup().await;
    pg_drop_db(&db).await;
}

#[tokio::test]
async fn big_transaction_is_atomic_and_transfers_keep_the_sum() {
    let db = unique("pgsink_atomic");
    pg_create_db(&db).await;
    let c = pg_connect(&db).await;
    c.batch_execute(
        "CREATE TABLE public.big (id bigint PRIMARY KEY, v text);
         CREATE TABLE public.acct (id bigint PRIMARY KEY, balance bigint NOT NULL);",
    )
    .await
    .unwrap();
    let bus = Bus::new("pgatomic").await;
    let p = bus.name().to_owned();
    let sink = start_sink(
        &bus,
        sink_config("replica", SinkKind::Postgres, &pg_url(&db)),
    );

    // Readers: count(*) of big must be 0 or 20000; sum(balance) must always be 100 * 1000.
    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let (stop, bad, db) = (stop.clone(), bad.clone(), db.clone());
        tokio::spawn(async move {
            let c = pg_connect(&db).await;
            let mut polls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = c
                    .query_one("SELECT count(*) FROM big", &[])
                    .await
                    .unwrap()
                    .get(0);
                if n != 0 && n != 20_000 {
                    bad.lock().unwrap().push(format!("count {n}"));
                }
                let sum: Option<i64> = c
                    .query_one("SELECT sum(balance)::bigint FROM acct", &[])
                    .await
                    .unwrap()
                    .get(0);
                if let Some(sum) = sum {
                    if sum != 100_000 {
                        bad.lock().unwrap().push(format!("sum {sum}"));
                    }
                }
                polls += 1;
            }
            polls
        })
    };

    let big = Table::new(
        "public",
        "big",
        &[("id", "int64", true), ("v", "string", false)],
    );
    let changes: Vec<Ch> = (0..20_000)
        .map(|i| ins(json!({"id": i, "v": format!("row {i}")})))
        .collect();
    let envs = big.tx(&p, 100, changes);
    // Publish in two halves with a pause: the transaction stays open in the target meanwhile.
    let (a, b) = envs.split_at(12_345);
    bus.publish(a).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let last = bus.publish(b).await;
    assert!(
        wait_pg_seq(&db, &p, "replica", last, Duration::from_secs(60)).await,
        "big tx applied"
    );

    let acct = Table::new(
        "public",
        "acct",
        &[("id", "int64", true), ("balance", "int64", false)],
    );
    let mut envs = acct.tx(
        &p,
        200,
        (0..100)
            .map(|i| ins(json!({"id": i, "balance": 1000})))
            .collect(),
    );
    let mut balances = vec![1000i64; 100];
    let mut seed = 42u64;
    for t in 0..3000u64 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let from = (seed >> 33) as usize % 100;
        let to = (from + 1 + (seed >> 13) as usize % 99) % 100;
        let x = (seed % 50) as i64;
        balances[from] -= x;
        balances[to] += x;
        envs.extend(acct.tx(
            &p,
            300 + t,
            vec![
                upd(None, json!({"id": from, "balance": balances[from]})),
                upd(None, json!({"id": to, "balance": balances[to]})),
            ],
        ));
    }
    let last = bus.publish(&envs).await;
    assert!(
        wait_pg_seq(&db, &p, "replica", last, Duration::from_secs(60)).await,
        "transfers applied"
    );
    stop.store(true, Ordering::Relaxed);
    let polls = reader.await.unwrap();
    assert!(polls > 10, "reader polled {polls} times");
    let bad = bad.lock().unwrap().clone();
    assert!(
        bad.is_empty(),
        "reader saw partial transactions: {:?}",
        &bad[..bad.len().min(10)]
    );
    let n: i64 = c
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20_000);
    let got: Vec<i64> = c
        .query("SELECT balance FROM acct ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, balances);

    sink.stop().await;
    bus.cleanup().await;
    pg_drop_db(&db).await;
}

#[tokio::test]
async fn hostile_identifiers_are_just_names() {
    let db = unique("pgsink_hostile");
    pg_create_db(&db).await;
    let c = pg_connect(&db).await;
    c.batch_execute(
        r#"CREATE SCHEMA "we ird.sch""ema";
           CREATE TABLE "we ird.sch""ema"."x""; drop table y; --" (
             "sel ect" bigint PRIMARY KEY, "a.b" text, "`tick`" text, "ünï" text, "order" int);
           CREATE TABLE public.y (id int);"#,
    )
    .await
    .unwrap();
    let bus = Bus::new("pghostile").await;
    let p = bus.name().to_owned();
    let t = Table::new(
        "we ird.sch\"ema",
        "x\"; drop table y; --",
        &[
            ("sel ect", "int64", true),
            ("a.b", "string", false),
            ("`tick`", "string", false),
            ("ünï", "string", false),
            ("order", "int64", false),
        ],
    );
    let mut envs = t.tx(&p, 1, vec![
        ins(json!({"sel ect": 1, "a.b": "x'); drop table y; --", "`tick`": "`", "ünï": "ü", "order": 1})),
        ins(json!({"sel ect": 2, "a.b": "two", "`tick`": "t", "ünï": "ï", "order": 2})),
    ]);
    envs.extend(t.tx(
        &p,
        2,
        vec![
            upd(
                Some(json!({"sel ect": 2})),
                json!({"sel ect": 3, "a.b": "three", "`tick`": "t", "ünï": "ï", "order": 3}),
            ),
            del(json!({"sel ect": 1})),
        ],
    ));
    let last = bus.publish(&envs).await;
    let sink = start_sink(
        &bus,
        sink_config("replica", SinkKind::Postgres, &pg_url(&db)),
    );
    assert!(wait_pg_seq(&db, &p, "replica", last, Duration::from_secs(30)).await);
    let rows = pg_rows(
        &db,
        r#"SELECT concat_ws('|', "sel ect", "a.b", "`tick`", "ünï", "order") FROM "we ird.sch""ema"."x""; drop table y; --""#,
    )
    .await;
    assert_eq!(rows, vec!["3|three|t|ï|3"]);
    let y: i64 = c
        .query_one("SELECT count(*) FROM public.y", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(y, 0, "table y still exists");
    sink.stop().await;
    bus.cleanup().await;
    pg_drop_db(&db).await;
}

#[tokio::test]
async fn poison_event_halts_by_default_and_dead_letters_on_request() {
    let db = unique("pgsink_poison");
    pg_create_db(&db).await;
    let c = pg_connect(&db).await;
    c.batch_execute("CREATE TABLE public.t (id bigint PRIMARY KEY, n int NOT NULL CHECK (n >= 0))")
        .await
        .unwrap();
    let bus = Bus::new("pgpoison").await;
    let p = bus.name().to_owned();
    let t = Table::new(
        "public",
        "t",
        &[("id", "int64", true), ("n", "int64", false)],
    );
    let mut envs = t.tx(&p, 1, vec![ins(json!({"id": 1, "n": 1}))]);
    // Transaction 2: a good row, then a value the CHECK rejects.
    envs.extend(t.tx(
        &p,
        2,
        vec![
            ins(json!({"id": 2, "n": 2})),
            ins(json!({"id": 3, "n": -5})),
        ],
    ));
    // Transaction 3: a value that is not an integer at all.
    envs.extend(t.tx(&p, 3, vec![ins(json!({"id": 4, "n": "forty"}))]));
    envs.extend(t.tx(&p, 4, vec![ins(json!({"id": 5, "n": 5}))]));
    let last = bus.publish(&envs).await;

    // Halt: transaction 1 is applied, nothing after it; the sink is not ready and says why.
    let sink = start_sink(
        &bus,
        sink_config("halting", SinkKind::Postgres, &pg_url(&db)),
    );
    let reason = Arc::new(std::sync::Mutex::new(String::new()));
    let ok = wait_until(Duration::from_secs(30), || {
        let (h, reason) = (sink.health.clone(), reason.clone());
        async move {
            let (ready, failing) = h.report();
            if let Some((_, r)) = failing.first() {
                *reason.lock().unwrap() = r.clone();
            }
            !ready && reason.lock().unwrap().contains("pos")
        }
    })
    .await;
    let reason = reason.lock().unwrap().clone();
    assert!(ok, "sink reports the poison event; last reason: {reason}");
    assert!(
        reason.contains("public.t") && reason.contains(&streamed(&hex16(2), 2)),
        "reason names table and pos: {reason}"
    );
    assert!(
        reason.contains("check constraint") || reason.contains("23514"),
        "reason has the cause: {reason}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        pg_rows(&db, "SELECT id::text FROM t ORDER BY id").await,
        vec!["1"]
    );
    sink.stop().await;

    // Dead letter: the two poison events go to the DLQ, everything else is applied.
    let mut cfg = sink_config("dlq", SinkKind::Postgres, &pg_url(&db));
    cfg.on_error = OnError::DeadLetter;
    let sink = start_sink(&bus, cfg);
    // Two dead letters are appended to the stream after `last`.
    let client = pg_connect(&db).await;
    let done = wait_until(Duration::from_secs(30), || {
        let client = &client;
        let p = &p;
        async move {
            client
                .query_opt(
                    "SELECT stream_seq FROM tidemark_offsets WHERE pipeline = $1 AND sink = 'dlq'",
                    &[p],
                )
                .await
                .ok()
                .flatten()
                .is_some_and(|r| r.get::<_, i64>(0) >= last as i64)
        }
    })
    .await;
    assert!(
        done,
        "dead-letter sink went past the poison events: {:?}",
        sink.ready_report()
    );
    assert_eq!(
        pg_rows(&db, "SELECT id::text FROM t ORDER BY id").await,
        vec!["1", "2", "5"]
    );
    let letters = read_dead_letters(&bus, &p, "dlq", 2).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0]["event"]["after"]["id"], 3);
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap()
            .contains("check constraint"),
        "{}",
        letters[0]
    );
    assert_eq!(letters[1]["event"]["after"]["id"], 4);
    assert!(
        letters[1]["error"].as_str().unwrap().contains("\"n\""),
        "names the column: {}",
        letters[1]
    );
    sink.stop().await;
    bus.cleanup().await;
    pg_drop_db(&db).await;
}

/// Reads dead letters of `sink` from the pipeline's stream.
pub(crate) async fn read_dead_letters(
    bus: &Bus,
    pipeline: &str,
    sink: &str,
    expected: usize,
) -> Vec<Value> {
    use futures_util::StreamExt as _;
    let stream = bus.js.get_stream(bus.pipeline.stream_name()).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: tidemark_core::subject::dead_letter_subject("tidemark", pipeline, sink),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while out.len() < expected {
        match tokio::time::timeout(Duration::from_secs(5), msgs.next()).await {
            Ok(Some(Ok(m))) => {
                let h = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Tidemark-Dead-Letter"))
                    .map(|v| v.to_string());
                assert_eq!(h.as_deref(), Some(sink), "dead letter header");
                out.push(serde_json::from_slice(&m.payload).unwrap());
            }
            _ => break,
        }
    }
    out
}

#[tokio::test]
async fn target_outage_then_catch_up_and_restarts_converge() {
    let db = unique("pgsink_outage");
    pg_create_db(&db).await;
    let c = pg_connect(&db).await;
    c.batch_execute("CREATE TABLE public.t (id bigint PRIMARY KEY, v bigint NOT NULL)")
        .await
        .unwrap();
    let bus = Bus::new("pgoutage").await;
    let p = bus.name().to_owned();
    let t = Table::new(
        "public",
        "t",
        &[("id", "int64", true), ("v", "int64", false)],
    );
    let mut expected = std::collections::BTreeMap::new();
    let mut commit = 1u64;
    let mut batch = |n: usize, expected: &mut std::collections::BTreeMap<i64, i64>| {
        let mut envs = Vec::new();
        for _ in 0..n {
            let changes: Vec<Ch> = (0..5)
                .map(|j| {
                    let id = ((commit * 7 + j) % 300) as i64;
                    if commit % 11 == 0 && j == 0 {
                        expected.remove(&id);
                        del(json!({"id": id}))
                    } else {
                        expected.insert(id, commit as i64);
                        upd(None, json!({"id": id, "v": commit}))
                    }
                })
                .collect();
            envs.extend(t.tx(&p, commit, changes));
            commit += 1;
        }
        envs
    };
    let sink = start_sink(
        &bus,
        sink_config("replica", SinkKind::Postgres, &pg_url(&db)),
    );
    let last = bus.publish(&batch(200, &mut expected)).await;
    assert!(wait_pg_seq(&db, &p, "replica", last, Duration::from_secs(30)).await);

    // Outage: the database refuses connections and the sink's backends are terminated.
    let admin = pg_connect("postgres").await;
    admin
        .batch_execute(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    admin
        .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", &[&db])
        .await
        .unwrap();
    let last = bus.publish(&batch(300, &mut expected)).await;
    let went_unready = wait_until(Duration::from_secs(10), || {
        let h = sink.health.clone();
        async move { !h.report().0 }
    })
    .await;
    assert!(went_unready, "sink reports the outage");
    tokio::time::sleep(Duration::from_secs(3)).await;
    admin
        .batch_execute(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    assert!(
        wait_pg_seq(&db, &p, "replica", last, Duration::from_secs(60)).await,
        "caught up after the outage"
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let h = sink.health.clone();
            async move { h.report().0 }
        })
        .await
    );
    sink.stop().await;

    // Kill (cancel) and restart the runtime repeatedly while events flow.
    let mut last = 0;
    for round in 0..4 {
        let sink = start_sink(
            &bus,
            sink_config("replica", SinkKind::Postgres, &pg_url(&db)),
        );
        last = bus.publish(&batch(150, &mut expected)).await;
        tokio::time::sleep(Duration::from_millis(100 + 150 * round)).await;
        sink.handle.abort();
        let _ = sink.handle.await;
    }
    let sink = start_sink(
        &bus,
        sink_config("replica", SinkKind::Postgres, &pg_url(&db)),
    );
    assert!(wait_pg_seq(&db, &p, "replica", last, Duration::from_secs(60)).await);
    let c = pg_connect(&db).await;
    let got: std::collections::BTreeMap<i64, i64> = c
        .query("SELECT id, v FROM t", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(got, expected);
    sink.stop().await;
    bus.cleanup().await;
    pg_drop_db(&db).await;
}

#[tokio::test]
async fn bulk_load_throughput() {
    let db = unique("pgsink_bulk");
    pg_create_db(&db).await;
    let c = pg_connect(&db).await;
    c.batch_execute("CREATE TABLE public.bulk (id bigint PRIMARY KEY, name text, amount numeric(12,2), ts timestamptz, flag boolean)")
        .await
        .unwrap();
    let bus = Bus::new("pgbulk").await;
    let p = bus.name().to_owned();
    let t = Table::new(
        "public",
        "bulk",
        &[
            ("id", "int64", true),
            ("name", "string", false),
            ("amount", "decimal", false),
            ("ts", "timestamptz", false),
            ("flag", "bool", false),
        ],
    );
    const ROWS: u64 = 200_000;
    const TX: u64 = 2_000;
    let mut envs = Vec::with_capacity(ROWS as usize);
    for tx in 0..ROWS / TX {
        envs.extend(t.tx(
            &p,
            tx + 1,
            (0..TX)
                .map(|i| {
                    let id = tx * TX + i;
                    ins(json!({"id": id, "name": format!("customer {id}"), "amount": format!("{}.{:02}", id, id % 100),
                               "ts": "2024-02-29T12:45:00.123456Z", "flag": id % 2 == 0}))
                })
                .collect(),
        ));
    }
    let last = bus.publish(&envs).await;
    drop(envs);
    let started = Instant::now();
    let sink = start_sink(
        &bus,
        sink_config("replica", SinkKind::Postgres, &pg_url(&db)),
    );
    assert!(wait_pg_seq(&db, &p, "replica", last, Duration::from_secs(300)).await);
    let secs = started.elapsed().as_secs_f64();
    let n: i64 = c
        .query_one("SELECT count(*) FROM bulk", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, ROWS as i64);
    eprintln!("BENCH postgres sink: {ROWS} rows in {TX}-row transactions applied in {secs:.2} s = {:.0} rows/s", ROWS as f64 / secs);
    sink.stop().await;
    bus.cleanup().await;
    pg_drop_db(&db).await;
}
