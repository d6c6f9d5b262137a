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
//! (max-subtracted, in f32), and `P v` (one GEMM). The softmax's exponentials are
//! [`exp_nonpositive`] (a vectorisable exp for arguments ≤ 0, within 2 ulp of `f32::exp`): at
//! 8,192 positions the `L²/2` exponentials per head cost more than the two GEMMs with the
//! scalar library call.

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
    let op = "causal attention";
    if heads == 0 || hd == 0 {
        return Ok(());
    }
    check_len(op, "k [H, rows, hd]", k.len(), heads * rows * hd)?;
    check_len(op, "v [H, rows, hd]", v.len(), heads * rows * hd)?;
    let l = q.len() / (heads * hd);
    blocked(
        op,
        q,
        heads,
        hd,
        q0,
        rows,
        out,
        || (),
        |_, h, r0, r1, keys, s| {
            let (m, qbase, kbase) = (r1 - r0, h * l * hd, h * rows * hd);
            let qb = MatRef::rm(&q[qbase + r0 * hd..qbase + r1 * hd], m, hd);
            let kt = MatRef::tr(&k[kbase..kbase + keys * hd], hd, keys);
            super::serial(|| matmul(MatMut::rm(s, m, keys), qb, kt, false))
        },
        |_, h, m, keys, p, o| {
            let kbase = h * rows * hd;
            let vb = MatRef::rm(&v[kbase..kbase + keys * hd], keys, hd);
            super::serial(|| matmul(MatMut::rm(o, m, hd), MatRef::rm(p, m, keys), vb, false))
        },
    )
}

/// [`causal_attention_at`] with bf16 products (the `bf16` precision): `q` f32 `[H, Lq, hd]`
/// (rounded to bf16 by the product), keys `kb [H, rows, hd]` and transposed values
/// `vt [H, hd, rows]` as bf16 bits; scores, softmax and sums in f32, the probabilities rounded
/// to bf16 for the second product (what PyTorch's bf16 attention on a CPU feeds its GEMMs).
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_bf16_at(
    q: &[f32],
    kb: &[u16],
    vt: &[u16],
    heads: usize,
    hd: usize,
    q0: usize,
    rows: usize,
    out: &mut [f32],
) -> Result<()> {
    use crate::ops::bf16::{linear_bf16_strided, Bf16Scratch};
    let op = "causal attention (bf16)";
    if heads == 0 || hd == 0 {
        return Ok(());
    }
    check_len(op, "k [H, rows, hd]", kb.len(), heads * rows * hd)?;
    check_len(op, "vᵀ [H, hd, rows]", vt.len(), heads * rows * hd)?;
    let l = q.len() / (heads * hd);
    blocked(
        op,
        q,
        heads,
        hd,
        q0,
        rows,
        out,
        Bf16Scratch::default,
        |bs, h, r0, r1, keys, s| {
            let (m, qbase, kbase) = (r1 - r0, h * l * hd, h * rows * hd);
            let qb = &q[qbase + r0 * hd..qbase + r1 * hd];
            linear_bf16_strided(qb, &kb[kbase..kbase + keys * hd], hd, m, hd, keys, s, bs)
        },
        |bs, h, m, keys, p, o| {
            let vh = &vt[h * hd * rows..(h + 1) * hd * rows];
            linear_bf16_strided(p, vh, rows, m, keys, hd, o, bs)
        },
    )
}

/// The blocked causal attention both precisions share: per head and block of [`QBLOCK`]
/// queries (one parallel task each, with its own `init()` state), `scores(state, head, r0, r1,
/// keys, S [m, keys])` writes `q kᵀ`, the rows get the scaled causal softmax (masked entries
/// zero), and `values(state, head, m, keys, P, O [m, hd])` writes `P v`, copied into `out`.
#[allow(clippy::too_many_arguments)]
fn blocked<S>(
    op: &'static str,
    q: &[f32],
    heads: usize,
    hd: usize,
    q0: usize,
    rows: usize,
    out: &mut [f32],
    init: impl Fn() -> S + Sync + Send,
    scores: impl Fn(&mut S, usize, usize, usize, usize, &mut [f32]) -> Result<()> + Sync + Send,
    values: impl Fn(&mut S, usize, usize, usize, &[f32], &mut [f32]) -> Result<()> + Sync + Send,
) -> Result<()> {
    let l = q.len() / (heads * hd);
    let n = heads * l * hd;
    check_len(op, "q [H, Lq, hd]", q.len(), n)?;
    check_len(op, "out [Lq, H*hd]", out.len(), n)?;
    if q0 + l > rows {
        return Err(Error::shape(op, "key rows", format!(">= {}", q0 + l), rows));
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let width = heads * hd;
    let blocks = l.div_ceil(QBLOCK);
    let outp = super::SyncPtr::new(out);
    (0..heads * blocks).into_par_iter().for_each_init(
        || (Vec::<f32>::new(), vec![0.0f32; QBLOCK * hd], init()),
        |(s, o, st), task| {
            let (h, b) = (task / blocks, task % blocks);
            let (r0, r1) = (b * QBLOCK, ((b + 1) * QBLOCK).min(l));
            // Query rows r0..r1 of the chunk see keys 0..=q0 + row.
            let (m, keys) = (r1 - r0, q0 + r1);
            super::grow(s, m * keys);
            let s = &mut s[..m * keys];
            // Shapes are consistent by construction (checked above); a failure here is a bug,
            // so it is not propagated per task but caught by the tests.
            scores(st, h, r0, r1, keys, s).expect("attention scores");
            for (i, row) in s.chunks_exact_mut(keys).enumerate() {
                let last = q0 + r0 + i; // keys 0..=last are visible
                softmax_row(&mut row[..=last], scale);
                row[last + 1..].fill(0.0);
            }
            let o = &mut o[..m * hd];
            values(st, h, m, keys, s, o).expect("attention values");
            for (i, orow) in o.chunks_exact(hd).enumerate() {
                // SAFETY: task (h, b) writes rows r0..r1, columns h·hd..(h+1)·hd: disjoint
                // across tasks.
                let dst = unsafe { outp.slice((r0 + i) * width + h * hd, hd) };
                dst.copy_from_slice(orow);
            }
        },
    );
    Ok(())
}

super::simd_fn! {
    /// `row ← softmax(scale · row)` in place (max-subtracted; sums in 16 lanes).
    fn softmax_row(row: &mut [f32], scale: f32) {
        let mut mx = f32::NEG_INFINITY;
        for x in row.iter_mut() {
            *x *= scale;
            mx = mx.max(*x);
        }
        let mut lanes = [0.0f32; 16];
        let mut chunks = row.chunks_exact_mut(16);
        for c in &mut chunks {
            for (x, acc) in c.iter_mut().zip(lanes.iter_mut()) {
                *x = exp_nonpositive(*x - mx);
                *acc += *x;
            }
        }
        let mut sum = 0.0f32;
        for x in chunks.into_remainder() {
            *x = exp_nonpositive(*x - mx);
            sum += *x;
        }
        sum += lanes.iter().sum::<f32>();
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

/// `e^x` for `x ≤ 0` (softmax arguments after the max is subtracted), branch-free so that
/// loops over it vectorise: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2` (Cody–Waite, two-part
/// ln 2), `e^r` by its degree-7 Taylor polynomial (truncation below 5e-9 relative), `2^n` built
/// in the exponent bits. Within 2 ulp of `f32::exp`; 0 below −87 (where `e^x` < 2^−125, far
/// below anything a softmax row keeps) and for −∞ (masked scores).
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Round to nearest by the 1.5·2^23 trick (vectorises, unlike f32::round).
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.max(-87.0);
    let n = (xc * LOG2E + MAGIC) - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n ∈ [−126, 0]: a normal power of two.
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else if x.is_nan() {
        x
    } else {
        p * two_n
    }
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

    /// [`super::causal_attention_bf16_at`]'s numbers: q, k, v rounded to bf16, scores and
    /// softmax in f64, the probabilities rounded to bf16 before the weighted sum.
    pub fn causal_attention_bf16(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        heads: usize,
        hd: usize,
    ) -> Vec<f32> {
        use crate::params::{bf16_to_f32, f32_to_bf16};
        let r = |x: f32| bf16_to_f32(f32_to_bf16(x)) as f64;
        let l = q.len() / (heads * hd);
        let mut out = vec![0.0f32; l * heads * hd];
        for h in 0..heads {
            let at = |x: &[f32], t: usize, i: usize| r(x[(h * l + t) * hd + i]);
            for t in 0..l {
                let sc: Vec<f64> = (0..=t)
                    .map(|s| (0..hd).map(|i| at(q, t, i) * at(k, s, i)).sum::<f64>())
                    .map(|x| x / (hd as f64).sqrt())
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..hd {
                    let acc: f64 = (0..=t)
                        .map(|s| bf16_to_f32(f32_to_bf16((e[s] / z) as f32)) as f64 * at(v, s, i))
                        .sum();
                    out[t * heads * hd + h * hd + i] = acc as f32;
                }
            }
        }
        out
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
