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
//!
//! Order across a lost connection: when the connection to NATS breaks, a publish written to
//! the dying socket is lost while the client re-sends what it still had buffered after it
//! reconnects, so event k+1 could be stored without event k. Re-publishing k after a restart
//! would then put it *behind* k+1 in the stream, and the sinks' position guard would skip it
//! as a duplicate: a silent loss. So every publish after the first of a run carries
//! `Nats-Expected-Last-Msg-Id` = the previous event's id: the server refuses k+1 when k is not
//! the stream's last message, the run fails, and the source resends from its checkpoint in
//! order. (A re-sent duplicate is acknowledged by the dedup window before that check.)

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

/// How often the publisher checks that its NATS connection is up.
const CONNECTION_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

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
        // Message id of the previous publish of this run (see the module note).
        let mut last_id: Option<String> = None;
        let client = self.js.client();
        let mut tick = tokio::time::interval(CONNECTION_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                    result.map_err(|e| ack_failure(&e))?;
                    latency.record(started.elapsed().as_secs_f64());
                    published.increment(1);
                    acks_in_flight -= 1;
                    queue.pop_front();
                }
                _ = tick.tick() => {
                    // An idle source would not notice NATS going away: fail (and be reported
                    // not ready) until the connection is back.
                    if client.connection_state() != async_nats::connection::State::Connected {
                        return Err(Failure::transient(
                            "publish",
                            "lost the connection to NATS; the client is reconnecting",
                        ));
                    }
                }
                item = rx.recv(), if can_receive => match item {
                    None => closed = true,
                    Some(Outgoing::Event(msg)) => {
                        let mut publish = PublishMessage::build().message_id(&msg.id);
                        if let Some(prev) = &last_id {
                            publish = publish.expected_last_message_id(prev);
                        }
                        let publish = publish.payload(msg.payload);
                        last_id = Some(msg.id);
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

/// The failure for a publish JetStream did not acknowledge, with the cause in plain words.
fn ack_failure(e: &async_nats::jetstream::context::PublishError) -> Failure {
    use async_nats::jetstream::context::PublishErrorKind as K;
    let detail = crate::error::display_chain(e);
    match e.kind() {
        K::WrongLastMessageId => Failure::transient(
            "publish_order",
            format!(
                "JetStream refused a publish because the event before it is not in the stream \
                 (lost on a broken connection, or another message came in between); resending \
                 from the checkpoint in order: {detail}"
            ),
        ),
        _ if is_storage_full(&detail) => Failure::transient(
            "store_full",
            format!(
                "JetStream storage is full (server max_file_store or account limit reached); \
                 the source waits and retries without losing anything, but nothing is published \
                 until space is freed or the limit is raised: {detail}"
            ),
        ),
        _ => Failure::transient(
            "publish",
            format!("JetStream did not acknowledge a publish: {detail}"),
        ),
    }
}

/// Whether a publish error says the JetStream store has no room (error codes 10047
/// "insufficient storage resources", 10023 "insufficient resources", 10028 "maximum bytes
/// exceeded").
fn is_storage_full(text: &str) -> bool {
    [
        "10047",
        "10023",
        "10028",
        "insufficient",
        "storage resources",
        "maximum bytes",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

#[cfg(test)]
mod tests {
    #[test]
    fn storage_full_is_recognised() {
        assert!(super::is_storage_full(
            "publish failed: insufficient storage resources available (code 503, error code 10047)"
        ));
        assert!(!super::is_storage_full(
            "timed out: didn't receive ack in time"
        ));
    }
}
