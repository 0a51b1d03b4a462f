//! Pipelined, ordered publishing to JetStream.
//!
//! Publishes go out back to back with up to `window` acks outstanding
//! (awaiting each ack before the next publish is an order of magnitude
//! slower); acks are collected strictly in send order, so when a
//! checkpoint token reaches the front of the queue every event before it is
//! acknowledged and the token may be handed back to the source. Any publish
//! or ack failure ends the publisher with a transient error: the supervisor
//! restarts the source from its durable checkpoint and the re-sent events are
//! absorbed by the `Nats-Msg-Id` duplicate window. (The supervisor counts the
//! failure in `tidemark_errors_total`; nothing here counts it twice.)

use crate::error::Failure;
use crate::metrics as m;
use crate::source::Outgoing;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};

type AckFuture = Pin<
    Box<
        dyn Future<Output = Result<PublishAck, async_nats::jetstream::context::PublishError>>
            + Send,
    >,
>;

enum InFlight<C> {
    Ack { fut: AckFuture, started: Instant },
    Checkpoint(C),
    Flush(oneshot::Sender<()>),
}

/// Publishes one pipeline's envelopes.
pub struct Publisher {
    js: async_nats::jetstream::Context,
    window: usize,
    pipeline: String,
}

impl Publisher {
    /// A publisher with at most `window` unacknowledged publishes.
    pub fn new(js: async_nats::jetstream::Context, window: usize, pipeline: &str) -> Publisher {
        Publisher {
            js,
            window: window.max(1),
            pipeline: pipeline.to_owned(),
        }
    }

    /// Runs until the outbox closes (then returns `Ok` after the last ack) or a publish fails.
    pub async fn run<C>(
        self,
        mut rx: mpsc::Receiver<Outgoing<C>>,
        acked: watch::Sender<Option<C>>,
    ) -> Result<(), Failure> {
        let published =
            metrics::counter!(m::PUBLISHED_EVENTS, m::L_PIPELINE => self.pipeline.clone());
        let latency =
            metrics::histogram!(m::PUBLISH_LATENCY, m::L_PIPELINE => self.pipeline.clone());
        let mut queue: VecDeque<InFlight<C>> = VecDeque::new();
        let mut acks_in_flight = 0usize;
        let mut closed = false;
        loop {
            // Hand back every checkpoint / flush whose predecessors are all acknowledged.
            while matches!(
                queue.front(),
                Some(InFlight::Checkpoint(_) | InFlight::Flush(_))
            ) {
                match queue.pop_front() {
                    Some(InFlight::Checkpoint(c)) => {
                        acked.send_replace(Some(c));
                    }
                    Some(InFlight::Flush(reply)) => {
                        let _ = reply.send(());
                    }
                    _ => {}
                }
            }
            if closed && queue.is_empty() {
                return Ok(());
            }
            let can_receive = !closed && acks_in_flight < self.window;
            let front_ack = match queue.front_mut() {
                Some(InFlight::Ack { fut, started }) => Some((fut, *started)),
                _ => None,
            };
            let has_ack = front_ack.is_some();
            tokio::select! {
                biased;
                result = async {
                    match front_ack {
                        Some((fut, started)) => (fut.await, started),
                        None => std::future::pending().await,
                    }
                }, if has_ack => {
                    let (result, started) = result;
                    result.map_err(|e| {
                        Failure::transient("publish", format!("JetStream did not acknowledge a publish: {e}"))
                    })?;
                    latency.record(started.elapsed().as_secs_f64());
                    published.increment(1);
                    acks_in_flight -= 1;
                    queue.pop_front();
                }
                item = rx.recv(), if can_receive => match item {
                    None => closed = true,
                    Some(Outgoing::Event(msg)) => {
                        let publish = PublishMessage::build().message_id(msg.id).payload(msg.payload);
                        let ack: PublishAckFuture = self
                            .js
                            .send_publish(msg.subject, publish)
                            .await
                            .map_err(|e| {
                                Failure::transient("publish", format!("publishing to JetStream failed: {e}"))
                            })?;
                        queue.push_back(InFlight::Ack {
                            fut: Box::pin(ack.into_future()),
                            started: Instant::now(),
                        });
                        acks_in_flight += 1;
                    }
                    Some(Outgoing::Checkpoint(c)) => queue.push_back(InFlight::Checkpoint(c)),
                    Some(Outgoing::Flush(reply)) => queue.push_back(InFlight::Flush(reply)),
                },
            }
        }
    }
}
