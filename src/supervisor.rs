//! Runs every pipeline's source and sinks, restarting each after failures.
//!
//! ```text
//!            ┌──────────── source loop (per pipeline) ─────────────┐
//!  signal ─▶ │ connect NATS → ensure stream → open state → run      │
//!  cancel    │   source ──outbox──▶ publisher ──acks──▶ checkpoint  │
//!            │ on error: count, log, not-ready, backoff, run again  │
//!            └──────────────────────────────────────────────────────┘
//!            ┌──────────── sink loop (per sink) ────────────────────┐
//!            │ run sink runtime; on error: count, backoff, again    │
//!            └──────────────────────────────────────────────────────┘
//! ```
//!
//! A restart always begins at the durable position (slot / KV checkpoint /
//! the sink's offsets table), so a failure anywhere loses nothing: what was
//! in flight is read and sent again and absorbed by JetStream dedup and the
//! sinks' position guard. Definite errors (bad credentials, missing tables)
//! are retried too, slowly, because a human may fix them without a restart;
//! they keep the daemon not-ready and are logged at error level.

use crate::cli::Role;
use std::future::Future;
use std::time::{Duration, Instant};
use tidemark_core::backoff::Backoff;
use tidemark_core::config::{Config, NatsConfig, PipelineConfig, SinkConfig, SinkKind, SourceKind};
use tidemark_core::envelope::Naming;
use tidemark_core::error::{Failure, Retry};
use tidemark_core::health::Health;
use tidemark_core::metrics as m;
use tidemark_core::publisher::Publisher;
use tidemark_core::source::{Outbox, Source, SourceContext};
use tidemark_core::state::StateStore;
use tidemark_core::CancellationToken;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Outbox capacity between a source and its publisher (events, not bytes).
const OUTBOX_CAPACITY: usize = 8192;

/// Starts every component selected by `role` and waits until all of them stopped, which
/// happens only after `shutdown` fires.
pub async fn run_all(config: &Config, role: Role, health: &Health, shutdown: &CancellationToken) {
    register_metrics(config, role);
    let mut tasks = JoinSet::new();
    for p in &config.pipelines {
        if role != Role::Sinks {
            let component = format!("{}/source", p.name);
            health.not_ready(&component, "starting");
            let (p, nats, health, shutdown) = (
                p.clone(),
                config.nats.clone(),
                health.clone(),
                shutdown.clone(),
            );
            tasks.spawn(supervise(
                component.clone(),
                "source",
                health.clone(),
                shutdown.clone(),
                move || {
                    let (p, nats, health, shutdown) =
                        (p.clone(), nats.clone(), health.clone(), shutdown.clone());
                    async move { source_once(&p, &nats, &health, &shutdown).await }
                },
            ));
        }
        if role != Role::Sources {
            for s in &p.sinks {
                let component = format!("{}/sink/{}", p.name, s.name);
                health.not_ready(&component, "starting");
                let (p, s, nats, health2, shutdown2) = (
                    p.clone(),
                    s.clone(),
                    config.nats.clone(),
                    health.clone(),
                    shutdown.clone(),
                );
                tasks.spawn(supervise(
                    component,
                    "sink",
                    health.clone(),
                    shutdown.clone(),
                    move || {
                        let (p, s, nats, health, shutdown) = (
                            p.clone(),
                            s.clone(),
                            nats.clone(),
                            health2.clone(),
                            shutdown2.clone(),
                        );
                        async move { sink_once(&p, &s, &nats, &health, &shutdown).await }
                    },
                ));
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Registers every metric family of the components `role` runs, at zero, before any of them
/// starts: a sink whose database is down from the first second still exports its applied,
/// pending and latency series, so "pending grows while applied stays flat" can alert.
fn register_metrics(config: &Config, role: Role) {
    for p in &config.pipelines {
        if role != Role::Sinks {
            let exact: Vec<String> = p
                .source
                .tables
                .iter()
                .filter(|t| !t.contains('*'))
                .cloned()
                .collect();
            m::register_source(&p.name, &exact);
        }
        if role != Role::Sources {
            for s in &p.sinks {
                m::register_sink(&p.name, &s.name);
            }
        }
    }
}

/// Runs `attempt` until it returns `Ok` (clean shutdown) or `shutdown` fires, with backoff
/// between failures.
async fn supervise<F, Fut>(
    component: String,
    kind: &'static str,
    health: Health,
    shutdown: CancellationToken,
    mut attempt: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Failure>>,
{
    let mut backoff = Backoff::default_server();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let started = Instant::now();
        match attempt().await {
            Ok(()) => {
                tracing::info!(component = %component, "stopped");
                return;
            }
            Err(failure) => {
                if shutdown.is_cancelled() {
                    tracing::info!(component = %component, error = %failure, "stopped during shutdown");
                    return;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    backoff.reset();
                }
                let mut delay = backoff.next_delay();
                if failure.retry == Retry::Definite {
                    delay = delay.max(Duration::from_secs(10));
                }
                m::error(kind, failure.kind);
                m::reconnect(kind);
                health.not_ready(&component, failure.message.clone());
                match failure.retry {
                    Retry::Definite => tracing::error!(
                        component = %component, kind = failure.kind, error = %failure,
                        retry_in_ms = delay.as_millis() as u64,
                        "failed; needs attention, retrying slowly"
                    ),
                    Retry::Transient => tracing::warn!(
                        component = %component, kind = failure.kind, error = %failure,
                        retry_in_ms = delay.as_millis() as u64,
                        "failed; retrying"
                    ),
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Connects to NATS and opens the JetStream context for one component.
pub async fn jetstream(
    nats: &NatsConfig,
    name: &str,
) -> Result<async_nats::jetstream::Context, Failure> {
    let client = tidemark_core::nats::connect(nats, name)
        .await
        .map_err(Failure::from_err)?;
    Ok(async_nats::jetstream::new(client))
}

async fn source_once(
    p: &PipelineConfig,
    nats: &NatsConfig,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<(), Failure> {
    let js = jetstream(nats, &format!("tidemark {} source", p.name)).await?;
    tidemark_core::nats::ensure_stream(&js, p, nats)
        .await
        .map_err(Failure::from_err)?;
    let state = StateStore::open(&js, &nats.state_bucket, nats.replicas)
        .await
        .map_err(Failure::from_err)?;
    let publisher = Publisher::new(js, nats.publish_window, &p.name).oversize(p, nats);
    match p.source.kind {
        SourceKind::Postgres => {
            drive::<tidemark_postgres_source::PostgresSource>(
                p, "postgres", publisher, state, health, shutdown,
            )
            .await
        }
        SourceKind::Mysql => {
            drive::<tidemark_mysql_source::MysqlSource>(
                p, "mysql", publisher, state, health, shutdown,
            )
            .await
        }
    }
}

/// Runs source `S` and its publisher side by side; whichever fails first ends both.
async fn drive<S: Source>(
    p: &PipelineConfig,
    connector: &'static str,
    publisher: Publisher,
    state: StateStore,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<(), Failure> {
    let (outbox, rx) = Outbox::channel(OUTBOX_CAPACITY);
    let (acked_tx, acked_rx) = watch::channel(None);
    let mut publishing = tokio::spawn(publisher.run(rx, acked_tx));
    let ctx = SourceContext {
        pipeline: p.clone(),
        naming: Naming {
            pipeline: p.name.clone(),
            connector,
            subject_prefix: p.subject_prefix.clone(),
        },
        outbox,
        acked: acked_rx,
        state,
        shutdown: shutdown.clone(),
        health: health.clone(),
    };
    let source = S::run(ctx);
    tokio::pin!(source);
    tokio::select! {
        result = &mut source => {
            // The outbox is gone with the context: the publisher drains what is left and ends.
            let published = tokio::time::timeout(Duration::from_secs(5), &mut publishing).await;
            result?;
            match published {
                Ok(Ok(r)) => r,
                Ok(Err(join)) => Err(Failure::transient("publisher", format!("publisher task failed: {join}"))),
                Err(_) => Err(Failure::transient("publisher", "publisher did not drain within 5 s")),
            }
        }
        published = &mut publishing => {
            match published {
                Ok(Ok(())) => Err(Failure::transient("publisher", "publisher stopped unexpectedly")),
                Ok(Err(f)) => Err(f),
                Err(join) => Err(Failure::transient("publisher", format!("publisher task failed: {join}"))),
            }
        }
    }
}

async fn sink_once(
    p: &PipelineConfig,
    s: &SinkConfig,
    nats: &NatsConfig,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<(), Failure> {
    let js = jetstream(nats, &format!("tidemark {} sink {}", p.name, s.name)).await?;
    tidemark_core::nats::ensure_stream(&js, p, nats)
        .await
        .map_err(Failure::from_err)?;
    let ctx = tidemark_core::sink::SinkContext {
        pipeline: p.clone(),
        sink: s.clone(),
        js: js.clone(),
        shutdown: shutdown.clone(),
        health: health.clone(),
    };
    // Boxed: the sink runtimes are large futures, kept off the supervisor's stack.
    let run = Box::pin(async {
        match s.kind {
            SinkKind::Postgres => tidemark_postgres_sink::run(ctx).await,
            SinkKind::Mysql => tidemark_mysql_sink::run(ctx).await,
        }
    });
    tokio::select! {
        result = run => result,
        never = watch_pending(&js, p, s) => match never {},
    }
}

/// How often [`watch_pending`] refreshes the gauge.
const PENDING_PERIOD: Duration = Duration::from_secs(2);

/// Keeps `tidemark_sink_pending_events` current for as long as the sink runs, whether or not
/// its target is reachable: the runtime refreshes the gauge only inside a session, and a
/// session needs the target database. Reads only: the consumer's pending counts when it
/// exists, else every message in the stream (a sink that never consumed owes all of them).
async fn watch_pending(
    js: &async_nats::jetstream::Context,
    p: &PipelineConfig,
    s: &SinkConfig,
) -> std::convert::Infallible {
    let gauge = metrics::gauge!(m::SINK_PENDING, m::L_PIPELINE => p.name.clone(), m::L_SINK => s.name.clone());
    let stream = p.stream_name();
    let consumer = tidemark_core::subject::consumer_name(&p.name, &s.name);
    loop {
        let pending = tokio::time::timeout(PENDING_PERIOD, pending_now(js, &stream, &consumer));
        if let Ok(Some(n)) = pending.await {
            gauge.set(n as f64);
        }
        tokio::time::sleep(PENDING_PERIOD).await;
    }
}

/// Messages the sink's consumer has not had acknowledged, or `None` when NATS cannot say.
async fn pending_now(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Option<u64> {
    let mut stream = js.get_stream(stream).await.ok()?;
    match stream.consumer_info(consumer).await {
        Ok(info) => Some(info.num_pending + info.num_ack_pending as u64),
        Err(_) => Some(stream.info().await.ok()?.state.messages),
    }
}
