//! TLS to every server, proven against the real servers through the real code paths.
//!
//! `scripts/services.sh` makes a local CA (`/etc/tidemark-tls/ca.pem`, `TIDEMARK_TEST_CA`) and one server
//! certificate (SAN `localhost`, `127.0.0.1`, `::1`) used by Postgres and MariaDB, plus a role
//! / user `tidemark_tls` that can *only* log in over TLS (pg_hba `hostnossl … reject`;
//! MariaDB `REQUIRE SSL`). So every successful login as `tidemark_tls` proves the connection
//! was encrypted, and every refused plain login proves the server enforces it. The tests
//! cover the Postgres replication and SQL connections, the Postgres and MariaDB sinks, the
//! MariaDB source, whole daemon pipelines over TLS, the verification failures that must be
//! clear errors (another CA, the public roots, a missing root file), and NATS over TLS with
//! a private `nats-server`.

use crate::common::*;
use mysql_async::prelude::Queryable as _;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tidemark_core::config::{NatsConfig, PipelineConfig, SinkConfig};
use tidemark_core::error::{Classify, Retry};
use tidemark_postgres_source::client::{sql_connect, ClientError, ReplicationClient};
use tidemark_postgres_source::config::PgSettings;

/// The server certificate and key made by `scripts/services.sh` beside the CA
/// (`common::CA`), for the private nats-server.
fn server_cert() -> String {
    tls_file("server.pem")
}
fn server_key() -> String {
    tls_file("server.key")
}
fn tls_file(name: &str) -> String {
    std::path::Path::new(CA.get())
        .with_file_name(name)
        .display()
        .to_string()
}
/// The role / user that may only connect over TLS (on external servers too).
const TLS_USER: &str = "tidemark_tls";
const TLS_PASSWORD: &str = "tls-secret";

/// `postgres://tidemark_tls:…@host:port/db?query`, the port of `TIDEMARK_TEST_PG_TLS`; `host`
/// is `127.0.0.1` or `localhost` (the names in the server certificate).
fn pg_tls_url(host: &str, db: &str, query: &str) -> String {
    let port = authority(&PG_TLS).port;
    format!("postgres://{TLS_USER}:{TLS_PASSWORD}@{host}:{port}/{db}?{query}")
}

/// `mysql://tidemark_tls:…@host:port/db?query`, the port of `TIDEMARK_TEST_MYSQL_TLS`.
fn my_tls_url(host: &str, db: &str, query: &str) -> String {
    let port = authority(&MYSQL_TLS).port;
    format!("mysql://{TLS_USER}:{TLS_PASSWORD}@{host}:{port}/{db}?{query}")
}

fn verify_full() -> String {
    format!("sslmode=verify-full&sslrootcert={CA}")
}

fn verify_identity() -> String {
    format!("ssl-mode=verify_identity&ssl-ca={CA}")
}

/// A pipeline whose source is `url` (postgres or mysql).
fn pipeline(kind: &str, url: &str, tables: &[&str]) -> PipelineConfig {
    serde_json::from_value(json!({
        "name": unique("tls"),
        "source": {
            "kind": kind,
            "url": url,
            "tables": tables,
            "server_id": 10_000 + (rand::random::<u32>() % 2_000_000_000),
        }
    }))
    .expect("pipeline config")
}

fn sink(kind: &str, url: &str) -> SinkConfig {
    serde_json::from_value(json!({ "name": "tls", "kind": kind, "url": url })).expect("sink config")
}

fn pg_settings(url: &str) -> PgSettings {
    PgSettings::from_pipeline(&pipeline("postgres", url, &["public.*"])).expect("pg settings")
}

/// A CA nobody trusts for our servers: a fresh one in a temporary directory.
fn other_ca() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("tidemark_other_ca"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=some other CA"])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.pem"))
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("ca.pem")
}

fn remove_other_ca(ca: &std::path::Path) {
    if let Some(dir) = ca.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Whether this server session is encrypted (`pg_stat_ssl`), over the replication protocol.
async fn replication_session_ssl(c: &mut ReplicationClient) -> (String, String) {
    let r = c
        .simple_query(
            "SELECT ssl::text AS ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .await
        .expect("pg_stat_ssl over the replication connection");
    (
        r.get(0, "ssl").unwrap_or_default().to_owned(),
        r.get(0, "version").unwrap_or_default().to_owned(),
    )
}

async fn sql_session_ssl(c: &tokio_postgres::Client) -> bool {
    c.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .await
    .expect("pg_stat_ssl")
    .get(0)
}

/// A database owned by `tidemark_tls` with `ddl` run as that role (so it owns the tables and
/// may publish them).
async fn pg_tls_db(prefix: &str, ddl: &str) -> String {
    let db = unique(prefix);
    pg_connect("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE \"{db}\" OWNER {TLS_USER}"))
        .await
        .expect("create database");
    if !ddl.is_empty() {
        pg_connect(&db)
            .await
            .batch_execute(&format!("SET ROLE {TLS_USER}; {ddl}; RESET ROLE"))
            .await
            .expect("create tables as tidemark_tls");
    }
    db
}

#[tokio::test]
async fn pg_replication_and_sql_connections_use_tls() {
    ensure_services();
    for host in ["127.0.0.1", "localhost"] {
        for query in [
            "sslmode=require".to_owned(),
            "sslmode=prefer".to_owned(),
            verify_full(),
            format!("sslmode=verify-ca&sslrootcert={CA}"),
        ] {
            let url = pg_tls_url(host, "postgres", &query);
            let s = pg_settings(&url);
            let mut repl = ReplicationClient::connect(&s)
                .await
                .unwrap_or_else(|e| panic!("replication connect {host} {query}: {e}"));
            let (ssl, version) = replication_session_ssl(&mut repl).await;
            assert_eq!(
                ssl, "true",
                "{host} {query}: replication session not encrypted"
            );
            assert!(version.starts_with("TLSv1."), "{version}");
            let sys = repl
                .identify_system()
                .await
                .expect("IDENTIFY_SYSTEM over TLS");
            assert_eq!(sys.dbname.as_deref(), Some("postgres"));
            repl.close().await;

            let sql = sql_connect(&s)
                .await
                .unwrap_or_else(|e| panic!("sql connect {host} {query}: {e}"));
            assert!(
                sql_session_ssl(&sql).await,
                "{host} {query}: SQL session not encrypted"
            );
        }
    }
}

#[tokio::test]
async fn pg_tls_only_role_is_rejected_without_tls() {
    ensure_services();
    let s = pg_settings(&pg_tls_url("127.0.0.1", "postgres", "sslmode=disable"));
    let err = ReplicationClient::connect(&s)
        .await
        .expect_err("pg_hba must reject tidemark_tls without TLS");
    assert_eq!(err.sqlstate(), Some("28000"), "{err}");
    assert_eq!(err.retry(), Retry::Definite, "{err}");
    assert_eq!(err.kind(), "auth");
    assert!(err.to_string().contains("no encryption"), "{err}");
    assert!(!err.to_string().contains(TLS_PASSWORD), "{err}");

    let err = sql_connect(&s)
        .await
        .expect_err("SQL without TLS must be rejected");
    assert_eq!(err.sqlstate(), Some("28000"), "{err}");
    assert_eq!(err.retry(), Retry::Definite, "{err}");
    assert!(err.to_string().contains("no encryption"), "{err}");

    // The sink's own connect path: `tidemark check` reports the refusal.
    let p = pipeline(
        "postgres",
        &pg_tls_url("127.0.0.1", "postgres", &verify_full()),
        &["public.*"],
    );
    let probes = tidemark_postgres_sink::check(
        &sink(
            "postgres",
            &pg_tls_url("127.0.0.1", "postgres", "sslmode=disable"),
        ),
        &p,
    )
    .await;
    let failed: Vec<_> = probes.iter().filter(|p| !p.ok).collect();
    assert!(
        failed.iter().any(|p| p.detail.contains("no encryption")),
        "{probes:#?}"
    );
}

#[tokio::test]
async fn pg_verification_fails_clearly_with_the_wrong_roots() {
    ensure_services();
    // The sink's check creates its offsets table when it can connect: give it its own database.
    let db = pg_tls_db("tm_tls_verify", "").await;
    let other = other_ca();
    let other_s = other.display().to_string();
    for (what, query) in [
        (
            "another CA",
            format!("sslmode=verify-full&sslrootcert={other_s}"),
        ),
        ("the public roots", "sslmode=verify-full".to_owned()),
        (
            "another CA, verify-ca",
            format!("sslmode=verify-ca&sslrootcert={other_s}"),
        ),
    ] {
        let s = pg_settings(&pg_tls_url("127.0.0.1", "postgres", &query));
        let err = ReplicationClient::connect(&s)
            .await
            .expect_err("a certificate from an untrusted CA must be refused");
        assert!(matches!(err, ClientError::Tls { .. }), "{what}: {err:?}");
        assert_eq!(err.kind(), "tls");
        assert_eq!(err.retry(), Retry::Definite, "{what}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains("certificate") && msg.contains("UnknownIssuer"),
            "{what}: {msg}"
        );

        let err = sql_connect(&s).await.expect_err("SQL must refuse it too");
        let msg = tidemark_core::error::display_chain(&err);
        assert!(msg.contains("UnknownIssuer"), "{what}: {msg}");
        assert_eq!(err.retry(), Retry::Definite, "{what}: {msg}");

        let p = pipeline(
            "postgres",
            &pg_tls_url("127.0.0.1", "postgres", &verify_full()),
            &["public.*"],
        );
        let probes = tidemark_postgres_sink::check(
            &sink("postgres", &pg_tls_url("localhost", "postgres", &query)),
            &p,
        )
        .await;
        assert!(
            probes
                .iter()
                .any(|p| !p.ok && p.detail.contains("UnknownIssuer")),
            "{what}: {probes:#?}"
        );
    }

    // A root file that does not exist is a clear configuration error, not a hang or a panic.
    let s = pg_settings(&pg_tls_url(
        "127.0.0.1",
        "postgres",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ));
    let err = ReplicationClient::connect(&s)
        .await
        .expect_err("missing root file");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    assert_eq!(err.retry(), Retry::Definite);
    let err = sql_connect(&s).await.expect_err("missing root file");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");

    // The same CA passes (control).
    let p = pipeline(
        "postgres",
        &pg_tls_url("127.0.0.1", &db, &verify_full()),
        &["public.*"],
    );
    let probes = tidemark_postgres_sink::check(
        &sink("postgres", &pg_tls_url("localhost", &db, &verify_full())),
        &p,
    )
    .await;
    remove_other_ca(&other);
    pg_drop_db(&db).await;
    assert!(
        probes.iter().any(|p| p.ok && p.what.contains("connect")),
        "{probes:#?}"
    );
}

async fn my_count(db: &str, table: &str) -> i64 {
    let mut c = mysql_conn(db).await;
    let n: Option<i64> = c
        .query_first(format!("SELECT COUNT(*) FROM `{table}`"))
        .await
        .unwrap_or(None);
    let _ = c.disconnect().await;
    n.unwrap_or(-1)
}

async fn pg_count(db: &str, table: &str) -> i64 {
    pg_connect(db)
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

/// Postgres sessions of `tidemark_tls` in `dbs`: (total, encrypted, walsenders encrypted).
async fn pg_tls_sessions(dbs: &[&str]) -> (i64, i64, i64) {
    let dbs: Vec<String> = dbs.iter().map(|d| d.to_string()).collect();
    let r = pg_connect("postgres")
        .await
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl), \
                    count(*) FILTER (WHERE s.ssl AND a.backend_type = 'walsender') \
               FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
              WHERE a.usename = $1 AND a.datname = ANY($2)",
            &[&TLS_USER, &dbs],
        )
        .await
        .expect("pg_stat_ssl");
    (r.get(0), r.get(1), r.get(2))
}

async fn cleanup(pipeline: &str, pg_dbs: &[&str], my_dbs: &[&str]) {
    delete_stream(&format!("TIDEMARK_{}", pipeline.to_uppercase())).await;
    purge_state(pipeline).await;
    for db in pg_dbs {
        pg_drop_db(db).await;
    }
    for db in my_dbs {
        mysql_drop_db(db).await;
    }
}

#[tokio::test]
async fn pg_pipeline_over_tls_into_postgres_and_mariadb() {
    ensure_services();
    let name = unique("tls_pg");
    let ddl = "CREATE TABLE items (id bigint PRIMARY KEY, name text)";
    let src = pg_tls_db("tm_tls_src", ddl).await;
    let dst = pg_tls_db("tm_tls_dst", ddl).await;
    let my_dst = unique("tm_tls_mydst");
    mysql_create_db(&my_dst).await;
    mysql_conn(&my_dst)
        .await
        .query_drop("CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT)")
        .await
        .expect("mariadb target table");
    let source = pg_connect(&src).await;
    source
        .batch_execute("INSERT INTO items SELECT g, 'snap ' || g FROM generate_series(1, 20) g")
        .await
        .expect("snapshot rows");

    let config = format!(
        r#"[nats]
url = "{NATS}"
[metrics]
listen = ""
[[pipelines]]
name = "{name}"
  [pipelines.source]
  kind = "postgres"
  url = "{src_url}"
  tables = ["public.*"]
  [[pipelines.sinks]]
  name = "pg"
  kind = "postgres"
  url = "{dst_url}"
  [[pipelines.sinks]]
  name = "my"
  kind = "mysql"
  url = "{my_url}"
"#,
        src_url = pg_tls_url("127.0.0.1", &src, &verify_full()),
        dst_url = pg_tls_url("localhost", &dst, &verify_full()),
        my_url = my_tls_url("127.0.0.1", &my_dst, &verify_identity()),
    );
    let mut daemon = Daemon::start(&config);

    let snap = wait_until(Duration::from_secs(90), || async {
        pg_count(&dst, "items").await == 20 && my_count(&my_dst, "items").await == 20
    })
    .await;
    assert!(
        snap,
        "snapshot rows never arrived over TLS; logs:\n{}",
        daemon.logs()
    );

    source
        .batch_execute(
            "INSERT INTO items SELECT g, 'live ' || g FROM generate_series(21, 50) g; \
             UPDATE items SET name = 'changed' WHERE id <= 5; DELETE FROM items WHERE id = 50",
        )
        .await
        .expect("streamed changes");
    let streamed = wait_until(Duration::from_secs(60), || async {
        pg_count(&dst, "items").await == 49 && my_count(&my_dst, "items").await == 49
    })
    .await;
    assert!(
        streamed,
        "streamed rows never arrived over TLS; logs:\n{}",
        daemon.logs()
    );
    let changed: i64 = pg_connect(&dst)
        .await
        .query_one("SELECT count(*) FROM items WHERE name = 'changed'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(changed, 5);

    // Every session of the daemon is encrypted, the walsender included.
    let (total, encrypted, walsenders) = pg_tls_sessions(&[&src, &dst]).await;
    assert!(
        total >= 2,
        "expected the walsender and the sink's session, got {total}"
    );
    assert_eq!(
        total, encrypted,
        "an unencrypted tidemark_tls session exists"
    );
    assert!(
        walsenders >= 1,
        "the replication connection is not encrypted"
    );
    let logs = daemon.logs();
    assert!(!logs.contains(TLS_PASSWORD), "secret in logs:\n{logs}");

    assert_eq!(daemon.terminate().await, 0, "logs:\n{}", daemon.logs());
    drop(source);
    cleanup(&name, &[&src, &dst], &[&my_dst]).await;
}

#[tokio::test]
async fn mariadb_source_and_sink_connect_only_over_verified_tls() {
    ensure_services();
    let db = unique("tm_tls_my");
    mysql_create_db(&db).await;
    let other = other_ca();
    let other_s = other.display().to_string();
    let tables = format!("{db}.*");

    let connect_probe = |probes: &[tidemark_core::check::Probe]| {
        probes
            .iter()
            .find(|p| p.what.contains("connect"))
            .cloned()
            .unwrap_or_else(|| panic!("no connection probe in {probes:#?}"))
    };
    let pg_target = pipeline(
        "postgres",
        &pg_tls_url("127.0.0.1", "postgres", &verify_full()),
        &["public.*"],
    );

    // Works: verified against our CA by IP and by name, and encrypt-only.
    for (host, query) in [
        ("127.0.0.1", verify_identity()),
        ("localhost", verify_identity()),
        ("127.0.0.1", format!("ssl-mode=VERIFY_CA&ssl-ca={CA}")),
        ("127.0.0.1", "ssl-mode=required".to_owned()),
    ] {
        let url = my_tls_url(host, &db, &query);
        let probes = tidemark_mysql_source::check(&pipeline("mysql", &url, &[&tables])).await;
        let p = connect_probe(&probes);
        assert!(p.ok, "source {host} {query}: {p:?}");
        let probes = tidemark_mysql_sink::check(&sink("mysql", &url), &pg_target).await;
        let p = connect_probe(&probes);
        assert!(p.ok, "sink {host} {query}: {p:?}");
    }

    // Refused: no TLS (the server says access denied), another CA, the public roots.
    for (query, expect) in [
        ("ssl-mode=disabled".to_owned(), "Access denied"),
        ("ssl-mode=preferred".to_owned(), "Access denied"),
        (
            format!("ssl-mode=verify_identity&ssl-ca={other_s}"),
            "UnknownIssuer",
        ),
        ("ssl-mode=verify_identity".to_owned(), "UnknownIssuer"),
    ] {
        let url = my_tls_url("127.0.0.1", &db, &query);
        let probes = tidemark_mysql_source::check(&pipeline("mysql", &url, &[&tables])).await;
        let p = connect_probe(&probes);
        assert!(!p.ok && p.detail.contains(expect), "source {query}: {p:?}");
        assert!(!p.detail.contains(TLS_PASSWORD), "{p:?}");
        let probes = tidemark_mysql_sink::check(&sink("mysql", &url), &pg_target).await;
        let p = connect_probe(&probes);
        assert!(!p.ok && p.detail.contains(expect), "sink {query}: {p:?}");
    }
    remove_other_ca(&other);
    mysql_drop_db(&db).await;
}

/// mysql_async, unless told otherwise, follows a TCP login to a local server with a second
/// login over the server's unix socket (`prefer_socket`) and keeps that one if it works: the
/// session then belongs to `user@localhost`, a different account, and carries no TLS. With
/// TLS requested the socket attempt fails (TLS over a socket is refused) and only costs an
/// aborted connection on the server. The source must keep the connection it was asked for.
#[tokio::test]
async fn mariadb_source_keeps_the_tcp_connection_it_was_given() {
    ensure_services();
    let user = unique("tm_tls_u");
    let password = "sock-test-pw";
    let db = unique("tm_tls_sock");
    mysql_create_db(&db).await;
    let mut root = mysql_conn("").await;
    root.query_drop(format!(
        "CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'; \
         GRANT ALL PRIVILEGES ON *.* TO '{user}'@'127.0.0.1'; \
         CREATE USER '{user}'@'localhost' IDENTIFIED BY '{password}'; \
         GRANT SELECT ON `{db}`.* TO '{user}'@'localhost'"
    ))
    .await
    .expect("create users");
    let mut results = Vec::new();
    for query in ["ssl-mode=disabled".to_owned(), verify_identity()] {
        let url = format!(
            "mysql://{user}:{password}@127.0.0.1:{}/{db}?{query}",
            authority(&MYSQL).port
        );
        let probes =
            tidemark_mysql_source::check(&pipeline("mysql", &url, &[&format!("{db}.*")])).await;
        results.push((query, probes));
    }
    let _ = root
        .query_drop(format!(
            "DROP USER IF EXISTS '{user}'@'127.0.0.1', '{user}'@'localhost'"
        ))
        .await;
    let _ = root.disconnect().await;
    mysql_drop_db(&db).await;
    for (query, probes) in results {
        let repl = probes
            .iter()
            .find(|p| p.what.contains("REPLICATION SLAVE"))
            .unwrap_or_else(|| panic!("{query}: no grant probe: {probes:#?}"));
        assert!(
            repl.ok,
            "{query}: the source's session lost the grants of {user}@127.0.0.1 (switched to the \
             unix socket as {user}@localhost?): {probes:#?}"
        );
    }
}

#[tokio::test]
async fn mariadb_pipeline_over_tls_into_postgres() {
    ensure_services();
    let name = unique("tls_my");
    let my_src = unique("tm_tls_mysrc");
    mysql_create_db(&my_src).await;
    let mut c = mysql_conn(&my_src).await;
    c.query_drop(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(40)); \
         INSERT INTO items VALUES (1, 'snap 1'), (2, 'snap 2'), (3, 'snap 3')",
    )
    .await
    .expect("source table");
    let dst = pg_tls_db(
        "tm_tls_mydst",
        "CREATE TABLE items (id bigint PRIMARY KEY, name text)",
    )
    .await;
    let server_id = 10_000 + (rand::random::<u32>() % 2_000_000_000);
    let config = format!(
        r#"[nats]
url = "{NATS}"
[metrics]
listen = ""
[[pipelines]]
name = "{name}"
  [pipelines.source]
  kind = "mysql"
  url = "{src_url}"
  tables = ["{my_src}.*"]
  server_id = {server_id}
  [[pipelines.sinks]]
  name = "pg"
  kind = "postgres"
  url = "{dst_url}"
  schema = "public"
"#,
        src_url = my_tls_url("127.0.0.1", &my_src, &verify_identity()),
        dst_url = pg_tls_url("127.0.0.1", &dst, &verify_full()),
    );
    let mut daemon = Daemon::start(&config);
    let snap = wait_until(Duration::from_secs(90), || async {
        pg_count(&dst, "items").await == 3
    })
    .await;
    assert!(
        snap,
        "snapshot rows never arrived over TLS; logs:\n{}",
        daemon.logs()
    );

    c.query_drop(
        "INSERT INTO items VALUES (4, 'live 4'), (5, 'live 5'); \
         UPDATE items SET name = 'changed' WHERE id = 1; DELETE FROM items WHERE id = 2",
    )
    .await
    .expect("binlog changes");
    let streamed = wait_until(Duration::from_secs(60), || async {
        let t = pg_connect(&dst).await;
        t.query_one(
            "SELECT count(*) = 4 AND bool_or(name = 'changed') AND NOT bool_or(id = 2) FROM items",
            &[],
        )
        .await
        .map(|r| r.get::<_, Option<bool>>(0) == Some(true))
        .unwrap_or(false)
    })
    .await;
    assert!(
        streamed,
        "binlog rows never arrived over TLS; logs:\n{}",
        daemon.logs()
    );

    // The binlog stream is a TCP session of the REQUIRE SSL user (so it is encrypted).
    let dumps: Vec<String> = c
        .query(format!(
            "SELECT HOST FROM information_schema.PROCESSLIST WHERE USER = '{TLS_USER}' \
             AND COMMAND LIKE 'Binlog Dump%'"
        ))
        .await
        .expect("processlist");
    assert!(!dumps.is_empty(), "no binlog dump thread of {TLS_USER}");
    assert!(
        dumps.iter().all(|h| h.starts_with("127.0.0.1:")),
        "binlog dump not over TCP: {dumps:?}"
    );
    let (total, encrypted, _) = pg_tls_sessions(&[&dst]).await;
    assert!(
        total >= 1 && total == encrypted,
        "{encrypted}/{total} sink sessions encrypted"
    );
    let logs = daemon.logs();
    assert!(!logs.contains(TLS_PASSWORD), "secret in logs:\n{logs}");

    assert_eq!(daemon.terminate().await, 0, "logs:\n{}", daemon.logs());
    let _ = c.disconnect().await;
    cleanup(&name, &[&dst], &[&my_src]).await;
}

/// A private `nats-server --tls` on a free port, killed on drop.
struct TlsNats {
    child: Child,
    port: u16,
}

impl TlsNats {
    fn start() -> TlsNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let child = Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args([
                "--tls",
                "--tlscert",
                &server_cert(),
                "--tlskey",
                &server_key(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/sbin/nats-server");
        TlsNats { child, port }
    }

    async fn wait_listening(&self) {
        let port = self.port;
        let up = wait_until(Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "nats-server --tls did not listen on {port}");
    }
}

impl Drop for TlsNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_config(url: &str, ca: Option<&str>) -> NatsConfig {
    serde_json::from_value(json!({ "url": url, "tls_ca_file": ca })).expect("nats config")
}

#[tokio::test]
async fn nats_over_tls_needs_the_ca() {
    ensure_services();
    let server = TlsNats::start();
    server.wait_listening().await;
    let port = server.port;

    for url in [
        format!("nats://127.0.0.1:{port}"),
        format!("tls://localhost:{port}"),
    ] {
        let client =
            tidemark_core::nats::connect(&nats_config(&url, Some(CA.get())), "tidemark-tls-test")
                .await
                .unwrap_or_else(|e| panic!("{url} with the CA: {e}"));
        let mut sub = client.subscribe("tls.test").await.expect("subscribe");
        client
            .publish("tls.test", "hello".into())
            .await
            .expect("publish");
        client.flush().await.expect("flush");
        let msg = tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::StreamExt::next(&mut sub),
        )
        .await
        .expect("message over TLS")
        .expect("subscription open");
        assert_eq!(&msg.payload[..], b"hello");
        drop(client);
    }

    let other = other_ca();
    for (what, ca) in [
        ("no CA", None),
        ("another CA", Some(other.display().to_string())),
    ] {
        let err = tidemark_core::nats::connect(
            &nats_config(&format!("nats://127.0.0.1:{port}"), ca.as_deref()),
            "tidemark-tls-test",
        )
        .await
        .expect_err("an untrusted server certificate must be refused");
        let msg = tidemark_core::error::display_chain(&err);
        assert!(msg.contains("UnknownIssuer"), "{what}: {msg}");
        assert!(msg.contains(&port.to_string()), "{what}: {msg}");
        assert_eq!(err.kind(), "tls", "{what}: {msg}");
        assert_eq!(err.retry(), Retry::Definite, "{what}: {msg}");
    }
    remove_other_ca(&other);
    let err = tidemark_core::nats::connect(
        &nats_config(
            &format!("nats://127.0.0.1:{port}"),
            Some("/nonexistent/ca.pem"),
        ),
        "tidemark-tls-test",
    )
    .await
    .expect_err("missing CA file");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    assert!(err.to_string().contains("nats.tls_ca_file"), "{err}");
    assert_eq!(err.retry(), Retry::Definite, "{err}");
}
