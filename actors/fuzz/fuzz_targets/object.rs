//! Fuzz target `object`: see `ringkv_actors::fuzz_checks::object`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_actors::fuzz_checks::object(data));
