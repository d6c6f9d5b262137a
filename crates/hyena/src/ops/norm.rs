//! LayerNorm over the last dimension (PyTorch `nn.LayerNorm(D, eps)`), forward and backward.
//!
//! Rows `[M, D]`; the forward saves per-row `mean` and `rstd = 1/sqrt(var + eps)` for the
//! backward (llm.c style). Statistics accumulate in f32 over a row, like PyTorch's CPU kernel
//! up to summation order. [`mod@reference`] recomputes everything in f64.

use rayon::prelude::*;

use crate::error::{check_len, Result};
use crate::ops::{lanes8, simd_fn};

/// Rows per parallel task. Fixed (not derived from the thread count), so the backward's
/// per-chunk partial sums of `dgamma`/`dbeta`, added in chunk order, give the same bits on any
/// number of threads.
const ROWS: usize = 64;

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
    if d == 0 {
        return Ok(());
    }
    y.par_chunks_mut(ROWS * d)
        .zip(x.par_chunks(ROWS * d))
        .zip(mean.par_chunks_mut(ROWS).zip(rstd.par_chunks_mut(ROWS)))
        .for_each(|((yc, xc), (mc, rc))| ln_forward_rows(yc, xc, gamma, beta, eps, mc, rc));
    Ok(())
}

simd_fn! {
    fn ln_forward_rows(
        yc: &mut [f32],
        xc: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        mc: &mut [f32],
        rc: &mut [f32],
    ) {
        let d = gamma.len();
        for (((yr, xr), mu), rs) in yc
            .chunks_exact_mut(d)
            .zip(xc.chunks_exact(d))
            .zip(mc.iter_mut())
            .zip(rc.iter_mut())
        {
            let mean = lanes8(xr, xr, xr, |x, _, _| x) / d as f32;
            let var = lanes8(xr, xr, xr, |x, _, _| (x - mean) * (x - mean)) / d as f32;
            let r = 1.0 / (var + eps).sqrt();
            for ((yv, xv), (g, b)) in yr.iter_mut().zip(xr).zip(gamma.iter().zip(beta)) {
                *yv = (xv - mean) * r * g + b;
            }
            *mu = mean;
            *rs = r;
        }
    }
}

/// Backward: writes `dx` (with `acc`, *adds* into it: a pre-norm block's residual stream
/// gradient picks up the branch through the norm without a separate add pass), *accumulates*
/// `dgamma`, `dbeta`.
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
    acc: bool,
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
    if d == 0 || m == 0 {
        return Ok(());
    }
    // One [2, D] partial (dgamma, dbeta) per chunk of ROWS rows, reduced in chunk order.
    let n_chunks = m.div_ceil(ROWS);
    let mut partial = vec![0.0f32; n_chunks * 2 * d];
    dx.par_chunks_mut(ROWS * d)
        .zip(dy.par_chunks(ROWS * d).zip(x.par_chunks(ROWS * d)))
        .zip(mean.par_chunks(ROWS).zip(rstd.par_chunks(ROWS)))
        .zip(partial.par_chunks_mut(2 * d))
        .for_each(|(((dxc, (gc, xc)), (mc, rc)), part)| {
            ln_backward_rows(dxc, gc, xc, gamma, mc, rc, part, acc)
        });
    for part in partial.chunks_exact(2 * d) {
        for (g, p) in dgamma.iter_mut().zip(&part[..d]) {
            *g += p;
        }
        for (b, p) in dbeta.iter_mut().zip(&part[d..]) {
            *b += p;
        }
    }
    Ok(())
}

simd_fn! {
    #[allow(clippy::too_many_arguments)]
    fn ln_backward_rows(
        dxc: &mut [f32],
        gc: &[f32],
        xc: &[f32],
        gamma: &[f32],
        mc: &[f32],
        rc: &[f32],
        part: &mut [f32],
        acc: bool,
    ) {
        let d = gamma.len();
        let (pg, pb) = part.split_at_mut(d);
        for ((((dxr, gr), xr), &mu), &r) in dxc
            .chunks_exact_mut(d)
            .zip(gc.chunks_exact(d))
            .zip(xc.chunks_exact(d))
            .zip(mc)
            .zip(rc)
        {
            let mg = lanes8(gr, gamma, gamma, |g, ga, _| g * ga) / d as f32;
            let mgx = lanes8(gr, gamma, xr, |g, ga, x| g * ga * ((x - mu) * r)) / d as f32;
            // Zipped iterators, not indices: no bounds checks, so this vectorises.
            for ((((dxv, &g), &x), &ga), (pgv, pbv)) in dxr
                .iter_mut()
                .zip(gr)
                .zip(xr)
                .zip(gamma)
                .zip(pg.iter_mut().zip(pb.iter_mut()))
            {
                let xhat = (x - mu) * r;
                *pgv += g * xhat;
                *pbv += g;
                let v = r * (g * ga - mg - xhat * mgx);
                *dxv = if acc { *dxv + v } else { v };
            }
        }
    }
}

/// RMSNorm (Zhang & Sennrich 2019, arXiv 1910.07467; the default norm of mad-lab's
/// `LanguageModel`, `mad/model/language_model.py`): `y = x · rstd · w` per row with
/// `rstd = 1/sqrt(mean(x²) + eps)`, eps inside the square root. (StripedHyena's own RMSNorm
/// adds eps to the RMS instead; that form is not implemented.) Writes `y [M, D]` and `rstd [M]`.
pub fn rmsnorm_forward(
    x: &[f32],
    w: &[f32],
    d: usize,
    eps: f32,
    y: &mut [f32],
    rstd: &mut [f32],
) -> Result<()> {
    const OP: &str = "rmsnorm forward";
    let m = x.len().checked_div(d).unwrap_or(0);
    check_len(OP, "x [M, D]", x.len(), m * d)?;
    check_len(OP, "w [D]", w.len(), d)?;
    check_len(OP, "y [M, D]", y.len(), m * d)?;
    check_len(OP, "rstd [M]", rstd.len(), m)?;
    if d == 0 {
        return Ok(());
    }
    y.par_chunks_mut(ROWS * d)
        .zip(x.par_chunks(ROWS * d))
        .zip(rstd.par_chunks_mut(ROWS))
        .for_each(|((yc, xc), rc)| {
            for ((yr, xr), r) in yc.chunks_exact_mut(d).zip(xc.chunks_exact(d)).zip(rc) {
                let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
                *r = 1.0 / (ms + eps).sqrt();
                for ((yv, xv), g) in yr.iter_mut().zip(xr).zip(w) {
                    *yv = xv * *r * g;
                }
            }
        });
    Ok(())
}

/// StripedHyena's RMSNorm (vortex and stripedhyena `RMSNorm.forward`, `hyena-family.md`
/// section 7.1): `y = w ⊙ x / (‖x‖₂ · D^(−1/2) + eps)`, **eps added to the RMS**, not inside the
/// square root as in [`rmsnorm_forward`] (the `use_flash_rmsnorm` configs use that form). The
/// norm is accumulated in f64: a row of thousands of f32 squares then rounds once. Rows
/// `[M, D]`; writes `y`.
pub fn rmsnorm_rms_eps_forward(
    x: &[f32],
    w: &[f32],
    d: usize,
    eps: f32,
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "rmsnorm (eps on the rms) forward";
    let m = x.len().checked_div(d).unwrap_or(0);
    check_len(OP, "x [M, D]", x.len(), m * d)?;
    check_len(OP, "w [D]", w.len(), d)?;
    check_len(OP, "y [M, D]", y.len(), m * d)?;
    if d == 0 {
        return Ok(());
    }
    y.par_chunks_mut(ROWS * d)
        .zip(x.par_chunks(ROWS * d))
        .for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_exact_mut(d).zip(xc.chunks_exact(d)) {
                let ss = xr.iter().map(|&v| v as f64 * v as f64).sum::<f64>();
                let rms = (ss.sqrt() * (d as f64).powf(-0.5)) as f32;
                let r = 1.0 / (rms + eps);
                for ((yv, &xv), &g) in yr.iter_mut().zip(xr).zip(w) {
                    *yv = g * (xv * r);
                }
            }
        });
    Ok(())
}

/// Backward of [`rmsnorm_forward`]: with `g = dy ⊙ w`,
/// `dx = rstd · (g − x · rstd² · mean(g ⊙ x))`. Writes `dx` (adds into it with `acc`),
/// *accumulates* `dw += Σ_rows dy ⊙ x · rstd`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    d: usize,
    dx: &mut [f32],
    acc: bool,
    dw: &mut [f32],
) -> Result<()> {
    const OP: &str = "rmsnorm backward";
    let m = rstd.len();
    check_len(OP, "x [M, D]", x.len(), m * d)?;
    check_len(OP, "dy [M, D]", dy.len(), m * d)?;
    check_len(OP, "dx [M, D]", dx.len(), m * d)?;
    check_len(OP, "w [D]", w.len(), d)?;
    check_len(OP, "dw [D]", dw.len(), d)?;
    if d == 0 || m == 0 {
        return Ok(());
    }
    let n_chunks = m.div_ceil(ROWS);
    let mut partial = vec![0.0f32; n_chunks * d];
    dx.par_chunks_mut(ROWS * d)
        .zip(dy.par_chunks(ROWS * d).zip(x.par_chunks(ROWS * d)))
        .zip(rstd.par_chunks(ROWS))
        .zip(partial.par_chunks_mut(d))
        .for_each(|(((dxc, (gc, xc)), rc), part)| {
            for (((dxr, gr), xr), &r) in dxc
                .chunks_exact_mut(d)
                .zip(gc.chunks_exact(d))
                .zip(xc.chunks_exact(d))
                .zip(rc)
            {
                let mut dot = 0.0f32;
                for ((g, xv), wv) in gr.iter().zip(xr).zip(w) {
                    dot += g * wv * xv;
                }
                let c = dot / d as f32 * r * r;
                for (j, dv) in dxr.iter_mut().enumerate() {
                    part[j] += gr[j] * xr[j] * r;
                    let v = r * (gr[j] * w[j] - xr[j] * c);
                    *dv = if acc { *dv + v } else { v };
                }
            }
        });
    for part in partial.chunks_exact(d) {
        for (g, p) in dw.iter_mut().zip(part) {
            *g += p;
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

    /// RMSNorm forward in f64.
    pub fn rmsnorm_forward(x: &[f32], w: &[f32], d: usize, eps: f32) -> Vec<f32> {
        let mut y = vec![0.0; x.len()];
        for (yr, xr) in y.chunks_mut(d).zip(x.chunks(d)) {
            let ms = xr.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d as f64;
            for j in 0..d {
                yr[j] = (xr[j] as f64 / (ms + eps as f64).sqrt() * w[j] as f64) as f32;
            }
        }
        y
    }

    /// [`super::rmsnorm_rms_eps_forward`] in f64.
    pub fn rmsnorm_rms_eps_forward(x: &[f32], w: &[f32], d: usize, eps: f32) -> Vec<f32> {
        let mut y = vec![0.0; x.len()];
        for (yr, xr) in y.chunks_mut(d).zip(x.chunks(d)) {
            let norm = xr.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            let den = norm / (d as f64).sqrt() + eps as f64;
            for j in 0..d {
                yr[j] = (w[j] as f64 * xr[j] as f64 / den) as f32;
            }
        }
        y
    }
}
