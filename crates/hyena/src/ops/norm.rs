//! LayerNorm over the last dimension (PyTorch `nn.LayerNorm(D, eps)`), forward and backward.
//!
//! Rows `[M, D]`; the forward saves per-row `mean` and `rstd = 1/sqrt(var + eps)` for the
//! backward (llm.c style). Statistics accumulate in f32 over a row, like PyTorch's CPU kernel
//! up to summation order. [`reference`] recomputes everything in f64.

use rayon::prelude::*;

use crate::error::{check_len, Result};

/// `y = (x - mean) * rstd * gamma + beta` per row. Writes `y [M, D]`, `mean [M]`, `rstd [M]`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    d: usize,
    eps: f32,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) -> Result<()> {
    const OP: &str = "layernorm forward";
    let m = x.len().checked_div(d).unwrap_or(0);
    check_len(OP, "x [M, D]", x.len(), m * d)?;
    check_len(OP, "gamma [D]", gamma.len(), d)?;
    check_len(OP, "beta [D]", beta.len(), d)?;
    check_len(OP, "y [M, D]", y.len(), m * d)?;
    check_len(OP, "mean [M]", mean.len(), m)?;
    check_len(OP, "rstd [M]", rstd.len(), m)?;
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((yr, xr), (mu, rs))| {
            let mean = xr.iter().sum::<f32>() / d as f32;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let r = 1.0 / (var + eps).sqrt();
            for ((yv, xv), (g, b)) in yr.iter_mut().zip(xr).zip(gamma.iter().zip(beta)) {
                *yv = (xv - mean) * r * g + b;
            }
            *mu = mean;
            *rs = r;
        });
    Ok(())
}

/// Backward: writes `dx`, *accumulates* `dgamma`, `dbeta`.
///
/// With `xhat = (x - mean) rstd` and `g = dy ⊙ gamma`:
/// `dx = rstd · (g - mean(g) - xhat · mean(g ⊙ xhat))`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    d: usize,
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) -> Result<()> {
    const OP: &str = "layernorm backward";
    let m = mean.len();
    check_len(OP, "x [M, D]", x.len(), m * d)?;
    check_len(OP, "dy [M, D]", dy.len(), m * d)?;
    check_len(OP, "dx [M, D]", dx.len(), m * d)?;
    check_len(OP, "rstd [M]", rstd.len(), m)?;
    check_len(OP, "gamma [D]", gamma.len(), d)?;
    check_len(OP, "dgamma [D]", dgamma.len(), d)?;
    check_len(OP, "dbeta [D]", dbeta.len(), d)?;
    for i in 0..m {
        let (xr, gr) = (&x[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d]);
        let (mu, r) = (mean[i], rstd[i]);
        let mut mg = 0.0f32;
        let mut mgx = 0.0f32;
        for j in 0..d {
            let xhat = (xr[j] - mu) * r;
            let g = gr[j] * gamma[j];
            mg += g;
            mgx += g * xhat;
            dgamma[j] += gr[j] * xhat;
            dbeta[j] += gr[j];
        }
        mg /= d as f32;
        mgx /= d as f32;
        let dxr = &mut dx[i * d..(i + 1) * d];
        for j in 0..d {
            let xhat = (xr[j] - mu) * r;
            dxr[j] = r * (gr[j] * gamma[j] - mg - xhat * mgx);
        }
    }
    Ok(())
}

/// f64 reference.
pub mod reference {
    /// LayerNorm forward in f64.
    pub fn layernorm_forward(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        d: usize,
        eps: f32,
    ) -> Vec<f32> {
        let mut y = vec![0.0; x.len()];
        for (yr, xr) in y.chunks_mut(d).zip(x.chunks(d)) {
            let mean = xr.iter().map(|v| *v as f64).sum::<f64>() / d as f64;
            let var = xr.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            for j in 0..d {
                yr[j] = (((xr[j] as f64 - mean) / (var + eps as f64).sqrt()) * gamma[j] as f64
                    + beta[j] as f64) as f32;
            }
        }
        y
    }
}
