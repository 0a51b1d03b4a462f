//! Canonical row values and their JSON rendering.
//!
//! Every source converts its wire values into [`Value`] once; the envelope
//! writer streams them straight into the output buffer (no intermediate
//! `serde_json::Value`, which costs an allocation and a hash per field).
//! The rendering rules are the DESIGN contract's canonical-types table:
//! bigints stay exact, decimals are strings, non-finite floats are the
//! strings `"NaN"`, `"Infinity"`, `"-Infinity"`, bytes are base64.

use base64::Engine as _;

/// One column value in canonical form.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Canonical `bool`.
    Bool(bool),
    /// Canonical `int64`.
    Int(i64),
    /// Canonical `uint64` (MySQL BIGINT UNSIGNED).
    UInt(u64),
    /// Canonical `float64`; non-finite values render as strings.
    Float(f64),
    /// A 4-byte float, rendered in its own shortest form ("1.1", not "1.100000023841858").
    Float32(f32),
    /// Exact decimal text such as `"12.30"`, `"NaN"` for Postgres numeric NaN.
    Decimal(String),
    /// Any value rendered as a JSON string: text, dates, times, uuids, intervals, bit strings,
    /// and unknown types passed through as text.
    Text(String),
    /// Binary data, rendered base64 (standard alphabet, padded).
    Bytes(Vec<u8>),
    /// A JSON document, already validated, written verbatim. Build with [`Value::json`].
    Json(String),
    /// Arrays (Postgres arrays, MySQL SET members): nested for multi-dimensional arrays.
    Array(Vec<Value>),
}

impl Value {
    /// Wraps JSON text, validating it first: text that is not valid JSON is kept as a string
    /// rather than corrupting the envelope. Validation scans iteratively and leaves numbers
    /// unparsed, so any depth and any number (`1e400`, 40 digits) stay a JSON document.
    pub fn json(text: String) -> Value {
        match serde_json::from_str::<serde::de::IgnoredAny>(&text) {
            Ok(_) => Value::Json(text),
            Err(_) => Value::Text(text),
        }
    }

    /// Appends the JSON rendering of this value to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
            Value::UInt(u) => out.extend_from_slice(itoa::Buffer::new().format(*u).as_bytes()),
            Value::Float(f) => write_float(out, *f),
            Value::Float32(f) => {
                if f.is_finite() {
                    out.extend_from_slice(ryu::Buffer::new().format_finite(*f).as_bytes())
                } else {
                    write_float(out, f64::from(*f))
                }
            }
            Value::Decimal(s) | Value::Text(s) => write_json_str(out, s),
            Value::Bytes(b) => {
                out.push(b'"');
                let encoded = base64::engine::general_purpose::STANDARD.encode(b);
                out.extend_from_slice(encoded.as_bytes());
                out.push(b'"');
            }
            Value::Json(raw) => out.extend_from_slice(raw.as_bytes()),
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write_json(out);
                }
                out.push(b']');
            }
        }
    }

    /// The JSON rendering as a `String` (tests and diagnostics).
    pub fn to_json_string(&self) -> String {
        let mut out = Vec::new();
        self.write_json(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

fn write_float(out: &mut Vec<u8>, f: f64) {
    if f.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if f == f64::INFINITY {
        out.extend_from_slice(b"\"Infinity\"");
    } else if f == f64::NEG_INFINITY {
        out.extend_from_slice(b"\"-Infinity\"");
    } else {
        out.extend_from_slice(ryu::Buffer::new().format_finite(f).as_bytes());
    }
}

/// Appends `s` as a JSON string literal (quoted and escaped).
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's string escaper is exact and fast; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends `s` as a JSON string literal through `std::io::Write` (for callers holding a writer).
pub fn write_json_str_to(out: &mut impl std::io::Write, s: &str) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(s.len() + 2);
    write_json_str(&mut buf, s);
    out.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_canonical_forms() {
        assert_eq!(
            Value::Int(i64::MIN).to_json_string(),
            "-9223372036854775808"
        );
        assert_eq!(
            Value::UInt(u64::MAX).to_json_string(),
            "18446744073709551615"
        );
        assert_eq!(Value::Float(f64::NAN).to_json_string(), "\"NaN\"");
        assert_eq!(
            Value::Float(f64::NEG_INFINITY).to_json_string(),
            "\"-Infinity\""
        );
        assert_eq!(Value::Float(1.5).to_json_string(), "1.5");
        assert_eq!(Value::Float32(1.1).to_json_string(), "1.1");
        assert_eq!(Value::Decimal("12.30".into()).to_json_string(), "\"12.30\"");
        assert_eq!(Value::Bytes(vec![0, 255]).to_json_string(), "\"AP8=\"");
        assert_eq!(
            Value::Text("a\"b\n".into()).to_json_string(),
            "\"a\\\"b\\n\""
        );
        assert_eq!(
            Value::Array(vec![Value::Int(1), Value::Null]).to_json_string(),
            "[1,null]"
        );
    }

    #[test]
    fn invalid_json_text_stays_a_string() {
        assert_eq!(
            Value::json("{\"a\":1}".into()),
            Value::Json("{\"a\":1}".into())
        );
        assert_eq!(Value::json("{oops".into()), Value::Text("{oops".into()));
    }

    #[test]
    fn deep_and_huge_json_stays_json() {
        let depth = 10_000;
        for doc in [
            format!("{}1{}", "[".repeat(depth), "]".repeat(depth)),
            format!("{}{}", "{\"a\":".repeat(depth) + "1e400", "}".repeat(depth)),
            "[1e400,-1e-400,123456789012345678901234567890.123456789]".to_owned(),
        ] {
            let v = Value::json(doc.clone());
            assert_eq!(v, Value::Json(doc.clone()));
            assert_eq!(v.to_json_string(), doc);
        }
    }
}
