//! `tidemark bench`: how fast is the source → JetStream path, compared with
//! what the machine can do at all?
//!
//! One run, per phase (a large transaction, then many small ones):
//! 1. the daemon runs once on an empty table so it owns its slot / binlog
//!    checkpoint, and is stopped;
//! 2. the phase's rows are written while it is stopped;
//! 3. a real `tidemark run` child process (its peak RSS is its own) is started
//!    and timed until the stream holds every row;
//! 4. references over the same data: `pg_recvlogical` with pgoutput over an
//!    identical slot (the walsender's ceiling, Postgres only) and a raw
//!    JetStream publish loop of the same message count and average size with
//!    message ids and 1024 acks in flight (NATS's ceiling).
//!
//! It prints rows/s for each, the ratio tidemark / min(references) and the
//! daemon's peak RSS. Targets live in docs/operations.md, not in assertions.
//!
//! `--sink postgres|mysql` measures a sink instead (bulk apply rate and end-to-end latency);
//! see [`sink`].

mod sink;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Benchmark options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which source to measure.
    #[arg(long, value_enum, default_value_t = BenchSource::Postgres)]
    pub source: BenchSource,
    /// Rows in the large-transaction phase (Postgres: one transaction; MySQL: transactions of
    /// `--mysql-tx-rows` rows).
    #[arg(long, default_value_t = 1_000_000)]
    pub big_tx_rows: u64,
    /// Number of single-row transactions (default: 100000 for Postgres, 50000 for MySQL).
    #[arg(long)]
    pub small_txs: Option<u64>,
    /// Rows per transaction in the MySQL large phase.
    #[arg(long, default_value_t = 1000)]
    pub mysql_tx_rows: u64,
    /// Postgres server (a role with REPLICATION and CREATEDB); default: the instance
    /// `scripts/services.sh` owns.
    #[arg(
        long,
        env = "TIDEMARK_TEST_PG",
        default_value = "postgres://postgres@127.0.0.1:15432"
    )]
    pub pg: String,
    /// MySQL/MariaDB server (a user with replication privileges and CREATE); default: the
    /// instance `scripts/services.sh` owns.
    #[arg(
        long,
        env = "TIDEMARK_TEST_MYSQL",
        default_value = "mysql://tidemark:tidemark@127.0.0.1:13306"
    )]
    pub mysql: String,
    /// NATS server; default: the instance `scripts/services.sh` owns.
    #[arg(
        long,
        env = "TIDEMARK_TEST_NATS",
        default_value = "nats://127.0.0.1:14222"
    )]
    pub nats: String,
    /// Keep the benchmark database and stream afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Measure a sink instead of a source: a bulk load from a pre-filled stream
    /// (`--role sinks`), then end-to-end latency from a Postgres source (see `--e2e-*`).
    #[arg(long, value_enum)]
    pub sink: Option<sink::BenchSink>,
    /// Sink bulk phase: envelopes published before the sink starts.
    #[arg(long, default_value_t = 200_000)]
    pub sink_rows: u64,
    /// Sink bulk phase: rows per source transaction.
    #[arg(long, default_value_t = 2000)]
    pub sink_tx_rows: u64,
    /// Sink `batch_size` (default: the sink's own default).
    #[arg(long)]
    pub sink_batch_size: Option<usize>,
    /// Sink end-to-end phase: rows per second the source writer commits.
    #[arg(long, default_value_t = 5000)]
    pub e2e_rate: u64,
    /// Sink end-to-end phase: seconds of writing (0 skips the phase).
    #[arg(long, default_value_t = 20)]
    pub e2e_secs: u64,
    /// Sink end-to-end phase: rows per source transaction.
    #[arg(long, default_value_t = 10)]
    pub e2e_tx_rows: u64,
}

/// Source kinds the benchmark can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchSource {
    /// PostgreSQL logical replication.
    Postgres,
    /// MySQL / MariaDB binlog.
    Mysql,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One measured phase.
struct Row {
    name: &'static str,
    rows: u64,
    tidemark_secs: f64,
    recvlogical_secs: Option<f64>,
    raw_secs: f64,
    rss_kib: u64,
    msg_bytes: usize,
}

/// Runs the benchmark and prints a report.
pub async fn run(args: BenchArgs) -> ExitCode {
    if let Some(kind) = args.sink {
        return if sink::run(&args, kind).await {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    let suffix = format!("{:08x}", rand_u32());
    let names = Names {
        db: format!("tidemark_bench_{suffix}"),
        pipeline: format!("bench_{suffix}"),
        port: free_port(),
    };
    let result = match args.source {
        BenchSource::Postgres => pg::bench(&args, &names).await,
        BenchSource::Mysql => my::bench(&args, &names).await,
    };
    if !args.keep {
        match args.source {
            BenchSource::Postgres => pg::cleanup(&args, &names).await,
            BenchSource::Mysql => my::cleanup(&args, &names).await,
        }
        if let Ok(client) = async_nats::connect(&args.nats).await {
            let js = async_nats::jetstream::new(client);
            let _ = js
                .delete_stream(tidemark_core::subject::default_stream_name(&names.pipeline))
                .await;
            if let Ok(kv) = js.get_key_value("tidemark_state").await {
                let _ = kv
                    .purge(tidemark_core::state::source_key(&names.pipeline))
                    .await;
            }
        }
    }
    match result {
        Ok(rows) => {
            print_report(&rows);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "bench failed: {}",
                tidemark_core::error::display_chain(e.as_ref())
            );
            ExitCode::from(1)
        }
    }
}

/// Names shared by one benchmark run.
struct Names {
    db: String,
    pipeline: String,
    port: u16,
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(19187)
}

fn print_report(rows: &[Row]) {
    println!();
    println!(
        "{:<28} {:>9} {:>13} {:>15} {:>13} {:>6} {:>10} {:>6}",
        "phase",
        "rows",
        "tidemark r/s",
        "recvlogical r/s",
        "raw pub r/s",
        "ratio",
        "peak RSS",
        "bytes"
    );
    for r in rows {
        let rate = |secs: f64| r.rows as f64 / secs.max(1e-9);
        let reference = match r.recvlogical_secs {
            Some(recv) => rate(recv).min(rate(r.raw_secs)),
            None => rate(r.raw_secs),
        };
        println!(
            "{:<28} {:>9} {:>13.0} {:>15} {:>13.0} {:>6.2} {:>6.1} MiB {:>6}",
            r.name,
            r.rows,
            rate(r.tidemark_secs),
            r.recvlogical_secs
                .map(|s| format!("{:.0}", rate(s)))
                .unwrap_or_else(|| "-".into()),
            rate(r.raw_secs),
            rate(r.tidemark_secs) / reference,
            r.rss_kib as f64 / 1024.0,
            r.msg_bytes
        );
    }
    println!("ratio = tidemark / min(references); targets: ratio >= 0.7, peak RSS <= 64 MiB");
}

fn write_config(args: &BenchArgs, names: &Names, source: &str) -> Result<PathBuf, BoxError> {
    let path = std::env::temp_dir().join(format!("{}.toml", names.pipeline));
    std::fs::write(
        &path,
        format!(
            "[nats]\nurl = \"{nats}\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\n\
             [[pipelines]]\nname = \"{pipeline}\"\n  [pipelines.source]\n{source}",
            nats = args.nats,
            port = names.port,
            pipeline = names.pipeline,
        ),
    )?;
    Ok(path)
}

/// Lets the servers finish the load's background work (InnoDB flushing and purge, the WAL
/// writer, checkpoints) before anything is measured: otherwise whichever measurement runs first
/// after loading pays for it, and the references run later on a quieter machine.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(5)).await;
}

/// Starts the daemon, waits until it is ready (slot / checkpoint in place), stops it.
async fn warm_up(config: &PathBuf, port: u16) -> Result<(), BoxError> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("run")
        .arg("-c")
        .arg(config)
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if ready(port).await {
            break;
        }
        if Instant::now() > deadline {
            return Err("tidemark did not become ready within 60 s".into());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("tidemark exited during warm-up: {status}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the first checkpoint reach the state store.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    terminate(&mut child).await;
    Ok(())
}

async fn ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    buf.starts_with("HTTP/1.1 200")
}

async fn terminate(child: &mut tokio::process::Child) {
    if let Some(id) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(id.to_string())
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Runs the daemon until the stream holds `expected` more messages than before; returns (seconds, peak RSS KiB,
/// average message size of the stream).
///
/// The seconds are the streaming time: from the moment the daemon is ready (`/readyz` 200: its
/// source is streaming) or has published its first event, whichever comes first, to the
/// server's own timestamp of the phase's last message, scaled to all `expected` messages. The
/// daemon's start-up before that (process start, connecting, preflight, loading the checkpoint:
/// tens of ms, which would weigh on a phase that streams in under a second) is printed apart:
/// the raw publish loop it is compared with has none. The server's own work after the stream
/// starts (Postgres decoding a large transaction before sending it) stays in the streaming time,
/// as it does for pg_recvlogical.
///
/// Progress is polled gently (one `STREAM.INFO` per 50 ms): stream-info requests share the
/// stream's lock with the publishes being measured, and the end time comes from the stored
/// message, not from the polling.
async fn measure_tidemark(
    args: &BenchArgs,
    config: &PathBuf,
    pipeline: &str,
    port: u16,
    expected: u64,
) -> Result<(f64, u64, usize), BoxError> {
    let js = async_nats::jetstream::new(async_nats::connect(&args.nats).await?);
    let mut stream = js
        .get_stream(tidemark_core::subject::default_stream_name(pipeline))
        .await?;
    let before = stream.info().await?.state.clone();
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .arg("run")
        .arg("-c")
        .arg(config)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let mut peak = 0u64;
    let mut last_progress = (0u64, Instant::now());
    let mut last_poll = Instant::now() - Duration::from_secs(1);
    // (wall clock, monotonic, messages already stored) when streaming began.
    let mut first: Option<(std::time::SystemTime, Instant, u64)> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("tidemark exited early: {status}").into());
        }
        if first.is_none() && ready(port).await {
            first = Some((std::time::SystemTime::now(), Instant::now(), 0));
        }
        if last_poll.elapsed() < Duration::from_millis(50) {
            continue;
        }
        last_poll = Instant::now();
        peak = peak.max(vm_hwm_kib(pid));
        let messages = stream
            .info()
            .await?
            .state
            .messages
            .saturating_sub(before.messages);
        if first.is_none() && messages > 0 {
            first = Some((std::time::SystemTime::now(), Instant::now(), messages));
        }
        if messages >= expected {
            break;
        }
        if messages != last_progress.0 {
            last_progress = (messages, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(60) {
            return Err(format!("no progress for 60 s at {messages}/{expected} messages").into());
        }
    }
    peak = peak.max(vm_hwm_kib(pid));
    let last = stream
        .get_raw_message(before.last_sequence + expected)
        .await?;
    let last_at = std::time::UNIX_EPOCH
        + Duration::from_nanos(u64::try_from(last.time.unix_timestamp_nanos()).unwrap_or(0));
    let secs = match first {
        Some((wall, at, seen)) if seen < expected => {
            let streaming = last_at
                .duration_since(wall)
                .unwrap_or_default()
                .as_secs_f64();
            eprintln!(
                "    start-up {:.2} s (process start to streaming), streaming {streaming:.2} s, daemon CPU {:.0} µs/row",
                (at - started).as_secs_f64(),
                cpu_secs(pid) * 1e6 / expected as f64,
            );
            streaming * expected as f64 / (expected - seen) as f64
        }
        _ => started.elapsed().as_secs_f64(),
    };
    terminate(&mut child).await;
    let info = stream.info().await?;
    Ok((
        secs,
        peak,
        (info.state.bytes / info.state.messages.max(1)) as usize,
    ))
}

/// User + system CPU seconds of a process so far (`/proc/PID/stat`, in USER_HZ = 100 ticks/s).
fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
            let rest = s.get(s.rfind(')')? + 2..)?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Publishes `count` messages of `size` bytes with message ids, 1024 acks in flight, into a
/// scratch file-storage stream.
async fn measure_raw_publish(
    args: &BenchArgs,
    pipeline: &str,
    count: u64,
    size: usize,
) -> Result<f64, BoxError> {
    use async_nats::jetstream::{self, stream};
    use std::collections::VecDeque;
    use std::future::IntoFuture as _;
    let js = jetstream::new(async_nats::connect(&args.nats).await?);
    let name = format!("BENCH_RAW_{}", pipeline.to_uppercase());
    let _ = js.delete_stream(&name).await;
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("benchraw.{pipeline}.>")],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(300),
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; size.max(1)]);
    let subject = format!("benchraw.{pipeline}.public.bench");
    let window = 1024;
    let started = Instant::now();
    let mut inflight = VecDeque::with_capacity(window);
    for i in 0..count {
        if inflight.len() >= window {
            if let Some(ack) = inflight.pop_front() {
                let ack: async_nats::jetstream::context::PublishAckFuture = ack;
                ack.into_future().await?;
            }
        }
        let msg = jetstream::message::PublishMessage::build()
            .message_id(format!("{pipeline}:{i:016X}"))
            .payload(payload.clone());
        inflight.push_back(js.send_publish(subject.clone(), msg).await?);
    }
    for ack in inflight {
        ack.into_future().await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = js.delete_stream(&name).await;
    Ok(secs)
}

/// The Postgres side.
mod pg {
    use super::*;

    async fn client(url: &str) -> Result<tokio_postgres::Client, BoxError> {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    pub(super) async fn cleanup(args: &BenchArgs, names: &Names) {
        if let Ok(admin) = client(&format!("{}/postgres", args.pg)).await {
            let db = &names.db;
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
        }
    }

    pub(super) async fn bench(args: &BenchArgs, names: &Names) -> Result<Vec<Row>, BoxError> {
        let admin = client(&format!("{}/postgres", args.pg)).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {}", names.db))
            .await?;
        let url = format!("{}/{}", args.pg, names.db);
        let pg = client(&url).await?;
        pg.batch_execute(
            "CREATE TABLE bench (id bigint PRIMARY KEY, name text NOT NULL, qty integer NOT NULL,
                                 price numeric(12,2) NOT NULL, updated_at timestamptz NOT NULL);
             CREATE PUBLICATION bench_pub FOR TABLE bench;
             CREATE PROCEDURE small_txs(n bigint, start bigint) LANGUAGE plpgsql AS $$
             BEGIN
               FOR i IN start .. start + n - 1 LOOP
                 INSERT INTO bench VALUES (i, 'item ' || i, (i % 100)::int, (i % 1000) + 0.5, now());
                 COMMIT;
               END LOOP;
             END $$;",
        )
        .await?;
        // Its own statement: a slot cannot be created in a transaction that wrote.
        pg.batch_execute(
            "SELECT pg_create_logical_replication_slot('bench_recvlogical', 'pgoutput')",
        )
        .await?;
        let config = write_config(
            args,
            names,
            &format!(
                "  kind = \"postgres\"\n  url = \"{url}\"\n  tables = [\"public.bench\"]\n  publication = \"bench_pub\"\n"
            ),
        )?;
        warm_up(&config, names.port).await?;
        let small = args.small_txs.unwrap_or(100_000);
        let mut rows = Vec::new();
        let mut total = 0u64;
        for (name, count) in [
            ("1 transaction", args.big_tx_rows),
            ("single-row transactions", small),
        ] {
            eprintln!("{name}: loading {count} rows…");
            let start_id = total + 1;
            if rows.is_empty() {
                pg.batch_execute(&format!(
                    "INSERT INTO bench SELECT g, 'item ' || g, (g % 100)::int, (g % 1000) + 0.5, now()
                     FROM generate_series({start_id}, {}) g",
                    start_id + count - 1
                ))
                .await?;
            } else {
                pg.batch_execute(&format!("CALL small_txs({count}, {start_id})"))
                    .await?;
            }
            total += count;
            let end_lsn: String = pg
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await?
                .get(0);
            settle().await;
            eprintln!("  tidemark…");
            let (tidemark_secs, rss_kib, msg_bytes) =
                measure_tidemark(args, &config, &names.pipeline, names.port, count).await?;
            eprintln!("  pg_recvlogical…");
            let recv = recvlogical(&url, &end_lsn).await?;
            eprintln!("  raw JetStream publish loop…");
            let raw_secs = measure_raw_publish(args, &names.pipeline, count, msg_bytes).await?;
            rows.push(Row {
                name,
                rows: count,
                tidemark_secs,
                recvlogical_secs: Some(recv),
                raw_secs,
                rss_kib,
                msg_bytes,
            });
        }
        Ok(rows)
    }

    /// Streams the same WAL with pg_recvlogical to /dev/null until `end_lsn`.
    async fn recvlogical(url: &str, end_lsn: &str) -> Result<f64, BoxError> {
        let started = Instant::now();
        let status = tokio::process::Command::new("pg_recvlogical")
            .arg("-d")
            .arg(url)
            .args([
                "--slot",
                "bench_recvlogical",
                "--start",
                "--no-loop",
                "-f",
                "/dev/null",
            ])
            .args(["-o", "proto_version=1", "-o", "publication_names=bench_pub"])
            .arg("-E")
            .arg(end_lsn)
            .status()
            .await?;
        if !status.success() {
            return Err(format!("pg_recvlogical failed: {status}").into());
        }
        Ok(started.elapsed().as_secs_f64())
    }
}

/// The MySQL / MariaDB side.
mod my {
    use super::*;
    use mysql_async::prelude::Queryable as _;

    async fn conn(args: &BenchArgs, db: &str) -> Result<mysql_async::Conn, BoxError> {
        let opts = mysql_async::Opts::from_url(&format!("{}/{db}", args.mysql))?;
        Ok(mysql_async::Conn::new(opts).await?)
    }

    pub(super) async fn cleanup(args: &BenchArgs, names: &Names) {
        if let Ok(mut c) = conn(args, "").await {
            let _ = c
                .query_drop(format!("DROP DATABASE IF EXISTS `{}`", names.db))
                .await;
            let _ = c.disconnect().await;
        }
    }

    pub(super) async fn bench(args: &BenchArgs, names: &Names) -> Result<Vec<Row>, BoxError> {
        let mut c = conn(args, "").await?;
        c.query_drop(format!("CREATE DATABASE `{}`", names.db))
            .await?;
        c.query_drop(format!(
            "CREATE TABLE `{}`.bench (id bigint PRIMARY KEY, name varchar(64) NOT NULL, qty int NOT NULL,
                                       price decimal(12,2) NOT NULL, updated_at datetime(6) NOT NULL)",
            names.db
        ))
        .await?;
        let url = format!("{}/{}", args.mysql, names.db);
        let config = write_config(
            args,
            names,
            &format!(
                "  kind = \"mysql\"\n  url = \"{url}\"\n  tables = [\"{}.bench\"]\n  server_id = {}\n",
                names.db,
                50_000 + rand_u32() % 10_000
            ),
        )?;
        warm_up(&config, names.port).await?;
        let small = args.small_txs.unwrap_or(50_000);
        let per_tx = args.mysql_tx_rows.max(1);
        let mut rows = Vec::new();
        let mut total = 0u64;
        c.query_drop(format!("USE `{}`", names.db)).await?;
        for (name, count) in [
            ("1000-row transactions", args.big_tx_rows),
            ("single-row transactions", small),
        ] {
            eprintln!("{name}: loading {count} rows…");
            let step = if rows.is_empty() { per_tx } else { 1 };
            let mut id = total + 1;
            let end = total + count;
            while id <= end {
                let last = (id + step - 1).min(end);
                let values: Vec<String> = (id..=last)
                    .map(|i| format!("({i},'item {i}',{},{}.5,NOW(6))", i % 100, i % 1000))
                    .collect();
                c.query_drop(format!("INSERT INTO bench VALUES {}", values.join(",")))
                    .await?;
                id = last + 1;
            }
            total += count;
            settle().await;
            eprintln!("  tidemark…");
            let (tidemark_secs, rss_kib, msg_bytes) =
                measure_tidemark(args, &config, &names.pipeline, names.port, count).await?;
            eprintln!("  raw JetStream publish loop…");
            let raw_secs = measure_raw_publish(args, &names.pipeline, count, msg_bytes).await?;
            rows.push(Row {
                name,
                rows: count,
                tidemark_secs,
                recvlogical_secs: None,
                raw_secs,
                rss_kib,
                msg_bytes,
            });
        }
        let _ = c.disconnect().await;
        Ok(rows)
    }
}
