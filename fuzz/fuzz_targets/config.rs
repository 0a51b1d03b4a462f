//! config: `load_str` on arbitrary text; never a panic, never an echoed secret
//! (the echo check is on when TIDEMARK_FUZZ_ECHO=1).
#![no_main]

// Both files belong to the binary crate; included by path, they compile here unchanged.
#[allow(dead_code)]
#[path = "../../src/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "../../src/config_fuzz.rs"]
mod config_fuzz;

static ECHO: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let echo = *ECHO.get_or_init(|| std::env::var("TIDEMARK_FUZZ_ECHO").as_deref() == Ok("1"));
    config_fuzz::config_text(data, echo);
});
