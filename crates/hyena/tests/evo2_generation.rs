//! Generation parity with the reference: vortex's own cached greedy generation on the Evo 2
//! tiny fixture (`tests/fixtures/generation/make_generation_fixtures.py`) gives the same 64
//! tokens as hyena's recurrent decoding, from a prompt longer than the MR filter and from one
//! shorter than it, and hyena's logits at every step are within 1e-4 of the reference's.

use std::path::{Path, PathBuf};

use hyena::checkpoint::load_model;
use hyena::models::generate::{generate, DecodeMode, SampleConfig};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn ints(path: &Path, name: &str) -> Vec<u32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect()
}

fn floats(path: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn greedy_generation_equals_vortex_cached_generation() {
    let lm = load_model(&root().join("evo2/tiny")).unwrap().model;
    let v = lm.vocab_size();
    let path = root().join("generation/evo2-tiny.safetensors");
    let greedy = SampleConfig {
        temperature: 0.0,
        ..Default::default()
    };
    for key in ["long", "short"] {
        let prompt = ints(&path, &format!("{key}.prompt"));
        let want = ints(&path, &format!("{key}.tokens"));
        let scores = floats(&path, &format!("{key}.scores"));
        assert_eq!(scores.len(), want.len() * v);
        let mut dec = lm.decoder(DecodeMode::Recurrent).unwrap();
        let got = generate(dec.as_mut(), &prompt, want.len(), &greedy).unwrap();
        assert_eq!(got, want, "{key} prompt ({} tokens)", prompt.len());
        // The logits of every step, fed the reference's tokens.
        let mut dec = lm.decoder(DecodeMode::Recurrent).unwrap();
        dec.prefill(&prompt).unwrap();
        let mut worst = 0.0f32;
        for (i, &t) in want.iter().enumerate() {
            let row = dec.logits();
            let r = &scores[i * v..(i + 1) * v];
            worst = row
                .iter()
                .zip(r)
                .map(|(a, b)| (a - b).abs())
                .fold(worst, f32::max);
            dec.step(t).unwrap();
        }
        eprintln!("{key}: max |logits − vortex cached| over 64 steps {worst:.3e}");
        assert!(worst < 1e-4, "{key}: {worst}");
    }
}
