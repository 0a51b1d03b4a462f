//! Envelope parsing on the sink's hot path.
//!
//! [`Envelope::parse`] is correct but spends most of its time on the `schema` block: every
//! envelope repeats its table's column list, and deriving it means a dozen small allocations
//! per message, for a block that is identical for every row of a table. Here the block is
//! parsed once per schema `version` (the version is the hash of the column list, written
//! before it, and the writers already cache table descriptions by it) and cloned from a
//! small cache afterwards; the column list of a known version is only skipped over. The
//! payload is checked for UTF-8 once instead of string by string.
//!
//! Column values are [`crate::cell::Cell`]s: scanned, not built into a tree, so a document
//! of any depth or a number beyond `f64` parses like any other value (nothing here recurses
//! per level of a value: serde_json's raw-value scan and `IgnoredAny` are iterative).
//!
//! The result is the same [`Envelope`] the derived parser builds, with the same required
//! fields, defaults and version check (the tests compare both on the same bytes).

use crate::envelope::{Column, Envelope, Image, Op, SchemaBlock, SourceBlock};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::collections::HashMap;
use std::fmt;

/// Schema blocks kept per parser; beyond this the cache starts over.
const MAX_SCHEMAS: usize = 256;

/// Parses envelopes, remembering the schema blocks it has seen.
#[derive(Debug, Default)]
pub(crate) struct EnvelopeParser {
    schemas: HashMap<String, SchemaBlock>,
}

impl EnvelopeParser {
    /// Parses one envelope (version 1 only), like [`Envelope::parse`].
    pub fn parse(&mut self, bytes: &[u8]) -> Result<Envelope, serde_json::Error> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            <serde_json::Error as de::Error>::custom(format!("envelope is not UTF-8: {e}"))
        })?;
        let mut de = serde_json::Deserializer::from_str(text);
        let env = EnvelopeSeed { parser: self }.deserialize(&mut de)?;
        de.end()?;
        if env.v != 1 {
            return Err(<serde_json::Error as de::Error>::custom(format!(
                "unsupported envelope version {} (this tidemark reads version 1)",
                env.v
            )));
        }
        Ok(env)
    }

    fn remember(&mut self, block: &SchemaBlock) {
        if self.schemas.len() >= MAX_SCHEMAS {
            self.schemas.clear();
        }
        self.schemas.insert(block.version.clone(), block.clone());
    }
}

struct EnvelopeSeed<'p> {
    parser: &'p mut EnvelopeParser,
}

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = Envelope;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Envelope, D::Error> {
        d.deserialize_map(self)
    }
}

fn dup<E: de::Error>(field: &'static str) -> E {
    E::duplicate_field(field)
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_> {
    type Value = Envelope;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an envelope object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let mut v: Option<u32> = None;
        let mut id: Option<String> = None;
        let mut op: Option<Op> = None;
        let mut source: Option<SourceBlock> = None;
        let mut key: Option<Option<Image>> = None;
        let mut before: Option<Option<Image>> = None;
        let mut after: Option<Option<Image>> = None;
        let mut unchanged: Option<Vec<String>> = None;
        let mut schema: Option<SchemaBlock> = None;
        let mut ts_ms: Option<i64> = None;
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match k.as_ref() {
                "v" if v.is_some() => return Err(dup("v")),
                "v" => v = Some(map.next_value()?),
                "id" if id.is_some() => return Err(dup("id")),
                "id" => id = Some(map.next_value()?),
                "op" if op.is_some() => return Err(dup("op")),
                "op" => op = Some(map.next_value()?),
                "source" if source.is_some() => return Err(dup("source")),
                "source" => source = Some(map.next_value()?),
                "key" if key.is_some() => return Err(dup("key")),
                "key" => key = Some(map.next_value()?),
                "before" if before.is_some() => return Err(dup("before")),
                "before" => before = Some(map.next_value()?),
                "after" if after.is_some() => return Err(dup("after")),
                "after" => after = Some(map.next_value()?),
                "unchanged" if unchanged.is_some() => return Err(dup("unchanged")),
                "unchanged" => unchanged = Some(map.next_value()?),
                "schema" if schema.is_some() => return Err(dup("schema")),
                "schema" => {
                    let (block, fresh) = map.next_value_seed(SchemaSeed {
                        known: &self.parser.schemas,
                    })?;
                    if fresh {
                        self.parser.remember(&block);
                    }
                    schema = Some(block);
                }
                "ts_ms" if ts_ms.is_some() => return Err(dup("ts_ms")),
                "ts_ms" => ts_ms = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let missing = de::Error::missing_field;
        Ok(Envelope {
            v: v.ok_or_else(|| missing("v"))?,
            id: id.ok_or_else(|| missing("id"))?,
            op: op.ok_or_else(|| missing("op"))?,
            source: source.ok_or_else(|| missing("source"))?,
            key: key.flatten(),
            before: before.flatten(),
            after: after.flatten(),
            unchanged: unchanged.unwrap_or_default(),
            schema: schema.ok_or_else(|| missing("schema"))?,
            ts_ms: ts_ms.ok_or_else(|| missing("ts_ms"))?,
        })
    }
}

/// The `schema` block: `(block, parsed_now)`.
struct SchemaSeed<'c> {
    known: &'c HashMap<String, SchemaBlock>,
}

impl<'de> DeserializeSeed<'de> for SchemaSeed<'_> {
    type Value = (SchemaBlock, bool);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SchemaSeed<'_> {
    type Value = (SchemaBlock, bool);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a schema block")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut version: Option<String> = None;
        let mut columns: Option<Vec<Column>> = None;
        let mut cached: Option<&SchemaBlock> = None;
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match k.as_ref() {
                "version" if version.is_some() => return Err(dup("version")),
                "version" => {
                    let v: String = map.next_value()?;
                    cached = self.known.get(&v);
                    version = Some(v);
                }
                "columns" if columns.is_some() || (cached.is_some() && version.is_some()) => {
                    // Either a duplicate, or the columns of a version we already hold.
                    if columns.is_some() {
                        return Err(dup("columns"));
                    }
                    map.next_value::<IgnoredAny>()?;
                    columns = Some(Vec::new());
                }
                "columns" => columns = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let version = version.ok_or_else(|| de::Error::missing_field("version"))?;
        let columns = columns.ok_or_else(|| de::Error::missing_field("columns"))?;
        match cached {
            Some(block) => Ok((block.clone(), false)),
            None => Ok((SchemaBlock { version, columns }, true)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const ENV: &str = r#"{"v":1,"id":"p:0000000001000000:00000001","op":"u","source":{"pipeline":"p","connector":"postgres","db":"d","schema":"public","table":"t","pos":"0000000001000000:00000001","tx":{"id":"7","seq":1,"commit_pos":"0/1000000","last":true},"ts_ms":5,"snapshot":false},"key":{"id":1},"before":null,"after":{"id":1,"name":"a\u00e9","doc":{"x":[1,2]}},"unchanged":["big"],"schema":{"version":"abc","columns":[{"name":"id","type":"int64","source_type":"bigint","pk":true,"nullable":false},{"name":"name","type":"string","source_type":"text","pk":false,"nullable":true}]},"ts_ms":9}"#;

    fn same(a: &Envelope, b: &Envelope) {
        assert_eq!(
            serde_json::to_string(a).unwrap_or_default(),
            serde_json::to_string(b).unwrap_or_default()
        );
        assert!(serde_json::to_string(a).is_ok());
    }

    #[test]
    fn matches_the_derived_parser() {
        let mut p = EnvelopeParser::default();
        let reference = Envelope::parse(ENV.as_bytes()).map_err(|e| e.to_string());
        let Ok(reference) = reference else {
            panic!("reference parse failed: {reference:?}");
        };
        for _ in 0..3 {
            // First parse fills the cache, later ones take the block from it.
            let fast = p.parse(ENV.as_bytes()).map_err(|e| e.to_string());
            let Ok(fast) = fast else {
                panic!("fast parse failed: {fast:?}");
            };
            same(&reference, &fast);
        }
        assert_eq!(p.schemas.len(), 1);
    }

    #[test]
    fn columns_before_version_and_unknown_fields() {
        let text = ENV
            .replace(
                r#""schema":{"version":"abc","columns":"#,
                r#""extra":[1,{"a":null}],"schema":{"columns":"#,
            )
            .replace(r#"}]},"ts_ms":9}"#, r#"}],"version":"abc"},"ts_ms":9}"#);
        let mut p = EnvelopeParser::default();
        let a = p.parse(text.as_bytes()).map_err(|e| e.to_string());
        let b = Envelope::parse(text.as_bytes()).map_err(|e| e.to_string());
        match (a, b) {
            (Ok(a), Ok(b)) => same(&a, &b),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_what_the_derived_parser_rejects() {
        let cases = [
            ENV.replace(r#""v":1"#, r#""v":2"#),
            ENV.replace(r#""op":"u","#, ""),
            ENV.replace(r#""op":"u""#, r#""op":"x""#),
            ENV.replace(r#","ts_ms":9}"#, "}"),
            ENV.replace(r#""unchanged":["big"]"#, r#""unchanged":null"#),
            ENV.replace(r#""version":"abc","#, ""),
            format!("{ENV} x"),
            ENV[..ENV.len() - 3].to_owned(),
            ENV.replace(r#""id":"p:"#, r#""id":"p:","id":"q:"#),
        ];
        for (i, c) in cases.iter().enumerate() {
            let mut p = EnvelopeParser::default();
            assert!(p.parse(c.as_bytes()).is_err(), "case {i} accepted");
            assert!(
                Envelope::parse(c.as_bytes()).is_err(),
                "case {i}: reference accepted"
            );
        }
        let mut p = EnvelopeParser::default();
        assert!(p.parse(b"{\"v\":1,\"id\":\"\xff\"}").is_err());
    }

    #[test]
    fn null_images_are_none() {
        let text = ENV.replace(r#""key":{"id":1}"#, r#""key":null"#);
        let mut p = EnvelopeParser::default();
        match p.parse(text.as_bytes()) {
            Ok(env) => {
                assert!(env.key.is_none());
                assert!(env.before.is_none());
                assert!(env.after.is_some());
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[cfg(test)]
mod json_value_tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    fn envelope_with(doc: &str) -> String {
        super::tests::ENV.replace(r#"{"x":[1,2]}"#, doc)
    }

    #[test]
    fn deep_and_huge_json_values_parse() {
        for doc in [
            nested(200),
            nested(10_000),
            "1e400".to_owned(),
            "-1e-400".to_owned(),
            "123456789012345678901234567890.123456789".to_owned(),
            r#"{"a":[1e400,{"b":-1e-400}]}"#.to_owned(),
        ] {
            let text = envelope_with(&doc);
            let mut p = EnvelopeParser::default();
            let env = p.parse(text.as_bytes()).map_err(|e| e.to_string());
            let doc_cell = env
                .as_ref()
                .ok()
                .and_then(|e| e.after.as_ref()?.get("doc").cloned());
            assert_eq!(
                doc_cell.map(|c| c.json_text().into_owned()),
                Some(doc.clone())
            );
            let reference = Envelope::parse(text.as_bytes()).map_err(|e| e.to_string());
            let doc_cell = reference.ok().and_then(|e| e.after?.get("doc").cloned());
            assert_eq!(doc_cell.map(|c| c.json_text().into_owned()), Some(doc));
        }
    }
}

#[cfg(test)]
mod stack_tests {
    use super::*;

    /// A 100,000-level document parses on a 256 KiB stack: nothing recurses per level.
    #[test]
    fn parsing_does_not_recurse_per_level() {
        let depth = 100_000;
        let doc = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        let text = super::tests::ENV.replace(r#"{"x":[1,2]}"#, &doc);
        let worker = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut p = EnvelopeParser::default();
                let env = p.parse(text.as_bytes()).map_err(|e| e.to_string())?;
                let cell = env.after.as_ref().and_then(|a| a.get("doc")).cloned();
                Ok::<_, String>(cell.map(|c| c.json_text().len()))
            });
        let joined = worker.map(|h| h.join());
        match joined {
            Ok(Ok(Ok(len))) => assert_eq!(len, Some(doc_len(depth))),
            other => panic!("{other:?}"),
        }
    }

    fn doc_len(depth: usize) -> usize {
        depth * "{\"a\":".len() + 1 + depth
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    /// The row-image part of the envelope as the parser read it before cells: serde_json trees.
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct TreeImages {
        key: Option<serde_json::Map<String, serde_json::Value>>,
        before: Option<serde_json::Map<String, serde_json::Value>>,
        after: Option<serde_json::Map<String, serde_json::Value>>,
    }

    /// The same images as cells.
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct CellImages {
        key: Option<Image>,
        before: Option<Image>,
        after: Option<Image>,
    }

    /// `cargo test -p tidemark-core --lib bench -- --ignored --nocapture`: row images as cells
    /// against serde_json trees, on a typical row (numbers, strings, a small document).
    #[test]
    #[ignore]
    fn cells_against_trees() {
        let row = r#"{"id":123456,"name":"Jane \"J\" Doe","email":"jane@example.com","price":"12.30","qty":7,"ratio":0.125,"paid":true,"at":"2024-02-29T12:45:00.123456Z","note":null,"meta":{"tags":["a","b"],"n":1}}"#;
        let text = format!(r#"{{"key":{{"id":123456}},"before":{row},"after":{row}}}"#);
        let n = 200_000;
        for round in 0..2 {
            let t = std::time::Instant::now();
            for _ in 0..n {
                let v: TreeImages = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
                std::hint::black_box(v);
            }
            let trees = t.elapsed();
            let t = std::time::Instant::now();
            for _ in 0..n {
                let v: CellImages = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
                std::hint::black_box(v);
            }
            let cells = t.elapsed();
            println!(
                "round {round}: trees {:.0} ns/envelope, cells {:.0} ns/envelope",
                trees.as_nanos() as f64 / n as f64,
                cells.as_nanos() as f64 / n as f64
            );
        }
    }
}
