//! What the target table looks like, read from pg_catalog.
//!
//! Values are sent as text and cast to the column's type *by name without typmod*
//! (`"pg_catalog"."varchar"`, `"pg_catalog"."_int4"`): an explicit cast to `varchar(5)` or
//! `character(1)` would silently truncate, while the assignment to the column afterwards
//! enforces the typmod with an error. The description is cached per session and reloaded when
//! an envelope carries a new schema version.

use crate::client::{qualified, quote_ident};
use crate::error::PgSinkError;
use tokio_postgres::Client;

/// How a canonical JSON value must be rendered for a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// boolean.
    Bool,
    /// Numbers (integers, numeric, floats, money).
    Number,
    /// bytea.
    Bytes,
    /// json / jsonb.
    Json,
    /// `json` (no equality operator: compared as text).
    JsonPlain,
    /// An array; elements rendered per the element kind.
    Array(Box<Kind>),
    /// Anything else: the type's text input function parses the canonical string.
    Text,
}

/// One target column.
#[derive(Debug, Clone)]
pub(crate) struct TargetColumn {
    /// Column name.
    pub name: String,
    /// `"nsp"."typname"`: the cast target (no typmod).
    pub cast: String,
    /// `format_type` output, for messages.
    pub display: String,
    /// Rendering rule.
    pub kind: Kind,
    /// Part of the primary key.
    pub pk: bool,
    /// Generated column: never written.
    pub generated: bool,
}

/// One target table.
#[derive(Debug)]
pub(crate) struct TargetTable {
    /// `"schema"."table"`.
    pub qualified: String,
    /// Columns in attnum order.
    pub columns: Vec<TargetColumn>,
    /// Indexes of the primary-key columns.
    pub pk: Vec<usize>,
}

impl TargetTable {
    /// Index of column `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

fn kind_of(typname: &str, category: &str, elem: Option<(&str, &str)>) -> Kind {
    match (typname, category) {
        ("bool", _) => Kind::Bool,
        ("bytea", _) => Kind::Bytes,
        ("jsonb", _) => Kind::Json,
        ("json", _) => Kind::JsonPlain,
        (_, "N") => Kind::Number,
        (_, "A") => match elem {
            Some((et, ec)) => Kind::Array(Box::new(kind_of(et, ec, None))),
            None => Kind::Array(Box::new(Kind::Text)),
        },
        _ => Kind::Text,
    }
}

const COLUMNS_SQL: &str = "\
SELECT a.attname::text, tn.nspname::text, t.typname::text,
       coalesce(bt.typname, t.typname)::text AS basename,
       coalesce(bt.typcategory, t.typcategory)::text AS category,
       et.typname::text AS elemname, et.typcategory::text AS elemcategory,
       format_type(a.atttypid, a.atttypmod) AS display,
       a.attgenerated <> '' AS generated,
       coalesce(a.attnum = ANY (i.indkey), false) AS pk
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
  LEFT JOIN pg_catalog.pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
  LEFT JOIN pg_catalog.pg_type et ON et.oid = coalesce(bt.typelem, t.typelem)
        AND coalesce(bt.typcategory, t.typcategory) = 'A'
  LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary
 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
 ORDER BY a.attnum";

/// Reads the description of `schema.table`; `None` when it does not exist.
pub(crate) async fn load(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Option<TargetTable>, PgSinkError> {
    let qualified_name = qualified(schema, table);
    let rows = client
        .query(COLUMNS_SQL, &[&schema, &table])
        .await
        .map_err(|source| PgSinkError::Sql {
            context: format!("reading the columns of {qualified_name}"),
            source,
        })?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut columns = Vec::with_capacity(rows.len());
    for row in &rows {
        let get = |i: usize| -> Result<String, PgSinkError> {
            row.try_get::<_, Option<String>>(i)
                .map(Option::unwrap_or_default)
                .map_err(|source| PgSinkError::Sql {
                    context: format!("reading the columns of {qualified_name}"),
                    source,
                })
        };
        let name = get(0)?;
        let nsp = get(1)?;
        let typname = get(2)?;
        let base = get(3)?;
        let category = get(4)?;
        let elemname = get(5)?;
        let elemcat = get(6)?;
        let display = get(7)?;
        let generated: bool = row.try_get(8).unwrap_or(false);
        let pk: bool = row.try_get(9).unwrap_or(false);
        let elem = if elemname.is_empty() {
            None
        } else {
            Some((elemname.as_str(), elemcat.as_str()))
        };
        columns.push(TargetColumn {
            cast: format!("{}.{}", quote_ident(&nsp), quote_ident(&typname)),
            kind: kind_of(&base, &category, elem),
            name,
            display,
            pk,
            generated,
        });
    }
    let pk = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.pk)
        .map(|(i, _)| i)
        .collect();
    Ok(Some(TargetTable {
        qualified: qualified_name,
        columns,
        pk,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind_of("int4", "N", None), Kind::Number);
        assert_eq!(kind_of("jsonb", "U", None), Kind::Json);
        assert_eq!(
            kind_of("_int4", "A", Some(("int4", "N"))),
            Kind::Array(Box::new(Kind::Number))
        );
        assert_eq!(kind_of("timestamptz", "D", None), Kind::Text);
    }
}
