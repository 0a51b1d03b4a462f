//! Column plans and value conversion: binlog row images and snapshot rows to
//! canonical [`Value`]s.
//!
//! A [`Plan`] is built once per distinct TABLE_MAP (and once per table for the
//! snapshot) and holds, per column, a [`Kind`]: everything needed to decode a
//! value without looking anything up again. Row images are then decoded here
//! directly from the packed bytes instead of through mysql_common's value
//! decoder, which has reproduced defects (PROTOCOL-NOTES): signed MEDIUMINT
//! not sign-extended, negative TIME(1)/TIME(2) fractions wrong, YEAR 0000 read
//! as 1900.
//!
//! The snapshot reads rows through the binary protocol and converts them with
//! [`Plan::snapshot_row`] against a plan built from `information_schema`; both paths
//! produce the same canonical forms and the same schema block for the same
//! table, so a snapshot row and a streamed insert of the same data render
//! identically (the binary protocol, not text, because MariaDB prints FLOAT
//! with six significant digits).
//!
//! | MySQL type | canonical | rendering |
//! |---|---|---|
//! | TINYINT..BIGINT, unsigned ≤ 63 bits | int64 | number (TINYINT(1) → bool when configured) |
//! | BIGINT UNSIGNED | uint64 | number |
//! | DECIMAL(p,s) | decimal | `"-1.50"`, exactly s fraction digits |
//! | FLOAT / DOUBLE | float64 | shortest round-trip form of the f32 / f64 |
//! | BIT(n) | bits | string of n `0`/`1` |
//! | YEAR | int64 | 0 or 1901..2155 |
//! | DATE | date | `"2024-02-29"`, zero dates → null (counted, see below) |
//! | DATETIME(fsp) | timestamp | `"2024-02-29T13:45:00.123"` with fsp digits |
//! | TIMESTAMP(fsp) | timestamptz | UTC, `"…Z"` |
//! | TIME(fsp) | time | `"-838:59:59.000000"`: `-838:59:59` … `838:59:59`, fsp digits |
//! | CHAR/VARCHAR/TEXT | string | transcoded; CHAR without trailing spaces (as SELECT) |
//! | BINARY(n)/VARBINARY/BLOB | bytes | BINARY(n) re-padded with 0x00 to n bytes |
//! | ENUM | string | member name, `""` for the invalid index 0 |
//! | SET | set | array of member names |
//! | JSON (MySQL) / LONGTEXT with `json_valid` (MariaDB) | json | the document |
//! | GEOMETRY | bytes | WKB with SRID prefix |
//!
//! Zero dates (`0000-00-00`) and dates with a zero month or day (`2024-00-15`, also in
//! DATETIME) have no calendar value: they are emitted as `null` — a [`Substitution`] — and
//! the plan counts each one (`tidemark_source_values_substituted_total`) and warns once per
//! column and kind per process, so nothing turns into NULL silently. The decoders return
//! [`Checked`] so that the substitution is told apart from a real NULL.

use crate::binlog::{col, Ctx, DecodeError, Flavour, MapColumn, TableMap};
use crate::bytes::{bit, Cursor};
use crate::charset::{Charset, Collations};
use std::sync::Arc;
use tidemark_core::envelope::{CanonicalType, Column, Naming, Op, Row, TableMeta};
use tidemark_core::metrics as m;
use tidemark_core::value::Value;

/// How one column's values are decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Integer of `width` bytes (1, 2, 3, 4, 8).
    Int {
        /// Byte width in the row image.
        width: u8,
        /// UNSIGNED.
        unsigned: bool,
        /// TINYINT(1) rendered as bool.
        as_bool: bool,
    },
    /// YEAR.
    Year,
    /// DECIMAL(precision, scale).
    Decimal {
        /// Total digits.
        precision: u8,
        /// Fraction digits.
        scale: u8,
    },
    /// FLOAT.
    Float,
    /// DOUBLE.
    Double,
    /// BIT(nbits).
    Bit {
        /// Declared width.
        nbits: u32,
    },
    /// DATE.
    Date,
    /// TIME(fsp); `v2` = MySQL 5.6 packed format (TIME2).
    Time {
        /// Fraction digits.
        fsp: u8,
        /// Packed TIME2 format.
        v2: bool,
    },
    /// DATETIME(fsp).
    Datetime {
        /// Fraction digits.
        fsp: u8,
        /// Packed DATETIME2 format.
        v2: bool,
    },
    /// TIMESTAMP(fsp): seconds since the epoch.
    Timestamp {
        /// Fraction digits.
        fsp: u8,
        /// Packed TIMESTAMP2 format.
        v2: bool,
    },
    /// CHAR / VARCHAR / BINARY / VARBINARY.
    Str {
        /// Bytes of the length prefix (1 or 2).
        len_bytes: u8,
        /// Text charset or binary.
        charset: Charset,
        /// BINARY(n): re-pad with 0x00 to n bytes.
        pad_to: Option<usize>,
    },
    /// TEXT / BLOB (and MariaDB JSON, which is LONGTEXT).
    Blob {
        /// Bytes of the length prefix (1–4).
        len_bytes: u8,
        /// Text charset or binary.
        charset: Charset,
        /// A `json_valid` check marks it as JSON.
        json: bool,
    },
    /// ENUM: 1-based index into `names`.
    Enum {
        /// Bytes of the index (1 or 2).
        pack: u8,
        /// Member names.
        names: Arc<Vec<String>>,
    },
    /// SET: bitmask over `names`.
    Set {
        /// Bytes of the mask (1–8).
        pack: u8,
        /// Member names.
        names: Arc<Vec<String>>,
    },
    /// MySQL binary JSON.
    Json {
        /// Bytes of the length prefix.
        len_bytes: u8,
    },
    /// GEOMETRY (and MySQL VECTOR): length-prefixed bytes.
    Geometry {
        /// Bytes of the length prefix.
        len_bytes: u8,
    },
    /// A type only the snapshot can see (e.g. MariaDB UUID, INET6): passed through as text.
    Other,
    /// The NULL type.
    Null,
}

impl Kind {
    /// The canonical type of the values this kind produces.
    pub fn canonical(&self) -> CanonicalType {
        match self {
            Kind::Int { as_bool: true, .. } => CanonicalType::Bool,
            Kind::Int {
                width: 8,
                unsigned: true,
                ..
            } => CanonicalType::Uint64,
            Kind::Int { .. } | Kind::Year => CanonicalType::Int64,
            Kind::Decimal { .. } => CanonicalType::Decimal,
            Kind::Float | Kind::Double => CanonicalType::Float64,
            Kind::Bit { .. } => CanonicalType::Bits,
            Kind::Date => CanonicalType::Date,
            Kind::Time { .. } => CanonicalType::Time,
            Kind::Datetime { .. } => CanonicalType::Timestamp,
            Kind::Timestamp { .. } => CanonicalType::Timestamptz,
            Kind::Str { charset, .. }
            | Kind::Blob {
                charset,
                json: false,
                ..
            } => {
                if *charset == Charset::Binary {
                    CanonicalType::Bytes
                } else {
                    CanonicalType::String
                }
            }
            Kind::Blob { json: true, .. } | Kind::Json { .. } => CanonicalType::Json,
            Kind::Enum { .. } | Kind::Other | Kind::Null => CanonicalType::String,
            Kind::Set { .. } => CanonicalType::Set,
            Kind::Geometry { .. } => CanonicalType::Bytes,
        }
    }
}

/// One column as `information_schema.COLUMNS` describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// `COLUMN_TYPE`, lower-case (`tinyint(1) unsigned`, `enum('a','b')`).
    pub column_type: String,
    /// `DATA_TYPE`, lower-case.
    pub data_type: String,
    /// `IS_NULLABLE = 'YES'`.
    pub nullable: bool,
    /// Part of the primary key.
    pub pk: bool,
    /// `CHARACTER_SET_NAME`.
    pub charset: Option<String>,
    /// `NUMERIC_PRECISION` (BIT width, DECIMAL precision).
    pub numeric_precision: Option<u64>,
    /// `NUMERIC_SCALE`.
    pub numeric_scale: Option<u64>,
    /// `DATETIME_PRECISION`.
    pub datetime_precision: Option<u64>,
    /// `CHARACTER_OCTET_LENGTH`.
    pub octet_length: Option<u64>,
    /// A `json_valid(column)` check constraint exists (MariaDB JSON).
    pub json_check: bool,
}

/// A table as `information_schema` describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableInfo {
    /// Columns in ordinal order.
    pub columns: Vec<ColumnInfo>,
    /// Primary key column names in key order.
    pub pk: Vec<String>,
    /// `TABLE_ROWS` estimate.
    pub rows_estimate: u64,
}

impl TableInfo {
    fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }
}

/// Errors building a column plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Column names are missing: `binlog_row_metadata` is not FULL.
    #[error("the binlog has no column names for {table} (binlog_row_metadata is not FULL); run: SET GLOBAL binlog_row_metadata = 'FULL'")]
    NoNames {
        /// `db.table`.
        table: String,
    },
    /// ENUM/SET members are missing.
    #[error("the binlog has no ENUM/SET members for column {column} of {table} (binlog_row_metadata is not FULL); run: SET GLOBAL binlog_row_metadata = 'FULL'")]
    NoMembers {
        /// `db.table`.
        table: String,
        /// Column.
        column: String,
    },
    /// A type tidemark cannot decode.
    #[error("column {column} of {table} has binlog type {ty}, which tidemark cannot decode")]
    Unsupported {
        /// `db.table`.
        table: String,
        /// Column.
        column: String,
        /// Type code.
        ty: u8,
    },
}

/// Options that shape a plan.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    /// Which server family wrote the binlog.
    pub flavour: Flavour,
    /// Render TINYINT(1) as bool.
    pub tinyint1_as_bool: bool,
}

/// Per-table decoding plan and the envelope's description of the table.
#[derive(Debug)]
pub struct Plan {
    /// Envelope table description (subject, schema block, key).
    pub meta: Arc<TableMeta>,
    /// One kind per column, aligned with `meta.columns`.
    pub kinds: Vec<Kind>,
    /// `tidemark_source_events_total` handles per op (c, u, d, r, t).
    counters: [metrics::Counter; 5],
    /// Pipeline name, for substitution reports.
    pipeline: String,
}

impl Plan {
    fn new(naming: &Naming, db: &str, table: &str, columns: Vec<Column>, kinds: Vec<Kind>) -> Plan {
        let meta = Arc::new(TableMeta::new(naming, db, db, table, columns));
        let label = meta.qualified_name();
        let counter = |op: Op| {
            metrics::counter!(m::SOURCE_EVENTS,
                m::L_PIPELINE => naming.pipeline.clone(),
                m::L_TABLE => label.clone(),
                m::L_OP => op.code())
        };
        Plan {
            counters: [
                counter(Op::Create),
                counter(Op::Update),
                counter(Op::Delete),
                counter(Op::Read),
                counter(Op::Truncate),
            ],
            meta,
            kinds,
            pipeline: naming.pipeline.clone(),
        }
    }

    /// Decodes one row image (a null bitmap over the present columns, then their values), counting and reporting every value that had
    /// to be substituted.
    pub fn decode_row(&self, present: &[u8], c: &mut Cursor<'_>) -> Result<Row, DecodeError> {
        decode_row_with(&self.kinds, present, c, |i, what| self.substituted(i, what))
    }

    /// Converts one snapshot row (binary protocol values in column order, see
    /// the same forms as the binlog path), counting and reporting every value that had to be substituted.
    pub fn snapshot_row(&self, raw: Vec<Option<mysql_async::Value>>) -> Row {
        raw.into_iter()
            .zip(&self.kinds)
            .enumerate()
            .map(|(i, (v, k))| {
                let v = v.unwrap_or(mysql_async::Value::NULL);
                Some(from_snapshot_checked(k, v).unwrap_or_else(|what| {
                    self.substituted(i, what);
                    Value::Null
                }))
            })
            .collect()
    }

    /// Column `i` held a value without a canonical form: count it, and warn the first time
    /// this process sees it for this column.
    fn substituted(&self, i: usize, what: Substitution) {
        let table = self.meta.qualified_name();
        let (column, source_type) = self
            .meta
            .columns
            .get(i)
            .map(|c| (c.name.as_str(), c.source_type.as_str()))
            .unwrap_or(("", ""));
        metrics::counter!(m::SOURCE_VALUES_SUBSTITUTED,
            m::L_PIPELINE => self.pipeline.clone(),
            m::L_TABLE => table.clone(),
            m::L_COLUMN => column.to_owned(),
            m::L_KIND => what.label())
        .increment(1);
        if first_report(&self.pipeline, &table, column, what) {
            tracing::warn!(
                pipeline = %self.pipeline,
                table = %table,
                column = %column,
                source_type = %source_type,
                substitution = %what.label(),
                "{}; emitted as null (counted in {}, logged once per column)",
                what.describe(),
                m::SOURCE_VALUES_SUBSTITUTED
            );
        }
    }

    /// Counts one event of `op` for this table.
    pub fn count(&self, op: Op) {
        let i = match op {
            Op::Create => 0,
            Op::Update => 1,
            Op::Delete => 2,
            Op::Read => 3,
            Op::Truncate => 4,
        };
        self.counters[i].increment(1);
    }
}

/// Why a non-NULL source value was emitted as `null`: it has no canonical form.
///
/// MySQL accepts these when `sql_mode` lacks `NO_ZERO_DATE` / `NO_ZERO_IN_DATE` (MariaDB's
/// default) or has `ALLOW_INVALID_DATES`; no target date type can hold them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Substitution {
    /// The date part is `0000-00-00` (DATE, DATETIME, TIMESTAMP).
    ZeroDate,
    /// Month or day is zero in an otherwise non-zero date: `2024-00-15`, `2024-02-00`,
    /// `2024-00-00 10:00:00` (MySQL's "zero in date").
    ZeroInDate,
}

impl Substitution {
    /// The `kind` label value and the log field.
    pub fn label(self) -> &'static str {
        match self {
            Substitution::ZeroDate => "zero_date",
            Substitution::ZeroInDate => "zero_in_date",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Substitution::ZeroDate => "a zero date (0000-00-00) has no calendar value",
            Substitution::ZeroInDate => {
                "a date with a zero month or day (e.g. 2024-00-15) has no calendar value"
            }
        }
    }
}

/// Whether this is the first report of `what` for this column in this process (then it is
/// logged). Rare path: only substituted values get here.
fn first_report(pipeline: &str, table: &str, column: &str, what: Substitution) -> bool {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    type Seen = Mutex<HashSet<(String, String, String, Substitution)>>;
    static SEEN: OnceLock<Seen> = OnceLock::new();
    let seen = SEEN.get_or_init(|| Mutex::new(HashSet::new()));
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.insert((
        pipeline.to_owned(),
        table.to_owned(),
        column.to_owned(),
        what,
    ))
}

fn int_width(ty: u8) -> Option<u8> {
    match ty {
        col::TINY => Some(1),
        col::SHORT => Some(2),
        col::INT24 => Some(3),
        col::LONG => Some(4),
        col::LONGLONG => Some(8),
        _ => None,
    }
}

fn int_name(width: u8) -> &'static str {
    match width {
        1 => "tinyint",
        2 => "smallint",
        3 => "mediumint",
        4 => "int",
        _ => "bigint",
    }
}

fn with_fsp(name: &str, fsp: u8) -> String {
    if fsp == 0 {
        name.to_owned()
    } else {
        format!("{name}({fsp})")
    }
}

fn decode_members(members: &[Vec<u8>], charset: Charset) -> Arc<Vec<String>> {
    Arc::new(
        members
            .iter()
            .map(|m| {
                charset
                    .decode(m)
                    .unwrap_or_else(|| String::from_utf8_lossy(m).into_owned())
            })
            .collect(),
    )
}

/// The kind and a derived source type of one TABLE_MAP column.
fn kind_from_map(
    c: &MapColumn,
    collations: &Collations,
    table: &str,
    column: &str,
) -> Result<(Kind, String), PlanError> {
    let unsupported = || PlanError::Unsupported {
        table: table.to_owned(),
        column: column.to_owned(),
        ty: c.ty,
    };
    let charset = c.collation.map(|id| collations.charset(id));
    let m0 = c.meta[0];
    let m1 = c.meta[1];
    let meta16 = u16::from_le_bytes(c.meta);
    let out = match c.ty {
        t if int_width(t).is_some() => {
            let width = int_width(t).unwrap_or(8);
            let name = int_name(width);
            (
                Kind::Int {
                    width,
                    unsigned: c.unsigned,
                    as_bool: false,
                },
                if c.unsigned {
                    format!("{name} unsigned")
                } else {
                    name.to_owned()
                },
            )
        }
        col::YEAR => (Kind::Year, "year".to_owned()),
        col::NEWDECIMAL => (
            Kind::Decimal {
                precision: m0,
                scale: m1,
            },
            format!(
                "decimal({m0},{m1}){}",
                if c.unsigned { " unsigned" } else { "" }
            ),
        ),
        col::FLOAT => (Kind::Float, "float".to_owned()),
        col::DOUBLE => (Kind::Double, "double".to_owned()),
        col::BIT => {
            let nbits = u32::from(m1) * 8 + u32::from(m0);
            (Kind::Bit { nbits }, format!("bit({nbits})"))
        }
        col::DATE | col::NEWDATE => (Kind::Date, "date".to_owned()),
        col::TIME => (Kind::Time { fsp: 0, v2: false }, "time".to_owned()),
        col::TIME2 => (
            Kind::Time {
                fsp: m0.min(6),
                v2: true,
            },
            with_fsp("time", m0.min(6)),
        ),
        col::DATETIME => (Kind::Datetime { fsp: 0, v2: false }, "datetime".to_owned()),
        col::DATETIME2 => (
            Kind::Datetime {
                fsp: m0.min(6),
                v2: true,
            },
            with_fsp("datetime", m0.min(6)),
        ),
        col::TIMESTAMP => (
            Kind::Timestamp { fsp: 0, v2: false },
            "timestamp".to_owned(),
        ),
        col::TIMESTAMP2 => (
            Kind::Timestamp {
                fsp: m0.min(6),
                v2: true,
            },
            with_fsp("timestamp", m0.min(6)),
        ),
        col::VARCHAR | col::VAR_STRING => {
            let charset = charset.unwrap_or(Charset::Unknown);
            let name = if charset == Charset::Binary {
                "varbinary"
            } else {
                "varchar"
            };
            (
                Kind::Str {
                    len_bytes: if meta16 > 255 { 2 } else { 1 },
                    charset,
                    pad_to: None,
                },
                name.to_owned(),
            )
        }
        col::STRING => {
            let max = crate::binlog::string_max_len(c.meta);
            let charset = charset.unwrap_or(Charset::Unknown);
            let binary = charset == Charset::Binary;
            (
                Kind::Str {
                    len_bytes: if max > 255 { 2 } else { 1 },
                    charset,
                    pad_to: binary.then_some(max),
                },
                if binary {
                    format!("binary({max})")
                } else {
                    "char".to_owned()
                },
            )
        }
        col::BLOB | col::TINY_BLOB | col::MEDIUM_BLOB | col::LONG_BLOB => {
            let charset = charset.unwrap_or(Charset::Unknown);
            let binary = charset == Charset::Binary;
            let name = match (m0, binary) {
                (1, true) => "tinyblob",
                (2, true) => "blob",
                (3, true) => "mediumblob",
                (_, true) => "longblob",
                (1, false) => "tinytext",
                (2, false) => "text",
                (3, false) => "mediumtext",
                (_, false) => "longtext",
            };
            if !(1..=4).contains(&m0) {
                return Err(unsupported());
            }
            (
                Kind::Blob {
                    len_bytes: m0,
                    charset,
                    json: false,
                },
                name.to_owned(),
            )
        }
        col::ENUM | col::SET => {
            let members = c.members.as_ref().ok_or_else(|| PlanError::NoMembers {
                table: table.to_owned(),
                column: column.to_owned(),
            })?;
            let names = decode_members(members, charset.unwrap_or(Charset::Utf8));
            let pack = m1;
            if c.ty == col::ENUM {
                if !(1..=2).contains(&pack) {
                    return Err(unsupported());
                }
                (Kind::Enum { pack, names }, "enum".to_owned())
            } else {
                if !(1..=8).contains(&pack) {
                    return Err(unsupported());
                }
                (Kind::Set { pack, names }, "set".to_owned())
            }
        }
        col::JSON => {
            if !(1..=4).contains(&m0) {
                return Err(unsupported());
            }
            (Kind::Json { len_bytes: m0 }, "json".to_owned())
        }
        col::GEOMETRY | col::VECTOR => {
            if !(1..=4).contains(&m0) {
                return Err(unsupported());
            }
            let name = if c.ty == col::GEOMETRY {
                "geometry"
            } else {
                "vector"
            };
            (Kind::Geometry { len_bytes: m0 }, name.to_owned())
        }
        col::NULL => (Kind::Null, "null".to_owned()),
        _ => return Err(unsupported()),
    };
    Ok(out)
}

/// Whether an `information_schema` description can belong to a binlog column of `kind`
/// (it describes the table *now*, which may differ from the binlog position being read).
fn compatible(kind: &Kind, data_type: &str) -> bool {
    match kind {
        Kind::Int { width, .. } => matches!(
            (width, data_type),
            (1, "tinyint")
                | (2, "smallint")
                | (3, "mediumint")
                | (4, "int" | "integer")
                | (8, "bigint")
        ),
        Kind::Year => data_type == "year",
        Kind::Decimal { .. } => matches!(data_type, "decimal" | "numeric"),
        Kind::Float => data_type == "float",
        Kind::Double => matches!(data_type, "double" | "real" | "double precision"),
        Kind::Bit { .. } => data_type == "bit",
        Kind::Date => data_type == "date",
        Kind::Time { .. } => data_type == "time",
        Kind::Datetime { .. } => data_type == "datetime",
        Kind::Timestamp { .. } => data_type == "timestamp",
        Kind::Str {
            charset, pad_to, ..
        } => {
            if *charset == Charset::Binary {
                if pad_to.is_some() {
                    data_type == "binary"
                } else {
                    data_type == "varbinary"
                }
            } else {
                matches!(data_type, "char" | "varchar")
            }
        }
        Kind::Blob { charset, .. } => {
            if *charset == Charset::Binary {
                data_type.ends_with("blob")
            } else {
                data_type.ends_with("text") || data_type == "json"
            }
        }
        Kind::Enum { .. } => data_type == "enum",
        Kind::Set { .. } => data_type == "set",
        Kind::Json { .. } => data_type == "json",
        Kind::Geometry { .. } => is_geometry(data_type) || data_type == "vector",
        Kind::Other | Kind::Null => false,
    }
}

fn is_geometry(data_type: &str) -> bool {
    matches!(
        data_type,
        "geometry"
            | "point"
            | "linestring"
            | "polygon"
            | "multipoint"
            | "multilinestring"
            | "multipolygon"
            | "geometrycollection"
            | "geomcollection"
    )
}

fn is_tinyint1(info: &ColumnInfo) -> bool {
    info.data_type == "tinyint" && info.column_type.starts_with("tinyint(1)")
}

/// Builds the plan of a table from its TABLE_MAP, enriched with `information_schema` where that
/// still describes the same column (display width for TINYINT(1), `json_valid` checks, the full
/// source type).
pub fn plan_from_map(
    naming: &Naming,
    map: &TableMap,
    info: Option<&TableInfo>,
    collations: &Collations,
    opts: PlanOptions,
) -> Result<Plan, PlanError> {
    let qualified = format!("{}.{}", map.db, map.table);
    if !map.has_names {
        return Err(PlanError::NoNames { table: qualified });
    }
    let mut columns = Vec::with_capacity(map.columns.len());
    let mut kinds = Vec::with_capacity(map.columns.len());
    for c in &map.columns {
        let name = c.name.clone().unwrap_or_default();
        let (mut kind, derived) = kind_from_map(c, collations, &qualified, &name)?;
        let info_col = info
            .and_then(|i| i.column(&name))
            .filter(|ic| compatible(&kind, &ic.data_type));
        if let Some(ic) = info_col {
            if let Kind::Int {
                as_bool, width: 1, ..
            } = &mut kind
            {
                *as_bool = opts.tinyint1_as_bool && is_tinyint1(ic);
            }
            if let Kind::Blob { json, charset, .. } = &mut kind {
                *json = opts.flavour == Flavour::Mariadb
                    && *charset != Charset::Binary
                    && ic.json_check;
            }
        }
        let source_type = info_col.map(|ic| ic.column_type.clone()).unwrap_or(derived);
        columns.push(Column {
            name,
            ty: kind.canonical(),
            source_type,
            pk: c.pk,
            nullable: c.nullable,
            element: None,
        });
        kinds.push(kind);
    }
    Ok(Plan::new(naming, &map.db, &map.table, columns, kinds))
}

fn parse_members(column_type: &str) -> Vec<String> {
    // enum('a','b''c') / set('x','y')
    let Some(start) = column_type.find('(') else {
        return Vec::new();
    };
    let body = &column_type[start + 1..];
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut chars = body.chars().peekable();
    while let Some(ch) = chars.next() {
        match (in_quote, ch) {
            (false, '\'') => in_quote = true,
            (true, '\'') if chars.peek() == Some(&'\'') => {
                chars.next();
                cur.push('\'');
            }
            (true, '\'') => {
                in_quote = false;
                out.push(std::mem::take(&mut cur));
            }
            (true, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (true, c) => cur.push(c),
            (false, ')') => break,
            _ => {}
        }
    }
    out
}

/// The kind of a column from `information_schema` alone (snapshot reads).
pub fn kind_from_info(ic: &ColumnInfo, opts: PlanOptions) -> Kind {
    let unsigned = ic.column_type.contains("unsigned");
    let fsp = ic.datetime_precision.unwrap_or(0).min(6) as u8;
    let charset = match &ic.charset {
        Some(cs) => Charset::from_name(cs),
        None => Charset::Binary,
    };
    let dt = ic.data_type.as_str();
    match dt {
        "tinyint" => Kind::Int {
            width: 1,
            unsigned,
            as_bool: opts.tinyint1_as_bool && is_tinyint1(ic),
        },
        "smallint" => Kind::Int {
            width: 2,
            unsigned,
            as_bool: false,
        },
        "mediumint" => Kind::Int {
            width: 3,
            unsigned,
            as_bool: false,
        },
        "int" | "integer" => Kind::Int {
            width: 4,
            unsigned,
            as_bool: false,
        },
        "bigint" => Kind::Int {
            width: 8,
            unsigned,
            as_bool: false,
        },
        "year" => Kind::Year,
        "decimal" | "numeric" => Kind::Decimal {
            precision: ic.numeric_precision.unwrap_or(10).min(65) as u8,
            scale: ic.numeric_scale.unwrap_or(0).min(38) as u8,
        },
        "float" => Kind::Float,
        "double" | "real" | "double precision" => Kind::Double,
        "bit" => Kind::Bit {
            nbits: ic.numeric_precision.unwrap_or(1).min(64) as u32,
        },
        "date" => Kind::Date,
        "time" => Kind::Time { fsp, v2: true },
        "datetime" => Kind::Datetime { fsp, v2: true },
        "timestamp" => Kind::Timestamp { fsp, v2: true },
        "char" | "varchar" => Kind::Str {
            len_bytes: 2,
            charset,
            pad_to: None,
        },
        "binary" => Kind::Str {
            len_bytes: 2,
            charset: Charset::Binary,
            pad_to: ic.octet_length.map(|n| n as usize),
        },
        "varbinary" => Kind::Str {
            len_bytes: 2,
            charset: Charset::Binary,
            pad_to: None,
        },
        "tinytext" | "text" | "mediumtext" | "longtext" => Kind::Blob {
            len_bytes: 4,
            charset,
            json: opts.flavour == Flavour::Mariadb && ic.json_check,
        },
        "tinyblob" | "blob" | "mediumblob" | "longblob" => Kind::Blob {
            len_bytes: 4,
            charset: Charset::Binary,
            json: false,
        },
        "enum" => Kind::Enum {
            pack: 2,
            names: Arc::new(parse_members(&ic.column_type)),
        },
        "set" => Kind::Set {
            pack: 8,
            names: Arc::new(parse_members(&ic.column_type)),
        },
        "json" if opts.flavour == Flavour::Mysql => Kind::Json { len_bytes: 4 },
        "json" => Kind::Blob {
            len_bytes: 4,
            charset: Charset::Utf8,
            json: true,
        },
        "vector" => Kind::Geometry { len_bytes: 4 },
        t if is_geometry(t) => Kind::Geometry { len_bytes: 4 },
        _ => Kind::Other,
    }
}

/// Builds the plan of a table from `information_schema` (snapshot, TRUNCATE of a table not seen
/// in the stream yet).
pub fn plan_from_info(
    naming: &Naming,
    db: &str,
    table: &str,
    info: &TableInfo,
    opts: PlanOptions,
) -> Plan {
    let mut columns = Vec::with_capacity(info.columns.len());
    let mut kinds = Vec::with_capacity(info.columns.len());
    for ic in &info.columns {
        let kind = kind_from_info(ic, opts);
        columns.push(Column {
            name: ic.name.clone(),
            ty: kind.canonical(),
            source_type: ic.column_type.clone(),
            pk: ic.pk,
            nullable: ic.nullable,
            element: None,
        });
        kinds.push(kind);
    }
    Plan::new(naming, db, table, columns, kinds)
}

// ---------------------------------------------------------------------------------------------
// Row images.

const EV: &str = "row image";

/// Decodes one row image: a null bitmap over the present columns, then their values. A value
/// without a canonical form becomes `null` and is passed to `substituted` with its column
/// index.
fn decode_row_with(
    kinds: &[Kind],
    present: &[u8],
    c: &mut Cursor<'_>,
    mut substituted: impl FnMut(usize, Substitution),
) -> Result<Row, DecodeError> {
    let npresent = (0..kinds.len()).filter(|&i| bit(present, i)).count();
    if npresent == 0 {
        // An image of no columns takes no bytes: the rows loop would never advance. A server
        // never writes one; a malformed event must not hang the stream.
        return Err(DecodeError::Invalid {
            event: EV,
            message: "row image with no columns present".into(),
        });
    }
    let nulls = c.take(npresent.div_ceil(8), "null bitmap").ctx(EV)?;
    let mut row = Vec::with_capacity(kinds.len());
    let mut k = 0;
    for (i, kind) in kinds.iter().enumerate() {
        if !bit(present, i) {
            row.push(None);
            continue;
        }
        let null = bit(nulls, k);
        k += 1;
        if null {
            row.push(Some(Value::Null));
        } else {
            row.push(Some(decode_checked(kind, c)?.unwrap_or_else(|what| {
                substituted(i, what);
                Value::Null
            })));
        }
    }
    Ok(row)
}

fn sign_extend(v: u64, width: u8) -> i64 {
    let bits = u32::from(width) * 8;
    if bits >= 64 {
        v as i64
    } else {
        let shift = 64 - bits;
        ((v << shift) as i64) >> shift
    }
}

fn length_prefixed<'a>(c: &mut Cursor<'a>, len_bytes: u8) -> Result<&'a [u8], DecodeError> {
    let n = c.uint_le(usize::from(len_bytes), "length").ctx(EV)?;
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    c.take(n, "value").ctx(EV)
}

fn text_or_bytes(charset: Charset, bytes: &[u8]) -> Value {
    match charset.decode(bytes) {
        Some(s) => Value::Text(s),
        None => Value::Bytes(bytes.to_vec()),
    }
}

/// A canonical value, or why the source value has none (it is then emitted as `null`).
pub type Checked = Result<Value, Substitution>;

/// Decodes one non-NULL value; a value without a canonical form becomes `null` (use
/// [`Plan::decode_row`] to have it counted and reported).
#[cfg(test)]
fn decode_value(kind: &Kind, c: &mut Cursor<'_>) -> Result<Value, DecodeError> {
    Ok(decode_checked(kind, c)?.unwrap_or(Value::Null))
}

/// Decodes one non-NULL value, telling substitutions apart.
fn decode_checked(kind: &Kind, c: &mut Cursor<'_>) -> Result<Checked, DecodeError> {
    Ok(Ok(match kind {
        Kind::Int {
            width,
            unsigned,
            as_bool,
        } => {
            let raw = c.uint_le(usize::from(*width), "integer").ctx(EV)?;
            if *as_bool {
                Value::Bool(raw != 0)
            } else if *unsigned {
                if *width == 8 {
                    Value::UInt(raw)
                } else {
                    Value::Int(raw as i64)
                }
            } else {
                Value::Int(sign_extend(raw, *width))
            }
        }
        Kind::Year => {
            let y = c.u8("year").ctx(EV)?;
            Value::Int(if y == 0 { 0 } else { 1900 + i64::from(y) })
        }
        Kind::Decimal { precision, scale } => {
            let size = decimal_size(*precision, *scale);
            let b = c.take(size, "decimal").ctx(EV)?;
            Value::Decimal(decode_decimal(b, *precision, *scale)?)
        }
        Kind::Float => {
            let b = c.take(4, "float").ctx(EV)?;
            Value::Float32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        Kind::Double => {
            let v = c.u64("double").ctx(EV)?;
            Value::Float(f64::from_bits(v))
        }
        Kind::Bit { nbits } => {
            let nbytes = (*nbits as usize).div_ceil(8);
            let b = c.take(nbytes, "bit").ctx(EV)?;
            Value::Text(bits_text(b, *nbits))
        }
        Kind::Date => {
            let v = c.uint_le(3, "date").ctx(EV)?;
            let (y, m, d) = ((v >> 9) as u32, ((v >> 5) & 15) as u32, (v & 31) as u32);
            return Ok(date_value(y, m, d));
        }
        Kind::Time { fsp, v2: true } => {
            let (neg, h, mi, s, us) = time2(c, *fsp)?;
            Value::Text(fmt_time(neg, h, mi, s, us, *fsp))
        }
        Kind::Time { v2: false, .. } => {
            let raw = c.uint_le(3, "time").ctx(EV)?;
            let v = sign_extend(raw, 3);
            let a = v.unsigned_abs();
            Value::Text(fmt_time(
                v < 0,
                (a / 10_000) as u32,
                ((a / 100) % 100) as u32,
                (a % 100) as u32,
                0,
                0,
            ))
        }
        Kind::Datetime { fsp, v2: true } => {
            let int = c.uint_be(5, "datetime").ctx(EV)?;
            let us = frac_be(c, *fsp, false)?;
            // Packed: 1 bit sign (set for non-negative), 17 bits year*13+month, 5 day, 5 hour,
            // 6 minute, 6 second.
            let v = int.wrapping_sub(0x80_0000_0000);
            let ymd = v >> 17;
            let ym = ymd >> 5;
            let hms = v & ((1 << 17) - 1);
            let (y, mo, d) = ((ym / 13) as u32, (ym % 13) as u32, (ymd & 31) as u32);
            let (h, mi, s) = (
                (hms >> 12) as u32,
                ((hms >> 6) & 63) as u32,
                (hms & 63) as u32,
            );
            return Ok(datetime_value(y, mo, d, h, mi, s, us as u32, *fsp));
        }
        Kind::Datetime { v2: false, .. } => {
            let v = c.u64("datetime").ctx(EV)?;
            let (date, time) = (v / 1_000_000, v % 1_000_000);
            return Ok(datetime_value(
                (date / 10_000) as u32,
                ((date / 100) % 100) as u32,
                (date % 100) as u32,
                (time / 10_000) as u32,
                ((time / 100) % 100) as u32,
                (time % 100) as u32,
                0,
                0,
            ));
        }
        Kind::Timestamp { fsp, v2 } => {
            let secs = if *v2 {
                c.uint_be(4, "timestamp").ctx(EV)?
            } else {
                c.uint_le(4, "timestamp").ctx(EV)?
            };
            let us = if *v2 { frac_be(c, *fsp, true)? } else { 0 };
            return Ok(timestamp_value(secs as i64, us as u32, *fsp));
        }
        Kind::Str {
            len_bytes,
            charset,
            pad_to,
        } => {
            let b = length_prefixed(c, *len_bytes)?;
            match (charset, pad_to) {
                (Charset::Binary, Some(n)) if b.len() < *n => {
                    let mut v = b.to_vec();
                    v.resize(*n, 0);
                    Value::Bytes(v)
                }
                _ => text_or_bytes(*charset, b),
            }
        }
        Kind::Blob {
            len_bytes,
            charset,
            json,
        } => {
            let b = length_prefixed(c, *len_bytes)?;
            match text_or_bytes(*charset, b) {
                Value::Text(t) if *json => Value::json(t),
                v => v,
            }
        }
        Kind::Enum { pack, names } => {
            let i = c.uint_le(usize::from(*pack), "enum").ctx(EV)?;
            Value::Text(enum_name(names, i)?)
        }
        Kind::Set { pack, names } => {
            let mask = c.uint_le(usize::from(*pack), "set").ctx(EV)?;
            set_value(names, mask)
        }
        Kind::Json { len_bytes } => {
            let b = length_prefixed(c, *len_bytes)?;
            Value::Json(mysql_json(b)?)
        }
        Kind::Geometry { len_bytes } => Value::Bytes(length_prefixed(c, *len_bytes)?.to_vec()),
        Kind::Null => Value::Null,
        Kind::Other => {
            return Err(DecodeError::invalid(
                EV,
                "column type has no binlog decoder",
            ));
        }
    }))
}

fn enum_name(names: &[String], i: u64) -> Result<String, DecodeError> {
    if i == 0 {
        return Ok(String::new());
    }
    usize::try_from(i - 1)
        .ok()
        .and_then(|i| names.get(i))
        .cloned()
        .ok_or_else(|| {
            DecodeError::invalid(EV, format!("ENUM index {i} beyond {} members", names.len()))
        })
}

fn set_value(names: &[String], mask: u64) -> Value {
    Value::Array(
        names
            .iter()
            .enumerate()
            .filter(|(i, _)| *i < 64 && mask & (1u64 << i) != 0)
            .map(|(_, n)| Value::Text(n.clone()))
            .collect(),
    )
}

fn bits_text(bytes: &[u8], nbits: u32) -> String {
    let v = crate::bytes::be(bytes);
    let n = nbits.clamp(1, 64);
    (0..n)
        .rev()
        .map(|i| if v >> i & 1 == 1 { '1' } else { '0' })
        .collect()
}

/// Fractional seconds of TIME2/DATETIME2/TIMESTAMP2 in microseconds (big-endian, signed for
/// DATETIME/TIME storage, unsigned for TIMESTAMP).
fn frac_be(c: &mut Cursor<'_>, fsp: u8, unsigned: bool) -> Result<i64, DecodeError> {
    let n = usize::from(fsp.div_ceil(2));
    if n == 0 {
        return Ok(0);
    }
    let raw = c.uint_be(n, "fractional seconds").ctx(EV)?;
    let v = if unsigned {
        raw as i64
    } else {
        sign_extend(raw, n as u8)
    };
    Ok(match n {
        1 => v * 10_000,
        2 => v * 100,
        _ => v,
    })
}

/// TIME2: returns (negative, hours, minutes, seconds, microseconds).
fn time2(c: &mut Cursor<'_>, fsp: u8) -> Result<(bool, u32, u32, u32, u32), DecodeError> {
    const OFS: i64 = 0x80_0000;
    let int = c.uint_be(3, "time").ctx(EV)? as i64 - OFS;
    // Negative values store the fraction in reverse order (MySQL my_time_packed_from_binary):
    // borrow one second from the integer part.
    let packed: i64 = match fsp.div_ceil(2) {
        0 => int << 24,
        1 => {
            let mut i = int;
            let mut f = i64::from(c.u8("time fraction").ctx(EV)?);
            if i < 0 && f != 0 {
                i += 1;
                f -= 0x100;
            }
            (i << 24) + f * 10_000
        }
        2 => {
            let mut i = int;
            // Read unsigned, as MySQL's mi_uint2korr: a sign-extended read turned every negative
            // TIME(3)/TIME(4) with a fraction into garbage (-00:00:01.250 → -00:00:01.999).
            let mut f = c.uint_be(2, "time fraction").ctx(EV)? as i64;
            if i < 0 && f != 0 {
                i += 1;
                f -= 0x10000;
            }
            (i << 24) + f * 100
        }
        _ => {
            let f = c.uint_be(3, "time fraction").ctx(EV)? as i64;
            let whole = (int << 24) + f;
            // TIMEF_OFS applies to the 6-byte value as a whole.
            whole
        }
    };
    let neg = packed < 0;
    let a = packed.unsigned_abs();
    let us = (a % (1 << 24)) as u32;
    let hms = a >> 24;
    let h = ((hms >> 12) % (1 << 10)) as u32;
    let mi = ((hms >> 6) % (1 << 6)) as u32;
    let s = (hms % (1 << 6)) as u32;
    Ok((neg, h, mi, s, us))
}

const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

/// Bytes of a packed DECIMAL(precision, scale).
pub fn decimal_size(precision: u8, scale: u8) -> usize {
    let intg = usize::from(precision.saturating_sub(scale));
    let frac = usize::from(scale);
    (intg / 9) * 4 + DIG2BYTES[intg % 9] + (frac / 9) * 4 + DIG2BYTES[frac % 9]
}

/// Decodes MySQL's packed DECIMAL into its exact text (`-1.50`).
pub fn decode_decimal(bytes: &[u8], precision: u8, scale: u8) -> Result<String, DecodeError> {
    const DEC: &str = "decimal";
    if scale > precision || decimal_size(precision, scale) != bytes.len() || bytes.is_empty() {
        return Err(DecodeError::invalid(
            DEC,
            format!("{} bytes for DECIMAL({precision},{scale})", bytes.len()),
        ));
    }
    let mut b = bytes.to_vec();
    let negative = b[0] & 0x80 == 0;
    b[0] ^= 0x80;
    if negative {
        for x in b.iter_mut() {
            *x = !*x;
        }
    }
    let intg = usize::from(precision - scale);
    let frac = usize::from(scale);
    let mut c = Cursor::new(&b);
    let mut group = |digits: usize| -> Result<u64, DecodeError> {
        let n = DIG2BYTES[digits];
        let v = c.uint_be(n, "decimal group").ctx(DEC)?;
        if v >= 10u64.pow(digits as u32) {
            return Err(DecodeError::invalid(
                DEC,
                format!("group value {v} exceeds {digits} digits"),
            ));
        }
        Ok(v)
    };
    let mut int_digits = String::new();
    if intg % 9 > 0 {
        let v = group(intg % 9)?;
        int_digits.push_str(&v.to_string());
    }
    for _ in 0..intg / 9 {
        let v = group(9)?;
        int_digits.push_str(&format!("{v:09}"));
    }
    let mut frac_digits = String::new();
    for _ in 0..frac / 9 {
        let v = group(9)?;
        frac_digits.push_str(&format!("{v:09}"));
    }
    if frac % 9 > 0 {
        let d = frac % 9;
        let v = group(d)?;
        frac_digits.push_str(&format!("{v:0d$}"));
    }
    let int_trimmed = int_digits.trim_start_matches('0');
    let int_part = if int_trimmed.is_empty() {
        "0"
    } else {
        int_trimmed
    };
    let zero = int_part == "0" && frac_digits.bytes().all(|d| d == b'0');
    let mut out = String::with_capacity(int_part.len() + frac_digits.len() + 2);
    if negative && !zero {
        out.push('-');
    }
    out.push_str(int_part);
    if !frac_digits.is_empty() {
        out.push('.');
        out.push_str(&frac_digits);
    }
    Ok(out)
}

fn mysql_json(bytes: &[u8]) -> Result<String, DecodeError> {
    use mysql_common::proto::MyDeserialize as _;
    if bytes.is_empty() {
        return Ok("null".into());
    }
    // mysql_common's JSONB reader is defensive but not proven panic-free on hostile bytes.
    let result = std::panic::catch_unwind(|| {
        let mut buf = mysql_common::io::ParseBuf(bytes);
        let v = mysql_common::binlog::jsonb::Value::deserialize((), &mut buf)
            .map_err(|e| e.to_string())?;
        serde_json::Value::try_from(v).map_err(|e| e.to_string())
    });
    match result {
        Ok(Ok(v)) => Ok(v.to_string()),
        Ok(Err(e)) => Err(DecodeError::invalid("binary JSON", e)),
        Err(_) => Err(DecodeError::invalid(
            "binary JSON",
            "decoder panicked on malformed data",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Temporal formatting, shared by both paths.

fn push2(s: &mut String, v: u32) {
    if v < 10 {
        s.push('0');
    }
    s.push_str(itoa::Buffer::new().format(v));
}

fn push_frac(s: &mut String, us: u32, fsp: u8) {
    if fsp == 0 {
        return;
    }
    let digits = format!("{:06}", us.min(999_999));
    s.push('.');
    s.push_str(&digits[..usize::from(fsp.min(6))]);
}

fn fmt_date(y: u32, m: u32, d: u32) -> String {
    format!("{y:04}-{m:02}-{d:02}")
}

/// `0000-00-00` and dates with a zero month or day are not calendar dates.
fn zero_date(y: u32, m: u32, d: u32) -> Result<(), Substitution> {
    if y == 0 && m == 0 && d == 0 {
        Err(Substitution::ZeroDate)
    } else if m == 0 || d == 0 {
        Err(Substitution::ZeroInDate)
    } else {
        Ok(())
    }
}

fn date_value(y: u32, m: u32, d: u32) -> Checked {
    zero_date(y, m, d)?;
    Ok(Value::Text(fmt_date(y, m, d)))
}

#[allow(clippy::too_many_arguments)]
fn datetime_value(y: u32, mo: u32, d: u32, h: u32, mi: u32, s: u32, us: u32, fsp: u8) -> Checked {
    zero_date(y, mo, d)?;
    let mut out = fmt_date(y, mo, d);
    out.push('T');
    push2(&mut out, h);
    out.push(':');
    push2(&mut out, mi);
    out.push(':');
    push2(&mut out, s);
    push_frac(&mut out, us, fsp);
    Ok(Value::Text(out))
}

fn fmt_time(neg: bool, h: u32, mi: u32, s: u32, us: u32, fsp: u8) -> String {
    let mut out = String::with_capacity(16);
    if neg {
        out.push('-');
    }
    push2(&mut out, h);
    out.push(':');
    push2(&mut out, mi);
    out.push(':');
    push2(&mut out, s);
    push_frac(&mut out, us, fsp);
    out
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn timestamp_value(secs: i64, us: u32, fsp: u8) -> Checked {
    if secs == 0 && us == 0 {
        // TIMESTAMP '0000-00-00 00:00:00'.
        return Err(Substitution::ZeroDate);
    }
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let tod = secs.rem_euclid(86_400);
    with_z(datetime_value(
        y.clamp(0, 9999) as u32,
        mo,
        d,
        (tod / 3600) as u32,
        ((tod / 60) % 60) as u32,
        (tod % 60) as u32,
        us,
        fsp,
    ))
}

/// Appends the UTC marker of a `timestamptz`.
fn with_z(v: Checked) -> Checked {
    v.map(|v| match v {
        Value::Text(mut s) => {
            s.push('Z');
            Value::Text(s)
        }
        v => v,
    })
}

// ---------------------------------------------------------------------------------------------
// Snapshot values (binary protocol).

/// Converts one value read by the snapshot (binary protocol, session time zone UTC) into the
/// same canonical form the binlog decoder produces; a value without a canonical form becomes
/// `null` (use [`Plan::snapshot_row`] to have it counted and reported).
#[cfg(test)]
fn from_snapshot(kind: &Kind, v: mysql_async::Value) -> Value {
    from_snapshot_checked(kind, v).unwrap_or(Value::Null)
}

/// A snapshot value in canonical form, telling substitutions apart.
fn from_snapshot_checked(kind: &Kind, v: mysql_async::Value) -> Checked {
    use mysql_async::Value as V;
    Ok(match (kind, v) {
        (_, V::NULL) => Value::Null,
        (Kind::Int { as_bool: true, .. }, V::Int(i)) => Value::Bool(i != 0),
        (Kind::Int { as_bool: true, .. }, V::UInt(u)) => Value::Bool(u != 0),
        (
            Kind::Int {
                width: 8,
                unsigned: true,
                ..
            },
            V::Int(i),
        ) => Value::UInt(i as u64),
        (
            Kind::Int {
                width: 8,
                unsigned: true,
                ..
            },
            V::UInt(u),
        ) => Value::UInt(u),
        (Kind::Int { .. } | Kind::Year, V::Int(i)) => Value::Int(i),
        (Kind::Int { .. } | Kind::Year, V::UInt(u)) => Value::Int(u as i64),
        (Kind::Float, V::Float(f)) => Value::Float32(f),
        (Kind::Float, V::Double(f)) => Value::Float32(f as f32),
        (Kind::Double, V::Double(f)) => Value::Float(f),
        (Kind::Double, V::Float(f)) => Value::Float(f64::from(f)),
        (Kind::Date, V::Date(y, m, d, ..)) => {
            return date_value(u32::from(y), u32::from(m), u32::from(d))
        }
        (Kind::Datetime { fsp, .. }, V::Date(y, mo, d, h, mi, s, us)) => {
            return datetime_value(
                u32::from(y),
                u32::from(mo),
                u32::from(d),
                u32::from(h),
                u32::from(mi),
                u32::from(s),
                us,
                *fsp,
            )
        }
        (Kind::Timestamp { fsp, .. }, V::Date(y, mo, d, h, mi, s, us)) => {
            return with_z(datetime_value(
                u32::from(y),
                u32::from(mo),
                u32::from(d),
                u32::from(h),
                u32::from(mi),
                u32::from(s),
                us,
                *fsp,
            ))
        }
        (Kind::Time { fsp, .. }, V::Time(neg, days, h, mi, s, us)) => {
            let hours = days.saturating_mul(24).saturating_add(u32::from(h));
            let zero = hours == 0 && mi == 0 && s == 0 && us == 0;
            Value::Text(fmt_time(
                neg && !zero,
                hours,
                u32::from(mi),
                u32::from(s),
                us,
                *fsp,
            ))
        }
        (kind, V::Bytes(b)) => return from_text(kind, b),
        (_, other) => Value::Text(other.as_sql(true).trim_matches('\'').to_owned()),
    })
}

/// A value that arrived as bytes (strings, decimals, bits, enums, sets, JSON — or a number the
/// server sent as text).
fn from_text(kind: &Kind, b: Vec<u8>) -> Checked {
    let text = || String::from_utf8_lossy(&b).into_owned();
    Ok(match kind {
        Kind::Decimal { .. } => Value::Decimal(text()),
        Kind::Bit { nbits } => Value::Text(bits_text(&b, *nbits)),
        Kind::Str { charset, .. }
        | Kind::Blob {
            charset,
            json: false,
            ..
        } => {
            if *charset == Charset::Binary {
                Value::Bytes(b)
            } else {
                Value::Text(text())
            }
        }
        Kind::Blob { json: true, .. } => Value::json(text()),
        Kind::Json { .. } => match serde_json::from_slice::<serde_json::Value>(&b) {
            // Same rendering as the binlog path (serde_json of the decoded document).
            Ok(v) => Value::Json(v.to_string()),
            Err(_) => Value::Text(text()),
        },
        Kind::Geometry { .. } => Value::Bytes(b),
        Kind::Enum { .. } | Kind::Other | Kind::Null => Value::Text(text()),
        Kind::Set { .. } => {
            let t = text();
            if t.is_empty() {
                Value::Array(Vec::new())
            } else {
                Value::Array(t.split(',').map(|s| Value::Text(s.to_owned())).collect())
            }
        }
        Kind::Int {
            width,
            unsigned,
            as_bool,
        } => {
            let t = text();
            if *as_bool {
                return Ok(Value::Bool(t.trim() != "0"));
            }
            if *unsigned && *width == 8 {
                t.trim().parse().map(Value::UInt).unwrap_or(Value::Text(t))
            } else {
                t.trim().parse().map(Value::Int).unwrap_or(Value::Text(t))
            }
        }
        Kind::Year => {
            let t = text();
            t.trim().parse().map(Value::Int).unwrap_or(Value::Text(t))
        }
        Kind::Float => {
            let t = text();
            t.trim()
                .parse()
                .map(Value::Float32)
                .unwrap_or(Value::Text(t))
        }
        Kind::Double => {
            let t = text();
            t.trim().parse().map(Value::Float).unwrap_or(Value::Text(t))
        }
        Kind::Date | Kind::Datetime { .. } | Kind::Timestamp { .. } | Kind::Time { .. } => {
            return temporal_from_text(kind, &text())
        }
    })
}

/// Text temporal values (`2024-02-29 13:45:00.500`, `-838:59:59.000000`) in canonical form.
fn temporal_from_text(kind: &Kind, t: &str) -> Checked {
    let t = t.trim();
    if matches!(
        kind,
        Kind::Date | Kind::Datetime { .. } | Kind::Timestamp { .. }
    ) {
        let part = |r: std::ops::Range<usize>| t.get(r).and_then(|p| p.parse::<u32>().ok());
        if let (Some(y), Some(m), Some(d)) = (part(0..4), part(5..7), part(8..10)) {
            zero_date(y, m, d)?;
        }
    }
    Ok(match kind {
        Kind::Datetime { .. } => Value::Text(t.replacen(' ', "T", 1)),
        Kind::Timestamp { .. } => Value::Text(format!("{}Z", t.replacen(' ', "T", 1))),
        _ => Value::Text(t.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binlog::tests::MARIADB_TABLE_MAP;

    fn naming() -> Naming {
        Naming {
            pipeline: "p".into(),
            connector: "mysql",
            subject_prefix: "tidemark".into(),
        }
    }

    fn opts() -> PlanOptions {
        PlanOptions {
            flavour: Flavour::Mariadb,
            tinyint1_as_bool: false,
        }
    }

    fn one(kind: Kind, bytes: &[u8]) -> Value {
        let mut c = Cursor::new(bytes);
        let v = decode_value(&kind, &mut c).unwrap();
        assert!(c.is_empty(), "{kind:?} left {} bytes", c.remaining());
        v
    }

    fn text(v: Value) -> String {
        v.to_json_string()
    }

    /// The WRITE_ROWS row MariaDB 10.11 wrote for
    /// `(1, 0, 255, -1, -1.5, 'ab  ', 'b', 'x,y', b'1010101010', '{"a":1}', 'x€', 'a\0\0\0', 1.1,
    /// '-00:00:01.25')` into the table of `MARIADB_TABLE_MAP`.
    const MARIADB_ROW: &[u8] = &[
        0x00, 0xc0, 0x01, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xfe,
        0xcd, 0x02, 0x61, 0x62, 0x02, 0x03, 0x02, 0xaa, 0x07, 0x00, 0x00, 0x00, 0x7b, 0x22, 0x61,
        0x22, 0x3a, 0x31, 0x7d, 0x02, 0x78, 0x80, 0x01, 0x61, 0xcd, 0xcc, 0x8c, 0x3f, 0x7f, 0xff,
        0xfe, 0xe7,
    ];

    #[test]
    fn decodes_a_real_mariadb_row_with_every_defect_case() {
        let map = TableMap::parse(MARIADB_TABLE_MAP, 6, Flavour::Mariadb).unwrap();
        let mut info = TableInfo::default();
        info.columns.push(ColumnInfo {
            name: "j".into(),
            column_type: "longtext".into(),
            data_type: "longtext".into(),
            json_check: true,
            nullable: true,
            ..Default::default()
        });
        let plan =
            plan_from_map(&naming(), &map, Some(&info), &Collations::default(), opts()).unwrap();
        let mut c = Cursor::new(MARIADB_ROW);
        let row = plan.decode_row(&[0xff, 0x3f], &mut c).unwrap();
        assert!(c.is_empty());
        let rendered: Vec<String> = row.into_iter().map(|v| text(v.unwrap())).collect();
        assert_eq!(
            rendered,
            [
                "1",
                "0",
                "255",
                "-1",
                "\"-1.50\"",
                "\"ab\"",
                "\"b\"",
                "[\"x\",\"y\"]",
                "\"1010101010\"",
                "{\"a\":1}",
                "\"x€\"",
                "\"YQAAAA==\"",
                "1.1",
                "\"-00:00:01.25\""
            ]
        );
        let types: Vec<&str> = plan.meta.columns.iter().map(|c| c.ty.as_str()).collect();
        assert_eq!(
            types,
            [
                "int64", "int64", "int64", "int64", "decimal", "string", "string", "set", "bits",
                "json", "string", "bytes", "float64", "time"
            ]
        );
        assert_eq!(plan.meta.columns[11].source_type, "binary(4)");
        assert_eq!(plan.meta.key, vec![0]);
        // Truncations never panic.
        for n in 0..MARIADB_ROW.len() {
            let mut c = Cursor::new(&MARIADB_ROW[..n]);
            assert!(plan.decode_row(&[0xff, 0x3f], &mut c).is_err());
        }
    }

    /// MySQL's `my_time_packed_to_binary` for TIME(fsp): the encoder, independent of the
    /// decoder under test.
    fn time2_bytes(neg: bool, h: i64, mi: i64, sec: i64, us: i64, fsp: u8) -> Vec<u8> {
        let mag = (((h << 12) | (mi << 6) | sec) << 24) + us;
        let nr = if neg { -mag } else { mag };
        let int = nr >> 24;
        let frac = nr % (1 << 24);
        match fsp {
            0 => ((int + 0x80_0000) as u32).to_be_bytes()[1..].to_vec(),
            // `int` is floored and `frac` keeps the sign (C `>>` and `%`), as in MySQL.
            1 | 2 => {
                let mut b = ((int + 0x80_0000) as u32).to_be_bytes()[1..].to_vec();
                b.push((frac / 10_000) as i8 as u8);
                b
            }
            3 | 4 => {
                let mut b = ((int + 0x80_0000) as u32).to_be_bytes()[1..].to_vec();
                b.extend_from_slice(&((frac / 100) as i16).to_be_bytes());
                b
            }
            _ => ((nr + 0x8000_0000_0000) as u64).to_be_bytes()[2..].to_vec(),
        }
    }

    #[test]
    fn time_outside_a_day_and_negative_with_every_precision() {
        let t = |fsp: u8, b: Vec<u8>| text(one(Kind::Time { fsp, v2: true }, &b));
        assert_eq!(t(0, time2_bytes(true, 838, 59, 59, 0, 0)), "\"-838:59:59\"");
        assert_eq!(t(0, time2_bytes(false, 838, 59, 59, 0, 0)), "\"838:59:59\"");
        assert_eq!(t(0, time2_bytes(true, 0, 0, 1, 0, 0)), "\"-00:00:01\"");
        assert_eq!(
            t(1, time2_bytes(false, 100, 0, 0, 500_000, 1)),
            "\"100:00:00.5\""
        );
        let cases: [(bool, i64, i64, i64, i64, &str); 4] = [
            (true, 0, 0, 1, 250_000, "-00:00:01.250000"),
            (true, 838, 59, 58, 990_000, "-838:59:58.990000"),
            (true, 0, 0, 0, 10_000, "-00:00:00.010000"),
            (false, 25, 0, 0, 10_000, "25:00:00.010000"),
        ];
        for fsp in 1..=6u8 {
            for (neg, h, mi, sec, us, want) in cases {
                let want = &want[..want.len() - 6 + usize::from(fsp)];
                assert_eq!(
                    t(fsp, time2_bytes(neg, h, mi, sec, us, fsp)),
                    format!("\"{want}\""),
                    "TIME({fsp})"
                );
            }
        }
        // The real MariaDB bytes of -00:00:01.25 TIME(2) agree with the encoder.
        assert_eq!(
            time2_bytes(true, 0, 0, 1, 250_000, 2),
            [0x7f, 0xff, 0xfe, 0xe7]
        );
        // Old TIME format: -838:59:59 is -8385959 in 3 bytes.
        let raw = (-8_385_959i32).to_le_bytes();
        assert_eq!(
            text(one(Kind::Time { fsp: 0, v2: false }, &raw[..3])),
            "\"-838:59:59\""
        );
    }

    #[test]
    fn zero_and_partial_zero_dates_are_substitutions() {
        let date = |y: u32, m: u32, d: u32| (y << 9) | (m << 5) | d;
        let mut c = Cursor::new(&[0, 0, 0]);
        assert_eq!(
            decode_checked(&Kind::Date, &mut c).unwrap(),
            Err(Substitution::ZeroDate)
        );
        for (y, m, d) in [(2024, 0, 15), (2024, 2, 0), (0, 0, 1), (2024, 0, 0)] {
            let b = date(y, m, d).to_le_bytes();
            let mut c = Cursor::new(&b[..3]);
            assert_eq!(
                decode_checked(&Kind::Date, &mut c).unwrap(),
                Err(Substitution::ZeroInDate),
                "{y}-{m}-{d}"
            );
        }
        // DATETIME2 2024-00-00 10:00:00: ym = 2024*13 + 0.
        let ymd: u64 = (2024 * 13) << 5;
        let hms: u64 = 10 << 12;
        let packed = ((ymd << 17) | hms) + 0x80_0000_0000;
        let b = packed.to_be_bytes();
        let mut c = Cursor::new(&b[3..]);
        assert_eq!(
            decode_checked(&Kind::Datetime { fsp: 0, v2: true }, &mut c).unwrap(),
            Err(Substitution::ZeroInDate)
        );
        let mut c = Cursor::new(&[0, 0, 0, 0]);
        assert_eq!(
            decode_checked(&Kind::Timestamp { fsp: 0, v2: true }, &mut c).unwrap(),
            Err(Substitution::ZeroDate)
        );
        // Old DATETIME 2024-02-00 10:00:00.
        let b = 20240200100000u64.to_le_bytes();
        let mut c = Cursor::new(&b);
        assert_eq!(
            decode_checked(&Kind::Datetime { fsp: 0, v2: false }, &mut c).unwrap(),
            Err(Substitution::ZeroInDate)
        );
        // Snapshot path, binary protocol and text.
        use mysql_async::Value as V;
        assert_eq!(
            from_snapshot_checked(&Kind::Date, V::Date(2024, 0, 15, 0, 0, 0, 0)),
            Err(Substitution::ZeroInDate)
        );
        assert_eq!(
            from_snapshot_checked(
                &Kind::Datetime { fsp: 0, v2: true },
                V::Date(2024, 0, 0, 10, 0, 0, 0)
            ),
            Err(Substitution::ZeroInDate)
        );
        assert_eq!(
            from_snapshot_checked(
                &Kind::Timestamp { fsp: 0, v2: true },
                V::Date(0, 0, 0, 0, 0, 0, 0)
            ),
            Err(Substitution::ZeroDate)
        );
        assert_eq!(
            from_snapshot_checked(&Kind::Date, V::Bytes(b"2024-02-00".to_vec())),
            Err(Substitution::ZeroInDate)
        );
        assert_eq!(
            from_snapshot_checked(
                &Kind::Datetime { fsp: 0, v2: true },
                V::Bytes(b"0000-00-00 00:00:00".to_vec())
            ),
            Err(Substitution::ZeroDate)
        );
        assert_eq!(
            from_snapshot_checked(&Kind::Date, V::Bytes(b"2024-02-29".to_vec())),
            Ok(Value::Text("2024-02-29".into()))
        );
    }

    #[test]
    fn substitutions_are_reported_once_per_column() {
        let n = Naming {
            pipeline: "p_once".into(),
            connector: "mysql",
            subject_prefix: "tidemark".into(),
        };
        let col = |name: &str| Column {
            name: name.into(),
            ty: CanonicalType::Date,
            source_type: "date".into(),
            pk: false,
            nullable: true,
            element: None,
        };
        let plan = Plan::new(
            &n,
            "db",
            "t",
            vec![col("a"), col("b")],
            vec![Kind::Date, Kind::Date],
        );
        let zero_in = ((2024u32 << 9) | 15).to_le_bytes();
        let mut image = vec![0u8];
        image.extend_from_slice(&zero_in[..3]);
        image.extend_from_slice(&zero_in[..3]);
        let row = plan.decode_row(&[0x03], &mut Cursor::new(&image)).unwrap();
        assert_eq!(row, vec![Some(Value::Null), Some(Value::Null)]);
        assert!(!first_report(
            "p_once",
            "db.t",
            "a",
            Substitution::ZeroInDate
        ));
        assert!(!first_report(
            "p_once",
            "db.t",
            "b",
            Substitution::ZeroInDate
        ));
        assert!(first_report("p_once", "db.t", "a", Substitution::ZeroDate));
        let row = plan.snapshot_row(vec![
            Some(mysql_async::Value::Date(2024, 2, 0, 0, 0, 0, 0)),
            Some(mysql_async::Value::Date(2024, 2, 29, 0, 0, 0, 0)),
        ]);
        assert_eq!(
            row,
            vec![Some(Value::Null), Some(Value::Text("2024-02-29".into()))]
        );
    }

    #[test]
    fn integers() {
        let k = |width, unsigned| Kind::Int {
            width,
            unsigned,
            as_bool: false,
        };
        assert_eq!(one(k(3, false), &[0xff, 0xff, 0xff]), Value::Int(-1));
        assert_eq!(
            one(k(3, false), &[0x00, 0x00, 0x80]),
            Value::Int(-8_388_608)
        );
        assert_eq!(one(k(3, true), &[0xff, 0xff, 0xff]), Value::Int(16_777_215));
        assert_eq!(one(k(1, false), &[0x80]), Value::Int(-128));
        assert_eq!(one(k(8, true), &[0xff; 8]), Value::UInt(u64::MAX));
        assert_eq!(one(k(8, false), &[0xff; 8]), Value::Int(-1));
        assert_eq!(one(k(4, true), &[0xff; 4]), Value::Int(4_294_967_295));
        assert_eq!(
            one(
                Kind::Int {
                    width: 1,
                    unsigned: false,
                    as_bool: true
                },
                &[2]
            ),
            Value::Bool(true)
        );
    }

    #[test]
    fn year_zero_stays_zero() {
        assert_eq!(one(Kind::Year, &[0]), Value::Int(0));
        assert_eq!(one(Kind::Year, &[1]), Value::Int(1901));
        assert_eq!(one(Kind::Year, &[255]), Value::Int(2155));
    }

    #[test]
    fn decimals() {
        // DECIMAL(65,30) max value.
        let precision = 65;
        let scale = 30;
        let size = decimal_size(precision, scale);
        assert_eq!(size, 30);
        let nines = format!("{}.{}", "9".repeat(35), "9".repeat(30));
        // Build the packed bytes: intg 35 = 8 digits partial (4 bytes) + 3 groups; frac 30 = 3
        // groups + 3 digits (2 bytes).
        let mut b = Vec::new();
        b.extend_from_slice(&99_999_999u32.to_be_bytes());
        for _ in 0..3 {
            b.extend_from_slice(&999_999_999u32.to_be_bytes());
        }
        for _ in 0..3 {
            b.extend_from_slice(&999_999_999u32.to_be_bytes());
        }
        b.extend_from_slice(&999u16.to_be_bytes());
        b[0] ^= 0x80;
        assert_eq!(decode_decimal(&b, precision, scale).unwrap(), nines);
        let neg: Vec<u8> = b.iter().map(|x| !x).collect();
        assert_eq!(
            decode_decimal(&neg, precision, scale).unwrap(),
            format!("-{nines}")
        );
        assert_eq!(
            decode_decimal(&[0x80, 0, 0, 0, 0x05], 10, 2).unwrap(),
            "0.05"
        );
        assert_eq!(decode_decimal(&[0x80, 0, 0, 0, 0], 10, 2).unwrap(), "0.00");
        assert_eq!(decode_decimal(&[0x80, 0x0c], 4, 0).unwrap(), "12");
        assert!(decode_decimal(&[0x80], 10, 2).is_err());
        // A group above 10^digits is corrupt.
        assert!(decode_decimal(&[0x80, 0xff], 2, 0).is_err());
    }

    #[test]
    fn negative_time_fractions() {
        let t = |fsp: u8, bytes: &[u8]| text(one(Kind::Time { fsp, v2: true }, bytes));
        // -00:00:01.25 as TIME(2) (from the real row above) and TIME(1).
        assert_eq!(t(2, &[0x7f, 0xff, 0xfe, 0xe7]), "\"-00:00:01.25\"");
        assert_eq!(t(1, &[0x7f, 0xff, 0xfe, 0xce]), "\"-00:00:01.5\"");
        // -838:59:59.000000 (TIME(6) min): intpart = -(838<<12 | 59<<6 | 59).
        let int: i64 = -((838 << 12) | (59 << 6) | 59);
        let packed = ((int << 24) + 0x8000_0000_0000) as u64;
        let b = packed.to_be_bytes();
        assert_eq!(t(6, &b[2..]), "\"-838:59:59.000000\"");
        // 12:34:56.789 as TIME(3).
        let int: i64 = (12 << 12) | (34 << 6) | 56;
        let mut b = ((int + 0x80_0000) as u32).to_be_bytes()[1..].to_vec();
        b.extend_from_slice(&7890u16.to_be_bytes());
        assert_eq!(t(3, &b), "\"12:34:56.789\"");
        assert_eq!(t(0, &[0x80, 0, 0]), "\"00:00:00\"");
    }

    #[test]
    fn datetimes_and_timestamps() {
        // 2024-02-29 13:45:00.123 DATETIME(3), bytes from MariaDB.
        let v = one(
            Kind::Datetime { fsp: 3, v2: true },
            &[0x99, 0xb2, 0xba, 0xdb, 0x40, 0x04, 0xce],
        );
        assert_eq!(text(v), "\"2024-02-29T13:45:00.123\"");
        let v = one(
            Kind::Timestamp { fsp: 6, v2: true },
            &[0x65, 0xe0, 0x8a, 0x5c, 0x07, 0xa1, 0x20],
        );
        assert_eq!(text(v), "\"2024-02-29T13:45:00.500000Z\"");
        assert_eq!(
            one(Kind::Timestamp { fsp: 0, v2: true }, &[0, 0, 0, 0]),
            Value::Null
        );
        assert_eq!(
            one(Kind::Datetime { fsp: 0, v2: true }, &[0x80, 0, 0, 0, 0]),
            Value::Null
        );
        assert_eq!(one(Kind::Date, &[0, 0, 0]), Value::Null);
        // 2024-02-29: 2024 << 9 | 2 << 5 | 29.
        let d = (2024u32 << 9) | (2 << 5) | 29;
        assert_eq!(
            text(one(Kind::Date, &d.to_le_bytes()[..3])),
            "\"2024-02-29\""
        );
        assert_eq!(
            text(one(
                Kind::Datetime { fsp: 0, v2: false },
                &20240229134500u64.to_le_bytes()
            )),
            "\"2024-02-29T13:45:00\""
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn strings_bits_enums_sets() {
        let bin4 = Kind::Str {
            len_bytes: 1,
            charset: Charset::Binary,
            pad_to: Some(4),
        };
        assert_eq!(one(bin4, &[1, b'a']), Value::Bytes(vec![b'a', 0, 0, 0]));
        let latin1 = Kind::Str {
            len_bytes: 1,
            charset: Collations::default().charset(8),
            pad_to: None,
        };
        assert_eq!(one(latin1, &[2, b'x', 0x80]), Value::Text("x€".into()));
        assert_eq!(
            text(one(Kind::Bit { nbits: 10 }, &[0x02, 0xaa])),
            "\"1010101010\""
        );
        assert_eq!(text(one(Kind::Bit { nbits: 1 }, &[0x01])), "\"1\"");
        let names = Arc::new(vec!["a".to_string(), "b".to_string()]);
        assert_eq!(
            one(
                Kind::Enum {
                    pack: 1,
                    names: names.clone()
                },
                &[0]
            ),
            Value::Text(String::new())
        );
        let mut c = Cursor::new(&[3]);
        assert!(decode_value(
            &Kind::Enum {
                pack: 1,
                names: names.clone()
            },
            &mut c
        )
        .is_err());
        assert_eq!(text(one(Kind::Set { pack: 1, names }, &[0])), "[]");
        assert_eq!(
            one(Kind::Float, &1.1f32.to_le_bytes()).to_json_string(),
            "1.1"
        );
        let json = Kind::Blob {
            len_bytes: 4,
            charset: Charset::Utf8,
            json: true,
        };
        assert_eq!(
            one(json.clone(), &[3, 0, 0, 0, b'[', b'1', b']']),
            Value::Json("[1]".into())
        );
        assert_eq!(
            one(json, &[2, 0, 0, 0, b'{', b'x']),
            Value::Text("{x".into())
        );
    }

    #[test]
    fn mysql_binary_json() {
        // Small object {"a": 1}: type 0x00, count 1, size 12, key entry (offset 11, len 1),
        // value entry (int16 inline 1), key "a".
        let doc = [
            0x00, 0x01, 0x00, 0x0c, 0x00, 0x0b, 0x00, 0x01, 0x00, 0x05, 0x01, 0x00, b'a',
        ];
        let mut bytes = (doc.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&doc);
        assert_eq!(
            one(Kind::Json { len_bytes: 4 }, &bytes),
            Value::Json("{\"a\":1}".into())
        );
        assert_eq!(
            one(Kind::Json { len_bytes: 4 }, &[0, 0, 0, 0]),
            Value::Json("null".into())
        );
        let mut c = Cursor::new(&[2, 0, 0, 0, 0x77, 0x00]);
        assert!(decode_value(&Kind::Json { len_bytes: 4 }, &mut c).is_err());
    }

    #[test]
    fn snapshot_values_match_binlog_forms() {
        use mysql_async::Value as V;
        let dt = Kind::Datetime { fsp: 6, v2: true };
        assert_eq!(
            from_snapshot(&dt, V::Date(2024, 2, 29, 13, 45, 0, 123_456)),
            Value::Text("2024-02-29T13:45:00.123456".into())
        );
        assert_eq!(
            from_snapshot(&dt, V::Date(0, 0, 0, 0, 0, 0, 0)),
            Value::Null
        );
        let ts = Kind::Timestamp { fsp: 3, v2: true };
        assert_eq!(
            from_snapshot(&ts, V::Date(2024, 2, 29, 12, 0, 0, 500_000)),
            Value::Text("2024-02-29T12:00:00.500Z".into())
        );
        let t = Kind::Time { fsp: 1, v2: true };
        assert_eq!(
            from_snapshot(&t, V::Time(true, 0, 0, 0, 1, 500_000)),
            Value::Text("-00:00:01.5".into())
        );
        assert_eq!(
            from_snapshot(&t, V::Time(true, 34, 22, 59, 59, 0)),
            Value::Text("-838:59:59.0".into())
        );
        let set = Kind::Set {
            pack: 1,
            names: Arc::new(vec![]),
        };
        assert_eq!(
            from_snapshot(&set, V::Bytes(b"x,y".to_vec())).to_json_string(),
            "[\"x\",\"y\"]"
        );
        assert_eq!(
            from_snapshot(&set, V::Bytes(Vec::new())).to_json_string(),
            "[]"
        );
        assert_eq!(
            from_snapshot(&Kind::Float, V::Float(1.1)).to_json_string(),
            "1.1"
        );
        assert_eq!(from_snapshot(&Kind::Year, V::Int(0)), Value::Int(0));
        assert_eq!(
            from_snapshot(
                &Kind::Int {
                    width: 8,
                    unsigned: true,
                    as_bool: false
                },
                V::UInt(u64::MAX)
            ),
            Value::UInt(u64::MAX)
        );
        assert_eq!(
            from_snapshot(&Kind::Bit { nbits: 10 }, V::Bytes(vec![2, 0xaa])).to_json_string(),
            "\"1010101010\""
        );
        assert_eq!(
            from_snapshot(&Kind::Date, V::Bytes(b"0000-00-00".to_vec())),
            Value::Null
        );
    }

    #[test]
    fn info_plans_match_map_plans() {
        let map = TableMap::parse(MARIADB_TABLE_MAP, 6, Flavour::Mariadb).unwrap();
        let col = |name: &str, ct: &str, dt: &str, cs: Option<&str>| ColumnInfo {
            name: name.into(),
            column_type: ct.into(),
            data_type: dt.into(),
            nullable: name != "id",
            pk: name == "id",
            charset: cs.map(Into::into),
            numeric_precision: match dt {
                "bit" => Some(10),
                "decimal" => Some(10),
                _ => None,
            },
            numeric_scale: (dt == "decimal").then_some(2),
            datetime_precision: (dt == "time").then_some(2),
            octet_length: (dt == "binary").then_some(4),
            json_check: name == "j",
        };
        let info = TableInfo {
            columns: vec![
                col("id", "int(11)", "int", None),
                col("y", "year(4)", "year", None),
                col("u", "tinyint(3) unsigned", "tinyint", None),
                col("m", "mediumint(9)", "mediumint", None),
                col("d", "decimal(10,2)", "decimal", None),
                col("c", "char(5)", "char", Some("utf8mb4")),
                col("e", "enum('a','b')", "enum", Some("utf8mb4")),
                col("s", "set('x','y')", "set", Some("utf8mb4")),
                col("b", "bit(10)", "bit", None),
                col("j", "longtext", "longtext", Some("utf8mb4")),
                col("l", "varchar(10)", "varchar", Some("latin1")),
                col("bn", "binary(4)", "binary", None),
                col("f", "float", "float", None),
                col("tm", "time(2)", "time", None),
            ],
            pk: vec!["id".into()],
            rows_estimate: 0,
        };
        let a =
            plan_from_map(&naming(), &map, Some(&info), &Collations::default(), opts()).unwrap();
        let b = plan_from_info(&naming(), "probe_x", "t", &info, opts());
        assert_eq!(a.meta.columns, b.meta.columns);
        assert_eq!(a.meta.version, b.meta.version);
        assert_eq!(
            parse_members("enum('a','it''s','x,y')"),
            ["a", "it's", "x,y"]
        );
    }
}
