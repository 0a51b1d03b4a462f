//! binlog: concatenated binlog events → framing → event decoders → rows → envelopes.
//!
//! libfuzzer-sys aborts on every panic, even a caught one. The daemon catches panics of
//! mysql_common's framing (see `stream.rs`) and reports a decode error, so this target lets
//! those through to the entry point's `catch_unwind` and counts them; any other panic aborts.
#![no_main]
use std::sync::atomic::{AtomicU64, Ordering};

static FRAMING_PANICS: AtomicU64 = AtomicU64::new(0);

libfuzzer_sys::fuzz_target!(
    init: {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.location().is_some_and(|l| l.file().contains("/mysql_common-")) {
                if FRAMING_PANICS.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("fuzz: mysql_common framing panicked (caught, as in the daemon): {info}");
                }
                return;
            }
            abort(info);
        }));
    },
    |data: &[u8]| {
        tidemark_mysql_source::fuzzing::binlog_stream(data);
    }
);
