//! Canonical JSON values → MySQL SQL literals.
//!
//! Statements are sent as text (multi-row `INSERT … VALUES (…),(…)`), so every value is
//! rendered as a literal that cannot break out of its place: character data as
//! `_utf8mb4 X'…'` (hex, so no quoting or escaping rules are involved and the server converts
//! to the column's character set), binary data as `X'…'`, numbers only after checking they
//! are plain numbers. Conversions follow the column type: booleans → 1/0, UTC timestamps →
//! `'YYYY-MM-DD HH:MM:SS.ffffff'` (the session runs in UTC), base64 → bytes, uuids → 16 bytes
//! for BINARY(16), arrays and objects → JSON text, SET members → `a,b`, bit strings → `b'…'`.
//! What MySQL cannot store (NaN, infinities, out-of-range dates) is an error naming the value.
//! Values arrive as [`Cell`]s, the envelope's exact JSON text: a document reaches a JSON or
//! LONGTEXT column verbatim at any depth, and a number keeps every digit (what the column
//! then accepts is the server's call: MariaDB's `json_valid` stops at 32 levels).

use crate::catalog::{Kind, TargetColumn};
use base64::Engine as _;
use tidemark_core::envelope::{CanonicalType, Cell};

/// Why a value cannot be rendered for its column.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ConvertError(pub String);

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_hex(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2 + 3);
    out.push_str("X'");
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out.push('\'');
}

/// Character data as a hex literal in utf8mb4.
pub(crate) fn push_text(out: &mut String, s: &str) {
    if s.is_empty() {
        out.push_str("''");
        return;
    }
    out.push_str("_utf8mb4 ");
    push_hex(out, s.as_bytes());
}

/// Validates that `s` is a plain decimal number (`-12.30`, `1e5`) and writes it.
fn push_number_text(out: &mut String, s: &str) -> Result<(), ConvertError> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        && s.bytes().any(|b| b.is_ascii_digit());
    if !ok {
        return Err(ConvertError(format!("{s:?} is not a number")));
    }
    out.push_str(s);
    Ok(())
}

/// `2024-02-29T12:45:00.123456Z` → `'2024-02-29 12:45:00.123456'`.
fn push_datetime(out: &mut String, s: &str) -> Result<(), ConvertError> {
    let trimmed = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix("+00:00"))
        .unwrap_or(s);
    let ok = trimmed.len() >= 10
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b'.' | b'T' | b' '))
        && trimmed.as_bytes().get(4) == Some(&b'-');
    if !ok {
        return Err(ConvertError(format!(
            "{s:?} is not a date-time MySQL can store (years 0000-9999, UTC)"
        )));
    }
    out.push('\'');
    out.push_str(&trimmed.replacen('T', " ", 1));
    out.push('\'');
    Ok(())
}

fn uuid_bytes(s: &str) -> Option<Vec<u8>> {
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let val = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    hex.chunks(2)
        .map(|p| Some(val(*p.first()?)? << 4 | val(*p.get(1)?)?))
        .collect()
}

/// Appends the literal for `v` in column `col`; `canonical` is the envelope's type.
pub(crate) fn push_literal(
    out: &mut String,
    v: &Cell,
    canonical: Option<CanonicalType>,
    col: &TargetColumn,
) -> Result<(), ConvertError> {
    match v {
        Cell::Null => out.push_str("NULL"),
        Cell::Bool(b) => match col.kind {
            Kind::Json => out.push_str(if *b { "'true'" } else { "'false'" }),
            _ => out.push_str(if *b { "1" } else { "0" }),
        },
        Cell::Number(n) => match col.kind {
            Kind::Text | Kind::Json | Kind::Set | Kind::DateTime | Kind::Binary => {
                push_text(out, n)
            }
            _ => push_number_text(out, n)?,
        },
        Cell::String(s) => match col.kind {
            Kind::Integer | Kind::Decimal => {
                if matches!(s.as_str(), "true" | "false") {
                    out.push_str(if s == "true" { "1" } else { "0" });
                } else {
                    push_number_text(out, s)?;
                }
            }
            Kind::Float => {
                if matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") {
                    return Err(ConvertError(format!("MySQL cannot store the float {s}")));
                }
                push_number_text(out, s)?;
            }
            Kind::Bit => {
                if !s.is_empty() && s.bytes().all(|b| b == b'0' || b == b'1') {
                    out.push_str("b'");
                    out.push_str(s);
                    out.push('\'');
                } else {
                    return Err(ConvertError(format!("{s:?} is not a bit string")));
                }
            }
            Kind::DateTime => push_datetime(out, s)?,
            Kind::Binary => {
                if canonical == Some(CanonicalType::Bytes) {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|e| ConvertError(format!("invalid base64: {e}")))?;
                    push_hex(out, &bytes);
                } else if col.binary16 && canonical == Some(CanonicalType::Uuid) {
                    let bytes = uuid_bytes(s)
                        .ok_or_else(|| ConvertError(format!("{s:?} is not a uuid")))?;
                    push_hex(out, &bytes);
                } else {
                    push_hex(out, s.as_bytes());
                }
            }
            Kind::Json => {
                if canonical == Some(CanonicalType::Json)
                    || tidemark_core::json_text::validate(s.as_bytes()).is_err()
                {
                    push_text(out, &v.json_text());
                } else {
                    push_text(out, s);
                }
            }
            Kind::Set | Kind::Text => push_text(out, s),
        },
        Cell::Json(doc) => match col.kind {
            Kind::Set if v.is_array() => {
                let items = match v.items() {
                    Some(Ok(items)) => items,
                    _ => return Err(ConvertError("malformed set".into())),
                };
                let mut parts = Vec::with_capacity(items.len());
                for item in &items {
                    match item {
                        Cell::String(s) => parts.push(s.as_str()),
                        other => {
                            return Err(ConvertError(format!(
                                "set member {} is not a string",
                                other.json_text()
                            )))
                        }
                    }
                }
                push_text(out, &parts.join(","));
            }
            Kind::Json | Kind::Text => push_text(out, doc),
            _ if v.is_array() => {
                return Err(ConvertError("an array does not fit this column".into()))
            }
            _ => {
                return Err(ConvertError(
                    "a JSON object does not fit this column".into(),
                ))
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value as J};

    fn cell(v: &J) -> Cell {
        serde_json::from_str(&v.to_string()).unwrap()
    }

    fn col(kind: Kind) -> TargetColumn {
        TargetColumn {
            name: "c".into(),
            column_type: "x".into(),
            kind,
            binary16: false,
            pk: false,
            generated: false,
        }
    }

    fn lit(v: J, c: Option<CanonicalType>, kind: Kind) -> Result<String, ConvertError> {
        let mut s = String::new();
        push_literal(&mut s, &cell(&v), c, &col(kind)).map(|_| s)
    }

    #[test]
    fn literals() {
        assert_eq!(lit(json!(null), None, Kind::Text).unwrap(), "NULL");
        assert_eq!(lit(json!(true), None, Kind::Integer).unwrap(), "1");
        assert_eq!(lit(json!("12.30"), None, Kind::Decimal).unwrap(), "12.30");
        assert!(lit(json!("1; drop table x"), None, Kind::Decimal).is_err());
        assert_eq!(
            lit(json!("a'b"), None, Kind::Text).unwrap(),
            "_utf8mb4 X'612762'"
        );
        assert_eq!(
            lit(json!("AP8="), Some(CanonicalType::Bytes), Kind::Binary).unwrap(),
            "X'00FF'"
        );
        assert_eq!(
            lit(json!("2024-02-29T12:45:00.123456Z"), None, Kind::DateTime).unwrap(),
            "'2024-02-29 12:45:00.123456'"
        );
        assert!(lit(json!("infinity"), None, Kind::DateTime).is_err());
        assert!(lit(json!("NaN"), None, Kind::Float).is_err());
        assert_eq!(lit(json!("101"), None, Kind::Bit).unwrap(), "b'101'");
        assert_eq!(
            lit(json!(["a", "b"]), None, Kind::Set).unwrap(),
            "_utf8mb4 X'612C62'"
        );
        let mut c = col(Kind::Binary);
        c.binary16 = true;
        let mut s = String::new();
        push_literal(
            &mut s,
            &cell(&json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
            Some(CanonicalType::Uuid),
            &c,
        )
        .unwrap();
        assert_eq!(s, "X'A0EEBC999C0B4EF8BB6D6BB9BD380A11'");
    }

    #[test]
    fn deep_documents_and_huge_numbers_pass_verbatim() {
        let hex = |s: &str| {
            let mut out = String::new();
            push_text(&mut out, s);
            out
        };
        let depth = 10_000;
        let deep = format!("{}1e400{}", "[".repeat(depth), "]".repeat(depth));
        let c: Cell = serde_json::from_str(&deep).unwrap();
        let mut s = String::new();
        push_literal(&mut s, &c, Some(CanonicalType::Json), &col(Kind::Json)).unwrap();
        assert_eq!(s, hex(&deep));
        let big = "123456789012345678901234567890.123456789";
        let c: Cell = serde_json::from_str(big).unwrap();
        for kind in [Kind::Json, Kind::Decimal] {
            let mut s = String::new();
            push_literal(&mut s, &c, None, &col(kind)).unwrap();
            assert_eq!(
                s,
                if kind == Kind::Json {
                    hex(big)
                } else {
                    big.to_owned()
                }
            );
        }
    }
}
