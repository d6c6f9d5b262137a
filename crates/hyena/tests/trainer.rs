//! The training loop: resume equals an uninterrupted run, checkpoints round-trip bit for bit,
//! bad checkpoints and bad settings give clear errors.

mod common;

use common::small_lm;

use std::path::{Path, PathBuf};

use hyena::checkpoint::{load_model, save_model};
use hyena::models::generate::{generate, DecodeMode, SampleConfig};
use hyena::models::hyenadna::{HyenaLm, LmCache, LmConfig};
use hyena::models::{LanguageModel, Model};
use hyena::train::lm::{TrainConfig, Trainer};
use hyena::train::AdamWConfig;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hyena-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A freshly initialised model of `model_cfg()` (seeded).
fn fresh(seed: u64) -> Model<HyenaLm> {
    let (net, params) = HyenaLm::fresh(&model_cfg(), seed).unwrap();
    Model { net, params }
}

/// The model `dir` holds, as a HyenaDNA LM.
fn load_lm(dir: &Path) -> hyena::Result<Model<HyenaLm>> {
    load_model(dir)?
        .downcast::<Model<HyenaLm>>("this test")
        .cloned()
}

/// `n` tokens sampled after `prompt` by the full forward (a fresh decoder each call).
fn sample(
    m: &Model<HyenaLm>,
    prompt: &[u32],
    n: usize,
    cfg: &SampleConfig,
) -> hyena::Result<Vec<u32>> {
    let mut dec = m.decoder(DecodeMode::Conv)?;
    generate(dec.as_mut(), prompt, n, cfg)
}

fn model_cfg() -> LmConfig {
    let mut c = small_lm(2, 16, 32, 34, 8);
    c.operator.filter.w = 10.0;
    c.operator.filter.shift = 0.05;
    c
}

fn train_cfg(steps: u64) -> TrainConfig {
    TrainConfig {
        batch_size: 3,
        grad_accum: 2,
        seq_len: 32,
        steps,
        eval_every: 100,
        eval_windows: 4,
        clip: 1.0,
        seed: 9,
        optim: AdamWConfig {
            lr: 2e-3,
            ..AdamWConfig::default()
        },
        warmup: 2,
        min_lr_ratio: 0.1,
        ..TrainConfig::default()
    }
}

/// A DNA-like stream with some structure (a repeated motif with mutations).
fn stream(n: usize, seed: u64) -> Vec<u32> {
    let mut s = seed;
    let motif = [7u32, 8, 9, 10, 10, 9, 7, 8, 8, 7];
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if (s >> 60) < 3 {
                7 + ((s >> 40) % 4) as u32
            } else {
                motif[i % motif.len()]
            }
        })
        .collect()
}

#[test]
fn resume_reproduces_an_uninterrupted_run() {
    let (train, val) = (stream(4000, 1), stream(400, 2));
    let mut full = Trainer::new(fresh(3), train_cfg(6), train.clone(), val.clone()).unwrap();
    let losses: Vec<f32> = (0..6).map(|_| full.train_step().unwrap().loss).collect();

    let dir = tmpdir("resume");
    let mut first = Trainer::new(fresh(3), train_cfg(6), train.clone(), val.clone()).unwrap();
    let mut got: Vec<f32> = (0..3).map(|_| first.train_step().unwrap().loss).collect();
    first.save(&dir, &serde_json::json!({})).unwrap();
    drop(first);
    let mut second = Trainer::resume(&dir, &model_cfg(), train_cfg(6), train, val).unwrap();
    assert_eq!(second.step(), 3);
    got.extend((0..3).map(|_| second.train_step().unwrap().loss));
    assert_eq!(
        got, losses,
        "resumed run must match the uninterrupted one bit for bit"
    );
    assert!(losses[5] < losses[0], "the loss goes down: {losses:?}");
    let ev = second.evaluate().unwrap();
    assert!(ev.loss.is_finite() && ev.tokens == 4 * 32);
    assert!((ev.bits_per_token - ev.loss / std::f64::consts::LN_2).abs() < 1e-9);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checkpoint_round_trip_is_bit_exact() {
    let lm = fresh(11);
    let dir = tmpdir("roundtrip");
    save_model(&dir, &lm).unwrap();
    let back = load_lm(&dir).unwrap();
    assert_eq!(back.params, lm.params);
    let toks = stream(2 * 30, 5);
    let (mut c1, mut c2) = (LmCache::default(), LmCache::default());
    lm.net.forward(lm.p(), &toks, 2, 30, &mut c1).unwrap();
    back.net.forward(back.p(), &toks, 2, 30, &mut c2).unwrap();
    assert_eq!(c1.logits, c2.logits);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_checkpoints_and_settings_are_clear_errors() {
    let lm = fresh(11);
    let dir = tmpdir("bad");
    save_model(&dir, &lm).unwrap();
    // Truncated weights.
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_model(&dir).err().unwrap().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    // Missing config.
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = load_model(&dir).err().unwrap().to_string();
    assert!(e.contains("config.json"), "{e}");
    // Shapes that disagree with the config.
    save_model(&dir, &lm).unwrap();
    let mut other = model_cfg();
    other.d_inner = 48;
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({ "model": other }).to_string(),
    )
    .unwrap();
    let e = load_model(&dir).err().unwrap().to_string();
    assert!(e.contains("mlp.fc1.weight") && e.contains("shape"), "{e}");
    // Resuming with a different model config.
    let (train, val) = (stream(4000, 1), stream(400, 2));
    let t = Trainer::new(fresh(3), train_cfg(2), train.clone(), val.clone()).unwrap();
    t.save(&dir, &serde_json::json!({})).unwrap();
    let e = Trainer::resume(&dir, &other, train_cfg(2), train.clone(), val.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("differs"), "{e}");
    // Data shorter than one window.
    let e = Trainer::new(fresh(3), train_cfg(2), stream(20, 1), val)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("only 20 tokens"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generation_is_reproducible_and_respects_its_settings() {
    let lm = fresh(2);
    let prompt = stream(10, 3);
    let cfg = SampleConfig {
        temperature: 1.0,
        top_k: 0,
        seed: 42,
        ..Default::default()
    };
    // 40 new tokens: the context grows past l_max (34) and is windowed.
    let a = sample(&lm, &prompt, 40, &cfg).unwrap();
    let b = sample(&lm, &prompt, 40, &cfg).unwrap();
    assert_eq!(a, b, "same seed, same tokens");
    assert_eq!(a.len(), 40);
    assert!(a.iter().all(|&t| t < 12), "only real vocabulary ids: {a:?}");
    let c = sample(
        &lm,
        &prompt,
        40,
        &SampleConfig {
            seed: 43,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_ne!(a, c, "another seed samples differently");
    // Greedy decoding ignores the seed; top-1 equals greedy.
    let g1 = sample(
        &lm,
        &prompt,
        8,
        &SampleConfig {
            temperature: 0.0,
            top_k: 0,
            seed: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let g2 = sample(
        &lm,
        &prompt,
        8,
        &SampleConfig {
            temperature: 0.0,
            top_k: 0,
            seed: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let k1 = sample(
        &lm,
        &prompt,
        8,
        &SampleConfig {
            temperature: 1.0,
            top_k: 1,
            seed: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(g1, g2);
    assert_eq!(g1, k1);
    // An allowed set (the bases) is respected, even by an untrained model.
    let bases = sample(
        &lm,
        &prompt,
        60,
        &SampleConfig {
            allowed: vec![7, 8, 9, 10, 11],
            ..cfg.clone()
        },
    )
    .unwrap();
    assert!(bases.iter().all(|t| (7..12).contains(t)), "{bases:?}");
    assert!(
        a.iter().any(|t| !(7..12).contains(t)),
        "unrestricted: {a:?}"
    );
    assert!(sample(&lm, &[], 3, &cfg).is_err());
}

#[test]
fn loss_curve_png_is_written() {
    use hyena::plot::{loss_curve_png, RefLine};
    let dir = tmpdir("plot");
    let p = dir.join("loss.png");
    let train: Vec<(u64, f64)> = (0..200)
        .map(|s| {
            (
                s,
                2.0 - (s as f64 / 200.0) * 0.2 + 0.03 * ((s as f64) * 0.7).sin(),
            )
        })
        .collect();
    let val = vec![(50, 1.95), (100, 1.9), (200, 1.85)];
    let refs = vec![RefLine {
        label: "order-8 Markov".into(),
        value: 1.92,
    }];
    loss_curve_png(&p, "test run", &train, &val, &refs).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(bytes.len() > 5_000, "a real picture, {} bytes", bytes.len());
    let _ = std::fs::remove_dir_all(&dir);
}
