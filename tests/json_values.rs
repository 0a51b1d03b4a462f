//! JSON values no `serde_json::Value` can hold (nested 200 and 10,000 deep; numbers beyond
//! `f64` such as `1e400`, `-1e-400`, 40 significant digits) replicate unchanged from a
//! Postgres source into a Postgres and a MariaDB sink and from a MariaDB source into a
//! Postgres sink; `tidemark tail` prints them; a dead-lettered event is always logged.

use crate::common::*;
use mysql_async::prelude::Queryable as _;
use std::time::Duration;

fn nested_array(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn nested_object(depth: usize, leaf: &str) -> String {
    format!("{}{leaf}{}", "{\"a\": ".repeat(depth), "}".repeat(depth))
}

/// `(id, document)` rows every test writes.
fn pg_documents() -> Vec<(i32, String)> {
    vec![
        (1, nested_array(200)),
        (2, nested_object(200, "1e400")),
        (3, nested_array(10_000)),
        (4, nested_object(10_000, "-1e-400")),
        (5, "1e400".into()),
        (6, "-1e-400".into()),
        (7, "123456789012345678901234567890.123456789".into()),
        (
            8,
            r#"{"big": [1e400, -1e-400, 123456789012345678901234567890.123456789], "s": "x\"y"}"#
                .into(),
        ),
    ]
}

fn pipeline_toml(pipeline: &str, source: &str, sinks: &str) -> String {
    format!(
        "[nats]\nurl = \"{NATS}\"\n\n[metrics]\nlisten = \"\"\n\n[[pipelines]]\nname = \"{pipeline}\"\n{source}{sinks}"
    )
}

fn pg_source(db: &str) -> String {
    format!(
        "  [pipelines.source]\n  kind = \"postgres\"\n  url = \"{}\"\n  tables = [\"public.*\"]\n  heartbeat_secs = 2\n",
        pg_url(db)
    )
}

fn sink(name: &str, kind: &str, url: &str, extra: &str) -> String {
    format!("\n  [[pipelines.sinks]]\n  name = \"{name}\"\n  kind = \"{kind}\"\n  url = \"{url}\"\n{extra}")
}

/// `(id, j::text, t::text)` of the Postgres table `docs`, ordered by id.
async fn pg_docs(db: &str) -> Vec<(i32, Option<String>, Option<String>)> {
    let c = pg_connect(db).await;
    match c
        .query("SELECT id, j::text, t::text FROM docs ORDER BY id", &[])
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn my_docs(db: &str) -> Vec<(i32, Option<String>, Option<String>)> {
    let mut c = mysql_conn(db).await;
    c.query::<(i32, Option<String>, Option<String>), _>("SELECT id, j, t FROM docs ORDER BY id")
        .await
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_json_of_any_depth_and_precision_reaches_both_sinks_and_tail() {
    let pipeline = unique("json_pg");
    let (src, pg_dst, my_dst) = (
        unique("tm_json_src"),
        unique("tm_json_pg"),
        unique("tm_json_my"),
    );
    pg_create_db(&src).await;
    pg_create_db(&pg_dst).await;
    mysql_create_db(&my_dst).await;
    let body = async {
        let s = pg_connect(&src).await;
        s.batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, j jsonb, t json); \
             ALTER TABLE docs REPLICA IDENTITY FULL",
        )
        .await
        .expect("source table");
        let d = pg_connect(&pg_dst).await;
        d.batch_execute("CREATE TABLE docs (id int PRIMARY KEY, j jsonb, t json)")
            .await
            .expect("pg target table");
        // MariaDB's JSON type (json_valid) refuses documents nested 32+ deep: LONGTEXT holds any.
        let mut m = mysql_conn(&my_dst).await;
        m.query_drop("CREATE TABLE docs (id int PRIMARY KEY, j LONGTEXT, t LONGTEXT)")
            .await
            .expect("mariadb target table");
        let docs = pg_documents();
        let insert = "INSERT INTO docs VALUES ($1, $2::text::jsonb, $2::text::json)";
        // Half in the snapshot, half from the stream.
        for (id, doc) in docs.iter().filter(|(id, _)| id % 2 == 1) {
            s.execute(insert, &[id, doc]).await.expect("insert");
        }
        let sinks = sink("pg", "postgres", &pg_url(&pg_dst), "")
            + &sink("my", "mysql", &mysql_url(&my_dst), "");
        let mut daemon = Daemon::start(&pipeline_toml(&pipeline, &pg_source(&src), &sinks));
        let first = wait_until(Duration::from_secs(60), || async {
            pg_docs(&pg_dst).await.len() == 4
        })
        .await;
        assert!(first, "snapshot rows never arrived:\n{}", daemon.logs());
        for (id, doc) in docs.iter().filter(|(id, _)| id % 2 == 0) {
            s.execute(insert, &[id, doc]).await.expect("insert");
        }
        // One update of a deep document (before image FULL: deep on both sides).
        s.execute(
            "UPDATE docs SET j = $1::text::jsonb WHERE id = 3",
            &[&nested_array(9_999)],
        )
        .await
        .expect("update");
        let want = pg_docs(&src).await;
        assert_eq!(want.len(), docs.len());
        let pg_ok = wait_until(Duration::from_secs(60), || async {
            pg_docs(&pg_dst).await == want
        })
        .await;
        assert!(pg_ok, "Postgres target differs:\n{}", daemon.logs());
        let my_ok = wait_until(Duration::from_secs(60), || async {
            my_docs(&my_dst).await == want
        })
        .await;
        assert!(my_ok, "MariaDB target differs:\n{}", daemon.logs());
        // Semantically equal too (jsonb equality), not just the same text.
        let equal = d
            .query_one(
                "SELECT count(*) FROM docs WHERE j = ANY($1::text[]::jsonb[])",
                &[&want.iter().filter_map(|r| r.1.clone()).collect::<Vec<_>>()],
            )
            .await
            .expect("compare")
            .get::<_, i64>(0);
        assert_eq!(equal, docs.len() as i64);

        // tail shows every envelope, digits and depth intact.
        let config = daemon.config_path().to_string_lossy().into_owned();
        let (code, out, err) = run_cli(&[
            "tail",
            &pipeline,
            "-c",
            &config,
            "--from-start",
            "--limit",
            "9",
            "--table",
            "public.docs",
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(!err.contains("not JSON"), "{err}");
        assert!(
            out.contains("123456789012345678901234567890.123456789"),
            "{out:.2000}"
        );
        assert!(out.contains("-1e-400") && out.contains("1e400"));
        assert!(out.matches("\"op\": \"").count() == 9, "{out:.2000}");
        let (code, out, _) = run_cli(&[
            "tail",
            &pipeline,
            "-c",
            &config,
            "--from-start",
            "--limit",
            "9",
            "--compact",
            "--table",
            "public.docs",
        ]);
        assert_eq!(code, 0);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 9);
        assert!(lines.iter().any(|l| l.contains(&nested_array(10_000))));
        assert_eq!(daemon.terminate().await, 0);
    };
    body.await;
    delete_stream(&format!("TIDEMARK_{}", pipeline.to_uppercase())).await;
    purge_state(&pipeline).await;
    pg_drop_db(&src).await;
    pg_drop_db(&pg_dst).await;
    mysql_drop_db(&my_dst).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_json_with_huge_numbers_reaches_postgres() {
    let pipeline = unique("json_my");
    let (src, dst) = (unique("tm_json_mysrc"), unique("tm_json_pgdst"));
    mysql_create_db(&src).await;
    pg_create_db(&dst).await;
    let body = async {
        let mut s = mysql_conn(&src).await;
        s.query_drop("CREATE TABLE docs (id int PRIMARY KEY, j JSON)")
            .await
            .expect("source table");
        let d = pg_connect(&dst).await;
        d.batch_execute("CREATE TABLE docs (id int PRIMARY KEY, j jsonb)")
            .await
            .expect("target table");
        // MariaDB's json_valid accepts 31 levels; numbers of any size.
        let docs = [
            nested_array(31),
            nested_object(31, "1e400"),
            "1e400".to_owned(),
            "-1e-400".to_owned(),
            "123456789012345678901234567890.123456789".to_owned(),
            r#"{"big": [1e400, -1e-400, 123456789012345678901234567890.123456789]}"#.to_owned(),
        ];
        s.exec_drop("INSERT INTO docs VALUES (1, ?)", (docs[0].clone(),))
            .await
            .expect("insert");
        let source = format!(
            "  [pipelines.source]\n  kind = \"mysql\"\n  url = \"{}\"\n  tables = [\"{src}.*\"]\n  server_id = {}\n  heartbeat_secs = 2\n",
            mysql_url(&src),
            4_000_000 + rand::random::<u32>() % 1_000_000
        );
        let sinks = sink("pg", "postgres", &pg_url(&dst), "  schema = \"public\"\n");
        let mut daemon = Daemon::start(&pipeline_toml(&pipeline, &source, &sinks));
        for (i, doc) in docs.iter().enumerate().skip(1) {
            s.exec_drop(
                "INSERT INTO docs VALUES (?, ?)",
                (i as i32 + 1, doc.clone()),
            )
            .await
            .expect("insert");
        }
        let count = || async {
            let params: Vec<String> = docs.to_vec();
            d.query_one(
                "SELECT count(*) FROM docs t JOIN unnest($1::text[]) WITH ORDINALITY AS w(doc, n) \
                 ON t.id = w.n AND t.j = w.doc::jsonb",
                &[&params],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(-1)
        };
        let ok = wait_until(Duration::from_secs(60), || async {
            count().await == docs.len() as i64
        })
        .await;
        assert!(ok, "target differs ({}):\n{}", count().await, daemon.logs());
        assert_eq!(daemon.terminate().await, 0);
    };
    body.await;
    delete_stream(&format!("TIDEMARK_{}", pipeline.to_uppercase())).await;
    purge_state(&pipeline).await;
    mysql_drop_db(&src).await;
    pg_drop_db(&dst).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_always_logged() {
    let pipeline = unique("json_dlq");
    let (src, dst) = (unique("tm_dlq_src"), unique("tm_dlq_dst"));
    pg_create_db(&src).await;
    pg_create_db(&dst).await;
    let body = async {
        let s = pg_connect(&src).await;
        s.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
            .await
            .expect("source table");
        // The target column is an integer: 'abc' is rejected for good.
        let d = pg_connect(&dst).await;
        d.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
            .await
            .expect("target table");
        let sinks = sink(
            "tgt",
            "postgres",
            &pg_url(&dst),
            "  on_error = \"dead_letter\"\n",
        );
        let mut daemon = Daemon::start(&pipeline_toml(&pipeline, &pg_source(&src), &sinks));
        s.execute("INSERT INTO items VALUES (1, '1')", &[])
            .await
            .expect("insert");
        let ready = wait_until(Duration::from_secs(60), || async {
            d.query_one("SELECT count(*) FROM items", &[])
                .await
                .map(|r| r.get::<_, i64>(0) == 1)
                .unwrap_or(false)
        })
        .await;
        assert!(ready, "{}", daemon.logs());
        s.execute("INSERT INTO items VALUES (2, 'abc')", &[])
            .await
            .expect("insert");
        // Not an envelope at all, on the pipeline's subject space.
        let js = js().await;
        let garbage_subject = format!("tidemark.{pipeline}.public.garbage");
        js.publish(garbage_subject.clone(), "not an envelope".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
        s.execute("INSERT INTO items VALUES (3, '3')", &[])
            .await
            .expect("insert");
        let past = wait_until(Duration::from_secs(60), || async {
            d.query_one("SELECT count(*) FROM items", &[])
                .await
                .map(|r| r.get::<_, i64>(0) == 2)
                .unwrap_or(false)
        })
        .await;
        assert!(past, "{}", daemon.logs());
        let logged = wait_until(Duration::from_secs(10), || async {
            daemon.logs().matches("event dead-lettered").count() == 2
        })
        .await;
        let logs = daemon.logs();
        assert!(logged, "{logs}");
        let lines: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("event dead-lettered"))
            .collect();
        let target = lines
            .iter()
            .find(|l| l.contains("table=public.items"))
            .unwrap_or_else(|| panic!("{logs}"));
        assert!(target.contains("WARN"), "{target}");
        assert!(target.contains(&format!("pipeline={pipeline}")), "{target}");
        assert!(target.contains("sink=tgt"), "{target}");
        assert!(target.contains("stream_seq="), "{target}");
        let malformed = lines
            .iter()
            .find(|l| l.contains("table=public.garbage"))
            .unwrap_or_else(|| panic!("{logs}"));
        assert!(malformed.contains("not a valid envelope"), "{malformed}");
        assert!(!malformed.contains("not an envelope\""), "{malformed}");
        assert_eq!(daemon.terminate().await, 0);
    };
    body.await;
    delete_stream(&format!("TIDEMARK_{}", pipeline.to_uppercase())).await;
    purge_state(&pipeline).await;
    pg_drop_db(&src).await;
    pg_drop_db(&dst).await;
}
