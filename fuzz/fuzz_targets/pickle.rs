//! Fuzz target `pickle`: bytes as a raw pickle stream (a checkpoint's `data.pkl`), through the
//! pickle parser alone, so the fuzzer need not build a zip archive around it.
#![no_main]
use std::path::Path;

use hyena::io::torch::pickle::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = parse(data, Path::new("data.pkl")) {
        let _ = v.describe();
    }
});
