//! Configuration errors as an operator meets them, through the real binary: every error
//! names the key path and its line (or the environment variable that set it), says what kind
//! of value is expected in words, and never prints the value; `check --offline` parses every
//! URL with the connector's own parser; `check` against live servers writes nothing.

use crate::common::*;
use std::process::Command;

/// A password that must never appear in any output.
const SECRET: &str = "S3cr3tPW!x";

/// Runs the CLI with extra environment variables; returns (exit code, stdout, stderr).
fn run_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(tidemark_bin());
    cmd.args(args).env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run tidemark");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Line numbers below refer to this text.
fn base() -> String {
    format!(
        r#"[nats]
url = "nats://127.0.0.1:4222"
user = "tm"
password = "{SECRET}"

[[pipelines]]
name = "shop"
  [pipelines.source]
  kind = "postgres"
  url = "postgres://u:{SECRET}@127.0.0.1:5432/shop"
  tables = ["public.*"]
  [[pipelines.sinks]]
  name = "a"
  kind = "postgres"
  url = "postgres://u:{SECRET}@127.0.0.1:5432/a"
  [[pipelines.sinks]]
  name = "b"
  kind = "mysql"
  url = "mysql://u:{SECRET}@127.0.0.1:3306/b"
  batch_size = 10
"#
    )
}

/// Runs `check --offline` on `base()` with `from` replaced by `to`; expects exit 2 and an
/// error containing every `wanted` fragment, without the secret or Rust type names.
fn expect_error(from: &str, to: &str, env: &[(&str, &str)], wanted: &[&str]) {
    let text = base();
    assert!(text.contains(from), "{from:?} is not in the base file");
    let path = temp_file("p.toml", &text.replacen(from, to, 1));
    let shown = path.to_str().unwrap().to_owned();
    let (code, out, err) = run_env(&["check", "--offline", "-c", &shown], env);
    let case = format!("{to:?} {env:?}");
    assert_eq!(code, 2, "{case}: exit code; stdout {out}, stderr {err}");
    for w in wanted {
        let w = w.replace("FILE", &shown);
        assert!(err.contains(&w), "{case}: {err:?} lacks {w:?}");
    }
    for leaked in [SECRET, "Pw_S3cr3t"] {
        assert!(
            !err.contains(leaked) && !out.contains(leaked),
            "{case}: value leaked: {err}"
        );
    }
    for rust in ["usize", "u64", "u32", "invalid type", "struct "] {
        assert!(!err.contains(rust), "{case}: Rust words in {err}");
    }
}

#[test]
fn wrong_types_name_key_line_and_kind() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "batch_size = 10",
            "batch_size = \"Pw_S3cr3t_a\"",
            &["FILE:20: pipelines[0].sinks[1].batch_size: expected a whole number ≥ 0, found a string"],
        ),
        (
            "batch_size = 10",
            "batch_size = -1",
            &["FILE:20: pipelines[0].sinks[1].batch_size: expected a whole number ≥ 0, found a negative number"],
        ),
        (
            "batch_size = 10",
            "create_tables = \"Pw_S3cr3t_b\"",
            &["FILE:20: pipelines[0].sinks[1].create_tables: expected true or false, found a string"],
        ),
        (
            "batch_size = 10",
            "on_error = \"Pw_S3cr3t_c\"",
            &["FILE:20: pipelines[0].sinks[1].on_error: expected `halt` or `dead_letter`"],
        ),
        (
            "  tables = [\"public.*\"]",
            "  tables = \"Pw_S3cr3t_d\"",
            &["FILE:11: pipelines[0].source.tables: expected a list, found a string"],
        ),
        (
            "  tables = [\"public.*\"]",
            "  server_id = 99999999999",
            &["FILE:11: pipelines[0].source.server_id: expected a whole number from 0 to 4294967295"],
        ),
        (
            &format!("password = \"{SECRET}\""),
            "password = 123456",
            &["FILE:4: nats.password: expected a string, found a whole number"],
        ),
        (
            "batch_size = 10",
            "batch_sise = 10",
            &["FILE:20: pipelines[0].sinks[1].batch_sise: unknown key `batch_sise`"],
        ),
        (
            "  kind = \"mysql\"\n",
            "",
            &["pipelines[0].sinks[1]: missing required key `kind`"],
        ),
    ];
    for (from, to, wanted) in cases {
        expect_error(from, to, &[], wanted);
    }
}

#[test]
fn environment_overrides_name_the_variable() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "TIDEMARK_NATS__TLS_REQUIRED",
            SECRET,
            &["nats.tls_required (set by environment variable TIDEMARK_NATS__TLS_REQUIRED): expected true or false, found a string"],
        ),
        (
            "TIDEMARK_NATS__REPLICAS",
            SECRET,
            &["nats.replicas (set by environment variable TIDEMARK_NATS__REPLICAS): expected a whole number ≥ 0, found a string"],
        ),
        (
            "TIDEMARK_NATS__PUBLISH_WINDOW",
            "-7",
            &["nats.publish_window (set by environment variable TIDEMARK_NATS__PUBLISH_WINDOW): expected a whole number ≥ 0, found a negative number"],
        ),
        (
            "TIDEMARK_NATS__PASWORD",
            SECRET,
            &["nats.pasword (set by environment variable TIDEMARK_NATS__PASWORD): unknown key `pasword`"],
        ),
        (
            "TIDEMARK_LOG__FORMAT",
            SECRET,
            &["log.format (set by environment variable TIDEMARK_LOG__FORMAT): expected `text` or `json`"],
        ),
        (
            "TIDEMARK_NATS__URL",
            "nats://tm:Pw_S3cr3t_e@127.0.0.1:bad",
            &["nats.url (set by environment variable TIDEMARK_NATS__URL): server 1 is not a NATS URL"],
        ),
    ];
    for (var, value, wanted) in cases {
        expect_error("", "", &[(var, value)], wanted);
    }
}

#[test]
fn numeric_secrets_from_the_environment_are_strings() {
    let text = base().replace(&format!("password = \"{SECRET}\"\n"), "");
    let path = temp_file("p.toml", &text);
    let args = ["check", "--offline", "-c", path.to_str().unwrap()];
    let (code, out, err) = run_env(&args, &[("TIDEMARK_NATS__PASSWORD", "123456")]);
    assert_eq!(code, 0, "stdout {out}, stderr {err}");
    let (code, out, err) = run_env(
        &args,
        &[
            ("TIDEMARK_NATS__PASSWORD", "123456"),
            ("TIDEMARK_NATS__USER", "0042"),
            ("TIDEMARK_NATS__REPLICAS", "1"),
            ("TIDEMARK_NATS__TLS_REQUIRED", "false"),
        ],
    );
    assert_eq!(code, 0, "stdout {out}, stderr {err}");
    assert!(!err.contains("123456") && !out.contains("123456"));
}

#[test]
fn check_offline_parses_every_url() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "127.0.0.1:5432/shop\"",
            "127.0.0.1:99999/shop\"",
            "FILE:10: pipelines[0].source.url:",
        ),
        (
            "127.0.0.1:5432/shop\"",
            "127.0.0.1:5432/shop?sslmode=bogus\"",
            "FILE:10: pipelines[0].source.url:",
        ),
        (
            "127.0.0.1:5432/shop\"",
            "127.0.0.1:5432\"",
            "FILE:10: pipelines[0].source.url:",
        ),
        (
            "127.0.0.1:5432/a\"",
            "127.0.0.1:5432/a?sslmode=bogus\"",
            "FILE:15: pipelines[0].sinks[0].url:",
        ),
        (
            "127.0.0.1:5432/a\"",
            "127.0.0.1:5x432/a\"",
            "FILE:15: pipelines[0].sinks[0].url:",
        ),
        (
            "127.0.0.1:3306/b\"",
            "127.0.0.1:3306\"",
            "FILE:19: pipelines[0].sinks[1].url:",
        ),
        (
            "127.0.0.1:3306/b\"",
            "127.0.0.1:3306/b?ssl-mode=bogus\"",
            "FILE:19: pipelines[0].sinks[1].url:",
        ),
        (
            "127.0.0.1:3306/b\"",
            "127.0.0.1:70000/b\"",
            "FILE:19: pipelines[0].sinks[1].url:",
        ),
        (
            "url = \"nats://127.0.0.1:4222\"",
            "url = \"nats://127.0.0.1:4222, nats://x:y@127.0.0.1:4z22\"",
            "FILE:2: nats.url: server 2 is not a NATS URL",
        ),
    ];
    for (from, to, wanted) in cases {
        expect_error(from, to, &[], &[wanted]);
    }
    // A MySQL source URL goes through the MySQL source's parser.
    let mysql_source = |query: &str| {
        format!(
            "  kind = \"mysql\"\n  server_id = 77\n  url = \"mysql://u:{SECRET}@127.0.0.1:3306/shop{query}\""
        )
    };
    let pg_source =
        format!("  kind = \"postgres\"\n  url = \"postgres://u:{SECRET}@127.0.0.1:5432/shop\"");
    expect_error(
        &pg_source,
        &mysql_source("?ssl-mode=bogus"),
        &[],
        &["FILE:11: pipelines[0].source.url:", "ssl-mode"],
    );
    // And the good file passes.
    let path = temp_file("p.toml", &base());
    let (code, out, err) = run_env(&["check", "--offline", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "stdout {out}, stderr {err}");
}

/// `check` against live servers with a sink database and NATS account that tidemark never
/// touched: afterwards there is still no `tidemark_offsets` table in either sink database,
/// no pipeline stream and no state bucket.
#[tokio::test]
async fn check_writes_nothing() {
    use mysql_async::prelude::Queryable as _;
    let pipeline = unique("chk_ro");
    let (src, pg_dst, my_dst) = (unique("tm_ro_src"), unique("tm_ro_dst"), unique("tm_ro_my"));
    let bucket = unique("tm_ro_state");
    pg_create_db(&src).await;
    pg_create_db(&pg_dst).await;
    mysql_create_db(&my_dst).await;
    pg_connect(&src)
        .await
        .batch_execute("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
        .await
        .expect("create source table");
    let config = format!(
        r#"[nats]
url = "{NATS}"
state_bucket = "{bucket}"
[[pipelines]]
name = "{pipeline}"
  [pipelines.source]
  kind = "postgres"
  url = "{src_url}"
  tables = ["public.items"]
  [[pipelines.sinks]]
  name = "pg"
  kind = "postgres"
  url = "{pg_url}"
  create_tables = true
  [[pipelines.sinks]]
  name = "my"
  kind = "mysql"
  url = "{my_url}"
  create_tables = true
"#,
        src_url = pg_url(&src),
        pg_url = pg_url(&pg_dst),
        my_url = mysql_url(&my_dst),
    );
    let path = temp_file("p.toml", &config);
    let (code, out, err) = run_env(&["check", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(
        code, 0,
        "every probe should pass: stdout {out}, stderr {err}"
    );
    assert!(
        out.contains("missing; created"),
        "check should say the sink creates tidemark_offsets at start: {out}"
    );
    assert!(out.contains("nats reachable"), "{out}");

    let pg_tables: i64 = pg_connect(&pg_dst)
        .await
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace NOT IN \
             (SELECT oid FROM pg_namespace WHERE nspname IN ('pg_catalog', 'information_schema'))",
            &[],
        )
        .await
        .expect("count tables")
        .get(0);
    assert_eq!(
        pg_tables, 0,
        "check created a table in the postgres sink: {out}"
    );
    let mut my = mysql_conn(&my_dst).await;
    let my_tables: Vec<String> = my
        .exec(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?",
            (&my_dst,),
        )
        .await
        .expect("list tables");
    let _ = my.disconnect().await;
    assert!(
        my_tables.is_empty(),
        "check created {my_tables:?} in the mysql sink"
    );
    let publications: i64 = pg_connect(&src)
        .await
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .expect("count publications")
        .get(0);
    assert_eq!(publications, 0, "check created a publication");
    let js = js().await;
    let stream = format!("TIDEMARK_{}", pipeline.to_uppercase());
    assert!(
        js.get_stream(&stream).await.is_err(),
        "check created {stream}"
    );
    assert!(
        js.get_key_value(&bucket).await.is_err(),
        "check created the state bucket {bucket}"
    );
    let slots: i64 = pg_connect(&src)
        .await
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&format!("tidemark_{pipeline}")],
        )
        .await
        .expect("count slots")
        .get(0);
    assert_eq!(slots, 0, "check created a replication slot");
    pg_drop_db(&src).await;
    pg_drop_db(&pg_dst).await;
    mysql_drop_db(&my_dst).await;
}
