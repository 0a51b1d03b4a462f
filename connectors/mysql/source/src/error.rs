//! Errors of the MySQL/MariaDB source and their retry class.
//!
//! Transient: the server or network went away, a timeout, a checksum mismatch
//! on the wire — the supervisor reconnects and resumes from the durable
//! checkpoint. Definite: a setting, a privilege, a purged binlog, a
//! compressed event — retrying cannot help until a human acts, so the message
//! says exactly what to do.

use crate::binlog::DecodeError;
use crate::convert::PlanError;
use tidemark_core::error::{Classify, Retry};
use tidemark_core::state::StateError;

/// Server error codes with a meaning for the connector.
pub mod code {
    /// Access denied for user.
    pub const ACCESS_DENIED: u16 = 1045;
    /// Access denied to a database.
    pub const DB_ACCESS_DENIED: u16 = 1044;
    /// Command denied.
    pub const TABLE_ACCESS_DENIED: u16 = 1142;
    /// Needs a privilege (REPLICATION SLAVE, BINLOG MONITOR …).
    pub const SPECIFIC_ACCESS_DENIED: u16 = 1227;
    /// Fatal error reading the binlog: purged file, unknown GTID, position past the end.
    pub const MASTER_FATAL_READING_BINLOG: u16 = 1236;
    /// Another replica registered with the same server id.
    pub const SLAVE_SAME_ID: u16 = 4052;
}

/// Everything that can stop the source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The pipeline configuration cannot work.
    #[error("configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },
    /// Could not connect.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// URL without password.
        url: String,
        /// Cause.
        #[source]
        source: mysql_async::Error,
    },
    /// A SQL statement failed.
    #[error("{what} failed: {source}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: mysql_async::Error,
    },
    /// Something took too long (dead connection).
    #[error("timed out {what}")]
    Timeout {
        /// What was awaited.
        what: String,
    },
    /// The binlog stream failed.
    #[error("binlog stream failed: {source}")]
    Stream {
        /// Cause.
        #[source]
        source: mysql_async::Error,
    },
    /// The server ended the binlog stream.
    #[error("the server closed the binlog stream (a server shutdown or restart; or another replica or tidemark instance connected with server_id {server_id} and the server dropped this one: use a unique server_id per connector)")]
    StreamEnded {
        /// Our replica id.
        server_id: u32,
    },
    /// The checkpoint's binlog position no longer exists on the server.
    #[error("the binlog position to resume from is gone: {detail}. The server purged binlogs tidemark had not read yet (or the GTID is unknown to this server), so changes were lost for this pipeline. Re-snapshot: delete the checkpoint (nats kv del {bucket} {key}) and restart; tidemark then takes a new initial snapshot. Keep binlogs longer (binlog_expire_logs_seconds) to avoid this.")]
    Purged {
        /// The server's message.
        detail: String,
        /// State bucket.
        bucket: String,
        /// Checkpoint key.
        key: String,
    },
    /// The binlog at the checkpoint's file/pos does not continue the checkpoint's GTID state:
    /// the server's binlog was reset or replaced since (RESET MASTER, a restored backup).
    #[error("the binlog at the checkpoint's position does not continue it: {detail}. The server's binlog was reset or replaced since the checkpoint was taken (RESET MASTER, a server restored from a backup), so its history no longer matches. Re-snapshot: delete the checkpoint (nats kv del {bucket} {key}) and restart")]
    Diverged {
        /// What was seen.
        detail: String,
        /// State bucket.
        bucket: String,
        /// Checkpoint key.
        key: String,
    },
    /// Another replica uses our server id.
    #[error("another replica connected with server_id {server_id} ({detail}); each tidemark mysql source needs its own server_id, distinct from every replica and from the server's own")]
    DuplicateServerId {
        /// Our replica id.
        server_id: u32,
        /// Server message.
        detail: String,
    },
    /// An event could not be decoded.
    #[error("decoding binlog event at {file}:{pos}: {source}")]
    Decode {
        /// Binlog file.
        file: String,
        /// Event end position.
        pos: u64,
        /// Cause.
        #[source]
        source: DecodeError,
    },
    /// A table cannot be described.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The binlog contains something tidemark refuses to guess about.
    #[error("{what}; fix: {fix}")]
    Unsupported {
        /// What was found.
        what: String,
        /// How to fix it.
        fix: String,
    },
    /// Server settings or privileges make CDC impossible.
    #[error("server prerequisites not met: {problems}")]
    Preflight {
        /// Every failed probe with its fix.
        problems: String,
    },
    /// The checkpoint store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The publisher stopped.
    #[error("the publisher stopped")]
    PublisherGone,
    /// The snapshot could not establish its consistent point.
    #[error("snapshot: {message}")]
    Snapshot {
        /// What went wrong.
        message: String,
    },
}

impl From<tidemark_core::source::PublisherGone> for SourceError {
    fn from(_: tidemark_core::source::PublisherGone) -> Self {
        SourceError::PublisherGone
    }
}

/// The server error code inside a mysql_async error, if any.
pub fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

fn denied(e: &mysql_async::Error) -> bool {
    matches!(
        server_code(e),
        Some(
            code::ACCESS_DENIED
                | code::DB_ACCESS_DENIED
                | code::TABLE_ACCESS_DENIED
                | code::SPECIFIC_ACCESS_DENIED
        )
    )
}

impl Classify for SourceError {
    fn retry(&self) -> Retry {
        match self {
            SourceError::Connect { source, .. }
            | SourceError::Query { source, .. }
            | SourceError::Stream { source } => {
                if denied(source) {
                    Retry::Definite
                } else {
                    Retry::Transient
                }
            }
            SourceError::Timeout { .. }
            | SourceError::StreamEnded { .. }
            | SourceError::PublisherGone
            | SourceError::Snapshot { .. } => Retry::Transient,
            SourceError::Decode { source, .. } => match source {
                DecodeError::Checksum { .. } => Retry::Transient,
                _ => Retry::Definite,
            },
            SourceError::State(e) => e.retry(),
            SourceError::Config { .. }
            | SourceError::Purged { .. }
            | SourceError::Diverged { .. }
            | SourceError::DuplicateServerId { .. }
            | SourceError::Plan(_)
            | SourceError::Unsupported { .. }
            | SourceError::Preflight { .. } => Retry::Definite,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            SourceError::Config { .. } => "config",
            SourceError::Connect { source, .. } if denied(source) => "auth",
            SourceError::Connect { .. } => "connect",
            SourceError::Query { source, .. } if denied(source) => "privilege",
            SourceError::Query { .. } => "query",
            SourceError::Timeout { .. } => "timeout",
            SourceError::Stream { .. } | SourceError::StreamEnded { .. } => "stream",
            SourceError::Purged { .. } => "binlog_purged",
            SourceError::Diverged { .. } => "binlog_diverged",
            SourceError::DuplicateServerId { .. } => "duplicate_server_id",
            SourceError::Decode { source, .. } => match source {
                DecodeError::Checksum { .. } => "checksum",
                _ => "decode",
            },
            SourceError::Plan(_) => "table_map",
            SourceError::Unsupported { .. } => "unsupported",
            SourceError::Preflight { .. } => "preflight",
            SourceError::State(e) => e.kind(),
            SourceError::PublisherGone => "publisher",
            SourceError::Snapshot { .. } => "snapshot",
        }
    }
}
