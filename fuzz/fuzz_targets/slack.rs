//! Fuzz target: see `baton::fuzz::slack`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzz::slack(data));
