//! Hankel spectra of long-convolution filters (the order selection of Laughing Hyena Distillery,
//! arXiv 2310.18780, and the effective state size of arXiv 2504.19561).
//!
//! A causal filter `h [L]` acts as `y_t = h_0 u_t + Σ_{j≥1} h_j u_{t-j}`. Past inputs reach
//! future outputs only through the taps `h_1, h_2, …`, arranged in the Hankel matrix
//! `H[i, j] = h_{1+i+j}`. Its rank is the smallest state a recurrence needs to reproduce the
//! filter (Ho–Kalman / minimal realisation), and its singular values bound the error of any
//! lower-order fit (AAK theory): that is why both the distillation order and the effective
//! state size (ESS) come from this spectrum.
//!
//! The square Hankel matrix is symmetric, so its singular values are the absolute values of
//! its eigenvalues: one symmetric eigensolve per filter.

use faer::{Mat, Side};

use crate::error::{Error, Result};

/// Side of the square Hankel matrix used for a filter of length `l`, at most `max_size`:
/// `⌊l/2⌋` uses every tap `h_1 … h_{l-1}` (the last one when `l` is odd).
pub fn hankel_size(l: usize, max_size: usize) -> usize {
    (l / 2).min(max_size)
}

/// `H[i, j] = h[1 + i + j]`, `m × m` (needs `2m ≤ h.len()`).
pub fn hankel_matrix(h: &[f64], m: usize) -> Mat<f64> {
    Mat::from_fn(m, m, |i, j| h[1 + i + j])
}

/// Singular values of the `m × m` Hankel matrix of `h` (`m` = [`hankel_size`]), largest first.
/// Errors on non-finite taps, naming the first bad one.
pub fn hankel_singular_values(h: &[f32], max_size: usize) -> Result<Vec<f64>> {
    check_finite(h)?;
    let m = hankel_size(h.len(), max_size);
    if m == 0 {
        return Ok(Vec::new());
    }
    let h64: Vec<f64> = h.iter().map(|&v| v as f64).collect();
    let ev = hankel_matrix(&h64, m)
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| Error::config("filter", "Hankel matrix", format!("eigensolver: {e:?}")))?;
    let mut sv: Vec<f64> = ev.iter().map(|v| v.abs()).collect();
    sv.sort_by(|a, b| b.total_cmp(a));
    Ok(sv)
}

/// An error naming the first non-finite tap of a filter.
pub fn check_finite(h: &[f32]) -> Result<()> {
    match h.iter().position(|v| !v.is_finite()) {
        Some(t) => Err(Error::config(
            "filter tap",
            format!("h[{t}] = {}", h[t]),
            "filters must be finite; was the model trained with a diverging loss?",
        )),
        None => Ok(()),
    }
}

/// Tolerance-ESS, also the distillation order for a tolerance: the number of singular values
/// above `tol · σ_1` (relative to the largest, so that it does not depend on the filter's
/// scale). 0 for an all-zero filter.
pub fn tolerance_rank(sv: &[f64], tol: f64) -> usize {
    let top = sv.first().copied().unwrap_or(0.0);
    if top <= 0.0 {
        return 0;
    }
    sv.iter().filter(|&&s| s > tol * top).count()
}

/// Entropy-ESS: `exp(−Σ p_k ln p_k)` with `p_k = σ_k / Σ_j σ_j`, a soft rank (1 for a single
/// mode, r for r equal singular values, 0 for an all-zero filter). We use σ, not σ².
pub fn entropy_rank(sv: &[f64]) -> f64 {
    let total: f64 = sv.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let h: f64 = sv
        .iter()
        .filter(|&&s| s > 0.0)
        .map(|&s| {
            let p = s / total;
            -p * p.ln()
        })
        .sum();
    h.exp()
}
