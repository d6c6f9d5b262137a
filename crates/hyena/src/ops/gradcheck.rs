//! Finite-difference gradient checking, shared by the unit and integration tests.
//!
//! Not part of the public API. A check perturbs sampled entries of one input by ±eps, evaluates
//! a scalar loss (accumulated in f64) and compares the central difference with the analytic
//! gradient entry: `|a - n| <= rtol * (|n| + 0.1 * max|analytic|)`.

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
) -> Result<f64, String> {
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
) -> Result<f64, String> {
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
