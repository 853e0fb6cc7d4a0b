//! Fuzz target `resp`: see `ringkv_actors::fuzz_checks::resp`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_actors::fuzz_checks::resp(data));
