//! What the target table looks like, read from information_schema.
//!
//! The column type decides how a canonical value is written as a SQL literal (see
//! [`crate::convert`]); MariaDB's JSON is a LONGTEXT with a `json_valid` check, which only
//! `CHECK_CONSTRAINTS` reveals. Cached per session, reloaded when an envelope carries a new
//! schema version or names a column the cache does not know.

use crate::client::qualified;
use crate::error::MySinkError;
use mysql_async::prelude::Queryable as _;
use mysql_async::Conn;

/// How a value is rendered for a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Integer types (TINYINT(1) included: booleans become 1/0).
    Integer,
    /// DECIMAL.
    Decimal,
    /// FLOAT / DOUBLE (no NaN or infinities in MySQL).
    Float,
    /// BIT(n).
    Bit,
    /// DATETIME / TIMESTAMP.
    DateTime,
    /// BINARY / VARBINARY / BLOB.
    Binary,
    /// JSON (or LONGTEXT with json_valid).
    Json,
    /// SET.
    Set,
    /// Everything else: character data, DATE, TIME, YEAR, ENUM.
    Text,
}

/// One target column.
#[derive(Debug, Clone)]
pub(crate) struct TargetColumn {
    /// Column name.
    pub name: String,
    /// Full column type (`varchar(20)`), for messages.
    pub column_type: String,
    /// Rendering rule.
    pub kind: Kind,
    /// `binary(16)`: uuids go in as 16 bytes.
    pub binary16: bool,
    /// Part of the primary key.
    pub pk: bool,
    /// Generated column: never written.
    pub generated: bool,
}

/// One target table.
#[derive(Debug)]
pub(crate) struct TargetTable {
    /// `` `db`.`table` ``.
    pub qualified: String,
    /// Columns in ordinal order.
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

fn kind_of(data_type: &str, charset: Option<&str>, json: bool) -> Kind {
    match data_type {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" => {
            Kind::Integer
        }
        "decimal" | "numeric" => Kind::Decimal,
        "float" | "double" | "real" => Kind::Float,
        "bit" => Kind::Bit,
        "datetime" | "timestamp" => Kind::DateTime,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Kind::Binary,
        "json" => Kind::Json,
        "set" => Kind::Set,
        _ if json => Kind::Json,
        _ if charset == Some("binary") => Kind::Binary,
        _ => Kind::Text,
    }
}

const COLUMNS_SQL: &str = "\
SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, COLUMN_KEY = 'PRI', EXTRA LIKE '%GENERATED%', CHARACTER_SET_NAME
  FROM information_schema.COLUMNS
 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?
 ORDER BY ORDINAL_POSITION";

const JSON_CHECKS_SQL: &str = "\
SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS
 WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ? AND CHECK_CLAUSE LIKE '%json_valid%'";

type ColumnRow = (String, String, String, i64, i64, Option<String>);

/// Reads the description of `db.table`; `None` when it does not exist.
pub(crate) async fn load(
    conn: &mut Conn,
    db: &str,
    table: &str,
) -> Result<Option<TargetTable>, MySinkError> {
    let q = qualified(db, table);
    let raw: Vec<mysql_async::Row> =
        conn.exec(COLUMNS_SQL, (db, table))
            .await
            .map_err(|source| MySinkError::Sql {
                context: format!("reading the columns of {q}"),
                source,
            })?;
    let rows: Vec<ColumnRow> = raw
        .into_iter()
        .map(|r| {
            let text = |i: usize| -> String {
                r.get_opt::<Option<String>, usize>(i)
                    .and_then(Result::ok)
                    .flatten()
                    .unwrap_or_default()
            };
            let int = |i: usize| -> i64 {
                r.get_opt::<Option<i64>, usize>(i)
                    .and_then(Result::ok)
                    .flatten()
                    .unwrap_or(0)
            };
            let charset = r
                .get_opt::<Option<String>, usize>(5)
                .and_then(Result::ok)
                .flatten();
            (text(0), text(1), text(2), int(3), int(4), charset)
        })
        .collect();
    if rows.is_empty() {
        return Ok(None);
    }
    // MariaDB JSON columns are LONGTEXT with CHECK (json_valid(`col`)); MySQL 8 has no
    // TABLE_NAME here and a real JSON type, so a failure is ignored.
    let checks: Vec<String> = conn
        .exec::<mysql_async::Row, _, _>(JSON_CHECKS_SQL, (db, table))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| {
            r.get_opt::<Option<String>, usize>(0)
                .and_then(Result::ok)
                .flatten()
        })
        .collect();
    let columns: Vec<TargetColumn> = rows
        .into_iter()
        .map(|(name, data_type, column_type, pk, generated, charset)| {
            let needle = format!("json_valid({})", crate::client::quote_ident(&name));
            let json = checks.iter().any(|c| c.contains(&needle));
            let data_type = data_type.to_ascii_lowercase();
            let column_type = column_type.to_ascii_lowercase();
            TargetColumn {
                kind: kind_of(&data_type, charset.as_deref(), json),
                binary16: column_type == "binary(16)",
                name,
                column_type,
                pk: pk != 0,
                generated: generated != 0,
            }
        })
        .collect();
    let pk = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.pk)
        .map(|(i, _)| i)
        .collect();
    Ok(Some(TargetTable {
        qualified: q,
        columns,
        pk,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind_of("longtext", Some("utf8mb4"), true), Kind::Json);
        assert_eq!(kind_of("longtext", Some("utf8mb4"), false), Kind::Text);
        assert_eq!(kind_of("varbinary", None, false), Kind::Binary);
        assert_eq!(kind_of("timestamp", None, false), Kind::DateTime);
    }
}
