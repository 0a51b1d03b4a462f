//! The sink's durable pull consumer, positioned from the target's stored offset.
//!
//! The consumer covers the whole pipeline (`<prefix>.<pipeline>.>`): table selection happens
//! in the runtime so that transaction boundaries carried by events of unselected tables are
//! still seen, and a single filter works on nats-server 2.9 (no multi-filter consumers).
//! Its ack policy is `All`: the runtime acknowledges a committed range with one ack of its last
//! message instead of one publish per message (the server's and the client's work per event
//! both shrink). Acks are flow control only; the resume point is the target's offset.
//! Its position is derived from the target on every start: an existing consumer is reused only
//! when it sits exactly at the stored sequence with nothing unacknowledged; otherwise it is
//! deleted and created again at `stream_seq + 1`.

use super::runtime::SinkError;
use super::Offset;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::Context;
use std::time::Duration;

/// Unacknowledged messages the server lets one sink hold.
pub(crate) const MAX_ACK_PENDING: i64 = 20_000;
/// How long the server waits for an ack before redelivering. Long, because a source
/// transaction may stay open (waiting for its end) for a while; redeliveries are ignored
/// anyway.
const ACK_WAIT: Duration = Duration::from_secs(300);

/// Finds the stream and returns a durable consumer positioned right after `stored`, with the
/// stream's `max_msg_size` (0 or less: none).
pub(crate) async fn prepare(
    js: &Context,
    stream_name: &str,
    consumer_name: &str,
    filter: &str,
    stored: Option<&Offset>,
) -> Result<(PullConsumer, i64), SinkError> {
    let nats = |what: &'static str, e: &dyn std::fmt::Display| SinkError::Nats {
        what,
        message: format!("stream {stream_name}, consumer {consumer_name}: {e}"),
    };
    let mut stream: Stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| SinkError::Nats {
            what: "get stream",
            message: format!(
            "stream {stream_name}: {e} (the source creates it; is the pipeline's source running?)"
        ),
        })?;
    let info = stream.info().await.map_err(|e| nats("stream info", &e))?;
    let max_msg_size = i64::from(info.config.max_message_size);
    let state = info.state.clone();
    let stored_seq = stored.map_or(0, |o| o.stream_seq);
    let deliver = if stored_seq == 0 {
        DeliverPolicy::All
    } else if stored_seq > state.last_sequence {
        // The stream was recreated (or purged and reset): our sequence means nothing here.
        // Read everything; the position guard skips what the target already has.
        tracing::warn!(
            stream = stream_name,
            stored_seq,
            last_seq = state.last_sequence,
            "stored stream sequence is beyond the stream's end; re-reading the stream from its start"
        );
        DeliverPolicy::All
    } else {
        if stored_seq + 1 < state.first_sequence {
            tracing::error!(
                stream = stream_name,
                stored_seq,
                first_seq = state.first_sequence,
                "messages after the sink's position were removed from the stream (max_age?); \
                 the target may miss changes: re-snapshot the source"
            );
        }
        DeliverPolicy::ByStartSequence {
            start_sequence: stored_seq + 1,
        }
    };
    let wanted_delivered = match deliver {
        DeliverPolicy::All => 0,
        _ => stored_seq,
    };
    match stream.consumer_info(consumer_name).await {
        Ok(info) => {
            let reusable = info.config.filter_subject == filter
                && info.config.ack_policy == AckPolicy::All
                && info.config.max_ack_pending == MAX_ACK_PENDING
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence == wanted_delivered
                && (wanted_delivered != 0 || info.delivered.consumer_sequence == 0);
            if reusable {
                return stream
                    .get_consumer(consumer_name)
                    .await
                    .map(|c| (c, max_msg_size))
                    .map_err(|e| nats("get consumer", &e));
            }
            tracing::info!(
                consumer = consumer_name,
                delivered = info.delivered.stream_sequence,
                stored_seq,
                "repositioning consumer at the target's stored offset"
            );
            stream
                .delete_consumer(consumer_name)
                .await
                .map_err(|e| nats("delete consumer", &e))?;
        }
        Err(e) => {
            tracing::debug!(consumer = consumer_name, error = %e, "no existing consumer");
        }
    }
    let config = pull::Config {
        durable_name: Some(consumer_name.to_owned()),
        description: Some(
            "tidemark sink; position is kept in the target's tidemark_offsets".into(),
        ),
        deliver_policy: deliver,
        // One ack of the last message of a commit covers all before it.
        ack_policy: AckPolicy::All,
        ack_wait: ACK_WAIT,
        max_ack_pending: MAX_ACK_PENDING,
        filter_subject: filter.to_owned(),
        ..Default::default()
    };
    stream
        .create_consumer(config)
        .await
        .map(|c| (c, max_msg_size))
        .map_err(|e| nats("create consumer", &e))
}
