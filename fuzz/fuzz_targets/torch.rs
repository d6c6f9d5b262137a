//! Fuzz target `torch`: bytes as a `torch.save` checkpoint, through the safe reader (the zip
//! archive, the restricted pickle parser, the state-dict interpretation and the tensor data).
#![no_main]
use std::path::Path;

use hyena::io::torch::read_torch_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_torch_bytes(data.to_vec(), Path::new("fuzz.bin"));
});
