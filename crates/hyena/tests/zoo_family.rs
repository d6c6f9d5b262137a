//! The zoo language-model family of the run-directory module: a saved zoo model loads back
//! through `load_model` with the same parameters, and what the commands use (loss, hidden
//! states, log-likelihoods, conv and recurrent decoding) agrees with the training forward.

mod common;

use common::TempDir;
use hyena::checkpoint::{load_model, save_model};
use hyena::layers::layer::Slot;
use hyena::layers::lean::InferWorkspace;
use hyena::models::generate::DecodeMode;
use hyena::models::zoo::{parse_layers, ArchConfig, NormKind, ZooCache, ZooModel};
use hyena::models::{LanguageModel, Model};
use hyena::testing::rand_vec;

fn arch(layers: &str) -> ArchConfig {
    ArchConfig {
        layers: parse_layers(layers).unwrap(),
        d_model: 8,
        n_heads: 2,
        state_size: 4,
        norm: NormKind::Rms,
        vocab_size: 7,
        max_len: 24,
        decoder: false,
    }
}

fn model(layers: &str, seed: u64) -> Model<ZooModel> {
    let (net, mut params) = ZooModel::fresh(&arch(layers), seed).unwrap();
    // Move every tensor off its init (zero biases, unit norms) so that each one matters.
    let noise = rand_vec(params.len(), seed, 0.1);
    for (v, r) in params.data_mut().iter_mut().zip(noise) {
        *v += r;
    }
    Model { net, params }
}

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    rand_vec(n, seed, 1.0)
        .iter()
        .map(|x| ((x + 1.0) * 3.5).min(6.0) as u32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn saved_zoo_model_loads_back_bit_identical() {
    let m = model("se,swiglu,attn,mlp", 1);
    let dir = TempDir::new("zoo-family");
    save_model(&dir.0, &m).unwrap();
    let loaded = load_model(&dir.0).unwrap();
    assert_eq!(loaded.family, "zoo");
    let back = loaded.downcast::<Model<ZooModel>>("test").unwrap();
    assert_eq!(back.net.cfg, m.net.cfg);
    assert_eq!(back.params.len(), m.params.len());
    assert!(back
        .p()
        .iter()
        .zip(m.p())
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    // The loaded model computes the same loss as the one saved.
    let (x, y) = (tokens(2 * 16, 3), tokens(2 * 16, 4));
    let a = m.loss(&x, &y, 2, 16, &mut Slot::default()).unwrap();
    let b = loaded
        .model
        .loss(&x, &y, 2, 16, &mut Slot::default())
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.count, 32);
}

#[test]
fn encoder_decoder_models_are_refused() {
    let mut a = arch("attn,swiglu");
    a.decoder = true;
    let (net, params) = ZooModel::fresh(&a, 0).unwrap();
    let dir = TempDir::new("zoo-decoder");
    save_model(&dir.0, &Model { net, params }).unwrap();
    let e = load_model(&dir.0)
        .err()
        .expect("a compression model must be refused");
    assert!(e.to_string().contains("encoder-decoder"), "{e}");
}

#[test]
fn scores_and_hidden_states_follow_the_training_forward() {
    let m = model("li,swiglu,mh-attn,swiglu", 5);
    let toks = tokens(20, 6);
    let mut cache = ZooCache::default();
    m.net.forward(m.p(), &toks, 1, 20, &mut cache).unwrap();
    // Log-likelihoods: their negated sum is the cross-entropy of the next-token targets.
    let mut ws = InferWorkspace::new(64);
    let mut lls = Vec::new();
    let total = m.log_likelihood(&toks, &mut ws, &mut lls).unwrap();
    assert_eq!(lls.len(), 19);
    let mut y: Vec<u32> = toks[1..].to_vec();
    y.push(0);
    let ls = m.loss(&toks, &y, 1, 20, &mut Slot::default()).unwrap();
    // The loss counts the last position too (target 0); take it off.
    let v = 7;
    let last = &cache.logits[19 * v..20 * v];
    let mx = last.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = mx as f64
        + last
            .iter()
            .map(|&z| ((z - mx) as f64).exp())
            .sum::<f64>()
            .ln();
    let last_nll = lse - last[0] as f64;
    assert!(
        (-total - (ls.loss_sum - last_nll)).abs() < 1e-4,
        "{total} vs {}",
        ls.loss_sum
    );
    // Final hidden states: normalised, so each row has RMS about 1 before the norm weight;
    // layer 0 is the embedding of the tokens.
    let n = m.n_layer();
    let h0 = m.hidden_states(&toks, 0, &mut ws).unwrap().to_vec();
    let d = 8;
    let emb = &m.checkpoint_tensors()["embedding.weight"].data;
    for (t, row) in h0.chunks_exact(d).enumerate() {
        let k = toks[t] as usize;
        assert_eq!(row, &emb[k * d..(k + 1) * d]);
    }
    let hn = m.hidden_states(&toks, n, &mut ws).unwrap();
    assert_eq!(hn.len(), 20 * d);
    assert!(m.hidden_states(&toks, n + 1, &mut ws).is_err());
}

#[test]
fn recurrent_decoding_equals_the_forward() {
    let m = model("se,swiglu,mr,mlp,li,ssm,swiglu", 7);
    let toks = tokens(18, 8);
    let mut cache = ZooCache::default();
    m.net.forward(m.p(), &toks, 1, 18, &mut cache).unwrap();
    let v = 7;
    for mode in [DecodeMode::Conv, DecodeMode::Recurrent] {
        let mut dec = m.decoder(mode).unwrap();
        dec.prefill(&toks[..1]).unwrap();
        for t in 1..=toks.len() {
            let want = &cache.logits[(t - 1) * v..t * v];
            let err = max_diff(dec.logits(), want);
            assert!(err < 1e-4, "{mode:?} token {t}: {err}");
            if t < toks.len() {
                dec.step(toks[t]).unwrap();
            }
        }
    }
    // Attention has no recurrent form: a clear error, not a wrong answer.
    let a = model("attn,swiglu", 9);
    let e = a
        .decoder(DecodeMode::Recurrent)
        .err()
        .expect("attention cannot step");
    assert!(e.to_string().contains("`attn`"), "{e}");
}
