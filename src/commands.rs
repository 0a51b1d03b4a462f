//! The commands: `run`, `check`, `status`, `tail`, `bench`.

use crate::cli::{Cli, Command, Role};
use crate::{config, connectors, http, logging, supervisor};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tidemark_core::check::Probe;
use tidemark_core::config::{Config, LogConfig, PipelineConfig};
use tidemark_core::health::Health;
use tidemark_core::CancellationToken;

/// How long a graceful shutdown may take before the process gives up waiting.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(9);

/// Runs the parsed command and maps the outcome to an exit code.
pub async fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run { config, role } => run(&config, role).await,
        Command::Check { config, offline } => check(&config, offline).await,
        Command::Status { config, json } => status(&config, json).await,
        Command::Tail {
            pipeline,
            config,
            table,
            from_start,
            limit,
            compact,
        } => {
            tail(
                &config,
                &pipeline,
                table.as_deref(),
                from_start,
                limit,
                compact,
            )
            .await
        }
        Command::Bench(args) => crate::bench::run(args).await,
    }
}

/// Loads the file or prints the one clear error.
fn load(path: &Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

async fn run(path: &Path, role: Role) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(&config.log);
    if config.pipelines.is_empty() {
        tracing::error!(config = %path.display(), "no [[pipelines]] configured");
        return ExitCode::from(2);
    }
    let handle = match http::install_recorder() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the metrics recorder");
            return ExitCode::from(1);
        }
    };
    let health = Health::new();
    let shutdown = CancellationToken::new();
    // The endpoint outlives the pipelines: /healthz stays 200 while a shutdown drains.
    let http_stop = CancellationToken::new();
    crate::progress::spawn(handle.clone(), http_stop.clone());
    if !config.metrics.listen.is_empty() {
        if let Err(e) = http::serve(
            &config.metrics.listen,
            handle,
            health.clone(),
            http_stop.clone(),
        )
        .await
        {
            tracing::error!(listen = %config.metrics.listen, error = %e, "cannot listen for metrics");
            return ExitCode::from(1);
        }
    }
    spawn_signal_handler(shutdown.clone());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pipelines = config.pipelines.len(),
        role = ?role,
        "tidemark starting"
    );
    let work = supervisor::run_all(&config, role, &health, &shutdown);
    tokio::pin!(work);
    tokio::select! {
        _ = &mut work => {}
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_DEADLINE).await;
        } => {
            tracing::error!("shutdown did not finish in time; exiting (positions already persisted stay valid)");
            return ExitCode::from(1);
        }
    }
    http_stop.cancel();
    tracing::info!("tidemark stopped");
    ExitCode::SUCCESS
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit at once.
fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            seen += 1;
            if seen == 1 {
                tracing::info!("signal received: stopping reads, flushing in-flight work");
                shutdown.cancel();
            } else {
                tracing::warn!("second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
}

async fn check(path: &Path, offline: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!(
        "config {}: ok ({} pipelines)",
        path.display(),
        config.pipelines.len()
    );
    if offline {
        return ExitCode::SUCCESS;
    }
    logging::init(&LogConfig {
        level: "warn".into(),
        ..config.log.clone()
    });
    let mut failed = 0;
    let nats_probes = probe_nats(&config).await;
    failed += print_probes("nats", &nats_probes);
    for p in &config.pipelines {
        let source = connectors::check_source(p).await;
        failed += print_probes(
            &format!("pipeline {} source ({:?})", p.name, p.source.kind),
            &source,
        );
        for s in &p.sinks {
            let probes = connectors::check_sink(s, p).await;
            failed += print_probes(&format!("pipeline {} sink {}", p.name, s.name), &probes);
        }
    }
    if failed == 0 {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        println!("{failed} check(s) failed");
        ExitCode::from(1)
    }
}

async fn probe_nats(config: &Config) -> Vec<Probe> {
    let url = tidemark_core::redact::url(&config.nats.url);
    let client = match tidemark_core::nats::connect(&config.nats, "tidemark check").await {
        Ok(c) => c,
        Err(e) => {
            return vec![Probe::fail(
                "nats reachable",
                e.to_string(),
                format!("start nats-server with JetStream (-js) at {url}, or fix [nats] url/auth"),
            )]
        }
    };
    let mut probes = vec![Probe::ok("nats reachable", url)];
    // A raw `$JS.API.INFO` request: async-nats's typed account query cannot parse the reply of
    // nats-server 2.9, and this works on every version.
    match client.request("$JS.API.INFO", bytes::Bytes::new()).await {
        Ok(reply) => match serde_json::from_slice::<serde_json::Value>(&reply.payload) {
            Ok(info) if info.get("error").is_none() => probes.push(Probe::ok(
                "jetstream enabled",
                format!(
                    "server {}, {} streams, {} bytes stored",
                    client.server_info().version,
                    info["streams"],
                    info["storage"]
                ),
            )),
            Ok(info) => probes.push(Probe::fail(
                "jetstream enabled",
                info["error"]["description"].as_str().unwrap_or("JetStream error").to_owned(),
                "enable JetStream for this account (nats-server -js, or `jetstream {}` in its config)",
            )),
            Err(e) => probes.push(Probe::fail("jetstream enabled", e.to_string(), "check the NATS server")),
        },
        Err(e) => probes.push(Probe::fail(
            "jetstream enabled",
            e.to_string(),
            "enable JetStream: nats-server -js (or `jetstream {}` in its config)",
        )),
    }
    probes
}

fn print_probes(title: &str, probes: &[Probe]) -> usize {
    println!("{title}:");
    let mut failed = 0;
    for p in probes {
        if p.ok {
            println!("  ok    {}: {}", p.what, p.detail);
        } else {
            failed += 1;
            println!("  FAIL  {}: {}", p.what, p.detail);
            if let Some(fix) = &p.fix {
                println!("        fix: {fix}");
            }
        }
    }
    failed
}

async fn status(path: &Path, json: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(&LogConfig {
        level: "error".into(),
        ..config.log.clone()
    });
    let js = match supervisor::jetstream(&config.nats, "tidemark status").await {
        Ok(js) => js,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let state = tidemark_core::state::StateStore::open(
        &js,
        &config.nats.state_bucket,
        config.nats.replicas,
    )
    .await;
    let mut report = Vec::new();
    for p in &config.pipelines {
        report.push(pipeline_status(p, &js, state.as_ref().ok()).await);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        for r in &report {
            print_status(r);
        }
    }
    ExitCode::SUCCESS
}

async fn pipeline_status(
    p: &PipelineConfig,
    js: &async_nats::jetstream::Context,
    state: Option<&tidemark_core::state::StateStore>,
) -> serde_json::Value {
    let source = match state {
        Some(state) => connectors::source_status(p, state)
            .await
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() })),
        None => serde_json::json!({ "error": "state bucket unavailable" }),
    };
    let stream_name = p.stream_name();
    let stream = match js.get_stream(&stream_name).await {
        Ok(mut s) => match s.info().await {
            Ok(info) => serde_json::json!({
                "name": stream_name,
                "messages": info.state.messages,
                "last_seq": info.state.last_sequence,
            }),
            Err(e) => serde_json::json!({ "name": stream_name, "error": e.to_string() }),
        },
        Err(e) => serde_json::json!({ "name": stream_name, "error": e.to_string() }),
    };
    let mut sinks = Vec::new();
    for s in &p.sinks {
        let applied = connectors::sink_status(s, &p.name)
            .await
            .map(|st| serde_json::to_value(st).unwrap_or_default())
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
        let consumer = tidemark_core::subject::consumer_name(&p.name, &s.name);
        let pending = match js.get_stream(&stream_name).await {
            Ok(stream) => match stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&consumer)
                .await
            {
                Ok(mut c) => c
                    .info()
                    .await
                    .map(|i| serde_json::json!(i.num_pending + i.num_ack_pending as u64))
                    .unwrap_or(serde_json::Value::Null),
                Err(_) => serde_json::Value::Null,
            },
            Err(_) => serde_json::Value::Null,
        };
        sinks.push(serde_json::json!({
            "name": s.name,
            "kind": s.kind,
            "applied": applied,
            "pending": pending,
        }));
    }
    serde_json::json!({
        "pipeline": p.name,
        "source": source,
        "stream": stream,
        "sinks": sinks,
    })
}

fn print_status(r: &serde_json::Value) {
    let show = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("pipeline {}", show(&r["pipeline"]));
    let s = &r["source"];
    if let Some(e) = s.get("error") {
        println!("  source      error: {}", show(e));
    } else {
        println!(
            "  source      position {}  lag {} s  retained {} bytes  {}",
            show(&s["position"]),
            show(&s["lag_seconds"]),
            show(&s["retained_bytes"]),
            show(&s["detail"])
        );
    }
    let st = &r["stream"];
    println!(
        "  stream      {}  messages {}  last seq {}",
        show(&st["name"]),
        show(&st["messages"]),
        show(&st["last_seq"])
    );
    for k in r["sinks"].as_array().into_iter().flatten() {
        let a = &k["applied"];
        if let Some(e) = a.get("error") {
            println!("  sink {:<8} error: {}", show(&k["name"]), show(e));
        } else {
            println!(
                "  sink {:<8} applied {} (stream seq {})  pending {}",
                show(&k["name"]),
                show(&a["applied_pos"]),
                show(&a["applied_stream_seq"]),
                show(&k["pending"])
            );
        }
    }
}

async fn tail(
    path: &Path,
    pipeline: &str,
    table: Option<&str>,
    from_start: bool,
    limit: Option<usize>,
    compact: bool,
) -> ExitCode {
    use futures_util::StreamExt as _;
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(p) = config.pipelines.iter().find(|p| p.name == pipeline) else {
        eprintln!(
            "error: no pipeline named {pipeline:?} in {}",
            path.display()
        );
        return ExitCode::from(2);
    };
    let js = match supervisor::jetstream(&config.nats, "tidemark tail").await {
        Ok(js) => js,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let stream = match js.get_stream(p.stream_name()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: stream {} not found: {e} (has the pipeline run yet?)",
                p.stream_name()
            );
            return ExitCode::from(1);
        }
    };
    let deliver_policy = if from_start {
        async_nats::jetstream::consumer::DeliverPolicy::All
    } else {
        async_nats::jetstream::consumer::DeliverPolicy::New
    };
    let consumer = match stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "error: cannot create a consumer on {}: {e}",
                p.stream_name()
            );
            return ExitCode::from(1);
        }
    };
    let mut messages = match consumer.messages().await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut shown = 0usize;
    loop {
        let next = tokio::select! {
            m = messages.next() => m,
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        };
        let Some(msg) = next else {
            return ExitCode::SUCCESS;
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        // Shown as published: no tree is built, so any depth and every digit of a number
        // come through (a `serde_json::Value` would reject or round them).
        let Ok(env) = tidemark_core::json_text::validate(&msg.payload) else {
            eprintln!("(skipping a message that is not JSON on {})", msg.subject);
            continue;
        };
        if let Some(glob) = table {
            let names = serde_json::from_str::<TailNames>(env.get()).unwrap_or_default();
            if !tidemark_core::config::table_selected(
                &[glob.to_owned()],
                &names.source.schema,
                &names.source.table,
            ) {
                continue;
            }
        }
        if compact {
            println!("{}", env.get());
        } else {
            println!("{}", tidemark_core::json_text::pretty(env));
        }
        shown += 1;
        if limit.is_some_and(|l| shown >= l) {
            return ExitCode::SUCCESS;
        }
    }
}

/// The names `tail --table` filters on; every other field is skipped unparsed.
#[derive(Debug, Default, serde::Deserialize)]
struct TailNames {
    #[serde(default)]
    source: TailSource,
}

/// `source.schema` and `source.table` of an envelope.
#[derive(Debug, Default, serde::Deserialize)]
struct TailSource {
    #[serde(default)]
    schema: String,
    #[serde(default)]
    table: String,
}
