//! The operator zoo's channel mixers (SwiGLU, GELU MLP) against slow references, with
//! finite-difference gradients and per-position independence.

use hyena::layers::layer::{Layer, Slot};
use hyena::layers::mlp::{swiglu_inner, Mlp, MlpConfig, SwiGlu};
use hyena::ops::act::reference::gelu;
use hyena::params::ParamStore;
use hyena::testing::{built, check_layer_grads, init_params, rand_vec, tensors};

fn run(layer: &dyn Layer, p: &[f32], x: &[f32], b: usize, l: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    layer
        .forward(p, x, b, l, &mut y, &mut Slot::default())
        .unwrap();
    y
}

/// `y = W x (+ b)` for one row, in f64.
fn lin(w: &[f32], b: Option<&[f32]>, x: &[f64], n: usize) -> Vec<f64> {
    let k = x.len();
    (0..n)
        .map(|i| {
            let s: f64 = (0..k).map(|j| w[i * k + j] as f64 * x[j]).sum();
            s + b.map_or(0.0, |b| b[i] as f64)
        })
        .collect()
}

#[test]
fn channel_mixers_match_references() {
    let (b, l, d, di) = (2usize, 7usize, 12usize, 20usize);
    let x = rand_vec(b * l * d, 1, 1.0);
    let cfg = MlpConfig {
        d_model: d,
        d_inner: Some(di),
    };
    let (sw, sw_store) = built(|vb| SwiGlu::new(&cfg, vb)).unwrap();
    let mut p = init_params(&sw, &sw_store, 2);
    let jit = rand_vec(p.len(), 3, 0.1);
    for (v, r) in p.iter_mut().zip(jit) {
        *v += r;
    }
    let y = run(&sw, &p, &x, b, l);
    let w = tensors(&sw_store, &p);
    let (mlp, mlp_store) = built(|vb| Mlp::new(d, di, vb, ("l1", "l2"))).unwrap();
    let mut q = init_params(&mlp, &mlp_store, 4);
    let jit = rand_vec(q.len(), 5, 0.1);
    for (v, r) in q.iter_mut().zip(jit) {
        *v += r;
    }
    let z = run(&mlp, &q, &x, b, l);
    let wm = tensors(&mlp_store, &q);
    for r in 0..b * l {
        let xr: Vec<f64> = x[r * d..(r + 1) * d].iter().map(|&v| v as f64).collect();
        let a = lin(w[0], None, &xr, di);
        let c = lin(w[1], None, &xr, di);
        let h: Vec<f64> = a
            .iter()
            .zip(&c)
            .map(|(a, c)| a / (1.0 + (-a).exp()) * c)
            .collect();
        let want = lin(w[2], None, &h, d);
        for j in 0..d {
            assert!(
                (y[r * d + j] as f64 - want[j]).abs() < 1e-5,
                "swiglu row {r}"
            );
        }
        let a = lin(wm[0], Some(wm[1]), &xr, di);
        let h: Vec<f64> = a.iter().map(|&v| gelu(v as f32) as f64).collect();
        let want = lin(wm[2], Some(wm[3]), &h, d);
        for j in 0..d {
            assert!((z[r * d + j] as f64 - want[j]).abs() < 1e-5, "mlp row {r}");
        }
    }
}

#[test]
fn channel_mixer_gradients_and_independence() {
    let cfg = MlpConfig {
        d_model: 10,
        d_inner: Some(14),
    };
    let layers: Vec<(Box<dyn Layer>, ParamStore)> = vec![
        built(|vb| Ok(Box::new(SwiGlu::new(&cfg, vb)?) as Box<dyn Layer>)).unwrap(),
        built(|vb| {
            Ok(Box::new(Mlp::new(
                cfg.d_model,
                cfg.d_inner.unwrap_or(4 * cfg.d_model),
                vb,
                ("l1", "l2"),
            )?) as Box<dyn Layer>)
        })
        .unwrap(),
    ];
    for (layer, store) in &layers {
        for (b, l) in [(1usize, 1usize), (2, 5)] {
            let worst = check_layer_grads(layer.as_ref(), store, b, l, 7, 0.2, 2e-2).unwrap();
            assert!(worst < 2e-2, "{}: {worst}", layer.kind());
        }
        // Channel mixers act on each position alone: changing one row changes only that row.
        let (b, l, d) = (1, 6, 10);
        let p = init_params(layer.as_ref(), store, 1);
        let x = rand_vec(b * l * d, 9, 1.0);
        let y0 = run(layer.as_ref(), &p, &x, b, l);
        let mut x2 = x.clone();
        x2[3 * d + 4] += 1.0;
        let y1 = run(layer.as_ref(), &p, &x2, b, l);
        for t in 0..l {
            let changed = (0..d).any(|j| y0[t * d + j] != y1[t * d + j]);
            assert_eq!(changed, t == 3, "{} row {t}", layer.kind());
        }
        assert!(!layer.mixes_positions());
    }
    assert_eq!(swiglu_inner(128), 352);
    assert!(built(|vb| SwiGlu::new(
        &MlpConfig {
            d_model: 0,
            d_inner: None
        },
        vb
    ))
    .is_err());
}
