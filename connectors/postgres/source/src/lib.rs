//! tidemark's Postgres source: logical replication (pgoutput) → canonical envelopes.
//!
//! ```text
//!            ┌ catalog (SQL: tables, publication, slot) ┐
//!  source ───┤ client  (replication wire protocol)      ├──▶ snapshot (exported snapshot, parallel)
//!            └ config  (URL, names, pinned session)     ┘      then stream (pgoutput → envelopes)
//!  pgoutput / relcache / convert: pure decoding of the wire bytes into rows
//! ```
//!
//! The daemon calls [`PostgresSource`] through the core `Source` trait; `tidemark check` calls
//! [`check::check`], `tidemark status` calls [`status::status`].

pub mod catalog;
pub mod check;
pub mod client;
pub mod config;
pub mod convert;
#[doc(hidden)]
pub mod fuzzing;
pub mod pgoutput;
pub mod relcache;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod stream;

pub use source::{PostgresSource, SourceCheckpoint};
