//! Column values of a parsed row image, kept exactly as the envelope carries them.
//!
//! A source publishes every value it can read: a Postgres `jsonb` nested 10,000 levels deep,
//! or holding `1e400` (jsonb keeps it as a 401-digit numeric), is legal, and so is a
//! 40-digit number inside a `json` document. A `serde_json::Value` cannot hold either:
//! building one recurses (serde_json stops at 128 levels, and dropping or printing a deep
//! tree overflows a 2 MiB worker stack), and its numbers are `f64` (`1e400` is an error,
//! `123456789012345678901234567890.1` silently loses digits). So a sink never builds one:
//!
//! ```text
//!   envelope bytes ──scan (serde_json RawValue: iterative, no depth limit, numbers unparsed)──▶
//!     null / true / false      → Cell::Null / Cell::Bool
//!     "text" (no escapes)      → Cell::String (a copy of the slice)
//!     "text\n" (escapes)       → Cell::String (unescaped)
//!     12 / -1e-400 / 1.5       → Cell::Number(exact text)
//!     [ … ] / { … }            → Cell::Json(exact text), any depth
//! ```
//!
//! Writers put a `Json` cell's text verbatim into a `json`/`jsonb`/JSON/LONGTEXT column, and a
//! number's text into a numeric column; only array columns (Postgres arrays, MySQL SET) look
//! inside, one level at a time ([`Cell::items`]). Scanning a value once is as fast as
//! building a `serde_json::Value` for scalars and much faster for documents (no tree).

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Error as _, Serialize, Serializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A row image (`key`, `before`, `after`): column name → value.
pub type Image = BTreeMap<String, Cell>;

/// One column value of a parsed envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// JSON `null` (SQL NULL).
    Null,
    /// JSON `true` / `false`.
    Bool(bool),
    /// A JSON number, exactly as written (never rounded through `f64`).
    Number(Box<str>),
    /// A JSON string, unescaped.
    String(String),
    /// A JSON array or object (or, rarely, a string with an escape Rust strings cannot hold,
    /// such as a lone surrogate): its JSON text verbatim, already validated, any depth.
    Json(Box<str>),
}

/// The cell standing for an absent column.
pub static NULL: Cell = Cell::Null;

impl Cell {
    /// Classifies one JSON value's text. `raw` must be valid JSON without surrounding
    /// whitespace, as a [`RawValue`] is; anything else is kept as `Json` text.
    pub fn from_raw(raw: &str) -> Cell {
        let bytes = raw.as_bytes();
        match bytes.first() {
            Some(b'n') => Cell::Null,
            Some(b't') => Cell::Bool(true),
            Some(b'f') => Cell::Bool(false),
            Some(b'"') => {
                let inner = raw.get(1..raw.len().saturating_sub(1)).unwrap_or("");
                if raw.len() >= 2 && !inner.contains('\\') {
                    Cell::String(inner.to_owned())
                } else {
                    match serde_json::from_str::<String>(raw) {
                        Ok(s) => Cell::String(s),
                        Err(_) => Cell::Json(raw.into()),
                    }
                }
            }
            Some(b'-' | b'0'..=b'9') => Cell::Number(raw.into()),
            _ => Cell::Json(raw.into()),
        }
    }

    /// The value's JSON text: what a JSON column receives.
    pub fn json_text(&self) -> Cow<'_, str> {
        match self {
            Cell::Null => Cow::Borrowed("null"),
            Cell::Bool(true) => Cow::Borrowed("true"),
            Cell::Bool(false) => Cow::Borrowed("false"),
            Cell::Number(n) => Cow::Borrowed(n),
            Cell::Json(j) => Cow::Borrowed(j),
            Cell::String(s) => {
                let mut out = Vec::with_capacity(s.len() + 2);
                crate::value::write_json_str(&mut out, s);
                Cow::Owned(String::from_utf8(out).unwrap_or_default())
            }
        }
    }

    /// True for a JSON array.
    pub fn is_array(&self) -> bool {
        matches!(self, Cell::Json(j) if j.starts_with('['))
    }

    /// The elements of a JSON array, one level deep (nested arrays stay `Json` cells);
    /// `None` when the cell is not an array.
    pub fn items(&self) -> Option<Result<Vec<Cell>, serde_json::Error>> {
        match self {
            Cell::Json(j) if j.starts_with('[') => Some(
                serde_json::from_str::<Vec<&RawValue>>(j)
                    .map(|items| items.into_iter().map(|r| Cell::from_raw(r.get())).collect()),
            ),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Cell {
    /// Borrows the value's text from the input, so envelopes are parsed from bytes or a
    /// string (`serde_json::from_slice` / `from_str`), as [`crate::envelope::Envelope::parse`]
    /// does; a reader-based deserializer is refused.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cell, D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?;
        Ok(Cell::from_raw(raw.get()))
    }
}

impl Serialize for Cell {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cell::Null => s.serialize_unit(),
            Cell::Bool(b) => s.serialize_bool(*b),
            Cell::String(v) => s.serialize_str(v),
            Cell::Number(t) | Cell::Json(t) => {
                let raw: &RawValue = serde_json::from_str(t).map_err(S::Error::custom)?;
                raw.serialize(s)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(text: &str) -> Cell {
        serde_json::from_str::<Cell>(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn classifies_values() {
        assert_eq!(cell("null"), Cell::Null);
        assert_eq!(cell(" true "), Cell::Bool(true));
        assert_eq!(cell("false"), Cell::Bool(false));
        assert_eq!(cell(r#""a\"b\u00e9""#), Cell::String("a\"bé".into()));
        assert_eq!(cell(r#""plain""#), Cell::String("plain".into()));
        assert_eq!(cell(r#""""#), Cell::String(String::new()));
        assert_eq!(cell("-1e-400"), Cell::Number("-1e-400".into()));
        assert_eq!(
            cell("123456789012345678901234567890.123456789"),
            Cell::Number("123456789012345678901234567890.123456789".into())
        );
        assert_eq!(
            cell(r#"{"a": [1e400]}"#),
            Cell::Json(r#"{"a": [1e400]}"#.into())
        );
        // A lone surrogate is valid JSON text but no Rust string: kept verbatim.
        assert_eq!(cell(r#""\ud800""#), Cell::Json(r#""\ud800""#.into()));
        assert!(serde_json::from_str::<Cell>("[1,").is_err());
        assert!(serde_json::from_str::<Cell>("1e").is_err());
    }

    #[test]
    fn deep_documents_stay_text() {
        let depth = 100_000;
        let doc = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(cell(&doc), Cell::Json(doc.clone().into()));
        // One level at a time, never recursing.
        let items = cell(&doc).items().map(|r| r.map(|v| v.len()).ok());
        assert_eq!(items, Some(Some(1)));
    }

    #[test]
    fn json_text_and_items() {
        assert_eq!(Cell::String("a\"".into()).json_text(), r#""a\"""#);
        assert_eq!(Cell::Number("1e400".into()).json_text(), "1e400");
        let arr = cell(r#"[1, "x", [2], null]"#);
        assert!(arr.is_array());
        let items = arr.items().and_then(Result::ok).unwrap_or_default();
        assert_eq!(
            items,
            vec![
                Cell::Number("1".into()),
                Cell::String("x".into()),
                Cell::Json("[2]".into()),
                Cell::Null
            ]
        );
        assert!(Cell::String("[1]".into()).items().is_none());
        assert_eq!(
            serde_json::to_string(&arr).unwrap_or_default(),
            r#"[1, "x", [2], null]"#
        );
    }
}
