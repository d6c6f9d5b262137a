//! Fuzz target `vortex_yaml`: bytes (as UTF-8, invalid sequences replaced) as a flat model
//! config through the minimal YAML reader.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = hyena::io::yaml::parse(&text, Path::new("fuzz.yml"));
});
