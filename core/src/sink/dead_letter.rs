//! Dead letters: a rejected event and its error, published where an operator can find them.
//!
//! The subject `<prefix>.<pipeline>.dlq.<sink>` falls inside the pipeline's stream, so a dead
//! letter is as durable as the events themselves. Every dead letter carries the
//! [`DEAD_LETTER_HEADER`] header, which every sink skips. The message id is derived from the
//! sink and the event's stream sequence, so publishing the same dead letter again after a
//! rollback or a restart is absorbed by JetStream's duplicate window.
//!
//! Every dead letter is also logged (WARN once published, ERROR if publishing failed) with
//! pipeline, sink, stream sequence, subject, table and error, never the row values: an
//! event that leaves the target is always visible in the log. The original event is
//! embedded as JSON text verbatim (any depth, any number), or as a string when it is not
//! JSON at all; it is never rebuilt as a tree, which could fail or overflow the stack.

use super::runtime::SinkError;
use super::DEAD_LETTER_HEADER;
use async_nats::jetstream::Context;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

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
    /// `schema.table` of the event (from the subject when the envelope did not parse).
    pub table: &'a str,
    /// The original payload (an envelope, or whatever could not be parsed).
    pub payload: &'a [u8],
    /// The error, one line with context.
    pub error: &'a str,
}

/// The dead-letter message body.
#[derive(Serialize)]
struct Body<'a> {
    pipeline: &'a str,
    sink: &'a str,
    stream_seq: u64,
    subject: &'a str,
    table: &'a str,
    error: &'a str,
    failed_at_ms: i64,
    event: Event<'a>,
}

/// The rejected event: its JSON text verbatim, or the bytes as a string.
#[derive(Serialize)]
#[serde(untagged)]
enum Event<'a> {
    Json(&'a RawValue),
    Text(Cow<'a, str>),
}

/// The dead-letter body for `letter`.
fn encode(letter: &DeadLetter<'_>, failed_at_ms: i64) -> Result<Vec<u8>, serde_json::Error> {
    let event = match crate::json_text::validate(letter.payload) {
        Ok(raw) => Event::Json(raw),
        Err(_) => Event::Text(String::from_utf8_lossy(letter.payload)),
    };
    serde_json::to_vec(&Body {
        pipeline: letter.pipeline,
        sink: letter.sink,
        stream_seq: letter.stream_seq,
        subject: letter.subject,
        table: letter.table,
        error: letter.error,
        failed_at_ms,
        event,
    })
}

/// Publishes `letter` to `subject`, waits for JetStream's ack, and logs the outcome.
pub(crate) async fn publish(
    js: &Context,
    subject: &str,
    letter: &DeadLetter<'_>,
) -> Result<(), SinkError> {
    let result = send(js, subject, letter).await;
    match &result {
        Ok(()) => tracing::warn!(
            pipeline = %letter.pipeline,
            sink = %letter.sink,
            stream_seq = letter.stream_seq,
            subject = %letter.subject,
            table = %letter.table,
            error = %letter.error,
            dead_letter_subject = %subject,
            "event dead-lettered: it is not in the target; it was published to the dead-letter subject"
        ),
        Err(e) => tracing::error!(
            pipeline = %letter.pipeline,
            sink = %letter.sink,
            stream_seq = letter.stream_seq,
            subject = %letter.subject,
            table = %letter.table,
            error = %letter.error,
            publish_error = %e,
            "event could not be dead-lettered; the sink retries it"
        ),
    }
    result
}

async fn send(js: &Context, subject: &str, letter: &DeadLetter<'_>) -> Result<(), SinkError> {
    let payload = encode(letter, crate::metrics::now_ms()).map_err(|e| SinkError::Nats {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(payload: &[u8]) -> DeadLetter<'_> {
        DeadLetter {
            pipeline: "p",
            sink: "s",
            stream_seq: 7,
            subject: "tidemark.p.public.t",
            table: "public.t",
            payload,
            error: "boom",
        }
    }

    #[test]
    fn embeds_any_envelope_verbatim() {
        let depth = 100_000;
        let event = format!(
            "{{\"doc\":{}1e400{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let body = encode(&letter(event.as_bytes()), 1).unwrap_or_default();
        let text = String::from_utf8(body).unwrap_or_default();
        assert!(text.starts_with(r#"{"pipeline":"p","sink":"s","stream_seq":7,"#));
        assert!(text.contains(r#""table":"public.t","error":"boom","failed_at_ms":1,"#));
        assert!(text.ends_with(&format!(r#""event":{event}}}"#)));
    }

    #[test]
    fn non_json_becomes_a_string() {
        let body = encode(&letter(b"not json \xff"), 1).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v["event"], "not json \u{fffd}");
    }
}
