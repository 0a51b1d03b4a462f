//! The replication connection, spoken directly on the wire.
//!
//! tokio-postgres cannot open a replication connection (it never sends the
//! `replication` startup parameter and has no CopyBoth), so this module
//! speaks the frontend/backend protocol itself over a tokio `TcpStream`
//! (optionally wrapped in rustls), using postgres-protocol's frontend
//! encoders and its SCRAM implementation. Backend messages are framed here,
//! not by `backend::Message::parse`: that parser does not know `'W'`
//! (CopyBothResponse), and framing ourselves hands every CopyData payload
//! out as a zero-copy `Bytes` slice of the read buffer.
//!
//! ```text
//!  connect ─▶ [SSLRequest ─▶ TLS] ─▶ Startup ─▶ auth (trust/cleartext/md5/SCRAM) ─▶ ReadyForQuery
//!     simple queries: IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT, DROP_REPLICATION_SLOT
//!     START_REPLICATION ─▶ CopyBoth: recv() CopyData in, send_status() CopyData out
//!     finish(): CopyDone ─▶ drain until ReadyForQuery ─▶ Terminate
//! ```
//!
//! Every read is cancel-safe (bytes land in the buffer only when a read
//! completed, frames are cut synchronously), so callers may `select!` on
//! [`ReplicationClient::recv`] against timers and shutdown.
//!
//! Errors keep the server's SQLSTATE; [`retry_for_sqlstate`] is the single
//! place that decides which server errors are worth a reconnect.

use crate::config::{
    quote_ident, quote_literal, PgSettings, SslMode, APPLICATION_NAME, SESSION_OPTIONS,
};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tidemark_core::error::{Classify, Retry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest backend message accepted (a CopyData carrying one huge row can be big, but not this).
const MAX_MESSAGE: usize = 1 << 30;

/// A server `ErrorResponse` (or `NoticeResponse`), with its SQLSTATE.
#[derive(Debug, Clone, Default)]
pub struct ServerError {
    /// `ERROR`, `FATAL`, `PANIC` (non-localized when the server sends it).
    pub severity: String,
    /// SQLSTATE, e.g. `28P01`.
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Detail, if any.
    pub detail: Option<String>,
    /// Hint, if any.
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl ServerError {
    /// Parses the field list of an ErrorResponse / NoticeResponse body.
    pub fn parse(body: &[u8]) -> Result<ServerError, String> {
        let mut e = ServerError::default();
        let mut rest = body;
        loop {
            let Some((&code, tail)) = rest.split_first() else {
                return Err("error fields not terminated".into());
            };
            if code == 0 {
                break;
            }
            let Some(end) = tail.iter().position(|b| *b == 0) else {
                return Err("error field without terminator".into());
            };
            let value = String::from_utf8_lossy(tail.get(..end).unwrap_or_default()).into_owned();
            rest = tail.get(end + 1..).unwrap_or_default();
            match code {
                b'V' => e.severity = value,
                b'S' if e.severity.is_empty() => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
        }
        Ok(e)
    }
}

/// Which server errors are worth retrying: the one place that decides it.
///
/// Transient: connection exceptions (class 08), shutdowns and "cannot connect now" (57P0x),
/// resource shortages (class 53 except configuration limits), objects in use (55006: the slot
/// is still held by a connection that is going away), serialization failures and deadlocks
/// (40xxx), I/O errors (58030). Everything else (bad password 28P01, missing database 3D000,
/// missing object 42704, wrong settings 55000, slot limit 53400 …) needs a human.
pub fn retry_for_sqlstate(code: &str) -> Retry {
    let transient = code.starts_with("08")
        || code.starts_with("40")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "57014" | "55006" | "58030" | "XX000"
        )
        || (code.starts_with("53") && code != "53400");
    if transient {
        Retry::Transient
    } else {
        Retry::Definite
    }
}

/// Errors of the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect failed.
    #[error("cannot connect to postgres at {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("{context}: connection to postgres failed: {source}")]
    Io {
        /// What we were doing.
        context: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The server closed the connection (EOF).
    #[error("{context}: postgres closed the connection")]
    Closed {
        /// What we were doing.
        context: &'static str,
    },
    /// TLS could not be set up.
    #[error("TLS with postgres at {addr}: {message}")]
    Tls {
        /// `host:port`.
        addr: String,
        /// What failed.
        message: String,
    },
    /// The server does not speak TLS but `sslmode` requires it.
    #[error(
        "postgres at {addr} does not accept TLS, but sslmode requires it \
             (enable ssl on the server or use sslmode=prefer)"
    )]
    TlsRefused {
        /// `host:port`.
        addr: String,
    },
    /// Authentication failed on our side (unsupported method, missing password, bad SCRAM).
    #[error("authentication as {user:?} failed: {message}")]
    Auth {
        /// Role.
        user: String,
        /// What failed.
        message: String,
    },
    /// The server answered with an ErrorResponse.
    #[error("{context}: {error}")]
    Server {
        /// What we asked.
        context: String,
        /// The server's error.
        error: Box<ServerError>,
    },
    /// The server sent bytes we cannot make sense of.
    #[error("{context}: malformed message from postgres: {message}")]
    Protocol {
        /// What we were doing.
        context: &'static str,
        /// What was malformed.
        message: String,
    },
    /// Something took too long.
    #[error("{what} timed out after {secs} s")]
    Timeout {
        /// What.
        what: String,
        /// Seconds waited.
        secs: u64,
    },
}

impl ClientError {
    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ClientError::Server { error, .. } => Some(&error.code),
            _ => None,
        }
    }
}

impl Classify for ClientError {
    fn retry(&self) -> Retry {
        match self {
            ClientError::Connect { .. }
            | ClientError::Io { .. }
            | ClientError::Closed { .. }
            | ClientError::Timeout { .. } => Retry::Transient,
            ClientError::Tls { .. }
            | ClientError::TlsRefused { .. }
            | ClientError::Auth { .. }
            | ClientError::Protocol { .. } => Retry::Definite,
            ClientError::Server { error, .. } => retry_for_sqlstate(&error.code),
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            ClientError::Connect { .. } | ClientError::Closed { .. } | ClientError::Io { .. } => {
                "connection"
            }
            ClientError::Tls { .. } | ClientError::TlsRefused { .. } => "tls",
            ClientError::Auth { .. } => "auth",
            ClientError::Server { error, .. } if error.code.starts_with("28") => "auth",
            ClientError::Server { .. } => "server",
            ClientError::Protocol { .. } => "protocol",
            ClientError::Timeout { .. } => "timeout",
        }
    }
}

/// An error of an ordinary SQL connection (tokio-postgres), with context.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// A query or the connection failed.
    #[error("{context}: {}", describe_sql(.source))]
    Query {
        /// What we were doing.
        context: String,
        /// Cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The connection could not even be set up (TLS roots unreadable).
    #[error("{context}: {message}")]
    Setup {
        /// What we were doing.
        context: String,
        /// What failed.
        message: String,
    },
    /// Connecting (TCP, TLS and login together) took too long: the server or the network
    /// does not answer (a partition swallows the handshake; only a timeout notices).
    #[error("{context}: no answer within {secs} s")]
    Timeout {
        /// What we were doing.
        context: String,
        /// Seconds waited.
        secs: u64,
    },
}

fn describe_sql(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" (detail: {d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!(" (hint: {h})"));
            }
            s
        }
        None => e.to_string(),
    }
}

impl SqlError {
    /// Wraps `source` with `context`.
    pub fn new(context: impl Into<String>, source: tokio_postgres::Error) -> SqlError {
        SqlError::Query {
            context: context.into(),
            source,
        }
    }

    /// The SQLSTATE, for server errors.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SqlError::Query { source, .. } => source.as_db_error().map(|d| d.code().code()),
            SqlError::Setup { .. } | SqlError::Timeout { .. } => None,
        }
    }
}

impl Classify for SqlError {
    fn retry(&self) -> Retry {
        match self {
            SqlError::Setup { .. } => Retry::Definite,
            SqlError::Timeout { .. } => Retry::Transient,
            SqlError::Query { source, .. } => match source.as_db_error() {
                Some(db) => retry_for_sqlstate(db.code().code()),
                None => {
                    // tokio-postgres reports bad TLS and config problems as plain errors whose
                    // own text is generic ("error performing TLS handshake"): the cause
                    // (`invalid peer certificate: UnknownIssuer`) is only in the source chain.
                    let text = tidemark_core::error::display_chain(source);
                    if text.contains("certificate")
                        || text.contains("does not support TLS")
                        || text.contains("invalid configuration")
                    {
                        Retry::Definite
                    } else {
                        Retry::Transient
                    }
                }
            },
        }
    }
    fn kind(&self) -> &'static str {
        match (self, self.sqlstate()) {
            (SqlError::Setup { .. }, _) => "config",
            (SqlError::Timeout { .. }, _) => "timeout",
            (_, Some(c)) if c.starts_with("28") => "auth",
            (_, Some(_)) => "server",
            (_, None) => "connection",
        }
    }
}

/// Opens an ordinary SQL connection with the pinned session settings (and TLS per `sslmode`);
/// the connection task runs in the background until the client is dropped. TCP connect, TLS
/// and login together must finish within the connect timeout (at least 5 s): tokio-postgres
/// times out the TCP connect only.
pub async fn sql_connect(s: &PgSettings) -> Result<tokio_postgres::Client, SqlError> {
    let limit = s.connect_timeout.max(Duration::from_secs(5));
    match tokio::time::timeout(limit, sql_connect_inner(s)).await {
        Ok(r) => r,
        Err(_) => Err(SqlError::Timeout {
            context: format!("connecting to {} for SQL", s.redacted_url),
            secs: limit.as_secs(),
        }),
    }
}

async fn sql_connect_inner(s: &PgSettings) -> Result<tokio_postgres::Client, SqlError> {
    let cfg = s.sql_config();
    let context = || format!("connecting to {} for SQL", s.redacted_url);
    let tls = s.tls_config().map_err(|e| SqlError::Setup {
        context: context(),
        message: e.to_string(),
    })?;
    let client = match tls {
        Some(tls) => {
            let (client, conn) = cfg
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                .await
                .map_err(|e| SqlError::new(context(), e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "postgres SQL connection ended");
                }
            });
            client
        }
        None => {
            let (client, conn) = cfg
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| SqlError::new(context(), e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "postgres SQL connection ended");
                }
            });
            client
        }
    };
    Ok(client)
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Transport {
    async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read_buf(buf).await,
            Transport::Tls(s) => s.read_buf(buf).await,
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.write_all(data).await,
            Transport::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Transport::Plain(s) => s.shutdown().await,
            Transport::Tls(s) => s.shutdown().await,
        };
    }
}

/// What `IDENTIFY_SYSTEM` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's unique system identifier (changes with a new cluster, not with failover
    /// to a physical replica).
    pub system_id: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: u64,
    /// Database the connection is attached to.
    pub dbname: Option<String>,
}

/// What `CREATE_REPLICATION_SLOT` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's consistent point: streaming from here continues exactly where the exported
    /// snapshot ends.
    pub consistent_point: u64,
    /// The exported snapshot (valid until the next command on this connection).
    pub snapshot_name: Option<String>,
}

/// The result of a simple query: column names and text rows.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    /// Column names of the last result set.
    pub columns: Vec<String>,
    /// Rows of the last result set; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

impl QueryResult {
    /// The value of column `name` in row `row`.
    pub fn get(&self, row: usize, name: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == name)?;
        self.rows.get(row)?.get(i)?.as_deref()
    }
}

/// A logical replication connection (`replication=database`).
pub struct ReplicationClient {
    io: Transport,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Backend process id (for cancel requests and logs).
    pid: i32,
    secret_key: i32,
    host: String,
    port: u16,
    server_version: String,
    in_copy: bool,
}

impl std::fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("pid", &self.pid)
            .field("server_version", &self.server_version)
            .finish_non_exhaustive()
    }
}

fn frontend_io(context: &'static str) -> impl Fn(io::Error) -> ClientError {
    move |source| ClientError::Io { context, source }
}

impl ReplicationClient {
    /// Connects, negotiates TLS per `sslmode`, authenticates and waits for ReadyForQuery; the
    /// whole handshake must finish within the connect timeout (at least 5 s), so a server
    /// behind a partition that accepts TCP but never answers is given up.
    pub async fn connect(s: &PgSettings) -> Result<ReplicationClient, ClientError> {
        let limit = s.connect_timeout.max(Duration::from_secs(5));
        match tokio::time::timeout(limit, Self::connect_inner(s)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                what: format!("connecting to postgres at {}:{}", s.host, s.port),
                secs: limit.as_secs(),
            }),
        }
    }

    async fn connect_inner(s: &PgSettings) -> Result<ReplicationClient, ClientError> {
        let addr = if s.host.contains(':') {
            format!("[{}]:{}", s.host, s.port)
        } else {
            format!("{}:{}", s.host, s.port)
        };
        let tcp = tokio::time::timeout(
            s.connect_timeout,
            TcpStream::connect((s.host.as_str(), s.port)),
        )
        .await
        .map_err(|_| ClientError::Timeout {
            what: format!("connecting to postgres at {addr}"),
            secs: s.connect_timeout.as_secs(),
        })?
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let io = Self::negotiate_tls(tcp, s, &addr).await?;
        let mut client = ReplicationClient {
            io,
            rbuf: BytesMut::with_capacity(128 * 1024),
            wbuf: BytesMut::with_capacity(256),
            pid: 0,
            secret_key: 0,
            host: s.host.clone(),
            port: s.port,
            server_version: String::new(),
            in_copy: false,
        };
        let startup = tokio::time::timeout(
            s.connect_timeout.max(Duration::from_secs(5)),
            client.startup(s),
        );
        match startup.await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ClientError::Timeout {
                    what: format!("logging in to postgres at {addr}"),
                    secs: s.connect_timeout.as_secs(),
                })
            }
        }
        tracing::debug!(pid = client.pid, server_version = %client.server_version, "replication connection ready");
        Ok(client)
    }

    async fn negotiate_tls(
        mut tcp: TcpStream,
        s: &PgSettings,
        addr: &str,
    ) -> Result<Transport, ClientError> {
        let tls_err = |message: String| ClientError::Tls {
            addr: addr.to_owned(),
            message,
        };
        let Some(config) = s.tls_config().map_err(|e| tls_err(e.to_string()))? else {
            return Ok(Transport::Plain(tcp));
        };
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        tcp.write_all(&buf)
            .await
            .map_err(frontend_io("sending SSLRequest"))?;
        let answer = tcp
            .read_u8()
            .await
            .map_err(frontend_io("reading SSLRequest answer"))?;
        match answer {
            b'S' => {}
            b'N' if s.ssl_mode == SslMode::Prefer => return Ok(Transport::Plain(tcp)),
            b'N' => {
                return Err(ClientError::TlsRefused {
                    addr: addr.to_owned(),
                })
            }
            other => {
                return Err(ClientError::Protocol {
                    context: "SSLRequest",
                    message: format!("unexpected answer byte {other:#04x}"),
                })
            }
        }
        let name = rustls_pki_types::ServerName::try_from(s.host.clone())
            .map_err(|e| tls_err(format!("invalid server name {:?}: {e}", s.host)))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| tls_err(e.to_string()))?;
        Ok(Transport::Tls(Box::new(stream)))
    }

    async fn startup(&mut self, s: &PgSettings) -> Result<(), ClientError> {
        let params = [
            ("user", s.user.as_str()),
            ("database", s.dbname.as_str()),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
            ("application_name", APPLICATION_NAME),
            ("options", SESSION_OPTIONS),
        ];
        self.wbuf.clear();
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)
            .map_err(frontend_io("encoding startup message"))?;
        self.flush_wbuf("sending startup message").await?;
        let tls = matches!(self.io, Transport::Tls(_));
        let auth_err = |message: String| ClientError::Auth {
            user: s.user.clone(),
            message,
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = self.read_frame("logging in").await?;
            match tag {
                b'R' => {
                    let mut b = body.clone();
                    if b.remaining() < 4 {
                        return Err(protocol("logging in", "short authentication message"));
                    }
                    let kind = b.get_i32();
                    match kind {
                        0 => {}
                        3 => {
                            let pw = s.password.as_deref().ok_or_else(|| {
                                auth_err("the server asks for a password but the URL has none".into())
                            })?;
                            self.wbuf.clear();
                            frontend::password_message(pw.as_bytes(), &mut self.wbuf)
                                .map_err(frontend_io("encoding password"))?;
                            self.flush_wbuf("sending password").await?;
                        }
                        5 => {
                            let pw = s.password.as_deref().ok_or_else(|| {
                                auth_err("the server asks for a password but the URL has none".into())
                            })?;
                            if b.remaining() < 4 {
                                return Err(protocol("logging in", "md5 request without salt"));
                            }
                            let mut salt = [0u8; 4];
                            b.copy_to_slice(&mut salt);
                            let hash = postgres_protocol::authentication::md5_hash(
                                s.user.as_bytes(),
                                pw.as_bytes(),
                                salt,
                            );
                            self.wbuf.clear();
                            frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                                .map_err(frontend_io("encoding password"))?;
                            self.flush_wbuf("sending password").await?;
                        }
                        10 => {
                            let pw = s.password.as_deref().ok_or_else(|| {
                                auth_err("the server asks for a password (SCRAM) but the URL has none".into())
                            })?;
                            let mechanisms: Vec<&[u8]> =
                                b.chunk().split(|c| *c == 0).filter(|m| !m.is_empty()).collect();
                            if !mechanisms.contains(&sasl::SCRAM_SHA_256.as_bytes()) {
                                return Err(auth_err(format!(
                                    "the server offers no supported SASL mechanism (offered: {})",
                                    mechanisms
                                        .iter()
                                        .map(|m| String::from_utf8_lossy(m).into_owned())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )));
                            }
                            // Channel binding is not implemented: send `n` ("client does not support
                            // it"), which servers accept unless a client demands binding.
                            let _ = tls;
                            let sc = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                            self.wbuf.clear();
                            frontend::sasl_initial_response(sasl::SCRAM_SHA_256, sc.message(), &mut self.wbuf)
                                .map_err(frontend_io("encoding SASL response"))?;
                            self.flush_wbuf("sending SASL response").await?;
                            scram = Some(sc);
                        }
                        11 => {
                            let sc = scram
                                .as_mut()
                                .ok_or_else(|| protocol("logging in", "SASLContinue before SASL"))?;
                            sc.update(b.chunk())
                                .map_err(|e| auth_err(format!("SCRAM exchange failed: {e}")))?;
                            self.wbuf.clear();
                            frontend::sasl_response(sc.message(), &mut self.wbuf)
                                .map_err(frontend_io("encoding SASL response"))?;
                            self.flush_wbuf("sending SASL response").await?;
                        }
                        12 => {
                            let sc = scram
                                .as_mut()
                                .ok_or_else(|| protocol("logging in", "SASLFinal before SASL"))?;
                            sc.finish(b.chunk()).map_err(|e| {
                                auth_err(format!("the server's SCRAM signature does not verify: {e}"))
                            })?;
                        }
                        other => {
                            return Err(auth_err(format!(
                                "unsupported authentication method {other} (supported: trust, password, md5, \
                                 scram-sha-256)"
                            )))
                        }
                    }
                }
                b'E' => {
                    let error =
                        ServerError::parse(&body).map_err(|m| protocol("logging in", &m))?;
                    return Err(ClientError::Server {
                        context: format!(
                            "logging in to postgres as {:?} (database {:?})",
                            s.user, s.dbname
                        ),
                        error: Box::new(error),
                    });
                }
                b'S' => {
                    let mut parts = body.split(|c| *c == 0);
                    if parts.next() == Some(b"server_version") {
                        if let Some(v) = parts.next() {
                            self.server_version = String::from_utf8_lossy(v).into_owned();
                        }
                    }
                }
                b'K' => {
                    let mut b = body.clone();
                    if b.remaining() >= 8 {
                        self.pid = b.get_i32();
                        self.secret_key = b.get_i32();
                    }
                }
                b'N' => log_notice(&body),
                b'Z' => return Ok(()),
                other => {
                    return Err(protocol(
                        "logging in",
                        &format!("unexpected message {:?}", char::from(other)),
                    ))
                }
            }
        }
    }

    /// The server's version string (`15.4 (Debian …)`).
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// The walsender's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    async fn flush_wbuf(&mut self, context: &'static str) -> Result<(), ClientError> {
        let r = self.io.write_all(&self.wbuf).await;
        self.wbuf.clear();
        r.map_err(frontend_io(context))
    }

    /// Reads one backend message: its tag and body (a zero-copy slice of the read buffer).
    /// Cancel-safe.
    async fn read_frame(&mut self, context: &'static str) -> Result<(u8, Bytes), ClientError> {
        loop {
            if let Some(header) = self.rbuf.get(..5) {
                let tag = header[0];
                let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
                if !(4..=MAX_MESSAGE).contains(&len) {
                    return Err(protocol(
                        context,
                        &format!("message length {len} out of range"),
                    ));
                }
                let total = len + 1;
                if self.rbuf.len() >= total {
                    let mut frame = self.rbuf.split_to(total).freeze();
                    let body = frame.split_off(5);
                    return Ok((tag, body));
                }
                self.rbuf.reserve(total - self.rbuf.len());
            }
            if self.rbuf.capacity() - self.rbuf.len() < 16 * 1024 {
                self.rbuf.reserve(128 * 1024);
            }
            let n = self
                .io
                .read_buf(&mut self.rbuf)
                .await
                .map_err(frontend_io(context))?;
            if n == 0 {
                return Err(ClientError::Closed { context });
            }
        }
    }

    /// Runs one simple-protocol command and returns its (last) result set.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, ClientError> {
        self.wbuf.clear();
        frontend::query(sql, &mut self.wbuf).map_err(frontend_io("encoding query"))?;
        self.flush_wbuf("sending query").await?;
        let mut result = QueryResult::default();
        let mut error: Option<ServerError> = None;
        loop {
            let (tag, body) = self.read_frame("running a replication command").await?;
            match tag {
                b'T' => {
                    result = QueryResult {
                        columns: parse_row_description(&body)?,
                        rows: Vec::new(),
                    }
                }
                b'D' => result.rows.push(parse_data_row(&body)?),
                b'C' | b'I' | b'S' => {}
                b'N' => log_notice(&body),
                b'E' => {
                    error = Some(ServerError::parse(&body).map_err(|m| protocol("query", &m))?);
                }
                b'Z' => break,
                b'W' | b'H' | b'G' => {
                    return Err(protocol(
                        "query",
                        "unexpected COPY response to a simple command",
                    ));
                }
                other => {
                    return Err(protocol(
                        "query",
                        &format!("unexpected message {:?}", char::from(other)),
                    ))
                }
            }
        }
        match error {
            Some(error) => Err(ClientError::Server {
                context: first_words(sql),
                error: Box::new(error),
            }),
            None => Ok(result),
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, ClientError> {
        let r = self.simple_query("IDENTIFY_SYSTEM").await?;
        let field = |name: &str| {
            r.get(0, name)
                .ok_or_else(|| protocol("IDENTIFY_SYSTEM", &format!("no {name} column")))
        };
        let system_id = field("systemid")?.to_owned();
        let timeline = field("timeline")?
            .parse()
            .map_err(|_| protocol("IDENTIFY_SYSTEM", "timeline is not a number"))?;
        let xlogpos = crate::pgoutput::parse_lsn(field("xlogpos")?)
            .ok_or_else(|| protocol("IDENTIFY_SYSTEM", "xlogpos is not an LSN"))?;
        Ok(SystemInfo {
            system_id,
            timeline,
            xlogpos,
            dbname: r.get(0, "dbname").map(str::to_owned),
        })
    }

    /// `CREATE_REPLICATION_SLOT "slot" LOGICAL pgoutput [NO]EXPORT_SNAPSHOT`. Waits for every
    /// open transaction of the cluster; callers bound it with a timeout.
    pub async fn create_slot(
        &mut self,
        slot: &str,
        export_snapshot: bool,
    ) -> Result<CreatedSlot, ClientError> {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {}",
            quote_ident(slot),
            if export_snapshot {
                "EXPORT_SNAPSHOT"
            } else {
                "NOEXPORT_SNAPSHOT"
            }
        );
        let r = self.simple_query(&sql).await?;
        let cp = r
            .get(0, "consistent_point")
            .and_then(crate::pgoutput::parse_lsn)
            .ok_or_else(|| protocol("CREATE_REPLICATION_SLOT", "no consistent_point"))?;
        Ok(CreatedSlot {
            consistent_point: cp,
            snapshot_name: r.get(0, "snapshot_name").map(str::to_owned),
        })
    }

    /// `DROP_REPLICATION_SLOT "slot"` (fails with 55006 while another connection uses it).
    pub async fn drop_slot(&mut self, slot: &str) -> Result<(), ClientError> {
        self.simple_query(&format!("DROP_REPLICATION_SLOT {}", quote_ident(slot)))
            .await
            .map(|_| ())
    }

    /// `START_REPLICATION SLOT "slot" LOGICAL X/Y (proto_version '1', publication_names '"p"')`;
    /// returns once the server entered CopyBoth mode.
    pub async fn start_replication(
        &mut self,
        slot: &str,
        start: u64,
        publication: &str,
    ) -> Result<(), ClientError> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {})",
            quote_ident(slot),
            crate::pgoutput::format_lsn(start),
            quote_literal(&quote_ident(publication))
        );
        self.wbuf.clear();
        frontend::query(&sql, &mut self.wbuf).map_err(frontend_io("encoding START_REPLICATION"))?;
        self.flush_wbuf("sending START_REPLICATION").await?;
        loop {
            let (tag, body) = self.read_frame("starting replication").await?;
            match tag {
                b'W' => {
                    self.in_copy = true;
                    return Ok(());
                }
                b'N' => log_notice(&body),
                b'S' => {}
                b'E' => {
                    let error =
                        ServerError::parse(&body).map_err(|m| protocol("START_REPLICATION", &m))?;
                    // The server follows an error with ReadyForQuery; consume it if it is there.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        self.read_frame("starting replication"),
                    )
                    .await;
                    return Err(ClientError::Server {
                        context: format!("START_REPLICATION on slot {slot:?}"),
                        error: Box::new(error),
                    });
                }
                other => {
                    return Err(protocol(
                        "START_REPLICATION",
                        &format!("unexpected message {:?}", char::from(other)),
                    ))
                }
            }
        }
    }

    /// Next CopyData payload of the replication stream, or `None` when the server ended the
    /// copy: CopyDone, or CommandComplete alone, which is how a walsender says goodbye when
    /// the server shuts down (PG 15 `WalSndDone` sends no CopyDone). Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            let (tag, body) = self.read_frame("reading the replication stream").await?;
            match tag {
                b'd' => return Ok(Some(body)),
                b'c' | b'C' => {
                    self.in_copy = false;
                    return Ok(None);
                }
                b'N' => log_notice(&body),
                b'S' => {}
                b'E' => {
                    let error = ServerError::parse(&body)
                        .map_err(|m| protocol("replication stream", &m))?;
                    self.in_copy = false;
                    return Err(ClientError::Server {
                        context: "replication stream".into(),
                        error: Box::new(error),
                    });
                }
                other => {
                    return Err(protocol(
                        "replication stream",
                        &format!("unexpected message {:?}", char::from(other)),
                    ))
                }
            }
        }
    }

    /// The next CopyData payload if a complete one is already buffered, without any I/O;
    /// `None` otherwise (then call [`Self::recv`], which also handles every other message).
    /// Lets the stream drain a burst without a `select!` per message.
    pub fn try_recv_buffered(&mut self) -> Result<Option<Bytes>, ClientError> {
        let Some(header) = self.rbuf.get(..5) else {
            return Ok(None);
        };
        let tag = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if !(4..=MAX_MESSAGE).contains(&len) {
            return Err(protocol(
                "reading the replication stream",
                &format!("message length {len} out of range"),
            ));
        }
        if tag != b'd' || self.rbuf.len() < len + 1 {
            return Ok(None);
        }
        let mut frame = self.rbuf.split_to(len + 1).freeze();
        Ok(Some(frame.split_off(5)))
    }

    /// Sends a Standby Status Update: everything up to `flushed` is durable downstream.
    pub async fn send_status(
        &mut self,
        flushed: u64,
        reply_requested: bool,
    ) -> Result<(), ClientError> {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let clock = crate::pgoutput::unix_micros_to_pg_micros(now_us);
        self.wbuf.clear();
        self.wbuf.put_u8(b'd');
        self.wbuf.put_i32(4 + 1 + 8 * 4 + 1);
        self.wbuf.put_u8(b'r');
        self.wbuf.put_u64(flushed); // written
        self.wbuf.put_u64(flushed); // flushed
        self.wbuf.put_u64(flushed); // applied
        self.wbuf.put_i64(clock);
        self.wbuf.put_u8(u8::from(reply_requested));
        self.flush_wbuf("sending standby status").await
    }

    /// Ends the copy: CopyDone, then reads (and discards) until ReadyForQuery, at most
    /// `timeout`; then Terminate. Used on graceful shutdown so the walsender exits cleanly.
    pub async fn finish(mut self, timeout: Duration) -> Result<(), ClientError> {
        let drain = async {
            if self.in_copy {
                self.wbuf.clear();
                frontend::copy_done(&mut self.wbuf);
                self.flush_wbuf("sending CopyDone").await?;
            }
            loop {
                let (tag, body) = self.read_frame("finishing replication").await?;
                match tag {
                    b'Z' => return Ok(()),
                    b'E' => {
                        let error =
                            ServerError::parse(&body).map_err(|m| protocol("finishing", &m))?;
                        tracing::debug!(%error, "error while ending replication");
                    }
                    _ => {}
                }
            }
        };
        let result = match tokio::time::timeout(timeout, drain).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                what: "waiting for postgres to end the replication stream".into(),
                secs: timeout.as_secs(),
            }),
        };
        self.close().await;
        result
    }

    /// Sends Terminate and closes the socket.
    pub async fn close(mut self) {
        self.wbuf.clear();
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush_wbuf("sending Terminate").await;
        self.io.shutdown().await;
    }

    /// A handle that can cancel the command currently running on this connection (slot creation
    /// waiting for open transactions).
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle {
            host: self.host.clone(),
            port: self.port,
            pid: self.pid,
            secret_key: self.secret_key,
        }
    }
}

/// Cancels the running command of a connection (a CancelRequest on a fresh socket).
#[derive(Debug, Clone)]
pub struct CancelHandle {
    host: String,
    port: u16,
    pid: i32,
    secret_key: i32,
}

impl CancelHandle {
    /// Sends the cancel request; best effort.
    pub async fn cancel(&self) {
        let mut buf = BytesMut::new();
        frontend::cancel_request(self.pid, self.secret_key, &mut buf);
        let connect = TcpStream::connect((self.host.as_str(), self.port));
        if let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(5), connect).await {
            let _ = s.write_all(&buf).await;
            let mut sink = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut sink)).await;
        }
    }
}

fn protocol(context: &'static str, message: &str) -> ClientError {
    ClientError::Protocol {
        context,
        message: message.to_owned(),
    }
}

fn first_words(sql: &str) -> String {
    let mut s: String = sql.chars().take(80).collect();
    if sql.len() > s.len() {
        s.push('…');
    }
    s
}

fn log_notice(body: &[u8]) {
    if let Ok(n) = ServerError::parse(body) {
        tracing::info!(severity = %n.severity, code = %n.code, message = %n.message, "postgres notice");
    }
}

fn parse_row_description(body: &[u8]) -> Result<Vec<String>, ClientError> {
    let bad = |m: &str| protocol("RowDescription", m);
    let mut b = body;
    if b.len() < 2 {
        return Err(bad("short"));
    }
    let n = b.get_u16() as usize;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let end = b
            .iter()
            .position(|c| *c == 0)
            .ok_or_else(|| bad("unterminated name"))?;
        let name = std::str::from_utf8(b.get(..end).unwrap_or_default())
            .map_err(|_| bad("name not UTF-8"))?
            .to_owned();
        b = b.get(end + 1..).unwrap_or_default();
        if b.len() < 18 {
            return Err(bad("short field"));
        }
        b.advance(18);
        out.push(name);
    }
    Ok(out)
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, ClientError> {
    let bad = |m: &str| protocol("DataRow", m);
    let mut b = body;
    if b.len() < 2 {
        return Err(bad("short"));
    }
    let n = b.get_u16() as usize;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        if b.len() < 4 {
            return Err(bad("short length"));
        }
        let len = b.get_i32();
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = len as usize;
        let v = b
            .get(..len)
            .ok_or_else(|| bad("value longer than message"))?;
        out.push(Some(
            std::str::from_utf8(v)
                .map_err(|_| bad("value not UTF-8"))?
                .to_owned(),
        ));
        b.advance(len);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_error_fields() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0";
        let e = ServerError::parse(body).unwrap();
        assert_eq!(e.code, "28P01");
        assert_eq!(e.severity, "FATAL");
        assert!(e.to_string().contains("password authentication failed"));
        assert!(ServerError::parse(b"C28P01").is_err());
        assert!(ServerError::parse(b"").is_err());
    }

    #[test]
    fn classifies_sqlstates() {
        assert_eq!(retry_for_sqlstate("28P01"), Retry::Definite);
        assert_eq!(retry_for_sqlstate("3D000"), Retry::Definite);
        assert_eq!(retry_for_sqlstate("42704"), Retry::Definite);
        assert_eq!(retry_for_sqlstate("57P01"), Retry::Transient);
        assert_eq!(retry_for_sqlstate("55006"), Retry::Transient);
        assert_eq!(retry_for_sqlstate("08006"), Retry::Transient);
        assert_eq!(retry_for_sqlstate("53300"), Retry::Transient);
        assert_eq!(retry_for_sqlstate("53400"), Retry::Definite);
    }

    #[test]
    fn parses_rows_and_rejects_garbage() {
        let mut d = vec![0u8, 2];
        d.extend_from_slice(&2i32.to_be_bytes());
        d.extend_from_slice(b"ab");
        d.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(parse_data_row(&d).unwrap(), vec![Some("ab".into()), None]);
        let mut bad = vec![0u8, 1];
        bad.extend_from_slice(&100i32.to_be_bytes());
        assert!(parse_data_row(&bad).is_err());
        assert!(parse_data_row(&[0]).is_err());
        let mut t = vec![0u8, 1];
        t.extend_from_slice(b"slot_name\0");
        t.extend_from_slice(&[0u8; 18]);
        assert_eq!(
            parse_row_description(&t).unwrap(),
            vec!["slot_name".to_string()]
        );
        assert!(parse_row_description(&[0, 1, b'x']).is_err());
    }
}
