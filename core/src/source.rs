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

use crate::config::PipelineConfig;
use crate::envelope::{Naming, OutMessage};
use crate::error::Failure;
use crate::health::Health;
use crate::state::StateStore;
use std::future::Future;
use tokio::sync::{mpsc, oneshot, watch};
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

/// The sending half a source writes to. Bounded: a slow JetStream slows the source down
/// instead of growing memory.
#[derive(Debug)]
pub struct Outbox<C> {
    tx: mpsc::Sender<Outgoing<C>>,
}

impl<C> Clone for Outbox<C> {
    fn clone(&self) -> Self {
        Outbox {
            tx: self.tx.clone(),
        }
    }
}

/// The publisher is gone (it failed); the source should return and let the supervisor restart.
#[derive(Debug, thiserror::Error)]
#[error("publisher stopped")]
pub struct PublisherGone;

impl<C> Outbox<C> {
    /// A bounded outbox and its receiving end.
    pub fn channel(capacity: usize) -> (Outbox<C>, mpsc::Receiver<Outgoing<C>>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Outbox { tx }, rx)
    }

    /// Sends one envelope.
    pub async fn event(&self, msg: OutMessage) -> Result<(), PublisherGone> {
        self.tx
            .send(Outgoing::Event(msg))
            .await
            .map_err(|_| PublisherGone)
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
