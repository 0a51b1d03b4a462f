//! Envelope v1: the one message format between sources and sinks.
//!
//! Sources describe each table once ([`TableMeta`]: names, columns, key, the
//! pre-rendered schema block and subject) and then encode row changes with an
//! [`Encoder`] that streams JSON into a reused buffer. Sinks parse the same
//! bytes back with [`Envelope`]. Field names are the DESIGN contract; one
//! addition: `source.tx.last` is `true` on the final event of a source
//! transaction, so a sink can commit a whole transaction without waiting for
//! the next one to begin.
//!
//! Parsing never builds a `serde_json::Value` for a column value: row images hold
//! [`Cell`]s, the exact JSON text of each value, so every document a source can publish
//! (any depth, any number) reads back unchanged (see [`crate::cell`]).

pub use crate::cell::{Cell, Image};
use crate::subject;
use crate::value::{write_json_str, Value};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The kind of row change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Insert.
    #[serde(rename = "c")]
    Create,
    /// Update.
    #[serde(rename = "u")]
    Update,
    /// Delete.
    #[serde(rename = "d")]
    Delete,
    /// Row read by the initial snapshot.
    #[serde(rename = "r")]
    Read,
    /// Table truncated.
    #[serde(rename = "t")]
    Truncate,
}

impl Op {
    /// The one-letter code used on the wire and as a metric label.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }
}

/// Canonical column types (DESIGN "Canonical types").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CanonicalType {
    /// true/false.
    Bool,
    /// Signed 64-bit integer.
    Int64,
    /// Unsigned 64-bit integer.
    Uint64,
    /// Exact decimal as a string.
    Decimal,
    /// Double precision; non-finite as strings.
    Float64,
    /// Text.
    String,
    /// Base64 bytes.
    Bytes,
    /// A JSON document.
    Json,
    /// UUID text.
    Uuid,
    /// `YYYY-MM-DD`.
    Date,
    /// `HH:MM:SS[.ffffff]`, may be negative or above 24h for MySQL TIME.
    Time,
    /// Wall-clock timestamp without zone.
    Timestamp,
    /// UTC timestamp ending in `Z`.
    Timestamptz,
    /// ISO-8601 duration.
    Interval,
    /// JSON array of the element type.
    Array,
    /// JSON array of strings (MySQL SET).
    Set,
    /// String of 0 and 1.
    Bits,
}

impl CanonicalType {
    /// The lowercase name used in the envelope's schema block.
    pub fn as_str(self) -> &'static str {
        match self {
            CanonicalType::Bool => "bool",
            CanonicalType::Int64 => "int64",
            CanonicalType::Uint64 => "uint64",
            CanonicalType::Decimal => "decimal",
            CanonicalType::Float64 => "float64",
            CanonicalType::String => "string",
            CanonicalType::Bytes => "bytes",
            CanonicalType::Json => "json",
            CanonicalType::Uuid => "uuid",
            CanonicalType::Date => "date",
            CanonicalType::Time => "time",
            CanonicalType::Timestamp => "timestamp",
            CanonicalType::Timestamptz => "timestamptz",
            CanonicalType::Interval => "interval",
            CanonicalType::Array => "array",
            CanonicalType::Set => "set",
            CanonicalType::Bits => "bits",
        }
    }
}

/// One column of a source table, as the envelope's schema block describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// Column name as the source spells it.
    pub name: String,
    /// Canonical type.
    #[serde(rename = "type")]
    pub ty: CanonicalType,
    /// The source's own type name (`bigint`, `varchar(20)`, `mood` …).
    pub source_type: String,
    /// Part of the primary key / replica identity.
    pub pk: bool,
    /// Whether the column accepts NULL (true when the source does not say).
    pub nullable: bool,
    /// For arrays: the canonical type of the elements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub element: Option<CanonicalType>,
}

/// Names that every envelope of one pipeline shares.
#[derive(Debug, Clone)]
pub struct Naming {
    /// Pipeline name (`source.pipeline`, first part of every `id`).
    pub pipeline: String,
    /// Connector kind (`postgres`, `mysql`).
    pub connector: &'static str,
    /// Subject prefix, `tidemark` by default.
    pub subject_prefix: String,
}

/// A source table as the encoder needs it: names, columns, key columns and the parts of the
/// envelope that never change between rows, rendered once.
#[derive(Debug)]
pub struct TableMeta {
    /// Database name (`source.db`).
    pub db: String,
    /// Schema name (`source.schema`); MySQL sources use the database name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Columns in source order; row images are aligned with them.
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the key (primary key or replica identity) columns.
    pub key: Vec<usize>,
    /// Schema version: a stable hash of the column list.
    pub version: String,
    /// The NATS subject this table publishes to.
    pub subject: async_nats::Subject,
    /// `"pipeline":…,"connector":…,"db":…,"schema":…,"table":…` pre-rendered.
    source_names_json: String,
    /// `{"version":…,"columns":[…]}` pre-rendered.
    schema_json: String,
}

impl TableMeta {
    /// Describes a table. Key columns are those with `pk = true`.
    pub fn new(
        naming: &Naming,
        db: &str,
        schema: &str,
        table: &str,
        columns: Vec<Column>,
    ) -> TableMeta {
        let key = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.pk)
            .map(|(i, _)| i)
            .collect();
        let columns_json = serde_json::to_string(&columns).unwrap_or_else(|_| "[]".into());
        let version = format!("{:016x}", fnv1a64(columns_json.as_bytes()));
        let mut schema_json = String::with_capacity(columns_json.len() + 40);
        schema_json.push_str("{\"version\":\"");
        schema_json.push_str(&version);
        schema_json.push_str("\",\"columns\":");
        schema_json.push_str(&columns_json);
        schema_json.push('}');
        let mut names = Vec::new();
        names.extend_from_slice(b"\"pipeline\":");
        write_json_str(&mut names, &naming.pipeline);
        names.extend_from_slice(b",\"connector\":");
        write_json_str(&mut names, naming.connector);
        names.extend_from_slice(b",\"db\":");
        write_json_str(&mut names, db);
        names.extend_from_slice(b",\"schema\":");
        write_json_str(&mut names, schema);
        names.extend_from_slice(b",\"table\":");
        write_json_str(&mut names, table);
        TableMeta {
            db: db.to_owned(),
            schema: schema.to_owned(),
            table: table.to_owned(),
            subject: subject::table_subject(
                &naming.subject_prefix,
                &naming.pipeline,
                schema,
                table,
            )
            .into(),
            key,
            version,
            columns,
            source_names_json: String::from_utf8(names).unwrap_or_default(),
            schema_json,
        }
    }

    /// `schema.table`, for logs and metric labels.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// Transaction facts carried by every event (`source.tx`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TxInfo {
    /// Source transaction id (Postgres xid, MySQL GTID).
    pub id: String,
    /// 1-based sequence of this event in its transaction.
    pub seq: u64,
    /// The source's commit position in its native notation (`0/16B3748`, a GTID, …).
    pub commit_pos: String,
    /// True on the transaction's final event.
    #[serde(default)]
    pub last: bool,
}

/// A row image aligned with [`TableMeta::columns`]. `None` means the source did not send the
/// column (unchanged TOAST value, or a non-key column of a key-only old image).
pub type Row = Vec<Option<Value>>;

/// One row change, borrowed, ready to encode.
#[derive(Debug)]
pub struct Change<'a> {
    /// Kind of change.
    pub op: Op,
    /// The table it happened to.
    pub table: &'a TableMeta,
    /// `source.pos`: sortable position string (see [`crate::position`]).
    pub pos: &'a str,
    /// Transaction facts.
    pub tx: &'a TxInfo,
    /// Source commit time, ms since the epoch.
    pub ts_ms: i64,
    /// Produced by the initial snapshot.
    pub snapshot: bool,
    /// Old row image, if the source sent one.
    pub before: Option<&'a Row>,
    /// New row image (inserts, updates, snapshot reads).
    pub after: Option<&'a Row>,
}

/// An encoded envelope ready for JetStream.
#[derive(Debug, Clone)]
pub struct OutMessage {
    /// Target subject.
    pub subject: async_nats::Subject,
    /// Envelope id, sent as `Nats-Msg-Id`.
    pub id: String,
    /// Envelope JSON.
    pub payload: Bytes,
}

/// Envelopes above this size move their buffer out of the encoder instead of copying it.
const LARGE_ENVELOPE: usize = 256 << 10;

/// Streams envelopes into a reused buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// A new encoder.
    pub fn new() -> Encoder {
        Encoder {
            buf: Vec::with_capacity(4096),
        }
    }

    /// Encodes one change; `now_ms` becomes the top-level `ts_ms` (time tidemark read it).
    pub fn encode(&mut self, naming: &Naming, change: &Change<'_>, now_ms: i64) -> OutMessage {
        let mut id = String::with_capacity(naming.pipeline.len() + change.pos.len() + 1);
        id.push_str(&naming.pipeline);
        id.push(':');
        id.push_str(change.pos);
        let out = &mut self.buf;
        out.clear();
        out.extend_from_slice(b"{\"v\":1,\"id\":");
        write_json_str(out, &id);
        out.extend_from_slice(b",\"op\":\"");
        out.extend_from_slice(change.op.code().as_bytes());
        out.extend_from_slice(b"\",\"source\":{");
        out.extend_from_slice(change.table.source_names_json.as_bytes());
        out.extend_from_slice(b",\"pos\":");
        write_json_str(out, change.pos);
        out.extend_from_slice(b",\"tx\":{\"id\":");
        write_json_str(out, &change.tx.id);
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(itoa::Buffer::new().format(change.tx.seq).as_bytes());
        out.extend_from_slice(b",\"commit_pos\":");
        write_json_str(out, &change.tx.commit_pos);
        if change.tx.last {
            out.extend_from_slice(b",\"last\":true");
        }
        out.extend_from_slice(b"},\"ts_ms\":");
        out.extend_from_slice(itoa::Buffer::new().format(change.ts_ms).as_bytes());
        out.extend_from_slice(if change.snapshot {
            b",\"snapshot\":true},\"key\":"
        } else {
            b",\"snapshot\":false},\"key\":"
        });
        write_key(out, change);
        out.extend_from_slice(b",\"before\":");
        write_row(out, change.table, change.before);
        out.extend_from_slice(b",\"after\":");
        write_row(out, change.table, change.after);
        if let Some(after) = change.after {
            if after.iter().any(Option::is_none) {
                out.extend_from_slice(b",\"unchanged\":[");
                let mut first = true;
                for (col, cell) in change.table.columns.iter().zip(after) {
                    if cell.is_none() {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        write_json_str(out, &col.name);
                    }
                }
                out.push(b']');
            }
        }
        out.extend_from_slice(b",\"schema\":");
        out.extend_from_slice(change.table.schema_json.as_bytes());
        out.extend_from_slice(b",\"ts_ms\":");
        out.extend_from_slice(itoa::Buffer::new().format(now_ms).as_bytes());
        out.push(b'}');
        // A large envelope hands its buffer over instead of being copied (and instead of the
        // encoder keeping megabytes of capacity for the rows that follow).
        let payload = if out.len() > LARGE_ENVELOPE {
            Bytes::from(std::mem::take(out))
        } else {
            Bytes::copy_from_slice(out)
        };
        OutMessage {
            subject: change.table.subject.clone(),
            id,
            payload,
        }
    }
}

fn pick(row: Option<&Row>, i: usize) -> Option<&Value> {
    row.and_then(|r| r.get(i)).and_then(Option::as_ref)
}

fn write_key(out: &mut Vec<u8>, change: &Change<'_>) {
    let table = change.table;
    if table.key.is_empty() || change.op == Op::Truncate {
        out.extend_from_slice(b"null");
        return;
    }
    // The key identifies the row as it is after the change; a delete has only the old image.
    out.push(b'{');
    for (n, &i) in table.key.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        write_json_str(out, &table.columns[i].name);
        out.push(b':');
        match pick(change.after, i).or_else(|| pick(change.before, i)) {
            Some(v) => v.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
}

fn write_row(out: &mut Vec<u8>, table: &TableMeta, row: Option<&Row>) {
    let Some(row) = row else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'{');
    let mut first = true;
    for (col, cell) in table.columns.iter().zip(row) {
        if let Some(v) = cell {
            if !first {
                out.push(b',');
            }
            first = false;
            write_json_str(out, &col.name);
            out.push(b':');
            v.write_json(out);
        }
    }
    out.push(b'}');
}

/// 64-bit FNV-1a: a stable, dependency-free hash for schema versions.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `source` block of a parsed envelope.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SourceBlock {
    /// Pipeline name.
    pub pipeline: String,
    /// Connector kind.
    pub connector: String,
    /// Database.
    pub db: String,
    /// Schema (database for MySQL sources).
    pub schema: String,
    /// Table.
    pub table: String,
    /// Sortable position.
    pub pos: String,
    /// Transaction facts.
    pub tx: TxInfo,
    /// Source commit time (ms).
    pub ts_ms: i64,
    /// From the initial snapshot.
    pub snapshot: bool,
}

/// `schema` block of a parsed envelope.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SchemaBlock {
    /// Schema version hash.
    pub version: String,
    /// Columns.
    pub columns: Vec<Column>,
}

/// An envelope as a sink reads it back.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Envelope {
    /// Envelope version, 1.
    pub v: u32,
    /// Deterministic id.
    pub id: String,
    /// Change kind.
    pub op: Op,
    /// Where it came from.
    pub source: SourceBlock,
    /// Key columns.
    #[serde(default)]
    pub key: Option<Image>,
    /// Old row image.
    #[serde(default)]
    pub before: Option<Image>,
    /// New row image.
    #[serde(default)]
    pub after: Option<Image>,
    /// Columns the source did not send; leave them as they are.
    #[serde(default)]
    pub unchanged: Vec<String>,
    /// Column descriptions.
    pub schema: SchemaBlock,
    /// When tidemark read the change (ms).
    pub ts_ms: i64,
}

impl Envelope {
    /// Parses envelope JSON; errors say what was malformed. Only version 1 is accepted: a
    /// newer envelope must not be half-understood. Column values of any depth and any
    /// number are accepted (nothing in an envelope recurses while parsing).
    pub fn parse(bytes: &[u8]) -> Result<Envelope, serde_json::Error> {
        let env: Envelope = serde_json::from_slice(bytes)?;
        if env.v != 1 {
            return Err(<serde_json::Error as serde::de::Error>::custom(format!(
                "unsupported envelope version {} (this tidemark reads version 1)",
                env.v
            )));
        }
        Ok(env)
    }
}

/// Shared handle to a table description.
pub type TableRef = Arc<TableMeta>;

#[cfg(test)]
mod tests {
    use super::*;

    fn naming() -> Naming {
        Naming {
            pipeline: "shop".into(),
            connector: "postgres",
            subject_prefix: "tidemark".into(),
        }
    }

    fn col(name: &str, ty: CanonicalType, pk: bool) -> Column {
        Column {
            name: name.into(),
            ty,
            source_type: "x".into(),
            pk,
            nullable: !pk,
            element: None,
        }
    }

    #[test]
    fn encodes_and_parses_back() {
        let t = TableMeta::new(
            &naming(),
            "shop",
            "public",
            "orders",
            vec![
                col("id", CanonicalType::Int64, true),
                col("status", CanonicalType::String, false),
                col("big", CanonicalType::Json, false),
            ],
        );
        let tx = TxInfo {
            id: "748".into(),
            seq: 3,
            commit_pos: "0/16B3748".into(),
            last: true,
        };
        let before: Row = vec![Some(Value::Int(42)), None, None];
        let after: Row = vec![Some(Value::Int(42)), Some(Value::Text("paid".into())), None];
        let change = Change {
            op: Op::Update,
            table: &t,
            pos: "00000000016B3748:00000003",
            tx: &tx,
            ts_ms: 1,
            snapshot: false,
            before: Some(&before),
            after: Some(&after),
        };
        let msg = Encoder::new().encode(&naming(), &change, 2);
        assert_eq!(msg.id, "shop:00000000016B3748:00000003");
        assert_eq!(msg.subject.as_str(), "tidemark.shop.public.orders");
        let env = Envelope::parse(&msg.payload).unwrap();
        assert_eq!(env.op, Op::Update);
        assert_eq!(env.unchanged, vec!["big".to_string()]);
        assert_eq!(env.key.unwrap()["id"], Cell::Number("42".into()));
        assert!(!env.after.as_ref().unwrap().contains_key("big"));
        assert_eq!(env.before.unwrap().len(), 1);
        assert!(env.source.tx.last);
        assert_eq!(env.schema.columns.len(), 3);
    }
}
