//! Shared test harness: fresh databases, streams and a real daemon process.
//!
//! Every helper talks to real servers, nothing is mocked: by default the private instances
//! that `scripts/services.sh` owns (run once per test process), or, with
//! `TIDEMARK_TEST_EXTERNAL=1`, the servers named by the `TIDEMARK_TEST_*` variables (see
//! [`TestUrl`]); every address comes from there, none is written into a test. Names come from [`unique`] so tests can run in
//! parallel and leave nothing behind.

#![allow(dead_code)]

pub mod faults;
pub mod private_db;
pub mod private_nats;
pub mod proxy;

use async_nats::jetstream;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::Read as _;
use std::ops::Deref;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A server address (or path) the tests use, resolved once per process: the environment
/// variable `var` when it is set, else the value `scripts/services.sh --env` printed for its
/// own instance, else `default` (the owned instance's address with the default ports).
///
/// It dereferences to `&str` and implements `Display`, so `format!("{PG}/{db}")`,
/// `&*NATS`, `NATS.get()` and `common::MYSQL.to_string()` all work.
pub struct TestUrl {
    var: &'static str,
    default: &'static str,
    value: OnceLock<String>,
}

impl TestUrl {
    const fn new(var: &'static str, default: &'static str) -> TestUrl {
        TestUrl {
            var,
            default,
            value: OnceLock::new(),
        }
    }

    /// The resolved value (runs `scripts/services.sh` first unless the variable is set or
    /// `TIDEMARK_TEST_EXTERNAL=1`).
    pub fn get(&self) -> &str {
        self.value.get_or_init(|| {
            if let Some(v) = std::env::var(self.var).ok().filter(|v| !v.is_empty()) {
                return v;
            }
            services_env()
                .get(self.var)
                .cloned()
                .unwrap_or_else(|| self.default.to_owned())
        })
    }

    /// Name of the environment variable that overrides this value.
    pub fn var(&self) -> &'static str {
        self.var
    }
}

impl Deref for TestUrl {
    type Target = str;
    fn deref(&self) -> &str {
        self.get()
    }
}

impl AsRef<str> for TestUrl {
    fn as_ref(&self) -> &str {
        self.get()
    }
}

impl fmt::Display for TestUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl fmt::Debug for TestUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}", self.var, self.get())
    }
}

/// Postgres server for tests (trust auth for `postgres`): `TIDEMARK_TEST_PG`, a URL without a
/// database (`postgres://user[:password]@host:port`).
pub static PG: TestUrl = TestUrl::new("TIDEMARK_TEST_PG", "postgres://postgres@127.0.0.1:15432");
/// MariaDB server for tests (a user with all privileges): `TIDEMARK_TEST_MYSQL`, a URL without a
/// database.
pub static MYSQL: TestUrl = TestUrl::new(
    "TIDEMARK_TEST_MYSQL",
    "mysql://tidemark:tidemark@127.0.0.1:13306",
);
/// NATS server with JetStream for tests: `TIDEMARK_TEST_NATS`.
pub static NATS: TestUrl = TestUrl::new("TIDEMARK_TEST_NATS", "nats://127.0.0.1:14222");
/// The NATS server's monitoring endpoint: `TIDEMARK_TEST_NATS_MONITOR`.
pub static NATS_MONITOR: TestUrl =
    TestUrl::new("TIDEMARK_TEST_NATS_MONITOR", "http://127.0.0.1:18222");
/// Redis server for tests: `TIDEMARK_TEST_REDIS`.
pub static REDIS: TestUrl = TestUrl::new("TIDEMARK_TEST_REDIS", "redis://127.0.0.1:16379");
/// The newest supported nats-server binary (started privately by tests):
/// `TIDEMARK_TEST_NATS_NEW`.
pub static NATS_NEW: TestUrl = TestUrl::new(
    "TIDEMARK_TEST_NATS_NEW",
    "/opt/tidemark-nats/bin/nats-server",
);
/// The CA that signed the servers' TLS certificates: `TIDEMARK_TEST_CA`.
pub static CA: TestUrl = TestUrl::new("TIDEMARK_TEST_CA", "/etc/tidemark-tls/ca.pem");
/// Postgres over verified TLS as a role that may only log in over TLS: `TIDEMARK_TEST_PG_TLS`.
pub static PG_TLS: TestUrl = TestUrl::new(
    "TIDEMARK_TEST_PG_TLS",
    "postgres://tidemark_tls:tls-secret@127.0.0.1:15432/postgres?sslmode=verify-full&sslrootcert=/etc/tidemark-tls/ca.pem",
);
/// MariaDB over verified TLS as a user with `REQUIRE SSL`: `TIDEMARK_TEST_MYSQL_TLS`.
pub static MYSQL_TLS: TestUrl = TestUrl::new(
    "TIDEMARK_TEST_MYSQL_TLS",
    "mysql://tidemark_tls:tls-secret@127.0.0.1:13306/?ssl-mode=verify_identity&ssl-ca=/etc/tidemark-tls/ca.pem",
);

/// True if `TIDEMARK_TEST_EXTERNAL` is `1`/`true`/`yes`: the tests use the servers named by the
/// `TIDEMARK_TEST_*` variables as they are and never run `scripts/services.sh`.
pub fn external_servers() -> bool {
    matches!(
        std::env::var("TIDEMARK_TEST_EXTERNAL").as_deref(),
        Ok("1" | "true" | "yes")
    )
}

static SERVICES_ENV: OnceLock<HashMap<String, String>> = OnceLock::new();

/// Runs `scripts/services.sh --env` once per test process (fast when all is ready) and keeps
/// the `TIDEMARK_TEST_*` values it printed; nothing with `TIDEMARK_TEST_EXTERNAL=1`.
fn services_env() -> &'static HashMap<String, String> {
    SERVICES_ENV.get_or_init(|| {
        if external_servers() {
            return HashMap::new();
        }
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg("--env")
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/services.sh");
        assert!(
            out.status.success(),
            "scripts/services.sh failed (to use servers you manage yourself, set \
             TIDEMARK_TEST_EXTERNAL=1 and the TIDEMARK_TEST_* variables)"
        );
        parse_env_lines(&String::from_utf8_lossy(&out.stdout))
    })
}

/// `export NAME='value'` lines (what `services.sh --env` prints) as a map.
pub fn parse_env_lines(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

/// Makes the test servers ready: runs `scripts/services.sh` once per test process unless
/// `TIDEMARK_TEST_EXTERNAL=1`.
pub fn ensure_services() {
    let _ = services_env();
}

/// The parts of a server URL's authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// User name (empty if none).
    pub user: String,
    /// Password (empty if none).
    pub password: String,
    /// Host name or address (IPv6 in brackets).
    pub host: String,
    /// Port (the URL must name one).
    pub port: u16,
}

impl Authority {
    /// `host:port`.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Splits `scheme://user:password@host:port/...` (no percent-decoding: test URLs need none).
pub fn authority(url: &str) -> Authority {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (userinfo, host_port) = rest[..end].rsplit_once('@').unwrap_or(("", &rest[..end]));
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (host, port) = host_port
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("test server URL {url:?} must name a port"));
    Authority {
        user: user.to_owned(),
        password: password.to_owned(),
        host: host.to_owned(),
        port: port
            .parse()
            .unwrap_or_else(|e| panic!("port of test server URL {url:?}: {e}")),
    }
}

/// `host:port` of the test Postgres.
pub fn pg_host_port() -> String {
    authority(&PG).host_port()
}

/// `host:port` of the test MariaDB.
pub fn mysql_host_port() -> String {
    authority(&MYSQL).host_port()
}

/// URL of database `db` on the test Postgres as `user` with `password`.
pub fn pg_url_as(user: &str, password: &str, db: &str) -> String {
    format!("postgres://{user}:{password}@{}/{db}", pg_host_port())
}

/// URL of database `db` on the test MariaDB as `user` with `password`.
pub fn mysql_url_as(user: &str, password: &str, db: &str) -> String {
    format!("mysql://{user}:{password}@{}/{db}", mysql_host_port())
}

/// `prefix` plus a random suffix: lowercase letters, digits and `_`.
pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::random();
    format!("{}_{:010x}", prefix.to_lowercase(), n & 0xff_ffff_ffff)
}

/// URL of database `db` on the test Postgres.
pub fn pg_url(db: &str) -> String {
    format!("{}/{db}", PG.trim_end_matches('/'))
}

/// A plain SQL connection to `db` (session pinned to UTC).
pub async fn pg_connect(db: &str) -> tokio_postgres::Client {
    ensure_services();
    let mut config: tokio_postgres::Config = pg_url(db)
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", PG.var()));
    config.options("-c TimeZone=UTC");
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to postgres db {db} at {}: {e}", pg_host_port()));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Creates database `name` (fails if it exists).
pub async fn pg_create_db(name: &str) {
    let c = pg_connect("postgres").await;
    c.batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
}

/// Drops database `name`: its replication slots and publications go first, backends are
/// terminated.
pub async fn pg_drop_db(name: &str) {
    let c = pg_connect("postgres").await;
    for _ in 0..20 {
        let _ = c
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE database = $1 AND active_pid IS NOT NULL",
                &[&name],
            )
            .await;
        let _ = c
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE database = $1 AND NOT active",
                &[&name],
            )
            .await;
        let _ = c
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&name],
            )
            .await;
        let left: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
                &[&name],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if left == 0
            && c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await
                .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("warning: could not drop database {name}");
}

/// URL of database `db` on the test MariaDB.
pub fn mysql_url(db: &str) -> String {
    format!("{}/{db}", MYSQL.trim_end_matches('/'))
}

/// A connection to `db` on the test MariaDB (`db` may be empty).
pub async fn mysql_conn(db: &str) -> mysql_async::Conn {
    ensure_services();
    let opts = mysql_async::Opts::from_url(&mysql_url(db)).expect("mysql url");
    mysql_async::Conn::new(opts)
        .await
        .unwrap_or_else(|e| panic!("connect to mariadb db {db}: {e}"))
}

/// Creates database `name` on MariaDB.
pub async fn mysql_create_db(name: &str) {
    use mysql_async::prelude::Queryable as _;
    let mut c = mysql_conn("").await;
    c.query_drop(format!("CREATE DATABASE `{name}`"))
        .await
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    let _ = c.disconnect().await;
}

/// Drops database `name` on MariaDB.
pub async fn mysql_drop_db(name: &str) {
    use mysql_async::prelude::Queryable as _;
    let mut c = mysql_conn("").await;
    if let Err(e) = c
        .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
        .await
    {
        eprintln!("warning: could not drop mariadb database {name}: {e}");
    }
    let _ = c.disconnect().await;
}

/// A NATS client.
pub async fn nats() -> async_nats::Client {
    ensure_services();
    async_nats::connect(NATS.get())
        .await
        .unwrap_or_else(|e| panic!("connect to nats at {NATS}: {e}"))
}

/// A JetStream context.
pub async fn js() -> jetstream::Context {
    jetstream::new(nats().await)
}

/// Deletes a stream if it exists.
pub async fn delete_stream(name: &str) {
    let _ = js().await.delete_stream(name).await;
}

/// Removes a pipeline's source checkpoint from the state bucket.
pub async fn purge_state(pipeline: &str) {
    if let Ok(kv) = js().await.get_key_value("tidemark_state").await {
        let _ = kv.purge(format!("source.{pipeline}")).await;
    }
}

/// Reads `stream` from its first message with an ephemeral consumer until `expected` messages
/// arrived or `timeout` passed; returns the parsed envelopes in stream order.
pub async fn read_envelopes(
    stream: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<serde_json::Value> {
    use futures_util::StreamExt as _;
    let js = js().await;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let s = loop {
        match js.get_stream(stream).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("stream {stream} not found: {e}"),
        }
    };
    let consumer = s
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("consumer messages");
    while out.len() < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, messages.next()).await {
            Ok(Some(Ok(m))) => {
                if m.headers
                    .as_ref()
                    .and_then(|h| h.get("Tidemark-Dead-Letter"))
                    .is_some()
                {
                    continue;
                }
                let v: serde_json::Value =
                    serde_json::from_slice(&m.payload).expect("envelope is JSON");
                out.push(v);
            }
            Ok(Some(Err(e))) => panic!("reading stream {stream}: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes; returns the last result.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Path of the daemon binary built for these tests.
pub fn tidemark_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tidemark"))
}

/// Runs the real CLI with `args`; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(tidemark_bin())
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run tidemark");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `contents` to a fresh temporary file and returns its path.
pub fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("tidemark_test"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write temp file");
    path
}

/// A running `tidemark run` process.
pub struct Daemon {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    extra_env: Vec<(String, String)>,
}

impl Daemon {
    /// Starts `tidemark run -c <config>` with `config_toml`; stdout and stderr go to a log file.
    pub fn start(config_toml: &str) -> Daemon {
        Daemon::start_with_env(config_toml, &[])
    }

    /// Like [`Daemon::start`] with extra environment variables.
    pub fn start_with_env(config_toml: &str, env: &[(&str, &str)]) -> Daemon {
        ensure_services();
        let config = temp_file("pipelines.toml", config_toml);
        let log = config.with_file_name("daemon.log");
        let mut d = Daemon {
            child: None,
            config,
            log,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        let err = log.try_clone().expect("daemon log");
        let mut cmd = Command::new(tidemark_bin());
        cmd.arg("run")
            .arg("-c")
            .arg(&self.config)
            .env("RUST_LOG", "info,tidemark=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn tidemark"));
    }

    /// Starts the same configuration again after a kill or terminate.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "daemon still running");
        self.spawn();
    }

    /// Process id of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait up to 15 s; returns the exit code (-1 if killed by a signal, -2 if it
    /// had to be killed after the timeout).
    pub async fn terminate(&mut self) -> i32 {
        let Some(mut c) = self.child.take() else {
            return -3;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return -2;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the daemon printed so far.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Path of the configuration file the daemon runs with.
    pub fn config_path(&self) -> &PathBuf {
        &self.config
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- daemon log ----\n{}\n---- end ----", self.logs());
        }
        self.kill9();
    }
}
