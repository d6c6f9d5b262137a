//! The StripedHyena stream (`Evo2::stream_forward`): the sequence fed piece by piece with every
//! block's state carried (FIR tails, modal states, key/value caches) equals the one-shot
//! forward for any pieces and chunk sizes; recurrent generation's logits equal the forward's at
//! every step; a mark taken mid-sequence gives two continuations that each equal a fresh run.
//! On the parity fixtures of both generations (their models match the references' forward in
//! tests/evo2.rs).

use std::path::{Path, PathBuf};

use hyena::checkpoint::load_model;
use hyena::models::generate::{generate, DecodeMode, SampleConfig};
use hyena::models::striped::{Evo2Lm, KvPrecision, Workspace};
use hyena::models::{LanguageModel, Precision};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// (fixture directory, the expected-outputs file beside it)
const MODELS: &[(&str, &str)] = &[
    ("evo2/tiny", "evo2/expected-tiny.safetensors"),
    ("evo2/tiny-262k", "evo2/expected-tiny-262k.safetensors"),
    (
        "stripedhyena/tiny-evo1",
        "stripedhyena/expected-tiny-evo1.safetensors",
    ),
    (
        "stripedhyena/tiny-hessian",
        "stripedhyena/expected-tiny-hessian.safetensors",
    ),
];

fn load(dir: &str) -> Box<dyn LanguageModel> {
    load_model(&root().join(dir)).unwrap().model
}

fn evo2(lm: &dyn LanguageModel) -> &Evo2Lm {
    lm.as_any().downcast_ref::<Evo2Lm>().unwrap()
}

/// The fixture's input ids (200 tokens).
fn ids(expected: &str) -> Vec<u32> {
    let bytes = std::fs::read(root().join(expected)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("input_ids").unwrap();
    let raw = t.data();
    match t.dtype() {
        safetensors::Dtype::I64 => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect(),
        _ => raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect(),
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// Logits of the whole sequence by the block-by-block forward.
fn one_shot(lm: &Evo2Lm, ids: &[u32]) -> Vec<f32> {
    let mut ws = Workspace::with_chunk(ids.len());
    lm.net.logits(ids, &mut ws).unwrap().to_vec()
}

/// Logits of the sequence fed in `pieces` (sizes, cycled) with chunks of `chunk`.
fn streamed(lm: &Evo2Lm, ids: &[u32], pieces: &[usize], chunk: usize) -> Vec<f32> {
    let v = lm.net.cfg.vocab_size;
    let mut ws = Workspace::with_chunk(chunk);
    let mut s = lm.net.stream(0).unwrap();
    let mut out = Vec::new();
    let mut a = 0;
    for &p in pieces.iter().cycle() {
        if a == ids.len() {
            break;
        }
        let b = (a + p).min(ids.len());
        lm.net
            .stream_forward(&ids[a..b], &mut s, true, &mut ws)
            .unwrap();
        out.extend_from_slice(&ws.logits[..(b - a) * v]);
        a = b;
    }
    assert_eq!(s.pos(), ids.len());
    out
}

#[test]
fn streamed_logits_equal_the_one_shot_forward_for_any_pieces() {
    // Pieces and chunks smaller than the MR filter (128) and the SE filter (7), not dividing
    // the 200 positions, one token at a time, and the whole sequence at once.
    for (dir, expected) in MODELS {
        let lm = load(dir);
        let lm = evo2(lm.as_ref());
        let ids = ids(expected);
        let want = one_shot(lm, &ids);
        for (pieces, chunk) in [
            (&[200][..], 200),
            (&[200][..], 7),
            (&[1][..], 1024),
            (&[3, 50, 1, 127][..], 5),
            (&[129, 2][..], 64),
        ] {
            let got = streamed(lm, &ids, pieces, chunk);
            let d = max_diff(&got, &want);
            assert!(d < 1e-4, "{dir}: pieces {pieces:?}, chunk {chunk}: {d}");
        }
    }
}

#[test]
fn the_key_value_cache_precision_is_the_attention_arithmetic() {
    // A bf16 cache in both orders gives the same numbers (the same bf16 products), a little
    // off the f32 cache's.
    let mut lm = load("evo2/tiny-262k");
    let ids = ids("evo2/expected-tiny-262k.safetensors");
    let f32_logits = one_shot(evo2(lm.as_ref()), &ids);
    lm.set_kv_cache(Some(KvPrecision::Bf16)).unwrap();
    let lm = evo2(lm.as_ref());
    assert_eq!(lm.net.kv_precision(), KvPrecision::Bf16);
    assert_eq!(lm.net.precision, Precision::F32);
    let a = one_shot(lm, &ids);
    // The same chunking: the same products, the same numbers.
    let b = streamed(lm, &ids, &[ids.len()], ids.len());
    assert!(max_diff(&a, &b) < 1e-5, "{}", max_diff(&a, &b));
    // Other chunkings differ only where an f32 rounding flips a bf16 rounding.
    let c = streamed(lm, &ids, &[13, 1, 60], 16);
    let off = max_diff(&a, &f32_logits);
    let chunked = max_diff(&a, &c);
    eprintln!("bf16 cache: against f32 {off}, chunked against one-shot {chunked}");
    assert!(off > 1e-6 && off < 0.05, "bf16 cache against f32: {off}");
    assert!(chunked < 0.05, "{chunked}");
}

#[test]
fn a_mark_shares_the_prefix_between_two_continuations() {
    for (dir, expected) in [MODELS[0], MODELS[3]] {
        let lm = load(dir);
        let lm = evo2(lm.as_ref());
        let v = lm.net.cfg.vocab_size;
        let ids = ids(expected);
        let (m1, m2) = (ids.len() * 45 / 100, ids.len() * 3 / 4);
        let (prefix, a, b) = (&ids[..m1], &ids[m1..m2], &ids[m2..]);
        let mut ws = Workspace::with_chunk(32);
        let mut s = lm.net.stream(0).unwrap();
        lm.net
            .stream_forward(prefix, &mut s, false, &mut ws)
            .unwrap();
        let mark = s.mark();
        lm.net.stream_forward(a, &mut s, true, &mut ws).unwrap();
        let after_a = ws.logits[..a.len() * v].to_vec();
        s.rewind(&mark).unwrap();
        assert_eq!(s.pos(), m1);
        lm.net.stream_forward(b, &mut s, true, &mut ws).unwrap();
        let after_b = ws.logits[..b.len() * v].to_vec();
        let fresh = |cont: &[u32]| {
            let seq: Vec<u32> = prefix.iter().chain(cont).copied().collect();
            one_shot(lm, &seq)[prefix.len() * v..].to_vec()
        };
        assert!(max_diff(&after_a, &fresh(a)) < 1e-4, "{dir}");
        assert!(max_diff(&after_b, &fresh(b)) < 1e-4, "{dir}");
        // A mark from a later position is refused.
        let mut other = lm.net.stream(0).unwrap();
        assert!(other.rewind(&mark).is_err());
    }
}

#[test]
fn recurrent_generation_equals_the_forward_at_every_step() {
    // 1,000 greedy tokens by recurrent steps; the logits at every step equal the one-shot
    // forward's over prompt + generated tokens, and the tokens are the ones generation by the
    // full forward per token picks (checked on the first 40).
    for (dir, expected) in [MODELS[0], MODELS[3]] {
        let lm = load(dir);
        let v = lm.vocab_size();
        let prompt = &ids(expected)[..20];
        let mut dec = lm.decoder(DecodeMode::Recurrent).unwrap();
        dec.prefill(prompt).unwrap();
        let mut steps = Vec::new();
        let mut toks = prompt.to_vec();
        for _ in 0..1000 {
            let row = dec.logits().to_vec();
            let t = hyena::ops::loss::argmax(&row).0 as u32;
            steps.extend_from_slice(&row);
            toks.push(t);
            dec.step(t).unwrap();
        }
        let e = evo2(lm.as_ref());
        let all = one_shot(e, &toks[..toks.len() - 1]);
        let want = &all[(prompt.len() - 1) * v..];
        let d = max_diff(&steps, want);
        assert!(
            d < 1e-4,
            "{dir}: recurrent logits differ from the forward's by {d}"
        );
        let greedy = SampleConfig {
            temperature: 0.0,
            ..Default::default()
        };
        let mut conv = lm.decoder(DecodeMode::Conv).unwrap();
        let by_conv = generate(conv.as_mut(), prompt, 40, &greedy).unwrap();
        assert_eq!(by_conv, toks[20..60], "{dir}");
        // Sampling with a seed is reproducible through the recurrent decoder.
        let sampled = SampleConfig {
            temperature: 1.0,
            top_k: 4,
            seed: 7,
            ..Default::default()
        };
        let mut r1 = lm.decoder(DecodeMode::Recurrent).unwrap();
        let mut r2 = lm.decoder(DecodeMode::Conv).unwrap();
        let s1 = generate(r1.as_mut(), prompt, 30, &sampled).unwrap();
        let s2 = generate(r2.as_mut(), prompt, 30, &sampled).unwrap();
        assert_eq!(s1, s2, "{dir}");
    }
}

#[test]
fn streams_refuse_what_they_cannot_run() {
    let lm = load("evo2/tiny");
    let lm = evo2(lm.as_ref());
    let mut ws = Workspace::default();
    let mut s = lm.net.stream(0).unwrap();
    let e = lm
        .net
        .stream_forward(&[600], &mut s, true, &mut ws)
        .unwrap_err();
    assert!(e.to_string().contains("600"), "{e}");
    let e = lm
        .net
        .stream_forward(&[], &mut s, true, &mut ws)
        .unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    // Past the model's max_seqlen (8192 for this config).
    let long = vec![65u32; 8192];
    lm.net
        .stream_forward(&long, &mut s, false, &mut ws)
        .unwrap();
    let e = lm
        .net
        .stream_forward(&[65], &mut s, true, &mut ws)
        .unwrap_err();
    assert!(e.to_string().contains("8193"), "{e}");
}
