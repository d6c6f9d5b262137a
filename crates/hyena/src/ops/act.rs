//! Elementwise activations and gating: GELU (tanh form), the implicit filter's `Sin`, products.
//!
//! GELU uses the tanh approximation of the reference MLPs (spec Sec. 2.7):
//! `gelu(x) = 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
//! `Sin` is `sin(freq ⊙ x)` with one learnable `freq [F]` broadcast over rows (Hyena Sec. 3.3;
//! the reference shares one instance between all activations of the filter MLP).

use rayon::prelude::*;

use crate::error::{check_len, Result};

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// `y = gelu_tanh(x)`.
pub fn gelu_forward(x: &[f32], y: &mut [f32]) -> Result<()> {
    check_len("gelu forward", "y", y.len(), x.len())?;
    y.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(yc, xc)| {
            for (yv, &v) in yc.iter_mut().zip(xc) {
                let u = SQRT_2_OVER_PI * (v + GELU_C * v * v * v);
                *yv = 0.5 * v * (1.0 + u.tanh());
            }
        });
    Ok(())
}

/// `dx = dy · gelu'(x)`.
pub fn gelu_backward(dy: &[f32], x: &[f32], dx: &mut [f32]) -> Result<()> {
    check_len("gelu backward", "x", x.len(), dy.len())?;
    check_len("gelu backward", "dx", dx.len(), dy.len())?;
    dx.par_chunks_mut(4096)
        .zip(x.par_chunks(4096).zip(dy.par_chunks(4096)))
        .for_each(|(dc, (xc, gc))| {
            for ((d, &v), &g) in dc.iter_mut().zip(xc).zip(gc) {
                let u = SQRT_2_OVER_PI * (v + GELU_C * v * v * v);
                let th = u.tanh();
                let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * v * v);
                *d = g * (0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * du);
            }
        });
    Ok(())
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
