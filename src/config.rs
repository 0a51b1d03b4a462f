//! Loading `pipelines.toml`.
//!
//! Three steps, each with errors that point at the culprit:
//! 1. the file is parsed strictly (unknown keys and wrong types are errors)
//!    and the error names the key and its line — built from the parser's
//!    message and span, never by echoing the line, which may hold a secret;
//! 2. figment merges `TIDEMARK_NATS__URL`-style environment overrides for the
//!    `nats`, `metrics` and `log` tables;
//! 3. `${VAR}` and `${file:/path}` inside strings are replaced from the
//!    environment or a file, so secrets never need to sit in the file.
//!
//! Validation does no I/O beyond reading the file and secret files.

use figment::providers::{Env, Format as _, Toml};
use figment::Figment;
use std::path::Path;
use tidemark_core::config::Config;

/// A configuration error, ready to print.
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
    /// Syntax error, unknown key or wrong type in the file.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// File.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// An environment override is wrong.
    #[error("{path}: environment override: {message}")]
    Env {
        /// File.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// `${…}` could not be resolved.
    #[error("{path}: {key}: {message}")]
    Interpolate {
        /// File.
        path: String,
        /// Key path such as `pipelines[0].source.url`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A semantic rule is broken.
    #[error("{path}: {source}")]
    Invalid {
        /// File.
        path: String,
        /// The rule.
        #[source]
        source: tidemark_core::config::ValidationError,
    },
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
    // 1. Strict parse of the file alone, for errors with line numbers.
    if let Err(e) = toml::from_str::<Config>(text) {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        return Err(ConfigError::Parse {
            path: shown.to_owned(),
            line,
            column,
            message: e.message().trim().to_owned(),
        });
    }
    // 2. Environment overrides for the global tables.
    let env = Env::prefixed("TIDEMARK_").split("__").filter(|k| {
        let k = k.as_str().to_ascii_lowercase();
        k.starts_with("nats.") || k.starts_with("metrics.") || k.starts_with("log.")
    });
    let merged: serde_json::Value = Figment::from(Toml::string(text))
        .merge(env)
        .extract()
        .map_err(|e| ConfigError::Env {
            path: shown.to_owned(),
            message: e.to_string(),
        })?;
    // 3. `${…}` interpolation.
    let mut merged = merged;
    interpolate(&mut merged, &mut String::new()).map_err(|(key, message)| {
        ConfigError::Interpolate {
            path: shown.to_owned(),
            key,
            message,
        }
    })?;
    let config: Config = serde_json::from_value(merged).map_err(|e| ConfigError::Env {
        path: shown.to_owned(),
        message: e.to_string(),
    })?;
    config.validate().map_err(|source| ConfigError::Invalid {
        path: shown.to_owned(),
        source,
    })?;
    Ok(config)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Replaces `${VAR}` / `${file:PATH}` in every string; `$${` stays a literal `${`.
fn interpolate(v: &mut serde_json::Value, key: &mut String) -> Result<(), (String, String)> {
    match v {
        serde_json::Value::String(s) if s.contains('$') => {
            *s = expand(s).map_err(|m| (key.clone(), m))?;
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = key.len();
                key.push_str(&format!("[{i}]"));
                interpolate(item, key)?;
                key.truncate(len);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let len = key.len();
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
                interpolate(item, key)?;
                key.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
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
        assert!(e.contains("unknown field `tabels`"), "{e}");
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
}
