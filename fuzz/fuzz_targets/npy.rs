//! Fuzz target `npy`: bytes as a `.npy` file, through the `float32` reader.
#![no_main]
use std::path::Path;

use hyena::io::npy::parse_f32;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_f32(data, Path::new("fuzz.npy"));
});
