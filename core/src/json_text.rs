//! JSON text handled as text: validation and indentation without building a tree.
//!
//! Envelopes can carry documents nested thousands of levels deep and numbers beyond `f64`
//! (see [`crate::cell`]). Anything that turns such text into a `serde_json::Value` either
//! fails (serde_json's 128-level limit, `number out of range`), rounds digits away, or
//! recurses once per level. The helpers here scan iteratively and copy numbers as they
//! are, so `tidemark tail` and the dead-letter writer show exactly what was published.

use serde_json::value::RawValue;

/// Levels indented by [`pretty`]; anything deeper is printed compact on one line, so a
/// 10,000-level document does not print 10,000 ever wider lines.
pub const PRETTY_DEPTH: usize = 64;

/// The bytes as validated JSON text (any depth, any number), or the parser's error.
pub fn validate(bytes: &[u8]) -> Result<&RawValue, serde_json::Error> {
    serde_json::from_slice::<&RawValue>(bytes)
}

/// Re-indents valid JSON text the way `serde_json::to_string_pretty` does (two spaces,
/// `"key": value`, empty containers as `[]`/`{}`), copying every scalar byte for byte.
/// Levels beyond [`PRETTY_DEPTH`] stay compact. Iterative: any depth is fine.
pub fn pretty(json: &RawValue) -> String {
    let text = json.get().as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(text.len() + text.len() / 4);
    let mut depth = 0usize;
    let mut i = 0usize;
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.resize(out.len() + 2 * depth.min(PRETTY_DEPTH), b' ');
    };
    while let Some(&b) = text.get(i) {
        i += 1;
        match b {
            b' ' | b'\n' | b'\r' | b'\t' => {}
            b'"' => {
                // Copy the string literal, escapes included.
                let start = i - 1;
                let mut escaped = false;
                while let Some(&c) = text.get(i) {
                    i += 1;
                    match c {
                        _ if escaped => escaped = false,
                        b'\\' => escaped = true,
                        b'"' => break,
                        _ => {}
                    }
                }
                out.extend_from_slice(text.get(start..i).unwrap_or_default());
            }
            b'[' | b'{' => {
                let close = if b == b'[' { b']' } else { b'}' };
                let mut j = i;
                while matches!(text.get(j), Some(b' ' | b'\n' | b'\r' | b'\t')) {
                    j += 1;
                }
                out.push(b);
                if text.get(j) == Some(&close) {
                    out.push(close);
                    i = j + 1;
                } else {
                    depth += 1;
                    if depth <= PRETTY_DEPTH {
                        newline(&mut out, depth);
                    }
                }
            }
            b']' | b'}' => {
                if depth <= PRETTY_DEPTH {
                    newline(&mut out, depth.saturating_sub(1));
                }
                depth = depth.saturating_sub(1);
                out.push(b);
            }
            b',' => {
                out.push(b',');
                if depth <= PRETTY_DEPTH {
                    newline(&mut out, depth);
                }
            }
            b':' => out.extend_from_slice(if depth <= PRETTY_DEPTH { b": " } else { b":" }),
            other => out.push(other),
        }
    }
    // Input was valid UTF-8 and only ASCII was inserted.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pp(text: &str) -> String {
        match validate(text.as_bytes()) {
            Ok(raw) => pretty(raw),
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn matches_serde_json_pretty_for_ordinary_documents() {
        for text in [
            r#"{"a":[1,2,{"b":null,"c":"x, y: [z]"}],"e":{},"f":[],"g":"q\"{","v":1}"#,
            r#"[ { "a" : [ ] , "b" : { } } , -1.5 , true ]"#,
            r#""just a string""#,
            "42",
        ] {
            let reference: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            let reference = serde_json::to_string_pretty(&reference).unwrap_or_default();
            assert_eq!(pp(text), reference, "{text}");
        }
    }

    #[test]
    fn keeps_numbers_and_survives_depth() {
        assert_eq!(pp("[1e400,-1e-400]"), "[\n  1e400,\n  -1e-400\n]");
        let depth = 10_000;
        let doc = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let out = pp(&doc);
        assert_eq!(out.lines().count(), 2 * PRETTY_DEPTH + 1);
        let compact: String = out.chars().filter(|c| !c.is_whitespace()).collect();
        assert_eq!(compact, doc);
        assert!(validate(b"[1,").is_err());
        assert!(validate(b"{\"a\":1} x").is_err());
    }
}
