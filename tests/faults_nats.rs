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
        Box::pin(async {
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
                p.metric_any("tidemark_reconnects_total", &[]).await >= 0.0,
                "metrics answer"
            );
            assert_no_errors(&daemon);
        }),
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
        Box::pin(async {
            let mut daemon = Daemon::start(&p.config(&nats.url(), FAST_PING, ""));
            assert!(p.wait_ready_code(200, Duration::from_secs(30)).await);
            let writer = Writer::start(&p, Load::default()).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let errors_before = p.metric_any("tidemark_errors_total", &[]).await;
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
            let errors_during = p.metric_any("tidemark_errors_total", &[]).await;
            let reconnects = p.metric_any("tidemark_reconnects_total", &[]).await;
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
        }),
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
        Box::pin(async {
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
            if half_open {
                tokio::time::sleep(Duration::from_secs(10)).await;
            } else {
                let seen_503 = wait_until(Duration::from_secs(10), || async {
                    matches!(p.http("/readyz").await, Some((503, _)))
                })
                .await;
                assert!(seen_503, "not ready during the partition");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
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
        }),
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
        Box::pin(async {
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
            // (The published counter counts re-sends acknowledged as duplicates too, so the
            // stream itself is asked.)
            let last_seq = || async {
                let mut s = nats.js().await.get_stream(p.stream()).await.unwrap();
                s.info().await.unwrap().state.last_sequence
            };
            let before = last_seq().await;
            tokio::time::sleep(Duration::from_secs(4)).await;
            assert_eq!(
                last_seq().await,
                before,
                "nothing is stored while the store is full"
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
        }),
        &p,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_store_full_stalls_and_resumes_2_15() {
    store_full(NatsVersion::Current).await;
}

/// The documented recovery ("JetStream stream lost"): stop everything, reset the sinks'
/// offsets, truncate their tables, drop the slot and the checkpoint, start again (initial
/// snapshot) — the targets must then equal the source exactly.
async fn recover(p: &Pipeline, nats: &PrivateNats) {
    for s in &p.sinks {
        let c = pg_connect(&s.db).await;
        c.batch_execute(&format!(
            "DELETE FROM tidemark_offsets WHERE pipeline = '{}' AND sink = '{}'; TRUNCATE items",
            p.name, s.name
        ))
        .await
        .unwrap();
    }
    p.drop_pg_slot().await;
    let kv = nats
        .js()
        .await
        .get_key_value("tidemark_state")
        .await
        .unwrap();
    kv.purge(format!("source.{}", p.name)).await.unwrap();
    let mut daemon = Daemon::start(&p.config(&nats.url(), FAST_PING, ""));
    Box::pin(p.converge(Duration::from_secs(40), &daemon)).await;
    assert_eq!(daemon.terminate().await, 0);
}

/// The sinks are down while the stream is purged: on start the sink finds the messages it had
/// not applied gone and halts with the recovery steps instead of carrying on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_purged_halts_the_sink_with_recovery_steps() {
    use crate::common::faults::RoleDaemon;
    let nats = PrivateNats::start(NatsVersion::Current, Limits::default()).await;
    let p = Pipeline::create("flt_purge", Engine::Pg, &[("pg", Engine::Pg)]).await;
    guarded(
        Box::pin(async {
            let config = p.config(&nats.url(), FAST_PING, "");
            let sink_port = crate::common::private_nats::free_port();
            let sink_config = config.replace(
                &format!("127.0.0.1:{}", p.metrics_port),
                &format!("127.0.0.1:{sink_port}"),
            );
            let mut sources = RoleDaemon::start(&config, "sources");
            let mut sinks = RoleDaemon::start(&sink_config, "sinks");
            let writer = Writer::start(&p, Load::default()).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            sinks.terminate().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            nats.js()
                .await
                .get_stream(p.stream())
                .await
                .unwrap()
                .purge()
                .await
                .unwrap();
            let applied_rows = Pipeline::rows(Engine::Pg, &p.sinks[0].db).await.len();
            let mut sinks = RoleDaemon::start(&sink_config, "sinks");
            let halted = wait_until(Duration::from_secs(20), || async {
                sinks
                    .logs()
                    .contains("were removed before this sink applied them")
            })
            .await;
            assert!(halted, "no stream-lost error:\n{}", sinks.logs());
            let logs = sinks.logs();
            let line = logs
                .lines()
                .find(|l| l.contains("were removed before this sink applied them"))
                .unwrap();
            assert!(line.contains(" ERROR "), "logged as an error: {line}");
            for step in [
                "DELETE FROM tidemark_offsets",
                "re-snapshot",
                "JetStream stream lost",
            ] {
                assert!(
                    line.contains(step),
                    "recovery step {step:?} missing: {line}"
                );
            }
            let readyz = crate::common::faults::http_get(sink_port, "/readyz").await;
            assert!(
                matches!(&readyz, Some((503, body)) if body.contains("removed before this sink")),
                "{readyz:?}"
            );
            // Halted: nothing after the gap is applied while the writer goes on.
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert_eq!(
                Pipeline::rows(Engine::Pg, &p.sinks[0].db).await.len(),
                applied_rows,
                "the sink went on past the gap"
            );
            writer.stop().await;
            sinks.terminate().await;
            sources.terminate().await;
            recover(&p, &nats).await;
        }),
        &p,
    )
    .await;
}

/// The stream is deleted under a running pipeline: the source re-creates it and goes on, the
/// sinks notice that their stream is a different one and halt with the recovery steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_deleted_while_running_halts_the_sinks_with_recovery_steps() {
    let nats = PrivateNats::start(NatsVersion::Old, Limits::default()).await;
    let p = Pipeline::create("flt_deleted", Engine::Pg, &[("pg", Engine::Pg)]).await;
    guarded(
        Box::pin(async {
            let mut daemon = Daemon::start(&p.config(&nats.url(), FAST_PING, ""));
            assert!(p.wait_ready_code(200, Duration::from_secs(30)).await);
            let writer = Writer::start(&p, Load::default()).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            nats.js().await.delete_stream(p.stream()).await.unwrap();
            let halted = wait_until(Duration::from_secs(20), || async {
                daemon.logs().contains("deleted and re-created")
            })
            .await;
            assert!(halted, "no stream-lost error:\n{}", daemon.logs());
            let line = daemon
                .logs()
                .lines()
                .find(|l| l.contains("deleted and re-created"))
                .unwrap()
                .to_owned();
            assert!(line.contains(" ERROR "), "logged as an error: {line}");
            assert!(line.contains("DELETE FROM tidemark_offsets") && line.contains("re-snapshot"));
            assert!(matches!(p.http("/readyz").await, Some((503, body)) if body.contains("deleted and re-created")));
            // It stays halted (slow retries), never goes on silently.
            tokio::time::sleep(Duration::from_secs(4)).await;
            assert!(matches!(p.http("/readyz").await, Some((503, _))));
            writer.stop().await;
            assert_eq!(daemon.terminate().await, 0);
            recover(&p, &nats).await;
        }),
        &p,
    )
    .await;
}
