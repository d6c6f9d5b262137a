//! Elementwise activations and gating: GELU (tanh form), the implicit filter's `Sin`, products.
//!
//! GELU uses the tanh approximation, as the block MLPs of the reference LMs do (safari
//! `src/models/sequence/long_conv_lm.py`, `ConvLMHeadModel`; HyenaDNA `standalone_hyenadna.py`
//! and the HF port `modeling_hyena.py`):
//! `gelu(x) = 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`, evaluated as `x·σ(2u)`.
//! `Sin` is `sin(freq ⊙ x)` with one learnable `freq [F]` broadcast over rows (Hyena, arXiv
//! 2302.10866, Sec. 3.3; safari's `HyenaFilter` reuses one `Sin` module for every activation of
//! its filter MLP, so there is one `freq`).
//!
//! Both use branch-free approximations so that the loops vectorise: an `exp` with relative
//! error below 2e-8 for GELU's logistic form, and a Cephes-style `sin` with absolute error
//! below 3e-7 (rows with an argument above 8192 use libm). Results therefore differ from
//! PyTorch's in the last bits.

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
    exp_reduced(x.max(-87.0))
}

/// The body of [`exp_nonpos`] and [`exp_fast`], for `x` in `[-87, 88]`.
#[inline(always)]
fn exp_reduced(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
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

/// `exp(x)` for any `x`, clamped to `[-87, 88]` (so the result stays finite and normal): the
/// same scheme as [`exp_nonpos`], for GELU's logistic form.
#[inline(always)]
pub(crate) fn exp_fast(x: f32) -> f32 {
    exp_reduced(x.clamp(-87.0, 88.0))
}

/// GELU (tanh form) through the logistic function: `0.5·(1 + tanh(u)) = σ(2u)`, so
/// `gelu(v) = v·σ(2u)` and `gelu'(v) = σ + 2·v·σ·(1-σ)·u'` with `u = √(2/π)(v + c v³)`. One exp
/// and one division, no sign handling. Returns `(σ(2u), u')`.
#[inline(always)]
fn gelu_sigma(v: f32) -> (f32, f32) {
    let u = SQRT_2_OVER_PI * (v + GELU_C * v * v * v);
    let s = 1.0 / (1.0 + exp_fast(-2.0 * u));
    (s, SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * v * v))
}

/// `gelu'(v)`, see [`gelu_sigma`].
#[inline(always)]
fn gelu_grad(v: f32) -> f32 {
    let (s, du) = gelu_sigma(v);
    s + 2.0 * v * s * (1.0 - s) * du
}

/// `d ⊙= gelu'(x)` in place and `dbias[j] += Σ_i d[i, j]` over rows `[M, N]` (N = `dbias`
/// length): the GELU backward with the bias gradient of the linear layer before it taken in the
/// same pass. Rows are summed per block of 128 and the blocks in order, so the result does not
/// depend on the thread count.
pub fn gelu_backward_bias(d: &mut [f32], x: &[f32], dbias: &mut [f32]) -> Result<()> {
    const OP: &str = "gelu backward";
    const ROWS: usize = 128;
    let n = dbias.len();
    check_len(OP, "x", x.len(), d.len())?;
    check_len(OP, "d [M, N] (N = bias length)", d.len() % n.max(1), 0)?;
    if n == 0 || d.is_empty() {
        return Ok(());
    }
    let chunk = ROWS * n;
    let mut partial = vec![0.0f32; d.len().div_ceil(chunk) * n];
    d.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .zip(partial.par_chunks_mut(n))
        .for_each(|((dc, xc), part)| gelu_backward_bias_chunk(dc, xc, part));
    for part in partial.chunks_exact(n) {
        for (b, p) in dbias.iter_mut().zip(part) {
            *b += p;
        }
    }
    Ok(())
}

simd_fn! {
    fn gelu_backward_bias_chunk(dc: &mut [f32], xc: &[f32], part: &mut [f32]) {
        let n = part.len();
        for (dr, xr) in dc.chunks_exact_mut(n).zip(xc.chunks_exact(n)) {
            for ((d, &v), p) in dr.iter_mut().zip(xr).zip(part.iter_mut()) {
                *d *= gelu_grad(v);
                *p += *d;
            }
        }
    }
}

/// `y = gelu_tanh(x)`.
pub fn gelu_forward(x: &[f32], y: &mut [f32]) -> Result<()> {
    check_len("gelu forward", "y", y.len(), x.len())?;
    y.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(yc, xc)| gelu_chunk(yc, xc));
    Ok(())
}

/// `x[i, j] += bias[j]`, then `y = gelu_tanh(x)`, for rows `x: [M, N]`: the bias of the
/// linear layer before the GELU added in the GELU's own pass (the GEMM then writes without a
/// bias pre-fill). `x` keeps the biased pre-activation for the backward.
pub fn bias_gelu_forward(x: &mut [f32], bias: &[f32], y: &mut [f32]) -> Result<()> {
    const OP: &str = "bias+gelu forward";
    let n = bias.len();
    check_len(OP, "y", y.len(), x.len())?;
    check_len(OP, "x [M, N] (N = bias length)", x.len() % n.max(1), 0)?;
    if n == 0 {
        return Ok(());
    }
    let rows = (4096 / n).max(1) * n;
    y.par_chunks_mut(rows)
        .zip(x.par_chunks_mut(rows))
        .for_each(|(yc, xc)| bias_gelu_chunk(yc, xc, bias));
    Ok(())
}

simd_fn! {
    fn bias_gelu_chunk(yc: &mut [f32], xc: &mut [f32], bias: &[f32]) {
        for (yr, xr) in yc.chunks_exact_mut(bias.len()).zip(xc.chunks_exact_mut(bias.len())) {
            for ((yv, v), &bv) in yr.iter_mut().zip(xr.iter_mut()).zip(bias) {
                *v += bv;
                *yv = *v * gelu_sigma(*v).0;
            }
        }
    }
}

simd_fn! {
    fn gelu_chunk(yc: &mut [f32], xc: &[f32]) {
        for (yv, &v) in yc.iter_mut().zip(xc) {
            *yv = v * gelu_sigma(v).0;
        }
    }
}

simd_fn! {
    fn gelu_backward_chunk(dc: &mut [f32], xc: &[f32], gc: &[f32]) {
        for ((d, &v), &g) in dc.iter_mut().zip(xc).zip(gc) {
            *d = g * gelu_grad(v);
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
            *d *= gelu_grad(v);
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

/// Largest `|x|` for [`sin_quadrant`]: `n·DP1` and `n·DP2` stay exact in f32 for
/// `n = round(x·2/π)` up to 2^13. Rows with a larger argument use libm.
const SIN_FAST_MAX: f32 = 8192.0;

/// `sin(x + shift·π/2)` for `|x| <= SIN_FAST_MAX`, branch-free so that loops vectorise (libm's
/// scalar `sinf`/`cosf` were most of the implicit filter's cost). Cephes' single-precision
/// scheme: `x = n·π/2 + r` with a three-part Cody–Waite constant, `|r| <= π/4`, minimax
/// polynomials for `sin r` and `cos r`, and the quadrant `(n + shift) mod 4` choosing which one
/// and its sign. Absolute error below 3e-7 against f64 (tested).
#[inline(always)]
pub(crate) fn sin_quadrant(x: f32, shift: i32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer
    const DP1: f32 = 1.570_312_5;
    const DP2: f32 = 4.837_513e-4;
    const DP3: f32 = 7.549_79e-8;
    let t = x * std::f32::consts::FRAC_2_PI + MAGIC;
    let n = t - MAGIC;
    // n as an integer from the low mantissa bits (as in exp_nonpos: `as i32` does not vectorise).
    let q = (t.to_bits() as i32 - MAGIC.to_bits() as i32 + shift) & 3;
    let r = ((x - n * DP1) - n * DP2) - n * DP3;
    let z = r * r;
    let sin_r = r + r * z * (-1.666_665_5e-1 + z * (8.332_161e-3 + z * -1.951_529_6e-4));
    let cos_r =
        1.0 - 0.5 * z + z * z * (4.166_664_6e-2 + z * (-1.388_731_6e-3 + z * 2.443_315_7e-5));
    let v = if q & 1 == 0 { sin_r } else { cos_r };
    if q & 2 == 0 {
        v
    } else {
        -v
    }
}

/// `y[i, j] = sin(freq[j] · x[i, j])` for rows `x: [M, F]`.
pub fn sin_forward(x: &[f32], freq: &[f32], y: &mut [f32]) -> Result<()> {
    let f = freq.len();
    check_len("sin forward", "x [M, F]", x.len() % f.max(1), 0)?;
    check_len("sin forward", "y", y.len(), x.len())?;
    if f == 0 {
        return Ok(());
    }
    sin_rows(y, x, freq);
    Ok(())
}

simd_fn! {
    fn sin_rows(y: &mut [f32], x: &[f32], freq: &[f32]) {
        let f = freq.len();
        for (yr, xr) in y.chunks_exact_mut(f).zip(x.chunks_exact(f)) {
            let big = xr.iter().zip(freq).fold(0.0f32, |m, (v, w)| m.max((w * v).abs()));
            if big <= SIN_FAST_MAX {
                for ((yv, xv), w) in yr.iter_mut().zip(xr).zip(freq) {
                    *yv = sin_quadrant(w * xv, 0);
                }
            } else {
                for ((yv, xv), w) in yr.iter_mut().zip(xr).zip(freq) {
                    *yv = (w * xv).sin();
                }
            }
        }
    }
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
    check_len("sin backward", "x [M, F]", x.len() % f.max(1), 0)?;
    if f == 0 {
        return Ok(());
    }
    sin_backward_rows(dx, x, dy, freq, dfreq);
    Ok(())
}

simd_fn! {
    fn sin_backward_rows(dx: &mut [f32], x: &[f32], dy: &[f32], freq: &[f32], dfreq: &mut [f32]) {
        let f = freq.len();
        for ((dr, xr), gr) in dx
            .chunks_exact_mut(f)
            .zip(x.chunks_exact(f))
            .zip(dy.chunks_exact(f))
        {
            let big = xr.iter().zip(freq).fold(0.0f32, |m, (v, w)| m.max((w * v).abs()));
            let fast = big <= SIN_FAST_MAX;
            for ((((d, &xv), &g), &w), df) in dr
                .iter_mut()
                .zip(xr)
                .zip(gr)
                .zip(freq)
                .zip(dfreq.iter_mut())
            {
                let cos = if fast { sin_quadrant(w * xv, 1) } else { (w * xv).cos() };
                let c = cos * g;
                *d = c * w;
                *df += c * xv;
            }
        }
    }
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

/// GELU in its exact form, `x · Φ(x) = x/2 · (1 + erf(x/√2))` (PyTorch's `F.gelu` default,
/// what StripedHyena 2's first MLP uses: vortex `ParallelGatedMLP`), in place on `x`.
pub fn gelu_erf_inplace(x: &mut [f32]) {
    x.par_chunks_mut(4096).for_each(|c| {
        for v in c {
            *v = 0.5 * *v * (1.0 + libm::erff(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    });
}

/// f64 references.
pub mod reference {
    /// GELU, tanh form, in f64.
    pub fn gelu(x: f32) -> f32 {
        let x = x as f64;
        let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
        (0.5 * x * (1.0 + u.tanh())) as f32
    }

    /// Exact (erf) GELU in f64.
    pub fn gelu_erf(x: f32) -> f32 {
        let x = x as f64;
        (0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))) as f32
    }
}
