//! binlog: concatenated binlog events → framing → event decoders → rows → envelopes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tidemark_mysql_source::fuzzing::binlog_stream(data);
});
