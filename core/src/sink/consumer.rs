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
    known_created: &mut Option<i128>,
) -> Result<(PullConsumer, i64), SinkError> {
    let lost = |what: String| SinkError::StreamLost {
        stream: stream_name.to_owned(),
        what,
        pipeline: String::new(),
        sink: String::new(),
    };
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
    let created = info.created.unix_timestamp_nanos();
    if known_created.is_some_and(|known| known != created) {
        return Err(lost(
            "the stream was deleted and re-created while this sink was running; messages it \
             had not applied are gone"
                .into(),
        ));
    }
    *known_created = Some(created);
    let stored_seq = stored.map_or(0, |o| o.stream_seq);
    let deliver = if stored_seq == 0 {
        DeliverPolicy::All
    } else if stored_seq > state.last_sequence {
        // The stream was re-created, or lost its newest messages: the stored sequence means
        // nothing here and what the sink had not applied is gone.
        return Err(lost(format!(
            "the sink's stored stream sequence {stored_seq} is beyond the stream's last \
             sequence {} (the stream was deleted and re-created, or lost messages)",
            state.last_sequence
        )));
    } else {
        if stored_seq + 1 < state.first_sequence {
            return Err(lost(format!(
                "messages {} to {} were removed before this sink applied them (stream purged, \
                 messages deleted, or expired by max_age)",
                stored_seq + 1,
                state.first_sequence - 1
            )));
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
