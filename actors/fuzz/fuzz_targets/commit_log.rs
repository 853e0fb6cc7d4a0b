//! Fuzz target `commit_log`: see `ringkv_actors::fuzz_checks::commit_log`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_actors::fuzz_checks::commit_log(data));
