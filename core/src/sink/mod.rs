//! The sink contract and the runtime shared by every sink kind.
//!
//! ```text
//!  JetStream stream ──durable pull consumer (whole pipeline, ack policy all)──▶ runtime
//!                                                                              │ in stream order
//!      skip: dead letters, unselected tables, positions at or below the offset │
//!                                                                              ▼
//!   SinkWriter: begin ─ apply … apply (source tx 1) ─ apply … (source tx 2) ─ commit(offset)
//!                                                                              │
//!           one ack of the latest message acks everything up to the commit ◀┘
//! ```
//!
//! The target store, not the consumer, is the source of truth for where a
//! sink is: its `tidemark_offsets` row (highest applied `source.pos` and the
//! JetStream sequence of the last message whose transaction is committed) is
//! written in the same target transaction as the rows. On every start the
//! runtime reads it and positions the durable consumer right after it. That
//! is what lets a sink apply a million-row source transaction as one target
//! transaction without a million unacknowledged messages: inside a big
//! transaction the runtime acks early purely as flow control, and after a
//! crash it resumes from the stored sequence anyway.
//!
//! Writers (one per engine) only know how to connect, read the offset, and
//! apply events inside a transaction; ordering, grouping, idempotency,
//! retries, dead letters, metrics and shutdown live in [`runtime`] once.

mod consumer;
mod dead_letter;
#[doc(hidden)]
pub mod fuzzing;
mod parse;
pub mod runtime;
mod tracker;

use crate::config::{PipelineConfig, SinkConfig};
use crate::envelope::Envelope;
use crate::error::Classify;
use crate::health::Health;
use std::future::Future;
use tokio_util::sync::CancellationToken;

pub use runtime::run;

/// Header that marks a dead-letter message; its value is the sink name. Sinks skip every
/// message that carries it (dead letters land in the pipeline's own stream).
pub const DEAD_LETTER_HEADER: &str = "Tidemark-Dead-Letter";

/// Name of the table each sink keeps its resume point in, inside the target store.
pub const OFFSETS_TABLE: &str = "tidemark_offsets";

/// Everything a running sink gets from the daemon.
pub struct SinkContext {
    /// The pipeline whose stream the sink consumes (secrets already interpolated).
    pub pipeline: PipelineConfig,
    /// This sink's configuration.
    pub sink: SinkConfig,
    /// JetStream context on the daemon's NATS connection.
    pub js: async_nats::jetstream::Context,
    /// Fires on SIGTERM/SIGINT: finish or roll back the open transaction, ack, return `Ok`.
    pub shutdown: CancellationToken,
    /// Readiness registry; the sink reports as `<pipeline>/sink/<name>`.
    pub health: Health,
}

impl SinkContext {
    /// The component name used for readiness: `<pipeline>/sink/<name>`.
    pub fn component(&self) -> String {
        format!("{}/sink/{}", self.pipeline.name, self.sink.name)
    }
}

/// A sink's resume point, stored in the target's `tidemark_offsets` table in the same
/// transaction as the rows it covers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Offset {
    /// Highest `source.pos` applied (the position guard); `None` before the first applied event.
    pub pos: Option<String>,
    /// JetStream stream sequence of the last message whose source transaction is committed.
    /// The consumer restarts at `stream_seq + 1`.
    pub stream_seq: u64,
}

/// One target engine's half of a sink: a connection that applies envelopes inside
/// transactions. The runtime ([`run`]) drives it.
///
/// Contract:
/// * **Ordering**: events arrive in stream order, which is source commit order; a writer
///   applies them in that order (it may batch consecutive rows into multi-row statements, but
///   the effect must equal applying them one by one).
/// * **Transactions**: the runtime calls [`begin`](SinkWriter::begin), then any number of
///   [`apply`](SinkWriter::apply) / [`apply_isolated`](SinkWriter::apply_isolated), then
///   [`commit`](SinkWriter::commit) or [`rollback`](SinkWriter::rollback). Nothing applied may
///   be visible to readers of the target before `commit` returns.
/// * **Durability**: `commit` returns `Ok` only after the rows *and* the new [`Offset`] are
///   committed in one target transaction. The runtime acknowledges messages only after that.
/// * **Idempotency**: the runtime skips events at or below the stored position; the writer
///   makes each apply idempotent on its own too (upsert by key, delete by key), so a replay of
///   a committed event changes nothing.
/// * **Memory**: a writer keeps at most a bounded number of rows buffered (it flushes
///   multi-row statements every few thousand rows); a source transaction of any size streams
///   through it.
/// * **Errors**: definite errors (constraint violations, unconvertible values, missing
///   tables) must be classified [`Retry::Definite`](crate::error::Retry::Definite) and name
///   the table, the column and the value when known; connection problems are transient. After
///   any error the runtime calls `rollback` (best effort) and drops the writer.
/// * **Shutdown**: the runtime commits or rolls back before dropping the writer; a writer
///   dropped with an open transaction must leave nothing committed (closing the connection
///   does that).
pub trait SinkWriter: Send + Sized {
    /// The writer's error type.
    type Error: Classify + std::error::Error + Send + Sync + 'static;

    /// Connects to the target (TLS per its URL) and prepares the session (time zone UTC …).
    fn connect(
        sink: &SinkConfig,
        pipeline: &PipelineConfig,
    ) -> impl Future<Output = Result<Self, Self::Error>> + Send;

    /// Creates `tidemark_offsets` if needed and reads this (pipeline, sink)'s row.
    fn read_offset(&mut self) -> impl Future<Output = Result<Option<Offset>, Self::Error>> + Send;

    /// Opens a target transaction.
    fn begin(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Applies one event inside the open transaction. May buffer it; a buffered event's error
    /// may surface on a later `apply` or on `commit`.
    fn apply(&mut self, event: &Envelope) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Applies one event on its own, unbuffered, inside a savepoint: on error the effects of
    /// this event alone are undone, the transaction stays usable, and the error (naming table,
    /// column, value) is returned. Used to find and isolate a poison event.
    fn apply_isolated(
        &mut self,
        event: &Envelope,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Flushes buffered rows, writes `offset` (compare-and-set against `previous`, the offset
    /// this writer last read or committed: a concurrent instance of the same sink makes this a
    /// transient error), and commits.
    fn commit(
        &mut self,
        offset: &Offset,
        previous: Option<&Offset>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Discards the open transaction and any buffered rows.
    fn rollback(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
