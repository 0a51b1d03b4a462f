//! The configuration as a tree of values that remember where they came from.
//!
//! serde's own error messages are written for programmers: they print the
//! offending value (`invalid type: string "S3cr3t", expected a boolean`),
//! never the key, and name Rust types (`u64`). To say instead *which key*,
//! *which line* (or which environment variable) and *what kind of value* is
//! expected, without ever printing the value, the file is first read into
//! this tree — every node carries its [`Origin`] — and the typed
//! configuration is then deserialized from the tree by [`super::de`], which
//! knows each node's key path.
//!
//! ```text
//!  pipelines.toml ──toml (spans)──▶ Node tree ◀── TIDEMARK_NATS__URL=… (strings)
//!                                     │ ${VAR} / ${file:…} expanded in place
//!                                     ▼
//!                         de::from_tree ──▶ Config
//! ```
//!
//! Environment values are kept as strings: a numeric password such as
//! `123456` stays the string it is, and only fields that want a number or a
//! boolean parse it (see [`super::de`]).

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;
use toml::Spanned;

/// Where a value was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// In the configuration file, at this 1-based line (0 when unknown).
    File {
        /// 1-based line.
        line: usize,
    },
    /// In this environment variable.
    Env {
        /// Variable name, e.g. `TIDEMARK_NATS__PASSWORD`.
        var: String,
    },
}

/// One value and its origin.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// The value.
    pub kind: Kind,
    /// Where it was written.
    pub origin: Origin,
}

/// A value as TOML knows it.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// `true` / `false`.
    Bool(bool),
    /// A TOML date/time (no configuration key takes one).
    Datetime,
    /// An array.
    Array(Vec<Node>),
    /// A table, keys in file order.
    Table(Vec<(String, Node)>),
}

/// Parses TOML text into a tree with line numbers. The error is toml's own message (it never
/// quotes the input) and the 1-based line and column.
pub(crate) fn parse(text: &str) -> Result<Node, (String, usize, usize)> {
    match toml::from_str::<Raw>(text) {
        Ok(raw) => Ok(raw.into_node(text, 0)),
        Err(e) => {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            Err((e.message().trim().to_owned(), line, column))
        }
    }
}

/// 1-based line and column of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

impl Node {
    /// Sets `value` (a string from environment variable `var`) at `path` (lower-case keys),
    /// creating the tables on the way. The environment wins over the file.
    pub fn set_env(&mut self, path: &[String], value: String, var: &str) {
        let origin = Origin::Env {
            var: var.to_owned(),
        };
        let mut node = self;
        for (i, key) in path.iter().enumerate() {
            if !matches!(node.kind, Kind::Table(_)) {
                *node = Node {
                    kind: Kind::Table(Vec::new()),
                    origin: origin.clone(),
                };
            }
            let Kind::Table(entries) = &mut node.kind else {
                return;
            };
            let at = match entries.iter().position(|(k, _)| k == key) {
                Some(at) => at,
                None => {
                    entries.push((
                        key.clone(),
                        Node {
                            kind: Kind::Table(Vec::new()),
                            origin: origin.clone(),
                        },
                    ));
                    entries.len() - 1
                }
            };
            let child = &mut entries[at].1;
            if i + 1 == path.len() {
                *child = Node {
                    kind: Kind::Str(value),
                    origin,
                };
                return;
            }
            node = child;
        }
    }

    /// The node at a key path such as `pipelines[0].sinks[1].url`, if present.
    pub fn find(&self, path: &str) -> Option<&Node> {
        let mut node = self;
        for part in path.split('.').filter(|p| !p.is_empty()) {
            let (key, indexes) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !key.is_empty() {
                let Kind::Table(entries) = &node.kind else {
                    return None;
                };
                node = entries.iter().find(|(k, _)| k == key).map(|(_, n)| n)?;
            }
            for index in indexes
                .split(['[', ']'])
                .filter(|s| !s.is_empty())
                .map(str::parse::<usize>)
            {
                let Kind::Array(items) = &node.kind else {
                    return None;
                };
                node = items.get(index.ok()?)?;
            }
        }
        Some(node)
    }

    /// Applies `f` to every string, with its key path; stops at the first error.
    pub fn for_each_string<E>(
        &mut self,
        path: &mut String,
        f: &mut impl FnMut(&str, &mut String) -> Result<(), E>,
    ) -> Result<(), E> {
        match &mut self.kind {
            Kind::Str(s) => f(path, s)?,
            Kind::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    item.for_each_string(path, f)?;
                    path.truncate(len);
                }
            }
            Kind::Table(entries) => {
                for (k, item) in entries.iter_mut() {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    item.for_each_string(path, f)?;
                    path.truncate(len);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// What toml hands over: values with their byte spans.
enum Raw {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime,
    Array(Vec<Spanned<Raw>>),
    Table(Vec<(String, Spanned<Raw>)>),
}

/// The key toml uses to pass a date/time through serde.
const TOML_DATETIME: &str = "$__toml_private_datetime";

impl Raw {
    fn into_node(self, text: &str, line: usize) -> Node {
        let child = |s: Spanned<Raw>| {
            let line = line_col(text, s.span().start).0;
            s.into_inner().into_node(text, line)
        };
        let kind = match self {
            Raw::Str(s) => Kind::Str(s),
            Raw::Int(i) => Kind::Int(i),
            Raw::Float(f) => Kind::Float(f),
            Raw::Bool(b) => Kind::Bool(b),
            Raw::Datetime => Kind::Datetime,
            Raw::Array(items) => Kind::Array(items.into_iter().map(child).collect()),
            Raw::Table(entries) => {
                Kind::Table(entries.into_iter().map(|(k, v)| (k, child(v))).collect())
            }
        };
        Node {
            kind,
            origin: Origin::File { line },
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        // TOML integers are i64; a larger one cannot come from the parser.
        Ok(i64::try_from(v)
            .map(Raw::Int)
            .unwrap_or(Raw::Float(v as f64)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(item);
        }
        Ok(Raw::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == TOML_DATETIME {
                map.next_value::<de::IgnoredAny>()?;
                return Ok(Raw::Datetime);
            }
            entries.push((key, map.next_value::<Spanned<Raw>>()?));
        }
        Ok(Raw::Table(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_paths() {
        let text = "[nats]\nurl = \"x\"\n\n[[pipelines]]\nname = \"a\"\n  [pipelines.source]\n  kind = 5\n  tables = [\"a\", 7]\n";
        let root = parse(text).unwrap();
        let line = |p: &str| match root.find(p).map(|n| &n.origin) {
            Some(Origin::File { line }) => *line,
            other => panic!("{p}: {other:?}"),
        };
        assert_eq!(line("nats.url"), 2);
        assert_eq!(line("pipelines[0].name"), 5);
        assert_eq!(line("pipelines[0].source.kind"), 7);
        assert_eq!(line("pipelines[0].source.tables[1]"), 8);
        assert!(root.find("pipelines[1]").is_none());
    }

    #[test]
    fn env_creates_tables() {
        let mut root = parse("").unwrap();
        root.set_env(
            &["nats".into(), "password".into()],
            "123456".into(),
            "TIDEMARK_NATS__PASSWORD",
        );
        match root.find("nats.password") {
            Some(Node {
                kind: Kind::Str(s),
                origin: Origin::Env { var },
            }) => {
                assert_eq!(s, "123456");
                assert_eq!(var, "TIDEMARK_NATS__PASSWORD");
            }
            other => panic!("{other:?}"),
        }
    }
}
