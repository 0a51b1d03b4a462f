//! Integration tests against real Postgres, MariaDB and NATS: the instances
//! `scripts/services.sh` owns, or the servers named by `TIDEMARK_TEST_*` (see
//! `common`). One binary, one module per area; every test makes its own
//! databases, slots and streams and removes them afterwards.

mod cli;
mod common;
mod config_errors;
mod e2e;
mod faults_db;
mod faults_nats;
mod json_values;
mod large_rows;
mod mysql_edge_values;
mod mysql_sink;
mod mysql_source;
mod nats_compat;
#[path = "common/nats_small.rs"]
mod nats_small;
mod pg_sink;
mod pg_source;
mod pg_types;
mod services;
mod tls;
