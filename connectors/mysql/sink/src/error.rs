//! Errors of the MySQL sink and their retry class.
//!
//! Server error codes decide: lost connections, shutdowns, deadlocks, lock waits, locked or
//! throttled accounts are transient (reconnect, resume from the stored offset); bad values,
//! constraint violations and missing tables or columns are definite (the same event would
//! fail again: halt or dead-letter it).

use tidemark_core::error::{Classify, Retry};

/// Everything that can go wrong in the MySQL sink.
#[derive(Debug, thiserror::Error)]
pub enum MySinkError {
    /// The URL could not be parsed or lacks the database.
    #[error("invalid mysql sink url {url}: {message}")]
    Url {
        /// URL with the password hidden.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// Connecting or authenticating failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// URL with the password hidden.
        url: String,
        /// Cause.
        #[source]
        source: mysql_async::Error,
    },
    /// Connecting timed out.
    #[error("connecting to {url} timed out")]
    ConnectTimeout {
        /// URL with the password hidden.
        url: String,
    },
    /// A statement failed.
    #[error("{context}: {source}")]
    Sql {
        /// What was being done (table, operation, positions).
        context: String,
        /// Cause.
        #[source]
        source: mysql_async::Error,
    },
    /// The target table does not exist.
    #[error(
        "target table {table} does not exist (create it with the source's columns and primary key, \
         or set create_tables = true)"
    )]
    MissingTable {
        /// `` `db`.`table` ``.
        table: String,
    },
    /// The event has a column the target table lacks.
    #[error("target table {table} has no column {column:?} (add the column to the target table)")]
    MissingColumn {
        /// `` `db`.`table` ``.
        table: String,
        /// Column.
        column: String,
    },
    /// A value cannot be converted to the target column's type.
    #[error(
        "table {table}, column {column:?}: cannot convert value {value} to {target_type}: {reason}"
    )]
    Convert {
        /// `` `db`.`table` ``.
        table: String,
        /// Column.
        column: String,
        /// The value (shortened).
        value: String,
        /// Target column type.
        target_type: String,
        /// Why.
        reason: String,
    },
    /// The event lacks what its op needs.
    #[error("table {table}: {message}")]
    BadEvent {
        /// `` `db`.`table` ``.
        table: String,
        /// What is missing.
        message: String,
    },
    /// The task running a pipelined statement ended without a result (panic or abort); the
    /// connection went with it.
    #[error("{context}: the statement's task failed: {message}")]
    Task {
        /// What was being done.
        context: String,
        /// The join error.
        message: String,
    },
    /// Another instance of this sink committed since this one read the offset.
    #[error(
        "tidemark_offsets row of pipeline {pipeline}, sink {sink} was changed by another writer; \
         is this sink running twice?"
    )]
    OffsetConflict {
        /// Pipeline.
        pipeline: String,
        /// Sink.
        sink: String,
    },
}

/// Server error codes worth retrying.
const TRANSIENT_CODES: &[u16] = &[
    1040, // too many connections
    1053, // server shutdown in progress
    1205, // lock wait timeout
    1213, // deadlock
    1317, // query interrupted
    1927, // connection killed (MariaDB)
    2006, // server has gone away
    2013, // lost connection
    3118, // account locked (MySQL)
    4031, // disconnected by the server (inactivity)
    4151, // account locked (MariaDB)
];

fn classify_my(e: &mysql_async::Error) -> Retry {
    match e {
        mysql_async::Error::Server(s) if TRANSIENT_CODES.contains(&s.code) => Retry::Transient,
        // Access denied, unknown database, bad values …
        mysql_async::Error::Server(_) | mysql_async::Error::Url(_) => Retry::Definite,
        mysql_async::Error::Driver(_)
        | mysql_async::Error::Io(_)
        | mysql_async::Error::Other(_) => Retry::Transient,
    }
}

impl Classify for MySinkError {
    fn retry(&self) -> Retry {
        match self {
            MySinkError::Connect { source, .. } | MySinkError::Sql { source, .. } => {
                classify_my(source)
            }
            MySinkError::ConnectTimeout { .. }
            | MySinkError::OffsetConflict { .. }
            | MySinkError::Task { .. } => Retry::Transient,
            MySinkError::Url { .. }
            | MySinkError::MissingTable { .. }
            | MySinkError::MissingColumn { .. }
            | MySinkError::Convert { .. }
            | MySinkError::BadEvent { .. } => Retry::Definite,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            MySinkError::Url { .. } => "config",
            MySinkError::Connect { source, .. } => match source {
                mysql_async::Error::Server(s) if s.code == 1045 || s.code == 1044 => "auth",
                _ => "connect",
            },
            MySinkError::ConnectTimeout { .. } => "connect",
            MySinkError::Sql { source, .. } => match source {
                mysql_async::Error::Server(s) => match s.code {
                    1048 | 1062 | 1451 | 1452 | 3819 | 4025 => "constraint",
                    1264 | 1265 | 1292 | 1366 | 1406 | 1367 => "data",
                    1146 | 1054 | 1064 | 1049 => "schema",
                    _ => "sql",
                },
                _ => "connection",
            },
            MySinkError::MissingTable { .. } => "missing_table",
            MySinkError::MissingColumn { .. } => "missing_column",
            MySinkError::Convert { .. } => "convert",
            MySinkError::BadEvent { .. } => "bad_event",
            MySinkError::OffsetConflict { .. } => "offset_conflict",
            MySinkError::Task { .. } => "connection",
        }
    }
}

/// Shortens a value for an error message.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}
