//! Loading `pipelines.toml`.
//!
//! Four steps, each with errors that point at the culprit and never print a
//! value (a value may be a secret; the key path, the line and the kind of
//! value expected are enough to fix it):
//! 1. the file is parsed into a [`tree`] whose values remember their line;
//! 2. `TIDEMARK_NATS__URL`-style environment overrides for the `nats`,
//!    `metrics` and `log` tables are merged in as strings (a numeric
//!    password stays a string);
//! 3. `${VAR}` and `${file:/path}` inside strings are replaced from the
//!    environment or a file, so secrets never need to sit in the file;
//! 4. the typed [`Config`] is read from the tree by [`de`] (unknown keys and
//!    wrong types are errors naming the key path and its line or variable),
//!    then checked by [`Config::validate`] and every connection URL is parsed
//!    by the connector that will use it.
//!
//! Validation does no I/O beyond reading the file and secret files.

mod de;
mod tree;

use std::fmt;
use std::path::Path;
use tidemark_core::config::Config;
use tree::{Node, Origin};

/// Prefix of environment overrides.
const ENV_PREFIX: &str = "TIDEMARK_";
/// Tables the environment may override.
const ENV_TABLES: &[&str] = &["nats", "metrics", "log"];

/// Where a wrong setting was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// At this line of the file.
    Line(usize),
    /// In this environment variable.
    Env(String),
    /// Not known (a default, or a key that is missing).
    Unknown,
}

impl Place {
    fn of(origin: Option<&Origin>) -> Place {
        match origin {
            Some(Origin::File { line }) if *line > 0 => Place::Line(*line),
            Some(Origin::Env { var }) => Place::Env(var.clone()),
            _ => Place::Unknown,
        }
    }
}

/// A configuration error, ready to print. No variant ever holds a configured value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// File.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong (the parser's words, which never quote the input).
        message: String,
    },
    /// A key is unknown, missing, of the wrong type, unresolvable or breaks a rule.
    #[error("{}", KeyDisplay(self))]
    Key {
        /// File.
        path: String,
        /// Key path such as `pipelines[0].sinks[1].batch_size`.
        key: String,
        /// Where the value was written.
        place: Place,
        /// What is wrong and what is expected.
        message: String,
    },
}

struct KeyDisplay<'a>(&'a ConfigError);

impl fmt::Display for KeyDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ConfigError::Key {
            path,
            key,
            place,
            message,
        } = self.0
        else {
            return Ok(());
        };
        let key = if key.is_empty() { "(top level)" } else { key };
        match place {
            Place::Line(line) => write!(f, "{path}:{line}: {key}: {message}"),
            Place::Env(var) => write!(
                f,
                "{path}: {key} (set by environment variable {var}): {message}"
            ),
            Place::Unknown => write!(f, "{path}: {key}: {message}"),
        }
    }
}

/// Loads, merges, interpolates and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    load_str(&text, &shown)
}

/// [`load`] for text already in memory; `shown` names it in errors.
pub fn load_str(text: &str, shown: &str) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
        .filter(|(k, _)| is_override(k))
        .map(|(k, v)| (k, v.to_string_lossy().into_owned()))
        .collect();
    load_with_env(text, shown, &env)
}

/// Whether environment variable `name` overrides a key: `TIDEMARK_<TABLE>__<KEY>`.
fn is_override(name: &str) -> bool {
    override_path(name).is_some()
}

/// `TIDEMARK_NATS__STATE_BUCKET` → `["nats", "state_bucket"]`.
fn override_path(name: &str) -> Option<Vec<String>> {
    let head = name.get(..ENV_PREFIX.len())?;
    if !head.eq_ignore_ascii_case(ENV_PREFIX) {
        return None;
    }
    let path: Vec<String> = name[ENV_PREFIX.len()..]
        .to_ascii_lowercase()
        .split("__")
        .map(str::to_owned)
        .collect();
    (path.len() >= 2
        && ENV_TABLES.contains(&path[0].as_str())
        && path.iter().all(|p| !p.is_empty()))
    .then_some(path)
}

/// [`load_str`] with the environment overrides given (name, value).
pub fn load_with_env(
    text: &str,
    shown: &str,
    env: &[(String, String)],
) -> Result<Config, ConfigError> {
    // 1. The file, with lines.
    let mut root = tree::parse(text).map_err(|(message, line, column)| ConfigError::Syntax {
        path: shown.to_owned(),
        line,
        column,
        message,
    })?;
    // 2. Environment overrides, as strings.
    for (name, value) in env {
        if let Some(path) = override_path(name) {
            root.set_env(&path, value.clone(), name);
        }
    }
    // 3. `${…}` interpolation.
    let mut failed = None;
    let _ = root.for_each_string(&mut String::new(), &mut |key: &str, s: &mut String| {
        if !s.contains('$') {
            return Ok(());
        }
        match expand(s) {
            Ok(v) => {
                *s = v;
                Ok(())
            }
            Err(m) => {
                failed = Some((key.to_owned(), m));
                Err(())
            }
        }
    });
    if let Some((key, message)) = failed {
        return Err(key_error(shown, &root, key, message));
    }
    // 4. Types, rules, URLs.
    let config: Config = de::from_tree(&root).map_err(|e| ConfigError::Key {
        path: shown.to_owned(),
        key: e.path,
        place: Place::of(e.origin.as_ref()),
        message: e.message,
    })?;
    config
        .validate()
        .map_err(|e| key_error(shown, &root, e.path, e.message))?;
    crate::connectors::validate_urls(&config)
        .map_err(|e| key_error(shown, &root, e.path, e.message))?;
    Ok(config)
}

/// An error about `key`, placed at the line or variable the key was set by.
fn key_error(shown: &str, root: &Node, key: String, message: String) -> ConfigError {
    let place = Place::of(root.find(&key).map(|n| &n.origin));
    ConfigError::Key {
        path: shown.to_owned(),
        key,
        place,
        message,
    }
}

/// Expands one string.
pub fn expand(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| "unterminated ${ in value".to_owned())?;
            let name = &body[..end];
            if let Some(file) = name.strip_prefix("file:") {
                let content = std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read secret file {file}: {e}"))?;
                out.push_str(content.trim_end_matches(['\n', '\r']));
            } else {
                let value = std::env::var(name)
                    .map_err(|_| format!("environment variable {name} is not set"))?;
                out.push_str(&value);
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[nats]
url = "nats://127.0.0.1:4222"

[[pipelines]]
name = "shop"
  [pipelines.source]
  kind = "postgres"
  url = "postgres://u:${TIDEMARK_TEST_SECRET_A}@127.0.0.1/shop"
  tables = ["public.*"]
"#;

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = GOOD.replace("tables = [", "tabels = [");
        let e = load_str(&text, "p.toml").unwrap_err().to_string();
        assert!(e.starts_with("p.toml:10:"), "{e}");
        assert!(
            e.contains("pipelines[0].source.tabels: unknown key `tabels`"),
            "{e}"
        );
    }

    #[test]
    fn parse_error_does_not_echo_secrets() {
        let text = GOOD.replace(
            "tables = [\"public.*\"]",
            "tables = [\"public.*\"\nsecret = \"hunter22\" x",
        );
        let e = load_str(&text, "p.toml").unwrap_err().to_string();
        assert!(!e.contains("hunter22"), "{e}");
    }

    #[test]
    fn interpolates_env_and_reports_missing() {
        std::env::set_var("TIDEMARK_TEST_SECRET_A", "s3cret");
        let c = load_str(GOOD, "p.toml").unwrap();
        assert_eq!(
            c.pipelines[0].source.url,
            "postgres://u:s3cret@127.0.0.1/shop"
        );
        let e = load_str(&GOOD.replace("SECRET_A", "SECRET_MISSING"), "p.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pipelines[0].source.url"), "{e}");
        assert!(e.contains("TIDEMARK_TEST_SECRET_MISSING is not set"), "{e}");
    }

    #[test]
    fn expand_forms() {
        assert_eq!(expand("a$${b}").unwrap(), "a${b}");
        assert_eq!(expand("cost $5").unwrap(), "cost $5");
        assert!(expand("${oops").is_err());
    }

    /// A file with a secret-looking value everywhere a test may put one.
    const BASE: &str = r#"[nats]
url = "nats://127.0.0.1:4222"
user = "tm"
password = "Pw_S3cr3t_file"

[[pipelines]]
name = "shop"
  [pipelines.source]
  kind = "postgres"
  url = "postgres://u:Pw_S3cr3t_src@127.0.0.1:5432/shop"
  tables = ["public.*"]
  [[pipelines.sinks]]
  name = "a"
  kind = "postgres"
  url = "postgres://u:Pw_S3cr3t_a@127.0.0.1:5432/a"
  [[pipelines.sinks]]
  name = "b"
  kind = "mysql"
  url = "mysql://u:Pw_S3cr3t_b@127.0.0.1:3306/b"
  batch_size = 10
"#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn base_loads() {
        let c = load_with_env(BASE, "p.toml", &[]).unwrap();
        assert_eq!(c.pipelines[0].sinks[1].batch_size, 10);
    }

    /// (replace this, with this, environment, the error must contain all of these).
    type Case = (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
    );

    const CASES: &[Case] = &[
        (
            "batch_size = 10",
            "batch_size = \"Pw_S3cr3t_x\"",
            &[],
            &["p.toml:20: pipelines[0].sinks[1].batch_size: expected a whole number ≥ 0, found a string"],
        ),
        (
            "batch_size = 10",
            "batch_size = -5",
            &[],
            &["p.toml:20: pipelines[0].sinks[1].batch_size: expected a whole number ≥ 0, found a negative number"],
        ),
        (
            "batch_size = 10",
            "batch_size = 1.5",
            &[],
            &["pipelines[0].sinks[1].batch_size: expected a whole number ≥ 0, found a number with a fraction"],
        ),
        (
            "batch_size = 10",
            "create_tables = \"Pw_S3cr3t_x\"",
            &[],
            &["p.toml:20: pipelines[0].sinks[1].create_tables: expected true or false, found a string"],
        ),
        (
            "batch_size = 10",
            "on_error = \"Pw_S3cr3t_x\"",
            &[],
            &["p.toml:20: pipelines[0].sinks[1].on_error: expected `halt` or `dead_letter`"],
        ),
        (
            "batch_size = 10",
            "tables = \"Pw_S3cr3t_x\"",
            &[],
            &["p.toml:20: pipelines[0].sinks[1].tables: expected a list, found a string"],
        ),
        (
            "batch_size = 10",
            "tables = [\"a.b\", 7]",
            &[],
            &["p.toml:20: pipelines[0].sinks[1].tables[1]: expected a string, found a whole number"],
        ),
        (
            "batch_size = 10",
            "batchsize = 10",
            &[],
            &["p.toml:20: pipelines[0].sinks[1].batchsize: unknown key `batchsize` (known keys: name, kind, url"],
        ),
        (
            "password = \"Pw_S3cr3t_file\"",
            "password = 123456",
            &[],
            &["p.toml:4: nats.password: expected a string, found a whole number"],
        ),
        (
            "tables = [\"public.*\"]",
            "tables = [\"public.*\"]\n  server_id = 5000000000",
            &[],
            &["p.toml:12: pipelines[0].source.server_id: expected a whole number from 0 to 4294967295, found a number out of range"],
        ),
        (
            "[nats]",
            "[log]\nformat = 7\n[nats]",
            &[],
            &["p.toml:2: log.format: expected `text` or `json`, found a whole number"],
        ),
        (
            "  kind = \"mysql\"\n",
            "",
            &[],
            &["pipelines[0].sinks[1]: missing required key `kind`"],
        ),
        (
            "  [pipelines.source]",
            "  source = \"Pw_S3cr3t_x\"\n  [pipelines.x]",
            &[],
            &["p.toml:8: pipelines[0].source: expected a table, found a string"],
        ),
        (
            "batch_size = 10",
            "batch_size = 0",
            &[],
            &["p.toml:20: pipelines[0].sinks[1].batch_size: must be at least 1"],
        ),
        // Environment overrides.
        (
            "",
            "",
            &[("TIDEMARK_NATS__TLS_REQUIRED", "Pw_S3cr3t_env")],
            &["p.toml: nats.tls_required (set by environment variable TIDEMARK_NATS__TLS_REQUIRED): expected true or false, found a string"],
        ),
        (
            "",
            "",
            &[("TIDEMARK_NATS__REPLICAS", "Pw_S3cr3t_env")],
            &["nats.replicas (set by environment variable TIDEMARK_NATS__REPLICAS): expected a whole number ≥ 0, found a string"],
        ),
        (
            "",
            "",
            &[("TIDEMARK_NATS__REPLICAS", "-3")],
            &["nats.replicas (set by environment variable TIDEMARK_NATS__REPLICAS): expected a whole number ≥ 0, found a negative number"],
        ),
        (
            "",
            "",
            &[("TIDEMARK_NATS__PASWORD", "Pw_S3cr3t_env")],
            &["nats.pasword (set by environment variable TIDEMARK_NATS__PASWORD): unknown key `pasword`"],
        ),
        (
            "",
            "",
            &[("TIDEMARK_LOG__FORMAT", "Pw_S3cr3t_env")],
            &["log.format (set by environment variable TIDEMARK_LOG__FORMAT): expected `text` or `json`"],
        ),
        (
            "",
            "",
            &[("TIDEMARK_NATS__DUPLICATE_WINDOW_SECS", "60")],
            &["nats.duplicate_window_secs (set by environment variable TIDEMARK_NATS__DUPLICATE_WINDOW_SECS): must be at least 120"],
        ),
        // URLs, parsed by the connectors' own parsers.
        (
            "127.0.0.1:5432/shop",
            "127.0.0.1:99999/shop",
            &[],
            &["p.toml:10: pipelines[0].source.url:", "invalid port number"],
        ),
        (
            "127.0.0.1:5432/shop",
            "127.0.0.1:5432/shop?sslmode=bogus",
            &[],
            &["p.toml:10: pipelines[0].source.url:", "sslmode=bogus is not one of"],
        ),
        (
            "127.0.0.1:5432/shop",
            "127.0.0.1:5432/",
            &[],
            &["p.toml:10: pipelines[0].source.url:", "no database"],
        ),
        (
            "127.0.0.1:5432/a\"",
            "127.0.0.1:5432/a?sslmode=bogus\"",
            &[],
            &["p.toml:15: pipelines[0].sinks[0].url:", "sslmode=bogus"],
        ),
        (
            "127.0.0.1:5432/a\"",
            "127.0.0.1:port/a\"",
            &[],
            &["p.toml:15: pipelines[0].sinks[0].url:", "invalid port number"],
        ),
        (
            "127.0.0.1:3306/b\"",
            "127.0.0.1:3306/\"",
            &[],
            &["p.toml:19: pipelines[0].sinks[1].url:", "must name the target database"],
        ),
        (
            "127.0.0.1:3306/b\"",
            "127.0.0.1:3306/b?ssl-mode=bogus\"",
            &[],
            &["p.toml:19: pipelines[0].sinks[1].url:", "ssl-mode=bogus"],
        ),
        (
            "  kind = \"postgres\"\n  url = \"postgres://u:Pw_S3cr3t_src@127.0.0.1:5432/shop\"",
            "  kind = \"mysql\"\n  server_id = 9\n  url = \"mysql://u:Pw_S3cr3t_src@127.0.0.1:3306/shop?ssl-mode=bogus\"",
            &[],
            &["pipelines[0].source.url:", "unknown ssl-mode"],
        ),
        (
            "url = \"nats://127.0.0.1:4222\"",
            "url = \"nats://tm:Pw_S3cr3t_nats@127.0.0.1:42x22\"",
            &[],
            &["p.toml:2: nats.url: server 1 is not a NATS URL"],
        ),
        (
            "url = \"nats://127.0.0.1:4222\"",
            "url = \"http://127.0.0.1:4222\"",
            &[],
            &["p.toml:2: nats.url: server 1 is not a NATS URL: invalid scheme"],
        ),
    ];

    #[test]
    fn bad_values_name_key_line_and_kind_never_the_value() {
        for (i, (from, to, vars, wanted)) in CASES.iter().enumerate() {
            assert!(BASE.contains(from), "case {i}: {from:?} not in BASE");
            let text = BASE.replacen(from, to, 1);
            let e = match load_with_env(&text, "p.toml", &env(vars)) {
                Ok(_) => panic!("case {i} ({to:?}, {vars:?}) was accepted"),
                Err(e) => e.to_string(),
            };
            for w in *wanted {
                assert!(e.contains(w), "case {i}: {e:?} lacks {w:?}");
            }
            assert!(!e.contains("S3cr3t"), "case {i}: a value leaked: {e}");
            for rust in ["u64", "usize", "u32", "i64", "invalid type", "struct "] {
                assert!(!e.contains(rust), "case {i}: Rust words in {e}");
            }
        }
    }

    #[test]
    fn env_strings_take_the_field_type() {
        let c = load_with_env(
            BASE,
            "p.toml",
            &env(&[
                ("TIDEMARK_NATS__PASSWORD", "123456"),
                ("TIDEMARK_NATS__USER", "007"),
                ("TIDEMARK_NATS__REPLICAS", "3"),
                ("TIDEMARK_NATS__TLS_REQUIRED", "true"),
                ("TIDEMARK_LOG__FORMAT", "json"),
                ("TIDEMARK_METRICS__LISTEN", "127.0.0.1:1"),
                ("TIDEMARK_TEST_SECRET", "ignored: not a config table"),
            ]),
        )
        .unwrap();
        assert_eq!(c.nats.password.as_deref(), Some("123456"));
        assert_eq!(c.nats.user.as_deref(), Some("007"));
        assert_eq!(c.nats.replicas, 3);
        assert!(c.nats.tls_required);
        assert_eq!(c.log.format, tidemark_core::config::LogFormat::Json);
        assert_eq!(c.metrics.listen, "127.0.0.1:1");
    }
}
