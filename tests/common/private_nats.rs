//! Private nats-server instances for fault tests that stop, restart or starve the server.
//!
//! The shared server on 4222 must never be restarted, so these tests start their own: a free
//! port, a temporary store directory, JetStream on, optional `max_file_store` and
//! `max_payload`. [`PrivateNats::restart`] brings the server back on the same port with the
//! same store (what a real restart or crash does), optionally with new limits. The process is
//! killed and the directory removed on drop.
//!
//! Two binaries: the current one (2.15, `/opt/tidemark-nats/bin/nats-server`) and the old
//! Debian one (2.9, `/usr/sbin/nats-server`), which is run from a copy in a temporary
//! directory: `scripts/services.sh` kills every process whose command line starts with
//! `/usr/sbin/nats-server`, and a test server must not be caught by that.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Which nats-server binary to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsVersion {
    /// nats-server 2.15 from `/opt/tidemark-nats/bin`.
    Current,
    /// nats-server 2.9 (Debian), run from a private copy.
    Old,
}

impl NatsVersion {
    /// Both versions, for tests that run against each.
    pub const ALL: [NatsVersion; 2] = [NatsVersion::Current, NatsVersion::Old];

    /// Path of the binary to execute.
    pub fn binary(self) -> PathBuf {
        match self {
            NatsVersion::Current => PathBuf::from("/opt/tidemark-nats/bin/nats-server"),
            NatsVersion::Old => old_copy().clone(),
        }
    }
}

/// The Debian binary copied once per test process into a private directory.
fn old_copy() -> &'static PathBuf {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    COPY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tidemark_nats_bin_{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir for the nats-server copy");
        let path = dir.join("nats-server");
        let tmp = dir.join("nats-server.partial");
        std::fs::copy("/usr/sbin/nats-server", &tmp).expect("copy /usr/sbin/nats-server");
        std::fs::rename(&tmp, &path).expect("rename nats-server copy");
        path
    })
}

/// Server limits; `None` keeps the server default.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// JetStream `max_file_store` in bytes.
    pub max_file_store: Option<u64>,
    /// `max_payload` in bytes.
    pub max_payload: Option<u64>,
    /// JetStream `sync_interval: always` (fsync every write; 2.10+ only): without it a
    /// SIGKILLed server loses the messages it acknowledged in the last moments before.
    pub sync_always: bool,
}

/// A nats-server of our own.
pub struct PrivateNats {
    version: NatsVersion,
    port: u16,
    dir: PathBuf,
    limits: Limits,
    child: Option<Child>,
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

impl PrivateNats {
    /// Starts a server and waits until JetStream answers.
    pub async fn start(version: NatsVersion, limits: Limits) -> PrivateNats {
        let dir = std::env::temp_dir().join(crate::common::unique("tidemark_private_nats"));
        std::fs::create_dir_all(dir.join("store")).expect("nats store dir");
        let mut n = PrivateNats {
            version,
            port: free_port(),
            dir,
            limits,
            child: None,
        };
        n.spawn();
        n.wait_ready().await;
        n
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address of the client port.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Which binary runs.
    pub fn version(&self) -> NatsVersion {
        self.version
    }

    /// The server's own log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn write_config(&self) -> PathBuf {
        let store = self.dir.join("store");
        let mut js = format!("  store_dir: \"{}\"\n", store.display());
        if let Some(n) = self.limits.max_file_store {
            js.push_str(&format!("  max_file_store: {n}\n"));
        }
        js.push_str("  max_memory_store: 67108864\n");
        if self.limits.sync_always {
            js.push_str("  sync_interval: always\n");
        }
        let mut conf = format!(
            "listen: \"127.0.0.1:{}\"\njetstream {{\n{js}}}\n",
            self.port
        );
        if let Some(n) = self.limits.max_payload {
            conf.push_str(&format!("max_payload: {n}\n"));
        }
        let path = self.dir.join("nats.conf");
        std::fs::write(&path, conf).expect("write nats.conf");
        path
    }

    fn spawn(&mut self) {
        let conf = self.write_config();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("nats log");
        let err = log.try_clone().expect("nats log");
        let child = Command::new(self.version.binary())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.version.binary().display()));
        self.child = Some(child);
    }

    /// Waits until a client can connect and JetStream answers (up to 20 s).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Ok(c)) = tokio::time::timeout(
                Duration::from_secs(2),
                async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(1))
                    .connect(self.url()),
            )
            .await
            {
                // The raw account-info request: async-nats cannot parse 2.9's typed reply.
                if let Ok(Ok(m)) = tokio::time::timeout(
                    Duration::from_secs(2),
                    c.request("$JS.API.INFO", bytes::Bytes::new()),
                )
                .await
                {
                    let text = String::from_utf8_lossy(&m.payload);
                    if text.contains("\"memory\"") && !text.contains("\"error\"") {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "private nats-server on {} not ready; log:\n{}",
                self.port,
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the server (SIGKILL: a crash, nothing flushed).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server gracefully (SIGTERM), waiting up to 10 s.
    pub async fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Starts the server again on the same port with the same store (after `kill`/`stop`).
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "nats-server still running");
        self.spawn();
        self.wait_ready().await;
    }

    /// Starts again with new limits.
    pub async fn start_again_with(&mut self, limits: Limits) {
        self.limits = limits;
        self.start_again().await;
    }

    /// Graceful stop and start with the same port and store.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// A client of this server.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to private nats")
    }

    /// A JetStream context on this server.
    pub async fn js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }

    /// The store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- private nats-server log ({:?}, port {}) ----\n{}\n---- end ----",
                self.version,
                self.port,
                std::fs::read_to_string(self.log_path())
                    .map(|s| crate::common::faults::tail(&s, 40))
                    .unwrap_or_default()
            );
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
