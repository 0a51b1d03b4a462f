//! Fuzzing entry point for the configuration loader (see `tidemark_core::fuzzing`).
//!
//! Shared by the unit test below and the libFuzzer target in `fuzz/` (which includes this
//! file and `config.rs` by path, since both live in the binary crate). Any text must give a
//! config or an error, never a panic; and an error must not echo a secret: a value holding
//! the canary `hunter2` must not appear in the message.

/// The canary a fuzzed config may carry in a value; errors must never contain it.
pub const CANARY: &str = "hunter2";

/// Loads `data` as a config file. With `check_echo`, panics when the error message repeats
/// a value that holds [`CANARY`].
pub fn config_text(data: &[u8], check_echo: bool) {
    let text = String::from_utf8_lossy(data);
    // `${file:…}` reads files: keep the fuzzer away from devices and pseudo files.
    if ["/dev", "/proc", "/sys", "/run"]
        .iter()
        .any(|p| text.contains(p))
    {
        return;
    }
    let Err(e) = crate::config::load_str(&text, "fuzz.toml") else {
        return;
    };
    let msg = e.to_string();
    if check_echo && msg.contains(CANARY) && canary_only_in_values(&text) {
        panic!("a config error echoes a value: {msg}");
    }
}

/// True when every line holding the canary is `key = "…"` or `key = […]` with the canary
/// on the value side only (so an error naming a key may legitimately contain it otherwise).
fn canary_only_in_values(text: &str) -> bool {
    let mut seen = false;
    for line in text.lines().filter(|l| l.contains(CANARY)) {
        let Some((key, value)) = line.split_once('=') else {
            return false;
        };
        let value = value.trim();
        if key.contains(CANARY) || !(value.starts_with('"') || value.starts_with('[')) {
            return false;
        }
        seen = true;
    }
    seen
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    fn no_panic(data: &[u8]) {
        super::config_text(data, false)
    }

    #[test]
    fn config_corpus_and_mutations_never_panic_or_hang() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/config");
        let stats = tidemark_core::fuzzing::replay(
            "config",
            &dir,
            2000,
            0x636f_6e66,
            Duration::from_secs(5),
            no_panic,
        );
        assert!(stats.corpus > 0, "empty config corpus");
    }
}
