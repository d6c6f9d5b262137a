//! Test helpers for this crate's own tests (unit and integration): finite-difference
//! gradient checks and the contract every layer passes (gradients, causality, step ==
//! forward). Not part of the public API: compiled for `cfg(test)` and behind the `testing`
//! feature, which only the crate's dev-dependency on itself turns on.
//!
//! A check perturbs sampled entries of one input by ±eps, evaluates a scalar loss (accumulated
//! in f64) and compares the central difference with the analytic gradient entry:
//! `|a - n| <= rtol * (|n| + 0.1 * max|analytic|)`.

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::error::Result;
use crate::layers::layer::{Layer, Slot};
use crate::params::{DType, Init, ParamStore, Vb};

/// Compare `analytic` (the gradient of `loss` w.r.t. `x`) against central differences.
///
/// `loss` is evaluated on a perturbed copy of `x`. At most `samples` entries are checked, spread
/// evenly over the buffer. Returns the worst relative error, or an error message naming the
/// first failing index.
pub fn check(
    name: &str,
    x: &[f32],
    analytic: &[f32],
    loss: impl FnMut(&[f32]) -> f64,
    samples: usize,
    eps: f32,
    rtol: f64,
) -> std::result::Result<f64, String> {
    check_with_floor(name, x, analytic, loss, samples, eps, rtol, 0.0)
}

/// [`check`] that also accepts `|analytic − numeric| <= atol`: the resolution of the central
/// difference when the loss is computed in f32 (about `ε_f32·|loss| / eps`). Gradients below it
/// cannot be judged by finite differences at all; a whole-model loss of O(1) with `eps = 1e-2`
/// resolves about 1e-5.
#[allow(clippy::too_many_arguments)]
pub fn check_with_floor(
    name: &str,
    x: &[f32],
    analytic: &[f32],
    mut loss: impl FnMut(&[f32]) -> f64,
    samples: usize,
    eps: f32,
    rtol: f64,
    atol: f64,
) -> std::result::Result<f64, String> {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let scale = analytic.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let n = x.len();
    let step = (n / samples.max(1)).max(1);
    let mut xp = x.to_vec();
    let mut worst = 0.0f64;
    let mut i = 0;
    while i < n {
        let orig = xp[i];
        xp[i] = orig + eps;
        let lp = loss(&xp);
        xp[i] = orig - eps;
        let lm = loss(&xp);
        xp[i] = orig;
        let num = (lp - lm) / (2.0 * eps as f64);
        let ana = analytic[i] as f64;
        let denom = num.abs() + 0.1 * scale + 1e-12;
        let rel = (ana - num).abs() / denom;
        worst = worst.max(rel);
        if rel > rtol && (ana - num).abs() > atol {
            return Err(format!(
                "{name}[{i}]: analytic {ana:.6e} vs numeric {num:.6e} (rel err {rel:.3e} > {rtol:.1e})"
            ));
        }
        i += step;
    }
    Ok(worst)
}

/// `Σ dy ⊙ y` in f64: the scalar loss whose gradient w.r.t. `y` is `dy`.
pub fn dot(dy: &[f32], y: &[f32]) -> f64 {
    dy.iter().zip(y).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// Deterministic pseudo-random values in [-scale, scale) (xorshift; tests only).
pub fn rand_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// What `f` builds with a parameter store of its own (e.g. one layer, for its tests).
pub fn built<T>(f: impl FnOnce(&Vb<'_, '_>) -> Result<T>) -> Result<(T, ParamStore)> {
    ParamStore::build(Init::Zeros, DType::F32, f)
}

/// The tensors of `store`'s layout in `p`, in order (a layer's, as it registered them).
pub fn tensors<'a>(store: &ParamStore, p: &'a [f32]) -> Vec<&'a [f32]> {
    store.specs().iter().map(|s| s.handle.of(p)).collect()
}

/// The parameters of `layer` (laid out as `store`) at its initialisation from `seed`.
pub fn init_params(layer: &dyn Layer, store: &ParamStore, seed: u64) -> Vec<f32> {
    let mut p = store.zeros();
    layer.init(&mut p, &mut StdRng::seed_from_u64(seed));
    p
}

/// [`init_params`] moved away from the init by `jitter` (some inits are zero, which hides
/// errors).
fn jittered(layer: &dyn Layer, store: &ParamStore, seed: u64, jitter: f32) -> Vec<f32> {
    let mut p = init_params(layer, store, seed);
    let noise = rand_vec(p.len(), seed + 1, jitter);
    for (v, r) in p.iter_mut().zip(noise) {
        *v += r;
    }
    p
}

/// Finite-difference check of a layer's backward, for input and parameters, at `(b, l)`:
/// loss `Σ dy ⊙ y` with a random `dy`. Parameters are moved away from their init by
/// `p_jitter`. Each tensor of `store` (the layer's) is checked on its own, so that a small
/// tensor is not drowned by a large one. Returns the worst relative error; an error message
/// names the tensor and index that failed.
pub fn check_layer_grads(
    layer: &dyn Layer,
    store: &ParamStore,
    b: usize,
    l: usize,
    seed: u64,
    p_jitter: f32,
    rtol: f64,
) -> std::result::Result<f64, String> {
    layer_grads(layer, store, (b, l), seed, p_jitter, rtol, false)
}

/// [`check_layer_grads`] that also accepts differences below the resolution of the central
/// difference of an f32 loss (`4·ε_f32·|loss| / (2·eps)`, as the whole-model checks use):
/// for the contract run over every registered layer at one seed, where a tensor's gradient
/// can be too small for finite differences to judge at all.
pub fn check_layer_grads_floored(
    layer: &dyn Layer,
    store: &ParamStore,
    b: usize,
    l: usize,
    seed: u64,
    p_jitter: f32,
    rtol: f64,
) -> std::result::Result<f64, String> {
    layer_grads(layer, store, (b, l), seed, p_jitter, rtol, true)
}

fn layer_grads(
    layer: &dyn Layer,
    store: &ParamStore,
    (b, l): (usize, usize),
    seed: u64,
    p_jitter: f32,
    rtol: f64,
    floored: bool,
) -> std::result::Result<f64, String> {
    const EPS: f32 = 1e-2;
    let d = layer.d_model();
    let p = jittered(layer, store, seed, p_jitter);
    let x = rand_vec(b * l * d, seed + 2, 1.0);
    let dy = rand_vec(b * l * d, seed + 3, 1.0);
    let run = |p: &[f32], x: &[f32]| -> f64 {
        let mut y = vec![0.0; b * l * d];
        layer
            .forward(p, x, b, l, &mut y, &mut Slot::default())
            .expect("forward in gradcheck");
        dot(&dy, &y)
    };
    let mut y = vec![0.0; b * l * d];
    let mut cache = Slot::default();
    layer
        .forward(&p, &x, b, l, &mut y, &mut cache)
        .map_err(|e| e.to_string())?;
    let mut dx = vec![f32::NAN; b * l * d];
    let mut g = vec![0.0; p.len()];
    layer
        .backward(&p, &x, &dy, b, l, &mut cache, &mut dx, &mut g)
        .map_err(|e| e.to_string())?;
    let atol = if floored {
        4.0 * f32::EPSILON as f64 * dot(&dy, &y).abs() / (2.0 * EPS as f64)
    } else {
        0.0
    };
    let mut worst = check_with_floor(
        &format!("{} dx", layer.kind()),
        &x,
        &dx,
        |xp| run(&p, xp),
        64,
        EPS,
        rtol,
        atol,
    )?;
    for s in store.specs() {
        let r = s.handle.range();
        let w = check_with_floor(
            &format!("{} {}", layer.kind(), s.name),
            &p[r.clone()],
            &g[r.clone()],
            |pt| {
                let mut pp = p.clone();
                pp[r.clone()].copy_from_slice(pt);
                run(&pp, &x)
            },
            24,
            EPS,
            rtol,
            atol,
        )?;
        worst = worst.max(w);
    }
    Ok(worst)
}

/// Causality: changing the input at position `t` leaves every output before `t` unchanged
/// (up to `tol`), for several `t`, and changes some output at or after `t`. Returns an error
/// message naming the position that leaked.
pub fn check_causal(
    layer: &dyn Layer,
    store: &ParamStore,
    b: usize,
    l: usize,
    seed: u64,
    tol: f32,
) -> std::result::Result<(), String> {
    let d = layer.d_model();
    let p = jittered(layer, store, seed, 0.1);
    let x = rand_vec(b * l * d, seed + 2, 1.0);
    let fwd = |x: &[f32]| {
        let mut y = vec![0.0; b * l * d];
        layer
            .forward(&p, x, b, l, &mut y, &mut Slot::default())
            .map_err(|e| e.to_string())
            .map(|_| y)
    };
    let y0 = fwd(&x)?;
    for t in [0, l / 3, l / 2, l - 1] {
        let mut xp = x.clone();
        for bi in 0..b {
            for j in 0..d {
                xp[(bi * l + t) * d + j] += 0.5;
            }
        }
        let y1 = fwd(&xp)?;
        for bi in 0..b {
            for s in 0..t {
                for j in 0..d {
                    let i = (bi * l + s) * d + j;
                    if (y1[i] - y0[i]).abs() > tol {
                        return Err(format!(
                            "{}: input at t={t} changed output at s={s} < t (channel {j}): {} -> {}",
                            layer.kind(),
                            y0[i],
                            y1[i]
                        ));
                    }
                }
            }
            let changed = (t..l).any(|s| {
                (0..d).any(|j| {
                    let i = (bi * l + s) * d + j;
                    (y1[i] - y0[i]).abs() > tol
                })
            });
            if !changed {
                return Err(format!(
                    "{}: input at t={t} changed no output at or after t",
                    layer.kind()
                ));
            }
        }
    }
    Ok(())
}

/// Step == forward: for a layer with a recurrent form, stepping each of `b` sequences token by
/// token gives the parallel forward's outputs, within `tol` relative to the largest output.
/// Returns the worst absolute difference, or `None` for a layer without a step.
pub fn check_step(
    layer: &dyn Layer,
    store: &ParamStore,
    b: usize,
    l: usize,
    seed: u64,
    tol: f32,
) -> std::result::Result<Option<f32>, String> {
    let Some(rec) = layer.recurrent() else {
        return Ok(None);
    };
    let d = layer.d_model();
    let p = jittered(layer, store, seed, 0.1);
    let x = rand_vec(b * l * d, seed + 2, 1.0);
    let mut y = vec![0.0; b * l * d];
    layer
        .forward(&p, &x, b, l, &mut y, &mut Slot::default())
        .map_err(|e| e.to_string())?;
    let scale = y.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let mut worst = 0.0f32;
    let mut out = vec![0.0; d];
    for bi in 0..b {
        let mut st = rec.start(&p).map_err(|e| e.to_string())?;
        for t in 0..l {
            let r = (bi * l + t) * d;
            rec.step(&p, &mut st, &x[r..r + d], &mut out)
                .map_err(|e| e.to_string())?;
            for (j, (a, w)) in out.iter().zip(&y[r..r + d]).enumerate() {
                let e = (a - w).abs();
                if e > tol * scale {
                    return Err(format!(
                        "{}: step {t} of sequence {bi}, channel {j}: {a} vs forward {w}",
                        layer.kind()
                    ));
                }
                worst = worst.max(e);
            }
        }
    }
    Ok(Some(worst))
}
