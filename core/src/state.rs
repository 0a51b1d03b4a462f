//! Durable state in a JetStream KV bucket (`tidemark_state`).
//!
//! Every write is a compare-and-set on the entry's revision: an instance
//! that lost its lease (a second daemon started on the same pipeline, an
//! old process that woke up) fails to write instead of moving a checkpoint
//! backwards.

use crate::error::{Classify, Retry};
use async_nats::jetstream::kv;
use serde::{de::DeserializeOwned, Serialize};

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The bucket could not be opened or created.
    #[error("cannot open state bucket {bucket}: {source}")]
    Open {
        /// Bucket name.
        bucket: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading or writing failed (NATS down, timeout).
    #[error("state store {op} of {key} failed: {source}")]
    Io {
        /// `read` or `write`.
        op: &'static str,
        /// Key.
        key: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Someone else wrote the key since we read it.
    #[error(
        "state key {key} was changed by another instance (expected revision {expected:?}); \
             is a second tidemark running this pipeline?"
    )]
    Conflict {
        /// Key.
        key: String,
        /// The revision we expected.
        expected: Option<u64>,
    },
    /// The stored value is not what this version understands.
    #[error("state key {key} holds unreadable data: {source}")]
    Corrupt {
        /// Key.
        key: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

impl Classify for StateError {
    fn retry(&self) -> Retry {
        match self {
            StateError::Open { .. } | StateError::Io { .. } | StateError::Conflict { .. } => {
                Retry::Transient
            }
            StateError::Corrupt { .. } => Retry::Definite,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            StateError::Open { .. } | StateError::Io { .. } => "state_io",
            StateError::Conflict { .. } => "state_conflict",
            StateError::Corrupt { .. } => "state_corrupt",
        }
    }
}

/// A value with the revision it was read at.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// KV revision, for the next compare-and-set.
    pub revision: u64,
}

/// Handle to the state bucket.
#[derive(Clone)]
pub struct StateStore {
    kv: kv::Store,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateStore")
    }
}

impl StateStore {
    /// Opens the bucket, creating it (file storage, history 5) when missing.
    pub async fn open(
        js: &async_nats::jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> Result<StateStore, StateError> {
        let open_err = |e: Box<dyn std::error::Error + Send + Sync>| StateError::Open {
            bucket: bucket.to_owned(),
            source: e,
        };
        if let Ok(kv) = js.get_key_value(bucket).await {
            return Ok(StateStore { kv });
        }
        // Create the bucket's stream ourselves rather than with `create_key_value`: that call
        // first asks for the account info, whose reply from nats-server 2.9 async-nats 0.51
        // cannot parse. The layout below is the KV convention every server version reads.
        js.create_stream(kv_stream_config(bucket, replicas))
            .await
            .map_err(|e| open_err(Box::new(e)))?;
        let kv = js
            .get_key_value(bucket)
            .await
            .map_err(|e| open_err(Box::new(e)))?;
        Ok(StateStore { kv })
    }

    /// The bucket's name, for messages that tell the user which key to delete.
    pub fn bucket(&self) -> &str {
        &self.kv.name
    }

    /// Reads `key`.
    pub async fn load<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StateError> {
        let entry = self.kv.entry(key).await.map_err(|e| StateError::Io {
            op: "read",
            key: key.to_owned(),
            source: Box::new(e),
        })?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let value =
                    serde_json::from_slice(&e.value).map_err(|source| StateError::Corrupt {
                        key: key.to_owned(),
                        source,
                    })?;
                Ok(Some(Versioned {
                    value,
                    revision: e.revision,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Writes `key` if its revision is still `expected` (`None`: only if absent). Returns the new
    /// revision.
    pub async fn save<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        expected: Option<u64>,
    ) -> Result<u64, StateError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StateError::Corrupt {
            key: key.to_owned(),
            source,
        })?;
        let result = match expected {
            Some(rev) => self.kv.update(key, bytes.into(), rev).await.map_err(|e| {
                (
                    e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                    e.to_string(),
                )
            }),
            None => self.kv.create(key, bytes.into()).await.map_err(|e| {
                (
                    e.kind() == kv::CreateErrorKind::AlreadyExists,
                    e.to_string(),
                )
            }),
        };
        result.map_err(|(conflict, text)| {
            if conflict {
                StateError::Conflict {
                    key: key.to_owned(),
                    expected,
                }
            } else {
                StateError::Io {
                    op: "write",
                    key: key.to_owned(),
                    source: text.into(),
                }
            }
        })
    }

    /// Removes `key` (used when a source must start over, e.g. after a failed snapshot).
    pub async fn delete(&self, key: &str) -> Result<(), StateError> {
        self.kv.purge(key).await.map_err(|e| StateError::Io {
            op: "write",
            key: key.to_owned(),
            source: Box::new(e),
        })
    }
}

/// The stream behind a KV bucket, as the JetStream KV convention lays it out.
fn kv_stream_config(bucket: &str, replicas: usize) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream;
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("tidemark checkpoints".into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 5,
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        duplicate_window: std::time::Duration::from_secs(120),
        ..Default::default()
    }
}

/// The key under which a pipeline's source keeps its checkpoint.
pub fn source_key(pipeline: &str) -> String {
    format!("source.{pipeline}")
}
