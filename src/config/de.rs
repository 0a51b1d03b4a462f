//! Deserializing the typed configuration from a [`Node`] tree, with errors for people.
//!
//! The error type is our own ([`FieldError`]): serde's derived code reports every problem
//! through `serde::de::Error`'s constructors (`invalid_type`, `unknown_field`, …), so each one
//! is captured as data — the *kind* of value found, never the value itself, and what was
//! expected, translated from Rust (`u64`) to words ("a whole number ≥ 0"). The innermost node
//! that fails stamps the error with its key path and origin; outer nodes leave it alone.
//!
//! Values from environment variables are strings; a field that wants a number or a boolean
//! parses the string (so `TIDEMARK_NATS__REPLICAS=3` works), a field that wants a string takes
//! it as it is (so `TIDEMARK_NATS__PASSWORD=123456` is the password "123456").

use super::tree::{Kind, Node, Origin};
use serde::de::value::StrDeserializer;
use serde::de::{self, Expected, IntoDeserializer as _, Unexpected, Visitor};
use std::fmt;

/// One wrong value, unknown key or missing key, located in the file or the environment.
#[derive(Debug)]
pub(crate) struct FieldError {
    /// Key path such as `pipelines[0].sinks[1].batch_size`; empty for the whole file.
    pub path: String,
    /// Where the offending value (or table) was written, when known.
    pub origin: Option<Origin>,
    /// What is wrong, without the value.
    pub message: String,
    located: bool,
}

impl FieldError {
    fn new(message: String) -> FieldError {
        FieldError {
            path: String::new(),
            origin: None,
            message,
            located: false,
        }
    }

    /// Stamps the error with the node it belongs to, unless an inner node already did.
    fn at(mut self, path: &str, origin: &Origin) -> FieldError {
        if !self.located {
            self.path = path.to_owned();
            self.origin = Some(origin.clone());
            self.located = true;
        }
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for FieldError {}

impl de::Error for FieldError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        FieldError::new(msg.to_string())
    }
    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        FieldError::new(format!(
            "expected {}, found {}",
            human_expected(exp),
            human_found(&unexp)
        ))
    }
    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        let found = match unexp {
            Unexpected::Signed(i) if i < 0 => "a negative number".to_owned(),
            Unexpected::Signed(_) | Unexpected::Unsigned(_) => "a number out of range".to_owned(),
            other => human_found(&other),
        };
        FieldError::new(format!("expected {}, found {found}", human_expected(exp)))
    }
    fn invalid_length(len: usize, exp: &dyn Expected) -> Self {
        FieldError::new(format!(
            "expected {}, found {len} element(s)",
            human_expected(exp)
        ))
    }
    fn unknown_variant(_variant: &str, expected: &'static [&'static str]) -> Self {
        FieldError::new(format!("expected {}", OneOf(expected)))
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        FieldError::new(if expected.is_empty() {
            format!("unknown key `{field}`: this table takes no keys")
        } else {
            format!(
                "unknown key `{field}` (known keys: {})",
                expected.join(", ")
            )
        })
    }
    fn missing_field(field: &'static str) -> Self {
        FieldError::new(format!("missing required key `{field}`"))
    }
}

/// "one of `a`, `b` or `c`".
struct OneOf(&'static [&'static str]);

impl fmt::Display for OneOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => f.write_str("nothing"),
            [one] => write!(f, "`{one}`"),
            [a, b] => write!(f, "`{a}` or `{b}`"),
            [init @ .., last] => {
                f.write_str("one of ")?;
                for v in init {
                    write!(f, "`{v}`, ")?;
                }
                write!(f, "or `{last}`")
            }
        }
    }
}

impl Expected for OneOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What serde's visitors expect, in words (their own texts name Rust types).
fn human_expected(exp: &dyn Expected) -> String {
    let text = exp.to_string();
    match text.as_str() {
        "a boolean" => "true or false".into(),
        "u64" | "usize" | "u128" => "a whole number ≥ 0".into(),
        "u32" => "a whole number from 0 to 4294967295".into(),
        "u16" => "a whole number from 0 to 65535".into(),
        "u8" => "a whole number from 0 to 255".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a string" | "a borrowed string" | "a character" => "a string".into(),
        "a sequence" => "a list".into(),
        t if t.starts_with("struct ") || t.starts_with("a map") => "a table".into(),
        _ => text,
    }
}

/// The kind of value found, never the value.
fn human_found(unexp: &Unexpected<'_>) -> String {
    match unexp {
        Unexpected::Bool(_) => "true or false".into(),
        Unexpected::Unsigned(_) | Unexpected::Signed(_) => "a whole number".into(),
        Unexpected::Float(_) => "a number with a fraction".into(),
        Unexpected::Char(_) | Unexpected::Str(_) => "a string".into(),
        Unexpected::Bytes(_) => "bytes".into(),
        Unexpected::Unit => "nothing".into(),
        Unexpected::Option => "an optional value".into(),
        Unexpected::NewtypeStruct | Unexpected::NewtypeVariant => "a wrapped value".into(),
        Unexpected::Seq => "a list".into(),
        Unexpected::Map => "a table".into(),
        Unexpected::Enum | Unexpected::UnitVariant => "a choice".into(),
        Unexpected::TupleVariant | Unexpected::StructVariant => "a structured choice".into(),
        Unexpected::Other(what) => (*what).to_owned(),
    }
}

/// Deserializes `T` from the tree.
pub(crate) fn from_tree<'de, T: de::Deserialize<'de>>(root: &Node) -> Result<T, FieldError> {
    T::deserialize(NodeDe {
        node: root,
        path: String::new(),
    })
}

/// A node and its key path.
struct NodeDe<'a> {
    node: &'a Node,
    path: String,
}

impl NodeDe<'_> {
    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// A string from the environment, for fields that want something else.
    fn env_str(&self) -> Option<&str> {
        match (&self.node.kind, &self.node.origin) {
            (Kind::Str(s), Origin::Env { .. }) => Some(s.trim()),
            _ => None,
        }
    }

    fn locate<T>(&self, r: Result<T, FieldError>) -> Result<T, FieldError> {
        r.map_err(|e| e.at(&self.path, &self.node.origin))
    }

    fn any<'de, V: Visitor<'de>>(&self, visitor: V) -> Result<V::Value, FieldError> {
        let r = match &self.node.kind {
            Kind::Str(s) => visitor.visit_str(s),
            Kind::Int(i) => visitor.visit_i64(*i),
            Kind::Float(f) => visitor.visit_f64(*f),
            Kind::Bool(b) => visitor.visit_bool(*b),
            Kind::Datetime => Err(de::Error::invalid_type(
                Unexpected::Other("a date/time"),
                &visitor,
            )),
            Kind::Array(items) => visitor.visit_seq(Seq {
                items: items.iter(),
                path: &self.path,
                index: 0,
            }),
            Kind::Table(entries) => visitor.visit_map(Map {
                entries: entries.iter(),
                value: None,
                parent: self,
            }),
        };
        self.locate(r)
    }
}

/// For fields that want a number or a boolean: parse an environment string, else as usual.
macro_rules! parse_env {
    ($($method:ident => $ty:ty, $visit:ident;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
                match self.env_str().map(|s| (s, s.parse::<$ty>())) {
                    Some((_, Ok(v))) => self.locate(visitor.$visit(v)),
                    Some((s, Err(_))) => self.locate(visit_text(s, visitor)),
                    None => self.any(visitor),
                }
            }
        )*
    };
}

/// An environment string that is not of the wanted type: visit it as the number it may be
/// (so the error can say "a negative number" or "a number with a fraction"), else as a string.
fn visit_text<'de, V: Visitor<'de>>(s: &str, visitor: V) -> Result<V::Value, FieldError> {
    if let Ok(i) = s.parse::<i64>() {
        return visitor.visit_i64(i);
    }
    match s.parse::<f64>() {
        Ok(f) if s.bytes().any(|b| b.is_ascii_digit()) => visitor.visit_f64(f),
        _ => visitor.visit_str(s),
    }
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = FieldError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        self.any(visitor)
    }

    parse_env! {
        deserialize_bool => bool, visit_bool;
        deserialize_u8 => u64, visit_u64;
        deserialize_u16 => u64, visit_u64;
        deserialize_u32 => u64, visit_u64;
        deserialize_u64 => u64, visit_u64;
        deserialize_i8 => i64, visit_i64;
        deserialize_i16 => i64, visit_i64;
        deserialize_i32 => i64, visit_i64;
        deserialize_i64 => i64, visit_i64;
        deserialize_f32 => f64, visit_f64;
        deserialize_f64 => f64, visit_f64;
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        let (path, origin) = (self.path.clone(), self.node.origin.clone());
        visitor.visit_some(self).map_err(|e| e.at(&path, &origin))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, FieldError> {
        let (path, origin) = (self.path.clone(), self.node.origin.clone());
        visitor
            .visit_newtype_struct(self)
            .map_err(|e| e.at(&path, &origin))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FieldError> {
        let r = match &self.node.kind {
            Kind::Str(s) => {
                let access: StrDeserializer<'_, FieldError> = s.trim().into_deserializer();
                visitor.visit_enum(access)
            }
            Kind::Int(i) => Err(de::Error::invalid_type(
                Unexpected::Signed(*i),
                &OneOf(variants),
            )),
            Kind::Float(f) => Err(de::Error::invalid_type(
                Unexpected::Float(*f),
                &OneOf(variants),
            )),
            Kind::Bool(b) => Err(de::Error::invalid_type(
                Unexpected::Bool(*b),
                &OneOf(variants),
            )),
            Kind::Datetime => Err(de::Error::invalid_type(
                Unexpected::Other("a date/time"),
                &OneOf(variants),
            )),
            Kind::Array(_) => Err(de::Error::invalid_type(Unexpected::Seq, &OneOf(variants))),
            Kind::Table(_) => Err(de::Error::invalid_type(Unexpected::Map, &OneOf(variants))),
        };
        self.locate(r)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char str string bytes byte_buf unit unit_struct seq tuple tuple_struct map
        struct identifier
    }
}

/// A table's entries; each value carries its own path.
struct Map<'a, 'p> {
    entries: std::slice::Iter<'a, (String, Node)>,
    value: Option<(&'a str, &'a Node)>,
    parent: &'p NodeDe<'a>,
}

impl<'de> de::MapAccess<'de> for Map<'_, '_> {
    type Error = FieldError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, FieldError> {
        let Some((key, node)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some((key, node));
        let access: StrDeserializer<'_, FieldError> = key.as_str().into_deserializer();
        seed.deserialize(access)
            .map(Some)
            .map_err(|e| e.at(&self.parent.child_path(key), &node.origin))
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, FieldError> {
        let Some((key, node)) = self.value.take() else {
            return Err(de::Error::custom("value requested before its key"));
        };
        seed.deserialize(NodeDe {
            node,
            path: self.parent.child_path(key),
        })
    }
}

/// An array's items; each carries `path[i]`.
struct Seq<'a> {
    items: std::slice::Iter<'a, Node>,
    path: &'a str,
    index: usize,
}

impl<'de> de::SeqAccess<'de> for Seq<'_> {
    type Error = FieldError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, FieldError> {
        let Some(node) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{}]", self.path, self.index);
        self.index += 1;
        seed.deserialize(NodeDe { node, path }).map(Some)
    }
}
