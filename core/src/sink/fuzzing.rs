//! Fuzzing entry point for the sink's envelope parsers (see [`crate::fuzzing`]).
//!
//! A differential target: the hand-written fast parser ([`super::parse::EnvelopeParser`])
//! must accept exactly what the derived one ([`Envelope::parse`]) accepts and build the same
//! envelope, a second parse of the same bytes (schema block now from the cache) must build
//! it again, and an accepted envelope must survive a serialize/parse round trip. Any
//! disagreement panics, which is what the fuzzer reports.

use super::parse::EnvelopeParser;
use crate::envelope::Envelope;

/// Runs both parsers on `data` and panics on any disagreement.
pub fn envelope(data: &[u8]) {
    let derived = Envelope::parse(data);
    let mut parser = EnvelopeParser::default();
    let fast = parser.parse(data);
    let fast = match (fast, derived) {
        (Ok(f), Ok(d)) => {
            let (fv, dv) = (as_json(&f), as_json(&d));
            assert_eq!(fv, dv, "fast and derived parsers built different envelopes");
            f
        }
        (Err(_), Err(_)) => return,
        // serde_json skips over ignored strings without checking their UTF-8; the fast
        // parser checks the whole payload first. Stricter is fine, laxer is not.
        (Err(_), Ok(_)) if std::str::from_utf8(data).is_err() => return,
        (Err(e), Ok(_)) => panic!("only the derived parser accepts this envelope: {e}"),
        (Ok(_), Err(e)) => panic!("only the fast parser accepts this envelope: {e}"),
    };
    let again = parser
        .parse(data)
        .unwrap_or_else(|e| panic!("the second parse (cached schema) failed: {e}"));
    assert_eq!(
        as_json(&fast),
        as_json(&again),
        "the cached schema block changed the envelope"
    );
    let bytes = serde_json::to_vec(&fast)
        .unwrap_or_else(|e| panic!("a parsed envelope does not serialize: {e}"));
    let back = EnvelopeParser::default()
        .parse(&bytes)
        .unwrap_or_else(|e| panic!("a serialized envelope does not parse back: {e}"));
    assert_eq!(
        as_json(&fast),
        as_json(&back),
        "round trip changed the envelope"
    );
}

fn as_json(env: &Envelope) -> serde_json::Value {
    serde_json::to_value(env).unwrap_or_else(|e| panic!("envelope to JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    #[test]
    fn envelope_corpus_and_mutations_never_disagree_or_panic() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/envelope");
        let stats = crate::fuzzing::replay(
            "envelope",
            &dir,
            3000,
            0x656e_7665,
            Duration::from_secs(5),
            super::envelope,
        );
        assert!(stats.corpus > 0, "no corpus in {}", dir.display());
    }
}
