//! Fuzz target: see `baton::fuzz::discord`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzz::discord(data));
