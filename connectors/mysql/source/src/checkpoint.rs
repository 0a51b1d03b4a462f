//! The durable resume point and how it reaches the KV store.
//!
//! ```text
//!  stream ── group ends ──▶ outbox.checkpoint(c) ──▶ publisher ──(all acked)──▶ acked watch
//!                                                                                  │ ≤ 1/s
//!                                  KV tidemark_state["source.<pipeline>"] ◀─ CAS ──┘
//! ```
//!
//! A checkpoint is only ever taken at a transaction boundary and written only
//! after JetStream acknowledged every event before it, with a compare-and-set
//! on the KV revision so a stale second instance fails instead of moving the
//! position backwards. It stores both the GTID position and file/pos, with
//! the server they belong to: on the same MariaDB server the stream resumes
//! by file/pos (a direct seek), after a server change by GTID, which survives
//! failover and file renumbering (see `stream.rs`).

use crate::binlog::Flavour;
use crate::error::SourceError;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tidemark_core::state::StateStore;
use tokio::sync::watch;

/// Where the source resumes, as stored in the KV bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MysqlCheckpoint {
    /// MariaDB: `domain-server-seq` for every domain; MySQL: the executed GTID set. Empty when
    /// the server has no GTIDs yet.
    pub gtid_state: String,
    /// Binlog file of the next event to read.
    pub file: String,
    /// Offset in `file` of the next event to read (the end of the last whole transaction).
    pub pos: u64,
    /// The initial snapshot completed (or was not wanted).
    pub snapshot_done: bool,
    /// Server family the position belongs to.
    #[serde(default)]
    pub flavour: Option<Flavour>,
    /// `@@server_id` of the server the position belongs to.
    #[serde(default)]
    pub server_id: Option<u32>,
    /// `@@server_uuid` (MySQL) of that server.
    #[serde(default)]
    pub server_uuid: Option<String>,
    /// Commit time (ms) of the last transaction before this position, 0 if unknown.
    #[serde(default)]
    pub ts_ms: i64,
}

impl MysqlCheckpoint {
    /// `file:pos (gtid)` for logs and `tidemark status`.
    pub fn describe(&self) -> String {
        if self.gtid_state.is_empty() {
            format!("{}:{}", self.file, self.pos)
        } else {
            format!("{}:{} gtid {}", self.file, self.pos, self.gtid_state)
        }
    }
}

/// Writes acknowledged checkpoints to the KV store, at most once per interval.
#[derive(Debug)]
pub struct Persister {
    key: String,
    revision: Option<u64>,
    saved: Option<MysqlCheckpoint>,
    last_write: Option<Instant>,
    every: Duration,
}

impl Persister {
    /// Loads the stored checkpoint of `key`.
    pub async fn load(
        state: &StateStore,
        key: &str,
    ) -> Result<(Option<MysqlCheckpoint>, Persister), SourceError> {
        let loaded = state.load::<MysqlCheckpoint>(key).await?;
        let (value, revision) = match loaded {
            Some(v) => (Some(v.value), Some(v.revision)),
            None => (None, None),
        };
        Ok((
            value.clone(),
            Persister {
                key: key.to_owned(),
                revision,
                saved: value,
                last_write: None,
                every: Duration::from_secs(1),
            },
        ))
    }

    /// The last checkpoint written (or loaded).
    pub fn saved(&self) -> Option<&MysqlCheckpoint> {
        self.saved.as_ref()
    }

    /// Writes `c` now (compare-and-set), unless it is already stored.
    pub async fn save(
        &mut self,
        state: &StateStore,
        c: &MysqlCheckpoint,
    ) -> Result<(), SourceError> {
        if self.saved.as_ref() == Some(c) {
            return Ok(());
        }
        let rev = state.save(&self.key, c, self.revision).await?;
        self.revision = Some(rev);
        self.saved = Some(c.clone());
        self.last_write = Some(Instant::now());
        tracing::debug!(key = %self.key, position = %c.describe(), "checkpoint saved");
        Ok(())
    }

    /// Writes the newest acknowledged checkpoint if the interval has passed.
    pub async fn tick(
        &mut self,
        state: &StateStore,
        acked: &watch::Receiver<Option<MysqlCheckpoint>>,
    ) -> Result<(), SourceError> {
        if self.last_write.is_some_and(|t| t.elapsed() < self.every) {
            return Ok(());
        }
        self.flush(state, acked).await
    }

    /// Writes the newest acknowledged checkpoint now.
    pub async fn flush(
        &mut self,
        state: &StateStore,
        acked: &watch::Receiver<Option<MysqlCheckpoint>>,
    ) -> Result<(), SourceError> {
        let latest = acked.borrow().clone();
        match latest {
            Some(c) => self.save(state, &c).await,
            None => Ok(()),
        }
    }
}
