//! Preflight: can this server feed a CDC pipeline, and if not, what exactly to change.
//!
//! The rules are pure functions over what the server reports (global
//! variables, `SHOW GRANTS`, the selected tables), so every bad value is unit
//! tested without touching the shared server's settings; [`check`] only
//! gathers the facts. The same rules run at source start, where any failure
//! is a definite error listing every fix.

use crate::binlog::Flavour;
use crate::client::{self, ServerInfo};
use crate::convert::TableInfo;
use crate::runtime::Settings;
use std::collections::BTreeMap;
use tidemark_core::check::Probe;
use tidemark_core::config::PipelineConfig;

fn on(v: &str) -> bool {
    matches!(v.to_ascii_uppercase().as_str(), "ON" | "1" | "TRUE")
}

/// Evaluates the server variables (and our replica id against the server's own id).
pub fn evaluate_settings(
    flavour: Flavour,
    vars: &BTreeMap<String, String>,
    our_server_id: u32,
) -> Vec<Probe> {
    let get = |k: &str| vars.get(k).map(String::as_str);
    let mut out = Vec::new();
    let mut expect = |name: &str, want: &str, fix: &str| {
        let what = format!("{name} = {want}");
        match get(name) {
            Some(v)
                if v.eq_ignore_ascii_case(want)
                    || (want == "ON" && on(v))
                    || (want == "OFF" && !on(v) && !v.is_empty()) =>
            {
                out.push(Probe::ok(what, v.to_owned()))
            }
            Some(v) => out.push(Probe::fail(what, format!("is {v}"), fix)),
            None => out.push(Probe::fail(
                what,
                "variable not present (server too old?)",
                format!("{fix} (needs MariaDB 10.5+ or MySQL 8.0+)"),
            )),
        }
    };
    expect(
        "log_bin",
        "ON",
        "enable the binary log: set log_bin (e.g. log_bin = mysql-bin) in the server configuration and restart",
    );
    expect(
        "binlog_format",
        "ROW",
        "SET GLOBAL binlog_format = 'ROW'; and binlog_format = ROW in the server configuration",
    );
    expect(
        "binlog_row_image",
        "FULL",
        "SET GLOBAL binlog_row_image = 'FULL'; and binlog_row_image = FULL in the server configuration",
    );
    expect(
        "binlog_row_metadata",
        "FULL",
        "SET GLOBAL binlog_row_metadata = 'FULL'; and binlog_row_metadata = FULL in the server configuration",
    );
    match flavour {
        Flavour::Mariadb => expect(
            "log_bin_compress",
            "OFF",
            "SET GLOBAL log_bin_compress = OFF; and log_bin_compress = OFF in the server configuration",
        ),
        Flavour::Mysql => {
            expect(
                "gtid_mode",
                "ON",
                "SET GLOBAL enforce_gtid_consistency = ON; then step SET GLOBAL gtid_mode through OFF_PERMISSIVE, ON_PERMISSIVE, ON; and persist both in the server configuration",
            );
            expect("enforce_gtid_consistency", "ON", "SET GLOBAL enforce_gtid_consistency = ON");
            if let Some(v) = get("binlog_transaction_compression") {
                if on(v) {
                    out.push(Probe::fail(
                        "binlog_transaction_compression = OFF",
                        "is ON",
                        "SET PERSIST binlog_transaction_compression = OFF",
                    ));
                } else {
                    out.push(Probe::ok("binlog_transaction_compression = OFF", v.to_owned()));
                }
            }
            if let Some(v) = get("binlog_row_value_options") {
                if v.to_ascii_uppercase().contains("PARTIAL_JSON") {
                    out.push(Probe::fail(
                        "binlog_row_value_options = ''",
                        format!("is {v}"),
                        "SET PERSIST binlog_row_value_options = ''",
                    ));
                }
            }
        }
    }
    match get("binlog_checksum") {
        Some(v) if v.eq_ignore_ascii_case("CRC32") || v.eq_ignore_ascii_case("NONE") => {
            out.push(Probe::ok(
                "binlog_checksum",
                format!("{v} (CRC32 is verified on every event)"),
            ))
        }
        Some(v) => out.push(Probe::fail(
            "binlog_checksum",
            format!("unknown algorithm {v}"),
            "SET GLOBAL binlog_checksum = 'CRC32'",
        )),
        None => {}
    }
    let server_id: u32 = get("server_id").and_then(|v| v.parse().ok()).unwrap_or(0);
    if server_id != 0 && server_id == our_server_id {
        out.push(Probe::fail(
            "replica server_id",
            format!("source.server_id {our_server_id} is the server's own server_id"),
            "choose another source.server_id, unique among the server and all its replicas",
        ));
    } else {
        out.push(Probe::ok(
            "replica server_id",
            format!("{our_server_id} (server's own: {server_id}); unique per connector instance, a second stream with the same id disconnects the first"),
        ));
    }
    let secs = retention_secs(flavour, vars);
    match secs {
        Some(0) => out.push(Probe::ok(
            "binlog retention",
            "binlogs are never purged automatically",
        )),
        Some(s) if s < 86_400 => out.push(Probe::fail(
            "binlog retention",
            format!(
                "binlogs expire after {} s: an outage longer than that forces a re-snapshot",
                s
            ),
            "SET GLOBAL binlog_expire_logs_seconds = 604800",
        )),
        Some(s) => out.push(Probe::ok(
            "binlog retention",
            format!("{:.1} days", s as f64 / 86_400.0),
        )),
        None => out.push(Probe::ok("binlog retention", "unknown")),
    }
    out
}

fn retention_secs(flavour: Flavour, vars: &BTreeMap<String, String>) -> Option<u64> {
    let secs: Option<u64> = vars
        .get("binlog_expire_logs_seconds")
        .and_then(|v| v.parse().ok());
    let days: Option<f64> = vars.get("expire_logs_days").and_then(|v| v.parse().ok());
    match (flavour, secs, days) {
        (_, Some(s), _) if s > 0 => Some(s),
        (_, _, Some(d)) if d > 0.0 => Some((d * 86_400.0) as u64),
        (_, Some(_), _) | (_, _, Some(_)) => Some(0),
        _ => None,
    }
}

/// Global privileges from `SHOW GRANTS` lines, upper-case.
fn global_privileges(grants: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for g in grants {
        let upper = g.to_ascii_uppercase();
        let Some(rest) = upper.strip_prefix("GRANT ") else {
            continue;
        };
        let Some(on_at) = rest.find(" ON ") else {
            continue;
        };
        let target = rest[on_at + 4..].trim_start();
        if !target.starts_with("*.*") {
            continue;
        }
        out.extend(rest[..on_at].split(',').map(|p| p.trim().to_owned()));
    }
    out
}

/// Databases with a database-level SELECT (or ALL) grant.
fn select_dbs(grants: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for g in grants {
        let Some(rest) = g
            .strip_prefix("GRANT ")
            .or_else(|| g.strip_prefix("grant "))
        else {
            continue;
        };
        let upper = rest.to_ascii_uppercase();
        let Some(on_at) = upper.find(" ON ") else {
            continue;
        };
        let privs = &upper[..on_at];
        if !privs
            .split(',')
            .any(|p| matches!(p.trim(), "SELECT" | "ALL" | "ALL PRIVILEGES"))
        {
            continue;
        }
        let target = rest[on_at + 4..].trim_start();
        if let Some(db) = target.split(".*").next().filter(|_| target.contains(".*")) {
            out.push(db.trim_matches('`').replace("``", "`"));
        }
    }
    out
}

/// Evaluates `SHOW GRANTS` for the privileges CDC needs.
pub fn evaluate_grants(
    flavour: Flavour,
    user: &str,
    grants: &[String],
    dbs: &[String],
) -> Vec<Probe> {
    let privs = global_privileges(grants);
    let has = |p: &str| {
        privs
            .iter()
            .any(|x| x == p || x == "ALL PRIVILEGES" || x == "ALL")
    };
    let mut out = Vec::new();
    if has("REPLICATION SLAVE") || has("REPLICATION REPLICA") {
        out.push(Probe::ok("privilege REPLICATION SLAVE", "granted"));
    } else {
        out.push(Probe::fail(
            "privilege REPLICATION SLAVE",
            "missing: the binlog cannot be read",
            format!("GRANT REPLICATION SLAVE ON *.* TO '{user}'@'%'"),
        ));
    }
    let (monitor, alt) = match flavour {
        Flavour::Mariadb => ("BINLOG MONITOR", "REPLICATION CLIENT"),
        Flavour::Mysql => ("REPLICATION CLIENT", "BINLOG MONITOR"),
    };
    if has(monitor) || has(alt) || has("SUPER") {
        out.push(Probe::ok(format!("privilege {monitor}"), "granted"));
    } else {
        out.push(Probe::fail(
            format!("privilege {monitor}"),
            "missing: binlog positions (SHOW MASTER STATUS / SHOW BINARY LOGS) cannot be read",
            format!("GRANT {monitor} ON *.* TO '{user}'@'%'"),
        ));
    }
    if flavour == Flavour::Mysql && !(has("RELOAD")) {
        out.push(Probe::fail(
            "privilege RELOAD",
            "missing: the initial snapshot needs FLUSH TABLES WITH READ LOCK",
            format!("GRANT RELOAD ON *.* TO '{user}'@'%'"),
        ));
    }
    let select_db = select_dbs(grants);
    let missing: Vec<&String> = if has("SELECT") {
        Vec::new()
    } else {
        dbs.iter()
            .filter(|d| !select_db.iter().any(|s| s == *d))
            .collect()
    };
    if missing.is_empty() {
        out.push(Probe::ok(
            "privilege SELECT",
            "granted on the captured databases",
        ));
    } else {
        let list: Vec<String> = missing.iter().map(|d| client::quote_ident(d)).collect();
        out.push(Probe::fail(
            "privilege SELECT",
            format!("no database-level SELECT on {}", list.join(", ")),
            list.iter()
                .map(|d| format!("GRANT SELECT ON {d}.* TO '{user}'@'%'"))
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    out
}

/// Evaluates the selected tables: every glob matches something, every table has a primary key.
pub fn evaluate_tables(
    globs: &[String],
    tables: &[((String, String), Option<TableInfo>)],
) -> Vec<Probe> {
    let mut out = Vec::new();
    for g in globs {
        let n = tables
            .iter()
            .filter(|((db, t), _)| tidemark_core::config::glob_match(g, &format!("{db}.{t}")))
            .count();
        if n == 0 {
            out.push(Probe::fail(
                format!("tables {g}"),
                "no table matches",
                "create the table or fix source.tables (globs are db.table)",
            ));
        } else {
            out.push(Probe::ok(format!("tables {g}"), format!("{n} table(s)")));
        }
    }
    for ((db, t), info) in tables {
        let name = format!("{}.{}", client::quote_ident(db), client::quote_ident(t));
        match info {
            Some(i) if !i.pk.is_empty() => {}
            Some(_) => out.push(Probe::fail(
                format!("primary key of {name}"),
                "missing: changes have no key, sinks cannot apply updates and deletes",
                format!("ALTER TABLE {name} ADD PRIMARY KEY (…)"),
            )),
            None => out.push(Probe::fail(
                format!("table {name}"),
                "cannot be described",
                "check SELECT privileges",
            )),
        }
    }
    out
}

/// The problems of a probe list as one message (for start-up failures).
pub fn problems(probes: &[Probe]) -> Option<String> {
    let failed: Vec<String> = probes
        .iter()
        .filter(|p| !p.ok)
        .map(|p| match &p.fix {
            Some(fix) => format!("{}: {} (fix: {fix})", p.what, p.detail),
            None => format!("{}: {}", p.what, p.detail),
        })
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

/// Probes the server of a mysql pipeline source.
pub async fn check(p: &PipelineConfig) -> Vec<Probe> {
    let settings = match Settings::from_pipeline(p) {
        Ok(s) => s,
        Err(e) => {
            return vec![Probe::fail(
                "mysql source configuration",
                e.to_string(),
                "fix the pipeline's source section",
            )]
        }
    };
    let mut conn = match settings.spec.sql().await {
        Ok(c) => c,
        Err(e) => {
            return vec![Probe::fail(
                "mysql connection",
                tidemark_core::error::display_chain(&e),
                "check source.url, the network and the credentials",
            )]
        }
    };
    let mut out = Vec::new();
    let server: ServerInfo = match client::server_info(&mut conn).await {
        Ok(s) => s,
        Err(e) => {
            out.push(Probe::fail(
                "server variables",
                e.to_string(),
                "grant the user access to SHOW VARIABLES",
            ));
            return out;
        }
    };
    out.push(Probe::ok(
        "mysql connection",
        format!(
            "{} ({:?}) at {}",
            server.version, server.flavour, settings.spec.redacted
        ),
    ));
    out.extend(evaluate_settings(
        server.flavour,
        &server.vars,
        settings.server_id,
    ));
    let tables = client::selected_tables(&mut conn, &settings.tables)
        .await
        .unwrap_or_default();
    let mut described = Vec::new();
    for (db, t) in &tables {
        let info = client::table_info(&mut conn, server.flavour, db, t)
            .await
            .ok()
            .flatten();
        described.push(((db.clone(), t.clone()), info));
    }
    let grants: Vec<String> = client::query(&mut conn, "SHOW GRANTS", "SHOW GRANTS")
        .await
        .unwrap_or_default();
    let mut dbs: Vec<String> = tables.iter().map(|(d, _)| d.clone()).collect();
    dbs.dedup();
    out.extend(evaluate_grants(
        server.flavour,
        &settings.spec.user(),
        &grants,
        &dbs,
    ));
    out.extend(evaluate_tables(&settings.tables, &described));
    let _ = conn.disconnect().await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn good_mariadb() -> BTreeMap<String, String> {
        vars(&[
            ("log_bin", "ON"),
            ("binlog_format", "ROW"),
            ("binlog_row_image", "FULL"),
            ("binlog_row_metadata", "FULL"),
            ("log_bin_compress", "OFF"),
            ("binlog_checksum", "CRC32"),
            ("server_id", "1"),
            ("binlog_expire_logs_seconds", "604800"),
        ])
    }

    fn failed(probes: &[Probe]) -> Vec<String> {
        probes
            .iter()
            .filter(|p| !p.ok)
            .map(|p| p.what.clone())
            .collect()
    }

    #[test]
    fn good_settings_pass() {
        let p = evaluate_settings(Flavour::Mariadb, &good_mariadb(), 5001);
        assert!(failed(&p).is_empty(), "{p:?}");
    }

    #[test]
    fn each_bad_setting_is_named_with_its_fix() {
        for (k, bad, fix) in [
            ("log_bin", "OFF", "log_bin"),
            ("binlog_format", "MIXED", "SET GLOBAL binlog_format = 'ROW'"),
            (
                "binlog_row_image",
                "MINIMAL",
                "SET GLOBAL binlog_row_image = 'FULL'",
            ),
            (
                "binlog_row_metadata",
                "NO_LOG",
                "SET GLOBAL binlog_row_metadata = 'FULL'",
            ),
            (
                "log_bin_compress",
                "ON",
                "SET GLOBAL log_bin_compress = OFF",
            ),
            (
                "binlog_expire_logs_seconds",
                "600",
                "binlog_expire_logs_seconds = 604800",
            ),
        ] {
            let mut v = good_mariadb();
            v.insert(k.into(), bad.into());
            let p = evaluate_settings(Flavour::Mariadb, &v, 5001);
            let bad_probes: Vec<&Probe> = p.iter().filter(|p| !p.ok).collect();
            assert_eq!(bad_probes.len(), 1, "{k}: {p:?}");
            assert!(
                bad_probes[0].fix.as_deref().unwrap_or("").contains(fix),
                "{k}: {:?}",
                bad_probes[0]
            );
        }
        let mut v = good_mariadb();
        v.remove("binlog_row_metadata");
        assert_eq!(
            failed(&evaluate_settings(Flavour::Mariadb, &v, 5001)),
            ["binlog_row_metadata = FULL"]
        );
        assert_eq!(
            failed(&evaluate_settings(Flavour::Mariadb, &good_mariadb(), 1)),
            ["replica server_id"]
        );
    }

    #[test]
    fn mysql_needs_gtids_and_no_compression() {
        let mut v = good_mariadb();
        v.remove("log_bin_compress");
        v.insert("gtid_mode".into(), "OFF".into());
        v.insert("enforce_gtid_consistency".into(), "ON".into());
        v.insert("binlog_transaction_compression".into(), "ON".into());
        v.insert("binlog_row_value_options".into(), "PARTIAL_JSON".into());
        let f = failed(&evaluate_settings(Flavour::Mysql, &v, 5001));
        assert_eq!(
            f,
            [
                "gtid_mode = ON",
                "binlog_transaction_compression = OFF",
                "binlog_row_value_options = ''"
            ]
        );
    }

    #[test]
    fn grants() {
        let all = vec![
            "GRANT ALL PRIVILEGES ON *.* TO `tidemark`@`127.0.0.1` IDENTIFIED BY PASSWORD '*0109'"
                .to_string(),
        ];
        assert!(failed(&evaluate_grants(
            Flavour::Mariadb,
            "tidemark",
            &all,
            &["shop".into()]
        ))
        .is_empty());
        let some = vec![
            "GRANT REPLICATION SLAVE ON *.* TO `cdc`@`%`".to_string(),
            "GRANT SELECT ON `shop`.* TO `cdc`@`%`".to_string(),
        ];
        let f = failed(&evaluate_grants(
            Flavour::Mariadb,
            "cdc",
            &some,
            &["shop".into(), "other".into()],
        ));
        assert_eq!(f, ["privilege BINLOG MONITOR", "privilege SELECT"]);
        let p = evaluate_grants(Flavour::Mariadb, "cdc", &some, &["other".into()]);
        let sel = p.iter().find(|p| p.what == "privilege SELECT").unwrap();
        assert_eq!(
            sel.fix.as_deref(),
            Some("GRANT SELECT ON `other`.* TO 'cdc'@'%'")
        );
        assert!(failed(&evaluate_grants(Flavour::Mysql, "cdc", &[], &[]))
            .contains(&"privilege RELOAD".to_string()));
    }

    #[test]
    fn tables_need_matches_and_keys() {
        let with_pk = TableInfo {
            pk: vec!["id".into()],
            ..Default::default()
        };
        let t = vec![
            (("shop".to_string(), "a".to_string()), Some(with_pk)),
            (
                ("shop".to_string(), "b".to_string()),
                Some(TableInfo::default()),
            ),
        ];
        let p = evaluate_tables(&["shop.*".into(), "none.*".into()], &t);
        assert_eq!(failed(&p), ["tables none.*", "primary key of `shop`.`b`"]);
        assert!(problems(&p)
            .unwrap()
            .contains("ALTER TABLE `shop`.`b` ADD PRIMARY KEY"));
    }
}
