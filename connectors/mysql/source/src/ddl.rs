//! What a QUERY event means.
//!
//! In ROW format, query events carry transaction control (`BEGIN`,
//! `COMMIT`), DDL and TRUNCATE — and, when a session switched to STATEMENT
//! format, DML that cannot be captured. `QueryEvent::schema()` is only the
//! session's default database, so a TRUNCATE names its table in the
//! statement, possibly qualified and backtick-quoted. This is a tokenizer
//! that understands just enough SQL for that: comments (including MySQL's
//! executable `/*!50001 … */` comments, whose content counts), quoted
//! identifiers and strings.

/// The classes of statements the stream cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT`.
    Commit,
    /// `ROLLBACK` (the end of a group whose non-transactional changes stay).
    Rollback,
    /// `XA START xid` / `XA BEGIN xid` (MySQL logs it; MariaDB folds it into the GTID event).
    XaStart,
    /// `XA COMMIT xid`.
    XaCommit,
    /// `XA ROLLBACK xid`.
    XaRollback,
    /// `TRUNCATE [TABLE] [db.]table`.
    Truncate {
        /// Database, when qualified.
        db: Option<String>,
        /// Table.
        table: String,
    },
    /// CREATE / ALTER / DROP / RENAME: table definitions may have changed.
    Ddl,
    /// INSERT / UPDATE / DELETE / REPLACE / LOAD DATA logged as a statement.
    Dml {
        /// The verb, upper-case.
        verb: String,
    },
    /// Anything else (SET, GRANT, SAVEPOINT, XA START …).
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Quoted(String),
    Punct(char),
}

fn tokens(sql: &str, limit: usize) -> Vec<Tok> {
    let b: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() && out.len() < limit {
        let ch = b[i];
        let next = b.get(i + 1).copied();
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('*') {
            if b.get(i + 2) == Some(&'!') {
                // Executable comment: skip the marker and version digits, parse the content.
                i += 3;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            } else {
                i += 2;
                while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
        } else if ch == '*' && next == Some('/') {
            i += 2;
        } else if ch == '#'
            || (ch == '-' && next == Some('-') && b.get(i + 2).is_none_or(|c| c.is_whitespace()))
        {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if ch == '`' || ch == '"' || ch == '\'' {
            let q = ch;
            let mut s = String::new();
            i += 1;
            while i < b.len() {
                if b[i] == q {
                    if b.get(i + 1) == Some(&q) {
                        s.push(q);
                        i += 2;
                        continue;
                    }
                    break;
                }
                if b[i] == '\\' && q != '`' {
                    if let Some(&n) = b.get(i + 1) {
                        s.push(n);
                        i += 2;
                        continue;
                    }
                }
                s.push(b[i]);
                i += 1;
            }
            i += 1;
            out.push(if q == '`' {
                Tok::Quoted(s)
            } else {
                Tok::Punct('\'')
            });
        } else if ch.is_alphanumeric() || ch == '_' || ch == '$' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '$') {
                i += 1;
            }
            out.push(Tok::Word(b[start..i].iter().collect()));
        } else {
            out.push(Tok::Punct(ch));
            i += 1;
        }
    }
    out
}

fn word(t: Option<&Tok>) -> Option<String> {
    match t {
        Some(Tok::Word(w)) => Some(w.to_ascii_uppercase()),
        _ => None,
    }
}

fn ident(t: Option<&Tok>) -> Option<String> {
    match t {
        Some(Tok::Word(w)) | Some(Tok::Quoted(w)) => Some(w.clone()),
        _ => None,
    }
}

/// Classifies a statement from a QUERY event.
pub fn classify(sql: &str) -> Statement {
    let t = tokens(sql, 16);
    let first = word(t.first());
    let second = word(t.get(1));
    match first.as_deref() {
        Some("BEGIN") => Statement::Begin,
        Some("START") if second.as_deref() == Some("TRANSACTION") => Statement::Begin,
        Some("COMMIT") => Statement::Commit,
        Some("ROLLBACK") if second.as_deref() == Some("TO") => Statement::Other,
        Some("ROLLBACK") => Statement::Rollback,
        Some("XA") => match second.as_deref() {
            Some("START" | "BEGIN") => Statement::XaStart,
            Some("COMMIT") => Statement::XaCommit,
            Some("ROLLBACK") => Statement::XaRollback,
            _ => Statement::Other,
        },
        Some("TRUNCATE") => {
            let mut i = 1;
            if word(t.get(1)).as_deref() == Some("TABLE") {
                i = 2;
            }
            let Some(a) = ident(t.get(i)) else {
                return Statement::Ddl;
            };
            if t.get(i + 1) == Some(&Tok::Punct('.')) {
                match ident(t.get(i + 2)) {
                    Some(b) => Statement::Truncate {
                        db: Some(a),
                        table: b,
                    },
                    None => Statement::Ddl,
                }
            } else {
                Statement::Truncate { db: None, table: a }
            }
        }
        Some("CREATE" | "ALTER" | "DROP" | "RENAME") => Statement::Ddl,
        Some(v @ ("INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "LOAD")) => {
            Statement::Dml { verb: v.to_owned() }
        }
        Some("WITH") => Statement::Dml {
            verb: "WITH".into(),
        },
        _ => Statement::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunc(db: Option<&str>, table: &str) -> Statement {
        Statement::Truncate {
            db: db.map(Into::into),
            table: table.into(),
        }
    }

    #[test]
    fn truncate_forms() {
        assert_eq!(classify("truncate table t"), trunc(None, "t"));
        assert_eq!(
            classify("TRUNCATE `my db`.`we``ird`"),
            trunc(Some("my db"), "we`ird")
        );
        assert_eq!(
            classify("/* c */ truncate shop.orders;"),
            trunc(Some("shop"), "orders")
        );
        assert_eq!(
            classify("truncate table `shop` . `orders`"),
            trunc(Some("shop"), "orders")
        );
        assert_eq!(classify("-- x\ntruncate t2"), trunc(None, "t2"));
        assert_eq!(classify("truncate"), Statement::Ddl);
    }

    #[test]
    fn control_ddl_and_dml() {
        assert_eq!(classify("BEGIN"), Statement::Begin);
        assert_eq!(classify("COMMIT"), Statement::Commit);
        assert_eq!(classify("ROLLBACK"), Statement::Rollback);
        assert_eq!(classify("ROLLBACK TO SAVEPOINT a"), Statement::Other);
        assert_eq!(classify("XA COMMIT X'31',X'',1"), Statement::XaCommit);
        assert_eq!(classify("XA ROLLBACK X'31'"), Statement::XaRollback);
        assert_eq!(classify("XA START X'31'"), Statement::XaStart);
        assert_eq!(classify("XA END X'31'"), Statement::Other);
        assert_eq!(
            classify("/*!40000 ALTER TABLE `t` DISABLE KEYS */"),
            Statement::Ddl
        );
        assert_eq!(classify("create table x (a int)"), Statement::Ddl);
        assert_eq!(
            classify("insert into t values (1)"),
            Statement::Dml {
                verb: "INSERT".into()
            }
        );
        assert_eq!(
            classify("# hi\nUPDATE t SET a = 1"),
            Statement::Dml {
                verb: "UPDATE".into()
            }
        );
        assert_eq!(classify("SET @x = 'truncate t'"), Statement::Other);
        assert_eq!(classify(""), Statement::Other);
        assert_eq!(classify("'unterminated"), Statement::Other);
        assert_eq!(classify("/* unterminated"), Statement::Other);
    }
}
