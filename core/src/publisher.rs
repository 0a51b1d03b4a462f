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
//! An envelope larger than NATS accepts (the server's `max_payload`, or the
//! stream's `max_msg_size` when smaller) is never sent: it can only fail, and
//! retrying it would stop the pipeline for good. It goes to the pipeline's
//! `oversize` policy instead ([`crate::oversize`]), which returns a small
//! replacement to publish in its place or a definite error. An envelope's
//! bytes stay reserved in the outbox budget until its ack arrives.
//!
//! Order across a lost connection: when the connection to NATS breaks, a publish written to
//! the dying socket is lost while the client re-sends what it still had buffered after it
//! reconnects, so event k+1 could be stored without event k. Re-publishing k after a restart
//! would then put it *behind* k+1 in the stream, and the sinks' position guard would skip it
//! as a duplicate: a silent loss. So every publish after the first of a run carries
//! `Nats-Expected-Last-Msg-Id` = the previous event's id: the server refuses k+1 when k is not
//! the stream's last message, the run fails, and the source resends from its checkpoint in
//! order. (A re-sent duplicate is acknowledged by the dedup window before that check.)
//!
//! The chain is anchored only on a message this run actually stored: until the first ack that
//! is not a duplicate, publishes go one at a time and without the header. Otherwise a message
//! that is not ours (a dead letter, an oversize marker, anything another client publishes to
//! the stream) would leave every resend after a restart expecting an id that is no longer the
//! stream's last: the first resends are duplicates, which do not move the last id, and the
//! run would fail again and again. Once anchored, publishes are pipelined and chained; a
//! foreign message in between fails the run once, and the next run anchors again.

use crate::config::{NatsConfig, PipelineConfig};
use crate::error::Failure;
use crate::metrics as m;
use crate::oversize::OversizeHandler;
use crate::source::{Inbox, Outgoing};
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Instant;
use tokio::sync::{oneshot, watch};

/// Header bytes a publish adds to the payload besides the message id (`NATS/1.0`, the
/// `Nats-Msg-Id` name, line ends), rounded up.
const HEADER_OVERHEAD: usize = 32;
/// The largest message a JetStream file-store stream holds, whatever `max_payload` says: the
/// server refuses bigger records ("message too large", error code 10077) at 32 MiB including
/// subject and headers.
const FILE_STORE_MAX: usize = (32 << 20) - (8 << 10);

/// How often the publisher checks that its NATS connection is up.
const CONNECTION_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

type AckFuture = Pin<
    Box<
        dyn Future<Output = Result<PublishAck, async_nats::jetstream::context::PublishError>>
            + Send,
    >,
>;

enum InFlight<C> {
    Ack {
        fut: AckFuture,
        started: Instant,
        /// Message id, to anchor the order chain on (see the module note).
        id: String,
        /// Envelope bytes to give back to the outbox budget once acknowledged.
        bytes: usize,
    },
    Checkpoint(C),
    Flush(oneshot::Sender<()>),
}

/// Publishes one pipeline's envelopes.
pub struct Publisher {
    js: async_nats::jetstream::Context,
    window: usize,
    pipeline: String,
    /// The pipeline's stream, to read its `max_msg_size` (unknown: the server limit only).
    stream: Option<String>,
    oversize: OversizeHandler,
}

impl Publisher {
    /// A publisher with at most `window` unacknowledged publishes. An envelope larger than
    /// NATS accepts halts it with a definite error unless [`Publisher::oversize`] says otherwise.
    pub fn new(js: async_nats::jetstream::Context, window: usize, pipeline: &str) -> Publisher {
        Publisher {
            oversize: OversizeHandler::halting(js.clone(), pipeline),
            js,
            window: window.max(1),
            pipeline: pipeline.to_owned(),
            stream: None,
        }
    }

    /// Applies pipeline `p`'s `oversize` policy and its stream's `max_msg_size`.
    pub fn oversize(mut self, p: &PipelineConfig, nats: &NatsConfig) -> Publisher {
        self.oversize = OversizeHandler::new(self.js.clone(), p, nats);
        self.stream = Some(p.stream_name());
        self
    }

    /// The stream's `max_msg_size`, when it sets one.
    async fn stream_limit(&self) -> Option<usize> {
        let name = self.stream.as_deref()?;
        let stream = self.js.get_stream(name).await.ok()?;
        let max = stream.cached_info().config.max_message_size;
        usize::try_from(max).ok().filter(|&m| m > 0)
    }

    /// The size limit in effect and what it is, for messages.
    fn limit(&self, stream_limit: Option<usize>) -> (usize, &'static str) {
        let server = self.js.client().max_payload();
        match stream_limit {
            Some(s) if s < server.min(FILE_STORE_MAX) => (s, "the stream's max_msg_size"),
            _ if server > FILE_STORE_MAX => (
                FILE_STORE_MAX,
                "JetStream's largest file-store message, 32 MiB",
            ),
            _ => (server, "the NATS server's max_payload"),
        }
    }

    /// Runs until the outbox closes (then returns `Ok` after the last ack) or a publish fails.
    pub async fn run<C>(
        mut self,
        mut rx: Inbox<C>,
        acked: watch::Sender<Option<C>>,
    ) -> Result<(), Failure> {
        let stream_limit = self.stream_limit().await;
        let published =
            metrics::counter!(m::PUBLISHED_EVENTS, m::L_PIPELINE => self.pipeline.clone());
        let latency =
            metrics::histogram!(m::PUBLISH_LATENCY, m::L_PIPELINE => self.pipeline.clone());
        let mut queue: VecDeque<InFlight<C>> = VecDeque::new();
        let mut acks_in_flight = 0usize;
        let mut closed = false;
        // Message id of the previous publish of this run (see the module note).
        let mut last_id: Option<String> = None;
        // Whether `last_id` is known to be the stream's last message (see the module note).
        let mut anchored = false;
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
            let window = if anchored { self.window } else { 1 };
            let can_receive = !closed && acks_in_flight < window;
            let front_ack = match queue.front_mut() {
                Some(InFlight::Ack { fut, started, .. }) => Some((fut, *started)),
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
                    let ack = result.map_err(|e| ack_failure(&e))?;
                    latency.record(started.elapsed().as_secs_f64());
                    published.increment(1);
                    acks_in_flight -= 1;
                    if let Some(InFlight::Ack { bytes, id, .. }) = queue.pop_front() {
                        rx.release(bytes);
                        if !anchored && !ack.duplicate {
                            anchored = true;
                            last_id = Some(id);
                        }
                    }
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
                item = rx.recv_held(), if can_receive => match item {
                    None => closed = true,
                    Some(Outgoing::Event(msg)) => {
                        let bytes = msg.payload.len();
                        let id = msg.id.clone();
                        let prev = if anchored { last_id.replace(id.clone()) } else { None };
                        let ack = self.publish(msg, stream_limit, prev.as_deref()).await?;
                        queue.push_back(InFlight::Ack {
                            id,
                            fut: Box::pin(ack.into_future()),
                            started: Instant::now(),
                            bytes,
                        });
                        acks_in_flight += 1;
                    }
                    Some(Outgoing::Checkpoint(c)) => queue.push_back(InFlight::Checkpoint(c)),
                    Some(Outgoing::Flush(reply)) => queue.push_back(InFlight::Flush(reply)),
                },
            }
        }
    }

    /// Sends one envelope, or what the oversize policy puts in its place.
    async fn publish(
        &mut self,
        msg: crate::envelope::OutMessage,
        stream_limit: Option<usize>,
        prev_id: Option<&str>,
    ) -> Result<PublishAckFuture, Failure> {
        let (limit, _) = self.limit(stream_limit);
        let size = msg.payload.len() + msg.id.len() + HEADER_OVERHEAD;
        if size <= limit {
            let mut publish = PublishMessage::build().message_id(&msg.id);
            if let Some(prev) = prev_id {
                publish = publish.expected_last_message_id(prev);
            }
            let publish = publish.payload(msg.payload.clone());
            match self.js.send_publish(msg.subject.clone(), publish).await {
                Ok(ack) => return Ok(ack),
                // The server we reconnected to may accept less than the one before.
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {}
                Err(e) => {
                    return Err(Failure::transient(
                        "publish",
                        format!("publishing to JetStream failed: {e}"),
                    ))
                }
            }
        }
        let (limit, what) = self.limit(stream_limit);
        let mut r = self.oversize.handle(&msg, size, limit, what).await?;
        if let Some(prev) = prev_id {
            r.headers.insert("Nats-Expected-Last-Msg-Id", prev);
        }
        let publish = PublishMessage::build()
            .headers(r.headers)
            .payload(r.payload);
        self.js.send_publish(r.subject, publish).await.map_err(|e| {
            Failure::transient(
                "publish",
                format!("publishing an oversize replacement to JetStream failed: {e}"),
            )
        })
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
