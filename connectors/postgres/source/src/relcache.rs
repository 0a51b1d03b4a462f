//! Relation and type cache: pgoutput relation OIDs → [`TableMeta`] + per-column converters.
//!
//! pgoutput describes each table once per session with a Relation (`'R'`) message and then
//! refers to it by OID. The server re-sends Relation after every relcache invalidation
//! (ALTER TABLE, REPLICA IDENTITY change, reconnect), so [`RelCache::apply_relation`] always
//! **overwrites** the entry: the next row is decoded with the new column list.
//!
//! ```text
//!  'Y' Type ──apply_type──▶ custom type names (oid → namespace.name)
//!  'R' Relation ──apply_relation──▶ RelationEntry { TableMeta, ColumnType per column }
//!  pg_type (TYPE_CATALOG_QUERY) ──TypeCatalog──▶ names, array elements, domain bases, enums
//! ```
//!
//! A Relation carries only type OIDs. Built-in OIDs are fixed, so a table of them is compiled
//! in; everything else (enums, domains, extension types such as citext, arrays of those)
//! needs the [`TypeCatalog`] read from `pg_type` with [`TYPE_CATALOG_QUERY`]. When the catalog
//! lacks an OID the cache falls back to the built-in table, then to the `'Y'` message's name
//! (converted as text). [`RelCache::apply_type`] tells the caller when a `'Y'` names a type the
//! catalog does not know, so it can re-read the catalog before the Relation that follows.
//!
//! Snapshot and stream must describe a table identically (same schema version hash): the
//! snapshot reader builds a [`RelationInfo`] from [`RELATION_COLUMNS_QUERY`] and calls
//! [`RelCache::apply_relation_info`], the same function the stream uses.

use crate::convert::{ColumnType, ValueKind};
use crate::pgoutput::{Relation, ReplicaIdentity, TypeMessage};
use std::collections::HashMap;
use std::sync::Arc;
use tidemark_core::envelope::{Column, Naming, TableMeta};
use tidemark_core::error::{Classify, Retry};

/// Reads the type catalog: one row per type, columns in this order (all castable from text,
/// so both `simple_query` and `query` work):
/// `oid` int8, `name` text (`format_type`), `category` text (`typcategory`), `elem_oid` int8
/// (`typelem`), `base_oid` int8 (`typbasetype`), `typtype` text, `delim` text (`typdelim`).
/// Table row types (and arrays of them) are left out: there is one per table.
pub const TYPE_CATALOG_QUERY: &str = "SELECT t.oid::int8 AS oid, \
     pg_catalog.format_type(t.oid, NULL) AS name, \
     t.typcategory::text AS category, \
     t.typelem::int8 AS elem_oid, \
     t.typbasetype::int8 AS base_oid, \
     t.typtype::text AS typtype, \
     t.typdelim::text AS delim \
     FROM pg_catalog.pg_type t \
     LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem \
     WHERE t.typrelid = 0 AND COALESCE(e.typrelid, 0) = 0";

/// The columns of one table as pgoutput would describe them, for the snapshot reader. Run with
/// `query(RELATION_COLUMNS_QUERY, &[&rel_oid])` (`$1` is the relation OID, `u32`); rows in
/// column order: `name` text, `type_oid` int8, `type_modifier` int4, `key` bool (part of the
/// replica identity, all columns for REPLICA IDENTITY FULL, exactly like pgoutput's flag).
/// Dropped and generated columns are left out, as pgoutput does.
pub const RELATION_COLUMNS_QUERY: &str = "SELECT a.attname::text AS name, \
     a.atttypid::int8 AS type_oid, \
     a.atttypmod AS type_modifier, \
     CASE c.relreplident WHEN 'f' THEN true WHEN 'n' THEN false \
          ELSE COALESCE(a.attnum = ANY(i.indkey::int2[]), false) END AS key \
     FROM pg_catalog.pg_attribute a \
     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
     LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND \
          ((c.relreplident = 'd' AND i.indisprimary) \
           OR (c.relreplident = 'i' AND i.indisreplident)) \
     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
     ORDER BY a.attnum";

/// Primary-key columns of every table, for [`RelCache::set_primary_key`]: rows of
/// `rel_oid` int8, `name` text, in key order.
pub const PRIMARY_KEY_QUERY: &str = "SELECT i.indrelid::int8 AS rel_oid, a.attname::text AS name \
     FROM pg_catalog.pg_index i \
     CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
     JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
     WHERE i.indisprimary ORDER BY i.indrelid, k.ord";

/// A catalog row that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// Fewer columns than [`TYPE_CATALOG_QUERY`] selects.
    #[error("type catalog row has {got} columns, expected 7")]
    ColumnCount {
        /// Columns in the row.
        got: usize,
    },
    /// A column is NULL or not what the query produces.
    #[error("type catalog row: column {column} has invalid value {value:?}")]
    BadValue {
        /// Column name.
        column: &'static str,
        /// The text found (never secret: catalog data).
        value: Option<String>,
    },
}

impl Classify for CatalogError {
    /// A catalog row we cannot parse will not change on retry.
    fn retry(&self) -> Retry {
        Retry::Definite
    }
    fn kind(&self) -> &'static str {
        "pg_catalog"
    }
}

/// One `pg_type` row, as [`TYPE_CATALOG_QUERY`] selects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// Type OID.
    pub oid: u32,
    /// `format_type(oid, NULL)`: `integer`, `character varying`, `mood`, `integer[]`.
    pub name: String,
    /// `typcategory` (`A` array, `E` enum, `N` numeric, `S` string, `U` user …).
    pub category: u8,
    /// `typelem`: element type of an array type, else 0.
    pub elem_oid: u32,
    /// `typbasetype`: base type of a domain, else 0.
    pub base_oid: u32,
    /// `typtype`: `b` base, `d` domain, `e` enum, `r` range, `m` multirange, `p` pseudo, `c`
    /// composite.
    pub typtype: u8,
    /// `typdelim`: array element delimiter (`,`; `;` for box).
    pub delimiter: u8,
}

impl TypeInfo {
    /// Parses one row of [`TYPE_CATALOG_QUERY`] given as text cells (e.g. a
    /// `SimpleQueryRow`: `(0..row.len()).map(|i| row.get(i)).collect::<Vec<_>>()`).
    pub fn from_text_row(cells: &[Option<&str>]) -> Result<TypeInfo, CatalogError> {
        if cells.len() < 7 {
            return Err(CatalogError::ColumnCount { got: cells.len() });
        }
        let cell = |i: usize| cells.get(i).copied().flatten();
        let bad = |column: &'static str, v: Option<&str>| CatalogError::BadValue {
            column,
            value: v.map(str::to_owned),
        };
        let oid = |i: usize, column: &'static str| {
            cell(i)
                .and_then(|s| s.parse::<u32>().ok())
                .ok_or_else(|| bad(column, cell(i)))
        };
        let byte = |i: usize, column: &'static str| {
            cell(i)
                .and_then(|s| s.as_bytes().first().copied())
                .ok_or_else(|| bad(column, cell(i)))
        };
        Ok(TypeInfo {
            oid: oid(0, "oid")?,
            name: cell(1).ok_or_else(|| bad("name", None))?.to_owned(),
            category: byte(2, "category")?,
            elem_oid: oid(3, "elem_oid")?,
            base_oid: oid(4, "base_oid")?,
            typtype: byte(5, "typtype")?,
            delimiter: byte(6, "delim")?,
        })
    }
}

/// Extra type facts read from `pg_type` (see [`TYPE_CATALOG_QUERY`]), keyed by OID.
#[derive(Debug, Clone, Default)]
pub struct TypeCatalog {
    types: HashMap<u32, TypeInfo>,
}

impl TypeCatalog {
    /// An empty catalog (built-in OIDs still resolve).
    pub fn new() -> TypeCatalog {
        TypeCatalog::default()
    }

    /// Builds a catalog from text rows of [`TYPE_CATALOG_QUERY`]; fails on the first bad row.
    pub fn from_text_rows<'r, I>(rows: I) -> Result<TypeCatalog, CatalogError>
    where
        I: IntoIterator,
        I::Item: AsRef<[Option<&'r str>]>,
    {
        let mut cat = TypeCatalog::new();
        for row in rows {
            cat.insert(TypeInfo::from_text_row(row.as_ref())?);
        }
        Ok(cat)
    }

    /// Adds or replaces one type.
    pub fn insert(&mut self, info: TypeInfo) {
        self.types.insert(info.oid, info);
    }

    /// The facts about `oid`, if the catalog has them.
    pub fn get(&self, oid: u32) -> Option<&TypeInfo> {
        self.types.get(&oid)
    }

    /// Number of types.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// No types at all.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}

/// An owned relation description: what a pgoutput Relation says, or what the snapshot reader
/// reads with [`RELATION_COLUMNS_QUERY`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationInfo {
    /// Relation OID.
    pub oid: u32,
    /// Schema name (empty means `pg_catalog`, as pgoutput sends it).
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity.
    pub replica_identity: ReplicaIdentity,
    /// Columns in table order.
    pub columns: Vec<RelationColumnInfo>,
}

/// One column of a [`RelationInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumnInfo {
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// `atttypmod` (-1 when none).
    pub type_modifier: i32,
    /// Part of the replica identity key (pgoutput flag bit 1).
    pub key: bool,
}

impl From<&Relation<'_>> for RelationInfo {
    fn from(r: &Relation<'_>) -> RelationInfo {
        RelationInfo {
            oid: r.oid,
            namespace: r.namespace.to_owned(),
            name: r.name.to_owned(),
            replica_identity: r.replica_identity,
            columns: r
                .columns
                .iter()
                .map(|c| RelationColumnInfo {
                    name: c.name.to_owned(),
                    type_oid: c.type_oid,
                    type_modifier: c.type_modifier,
                    key: c.is_key(),
                })
                .collect(),
        }
    }
}

/// A cached relation: its envelope description and one converter per column.
#[derive(Debug, Clone)]
pub struct RelationEntry {
    /// What the server said about the relation.
    pub info: RelationInfo,
    /// The envelope's table description (shared with in-flight changes).
    pub table: Arc<TableMeta>,
    /// Column types aligned with `table.columns`.
    pub types: Vec<ColumnType>,
}

/// Relations by OID, plus the type knowledge needed to convert their values.
#[derive(Debug)]
pub struct RelCache {
    naming: Naming,
    db: String,
    catalog: TypeCatalog,
    /// `'Y'` messages: oid → (namespace, name).
    custom_types: HashMap<u32, (String, String)>,
    /// Primary keys by relation OID, used instead of the replica identity flags for
    /// REPLICA IDENTITY FULL tables (where pgoutput flags every column).
    primary_keys: HashMap<u32, Vec<String>>,
    relations: HashMap<u32, RelationEntry>,
}

impl RelCache {
    /// An empty cache producing [`TableMeta`]s for database `db` of the given pipeline.
    pub fn new(naming: Naming, db: impl Into<String>) -> RelCache {
        RelCache {
            naming,
            db: db.into(),
            catalog: TypeCatalog::new(),
            custom_types: HashMap::new(),
            primary_keys: HashMap::new(),
            relations: HashMap::new(),
        }
    }

    /// Installs a (re-read) type catalog and re-resolves every cached relation with it.
    pub fn set_catalog(&mut self, catalog: TypeCatalog) {
        self.catalog = catalog;
        self.rebuild_all();
    }

    /// The current type catalog.
    pub fn catalog(&self) -> &TypeCatalog {
        &self.catalog
    }

    /// Records a `'Y'` Type message. Returns `true` when the catalog does not know this type:
    /// the caller should re-read it ([`TYPE_CATALOG_QUERY`] → [`RelCache::set_catalog`])
    /// before applying the Relation that follows, or the columns of this type are converted
    /// as plain text.
    pub fn apply_type(&mut self, ty: &TypeMessage<'_>) -> bool {
        self.custom_types
            .insert(ty.oid, (ty.namespace.to_owned(), ty.name.to_owned()));
        self.catalog.get(ty.oid).is_none()
    }

    /// Sets the primary key used for REPLICA IDENTITY FULL tables (see [`PRIMARY_KEY_QUERY`]);
    /// rebuilds the entry if the relation is cached.
    pub fn set_primary_key(&mut self, rel_oid: u32, columns: Vec<String>) {
        self.primary_keys.insert(rel_oid, columns);
        if let Some(entry) = self.relations.get(&rel_oid) {
            let info = entry.info.clone();
            self.apply_relation_info(info);
        }
    }

    /// Records a `'R'` Relation message, **overwriting** any entry for its OID, and returns
    /// the table description. If nothing changed, the existing `Arc` is returned.
    pub fn apply_relation(&mut self, rel: &Relation<'_>) -> Arc<TableMeta> {
        self.apply_relation_info(RelationInfo::from(rel))
    }

    /// Same as [`RelCache::apply_relation`] from an owned description (snapshot reader).
    pub fn apply_relation_info(&mut self, info: RelationInfo) -> Arc<TableMeta> {
        let types: Vec<ColumnType> = info
            .columns
            .iter()
            .map(|c| self.resolve_type(c.type_oid, c.type_modifier))
            .collect();
        let pk_override = match info.replica_identity {
            ReplicaIdentity::Full => self.primary_keys.get(&info.oid),
            _ => None,
        };
        let columns = info
            .columns
            .iter()
            .zip(&types)
            .map(|(c, t)| {
                let pk = match pk_override {
                    Some(names) => names.contains(&c.name),
                    None => c.key,
                };
                Column {
                    name: c.name.clone(),
                    ty: t.kind.canonical(),
                    source_type: t.source_type.clone(),
                    pk,
                    nullable: !pk,
                    element: t.kind.element_canonical(),
                }
            })
            .collect::<Vec<Column>>();
        if let Some(old) = self.relations.get(&info.oid) {
            if old.info == info && old.types == types && old.table.columns == columns {
                return old.table.clone();
            }
        }
        let schema = if info.namespace.is_empty() {
            "pg_catalog"
        } else {
            info.namespace.as_str()
        };
        let table = Arc::new(TableMeta::new(
            &self.naming,
            &self.db,
            schema,
            &info.name,
            columns,
        ));
        tracing::debug!(
            rel_oid = info.oid,
            table = %table.qualified_name(),
            columns = table.columns.len(),
            version = %table.version,
            "relation cached"
        );
        self.relations.insert(
            info.oid,
            RelationEntry {
                info,
                table: table.clone(),
                types,
            },
        );
        table
    }

    fn rebuild_all(&mut self) {
        let infos: Vec<RelationInfo> = self.relations.values().map(|e| e.info.clone()).collect();
        for info in infos {
            self.apply_relation_info(info);
        }
    }

    /// The cached entry (table + converters) for a relation OID.
    pub fn relation(&self, oid: u32) -> Option<&RelationEntry> {
        self.relations.get(&oid)
    }

    /// The table description for a relation OID.
    pub fn table(&self, oid: u32) -> Option<Arc<TableMeta>> {
        self.relations.get(&oid).map(|e| e.table.clone())
    }

    /// Forgets a relation.
    pub fn remove(&mut self, oid: u32) -> Option<RelationEntry> {
        self.relations.remove(&oid)
    }

    /// Number of cached relations.
    pub fn len(&self) -> usize {
        self.relations.len()
    }

    /// No relation cached.
    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }

    /// The `source_type` name of a type with a modifier (`character varying(20)`,
    /// `numeric(10,2)`, `mood`, `integer[]`).
    pub fn type_name(&self, oid: u32, typmod: i32) -> String {
        self.resolve_type(oid, typmod).source_type
    }

    /// Type OIDs of `rel` that neither the built-in table nor the catalog knows (they would be
    /// converted as text). Non-empty means: re-read the catalog before [`Self::apply_relation`].
    pub fn missing_types(&self, rel: &Relation<'_>) -> Vec<u32> {
        rel.columns
            .iter()
            .map(|c| c.type_oid)
            .filter(|&oid| self.catalog.get(oid).is_none() && builtin(oid).is_none())
            .collect()
    }

    /// Resolves a type OID + modifier to how its values are converted and named: catalog
    /// first, then the built-in table, then `'Y'` names (as text), then `unknown (oid N)`.
    pub fn resolve_type(&self, oid: u32, typmod: i32) -> ColumnType {
        let (kind, name) = self.resolve(oid, typmod, 0);
        ColumnType {
            oid,
            kind,
            source_type: name,
        }
    }

    fn resolve(&self, oid: u32, typmod: i32, depth: u8) -> (ValueKind, String) {
        // Domains over arrays over domains…: a cycle is impossible in a sane catalog, but the
        // catalog is outside data.
        if depth > 8 {
            return (ValueKind::Other, format!("unknown (oid {oid})"));
        }
        if let Some(info) = self.catalog.get(oid) {
            return match info.typtype {
                b'd' if info.base_oid != 0 => {
                    let (kind, _) = self.resolve(info.base_oid, -1, depth + 1);
                    (kind, info.name.clone())
                }
                b'e' => (ValueKind::String, info.name.clone()),
                // True arrays only: int2vector/oidvector are category 'A' too, but print as
                // space-separated lists (format_type names them without "[]").
                _ if info.category == b'A' && info.elem_oid != 0 && info.name.ends_with("[]") => {
                    let (element, elem_name) = self.resolve(info.elem_oid, typmod, depth + 1);
                    let delimiter = self
                        .catalog
                        .get(info.elem_oid)
                        .map(|e| e.delimiter)
                        .unwrap_or(b',');
                    let name = if typmod >= 0 {
                        format!("{elem_name}[]")
                    } else {
                        info.name.clone()
                    };
                    (
                        ValueKind::Array {
                            element: Box::new(element),
                            delimiter,
                        },
                        name,
                    )
                }
                _ => match builtin(oid) {
                    Some(b) => (b.kind(), with_typmod(oid, b.name, typmod)),
                    None => (kind_by_name(&info.name), info.name.clone()),
                },
            };
        }
        if let Some(b) = builtin(oid) {
            if let Some(elem) = b.elem {
                let (element, elem_name) = self.resolve(elem, typmod, depth + 1);
                let delimiter = if elem == BOX_OID { b';' } else { b',' };
                return (
                    ValueKind::Array {
                        element: Box::new(element),
                        delimiter,
                    },
                    format!("{elem_name}[]"),
                );
            }
            return (b.kind(), with_typmod(oid, b.name, typmod));
        }
        if let Some((ns, name)) = self.custom_types.get(&oid) {
            let full = if ns.is_empty() || ns == "public" || ns == "pg_catalog" {
                name.clone()
            } else {
                format!("{ns}.{name}")
            };
            return (kind_by_name(name), full);
        }
        (ValueKind::Other, format!("unknown (oid {oid})"))
    }
}

/// Extension types recognised by name (their OIDs differ per database).
fn kind_by_name(name: &str) -> ValueKind {
    let bare = name.rsplit('.').next().unwrap_or(name);
    match bare {
        "citext" => ValueKind::String,
        _ => ValueKind::Other,
    }
}

const BOX_OID: u32 = 603;

/// A built-in type: `format_type` name, and element OID for array types.
struct Builtin {
    name: &'static str,
    kind: fn() -> ValueKind,
    elem: Option<u32>,
}

impl Builtin {
    fn kind(&self) -> ValueKind {
        (self.kind)()
    }
}

/// Built-in type OIDs (stable across Postgres versions, `pg_type.dat`).
fn builtin(oid: u32) -> Option<Builtin> {
    use ValueKind as K;
    let base = |name: &'static str, kind: fn() -> ValueKind| {
        Some(Builtin {
            name,
            kind,
            elem: None,
        })
    };
    let array = |elem: u32| {
        Some(Builtin {
            name: "",
            kind: || K::Other,
            elem: Some(elem),
        })
    };
    match oid {
        16 => base("boolean", || K::Bool),
        17 => base("bytea", || K::Bytea),
        18 => base("\"char\"", || K::String),
        19 => base("name", || K::String),
        20 => base("bigint", || K::Int),
        21 => base("smallint", || K::Int),
        23 => base("integer", || K::Int),
        25 => base("text", || K::String),
        26 => base("oid", || K::Int),
        114 => base("json", || K::Json),
        142 => base("xml", || K::Other),
        600 => base("point", || K::Other),
        601 => base("lseg", || K::Other),
        602 => base("path", || K::Other),
        603 => base("box", || K::Other),
        604 => base("polygon", || K::Other),
        628 => base("line", || K::Other),
        650 => base("cidr", || K::Other),
        700 => base("real", || K::Float4),
        701 => base("double precision", || K::Float8),
        718 => base("circle", || K::Other),
        774 => base("macaddr8", || K::Other),
        790 => base("money", || K::Other),
        829 => base("macaddr", || K::Other),
        869 => base("inet", || K::Other),
        1042 => base("character", || K::String),
        1043 => base("character varying", || K::String),
        1082 => base("date", || K::Date),
        1083 => base("time without time zone", || K::Time),
        1114 => base("timestamp without time zone", || K::Timestamp),
        1184 => base("timestamp with time zone", || K::Timestamptz),
        1186 => base("interval", || K::Interval),
        1266 => base("time with time zone", || K::TimeTz),
        1560 => base("bit", || K::Bits),
        1562 => base("bit varying", || K::Bits),
        1700 => base("numeric", || K::Numeric),
        2950 => base("uuid", || K::Uuid),
        3220 => base("pg_lsn", || K::Other),
        3614 => base("tsvector", || K::Other),
        3615 => base("tsquery", || K::Other),
        3802 => base("jsonb", || K::Json),
        3904 => base("int4range", || K::Other),
        3906 => base("numrange", || K::Other),
        3908 => base("tsrange", || K::Other),
        3910 => base("tstzrange", || K::Other),
        3912 => base("daterange", || K::Other),
        3926 => base("int8range", || K::Other),
        4072 => base("jsonpath", || K::Other),
        5069 => base("xid8", || K::Other),
        1000 => array(16),
        1001 => array(17),
        1002 => array(18),
        1003 => array(19),
        1016 => array(20),
        1005 => array(21),
        1007 => array(23),
        1009 => array(25),
        1028 => array(26),
        199 => array(114),
        143 => array(142),
        1017 => array(600),
        1018 => array(601),
        1019 => array(602),
        1020 => array(603),
        1027 => array(604),
        629 => array(628),
        651 => array(650),
        1021 => array(700),
        1022 => array(701),
        719 => array(718),
        775 => array(774),
        791 => array(790),
        1040 => array(829),
        1041 => array(869),
        1014 => array(1042),
        1015 => array(1043),
        1182 => array(1082),
        1183 => array(1083),
        1115 => array(1114),
        1185 => array(1184),
        1187 => array(1186),
        1270 => array(1266),
        1561 => array(1560),
        1563 => array(1562),
        1231 => array(1700),
        2951 => array(2950),
        3221 => array(3220),
        3643 => array(3614),
        3645 => array(3615),
        3807 => array(3802),
        3905 => array(3904),
        3907 => array(3906),
        3909 => array(3908),
        3911 => array(3910),
        3913 => array(3912),
        3927 => array(3926),
        _ => None,
    }
}

/// Renders a built-in type name with its modifier the way `format_type(oid, typmod)` does.
fn with_typmod(oid: u32, name: &str, typmod: i32) -> String {
    if typmod < 0 {
        return name.to_owned();
    }
    match oid {
        // character(n), character varying(n): typmod = n + 4.
        1042 | 1043 if typmod >= 4 => format!("{name}({})", typmod - 4),
        // numeric(p,s): typmod = ((p << 16) | s) + 4; s is an 11-bit signed field since PG15.
        1700 if typmod >= 4 => {
            let t = typmod - 4;
            let precision = (t >> 16) & 0xffff;
            let scale = ((t & 0x7ff) ^ 1024) - 1024;
            format!("numeric({precision},{scale})")
        }
        // bit(n), bit varying(n): typmod = n.
        1560 | 1562 => format!("{name}({typmod})"),
        // time(p)/timestamp(p) [with|without] time zone: typmod = p.
        1083 => format!("time({typmod}) without time zone"),
        1266 => format!("time({typmod}) with time zone"),
        1114 => format!("timestamp({typmod}) without time zone"),
        1184 => format!("timestamp({typmod}) with time zone"),
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::{key_tuple_to_row, old_tuple_to_row, text_cells_to_row, tuple_to_row};
    use crate::pgoutput::build::{relation, Msg};
    use crate::pgoutput::{decode, PgMessage};
    use tidemark_core::envelope::CanonicalType;
    use tidemark_core::value::Value;

    fn naming() -> Naming {
        Naming {
            pipeline: "shop".into(),
            connector: "postgres",
            subject_prefix: "tidemark".into(),
        }
    }

    fn rel_of(buf: &[u8]) -> Relation<'_> {
        match decode(buf) {
            Ok(PgMessage::Relation(r)) => r,
            other => panic!("not a relation: {other:?}"),
        }
    }

    fn catalog() -> TypeCatalog {
        // oid, name, category, elem, base, typtype, delim (space-separated).
        let rows = [
            "70000 mood E 0 0 e ,",
            "70001 mood[] A 70000 0 b ,",
            "70002 money_amount N 0 1700 d ,",
            "70003 citext S 0 0 b ,",
            "70004 citext[] A 70003 0 b ,",
            "70005 int_list A 0 1007 d ,",
            "23 integer N 0 0 b ,",
            "1007 integer[] A 23 0 b ,",
            "22 int2vector A 21 0 b ,",
        ];
        let rows: Vec<Vec<Option<&str>>> = rows
            .iter()
            .map(|r| r.split(' ').map(Some).collect())
            .collect();
        TypeCatalog::from_text_rows(&rows).unwrap()
    }

    #[test]
    fn catalog_rows_parse_and_reject() {
        let cat = catalog();
        assert_eq!(cat.len(), 9);
        assert_eq!(cat.get(70002).unwrap().base_oid, 1700);
        assert_eq!(
            TypeInfo::from_text_row(&[Some("1")]),
            Err(CatalogError::ColumnCount { got: 1 })
        );
        let bad = [
            Some("x"),
            Some("n"),
            Some("A"),
            Some("0"),
            Some("0"),
            Some("b"),
            Some(","),
        ];
        assert!(matches!(
            TypeInfo::from_text_row(&bad),
            Err(CatalogError::BadValue { column: "oid", .. })
        ));
        let null_name = [
            Some("1"),
            None,
            Some("A"),
            Some("0"),
            Some("0"),
            Some("b"),
            Some(","),
        ];
        assert!(TypeInfo::from_text_row(&null_name).is_err());
    }

    #[test]
    fn builtin_names_and_typmods() {
        let c = RelCache::new(naming(), "shop");
        assert_eq!(c.type_name(1043, 24), "character varying(20)");
        assert_eq!(c.type_name(1043, -1), "character varying");
        assert_eq!(c.type_name(1042, 5), "character(1)");
        assert_eq!(c.type_name(1700, (10 << 16 | 2) + 4), "numeric(10,2)");
        assert_eq!(c.type_name(1700, -1), "numeric");
        assert_eq!(c.type_name(1184, 3), "timestamp(3) with time zone");
        assert_eq!(c.type_name(1562, 8), "bit varying(8)");
        assert_eq!(c.type_name(1015, 24), "character varying(20)[]");
        assert_eq!(c.type_name(1007, -1), "integer[]");
        assert_eq!(c.type_name(99, -1), "unknown (oid 99)");
        let t = c.resolve_type(1020, -1);
        assert_eq!(
            t.kind,
            ValueKind::Array {
                element: Box::new(ValueKind::Other),
                delimiter: b';'
            }
        );
        assert_eq!(t.source_type, "box[]");
    }

    #[test]
    fn catalog_resolves_enums_domains_extensions() {
        let mut c = RelCache::new(naming(), "shop");
        c.set_catalog(catalog());
        let mood = c.resolve_type(70000, -1);
        assert_eq!(
            (mood.kind, mood.source_type.as_str()),
            (ValueKind::String, "mood")
        );
        let moods = c.resolve_type(70001, -1);
        assert_eq!(moods.kind.element_canonical(), Some(CanonicalType::String));
        assert_eq!(moods.source_type, "mood[]");
        let dom = c.resolve_type(70002, -1);
        assert_eq!(
            (dom.kind, dom.source_type.as_str()),
            (ValueKind::Numeric, "money_amount")
        );
        assert_eq!(c.resolve_type(70003, -1).kind, ValueKind::String);
        assert_eq!(
            c.resolve_type(70004, -1).kind.element_canonical(),
            Some(CanonicalType::String)
        );
        // Domain over an array.
        let list = c.resolve_type(70005, -1);
        assert_eq!(list.kind.canonical(), CanonicalType::Array);
        assert_eq!(list.source_type, "int_list");
        // int2vector is category 'A' but not an array literal: passed through as text.
        let v = c.resolve_type(22, -1);
        assert_eq!(
            (v.kind, v.source_type.as_str()),
            (ValueKind::Other, "int2vector")
        );
        // Catalog entry for a built-in keeps the typmod rendering.
        assert_eq!(c.type_name(1007, -1), "integer[]");
    }

    #[test]
    fn type_messages_without_catalog() {
        let mut c = RelCache::new(naming(), "shop");
        let y = Msg::tag(b'Y').u32(80000).cstr("public").cstr("citext").0;
        let PgMessage::Type(t) = decode(&y).unwrap() else {
            panic!()
        };
        assert!(c.apply_type(&t), "catalog lacks it");
        assert_eq!(c.resolve_type(80000, -1).kind, ValueKind::String);
        let y = Msg::tag(b'Y').u32(80001).cstr("inventory").cstr("mood").0;
        let PgMessage::Type(t) = decode(&y).unwrap() else {
            panic!()
        };
        c.apply_type(&t);
        let mood = c.resolve_type(80001, -1);
        assert_eq!(
            (mood.kind, mood.source_type.as_str()),
            (ValueKind::Other, "inventory.mood")
        );
        let buf = relation(1, "public", "t", &[(1, "id", 23, -1), (0, "m", 80002, -1)]);
        assert_eq!(c.missing_types(&rel_of(&buf)), vec![80002]);
        let mut c2 = RelCache::new(naming(), "shop");
        c2.set_catalog(catalog());
        let y = Msg::tag(b'Y').u32(70000).cstr("public").cstr("mood").0;
        let PgMessage::Type(t) = decode(&y).unwrap() else {
            panic!()
        };
        assert!(!c2.apply_type(&t), "catalog knows it");
    }

    #[test]
    fn relation_builds_table_meta_and_overwrites() {
        let mut c = RelCache::new(naming(), "shop");
        let buf = relation(
            16384,
            "public",
            "orders",
            &[
                (1, "id", 20, -1),
                (0, "note", 1043, 24),
                (0, "tags", 1009, -1),
            ],
        );
        let t = c.apply_relation(&rel_of(&buf));
        assert_eq!(
            (t.db.as_str(), t.schema.as_str(), t.table.as_str()),
            ("shop", "public", "orders")
        );
        assert_eq!(t.key, vec![0]);
        assert_eq!(t.columns[0].ty, CanonicalType::Int64);
        assert!(t.columns[0].pk && !t.columns[0].nullable);
        assert_eq!(t.columns[1].source_type, "character varying(20)");
        assert_eq!(t.columns[2].ty, CanonicalType::Array);
        assert_eq!(t.columns[2].element, Some(CanonicalType::String));
        assert_eq!(t.subject.as_str(), "tidemark.shop.public.orders");
        // Same relation again: same Arc.
        let again = c.apply_relation(&rel_of(&buf));
        assert!(Arc::ptr_eq(&t, &again));
        // ALTER TABLE ADD COLUMN: overwritten.
        let buf2 = relation(
            16384,
            "public",
            "orders",
            &[
                (1, "id", 20, -1),
                (0, "note", 1043, 24),
                (0, "tags", 1009, -1),
                (0, "n", 23, -1),
            ],
        );
        let t2 = c.apply_relation(&rel_of(&buf2));
        assert_eq!(t2.columns.len(), 4);
        assert_ne!(t2.version, t.version);
        assert_eq!(c.table(16384).unwrap().columns.len(), 4);
        assert_eq!(c.len(), 1);
        assert!(c.table(1).is_none());
    }

    #[test]
    fn snapshot_and_stream_agree() {
        let buf = relation(7, "public", "t", &[(1, "id", 23, -1), (0, "v", 25, -1)]);
        let mut a = RelCache::new(naming(), "shop");
        let ta = a.apply_relation(&rel_of(&buf));
        let mut b = RelCache::new(naming(), "shop");
        let tb = b.apply_relation_info(RelationInfo {
            oid: 7,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                RelationColumnInfo {
                    name: "id".into(),
                    type_oid: 23,
                    type_modifier: -1,
                    key: true,
                },
                RelationColumnInfo {
                    name: "v".into(),
                    type_oid: 25,
                    type_modifier: -1,
                    key: false,
                },
            ],
        });
        assert_eq!(ta.version, tb.version);
        let entry = b.relation(7).unwrap();
        let row = text_cells_to_row(entry, [Some("5"), None]).unwrap();
        assert_eq!(row, vec![Some(Value::Int(5)), Some(Value::Null)]);
        assert!(text_cells_to_row(entry, [Some("5")]).is_err());
        assert!(text_cells_to_row(entry, [Some("x"), None]).is_err());
    }

    #[test]
    fn full_identity_uses_primary_key_override() {
        let mut c = RelCache::new(naming(), "shop");
        let buf = Msg::tag(b'R')
            .u32(9)
            .cstr("public")
            .cstr("f")
            .u8(b'f')
            .i16(2)
            .u8(1)
            .cstr("id")
            .u32(23)
            .i32(-1)
            .u8(1)
            .cstr("v")
            .u32(25)
            .i32(-1)
            .0;
        let t = c.apply_relation(&rel_of(&buf));
        assert_eq!(t.key, vec![0, 1], "pgoutput flags every column under FULL");
        c.set_primary_key(9, vec!["id".into()]);
        assert_eq!(c.table(9).unwrap().key, vec![0]);
    }

    #[test]
    fn rows_from_tuples() {
        let mut c = RelCache::new(naming(), "shop");
        c.set_catalog(catalog());
        let buf = relation(
            1,
            "public",
            "t",
            &[
                (1, "id", 20, -1),
                (0, "big", 25, -1),
                (0, "m", 70000, -1),
                (0, "d", 70002, -1),
            ],
        );
        c.apply_relation(&rel_of(&buf));
        let entry = c.relation(1).unwrap();
        let upd = Msg::tag(b'U')
            .u32(1)
            .u8(b'K')
            .tuple(&[Some(Some("41")), None, None, None])
            .u8(b'N')
            .tuple(&[Some(Some("42")), Some(None), Some(Some("happy")), None])
            .0;
        let PgMessage::Update(u) = decode(&upd).unwrap() else {
            panic!()
        };
        let after = tuple_to_row(entry, &u.new).unwrap();
        assert_eq!(
            after,
            vec![
                Some(Value::Int(42)),
                None,
                Some(Value::Text("happy".into())),
                Some(Value::Null)
            ]
        );
        let before = old_tuple_to_row(entry, u.old.as_ref().unwrap()).unwrap();
        assert_eq!(before, vec![Some(Value::Int(41)), None, None, None]);
        // A full old tuple keeps NULLs as NULL.
        let full = crate::pgoutput::OldTuple::Full(u.old.as_ref().unwrap().tuple().clone());
        assert_eq!(
            old_tuple_to_row(entry, &full).unwrap(),
            vec![
                Some(Value::Int(41)),
                Some(Value::Null),
                Some(Value::Null),
                Some(Value::Null)
            ]
        );
        assert_eq!(
            key_tuple_to_row(entry, u.old.as_ref().unwrap().tuple()).unwrap(),
            before
        );
        // Domain over numeric converts as numeric.
        let ins = Msg::tag(b'I')
            .u32(1)
            .u8(b'N')
            .tuple(&[
                Some(Some("1")),
                Some(Some("x")),
                Some(Some("sad")),
                Some(Some("12.50")),
            ])
            .0;
        let PgMessage::Insert(i) = decode(&ins).unwrap() else {
            panic!()
        };
        let row = tuple_to_row(entry, &i.new).unwrap();
        assert_eq!(row[3], Some(Value::Decimal("12.50".into())));
        assert_eq!(entry.table.columns[3].ty, CanonicalType::Decimal);
        assert_eq!(entry.table.columns[3].source_type, "money_amount");
    }

    #[test]
    fn decode_and_convert_throughput() {
        // The walsender tops out near 150k rows/s; decode + convert must stay well ahead.
        // Debug builds are ~10x slower than release, so the bound here is generous.
        let mut c = RelCache::new(naming(), "shop");
        let cols = [
            (1, "id", 20, -1),
            (0, "name", 1043, 68),
            (0, "price", 1700, -1),
            (0, "qty", 23, -1),
            (0, "at", 1184, -1),
            (0, "ok", 16, -1),
            (0, "doc", 3802, -1),
            (0, "tags", 1009, -1),
        ];
        let buf = relation(1, "public", "orders", &cols);
        c.apply_relation(&rel_of(&buf));
        let entry = c.relation(1).unwrap();
        let ins = Msg::tag(b'I')
            .u32(1)
            .u8(b'N')
            .tuple(&[
                Some(Some("123456789")),
                Some(Some("a customer name")),
                Some(Some("1234.50")),
                Some(Some("7")),
                Some(Some("2024-02-29 12:45:00.123456+00")),
                Some(Some("t")),
                Some(Some("{\"a\": 1, \"b\": [true, null]}")),
                Some(Some("{red,green,\"blue sky\"}")),
            ])
            .0;
        let n = 150_000;
        let start = std::time::Instant::now();
        let mut out = Vec::new();
        for _ in 0..n {
            let Ok(PgMessage::Insert(i)) = decode(std::hint::black_box(&ins)) else {
                panic!("decode")
            };
            let row = tuple_to_row(entry, &i.new).unwrap();
            out.clear();
            for v in row.iter().flatten() {
                v.write_json(&mut out);
            }
        }
        let elapsed = start.elapsed();
        eprintln!(
            "decode+convert+render: {n} rows in {elapsed:?} ({:.0} rows/s)",
            n as f64 / elapsed.as_secs_f64()
        );
        assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");
    }

    #[test]
    fn row_errors_name_the_column() {
        let mut c = RelCache::new(naming(), "shop");
        let buf = relation(1, "public", "t", &[(1, "id", 20, -1), (0, "b", 17, -1)]);
        c.apply_relation(&rel_of(&buf));
        let entry = c.relation(1).unwrap();
        let ins = Msg::tag(b'I')
            .u32(1)
            .u8(b'N')
            .tuple(&[Some(Some("99999999999999999999")), None])
            .0;
        let PgMessage::Insert(i) = decode(&ins).unwrap() else {
            panic!()
        };
        let e = tuple_to_row(entry, &i.new).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("public.t") && text.contains("\"id\"") && text.contains("bigint"),
            "{text}"
        );
        // Too few cells.
        let ins = Msg::tag(b'I').u32(1).u8(b'N').tuple(&[Some(Some("1"))]).0;
        let PgMessage::Insert(i) = decode(&ins).unwrap() else {
            panic!()
        };
        assert!(matches!(
            tuple_to_row(entry, &i.new),
            Err(crate::convert::ConvertError::ColumnCount {
                got: 1,
                expected: 2,
                ..
            })
        ));
        // Binary cells are refused.
        let ins = Msg::tag(b'I')
            .u32(1)
            .u8(b'N')
            .i16(2)
            .u8(b'b')
            .i32(8)
            .raw(&[0; 8])
            .u8(b'n')
            .0;
        let PgMessage::Insert(i) = decode(&ins).unwrap() else {
            panic!()
        };
        assert!(matches!(
            tuple_to_row(entry, &i.new),
            Err(crate::convert::ConvertError::Column { source, .. })
                if *source == crate::convert::ValueError::BinaryFormat
        ));
        // Invalid UTF-8 text.
        let ins = Msg::tag(b'I')
            .u32(1)
            .u8(b'N')
            .i16(2)
            .u8(b't')
            .i32(1)
            .raw(&[0xff])
            .u8(b'n')
            .0;
        let PgMessage::Insert(i) = decode(&ins).unwrap() else {
            panic!()
        };
        assert!(matches!(
            tuple_to_row(entry, &i.new),
            Err(crate::convert::ConvertError::Column { source, .. })
                if matches!(*source, crate::convert::ValueError::NotUtf8 { .. })
        ));
    }
}
