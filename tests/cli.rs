//! The daemon as an operator meets it: configuration errors, `check`,
//! `status`, the metrics/health endpoint, readiness transitions, SIGTERM and
//! secrets kept out of logs. Everything runs the real `tidemark` binary.

use crate::common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A free loopback port for a daemon's metrics endpoint.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `GET path` on 127.0.0.1:port; returns (status code, body), or None if nothing answers.
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

/// Value of the first sample of `family` whose labels contain every `labels` fragment.
fn metric(body: &str, family: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(family) && !l.starts_with('#'))
        .filter(|l| {
            let name_end = l.find(['{', ' ']).unwrap_or(l.len());
            &l[..name_end] == family
        })
        .find(|l| labels.iter().all(|frag| l.contains(frag)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn pg_pipeline(name: &str, source_db: &str, sink_db: &str, port: u16) -> String {
    format!(
        r#"[nats]
url = "{NATS}"
[metrics]
listen = "127.0.0.1:{port}"
[[pipelines]]
name = "{name}"
  [pipelines.source]
  kind = "postgres"
  url = "{src}"
  tables = ["public.*"]
  [[pipelines.sinks]]
  name = "replica"
  kind = "postgres"
  url = "{dst}"
  tables = ["public.*"]
"#,
        src = pg_url(source_db),
        dst = pg_url(sink_db),
    )
}

async fn cleanup(pipeline: &str, dbs: &[&str]) {
    delete_stream(&format!("TIDEMARK_{}", pipeline.to_uppercase())).await;
    purge_state(pipeline).await;
    for db in dbs {
        pg_drop_db(db).await;
    }
}

#[test]
fn misspelled_key_names_key_and_line() {
    let path = temp_file(
        "p.toml",
        "[nats]\nurl = \"nats://127.0.0.1:1\"\n\n[[pipelines]]\nname = \"x\"\n  [pipelines.source]\n  kind = \"postgres\"\n  url = \"postgres://u:topsecret1@h/db\"\n  tabels = [\"public.*\"]\n",
    );
    let (code, out, err) = run_cli(&["check", "--offline", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 2, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("pipelines[0].source.tabels: unknown key `tabels`"),
        "{err}"
    );
    assert!(err.contains("p.toml:9:"), "error must name line 9: {err}");
    assert!(
        !err.contains("topsecret1") && !out.contains("topsecret1"),
        "secret leaked: {err}"
    );
}

#[test]
fn invalid_values_and_missing_env_are_clear_errors() {
    let base = "[[pipelines]]\nname = \"x\"\n  [pipelines.source]\n  kind = \"mysql\"\n  url = \"mysql://u:${TIDEMARK_TEST_UNSET_VAR}@h/db\"\n  server_id = 7\n";
    let path = temp_file("p.toml", base);
    let (code, _, err) = run_cli(&["check", "--offline", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("pipelines[0].source.url"), "{err}");
    assert!(err.contains("TIDEMARK_TEST_UNSET_VAR is not set"), "{err}");

    let path = temp_file(
        "p.toml",
        &base
            .replace("  server_id = 7\n", "")
            .replace("${TIDEMARK_TEST_UNSET_VAR}", "pw"),
    );
    let (code, _, err) = run_cli(&["check", "--offline", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("pipelines[0].source.server_id"), "{err}");

    let (code, _, err) = run_cli(&["run", "-c", "/nonexistent/pipelines.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/pipelines.toml"), "{err}");
}

#[tokio::test]
async fn check_reports_missing_prerequisites_with_fixes() {
    let missing_db = unique("tm_missing");
    let path = temp_file(
        "p.toml",
        &pg_pipeline("chk", &missing_db, &missing_db, free_port()),
    );
    let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("nats reachable"), "{out}");
    assert!(out.contains("FAIL"), "{out}");
    assert!(out.contains("fix:"), "{out}");
    assert!(
        out.contains(&missing_db),
        "the failing probe should name the database: {out}"
    );
}

#[tokio::test]
async fn readiness_follows_the_sink_database_and_metrics_move() {
    let pipeline = unique("ops");
    let (src, dst) = (unique("tm_ops_src"), unique("tm_ops_dst"));
    pg_create_db(&src).await;
    let source = pg_connect(&src).await;
    source
        .batch_execute("CREATE TABLE items (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    let port = free_port();
    let mut daemon = Daemon::start(&pg_pipeline(&pipeline, &src, &dst, port));

    // Alive at once, not ready: the sink database does not exist yet.
    assert!(
        wait_until(Duration::from_secs(20), || async {
            http_get(port, "/healthz").await.map(|r| r.0) == Some(200)
        })
        .await,
        "healthz never answered; logs:\n{}",
        daemon.logs()
    );
    let not_ready = wait_until(Duration::from_secs(30), || async {
        matches!(http_get(port, "/readyz").await, Some((503, body)) if body.contains("sink/replica"))
    })
    .await;
    assert!(
        not_ready,
        "readyz should be 503 naming the sink; logs:\n{}",
        daemon.logs()
    );

    // Create the sink database and table: the daemon becomes ready without a restart.
    pg_create_db(&dst).await;
    pg_connect(&dst)
        .await
        .batch_execute("CREATE TABLE items (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    let ready = wait_until(Duration::from_secs(60), || async {
        http_get(port, "/readyz").await.map(|r| r.0) == Some(200)
    })
    .await;
    assert!(
        ready,
        "readyz never became 200: {:?}\nlogs:\n{}",
        http_get(port, "/readyz").await,
        daemon.logs()
    );

    source
        .batch_execute("INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 50) g; UPDATE items SET name = 'x' WHERE id <= 10; DELETE FROM items WHERE id = 50")
        .await
        .unwrap();
    let target = pg_connect(&dst).await;
    let applied = wait_until(Duration::from_secs(60), || async {
        target
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .map(|r| r.get::<_, i64>(0) == 49)
            .unwrap_or(false)
    })
    .await;
    assert!(
        applied,
        "rows never reached the sink; logs:\n{}",
        daemon.logs()
    );

    // Counters move right after the commit that made the rows visible: poll briefly.
    let p = format!("pipeline=\"{pipeline}\"");
    let moving = [
        "tidemark_source_events_total",
        "tidemark_published_events_total",
        "tidemark_sink_applied_events_total",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = match http_get(port, "/metrics").await {
            Some((200, b)) => b,
            _ => String::new(),
        };
        let moved = moving
            .iter()
            .all(|f| metric(&body, f, &[&p]).unwrap_or(0.0) > 0.0);
        if moved || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let moved = moving
        .iter()
        .all(|f| metric(&body, f, &[&p]).unwrap_or(0.0) > 0.0);
    assert!(moved, "counters should have moved:\n{body}");
    for family in [
        "tidemark_source_lag_seconds",
        "tidemark_source_slot_lag_bytes",
        "tidemark_publish_latency_seconds_bucket",
        "tidemark_sink_apply_latency_seconds_bucket",
        "tidemark_end_to_end_latency_seconds_bucket",
        "tidemark_sink_pending_events",
        "tidemark_errors_total",
        "tidemark_reconnects_total",
        "tidemark_build_info",
    ] {
        assert!(
            body.contains(family),
            "{family} missing from /metrics:\n{body}"
        );
    }
    let updates = metric(&body, "tidemark_source_events_total", &[&p, "op=\"u\""]).unwrap_or(0.0);
    assert!(updates >= 10.0, "updates counted: {updates}");

    // status works from another process while the daemon runs.
    let (code, out, err) = run_cli(&["status", "-c", daemon.config_path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("pipeline {pipeline}")), "{out}");
    assert!(out.contains("sink replica"), "{out}");
    assert!(
        !out.contains("position -"),
        "status should show the source position: {out}"
    );

    // tail: the envelopes of the stream, filtered by table; compact = one JSON line each.
    let config = daemon.config_path().to_str().unwrap().to_owned();
    let tail = |extra: &[&str]| {
        let mut args = vec!["tail", pipeline.as_str(), "-c", &config, "--from-start"];
        args.extend_from_slice(extra);
        run_cli(&args)
    };
    let (code, out, err) = tail(&["--limit", "3", "--compact", "--table", "public.items"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    for (i, e) in lines.iter().enumerate() {
        assert_eq!(e["op"], "c", "{e}");
        assert_eq!(e["source"]["table"], "items", "{e}");
        assert_eq!(e["key"]["id"], i as i64 + 1, "{e}");
    }
    let (code, out, err) = tail(&["--limit", "1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("items") && out.contains("\"name\""),
        "pretty output: {out}"
    );

    assert_eq!(daemon.terminate().await, 0, "logs:\n{}", daemon.logs());
    drop(source);
    drop(target);
    cleanup(&pipeline, &[&src, &dst]).await;
}

#[tokio::test]
async fn sigterm_exits_zero_quickly_and_loses_nothing() {
    let pipeline = unique("term");
    let (src, dst) = (unique("tm_term_src"), unique("tm_term_dst"));
    pg_create_db(&src).await;
    pg_create_db(&dst).await;
    let ddl = "CREATE TABLE t (id bigint PRIMARY KEY, v text)";
    let source = pg_connect(&src).await;
    source.batch_execute(ddl).await.unwrap();
    pg_connect(&dst).await.batch_execute(ddl).await.unwrap();
    let port = free_port();
    let mut daemon = Daemon::start(&pg_pipeline(&pipeline, &src, &dst, port));
    assert!(
        wait_until(Duration::from_secs(60), || async {
            http_get(port, "/readyz").await.map(|r| r.0) == Some(200)
        })
        .await,
        "never ready; logs:\n{}",
        daemon.logs()
    );
    for batch in 0..20 {
        source
            .batch_execute(&format!(
                "INSERT INTO t SELECT g, 'v' FROM generate_series({}, {}) g",
                batch * 500 + 1,
                batch * 500 + 500
            ))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let code = daemon.terminate().await;
    let took = started.elapsed();
    assert_eq!(code, 0, "logs:\n{}", daemon.logs());
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");

    // Everything committed before the signal arrives after a restart.
    daemon.restart();
    let target = pg_connect(&dst).await;
    let all = wait_until(Duration::from_secs(90), || async {
        target
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .map(|r| r.get::<_, i64>(0) == 10_000)
            .unwrap_or(false)
    })
    .await;
    assert!(
        all,
        "not all rows applied after restart; logs:\n{}",
        daemon.logs()
    );
    assert_eq!(daemon.terminate().await, 0);
    drop(source);
    drop(target);
    cleanup(&pipeline, &[&src, &dst]).await;
}

#[tokio::test]
async fn secrets_never_reach_logs() {
    let pipeline = unique("secret");
    let db = unique("tm_secret");
    pg_create_db(&db).await;
    let secret = "Wr0ngS3cretValue";
    let pg = pg_host_port();
    let config = format!(
        r#"[nats]
url = "{NATS}"
[metrics]
listen = ""
[[pipelines]]
name = "{pipeline}"
  [pipelines.source]
  kind = "postgres"
  url = "postgres://tidemark_scram:${{TIDEMARK_TEST_PG_SECRET}}@{pg}/{db}"
  tables = ["public.*"]
"#
    );
    let mut daemon = Daemon::start_with_env(&config, &[("TIDEMARK_TEST_PG_SECRET", secret)]);
    let failed = wait_until(Duration::from_secs(30), || async {
        let logs = daemon.logs();
        logs.contains("authentication") || logs.contains("password")
    })
    .await;
    let logs = daemon.logs();
    assert!(
        failed,
        "expected an authentication failure in the logs:\n{logs}"
    );
    assert!(!logs.contains(secret), "secret leaked into logs:\n{logs}");
    assert_eq!(daemon.terminate().await, 0, "logs:\n{}", daemon.logs());

    let path = temp_file(
        "p.toml",
        &config.replace("${TIDEMARK_TEST_PG_SECRET}", secret),
    );
    let (_, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()]);
    assert!(
        !out.contains(secret) && !err.contains(secret),
        "secret leaked by check:\n{out}\n{err}"
    );
    cleanup(&pipeline, &[&db]).await;
}

/// Every documented family, with the label fragments of `pipeline` / sink `replica` /
/// table `public.items`.
fn documented_series(pipeline: &str) -> Vec<(&'static str, Vec<String>)> {
    let p = format!("pipeline=\"{pipeline}\"");
    let s = "sink=\"replica\"".to_owned();
    let t = "table=\"public.items\"".to_owned();
    vec![
        (
            "tidemark_source_events_total",
            vec![p.clone(), t.clone(), "op=\"c\"".into()],
        ),
        ("tidemark_published_events_total", vec![p.clone()]),
        ("tidemark_source_lag_seconds", vec![p.clone()]),
        ("tidemark_source_slot_lag_bytes", vec![p.clone()]),
        ("tidemark_publish_latency_seconds_count", vec![p.clone()]),
        (
            "tidemark_sink_applied_events_total",
            vec![p.clone(), s.clone(), "op=\"c\"".into()],
        ),
        (
            "tidemark_sink_applied_events_total",
            vec![p.clone(), s.clone(), "op=\"d\"".into()],
        ),
        (
            "tidemark_sink_duplicates_skipped_total",
            vec![p.clone(), s.clone()],
        ),
        ("tidemark_sink_pending_events", vec![p.clone(), s.clone()]),
        (
            "tidemark_sink_apply_latency_seconds_count",
            vec![p.clone(), s.clone()],
        ),
        (
            "tidemark_end_to_end_latency_seconds_count",
            vec![p.clone(), s.clone()],
        ),
        (
            "tidemark_end_to_end_latency_seconds_bucket",
            vec![p.clone(), s.clone(), "le=\"+Inf\"".into()],
        ),
        (
            "tidemark_sink_dead_letters_total",
            vec![p.clone(), s.clone()],
        ),
        (
            "tidemark_component_ready",
            vec![format!("component=\"{pipeline}/sink/replica\"")],
        ),
        (
            "tidemark_component_ready",
            vec![format!("component=\"{pipeline}/source\"")],
        ),
        (
            "tidemark_reconnects_total",
            vec!["component=\"sink\"".into()],
        ),
        ("tidemark_snapshot_rows_total", vec![p.clone(), t.clone()]),
        ("tidemark_snapshot_rows_estimated", vec![p, t]),
        ("tidemark_build_info", vec![]),
    ]
}

/// The families missing from `body`.
fn missing_series(body: &str, pipeline: &str) -> Vec<String> {
    documented_series(pipeline)
        .into_iter()
        .filter(|(family, labels)| {
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            metric(body, family, &labels).is_none()
        })
        .map(|(family, labels)| format!("{family}{labels:?}"))
        .collect()
}

/// A sink whose database is unreachable from the first second: every documented family is
/// exported at zero from start-up, the pending gauge follows the stream while the sink cannot
/// connect, and /readyz names the sink.
#[tokio::test]
async fn every_family_from_start_up_and_pending_grows_while_the_sink_is_down() {
    let pipeline = unique("down");
    let src = unique("tm_down_src");
    pg_create_db(&src).await;
    let source = pg_connect(&src).await;
    source
        .batch_execute("CREATE TABLE items (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    let port = free_port();
    // A closed local port: nothing listens there.
    let closed = free_port();
    let config = format!(
        r#"[nats]
url = "{NATS}"
[metrics]
listen = "127.0.0.1:{port}"
[[pipelines]]
name = "{pipeline}"
  [pipelines.source]
  kind = "postgres"
  url = "{src_url}"
  tables = ["public.items"]
  [[pipelines.sinks]]
  name = "replica"
  kind = "postgres"
  url = "postgres://postgres@127.0.0.1:{closed}/nowhere?sslmode=disable"
"#,
        src_url = pg_url(&src),
    );
    let mut daemon = Daemon::start(&config);

    // From start-up: the first answer of /metrics already has every family.
    let mut body = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some((200, b)) = http_get(port, "/metrics").await {
            if b.contains("tidemark_build_info") {
                body = b;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answered = !body.is_empty();
    assert!(answered, "no /metrics; logs:\n{}", daemon.logs());
    let missing = missing_series(&body, &pipeline);
    assert!(
        missing.is_empty(),
        "missing at start-up: {missing:?}\n{body}"
    );
    for zero in [
        "tidemark_sink_applied_events_total",
        "tidemark_end_to_end_latency_seconds_count",
    ] {
        assert_eq!(
            metric(&body, zero, &[&format!("pipeline=\"{pipeline}\"")]),
            Some(0.0),
            "{zero} should start at 0"
        );
    }

    // The source publishes; the sink cannot connect; pending follows the stream.
    let stream_has = |n: f64| {
        let pipeline = pipeline.clone();
        async move {
            http_get(port, "/metrics")
                .await
                .and_then(|(_, b)| {
                    metric(
                        &b,
                        "tidemark_sink_pending_events",
                        &[&format!("pipeline=\"{pipeline}\""), "sink=\"replica\""],
                    )
                })
                .is_some_and(|v| v >= n)
        }
    };
    source
        .batch_execute("INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 20) g")
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || stream_has(20.0)).await,
        "pending never reached 20: {:?}\nlogs:\n{}",
        http_get(port, "/metrics").await.map(|(_, b)| b),
        daemon.logs()
    );
    source
        .batch_execute("INSERT INTO items SELECT g, 'n' || g FROM generate_series(21, 50) g")
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || stream_has(50.0)).await,
        "pending did not grow to 50; logs:\n{}",
        daemon.logs()
    );
    let (code, body) = http_get(port, "/metrics").await.unwrap_or_default();
    assert_eq!(code, 200);
    let missing = missing_series(&body, &pipeline);
    assert!(missing.is_empty(), "missing later: {missing:?}");
    assert!(
        metric(
            &body,
            "tidemark_published_events_total",
            &[&format!("pipeline=\"{pipeline}\"")]
        )
        .is_some_and(|v| v >= 50.0),
        "{body}"
    );
    assert_eq!(
        metric(
            &body,
            "tidemark_component_ready",
            &[&format!("component=\"{pipeline}/sink/replica\"")]
        ),
        Some(0.0)
    );
    let (code, ready) = http_get(port, "/readyz").await.unwrap_or_default();
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready.contains(&format!("{pipeline}/sink/replica")),
        "readyz should name the sink: {ready}"
    );
    assert_eq!(daemon.terminate().await, 0, "logs:\n{}", daemon.logs());
    drop(source);
    cleanup(&pipeline, &[&src]).await;
}
