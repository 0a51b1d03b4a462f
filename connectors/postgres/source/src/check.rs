//! `tidemark check` for a Postgres source: every prerequisite of logical
//! replication, probed on the live server, each failure with its fix.
//!
//! The probes run in dependency order and stop early only when nothing after
//! could be answered (no connection). They only read: nothing is created, so
//! `check` is safe against production.

use crate::catalog;
use crate::client::{sql_connect, ReplicationClient};
use crate::config::{qualified, quote_ident, PgSettings};
use tidemark_core::check::Probe;
use tidemark_core::config::PipelineConfig;
use tokio_postgres::Client;

/// Probes every prerequisite of the pipeline's Postgres source.
pub async fn check(p: &PipelineConfig) -> Vec<Probe> {
    let mut out = Vec::new();
    let settings = match PgSettings::from_pipeline(p) {
        Ok(s) => s,
        Err(e) => {
            out.push(Probe::fail(
                "postgres source settings",
                e.to_string(),
                "fix [pipelines.source] url / slot / publication",
            ));
            return out;
        }
    };
    let what = |w: &str| format!("postgres {w} ({})", settings.pipeline);
    let sql = match sql_connect(&settings).await {
        Ok(c) => {
            out.push(Probe::ok(
                what("connection"),
                format!("connected to {}", settings.redacted_url),
            ));
            c
        }
        Err(e) => {
            let auth = e.sqlstate().is_some_and(|c| c.starts_with("28"));
            out.push(if auth {
                Probe::fail(
                    what("authentication"),
                    e.to_string(),
                    format!(
                        "check the user and password in the url, and that pg_hba.conf allows {:?} to connect \
                         to database {:?} from this host",
                        settings.user, settings.dbname
                    ),
                )
            } else {
                Probe::fail(
                    what("connection"),
                    e.to_string(),
                    format!(
                        "make sure postgres listens on {}:{} (listen_addresses, firewall) and database {:?} exists",
                        settings.host, settings.port, settings.dbname
                    ),
                )
            });
            return out;
        }
    };
    replication_connection(&settings, &mut out, &what).await;
    server_settings(&sql, &settings, &mut out, &what).await;
    tables_and_publication(&sql, &settings, &mut out, &what).await;
    slot_state(&sql, &settings, &mut out, &what).await;
    out
}

async fn replication_connection(
    s: &PgSettings,
    out: &mut Vec<Probe>,
    what: &impl Fn(&str) -> String,
) {
    match ReplicationClient::connect(s).await {
        Ok(mut c) => {
            match c.identify_system().await {
                Ok(sys) => out.push(Probe::ok(
                    what("replication connection"),
                    format!("system {} timeline {}", sys.system_id, sys.timeline),
                )),
                Err(e) => out.push(Probe::fail(
                    what("replication connection"),
                    e.to_string(),
                    "the server rejected IDENTIFY_SYSTEM; is it a PostgreSQL ≥ 10 primary?",
                )),
            }
            c.close().await;
        }
        Err(e) => out.push(Probe::fail(
            what("replication connection"),
            e.to_string(),
            format!(
                "grant the role replication rights (ALTER ROLE {} WITH REPLICATION) and allow it in pg_hba.conf \
                 for database {:?}",
                quote_ident(&s.user),
                s.dbname
            ),
        )),
    }
}

async fn server_settings(
    sql: &Client,
    s: &PgSettings,
    out: &mut Vec<Probe>,
    what: &impl Fn(&str) -> String,
) {
    let row = sql
        .query_one(
            "SELECT current_setting('wal_level'),
                    current_setting('max_replication_slots')::int,
                    (SELECT count(*)::int FROM pg_replication_slots),
                    current_setting('max_wal_senders')::int,
                    (SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'walsender'),
                    r.rolsuper, r.rolreplication,
                    has_database_privilege(current_database(), 'CREATE'),
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)
               FROM pg_roles r WHERE r.rolname = current_user",
            &[&s.slot],
        )
        .await;
    let row = match row {
        Ok(r) => r,
        Err(e) => {
            out.push(Probe::fail(
                what("server settings"),
                e.to_string(),
                "grant the role access to pg_settings",
            ));
            return;
        }
    };
    let get_s = |i: usize| row.try_get::<_, String>(i).unwrap_or_default();
    let get_i = |i: usize| row.try_get::<_, i32>(i).unwrap_or_default();
    let get_b = |i: usize| row.try_get::<_, bool>(i).unwrap_or_default();
    let wal_level = get_s(0);
    out.push(if wal_level == "logical" {
        Probe::ok(what("wal_level"), "logical")
    } else {
        Probe::fail(
            what("wal_level"),
            format!("wal_level is {wal_level}"),
            "ALTER SYSTEM SET wal_level = logical; then restart postgres",
        )
    });
    let (superuser, replication) = (get_b(5), get_b(6));
    out.push(if superuser || replication {
        Probe::ok(
            what("replication privilege"),
            if superuser {
                "superuser"
            } else {
                "role has REPLICATION"
            },
        )
    } else {
        Probe::fail(
            what("replication privilege"),
            format!("role {:?} has neither REPLICATION nor SUPERUSER", s.user),
            format!("ALTER ROLE {} WITH REPLICATION", quote_ident(&s.user)),
        )
    });
    let (max_slots, used_slots, ours) = (get_i(1), get_i(2), get_b(8));
    out.push(if ours || used_slots < max_slots {
        Probe::ok(
            what("replication slots"),
            format!("{used_slots} of max_replication_slots = {max_slots} in use"),
        )
    } else {
        Probe::fail(
            what("replication slots"),
            format!("all {max_slots} replication slots are in use"),
            "drop unused slots (SELECT pg_drop_replication_slot(slot_name) …) or ALTER SYSTEM SET \
             max_replication_slots = <more>; then restart postgres",
        )
    });
    let (max_senders, used_senders) = (get_i(3), get_i(4));
    out.push(if used_senders < max_senders {
        Probe::ok(
            what("wal senders"),
            format!("{used_senders} of max_wal_senders = {max_senders} in use"),
        )
    } else {
        Probe::fail(
            what("wal senders"),
            format!("all {max_senders} wal senders are in use"),
            "ALTER SYSTEM SET max_wal_senders = <more>; then restart postgres",
        )
    });
    if !s.all_tables() && !superuser && !get_b(7) {
        out.push(Probe::fail(
            what("publication privilege"),
            format!(
                "role {:?} may not create publications in database {:?}",
                s.user, s.dbname
            ),
            format!(
                "GRANT CREATE ON DATABASE {} TO {}, or create publication {} yourself",
                quote_ident(&s.dbname),
                quote_ident(&s.user),
                quote_ident(&s.publication)
            ),
        ));
    }
}

async fn tables_and_publication(
    sql: &Client,
    s: &PgSettings,
    out: &mut Vec<Probe>,
    what: &impl Fn(&str) -> String,
) {
    let tables = match catalog::selected_tables(sql, s).await {
        Ok(t) => t,
        Err(e) => {
            out.push(Probe::fail(
                what("tables"),
                e.to_string(),
                "grant the role access to pg_class",
            ));
            return;
        }
    };
    if tables.is_empty() {
        out.push(Probe::fail(
            what("tables"),
            format!("no table of database {:?} matches {:?}", s.dbname, s.tables),
            "fix the tables globs (schema.table, * matches anything) or create the tables",
        ));
        return;
    }
    out.push(Probe::ok(
        what("tables"),
        format!(
            "{} table(s) selected: {}",
            tables.len(),
            tables
                .iter()
                .take(20)
                .map(|t| t.qualified_name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    for t in &tables {
        if !t.has_identity() {
            out.push(Probe::fail(
                what(&format!("table {}", t.qualified_name())),
                "no primary key and no replica identity: postgres rejects its UPDATEs and DELETEs while it is published",
                format!(
                    "ALTER TABLE {} ADD PRIMARY KEY (…), or ALTER TABLE {} REPLICA IDENTITY FULL",
                    t.sql_name(),
                    t.sql_name()
                ),
            ));
        }
    }
    let privileges = sql
        .query(
            "SELECT c.oid, has_table_privilege(c.oid, 'SELECT'), pg_has_role(c.relowner, 'USAGE')
               FROM pg_class c WHERE c.oid = ANY($1)",
            &[&tables.iter().map(|t| t.oid).collect::<Vec<u32>>()],
        )
        .await;
    let superuser = sql
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .ok()
        .and_then(|r| r.try_get::<_, bool>(0).ok())
        .unwrap_or(false);
    let mut not_owned = Vec::new();
    if let Ok(rows) = privileges {
        for r in rows {
            let oid: u32 = r.try_get(0).unwrap_or_default();
            let Some(t) = tables.iter().find(|t| t.oid == oid) else {
                continue;
            };
            if !r.try_get::<_, bool>(1).unwrap_or(true) {
                out.push(Probe::fail(
                    what(&format!("table {}", t.qualified_name())),
                    "no SELECT privilege (the snapshot reads it)",
                    format!(
                        "GRANT SELECT ON {} TO {}",
                        t.sql_name(),
                        quote_ident(&s.user)
                    ),
                ));
            }
            if !r.try_get::<_, bool>(2).unwrap_or(true) {
                not_owned.push(qualified(&t.schema, &t.name));
            }
        }
    }
    match catalog::publication(sql, &s.publication).await {
        Ok(Some(p)) => {
            let missing: Vec<String> = tables
                .iter()
                .filter(|t| {
                    !p.all_tables && !p.tables.contains(&(t.schema.clone(), t.name.clone()))
                })
                .map(|t| t.qualified_name())
                .collect();
            if missing.is_empty() || s.publication_managed {
                out.push(Probe::ok(
                    what("publication"),
                    format!(
                        "{} exists{}{}",
                        s.publication,
                        if p.all_tables {
                            " (FOR ALL TABLES)"
                        } else {
                            ""
                        },
                        if missing.is_empty() {
                            ""
                        } else {
                            "; its table list will be updated at start"
                        }
                    ),
                ));
            } else {
                out.push(Probe::fail(
                    what("publication"),
                    format!("{} does not publish {}", s.publication, missing.join(", ")),
                    format!(
                        "ALTER PUBLICATION {} ADD TABLE …",
                        quote_ident(&s.publication)
                    ),
                ));
            }
        }
        Ok(None) => {
            if s.all_tables() && !superuser {
                out.push(Probe::fail(
                    what("publication"),
                    format!("{} is missing and FOR ALL TABLES needs a superuser", s.publication),
                    format!(
                        "as a superuser: CREATE PUBLICATION {} FOR ALL TABLES; or list the tables instead of *",
                        quote_ident(&s.publication)
                    ),
                ));
            } else if !superuser && !not_owned.is_empty() {
                out.push(Probe::fail(
                    what("publication"),
                    format!(
                        "{} is missing and the role does not own {}",
                        s.publication,
                        not_owned.join(", ")
                    ),
                    format!(
                        "as the tables' owner: CREATE PUBLICATION {} FOR TABLE {}",
                        quote_ident(&s.publication),
                        tables
                            .iter()
                            .map(|t| t.sql_name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            } else {
                out.push(Probe::ok(
                    what("publication"),
                    format!("{} will be created at start", s.publication),
                ));
            }
        }
        Err(e) => out.push(Probe::fail(
            what("publication"),
            e.to_string(),
            "grant access to pg_publication",
        )),
    }
}

async fn slot_state(
    sql: &Client,
    s: &PgSettings,
    out: &mut Vec<Probe>,
    what: &impl Fn(&str) -> String,
) {
    match catalog::slot(sql, &s.slot).await {
        Ok(None) => out.push(Probe::ok(
            what("slot"),
            format!("{} will be created at start", s.slot),
        )),
        Ok(Some(info)) => {
            let detail = format!(
                "{}: {}, restart_lsn {}, confirmed {}, WAL retained {}",
                s.slot,
                if info.active {
                    format!("active (pid {})", info.active_pid.unwrap_or_default())
                } else {
                    "inactive".to_string()
                },
                info.restart_lsn.as_deref().unwrap_or("-"),
                info.confirmed_flush_lsn.as_deref().unwrap_or("-"),
                info.retained_bytes
                    .map(|b| format!("{:.1} MiB", b / 1048576.0))
                    .unwrap_or_else(|| "-".into()),
            );
            if info.plugin.as_deref() != Some("pgoutput")
                || info.database.as_deref() != Some(s.dbname.as_str())
            {
                out.push(Probe::fail(
                    what("slot"),
                    format!(
                        "{detail}; but it is not a pgoutput slot of database {:?}",
                        s.dbname
                    ),
                    "choose another slot name in [pipelines.source] slot",
                ));
            } else if info.wal_status.as_deref() == Some("lost") {
                out.push(Probe::fail(
                    what("slot"),
                    format!("{detail}; its WAL was removed (wal_status = lost)"),
                    format!(
                        "SELECT pg_drop_replication_slot({}); then reset the pipeline's checkpoint to take a new \
                         snapshot",
                        crate::config::quote_literal(&s.slot)
                    ),
                ));
            } else {
                out.push(Probe::ok(what("slot"), detail));
            }
        }
        Err(e) => out.push(Probe::fail(
            what("slot"),
            e.to_string(),
            "grant access to pg_replication_slots",
        )),
    }
}
