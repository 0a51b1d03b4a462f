//! Canonical JSON values → the text a Postgres type's input function accepts.
//!
//! Every value travels as text and is cast server-side to the column's type, so most
//! canonical strings (timestamps ending in `Z`, ISO intervals, uuids, decimals, bit strings,
//! `"NaN"` / `"Infinity"`) pass unchanged. What needs work here: base64 → bytea hex, JSON
//! documents → their text, JSON arrays → Postgres array literals, booleans ↔ numbers
//! (MySQL's TINYINT(1) into boolean columns and back). Values arrive as [`Cell`]s, the exact
//! JSON text of the envelope: a document goes to `json`/`jsonb` verbatim at any depth, a
//! number keeps every digit (`1e400` into `jsonb` or `numeric`); only array columns look
//! inside, one level at a time.

use crate::catalog::Kind;
use base64::Engine as _;
use tidemark_core::envelope::{CanonicalType, Cell};

/// Array nesting accepted for an array column (Postgres allows 6 dimensions).
const MAX_ARRAY_DIMS: usize = 32;

/// Why a value cannot be rendered for its column.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ConvertError(pub String);

/// Renders `v` for a column of kind `kind`; `canonical` is the envelope's type for the column
/// (when the schema block names it). `None` is SQL NULL. JSON documents and numbers pass as
/// the exact text the envelope carries (any depth, any number of digits).
pub(crate) fn to_text(
    v: &Cell,
    canonical: Option<CanonicalType>,
    kind: &Kind,
) -> Result<Option<String>, ConvertError> {
    Ok(match v {
        Cell::Null => None,
        Cell::Bool(b) => Some(
            match kind {
                Kind::Bool => {
                    if *b {
                        "t"
                    } else {
                        "f"
                    }
                }
                Kind::Number => {
                    if *b {
                        "1"
                    } else {
                        "0"
                    }
                }
                _ => {
                    if *b {
                        "true"
                    } else {
                        "false"
                    }
                }
            }
            .to_owned(),
        ),
        Cell::Number(n) => Some(match kind {
            Kind::Bool => match n.parse::<f64>() {
                Ok(0.0) => "f".to_owned(),
                Ok(1.0) => "t".to_owned(),
                _ => return Err(ConvertError(format!("{n} is not a boolean (0 or 1)"))),
            },
            _ => n.to_string(),
        }),
        Cell::String(s) => Some(match kind {
            Kind::Bytes => bytea_hex(s, canonical)?,
            Kind::Json | Kind::JsonPlain => {
                if canonical == Some(CanonicalType::Json)
                    || tidemark_core::json_text::validate(s.as_bytes()).is_err()
                {
                    // A JSON document that is a string, or text that is not JSON: a JSON string.
                    v.json_text().into_owned()
                } else {
                    // Text holding a JSON document (MariaDB JSON seen as text).
                    s.clone()
                }
            }
            _ => s.clone(),
        }),
        Cell::Json(doc) => Some(match kind {
            Kind::Array(elem) if v.is_array() => {
                let mut out = String::new();
                let elem_canonical = match canonical {
                    Some(CanonicalType::Set) => Some(CanonicalType::String),
                    _ => None,
                };
                array_literal(&mut out, v, elem_canonical, elem, 1)?;
                out
            }
            Kind::Text if canonical == Some(CanonicalType::Set) && v.is_array() => {
                // MySQL SET into a text column: its native comma-separated form.
                let items = items(v)?;
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
                parts.join(",")
            }
            Kind::Json | Kind::JsonPlain | Kind::Text => doc.to_string(),
            _ if v.is_array() => {
                return Err(ConvertError("an array does not fit this column".into()))
            }
            _ => {
                return Err(ConvertError(
                    "a JSON object does not fit this column".into(),
                ))
            }
        }),
    })
}

/// The elements of an array cell.
fn items(v: &Cell) -> Result<Vec<Cell>, ConvertError> {
    match v.items() {
        Some(Ok(items)) => Ok(items),
        Some(Err(e)) => Err(ConvertError(format!("malformed array: {e}"))),
        None => Err(ConvertError("not an array".into())),
    }
}

/// `\x…` hex input for bytea: base64 for canonical bytes, otherwise the text's UTF-8 bytes.
fn bytea_hex(s: &str, canonical: Option<CanonicalType>) -> Result<String, ConvertError> {
    let bytes: std::borrow::Cow<'_, [u8]> = if canonical.is_none_or(|c| c == CanonicalType::Bytes) {
        match base64::engine::general_purpose::STANDARD.decode(s) {
            Ok(b) => b.into(),
            Err(e) if canonical == Some(CanonicalType::Bytes) => {
                return Err(ConvertError(format!("invalid base64: {e}")))
            }
            Err(_) => s.as_bytes().into(),
        }
    } else {
        s.as_bytes().into()
    };
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("\\x");
    for b in bytes.iter() {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends a Postgres array literal (`{1,NULL,"a \"b\""}`), nested for multi-dimensional
/// arrays (one level parsed at a time, at most [`MAX_ARRAY_DIMS`] deep).
fn array_literal(
    out: &mut String,
    array: &Cell,
    canonical: Option<CanonicalType>,
    elem: &Kind,
    dims: usize,
) -> Result<(), ConvertError> {
    if dims > MAX_ARRAY_DIMS {
        return Err(ConvertError(format!(
            "an array nested deeper than {MAX_ARRAY_DIMS} dimensions does not fit an array column"
        )));
    }
    out.push('{');
    for (i, item) in items(array)?.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            inner if inner.is_array() => array_literal(out, inner, canonical, elem, dims + 1)?,
            Cell::Null => out.push_str("NULL"),
            other => match to_text(other, canonical, elem)? {
                Some(text) => quote_element(out, &text),
                None => out.push_str("NULL"),
            },
        }
    }
    out.push('}');
    Ok(())
}

fn quote_element(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(text: &str) -> Cell {
        serde_json::from_str::<Cell>(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn t(v: &str, canonical: Option<CanonicalType>, k: Kind) -> Option<String> {
        to_text(&c(v), canonical, &k).unwrap()
    }

    #[test]
    fn scalars() {
        assert_eq!(t("null", None, Kind::Text), None);
        assert_eq!(t("true", None, Kind::Bool).as_deref(), Some("t"));
        assert_eq!(t("1", None, Kind::Bool).as_deref(), Some("t"));
        assert!(to_text(&c("2"), None, &Kind::Bool).is_err());
        assert_eq!(t("-5", None, Kind::Number).as_deref(), Some("-5"));
        assert_eq!(
            t(r#""12.30""#, None, Kind::Number).as_deref(),
            Some("12.30")
        );
        assert_eq!(t(r#""NaN""#, None, Kind::Number).as_deref(), Some("NaN"));
        assert_eq!(
            t(r#""AP8=""#, Some(CanonicalType::Bytes), Kind::Bytes).as_deref(),
            Some("\\x00ff")
        );
        assert!(to_text(&c(r#""@@""#), Some(CanonicalType::Bytes), &Kind::Bytes).is_err());
    }

    #[test]
    fn json_values() {
        assert_eq!(
            t(r#"{"a":[1,"x"]}"#, Some(CanonicalType::Json), Kind::Json).as_deref(),
            Some(r#"{"a":[1,"x"]}"#)
        );
        assert_eq!(
            t(r#""str""#, Some(CanonicalType::Json), Kind::Json).as_deref(),
            Some(r#""str""#)
        );
        assert_eq!(
            t(r#""{\"k\":1}""#, Some(CanonicalType::String), Kind::Json).as_deref(),
            Some(r#"{"k":1}"#)
        );
    }

    #[test]
    fn deep_documents_and_huge_numbers_pass_verbatim() {
        let depth = 10_000;
        let deep = format!("{}1e400{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(
            t(&deep, Some(CanonicalType::Json), Kind::Json).as_deref(),
            Some(deep.as_str())
        );
        let big = "123456789012345678901234567890.123456789";
        assert_eq!(
            t(big, Some(CanonicalType::Json), Kind::JsonPlain).as_deref(),
            Some(big)
        );
        assert_eq!(t(big, None, Kind::Number).as_deref(), Some(big));
        assert_eq!(t("-1e-400", None, Kind::Json).as_deref(), Some("-1e-400"));
        // Not an array column's business: refused, without recursing 10,000 times.
        assert!(to_text(&c(&deep), None, &Kind::Array(Box::new(Kind::Number))).is_err());
    }

    #[test]
    fn arrays() {
        let k = Kind::Array(Box::new(Kind::Text));
        assert_eq!(
            t(
                r#"["a\"b", null, "c\\d", ""]"#,
                Some(CanonicalType::Array),
                k
            )
            .as_deref(),
            Some(r#"{"a\"b",NULL,"c\\d",""}"#)
        );
        let k = Kind::Array(Box::new(Kind::Number));
        assert_eq!(
            t("[[1, 2], [3, 4]]", None, k).as_deref(),
            Some(r#"{{"1","2"},{"3","4"}}"#)
        );
        assert_eq!(
            t(r#"["a", "b"]"#, Some(CanonicalType::Set), Kind::Text).as_deref(),
            Some("a,b")
        );
        let k = Kind::Array(Box::new(Kind::Json));
        assert_eq!(
            t(r#"[{"a": 1e400}, null]"#, Some(CanonicalType::Array), k).as_deref(),
            Some(r#"{"{\"a\": 1e400}",NULL}"#)
        );
    }
}
