//! Postgres text-format values → canonical [`Value`]s, column types → [`CanonicalType`].
//!
//! Both the stream (pgoutput `'t'` cells) and the snapshot reader (`simple_query` rows) get
//! values as *text*, rendered by the server with the session settings the source pins:
//!
//! ```text
//! TimeZone=UTC  DateStyle=ISO  IntervalStyle=iso_8601  extra_float_digits=3  bytea_output=hex
//! ```
//!
//! Under those settings every output function is unambiguous, so one text parser serves both
//! paths and a snapshot row and a streamed row of the same data produce byte-identical JSON.
//! The parsers check that the text really has the pinned shape (ISO dates, ISO-8601 intervals,
//! hex bytea …) and fail loudly otherwise: a mis-set session would otherwise emit wrong data
//! silently.
//!
//! Rules worth knowing:
//! * Integers are parsed as `i64` directly (never through `f64`), numerics stay strings.
//! * `timestamptz` is normalised to UTC with a `Z` (any offset is applied, not just `+00`);
//!   `timestamp` gets an ISO `T`. `±infinity` become the strings `"infinity"`/`"-infinity"`.
//!   BC dates keep Postgres' ` BC` suffix (the form Postgres reads back).
//! * Arrays are parsed from Postgres' array literal (quotes, escapes, `NULL`, nested
//!   dimensions, explicit bounds, `;` for `box`) and each element is converted with the
//!   element type; an unquoted `NULL` is SQL NULL, a quoted `"NULL"` is the string.
//! * Anything without a canonical form (money, inet, geometric, ranges, xml, unknown
//!   extension types) passes through as a string with its `source_type` in the schema.
//! * Binary-format cells (`'b'`, only with `binary 'true'`) are rejected, never guessed at.

use crate::pgoutput::{OldTuple, TupleColumn, TupleData};
use crate::relcache::RelationEntry;
use tidemark_core::envelope::{CanonicalType, Row};
use tidemark_core::error::{Classify, Retry};
use tidemark_core::value::Value;

/// How a column's text is converted: the Postgres type reduced to what matters for decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    /// `boolean`: `t`/`f`.
    Bool,
    /// `smallint`, `integer`, `bigint`, `oid`: exact `i64`.
    Int,
    /// `numeric`: exact decimal string, `NaN`, `Infinity`, `-Infinity`.
    Numeric,
    /// `real`: [`Value::Float32`].
    Float4,
    /// `double precision`: [`Value::Float`].
    Float8,
    /// `text`, `varchar`, `char(n)`, `name`, `"char"`, `citext`, enums.
    String,
    /// `bytea` (hex or legacy escape output).
    Bytea,
    /// `json`, `jsonb`.
    Json,
    /// `uuid`.
    Uuid,
    /// `date`.
    Date,
    /// `time without time zone`.
    Time,
    /// `time with time zone` (passed as string, canonical `string`).
    TimeTz,
    /// `timestamp without time zone`.
    Timestamp,
    /// `timestamp with time zone`.
    Timestamptz,
    /// `interval` (ISO-8601 with IntervalStyle=iso_8601).
    Interval,
    /// `bit`, `bit varying`.
    Bits,
    /// An array; elements are converted with `element`.
    Array {
        /// Element kind (never itself an array for real Postgres types: dimensions nest).
        element: Box<ValueKind>,
        /// Element delimiter in the array literal (`,`, or `;` for `box`).
        delimiter: u8,
    },
    /// Anything else: passed through as text (canonical `string`).
    Other,
}

impl ValueKind {
    /// The canonical type for the schema block.
    pub fn canonical(&self) -> CanonicalType {
        match self {
            ValueKind::Bool => CanonicalType::Bool,
            ValueKind::Int => CanonicalType::Int64,
            ValueKind::Numeric => CanonicalType::Decimal,
            ValueKind::Float4 | ValueKind::Float8 => CanonicalType::Float64,
            ValueKind::String | ValueKind::TimeTz | ValueKind::Other => CanonicalType::String,
            ValueKind::Bytea => CanonicalType::Bytes,
            ValueKind::Json => CanonicalType::Json,
            ValueKind::Uuid => CanonicalType::Uuid,
            ValueKind::Date => CanonicalType::Date,
            ValueKind::Time => CanonicalType::Time,
            ValueKind::Timestamp => CanonicalType::Timestamp,
            ValueKind::Timestamptz => CanonicalType::Timestamptz,
            ValueKind::Interval => CanonicalType::Interval,
            ValueKind::Bits => CanonicalType::Bits,
            ValueKind::Array { .. } => CanonicalType::Array,
        }
    }

    /// For arrays, the canonical type of the (innermost) elements; `None` otherwise.
    pub fn element_canonical(&self) -> Option<CanonicalType> {
        match self {
            ValueKind::Array { element, .. } => {
                Some(element.element_canonical().unwrap_or(element.canonical()))
            }
            _ => None,
        }
    }

    /// A short name for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            ValueKind::Bool => "bool",
            ValueKind::Int => "integer",
            ValueKind::Numeric => "numeric",
            ValueKind::Float4 => "real",
            ValueKind::Float8 => "double precision",
            ValueKind::String => "string",
            ValueKind::Bytea => "bytea",
            ValueKind::Json => "json",
            ValueKind::Uuid => "uuid",
            ValueKind::Date => "date",
            ValueKind::Time => "time",
            ValueKind::TimeTz => "timetz",
            ValueKind::Timestamp => "timestamp",
            ValueKind::Timestamptz => "timestamptz",
            ValueKind::Interval => "interval",
            ValueKind::Bits => "bits",
            ValueKind::Array { .. } => "array",
            ValueKind::Other => "text",
        }
    }
}

/// A resolved column type: how to convert it and how to describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnType {
    /// The column's type OID as the server sent it.
    pub oid: u32,
    /// How values are converted (domains already resolved to their base type).
    pub kind: ValueKind,
    /// The Postgres type name for `source_type` (`character varying(20)`, `mood`, `integer[]`).
    pub source_type: String,
}

/// Why one value could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The text is not UTF-8 (the source pins client_encoding=UTF8, so this is corruption).
    #[error("value is not valid UTF-8 (byte {valid_up_to})")]
    NotUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// A binary-format cell: binary mode is not supported yet.
    #[error(
        "binary-format value received; only text format is supported (do not set binary 'true')"
    )]
    BinaryFormat,
    /// The text does not have the expected shape.
    #[error("invalid {kind} text {excerpt:?}: {reason}")]
    Invalid {
        /// Kind being parsed.
        kind: &'static str,
        /// What was wrong.
        reason: &'static str,
        /// The start of the offending text (at most 40 bytes).
        excerpt: String,
    },
    /// An integer outside the `i64` range.
    #[error("{kind} value {excerpt:?} is out of range for int64")]
    OutOfRange {
        /// Kind being parsed.
        kind: &'static str,
        /// The start of the offending text.
        excerpt: String,
    },
    /// An array literal that could not be parsed.
    #[error("invalid array literal at byte {offset}: {reason}")]
    Array {
        /// What was wrong.
        reason: &'static str,
        /// Byte offset in the literal.
        offset: usize,
    },
    /// An array element failed to convert.
    #[error("array element: {0}")]
    Element(Box<ValueError>),
}

/// Why a row image could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// One column failed.
    #[error("table {table}, column {column:?} ({source_type}): {source}")]
    Column {
        /// `schema.table`.
        table: String,
        /// Column name.
        column: String,
        /// Its Postgres type.
        source_type: String,
        /// What was wrong with the value.
        #[source]
        source: Box<ValueError>,
    },
    /// The tuple does not have as many cells as the relation has columns: the relation cache
    /// is out of date or the message is corrupt.
    #[error("table {table}: row has {got} columns but the relation has {expected}")]
    ColumnCount {
        /// `schema.table`.
        table: String,
        /// Cells in the tuple.
        got: usize,
        /// Columns in the cached relation.
        expected: usize,
    },
}

impl Classify for ValueError {
    /// The same bytes will fail again: definite.
    fn retry(&self) -> Retry {
        Retry::Definite
    }
    fn kind(&self) -> &'static str {
        "pg_convert"
    }
}

impl Classify for ConvertError {
    /// The same bytes will fail again: definite.
    fn retry(&self) -> Retry {
        Retry::Definite
    }
    fn kind(&self) -> &'static str {
        "pg_convert"
    }
}

fn excerpt(text: &str) -> String {
    let mut end = text.len().min(40);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

fn invalid(kind: &ValueKind, reason: &'static str, text: &str) -> ValueError {
    ValueError::Invalid {
        kind: kind.name(),
        reason,
        excerpt: excerpt(text),
    }
}

/// Converts one pgoutput tuple (new image, or a full `'O'` old image) to a [`Row`] aligned with
/// the relation's columns: `'t'` → `Some(value)`, `'n'` → `Some(Value::Null)`, `'u'`
/// (unchanged TOAST) → `None` (the column is listed in `unchanged`), `'b'` → error.
pub fn tuple_to_row(rel: &RelationEntry, tuple: &TupleData<'_>) -> Result<Row, ConvertError> {
    convert_tuple(rel, tuple, false)
}

/// Converts a key-only old tuple (`'K'`, REPLICA IDENTITY DEFAULT/INDEX): key columns as in
/// [`tuple_to_row`], every non-key column → `None` (absent from `before`), because the server
/// sends them as `'n'` meaning "not sent", not NULL.
pub fn key_tuple_to_row(rel: &RelationEntry, tuple: &TupleData<'_>) -> Result<Row, ConvertError> {
    convert_tuple(rel, tuple, true)
}

/// Converts an Update/Delete old tuple, choosing [`key_tuple_to_row`] for `'K'` and
/// [`tuple_to_row`] for `'O'`.
pub fn old_tuple_to_row(rel: &RelationEntry, old: &OldTuple<'_>) -> Result<Row, ConvertError> {
    match old {
        OldTuple::Key(t) => key_tuple_to_row(rel, t),
        OldTuple::Full(t) => tuple_to_row(rel, t),
    }
}

fn convert_tuple(
    rel: &RelationEntry,
    tuple: &TupleData<'_>,
    key_only: bool,
) -> Result<Row, ConvertError> {
    let table = &rel.table;
    if tuple.columns.len() != table.columns.len() || rel.types.len() != table.columns.len() {
        return Err(ConvertError::ColumnCount {
            table: table.qualified_name(),
            got: tuple.columns.len(),
            expected: table.columns.len(),
        });
    }
    let mut row = Vec::with_capacity(tuple.columns.len());
    for ((cell, col), ty) in tuple.columns.iter().zip(&table.columns).zip(&rel.types) {
        let value = match cell {
            _ if key_only && !col.pk => None,
            TupleColumn::Null => Some(Value::Null),
            TupleColumn::UnchangedToast => None,
            TupleColumn::Text(bytes) => Some(
                std::str::from_utf8(bytes)
                    .map_err(|e| ValueError::NotUtf8 {
                        valid_up_to: e.valid_up_to(),
                    })
                    .and_then(|text| text_to_value(&ty.kind, text))
                    .map_err(|source| column_error(rel, &col.name, ty, source))?,
            ),
            TupleColumn::Binary(_) => {
                return Err(column_error(rel, &col.name, ty, ValueError::BinaryFormat))
            }
        };
        row.push(value);
    }
    Ok(row)
}

/// Converts a row read as text (e.g. one `tokio_postgres::SimpleQueryRow` of the snapshot,
/// `(0..row.len()).map(|i| row.get(i))`, columns in relation order): `None` cells are SQL NULL
/// (`Some(Value::Null)`); every column is present.
pub fn text_cells_to_row<'t>(
    rel: &RelationEntry,
    cells: impl IntoIterator<Item = Option<&'t str>>,
) -> Result<Row, ConvertError> {
    let table = &rel.table;
    let mut row = Vec::with_capacity(table.columns.len());
    let mut types = table.columns.iter().zip(&rel.types);
    let mut got = 0usize;
    for cell in cells {
        got += 1;
        let Some((col, ty)) = types.next() else {
            continue;
        };
        let value = match cell {
            None => Value::Null,
            Some(text) => text_to_value(&ty.kind, text)
                .map_err(|source| column_error(rel, &col.name, ty, source))?,
        };
        row.push(Some(value));
    }
    if got != table.columns.len() || rel.types.len() != table.columns.len() {
        return Err(ConvertError::ColumnCount {
            table: table.qualified_name(),
            got,
            expected: table.columns.len(),
        });
    }
    Ok(row)
}

fn column_error(rel: &RelationEntry, column: &str, ty: &ColumnType, e: ValueError) -> ConvertError {
    ConvertError::Column {
        table: rel.table.qualified_name(),
        column: column.to_owned(),
        source_type: ty.source_type.clone(),
        source: Box::new(e),
    }
}

/// Converts one non-NULL text-format value (as rendered under the pinned session settings) to
/// its canonical [`Value`]. Usable by the snapshot reader on `simple_query` text.
pub fn text_to_value(kind: &ValueKind, text: &str) -> Result<Value, ValueError> {
    match kind {
        ValueKind::Bool => match text {
            "t" | "true" => Ok(Value::Bool(true)),
            "f" | "false" => Ok(Value::Bool(false)),
            _ => Err(invalid(kind, "expected 't' or 'f'", text)),
        },
        ValueKind::Int => parse_int(kind, text).map(Value::Int),
        ValueKind::Numeric => {
            if is_numeric_text(text) {
                Ok(Value::Decimal(text.to_owned()))
            } else {
                Err(invalid(kind, "not a decimal number", text))
            }
        }
        ValueKind::Float4 => match parse_float_text(text) {
            Some(_) => text
                .parse::<f32>()
                .map(Value::Float32)
                .map_err(|_| invalid(kind, "not a float", text)),
            None => Err(invalid(kind, "not a float", text)),
        },
        ValueKind::Float8 => match parse_float_text(text) {
            Some(_) => text
                .parse::<f64>()
                .map(Value::Float)
                .map_err(|_| invalid(kind, "not a float", text)),
            None => Err(invalid(kind, "not a float", text)),
        },
        ValueKind::String | ValueKind::Uuid | ValueKind::TimeTz | ValueKind::Other => {
            Ok(Value::Text(text.to_owned()))
        }
        ValueKind::Bytea => parse_bytea(text).map(Value::Bytes),
        ValueKind::Json => Ok(Value::json(text.to_owned())),
        ValueKind::Date => convert_date(text),
        ValueKind::Time => {
            if is_time(text) {
                Ok(Value::Text(text.to_owned()))
            } else {
                Err(invalid(kind, "expected HH:MM:SS[.ffffff]", text))
            }
        }
        ValueKind::Timestamp => convert_timestamp(text),
        ValueKind::Timestamptz => convert_timestamptz(text),
        ValueKind::Interval => {
            let body = text.strip_prefix('-').unwrap_or(text);
            if body.starts_with('P') || text == "infinity" || text == "-infinity" {
                Ok(Value::Text(text.to_owned()))
            } else {
                Err(invalid(
                    kind,
                    "not ISO-8601 (is IntervalStyle=iso_8601 set?)",
                    text,
                ))
            }
        }
        ValueKind::Bits => {
            if text.bytes().all(|b| b == b'0' || b == b'1') {
                Ok(Value::Text(text.to_owned()))
            } else {
                Err(invalid(kind, "expected only 0 and 1", text))
            }
        }
        ValueKind::Array { element, delimiter } => parse_array(text, element, *delimiter),
    }
}

fn parse_int(kind: &ValueKind, text: &str) -> Result<i64, ValueError> {
    use std::num::IntErrorKind;
    text.parse::<i64>().map_err(|e| match e.kind() {
        IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => ValueError::OutOfRange {
            kind: kind.name(),
            excerpt: excerpt(text),
        },
        _ => invalid(kind, "not an integer", text),
    })
}

/// `[-]digits[.digits]` (optionally with an exponent), or `NaN` / `Infinity` / `-Infinity`.
fn is_numeric_text(text: &str) -> bool {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return true;
    }
    let body = text
        .strip_prefix('-')
        .or_else(|| text.strip_prefix('+'))
        .unwrap_or(text);
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (body, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = digits(int) && digits(frac) && !(int.is_empty() && frac.is_empty());
    let exponent_ok = match exponent {
        None => true,
        Some(e) => {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && digits(e)
        }
    };
    mantissa_ok && exponent_ok
}

/// Accepts what Postgres float output produces (`1.5`, `-0`, `1e+100`, `NaN`, `Infinity`,
/// `-Infinity`); rejects Rust-only spellings like `inf`.
fn parse_float_text(text: &str) -> Option<()> {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") || is_numeric_text(text) {
        Some(())
    } else {
        None
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// bytea output: hex (`\x0aff`, the pinned default) or the legacy escape format
/// (`abc\000\\`).
fn parse_bytea(text: &str) -> Result<Vec<u8>, ValueError> {
    let kind = &ValueKind::Bytea;
    if let Some(hex) = text.strip_prefix("\\x") {
        let bytes = hex.as_bytes();
        if bytes.len() % 2 != 0 {
            return Err(invalid(kind, "odd number of hex digits", text));
        }
        let mut out = Vec::with_capacity(bytes.len() / 2);
        for pair in bytes.chunks_exact(2) {
            let (hi, lo) = match pair {
                [h, l] => (hex_val(*h), hex_val(*l)),
                _ => (None, None),
            };
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => return Err(invalid(kind, "not a hex digit", text)),
            }
        }
        return Ok(out);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        match bytes.get(i + 1..i + 4) {
            Some([b'\\', ..]) => {
                out.push(b'\\');
                i += 2;
            }
            Some(&[a, b2, c]) if (b'0'..=b'3').contains(&a) && is_octal(b2) && is_octal(c) => {
                out.push((a - b'0') << 6 | (b2 - b'0') << 3 | (c - b'0'));
                i += 4;
            }
            _ => {
                if bytes.get(i + 1) == Some(&b'\\') {
                    out.push(b'\\');
                    i += 2;
                } else {
                    return Err(invalid(kind, "bad escape sequence", text));
                }
            }
        }
    }
    Ok(out)
}

fn is_octal(b: u8) -> bool {
    (b'0'..=b'7').contains(&b)
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `YYYY-MM-DD` with a year of 4 or more digits.
fn is_iso_date(s: &str) -> bool {
    let mut parts = s.split('-');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(y), Some(m), Some(d), None) => {
            y.len() >= 4
                && all_digits(y)
                && m.len() == 2
                && all_digits(m)
                && d.len() == 2
                && all_digits(d)
        }
        _ => false,
    }
}

/// `HH:MM:SS[.f+]`.
fn is_time(s: &str) -> bool {
    let (hms, frac) = s.split_once('.').unwrap_or((s, "0"));
    let mut parts = hms.split(':');
    let two = |p: Option<&str>| p.is_some_and(|p| p.len() == 2 && all_digits(p));
    two(parts.next())
        && two(parts.next())
        && two(parts.next())
        && parts.next().is_none()
        && all_digits(frac)
}

fn convert_date(text: &str) -> Result<Value, ValueError> {
    let core = text.strip_suffix(" BC").unwrap_or(text);
    if text == "infinity" || text == "-infinity" || is_iso_date(core) {
        Ok(Value::Text(text.to_owned()))
    } else {
        Err(invalid(
            &ValueKind::Date,
            "expected YYYY-MM-DD (is DateStyle=ISO set?)",
            text,
        ))
    }
}

fn convert_timestamp(text: &str) -> Result<Value, ValueError> {
    if text == "infinity" || text == "-infinity" {
        return Ok(Value::Text(text.to_owned()));
    }
    let (core, bc) = match text.strip_suffix(" BC") {
        Some(c) => (c, " BC"),
        None => (text, ""),
    };
    match core.split_once([' ', 'T']) {
        Some((date, time)) if is_iso_date(date) && is_time(time) => {
            Ok(Value::Text(format!("{date}T{time}{bc}")))
        }
        _ => Err(invalid(
            &ValueKind::Timestamp,
            "expected YYYY-MM-DD HH:MM:SS[.ffffff] (is DateStyle=ISO set?)",
            text,
        )),
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]±HH[:MM[:SS]][ BC]` → UTC `YYYY-MM-DDTHH:MM:SS[.ffffff]Z[ BC]`.
fn convert_timestamptz(text: &str) -> Result<Value, ValueError> {
    if text == "infinity" || text == "-infinity" {
        return Ok(Value::Text(text.to_owned()));
    }
    let bad = || {
        invalid(
            &ValueKind::Timestamptz,
            "expected YYYY-MM-DD HH:MM:SS[.ffffff]+HH (is DateStyle=ISO set?)",
            text,
        )
    };
    let (core, bc) = match text.strip_suffix(" BC") {
        Some(c) => (c, true),
        None => (text, false),
    };
    let (date, rest) = core.split_once([' ', 'T']).ok_or_else(bad)?;
    let sign_at = rest.rfind(['+', '-']).ok_or_else(bad)?;
    let (time, offset) = rest.split_at(sign_at);
    if !is_iso_date(date) || !is_time(time) {
        return Err(bad());
    }
    let offset_secs = parse_offset(offset).ok_or_else(bad)?;
    let suffix = if bc { " BC" } else { "" };
    if offset_secs == 0 {
        return Ok(Value::Text(format!("{date}T{time}Z{suffix}")));
    }
    // A non-UTC offset (session not pinned to UTC): shift to UTC.
    let (hms, frac) = match time.split_once('.') {
        Some((h, f)) => (h, Some(f)),
        None => (time, None),
    };
    let num = |s: &str| s.parse::<i64>().ok();
    let mut dp = date.split('-');
    let (y, m, d) = (
        dp.next().and_then(num).ok_or_else(bad)?,
        dp.next().and_then(num).ok_or_else(bad)?,
        dp.next().and_then(num).ok_or_else(bad)?,
    );
    let mut tp = hms.split(':');
    let (hh, mm, ss) = (
        tp.next().and_then(num).ok_or_else(bad)?,
        tp.next().and_then(num).ok_or_else(bad)?,
        tp.next().and_then(num).ok_or_else(bad)?,
    );
    // Postgres years stay below 300000; refuse absurd ones before the arithmetic can overflow.
    if y > 1_000_000 {
        return Err(bad());
    }
    // Astronomical year numbering for the arithmetic: 1 BC = year 0.
    let astro_year = if bc { 1 - y } else { y };
    let secs = days_from_civil(astro_year, m, d) * 86_400 + hh * 3600 + mm * 60 + ss - offset_secs;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (ny, nm, nd) = civil_from_days(days);
    let (year, suffix) = if ny <= 0 { (1 - ny, " BC") } else { (ny, "") };
    let mut out = format!(
        "{year:04}-{nm:02}-{nd:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    out.push('Z');
    out.push_str(suffix);
    Ok(Value::Text(out))
}

/// `±HH[:MM[:SS]]` → seconds east of UTC.
fn parse_offset(s: &str) -> Option<i64> {
    let (sign, body) = match s.as_bytes().first()? {
        b'+' => (1, s.get(1..)?),
        b'-' => (-1, s.get(1..)?),
        _ => return None,
    };
    let mut total = 0i64;
    let mut n = 0;
    for (i, part) in body.split(':').enumerate() {
        if i > 2 || part.len() != 2 || !all_digits(part) {
            return None;
        }
        let v: i64 = part.parse().ok()?;
        total += v * [3600, 60, 1].get(i)?;
        n += 1;
    }
    (n > 0).then_some(sign * total)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Deepest array nesting accepted (Postgres allows 6 dimensions).
const MAX_ARRAY_DEPTH: usize = 16;

/// Parses a Postgres array literal (`{1,2,NULL}`, `{{"a,b",NULL},{"c\"d","NULL"}}`,
/// `[0:1]={1,2}`) into nested [`Value::Array`]s.
fn parse_array(text: &str, element: &ValueKind, delimiter: u8) -> Result<Value, ValueError> {
    let bytes = text.as_bytes();
    let mut pos = 0;
    if bytes.first() == Some(&b'[') {
        // Explicit bounds: `[lo:hi][lo:hi]=`; the bounds are dropped.
        let eq = bytes
            .iter()
            .position(|&b| b == b'=')
            .ok_or(ValueError::Array {
                reason: "bounds decoration without '='",
                offset: 0,
            })?;
        let deco = bytes.get(..eq).unwrap_or_default();
        if !deco
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'[' | b']' | b':' | b'-'))
        {
            return Err(ValueError::Array {
                reason: "bad bounds decoration",
                offset: 0,
            });
        }
        pos = eq + 1;
    }
    let mut p = ArrayParser {
        text,
        pos,
        delimiter,
        element,
        depth: 0,
    };
    p.skip_ws();
    let value = p.level()?;
    p.skip_ws();
    if p.pos != bytes.len() {
        return Err(p.err("trailing characters after the array"));
    }
    Ok(value)
}

struct ArrayParser<'a> {
    text: &'a str,
    pos: usize,
    delimiter: u8,
    element: &'a ValueKind,
    depth: usize,
}

impl ArrayParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn err(&self, reason: &'static str) -> ValueError {
        ValueError::Array {
            reason,
            offset: self.pos,
        }
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn level(&mut self) -> Result<Value, ValueError> {
        if self.peek() != Some(b'{') {
            return Err(self.err("expected '{'"));
        }
        self.pos += 1;
        self.depth += 1;
        if self.depth > MAX_ARRAY_DEPTH {
            return Err(self.err("array nested too deeply"));
        }
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            let item = match self.peek() {
                Some(b'{') => self.level()?,
                Some(b'"') => {
                    let s = self.quoted()?;
                    self.convert(&s)?
                }
                Some(_) => self.unquoted()?,
                None => return Err(self.err("unterminated array")),
            };
            items.push(item);
            self.skip_ws();
            match self.peek() {
                Some(b) if b == self.delimiter => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                Some(_) => return Err(self.err("expected a delimiter or '}'")),
                None => return Err(self.err("unterminated array")),
            }
        }
        self.depth -= 1;
        Ok(Value::Array(items))
    }

    fn convert(&self, s: &str) -> Result<Value, ValueError> {
        text_to_value(self.element, s).map_err(|e| ValueError::Element(Box::new(e)))
    }

    /// A double-quoted element; `\x` stands for `x`.
    fn quoted(&mut self) -> Result<String, ValueError> {
        let bytes = self.text.as_bytes();
        self.pos += 1; // opening quote
        let mut out = Vec::new();
        loop {
            match bytes.get(self.pos) {
                None => return Err(self.err("unterminated quoted element")),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    let Some(&next) = bytes.get(self.pos + 1) else {
                        return Err(self.err("backslash at end of array"));
                    };
                    out.push(next);
                    self.pos += 2;
                }
                Some(&b) => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| self.err("quoted element is not UTF-8"))
    }

    /// An unquoted element up to the delimiter or `}`; `NULL` (any case) is SQL NULL.
    fn unquoted(&mut self) -> Result<Value, ValueError> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let mut out: Vec<u8> = Vec::new();
        let mut escaped = false;
        let mut last_escaped_len = 0;
        while let Some(&b) = bytes.get(self.pos) {
            if b == self.delimiter || b == b'}' {
                break;
            }
            if b == b'{' || b == b'"' {
                return Err(self.err("unexpected character in unquoted element"));
            }
            if b == b'\\' {
                let Some(&next) = bytes.get(self.pos + 1) else {
                    return Err(self.err("backslash at end of array"));
                };
                out.push(next);
                escaped = true;
                last_escaped_len = out.len();
                self.pos += 2;
            } else {
                out.push(b);
                self.pos += 1;
            }
        }
        if self.pos == start {
            return Err(self.err("empty unquoted element"));
        }
        // Trailing whitespace is not part of an unquoted element (unless escaped).
        while out.len() > last_escaped_len && out.last().is_some_and(|b| b.is_ascii_whitespace()) {
            out.pop();
        }
        let s = String::from_utf8(out).map_err(|_| self.err("element is not UTF-8"))?;
        if !escaped && s.eq_ignore_ascii_case("NULL") {
            return Ok(Value::Null);
        }
        self.convert(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(kind: ValueKind, text: &str) -> Value {
        text_to_value(&kind, text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }
    fn json(kind: ValueKind, text: &str) -> String {
        conv(kind, text).to_json_string()
    }
    fn arr(element: ValueKind) -> ValueKind {
        ValueKind::Array {
            element: Box::new(element),
            delimiter: b',',
        }
    }

    #[test]
    fn bools() {
        assert_eq!(conv(ValueKind::Bool, "t"), Value::Bool(true));
        assert_eq!(conv(ValueKind::Bool, "f"), Value::Bool(false));
        assert!(text_to_value(&ValueKind::Bool, "yes").is_err());
    }

    #[test]
    fn integers_exact() {
        assert_eq!(
            conv(ValueKind::Int, "-9223372036854775808"),
            Value::Int(i64::MIN)
        );
        assert_eq!(
            conv(ValueKind::Int, "9223372036854775807"),
            Value::Int(i64::MAX)
        );
        assert_eq!(json(ValueKind::Int, "9007199254740993"), "9007199254740993");
        assert_eq!(conv(ValueKind::Int, "-32768"), Value::Int(-32768));
        assert_eq!(
            conv(ValueKind::Int, "4294967295"),
            Value::Int(4_294_967_295)
        ); // oid max
        assert!(matches!(
            text_to_value(&ValueKind::Int, "9223372036854775808"),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(matches!(
            text_to_value(&ValueKind::Int, "-9223372036854775809"),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(matches!(
            text_to_value(&ValueKind::Int, "1.5"),
            Err(ValueError::Invalid { .. })
        ));
        assert!(text_to_value(&ValueKind::Int, "").is_err());
    }

    #[test]
    fn numerics_stay_strings() {
        let forty = "1234567890123456789012345678901234567890.0123456789";
        assert_eq!(
            conv(ValueKind::Numeric, forty),
            Value::Decimal(forty.into())
        );
        assert_eq!(json(ValueKind::Numeric, "12.30"), "\"12.30\"");
        assert_eq!(json(ValueKind::Numeric, "-0.000001"), "\"-0.000001\"");
        for special in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(
                conv(ValueKind::Numeric, special),
                Value::Decimal(special.into())
            );
        }
        assert_eq!(json(ValueKind::Numeric, "0"), "\"0\"");
        assert!(text_to_value(&ValueKind::Numeric, "12,3").is_err());
        assert!(text_to_value(&ValueKind::Numeric, "").is_err());
        assert!(text_to_value(&ValueKind::Numeric, "-").is_err());
        assert!(text_to_value(&ValueKind::Numeric, "nan").is_err());
    }

    #[test]
    fn floats() {
        assert_eq!(json(ValueKind::Float8, "1.5"), "1.5");
        assert_eq!(json(ValueKind::Float8, "0.1"), "0.1");
        assert_eq!(json(ValueKind::Float8, "NaN"), "\"NaN\"");
        assert_eq!(json(ValueKind::Float8, "Infinity"), "\"Infinity\"");
        assert_eq!(json(ValueKind::Float8, "-Infinity"), "\"-Infinity\"");
        assert_eq!(
            json(ValueKind::Float8, "1.7976931348623157e+308"),
            "1.7976931348623157e308"
        );
        assert_eq!(json(ValueKind::Float8, "5e-324"), "5e-324");
        assert_eq!(
            json(ValueKind::Float8, "2.2250738585072014e-308"),
            "2.2250738585072014e-308"
        );
        let neg_zero = conv(ValueKind::Float8, "-0");
        assert!(matches!(neg_zero, Value::Float(f) if f == 0.0 && f.is_sign_negative()));
        assert_eq!(neg_zero.to_json_string(), "-0.0");
        // float4 keeps its own shortest form.
        assert_eq!(json(ValueKind::Float4, "1.1"), "1.1");
        assert_eq!(json(ValueKind::Float4, "3.4028235e+38"), "3.4028235e38");
        assert_eq!(json(ValueKind::Float4, "1e-45"), "1e-45");
        assert_eq!(json(ValueKind::Float4, "-Infinity"), "\"-Infinity\"");
        assert_eq!(json(ValueKind::Float4, "NaN"), "\"NaN\"");
        assert!(text_to_value(&ValueKind::Float8, "inf").is_err());
        assert!(text_to_value(&ValueKind::Float8, "abc").is_err());
    }

    #[test]
    fn strings_uuids_bits_other() {
        assert_eq!(json(ValueKind::String, "a\"b\\c ü"), "\"a\\\"b\\\\c ü\"");
        assert_eq!(json(ValueKind::String, ""), "\"\"");
        assert_eq!(
            json(ValueKind::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""
        );
        assert_eq!(json(ValueKind::Bits, "0101"), "\"0101\"");
        assert_eq!(json(ValueKind::Bits, ""), "\"\"");
        assert!(text_to_value(&ValueKind::Bits, "012").is_err());
        assert_eq!(json(ValueKind::Other, "$1,234.50"), "\"$1,234.50\"");
        assert_eq!(
            json(ValueKind::Other, "192.168.0.1/24"),
            "\"192.168.0.1/24\""
        );
        assert_eq!(json(ValueKind::TimeTz, "13:45:00+02"), "\"13:45:00+02\"");
    }

    #[test]
    fn bytea_hex_and_escape() {
        assert_eq!(conv(ValueKind::Bytea, "\\x"), Value::Bytes(vec![]));
        assert_eq!(json(ValueKind::Bytea, "\\x"), "\"\"");
        assert_eq!(
            conv(ValueKind::Bytea, "\\x00ff10"),
            Value::Bytes(vec![0, 255, 16])
        );
        assert_eq!(
            conv(ValueKind::Bytea, "\\x00FF"),
            Value::Bytes(vec![0, 255])
        );
        assert_eq!(json(ValueKind::Bytea, "\\x0000"), "\"AAA=\"");
        assert!(text_to_value(&ValueKind::Bytea, "\\x0").is_err());
        assert!(text_to_value(&ValueKind::Bytea, "\\xzz").is_err());
        // Legacy escape format.
        assert_eq!(
            conv(ValueKind::Bytea, "ab\\000\\\\c\\377"),
            Value::Bytes(b"ab\0\\c\xff".to_vec())
        );
        assert_eq!(conv(ValueKind::Bytea, ""), Value::Bytes(vec![]));
        assert!(text_to_value(&ValueKind::Bytea, "a\\9").is_err());
        assert!(text_to_value(&ValueKind::Bytea, "a\\").is_err());
    }

    #[test]
    fn json_values() {
        let doc = r#"{"name": "Zoë ☃ \u00e9", "n": [1, 2.5, null]}"#;
        assert_eq!(conv(ValueKind::Json, doc), Value::Json(doc.into()));
        assert_eq!(json(ValueKind::Json, doc), doc);
        assert_eq!(conv(ValueKind::Json, "null"), Value::Json("null".into()));
        assert_eq!(conv(ValueKind::Json, "{bad"), Value::Text("{bad".into()));
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(json(ValueKind::Date, "2024-02-29"), "\"2024-02-29\"");
        assert_eq!(json(ValueKind::Date, "infinity"), "\"infinity\"");
        assert_eq!(json(ValueKind::Date, "-infinity"), "\"-infinity\"");
        assert_eq!(json(ValueKind::Date, "0044-03-15 BC"), "\"0044-03-15 BC\"");
        assert_eq!(json(ValueKind::Date, "10000-01-01"), "\"10000-01-01\"");
        assert!(text_to_value(&ValueKind::Date, "02/29/2024").is_err());
        assert_eq!(
            json(ValueKind::Time, "13:45:00.123456"),
            "\"13:45:00.123456\""
        );
        assert_eq!(json(ValueKind::Time, "24:00:00"), "\"24:00:00\"");
        assert!(text_to_value(&ValueKind::Time, "1:45").is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            json(ValueKind::Timestamp, "2024-02-29 13:45:00.123456"),
            "\"2024-02-29T13:45:00.123456\""
        );
        assert_eq!(
            json(ValueKind::Timestamp, "2024-02-29 13:45:00"),
            "\"2024-02-29T13:45:00\""
        );
        assert_eq!(json(ValueKind::Timestamp, "infinity"), "\"infinity\"");
        assert_eq!(json(ValueKind::Timestamp, "-infinity"), "\"-infinity\"");
        assert_eq!(
            json(ValueKind::Timestamp, "0044-03-15 12:00:00 BC"),
            "\"0044-03-15T12:00:00 BC\""
        );
        assert!(text_to_value(&ValueKind::Timestamp, "Thu Feb 29 13:45:00 2024").is_err());

        assert_eq!(
            json(ValueKind::Timestamptz, "2024-02-29 12:45:00.123456+00"),
            "\"2024-02-29T12:45:00.123456Z\""
        );
        assert_eq!(
            json(ValueKind::Timestamptz, "2024-02-29 12:45:00+00"),
            "\"2024-02-29T12:45:00Z\""
        );
        assert_eq!(json(ValueKind::Timestamptz, "infinity"), "\"infinity\"");
        assert_eq!(json(ValueKind::Timestamptz, "-infinity"), "\"-infinity\"");
        // Non-UTC offsets are shifted, across midnight and month/leap-day boundaries.
        assert_eq!(
            json(ValueKind::Timestamptz, "2024-03-01 01:30:00.5+05:30"),
            "\"2024-02-29T20:00:00.5Z\""
        );
        assert_eq!(
            json(ValueKind::Timestamptz, "2023-12-31 22:00:00-03"),
            "\"2024-01-01T01:00:00Z\""
        );
        assert_eq!(
            json(ValueKind::Timestamptz, "1900-01-01 00:00:00+00:09:21"),
            "\"1899-12-31T23:50:39Z\""
        );
        assert_eq!(
            json(ValueKind::Timestamptz, "0044-03-15 12:00:00+00 BC"),
            "\"0044-03-15T12:00:00Z BC\""
        );
        assert_eq!(
            json(ValueKind::Timestamptz, "0001-01-01 00:30:00+01"),
            "\"0001-12-31T23:30:00Z BC\""
        );
        assert!(text_to_value(&ValueKind::Timestamptz, "2024-02-29 12:45:00").is_err());
        assert!(text_to_value(
            &ValueKind::Timestamptz,
            "99999999999999999-01-01 00:00:00+01"
        )
        .is_err());
        assert_eq!(
            json(ValueKind::Timestamptz, "294276-12-31 23:59:59.999999+00"),
            "\"294276-12-31T23:59:59.999999Z\""
        );
        assert!(text_to_value(&ValueKind::Timestamptz, "2024-02-29 12:45:00+x").is_err());
    }

    #[test]
    fn calendar_round_trip() {
        for days in [-1_000_000, -719_468, -1, 0, 1, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 1, 1), 10_957);
    }

    #[test]
    fn intervals() {
        assert_eq!(
            json(ValueKind::Interval, "P1Y2M3DT4H5M6.5S"),
            "\"P1Y2M3DT4H5M6.5S\""
        );
        assert_eq!(json(ValueKind::Interval, "PT0S"), "\"PT0S\"");
        assert_eq!(json(ValueKind::Interval, "P-1Y-2M"), "\"P-1Y-2M\"");
        assert!(text_to_value(&ValueKind::Interval, "1 year 2 mons").is_err());
    }

    #[test]
    fn arrays_flat_and_null() {
        assert_eq!(json(arr(ValueKind::Int), "{1,2,NULL}"), "[1,2,null]");
        assert_eq!(json(arr(ValueKind::Int), "{}"), "[]");
        assert_eq!(
            json(arr(ValueKind::Int), "{-9223372036854775808}"),
            "[-9223372036854775808]"
        );
        assert_eq!(
            json(
                arr(ValueKind::String),
                r#"{"a,b","c\"d",NULL,"NULL",null,plain,"\\"}"#
            ),
            r#"["a,b","c\"d",null,"NULL",null,"plain","\\"]"#
        );
        assert_eq!(
            json(arr(ValueKind::String), r#"{""," x "}"#),
            r#"[""," x "]"#
        );
        assert_eq!(json(arr(ValueKind::String), "{ü,\"{}\"}"), r#"["ü","{}"]"#);
        assert_eq!(json(arr(ValueKind::Bool), "{t,f}"), "[true,false]");
        assert_eq!(
            json(arr(ValueKind::Numeric), "{1.10,NaN}"),
            r#"["1.10","NaN"]"#
        );
        assert_eq!(
            json(arr(ValueKind::Float8), "{Infinity,1.5}"),
            r#"["Infinity",1.5]"#
        );
        assert_eq!(json(arr(ValueKind::Bytea), r#"{"\\x00ff"}"#), r#"["AP8="]"#);
        assert_eq!(
            json(
                arr(ValueKind::Timestamptz),
                r#"{"2024-02-29 12:45:00+00",infinity}"#
            ),
            r#"["2024-02-29T12:45:00Z","infinity"]"#
        );
        assert_eq!(
            json(arr(ValueKind::Json), r#"{"{\"a\": 1}",NULL}"#),
            r#"[{"a": 1},null]"#
        );
    }

    #[test]
    fn arrays_nested_bounds_box() {
        assert_eq!(json(arr(ValueKind::Int), "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(
            json(arr(ValueKind::String), r#"{{"a b",NULL},{"NULL","x\"y"}}"#),
            r#"[["a b",null],["NULL","x\"y"]]"#
        );
        assert_eq!(json(arr(ValueKind::Int), "{{{1},{2}}}"), "[[[1],[2]]]");
        assert_eq!(json(arr(ValueKind::Int), "[0:1]={1,2}"), "[1,2]");
        assert_eq!(
            json(arr(ValueKind::Int), "[-2:-1][1:2]={{1,2},{3,4}}"),
            "[[1,2],[3,4]]"
        );
        let boxes = ValueKind::Array {
            element: Box::new(ValueKind::Other),
            delimiter: b';',
        };
        assert_eq!(
            json(boxes, "{(1,1),(0,0);(2,2),(1,1)}"),
            r#"["(1,1),(0,0)","(2,2),(1,1)"]"#
        );
        // Whitespace around unquoted elements (array input syntax) is ignored.
        assert_eq!(json(arr(ValueKind::Int), "{ 1 , 2 }"), "[1,2]");
    }

    #[test]
    fn arrays_malformed() {
        for bad in [
            "",
            "1,2",
            "{1,2",
            "{1,,2}",
            "{\"a}",
            "{1}x",
            "[0:1]{1}",
            "[a]={1}",
            "{1\\",
            "{{1}",
            "{,}",
            "{1,\"a\"b}",
        ] {
            assert!(
                text_to_value(&arr(ValueKind::String), bad).is_err(),
                "{bad:?} parsed"
            );
        }
        assert!(matches!(
            text_to_value(&arr(ValueKind::Int), "{1,x}"),
            Err(ValueError::Element(_))
        ));
        let deep = "{".repeat(10_000) + &"}".repeat(10_000);
        assert!(text_to_value(&arr(ValueKind::Int), &deep).is_err());
    }

    #[test]
    fn canonical_types() {
        assert_eq!(ValueKind::Int.canonical(), CanonicalType::Int64);
        assert_eq!(ValueKind::Numeric.canonical(), CanonicalType::Decimal);
        assert_eq!(ValueKind::Float4.canonical(), CanonicalType::Float64);
        assert_eq!(ValueKind::TimeTz.canonical(), CanonicalType::String);
        assert_eq!(ValueKind::Other.canonical(), CanonicalType::String);
        assert_eq!(ValueKind::Bits.canonical(), CanonicalType::Bits);
        let a = arr(ValueKind::Uuid);
        assert_eq!(a.canonical(), CanonicalType::Array);
        assert_eq!(a.element_canonical(), Some(CanonicalType::Uuid));
        assert_eq!(ValueKind::Int.element_canonical(), None);
    }

    #[test]
    fn random_text_never_panics() {
        let kinds = [
            ValueKind::Bool,
            ValueKind::Int,
            ValueKind::Numeric,
            ValueKind::Float4,
            ValueKind::Float8,
            ValueKind::Bytea,
            ValueKind::Date,
            ValueKind::Time,
            ValueKind::Timestamp,
            ValueKind::Timestamptz,
            ValueKind::Interval,
            ValueKind::Bits,
            arr(ValueKind::Int),
            arr(ValueKind::String),
            arr(ValueKind::Timestamptz),
        ];
        let alphabet = "{}\",\\NUL01239-+:. TBCxé[]=;PZ";
        let chars: Vec<char> = alphabet.chars().collect();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..50_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 24) as usize;
            let s: String = (0..len)
                .map(|i| chars[((state >> (i % 50)) as usize + i * 7) % chars.len()])
                .collect();
            for k in &kinds {
                let _ = text_to_value(k, &s);
            }
        }
    }
}
