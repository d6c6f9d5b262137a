//! Matrix products with bf16 inputs and f32 accumulation: the `bf16` precision path of the
//! StripedHyena models (`--precision bf16`). `y [M, N] = bf16(x) [M, K] · Wᵀ + b` with `W [N, K]`
//! stored bf16 and `x` rounded to bf16 (nearest, ties to even), products summed in f32 — what
//! PyTorch's bf16 `F.linear` does on a CPU, and what the reference runs released Evo 2 models
//! in. Norms, softmax, convolutions, poles and residues stay f32 (the callers' business).
//!
//! On CPUs with AVX512-BF16 the work is one instruction, `vdpbf16ps`, which adds the products
//! of a *pair* of bf16 values to each f32 lane. The operands are packed for it once per call:
//! - `A` (the activations): each row as `⌈K/2⌉` pairs (one `u32` each, low half = even `k`);
//! - `B` (the weights): panels of 16 output columns, each `k`-pair a 64-byte line of the 16
//!   columns' pairs, so one load feeds 16 lanes.
//!
//! A micro-kernel keeps a 12 × 32 tile of `y` in 24 registers and, per `k`-pair, broadcasts one
//! pair of each of the 12 rows against two panel lines (24 `vdpbf16ps`). Tiles of 96 × 128
//! outputs are spread over the rayon pool; `K` is blocked by [`KC`] pairs so that a panel's
//! block stays in L1 while the rows stream from L2. Elsewhere (no AVX512-BF16) the same
//! numbers come from widening both operands to f32 and the f32 product (products of bf16
//! values are exact in f32; only the order of the f32 sums differs).
//! [`reference::linear_bf16`] is the plain triple loop on the rounded operands.

use rayon::prelude::*;

use crate::error::{check_len, Result};
use crate::ops::linear::{linear_forward, Weight};
use crate::params::{bf16_to_f32, f32_to_bf16};

/// `k`-pairs per block.
pub const KC: usize = 256;
/// Rows and columns of a micro-tile.
const MR: usize = 12;
const NR: usize = 32;
/// Rows and columns of a parallel task.
const MT: usize = 96;
const NT: usize = 128;

/// Whether this CPU runs the bf16 products natively (AVX512-BF16).
pub fn native() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Packed operands, reused across calls.
#[derive(Default)]
pub struct Bf16Scratch {
    a: Vec<u32>,
    b: Vec<u32>,
    wide: Vec<f32>,
}

/// `y [M, N] = bf16(x) [M, K] · Wᵀ + b` (see the module docs). `w` may be f32 (rounded to
/// bf16 here) or bf16.
#[allow(clippy::too_many_arguments)]
pub fn linear_bf16(
    x: &[f32],
    w: Weight<'_>,
    b: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    y: &mut [f32],
    s: &mut Bf16Scratch,
) -> Result<()> {
    const OP: &str = "linear (bf16)";
    check_len(OP, "x [M, K]", x.len(), m * k)?;
    check_len(OP, "W [N, K]", w.len(), n * k)?;
    check_len(OP, "y [M, N]", y.len(), m * n)?;
    if let Some(b) = b {
        check_len(OP, "b [N]", b.len(), n)?;
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if !native() || k == 0 {
        // Same operands, f32 arithmetic.
        let mut xr = x.to_vec();
        for v in xr.iter_mut() {
            *v = bf16_to_f32(f32_to_bf16(*v));
        }
        let wf: Vec<f32> = match w {
            Weight::Bf16(b16) => b16.iter().map(|&h| bf16_to_f32(h)).collect(),
            Weight::F32(f) => f.iter().map(|&v| bf16_to_f32(f32_to_bf16(v))).collect(),
        };
        s.wide.clear();
        return linear_forward(&xr, &wf, b, m, k, n, y);
    }
    let k2 = k.div_ceil(2);
    pack_a(x, m, k, &mut s.a);
    pack_b(w, n, k, &mut s.b);
    #[cfg(target_arch = "x86_64")]
    {
        let (a, bp) = (&s.a[..], &s.b[..]);
        let tiles_m = m.div_ceil(MT);
        let tiles_n = n.div_ceil(NT);
        let yp = super::SyncPtr::new(y);
        (0..tiles_m * tiles_n).into_par_iter().for_each(|t| {
            let (tm, tn) = (t / tiles_n, t % tiles_n);
            let (r0, r1) = (tm * MT, ((tm + 1) * MT).min(m));
            let (c0, c1) = (tn * NT, ((tn + 1) * NT).min(n));
            // SAFETY: native() checked the CPU; the task writes rows r0..r1, columns c0..c1
            // of y only (disjoint across tasks), through pointers inside y.
            unsafe { tile(a, bp, b, k2, n, r0, r1, c0, c1, yp) };
        });
    }
    Ok(())
}

/// Activations as bf16 pairs, `[M, ⌈K/2⌉]`.
fn pack_a(x: &[f32], m: usize, k: usize, a: &mut Vec<u32>) {
    let k2 = k.div_ceil(2);
    a.clear();
    a.resize(m * k2, 0);
    a.par_chunks_mut(k2).zip(x.par_chunks(k)).for_each(|(dst, row)| {
        for (j, d) in dst.iter_mut().enumerate() {
            let lo = f32_to_bf16(row[2 * j]) as u32;
            let hi = row.get(2 * j + 1).map_or(0, |&v| f32_to_bf16(v) as u32);
            *d = lo | (hi << 16);
        }
    });
}

/// Weights as panels of 16 columns, `[⌈N/16⌉, ⌈K/2⌉, 16]` pairs (zero past `N` and `K`).
fn pack_b(w: Weight<'_>, n: usize, k: usize, b: &mut Vec<u32>) {
    let k2 = k.div_ceil(2);
    let panels = n.div_ceil(16);
    b.clear();
    b.resize(panels * k2 * 16, 0);
    let bits = |r: usize, c: usize| -> u32 {
        match w {
            Weight::Bf16(v) => v[r * k + c] as u32,
            Weight::F32(v) => f32_to_bf16(v[r * k + c]) as u32,
        }
    };
    b.par_chunks_mut(k2 * 16).enumerate().for_each(|(p, panel)| {
        for j in 0..16 {
            let col = p * 16 + j;
            if col >= n {
                break;
            }
            for kp in 0..k2 {
                let lo = bits(col, 2 * kp);
                let hi = if 2 * kp + 1 < k { bits(col, 2 * kp + 1) } else { 0 };
                panel[kp * 16 + j] = lo | (hi << 16);
            }
        }
    });
}

/// One task's tile: rows `r0..r1`, columns `c0..c1` of `y`.
///
/// # Safety
/// The CPU must support AVX-512F and AVX512-BF16; no other task may write the tile.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(
    a: &[u32],
    bp: &[u32],
    bias: Option<&[f32]>,
    k2: usize,
    n: usize,
    r0: usize,
    r1: usize,
    c0: usize,
    c1: usize,
    y: super::SyncPtr,
) {
    let mut kc0 = 0;
    while kc0 < k2 {
        let kc = KC.min(k2 - kc0);
        let first = kc0 == 0;
        let mut c = c0;
        while c < c1 {
            let cols = NR.min(c1 - c);
            let mut r = r0;
            while r < r1 {
                let rows = MR.min(r1 - r);
                micro(a, bp, bias, k2, n, r, rows, c, cols, kc0, kc, first, y);
                r += rows;
            }
            c += cols;
        }
        kc0 += kc;
    }
}

/// `y[r..r+rows, c..c+cols] (+)= A[r.., kc0..kc0+kc] · B[.., c..]`, starting from the bias (or
/// zero) when `first`, else from `y`. `c` is a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro(
    a: &[u32],
    bp: &[u32],
    bias: Option<&[f32]>,
    k2: usize,
    n: usize,
    r: usize,
    rows: usize,
    c: usize,
    cols: usize,
    kc0: usize,
    kc: usize,
    first: bool,
    y: super::SyncPtr,
) {
    use std::arch::x86_64::*;
    let np = cols.div_ceil(16); // 1 or 2 panels
    let masks: [u16; 2] = [lane_mask(cols.min(16)), lane_mask(cols.saturating_sub(16))];
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for (i, row) in acc.iter_mut().enumerate().take(rows) {
        for (p, v) in row.iter_mut().enumerate().take(np) {
            let col = c + 16 * p;
            *v = if first {
                match bias {
                    Some(b) => _mm512_maskz_loadu_ps(masks[p], b.as_ptr().add(col)),
                    None => _mm512_setzero_ps(),
                }
            } else {
                let yr = y.slice((r + i) * n + col, cols - 16 * p);
                _mm512_maskz_loadu_ps(masks[p], yr.as_ptr())
            };
        }
    }
    let panel0 = (c / 16) * k2 * 16;
    let b0 = bp.as_ptr().add(panel0 + kc0 * 16);
    let b1 = if np > 1 {
        bp.as_ptr().add(panel0 + k2 * 16 + kc0 * 16)
    } else {
        b0
    };
    let arow = a.as_ptr().add(r * k2 + kc0);
    macro_rules! body {
        ($rows:expr) => {
            for kp in 0..kc {
                let vb0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b0.add(kp * 16) as *const _));
                let vb1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b1.add(kp * 16) as *const _));
                for (i, row) in acc.iter_mut().enumerate().take($rows) {
                    let va: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*arow.add(i * k2 + kp) as i32));
                    row[0] = _mm512_dpbf16_ps(row[0], va, vb0);
                    row[1] = _mm512_dpbf16_ps(row[1], va, vb1);
                }
            }
        };
    }
    // Full tiles with a constant row count unroll into registers.
    if rows == MR {
        body!(MR);
    } else {
        body!(rows);
    }
    for (i, row) in acc.iter().enumerate().take(rows) {
        for (p, v) in row.iter().enumerate().take(np) {
            let col = c + 16 * p;
            let yr = y.slice((r + i) * n + col, cols - 16 * p);
            _mm512_mask_storeu_ps(yr.as_mut_ptr(), masks[p], *v);
        }
    }
}

/// The first `lanes` (≤ 16) lanes.
fn lane_mask(lanes: usize) -> u16 {
    if lanes >= 16 {
        u16::MAX
    } else {
        ((1u32 << lanes) - 1) as u16
    }
}

/// Slow, obviously correct versions for the tests.
pub mod reference {
    use crate::params::{bf16_to_f32, f32_to_bf16};

    /// `y = bf16(x) · bf16(W)ᵀ + b`, sums in f64.
    pub fn linear_bf16(
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<f32> {
        let r = |v: f32| bf16_to_f32(f32_to_bf16(v)) as f64;
        let mut y = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = b.map_or(0.0, |b| b[j] as f64);
                for t in 0..k {
                    acc += r(x[i * k + t]) * r(w[j * k + t]);
                }
                y[i * n + j] = acc as f32;
            }
        }
        y
    }
}
