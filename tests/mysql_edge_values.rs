//! MariaDB time and date edge values through a real daemon into Postgres and MariaDB sinks.
//!
//! TIME spans -838:59:59 … 838:59:59 (fractions on negative values included): it must land in
//! `interval` when a Postgres sink creates the table, in an existing `interval` column, and in
//! TIME on MariaDB; into a Postgres `time` column it must fail with an error naming the table
//! and column. Zero and partial zero dates (`0000-00-00`, `2024-00-15`, `2024-02-00`,
//! `2024-00-00 10:00:00`) arrive as NULL, counted by `tidemark_source_values_substituted_total`
//! and logged once per column, from the snapshot and from the stream alike. YEAR 0000 and the
//! MEDIUMINT extremes ride along.

use crate::common::*;
use mysql_async::prelude::Queryable as _;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TABLE_DDL: &str = "CREATE TABLE edge (
    id INT PRIMARY KEY,
    t0 TIME, t1 TIME(1), t3 TIME(3), t6 TIME(6),
    d DATE, dn DATE NOT NULL, dt DATETIME, ts TIMESTAMP NULL,
    y YEAR, m MEDIUMINT, mu MEDIUMINT UNSIGNED)";

/// Rows as `INSERT … VALUES` tuples without the id; `{id}` is prepended.
const ROWS: [&str; 2] = [
    "'-838:59:59', '100:00:00.5', '-00:00:01.25', '-838:59:58.999999', \
     '2024-00-15', '2024-02-00', '2024-00-00 10:00:00', NULL, 0, -8388608, 16777215",
    "'838:59:59', '-00:00:00.5', '23:59:59.999', '-00:00:00.000001', \
     '2024-02-29', '0000-00-00', '2024-02-29 13:45:00', '0000-00-00 00:00:00', 2155, -1, 0",
];

/// The values every target must hold, per row (TIME as `[-]H:MM:SS[.f]` with MySQL's
/// fraction digits; NULL as `None`).
fn expected(id: i64) -> Vec<Option<&'static str>> {
    if id % 10 == 1 {
        vec![
            Some("-838:59:59"),
            Some("100:00:00.5"),
            Some("-00:00:01.250"),
            Some("-838:59:58.999999"),
            None,
            None,
            None,
            None,
            Some("0"),
            Some("-8388608"),
            Some("16777215"),
        ]
    } else {
        vec![
            Some("838:59:59"),
            Some("-00:00:00.5"),
            Some("23:59:59.999"),
            Some("-00:00:00.000001"),
            Some("2024-02-29"),
            None,
            Some("2024-02-29 13:45:00"),
            None,
            Some("2155"),
            Some("-1"),
            Some("0"),
        ]
    }
}

/// Postgres renders intervals as `[-]H:MM:SS[.f]` (no days: the values carry only hours) and
/// drops trailing fraction zeros; MariaDB keeps TIME(n) digits. Normalise both.
fn norm_time(s: &str) -> String {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (hms, frac) = body.split_once('.').unwrap_or((body, ""));
    let mut parts = hms.split(':');
    let h: u32 = parts.next().unwrap_or("0").parse().unwrap_or(u32::MAX);
    let rest: Vec<&str> = parts.collect();
    let frac = frac.trim_end_matches('0');
    format!(
        "{}{h}:{}{}{}",
        if neg { "-" } else { "" },
        rest.join(":"),
        if frac.is_empty() { "" } else { "." },
        frac
    )
}

fn norm_row(row: Vec<Option<String>>) -> Vec<Option<String>> {
    row.into_iter()
        .enumerate()
        .map(|(i, v)| v.map(|v| if i < 4 { norm_time(&v) } else { v }))
        .collect()
}

fn want(id: i64) -> Vec<Option<String>> {
    norm_row(
        expected(id)
            .into_iter()
            .map(|v| v.map(str::to_owned))
            .collect(),
    )
}

const PG_SELECT: &str = "SELECT id, t0::text, t1::text, t3::text, t6::text, d::text, dn::text, \
    to_char(dt, 'YYYY-MM-DD HH24:MI:SS'), ts::text, y::text, m::text, mu::text FROM {t} ORDER BY id";

async fn pg_rows(db: &str, table: &str) -> Vec<(i64, Vec<Option<String>>)> {
    let c = pg_connect(db).await;
    let rows = match c.query(PG_SELECT.replace("{t}", table).as_str(), &[]).await {
        Ok(r) => r,
        Err(_) => return Vec::new(),
    };
    rows.iter()
        .map(|r| {
            let id: i32 = r
                .try_get::<_, i32>(0)
                .or_else(|_| r.try_get::<_, i64>(0).map(|v| v as i32))
                .unwrap_or(-1);
            (
                i64::from(id),
                norm_row((1..12).map(|i| r.get::<_, Option<String>>(i)).collect()),
            )
        })
        .collect()
}

async fn my_rows(db: &str) -> Vec<(i64, Vec<Option<String>>)> {
    let mut c = mysql_conn(db).await;
    let rows: Vec<mysql_async::Row> = match c
        .query(
            "SELECT id, CAST(t0 AS CHAR), CAST(t1 AS CHAR), CAST(t3 AS CHAR), CAST(t6 AS CHAR), \
             CAST(d AS CHAR), CAST(dn AS CHAR), DATE_FORMAT(dt, '%Y-%m-%d %H:%i:%s'), \
             CAST(ts AS CHAR), CAST(y AS CHAR), CAST(m AS CHAR), CAST(mu AS CHAR) \
             FROM edge ORDER BY id",
        )
        .await
    {
        Ok(r) => r,
        Err(_) => return Vec::new(),
    };
    let _ = c.disconnect().await;
    rows.into_iter()
        .map(|mut r| {
            let id: i64 = r.take::<Option<i64>, _>(0).flatten().unwrap_or(-1);
            let vals = (1..12)
                .map(|i| r.take::<Option<String>, _>(i).flatten())
                .collect();
            (id, norm_row(vals))
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn scrape(port: u16) -> String {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return String::new();
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    buf
}

/// Value of the `tidemark_source_values_substituted_total` sample of `column` / `kind`.
fn substituted(body: &str, pipeline: &str, column: &str, kind: &str) -> f64 {
    let frags = [
        format!("pipeline=\"{pipeline}\""),
        format!("column=\"{column}\""),
        format!("kind=\"{kind}\""),
    ];
    body.lines()
        .filter(|l| l.starts_with("tidemark_source_values_substituted_total{"))
        .find(|l| frags.iter().all(|f| l.contains(f.as_str())))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn sink_toml(name: &str, kind: &str, url: &str, create: bool) -> String {
    format!(
        "\n  [[pipelines.sinks]]\n  name = \"{name}\"\n  kind = \"{kind}\"\n  url = \"{url}\"\n  create_tables = {create}\n"
    )
}

#[tokio::test]
async fn mariadb_time_range_and_zero_dates_reach_postgres_and_mariadb_exactly() {
    let pipeline = unique("myedge");
    let src = unique("myedge_src");
    let pg_new = unique("myedge_pgnew");
    let pg_old = unique("myedge_pgold");
    let pg_time = unique("myedge_pgtime");
    let my_dst = unique("myedge_mydst");
    mysql_create_db(&src).await;
    mysql_create_db(&my_dst).await;
    for db in [&pg_new, &pg_old, &pg_time] {
        pg_create_db(db).await;
    }
    // Existing Postgres targets: one with interval columns, one with a `time` column.
    let cols = |t0: &str| {
        format!(
            "CREATE SCHEMA \"{src}\"; CREATE TABLE \"{src}\".edge (id int PRIMARY KEY, t0 {t0}, \
             t1 interval, t3 interval, t6 interval, d date, dn date, dt timestamp, ts timestamptz, \
             y int, m int, mu int)"
        )
    };
    pg_connect(&pg_old)
        .await
        .batch_execute(&cols("interval"))
        .await
        .expect("old target");
    pg_connect(&pg_time)
        .await
        .batch_execute(&cols("time"))
        .await
        .expect("time target");

    // Snapshot rows 1, 2 (permissive sql_mode: MariaDB accepts zero dates then).
    let mut c = mysql_conn(&src).await;
    c.query_drop("SET SESSION sql_mode = ''")
        .await
        .expect("sql_mode");
    c.query_drop(TABLE_DDL).await.expect("ddl");
    for (i, r) in ROWS.iter().enumerate() {
        c.query_drop(format!("INSERT INTO edge VALUES ({}, {r})", i + 1))
            .await
            .expect("insert");
    }
    let port = free_port();
    let config = format!(
        "[nats]\nurl = \"{NATS}\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[[pipelines]]\nname = \"{pipeline}\"\n  \
         [pipelines.source]\n  kind = \"mysql\"\n  url = \"{}\"\n  tables = [\"{src}.*\"]\n  server_id = {}\n  heartbeat_secs = 2\n{}{}{}{}",
        mysql_url(&src),
        10_000 + (rand::random::<u32>() % 2_000_000_000),
        sink_toml("pgnew", "postgres", &pg_url(&pg_new), true),
        sink_toml("pgold", "postgres", &pg_url(&pg_old), false),
        sink_toml("pgtime", "postgres", &pg_url(&pg_time), false),
        sink_toml("my", "mysql", &mysql_url(&my_dst), true),
    );
    let mut daemon = Daemon::start(&config);

    // Streamed rows 11, 12 once the snapshot rows are through.
    let table = format!("\"{src}\".edge");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            pg_rows(&pg_new, &table).await.len() == 2
        })
        .await,
        "snapshot rows never reached the created Postgres table; logs:\n{}",
        daemon.logs()
    );
    for (i, r) in ROWS.iter().enumerate() {
        c.query_drop(format!("INSERT INTO edge VALUES ({}, {r})", i + 11))
            .await
            .expect("insert");
    }
    let _ = c.disconnect().await;

    let ids = [1i64, 2, 11, 12];
    let expect_all: Vec<(i64, Vec<Option<String>>)> = ids.iter().map(|&i| (i, want(i))).collect();
    let converged = wait_until(Duration::from_secs(60), || async {
        pg_rows(&pg_new, &table).await == expect_all
            && pg_rows(&pg_old, &table).await == expect_all
            && my_rows(&my_dst).await == expect_all
    })
    .await;
    assert!(
        converged,
        "targets differ:\npg created: {:?}\npg existing: {:?}\nmariadb: {:?}\nwant: {:?}\nlogs:\n{}",
        pg_rows(&pg_new, &table).await,
        pg_rows(&pg_old, &table).await,
        my_rows(&my_dst).await,
        expect_all,
        daemon.logs()
    );

    // create_tables chose interval for TIME and left the zero-date NOT NULL column nullable.
    let pg = pg_connect(&pg_new).await;
    let types: Vec<(String, String, String)> = pg
        .query(
            "SELECT column_name::text, data_type::text, is_nullable::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = 'edge' AND column_name IN ('t0', 't6', 'dn') \
             ORDER BY column_name",
            &[&src],
        )
        .await
        .expect("columns")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        types,
        [
            ("dn".into(), "date".into(), "YES".into()),
            ("t0".into(), "interval".into(), "YES".into()),
            ("t6".into(), "interval".into(), "YES".into()),
        ]
    );
    let mut mc = mysql_conn(&my_dst).await;
    let t0_type: Option<String> = mc
        .query_first(format!(
            "SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '{my_dst}' \
             AND TABLE_NAME = 'edge' AND COLUMN_NAME = 't0'"
        ))
        .await
        .expect("mariadb columns");
    let _ = mc.disconnect().await;
    assert_eq!(t0_type.as_deref(), Some("time"));

    // An existing `time` column refuses -838:59:59 with an error naming table and column.
    let named = wait_until(Duration::from_secs(30), || async {
        let logs = daemon.logs();
        logs.contains("column \"t0\"") && logs.contains("cannot convert value")
    })
    .await;
    assert!(
        named,
        "no error naming the time column; logs:\n{}",
        daemon.logs()
    );
    assert!(pg_rows(&pg_time, &table).await.is_empty());

    // Counted per column and kind: two rows each from the snapshot and the stream.
    let counts = [
        ("d", "zero_in_date", 2.0),
        ("dn", "zero_in_date", 2.0),
        ("dn", "zero_date", 2.0),
        ("dt", "zero_in_date", 2.0),
        ("ts", "zero_date", 2.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = scrape(port).await;
        let ok = counts
            .iter()
            .all(|(c, k, n)| substituted(&body, &pipeline, c, k) == *n);
        if ok || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (col, kind, n) in counts {
        assert_eq!(
            substituted(&body, &pipeline, col, kind),
            n,
            "{col}/{kind}:\n{body}"
        );
    }
    assert!(
        body.contains(&format!("table=\"{src}.edge\"")),
        "table label:\n{body}"
    );

    // One WARN per column and kind, naming table and column, without the rows' values.
    let logs = daemon.logs();
    let warns: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("substitution="))
        .collect();
    for (col, kind, _) in counts {
        let n = warns
            .iter()
            .filter(|l| {
                l.contains(&format!("column={col} "))
                    && l.contains(&format!("substitution={kind}"))
                    && l.contains(&format!("table={src}.edge"))
            })
            .count();
        assert_eq!(n, 1, "{col}/{kind} warnings:\n{}", warns.join("\n"));
    }
    assert_eq!(warns.len(), counts.len(), "{}", warns.join("\n"));
    for w in &warns {
        assert!(
            !w.contains("8388608") && !w.contains("838:59"),
            "a warning carries row values: {w}"
        );
    }

    // The halted `pgtime` sink may make the exit code non-zero: only stop the daemon.
    daemon.terminate().await;
    mysql_drop_db(&src).await;
    mysql_drop_db(&my_dst).await;
    for db in [&pg_new, &pg_old, &pg_time] {
        pg_drop_db(db).await;
    }
    delete_stream(&tidemark_core::subject::default_stream_name(&pipeline)).await;
    purge_state(&pipeline).await;
}
