//! Elementwise activations and gating: GELU (tanh form), the implicit filter's `Sin`, products.
//!
//! GELU uses the tanh approximation of the reference MLPs (spec Sec. 2.7):
//! `gelu(x) = 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
//! `Sin` is `sin(freq ⊙ x)` with one learnable `freq [F]` broadcast over rows (Hyena Sec. 3.3;
//! the reference shares one instance between all activations of the filter MLP).

use rayon::prelude::*;

use crate::error::{check_len, Result};
use crate::ops::simd_fn;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// `exp(x)` for `x <= 0`, branch-free so that loops over it vectorise (libm's scalar `tanhf`
/// measured as a fifth of a training step). Cody–Waite reduction `x = n·ln2 + r`,
/// `|r| <= ln2/2`, a degree-7 Taylor polynomial for `exp(r)` (truncation < 2e-8 relative), and
/// `2^n` built from the exponent bits. Inputs below -87 flush to ~0.
#[inline(always)]
pub(crate) fn exp_nonpos(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.max(-87.0);
    // Round to nearest with the 1.5·2^23 trick: plain float adds, so it vectorises without
    // SSE4.1 (f32::round is a libm call on baseline x86-64).
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    // `t`'s low mantissa bits hold the integer `n` (two's complement, |n| <= 126): read it from
    // the bits, because `n as i32` saturates and does not vectorise (it was half of GELU's time).
    let ni = t.to_bits() as i32 - MAGIC.to_bits() as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    f32::from_bits(((ni + 127) << 23) as u32) * p
}

/// `tanh(x) = sign(x)·(1 - e)/(1 + e)` with `e = exp(-2|x|)`: absolute error below 2e-7
/// (checked against f64 in the tests), which is what GELU needs.
#[inline(always)]
pub fn tanh_fast(x: f32) -> f32 {
    let e = exp_nonpos(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

/// `y = gelu_tanh(x)`.
pub fn gelu_forward(x: &[f32], y: &mut [f32]) -> Result<()> {
    check_len("gelu forward", "y", y.len(), x.len())?;
    y.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(yc, xc)| gelu_chunk(yc, xc));
    Ok(())
}

simd_fn! {
    fn gelu_chunk(yc: &mut [f32], xc: &[f32]) {
        for (yv, &v) in yc.iter_mut().zip(xc) {
            let u = SQRT_2_OVER_PI * (v + GELU_C * v * v * v);
            *yv = 0.5 * v * (1.0 + tanh_fast(u));
        }
    }
}

simd_fn! {
    fn gelu_backward_chunk(dc: &mut [f32], xc: &[f32], gc: &[f32]) {
        for ((d, &v), &g) in dc.iter_mut().zip(xc).zip(gc) {
            let u = SQRT_2_OVER_PI * (v + GELU_C * v * v * v);
            let th = tanh_fast(u);
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * v * v);
            *d = g * (0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * du);
        }
    }
}

/// `dx = dy · gelu'(x)`.
pub fn gelu_backward(dy: &[f32], x: &[f32], dx: &mut [f32]) -> Result<()> {
    check_len("gelu backward", "x", x.len(), dy.len())?;
    check_len("gelu backward", "dx", dx.len(), dy.len())?;
    dx.par_chunks_mut(4096)
        .zip(x.par_chunks(4096).zip(dy.par_chunks(4096)))
        .for_each(|(dc, (xc, gc))| gelu_backward_chunk(dc, xc, gc));
    Ok(())
}

simd_fn! {
    fn gelu_backward_inplace_chunk(dc: &mut [f32], xc: &[f32]) {
        for (d, &v) in dc.iter_mut().zip(xc) {
            let u = SQRT_2_OVER_PI * (v + GELU_C * v * v * v);
            let th = tanh_fast(u);
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * v * v);
            *d *= 0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * du;
        }
    }
}

/// `d = d · gelu'(x)` in place: [`gelu_backward`] without a second `[N]` buffer (the LM's MLP
/// hidden gradient is its largest backward scratch).
pub fn gelu_backward_inplace(d: &mut [f32], x: &[f32]) -> Result<()> {
    check_len("gelu backward", "x", x.len(), d.len())?;
    d.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(dc, xc)| gelu_backward_inplace_chunk(dc, xc));
    Ok(())
}

/// `y += x` (residual connections), in parallel over fixed chunks.
pub fn add_assign(y: &mut [f32], x: &[f32]) -> Result<()> {
    check_len("add_assign", "x", x.len(), y.len())?;
    y.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(yc, xc)| add_chunk(yc, xc));
    Ok(())
}

simd_fn! {
    fn add_chunk(yc: &mut [f32], xc: &[f32]) {
        for (a, b) in yc.iter_mut().zip(xc) {
            *a += b;
        }
    }
}

/// `y[i, j] = sin(freq[j] · x[i, j])` for rows `x: [M, F]`.
pub fn sin_forward(x: &[f32], freq: &[f32], y: &mut [f32]) -> Result<()> {
    let f = freq.len();
    check_len("sin forward", "x [M, F]", x.len() % f.max(1), 0)?;
    check_len("sin forward", "y", y.len(), x.len())?;
    for (yr, xr) in y.chunks_exact_mut(f).zip(x.chunks_exact(f)) {
        for ((yv, xv), w) in yr.iter_mut().zip(xr).zip(freq) {
            *yv = (w * xv).sin();
        }
    }
    Ok(())
}

/// Backward of [`sin_forward`]: writes `dx`, *accumulates* `dfreq` (shared across all uses).
pub fn sin_backward(
    dy: &[f32],
    x: &[f32],
    freq: &[f32],
    dx: &mut [f32],
    dfreq: &mut [f32],
) -> Result<()> {
    let f = freq.len();
    check_len("sin backward", "x", x.len(), dy.len())?;
    check_len("sin backward", "dx", dx.len(), dy.len())?;
    check_len("sin backward", "dfreq [F]", dfreq.len(), f)?;
    for ((dr, xr), gr) in dx
        .chunks_exact_mut(f)
        .zip(x.chunks_exact(f))
        .zip(dy.chunks_exact(f))
    {
        for j in 0..f {
            let c = (freq[j] * xr[j]).cos() * gr[j];
            dr[j] = c * freq[j];
            dfreq[j] += c * xr[j];
        }
    }
    Ok(())
}

/// Gating `y = a ⊙ b`.
pub fn gate_forward(a: &[f32], b: &[f32], y: &mut [f32]) -> Result<()> {
    check_len("gate forward", "b", b.len(), a.len())?;
    check_len("gate forward", "y", y.len(), a.len())?;
    for ((yv, av), bv) in y.iter_mut().zip(a).zip(b) {
        *yv = av * bv;
    }
    Ok(())
}

/// Backward of [`gate_forward`]: `da = dy ⊙ b`, `db = dy ⊙ a`.
pub fn gate_backward(
    dy: &[f32],
    a: &[f32],
    b: &[f32],
    da: &mut [f32],
    db: &mut [f32],
) -> Result<()> {
    check_len("gate backward", "a", a.len(), dy.len())?;
    check_len("gate backward", "b", b.len(), dy.len())?;
    check_len("gate backward", "da", da.len(), dy.len())?;
    check_len("gate backward", "db", db.len(), dy.len())?;
    for i in 0..dy.len() {
        da[i] = dy[i] * b[i];
        db[i] = dy[i] * a[i];
    }
    Ok(())
}

/// f64 references.
pub mod reference {
    /// GELU, tanh form, in f64.
    pub fn gelu(x: f32) -> f32 {
        let x = x as f64;
        let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
        (0.5 * x * (1.0 + u.tanh())) as f32
    }
}
