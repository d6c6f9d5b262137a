//! Fuzz target `safetensors`: bytes as a safetensors file (header and data), read into `f32`
//! tensors as checkpoints are.
#![no_main]
use hyena::io::safetensors::TensorFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = TensorFile::from_bytes(data, "fuzz.safetensors") {
        for (name, t) in &f.tensors {
            let _ = f.get_shaped(name, &t.shape);
        }
    }
});
