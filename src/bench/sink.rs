//! `tidemark bench --sink postgres|mysql`: how fast does a sink apply, and how long does a
//! change take from the source commit to the target commit?
//!
//! Two phases, each against a real `tidemark run` child process (so its peak RSS is its own):
//!
//! 1. **bulk**: `--sink-rows` synthetic envelopes (the source benchmark's `bench` table shape,
//!    in transactions of `--sink-tx-rows` rows) are published into a fresh stream first; then
//!    the daemon runs with `--role sinks` (the pipeline's source is never started) and is timed
//!    until the target's `tidemark_offsets` row covers the whole stream. Reported: rows/s from
//!    process start (`total`) and from the first target commit (`steady`, without start-up),
//!    p50/p99 of one target transaction (`tidemark_sink_apply_latency_seconds`), peak RSS.
//! 2. **e2e**: a Postgres source table → the daemon with both roles → the sink under test; a
//!    writer commits `--e2e-rate` rows/s (transactions of `--e2e-tx-rows`) for `--e2e-secs`.
//!    p50/p99 of source commit → target commit come from the daemon's own
//!    `tidemark_end_to_end_latency_seconds` histogram (scraped from `/metrics` after a short
//!    warm-up and at the end; the difference is the steady state), interpolated inside buckets
//!    the way Prometheus' `histogram_quantile` does.
//!
//! Targets (docs/operations.md): bulk ≥ 50k rows/s, e2e p99 < 100 ms at 5k rows/s.

use super::{free_port, rand_u32, ready, terminate, vm_hwm_kib, BenchArgs, BoxError};
use mysql_async::prelude::Queryable as _;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tidemark_core::envelope::{
    CanonicalType, Change, Column, Encoder, Naming, Op, TableMeta, TxInfo,
};
use tidemark_core::value::Value;

/// Sink kinds the benchmark can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchSink {
    /// A PostgreSQL target.
    Postgres,
    /// A MySQL / MariaDB target.
    Mysql,
}

impl BenchSink {
    fn kind(self) -> &'static str {
        match self {
            BenchSink::Postgres => "postgres",
            BenchSink::Mysql => "mysql",
        }
    }
}

/// One measured phase.
struct Line {
    name: String,
    rows: u64,
    secs: f64,
    steady_secs: Option<f64>,
    latency: &'static str,
    quantiles: Option<(f64, f64)>,
    rss_kib: u64,
    /// CPU time (user + system) the daemon used, seconds.
    cpu_secs: f64,
}

/// Names of one run.
struct Names {
    suffix: String,
    /// Target database (both engines).
    target_db: String,
    /// Source database of the e2e phase (Postgres).
    source_db: String,
    bulk_pipeline: String,
    e2e_pipeline: String,
}

const SINK_NAME: &str = "bench";

/// Runs the sink benchmark and prints its report; returns false on failure.
pub(super) async fn run(args: &BenchArgs, kind: BenchSink) -> bool {
    let suffix = format!("{:08x}", rand_u32());
    let names = Names {
        target_db: format!("tidemark_bench_{suffix}_t"),
        source_db: format!("tidemark_bench_{suffix}_s"),
        bulk_pipeline: format!("bench_{suffix}"),
        e2e_pipeline: format!("bench_{suffix}_e2e"),
        suffix,
    };
    let result = phases(args, kind, &names).await;
    if !args.keep {
        cleanup(args, kind, &names).await;
    }
    match result {
        Ok(lines) => {
            print_report(kind, &lines);
            true
        }
        Err(e) => {
            eprintln!("sink bench failed: {e}");
            false
        }
    }
}

async fn phases(args: &BenchArgs, kind: BenchSink, names: &Names) -> Result<Vec<Line>, BoxError> {
    let target = Target::create(args, kind, &names.target_db).await?;
    let mut lines = vec![bulk(args, kind, names, &target).await?];
    if args.e2e_secs > 0 {
        lines.push(e2e(args, kind, names, &target).await?);
    }
    target.close().await;
    Ok(lines)
}

fn print_report(kind: BenchSink, lines: &[Line]) {
    println!();
    println!("sink: {}", kind.kind());
    println!(
        "{:<34} {:>8} {:>10} {:>10} {:>8} {:>7} {:>7} {:>10} {:>10}",
        "phase",
        "rows",
        "total r/s",
        "steady r/s",
        "latency",
        "p50 ms",
        "p99 ms",
        "peak RSS",
        "CPU us/row"
    );
    for l in lines {
        let rate = |secs: f64| l.rows as f64 / secs.max(1e-9);
        let (p50, p99) = match l.quantiles {
            Some((a, b)) => (format!("{:.1}", a * 1000.0), format!("{:.1}", b * 1000.0)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<34} {:>8} {:>10.0} {:>10} {:>8} {:>7} {:>7} {:>6.1} MiB {:>10.1}",
            l.name,
            l.rows,
            rate(l.secs),
            l.steady_secs
                .map(|s| format!("{:.0}", rate(s)))
                .unwrap_or_else(|| "-".into()),
            l.latency,
            p50,
            p99,
            l.rss_kib as f64 / 1024.0,
            l.cpu_secs * 1e6 / l.rows.max(1) as f64
        );
    }
    println!(
        "targets: bulk >= 50000 rows/s; e2e p99 < 100 ms at 5000 rows/s \
         (apply = one target transaction; e2e = source commit -> target commit)"
    );
}

/// The target database under test.
enum Target {
    Pg(tokio_postgres::Client, String),
    My(mysql_async::Conn, String),
}

const PG_TABLE: &str = "(id bigint PRIMARY KEY, name text NOT NULL, qty integer NOT NULL, \
                        price numeric(12,2) NOT NULL, updated_at timestamptz NOT NULL)";
const MY_TABLE: &str = "(id bigint PRIMARY KEY, name varchar(64) NOT NULL, qty int NOT NULL, \
                        price decimal(12,2) NOT NULL, updated_at datetime(6) NOT NULL)";

async fn pg_client(url: &str) -> Result<tokio_postgres::Client, BoxError> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn my_conn(args: &BenchArgs, db: &str) -> Result<mysql_async::Conn, BoxError> {
    let opts = mysql_async::Opts::from_url(&format!("{}/{db}", args.mysql))?;
    Ok(mysql_async::Conn::new(opts).await?)
}

impl Target {
    async fn create(args: &BenchArgs, kind: BenchSink, db: &str) -> Result<Target, BoxError> {
        match kind {
            BenchSink::Postgres => {
                let admin = pg_client(&format!("{}/postgres", args.pg)).await?;
                admin
                    .batch_execute(&format!("CREATE DATABASE {db}"))
                    .await?;
                let url = format!("{}/{db}", args.pg);
                let c = pg_client(&url).await?;
                c.batch_execute(&format!(
                    "CREATE TABLE bench {PG_TABLE}; CREATE TABLE e2e {PG_TABLE}"
                ))
                .await?;
                Ok(Target::Pg(c, url))
            }
            BenchSink::Mysql => {
                let mut c = my_conn(args, "").await?;
                c.query_drop(format!("CREATE DATABASE `{db}`")).await?;
                c.query_drop(format!("USE `{db}`")).await?;
                c.query_drop(format!("CREATE TABLE bench {MY_TABLE}"))
                    .await?;
                c.query_drop(format!("CREATE TABLE e2e {MY_TABLE}")).await?;
                Ok(Target::My(c, format!("{}/{db}", args.mysql)))
            }
        }
    }

    fn url(&self) -> &str {
        match self {
            Target::Pg(_, u) | Target::My(_, u) => u,
        }
    }

    /// The stream sequence the target's offset row records for `pipeline` (0 if none yet).
    async fn offset_seq(&mut self, pipeline: &str) -> u64 {
        match self {
            Target::Pg(c, _) => c
                .query_opt(
                    "SELECT stream_seq FROM public.tidemark_offsets WHERE pipeline = $1 AND sink = $2",
                    &[&pipeline, &SINK_NAME],
                )
                .await
                .ok()
                .flatten()
                .and_then(|r| r.try_get::<_, i64>(0).ok())
                .map_or(0, |v| u64::try_from(v).unwrap_or(0)),
            Target::My(c, _) => c
                .exec_first::<u64, _, _>(
                    "SELECT stream_seq FROM tidemark_offsets WHERE pipeline = ? AND sink = ?",
                    (pipeline, SINK_NAME),
                )
                .await
                .ok()
                .flatten()
                .unwrap_or(0),
        }
    }

    async fn count(&mut self, table: &str) -> Result<u64, BoxError> {
        let sql = format!("SELECT count(*) FROM {table}");
        Ok(match self {
            Target::Pg(c, _) => {
                let n: i64 = c.query_one(sql.as_str(), &[]).await?.try_get(0)?;
                u64::try_from(n).unwrap_or(0)
            }
            Target::My(c, _) => c.query_first::<u64, _>(sql).await?.unwrap_or(0),
        })
    }

    async fn close(self) {
        if let Target::My(c, _) = self {
            let _ = c.disconnect().await;
        }
    }
}

/// The sink half of a benchmark pipeline file.
struct SinkSpec<'a> {
    kind: BenchSink,
    target_url: &'a str,
    table: &'a str,
}

fn write_config(
    args: &BenchArgs,
    path_tag: &str,
    pipeline: &str,
    port: u16,
    source: &str,
    sink: SinkSpec<'_>,
) -> Result<PathBuf, BoxError> {
    let SinkSpec {
        kind,
        target_url,
        table,
    } = sink;
    let path = std::env::temp_dir().join(format!("{pipeline}_{path_tag}.toml"));
    let batch = args
        .sink_batch_size
        .map(|b| format!("  batch_size = {b}\n"))
        .unwrap_or_default();
    std::fs::write(
        &path,
        format!(
            "[nats]\nurl = \"{nats}\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\n\
             [[pipelines]]\nname = \"{pipeline}\"\n  [pipelines.source]\n{source}\
             [[pipelines.sinks]]\n  name = \"{SINK_NAME}\"\n  kind = \"{kind}\"\n  url = \"{target_url}\"\n  \
             tables = [\"public.{table}\"]\n{batch}",
            nats = args.nats,
            kind = kind.kind(),
        ),
    )?;
    Ok(path)
}

fn spawn_daemon(config: &PathBuf, role: &str) -> Result<tokio::process::Child, BoxError> {
    Ok(tokio::process::Command::new(std::env::current_exe()?)
        .arg("run")
        .arg("-c")
        .arg(config)
        .arg("--role")
        .arg(role)
        .kill_on_drop(true)
        .spawn()?)
}

/// Synthetic envelopes of `public.bench`, as the Postgres source would write them.
fn bench_table(pipeline: &str, table: &str) -> (Naming, TableMeta) {
    let naming = Naming {
        pipeline: pipeline.to_owned(),
        connector: "postgres",
        subject_prefix: "tidemark".into(),
    };
    let col = |name: &str, ty: CanonicalType, source_type: &str, pk: bool| Column {
        name: name.into(),
        ty,
        source_type: source_type.into(),
        pk,
        nullable: false,
        element: None,
    };
    let meta = TableMeta::new(
        &naming,
        "benchsrc",
        "public",
        table,
        vec![
            col("id", CanonicalType::Int64, "bigint", true),
            col("name", CanonicalType::String, "text", false),
            col("qty", CanonicalType::Int64, "integer", false),
            col("price", CanonicalType::Decimal, "numeric(12,2)", false),
            col(
                "updated_at",
                CanonicalType::Timestamptz,
                "timestamp with time zone",
                false,
            ),
        ],
    );
    (naming, meta)
}

/// Publishes `rows` insert envelopes in transactions of `tx_rows`, 1024 acks in flight.
async fn publish(
    args: &BenchArgs,
    pipeline: &str,
    rows: u64,
    tx_rows: u64,
) -> Result<f64, BoxError> {
    use async_nats::jetstream::{self, stream};
    use std::collections::VecDeque;
    use std::future::IntoFuture as _;
    let js = jetstream::new(async_nats::connect(&args.nats).await?);
    let name = tidemark_core::subject::default_stream_name(pipeline);
    let _ = js.delete_stream(&name).await;
    js.create_stream(stream::Config {
        name,
        subjects: vec![tidemark_core::subject::pipeline_wildcard(
            "tidemark", pipeline,
        )],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    let (naming, meta) = bench_table(pipeline, "bench");
    let mut encoder = Encoder::new();
    let tx_rows = tx_rows.max(1);
    let started = Instant::now();
    let mut inflight = VecDeque::with_capacity(1024);
    let now = tidemark_core::metrics::now_ms();
    for i in 0..rows {
        let tx = i / tx_rows;
        let seq = i % tx_rows + 1;
        let lsn = 0x0100_0000u64 + tx * 0x1_0000;
        let commit = tidemark_core::position::hex16(lsn);
        let pos = tidemark_core::position::streamed(&commit, seq);
        let info = TxInfo {
            id: (1000 + tx).to_string(),
            seq,
            commit_pos: format!("0/{lsn:X}"),
            last: seq == tx_rows || i + 1 == rows,
        };
        let id = i64::try_from(i + 1).unwrap_or(i64::MAX);
        let row = vec![
            Some(Value::Int(id)),
            Some(Value::Text(format!("item {id}"))),
            Some(Value::Int(id % 100)),
            Some(Value::Decimal(format!("{}.50", id % 1000))),
            Some(Value::Text("2024-02-29T12:45:00.123456Z".into())),
        ];
        let change = Change {
            op: Op::Create,
            table: &meta,
            pos: &pos,
            tx: &info,
            ts_ms: now,
            snapshot: false,
            before: None,
            after: Some(&row),
        };
        let out = encoder.encode(&naming, &change, now);
        if inflight.len() >= 1024 {
            if let Some(ack) = inflight.pop_front() {
                let ack: async_nats::jetstream::context::PublishAckFuture = ack;
                ack.into_future().await?;
            }
        }
        let msg = jetstream::message::PublishMessage::build()
            .message_id(out.id)
            .payload(out.payload);
        inflight.push_back(js.send_publish(out.subject, msg).await?);
    }
    for ack in inflight {
        ack.into_future().await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Phase 1: the sink alone drains a pre-filled stream.
async fn bulk(
    args: &BenchArgs,
    kind: BenchSink,
    names: &Names,
    target: &Target,
) -> Result<Line, BoxError> {
    let rows = args.sink_rows;
    eprintln!(
        "bulk: publishing {rows} envelopes in {}-row transactions…",
        args.sink_tx_rows
    );
    let pub_secs = publish(args, &names.bulk_pipeline, rows, args.sink_tx_rows).await?;
    eprintln!(
        "  published in {pub_secs:.1} s ({:.0} msg/s); running the sink…",
        rows as f64 / pub_secs.max(1e-9)
    );
    let port = free_port();
    let config = write_config(
        args,
        "bulk",
        &names.bulk_pipeline,
        port,
        // Never started (--role sinks); the pipeline just needs one.
        "  kind = \"postgres\"\n  url = \"postgres://postgres@127.0.0.1:1/unused\"\n",
        SinkSpec {
            kind,
            target_url: target.url(),
            table: "bench",
        },
    )?;
    // A second connection for polling, so the `target` handle stays free.
    let mut probe = Target::reopen(args, kind, target).await?;
    let started = Instant::now();
    let mut child = spawn_daemon(&config, "sinks")?;
    let pid = child.id().unwrap_or(0);
    let mut peak = 0u64;
    let mut first_commit: Option<(Instant, u64)> = None;
    let mut last_progress = (0u64, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(25)).await;
        peak = peak.max(vm_hwm_kib(pid));
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("tidemark exited early: {status}").into());
        }
        let seq = probe.offset_seq(&names.bulk_pipeline).await;
        if seq > 0 && first_commit.is_none() {
            first_commit = Some((Instant::now(), seq));
        }
        if seq >= rows {
            break;
        }
        if seq != last_progress.0 {
            last_progress = (seq, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(60) {
            return Err(format!("no progress for 60 s at stream seq {seq}/{rows}").into());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // Steady rate: rows applied after the first observed commit over the time since then,
    // expressed as the time all rows would take at that rate.
    let steady_secs = first_commit
        .filter(|(_, seq)| *seq < rows)
        .map(|(t, seq)| t.elapsed().as_secs_f64() * rows as f64 / (rows - seq) as f64);
    peak = peak.max(vm_hwm_kib(pid));
    let cpu_secs = cpu_secs(pid);
    let metrics = scrape(port).await.unwrap_or_default();
    terminate(&mut child).await;
    let have = probe.count("bench").await?;
    probe.close().await;
    if have != rows {
        return Err(format!("target holds {have} rows, expected {rows}").into());
    }
    let quantiles = histogram(&metrics, tidemark_core::metrics::SINK_APPLY_LATENCY)
        .map(|h| (quantile(&h, 0.5), quantile(&h, 0.99)));
    Ok(Line {
        name: format!("bulk, {}-row source txs", args.sink_tx_rows),
        rows,
        secs,
        steady_secs,
        latency: "apply",
        quantiles,
        rss_kib: peak,
        cpu_secs,
    })
}

impl Target {
    async fn reopen(
        args: &BenchArgs,
        kind: BenchSink,
        target: &Target,
    ) -> Result<Target, BoxError> {
        Ok(match kind {
            BenchSink::Postgres => {
                Target::Pg(pg_client(target.url()).await?, target.url().to_owned())
            }
            BenchSink::Mysql => {
                let db = match target {
                    Target::My(_, url) => url.rsplit('/').next().unwrap_or("").to_owned(),
                    Target::Pg(..) => String::new(),
                };
                Target::My(my_conn(args, &db).await?, target.url().to_owned())
            }
        })
    }
}

/// Phase 2: a steady writer on a Postgres source, both roles in one daemon.
async fn e2e(
    args: &BenchArgs,
    kind: BenchSink,
    names: &Names,
    target: &Target,
) -> Result<Line, BoxError> {
    let admin = pg_client(&format!("{}/postgres", args.pg)).await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {}", names.source_db))
        .await?;
    let source_url = format!("{}/{}", args.pg, names.source_db);
    let src = pg_client(&source_url).await?;
    src.batch_execute(&format!(
        "CREATE TABLE e2e {PG_TABLE}; CREATE PUBLICATION e2e_pub FOR TABLE e2e"
    ))
    .await?;
    let port = free_port();
    let config = write_config(
        args,
        "e2e",
        &names.e2e_pipeline,
        port,
        &format!(
            "  kind = \"postgres\"\n  url = \"{source_url}\"\n  tables = [\"public.e2e\"]\n  \
             publication = \"e2e_pub\"\n  slot = \"tidemark_bench_{}\"\n  snapshot = \"never\"\n",
            names.suffix
        ),
        SinkSpec {
            kind,
            target_url: target.url(),
            table: "e2e",
        },
    )?;
    let mut child = spawn_daemon(&config, "all")?;
    let pid = child.id().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(port).await {
        if Instant::now() > deadline {
            return Err("tidemark did not become ready within 60 s".into());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("tidemark exited during start-up: {status}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate = args.e2e_rate.max(1);
    let tx_rows = args.e2e_tx_rows.max(1);
    let total = rate * args.e2e_secs;
    eprintln!(
        "e2e: writing {rate} rows/s in {tx_rows}-row transactions for {} s…",
        args.e2e_secs
    );
    let insert = src
        .prepare(
            "INSERT INTO e2e SELECT g, 'item ' || g, (g % 100)::int, (g % 1000) + 0.5, now() \
             FROM generate_series($1::bigint, $2::bigint) g",
        )
        .await?;
    let warmup = Duration::from_secs(args.e2e_secs.min(3));
    let mut baseline: Option<String> = None;
    let started = Instant::now();
    let mut written = 0u64;
    let mut peak = 0u64;
    let mut behind_max = Duration::ZERO;
    while written < total {
        // Rows due by now on a steady schedule.
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        if due >= written + tx_rows || (due == total && written < total) {
            let last = (written + tx_rows).min(total);
            let (a, b) = (
                i64::try_from(written + 1).unwrap_or(i64::MAX),
                i64::try_from(last).unwrap_or(i64::MAX),
            );
            src.execute(&insert, &[&a, &b]).await?;
            written = last;
            let scheduled = Duration::from_secs_f64(written as f64 / rate as f64);
            behind_max = behind_max.max(started.elapsed().saturating_sub(scheduled));
        } else {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        if baseline.is_none() && started.elapsed() >= warmup {
            baseline = Some(scrape(port).await.unwrap_or_default());
        }
        peak = peak.max(vm_hwm_kib(pid));
    }
    let write_secs = started.elapsed().as_secs_f64();
    let mut probe = Target::reopen(args, kind, target).await?;
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = probe.count("e2e").await?;
        if have >= total {
            break;
        }
        if Instant::now() > drain_deadline {
            return Err(
                format!("target holds {have}/{total} rows 60 s after the writer stopped").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the last commit's samples be recorded.
    tokio::time::sleep(Duration::from_millis(200)).await;
    peak = peak.max(vm_hwm_kib(pid));
    let cpu_secs = cpu_secs(pid);
    let end = scrape(port).await?;
    terminate(&mut child).await;
    probe.close().await;
    let metric = tidemark_core::metrics::END_TO_END_LATENCY;
    let mut h = histogram(&end, metric).ok_or("no end-to-end latency histogram in /metrics")?;
    if let Some(before) = baseline.as_deref().and_then(|b| histogram(b, metric)) {
        for (le, n) in h.iter_mut() {
            *n -= before.get(le).copied().unwrap_or(0.0);
        }
    }
    eprintln!(
        "  writer: {:.0} rows/s achieved, at most {:.0} ms behind schedule; {:.0} source transactions sampled",
        total as f64 / write_secs.max(1e-9),
        behind_max.as_secs_f64() * 1000.0,
        h.values().copied().fold(0.0, f64::max)
    );
    Ok(Line {
        name: format!("e2e pg source, {rate} r/s, {tx_rows}-row txs"),
        rows: total,
        secs: write_secs,
        steady_secs: None,
        latency: "e2e",
        quantiles: Some((quantile(&h, 0.5), quantile(&h, 0.99))),
        rss_kib: peak,
        cpu_secs,
    })
}

/// User + system CPU seconds of process `pid` so far (0 when unreadable).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}

/// GET /metrics.
async fn scrape(port: u16) -> Result<String, BoxError> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    Ok(buf)
}

/// Cumulative bucket counts of histogram `metric` (summed over label sets), keyed by the
/// upper bound in nanoseconds so they sort numerically (+Inf = u64::MAX).
fn histogram(text: &str, metric: &str) -> Option<BTreeMap<u64, f64>> {
    let prefix = format!("{metric}_bucket{{");
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some(le_at) = line.find("le=\"") else {
            continue;
        };
        let rest = &line[le_at + 4..];
        let Some(end) = rest.find('"') else { continue };
        let le = &rest[..end];
        let bound = if le == "+Inf" {
            u64::MAX
        } else {
            match le.parse::<f64>() {
                Ok(v) => (v * 1e9) as u64,
                Err(_) => continue,
            }
        };
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        *out.entry(bound).or_insert(0.0) += value;
    }
    (!out.is_empty()).then_some(out)
}

/// `histogram_quantile`: linear interpolation inside the bucket holding rank q·n (seconds).
fn quantile(h: &BTreeMap<u64, f64>, q: f64) -> f64 {
    let total = h
        .get(&u64::MAX)
        .copied()
        .unwrap_or_else(|| h.values().copied().fold(0.0, f64::max));
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut lower = (0.0f64, 0.0f64);
    for (&bound, &count) in h {
        if count >= rank {
            if bound == u64::MAX {
                // Beyond the last finite bucket: report its bound, as Prometheus does.
                return lower.0;
            }
            let upper = bound as f64 / 1e9;
            let width = count - lower.1;
            if width <= 0.0 {
                return upper;
            }
            return lower.0 + (upper - lower.0) * (rank - lower.1) / width;
        }
        lower = (bound as f64 / 1e9, count);
    }
    lower.0
}

async fn cleanup(args: &BenchArgs, kind: BenchSink, names: &Names) {
    if let Ok(admin) = pg_client(&format!("{}/postgres", args.pg)).await {
        let db = &names.source_db;
        let _ = admin
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '{db}' AND active_pid IS NOT NULL;"
            ))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = admin
            .batch_execute(&format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{db}';
                 DROP DATABASE IF EXISTS {db} WITH (FORCE)"
            ))
            .await;
        if kind == BenchSink::Postgres {
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    names.target_db
                ))
                .await;
        }
    }
    if kind == BenchSink::Mysql {
        if let Ok(mut c) = my_conn(args, "").await {
            let _ = c
                .query_drop(format!("DROP DATABASE IF EXISTS `{}`", names.target_db))
                .await;
            let _ = c.disconnect().await;
        }
    }
    if let Ok(client) = async_nats::connect(&args.nats).await {
        let js = async_nats::jetstream::new(client);
        for p in [&names.bulk_pipeline, &names.e2e_pipeline] {
            let _ = js
                .delete_stream(tidemark_core::subject::default_stream_name(p))
                .await;
        }
        if let Ok(kv) = js.get_key_value("tidemark_state").await {
            let _ = kv
                .purge(tidemark_core::state::source_key(&names.e2e_pipeline))
                .await;
        }
    }
    for tag in ["bulk", "e2e"] {
        let p = if tag == "bulk" {
            &names.bulk_pipeline
        } else {
            &names.e2e_pipeline
        };
        let _ = std::fs::remove_file(std::env::temp_dir().join(format!("{p}_{tag}.toml")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let text =
            "x_bucket{le=\"0.01\"} 50\nx_bucket{le=\"0.1\"} 100\nx_bucket{le=\"+Inf\"} 100\n";
        let h = histogram(text, "x").unwrap_or_default();
        assert!((quantile(&h, 0.5) - 0.01).abs() < 1e-9);
        assert!((quantile(&h, 0.75) - 0.055).abs() < 1e-9);
        assert!((quantile(&h, 0.25) - 0.005).abs() < 1e-9);
    }
}
