//! Binlog event decoding: everything above the row values.
//!
//! mysql_async frames the replication packets into events (header, body,
//! checksum split off once a FORMAT_DESCRIPTION announced the algorithm), but
//! its typed events have known gaps (PROTOCOL-NOTES): no MariaDB event types,
//! a first fake ROTATE that keeps its CRC in the file name, CRC32 never
//! checked, and value decoding defects. So this module takes each event's raw
//! header and body and parses what tidemark needs itself, with checked reads
//! only ([`crate::bytes::Cursor`]): a malformed event is an error naming the
//! field, never a panic.
//!
//! ```text
//!  packet ─▶ mysql_async Event {header, data, checksum}
//!              │ verify_crc (crc32 of header ‖ data [‖ alg byte for the FDE])
//!              ▼
//!           EventKind::{Gtid, Query, TableMap, Rows, Xid, Rotate, …}  (this module)
//!              ▼
//!           Plan::decode_row against the table's column plan
//! ```

use crate::bytes::{Cursor, Short};
use crate::gtid::MariaGtid;

/// Event type codes (MySQL `Log_event_type`, MariaDB additions from 0xa0).
pub mod ty {
    #![allow(dead_code)]
    /// Statement (DDL, BEGIN, COMMIT, statement-format DML).
    pub const QUERY: u8 = 2;
    /// Server stopped.
    pub const STOP: u8 = 3;
    /// Next binlog file.
    pub const ROTATE: u8 = 4;
    /// Incident: the master lost events.
    pub const INCIDENT: u8 = 26;
    /// Format description.
    pub const FORMAT_DESCRIPTION: u8 = 15;
    /// Commit of a transactional group.
    pub const XID: u8 = 16;
    /// Table map.
    pub const TABLE_MAP: u8 = 19;
    /// Rows v1.
    pub const WRITE_ROWS_V1: u8 = 23;
    /// Rows v1.
    pub const UPDATE_ROWS_V1: u8 = 24;
    /// Rows v1.
    pub const DELETE_ROWS_V1: u8 = 25;
    /// Heartbeat (idle master).
    pub const HEARTBEAT: u8 = 27;
    /// Rows v2 (MySQL 5.6+).
    pub const WRITE_ROWS: u8 = 30;
    /// Rows v2.
    pub const UPDATE_ROWS: u8 = 31;
    /// Rows v2.
    pub const DELETE_ROWS: u8 = 32;
    /// MySQL GTID.
    pub const MYSQL_GTID: u8 = 33;
    /// MySQL anonymous GTID (gtid_mode=OFF).
    pub const MYSQL_ANONYMOUS_GTID: u8 = 34;
    /// MySQL previous GTIDs.
    pub const MYSQL_PREVIOUS_GTIDS: u8 = 35;
    /// XA PREPARE of a transaction whose rows precede it.
    pub const XA_PREPARE: u8 = 38;
    /// MySQL partial JSON update rows.
    pub const PARTIAL_UPDATE_ROWS: u8 = 39;
    /// MySQL compressed transaction payload.
    pub const TRANSACTION_PAYLOAD: u8 = 40;
    /// MySQL 8.4 tagged GTID.
    pub const MYSQL_GTID_TAGGED: u8 = 42;
    /// MariaDB: the statement behind the following rows events.
    pub const MARIA_ANNOTATE_ROWS: u8 = 0xa0;
    /// MariaDB: binlog checkpoint.
    pub const MARIA_BINLOG_CHECKPOINT: u8 = 0xa1;
    /// MariaDB GTID: starts every event group.
    pub const MARIA_GTID: u8 = 0xa2;
    /// MariaDB GTID list: the binlog state at the start of a file.
    pub const MARIA_GTID_LIST: u8 = 0xa3;
    /// MariaDB: binlog encryption starts.
    pub const MARIA_START_ENCRYPTION: u8 = 0xa4;
    /// MariaDB compressed query (log_bin_compress=ON).
    pub const MARIA_QUERY_COMPRESSED: u8 = 0xa5;
    /// MariaDB compressed rows events (v1 and v2).
    pub const MARIA_ROWS_COMPRESSED_FIRST: u8 = 0xa6;
    /// Last MariaDB compressed rows event type.
    pub const MARIA_ROWS_COMPRESSED_LAST: u8 = 0xab;
}

/// Column type codes (`enum_field_types`).
pub mod col {
    #![allow(missing_docs, dead_code)]
    pub const DECIMAL: u8 = 0;
    pub const TINY: u8 = 1;
    pub const SHORT: u8 = 2;
    pub const LONG: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const NULL: u8 = 6;
    pub const TIMESTAMP: u8 = 7;
    pub const LONGLONG: u8 = 8;
    pub const INT24: u8 = 9;
    pub const DATE: u8 = 10;
    pub const TIME: u8 = 11;
    pub const DATETIME: u8 = 12;
    pub const YEAR: u8 = 13;
    pub const NEWDATE: u8 = 14;
    pub const VARCHAR: u8 = 15;
    pub const BIT: u8 = 16;
    pub const TIMESTAMP2: u8 = 17;
    pub const DATETIME2: u8 = 18;
    pub const TIME2: u8 = 19;
    pub const TYPED_ARRAY: u8 = 20;
    pub const VECTOR: u8 = 242;
    pub const JSON: u8 = 245;
    pub const NEWDECIMAL: u8 = 246;
    pub const ENUM: u8 = 247;
    pub const SET: u8 = 248;
    pub const TINY_BLOB: u8 = 249;
    pub const MEDIUM_BLOB: u8 = 250;
    pub const LONG_BLOB: u8 = 251;
    pub const BLOB: u8 = 252;
    pub const VAR_STRING: u8 = 253;
    pub const STRING: u8 = 254;
    pub const GEOMETRY: u8 = 255;
}

/// Which server family produced the binlog; some metadata rules differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// MariaDB 10.x / 11.x.
    Mariadb,
    /// MySQL 8.x.
    Mysql,
}

/// Errors decoding events and row images.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Ran out of bytes.
    #[error("{event}: {source}")]
    Short {
        /// Event being decoded.
        event: &'static str,
        /// Which field.
        #[source]
        source: Short,
    },
    /// A structurally invalid value.
    #[error("{event}: {message}")]
    Invalid {
        /// Event being decoded.
        event: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The event's CRC32 does not match its bytes.
    #[error("binlog event checksum mismatch (type {event_type}, log_pos {log_pos}): stored {stored:08x}, computed {computed:08x}")]
    Checksum {
        /// Event type code.
        event_type: u8,
        /// The event's end position.
        log_pos: u32,
        /// CRC stored in the event.
        stored: u32,
        /// CRC of the received bytes.
        computed: u32,
    },
}

impl DecodeError {
    pub(crate) fn invalid(event: &'static str, message: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            event,
            message: message.into(),
        }
    }
}

/// Attaches the event name to a [`Short`].
pub(crate) trait Ctx<T> {
    fn ctx(self, event: &'static str) -> Result<T, DecodeError>;
}

impl<T> Ctx<T> for Result<T, Short> {
    fn ctx(self, event: &'static str) -> Result<T, DecodeError> {
        self.map_err(|source| DecodeError::Short { event, source })
    }
}

/// The 19-byte v4 event header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Seconds since the epoch (commit time of the statement).
    pub timestamp: u32,
    /// Event type code.
    pub type_code: u8,
    /// Originating server id.
    pub server_id: u32,
    /// Header + body + checksum.
    pub event_size: u32,
    /// Offset of the next event in the binlog file (0 for artificial events).
    pub log_pos: u32,
    /// Event flags.
    pub flags: u16,
}

impl Header {
    /// The header's wire bytes.
    pub fn to_bytes(self) -> [u8; 19] {
        let mut b = [0u8; 19];
        b[0..4].copy_from_slice(&self.timestamp.to_le_bytes());
        b[4] = self.type_code;
        b[5..9].copy_from_slice(&self.server_id.to_le_bytes());
        b[9..13].copy_from_slice(&self.event_size.to_le_bytes());
        b[13..17].copy_from_slice(&self.log_pos.to_le_bytes());
        b[17..19].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// Parses a header from its 19 bytes.
    #[cfg(test)]
    pub fn parse(bytes: &[u8]) -> Result<Header, DecodeError> {
        let mut c = Cursor::new(bytes);
        Ok(Header {
            timestamp: c.u32("timestamp").ctx("event header")?,
            type_code: c.u8("type").ctx("event header")?,
            server_id: c.u32("server id").ctx("event header")?,
            event_size: c.u32("event size").ctx("event header")?,
            log_pos: c.u32("log pos").ctx("event header")?,
            flags: c.u16("flags").ctx("event header")?,
        })
    }
}

/// `LOG_EVENT_BINLOG_IN_USE_F`: set on the FDE of an open binlog, excluded from its checksum.
const BINLOG_IN_USE: u16 = 0x1;

/// Checks an event's CRC32. `data` is the body without the checksum; `fde_alg` is the
/// checksum-algorithm byte a FORMAT_DESCRIPTION carries before its checksum.
pub fn verify_crc(
    header: &Header,
    data: &[u8],
    fde_alg: Option<u8>,
    stored: u32,
) -> Result<(), DecodeError> {
    let mut h = *header;
    if h.type_code == ty::FORMAT_DESCRIPTION {
        h.flags &= !BINLOG_IN_USE;
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h.to_bytes());
    hasher.update(data);
    if let Some(alg) = fde_alg {
        hasher.update(&[alg]);
    }
    let computed = hasher.finalize();
    if computed != stored {
        return Err(DecodeError::Checksum {
            event_type: header.type_code,
            log_pos: header.log_pos,
            stored,
            computed,
        });
    }
    Ok(())
}

/// Splits the CRC off an event that the framing did not know to be checksummed (the fake
/// ROTATE sent before the first FORMAT_DESCRIPTION), verifies it and returns the body.
pub fn strip_trailing_crc<'a>(header: &Header, data: &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let split = data
        .len()
        .checked_sub(4)
        .ok_or_else(|| DecodeError::invalid("event", "shorter than its checksum"))?;
    let (body, crc) = data.split_at(split);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    verify_crc(header, body, None, stored)?;
    Ok(body)
}

/// Event types tidemark refuses to skip over: each would lose or garble changes silently.
/// Returns what was found and the fix.
pub fn refused(type_code: u8) -> Option<(String, &'static str)> {
    match type_code {
        ty::TRANSACTION_PAYLOAD => Some((
            "compressed transaction payloads (binlog_transaction_compression=ON) are not supported".into(),
            "SET PERSIST binlog_transaction_compression = OFF",
        )),
        ty::PARTIAL_UPDATE_ROWS => Some((
            "partial JSON updates (binlog_row_value_options=PARTIAL_JSON) carry diffs, not row images".into(),
            "SET PERSIST binlog_row_value_options = ''",
        )),
        ty::MYSQL_GTID_TAGGED => Some((
            "tagged GTIDs (MySQL 8.4) are not supported".into(),
            "do not use GTID tags for captured transactions",
        )),
        t if t == ty::MARIA_QUERY_COMPRESSED
            || (ty::MARIA_ROWS_COMPRESSED_FIRST..=ty::MARIA_ROWS_COMPRESSED_LAST).contains(&t) =>
        {
            Some((
                format!("compressed binlog event (type {t:#x}, log_bin_compress=ON)"),
                "SET GLOBAL log_bin_compress = OFF; events already written compressed cannot be \
                 read: re-snapshot after the change",
            ))
        }
        ty::INCIDENT => Some((
            "an INCIDENT event: the server lost changes it could not log".into(),
            "re-snapshot: delete the checkpoint and restart",
        )),
        _ => None,
    }
}

/// What a FORMAT_DESCRIPTION tells the decoder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormatDescription {
    /// Server version string.
    pub server_version: String,
    /// Post-header length per event type (index = type − 1).
    pub post_header_len: Vec<u8>,
}

impl FormatDescription {
    /// Parses the body (checksum algorithm and CRC already removed).
    pub fn parse(data: &[u8]) -> Result<FormatDescription, DecodeError> {
        const EV: &str = "FORMAT_DESCRIPTION";
        let mut c = Cursor::new(data);
        let _version = c.u16("binlog version").ctx(EV)?;
        let server = c.take(50, "server version").ctx(EV)?;
        let _created = c.u32("create timestamp").ctx(EV)?;
        let header_len = c.u8("header length").ctx(EV)?;
        if header_len != 19 {
            return Err(DecodeError::invalid(
                EV,
                format!("event header length {header_len}, only binlog v4 (19) is supported"),
            ));
        }
        let end = server.iter().position(|b| *b == 0).unwrap_or(server.len());
        Ok(FormatDescription {
            server_version: String::from_utf8_lossy(&server[..end]).into_owned(),
            post_header_len: c.take_rest().to_vec(),
        })
    }

    /// Post-header length of `type_code`, if announced.
    pub fn post_header(&self, type_code: u8) -> Option<u8> {
        usize::from(type_code)
            .checked_sub(1)
            .and_then(|i| self.post_header_len.get(i).copied())
    }

    /// Bytes of the table id in TABLE_MAP and rows events (4 on ancient servers, else 6).
    pub fn table_id_len(&self) -> usize {
        if self.post_header(ty::TABLE_MAP) == Some(6) {
            4
        } else {
            6
        }
    }
}

/// ROTATE: the next file and position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotate {
    /// Position in the new file.
    pub pos: u64,
    /// File name.
    pub file: String,
}

impl Rotate {
    /// Parses a ROTATE body (without checksum).
    pub fn parse(data: &[u8]) -> Result<Rotate, DecodeError> {
        let mut c = Cursor::new(data);
        let pos = c.u64("position").ctx("ROTATE")?;
        let name = c.take_rest();
        let file = std::str::from_utf8(name)
            .map_err(|_| DecodeError::invalid("ROTATE", "file name is not UTF-8"))?;
        Ok(Rotate {
            pos,
            file: file.to_owned(),
        })
    }
}

/// The numeric suffix of a binlog file name (`mariadb-bin.000012` → 12).
pub fn file_index(file: &str) -> Option<u32> {
    let (_, suffix) = file.rsplit_once('.')?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    suffix.parse().ok()
}

/// A QUERY event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    /// Default database of the session (may be empty).
    pub schema: &'a [u8],
    /// The statement text.
    pub statement: &'a [u8],
}

impl<'a> Query<'a> {
    /// Parses a QUERY body.
    pub fn parse(data: &'a [u8]) -> Result<Query<'a>, DecodeError> {
        const EV: &str = "QUERY";
        let mut c = Cursor::new(data);
        let _thread = c.u32("thread id").ctx(EV)?;
        let _exec = c.u32("exec time").ctx(EV)?;
        let db_len = usize::from(c.u8("schema length").ctx(EV)?);
        let _err = c.u16("error code").ctx(EV)?;
        let status_len = usize::from(c.u16("status vars length").ctx(EV)?);
        c.take(status_len, "status vars").ctx(EV)?;
        let schema = c.take(db_len, "schema").ctx(EV)?;
        c.take(1, "schema terminator").ctx(EV)?;
        Ok(Query {
            schema,
            statement: c.take_rest(),
        })
    }
}

/// MariaDB GTID flags.
pub mod gtid_flags {
    #![allow(dead_code)]
    /// The group is one statement (DDL) with no BEGIN/COMMIT.
    pub const STANDALONE: u8 = 1;
    /// A commit id follows.
    pub const GROUP_COMMIT_ID: u8 = 2;
    /// Transactional engine.
    pub const TRANSACTIONAL: u8 = 4;
    /// The group is an XA PREPARE.
    pub const PREPARED_XA: u8 = 64;
    /// The group is an XA COMMIT / ROLLBACK.
    pub const COMPLETED_XA: u8 = 128;
}

/// A MariaDB GTID event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MariaGtidEvent {
    /// The GTID (domain, server, sequence).
    pub gtid: MariaGtid,
    /// Flags ([`gtid_flags`]).
    pub flags: u8,
    /// XA transaction id (format id, gtrid ‖ bqual) for XA groups.
    pub xid: Option<Vec<u8>>,
}

impl MariaGtidEvent {
    /// Parses a MariaDB GTID body; the server id comes from the event header.
    pub fn parse(data: &[u8], server_id: u32) -> Result<MariaGtidEvent, DecodeError> {
        const EV: &str = "MariaDB GTID";
        let mut c = Cursor::new(data);
        let seq = c.u64("sequence").ctx(EV)?;
        let domain = c.u32("domain").ctx(EV)?;
        let flags = c.u8("flags").ctx(EV)?;
        if flags & gtid_flags::GROUP_COMMIT_ID != 0 {
            c.u64("commit id").ctx(EV)?;
        }
        let xid = if flags & (gtid_flags::PREPARED_XA | gtid_flags::COMPLETED_XA) != 0 {
            let format = c.take(4, "xid format").ctx(EV)?;
            let gtrid = usize::from(c.u8("xid gtrid length").ctx(EV)?);
            let bqual = usize::from(c.u8("xid bqual length").ctx(EV)?);
            let body = c.take(gtrid + bqual, "xid data").ctx(EV)?;
            let mut x = format.to_vec();
            x.push(gtrid as u8);
            x.extend_from_slice(body);
            Some(x)
        } else {
            None
        };
        Ok(MariaGtidEvent {
            gtid: MariaGtid {
                domain,
                server: server_id,
                seq,
            },
            flags,
            xid,
        })
    }
}

/// Parses a MariaDB GTID_LIST body.
pub fn parse_gtid_list(data: &[u8]) -> Result<Vec<MariaGtid>, DecodeError> {
    const EV: &str = "MariaDB GTID_LIST";
    let mut c = Cursor::new(data);
    let count = c.u32("count").ctx(EV)? & 0x0fff_ffff;
    let mut out = Vec::new();
    for _ in 0..count {
        let domain = c.u32("domain").ctx(EV)?;
        let server = c.u32("server").ctx(EV)?;
        let seq = c.u64("sequence").ctx(EV)?;
        out.push(MariaGtid {
            domain,
            server,
            seq,
        });
    }
    Ok(out)
}

/// A MySQL GTID event: `uuid:gno`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlGtidEvent {
    /// Source server uuid.
    pub uuid: [u8; 16],
    /// Transaction number.
    pub gno: u64,
    /// Tag (MySQL 8.4 tagged GTIDs), if any.
    pub tag: Option<String>,
}

impl MysqlGtidEvent {
    /// Parses an untagged MySQL GTID / ANONYMOUS_GTID body.
    pub fn parse(data: &[u8]) -> Result<MysqlGtidEvent, DecodeError> {
        const EV: &str = "MySQL GTID";
        let mut c = Cursor::new(data);
        let _flags = c.u8("flags").ctx(EV)?;
        let uuid_bytes = c.take(16, "sid").ctx(EV)?;
        let gno = c.u64("gno").ctx(EV)?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(uuid_bytes);
        Ok(MysqlGtidEvent {
            uuid,
            gno,
            tag: None,
        })
    }

    /// `uuid:gno` (or `uuid:tag:gno`).
    pub fn text(&self) -> String {
        let u = crate::gtid::uuid_text(&self.uuid);
        match &self.tag {
            Some(t) => format!("{u}:{t}:{}", self.gno),
            None => format!("{u}:{}", self.gno),
        }
    }
}

/// One column as the TABLE_MAP describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapColumn {
    /// Binlog type code ([`col`]); for CHAR/ENUM/SET the real type from the metadata.
    pub ty: u8,
    /// Type metadata bytes (0–2), in wire order.
    pub meta: [u8; 2],
    /// Whether the column accepts NULL.
    pub nullable: bool,
    /// Name (`binlog_row_metadata=FULL`).
    pub name: Option<String>,
    /// Unsigned (numeric columns).
    pub unsigned: bool,
    /// Collation id (character, ENUM and SET columns).
    pub collation: Option<u16>,
    /// ENUM / SET member strings, raw bytes in the column's character set.
    pub members: Option<Vec<Vec<u8>>>,
    /// Part of the primary key.
    pub pk: bool,
}

/// A decoded TABLE_MAP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMap {
    /// Table id used by the following rows events.
    pub table_id: u64,
    /// Database.
    pub db: String,
    /// Table.
    pub table: String,
    /// Columns in table order.
    pub columns: Vec<MapColumn>,
    /// Whether column names were present (binlog_row_metadata=FULL).
    pub has_names: bool,
    /// Primary key columns in key order.
    pub pk: Vec<usize>,
}

/// Optional metadata field types.
mod opt {
    pub const SIGNEDNESS: u8 = 1;
    pub const DEFAULT_CHARSET: u8 = 2;
    pub const COLUMN_CHARSET: u8 = 3;
    pub const COLUMN_NAME: u8 = 4;
    pub const SET_STR_VALUE: u8 = 5;
    pub const ENUM_STR_VALUE: u8 = 6;
    pub const SIMPLE_PRIMARY_KEY: u8 = 8;
    pub const PRIMARY_KEY_WITH_PREFIX: u8 = 9;
    pub const ENUM_AND_SET_DEFAULT_CHARSET: u8 = 10;
    pub const ENUM_AND_SET_COLUMN_CHARSET: u8 = 11;
}

fn is_numeric(ty: u8, flavour: Flavour) -> bool {
    matches!(
        ty,
        col::TINY
            | col::SHORT
            | col::INT24
            | col::LONG
            | col::LONGLONG
            | col::NEWDECIMAL
            | col::FLOAT
            | col::DOUBLE
    ) || (flavour == Flavour::Mariadb && ty == col::YEAR)
}

fn is_enum_or_set(ty: u8) -> bool {
    ty == col::ENUM || ty == col::SET
}

fn is_character(ty: u8, flavour: Flavour) -> bool {
    matches!(
        ty,
        col::STRING
            | col::VAR_STRING
            | col::VARCHAR
            | col::BLOB
            | col::TINY_BLOB
            | col::MEDIUM_BLOB
            | col::LONG_BLOB
    ) || (flavour == Flavour::Mariadb && ty == col::GEOMETRY)
}

/// Splits the metadata of one column off the TABLE_MAP metadata block; returns the real type
/// (CHAR / ENUM / SET share the wire type STRING) and the metadata bytes.
fn column_meta(ty: u8, c: &mut Cursor<'_>) -> Result<(u8, [u8; 2]), DecodeError> {
    const EV: &str = "TABLE_MAP metadata";
    match ty {
        col::FLOAT
        | col::DOUBLE
        | col::BLOB
        | col::TINY_BLOB
        | col::MEDIUM_BLOB
        | col::LONG_BLOB
        | col::GEOMETRY
        | col::JSON
        | col::TIME2
        | col::DATETIME2
        | col::TIMESTAMP2
        | col::VECTOR => Ok((ty, [c.u8("column metadata").ctx(EV)?, 0])),
        col::VARCHAR | col::VAR_STRING | col::NEWDECIMAL | col::BIT | col::ENUM | col::SET => {
            let b = c.take(2, "column metadata").ctx(EV)?;
            Ok((ty, [b[0], b[1]]))
        }
        col::STRING => {
            let b = c.take(2, "column metadata").ctx(EV)?;
            let (b0, b1) = (b[0], b[1]);
            // CHAR longer than 255 bytes folds two length bits into the type byte.
            let real = if b0 & 0x30 != 0x30 { b0 | 0x30 } else { b0 };
            Ok((
                if real == col::ENUM || real == col::SET {
                    real
                } else {
                    col::STRING
                },
                [b0, b1],
            ))
        }
        col::TYPED_ARRAY => Err(DecodeError::invalid(
            EV,
            "typed array columns (multi-valued indexes) are not supported",
        )),
        _ => Ok((ty, [0, 0])),
    }
}

/// Declared byte length of a CHAR/BINARY column from its metadata.
pub fn string_max_len(meta: [u8; 2]) -> usize {
    let (b0, b1) = (meta[0], meta[1]);
    if b0 & 0x30 != 0x30 {
        usize::from(b1) | (usize::from((b0 & 0x30) ^ 0x30) << 4)
    } else {
        usize::from(b1)
    }
}

impl TableMap {
    /// Parses a TABLE_MAP body, including the optional metadata.
    pub fn parse(
        data: &[u8],
        table_id_len: usize,
        flavour: Flavour,
    ) -> Result<TableMap, DecodeError> {
        const EV: &str = "TABLE_MAP";
        let mut c = Cursor::new(data);
        let table_id = c.uint_le(table_id_len, "table id").ctx(EV)?;
        let _flags = c.u16("flags").ctx(EV)?;
        let db_len = usize::from(c.u8("database length").ctx(EV)?);
        let db = c.take(db_len, "database name").ctx(EV)?;
        c.take(1, "database terminator").ctx(EV)?;
        let table_len = usize::from(c.u8("table length").ctx(EV)?);
        let table = c.take(table_len, "table name").ctx(EV)?;
        c.take(1, "table terminator").ctx(EV)?;
        let ncols = c.lenenc_len("column count").ctx(EV)?;
        let types = c.take(ncols, "column types").ctx(EV)?;
        let meta_block = c.lenenc_bytes("column metadata").ctx(EV)?;
        let null_bits = c.take(ncols.div_ceil(8), "null bitmap").ctx(EV)?;
        let mut mc = Cursor::new(meta_block);
        let mut columns = Vec::with_capacity(ncols);
        for (i, &wire) in types.iter().enumerate() {
            let (ty, meta) = column_meta(wire, &mut mc)?;
            columns.push(MapColumn {
                ty,
                meta,
                nullable: crate::bytes::bit(null_bits, i),
                name: None,
                unsigned: false,
                collation: None,
                members: None,
                pk: false,
            });
        }
        if !mc.is_empty() {
            return Err(DecodeError::invalid(
                EV,
                format!(
                    "{} unexplained byte(s) of column metadata for {}.{} (unsupported column type?)",
                    mc.remaining(),
                    String::from_utf8_lossy(db),
                    String::from_utf8_lossy(table)
                ),
            ));
        }
        let mut map = TableMap {
            table_id,
            db: String::from_utf8_lossy(db).into_owned(),
            table: String::from_utf8_lossy(table).into_owned(),
            columns,
            has_names: false,
            pk: Vec::new(),
        };
        while !c.is_empty() {
            let field = c.u8("optional metadata type").ctx(EV)?;
            let value = c.lenenc_bytes("optional metadata value").ctx(EV)?;
            map.apply_optional(field, value, flavour)?;
        }
        for &i in &map.pk {
            if let Some(col) = map.columns.get_mut(i) {
                col.pk = true;
            }
        }
        Ok(map)
    }

    fn apply_optional(
        &mut self,
        field: u8,
        value: &[u8],
        flavour: Flavour,
    ) -> Result<(), DecodeError> {
        const EV: &str = "TABLE_MAP optional metadata";
        let mut c = Cursor::new(value);
        match field {
            opt::SIGNEDNESS => {
                let numeric = self
                    .columns
                    .iter_mut()
                    .filter(|c| is_numeric(c.ty, flavour));
                for (n, col) in numeric.enumerate() {
                    let byte = value.get(n / 8).copied().unwrap_or(0);
                    col.unsigned = byte & (0x80 >> (n % 8)) != 0;
                }
            }
            opt::DEFAULT_CHARSET | opt::ENUM_AND_SET_DEFAULT_CHARSET => {
                let enum_set = field == opt::ENUM_AND_SET_DEFAULT_CHARSET;
                let default = c.lenenc("default charset").ctx(EV)? as u16;
                let idx: Vec<usize> = self.charset_columns(enum_set, flavour);
                for &i in &idx {
                    if let Some(col) = self.columns.get_mut(i) {
                        col.collation = Some(default);
                    }
                }
                while !c.is_empty() {
                    let pos = c.lenenc("charset column index").ctx(EV)? as usize;
                    let coll = c.lenenc("charset").ctx(EV)? as u16;
                    let i = idx.get(pos).copied().ok_or_else(|| {
                        DecodeError::invalid(
                            EV,
                            format!("charset for character column #{pos} which does not exist"),
                        )
                    })?;
                    if let Some(col) = self.columns.get_mut(i) {
                        col.collation = Some(coll);
                    }
                }
            }
            opt::COLUMN_CHARSET | opt::ENUM_AND_SET_COLUMN_CHARSET => {
                let enum_set = field == opt::ENUM_AND_SET_COLUMN_CHARSET;
                let idx = self.charset_columns(enum_set, flavour);
                for i in idx {
                    let coll = c.lenenc("column charset").ctx(EV)? as u16;
                    if let Some(col) = self.columns.get_mut(i) {
                        col.collation = Some(coll);
                    }
                }
            }
            opt::COLUMN_NAME => {
                for col in self.columns.iter_mut() {
                    let name = c.lenenc_bytes("column name").ctx(EV)?;
                    col.name = Some(String::from_utf8_lossy(name).into_owned());
                }
                self.has_names = true;
            }
            opt::SET_STR_VALUE | opt::ENUM_STR_VALUE => {
                let want = if field == opt::SET_STR_VALUE {
                    col::SET
                } else {
                    col::ENUM
                };
                for col in self.columns.iter_mut().filter(|c| c.ty == want) {
                    let n = c.lenenc_len("member count").ctx(EV)?;
                    let mut members = Vec::with_capacity(n.min(65_536));
                    for _ in 0..n {
                        members.push(c.lenenc_bytes("member").ctx(EV)?.to_vec());
                    }
                    col.members = Some(members);
                }
            }
            opt::SIMPLE_PRIMARY_KEY => {
                while !c.is_empty() {
                    self.pk
                        .push(c.lenenc("primary key column").ctx(EV)? as usize);
                }
            }
            opt::PRIMARY_KEY_WITH_PREFIX => {
                while !c.is_empty() {
                    self.pk
                        .push(c.lenenc("primary key column").ctx(EV)? as usize);
                    c.lenenc("primary key prefix").ctx(EV)?;
                }
            }
            // Geometry types, column visibility and anything newer: not needed, and skipped by
            // length (an unknown field must not fail the whole table).
            _ => {}
        }
        if let Some(&bad) = self.pk.iter().find(|&&i| i >= self.columns.len()) {
            return Err(DecodeError::invalid(
                EV,
                format!("primary key column {bad} out of range"),
            ));
        }
        Ok(())
    }

    fn charset_columns(&self, enum_set: bool, flavour: Flavour) -> Vec<usize> {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                if enum_set {
                    is_enum_or_set(c.ty)
                } else {
                    is_character(c.ty, flavour)
                }
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// The bytes of a TABLE_MAP that describe the table (everything after the table id): equal
/// bytes mean an equal column plan.
pub fn table_map_definition(data: &[u8], table_id_len: usize) -> &[u8] {
    data.get(table_id_len..).unwrap_or(&[])
}

/// Kind of a rows event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsKind {
    /// Inserted rows (after images).
    Write,
    /// Updated rows (before and after images).
    Update,
    /// Deleted rows (before images).
    Delete,
}

/// Rows kind and whether the event is v2 (has the extra-data header), by type code.
pub fn rows_kind(type_code: u8) -> Option<(RowsKind, bool)> {
    match type_code {
        ty::WRITE_ROWS_V1 => Some((RowsKind::Write, false)),
        ty::UPDATE_ROWS_V1 => Some((RowsKind::Update, false)),
        ty::DELETE_ROWS_V1 => Some((RowsKind::Delete, false)),
        ty::WRITE_ROWS => Some((RowsKind::Write, true)),
        ty::UPDATE_ROWS => Some((RowsKind::Update, true)),
        ty::DELETE_ROWS => Some((RowsKind::Delete, true)),
        _ => None,
    }
}

/// A rows event's header; the row images are in `rows`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows<'a> {
    /// Table id (see the preceding TABLE_MAP).
    pub table_id: u64,
    /// Rows event flags (bit 0: end of statement).
    pub flags: u16,
    /// Insert / update / delete.
    pub kind: RowsKind,
    /// Column count.
    pub ncols: usize,
    /// Columns present in the (before) images.
    pub present: &'a [u8],
    /// Columns present in the after images of an update.
    pub present_after: &'a [u8],
    /// The packed row images.
    pub rows: &'a [u8],
}

impl<'a> Rows<'a> {
    /// Parses a rows event body (v1 or v2).
    pub fn parse(
        data: &'a [u8],
        kind: RowsKind,
        v2: bool,
        table_id_len: usize,
    ) -> Result<Rows<'a>, DecodeError> {
        const EV: &str = "ROWS";
        let mut c = Cursor::new(data);
        let table_id = c.uint_le(table_id_len, "table id").ctx(EV)?;
        let flags = c.u16("flags").ctx(EV)?;
        if v2 {
            // Extra data (MySQL 5.6+): its length counts the two length bytes themselves.
            let extra = usize::from(c.u16("extra data length").ctx(EV)?);
            let rest = extra.checked_sub(2).ok_or_else(|| {
                DecodeError::invalid(EV, format!("extra data length {extra} < 2"))
            })?;
            c.take(rest, "extra data").ctx(EV)?;
        }
        let ncols = c.lenenc("column count").ctx(EV)?;
        let ncols = usize::try_from(ncols)
            .ok()
            .filter(|n| *n <= 4096)
            .ok_or_else(|| DecodeError::invalid(EV, format!("column count {ncols}")))?;
        let bitmap_len = ncols.div_ceil(8);
        let present = c.take(bitmap_len, "columns present").ctx(EV)?;
        let present_after = if kind == RowsKind::Update {
            c.take(bitmap_len, "columns present after").ctx(EV)?
        } else {
            present
        };
        Ok(Rows {
            table_id,
            flags,
            kind,
            ncols,
            present,
            present_after,
            rows: c.take_rest(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The TABLE_MAP MariaDB 10.11 wrote for
    /// `t (id int primary key, y year, u tinyint unsigned, m mediumint, d decimal(10,2),
    /// c char(5), e enum('a','b'), s set('x','y'), b bit(10), j longtext check (json_valid(j)),
    /// l varchar(10) character set latin1, bn binary(4), f float, tm time(2))`.
    pub(crate) const MARIADB_TABLE_MAP: &[u8] = &[
        0x12, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x07, b'p', b'r', b'o', b'b', b'e', b'_',
        b'x', 0x00, 0x01, b't', 0x00, 0x0e, 0x03, 0x0d, 0x01, 0x09, 0xf6, 0xfe, 0xfe, 0xfe, 0x10,
        0xfc, 0x0f, 0xfe, 0x04, 0x13, 0x11, 0x0a, 0x02, 0xfe, 0x14, 0xf7, 0x01, 0xf8, 0x01, 0x02,
        0x01, 0x04, 0x0a, 0x00, 0xfe, 0x04, 0x04, 0x02, 0xfe, 0x3f, 0x01, 0x01, 0x60, 0x03, 0x04,
        0x2d, 0x2d, 0x08, 0x3f, 0x04, 0x1f, 0x02, b'i', b'd', 0x01, b'y', 0x01, b'u', 0x01, b'm',
        0x01, b'd', 0x01, b'c', 0x01, b'e', 0x01, b's', 0x01, b'b', 0x01, b'j', 0x01, b'l', 0x02,
        b'b', b'n', 0x01, b'f', 0x02, b't', b'm', 0x0a, 0x01, 0x2d, 0x05, 0x05, 0x02, 0x01, b'x',
        0x01, b'y', 0x06, 0x05, 0x02, 0x01, b'a', 0x01, b'b', 0x08, 0x01, 0x00,
    ];

    #[test]
    fn parses_a_real_mariadb_table_map() {
        let m = TableMap::parse(MARIADB_TABLE_MAP, 6, Flavour::Mariadb).unwrap();
        assert_eq!(
            (m.table_id, m.db.as_str(), m.table.as_str()),
            (0x12, "probe_x", "t")
        );
        assert!(m.has_names);
        let names: Vec<_> = m.columns.iter().map(|c| c.name.clone().unwrap()).collect();
        assert_eq!(
            names,
            ["id", "y", "u", "m", "d", "c", "e", "s", "b", "j", "l", "bn", "f", "tm"]
        );
        assert_eq!(m.pk, vec![0]);
        assert!(m.columns[0].pk && !m.columns[0].nullable && m.columns[1].nullable);
        // YEAR counts as numeric on MariaDB: y and u unsigned, m signed.
        assert!(m.columns[1].unsigned && m.columns[2].unsigned && !m.columns[3].unsigned);
        assert_eq!(m.columns[6].ty, col::ENUM);
        assert_eq!(m.columns[7].ty, col::SET);
        assert_eq!(
            m.columns[6].members.as_ref().unwrap(),
            &vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(
            m.columns[7].members.as_ref().unwrap(),
            &vec![b"x".to_vec(), b"y".to_vec()]
        );
        assert_eq!(m.columns[5].collation, Some(45));
        assert_eq!(m.columns[10].collation, Some(8));
        assert_eq!(m.columns[11].collation, Some(63));
        assert_eq!(m.columns[6].collation, Some(45));
        assert_eq!(string_max_len(m.columns[5].meta), 20);
        assert_eq!(m.columns[8].meta, [2, 1]);
    }

    #[test]
    fn truncated_table_maps_fail_cleanly() {
        for n in 0..MARIADB_TABLE_MAP.len() - 3 {
            // Cutting inside the fixed part or the optional metadata must be an error, not a
            // panic; some cuts land on a TLV boundary and are merely shorter metadata.
            let _ = TableMap::parse(&MARIADB_TABLE_MAP[..n], 6, Flavour::Mariadb);
        }
        assert!(TableMap::parse(&MARIADB_TABLE_MAP[..30], 6, Flavour::Mariadb).is_err());
    }

    #[test]
    fn unknown_optional_metadata_is_skipped() {
        let mut data = MARIADB_TABLE_MAP.to_vec();
        data.extend_from_slice(&[0x77, 0x02, 0xaa, 0xbb]);
        let m = TableMap::parse(&data, 6, Flavour::Mariadb).unwrap();
        assert_eq!(m.columns.len(), 14);
    }

    #[test]
    fn char_longer_than_255_bytes() {
        // CHAR(100) utf8mb4 = 400 bytes: 400 = 0x190 → byte0 = 0xfe ^ (0x1 << 4) = 0xee, byte1 = 0x90.
        assert_eq!(string_max_len([0xee, 0x90]), 400);
        let mut c = Cursor::new(&[0xee, 0x90]);
        assert_eq!(column_meta(col::STRING, &mut c).unwrap().0, col::STRING);
    }

    #[test]
    fn rows_v2_extra_data_is_skipped() {
        // table id 7, flags 1, extra data length 5 (2 + 3 bytes), 2 columns, bitmap 0b11, row.
        let data = [
            7, 0, 0, 0, 0, 0, 1, 0, 5, 0, 0xaa, 0xbb, 0xcc, 2, 0b11, 0x00, 9, 9,
        ];
        let r = Rows::parse(&data, RowsKind::Write, true, 6).unwrap();
        assert_eq!(r.table_id, 7);
        assert_eq!(r.ncols, 2);
        assert_eq!(r.present, &[0b11]);
        assert_eq!(r.rows, &[0x00, 9, 9]);
        let bad = [7, 0, 0, 0, 0, 0, 1, 0, 1, 0, 2, 3];
        assert!(Rows::parse(&bad, RowsKind::Write, true, 6).is_err());
        let short = [7, 0, 0, 0, 0, 0, 1, 0, 9, 0, 1];
        assert!(Rows::parse(&short, RowsKind::Write, true, 6).is_err());
    }

    #[test]
    fn update_rows_have_two_bitmaps() {
        let data = [7, 0, 0, 0, 0, 0, 1, 0, 2, 0b11, 0b01, 0xff];
        let r = Rows::parse(&data, RowsKind::Update, false, 6).unwrap();
        assert_eq!(
            (r.present, r.present_after, r.rows),
            (&[0b11][..], &[0b01][..], &[0xff][..])
        );
    }

    #[test]
    fn crc_is_verified() {
        let header = Header {
            timestamp: 1,
            type_code: ty::XID,
            server_id: 1,
            event_size: 19 + 8 + 4,
            log_pos: 100,
            flags: 0,
        };
        let data = 42u64.to_le_bytes();
        let mut h = crc32fast::Hasher::new();
        h.update(&header.to_bytes());
        h.update(&data);
        let crc = h.finalize();
        assert!(verify_crc(&header, &data, None, crc).is_ok());
        assert!(matches!(
            verify_crc(&header, &data, None, crc ^ 1),
            Err(DecodeError::Checksum { .. })
        ));
        assert_eq!(Header::parse(&header.to_bytes()).unwrap(), header);
    }

    #[test]
    fn fake_rotate_crc_is_verified_and_not_part_of_the_name() {
        // The first event of a stream: a fake ROTATE (log_pos 0) whose CRC the framing leaves
        // in the body because no FORMAT_DESCRIPTION announced checksums yet.
        let mut body = 4u64.to_le_bytes().to_vec();
        body.extend_from_slice(b"mariadb-bin.000007");
        let header = Header {
            timestamp: 0,
            type_code: ty::ROTATE,
            server_id: 1,
            event_size: (19 + body.len() + 4) as u32,
            log_pos: 0,
            flags: 0x20,
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&header.to_bytes());
        h.update(&body);
        let mut data = body.clone();
        data.extend_from_slice(&h.finalize().to_le_bytes());
        let stripped = strip_trailing_crc(&header, &data).unwrap();
        let r = Rotate::parse(stripped).unwrap();
        assert_eq!(r.file, "mariadb-bin.000007");
        assert_eq!(file_index(&r.file), Some(7));
        let mut bad = data.clone();
        bad[10] ^= 1;
        assert!(matches!(
            strip_trailing_crc(&header, &bad),
            Err(DecodeError::Checksum { .. })
        ));
        assert!(strip_trailing_crc(&header, &[1, 2]).is_err());
    }

    #[test]
    fn compressed_and_partial_events_are_refused_with_a_fix() {
        let (what, fix) = refused(ty::TRANSACTION_PAYLOAD).unwrap();
        assert!(what.contains("binlog_transaction_compression"));
        assert!(fix.contains("binlog_transaction_compression = OFF"));
        assert!(refused(ty::PARTIAL_UPDATE_ROWS)
            .unwrap()
            .1
            .contains("binlog_row_value_options"));
        for t in [ty::MARIA_QUERY_COMPRESSED, 0xa6, 0xa9, 0xab] {
            assert!(refused(t).unwrap().1.contains("log_bin_compress = OFF"));
        }
        assert!(refused(ty::INCIDENT).is_some());
        for t in [
            ty::QUERY,
            ty::XID,
            ty::TABLE_MAP,
            ty::WRITE_ROWS,
            ty::MARIA_GTID,
            ty::MARIA_GTID_LIST,
        ] {
            assert!(refused(t).is_none());
        }
    }

    #[test]
    fn gtid_events() {
        let mut data = 5u64.to_le_bytes().to_vec();
        data.extend_from_slice(&3u32.to_le_bytes());
        data.push(gtid_flags::STANDALONE);
        let g = MariaGtidEvent::parse(&data, 9).unwrap();
        assert_eq!(g.gtid.to_string(), "3-9-5");
        assert!(g.xid.is_none());
        // XA prepare with group commit id.
        let mut data = 6u64.to_le_bytes().to_vec();
        data.extend_from_slice(&0u32.to_le_bytes());
        data.push(gtid_flags::PREPARED_XA | gtid_flags::GROUP_COMMIT_ID);
        data.extend_from_slice(&77u64.to_le_bytes());
        data.extend_from_slice(&1u32.to_le_bytes());
        data.extend_from_slice(&[2, 1, b'a', b'b', b'c']);
        let g = MariaGtidEvent::parse(&data, 1).unwrap();
        assert_eq!(g.xid.unwrap(), vec![1, 0, 0, 0, 2, b'a', b'b', b'c']);
        assert!(MariaGtidEvent::parse(&data[..20], 1).is_err());

        let mut list = 2u32.to_le_bytes().to_vec();
        for (d, s, n) in [(0u32, 1u32, 10u64), (1, 2, 3)] {
            list.extend_from_slice(&d.to_le_bytes());
            list.extend_from_slice(&s.to_le_bytes());
            list.extend_from_slice(&n.to_le_bytes());
        }
        let l = parse_gtid_list(&list).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].to_string(), "1-2-3");
        assert!(parse_gtid_list(&list[..10]).is_err());
    }

    #[test]
    fn query_and_rotate() {
        let mut q = Vec::new();
        q.extend_from_slice(&1u32.to_le_bytes());
        q.extend_from_slice(&0u32.to_le_bytes());
        q.push(2);
        q.extend_from_slice(&0u16.to_le_bytes());
        q.extend_from_slice(&3u16.to_le_bytes());
        q.extend_from_slice(&[1, 2, 3]);
        q.extend_from_slice(b"db\0TRUNCATE t");
        let p = Query::parse(&q).unwrap();
        assert_eq!((p.schema, p.statement), (&b"db"[..], &b"TRUNCATE t"[..]));
        assert!(Query::parse(&q[..14]).is_err());
        let mut r = 4u64.to_le_bytes().to_vec();
        r.extend_from_slice(b"mariadb-bin.000012");
        let rot = Rotate::parse(&r).unwrap();
        assert_eq!(file_index(&rot.file), Some(12));
        assert_eq!(file_index("nofile"), None);
        assert_eq!(file_index("x.00a1"), None);
    }
}
