//! Large rows end to end through the real daemon (issue #10, item 2).
//!
//! * `big_rows_reach_both_sinks_with_default_settings`: a 5 MiB `bytea` row (an envelope
//!   below the shared server's 8 MB `max_payload` but above the sink's old 4 MiB fetch budget)
//!   and a 20 MiB `text` row (above `max_payload`: the default `oversize = "reference"` takes
//!   it through the object store) reach a Postgres and a MariaDB sink, and the rows after them
//!   arrive too.
//! * `oversize_*`: a private nats-server with `max_payload` 256 KB and a 1 MiB row under each
//!   policy: `halt` (definite error naming table, key, size and limit; `/readyz` 503),
//!   `dead_letter` (marker on `<prefix>.<pipeline>.oversize`, later rows flow, the metric
//!   counts 1) and `reference` (the sink applies the big row); the MariaDB source with a
//!   LONGBLOB row under `reference`.

use crate::common::*;
use crate::nats_small::SmallNats;
use mysql_async::prelude::Queryable as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SMALL_NATS_PAYLOAD: usize = 256 * 1024;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
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
}

/// Deterministic pseudo-random bytes (incompressible enough, reproducible).
fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn text(len: usize) -> String {
    "large-row-text-".chars().cycle().take(len).collect()
}

/// `(id, md5(note), md5(data))` of every row of `big` in a Postgres database.
async fn pg_rows(db: &str, table: &str) -> Vec<(i32, String, String)> {
    let c = pg_connect(db).await;
    match c
        .query(
            &format!(
                "SELECT id, md5(coalesce(note, '')), md5(coalesce(data, ''::bytea)) FROM {table} ORDER BY id"
            ),
            &[],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect(),
        Err(_) => Vec::new(),
    }
}

async fn my_rows(db: &str) -> Vec<(i32, String, String)> {
    let mut c = mysql_conn(db).await;
    let rows: Vec<(i32, String, String)> = c
        .query("SELECT id, MD5(COALESCE(note, '')), MD5(COALESCE(data, '')) FROM big ORDER BY id")
        .await
        .unwrap_or_default();
    let _ = c.disconnect().await;
    rows
}

fn pg_sink(name: &str, db: &str) -> String {
    format!(
        "\n  [[pipelines.sinks]]\n  name = \"{name}\"\n  kind = \"postgres\"\n  url = \"{}\"\n",
        pg_url(db)
    )
}

fn pg_source(db: &str) -> String {
    format!(
        "  [pipelines.source]\n  kind = \"postgres\"\n  url = \"{}\"\n  tables = [\"public.*\"]\n  heartbeat_secs = 2\n",
        pg_url(db)
    )
}

fn config(nats: &str, port: Option<u16>, pipeline: &str, extra: &str, body: &str) -> String {
    let listen = port.map(|p| format!("127.0.0.1:{p}")).unwrap_or_default();
    format!(
        "[nats]\nurl = \"{nats}\"\n\n[metrics]\nlisten = \"{listen}\"\n\n[[pipelines]]\nname = \"{pipeline}\"\n{extra}{body}"
    )
}

const PG_TABLE: &str = "CREATE TABLE big (id int PRIMARY KEY, note text, data bytea)";

/// A row of `big`: `(id, note, data)`.
type BigRow = (i32, Option<String>, Option<Vec<u8>>);

/// Inserts rows into the Postgres `big` table, one transaction each.
async fn pg_insert(db: &str, rows: &[BigRow]) {
    let c = pg_connect(db).await;
    for (id, note, data) in rows {
        c.execute(
            "INSERT INTO big (id, note, data) VALUES ($1, $2, $3)",
            &[id, note, data],
        )
        .await
        .unwrap_or_else(|e| panic!("insert {id}: {e}"));
    }
}

async fn wait_rows<F, Fut>(what: &str, want: &[(i32, String, String)], daemon: &Daemon, read: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<(i32, String, String)>>,
{
    let ok = wait_until(Duration::from_secs(180), || async { read().await == want }).await;
    assert!(
        ok,
        "{what}: rows {:?}, want {want:?}\nlogs:\n{}",
        read().await,
        tail(&daemon.logs())
    );
}

fn tail(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

async fn cleanup(js: &async_nats::jetstream::Context, pipeline: &str, pg: &[&str], my: &[&str]) {
    let _ = js
        .delete_stream(format!("TIDEMARK_{}", pipeline.to_uppercase()))
        .await;
    let _ = js
        .delete_object_store(tidemark_core::oversize::bucket_name(pipeline))
        .await;
    if let Ok(kv) = js.get_key_value("tidemark_state").await {
        let _ = kv.purge(format!("source.{pipeline}")).await;
    }
    for db in pg {
        pg_drop_db(db).await;
    }
    for db in my {
        mysql_drop_db(db).await;
    }
}

#[tokio::test]
async fn big_rows_reach_both_sinks_with_default_settings() {
    let pipeline = unique("big");
    let (src, pg_dst, my_dst) = (unique("big_src"), unique("big_pg"), unique("big_my"));
    for db in [&src, &pg_dst] {
        pg_create_db(db).await;
        pg_connect(db).await.batch_execute(PG_TABLE).await.unwrap();
    }
    mysql_create_db(&my_dst).await;
    let mut c = mysql_conn(&my_dst).await;
    c.query_drop("CREATE TABLE big (id INT PRIMARY KEY, note LONGTEXT, data LONGBLOB)")
        .await
        .unwrap();
    let _ = c.disconnect().await;

    let sinks = format!(
        "{}\n  [[pipelines.sinks]]\n  name = \"my\"\n  kind = \"mysql\"\n  url = \"{}\"\n",
        pg_sink("pg", &pg_dst),
        mysql_url(&my_dst)
    );
    let mut daemon = Daemon::start(&config(
        &NATS,
        None,
        &pipeline,
        "",
        &(pg_source(&src) + &sinks),
    ));
    pg_insert(
        &src,
        &[
            (1, Some("before".into()), None),
            (2, None, Some(blob(5 << 20, 2))),
            (3, Some("between".into()), None),
            (4, Some(text(20 << 20)), None),
            (5, Some("after".into()), Some(vec![1, 2, 3])),
        ],
    )
    .await;
    let want = pg_rows(&src, "big").await;
    assert_eq!(want.len(), 5);
    wait_rows("postgres sink", &want, &daemon, || pg_rows(&pg_dst, "big")).await;
    wait_rows("mariadb sink", &want, &daemon, || my_rows(&my_dst)).await;
    // The 20 MiB row went through the object store (the shared server's max_payload is 8 MB).
    let logs = daemon.logs();
    assert!(
        logs.contains("stored in the object store"),
        "{}",
        tail(&logs)
    );
    assert_eq!(daemon.terminate().await, 0);
    cleanup(&js().await, &pipeline, &[&src, &pg_dst], &[&my_dst]).await;
}

/// A pipeline on a private 256 KB nats-server: rows 1 (small), 2 (1 MiB) and 3 (small).
struct Oversized {
    nats: SmallNats,
    pipeline: String,
    src: String,
    dst: String,
    port: u16,
    daemon: Daemon,
    want: Vec<(i32, String, String)>,
}

async fn oversized(policy: &str) -> Oversized {
    let nats = SmallNats::start(SMALL_NATS_PAYLOAD).await;
    let pipeline = unique("ovs");
    let (src, dst) = (unique("ovs_src"), unique("ovs_dst"));
    for db in [&src, &dst] {
        pg_create_db(db).await;
        pg_connect(db).await.batch_execute(PG_TABLE).await.unwrap();
    }
    let port = free_port();
    let daemon = Daemon::start(&config(
        &nats.url(),
        Some(port),
        &pipeline,
        &format!("oversize = \"{policy}\"\n"),
        &(pg_source(&src) + &pg_sink("pg", &dst)),
    ));
    pg_insert(
        &src,
        &[
            (1, Some("before".into()), None),
            (2, None, Some(blob(1 << 20, 7))),
            (3, Some("after".into()), None),
        ],
    )
    .await;
    let want = pg_rows(&src, "big").await;
    Oversized {
        nats,
        pipeline,
        src,
        dst,
        port,
        daemon,
        want,
    }
}

impl Oversized {
    async fn finish(mut self) {
        let _ = self.daemon.terminate().await;
        let js = async_nats::jetstream::new(async_nats::connect(self.nats.url()).await.unwrap());
        cleanup(&js, &self.pipeline, &[&self.src, &self.dst], &[]).await;
    }

    async fn metric(&self) -> f64 {
        let body = http_get(self.port, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        body.lines()
            .find(|l| {
                l.starts_with("tidemark_oversize_events_total{")
                    && l.contains(&format!("pipeline=\"{}\"", self.pipeline))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

#[tokio::test]
async fn oversize_halt_stops_the_source_with_a_definite_error() {
    let t = oversized("halt").await;
    let first = vec![t.want[0].clone()];
    let dst = t.dst.clone();
    wait_rows("row before the big one", &first, &t.daemon, || {
        pg_rows(&dst, "big")
    })
    .await;
    let port = t.port;
    let halted = wait_until(Duration::from_secs(60), || async {
        t.daemon.logs().contains("event too large for NATS")
            && matches!(http_get(port, "/readyz").await, Some((503, b)) if b.contains("source"))
    })
    .await;
    let logs = t.daemon.logs();
    assert!(halted, "no definite oversize error:\n{}", tail(&logs));
    let line = logs
        .lines()
        .find(|l| l.contains("event too large for NATS") && l.contains(" ERROR "))
        .unwrap_or_else(|| panic!("no ERROR line:\n{}", tail(&logs)));
    for part in [
        "table public.big",
        "key {\"id\":2}",
        &SMALL_NATS_PAYLOAD.to_string(),
        "max_payload",
        "oversize = \"reference\"",
    ] {
        assert!(line.contains(part), "{part:?} missing in: {line}");
    }
    assert!(t.metric().await >= 1.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The big row is part of the initial snapshot here, and a source that halts during its
    // snapshot redoes it on every retry, truncating the targets first: the row before the big
    // one may be there or not. Nothing from the big row on may be.
    let now = pg_rows(&t.dst, "big").await;
    assert!(
        now.is_empty() || now == first,
        "nothing after the halt is applied: {now:?}"
    );
    t.finish().await;
}

#[tokio::test]
async fn oversize_dead_letter_publishes_a_marker_and_moves_on() {
    let t = oversized("dead_letter").await;
    let want = vec![t.want[0].clone(), t.want[2].clone()];
    let dst = t.dst.clone();
    wait_rows(
        "rows around the dead-lettered one",
        &want,
        &t.daemon,
        || pg_rows(&dst, "big"),
    )
    .await;
    assert_eq!(t.metric().await, 1.0);
    // The marker: on <prefix>.<pipeline>.oversize, with the header, the key, no row data.
    let js = async_nats::jetstream::new(async_nats::connect(t.nats.url()).await.unwrap());
    let stream = js
        .get_stream(format!("TIDEMARK_{}", t.pipeline.to_uppercase()))
        .await
        .unwrap();
    let marker = stream
        .get_last_raw_message_by_subject(&format!("tidemark.{}.oversize", t.pipeline))
        .await
        .expect("marker on the oversize subject");
    let headers = marker.headers.clone();
    assert!(
        headers.get("Tidemark-Oversize").map(|v| v.as_str()) == Some("dead_letter"),
        "{headers:?}"
    );
    let body: serde_json::Value = serde_json::from_slice(&marker.payload).unwrap();
    assert_eq!(body["key"]["id"], 2);
    assert!(body["after"].is_null());
    assert_eq!(body["oversize"]["limit"], SMALL_NATS_PAYLOAD);
    assert!(marker.payload.len() < 4096);
    t.finish().await;
}

#[tokio::test]
async fn oversize_reference_applies_the_big_row() {
    let t = oversized("reference").await;
    let (dst, want) = (t.dst.clone(), t.want.clone());
    wait_rows("all rows", &want, &t.daemon, || pg_rows(&dst, "big")).await;
    assert_eq!(t.metric().await, 1.0);
    t.finish().await;
}

#[tokio::test]
async fn oversize_reference_from_a_mariadb_longblob() {
    let nats = SmallNats::start(SMALL_NATS_PAYLOAD).await;
    let pipeline = unique("ovm");
    let (src, dst) = (unique("ovm_src"), unique("ovm_dst"));
    mysql_create_db(&src).await;
    let mut c = mysql_conn(&src).await;
    c.query_drop("CREATE TABLE big (id INT PRIMARY KEY, note LONGTEXT, data LONGBLOB)")
        .await
        .unwrap();
    pg_create_db(&dst).await;
    pg_connect(&dst)
        .await
        .batch_execute(PG_TABLE)
        .await
        .unwrap();
    let source = format!(
        "  [pipelines.source]\n  kind = \"mysql\"\n  url = \"{}\"\n  tables = [\"{src}.*\"]\n  server_id = {}\n  heartbeat_secs = 2\n",
        mysql_url(&src),
        1000 + rand::random::<u32>() % 1_000_000_000
    );
    let sink = pg_sink("pg", &dst) + "  schema = \"public\"\n";
    let mut daemon = Daemon::start(&config(&nats.url(), None, &pipeline, "", &(source + &sink)));
    for (id, data) in [(1, vec![1u8]), (2, blob(1 << 20, 9)), (3, vec![3u8])] {
        c.exec_drop(
            "INSERT INTO big (id, note, data) VALUES (?, 'n', ?)",
            (id, data),
        )
        .await
        .unwrap();
    }
    let want = my_rows(&src).await;
    wait_rows("mariadb → postgres", &want, &daemon, || {
        pg_rows(&dst, "big")
    })
    .await;
    let _ = c.disconnect().await;
    assert_eq!(daemon.terminate().await, 0);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    cleanup(&js, &pipeline, &[&dst], &[&src]).await;
}
