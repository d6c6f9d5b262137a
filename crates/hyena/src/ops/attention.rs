//! Inference kernels of causal multi-head softmax attention: rotary position embeddings and a
//! blocked attention that never holds more than one block of scores per worker (the reference
//! calls PyTorch's `scaled_dot_product_attention` or FlashAttention; vortex `MHA.forward`).
//!
//! Layouts: `q`, `k`, `v` head-major `[H, L, hd]`; the output is time-major `[L, H·hd]` (what
//! the output projection reads).
//!
//! **Rotary** ([`rotary_inplace`]) is GPT-NeoX's rotate-half over the whole head (vortex
//! `RotaryEmbedding`, `interleaved=False`): dim `i < hd/2` pairs with `i + hd/2`, rotated by the
//! angle `θ = (t / s) · f_i` where `f` are the inverse frequencies `base^(−2i/hd)` (or the
//! checkpoint's `inv_freq` buffer) and `s` the linear position-interpolation factor
//! (`LinearlyScaledRotaryEmbedding`: `t = arange(L) / s`; Chen et al., arXiv 2306.15595). As
//! in the reference, `t / s` and the product with `f_i` are f32 operations, then cos and sin.
//!
//! **Attention** ([`causal_attention`]): for each head and block of [`QBLOCK`] queries, the
//! scores against all earlier keys `S = q kᵀ / √hd` (one GEMM), a causal mask, a row softmax
//! (max-subtracted, in f32), and `P v` (one GEMM).

use rayon::prelude::*;

use crate::error::{check_len, Error, Result};
use crate::ops::linear::{matmul, MatMut, MatRef};

/// Queries per block.
pub const QBLOCK: usize = 64;

/// Rotate `x [H, L, hd]` in place for positions `pos0 .. pos0 + L` (see the module docs).
pub fn rotary_inplace(
    x: &mut [f32],
    heads: usize,
    hd: usize,
    inv_freq: &[f32],
    scale: f32,
    pos0: usize,
) -> Result<()> {
    const OP: &str = "rotary";
    if heads == 0 || hd == 0 {
        return Ok(());
    }
    let l = x.len() / (heads * hd);
    check_len(OP, "x [H, L, hd]", x.len(), heads * l * hd)?;
    if !hd.is_multiple_of(2) {
        return Err(Error::shape(OP, "head dim", "an even number", hd));
    }
    let half = hd / 2;
    check_len(OP, "inv_freq [hd/2]", inv_freq.len(), half)?;
    // cos/sin per position, shared by the heads: [L, hd/2] each.
    let mut cs = vec![(0.0f32, 0.0f32); l * half];
    cs.par_chunks_mut(half).enumerate().for_each(|(t, row)| {
        let tt = (pos0 + t) as f32 / scale;
        for (c, &f) in row.iter_mut().zip(inv_freq) {
            let a = (tt * f) as f64;
            *c = (a.cos() as f32, a.sin() as f32);
        }
    });
    x.par_chunks_mut(hd).enumerate().for_each(|(r, row)| {
        let t = r % l;
        let (a, b) = row.split_at_mut(half);
        for ((x1, x2), &(c, s)) in a.iter_mut().zip(b.iter_mut()).zip(&cs[t * half..]) {
            let (u, w) = (*x1, *x2);
            *x1 = u * c - w * s;
            *x2 = w * c + u * s;
        }
    });
    Ok(())
}

/// Causal softmax attention: `out [L, H·hd]` from `q, k, v [H, L, hd]` (see the module docs).
pub fn causal_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    hd: usize,
    out: &mut [f32],
) -> Result<()> {
    let l = q.len() / (heads * hd).max(1);
    causal_attention_at(q, k, v, heads, hd, 0, l, out)
}

/// [`causal_attention`] for a chunk of queries at positions `q0 .. q0 + Lq` (`q [H, Lq, hd]`)
/// against the keys and values of every position so far, `k, v [H, rows, hd]` (rows
/// `0 .. q0 + Lq` filled; `rows` is the buffers' row count per head).
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_at(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    hd: usize,
    q0: usize,
    rows: usize,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "causal attention";
    if heads == 0 || hd == 0 {
        return Ok(());
    }
    let l = q.len() / (heads * hd);
    let n = heads * l * hd;
    check_len(OP, "q [H, Lq, hd]", q.len(), n)?;
    check_len(OP, "k [H, rows, hd]", k.len(), heads * rows * hd)?;
    check_len(OP, "v [H, rows, hd]", v.len(), heads * rows * hd)?;
    check_len(OP, "out [Lq, H*hd]", out.len(), n)?;
    if q0 + l > rows {
        return Err(Error::shape(OP, "key rows", format!(">= {}", q0 + l), rows));
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let width = heads * hd;
    let blocks = l.div_ceil(QBLOCK);
    let op = super::SyncPtr::new(out);
    (0..heads * blocks).into_par_iter().for_each_init(
        || (Vec::<f32>::new(), vec![0.0f32; QBLOCK * hd]),
        |(s, o), task| {
            let (h, b) = (task / blocks, task % blocks);
            let (r0, r1) = (b * QBLOCK, ((b + 1) * QBLOCK).min(l));
            // Query rows r0..r1 of the chunk see keys 0..=q0 + row.
            let (m, keys) = (r1 - r0, q0 + r1);
            let (qbase, kbase) = (h * l * hd, h * rows * hd);
            super::grow(s, m * keys);
            let s = &mut s[..m * keys];
            let qb = MatRef::rm(&q[qbase + r0 * hd..qbase + r1 * hd], m, hd);
            let kt = MatRef::tr(&k[kbase..kbase + keys * hd], hd, keys);
            // Shapes are consistent by construction; a failure here is a bug, so it is not
            // propagated per task but caught by the tests.
            super::serial(|| matmul(MatMut::rm(s, m, keys), qb, kt, false))
                .expect("attention scores");
            for (i, row) in s.chunks_exact_mut(keys).enumerate() {
                let last = q0 + r0 + i; // keys 0..=last are visible
                let row = &mut row[..=last];
                let mut mx = f32::NEG_INFINITY;
                for x in row.iter_mut() {
                    *x *= scale;
                    mx = mx.max(*x);
                }
                let mut sum = 0.0f32;
                for x in row.iter_mut() {
                    *x = (*x - mx).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                for x in row.iter_mut() {
                    *x *= inv;
                }
            }
            for (i, row) in s.chunks_exact_mut(keys).enumerate() {
                row[q0 + r0 + i + 1..].fill(0.0);
            }
            let o = &mut o[..m * hd];
            let vb = MatRef::rm(&v[kbase..kbase + keys * hd], keys, hd);
            super::serial(|| matmul(MatMut::rm(o, m, hd), MatRef::rm(s, m, keys), vb, false))
                .expect("attention values");
            for (i, orow) in o.chunks_exact(hd).enumerate() {
                // SAFETY: task (h, b) writes rows r0..r1, columns h·hd..(h+1)·hd: disjoint
                // across tasks.
                let dst = unsafe { op.slice((r0 + i) * width + h * hd, hd) };
                dst.copy_from_slice(orow);
            }
        },
    );
    Ok(())
}

/// Slow, obviously correct versions for the tests.
pub mod reference {
    /// Rotary on `x [H, L, hd]` in f64 (angles from the same f32 products as the kernel).
    pub fn rotary(
        x: &[f32],
        heads: usize,
        hd: usize,
        inv_freq: &[f32],
        scale: f32,
        pos0: usize,
    ) -> Vec<f32> {
        let l = x.len() / (heads * hd);
        let half = hd / 2;
        let mut y = x.to_vec();
        for h in 0..heads {
            for t in 0..l {
                let r = (h * l + t) * hd;
                for i in 0..half {
                    let a = (((pos0 + t) as f32 / scale) * inv_freq[i]) as f64;
                    let (u, w) = (x[r + i] as f64, x[r + i + half] as f64);
                    y[r + i] = (u * a.cos() - w * a.sin()) as f32;
                    y[r + i + half] = (w * a.cos() + u * a.sin()) as f32;
                }
            }
        }
        y
    }

    /// Causal softmax attention in f64, one query at a time.
    pub fn causal_attention(q: &[f32], k: &[f32], v: &[f32], heads: usize, hd: usize) -> Vec<f32> {
        let l = q.len() / (heads * hd);
        let mut out = vec![0.0f32; l * heads * hd];
        for h in 0..heads {
            let at = |x: &[f32], t: usize, i: usize| x[(h * l + t) * hd + i] as f64;
            for t in 0..l {
                let s: Vec<f64> = (0..=t)
                    .map(|j| {
                        (0..hd).map(|i| at(q, t, i) * at(k, j, i)).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..hd {
                    out[t * heads * hd + h * hd + i] =
                        ((0..=t).map(|j| e[j] * at(v, j, i)).sum::<f64>() / z) as f32;
                }
            }
        }
        out
    }
}
