//! Type matrix and pgoutput edge cases against the real Postgres, through the decoding half
//! only (`pgoutput` + `relcache` + `convert`), independent of the streaming code.
//!
//! Each test makes its own database, a publication and a `pgoutput` logical slot, changes
//! rows, reads the raw protocol messages with `pg_logical_slot_get_binary_changes` (the SQL
//! interface renders values with the *calling* session's settings, so the session is pinned
//! exactly like the walsender: UTC, ISO, iso_8601, extra_float_digits=3, hex bytea) and
//! checks the canonical JSON of every column. Database and slot are dropped afterwards, also
//! when an assertion fails.

use crate::common::{pg_connect, pg_create_db, pg_drop_db, unique};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tidemark_core::envelope::{
    CanonicalType, Change, Encoder, Envelope, Naming, Op, Row, TableMeta, TxInfo,
};
use tidemark_postgres_source::convert::{old_tuple_to_row, text_cells_to_row, tuple_to_row};
use tidemark_postgres_source::pgoutput::{self, OldTuple, PgMessage, ReplicaIdentity};
use tidemark_postgres_source::relcache::{
    RelCache, RelationColumnInfo, RelationInfo, TypeCatalog, PRIMARY_KEY_QUERY,
    RELATION_COLUMNS_QUERY, TYPE_CATALOG_QUERY,
};
use tokio_postgres::{Client, SimpleQueryMessage};

const SESSION: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; \
    SET IntervalStyle = 'iso_8601'; SET extra_float_digits = 3; SET bytea_output = 'hex'";

fn naming() -> Naming {
    Naming {
        pipeline: "types".into(),
        connector: "postgres",
        subject_prefix: "tidemark".into(),
    }
}

/// Runs `body` with a fresh database (and a connection to it with the pinned session);
/// drops the database and its slots afterwards, then re-raises a failure.
async fn with_db<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(String, Client) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let db = unique(prefix);
    pg_create_db(&db).await;
    let client = pg_connect(&db).await;
    client.batch_execute(SESSION).await.expect("pin session");
    let result = tokio::spawn(body(db.clone(), client)).await;
    pg_drop_db(&db).await;
    if let Err(e) = result {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("test task failed: {e}");
    }
}

/// Creates publication `pub` for all tables and a pgoutput slot; returns the slot name.
async fn publish(client: &Client, db: &str) -> String {
    let slot = format!("{db}_slot");
    client
        .batch_execute("CREATE PUBLICATION pub FOR ALL TABLES")
        .await
        .expect("create publication");
    // Slot creation waits for every open transaction in the cluster: bound it.
    tokio::time::timeout(
        Duration::from_secs(120),
        client.batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
        )),
    )
    .await
    .expect("slot creation timed out (a long transaction elsewhere?)")
    .expect("create slot");
    slot
}

/// Consumes the slot's pending changes as raw pgoutput messages.
async fn changes(client: &Client, slot: &str) -> Vec<Vec<u8>> {
    client
        .query(
            &format!(
                "SELECT data FROM pg_logical_slot_get_binary_changes('{slot}', NULL, NULL, \
                 'proto_version', '1', 'publication_names', 'pub')"
            ),
            &[],
        )
        .await
        .expect("get binary changes")
        .iter()
        .map(|r| r.get::<_, Vec<u8>>(0))
        .collect()
}

/// Text rows of a simple query.
async fn text_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

async fn load_catalog(client: &Client) -> TypeCatalog {
    let rows = text_rows(client, TYPE_CATALOG_QUERY).await;
    let borrowed: Vec<Vec<Option<&str>>> = rows
        .iter()
        .map(|r| r.iter().map(Option::as_deref).collect())
        .collect();
    let catalog = TypeCatalog::from_text_rows(&borrowed).expect("type catalog parses");
    assert!(catalog.len() > 100, "catalog has {} types", catalog.len());
    catalog
}

/// A decoded row change, owned.
#[derive(Debug)]
enum Ev {
    Insert {
        table: Arc<TableMeta>,
        row: Row,
    },
    Update {
        table: Arc<TableMeta>,
        before: Option<Row>,
        key_only: bool,
        after: Row,
    },
    Delete {
        table: Arc<TableMeta>,
        before: Row,
        key_only: bool,
    },
    Truncate {
        tables: Vec<String>,
        cascade: bool,
        restart_identity: bool,
    },
}

/// Decodes messages in order through the real decoder, cache and converters. A Type message
/// the catalog does not know triggers a catalog re-read, as the stream does.
async fn decode_all(client: &Client, cache: &mut RelCache, msgs: &[Vec<u8>]) -> Vec<Ev> {
    let mut out = Vec::new();
    let mut in_tx = false;
    for buf in msgs {
        let msg = pgoutput::decode(buf).unwrap_or_else(|e| panic!("decode {buf:?}: {e}"));
        match msg {
            PgMessage::Begin(b) => {
                assert!(!in_tx, "nested Begin");
                assert!(b.xid > 0 && b.final_lsn > 0);
                assert!(pgoutput::pg_micros_to_unix_ms(b.commit_ts) > 1_600_000_000_000);
                in_tx = true;
            }
            PgMessage::Commit(c) => {
                assert!(in_tx, "Commit without Begin");
                assert!(c.end_lsn > c.commit_lsn);
                in_tx = false;
            }
            PgMessage::Type(t) => {
                if cache.apply_type(&t) {
                    let catalog = load_catalog(client).await;
                    cache.set_catalog(catalog);
                }
            }
            PgMessage::Relation(r) => {
                cache.apply_relation(&r);
            }
            PgMessage::Insert(i) => {
                let entry = cache.relation(i.rel_oid).expect("relation before insert");
                let row = tuple_to_row(entry, &i.new).unwrap_or_else(|e| panic!("{e}"));
                out.push(Ev::Insert {
                    table: entry.table.clone(),
                    row,
                });
            }
            PgMessage::Update(u) => {
                let entry = cache.relation(u.rel_oid).expect("relation before update");
                let before = u
                    .old
                    .as_ref()
                    .map(|o| old_tuple_to_row(entry, o).unwrap_or_else(|e| panic!("{e}")));
                out.push(Ev::Update {
                    table: entry.table.clone(),
                    key_only: matches!(u.old, Some(OldTuple::Key(_))),
                    before,
                    after: tuple_to_row(entry, &u.new).unwrap_or_else(|e| panic!("{e}")),
                });
            }
            PgMessage::Delete(d) => {
                let entry = cache.relation(d.rel_oid).expect("relation before delete");
                out.push(Ev::Delete {
                    table: entry.table.clone(),
                    key_only: matches!(d.old, OldTuple::Key(_)),
                    before: old_tuple_to_row(entry, &d.old).unwrap_or_else(|e| panic!("{e}")),
                });
            }
            PgMessage::Truncate(t) => out.push(Ev::Truncate {
                tables: t
                    .rel_oids
                    .iter()
                    .map(|oid| {
                        cache
                            .table(*oid)
                            .expect("relation before truncate")
                            .table
                            .clone()
                    })
                    .collect(),
                cascade: t.cascade(),
                restart_identity: t.restart_identity(),
            }),
            PgMessage::Origin(_) | PgMessage::Message(_) => {}
        }
    }
    assert!(!in_tx, "changes end inside a transaction");
    out
}

/// Column name → canonical JSON (`None` = absent).
fn rendered(table: &TableMeta, row: &Row) -> BTreeMap<String, Option<String>> {
    table
        .columns
        .iter()
        .zip(row)
        .map(|(c, v)| (c.name.clone(), v.as_ref().map(|v| v.to_json_string())))
        .collect()
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

/// (column, SQL type, SQL literal, expected canonical JSON). `None` as expected means "the
/// server's own text rendering, as a JSON string" (pass-through types).
const MATRIX: &[(&str, &str, &str, Option<&str>)] = &[
    ("c_bool", "boolean", "true", Some("true")),
    ("c_int2", "smallint", "-32768", Some("-32768")),
    ("c_int4", "integer", "2147483647", Some("2147483647")),
    (
        "c_int8_min",
        "bigint",
        "-9223372036854775808",
        Some("-9223372036854775808"),
    ),
    (
        "c_int8_max",
        "bigint",
        "9223372036854775807",
        Some("9223372036854775807"),
    ),
    ("c_oid", "oid", "4294967295", Some("4294967295")),
    (
        "c_numeric",
        "numeric",
        "1234567890123456789012345678901234567890.0123456789",
        Some("\"1234567890123456789012345678901234567890.0123456789\""),
    ),
    (
        "c_numeric_scale",
        "numeric(10,2)",
        "12.3",
        Some("\"12.30\""),
    ),
    ("c_numeric_nan", "numeric", "'NaN'", Some("\"NaN\"")),
    (
        "c_numeric_inf",
        "numeric",
        "'-Infinity'",
        Some("\"-Infinity\""),
    ),
    ("c_float4", "real", "1.1", Some("1.1")),
    (
        "c_float4_max",
        "real",
        "'3.4028235e38'",
        Some("3.4028235e38"),
    ),
    ("c_float8", "double precision", "0.1", Some("0.1")),
    (
        "c_float8_max",
        "double precision",
        "'1.7976931348623157e308'",
        Some("1.7976931348623157e308"),
    ),
    (
        "c_float8_tiny",
        "double precision",
        "'5e-324'",
        Some("5e-324"),
    ),
    ("c_float8_negzero", "double precision", "'-0'", Some("-0.0")),
    (
        "c_float8_inf",
        "double precision",
        "'Infinity'",
        Some("\"Infinity\""),
    ),
    ("c_float8_nan", "double precision", "'NaN'", Some("\"NaN\"")),
    (
        "c_text",
        "text",
        "E'h\\u00e9llo \"world\" \\\\ end\\n'",
        Some("\"héllo \\\"world\\\" \\\\ end\\n\""),
    ),
    ("c_varchar", "varchar(20)", "'abc'", Some("\"abc\"")),
    ("c_bpchar", "char(5)", "'ab'", Some("\"ab   \"")),
    ("c_name", "name", "'nm'", Some("\"nm\"")),
    (
        "c_bytea",
        "bytea",
        "'\\x00ff0000'::bytea",
        Some("\"AP8AAA==\""),
    ),
    ("c_bytea_empty", "bytea", "''::bytea", Some("\"\"")),
    (
        "c_json",
        "json",
        "'{\"b\": [1, 2], \"a\": \"ü☃\"}'",
        Some("{\"b\": [1, 2], \"a\": \"ü☃\"}"),
    ),
    (
        "c_jsonb",
        "jsonb",
        "'{\"b\": [1, 2.50], \"a\": \"ü☃\", \"n\": null}'",
        Some("{\"a\": \"ü☃\", \"b\": [1, 2.50], \"n\": null}"),
    ),
    (
        "c_uuid",
        "uuid",
        "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
        Some("\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""),
    ),
    ("c_date", "date", "'2024-02-29'", Some("\"2024-02-29\"")),
    (
        "c_date_bc",
        "date",
        "'0044-03-15 BC'",
        Some("\"0044-03-15 BC\""),
    ),
    ("c_date_inf", "date", "'infinity'", Some("\"infinity\"")),
    (
        "c_time",
        "time",
        "'13:45:00.123456'",
        Some("\"13:45:00.123456\""),
    ),
    (
        "c_timetz",
        "timetz",
        "'13:45:00+02'",
        Some("\"13:45:00+02\""),
    ),
    (
        "c_ts",
        "timestamp",
        "'2024-02-29 13:45:00.123456'",
        Some("\"2024-02-29T13:45:00.123456\""),
    ),
    ("c_ts_inf", "timestamp", "'infinity'", Some("\"infinity\"")),
    (
        "c_ts_bc",
        "timestamp",
        "'0044-03-15 12:00:00 BC'",
        Some("\"0044-03-15T12:00:00 BC\""),
    ),
    (
        "c_tstz",
        "timestamptz",
        "'2024-03-01 00:45:00.5+01'",
        Some("\"2024-02-29T23:45:00.5Z\""),
    ),
    (
        "c_tstz_whole",
        "timestamptz(0)",
        "'2024-02-29 12:45:00Z'",
        Some("\"2024-02-29T12:45:00Z\""),
    ),
    (
        "c_tstz_neginf",
        "timestamptz",
        "'-infinity'",
        Some("\"-infinity\""),
    ),
    (
        "c_interval",
        "interval",
        "'1 year 2 months 3 days 04:05:06.5'",
        Some("\"P1Y2M3DT4H5M6.5S\""),
    ),
    ("c_interval_neg", "interval", "'-1 day'", Some("\"P-1D\"")),
    ("c_bit", "bit(4)", "B'1010'", Some("\"1010\"")),
    ("c_varbit", "bit varying(8)", "B'101'", Some("\"101\"")),
    ("c_money", "money", "'12.34'", None),
    (
        "c_inet",
        "inet",
        "'192.168.0.1/24'",
        Some("\"192.168.0.1/24\""),
    ),
    ("c_cidr", "cidr", "'10.0.0.0/8'", Some("\"10.0.0.0/8\"")),
    (
        "c_macaddr",
        "macaddr",
        "'08:00:2b:01:02:03'",
        Some("\"08:00:2b:01:02:03\""),
    ),
    ("c_xml", "xml", "'<a>1</a>'", Some("\"<a>1</a>\"")),
    ("c_tsvector", "tsvector", "'fat cat a'", None),
    ("c_point", "point", "'(1,2)'", Some("\"(1,2)\"")),
    ("c_range", "int4range", "'[1,5)'", Some("\"[1,5)\"")),
    ("c_mood", "mood", "'happy'", Some("\"happy\"")),
    ("c_amount", "amount", "12.5", Some("\"12.50\"")),
    ("c_int_arr", "integer[]", "'{1,NULL,3}'", Some("[1,null,3]")),
    (
        "c_int_arr_bounds",
        "integer[]",
        "'[0:1]={7,8}'",
        Some("[7,8]"),
    ),
    (
        "c_text_arr2",
        "text[][]",
        "'{{\"a,b\",NULL},{\"c\\\"d\",\"NULL\"}}'",
        Some("[[\"a,b\",null],[\"c\\\"d\",\"NULL\"]]"),
    ),
    (
        "c_mood_arr",
        "mood[]",
        "'{sad,happy}'",
        Some("[\"sad\",\"happy\"]"),
    ),
    (
        "c_box_arr",
        "box[]",
        "ARRAY[box '(1,1),(0,0)', box '(2,2),(1,1)']",
        Some("[\"(1,1),(0,0)\",\"(2,2),(1,1)\"]"),
    ),
    (
        "c_tstz_arr",
        "timestamptz[]",
        "'{\"2024-01-01 00:00:00+00\",infinity,NULL}'",
        Some("[\"2024-01-01T00:00:00Z\",\"infinity\",null]"),
    ),
    (
        "c_numeric_arr",
        "numeric[]",
        "'{1.10,NaN}'",
        Some("[\"1.10\",\"NaN\"]"),
    ),
    (
        "c_bytea_arr",
        "bytea[]",
        "ARRAY['\\x00'::bytea]",
        Some("[\"AA==\"]"),
    ),
    (
        "c_jsonb_arr",
        "jsonb[]",
        "ARRAY['{\"k\": 1}'::jsonb]",
        Some("[{\"k\": 1}]"),
    ),
    ("c_empty_arr", "integer[]", "'{}'", Some("[]")),
];

/// Expected (canonical type, source_type, element) for a few columns of the schema block.
const SCHEMA: &[(&str, CanonicalType, &str, Option<CanonicalType>)] = &[
    ("id", CanonicalType::Int64, "bigint", None),
    ("c_bool", CanonicalType::Bool, "boolean", None),
    ("c_int2", CanonicalType::Int64, "smallint", None),
    (
        "c_numeric_scale",
        CanonicalType::Decimal,
        "numeric(10,2)",
        None,
    ),
    ("c_float4", CanonicalType::Float64, "real", None),
    (
        "c_varchar",
        CanonicalType::String,
        "character varying(20)",
        None,
    ),
    ("c_bpchar", CanonicalType::String, "character(5)", None),
    ("c_bytea", CanonicalType::Bytes, "bytea", None),
    ("c_jsonb", CanonicalType::Json, "jsonb", None),
    ("c_uuid", CanonicalType::Uuid, "uuid", None),
    ("c_date", CanonicalType::Date, "date", None),
    (
        "c_time",
        CanonicalType::Time,
        "time without time zone",
        None,
    ),
    (
        "c_ts",
        CanonicalType::Timestamp,
        "timestamp without time zone",
        None,
    ),
    (
        "c_tstz",
        CanonicalType::Timestamptz,
        "timestamp with time zone",
        None,
    ),
    (
        "c_tstz_whole",
        CanonicalType::Timestamptz,
        "timestamp(0) with time zone",
        None,
    ),
    ("c_interval", CanonicalType::Interval, "interval", None),
    ("c_varbit", CanonicalType::Bits, "bit varying(8)", None),
    ("c_money", CanonicalType::String, "money", None),
    ("c_mood", CanonicalType::String, "mood", None),
    ("c_amount", CanonicalType::Decimal, "amount", None),
    (
        "c_int_arr",
        CanonicalType::Array,
        "integer[]",
        Some(CanonicalType::Int64),
    ),
    (
        "c_text_arr2",
        CanonicalType::Array,
        "text[]",
        Some(CanonicalType::String),
    ),
    (
        "c_mood_arr",
        CanonicalType::Array,
        "mood[]",
        Some(CanonicalType::String),
    ),
    (
        "c_box_arr",
        CanonicalType::Array,
        "box[]",
        Some(CanonicalType::String),
    ),
    (
        "c_tstz_arr",
        CanonicalType::Array,
        "timestamp with time zone[]",
        Some(CanonicalType::Timestamptz),
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_matrix_through_pgoutput() {
    with_db("pgtypes", |db, client| async move {
        let has_citext = !text_rows(
            &client,
            "SELECT 1 FROM pg_available_extensions WHERE name = 'citext'",
        )
        .await
        .is_empty();
        let mut matrix: Vec<(&str, &str, &str, Option<&str>)> = MATRIX.to_vec();
        if has_citext {
            client
                .batch_execute("CREATE EXTENSION citext")
                .await
                .expect("citext");
            matrix.push(("c_citext", "citext", "'MiXed'", Some("\"MiXed\"")));
            matrix.push((
                "c_citext_arr",
                "citext[]",
                "'{A,NULL}'",
                Some("[\"A\",null]"),
            ));
        } else {
            eprintln!("citext extension not available: its columns are left out");
        }
        client
            .batch_execute(
                "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); \
                 CREATE DOMAIN amount AS numeric(12,2) CHECK (VALUE >= 0);",
            )
            .await
            .expect("types");
        let cols: Vec<String> = matrix
            .iter()
            .map(|(name, ty, _, _)| format!("\"{name}\" {ty}"))
            .collect();
        client
            .batch_execute(&format!(
                "CREATE TABLE all_types (id bigint PRIMARY KEY, {})",
                cols.join(", ")
            ))
            .await
            .expect("create table");
        let slot = publish(&client, &db).await;

        // The catalog as the source loads it at start-up (before the types are used).
        let mut cache = RelCache::new(naming(), db.clone());
        cache.set_catalog(load_catalog(&client).await);

        let names: Vec<String> = matrix.iter().map(|(n, ..)| format!("\"{n}\"")).collect();
        let values: Vec<&str> = matrix.iter().map(|(_, _, v, _)| *v).collect();
        client
            .batch_execute(&format!(
                "INSERT INTO all_types (id, {}) VALUES (1, {}); \
                 INSERT INTO all_types (id) VALUES (2);",
                names.join(", "),
                values.join(", ")
            ))
            .await
            .expect("insert rows");
        let msgs = changes(&client, &slot).await;
        assert!(
            msgs.iter().any(|m| m.first() == Some(&b'Y')),
            "pgoutput sends Type messages for mood/amount"
        );
        let events = decode_all(&client, &mut cache, &msgs).await;
        assert_eq!(events.len(), 2, "{events:?}");

        // Pass-through types: what the server itself prints.
        let server_text = text_rows(
            &client,
            "SELECT c_money::text, c_tsvector::text FROM all_types WHERE id = 1",
        )
        .await;
        let row0 = server_text.first().expect("row 1");
        let money = json_str(row0[0].as_deref().expect("money"));
        let tsvector = json_str(row0[1].as_deref().expect("tsvector"));

        let Ev::Insert { table, row } = &events[0] else {
            panic!("want insert, got {:?}", events[0])
        };
        assert_eq!(table.table, "all_types");
        assert_eq!(table.key, vec![0]);
        let got = rendered(table, row);
        assert_eq!(got.get("id"), Some(&Some("1".to_string())));
        let mut mismatches = Vec::new();
        for (name, ty, literal, expected) in &matrix {
            let expected = match (expected, *name) {
                (Some(e), _) => e.to_string(),
                (None, "c_money") => money.clone(),
                (None, "c_tsvector") => tsvector.clone(),
                (None, other) => panic!("no expectation for {other}"),
            };
            let actual = got.get(*name).cloned().flatten();
            if actual.as_deref() != Some(expected.as_str()) {
                mismatches.push(format!(
                    "{name} {ty} = {literal}: expected {expected}, got {actual:?}"
                ));
            }
        }
        assert!(
            mismatches.is_empty(),
            "mismatches:\n{}",
            mismatches.join("\n")
        );

        // Row 2: every column NULL, present (not absent).
        let Ev::Insert { table, row } = &events[1] else {
            panic!("want insert")
        };
        for (name, value) in rendered(table, row) {
            if name != "id" {
                assert_eq!(value.as_deref(), Some("null"), "{name}");
            }
        }

        // Schema block.
        for (name, ty, source_type, element) in SCHEMA {
            let col = table
                .columns
                .iter()
                .find(|c| c.name == *name)
                .unwrap_or_else(|| panic!("column {name}"));
            assert_eq!(
                (col.ty, col.source_type.as_str(), col.element),
                (*ty, *source_type, *element),
                "{name}"
            );
        }
        if has_citext {
            let col = table
                .columns
                .iter()
                .find(|c| c.name == "c_citext")
                .expect("citext col");
            assert_eq!(
                (col.ty, col.source_type.as_str()),
                (CanonicalType::String, "citext")
            );
        }

        // The snapshot path (catalog description + simple_query text) must agree exactly with
        // the stream: same schema version, same JSON for every value.
        let oid: u32 = client
            .query_one("SELECT 'all_types'::regclass::oid", &[])
            .await
            .expect("table oid")
            .get(0);
        let columns: Vec<RelationColumnInfo> = client
            .query(RELATION_COLUMNS_QUERY, &[&oid])
            .await
            .expect("relation columns query")
            .iter()
            .map(|r| RelationColumnInfo {
                name: r.get(0),
                type_oid: u32::try_from(r.get::<_, i64>(1)).expect("oid"),
                type_modifier: r.get(2),
                key: r.get(3),
            })
            .collect();
        let mut snap_cache = RelCache::new(naming(), db.clone());
        snap_cache.set_catalog(load_catalog(&client).await);
        let snap_table = snap_cache.apply_relation_info(RelationInfo {
            oid,
            namespace: "public".into(),
            name: "all_types".into(),
            replica_identity: ReplicaIdentity::Default,
            columns,
        });
        assert_eq!(
            snap_table.version, table.version,
            "snapshot and stream schema differ"
        );
        let entry = snap_cache.relation(oid).expect("snapshot entry");
        let rows = text_rows(&client, "SELECT * FROM all_types ORDER BY id").await;
        let Ev::Insert { row: streamed, .. } = &events[0] else {
            panic!()
        };
        let snap_row = text_cells_to_row(entry, rows[0].iter().map(Option::as_deref))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rendered(&snap_table, &snap_row), rendered(table, streamed));

        // The primary-key query names the key.
        let pks = text_rows(&client, PRIMARY_KEY_QUERY).await;
        assert!(
            pks.contains(&vec![Some(oid.to_string()), Some("id".to_string())]),
            "{pks:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_change_toast_truncate_and_schema_change() {
    with_db("pgtypes_edge", |db, client| async move {
        client
            .batch_execute(
                "CREATE TABLE k (id int PRIMARY KEY, a text, b int); \
                 CREATE TABLE big (id int PRIMARY KEY, note text, payload text); \
                 ALTER TABLE big ALTER COLUMN payload SET STORAGE EXTERNAL; \
                 CREATE TABLE t1 (id serial PRIMARY KEY); \
                 CREATE TABLE t2 (id serial PRIMARY KEY);",
            )
            .await
            .expect("tables");
        let slot = publish(&client, &db).await;
        let mut cache = RelCache::new(naming(), db.clone());
        cache.set_catalog(load_catalog(&client).await);

        // 1. UPDATE changing the key under REPLICA IDENTITY DEFAULT: 'K' old tuple with only
        //    key columns; the others are absent, not NULL. Then a key-only DELETE.
        client
            .batch_execute(
                "INSERT INTO k VALUES (1, 'x', 5); \
                 UPDATE k SET id = 2 WHERE id = 1; \
                 UPDATE k SET a = 'y' WHERE id = 2; \
                 DELETE FROM k WHERE id = 2;",
            )
            .await
            .expect("key changes");
        let events = decode_all(&client, &mut cache, &changes(&client, &slot).await).await;
        assert_eq!(events.len(), 4, "{events:?}");
        let Ev::Update {
            table,
            before,
            key_only,
            after,
        } = &events[1]
        else {
            panic!("want update, got {:?}", events[1])
        };
        assert!(key_only, "key change sends a 'K' tuple");
        let before = before.as_ref().expect("old key sent");
        assert_eq!(
            rendered(table, before),
            BTreeMap::from([
                ("id".to_string(), Some("1".to_string())),
                ("a".to_string(), None),
                ("b".to_string(), None),
            ])
        );
        assert_eq!(
            rendered(table, after),
            BTreeMap::from([
                ("id".to_string(), Some("2".to_string())),
                ("a".to_string(), Some("\"x\"".to_string())),
                ("b".to_string(), Some("5".to_string())),
            ])
        );
        // The envelope carries before = {"id": 1} only.
        let tx = TxInfo::default();
        let change = Change {
            op: Op::Update,
            table,
            pos: "0000000000000001:00000001",
            tx: &tx,
            ts_ms: 0,
            snapshot: false,
            before: Some(before),
            after: Some(after),
        };
        let env = Envelope::parse(&Encoder::new().encode(&naming(), &change, 0).payload)
            .expect("envelope");
        assert_eq!(env.before.expect("before").len(), 1);
        assert!(env.unchanged.is_empty());
        // A non-key update sends no old tuple.
        let Ev::Update { before, .. } = &events[2] else {
            panic!("want update")
        };
        assert!(before.is_none());
        let Ev::Delete {
            table,
            before,
            key_only,
        } = &events[3]
        else {
            panic!("want delete")
        };
        assert!(key_only);
        assert_eq!(
            rendered(table, before),
            BTreeMap::from([
                ("id".to_string(), Some("2".to_string())),
                ("a".to_string(), None),
                ("b".to_string(), None),
            ])
        );

        // 2. An UPDATE that leaves a large out-of-line TOAST value alone: 'u' → absent from
        //    `after`, listed in `unchanged`.
        client
            .batch_execute(
                "INSERT INTO big SELECT 1, 'a', string_agg(md5(random()::text), '') \
                 FROM generate_series(1, 1000); \
                 UPDATE big SET note = 'b' WHERE id = 1;",
            )
            .await
            .expect("toast rows");
        let events = decode_all(&client, &mut cache, &changes(&client, &slot).await).await;
        assert_eq!(events.len(), 2, "{events:?}");
        let Ev::Insert { table, row } = &events[0] else {
            panic!("want insert")
        };
        let payload = rendered(table, row)["payload"]
            .clone()
            .expect("payload inserted");
        assert!(payload.len() > 32_000, "payload is {} bytes", payload.len());
        let Ev::Update {
            table,
            before,
            after,
            ..
        } = &events[1]
        else {
            panic!("want update")
        };
        assert!(before.is_none());
        let got = rendered(table, after);
        assert_eq!(got["note"].as_deref(), Some("\"b\""));
        assert_eq!(
            got["payload"], None,
            "unchanged TOAST must be absent, not null"
        );
        let change = Change {
            op: Op::Update,
            table,
            pos: "0000000000000002:00000001",
            tx: &tx,
            ts_ms: 0,
            snapshot: false,
            before: None,
            after: Some(after),
        };
        let env = Envelope::parse(&Encoder::new().encode(&naming(), &change, 0).payload)
            .expect("envelope");
        assert_eq!(env.unchanged, vec!["payload".to_string()]);
        assert!(!env.after.expect("after").contains_key("payload"));

        // 3. TRUNCATE of two tables in one statement: one message, both relations, options.
        client
            .batch_execute(
                "INSERT INTO t1 DEFAULT VALUES; INSERT INTO t2 DEFAULT VALUES; \
                 TRUNCATE t1, t2 RESTART IDENTITY CASCADE; TRUNCATE t1;",
            )
            .await
            .expect("truncate");
        let events = decode_all(&client, &mut cache, &changes(&client, &slot).await).await;
        let truncates: Vec<&Ev> = events
            .iter()
            .filter(|e| matches!(e, Ev::Truncate { .. }))
            .collect();
        assert_eq!(truncates.len(), 2, "{events:?}");
        let Ev::Truncate {
            tables,
            cascade,
            restart_identity,
        } = truncates[0]
        else {
            panic!()
        };
        let mut names = tables.clone();
        names.sort();
        assert_eq!(names, vec!["t1".to_string(), "t2".to_string()]);
        assert!(*cascade && *restart_identity);
        let Ev::Truncate {
            tables,
            cascade,
            restart_identity,
        } = truncates[1]
        else {
            panic!()
        };
        assert_eq!(tables, &vec!["t1".to_string()]);
        assert!(!*cascade && !*restart_identity);

        // 4. ALTER TABLE ADD COLUMN: the re-sent Relation overwrites the cache within one
        //    decoding session, and the next insert decodes with the new column.
        client
            .batch_execute(
                "INSERT INTO k VALUES (10, 'before', 1); \
                 ALTER TABLE k ADD COLUMN c numeric DEFAULT 1.5; \
                 INSERT INTO k VALUES (11, 'after', 2, 2.25);",
            )
            .await
            .expect("schema change");
        let msgs = changes(&client, &slot).await;
        let relations = msgs
            .iter()
            .filter(|m| matches!(pgoutput::decode(m), Ok(PgMessage::Relation(r)) if r.name == "k"))
            .count();
        assert_eq!(relations, 2, "Relation sent before and after the ALTER");
        let events = decode_all(&client, &mut cache, &msgs).await;
        assert_eq!(events.len(), 2, "{events:?}");
        let (
            Ev::Insert {
                table: t_old,
                row: r_old,
            },
            Ev::Insert {
                table: t_new,
                row: r_new,
            },
        ) = (&events[0], &events[1])
        else {
            panic!("want two inserts")
        };
        assert_eq!(t_old.columns.len(), 3);
        assert_eq!(t_new.columns.len(), 4);
        assert_ne!(t_old.version, t_new.version);
        assert_eq!(rendered(t_old, r_old)["a"].as_deref(), Some("\"before\""));
        assert_eq!(rendered(t_new, r_new)["c"].as_deref(), Some("\"2.25\""));
        assert_eq!(t_new.columns[3].ty, CanonicalType::Decimal);
        let k_oid: u32 = client
            .query_one("SELECT 'k'::regclass::oid", &[])
            .await
            .expect("oid")
            .get(0);
        assert_eq!(cache.table(k_oid).expect("k cached").columns.len(), 4);
    })
    .await;
}
