//! NATS faults against the real daemon: each test runs a whole pipeline (Postgres or MariaDB
//! source → a private nats-server → Postgres and/or MariaDB sinks) with a writer changing rows
//! during the fault, then checks that the targets equal the source row for row and that every
//! sink applied each change exactly once (`tidemark_sink_applied_events_total` equals the
//! writer's committed row changes).
//!
//! The shared server on 4222 is never touched: every test starts its own nats-server (2.15,
//! and the Debian 2.9 binary from a private copy) on a free port, and puts the TCP proxy of
//! `common::proxy` in between where the network must fail.
//!
//! * `nats_restart_mid_stream_*`: the server is SIGKILLed and restarted, then restarted
//!   gracefully, while rows change (both server versions).
//! * `nats_down_30s_*`: MariaDB source; the server is down for 30 s: `/readyz` reports the
//!   outage, errors and reconnects are counted, then the pipeline catches up.
//! * `partition_*` / `half_open_*`: the proxy blackholes traffic for longer than the client's
//!   ping interval (a partition), or silently kills the open connections while new ones work
//!   (half-open TCP); the daemon must notice and reconnect.
//! * `jetstream_store_full_*`: a tiny `max_file_store`; the source stalls without losing
//!   anything, says why, and resumes once the server has room again.
//! * `stream_deleted_*` / `stream_purged_*`: a definite error naming the recovery, and the
//!   documented recovery brings the targets back to exact.

use crate::common::faults::{Engine, Load, Pipeline, Writer};
use crate::common::private_nats::{Limits, NatsVersion, PrivateNats};
use crate::common::proxy::Proxy;
use crate::common::*;
use std::time::{Duration, Instant};

/// `[nats]` lines for fast fault detection in tests.
const FAST_PING: &str = "ping_interval_secs = 2";

/// Runs `body` and then `cleanup`, re-raising a panic from `body` after cleaning up.
async fn guarded(body: impl std::future::Future<Output = ()>, p: &Pipeline) {
    use futures_util::FutureExt as _;
    let outcome = std::panic::AssertUnwindSafe(body).catch_unwind().await;
    p.drop_dbs().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Log lines at `level` (`WARN`, `ERROR`).
fn lines(daemon: &Daemon, level: &str) -> Vec<String> {
    let tag = format!(" {level} ");
    daemon
        .logs()
        .lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_owned)
        .collect()
}

fn assert_no_errors(daemon: &Daemon) {
    let errors = lines(daemon, "ERROR");
    assert!(
        errors.is_empty(),
        "a transient NATS fault must not log errors:\n{}",
        errors.join("\n")
    );
}

/// Common ending: stop the writer, converge, exactly-once check, clean SIGTERM.
async fn finish(p: &Pipeline, writer: Writer, daemon: &mut Daemon, converge: Duration) {
    let changes = writer.stop().await;
    p.converge(converge, daemon).await;
    p.assert_applied_once(changes, daemon).await;
    assert_eq!(daemon.terminate().await, 0, "exit code after SIGTERM");
}

async fn restart_mid_stream(version: NatsVersion) {
    let limits = Limits {
        sync_always: version == NatsVersion::Current,
        ..Limits::default()
    };
    let mut nats = PrivateNats::start(version, limits).await;
    let p = Pipeline::create(
        "flt_restart",
        Engine::Pg,
        &[("pg", Engine::Pg), ("maria", Engine::My)],
    )
    .await;
    guarded(
        async {
            let mut daemon = Daemon::start(&p.config(&nats.url(), FAST_PING, ""));
            assert!(p.wait_ready_code(200, Duration::from_secs(30)).await);
            let writer = Writer::start(&p, Load::default()).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            if version == NatsVersion::Current {
                nats.kill(); // a crash; the server fsyncs every write
            } else {
                nats.stop().await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            nats.start_again().await;
            tokio::time::sleep(Duration::from_secs(4)).await;
            nats.restart().await; // graceful
            tokio::time::sleep(Duration::from_secs(3)).await;
            finish(&p, writer, &mut daemon, Duration::from_secs(40)).await;
            assert!(
                p.metric("tidemark_reconnects_total", &[]).await >= 0.0,
                "metrics answer"
            );
            assert_no_errors(&daemon);
        },
        &p,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_mid_stream_2_15() {
    restart_mid_stream(NatsVersion::Current).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_mid_stream_2_9() {
    restart_mid_stream(NatsVersion::Old).await;
}

/// MariaDB source → Postgres sink; the server is gone for 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_30s_then_back_mariadb_source() {
    let mut nats = PrivateNats::start(NatsVersion::Current, Limits::default()).await;
    let p = Pipeline::create("flt_down", Engine::My, &[("pg", Engine::Pg)]).await;
    guarded(
        async {
            let mut daemon = Daemon::start(&p.config(&nats.url(), FAST_PING, ""));
            assert!(p.wait_ready_code(200, Duration::from_secs(30)).await);
            let writer = Writer::start(&p, Load::default()).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let errors_before = p.metric("tidemark_errors_total", &[]).await;
            nats.stop().await;
            let down = Instant::now();
            // Not ready while NATS is away, naming both components.
            let seen_503 = wait_until(Duration::from_secs(20), || async {
                matches!(p.http("/readyz").await, Some((503, body))
                    if body.contains("/source") && body.contains("/sink/pg"))
            })
            .await;
            assert!(
                seen_503,
                "/readyz: {:?}\n{}",
                p.http("/readyz").await,
                daemon.logs()
            );
            tokio::time::sleep(Duration::from_secs(30).saturating_sub(down.elapsed())).await;
            let errors_during = p.metric("tidemark_errors_total", &[]).await;
            let reconnects = p.metric("tidemark_reconnects_total", &[]).await;
            assert!(
                errors_during > errors_before,
                "errors counted: {errors_before} → {errors_during}"
            );
            assert!(reconnects >= 1.0, "reconnects counted: {reconnects}");
            // Backoff, not a busy loop: 30 s of 200 ms doubling to 30 s is well under 40 tries.
            assert!(
                errors_during - errors_before < 40.0,
                "{errors_during} errors in 30 s: retrying too fast"
            );
            assert!(
                !lines(&daemon, "WARN").is_empty(),
                "the outage is logged:\n{}",
                daemon.logs()
            );
            nats.start_again().await;
            let back = Instant::now();
            assert!(
                p.wait_ready_code(200, Duration::from_secs(45)).await,
                "ready again after NATS came back: {:?}",
                p.http("/readyz").await
            );
            eprintln!(
                "ready {:.1} s after NATS came back",
                back.elapsed().as_secs_f64()
            );
            finish(&p, writer, &mut daemon, Duration::from_secs(40)).await;
            assert_no_errors(&daemon);
        },
        &p,
    )
    .await;
}

async fn partition(version: NatsVersion, half_open: bool) {
    let nats = PrivateNats::start(version, Limits::default()).await;
    let proxy = Proxy::start(nats.addr()).await;
    let url = format!("nats://127.0.0.1:{}", proxy.port());
    let p = Pipeline::create(
        if half_open {
            "flt_halfopen"
        } else {
            "flt_partition"
        },
        Engine::Pg,
        &[("pg", Engine::Pg), ("maria", Engine::My)],
    )
    .await;
    guarded(
        async {
            let mut daemon = Daemon::start(&p.config(&url, FAST_PING, ""));
            assert!(p.wait_ready_code(200, Duration::from_secs(30)).await);
            let writer = Writer::start(&p, Load::default()).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let accepted = proxy.accepted();
            proxy.blackhole();
            if half_open {
                // Every open connection is dead, but the network works for new ones: only the
                // client's own checks (pings, ack and heartbeat timeouts) can notice.
                proxy.pass();
            }
            // Longer than the ping interval (2 s) times the allowed missed pongs.
            tokio::time::sleep(Duration::from_secs(10)).await;
            assert!(
                matches!(p.http("/readyz").await, Some((503, _))),
                "not ready during the fault: {:?}",
                p.http("/readyz").await
            );
            proxy.pass();
            assert!(
                p.wait_ready_code(200, Duration::from_secs(45)).await,
                "ready again: {:?}",
                p.http("/readyz").await
            );
            assert!(
                proxy.accepted() > accepted,
                "the daemon reconnected ({} connections before, {} after)",
                accepted,
                proxy.accepted()
            );
            finish(&p, writer, &mut daemon, Duration::from_secs(40)).await;
            assert_no_errors(&daemon);
        },
        &p,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_between_daemon_and_nats_2_15() {
    partition(NatsVersion::Current, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_tcp_to_nats_2_9() {
    partition(NatsVersion::Old, true).await;
}

async fn store_full(version: NatsVersion) {
    let limits = |bytes: u64| Limits {
        max_file_store: Some(bytes),
        ..Limits::default()
    };
    let mut nats = PrivateNats::start(version, limits(2 * 1024 * 1024)).await;
    let p = Pipeline::create("flt_full", Engine::Pg, &[("pg", Engine::Pg)]).await;
    guarded(
        async {
            let mut daemon = Daemon::start(&p.config(&nats.url(), FAST_PING, ""));
            assert!(p.wait_ready_code(200, Duration::from_secs(30)).await);
            let writer = Writer::start(
                &p,
                Load {
                    pace: Duration::from_millis(2),
                    note_len: 2000,
                },
            )
            .await;
            // The store fills: the source stops publishing, says why, and is not ready.
            let full = wait_until(Duration::from_secs(40), || async {
                daemon.logs().contains("JetStream storage is full")
            })
            .await;
            assert!(full, "no clear store-full log line:\n{}", daemon.logs());
            let published = p.metric("tidemark_published_events_total", &[]).await;
            tokio::time::sleep(Duration::from_secs(4)).await;
            assert_eq!(
                p.metric("tidemark_published_events_total", &[]).await,
                published,
                "nothing is published while the store is full"
            );
            assert!(
                matches!(p.http("/readyz").await, Some((503, body)) if body.contains("/source"))
            );
            assert!(daemon.pid() > 0);
            // Room again: the server restarts with a bigger limit, the source resumes.
            nats.stop().await;
            nats.start_again_with(limits(256 * 1024 * 1024)).await;
            assert!(
                p.wait_ready_code(200, Duration::from_secs(45)).await,
                "ready after the store has room: {:?}",
                p.http("/readyz").await
            );
            finish(&p, writer, &mut daemon, Duration::from_secs(45)).await;
        },
        &p,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_store_full_stalls_and_resumes_2_15() {
    store_full(NatsVersion::Current).await;
}
