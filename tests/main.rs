//! Integration tests against the real Postgres, MariaDB and NATS started by
//! `scripts/services.sh`. One binary, one module per area; every test makes
//! its own databases, slots and streams and removes them afterwards.

mod cli;
mod common;
mod e2e;
mod large_rows;
mod mysql_sink;
mod mysql_source;
mod nats_compat;
#[path = "common/nats_small.rs"]
mod nats_small;
mod pg_sink;
mod pg_source;
mod pg_types;
mod tls;
