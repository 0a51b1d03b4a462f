//! Postgres sink: keeps a target Postgres database equal to the selected source tables.
//!
//! The shared runtime ([`tidemark_core::sink::run`]) consumes the pipeline's stream, skips
//! duplicates with the position guard and groups whole source transactions; this crate is the
//! engine half ([`PostgresSink`], a [`SinkWriter`](tidemark_core::sink::SinkWriter)): it maps
//! envelopes to tables (`sink.schema` or the source schema, table = source table), converts
//! canonical values to the target column types read from pg_catalog, and applies them with
//! multi-row `UNNEST` statements inside one target transaction, together with the sink's row in
//! `tidemark_offsets`.
//!
//! Files: [`client`] (URL, TLS, session settings, identifier quoting), [`catalog`] (target
//! table descriptions), [`convert`] (canonical JSON → type input text), [`writer`] (the
//! transaction and its statements), [`error`] (retry classes).

mod catalog;
mod client;
mod convert;
mod error;
mod writer;

pub use error::PgSinkError;
pub use writer::PostgresSink;

use tidemark_core::check::{Probe, SinkStatus};
use tidemark_core::config::{PipelineConfig, SinkConfig};
use tidemark_core::error::Failure;
use tidemark_core::sink::{SinkContext, OFFSETS_TABLE};

/// Runs the sink until shutdown (see [`tidemark_core::sink::run`]).
pub async fn run(ctx: SinkContext) -> Result<(), Failure> {
    tidemark_core::sink::run::<PostgresSink>(ctx).await
}

/// Parses a sink URL exactly as [`run`] will, without connecting: `check --offline`.
pub fn validate_url(url: &str) -> Result<(), PgSinkError> {
    client::parse(url).map(drop)
}

fn offsets_schema(sink: &SinkConfig) -> String {
    sink.schema.clone().unwrap_or_else(|| "public".to_owned())
}

/// What `tidemark status` shows for this sink: its `tidemark_offsets` row.
pub async fn status(sink: &SinkConfig, pipeline: &str) -> Result<SinkStatus, Failure> {
    let conn = client::connect(&sink.url, "tidemark status")
        .await
        .map_err(Failure::from_err)?;
    let schema = offsets_schema(sink);
    let table = client::qualified(&schema, OFFSETS_TABLE);
    let exists = conn
        .client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(|source| {
            Failure::from_err(PgSinkError::Sql {
                context: format!("looking for {table}"),
                source,
            })
        })?;
    if !exists.get::<_, bool>(0) {
        return Ok(SinkStatus::default());
    }
    let sql = format!(
        "SELECT pos, stream_seq, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
         FROM {table} WHERE pipeline = $1 AND sink = $2"
    );
    let row = conn
        .client
        .query_opt(sql.as_str(), &[&pipeline, &sink.name])
        .await
        .map_err(|source| {
            Failure::from_err(PgSinkError::Sql {
                context: format!("reading {table}"),
                source,
            })
        })?;
    Ok(match row {
        None => SinkStatus::default(),
        Some(r) => SinkStatus {
            applied_pos: r.try_get(0).ok().flatten(),
            applied_stream_seq: r
                .try_get::<_, i64>(1)
                .ok()
                .and_then(|s| u64::try_from(s).ok()),
            applied_at: r.try_get(2).ok().flatten(),
        },
    })
}

/// Probes for `tidemark check`: reachable and authenticated, `tidemark_offsets` exists or can
/// be created, and the target tables of the source's exact (glob-free) table names exist.
/// Read-only: nothing is created or written.
pub async fn check(sink: &SinkConfig, pipeline: &PipelineConfig) -> Vec<Probe> {
    let what = |s: &str| format!("sink {}/{} (postgres): {s}", pipeline.name, sink.name);
    let target = tidemark_core::redact::url(&sink.url);
    let mut probes = Vec::new();
    let conn = match client::connect(&sink.url, "tidemark check").await {
        Ok(c) => c,
        Err(e) => {
            probes.push(Probe::fail(
                what("connect"),
                format!("{target}: {}", tidemark_core::error::display_chain(&e)),
                "check the sink url (host, port, database, user, password, sslmode) and that the \
                 server accepts connections from this host (pg_hba.conf)",
            ));
            return probes;
        }
    };
    probes.push(Probe::ok(what("connect"), target));
    probes.push(
        offsets_probe(
            &conn,
            &offsets_schema(sink),
            &pipeline.name,
            &sink.name,
            &what,
        )
        .await,
    );
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
        let schema = sink.schema.clone().unwrap_or_else(|| src_schema.to_owned());
        let name = client::qualified(&schema, table);
        match catalog::load(&conn.client, &schema, table).await {
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
                tidemark_core::error::display_chain(&e),
                "grant the sink's user access to the target schema",
            )),
        }
    }
    probes
}

/// The sink's `tidemark_offsets` row when the table exists; otherwise whether the user may
/// create it (the sink does that at start). Only reads.
async fn offsets_probe(
    conn: &client::Connection,
    schema: &str,
    pipeline: &str,
    sink: &str,
    what: &impl Fn(&str) -> String,
) -> Probe {
    let table = client::qualified(schema, OFFSETS_TABLE);
    let facts = conn
        .client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL,
                    COALESCE(has_schema_privilege(n.oid, 'CREATE'),
                             has_database_privilege(current_database(), 'CREATE'))
               FROM (SELECT 1) AS one LEFT JOIN pg_namespace n ON n.nspname = $2",
            &[&table, &schema],
        )
        .await;
    let grant = format!(
        "grant the sink's user CREATE on schema {schema} (GRANT CREATE ON SCHEMA {} TO <user>)",
        client::quote_ident(schema)
    );
    let (exists, can_create) = match facts {
        Ok(row) => (
            row.try_get::<_, bool>(0).unwrap_or(false),
            row.try_get::<_, bool>(1).unwrap_or(false),
        ),
        Err(e) => {
            return Probe::fail(
                what(OFFSETS_TABLE),
                tidemark_core::error::display_chain(&e),
                grant,
            )
        }
    };
    if !exists {
        return if can_create {
            Probe::ok(
                what(OFFSETS_TABLE),
                format!("missing; created in schema {schema} at start"),
            )
        } else {
            Probe::fail(
                what(OFFSETS_TABLE),
                format!("missing, and the sink's user may not create it in schema {schema}"),
                grant,
            )
        };
    }
    match writer::read_offset(&conn.client, schema, pipeline, sink, false).await {
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
            tidemark_core::error::display_chain(&e),
            format!("grant the sink's user SELECT, INSERT, UPDATE on {table}"),
        ),
    }
}
