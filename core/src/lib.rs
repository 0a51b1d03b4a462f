//! tidemark core: everything a connector and the daemon agree on.
//!
//! A connector sees only this crate: the canonical [`value::Value`], the
//! [`envelope`] it must produce, the [`source::Source`] / [`sink::SinkWriter`]
//! contracts, the [`publisher`] that carries envelopes to JetStream and the
//! [`state::StateStore`] where positions outlive a process. Nothing here talks
//! to Postgres or MySQL.

pub mod backoff;
pub mod cell;
pub mod check;
pub mod config;
pub mod envelope;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod json_text;
pub mod metrics;
pub mod nats;
pub mod oversize;
pub mod position;
pub mod publisher;
pub mod redact;
pub mod sink;
pub mod source;
pub mod state;
pub mod subject;
pub mod tls;
pub mod value;

pub use tokio_util::sync::CancellationToken;
