//! Fuzz target `context`: see `ringkv_actors::fuzz_checks::context`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_actors::fuzz_checks::context(data));
