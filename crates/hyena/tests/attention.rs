//! Causal multi-head attention with RoPE (`hyena::layers::attention`): forward against the f64
//! loop reference, finite-difference gradients, causality and window locality, the relative-
//! position property of RoPE, and configuration errors.

use hyena::layers::attention::reference::attention_reference;
use hyena::layers::attention::{rope_apply, Attention, AttentionConfig};
use hyena::layers::layer::{Layer, Slot};
use hyena::params::ParamStore;
use hyena::testing::{built, check_causal, check_layer_grads, init_params, rand_vec};

/// A test case: `(B, L, D, H, rotary_dim, window, bias)`.
type Case = (usize, usize, usize, usize, usize, Option<usize>, bool);

fn cfg(d: usize, h: usize, r: usize, window: Option<usize>, bias: bool) -> AttentionConfig {
    AttentionConfig {
        d_model: d,
        n_heads: h,
        rotary_dim: r,
        rope_base: 10000.0,
        window,
        bias,
    }
}

/// Parameters moved off their init (the zero biases would hide bias errors).
fn params(layer: &Attention, store: &ParamStore, seed: u64) -> Vec<f32> {
    let mut p = init_params(layer, store, seed);
    let jitter = rand_vec(p.len(), seed + 7, 0.1);
    for (v, j) in p.iter_mut().zip(jitter) {
        *v += j;
    }
    p
}

fn forward(layer: &Attention, p: &[f32], x: &[f32], b: usize, l: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    layer
        .forward(p, x, b, l, &mut y, &mut Slot::default())
        .expect("forward");
    y
}

#[test]
fn forward_matches_reference() {
    // (B, L, D, H, rotary_dim, window, bias)
    let cases: &[Case] = &[
        (1, 1, 8, 1, 8, None, true),
        (2, 7, 8, 2, 4, None, false),
        (2, 7, 8, 2, 4, Some(1), true),
        (1, 33, 16, 4, 4, Some(5), true),
        (2, 33, 16, 1, 16, None, true),
        (1, 33, 12, 3, 2, Some(40), false),
        (1, 100, 16, 2, 8, None, true),
        (2, 100, 16, 4, 2, Some(5), false),
        (1, 100, 16, 2, 0, Some(70), true),
        (1, 150, 8, 2, 4, Some(100), true), // several row blocks and a band wider than a block
    ];
    for (i, &(b, l, d, h, r, w, bias)) in cases.iter().enumerate() {
        let c = cfg(d, h, r, w, bias);
        let (layer, store) = built(|vb| Attention::new(c.clone(), vb)).expect("valid config");
        let p = params(&layer, &store, 10 + i as u64);
        let x = rand_vec(b * l * d, 100 + i as u64, 1.0);
        let y = forward(&layer, &p, &x, b, l);
        let yr = attention_reference(&layer, &p, &x, b, l).expect("reference");
        let err = y
            .iter()
            .zip(&yr)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("forward case {i}: max abs diff {err:.2e}");
        assert!(
            err <= 1e-4,
            "case {i} {c:?} B={b} L={l}: max abs diff {err}"
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    // f32 central differences with eps = 1e-2 (fixed in the checker): the observed worst
    // relative error is ~2e-4; 5e-3 leaves margin for f32 noise without hiding real mistakes
    // (a wrong rotation direction or a missing softmax term gives errors of order 0.1 to 1).
    let cases: &[Case] = &[
        (2, 7, 8, 2, 4, None, true),
        (1, 9, 8, 1, 8, Some(3), false),
        (2, 12, 12, 3, 2, Some(1), true),
        (1, 20, 8, 2, 2, None, false),
        (1, 70, 4, 1, 4, Some(9), true), // two row blocks with a window
    ];
    for (i, &(b, l, d, h, r, w, bias)) in cases.iter().enumerate() {
        let (layer, store) =
            built(|vb| Attention::new(cfg(d, h, r, w, bias), vb)).expect("valid config");
        let worst = check_layer_grads(&layer, &store, b, l, 40 + i as u64, 0.1, 5e-3)
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        eprintln!("grad case {i}: worst relative error {worst:.2e}");
        assert!(worst < 5e-3);
    }
}

#[test]
fn causal_and_window_local() {
    for (w, bias) in [(None, true), (Some(1), false), (Some(4), true)] {
        let (layer, store) =
            built(|vb| Attention::new(cfg(8, 2, 4, w, bias), vb)).expect("valid config");
        check_causal(&layer, &store, 2, 17, 5, 0.0).unwrap_or_else(|e| panic!("window {w:?}: {e}"));
    }
    // With a window w, an input change at t can only reach outputs t ..= t + w − 1 of a
    // single attention layer: later ones must be bit-for-bit unchanged.
    let (b, l, d) = (2, 40, 8);
    for w in [1, 3, 7] {
        let (layer, store) =
            built(|vb| Attention::new(cfg(d, 2, 4, Some(w), true), vb)).expect("valid config");
        let p = params(&layer, &store, 3);
        let x = rand_vec(b * l * d, 4, 1.0);
        let y0 = forward(&layer, &p, &x, b, l);
        for t in [0, 5, 20, 39] {
            let mut xp = x.clone();
            for bi in 0..b {
                for j in 0..d {
                    xp[(bi * l + t) * d + j] += 0.5;
                }
            }
            let y1 = forward(&layer, &p, &xp, b, l);
            for bi in 0..b {
                let changed = |s: usize| {
                    (0..d).any(|j| {
                        let i = (bi * l + s) * d + j;
                        y1[i] != y0[i]
                    })
                };
                for s in (t + w).min(l)..l {
                    assert!(!changed(s), "w={w}: input at {t} changed output at {s}");
                }
                assert!(changed(t), "w={w}: input at {t} did not change output {t}");
            }
        }
    }
}

#[test]
fn rope_scores_depend_on_relative_position_only() {
    let (h, hd, r) = (2, 8, 6);
    let q = rand_vec(h * hd, 1, 1.0);
    let k = rand_vec(h * hd, 2, 1.0);
    let rot = |v: &[f32], pos: usize| {
        let mut v = v.to_vec();
        rope_apply(&mut v, 1, h, hd, r, 10000.0, pos).expect("rope");
        v
    };
    let dots = |a: &[f32], b: &[f32]| -> Vec<f64> {
        a.chunks(hd)
            .zip(b.chunks(hd))
            .map(|(x, y)| x.iter().zip(y).map(|(u, v)| *u as f64 * *v as f64).sum())
            .collect()
    };
    for (t, s) in [(0, 0), (3, 1), (10, 2), (7, 7), (40, 33)] {
        let base = dots(&rot(&q, t), &rot(&k, s));
        for c in [1, 5, 100] {
            let shifted = dots(&rot(&q, t + c), &rot(&k, s + c));
            for (a, b) in base.iter().zip(&shifted) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "(t, s) = ({t}, {s}) + {c}: {a} vs {b}"
                );
            }
        }
    }
    // Rotation preserves norms, leaves the dims past rotary_dim alone, and position 0 is
    // the identity.
    let qr = rot(&q, 17);
    for (a, b) in q.chunks(hd).zip(qr.chunks(hd)) {
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>();
        assert!((n(a) - n(b)).abs() < 1e-5);
        assert_eq!(a[r..], b[r..]);
    }
    assert_eq!(rot(&q, 0), q);
    // The offset equals a longer sequence's later positions: [L=3] at offset 2 = rows 2..5.
    let seq = rand_vec(5 * h * hd, 9, 1.0);
    let mut full = seq.clone();
    rope_apply(&mut full, 5, h, hd, r, 10000.0, 0).expect("rope");
    let mut tail = seq[2 * h * hd..].to_vec();
    rope_apply(&mut tail, 3, h, hd, r, 10000.0, 2).expect("rope");
    assert_eq!(&full[2 * h * hd..], &tail[..]);
}

#[test]
fn bad_configs_are_errors() {
    let bad = [
        (cfg(10, 3, 2, None, true), "n_heads"),
        (cfg(8, 2, 3, None, true), "rotary_dim"),
        (cfg(8, 2, 6, None, true), "rotary_dim"),
        (cfg(8, 2, 4, Some(0), true), "window"),
        (cfg(0, 1, 0, None, true), "d_model"),
        (cfg(8, 0, 0, None, true), "n_heads"),
        (
            AttentionConfig {
                rope_base: -1.0,
                ..cfg(8, 2, 4, None, true)
            },
            "rope_base",
        ),
    ];
    for (c, field) in bad {
        let e = built(|vb| Attention::new(c.clone(), vb)).expect_err("invalid config accepted");
        assert!(e.to_string().contains(field), "{c:?}: {e}");
    }
    let mut v = vec![0.0; 16];
    assert!(rope_apply(&mut v, 2, 1, 8, 3, 10000.0, 0).is_err());
    assert!(rope_apply(&mut v, 3, 1, 8, 4, 10000.0, 0).is_err());
    // Wrong buffer sizes are errors too, not panics.
    let (layer, store) = built(|vb| Attention::new(cfg(8, 2, 4, None, true), vb)).expect("valid");
    let p = init_params(&layer, &store, 0);
    let mut y = vec![0.0; 16];
    let r = layer.forward(&p, &[0.0; 15], 1, 2, &mut y, &mut Slot::default());
    assert!(r.is_err());
    let r = layer.forward(&p[1..], &[0.0; 16], 1, 2, &mut y, &mut Slot::default());
    assert!(r.is_err());
    let (mut dx, mut g) = (vec![0.0; 16], vec![0.0; p.len()]);
    let r = layer.backward(
        &p,
        &[0.0; 16],
        &[0.0; 16],
        1,
        2,
        &mut Slot::default(),
        &mut dx,
        &mut g,
    );
    assert!(r.is_err(), "backward without forward");
}

#[test]
fn params_init_and_serde() {
    let c = AttentionConfig::mad_mh_attention(128);
    let (layer, store) = built(|vb| Attention::new(c.clone(), vb)).expect("valid");
    let names: Vec<_> = store.specs().iter().map(|s| s.name.clone()).collect();
    assert_eq!(
        names,
        [
            "Wqkv.weight",
            "Wqkv.bias",
            "out_proj.weight",
            "out_proj.bias"
        ]
    );
    assert_eq!(layer.kind(), "attn");
    let p = init_params(&layer, &store, 1);
    let bound = 1.0 / (128f32).sqrt();
    let (wqkv, rest) = p.split_at(3 * 128 * 128);
    assert!(wqkv.iter().all(|v| v.abs() <= bound));
    assert!(wqkv.iter().any(|v| v.abs() > 0.5 * bound));
    assert!(
        rest[..3 * 128].iter().all(|&v| v == 0.0),
        "biases start at zero"
    );
    let (_no_bias, no_bias_store) =
        built(|vb| Attention::new(cfg(8, 2, 4, None, false), vb)).expect("valid");
    assert_eq!(no_bias_store.specs().len(), 2);

    let json = serde_json::to_string(&c).expect("serialize");
    let back: AttentionConfig = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, c);
    let short: AttentionConfig =
        serde_json::from_str(r#"{"d_model": 128, "n_heads": 1, "rotary_dim": 128}"#)
            .expect("defaults");
    assert_eq!(short, AttentionConfig::mad_attention(128));
}
