//! Private Postgres and MariaDB instances for tests that restart, crash or cut off a database.
//!
//! The shared servers on 5432/3306 are used by every other test at the same time and must never
//! be restarted. A fault test starts its own server instead: a fresh data directory under a temp
//! dir, a free port on 127.0.0.1, the unix socket and pid file beside it, every setting passed on
//! the command line (no config file of the machine is read). Start-up takes well under a second
//! for Postgres and about a second for MariaDB (the data directories are tiny and `fsync` is off
//! for Postgres).
//!
//! Each server runs in its own process group, so a "crash" ([`PrivatePg::crash`],
//! [`PrivateMaria::crash`]) SIGKILLs the server and all its children at once, as a power cut of
//! the process would (the OS page cache survives, so committed data does too). [`stop`] is a
//! graceful shutdown. [`start`](PrivatePg::start) again reuses the same port and data directory,
//! so clients reconnect to the same address and the server recovers its own data, slots and
//! binlog. Drop SIGKILLs whatever still runs and removes the directory.
//!
//! We run as root: Postgres refuses root, so `initdb` and `postgres` run as the `postgres` user
//! (uid/gid looked up with `id`); `mariadbd` is started as root with `--user=mysql` and switches
//! itself.
//!
//! [`stop`]: PrivatePg::stop

#![allow(dead_code)]

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const MARIADBD: &str = "/usr/sbin/mariadbd";

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// `(uid, gid)` of a system user, from `id`.
fn ids(user: &str) -> (u32, u32) {
    let get = |flag: &str| -> u32 {
        let out = Command::new("id")
            .arg(flag)
            .arg(user)
            .output()
            .unwrap_or_else(|e| panic!("id {flag} {user}: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("id {flag} {user}: {e}"))
    };
    (get("-u"), get("-g"))
}

/// A fresh directory under the system temp dir, owned by `owner`.
fn temp_dir(prefix: &str, owner: (u32, u32)) -> PathBuf {
    let dir = std::env::temp_dir().join(super::unique(prefix));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    std::os::unix::fs::chown(&dir, Some(owner.0), Some(owner.1)).expect("chown temp dir");
    dir
}

/// Sends `signal` to a whole process group (`kill -SIG -- -pgid`).
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stderr(Stdio::null())
        .status();
}

/// Sends `signal` to one process.
fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `timeout` for `child` to exit; SIGKILLs its group after that.
fn reap(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() >= deadline {
            signal_group(child.id(), "KILL");
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until `127.0.0.1:port` accepts TCP connections, or panics with the server log.
fn wait_for_port(child: &mut Child, port: u16, log: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited during start-up ({status}):\n{}",
                tail(log, 30)
            );
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{what} did not listen on {port} within 60 s:\n{}",
                tail(log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

// ───────────────────────────── Postgres ─────────────────────────────

/// A private Postgres 15 server (trust auth for `postgres` on 127.0.0.1).
pub struct PrivatePg {
    /// Temp dir: `data/` (PGDATA), the unix socket and `server.log`.
    dir: PathBuf,
    /// TCP port on 127.0.0.1, the same across restarts.
    port: u16,
    /// Extra `-c key=value` settings given at creation.
    settings: Vec<(String, String)>,
    /// The postmaster (a process group leader), while running.
    child: Option<Child>,
    /// uid/gid of the `postgres` user.
    owner: (u32, u32),
}

impl PrivatePg {
    /// initdb and start a server with logical decoding on, plus `extra` settings
    /// (`("max_slot_wal_keep_size", "1MB")`).
    pub fn start(extra: &[(&str, &str)]) -> PrivatePg {
        let started = Instant::now();
        let owner = ids("postgres");
        let dir = temp_dir("tm_pg", owner);
        let out = Command::new(format!("{PG_BIN}/initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .uid(owner.0)
            .gid(owner.1)
            .current_dir(&dir)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = PrivatePg {
            dir,
            port: free_port(),
            settings: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            owner,
        };
        pg.restart();
        eprintln!(
            "private postgres on port {} ready in {:.2} s",
            pg.port,
            started.elapsed().as_secs_f64()
        );
        pg
    }

    /// Starts the server again (same port, same data) after [`stop`](Self::stop) or
    /// [`crash`](Self::crash); returns once it accepts TCP connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "private postgres still running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("postgres log");
        let err = log.try_clone().expect("postgres log");
        let mut cmd = Command::new(format!("{PG_BIN}/postgres"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.dir);
        let base = [
            ("listen_addresses", "127.0.0.1"),
            ("wal_level", "logical"),
            ("max_replication_slots", "16"),
            ("max_wal_senders", "16"),
            ("max_connections", "60"),
            ("shared_buffers", "16MB"),
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("TimeZone", "UTC"),
        ];
        for (k, v) in base
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(self.settings.iter().cloned())
        {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.uid(self.owner.0)
            .gid(self.owner.1)
            .process_group(0)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        let mut child = cmd.spawn().expect("spawn postgres");
        wait_for_port(&mut child, self.port, &self.log_path(), "private postgres");
        // The port opens before crash recovery ends; wait until sessions are accepted.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !Command::new(format!("{PG_BIN}/pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
        {
            assert!(
                Instant::now() < deadline,
                "private postgres not accepting sessions:\n{}",
                tail(&self.log_path(), 30)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        self.child = Some(child);
    }

    /// Graceful ("fast") shutdown: SIGINT, wait for the postmaster to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "INT");
            reap(&mut c, Duration::from_secs(30));
        }
    }

    /// A crash: SIGKILL the postmaster and every backend at once. The next start runs crash
    /// recovery.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal_group(c.id(), "KILL");
            let _ = c.wait();
            // The backends are in the same group; give the kernel a moment to reap them so the
            // next postmaster finds no attached shared memory.
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// A SQL connection to `db` (session in UTC).
    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname={db} options='-c TimeZone=UTC'",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap_or_else(|e| panic!("connect to private postgres db {db}: {e}"));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Creates database `name`.
    pub async fn create_db(&self, name: &str) {
        self.connect("postgres")
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal_group(c.id(), "KILL");
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- private postgres log (tail) ----\n{}\n---- end ----",
                tail(&self.log_path(), 40)
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ───────────────────────────── MariaDB ─────────────────────────────

/// A private MariaDB server with a row binlog, GTID strict mode and a `tidemark`/`tidemark`
/// user with every privilege.
pub struct PrivateMaria {
    /// Temp dir: `data/` (datadir, binlog), socket, pid file and `server.log`.
    dir: PathBuf,
    /// TCP port on 127.0.0.1, the same across restarts.
    port: u16,
    /// The server's own `server_id`.
    server_id: u32,
    /// `mariadbd`, a process group leader, while running.
    child: Option<Child>,
}

impl PrivateMaria {
    /// `mariadb-install-db` into a fresh datadir, start, create the `tidemark` user.
    pub fn start() -> PrivateMaria {
        let started = Instant::now();
        let owner = ids("mysql");
        let dir = temp_dir("tm_my", owner);
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args([
                "--user=mysql",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .current_dir(&dir)
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut my = PrivateMaria {
            dir,
            port: free_port(),
            server_id: 100 + rand::random::<u32>() % 1_000_000,
            child: None,
        };
        my.restart();
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", my.socket().display()))
            .args(["-uroot", "-e"])
            .arg(
                "CREATE USER 'tidemark'@'%' IDENTIFIED BY 'tidemark'; \
                 GRANT ALL PRIVILEGES ON *.* TO 'tidemark'@'%' WITH GRANT OPTION;",
            )
            .output()
            .expect("run mariadb client");
        assert!(
            out.status.success(),
            "create user tidemark: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "private mariadb on port {} ready in {:.2} s",
            my.port,
            started.elapsed().as_secs_f64()
        );
        my
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    /// Starts the server again (same port, same datadir and binlog); returns once it accepts
    /// TCP connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "private mariadb still running");
        let d = |name: &str| self.dir.join(name).display().to_string();
        let mut cmd = Command::new(MARIADBD);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", d("data")))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", d("mysqld.sock")))
            .arg(format!("--pid-file={}", d("mysqld.pid")))
            .arg(format!("--log-error={}", d("server.log")))
            .arg(format!("--log-bin={}", d("data/mariadb-bin")))
            .arg(format!("--server-id={}", self.server_id))
            .args([
                "--user=mysql",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--binlog-row-metadata=FULL",
                "--gtid-strict-mode=ON",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
                "--max-connections=100",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
            ])
            .process_group(0)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn mariadbd");
        wait_for_port(&mut child, self.port, &self.log_path(), "private mariadb");
        self.child = Some(child);
    }

    /// Graceful shutdown: SIGTERM, wait for exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            reap(&mut c, Duration::from_secs(60));
        }
    }

    /// A crash: SIGKILL. The next start runs InnoDB and binlog crash recovery.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal_group(c.id(), "KILL");
            let _ = c.wait();
        }
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://tidemark:tidemark@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("mysql://tidemark:tidemark@127.0.0.1:{}/{db}", self.port)
    }

    /// The server's error log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// A connection to `db` as `tidemark` (`db` may be empty).
    pub async fn connect(&self, db: &str) -> mysql_async::Conn {
        let opts = mysql_async::Opts::from_url(&self.url(db)).expect("mysql url");
        mysql_async::Conn::new(opts)
            .await
            .unwrap_or_else(|e| panic!("connect to private mariadb db {db}: {e}"))
    }

    /// Creates database `name`.
    pub async fn create_db(&self, name: &str) {
        use mysql_async::prelude::Queryable as _;
        let mut c = self.connect("").await;
        c.query_drop(format!("CREATE DATABASE `{name}`"))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        let _ = c.disconnect().await;
    }
}

impl Drop for PrivateMaria {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal_group(c.id(), "KILL");
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- private mariadb log (tail) ----\n{}\n---- end ----",
                tail(&self.log_path(), 40)
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
