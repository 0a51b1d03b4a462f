//! MySQL / MariaDB sink: keeps a target database equal to the selected source tables.
//!
//! The shared runtime ([`tidemark_core::sink::run`]) consumes the pipeline's stream, skips
//! duplicates with the position guard and groups whole source transactions; this crate is the
//! engine half ([`MysqlSink`]): every table goes to the database named in the sink's URL
//! (table = source table, whatever the source schema), values are converted to the target
//! column types read from information_schema, and changes are applied with multi-row
//! statements inside one transaction together with the sink's row in `tidemark_offsets`.
//!
//! Files: [`client`] (URL, TLS, session settings, identifier quoting), [`catalog`] (target
//! table descriptions), [`convert`] (canonical JSON → SQL literals), [`writer`] (the
//! transaction and its statements), [`error`] (retry classes).

mod catalog;
mod client;
mod convert;
mod error;
mod writer;

pub use error::MySinkError;
pub use writer::MysqlSink;

use mysql_async::prelude::Queryable as _;
use tidemark_core::check::{Probe, SinkStatus};
use tidemark_core::config::{PipelineConfig, SinkConfig};
use tidemark_core::error::{display_chain, Failure};
use tidemark_core::sink::{SinkContext, OFFSETS_TABLE};

/// Runs the sink until shutdown (see [`tidemark_core::sink::run`]).
pub async fn run(ctx: SinkContext) -> Result<(), Failure> {
    tidemark_core::sink::run::<MysqlSink>(ctx).await
}

/// What `tidemark status` shows for this sink: its `tidemark_offsets` row.
pub async fn status(sink: &SinkConfig, pipeline: &str) -> Result<SinkStatus, Failure> {
    let (mut conn, db) = client::connect(&sink.url)
        .await
        .map_err(Failure::from_err)?;
    let table = client::qualified(&db, OFFSETS_TABLE);
    let exists: Option<mysql_async::Row> = conn
        .exec_first(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (&db, OFFSETS_TABLE),
        )
        .await
        .map_err(|source| {
            Failure::from_err(MySinkError::Sql {
                context: format!("looking for {table}"),
                source,
            })
        })?;
    if exists.is_none() {
        let _ = conn.disconnect().await;
        return Ok(SinkStatus::default());
    }
    let sql = format!(
        "SELECT pos, stream_seq, DATE_FORMAT(updated_at, '%Y-%m-%dT%H:%i:%s.%fZ') FROM {table} \
         WHERE pipeline = ? AND sink = ?"
    );
    let row: Option<mysql_async::Row> = conn
        .exec_first(sql, (pipeline, &sink.name))
        .await
        .map_err(|source| {
            Failure::from_err(MySinkError::Sql {
                context: format!("reading {table}"),
                source,
            })
        })?;
    let _ = conn.disconnect().await;
    Ok(match row {
        None => SinkStatus::default(),
        Some(r) => SinkStatus {
            applied_pos: r
                .get_opt::<Option<String>, usize>(0)
                .and_then(Result::ok)
                .flatten(),
            applied_stream_seq: r
                .get_opt::<Option<u64>, usize>(1)
                .and_then(Result::ok)
                .flatten(),
            applied_at: r
                .get_opt::<Option<String>, usize>(2)
                .and_then(Result::ok)
                .flatten(),
        },
    })
}

/// Parses a sink URL exactly as [`run`] will, without connecting: `check --offline`.
pub fn validate_url(url: &str) -> Result<(), MySinkError> {
    client::options(url).map(drop)
}

/// Probes for `tidemark check`: reachable and authenticated, the database exists,
/// `tidemark_offsets` can be created, and the target tables of the source's exact (glob-free)
/// table names exist.
pub async fn check(sink: &SinkConfig, pipeline: &PipelineConfig) -> Vec<Probe> {
    let what = |s: &str| format!("sink {}/{} (mysql): {s}", pipeline.name, sink.name);
    let target = tidemark_core::redact::url(&sink.url);
    let mut probes = Vec::new();
    let (mut conn, db) = match client::connect(&sink.url).await {
        Ok(c) => c,
        Err(e) => {
            probes.push(Probe::fail(
                what("connect"),
                format!("{target}: {}", display_chain(&e)),
                "check the sink url (host, port, user, password, database, ssl-mode); the database \
                 must exist (CREATE DATABASE …) and the user needs SELECT, INSERT, UPDATE, DELETE, \
                 CREATE on it",
            ));
            return probes;
        }
    };
    probes.push(Probe::ok(what("connect"), target));
    probes.push(offsets_probe(&mut conn, &db, &pipeline.name, &sink.name, &what).await);
    for glob in &pipeline.source.tables {
        if glob.contains('*') {
            continue;
        }
        let Some((src_schema, table)) = glob.split_once('.') else {
            continue;
        };
        if !tidemark_core::config::table_selected(&sink.tables, src_schema, table) {
            continue;
        }
        let name = client::qualified(&db, table);
        match catalog::load(&mut conn, &db, table).await {
            Ok(Some(t)) if t.pk.is_empty() => probes.push(Probe::ok(
                what(&format!("table {name}")),
                "exists (no primary key: updates and deletes match whole rows)",
            )),
            Ok(Some(_)) => probes.push(Probe::ok(what(&format!("table {name}")), "exists")),
            Ok(None) if sink.create_tables => probes.push(Probe::ok(
                what(&format!("table {name}")),
                "missing; created from the first event (create_tables = true)",
            )),
            Ok(None) => probes.push(Probe::fail(
                what(&format!("table {name}")),
                "does not exist",
                format!("create {name} with the source's columns and primary key, or set create_tables = true"),
            )),
            Err(e) => probes.push(Probe::fail(
                what(&format!("table {name}")),
                display_chain(&e),
                "grant the sink's user SELECT on information_schema and the database",
            )),
        }
    }
    let _ = conn.disconnect().await;
    probes
}

/// The sink's `tidemark_offsets` row when the table exists; otherwise a note that the sink
/// creates it at start. Only reads.
async fn offsets_probe(
    conn: &mut mysql_async::Conn,
    db: &str,
    pipeline: &str,
    sink: &str,
    what: &impl Fn(&str) -> String,
) -> Probe {
    let exists: Result<Option<mysql_async::Row>, _> = conn
        .exec_first(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (db, OFFSETS_TABLE),
        )
        .await;
    let grant = format!("GRANT CREATE ON {}.* TO <user>", client::quote_ident(db));
    match exists {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Probe::ok(
                what(OFFSETS_TABLE),
                format!("missing; created in database {db} at start (needs CREATE there)"),
            )
        }
        Err(e) => return Probe::fail(what(OFFSETS_TABLE), display_chain(&e), grant),
    }
    match writer::read_offset(conn, db, pipeline, sink, false).await {
        Ok(Some(o)) => Probe::ok(
            what(OFFSETS_TABLE),
            format!(
                "present; applied up to pos {} (stream seq {})",
                o.pos.as_deref().unwrap_or("-"),
                o.stream_seq
            ),
        ),
        Ok(None) => Probe::ok(what(OFFSETS_TABLE), "present; nothing applied yet"),
        Err(e) => Probe::fail(
            what(OFFSETS_TABLE),
            display_chain(&e),
            format!(
                "GRANT SELECT, INSERT, UPDATE ON {} TO <user>",
                client::qualified(db, OFFSETS_TABLE)
            ),
        ),
    }
}
