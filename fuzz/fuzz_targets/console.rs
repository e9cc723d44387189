//! Fuzz target: see `baton::fuzz::console`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzz::console(data));
