//! `scripts/services.sh` next to servers it does not own.
//!
//! The script must recognise its own instances only by data directory, pid file and port.
//! These tests start a *foreign* nats-server and a *foreign* mariadbd (the very binaries the
//! script uses, on free ports, with their own temporary directories) and then run the script
//! the ways the suite and developers do: a normal run (which must be fast, everything being
//! ready), `--check`, two runs at once, a run that must wait for the lock, and runs asked to use
//! a port a foreign server holds. Afterwards both foreign servers must still run with the same
//! pid and still answer, and our own instances must be up. The old script failed this: it
//! found MariaDB with `pgrep -x mariadbd` and restarted every `/usr/sbin/nats-server`.
//!
//! Skipped with `TIDEMARK_TEST_EXTERNAL=1` (the script is not ours to run then).

use crate::common::*;
use mysql_async::prelude::Queryable as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where the script keeps its instances (fixed: it is what the script owns).
const OWNED_DIR: &str = "/var/lib/tidemark";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh")
}

/// Runs the script with `args` and extra environment; returns its output and how long it took.
fn run_script(args: &[&str], env: &[(&str, String)]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run scripts/services.sh");
    (out, started.elapsed())
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what} not ready after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A server the script does not own: started here, killed and removed on drop.
struct Foreign {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Foreign {
    /// Process id (the server itself: neither binary forks).
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `/usr/sbin/nats-server` with JetStream on a free port and its own store directory.
    fn nats() -> Foreign {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("foreign_nats"));
        std::fs::create_dir_all(&dir).expect("store dir");
        let child = Command::new("/usr/sbin/nats-server")
            // As started from PATH (older copies of services.sh, still run by other checkouts
            // on the same machine, kill every command line that starts with /usr/sbin/...).
            .arg0("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a foreign /usr/sbin/nats-server");
        let f = Foreign { child, dir, port };
        wait_for("foreign nats-server", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        f
    }

    /// `/usr/sbin/mariadbd` with its own datadir (mariadb-install-db), socket and port.
    fn mariadb() -> Foreign {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("foreign_mariadb"));
        std::fs::create_dir_all(&dir).expect("mariadb dir");
        let chown = Command::new("chown")
            .args(["mysql:mysql"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(chown.success(), "chown mysql {dir:?}");
        let data = dir.join("data");
        let install = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=mysql",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ])
            .output()
            .expect("mariadb-install-db");
        assert!(install.status.success(), "{}", text(&install));
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .args([
                "--user=mysql",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
            ])
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a foreign /usr/sbin/mariadbd");
        let mut f = Foreign { child, dir, port };
        wait_for("foreign mariadbd", Duration::from_secs(60), || {
            f.mariadb_port().is_some()
        });
        assert!(f.alive(), "foreign mariadbd exited; see {:?}", f.dir);
        f
    }

    /// The port the foreign mariadbd reports, asked over its own socket as root.
    fn mariadb_port(&self) -> Option<u16> {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .args(["-uroot", "-N", "-B", "-e", "select @@port"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The pid in one of our pid files.
fn owned_pid(file: &str) -> String {
    std::fs::read_to_string(Path::new(OWNED_DIR).join(file))
        .unwrap_or_else(|e| panic!("{OWNED_DIR}/{file}: {e}"))
        .trim()
        .to_owned()
}

/// Our own four instances answer at the addresses the tests use.
async fn owned_instances_answer() {
    let pg = pg_connect("postgres").await;
    let wal: String = pg
        .query_one("SHOW wal_level", &[])
        .await
        .expect("our postgres")
        .get(0);
    assert_eq!(wal, "logical");
    let mut my = mysql_conn("").await;
    let format: Option<String> = my
        .query_first("SELECT @@binlog_format")
        .await
        .expect("our mariadb");
    assert_eq!(format.as_deref(), Some("ROW"));
    let _ = my.disconnect().await;
    let client = nats().await;
    client.flush().await.expect("our nats");
    assert!(client.server_info().jetstream, "our nats has JetStream");
    let redis = authority(&REDIS).host_port();
    let mut s = std::net::TcpStream::connect(&redis).expect("our redis");
    use std::io::{Read as _, Write as _};
    s.write_all(b"PING\r\n").expect("redis ping");
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).expect("redis pong");
    assert_eq!(&buf, b"+PONG\r\n");
}

#[tokio::test]
async fn services_script_leaves_foreign_servers_alone() {
    if external_servers() {
        eprintln!("TIDEMARK_TEST_EXTERNAL=1: scripts/services.sh is not run, nothing to test");
        return;
    }
    ensure_services();
    let mut nats_f = Foreign::nats();
    let mut maria_f = Foreign::mariadb();
    let (nats_pid, maria_pid) = (nats_f.pid(), maria_f.pid());
    let ours_before = (owned_pid("nats/nats.pid"), owned_pid("mariadb/mariadb.pid"));
    let nats_conf_before = std::fs::read_to_string(format!("{OWNED_DIR}/nats/nats.conf")).unwrap();

    // Everything is ready: a normal run changes nothing and is fast.
    let (out, took) = run_script(&["--quiet"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("scripts/services.sh with everything ready: {took:?}");
    assert!(
        took < Duration::from_secs(8),
        "a run with everything ready took {took:?}"
    );
    let (out, took) = run_script(&["--check"], &[]);
    eprintln!("scripts/services.sh --check: {took:?}");
    assert!(
        out.status.success(),
        "--check must find all ready: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("everything is ready"),
        "{}",
        text(&out)
    );

    // Two runs at once both succeed.
    let a = Command::new("bash")
        .arg(script())
        .arg("--quiet")
        .spawn()
        .expect("run a");
    let b = Command::new("bash")
        .arg(script())
        .arg("--quiet")
        .spawn()
        .expect("run b");
    for (name, run) in [("first", a), ("second", b)] {
        let out = run.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{name} concurrent run: {}",
            text(&out)
        );
    }

    // A run waits while another holds the lock.
    let mut holder = Command::new("flock")
        .arg(format!("{OWNED_DIR}/services.lock"))
        .args(["sleep", "3"])
        .spawn()
        .expect("flock");
    std::thread::sleep(Duration::from_millis(500));
    let (out, took) = run_script(&["--quiet"], &[]);
    let _ = holder.wait();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        took >= Duration::from_secs(2),
        "the run did not wait for the lock ({took:?})"
    );

    // Asked to use a port a foreign server holds: a clear error, nothing of ours touched.
    for (var, port, name) in [
        ("TIDEMARK_SERVICES_NATS_PORT", nats_f.port, "nats"),
        ("TIDEMARK_SERVICES_MYSQL_PORT", maria_f.port, "mariadb"),
    ] {
        for args in [&["--check"][..], &[][..]] {
            let (out, _) = run_script(args, &[(var, port.to_string())]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{var}={port} {args:?}: {}",
                text(&out)
            );
            assert!(
                err.contains(&format!(
                    "{name}: port {port} is taken by a process that is not ours"
                )) && err.contains(var),
                "{var}={port} {args:?}: {}",
                text(&out)
            );
        }
    }
    assert_eq!(
        (owned_pid("nats/nats.pid"), owned_pid("mariadb/mariadb.pid")),
        ours_before,
        "our own servers must not have been restarted"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{OWNED_DIR}/nats/nats.conf")).unwrap(),
        nats_conf_before,
        "a refused port must not be written into our config"
    );

    // The foreign servers: same process, still answering.
    assert!(nats_f.alive(), "the foreign nats-server was stopped");
    assert!(maria_f.alive(), "the foreign mariadbd was stopped");
    assert_eq!((nats_f.pid(), maria_f.pid()), (nats_pid, maria_pid));
    let foreign = async_nats::connect(format!("nats://127.0.0.1:{}", nats_f.port))
        .await
        .expect("the foreign nats-server answers");
    foreign.flush().await.expect("foreign nats flush");
    assert_eq!(foreign.server_info().port, nats_f.port);
    assert_eq!(
        maria_f.mariadb_port(),
        Some(maria_f.port),
        "the foreign mariadbd answers"
    );

    owned_instances_answer().await;
}
