//! Dead letters: a rejected event and its error, published where an operator can find them.
//!
//! The subject `<prefix>.<pipeline>.dlq.<sink>` falls inside the pipeline's stream, so a dead
//! letter is as durable as the events themselves. Every dead letter carries the
//! [`DEAD_LETTER_HEADER`] header, which every sink skips. The message id is derived from the
//! sink and the event's stream sequence, so publishing the same dead letter again after a
//! rollback or a restart is absorbed by JetStream's duplicate window.

use super::runtime::SinkError;
use super::DEAD_LETTER_HEADER;
use async_nats::jetstream::Context;
use bytes::Bytes;

/// What went wrong with one event.
pub(crate) struct DeadLetter<'a> {
    /// Pipeline name.
    pub pipeline: &'a str,
    /// Sink name.
    pub sink: &'a str,
    /// Stream sequence of the rejected message.
    pub stream_seq: u64,
    /// The original subject.
    pub subject: &'a str,
    /// The original payload (an envelope, or whatever could not be parsed).
    pub payload: &'a [u8],
    /// The error, one line with context.
    pub error: &'a str,
}

/// Publishes `letter` to `subject` and waits for JetStream's ack.
pub(crate) async fn publish(
    js: &Context,
    subject: &str,
    letter: &DeadLetter<'_>,
) -> Result<(), SinkError> {
    let event = match serde_json::from_slice::<serde_json::Value>(letter.payload) {
        Ok(v) => v,
        Err(_) => serde_json::Value::String(String::from_utf8_lossy(letter.payload).into_owned()),
    };
    let body = serde_json::json!({
        "pipeline": letter.pipeline,
        "sink": letter.sink,
        "stream_seq": letter.stream_seq,
        "subject": letter.subject,
        "error": letter.error,
        "failed_at_ms": crate::metrics::now_ms(),
        "event": event,
    });
    let payload = serde_json::to_vec(&body).map_err(|e| SinkError::Nats {
        what: "encode dead letter",
        message: e.to_string(),
    })?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(DEAD_LETTER_HEADER, letter.sink);
    headers.insert(
        "Nats-Msg-Id",
        format!(
            "dlq:{}:{}:{}",
            letter.pipeline, letter.sink, letter.stream_seq
        )
        .as_str(),
    );
    let ack = js
        .publish_with_headers(subject.to_owned(), headers, Bytes::from(payload))
        .await
        .map_err(|e| SinkError::Nats {
            what: "publish dead letter",
            message: e.to_string(),
        })?;
    ack.await.map_err(|e| SinkError::Nats {
        what: "dead letter ack",
        message: e.to_string(),
    })?;
    Ok(())
}
