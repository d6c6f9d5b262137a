//! Fuzz target `torch_parts`: a `torch.save` checkpoint cut into byte-split parts, read as one
//! file by the lazy reader. The first byte's low bit says one cut or two; the next two (or
//! four) bytes are the cut offsets (little-endian u16, clamped to the rest); the rest is the
//! checkpoint. Every float tensor is then read as f32 and as bf16.
#![no_main]
use std::path::Path;

use hyena::io::torch::TorchCheckpoint;
use hyena::params::TensorSource;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let ncuts = 1 + usize::from(mode & 1);
    if rest.len() < 2 * ncuts {
        return;
    }
    let (head, body) = rest.split_at(2 * ncuts);
    let mut cuts: Vec<usize> = head
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])).min(body.len()))
        .collect();
    cuts.sort_unstable();
    let mut parts = Vec::new();
    let mut prev = 0;
    for c in cuts.into_iter().chain([body.len()]) {
        parts.push(body[prev..c].to_vec());
        prev = c;
    }
    let Ok(ck) = TorchCheckpoint::from_parts_bytes(parts, Path::new("fuzz.pt")) else {
        return;
    };
    for name in ck.names() {
        let Some(shape) = ck.shape(&name) else {
            continue;
        };
        let n: usize = shape.iter().product();
        // The view was checked against the stored bytes on open, so `n` is bounded by the input.
        let mut f = vec![0f32; n];
        let _ = ck.read_f32(&name, &mut f);
        let mut b = vec![0u16; n];
        let _ = ck.read_bf16(&name, &mut b);
    }
});
