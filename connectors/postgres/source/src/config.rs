//! Settings derived from a pipeline's `[pipelines.source]` block.
//!
//! Everything here is pure: the URL is parsed once into [`PgSettings`]
//! (host, credentials, TLS mode, database) and the slot / publication names
//! are derived, so `check`, `status` and `run` all agree on what they talk
//! to. Two things matter for correctness:
//!
//! * **Pinned session settings.** The walsender renders every value of the
//!   stream as text with its session's settings, and the snapshot reads rows
//!   as text on ordinary SQL connections. Both must use exactly the same
//!   [`SESSION_OPTIONS`], or a snapshot row and a streamed row of the same
//!   value would differ (time zones, date styles, float digits, bytea form).
//! * **Names the server accepts.** Slot names may only hold `[a-z0-9_]`
//!   (at most 63 bytes); pipeline names may contain `-`, so the default slot
//!   name is sanitised. Publication names are identifiers and always quoted.

use std::time::Duration;
use tidemark_core::config::{PipelineConfig, SnapshotMode};
use tidemark_core::error::{Classify, Retry};

/// The `options` startup parameter used by the replication connection and every SQL
/// connection: text values are rendered identically on both.
pub const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 \
     -c extra_float_digits=3 -c bytea_output=hex";

/// `application_name` reported to the server (visible in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "tidemark";

/// How long slot creation may wait for open transactions before giving up.
pub const SLOT_CREATE_TIMEOUT: Duration = Duration::from_secs(300);

/// Default connect timeout when the URL has no `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// libpq `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, plain otherwise (libpq's default).
    Prefer,
    /// TLS, certificate not checked.
    Require,
    /// TLS, certificate chain checked.
    VerifyCa,
    /// TLS, certificate chain and host name checked.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Whether the connection must be encrypted.
    pub fn required(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    /// How much of the certificate to check.
    pub fn verify(self) -> tidemark_core::tls::Verify {
        match self {
            SslMode::VerifyCa | SslMode::VerifyFull => tidemark_core::tls::Verify::Full,
            _ => tidemark_core::tls::Verify::None,
        }
    }
}

/// A configuration value this connector cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The URL does not parse or lacks a part.
    #[error("source url {url}: {message}")]
    Url {
        /// The URL with its password hidden.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// A slot or publication name the server would reject.
    #[error("{what} {name:?}: {message}")]
    Name {
        /// `slot` or `publication`.
        what: &'static str,
        /// The name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The root certificate file cannot be loaded.
    #[error("TLS setup: {0}")]
    Tls(#[from] tidemark_core::tls::TlsError),
}

impl Classify for ConfigError {
    fn retry(&self) -> Retry {
        Retry::Definite
    }
    fn kind(&self) -> &'static str {
        "config"
    }
}

/// Everything the connector needs to know, derived once from the pipeline configuration.
#[derive(Clone)]
pub struct PgSettings {
    /// Pipeline name.
    pub pipeline: String,
    /// Server host name or IP address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Password, when the URL has one (never logged).
    pub password: Option<String>,
    /// Database to capture.
    pub dbname: String,
    /// TLS mode.
    pub ssl_mode: SslMode,
    /// PEM file with trusted roots (`sslrootcert`).
    pub ssl_root_cert: Option<String>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Replication slot name.
    pub slot: String,
    /// Publication name.
    pub publication: String,
    /// Whether the publication name was derived (then tidemark manages its table list).
    pub publication_managed: bool,
    /// Table globs (`schema.table`).
    pub tables: Vec<String>,
    /// Initial snapshot mode.
    pub snapshot: SnapshotMode,
    /// Rows per snapshot chunk.
    pub chunk_size: u64,
    /// Parallel snapshot connections.
    pub parallelism: usize,
    /// Interval of standby status updates.
    pub heartbeat: Duration,
    /// The URL with its password hidden, for messages.
    pub redacted_url: String,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &self.redacted_url)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

/// `tidemark_<pipeline>` made into a valid slot name: lower case, `[a-z0-9_]`, ≤ 63 bytes.
pub fn default_slot_name(pipeline: &str) -> String {
    let mut s: String = format!("tidemark_{pipeline}")
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(63);
    s
}

fn check_slot_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Name {
            what: "slot",
            name: name.to_owned(),
            message: "replication slot names may contain only lower-case letters, digits and '_' \
                      (at most 63 characters)"
                .into(),
        })
    }
}

impl PgSettings {
    /// Derives the settings of `p`'s source. Does no I/O.
    pub fn from_pipeline(p: &PipelineConfig) -> Result<PgSettings, ConfigError> {
        let s = &p.source;
        let redacted_url = tidemark_core::redact::url(&s.url);
        let bad = |message: String| ConfigError::Url {
            url: redacted_url.clone(),
            message,
        };
        let url = url::Url::parse(&s.url).map_err(|e| bad(e.to_string()))?;
        if url.scheme() != "postgres" && url.scheme() != "postgresql" {
            return Err(bad("scheme must be postgres:// or postgresql://".into()));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => decode(d).map_err(|m| bad(format!("host: {m}")))?,
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(bad("no host".into())),
        };
        if host.is_empty() {
            return Err(bad("no host".into()));
        }
        let port = url.port().unwrap_or(5432);
        let mut user = decode(url.username()).map_err(|m| bad(format!("user: {m}")))?;
        let mut password = match url.password() {
            Some(p) => Some(decode(p).map_err(|m| bad(format!("password: {m}")))?),
            None => None,
        };
        let path = url.path().trim_start_matches('/');
        let mut dbname = decode(path).map_err(|m| bad(format!("database: {m}")))?;
        let mut ssl_mode = SslMode::Prefer;
        let mut ssl_root_cert = None;
        let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "sslmode" => {
                    ssl_mode = SslMode::parse(&v).ok_or_else(|| {
                        bad(format!(
                            "sslmode={v} is not one of disable, prefer, require, verify-ca, verify-full"
                        ))
                    })?
                }
                "sslrootcert" => ssl_root_cert = Some(v.into_owned()),
                "connect_timeout" => {
                    let secs: u64 = v
                        .parse()
                        .map_err(|_| bad(format!("connect_timeout={v} is not a number of seconds")))?;
                    connect_timeout = Duration::from_secs(secs.max(1));
                }
                "user" => user = v.into_owned(),
                "password" => password = Some(v.into_owned()),
                "dbname" => dbname = v.into_owned(),
                "application_name" => {}
                other => {
                    return Err(bad(format!(
                        "unknown query parameter {other:?} (known: sslmode, sslrootcert, \
                         connect_timeout, user, password, dbname)"
                    )))
                }
            }
        }
        if user.is_empty() {
            return Err(bad("no user: write postgres://USER@host/db".into()));
        }
        if dbname.is_empty() {
            return Err(bad(
                "no database: write postgres://user@host/DATABASE".into()
            ));
        }
        let slot = match &s.slot {
            Some(n) => n.clone(),
            None => default_slot_name(&p.name),
        };
        check_slot_name(&slot)?;
        let (publication, publication_managed) = match &s.publication {
            Some(n) => (n.clone(), false),
            None => (format!("tidemark_{}", p.name), true),
        };
        if publication.is_empty() || publication.len() > 63 {
            return Err(ConfigError::Name {
                what: "publication",
                name: publication,
                message: "must be 1 to 63 bytes".into(),
            });
        }
        Ok(PgSettings {
            pipeline: p.name.clone(),
            host,
            port,
            user,
            password,
            dbname,
            ssl_mode,
            ssl_root_cert,
            connect_timeout,
            slot,
            publication,
            publication_managed,
            tables: s.tables.clone(),
            snapshot: s.snapshot,
            chunk_size: s.snapshot_chunk_size.max(1),
            parallelism: s.snapshot_parallelism.max(1),
            heartbeat: Duration::from_secs(s.heartbeat_secs.clamp(1, 3600)),
            redacted_url,
        })
    }

    /// Whether the table globs select every table (`*`): the publication is then
    /// `FOR ALL TABLES`.
    pub fn all_tables(&self) -> bool {
        self.tables.iter().any(|g| g == "*")
    }

    /// Whether `schema.table` is captured.
    pub fn selects(&self, schema: &str, table: &str) -> bool {
        tidemark_core::config::table_selected(&self.tables, schema, table)
    }

    /// The rustls configuration for this server, when TLS may be used.
    pub fn tls_config(&self) -> Result<Option<rustls::ClientConfig>, ConfigError> {
        if self.ssl_mode == SslMode::Disable {
            return Ok(None);
        }
        let cfg = tidemark_core::tls::client_config(
            self.ssl_mode.verify(),
            self.ssl_root_cert.as_deref(),
        )?;
        Ok(Some(cfg))
    }

    /// A tokio-postgres configuration for ordinary SQL with the pinned session settings.
    pub fn sql_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(APPLICATION_NAME)
            .options(SESSION_OPTIONS)
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .ssl_mode(match self.ssl_mode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
        if let Some(p) = &self.password {
            c.password(p.as_bytes());
        }
        c
    }

    /// Secrets to scrub from any server message before it is shown.
    pub fn secrets(&self) -> Vec<&str> {
        self.password.iter().map(String::as_str).collect()
    }
}

fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes.get(i) {
            Some(b'%') => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| "bad percent escape".to_string())?;
                out.push(hex);
                i += 3;
            }
            Some(b) => {
                out.push(*b);
                i += 1;
            }
            None => break,
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 after percent-decoding".to_string())
}

/// Quotes an SQL identifier: `a"b` → `"a""b"`.
pub fn quote_ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    for c in name.chars() {
        if c == '"' {
            s.push('"');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// Quotes an SQL string literal: `it's` → `'it''s'` (with `E''` form when it has backslashes).
pub fn quote_literal(text: &str) -> String {
    postgres_protocol::escape::escape_literal(text)
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(url: &str) -> PipelineConfig {
        serde_json::from_value(serde_json::json!({
            "name": "shop-1",
            "source": {"kind": "postgres", "url": url, "tables": ["public.*"]}
        }))
        .unwrap()
    }

    #[test]
    fn parses_url_and_derives_names() {
        let s = PgSettings::from_pipeline(&pipeline(
            "postgres://rep%40x:p%2Fw@db.example:6543/shop?sslmode=verify-full&sslrootcert=/ca.pem",
        ))
        .unwrap();
        assert_eq!(s.host, "db.example");
        assert_eq!(s.port, 6543);
        assert_eq!(s.user, "rep@x");
        assert_eq!(s.password.as_deref(), Some("p/w"));
        assert_eq!(s.dbname, "shop");
        assert_eq!(s.ssl_mode, SslMode::VerifyFull);
        assert_eq!(s.ssl_root_cert.as_deref(), Some("/ca.pem"));
        assert_eq!(s.slot, "tidemark_shop_1");
        assert_eq!(s.publication, "tidemark_shop-1");
        assert!(s.publication_managed);
        assert!(!format!("{s:?}").contains("p/w"));
    }

    #[test]
    fn rejects_bad_urls() {
        for u in [
            "postgres://u@h/db?sslmode=maybe",
            "postgres://h/db",
            "postgres://u@h/",
            "postgres://u@h/db?foo=1",
            "mysql://u@h/db",
        ] {
            assert!(PgSettings::from_pipeline(&pipeline(u)).is_err(), "{u}");
        }
    }

    #[test]
    fn ipv6_and_defaults() {
        let s = PgSettings::from_pipeline(&pipeline("postgresql://u@[::1]/d")).unwrap();
        assert_eq!(s.host, "::1");
        assert_eq!(s.port, 5432);
        assert_eq!(s.ssl_mode, SslMode::Prefer);
    }

    #[test]
    fn slot_names() {
        assert_eq!(default_slot_name("A-b.c"), "tidemark_a_b_c");
        assert_eq!(default_slot_name(&"x".repeat(100)).len(), 63);
        assert!(check_slot_name("Bad").is_err());
        assert!(check_slot_name("good_1").is_ok());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified("s", "t"), "\"s\".\"t\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
