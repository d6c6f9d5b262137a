//! MultiHyena (multi-head Hyena with head-tied filters, kind "mh-hyena") against the O(L²)
//! linear-attention form with a causal Toeplitz mixing, against order-2 Hyena at head size 1,
//! finite-difference gradients, causality and config errors.

use hyena::layers::layer::{Layer, Slot};
use hyena::layers::multihyena::{MixAlgo, MultiHyena, MultiHyenaConfig};
use hyena::layers::HyenaOperator;
use hyena::params::ParamStore;
use hyena::testing::{built, check_causal, check_layer_grads, init_params, rand_vec, tensors};
use hyena::{FilterConfig, HyenaConfig};

fn cfg(d: usize, h: usize, l_max: usize) -> MultiHyenaConfig {
    MultiHyenaConfig {
        d_model: d,
        n_heads: h,
        l_max,
        short_filter_order: 3,
        filter: FilterConfig {
            filter_order: 8,
            ..FilterConfig::default()
        },
    }
}

/// Parameters at their init plus a jitter (the init of `filter_fn.bias` etc. would hide errors).
fn params(layer: &dyn Layer, store: &ParamStore, seed: u64) -> Vec<f32> {
    let mut p = init_params(layer, store, seed);
    let jitter = rand_vec(p.len(), seed + 1, 0.1);
    for (v, r) in p.iter_mut().zip(jitter) {
        *v += r;
    }
    p
}

fn run(layer: &dyn Layer, p: &[f32], x: &[f32], b: usize, l: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    layer
        .forward(p, x, b, l, &mut y, &mut Slot::default())
        .expect("forward");
    y
}

/// The definition, in f64: projections, short conv, then per head
/// `yg_t = Σ_{s≤t} f_h(t−s) (x1_t · v_s) x2_s + bias_h (x1_t · v_t) x2_t`, then out_proj.
fn reference(
    layer: &MultiHyena,
    store: &ParamStore,
    p: &[f32],
    x: &[f32],
    b: usize,
    l: usize,
) -> Vec<f64> {
    let c = layer.config();
    let (d, h, k) = (c.d_model, c.n_heads, c.short_filter_order);
    let m = d / h;
    let s = tensors(store, p);
    let n = s.len();
    let (in_w, in_b, sw, sb, ow, ob) = (s[0], s[1], s[2], s[3], s[n - 2], s[n - 1]);
    let (f, fb) = layer.filters(p, l).expect("filters");
    let mut y = vec![0.0f64; b * l * d];
    for bi in 0..b {
        // z[c][t], uc[c][t]
        let z: Vec<Vec<f64>> = (0..3 * d)
            .map(|ch| {
                (0..l)
                    .map(|t| {
                        let xr = &x[(bi * l + t) * d..(bi * l + t + 1) * d];
                        in_b[ch] as f64
                            + (0..d)
                                .map(|e| in_w[ch * d + e] as f64 * xr[e] as f64)
                                .sum::<f64>()
                    })
                    .collect()
            })
            .collect();
        let uc: Vec<Vec<f64>> = (0..3 * d)
            .map(|ch| {
                (0..l)
                    .map(|t| {
                        let mut acc = sb[ch] as f64;
                        for j in 0..k {
                            if let Some(tt) = (t + j + 1).checked_sub(k) {
                                acc += sw[ch * k + j] as f64 * z[ch][tt];
                            }
                        }
                        acc
                    })
                    .collect()
            })
            .collect();
        let (x1, x2, v) = (&uc[..d], &uc[d..2 * d], &uc[2 * d..]);
        let mut yg = vec![vec![0.0f64; d]; l];
        for hi in 0..h {
            for t in 0..l {
                for s in 0..=t {
                    let mut coef = f[hi * l + t - s] as f64;
                    if s == t {
                        coef += fb[hi] as f64;
                    }
                    let qk: f64 = (0..m).map(|i| x1[hi * m + i][t] * v[hi * m + i][s]).sum();
                    for j in 0..m {
                        yg[t][hi * m + j] += coef * qk * x2[hi * m + j][s];
                    }
                }
            }
        }
        for t in 0..l {
            for o in 0..d {
                y[(bi * l + t) * d + o] =
                    ob[o] as f64 + (0..d).map(|e| ow[o * d + e] as f64 * yg[t][e]).sum::<f64>();
            }
        }
    }
    y
}

#[test]
fn forward_matches_toeplitz_linear_attention() {
    // (D, H): M = 4, H = 1 (M = 6), M = 1 (H = D), and M = 4 over 3 heads.
    let cases = [(8usize, 2usize), (6, 1), (4, 4), (12, 3)];
    for (ci, &(d, h)) in cases.iter().enumerate() {
        for algo in [MixAlgo::Fft, MixAlgo::Direct, MixAlgo::Auto] {
            let (layer, store) = built(|vb| MultiHyena::new(&cfg(d, h, 128), vb)).expect("config");
            let layer = layer.with_algo(algo);
            let p = params(&layer, &store, 10 + ci as u64);
            for &l in &[1usize, 7, 64, 100] {
                let b = 2;
                let x = rand_vec(b * l * d, 100 + l as u64, 1.0);
                let y = run(&layer, &p, &x, b, l);
                let r = reference(&layer, &store, &p, &x, b, l);
                let scale = r.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                let err = y
                    .iter()
                    .zip(&r)
                    .fold(0.0f64, |a, (&u, &w)| a.max((u as f64 - w).abs()));
                assert!(
                    err <= 1e-5 * (1.0 + scale),
                    "{algo:?} D={d} H={h} L={l}: max error {err:.3e} (max |y| {scale:.3e})"
                );
            }
        }
    }
}

#[test]
fn head_size_one_is_order_two_hyena() {
    // With M = 1 every channel is its own head: the layer is the order-2 Hyena operator with
    // the same parameter layout (names, shapes, order), so the same flat buffer gives the same
    // output.
    let (d, l_max) = (6usize, 32usize);
    let c = cfg(d, d, l_max);
    let (hy, hy_store) = built(|vb| {
        HyenaOperator::new(
            &HyenaConfig {
                d_model: d,
                l_max,
                order: 2,
                short_filter_order: 3,
                filter: c.filter.clone(),
            },
            vb,
        )
    })
    .expect("hyena config");
    // Names and shapes, in order.
    let layout = |s: &ParamStore| -> Vec<(String, Vec<usize>)> {
        s.specs()
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect()
    };
    for algo in [MixAlgo::Fft, MixAlgo::Direct] {
        let (mh, mh_store) = built(|vb| MultiHyena::new(&c, vb)).expect("config");
        let mh = mh.with_algo(algo);
        assert_eq!(layout(&mh_store), layout(&hy_store));
        let p = params(&mh, &mh_store, 7);
        let (b, l) = (3, 29);
        let x = rand_vec(b * l * d, 8, 1.0);
        let (y1, y2) = (run(&mh, &p, &x, b, l), run(&hy, &p, &x, b, l));
        let err = y1
            .iter()
            .zip(&y2)
            .fold(0.0f32, |a, (u, v)| a.max((u - v).abs()));
        assert!(err < 1e-5, "{algo:?} mh-hyena (M=1) vs hyena: {err:.3e}");
    }
}

#[test]
fn gradients_match_finite_differences() {
    // rtol 2e-2 (as the other FFT-based zoo layers): f32 forward, central differences at eps 1e-2.
    for (i, &(d, h, b, l)) in [(8usize, 2usize, 2usize, 13usize), (6, 1, 1, 20)]
        .iter()
        .enumerate()
    {
        for algo in [MixAlgo::Fft, MixAlgo::Direct] {
            let (layer, store) = built(|vb| MultiHyena::new(&cfg(d, h, 32), vb)).expect("config");
            let layer = layer.with_algo(algo);
            let w = check_layer_grads(&layer, &store, b, l, 30 + i as u64, 0.1, 2e-2)
                .unwrap_or_else(|e| panic!("{algo:?} D={d} H={h}: {e}"));
            eprintln!("mh-hyena {algo:?} D={d} H={h} B={b} L={l}: worst rel err {w:.3e}");
        }
    }
}

#[test]
fn causal() {
    for algo in [MixAlgo::Fft, MixAlgo::Direct] {
        let (layer, store) = built(|vb| MultiHyena::new(&cfg(8, 2, 32), vb)).expect("config");
        let layer = layer.with_algo(algo);
        check_causal(&layer, &store, 2, 23, 5, 1e-5).unwrap_or_else(|e| panic!("{algo:?}: {e}"));
    }
}

#[test]
fn config_errors_and_mad_preset() {
    let bad = [
        (cfg(8, 3, 16), "n_heads"),
        (cfg(8, 0, 16), "n_heads"),
        (cfg(0, 1, 16), "d_model"),
        (cfg(8, 2, 0), "l_max"),
        (
            MultiHyenaConfig {
                short_filter_order: 0,
                ..cfg(8, 2, 16)
            },
            "short_filter_order",
        ),
    ];
    for (c, field) in bad {
        let e = built(|vb| MultiHyena::new(&c, vb)).expect_err("invalid config accepted");
        let msg = e.to_string();
        assert!(
            msg.contains(field),
            "{c:?}: error `{msg}` does not name `{field}`"
        );
    }
    // MAD's mh-hyena.yml behaviour: D = 128 → 8 heads of size 16, 8 filters.
    let mad = MultiHyenaConfig::mad(128, 256);
    assert_eq!((mad.n_heads, mad.head_dim()), (8, 16));
    let (_layer, store) = built(|vb| MultiHyena::new(&mad, vb)).expect("mad config");
    let specs = store.specs();
    let bias = specs
        .iter()
        .find(|s| s.name == "filter_fn.bias")
        .expect("filter_fn.bias");
    assert_eq!(bias.shape, vec![8]);
    assert_eq!(specs[0].name, "in_proj.weight");
    assert_eq!(specs[0].shape, vec![384, 128]);
    // Serde round trip.
    let js = serde_json::to_string(&mad).expect("serialize");
    let back: MultiHyenaConfig = serde_json::from_str(&js).expect("deserialize");
    assert_eq!(back, mad);
    // Run-time shape errors.
    let (layer, store) = built(|vb| MultiHyena::new(&cfg(8, 2, 16), vb)).expect("config");
    let p = init_params(&layer, &store, 1);
    let mut y = vec![0.0; 17 * 8];
    let x = vec![0.0; 17 * 8];
    assert!(layer
        .forward(&p, &x, 1, 17, &mut y, &mut Slot::default())
        .is_err());
    assert!(layer
        .forward(&p, &x[..8], 1, 2, &mut y[..16], &mut Slot::default())
        .is_err());
    let mut dx = vec![0.0; 16];
    let mut g = vec![0.0; p.len()];
    assert!(layer
        .backward(
            &p,
            &x[..16],
            &x[..16],
            1,
            2,
            &mut Slot::default(),
            &mut dx,
            &mut g
        )
        .is_err());
}
