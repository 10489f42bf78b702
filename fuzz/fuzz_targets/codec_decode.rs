//! libFuzzer target: see `checks::codec_decode`.

#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)] // each target uses one check
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::codec_decode(data));
