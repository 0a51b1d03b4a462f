//! Connections and the SQL side of the connector: connection options from the
//! URL, server facts (flavour, variables), and `information_schema` lookups.
//!
//! The binlog connection and the SQL connections share the URL but not their
//! settings: the binlog connection accepts 1 GiB packets (a row event above
//! 16 MiB otherwise kills the stream), snapshot connections pin the session
//! time zone to UTC (TIMESTAMP values then read as UTC, like the binlog's
//! epoch seconds) and clear `PAD_CHAR_TO_FULL_LENGTH` (CHAR reads without
//! trailing spaces, like the binlog).

use crate::binlog::Flavour;
use crate::charset::Collations;
use crate::convert::{ColumnInfo, TableInfo};
use crate::error::SourceError;
use mysql_async::prelude::Queryable as _;
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};
use std::collections::BTreeMap;
use std::time::Duration;

/// Largest packet the binlog connection accepts (the protocol maximum).
pub const MAX_PACKET: usize = 1 << 30;

/// Connection settings derived from the source URL.
#[derive(Clone)]
pub struct ConnSpec {
    opts: Opts,
    /// The URL with the password hidden, for messages.
    pub redacted: String,
}

impl std::fmt::Debug for ConnSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl ConnSpec {
    /// Parses `mysql://user:pass@host:3306/db?ssl-mode=required&ssl-ca=/path`.
    ///
    /// `ssl-mode` (case-insensitive, `-` or `_`): `disabled` (default), `preferred` (treated as
    /// disabled), `required` (encrypt, do not verify), `verify_ca` / `verify_identity` (verify
    /// the chain and host name against `ssl-ca` alone when given, like the mysql client's
    /// `--ssl-ca`, otherwise the bundled roots). Other query parameters are mysql_async's.
    ///
    /// Connections stay on the TCP address of the URL: mysql_async would otherwise log in a
    /// second time over the server's unix socket when it is local (`prefer_socket`) and keep
    /// that session, which drops TLS and belongs to `user@localhost`, another account.
    pub fn parse(raw: &str) -> Result<ConnSpec, SourceError> {
        let redacted = tidemark_core::redact::url(raw);
        let bad = |message: String| SourceError::Config {
            message: format!("source.url {redacted}: {message}"),
        };
        let mut url = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
        let mut ssl_mode = String::from("disabled");
        let mut ssl_ca: Option<String> = None;
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter_map(|(k, v)| match k.as_ref() {
                "ssl-mode" | "sslmode" | "ssl_mode" => {
                    ssl_mode = v.to_ascii_lowercase().replace('-', "_");
                    None
                }
                "ssl-ca" | "sslrootcert" | "ssl_ca" => {
                    ssl_ca = Some(v.into_owned());
                    None
                }
                _ => Some((k.into_owned(), v.into_owned())),
            })
            .collect();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        let opts = Opts::from_url(url.as_str()).map_err(|e| bad(e.to_string()))?;
        let ssl = match ssl_mode.as_str() {
            "disabled" | "disable" | "preferred" | "prefer" => None,
            "required" | "require" => Some(
                SslOpts::default()
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
            "verify_ca" | "verify_identity" | "verify_full" => {
                let mut s = SslOpts::default();
                if let Some(ca) = &ssl_ca {
                    s = s
                        .with_root_certs(vec![std::path::PathBuf::from(ca).into()])
                        .with_disable_built_in_roots(true);
                }
                Some(s)
            }
            other => return Err(bad(format!("unknown ssl-mode {other:?}"))),
        };
        let opts: Opts = OptsBuilder::from_opts(opts)
            .ssl_opts(ssl)
            .prefer_socket(false)
            .into();
        Ok(ConnSpec { opts, redacted })
    }

    /// User name, for privilege messages.
    pub fn user(&self) -> String {
        self.opts.user().unwrap_or("").to_owned()
    }

    fn builder(&self) -> OptsBuilder {
        OptsBuilder::from_opts(self.opts.clone())
    }

    /// An ordinary SQL connection (session in UTC, no CHAR padding).
    pub async fn sql(&self) -> Result<Conn, SourceError> {
        let opts = self.builder().setup(vec![
            "SET SESSION time_zone = '+00:00'".to_owned(),
            "SET SESSION sql_mode = TRIM(BOTH ',' FROM REPLACE(REPLACE(@@SESSION.sql_mode, \
             'PAD_CHAR_TO_FULL_LENGTH', ''), ',,', ','))"
                .to_owned(),
        ]);
        self.connect(opts).await
    }

    /// The connection that becomes the binlog stream: accepts packets up to 1 GiB.
    pub async fn binlog(&self) -> Result<Conn, SourceError> {
        let opts = self
            .builder()
            .max_allowed_packet(Some(MAX_PACKET))
            .wait_timeout(Some(31_536_000));
        self.connect(opts).await
    }

    async fn connect(&self, opts: OptsBuilder) -> Result<Conn, SourceError> {
        let fut = Conn::new(opts);
        match tokio::time::timeout(Duration::from_secs(15), fut).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(source)) => Err(SourceError::Connect {
                url: self.redacted.clone(),
                source,
            }),
            Err(_) => Err(SourceError::Timeout {
                what: format!("connecting to {}", self.redacted),
            }),
        }
    }
}

/// Runs a query, mapping errors to [`SourceError::Query`] with `what` as context.
pub async fn query<T: mysql_async::prelude::FromRow + Send + 'static>(
    conn: &mut Conn,
    sql: &str,
    what: &'static str,
) -> Result<Vec<T>, SourceError> {
    conn.query(sql)
        .await
        .map_err(|source| SourceError::Query { what, source })
}

/// Runs a statement, ignoring results.
pub async fn exec(conn: &mut Conn, sql: &str, what: &'static str) -> Result<(), SourceError> {
    conn.query_drop(sql)
        .await
        .map_err(|source| SourceError::Query { what, source })
}

/// What the connector needs to know about the server.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// MariaDB or MySQL.
    pub flavour: Flavour,
    /// `VERSION()`.
    pub version: String,
    /// Global variables relevant to CDC, lower-case names.
    pub vars: BTreeMap<String, String>,
}

impl ServerInfo {
    /// A variable's value (empty when unknown).
    pub fn var(&self, name: &str) -> &str {
        self.vars.get(name).map(String::as_str).unwrap_or("")
    }

    /// The server's own `server_id`.
    pub fn server_id(&self) -> u32 {
        self.var("server_id").parse().unwrap_or(0)
    }

    /// Whether events carry a CRC32.
    pub fn checksums(&self) -> bool {
        self.var("binlog_checksum").eq_ignore_ascii_case("CRC32")
    }
}

/// Variables the connector and `check` read.
pub const VARIABLES: &[&str] = &[
    "log_bin",
    "binlog_format",
    "binlog_row_image",
    "binlog_row_metadata",
    "binlog_checksum",
    "log_bin_compress",
    "gtid_mode",
    "enforce_gtid_consistency",
    "binlog_transaction_compression",
    "binlog_row_value_options",
    "expire_logs_days",
    "binlog_expire_logs_seconds",
    "server_id",
    "server_uuid",
    "gtid_domain_id",
    "gtid_strict_mode",
    "max_allowed_packet",
    "log_bin_basename",
];

/// Reads version, flavour and the CDC variables.
pub async fn server_info(conn: &mut Conn) -> Result<ServerInfo, SourceError> {
    let version: Vec<String> =
        query(conn, "SELECT VERSION()", "reading the server version").await?;
    let version = version.into_iter().next().unwrap_or_default();
    let flavour = if version.to_ascii_lowercase().contains("mariadb") {
        Flavour::Mariadb
    } else {
        Flavour::Mysql
    };
    let list = VARIABLES
        .iter()
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(",");
    let rows: Vec<(String, String)> = query(
        conn,
        &format!("SHOW GLOBAL VARIABLES WHERE Variable_name IN ({list})"),
        "reading server variables",
    )
    .await?;
    let vars = rows
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    Ok(ServerInfo {
        flavour,
        version,
        vars,
    })
}

/// Collation id → character set name.
pub async fn collations(conn: &mut Conn) -> Result<Collations, SourceError> {
    let rows: Vec<(u64, String)> = query(
        conn,
        "SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS WHERE ID IS NOT NULL",
        "reading collations",
    )
    .await?;
    Ok(Collations::from_pairs(rows.into_iter().filter_map(
        |(id, cs)| u16::try_from(id).ok().map(|id| (id, cs)),
    )))
}

/// Quotes an identifier with backticks.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Quotes a string literal.
pub fn quote_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for ch in s.chars() {
        match ch {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Whether a `CHECK_CLAUSE` is exactly `json_valid(<column>)`; returns the column.
fn json_check_column(clause: &str) -> Option<String> {
    let c = clause.trim();
    let open = c.find('(')?;
    if !c[..open].trim().eq_ignore_ascii_case("json_valid") {
        return None;
    }
    let inner = c[open + 1..].strip_suffix(')')?.trim();
    if let Some(n) = inner.strip_prefix('`').and_then(|s| s.strip_suffix('`')) {
        if n.replace("``", "").contains('`') {
            return None;
        }
        return Some(n.replace("``", "`"));
    }
    if inner.is_empty()
        || inner.contains(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == '$'))
    {
        return None;
    }
    Some(inner.to_owned())
}

/// Reads a table's description; `None` when it does not exist.
pub async fn table_info(
    conn: &mut Conn,
    flavour: Flavour,
    db: &str,
    table: &str,
) -> Result<Option<TableInfo>, SourceError> {
    let (qdb, qt) = (quote_str(db), quote_str(table));
    type ColRow = (
        String,
        String,
        String,
        String,
        String,
        Option<String>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
    );
    let rows: Vec<ColRow> = query(
        conn,
        &format!(
            "SELECT COLUMN_NAME, LOWER(COLUMN_TYPE), LOWER(DATA_TYPE), IS_NULLABLE, COLUMN_KEY, \
             CHARACTER_SET_NAME, NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION, \
             CHARACTER_OCTET_LENGTH FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = {qdb} AND TABLE_NAME = {qt} ORDER BY ORDINAL_POSITION"
        ),
        "reading information_schema.COLUMNS",
    )
    .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let pk: Vec<String> = query(
        conn,
        &format!(
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = {qdb} \
             AND TABLE_NAME = {qt} AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX"
        ),
        "reading the primary key",
    )
    .await?;
    let mut json_cols: Vec<String> = Vec::new();
    if flavour == Flavour::Mariadb {
        let checks: Vec<String> = query(
            conn,
            &format!(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
                 WHERE CONSTRAINT_SCHEMA = {qdb} AND TABLE_NAME = {qt}"
            ),
            "reading check constraints",
        )
        .await?;
        json_cols = checks.iter().filter_map(|c| json_check_column(c)).collect();
    }
    let estimate: Vec<Option<u64>> = query(
        conn,
        &format!(
            "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = {qdb} AND TABLE_NAME = {qt}"
        ),
        "reading the row estimate",
    )
    .await?;
    let columns = rows
        .into_iter()
        .map(
            |(name, column_type, data_type, nullable, key, charset, np, ns, dp, ol)| ColumnInfo {
                json_check: json_cols.iter().any(|j| j.eq_ignore_ascii_case(&name)),
                pk: key == "PRI" && pk.iter().any(|p| p.eq_ignore_ascii_case(&name)),
                name,
                column_type,
                data_type,
                nullable: nullable.eq_ignore_ascii_case("YES"),
                charset,
                numeric_precision: np,
                numeric_scale: ns,
                datetime_precision: dp,
                octet_length: ol,
            },
        )
        .collect();
    Ok(Some(TableInfo {
        columns,
        pk,
        rows_estimate: estimate.into_iter().next().flatten().unwrap_or(0),
    }))
}

/// Base tables whose `db.table` matches the globs (system schemas excluded).
pub async fn selected_tables(
    conn: &mut Conn,
    globs: &[String],
) -> Result<Vec<(String, String)>, SourceError> {
    let rows: Vec<(String, String)> = query(
        conn,
        "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' \
         AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') \
         ORDER BY TABLE_SCHEMA, TABLE_NAME",
        "listing tables",
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter(|(db, t)| tidemark_core::config::table_selected(globs, db, t))
        .collect())
}

/// `SHOW BINARY LOGS`: (file, size).
pub async fn binary_logs(conn: &mut Conn) -> Result<Vec<(String, u64)>, SourceError> {
    let rows: Vec<mysql_async::Row> =
        query(conn, "SHOW BINARY LOGS", "listing binary logs").await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let name: Option<String> = r.get(0);
            let size: Option<u64> = r.get(1);
            Some((name?, size.unwrap_or(0)))
        })
        .collect())
}

/// Binlog bytes after `file`/`pos`, from `SHOW BINARY LOGS`.
pub fn bytes_after(logs: &[(String, u64)], file: &str, pos: u64) -> u64 {
    let idx = crate::binlog::file_index(file);
    logs.iter()
        .map(|(name, size)| {
            if name == file {
                size.saturating_sub(pos)
            } else if crate::binlog::file_index(name) > idx {
                *size
            } else {
                0
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters() {
        let s = ConnSpec::parse("mysql://u:secret@127.0.0.1:3306/shop?ssl-mode=required").unwrap();
        assert!(!s.redacted.contains("secret"));
        assert!(ConnSpec::parse("mysql://u@h/db?ssl-mode=bogus").is_err());
        assert!(ConnSpec::parse("not a url").is_err());
        assert!(!s.opts.prefer_socket());
    }

    #[test]
    fn ssl_ca_is_the_only_trusted_root() {
        for mode in [
            "VERIFY_IDENTITY",
            "verify-identity",
            "verify_ca",
            "verify-full",
        ] {
            let s = ConnSpec::parse(&format!(
                "mysql://u@127.0.0.1/db?ssl-mode={mode}&ssl-ca=/etc/ca.pem"
            ))
            .unwrap();
            let ssl = s.opts.ssl_opts().unwrap();
            assert!(ssl.disable_built_in_roots(), "{mode}");
            assert!(!ssl.accept_invalid_certs(), "{mode}");
            assert_eq!(ssl.root_certs().len(), 1, "{mode}");
        }
        let s = ConnSpec::parse("mysql://u@127.0.0.1/db?ssl-mode=verify_identity").unwrap();
        assert!(!s.opts.ssl_opts().unwrap().disable_built_in_roots());
        let s = ConnSpec::parse("mysql://u@127.0.0.1/db?ssl-mode=disabled").unwrap();
        assert!(s.opts.ssl_opts().is_none());
    }

    #[test]
    fn json_checks_and_quoting() {
        assert_eq!(json_check_column("json_valid(`j`)").as_deref(), Some("j"));
        assert_eq!(
            json_check_column("JSON_VALID( `My Col` )").as_deref(),
            Some("My Col")
        );
        assert_eq!(json_check_column("json_valid(doc)").as_deref(), Some("doc"));
        assert_eq!(json_check_column("json_valid(`j`) and `k` > 1"), None);
        assert_eq!(json_check_column("`k` > 1"), None);
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(quote_str("it's \\"), "'it''s \\\\'");
    }

    #[test]
    fn retained_bytes() {
        let logs = vec![
            ("b.000001".to_string(), 100),
            ("b.000002".to_string(), 200),
            ("b.000003".to_string(), 300),
        ];
        assert_eq!(bytes_after(&logs, "b.000002", 50), 150 + 300);
        assert_eq!(bytes_after(&logs, "b.000003", 300), 0);
    }
}
