//! Configuration types (`pipelines.toml`).
//!
//! Pure data with defaults and validation that does no I/O; loading (TOML
//! with line numbers, `TIDEMARK_…` overrides, `${VAR}` interpolation) lives
//! in the daemon. Every struct denies unknown keys so a typo is an error
//! that names the key instead of a silently ignored setting. The doc comment
//! on each field is the user documentation (see docs/configuration.md).

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// NATS connection shared by all pipelines.
    #[serde(default)]
    pub nats: NatsConfig,
    /// Prometheus endpoint and health checks.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Pipelines: one source each, any number of sinks.
    #[serde(default)]
    pub pipelines: Vec<PipelineConfig>,
}

/// `[nats]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma separated. `tls://` forces TLS. Default `nats://127.0.0.1:4222`.
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// User name (with `password`).
    #[serde(default)]
    pub user: Option<String>,
    /// Password; use `${VAR}` to take it from the environment.
    #[serde(default)]
    pub password: Option<String>,
    /// Token authentication.
    #[serde(default)]
    pub token: Option<String>,
    /// Path of a `.creds` file (JWT + nkey).
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// Path of an nkey seed file.
    #[serde(default)]
    pub nkey_file: Option<String>,
    /// Require TLS even for `nats://` URLs.
    #[serde(default)]
    pub tls_required: bool,
    /// PEM file with the CA certificates that sign the server's certificate.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// PEM client certificate for mutual TLS (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    /// PEM client key for mutual TLS.
    #[serde(default)]
    pub tls_key_file: Option<String>,
    /// JetStream KV bucket holding source checkpoints. Default `tidemark_state`.
    #[serde(default = "default_state_bucket")]
    pub state_bucket: String,
    /// Stream replicas (1 for a single server, 3 for a cluster). Default 1.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// JetStream duplicate window in seconds (≥ 120). Default 300.
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window_secs: u64,
    /// How long the stream keeps messages, in seconds (0 = forever). Default 7 days.
    #[serde(default = "default_max_age")]
    pub max_age_secs: u64,
    /// Publishes awaiting their JetStream ack at once. Default 1024.
    #[serde(default = "default_publish_window")]
    pub publish_window: usize,
    /// Seconds between client PINGs; a connection that misses two PONGs is dropped and
    /// re-established (how fast a half-open TCP connection is noticed). Default 20.
    #[serde(default = "default_ping_interval")]
    pub ping_interval_secs: u64,
}

fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_state_bucket() -> String {
    "tidemark_state".into()
}
fn default_replicas() -> usize {
    1
}
fn default_duplicate_window() -> u64 {
    300
}
fn default_max_age() -> u64 {
    7 * 24 * 3600
}
fn default_publish_window() -> usize {
    1024
}
fn default_ping_interval() -> u64 {
    20
}

impl NatsConfig {
    /// The servers of [`url`](NatsConfig::url), parsed as the client parses them when it
    /// connects. The error names the position of the bad entry, never the URL (it may hold
    /// a password).
    pub fn server_addrs(&self) -> Result<Vec<async_nats::ServerAddr>, String> {
        self.url
            .split(',')
            .map(str::trim)
            .enumerate()
            .map(|(i, one)| {
                if one.is_empty() {
                    return Err(format!("server {} of the list is empty", i + 1));
                }
                one.parse::<async_nats::ServerAddr>().map_err(|e| {
                    let secrets = url_secrets(one);
                    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
                    let why = crate::redact::scrub(&e.to_string(), &secrets);
                    format!("server {} is not a NATS URL: {why}", i + 1)
                })
            })
            .collect()
    }
}

/// The password and secret query values of `raw`, to scrub from parser messages.
pub fn url_secrets(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    // The userinfo part, even when the rest of the URL does not parse.
    if let Some((_, rest)) = raw.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                out.push(password.to_owned());
                if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
                    out.push(decoded.into_owned());
                }
            }
        }
    }
    if let Ok(u) = url::Url::parse(raw) {
        for (k, v) in u.query_pairs() {
            if matches!(k.as_ref(), "password" | "token" | "sslpassword") {
                out.push(v.into_owned());
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: default_nats_url(),
            user: None,
            password: None,
            token: None,
            credentials_file: None,
            nkey_file: None,
            tls_required: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            state_bucket: default_state_bucket(),
            replicas: default_replicas(),
            duplicate_window_secs: default_duplicate_window(),
            max_age_secs: default_max_age(),
            publish_window: default_publish_window(),
            ping_interval_secs: default_ping_interval(),
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`). Empty disables it.
    /// Default `127.0.0.1:9187`.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9187".into()
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`. Default `text`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `tidemark=debug`. `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_log_level(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable key=value lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[[pipelines]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Pipeline name: first part of every envelope id, part of subjects and stream names.
    pub name: String,
    /// JetStream stream name. Default `TIDEMARK_<NAME>`.
    #[serde(default)]
    pub stream: Option<String>,
    /// First subject token. Default `tidemark`.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// The source.
    pub source: SourceConfig,
    /// The sinks fed from this pipeline's stream.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// What the source does with an event larger than the NATS server's `max_payload`:
    /// `reference` (default), `dead_letter` or `halt`.
    #[serde(default)]
    pub oversize: Oversize,
}

/// What happens to an event whose envelope is larger than NATS accepts in one message
/// (the server's `max_payload`, or the stream's `max_msg_size` when that is smaller).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Oversize {
    /// Store the whole envelope in the pipeline's JetStream object store bucket and publish a
    /// small reference that sinks resolve (default): nothing is lost, nothing stops.
    #[default]
    Reference,
    /// Publish a small marker without the row data to `<prefix>.<pipeline>.oversize`, count
    /// and log it, and go on; sinks skip the change.
    DeadLetter,
    /// Stop the source at the event with a definite error naming table, key, size and limit.
    Halt,
}

impl Oversize {
    /// The configuration spelling (`reference`, `dead_letter`, `halt`).
    pub fn as_str(self) -> &'static str {
        match self {
            Oversize::Reference => "reference",
            Oversize::DeadLetter => "dead_letter",
            Oversize::Halt => "halt",
        }
    }
}

fn default_subject_prefix() -> String {
    "tidemark".into()
}

impl PipelineConfig {
    /// The stream name in effect.
    pub fn stream_name(&self) -> String {
        self.stream
            .clone()
            .unwrap_or_else(|| crate::subject::default_stream_name(&self.name))
    }
}

/// Source connector kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// PostgreSQL logical replication (pgoutput).
    Postgres,
    /// MySQL / MariaDB row binlog.
    Mysql,
}

/// Initial snapshot mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Copy existing rows once, before streaming.
    #[default]
    Initial,
    /// Stream changes only.
    Never,
}

/// `[pipelines.source]`. Keys marked postgres-only or mysql-only are rejected for the other kind.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `postgres` or `mysql`.
    pub kind: SourceKind,
    /// Connection URL: `postgres://user:pass@host:5432/db?sslmode=require` or
    /// `mysql://user:pass@host:3306/db?ssl-mode=required`.
    pub url: String,
    /// Tables to capture as `schema.table` (MySQL: `db.table`) globs; `*` matches any run of
    /// characters. Default: every table.
    #[serde(default = "default_tables")]
    pub tables: Vec<String>,
    /// `initial` (default) or `never`.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Rows per snapshot chunk. Default 10000.
    #[serde(default = "default_chunk")]
    pub snapshot_chunk_size: u64,
    /// Connections reading the snapshot in parallel. Default 2.
    #[serde(default = "default_parallel")]
    pub snapshot_parallelism: usize,
    /// Postgres: replication slot. Default `tidemark_<pipeline>`.
    #[serde(default)]
    pub slot: Option<String>,
    /// Postgres: publication. Default `tidemark_<pipeline>`, created when missing.
    #[serde(default)]
    pub publication: Option<String>,
    /// MySQL: the replica server id this connector uses; unique per connector instance.
    #[serde(default)]
    pub server_id: Option<u32>,
    /// MySQL: render TINYINT(1) as bool. Default false.
    #[serde(default)]
    pub tinyint1_as_bool: bool,
    /// Seconds between status updates (Postgres) / heartbeats (MySQL). Default 10.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
}

fn default_tables() -> Vec<String> {
    vec!["*".into()]
}
fn default_chunk() -> u64 {
    10_000
}
fn default_parallel() -> usize {
    2
}
fn default_heartbeat() -> u64 {
    10
}

/// Sink connector kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// PostgreSQL.
    Postgres,
    /// MySQL / MariaDB.
    Mysql,
}

/// What a sink does with a change its store rejects permanently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop the sink with a clear error (default): nothing is skipped silently.
    #[default]
    Halt,
    /// Publish the event and the error to `<prefix>.<pipeline>.dlq.<sink>` and go on.
    DeadLetter,
}

/// `[[pipelines.sinks]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Sink name, unique within the pipeline; names its durable consumer.
    pub name: String,
    /// `postgres` or `mysql`.
    pub kind: SinkKind,
    /// Target URL; for MySQL the tables go to the database in the URL.
    pub url: String,
    /// Source tables to apply (`schema.table` globs). Default: all.
    #[serde(default = "default_tables")]
    pub tables: Vec<String>,
    /// Postgres sink: target schema. Default: the source schema (the database for MySQL sources).
    #[serde(default)]
    pub schema: Option<String>,
    /// `halt` (default) or `dead_letter`.
    #[serde(default)]
    pub on_error: OnError,
    /// Most events committed in one target transaction, when source transactions allow it.
    /// Default 2000.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Create missing target tables from the envelope schema. Default false.
    #[serde(default)]
    pub create_tables: bool,
    /// Seconds one target operation (connect, a batch statement, a commit) may take before
    /// the connection is presumed dead and the session restarts (transient). Default 60.
    #[serde(default = "default_sink_timeout")]
    pub timeout_secs: u64,
}

fn default_batch() -> usize {
    2000
}

fn default_sink_timeout() -> u64 {
    60
}

/// A configuration mistake found without touching any server.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ValidationError {
    /// Where: `pipelines[0].source.slot`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Config {
    /// Checks what serde cannot: names, kind-specific keys, uniqueness, ranges.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let err = |path: String, message: &str| ValidationError {
            path,
            message: message.to_owned(),
        };
        if self.nats.duplicate_window_secs < 120 {
            return Err(err(
                "nats.duplicate_window_secs".into(),
                "must be at least 120 so a restart's re-publishes are deduplicated",
            ));
        }
        if self.nats.user.is_some() != self.nats.password.is_some() {
            return Err(err(
                "nats.user".into(),
                "user and password must be given together",
            ));
        }
        if self.nats.tls_cert_file.is_some() != self.nats.tls_key_file.is_some() {
            return Err(err(
                "nats.tls_cert_file".into(),
                "tls_cert_file and tls_key_file must be given together",
            ));
        }
        if self.nats.publish_window == 0 {
            return Err(err("nats.publish_window".into(), "must be at least 1"));
        }
        if let Err(e) = self.nats.server_addrs() {
            return Err(ValidationError {
                path: "nats.url".into(),
                message: e,
            });
        }
        if self.nats.ping_interval_secs == 0 {
            return Err(err("nats.ping_interval_secs".into(), "must be at least 1"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            let at = |k: &str| format!("pipelines[{i}].{k}");
            if p.name.is_empty() || p.name.len() > 64 {
                return Err(err(at("name"), "must be 1 to 64 characters"));
            }
            if !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(err(
                    at("name"),
                    "may contain only letters, digits, '_' and '-'",
                ));
            }
            if !names.insert(p.name.clone()) {
                return Err(err(at("name"), "is used by two pipelines"));
            }
            let s = &p.source;
            match s.kind {
                SourceKind::Postgres => {
                    if s.server_id.is_some() {
                        return Err(err(at("source.server_id"), "is a mysql-only key"));
                    }
                    if s.tinyint1_as_bool {
                        return Err(err(at("source.tinyint1_as_bool"), "is a mysql-only key"));
                    }
                    if !s.url.starts_with("postgres://") && !s.url.starts_with("postgresql://") {
                        return Err(err(at("source.url"), "must start with postgres://"));
                    }
                }
                SourceKind::Mysql => {
                    if s.slot.is_some() {
                        return Err(err(at("source.slot"), "is a postgres-only key"));
                    }
                    if s.publication.is_some() {
                        return Err(err(at("source.publication"), "is a postgres-only key"));
                    }
                    if s.server_id.unwrap_or(0) == 0 {
                        return Err(err(
                            at("source.server_id"),
                            "is required for mysql sources: a replica id unique on the server \
                             (not the server's own server_id)",
                        ));
                    }
                    if !s.url.starts_with("mysql://") {
                        return Err(err(at("source.url"), "must start with mysql://"));
                    }
                }
            }
            if s.tables.is_empty() {
                return Err(err(
                    at("source.tables"),
                    "must name at least one table glob",
                ));
            }
            if s.snapshot_chunk_size == 0 {
                return Err(err(at("source.snapshot_chunk_size"), "must be at least 1"));
            }
            if s.snapshot_parallelism == 0 {
                return Err(err(at("source.snapshot_parallelism"), "must be at least 1"));
            }
            if s.heartbeat_secs == 0 {
                return Err(err(at("source.heartbeat_secs"), "must be at least 1"));
            }
            let mut sinks = std::collections::HashSet::new();
            for (j, k) in p.sinks.iter().enumerate() {
                let at = |key: &str| format!("pipelines[{i}].sinks[{j}].{key}");
                if !sinks.insert(k.name.clone()) {
                    return Err(err(at("name"), "is used by two sinks of this pipeline"));
                }
                if k.name.is_empty() {
                    return Err(err(at("name"), "must not be empty"));
                }
                if k.batch_size == 0 {
                    return Err(err(at("batch_size"), "must be at least 1"));
                }
                if k.timeout_secs == 0 {
                    return Err(err(at("timeout_secs"), "must be at least 1"));
                }
                if k.kind == SinkKind::Mysql && k.schema.is_some() {
                    return Err(err(
                        at("schema"),
                        "is a postgres-sink key; a mysql sink writes to the database in its url",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Matches `name` against a glob where `*` matches any run of characters (including dots).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// True when `schema.table` matches any of `globs`.
pub fn table_selected(globs: &[String], schema: &str, table: &str) -> bool {
    let full = format!("{schema}.{table}");
    globs.iter().any(|g| glob_match(g, &full))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "public.orders"));
        assert!(glob_match("public.*", "public.orders"));
        assert!(!glob_match("public.*", "other.orders"));
        assert!(glob_match("public.ord*s", "public.orders"));
        assert!(!glob_match("public.orders", "public.orders2"));
        assert!(table_selected(&["shop.*".into()], "shop", "t"));
    }

    #[test]
    fn nats_url_lists_are_parsed_without_echoing_passwords() {
        let mut n = NatsConfig {
            url: "nats://a:4222, tls://b:4223,c".into(),
            ..NatsConfig::default()
        };
        assert_eq!(n.server_addrs().map(|a| a.len()), Ok(3));
        n.url = "nats://u:Pw_s3cret@a:4222,nats://u:Pw_s3cret@b:42x".into();
        let e = n.server_addrs().err().unwrap_or_default();
        assert!(e.starts_with("server 2 is not a NATS URL"), "{e}");
        assert!(!e.contains("Pw_s3cret"), "{e}");
        n.url = "nats://a:4222,".into();
        assert!(n.server_addrs().is_err());
    }

    #[test]
    fn oversize_policy_parses_and_defaults_to_reference() {
        let base = "[[pipelines]]\nname = \"p\"\n[pipelines.source]\nkind = \"postgres\"\nurl = \"postgres://h/d\"\n";
        let c: Config = toml::from_str(base).unwrap();
        assert_eq!(c.pipelines[0].oversize, Oversize::Reference);
        for (text, want) in [
            ("halt", Oversize::Halt),
            ("dead_letter", Oversize::DeadLetter),
            ("reference", Oversize::Reference),
        ] {
            let with = base.replace(
                "name = \"p\"\n",
                &format!("name = \"p\"\noversize = \"{text}\"\n"),
            );
            let c: Config = toml::from_str(&with).unwrap();
            assert_eq!(c.pipelines[0].oversize, want);
            assert_eq!(want.as_str(), text);
        }
        let bad = base.replace("name = \"p\"\n", "name = \"p\"\noversize = \"drop\"\n");
        let e = toml::from_str::<Config>(&bad).unwrap_err().to_string();
        assert!(e.contains("oversize") || e.contains("reference"), "{e}");
    }

    #[test]
    fn sink_timeout_defaults_to_60_and_rejects_0() {
        let file = |extra: &str| {
            format!(
                "[[pipelines]]\nname = \"p\"\n[pipelines.source]\nkind = \"postgres\"\n\
                 url = \"postgres://u@h/d\"\n[[pipelines.sinks]]\nname = \"s\"\n\
                 kind = \"postgres\"\nurl = \"postgres://u@h/d\"\n{extra}"
            )
        };
        let c: Config = toml::from_str(&file("")).unwrap();
        assert_eq!(c.pipelines[0].sinks[0].timeout_secs, 60);
        assert!(c.validate().is_ok());
        let c: Config = toml::from_str(&file("timeout_secs = 0\n")).unwrap();
        let e = c.validate().unwrap_err();
        assert_eq!(e.path, "pipelines[0].sinks[0].timeout_secs");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let e = toml::from_str::<Config>("[nats]\nurll = \"x\"\n");
        assert!(e.is_err());
    }
}
