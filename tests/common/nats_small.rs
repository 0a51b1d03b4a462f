//! A private nats-server (the 2.15 binary) with JetStream and a small `max_payload`, on a free
//! port under a temporary directory; killed and removed on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running private nats-server.
pub struct SmallNats {
    child: Child,
    dir: std::path::PathBuf,
    /// Client port on 127.0.0.1.
    pub port: u16,
}

impl SmallNats {
    /// Starts a server whose `max_payload` is `max_payload` bytes and waits until it listens.
    pub async fn start(max_payload: usize) -> SmallNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = std::env::temp_dir().join(crate::common::unique("tidemark_nats_small"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "host: 127.0.0.1\nport: {port}\nmax_payload: {max_payload}\n\
                 jetstream {{\n  store_dir: \"{}\"\n}}\n",
                dir.join("js").display()
            ),
        )
        .expect("write nats.conf");
        let child = Command::new("/opt/tidemark-nats/bin/nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /opt/tidemark-nats/bin/nats-server");
        let up = crate::common::wait_until(Duration::from_secs(15), || async move {
            async_nats::connect(format!("nats://127.0.0.1:{port}"))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "private nats-server did not start on {port}");
        SmallNats { child, dir, port }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for SmallNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
