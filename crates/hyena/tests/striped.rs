//! StripedHyena 2 operators (Hyena-SE, -MR, -LI; arXiv 2503.01868, Sec. 2.1; vortex, savanna):
//! forward against the f64 references, finite-difference gradients, causality, token-by-token
//! stepping, configuration errors, and (ignored) timings.

use hyena::layers::layer::{Layer, Slot};
use hyena::layers::striped::{reference, MrDecay, StripedConfig, StripedKind, StripedOp};
use hyena::params::{split_handles_mut, ParamStore};
use hyena::testing::{built, check_causal, check_layer_grads, init_params, rand_vec};

fn op(cfg: StripedConfig) -> (StripedOp, ParamStore) {
    built(|vb| StripedOp::new(cfg, vb)).expect("valid config")
}

/// Initial parameters moved away from the init by `jitter` (MR's `h` starts at ~1e-5, which
/// would hide its filter path entirely).
fn params(layer: &StripedOp, store: &ParamStore, seed: u64, jitter: f32) -> Vec<f32> {
    let mut p = init_params(layer, store, seed);
    let jit = rand_vec(p.len(), seed + 100, jitter);
    for (v, r) in p.iter_mut().zip(jit) {
        *v += r;
    }
    p
}

fn run(layer: &StripedOp, p: &[f32], x: &[f32], b: usize, l: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    layer
        .forward(p, x, b, l, &mut y, &mut Slot::default())
        .expect("forward");
    y
}

fn configs(d: usize) -> Vec<(String, StripedConfig)> {
    let mut v = Vec::new();
    for base in [
        StripedConfig::se(d),
        StripedConfig::mr(d),
        StripedConfig::li(d),
    ] {
        for g in [d, d / 3] {
            v.push((
                format!("{:?} groups={g}", base.kind),
                base.clone().with_groups(g),
            ));
        }
    }
    v
}

#[test]
fn forward_matches_reference() {
    let (b, d) = (2, 6);
    let mut cases = configs(d);
    // Variants: no projection bias, another MR decay preset, a shorter MR filter.
    let mut c = StripedConfig::li(d);
    c.in_bias = false;
    cases.push(("Li no in_bias".into(), c));
    let mut c = StripedConfig::mr(d).with_groups(3);
    c.mr_decay = MrDecay::Weak;
    c.filter_len = 40;
    cases.push(("Mr weak K=40".into(), c));
    for (name, cfg) in cases {
        let (layer, store) = op(cfg);
        let p = params(&layer, &store, 3, 0.1);
        for l in [1usize, 7, 64, 100, 200] {
            let x = rand_vec(b * l * d, 7 + l as u64, 1.0);
            let y = run(&layer, &p, &x, b, l);
            let want = reference::forward(&layer, &p, &x, b, l);
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-3);
            let err = y
                .iter()
                .zip(&want)
                .fold(0.0f64, |m, (a, w)| m.max((*a as f64 - w).abs()));
            assert!(
                err <= 2e-5 * scale.max(1.0),
                "{name} L={l}: max err {err:.3e} (max |y| {scale:.3e})"
            );
        }
    }
}

#[test]
fn filter_path_is_exercised() {
    // Guard against a reference and a layer that agree because the filter is inert: the
    // filter parameters must change the output.
    let (b, l, d) = (1, 20, 6);
    for (name, cfg) in configs(d) {
        let (layer, store) = op(cfg);
        let p = params(&layer, &store, 5, 0.1);
        let x = rand_vec(b * l * d, 9, 1.0);
        let y0 = run(&layer, &p, &x, b, l);
        let specs = store.specs();
        let handles: Vec<_> = specs.iter().map(|s| s.handle).collect();
        let mut q = p.clone();
        {
            let mut qs = split_handles_mut(&mut q, &handles);
            for (s, t) in specs.iter().zip(qs.iter_mut()) {
                if s.name == "filter.h" || s.name == "filter.R" {
                    t.iter_mut().for_each(|v| *v *= 2.0);
                }
            }
        }
        let y1 = run(&layer, &q, &x, b, l);
        let diff = y0
            .iter()
            .zip(&y1)
            .fold(0.0f32, |m, (a, c)| m.max((a - c).abs()));
        assert!(diff > 1e-3, "{name}: filter has no effect ({diff:.2e})");
    }
}

#[test]
fn gradients_match_finite_differences() {
    let d = 6;
    for (name, cfg) in configs(d) {
        let ls: &[usize] = match cfg.kind {
            StripedKind::Se => &[5, 11],
            StripedKind::Mr => &[20, 131],
            StripedKind::Li => &[64],
        };
        let (layer, store) = op(cfg);
        for &l in ls {
            let w = check_layer_grads(&layer, &store, 2, l, 11, 0.1, 2e-2)
                .unwrap_or_else(|e| panic!("{name} L={l}: {e}"));
            assert!(w < 2e-2, "{name} L={l}: {w}");
            println!("{name} L={l}: worst rel err {w:.2e}");
        }
    }
    // MR with a much larger h jitter than its ~1e-5 init (the filter path dominates).
    let (layer, store) = op(StripedConfig::mr(4).with_groups(2));
    check_layer_grads(&layer, &store, 2, 33, 12, 0.5, 2e-2)
        .unwrap_or_else(|e| panic!("MR big h: {e}"));
    // A short MR filter, so that the sampled taps of `h` cover every lag (with K = 128 and a
    // short L the sampler mostly hits taps beyond L, whose gradient is zero), both truncated
    // (L < K) and not.
    let mut c = StripedConfig::mr(4).with_groups(2);
    c.filter_len = 16;
    let (layer, store) = op(c);
    for l in [11, 40] {
        check_layer_grads(&layer, &store, 2, l, 14, 0.3, 2e-2)
            .unwrap_or_else(|e| panic!("MR K=16 L={l}: {e}"));
    }
    // Without the projection bias.
    let mut c = StripedConfig::se(6);
    c.in_bias = false;
    let (layer, store) = op(c);
    check_layer_grads(&layer, &store, 2, 9, 13, 0.1, 2e-2)
        .unwrap_or_else(|e| panic!("SE no bias: {e}"));
}

#[test]
fn causal() {
    for (name, cfg) in configs(6) {
        let l = if cfg.kind == StripedKind::Mr { 140 } else { 29 };
        let (layer, store) = op(cfg);
        check_causal(&layer, &store, 2, l, 5, 1e-5).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn stepping_equals_forward() {
    let (b, l, d) = (2, 40, 6);
    let mut cases = configs(d);
    let mut c = StripedConfig::mr(d);
    c.filter_len = 16; // shorter than L, so the FIR history wraps
    cases.push(("Mr K=16".into(), c));
    for (name, cfg) in cases {
        let (layer, store) = op(cfg);
        let p = params(&layer, &store, 21, 0.1);
        let x = rand_vec(b * l * d, 22, 1.0);
        let y = run(&layer, &p, &x, b, l);
        let rec = layer.recurrence(&p).expect("recurrence");
        let scale = y.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for bi in 0..b {
            let mut st = rec.empty_state();
            let mut yt = vec![0.0f32; d];
            for t in 0..l {
                let r = (bi * l + t) * d;
                rec.step(&mut st, &x[r..r + d], &mut yt).expect("step");
                for j in 0..d {
                    let e = (yt[j] - y[r + j]).abs();
                    assert!(
                        e <= 2e-5 * scale,
                        "{name}: b={bi} t={t} ch={j}: step {} vs forward {}",
                        yt[j],
                        y[r + j]
                    );
                }
            }
        }
    }
}

#[test]
fn li_state_is_d_by_16() {
    let d = 8;
    let (layer, store) = op(StripedConfig::li(d));
    let rec = layer
        .recurrence(&init_params(&layer, &store, 1))
        .expect("recurrence");
    // Featurizer carry [2, 3D] plus the modal state [D, 16].
    assert_eq!(rec.empty_state().len(), 2 * 3 * d + d * 16);
}

#[test]
fn parameter_names_and_shapes() {
    let d = 8;
    let names = |c: StripedConfig| -> Vec<(String, Vec<usize>)> {
        op(c)
            .1
            .specs()
            .iter()
            .map(|s| (s.name.clone(), s.shape.clone()))
            .collect()
    };
    let common_head = [
        ("projections.weight".to_string(), vec![24, 8]),
        ("projections.bias".to_string(), vec![24]),
        ("filter.short_filter_weight".to_string(), vec![24, 1, 3]),
    ];
    let tail = [
        ("out_filter_dense.weight".to_string(), vec![8, 8]),
        ("out_filter_dense.bias".to_string(), vec![8]),
    ];
    let mut se = common_head.to_vec();
    se.push(("filter.h".into(), vec![4, 1, 7]));
    se.extend(tail.clone());
    assert_eq!(names(StripedConfig::se(d).with_groups(4)), se);
    let mut mr = common_head.to_vec();
    mr.push(("filter.h".into(), vec![8, 1, 128]));
    mr.push(("filter.D".into(), vec![8]));
    mr.extend(tail.clone());
    assert_eq!(names(StripedConfig::mr(d)), mr);
    let mut li = common_head.to_vec();
    for n in ["filter.p", "filter.gamma", "filter.R"] {
        li.push((n.into(), vec![2, 16]));
    }
    li.push(("filter.D".into(), vec![8]));
    li.extend(tail);
    assert_eq!(names(StripedConfig::li(d).with_groups(2)), li);
}

#[test]
fn init_follows_the_spec() {
    let d = 8;
    let (layer, store) = op(StripedConfig::li(d));
    let mut p = init_params(&layer, &store, 4);
    let specs = store.specs();
    let handles: Vec<_> = specs.iter().map(|s| s.handle).collect();
    let ps = split_handles_mut(&mut p, &handles);
    for (s, t) in specs.iter().zip(&ps) {
        match s.name.as_str() {
            "filter.p" => assert!(t.iter().all(|&v| v == -1.0)),
            "filter.gamma" => assert!(t
                .iter()
                .all(|&v| (0.01f32.ln() - 1e-6..=0.1f32.ln() + 1e-6).contains(&v))),
            _ => {}
        }
    }
    let (layer, store) = op(StripedConfig::mr(d));
    let p = init_params(&layer, &store, 4);
    let specs = store.specs();
    let i = specs.iter().position(|s| s.name == "filter.h").unwrap();
    let off: usize = specs[..i].iter().map(|s| s.handle.len()).sum();
    let h = &p[off..off + specs[i].handle.len()];
    let rms = (h.iter().map(|v| v * v).sum::<f32>() / h.len() as f32).sqrt();
    let want = 1e-5 / 128f32.sqrt();
    assert!(
        (rms / want - 1.0).abs() < 0.1,
        "MR h rms {rms:e} vs {want:e}"
    );
}

#[test]
fn mr_penalty_is_off_by_default_and_has_the_right_gradient() {
    let d = 4;
    let (layer, store) = op(StripedConfig::mr(d).with_groups(2));
    let p = params(&layer, &store, 8, 0.1);
    let mut g = vec![0.0; p.len()];
    assert_eq!(layer.regularize(&p, &mut g), 0.0);
    assert!(g.iter().all(|&v| v == 0.0));
    let mut cfg = StripedConfig::mr(d).with_groups(2);
    cfg.mr_penalty = 0.5;
    let (layer, store) = op(cfg);
    let mut g = vec![0.0; p.len()];
    let r0 = layer.regularize(&p, &mut g);
    assert!(r0 > 0.0);
    let specs = store.specs();
    let i = specs.iter().position(|s| s.name == "filter.h").unwrap();
    let off: usize = specs[..i].iter().map(|s| s.handle.len()).sum();
    let eps = 1e-3f32;
    for j in [0usize, 1, 17, 100, 127, 128 + 5, 255] {
        let mut q = p.clone();
        q[off + j] += eps;
        let rp = layer.regularize(&q, &mut vec![0.0; p.len()]);
        q[off + j] -= 2.0 * eps;
        let rm = layer.regularize(&q, &mut vec![0.0; p.len()]);
        let num = (rp - rm) / (2.0 * eps as f64);
        let ana = g[off + j] as f64;
        assert!(
            (num - ana).abs() <= 1e-3 * (num.abs() + 1e-4),
            "tap {j}: {ana} vs {num}"
        );
    }
    // Only h gets a gradient.
    for (k, v) in g.iter().enumerate() {
        if !(off..off + specs[i].handle.len()).contains(&k) {
            assert_eq!(*v, 0.0);
        }
    }
}

#[test]
fn config_errors() {
    let bad = [
        StripedConfig::se(0),
        StripedConfig::se(6).with_groups(4),
        StripedConfig::mr(6).with_groups(0),
        {
            let mut c = StripedConfig::se(6);
            c.filter_len = 0;
            c
        },
        {
            let mut c = StripedConfig::li(6);
            c.state = 0;
            c
        },
        {
            let mut c = StripedConfig::li(6);
            c.gamma_min = 0.0;
            c
        },
        {
            let mut c = StripedConfig::mr(6);
            c.mr_penalty = -1.0;
            c
        },
        {
            let mut c = StripedConfig::mr(6);
            c.short_len = 0;
            c
        },
    ];
    for c in bad {
        let e = built(|vb| StripedOp::new(c.clone(), vb)).expect_err("must reject");
        assert!(
            e.to_string().contains("invalid config"),
            "{c:?}: unexpected error {e}"
        );
    }
    // Wrong buffers are errors, not panics; backward before forward too.
    let (layer, store) = op(StripedConfig::li(4));
    let p = init_params(&layer, &store, 1);
    let x = vec![0.0; 2 * 5 * 4];
    let mut y = vec![0.0; x.len()];
    let mut c = Slot::default();
    assert!(layer.forward(&p[1..], &x, 2, 5, &mut y, &mut c).is_err());
    assert!(layer.forward(&p, &x[1..], 2, 5, &mut y, &mut c).is_err());
    assert!(layer.forward(&p, &[], 2, 0, &mut [], &mut c).is_err());
    let mut dx = vec![0.0; x.len()];
    let mut g = vec![0.0; p.len()];
    assert!(layer
        .backward(&p, &x, &y, 2, 5, &mut Slot::default(), &mut dx, &mut g)
        .is_err());
    layer.forward(&p, &x, 2, 5, &mut y, &mut c).unwrap();
    assert!(layer
        .backward(&p, &x, &y[..20], 1, 5, &mut c, &mut dx[..20], &mut g)
        .is_err());
    assert!(layer.recurrence(&p[1..]).is_err());
    // Serde round trip.
    let cfg = StripedConfig::mr(12).with_groups(3);
    let s = serde_json::to_string(&cfg).unwrap();
    assert!(s.contains("\"mr\""), "{s}");
    assert_eq!(serde_json::from_str::<StripedConfig>(&s).unwrap(), cfg);
}

#[test]
fn conv_kernels_are_in_convolution_order() {
    let (d, l) = (4, 10);
    let tensor = |store: &ParamStore, p: &[f32], name: &str| -> Vec<f32> {
        let specs = store.specs();
        let i = specs.iter().position(|s| s.name == name).expect(name);
        let off: usize = specs[..i].iter().map(|s| s.handle.len()).sum();
        p[off..off + specs[i].handle.len()].to_vec()
    };
    // SE: conv1d taps reversed (tap K−1 of the cross-correlation is lag 0), zero beyond K.
    let (layer, store) = op(StripedConfig::se(d).with_groups(2));
    let p = params(&layer, &store, 30, 0.1);
    let h = tensor(&store, &p, "filter.h");
    let k = layer.conv_kernels(&p, l).unwrap();
    for c in 0..d {
        let g = c / 2;
        for t in 0..l {
            let want = if t < 7 { h[g * 7 + 6 - t] } else { 0.0 };
            assert_eq!(k[c * l + t], want, "SE c={c} t={t}");
        }
    }
    // MR: truncated to L when L < K, and the decay makes tap 0 the raw h.
    let (layer, store) = op(StripedConfig::mr(d));
    let p = params(&layer, &store, 31, 0.1);
    let h = tensor(&store, &p, "filter.h");
    let k = layer.conv_kernels(&p, l).unwrap();
    assert_eq!(k.len(), d * l);
    for c in 0..d {
        assert_eq!(k[c * l], h[c * 128]);
        assert!(k[c * l + 5].abs() <= h[c * 128 + 5].abs());
    }
    // LI: Σ_n R exp(−e^p e^γ t).
    let (layer, store) = op(StripedConfig::li(d));
    let p = params(&layer, &store, 32, 0.1);
    let (pp, gm, r) = (
        tensor(&store, &p, "filter.p"),
        tensor(&store, &p, "filter.gamma"),
        tensor(&store, &p, "filter.R"),
    );
    let k = layer.conv_kernels(&p, l).unwrap();
    for c in 0..d {
        for t in [0usize, 3, 9] {
            let want: f64 = (0..16)
                .map(|n| {
                    let i = c * 16 + n;
                    let a = -(pp[i] as f64).exp() * (gm[i] as f64).exp();
                    r[i] as f64 * (a * t as f64).exp()
                })
                .sum();
            assert!((k[c * l + t] as f64 - want).abs() < 1e-6, "LI c={c} t={t}");
        }
    }
}
