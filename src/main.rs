//! `tidemark`: change-data-capture from Postgres and MySQL/MariaDB through NATS JetStream.
//!
//! `main` only parses the command line, loads the configuration, installs
//! logging and hands over to a command module.

mod bench;
mod cli;
mod commands;
mod config;
#[cfg(test)]
mod config_fuzz;
mod connectors;
mod http;
mod logging;
mod progress;
mod supervisor;

use clap::Parser as _;

/// mimalloc instead of glibc malloc: the publish path allocates per message (headers, ack
/// futures inside async-nats) and glibc's arena bookkeeping was ~30 % of the daemon's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(commands::dispatch(cli))
}
