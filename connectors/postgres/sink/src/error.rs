//! Errors of the Postgres sink and their retry class.
//!
//! The SQLSTATE decides: connection trouble, shutdowns, serialization failures and resource
//! shortages are transient (reconnect, resume from the stored offset); data exceptions,
//! integrity violations, undefined objects and permission problems are definite (the same
//! event would fail again: halt or dead-letter it).

use tidemark_core::error::{Classify, Retry};
use tokio_postgres::error::SqlState;

/// Everything that can go wrong in the Postgres sink.
#[derive(Debug, thiserror::Error)]
pub enum PgSinkError {
    /// The URL could not be parsed.
    #[error("invalid postgres sink url {url}: {message}")]
    Url {
        /// The URL with its password hidden.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// TLS configuration failed (root certificates).
    #[error("tls setup: {0}")]
    Tls(#[from] tidemark_core::tls::TlsError),
    /// Connecting or authenticating failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL with its password hidden.
        url: String,
        /// Cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement failed.
    #[error("{context}: {}", describe(source))]
    Sql {
        /// What was being done (table, operation, positions).
        context: String,
        /// Cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The target table does not exist.
    #[error(
        "target table {table} does not exist (create it with the source's columns and primary key, \
         or set create_tables = true)"
    )]
    MissingTable {
        /// `"schema"."table"`.
        table: String,
    },
    /// The event has a column the target table lacks.
    #[error("target table {table} has no column {column:?} (add the column to the target table)")]
    MissingColumn {
        /// `"schema"."table"`.
        table: String,
        /// Column name.
        column: String,
    },
    /// A value cannot be converted to the target column's type.
    #[error(
        "table {table}, column {column:?}: cannot convert value {value} to {target_type}: {reason}"
    )]
    Convert {
        /// `"schema"."table"`.
        table: String,
        /// Column.
        column: String,
        /// The value (shortened).
        value: String,
        /// Target type.
        target_type: String,
        /// Why.
        reason: String,
    },
    /// The event lacks what its op needs (an `after` image, a key …).
    #[error("table {table}: {message}")]
    BadEvent {
        /// `"schema"."table"`.
        table: String,
        /// What is missing.
        message: String,
    },
    /// The task running a pipelined statement ended without a result (panic or abort).
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

/// The server's message with detail, hint and the column / constraint it names.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str("; detail: ");
                s.push_str(d);
            }
            if let Some(c) = db.column() {
                s.push_str("; column: ");
                s.push_str(c);
            }
            if let Some(c) = db.constraint() {
                s.push_str("; constraint: ");
                s.push_str(c);
            }
            if let Some(h) = db.hint() {
                s.push_str("; hint: ");
                s.push_str(h);
            }
            s
        }
        None => e.to_string(),
    }
}

/// Retry class of a driver error.
pub(crate) fn classify_pg(e: &tokio_postgres::Error) -> Retry {
    let Some(code) = e.code() else {
        // No SQLSTATE: I/O error, closed connection, protocol trouble.
        return Retry::Transient;
    };
    let c = code.code();
    if c.starts_with("08") // connection exception
        || c.starts_with("53") // insufficient resources
        || c.starts_with("57") // operator intervention: admin shutdown, cannot connect now, canceled
        || c.starts_with("40") // serialization failure, deadlock
        || c.starts_with("58") // system error (I/O)
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE // database not accepting connections
        || *code == SqlState::IN_FAILED_SQL_TRANSACTION
    {
        Retry::Transient
    } else {
        Retry::Definite
    }
}

/// True for SQLSTATE class 22 (data exception: bad input syntax, out of range …).
pub(crate) fn is_data_exception(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("22"))
}

impl Classify for PgSinkError {
    fn retry(&self) -> Retry {
        match self {
            PgSinkError::Connect { source, .. } => match source.code() {
                Some(c) if c.code().starts_with("28") || *c == SqlState::INVALID_CATALOG_NAME => {
                    Retry::Definite
                }
                _ => Retry::Transient,
            },
            PgSinkError::Sql { source, .. } => classify_pg(source),
            PgSinkError::OffsetConflict { .. } | PgSinkError::Task { .. } => Retry::Transient,
            PgSinkError::Url { .. }
            | PgSinkError::Tls(_)
            | PgSinkError::MissingTable { .. }
            | PgSinkError::MissingColumn { .. }
            | PgSinkError::Convert { .. }
            | PgSinkError::BadEvent { .. } => Retry::Definite,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            PgSinkError::Url { .. } | PgSinkError::Tls(_) => "config",
            PgSinkError::Connect { source, .. } => match source.code() {
                Some(c) if c.code().starts_with("28") => "auth",
                _ => "connect",
            },
            PgSinkError::Sql { source, .. } => match source.code().map(|c| c.code()) {
                Some(c) if c.starts_with("23") => "constraint",
                Some(c) if c.starts_with("22") => "data",
                Some(c) if c.starts_with("42") => "schema",
                Some(_) => "sql",
                None => "connection",
            },
            PgSinkError::MissingTable { .. } => "missing_table",
            PgSinkError::MissingColumn { .. } => "missing_column",
            PgSinkError::Convert { .. } => "convert",
            PgSinkError::BadEvent { .. } => "bad_event",
            PgSinkError::OffsetConflict { .. } => "offset_conflict",
            PgSinkError::Task { .. } => "connection",
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
