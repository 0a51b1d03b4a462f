//! Connecting to the target MySQL / MariaDB.
//!
//! The URL may carry `ssl-mode` (`disabled`, `preferred`, `required`, `verify_ca`,
//! `verify_identity`, as the mysql client spells it) and `ssl-ca`; mysql_async does not know
//! those keys, so they are taken out here and turned into rustls options (`required`
//! encrypts without checking the certificate, `verify_*` check it against `ssl-ca` alone when
//! given, like the mysql client's `--ssl-ca`, otherwise the bundled roots; `preferred`
//! connects without TLS). Every session is pinned to UTC (`TIMESTAMP` literals are read as UTC), utf8mb4
//! and a strict `sql_mode` (a value that does not fit is an error, never a silent truncation;
//! `NO_AUTO_VALUE_ON_ZERO` so an id 0 stays 0).

use crate::error::MySinkError;
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};
use std::time::Duration;
use tidemark_core::redact;

/// Session setup run on every connection.
const SESSION_SETUP: &[&str] = &[
    "SET NAMES utf8mb4",
    "SET time_zone = '+00:00'",
    "SET sql_mode = 'STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO'",
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
];

/// Parses the sink URL into driver options and the target database.
pub(crate) fn options(url: &str) -> Result<(Opts, String), MySinkError> {
    let shown = redact::url(url);
    let bad = |message: String| MySinkError::Url {
        url: shown.clone(),
        message,
    };
    let mut parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let mut mode = String::from("disabled");
    let mut ca = None;
    let mut keep = Vec::new();
    for (k, v) in parsed.query_pairs() {
        match k.as_ref() {
            "ssl-mode" | "ssl_mode" | "sslmode" => mode = v.to_ascii_lowercase().replace('-', "_"),
            "ssl-ca" | "ssl_ca" => ca = Some(v.into_owned()),
            _ => keep.push((k.into_owned(), v.into_owned())),
        }
    }
    parsed.set_query(None);
    if !keep.is_empty() {
        parsed.query_pairs_mut().extend_pairs(keep);
    }
    let opts = Opts::from_url(parsed.as_str()).map_err(|e| bad(e.to_string()))?;
    let db = opts
        .db_name()
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            bad("the url must name the target database: mysql://user:pass@host:3306/<db>".into())
        })?;
    let ssl = match mode.as_str() {
        "disabled" | "disable" | "preferred" | "prefer" => None,
        "required" | "require" => Some(
            SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        "verify_ca" => Some(SslOpts::default().with_danger_skip_domain_validation(true)),
        "verify_identity" => Some(SslOpts::default()),
        other => {
            return Err(bad(format!(
                "ssl-mode={other} is not one of disabled, preferred, required, verify_ca, verify_identity"
            )))
        }
    };
    let ssl = ssl.map(|s| match &ca {
        Some(path) => s
            .with_root_certs(vec![std::path::PathBuf::from(path).into()])
            .with_disable_built_in_roots(true),
        None => s,
    });
    let opts = OptsBuilder::from_opts(opts)
        .ssl_opts(ssl)
        .client_found_rows(true)
        .prefer_socket(false)
        .setup(SESSION_SETUP.iter().map(|s| s.to_string()).collect());
    Ok((Opts::from(opts), db))
}

/// Connects with a 10 s timeout.
pub(crate) async fn connect(url: &str) -> Result<(Conn, String), MySinkError> {
    let (opts, db) = options(url)?;
    let shown = redact::url(url);
    match tokio::time::timeout(Duration::from_secs(10), Conn::new(opts)).await {
        Ok(Ok(conn)) => Ok((conn, db)),
        Ok(Err(source)) => Err(MySinkError::Connect { url: shown, source }),
        Err(_) => Err(MySinkError::ConnectTimeout { url: shown }),
    }
}

/// `` `ident` `` with embedded backticks doubled: any name is just a name.
pub(crate) fn quote_ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('`');
    for c in name.chars() {
        if c == '`' {
            s.push('`');
        }
        s.push(c);
    }
    s.push('`');
    s
}

/// `` `db`.`table` ``.
pub(crate) fn qualified(db: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(db), quote_ident(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_backticks() {
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(
            qualified("d.b", "x\"; drop table y; --"),
            "`d.b`.`x\"; drop table y; --`"
        );
    }

    #[test]
    fn url_options() {
        let (opts, db) = options("mysql://u:p@127.0.0.1:3306/shop?ssl-mode=REQUIRED").unwrap();
        assert_eq!(db, "shop");
        assert!(opts.ssl_opts().is_some());
        assert!(options("mysql://u:p@127.0.0.1:3306/").is_err());
        assert!(options("mysql://u:p@127.0.0.1:3306/x?ssl-mode=bogus").is_err());
    }

    #[test]
    fn ssl_ca_is_the_only_trusted_root() {
        let (opts, _) =
            options("mysql://u:p@127.0.0.1:3306/x?ssl-mode=verify_identity&ssl-ca=/etc/ca.pem")
                .unwrap();
        let ssl = opts.ssl_opts().unwrap();
        assert!(ssl.disable_built_in_roots());
        assert_eq!(ssl.root_certs().len(), 1);
        let (opts, _) = options("mysql://u:p@127.0.0.1:3306/x?ssl-mode=verify-identity").unwrap();
        assert!(!opts.ssl_opts().unwrap().disable_built_in_roots());
    }
}
