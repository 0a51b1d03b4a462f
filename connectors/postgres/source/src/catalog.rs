//! Catalog queries on an ordinary SQL connection: which tables are captured,
//! their columns and keys, the publication, the slot.
//!
//! The replication connection only speaks replication commands; everything
//! that reads `pg_catalog` goes through tokio-postgres here, so `check`,
//! `status`, the snapshot and the source all ask the same questions the same
//! way. The publication is kept in step with the `tables` globs: created when
//! missing (`FOR ALL TABLES` for `*`), its table list replaced when the set of
//! matching tables changed (only for the publication tidemark named itself;
//! a user-named publication is used as it is).

use crate::client::SqlError;
use crate::config::{qualified, quote_ident, PgSettings};
use std::collections::BTreeSet;
use tokio_postgres::Client;

/// A table (or partitioned table) that exists in the database.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    /// `pg_class.oid`.
    pub oid: u32,
    /// Schema.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Whether it has a primary key.
    pub has_pk: bool,
    /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: char,
    /// Planner estimate of the row count (0 when never analysed).
    pub estimated_rows: f64,
}

impl TableInfo {
    /// `schema.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// `"schema"."table"`, quoted for SQL.
    pub fn sql_name(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    /// Whether updates and deletes of this table can be captured with a key.
    pub fn has_identity(&self) -> bool {
        match self.replica_identity {
            'f' | 'i' => true,
            'd' => self.has_pk,
            _ => false,
        }
    }
}

/// One column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumn {
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier.
    pub type_modifier: i32,
    /// `format_type(atttypid, atttypmod)`, usable in a cast.
    pub type_name: String,
    /// `NOT NULL`.
    pub not_null: bool,
    /// 1-based position in the primary key, when part of it.
    pub pk_position: Option<i32>,
}

/// Every ordinary and partitioned table outside the system schemas (partitions excluded: the
/// publication publishes them through their root).
pub async fn list_tables(c: &Client) -> Result<Vec<TableInfo>, SqlError> {
    let rows = c
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text,
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                    greatest(c.reltuples, 0)::float8
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
              ORDER BY 2, 3",
            &[],
        )
        .await
        .map_err(|e| SqlError::new("listing tables", e))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let ident: String = r
            .try_get(3)
            .map_err(|e| SqlError::new("listing tables", e))?;
        out.push(TableInfo {
            oid: r
                .try_get(0)
                .map_err(|e| SqlError::new("listing tables", e))?,
            schema: r
                .try_get(1)
                .map_err(|e| SqlError::new("listing tables", e))?,
            name: r
                .try_get(2)
                .map_err(|e| SqlError::new("listing tables", e))?,
            replica_identity: ident.chars().next().unwrap_or('d'),
            has_pk: r
                .try_get(4)
                .map_err(|e| SqlError::new("listing tables", e))?,
            estimated_rows: r
                .try_get(5)
                .map_err(|e| SqlError::new("listing tables", e))?,
        });
    }
    Ok(out)
}

/// The tables the settings' globs select, in a stable order (schema, name).
pub async fn selected_tables(c: &Client, s: &PgSettings) -> Result<Vec<TableInfo>, SqlError> {
    Ok(list_tables(c)
        .await?
        .into_iter()
        .filter(|t| s.selects(&t.schema, &t.name))
        .collect())
}

/// Columns of a table in attribute order, generated columns excluded (pgoutput does not send
/// them either).
pub async fn columns(c: &Client, oid: u32) -> Result<Vec<CatalogColumn>, SqlError> {
    let rows = c
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod),
                    a.attnotnull, array_position(i.indkey::int2[], a.attnum)
               FROM pg_attribute a
               LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
              ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(|e| SqlError::new(format!("reading columns of table oid {oid}"), e))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let ctx = || format!("reading columns of table oid {oid}");
        out.push(CatalogColumn {
            name: r.try_get(0).map_err(|e| SqlError::new(ctx(), e))?,
            type_oid: r.try_get(1).map_err(|e| SqlError::new(ctx(), e))?,
            type_modifier: r.try_get(2).map_err(|e| SqlError::new(ctx(), e))?,
            type_name: r.try_get(3).map_err(|e| SqlError::new(ctx(), e))?,
            not_null: r.try_get(4).map_err(|e| SqlError::new(ctx(), e))?,
            pk_position: r.try_get(5).map_err(|e| SqlError::new(ctx(), e))?,
        });
    }
    Ok(out)
}

/// A publication as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationInfo {
    /// `FOR ALL TABLES`.
    pub all_tables: bool,
    /// Published tables as `(schema, table)`.
    pub tables: BTreeSet<(String, String)>,
    /// Whether inserts, updates, deletes and truncates are all published.
    pub all_actions: bool,
}

/// Reads publication `name`, `None` when it does not exist.
pub async fn publication(c: &Client, name: &str) -> Result<Option<PublicationInfo>, SqlError> {
    let ctx = || format!("reading publication {name:?}");
    let Some(row) = c
        .query_opt(
            "SELECT puballtables, pubinsert AND pubupdate AND pubdelete AND pubtruncate
               FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| SqlError::new(ctx(), e))?
    else {
        return Ok(None);
    };
    let rows = c
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| SqlError::new(ctx(), e))?;
    let mut tables = BTreeSet::new();
    for r in rows {
        tables.insert((
            r.try_get::<_, String>(0)
                .map_err(|e| SqlError::new(ctx(), e))?,
            r.try_get::<_, String>(1)
                .map_err(|e| SqlError::new(ctx(), e))?,
        ));
    }
    Ok(Some(PublicationInfo {
        all_tables: row.try_get(0).map_err(|e| SqlError::new(ctx(), e))?,
        all_actions: row.try_get(1).map_err(|e| SqlError::new(ctx(), e))?,
        tables,
    }))
}

/// What [`ensure_publication`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationChange {
    /// It already matched.
    Unchanged,
    /// Created.
    Created,
    /// Its table list was replaced.
    Updated,
    /// A user-named publication that lacks some selected tables (left alone).
    Foreign,
}

const PUB_OPTIONS: &str =
    "WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)";

fn table_list(tables: &[TableInfo]) -> String {
    tables
        .iter()
        .map(TableInfo::sql_name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Creates or updates the publication so it publishes exactly `tables` (or all tables when the
/// globs say `*`). Needs an empty `tables` to be refused by the caller.
pub async fn ensure_publication(
    c: &Client,
    s: &PgSettings,
    tables: &[TableInfo],
) -> Result<PublicationChange, SqlError> {
    let name = quote_ident(&s.publication);
    let existing = publication(c, &s.publication).await?;
    let ctx = |what: &str| format!("{what} publication {:?}", s.publication);
    let create = if s.all_tables() {
        format!("CREATE PUBLICATION {name} FOR ALL TABLES {PUB_OPTIONS}")
    } else {
        format!(
            "CREATE PUBLICATION {name} FOR TABLE {} {PUB_OPTIONS}",
            table_list(tables)
        )
    };
    let Some(existing) = existing else {
        c.batch_execute(&create)
            .await
            .map_err(|e| SqlError::new(ctx("creating"), e))?;
        return Ok(PublicationChange::Created);
    };
    let wanted: BTreeSet<(String, String)> = tables
        .iter()
        .map(|t| (t.schema.clone(), t.name.clone()))
        .collect();
    if !s.publication_managed {
        let covers = existing.all_tables || wanted.is_subset(&existing.tables);
        return Ok(if covers {
            PublicationChange::Unchanged
        } else {
            PublicationChange::Foreign
        });
    }
    if s.all_tables() {
        if existing.all_tables && existing.all_actions {
            return Ok(PublicationChange::Unchanged);
        }
        c.batch_execute(&format!("DROP PUBLICATION {name}; {create}"))
            .await
            .map_err(|e| SqlError::new(ctx("re-creating"), e))?;
        return Ok(PublicationChange::Updated);
    }
    if existing.all_tables || !existing.all_actions {
        c.batch_execute(&format!("BEGIN; DROP PUBLICATION {name}; {create}; COMMIT"))
            .await
            .map_err(|e| SqlError::new(ctx("re-creating"), e))?;
        return Ok(PublicationChange::Updated);
    }
    if existing.tables == wanted {
        return Ok(PublicationChange::Unchanged);
    }
    c.batch_execute(&format!(
        "ALTER PUBLICATION {name} SET TABLE {}",
        table_list(tables)
    ))
    .await
    .map_err(|e| SqlError::new(ctx("updating"), e))?;
    Ok(PublicationChange::Updated)
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotInfo {
    /// Output plugin (`pgoutput`), `None` for physical slots.
    pub plugin: Option<String>,
    /// Database of a logical slot.
    pub database: Option<String>,
    /// Whether a connection streams from it now.
    pub active: bool,
    /// Backend pid of that connection.
    pub active_pid: Option<i32>,
    /// Oldest WAL the slot needs.
    pub restart_lsn: Option<String>,
    /// Position the consumer confirmed.
    pub confirmed_flush_lsn: Option<String>,
    /// `reserved`, `extended`, `unreserved`, `lost`.
    pub wal_status: Option<String>,
    /// Bytes of WAL retained for the slot (current LSN − restart_lsn).
    pub retained_bytes: Option<f64>,
    /// Bytes not yet confirmed (current LSN − confirmed_flush_lsn).
    pub lag_bytes: Option<f64>,
}

/// Reads slot `name`, `None` when it does not exist.
pub async fn slot(c: &Client, name: &str) -> Result<Option<SlotInfo>, SqlError> {
    let row = c
        .query_opt(
            "SELECT plugin::text, database::text, active, active_pid, restart_lsn::text,
                    confirmed_flush_lsn::text, wal_status,
                    CASE WHEN pg_is_in_recovery() THEN NULL
                         ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8 END,
                    CASE WHEN pg_is_in_recovery() THEN NULL
                         ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8 END
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(|e| SqlError::new(format!("reading replication slot {name:?}"), e))?;
    let Some(r) = row else { return Ok(None) };
    let ctx = || format!("reading replication slot {name:?}");
    Ok(Some(SlotInfo {
        plugin: r.try_get(0).map_err(|e| SqlError::new(ctx(), e))?,
        database: r.try_get(1).map_err(|e| SqlError::new(ctx(), e))?,
        active: r.try_get(2).map_err(|e| SqlError::new(ctx(), e))?,
        active_pid: r.try_get(3).map_err(|e| SqlError::new(ctx(), e))?,
        restart_lsn: r.try_get(4).map_err(|e| SqlError::new(ctx(), e))?,
        confirmed_flush_lsn: r.try_get(5).map_err(|e| SqlError::new(ctx(), e))?,
        wal_status: r.try_get(6).map_err(|e| SqlError::new(ctx(), e))?,
        retained_bytes: r.try_get(7).map_err(|e| SqlError::new(ctx(), e))?,
        lag_bytes: r.try_get(8).map_err(|e| SqlError::new(ctx(), e))?,
    }))
}

/// Backends with an open transaction that holds an xid: slot creation waits for each of them.
pub async fn blocking_transactions(c: &Client) -> Result<Vec<String>, SqlError> {
    let rows = c
        .query(
            "SELECT format('pid %s (database %s, user %s, %s, open for %s s): %s', pid, datname, usename,
                           state, round(extract(epoch FROM now() - xact_start))::text, left(query, 60))
               FROM pg_stat_activity
              WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
              ORDER BY xact_start LIMIT 10",
            &[],
        )
        .await
        .map_err(|e| SqlError::new("listing open transactions", e))?;
    rows.into_iter()
        .map(|r| {
            r.try_get(0)
                .map_err(|e| SqlError::new("listing open transactions", e))
        })
        .collect()
}
