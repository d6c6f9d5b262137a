//! Optimizer, schedule and clipping against their formulas, and a tiny LM that must overfit one
//! batch to near-zero loss.

mod common;

use common::small_lm;

use hyena::io::safetensors::TensorFile;
use hyena::models::hyenadna::{HyenaLm, LmCache, LmConfig};
use hyena::ops::loss::cross_entropy;
use hyena::params::{DType, Init, ParamStore, P};
use hyena::train::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule};
use hyena::{FilterConfig, HyenaConfig};

/// A linear layer's two tensors: `fc.weight` (decayed, as weights are) and `fc.bias` (not
/// decayed, as biases are).
#[derive(Clone, Copy, Debug)]
struct Toy {
    w: P,
    b: P,
}

/// The toy layer with its store holding the values `w` and `b`.
fn toy(w: &[f32], b: &[f32]) -> (Toy, ParamStore) {
    let (t, mut store) = ParamStore::build(Init::Zeros, DType::F32, |vb| {
        Ok(Toy {
            w: vb.get(&[w.len()], "fc.weight")?,
            b: vb.no_decay().get(&[b.len()], "fc.bias")?,
        })
    })
    .unwrap();
    t.w.of_mut(store.data_mut()).copy_from_slice(w);
    t.b.of_mut(store.data_mut()).copy_from_slice(b);
    (t, store)
}

/// A buffer laid out like `toy`'s store holding `w` and `b` (gradients).
fn toy_buf(t: Toy, store: &ParamStore, w: &[f32], b: &[f32]) -> Vec<f32> {
    let mut g = store.zeros();
    t.w.of_mut(&mut g).copy_from_slice(w);
    t.b.of_mut(&mut g).copy_from_slice(b);
    g
}

#[test]
fn adamw_follows_the_decoupled_update() {
    let cfg = AdamWConfig {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.5,
    };
    let (t, mut p) = toy(&[1.0, -2.0], &[0.5]);
    let g = toy_buf(t, &p, &[0.3, -0.1], &[2.0]);
    let mut opt = AdamW::new(cfg.clone());
    let lr = 0.05;
    // Two steps with the same gradient, computed by hand.
    let mut want = p.clone();
    let (mut mw, mut vw, mut mb, mut vb) = (vec![0.0f64; 2], vec![0.0f64; 2], 0.0f64, 0.0f64);
    for step in 1..=2 {
        opt.step(&mut p, &g, lr);
        let (b1, b2) = (0.9f64, 0.99f64);
        let (c1, c2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
        let want_w = t.w.of_mut(want.data_mut());
        for i in 0..2 {
            let gi = t.w.of(&g)[i] as f64;
            mw[i] = b1 * mw[i] + (1.0 - b1) * gi;
            vw[i] = b2 * vw[i] + (1.0 - b2) * gi * gi;
            let upd = 0.5 * want_w[i] as f64 + (mw[i] / c1) / ((vw[i] / c2).sqrt() + 1e-8);
            want_w[i] = (want_w[i] as f64 - lr as f64 * upd) as f32;
        }
        let gb = t.b.of(&g)[0] as f64;
        mb = b1 * mb + (1.0 - b1) * gb;
        vb = b2 * vb + (1.0 - b2) * gb * gb;
        // Biases are not decayed.
        let want_b = t.b.of_mut(want.data_mut());
        want_b[0] = (want_b[0] as f64 - lr as f64 * (mb / c1) / ((vb / c2).sqrt() + 1e-8)) as f32;
    }
    let (pd, wd) = (p.data(), want.data());
    for (a, b) in
        t.w.of(pd)
            .iter()
            .chain(t.b.of(pd))
            .zip(t.w.of(wd).iter().chain(t.b.of(wd)))
    {
        assert!((a - b).abs() < 1e-6, "{p:?} vs {want:?}");
    }
    assert_eq!(opt.step, 2);
    // State round-trip.
    let st = opt.state_tensors(&p);
    assert!(st.contains_key("exp_avg.fc.weight") && st.contains_key("exp_avg_sq.fc.bias"));
    let mut o2 = AdamW::new(cfg);
    o2.load_state(
        &p,
        &TensorFile {
            path: "optimizer.safetensors".into(),
            tensors: st,
            metadata: Default::default(),
        },
    )
    .unwrap();
    o2.step = opt.step;
    let (mut p1, mut p2) = (p.clone(), p.clone());
    opt.step(&mut p1, &g, lr);
    o2.step(&mut p2, &g, lr);
    assert_eq!(p1, p2);
}

#[test]
fn weight_decay_groups_follow_the_reference() {
    // The tags of a model's store; `pos_emb.z` is a tensor of the store when it is trained.
    let cfg = LmConfig {
        operator: HyenaConfig {
            filter: FilterConfig {
                learn_pos_emb: true,
                ..FilterConfig::default()
            },
            ..LmConfig::default().operator
        },
        ..LmConfig::default()
    };
    let (_, store) =
        ParamStore::build(Init::Zeros, DType::F32, |vb| HyenaLm::new(&cfg, vb)).unwrap();
    let decays = |n: &str| {
        store
            .spec(n)
            .unwrap_or_else(|| panic!("{n} is a tensor of the model"))
            .decay
    };
    for n in [
        "hyena.backbone.layers.0.mixer.in_proj.weight",
        "hyena.backbone.layers.0.mlp.fc1.weight",
        "hyena.backbone.embeddings.word_embeddings.weight",
        "lm_head.weight",
    ] {
        assert!(decays(n), "{n} should decay");
    }
    for n in [
        "hyena.backbone.layers.0.mixer.in_proj.bias",
        "hyena.backbone.layers.0.norm1.weight",
        "hyena.backbone.ln_f.weight",
        "hyena.backbone.layers.0.mixer.filter_fn.implicit_filter.0.weight",
        "hyena.backbone.layers.0.mixer.filter_fn.implicit_filter.1.freq",
        "hyena.backbone.layers.0.mixer.filter_fn.pos_emb.z",
    ] {
        assert!(!decays(n), "{n} should not decay");
    }
}

#[test]
fn schedule_warms_up_then_decays_by_cosine() {
    let s = LrSchedule {
        warmup: 10,
        total: 110,
        min_ratio: 0.1,
    };
    assert!((s.lr(1.0, 0) - 0.1).abs() < 1e-6);
    assert!((s.lr(1.0, 9) - 1.0).abs() < 1e-6);
    assert!((s.lr(1.0, 10) - 1.0).abs() < 1e-6);
    assert!((s.lr(1.0, 60) - 0.55).abs() < 1e-5, "{}", s.lr(1.0, 60));
    assert!((s.lr(1.0, 110) - 0.1).abs() < 1e-6);
    assert!((s.lr(1.0, 500) - 0.1).abs() < 1e-6);
    for t in 10..110 {
        assert!(s.lr(1.0, t + 1) <= s.lr(1.0, t) + 1e-7);
    }
}

#[test]
fn clipping_scales_to_the_max_norm() {
    let (t, store) = toy(&[0.0, 0.0], &[0.0]);
    let mut g = toy_buf(t, &store, &[3.0, 0.0], &[4.0]);
    let n = clip_grad_norm(&store, &mut g, 1.0);
    assert!((n - 5.0).abs() < 1e-6);
    let (gw, gb) = (t.w.of(&g), t.b.of(&g));
    let after = (gw[0] * gw[0] + gb[0] * gb[0]).sqrt();
    assert!((after - 1.0).abs() < 1e-4);
    let n2 = clip_grad_norm(&store, &mut g, 10.0);
    assert!((n2 - after).abs() < 1e-6);
    assert!(
        (t.w.of(&g)[0] - 0.6).abs() < 1e-4,
        "a norm under the limit is left alone"
    );
}

#[test]
fn tiny_lm_overfits_one_batch() {
    let mut cfg = small_lm(2, 32, 64, 64, 16);
    cfg.operator.filter.w = 10.0;
    cfg.operator.filter.shift = 0.05;
    let (lm, mut params) = HyenaLm::fresh(&cfg, 1).unwrap();
    let (b, l) = (2, 48);
    // A fixed random DNA batch (ids 7..=10): memorisable only by using the context.
    let mut s = 12345u64;
    let seq: Vec<u32> = (0..b * (l + 1))
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            7 + (s >> 62) as u32
        })
        .collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for r in 0..b {
        let row = &seq[r * (l + 1)..(r + 1) * (l + 1)];
        x.extend_from_slice(&row[..l]);
        y.extend_from_slice(&row[1..]);
    }
    let v = cfg.padded_vocab();
    let mut opt = AdamW::new(AdamWConfig {
        lr: 3e-3,
        weight_decay: 0.0,
        ..AdamWConfig::default()
    });
    let mut cache = LmCache::default();
    let mut dlogits = vec![0.0; b * l * v];
    let mut first = None;
    let mut last = f32::INFINITY;
    for _ in 0..300 {
        lm.forward(params.data(), &x, b, l, &mut cache).unwrap();
        let (loss, _, _) = cross_entropy(&cache.logits, &y, v, None, &mut dlogits).unwrap();
        first.get_or_insert(loss);
        last = loss;
        let mut grads = params.zeros();
        lm.backward(params.data(), &dlogits, &mut cache, &mut grads)
            .unwrap();
        clip_grad_norm(&params, &mut grads, 1.0);
        opt.step(&mut params, &grads, 3e-3);
    }
    let first = first.unwrap();
    assert!(first > 1.3, "starts near ln(4) or above: {first}");
    assert!(last < 0.05, "loss after 300 steps: {last} (from {first})");
}
