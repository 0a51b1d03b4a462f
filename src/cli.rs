//! Command-line interface.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// tidemark: change-data-capture from Postgres and MySQL/MariaDB to NATS JetStream and on to
/// other databases.
#[derive(Debug, Parser)]
#[command(name = "tidemark", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Which part of the pipelines a `run` process executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Sources and sinks.
    All,
    /// Sources only (database → JetStream).
    Sources,
    /// Sinks only (JetStream → database).
    Sinks,
}

/// tidemark's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipelines as a daemon until SIGTERM/SIGINT.
    Run {
        /// Pipeline file.
        #[arg(short, long, default_value = "pipelines.toml", env = "TIDEMARK_CONFIG")]
        config: PathBuf,
        /// Which side of the pipelines to run.
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
    },
    /// Validate the file and probe every server and CDC prerequisite.
    Check {
        /// Pipeline file.
        #[arg(short, long, default_value = "pipelines.toml", env = "TIDEMARK_CONFIG")]
        config: PathBuf,
        /// Only validate the file; contact no server.
        #[arg(long)]
        offline: bool,
    },
    /// Show per pipeline: source position, lag, retained WAL/binlog, sink positions and pending.
    Status {
        /// Pipeline file.
        #[arg(short, long, default_value = "pipelines.toml", env = "TIDEMARK_CONFIG")]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Pretty-print a pipeline's envelopes as they arrive.
    Tail {
        /// Pipeline name.
        pipeline: String,
        /// Pipeline file.
        #[arg(short, long, default_value = "pipelines.toml", env = "TIDEMARK_CONFIG")]
        config: PathBuf,
        /// Only this table (`schema.table`, globs allowed).
        #[arg(long)]
        table: Option<String>,
        /// Start from the first message in the stream instead of new ones.
        #[arg(long)]
        from_start: bool,
        /// Stop after this many envelopes.
        #[arg(long)]
        limit: Option<usize>,
        /// One compact JSON line per envelope.
        #[arg(long)]
        compact: bool,
    },
    /// Measure Postgres → JetStream throughput against pg_recvlogical and a raw publish loop.
    Bench(crate::bench::BenchArgs),
}
