//! Keeping secrets out of logs and error messages.

/// A connection URL with its password replaced by `***`, for logs and errors.
pub fn url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let query: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let secret = matches!(k.as_ref(), "password" | "token" | "sslpassword");
                    (
                        k.into_owned(),
                        if secret { "***".into() } else { v.into_owned() },
                    )
                })
                .collect();
            if !query.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(query);
            }
            u.to_string()
        }
        // Not a URL: show nothing that might be a secret.
        Err(_) => "<unparsable url>".into(),
    }
}

/// Removes every occurrence of each secret from `text`.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(*s, "***");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn hides_passwords() {
        assert_eq!(
            super::url("postgres://u:s3cret@h:5432/db?sslmode=require&password=x"),
            "postgres://u:***@h:5432/db?sslmode=require&password=***"
        );
        assert_eq!(super::url("not a url s3cret"), "<unparsable url>");
        assert_eq!(
            super::scrub("login s3cret failed", &["s3cret"]),
            "login *** failed"
        );
    }
}
