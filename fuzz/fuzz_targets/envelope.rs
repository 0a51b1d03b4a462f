//! envelope: the sink's fast parser against the derived one (differential).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tidemark_core::sink::fuzzing::envelope(data);
});
