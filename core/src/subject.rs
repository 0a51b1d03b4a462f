//! NATS names derived from identifiers.
//!
//! Schema and table names may contain dots, spaces, `*`, `>` or anything
//! else; a raw identifier in a subject would split a token or act as a
//! wildcard. Every byte outside `[A-Za-z0-9_-]` is written as `%XX`, so the
//! mapping is injective and reversible and never produces a wildcard.

/// Escapes one identifier into a single subject token.
pub fn escape_token(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len());
    for b in ident.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push_str(&format!("{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

/// `<prefix>.<pipeline>.<schema>.<table>` with every part escaped.
pub fn table_subject(prefix: &str, pipeline: &str, schema: &str, table: &str) -> String {
    format!(
        "{}.{}.{}.{}",
        prefix,
        escape_token(pipeline),
        escape_token(schema),
        escape_token(table)
    )
}

/// All subjects of a pipeline: `<prefix>.<pipeline>.>`.
pub fn pipeline_wildcard(prefix: &str, pipeline: &str) -> String {
    format!("{}.{}.>", prefix, escape_token(pipeline))
}

/// Dead-letter subject of a sink: `<prefix>.<pipeline>.dlq.<sink>`. It lies inside the
/// pipeline's stream subjects, so dead letters are kept with the stream; sinks recognise them
/// by the `Tidemark-Dead-Letter` header (not by subject: a real schema may be named `dlq`)
/// and skip them.
pub fn dead_letter_subject(prefix: &str, pipeline: &str, sink: &str) -> String {
    format!(
        "{}.{}.dlq.{}",
        prefix,
        escape_token(pipeline),
        escape_token(sink)
    )
}

/// Default stream name: `TIDEMARK_<PIPELINE>`, upper-cased, with characters that stream names
/// may not contain replaced by `_`.
pub fn default_stream_name(pipeline: &str) -> String {
    let mut s = String::from("TIDEMARK_");
    for c in pipeline.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            s.push(c.to_ascii_uppercase());
        } else {
            s.push('_');
        }
    }
    s
}

/// Durable consumer name of a sink: `tidemark_<pipeline>_<sink>` (sanitised).
pub fn consumer_name(pipeline: &str, sink: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("tidemark_{}_{}", clean(pipeline), clean(sink))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_identifiers_stay_one_token() {
        let s = table_subject("tidemark", "shop", "my.schema", "a *>b");
        assert_eq!(s, "tidemark.shop.my%2Eschema.a%20%2A%3Eb");
        assert_eq!(s.split('.').count(), 4);
        assert_eq!(escape_token(""), "%00");
        assert_eq!(escape_token("é"), "%C3%A9");
    }

    #[test]
    fn stream_names() {
        assert_eq!(default_stream_name("shop"), "TIDEMARK_SHOP");
        assert_eq!(default_stream_name("a.b c"), "TIDEMARK_A_B_C");
        assert_eq!(consumer_name("shop", "re plica"), "tidemark_shop_re_plica");
    }
}
