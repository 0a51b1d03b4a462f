//! Canonical JSON values → the text a Postgres type's input function accepts.
//!
//! Every value travels as text and is cast server-side to the column's type, so most
//! canonical strings (timestamps ending in `Z`, ISO intervals, uuids, decimals, bit strings,
//! `"NaN"` / `"Infinity"`) pass unchanged. What needs work here: base64 → bytea hex, JSON
//! documents → their text, JSON arrays → Postgres array literals, booleans ↔ numbers
//! (MySQL's TINYINT(1) into boolean columns and back).

use crate::catalog::Kind;
use base64::Engine as _;
use serde_json::Value as J;
use tidemark_core::envelope::CanonicalType;

/// Why a value cannot be rendered for its column.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ConvertError(pub String);

/// Renders `v` for a column of kind `kind`; `canonical` is the envelope's type for the column
/// (when the schema block names it). `None` is SQL NULL.
pub(crate) fn to_text(
    v: &J,
    canonical: Option<CanonicalType>,
    kind: &Kind,
) -> Result<Option<String>, ConvertError> {
    Ok(match v {
        J::Null => None,
        J::Bool(b) => Some(
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
        J::Number(n) => Some(match kind {
            Kind::Bool => match n.as_f64() {
                Some(0.0) => "f".to_owned(),
                Some(1.0) => "t".to_owned(),
                _ => return Err(ConvertError(format!("{n} is not a boolean (0 or 1)"))),
            },
            _ => n.to_string(),
        }),
        J::String(s) => Some(match kind {
            Kind::Bytes => bytea_hex(s, canonical)?,
            Kind::Json | Kind::JsonPlain => {
                if canonical == Some(CanonicalType::Json)
                    || serde_json::from_str::<serde::de::IgnoredAny>(s).is_err()
                {
                    // A JSON document that is a string, or text that is not JSON: a JSON string.
                    J::String(s.clone()).to_string()
                } else {
                    // Text holding a JSON document (MariaDB JSON seen as text).
                    s.clone()
                }
            }
            _ => s.clone(),
        }),
        J::Array(items) => Some(match kind {
            Kind::Array(elem) => {
                let mut out = String::new();
                let elem_canonical = match canonical {
                    Some(CanonicalType::Set) => Some(CanonicalType::String),
                    _ => None,
                };
                array_literal(&mut out, items, elem_canonical, elem)?;
                out
            }
            Kind::Text if canonical == Some(CanonicalType::Set) => {
                // MySQL SET into a text column: its native comma-separated form.
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        J::String(s) => parts.push(s.as_str()),
                        other => {
                            return Err(ConvertError(format!("set member {other} is not a string")))
                        }
                    }
                }
                parts.join(",")
            }
            Kind::Json | Kind::JsonPlain | Kind::Text => v.to_string(),
            Kind::Bool | Kind::Number | Kind::Bytes => {
                return Err(ConvertError("an array does not fit this column".into()))
            }
        }),
        J::Object(_) => Some(match kind {
            Kind::Json | Kind::JsonPlain | Kind::Text => v.to_string(),
            _ => {
                return Err(ConvertError(
                    "a JSON object does not fit this column".into(),
                ))
            }
        }),
    })
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
/// arrays.
fn array_literal(
    out: &mut String,
    items: &[J],
    canonical: Option<CanonicalType>,
    elem: &Kind,
) -> Result<(), ConvertError> {
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            J::Array(inner) => array_literal(out, inner, canonical, elem)?,
            J::Null => out.push_str("NULL"),
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
    use serde_json::json;

    fn t(v: J, c: Option<CanonicalType>, k: Kind) -> Option<String> {
        to_text(&v, c, &k).unwrap()
    }

    #[test]
    fn scalars() {
        assert_eq!(t(json!(null), None, Kind::Text), None);
        assert_eq!(t(json!(true), None, Kind::Bool).as_deref(), Some("t"));
        assert_eq!(t(json!(1), None, Kind::Bool).as_deref(), Some("t"));
        assert!(to_text(&json!(2), None, &Kind::Bool).is_err());
        assert_eq!(t(json!(-5), None, Kind::Number).as_deref(), Some("-5"));
        assert_eq!(
            t(json!("12.30"), None, Kind::Number).as_deref(),
            Some("12.30")
        );
        assert_eq!(t(json!("NaN"), None, Kind::Number).as_deref(), Some("NaN"));
        assert_eq!(
            t(json!("AP8="), Some(CanonicalType::Bytes), Kind::Bytes).as_deref(),
            Some("\\x00ff")
        );
        assert!(to_text(&json!("@@"), Some(CanonicalType::Bytes), &Kind::Bytes).is_err());
    }

    #[test]
    fn json_values() {
        assert_eq!(
            t(
                json!({"a": [1, "x"]}),
                Some(CanonicalType::Json),
                Kind::Json
            )
            .as_deref(),
            Some(r#"{"a":[1,"x"]}"#)
        );
        assert_eq!(
            t(json!("str"), Some(CanonicalType::Json), Kind::Json).as_deref(),
            Some(r#""str""#)
        );
        assert_eq!(
            t(json!(r#"{"k":1}"#), Some(CanonicalType::String), Kind::Json).as_deref(),
            Some(r#"{"k":1}"#)
        );
    }

    #[test]
    fn arrays() {
        let k = Kind::Array(Box::new(Kind::Text));
        assert_eq!(
            t(
                json!(["a\"b", null, "c\\d", ""]),
                Some(CanonicalType::Array),
                k
            )
            .as_deref(),
            Some(r#"{"a\"b",NULL,"c\\d",""}"#)
        );
        let k = Kind::Array(Box::new(Kind::Number));
        assert_eq!(
            t(json!([[1, 2], [3, 4]]), None, k).as_deref(),
            Some(r#"{{"1","2"},{"3","4"}}"#)
        );
        assert_eq!(
            t(json!(["a", "b"]), Some(CanonicalType::Set), Kind::Text).as_deref(),
            Some("a,b")
        );
    }
}
