//! Fuzz target: see `baton::fuzz::workflow`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzz::workflow(data));
