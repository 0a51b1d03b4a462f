//! Connecting to the target Postgres.
//!
//! tokio-postgres parses only `sslmode=disable|prefer|require`; libpq users also write
//! `verify-ca` / `verify-full` and `sslrootcert=…`. Those keys are taken out of the URL
//! here and turned into a rustls configuration ([`tidemark_core::tls`]): `prefer` and
//! `require` encrypt without checking the certificate (as libpq does), `verify-*` check the
//! chain and the host name. Every session is pinned to UTC and ISO date styles so that
//! values and errors read the same on every server.

use crate::error::PgSinkError;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;
use tidemark_core::redact;
use tidemark_core::tls::{self, Verify};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config};

/// Session settings every sink connection runs with.
const SESSION_OPTIONS: &str =
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 -c extra_float_digits=3";

/// A connection plus the task driving it (aborted on drop).
pub(crate) struct Connection {
    /// The client; shared with the task that runs the writer's in-flight statement.
    pub client: Arc<Client>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the sink URL says, parsed without any I/O.
pub(crate) struct Target {
    /// Driver configuration (TLS mode set, no session options yet).
    config: Config,
    /// How much of the server certificate to check.
    verify: Verify,
    /// `sslrootcert`, when given.
    rootcert: Option<String>,
}

/// Parses the sink URL as [`connect`] does; `check --offline` and `run` share it.
pub(crate) fn parse(url: &str) -> Result<Target, PgSinkError> {
    let shown = redact::url(url);
    let bad = |message: String| PgSinkError::Url {
        url: shown.clone(),
        message,
    };
    let mut parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let mut sslmode = String::from("prefer");
    let mut rootcert = None;
    let mut keep = Vec::new();
    for (k, v) in parsed.query_pairs() {
        match k.as_ref() {
            "sslmode" => sslmode = v.into_owned(),
            "sslrootcert" => rootcert = Some(v.into_owned()),
            _ => keep.push((k.into_owned(), v.into_owned())),
        }
    }
    parsed.set_query(None);
    if !keep.is_empty() {
        parsed.query_pairs_mut().extend_pairs(keep);
    }
    let mut config = Config::from_str(parsed.as_str()).map_err(|e| bad(e.to_string()))?;
    let (mode, verify) = match sslmode.as_str() {
        "disable" => (SslMode::Disable, Verify::None),
        "allow" | "prefer" => (SslMode::Prefer, Verify::None),
        "require" => (SslMode::Require, Verify::None),
        "verify-ca" | "verify-full" => (SslMode::Require, Verify::Full),
        other => {
            return Err(bad(format!(
            "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        )))
        }
    };
    config.ssl_mode(mode);
    Ok(Target {
        config,
        verify,
        rootcert,
    })
}

/// Connects to `url` with TLS per its `sslmode`.
pub(crate) async fn connect(url: &str, app: &str) -> Result<Connection, PgSinkError> {
    let shown = redact::url(url);
    let Target {
        mut config,
        verify,
        rootcert,
    } = parse(url)?;
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {SESSION_OPTIONS}"),
        _ => SESSION_OPTIONS.to_owned(),
    };
    config
        .options(options)
        .application_name(app)
        .connect_timeout(Duration::from_secs(10))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    let mode = config.get_ssl_mode();
    let (client, task) = if mode == SslMode::Disable {
        let (client, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|source| PgSinkError::Connect {
                url: shown.clone(),
                source,
            })?;
        (client, tokio::spawn(drive(conn)))
    } else {
        let tls_config = tls::client_config(verify, rootcert.as_deref())?;
        let make = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config);
        let (client, conn) = config
            .connect(make)
            .await
            .map_err(|source| PgSinkError::Connect {
                url: shown.clone(),
                source,
            })?;
        (client, tokio::spawn(drive(conn)))
    };
    Ok(Connection {
        client: Arc::new(client),
        task,
    })
}

async fn drive<S, T>(conn: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "postgres sink connection closed");
    }
}

/// `"ident"` with embedded quotes doubled: any name is just a name.
pub(crate) fn quote_ident(name: &str) -> String {
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

/// `"schema"."table"`.
pub(crate) fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(
            quote_ident("x\"; drop table y; --"),
            "\"x\"\"; drop table y; --\""
        );
        assert_eq!(qualified("a.b", "c d"), "\"a.b\".\"c d\"");
    }
}
