//! Integration tests against the real Postgres, MariaDB and NATS started by
//! `scripts/services.sh`. One binary, one module per area; every test makes
//! its own databases, slots and streams and removes them afterwards.

mod cli;
mod common;
mod e2e;
mod faults_db;
mod mysql_sink;
mod mysql_source;
mod nats_compat;
mod pg_sink;
mod pg_source;
mod pg_types;
mod tls;
