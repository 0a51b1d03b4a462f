//! The source contract.
//!
//! ```text
//!  source ──Outgoing::Event──▶ outbox (bounded) ──▶ publisher ──▶ JetStream
//!     ▲   ──Outgoing::Checkpoint(c)──▶                  │ acks in order
//!     └──────────── acked: watch<Option<C>> ◀───────────┘
//! ```
//!
//! A source reads changes in commit order, encodes them and sends them to its
//! outbox; after the last event of each source transaction it sends a
//! checkpoint token. The publisher hands a token back on `acked` only once
//! JetStream acknowledged every event sent before it. The source may make a
//! position durable (slot feedback, KV checkpoint) only from `acked`.
//!
//! The outbox is bounded twice: by a number of items and by the bytes of the
//! envelopes between the source and JetStream's ack ([`OUTBOX_BYTES`]). The
//! byte bound is what keeps memory small when rows are large: a count alone
//! would let thousands of multi-megabyte envelopes pile up behind a slow
//! JetStream. An envelope larger than the whole budget waits until everything
//! before it is acknowledged and then travels alone.

use crate::config::PipelineConfig;
use crate::envelope::{Naming, OutMessage};
use crate::error::Failure;
use crate::health::Health;
use crate::state::StateStore;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;

/// What a source hands to the publisher.
#[derive(Debug)]
pub enum Outgoing<C> {
    /// An encoded envelope.
    Event(OutMessage),
    /// Everything sent before this is part of whole source transactions; once JetStream acked
    /// all of it, `C` is safe to persist.
    Checkpoint(C),
    /// Reply once everything sent before has been acknowledged (used on shutdown).
    Flush(oneshot::Sender<()>),
}

/// Envelope bytes allowed between a source and JetStream's acks (sent to the outbox but not
/// yet acknowledged).
pub const OUTBOX_BYTES: usize = 32 << 20;

/// Budget units an envelope of `len` bytes takes: its size, at most the whole budget.
fn credits(len: usize) -> u32 {
    len.min(OUTBOX_BYTES) as u32
}

/// The sending half a source writes to. Bounded by items and by bytes: a slow JetStream slows
/// the source down instead of growing memory.
#[derive(Debug)]
pub struct Outbox<C> {
    tx: mpsc::Sender<Outgoing<C>>,
    bytes: Arc<Semaphore>,
}

impl<C> Clone for Outbox<C> {
    fn clone(&self) -> Self {
        Outbox {
            tx: self.tx.clone(),
            bytes: self.bytes.clone(),
        }
    }
}

/// The receiving half of an outbox. [`Inbox::recv`] releases an envelope's bytes at once; the
/// publisher holds them until JetStream acknowledged the envelope ([`Inbox::recv_held`] and
/// [`Inbox::release`]).
#[derive(Debug)]
pub struct Inbox<C> {
    rx: mpsc::Receiver<Outgoing<C>>,
    bytes: Arc<Semaphore>,
}

impl<C> Inbox<C> {
    /// The next item; `None` once every outbox is dropped and the queue is empty.
    pub async fn recv(&mut self) -> Option<Outgoing<C>> {
        let item = self.rx.recv().await;
        if let Some(Outgoing::Event(msg)) = &item {
            self.release(msg.payload.len());
        }
        item
    }

    /// The next item, keeping an event's bytes reserved until [`Inbox::release`].
    pub(crate) async fn recv_held(&mut self) -> Option<Outgoing<C>> {
        self.rx.recv().await
    }

    /// Returns the budget of an envelope of `len` bytes (after its ack).
    pub(crate) fn release(&self, len: usize) {
        self.bytes.add_permits(credits(len) as usize);
    }
}

/// The publisher is gone (it failed); the source should return and let the supervisor restart.
#[derive(Debug, thiserror::Error)]
#[error("publisher stopped")]
pub struct PublisherGone;

impl<C> Outbox<C> {
    /// A bounded outbox (`capacity` items, [`OUTBOX_BYTES`] bytes) and its receiving end.
    pub fn channel(capacity: usize) -> (Outbox<C>, Inbox<C>) {
        let (tx, rx) = mpsc::channel(capacity);
        let bytes = Arc::new(Semaphore::new(OUTBOX_BYTES));
        (
            Outbox {
                tx,
                bytes: bytes.clone(),
            },
            Inbox { rx, bytes },
        )
    }

    /// Sends one envelope; waits while the envelopes not yet acknowledged use the byte budget.
    pub async fn event(&self, msg: OutMessage) -> Result<(), PublisherGone> {
        let permit = self
            .bytes
            .acquire_many(credits(msg.payload.len()))
            .await
            .map_err(|_| PublisherGone)?;
        self.tx
            .send(Outgoing::Event(msg))
            .await
            .map_err(|_| PublisherGone)?;
        // Given back by the receiver (after the ack), not when this guard goes.
        permit.forget();
        Ok(())
    }

    /// Marks a transaction boundary.
    pub async fn checkpoint(&self, c: C) -> Result<(), PublisherGone> {
        self.tx
            .send(Outgoing::Checkpoint(c))
            .await
            .map_err(|_| PublisherGone)
    }

    /// Waits until everything sent so far is acknowledged by JetStream.
    pub async fn flush(&self) -> Result<(), PublisherGone> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Outgoing::Flush(tx))
            .await
            .map_err(|_| PublisherGone)?;
        rx.await.map_err(|_| PublisherGone)
    }
}

/// Everything a running source gets from the daemon.
pub struct SourceContext<C> {
    /// The pipeline's configuration (secrets already interpolated).
    pub pipeline: PipelineConfig,
    /// Names shared by all envelopes of this pipeline.
    pub naming: Naming,
    /// Where envelopes and checkpoints go.
    pub outbox: Outbox<C>,
    /// The newest checkpoint whose events JetStream acknowledged.
    pub acked: watch::Receiver<Option<C>>,
    /// Durable state (JetStream KV) for checkpoints that must outlive the process.
    pub state: StateStore,
    /// Fires on SIGTERM/SIGINT: stop reading, flush, persist, return `Ok`.
    pub shutdown: CancellationToken,
    /// Readiness: set `source` ready once streaming.
    pub health: Health,
}

/// A source connector.
///
/// Contract:
/// * **Ordering**: events are sent in source commit order; within a transaction in change
///   order; `source.pos` strictly increases.
/// * **Durability**: a position is persisted (slot feedback, KV) only after it came back on
///   `acked`. After any crash the source resumes from its persisted position; everything after
///   it is read and published again (JetStream dedup and the sinks' position guard absorb it).
/// * **Shutdown**: when `shutdown` fires, stop reading, `flush` the outbox, persist the final
///   acked position and return `Ok(())`.
/// * **Errors**: return a [`Failure`]; the supervisor logs it, counts it, waits with backoff and
///   calls `run` again with a fresh context.
pub trait Source {
    /// The token sent through the outbox at transaction boundaries.
    type Checkpoint: Clone + Send + Sync + std::fmt::Debug + 'static;

    /// Runs until shutdown or error.
    fn run(
        ctx: SourceContext<Self::Checkpoint>,
    ) -> impl Future<Output = Result<(), Failure>> + Send;
}
