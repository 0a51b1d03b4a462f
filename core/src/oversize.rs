//! Events larger than NATS accepts in one message, and the pipeline's `oversize` policy.
//!
//! A NATS server refuses any publish above its `max_payload` (1 MB by default, 64 MB at
//! most), and a stream may set a smaller `max_msg_size`. A database row has no such limit, so
//! a big `bytea`/`LONGBLOB`/`text` value can produce an envelope that cannot be published.
//! Retrying it is pointless: it would stop the pipeline for good while the Postgres slot or
//! the binlog retains everything behind it. The publisher detects the case *before* sending
//! and hands the event here, where the configured policy decides:
//!
//! ```text
//!  envelope > limit ──┬─ reference (default) ─▶ object store bucket tidemark_large_<pipeline>
//!                     │                         object <id with ':' → '.'> = the whole envelope
//!                     │                         then a small reference on the table's subject
//!                     │                         (header Tidemark-Oversize: reference); sinks
//!                     │                         fetch the object and apply it as usual
//!                     ├─ dead_letter ─────────▶ a small marker (no row data) on
//!                     │                         <prefix>.<pipeline>.oversize (header
//!                     │                         Tidemark-Oversize: dead_letter); sinks skip it
//!                     └─ halt ────────────────▶ definite error naming table, key, size, limit
//! ```
//!
//! The reference and the marker keep the event's message id (`Nats-Msg-Id`), so a restart
//! that reads the event again is deduplicated as usual, and they keep its `source` block
//! (position and transaction), so a sink's position guard and transaction tracking see them
//! like any other event. An object whose name already exists is not written again (same id,
//! same event). Objects expire with the bucket's `max_age`: the stream's `max_age` plus one
//! day (so an object outlives every message that refers to it), or never when the stream
//! keeps messages forever.

use crate::config::{NatsConfig, Oversize, PipelineConfig};
use crate::envelope::OutMessage;
use crate::error::Failure;
use crate::metrics as m;
use async_nats::jetstream::object_store::{self, ObjectMetadata, ObjectStore};
use async_nats::jetstream::{self, stream::StorageType};
use bytes::Bytes;
use serde::Deserialize;
use std::time::Duration;

/// Header on references and markers; its value is the policy (`reference`, `dead_letter`).
pub const OVERSIZE_HEADER: &str = "Tidemark-Oversize";
/// [`OVERSIZE_HEADER`] value of a reference message.
pub const REFERENCE: &str = "reference";
/// [`OVERSIZE_HEADER`] value of a dead-letter marker.
pub const DEAD_LETTER: &str = "dead_letter";

/// Largest chunk an object is split into (the object store's own default).
const MAX_CHUNK: usize = 128 * 1024;
/// Extra time an object outlives the stream's `max_age`.
const OBJECT_MARGIN: Duration = Duration::from_secs(24 * 3600);

/// The object store bucket holding a pipeline's oversize envelopes.
pub fn bucket_name(pipeline: &str) -> String {
    format!("tidemark_large_{pipeline}")
}

/// The object name of an envelope id (object names allow no `:`).
pub fn object_name(id: &str) -> String {
    id.replace(':', ".")
}

/// The subject dead-letter markers go to: `<prefix>.<pipeline>.oversize` (three tokens, so it
/// never collides with a table subject, which has four).
pub fn marker_subject(prefix: &str, pipeline: &str) -> String {
    format!("{prefix}.{pipeline}.oversize")
}

/// The parts of an envelope a marker keeps (everything but the row images).
#[derive(Debug, Deserialize)]
struct Head {
    #[serde(default)]
    v: serde_json::Value,
    #[serde(default)]
    op: serde_json::Value,
    #[serde(default)]
    source: serde_json::Value,
    #[serde(default)]
    key: serde_json::Value,
    #[serde(default)]
    schema: serde_json::Value,
    #[serde(default)]
    ts_ms: serde_json::Value,
}

impl Head {
    fn parse(payload: &[u8]) -> Head {
        serde_json::from_slice(payload).unwrap_or(Head {
            v: serde_json::Value::Null,
            op: serde_json::Value::Null,
            source: serde_json::Value::Null,
            key: serde_json::Value::Null,
            schema: serde_json::Value::Null,
            ts_ms: serde_json::Value::Null,
        })
    }

    fn field(&self, name: &str) -> &str {
        self.source
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or("?")
    }

    fn table(&self) -> String {
        format!("{}.{}", self.field("schema"), self.field("table"))
    }

    fn key_text(&self) -> String {
        let mut text = self.key.to_string();
        if text.len() > 200 {
            let mut end = 200;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        text
    }
}

/// What the publisher sends instead of an oversize event.
#[derive(Debug)]
pub struct Replacement {
    /// Subject (the table's for a reference, the marker subject for a dead letter).
    pub subject: async_nats::Subject,
    /// `Nats-Msg-Id` (the event's) and [`OVERSIZE_HEADER`].
    pub headers: async_nats::HeaderMap,
    /// The small JSON body.
    pub payload: Bytes,
}

/// Applies a pipeline's `oversize` policy on the source side.
pub struct OversizeHandler {
    policy: Oversize,
    js: jetstream::Context,
    pipeline: String,
    subject_prefix: String,
    max_age: Duration,
    replicas: usize,
    store: Option<ObjectStore>,
    counter: metrics::Counter,
}

impl OversizeHandler {
    /// The handler configured for pipeline `p`.
    pub fn new(js: jetstream::Context, p: &PipelineConfig, nats: &NatsConfig) -> OversizeHandler {
        let max_age = match nats.max_age_secs {
            0 => Duration::ZERO,
            secs => Duration::from_secs(secs) + OBJECT_MARGIN,
        };
        OversizeHandler {
            policy: p.oversize,
            js,
            pipeline: p.name.clone(),
            subject_prefix: p.subject_prefix.clone(),
            max_age,
            replicas: nats.replicas.max(1),
            store: None,
            counter: metrics::counter!(m::OVERSIZE_EVENTS, m::L_PIPELINE => p.name.clone()),
        }
    }

    /// A handler that halts (for publishers built without a pipeline configuration).
    pub fn halting(js: jetstream::Context, pipeline: &str) -> OversizeHandler {
        OversizeHandler {
            policy: Oversize::Halt,
            js,
            pipeline: pipeline.to_owned(),
            subject_prefix: "tidemark".into(),
            max_age: Duration::ZERO,
            replicas: 1,
            store: None,
            counter: metrics::counter!(m::OVERSIZE_EVENTS, m::L_PIPELINE => pipeline.to_owned()),
        }
    }

    /// Handles `msg`, whose wire size `size` exceeds `limit` (`what` names the limit): returns
    /// the message to publish instead, or the definite error that halts the source.
    pub async fn handle(
        &mut self,
        msg: &OutMessage,
        size: usize,
        limit: usize,
        what: &str,
    ) -> Result<Replacement, Failure> {
        self.counter.increment(1);
        let head = Head::parse(&msg.payload);
        let table = head.table();
        let pos = head.field("pos").to_owned();
        match self.policy {
            Oversize::Halt => Err(Failure::definite(
                "oversize",
                format!(
                    "event too large for NATS: table {table}, key {}, pos {pos}: the envelope \
                     is {size} bytes, the limit is {limit} bytes ({what}); the source is halted \
                     at this event and the slot/binlog retains everything from here on. Fix: \
                     raise max_payload on the NATS server (64 MB at most), or set \
                     oversize = \"reference\" (keeps the row, via the JetStream object store) \
                     or oversize = \"dead_letter\" (skips it) for pipeline {}",
                    head.key_text(),
                    self.pipeline
                ),
            )),
            Oversize::DeadLetter => {
                tracing::warn!(
                    pipeline = %self.pipeline,
                    table = %table,
                    key = %head.key_text(),
                    pos = %pos,
                    size,
                    limit,
                    subject = %marker_subject(&self.subject_prefix, &self.pipeline),
                    "event too large for NATS; published a marker without the row data \
                     (oversize = \"dead_letter\"): sinks skip this change"
                );
                let info = serde_json::json!({
                    "policy": DEAD_LETTER, "size": size, "limit": limit,
                });
                self.replacement(
                    marker_subject(&self.subject_prefix, &self.pipeline).into(),
                    msg,
                    head,
                    info,
                    DEAD_LETTER,
                    limit,
                )
            }
            Oversize::Reference => {
                let bucket = bucket_name(&self.pipeline);
                let object = object_name(&msg.id);
                self.store_object(&object, &msg.payload, limit).await?;
                tracing::info!(
                    pipeline = %self.pipeline,
                    table = %table,
                    pos = %pos,
                    size,
                    limit,
                    bucket = %bucket,
                    object = %object,
                    "event too large for NATS; stored in the object store and published a \
                     reference (oversize = \"reference\")"
                );
                let info = serde_json::json!({
                    "policy": REFERENCE, "size": msg.payload.len(), "limit": limit,
                    "bucket": bucket, "object": object,
                });
                self.replacement(msg.subject.clone(), msg, head, info, REFERENCE, limit)
            }
        }
    }

    fn replacement(
        &self,
        subject: async_nats::Subject,
        msg: &OutMessage,
        head: Head,
        info: serde_json::Value,
        policy: &'static str,
        limit: usize,
    ) -> Result<Replacement, Failure> {
        let table = head.table();
        let body = serde_json::json!({
            "v": head.v, "id": msg.id, "op": head.op, "source": head.source, "key": head.key,
            "before": null, "after": null, "schema": head.schema, "ts_ms": head.ts_ms,
            "oversize": info,
        });
        let payload = serde_json::to_vec(&body)
            .map_err(|e| Failure::definite("oversize", format!("encoding a marker: {e}")))?;
        if payload.len() + msg.id.len() + 128 > limit {
            return Err(Failure::definite(
                "oversize",
                format!(
                    "event too large for NATS (table {table}) and even its {policy} marker \
                     ({} bytes, without the row data) exceeds the limit of {limit} bytes: \
                     raise max_payload on the NATS server",
                    payload.len()
                ),
            ));
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg.id.as_str());
        headers.insert(OVERSIZE_HEADER, policy);
        Ok(Replacement {
            subject,
            headers,
            payload: Bytes::from(payload),
        })
    }

    /// Writes the envelope to the bucket unless an object of that name exists already.
    async fn store_object(
        &mut self,
        object: &str,
        payload: &Bytes,
        limit: usize,
    ) -> Result<(), Failure> {
        let bucket = bucket_name(&self.pipeline);
        let nats = |what: &str, e: &dyn std::fmt::Display| {
            Failure::transient(
                "oversize",
                format!("object store bucket {bucket}: {what}: {e}"),
            )
        };
        let store = match &self.store {
            Some(s) => s.clone(),
            None => {
                let store = match self.js.get_object_store(&bucket).await {
                    Ok(s) => s,
                    Err(_) => self
                        .js
                        .create_object_store(object_store::Config {
                            bucket: bucket.clone(),
                            description: Some(format!(
                                "tidemark: envelopes of pipeline {} too large for one NATS \
                                 message",
                                self.pipeline
                            )),
                            max_age: self.max_age,
                            storage: StorageType::File,
                            num_replicas: self.replicas,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| nats("create", &e))?,
                };
                self.store = Some(store.clone());
                store
            }
        };
        if let Ok(info) = store.info(object).await {
            if !info.deleted {
                return Ok(());
            }
        }
        let meta = ObjectMetadata {
            name: object.to_owned(),
            description: Some("tidemark envelope".into()),
            chunk_size: Some((limit / 2).clamp(1024, MAX_CHUNK)),
            ..Default::default()
        };
        let mut reader: &[u8] = payload;
        store
            .put(meta, &mut reader)
            .await
            .map_err(|e| nats(&format!("put {object}"), &e))?;
        Ok(())
    }
}

/// The `source` block fields a sink needs from a marker or reference.
#[derive(Debug, Deserialize)]
pub struct MarkerSource {
    /// `schema` of the event.
    pub schema: String,
    /// `table` of the event.
    pub table: String,
    /// `source.pos`.
    pub pos: String,
    /// `source.tx`.
    pub tx: crate::envelope::TxInfo,
}

/// Where a reference points.
#[derive(Debug, Deserialize)]
pub struct MarkerInfo {
    /// Envelope size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Bucket (references only).
    #[serde(default)]
    pub bucket: Option<String>,
    /// Object name (references only).
    #[serde(default)]
    pub object: Option<String>,
}

/// A parsed reference or dead-letter marker.
#[derive(Debug, Deserialize)]
pub struct Marker {
    /// The event's source block.
    pub source: MarkerSource,
    /// The oversize block.
    pub oversize: MarkerInfo,
}

impl Marker {
    /// Parses a marker or reference body.
    pub fn parse(payload: &[u8]) -> Result<Marker, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

/// Why a reference could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The object is gone (expired or deleted) or the reference is malformed: no retry helps.
    #[error("{0}")]
    Missing(String),
    /// NATS trouble: retry.
    #[error("{0}")]
    Nats(String),
}

/// Fetches the envelope a reference points to.
pub async fn resolve(js: &jetstream::Context, marker: &Marker) -> Result<Bytes, ResolveError> {
    let (Some(bucket), Some(object)) = (&marker.oversize.bucket, &marker.oversize.object) else {
        return Err(ResolveError::Missing(
            "reference names no bucket or object".into(),
        ));
    };
    let missing = |e: &dyn std::fmt::Display| {
        ResolveError::Missing(format!(
            "object {object} in bucket {bucket} is missing ({e}); it expired or was deleted \
             before the sink read it"
        ))
    };
    let store = js.get_object_store(bucket).await.map_err(|e| {
        use async_nats::jetstream::context::ObjectStoreErrorKind as K;
        let text = crate::error::display_chain(&e);
        match e.kind() {
            K::InvalidBucketName => missing(&text),
            K::GetStore if text.contains("not found") => missing(&text),
            K::GetStore => ResolveError::Nats(format!("object store bucket {bucket}: {text}")),
        }
    })?;
    let mut obj = store.get(object).await.map_err(|e| {
        use object_store::GetErrorKind as K;
        match e.kind() {
            K::NotFound | K::InvalidName => missing(&e),
            _ => ResolveError::Nats(format!("object {object} in bucket {bucket}: {e}")),
        }
    })?;
    let mut buf = Vec::with_capacity(obj.info().size);
    tokio::io::AsyncReadExt::read_to_end(&mut obj, &mut buf)
        .await
        .map_err(|e| {
            ResolveError::Nats(format!("reading object {object} in bucket {bucket}: {e}"))
        })?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(bucket_name("shop-1"), "tidemark_large_shop-1");
        assert_eq!(
            object_name("shop:00000000016B3748:00000003"),
            "shop.00000000016B3748.00000003"
        );
        assert_eq!(marker_subject("tidemark", "shop"), "tidemark.shop.oversize");
    }

    #[test]
    fn head_keeps_everything_but_the_rows() {
        let env = br#"{"v":1,"id":"p:1","op":"c","source":{"schema":"public","table":"big","pos":"1","tx":{"id":"7","seq":1,"commit_pos":"0/1","last":true}},"key":{"id":2},"before":null,"after":{"id":2,"data":"AAAA"},"schema":{"version":"x","columns":[]},"ts_ms":5}"#;
        let head = Head::parse(env);
        assert_eq!(head.table(), "public.big");
        assert_eq!(head.key_text(), r#"{"id":2}"#);
        assert_eq!(head.field("pos"), "1");
        assert_eq!(head.ts_ms, 5);
    }
}
