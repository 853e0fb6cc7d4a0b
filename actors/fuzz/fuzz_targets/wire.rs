//! Fuzz target `wire`: see `ringkv_actors::fuzz_checks::wire`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_actors::fuzz_checks::wire(data));
