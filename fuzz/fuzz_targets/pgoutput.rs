//! pgoutput: framed replication messages → relation cache → rows → envelopes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tidemark_postgres_source::fuzzing::pgoutput_stream(data);
});
