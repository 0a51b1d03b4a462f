//! MySQL sink against real MariaDB and NATS: synthetic envelopes with deterministic positions
//! are published into a fresh JetStream stream and the sink runtime applies them.

use crate::common::*;
use crate::pg_sink::{
    del, ins, read_dead_letters, sink_config, start_sink, trunc, upd, Bus, Ch, Table,
};
use mysql_async::prelude::Queryable as _;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_core::config::{OnError, SinkKind};
use tidemark_core::position::{hex16, streamed};

async fn my_rows(db: &str, sql: &str) -> Vec<String> {
    let mut c = mysql_conn(db).await;
    let rows: Vec<mysql_async::Row> = c.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = c.disconnect().await;
    rows.into_iter()
        .map(|r| {
            r.get_opt::<Option<String>, usize>(0)
                .and_then(Result::ok)
                .flatten()
                .unwrap_or_else(|| "NULL".into())
        })
        .collect()
}

async fn my_exec(db: &str, sql: &str) {
    let mut c = mysql_conn(db).await;
    c.query_drop(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = c.disconnect().await;
}

async fn wait_my_seq(db: &str, pipeline: &str, sink: &str, seq: u64, timeout: Duration) -> bool {
    let sql = format!(
        "SELECT stream_seq FROM tidemark_offsets WHERE pipeline = '{pipeline}' AND sink = '{sink}'"
    );
    wait_until(timeout, || {
        let sql = sql.clone();
        async move {
            let mut c = mysql_conn(db).await;
            let v: Option<u64> = c.query_first(sql).await.ok().flatten();
            let _ = c.disconnect().await;
            v.is_some_and(|v| v >= seq)
        }
    })
    .await
}

#[tokio::test]
async fn apply_semantics_and_types() {
    let db = unique("mysink_sem");
    mysql_create_db(&db).await;
    my_exec(
        &db,
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(20) NOT NULL, amount DECIMAL(10,2),
           ts DATETIME(6), tsz TIMESTAMP(6) NULL, data VARBINARY(16), doc JSON, tags JSON, flag TINYINT(1),
           u CHAR(36), ub BINARY(16), big TEXT, f DOUBLE, d DATE, b BIT(4), s SET('a','b','c'))",
    )
    .await;
    my_exec(&db, "CREATE TABLE other (k VARCHAR(10) PRIMARY KEY, v INT)").await;
    let bus = Bus::new("mysem").await;
    let p = bus.name().to_owned();
    let items = Table::new(
        "public",
        "items",
        &[
            ("id", "int64", true),
            ("name", "string", false),
            ("amount", "decimal", false),
            ("ts", "timestamp", false),
            ("tsz", "timestamptz", false),
            ("data", "bytes", false),
            ("doc", "json", false),
            ("tags", "array", false),
            ("flag", "bool", false),
            ("u", "uuid", false),
            ("ub", "uuid", false),
            ("big", "string", false),
            ("f", "float64", false),
            ("d", "date", false),
            ("b", "bits", false),
            ("s", "set", false),
        ],
    );
    let other = Table::new(
        "public",
        "other",
        &[("k", "string", true), ("v", "int64", false)],
    );
    let full = |id: i64, name: &str| {
        json!({"id": id, "name": name, "amount": "12.30", "ts": "2024-02-29T13:45:00.123456",
               "tsz": "2024-02-29T12:45:00.5Z", "data": "AP8=", "doc": {"a": [1, "x"], "s": "q'uote"},
               "tags": ["a\"b", null], "flag": true, "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
               "ub": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "big": "BIG", "f": 1.5, "d": "2024-02-29",
               "b": "1010", "s": ["a", "c"]})
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
    let mut after = full(1, "uno");
    after.as_object_mut().unwrap().remove("big");
    let mut u = upd(Some(json!({"id": 1})), after);
    u.unchanged = vec!["big".into()];
    envs.extend(items.tx(&p, 11, vec![u]));
    envs.extend(items.tx(
        &p,
        12,
        vec![
            upd(Some(json!({"id": 2})), full(20, "twenty")),
            del(json!({"id": 3})),
        ],
    ));
    envs.extend(items.tx(&p, 13, vec![upd(None, json!({"id": 7, "name": "seven"}))]));
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
        sink_config("replica", SinkKind::Mysql, &mysql_url(&db)),
    );
    assert!(
        wait_my_seq(&db, &p, "replica", last, Duration::from_secs(30)).await,
        "caught up: {:?}",
        sink.ready_report()
    );
    let rows = my_rows(
        &db,
        "SELECT CONCAT_WS('|', id, name, amount, ts, tsz, HEX(data), JSON_EXTRACT(doc, '$.s'), JSON_EXTRACT(tags, '$[0]'), flag, u, HEX(ub), big, f, d, BIN(b), s)
           FROM items ORDER BY id",
    )
    .await;
    assert_eq!(
        rows,
        vec![
            "1|uno|12.30|2024-02-29 13:45:00.123456|2024-02-29 12:45:00.500000|00FF|\"q'uote\"|\"a\\\"b\"|1|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|A0EEBC999C0B4EF8BB6D6BB9BD380A11|BIG|1.5|2024-02-29|1010|a,c",
            "7|seven",
            "20|twenty|12.30|2024-02-29 13:45:00.123456|2024-02-29 12:45:00.500000|00FF|\"q'uote\"|\"a\\\"b\"|1|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|A0EEBC999C0B4EF8BB6D6BB9BD380A11|BIG|1.5|2024-02-29|1010|a,c",
        ]
    );
    // TIMESTAMP column read back in UTC regardless of the reader's zone.
    let tsz = my_rows(&db, "SELECT UNIX_TIMESTAMP(tsz) FROM items WHERE id = 1").await;
    assert_eq!(tsz, vec!["1709210700.500000"]);
    assert_eq!(
        my_rows(&db, "SELECT CONCAT(k, '=', v) FROM other ORDER BY k").await,
        vec!["c=3"]
    );

    // Duplicates re-published with new message ids change nothing.
    let mut old = items.tx(&p, 10, vec![ins(full(1, "one"))]);
    old.extend(envs.clone());
    let last = bus.publish_with(&old, ":again").await;
    assert!(wait_my_seq(&db, &p, "replica", last, Duration::from_secs(30)).await);
    assert_eq!(
        my_rows(&db, "SELECT CONCAT(id, name) FROM items ORDER BY id").await,
        vec!["1uno", "7seven", "20twenty"]
    );
    assert_eq!(
        my_rows(&db, "SELECT pos FROM tidemark_offsets").await,
        vec![streamed(&hex16(16), 1)]
    );
    sink.stop().await;
    bus.cleanup().await;
    mysql_drop_db(&db).await;
}

#[tokio::test]
async fn transactions_are_atomic_for_a_concurrent_reader() {
    let db = unique("mysink_atomic");
    mysql_create_db(&db).await;
    my_exec(&db, "CREATE TABLE big (id BIGINT PRIMARY KEY, v TEXT)").await;
    my_exec(
        &db,
        "CREATE TABLE acct (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)",
    )
    .await;
    let bus = Bus::new("myatomic").await;
    let p = bus.name().to_owned();
    let sink = start_sink(
        &bus,
        sink_config("replica", SinkKind::Mysql, &mysql_url(&db)),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let (stop, bad, db) = (stop.clone(), bad.clone(), db.clone());
        tokio::spawn(async move {
            let mut c = mysql_conn(&db).await;
            c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                .await
                .unwrap();
            let mut polls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM big").await.unwrap();
                if let Some(n) = n.filter(|n| *n != 0 && *n != 20_000) {
                    bad.lock().unwrap().push(format!("count {n}"));
                }
                let s: Option<Option<i64>> = c
                    .query_first("SELECT CAST(SUM(balance) AS SIGNED) FROM acct")
                    .await
                    .unwrap();
                if let Some(s) = s.flatten().filter(|s| *s != 100_000) {
                    bad.lock().unwrap().push(format!("sum {s}"));
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
    let envs = big.tx(
        &p,
        100,
        (0..20_000)
            .map(|i| ins(json!({"id": i, "v": format!("row {i}")})))
            .collect(),
    );
    let (a, b) = envs.split_at(9_999);
    bus.publish(a).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let last = bus.publish(b).await;
    assert!(wait_my_seq(&db, &p, "replica", last, Duration::from_secs(60)).await);

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
    let mut seed = 7u64;
    for t in 0..2000u64 {
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
    assert!(wait_my_seq(&db, &p, "replica", last, Duration::from_secs(60)).await);
    stop.store(true, Ordering::Relaxed);
    let polls = reader.await.unwrap();
    assert!(polls > 10, "reader polled {polls} times");
    let bad = bad.lock().unwrap().clone();
    assert!(
        bad.is_empty(),
        "reader saw partial transactions: {:?}",
        &bad[..bad.len().min(10)]
    );
    let got: Vec<String> = my_rows(&db, "SELECT CAST(balance AS CHAR) FROM acct ORDER BY id").await;
    assert_eq!(
        got,
        balances.iter().map(|b| b.to_string()).collect::<Vec<_>>()
    );
    sink.stop().await;
    bus.cleanup().await;
    mysql_drop_db(&db).await;
}

#[tokio::test]
async fn hostile_identifiers_are_just_names() {
    let db = unique("mysink_hostile");
    mysql_create_db(&db).await;
    my_exec(
        &db,
        "CREATE TABLE `x\"; drop table y; --` (`sel ect` BIGINT PRIMARY KEY, `a.b` TEXT, ```tick``` TEXT, `ünï` TEXT, `order` INT)",
    )
    .await;
    my_exec(&db, "CREATE TABLE y (id INT)").await;
    let bus = Bus::new("myhostile").await;
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
        sink_config("replica", SinkKind::Mysql, &mysql_url(&db)),
    );
    assert!(
        wait_my_seq(&db, &p, "replica", last, Duration::from_secs(30)).await,
        "{:?}",
        sink.ready_report()
    );
    let rows = my_rows(&db, "SELECT CONCAT_WS('|', `sel ect`, `a.b`, ```tick```, `ünï`, `order`) FROM `x\"; drop table y; --`").await;
    assert_eq!(rows, vec!["3|three|t|ï|3"]);
    assert_eq!(
        my_rows(&db, "SELECT CAST(COUNT(*) AS CHAR) FROM y").await,
        vec!["0"]
    );
    sink.stop().await;
    bus.cleanup().await;
    mysql_drop_db(&db).await;
}

#[tokio::test]
async fn poison_event_halts_by_default_and_dead_letters_on_request() {
    let db = unique("mysink_poison");
    mysql_create_db(&db).await;
    my_exec(
        &db,
        "CREATE TABLE t (id BIGINT PRIMARY KEY, n INT NOT NULL CHECK (n >= 0))",
    )
    .await;
    let bus = Bus::new("mypoison").await;
    let p = bus.name().to_owned();
    let t = Table::new(
        "public",
        "t",
        &[("id", "int64", true), ("n", "int64", false)],
    );
    let mut envs = t.tx(&p, 1, vec![ins(json!({"id": 1, "n": 1}))]);
    envs.extend(t.tx(
        &p,
        2,
        vec![
            ins(json!({"id": 2, "n": 2})),
            ins(json!({"id": 3, "n": -5})),
        ],
    ));
    envs.extend(t.tx(&p, 3, vec![ins(json!({"id": 4, "n": 99999999999i64}))]));
    envs.extend(t.tx(&p, 4, vec![ins(json!({"id": 5, "n": 5}))]));
    let last = bus.publish(&envs).await;

    let sink = start_sink(
        &bus,
        sink_config("halting", SinkKind::Mysql, &mysql_url(&db)),
    );
    let ok = wait_until(Duration::from_secs(30), || {
        let h = sink.health.clone();
        async move { h.report().1.first().is_some_and(|(_, r)| r.contains("pos")) }
    })
    .await;
    let reason = sink
        .ready_report()
        .1
        .first()
        .map(|r| r.1.clone())
        .unwrap_or_default();
    assert!(ok, "halted with a reason: {reason}");
    assert!(
        reason.contains("public.t") && reason.contains(&streamed(&hex16(2), 2)),
        "{reason}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        my_rows(&db, "SELECT CAST(id AS CHAR) FROM t ORDER BY id").await,
        vec!["1"]
    );
    sink.stop().await;

    let mut cfg = sink_config("dlq", SinkKind::Mysql, &mysql_url(&db));
    cfg.on_error = OnError::DeadLetter;
    let sink = start_sink(&bus, cfg);
    assert!(
        wait_my_seq(&db, &p, "dlq", last, Duration::from_secs(30)).await,
        "{:?}",
        sink.ready_report()
    );
    assert_eq!(
        my_rows(&db, "SELECT CAST(id AS CHAR) FROM t ORDER BY id").await,
        vec!["1", "2", "5"]
    );
    let letters = read_dead_letters(&bus, &p, "dlq", 2).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0]["event"]["after"]["id"], 3);
    assert_eq!(letters[1]["event"]["after"]["id"], 4);
    let e = letters[1]["error"].as_str().unwrap();
    assert!(
        e.contains("'n'") || e.contains("`n`"),
        "names the column: {e}"
    );
    sink.stop().await;
    bus.cleanup().await;
    mysql_drop_db(&db).await;
}

/// Runs administrative SQL (users, KILL) on the test MariaDB as its all-privileges test user.
async fn root_sql(sql: &str) {
    let mut c = mysql_conn("").await;
    c.query_drop(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = c.disconnect().await;
}

#[tokio::test]
async fn target_outage_then_catch_up_and_restarts_converge() {
    let db = unique("mysink_outage");
    mysql_create_db(&db).await;
    my_exec(
        &db,
        "CREATE TABLE t (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)",
    )
    .await;
    let user = unique("tmsink");
    for host in ["127.0.0.1", "localhost"] {
        root_sql(&format!("CREATE USER '{user}'@'{host}' IDENTIFIED BY 'pw'; GRANT ALL ON `{db}`.* TO '{user}'@'{host}'")).await;
    }
    let url = mysql_url_as(&user, "pw", &db);
    let bus = Bus::new("myoutage").await;
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
    let sink = start_sink(&bus, sink_config("replica", SinkKind::Mysql, &url));
    let last = bus.publish(&batch(200, &mut expected)).await;
    assert!(wait_my_seq(&db, &p, "replica", last, Duration::from_secs(30)).await);

    // Outage: lock the account and kill its connections.
    for host in ["127.0.0.1", "localhost"] {
        root_sql(&format!("ALTER USER '{user}'@'{host}' ACCOUNT LOCK")).await;
    }
    root_sql(&format!(
        "SELECT CONCAT('KILL ', ID, ';') INTO @k FROM information_schema.PROCESSLIST WHERE USER = '{user}' LIMIT 1; \
         SET @k = COALESCE(@k, 'DO 0'); PREPARE s FROM @k; EXECUTE s;"
    )).await;
    let last = bus.publish(&batch(300, &mut expected)).await;
    let went_unready = wait_until(Duration::from_secs(15), || {
        let h = sink.health.clone();
        async move { !h.report().0 }
    })
    .await;
    assert!(went_unready, "sink reports the outage");
    tokio::time::sleep(Duration::from_secs(3)).await;
    for host in ["127.0.0.1", "localhost"] {
        root_sql(&format!("ALTER USER '{user}'@'{host}' ACCOUNT UNLOCK")).await;
    }
    assert!(
        wait_my_seq(&db, &p, "replica", last, Duration::from_secs(90)).await,
        "caught up: {:?}",
        sink.ready_report()
    );
    sink.stop().await;

    let mut last = 0;
    for round in 0..4 {
        let sink = start_sink(&bus, sink_config("replica", SinkKind::Mysql, &url));
        last = bus.publish(&batch(150, &mut expected)).await;
        tokio::time::sleep(Duration::from_millis(100 + 150 * round)).await;
        sink.handle.abort();
        let _ = sink.handle.await;
    }
    let sink = start_sink(&bus, sink_config("replica", SinkKind::Mysql, &url));
    assert!(wait_my_seq(&db, &p, "replica", last, Duration::from_secs(60)).await);
    let got = my_rows(&db, "SELECT CONCAT(id, '=', v) FROM t ORDER BY id").await;
    let want: Vec<String> = expected.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(got, want);
    sink.stop().await;
    bus.cleanup().await;
    for host in ["127.0.0.1", "localhost"] {
        root_sql(&format!("DROP USER IF EXISTS '{user}'@'{host}'")).await;
    }
    mysql_drop_db(&db).await;
}

#[tokio::test]
async fn bulk_load_throughput() {
    let db = unique("mysink_bulk");
    mysql_create_db(&db).await;
    my_exec(&db, "CREATE TABLE bulk (id BIGINT PRIMARY KEY, name TEXT, amount DECIMAL(12,2), ts DATETIME(6), flag TINYINT(1))").await;
    let bus = Bus::new("mybulk").await;
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
        envs.extend(t.tx(&p, tx + 1, (0..TX).map(|i| {
            let id = tx * TX + i;
            ins(json!({"id": id, "name": format!("customer {id}"), "amount": format!("{}.{:02}", id, id % 100),
                       "ts": "2024-02-29T12:45:00.123456Z", "flag": id % 2 == 0}))
        }).collect()));
    }
    let last = bus.publish(&envs).await;
    drop(envs);
    let started = Instant::now();
    let sink = start_sink(
        &bus,
        sink_config("replica", SinkKind::Mysql, &mysql_url(&db)),
    );
    assert!(wait_my_seq(&db, &p, "replica", last, Duration::from_secs(300)).await);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(
        my_rows(&db, "SELECT CAST(COUNT(*) AS CHAR) FROM bulk").await,
        vec![ROWS.to_string()]
    );
    eprintln!("BENCH mysql sink: {ROWS} rows in {TX}-row transactions applied in {secs:.2} s = {:.0} rows/s", ROWS as f64 / secs);
    sink.stop().await;
    bus.cleanup().await;
    mysql_drop_db(&db).await;
}
