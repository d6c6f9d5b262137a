//! Matrix products with bf16 inputs and f32 accumulation: the `bf16` precision path of the
//! StripedHyena models (`--precision bf16`). `y [M, N] = bf16(x) [M, K] · Wᵀ + b` with `W [N, K]`
//! stored bf16 and `x` rounded to bf16 (nearest, ties to even), products summed in f32 — what
//! PyTorch's bf16 `F.linear` does on a CPU, and what the reference runs released Evo 2 models
//! in. Norms, softmax, convolutions, poles and residues stay f32 (the callers' business).
//!
//! On CPUs with AVX512-BF16 the work is one instruction, `vdpbf16ps`, which adds the products
//! of a *pair* of bf16 values to each f32 lane. The lanes run over rows of `x`: the
//! activations are packed once per call as panels of 16 rows (`[⌈M/16⌉, ⌈K/2⌉, 16]` pairs, one
//! `u32` each, low half = even `k`), so one 64-byte load feeds 16 rows, while the weights are
//! read where they lie (`W [N, K]` row-major: a column's `k`-pairs are consecutive `u32`s,
//! broadcast to all lanes): no copy or repacking of the model, memory-mapped weights included.
//!
//! A micro-kernel keeps a 32-row × 12-column tile of `y` in 24 registers and, per `k`-pair,
//! loads two row panels and broadcasts one pair of each of the 12 columns (24 `vdpbf16ps`).
//! Tiles of 96 × 120 outputs are spread over the rayon pool, accumulated column-major in a
//! per-worker buffer over blocks of [`KC`] pairs (so that the weights' block stays in L1 and the
//! panels in L2), then written with the bias. Elsewhere (no AVX512-BF16) the same numbers come
//! from widening both operands to f32 and the f32 product (products of bf16 values are exact in
//! f32; only the order of the f32 sums differs).
//! [`reference::linear_bf16`] is the plain triple loop on the rounded operands.

use rayon::prelude::*;

use crate::error::{check_len, Result};
use crate::ops::linear::{linear_forward, Weight};
use crate::params::{bf16_to_f32, f32_to_bf16};

/// `k`-pairs per block.
pub const KC: usize = 256;
/// Columns of a micro-tile (its rows: two panels of 16).
const NC: usize = 12;
/// Rows and columns of a parallel task.
const MT: usize = 96;
const NT: usize = 120;

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
    w: Vec<u16>,
    /// The f32 weights of the fallback path.
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
    // Weights stored as f32 (small models) are rounded to bf16 once per call.
    let mut wr = std::mem::take(&mut s.w);
    let w: &[u16] = match w {
        Weight::Bf16(v) => v,
        Weight::F32(v) => {
            wr.clear();
            wr.extend(v.iter().map(|&x| f32_to_bf16(x)));
            &wr
        }
    };
    let r = product(x, w, k, b, m, k, n, y, s);
    s.w = wr;
    r
}

/// `y [M, N] = bf16(x) [M, K] · Wᵀ` for bf16 weights whose rows lie `ldw ≥ K` apart (the first
/// `K` values of each of the `N` rows are used): attention's products against the key cache
/// (`[L, hd]`, `ldw = hd`) and the transposed value cache (`[hd, L]`, rows of the full length,
/// `K` = the keys a block of queries sees).
#[allow(clippy::too_many_arguments)]
pub fn linear_bf16_strided(
    x: &[f32],
    w: &[u16],
    ldw: usize,
    m: usize,
    k: usize,
    n: usize,
    y: &mut [f32],
    s: &mut Bf16Scratch,
) -> Result<()> {
    const OP: &str = "linear (bf16, strided weights)";
    check_len(OP, "x [M, K]", x.len(), m * k)?;
    check_len(OP, "y [M, N]", y.len(), m * n)?;
    if ldw < k {
        return Err(crate::error::Error::shape(
            OP,
            "weight row stride",
            format!(">= {k}"),
            ldw,
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let need = (n - 1) * ldw + k;
    if w.len() < need {
        return Err(crate::error::Error::shape(
            OP,
            "W rows",
            format!(">= {need} values"),
            w.len(),
        ));
    }
    product(x, w, ldw, None, m, k, n, y, s)
}

/// The product of both entry points (the caller checked the shapes, `M, N > 0`): on the
/// AVX512-BF16 kernel, or elsewhere (and for `K = 0`) with the same operands in f32
/// arithmetic, `x` rounded and the weights' rows widened exactly into the reused scratch.
#[allow(clippy::too_many_arguments)]
fn product(
    x: &[f32],
    w: &[u16],
    ldw: usize,
    b: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    y: &mut [f32],
    s: &mut Bf16Scratch,
) -> Result<()> {
    if !native() || k == 0 {
        let xr: Vec<f32> = x.iter().map(|&v| bf16_to_f32(f32_to_bf16(v))).collect();
        super::grow(&mut s.wide, n * k);
        if k > 0 {
            s.wide[..n * k]
                .par_chunks_mut(k)
                .enumerate()
                .with_min_len((1 << 14) / k + 1)
                .for_each(|(j, row)| {
                    for (d, &h) in row.iter_mut().zip(&w[j * ldw..j * ldw + k]) {
                        *d = bf16_to_f32(h);
                    }
                });
        }
        return linear_forward(&xr, &s.wide[..n * k], b, m, k, n, y);
    }
    pack_a(x, m, k, &mut s.a);
    #[cfg(target_arch = "x86_64")]
    {
        let a = &s.a[..];
        let tiles_m = m.div_ceil(MT);
        let tiles_n = n.div_ceil(NT);
        let yp = super::SyncPtr::new(y);
        (0..tiles_m * tiles_n).into_par_iter().for_each_init(
            || vec![0.0f32; MT * NT],
            |cbuf, t| {
                let (tm, tn) = (t / tiles_n, t % tiles_n);
                let (r0, r1) = (tm * MT, ((tm + 1) * MT).min(m));
                let (c0, c1) = (tn * NT, ((tn + 1) * NT).min(n));
                // SAFETY: native() checked the CPU; the task writes rows r0..r1, columns
                // c0..c1 of y only (disjoint across tasks).
                unsafe { tile(a, w, ldw, b, m, k, n, r0, r1, c0, c1, cbuf, yp) };
            },
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, ldw, b, n, y);
        unreachable!("native() is false off x86-64");
    }
    Ok(())
}

/// Activations as panels of 16 rows: `[⌈M/16⌉, ⌈K/2⌉, 16]` bf16 pairs (one `u32` per row and
/// `k`-pair, low half = even `k`; zero past `M` and `K`), so that one 64-byte load feeds the 16
/// lanes of `vdpbf16ps` with 16 rows.
fn pack_a(x: &[f32], m: usize, k: usize, a: &mut Vec<u32>) {
    let k2 = k.div_ceil(2);
    let panels = m.div_ceil(16);
    a.clear();
    a.resize(panels * k2 * 16, 0);
    a.par_chunks_mut(k2 * 16)
        .enumerate()
        .for_each(|(p, panel)| {
            for i in 0..16 {
                let r = p * 16 + i;
                if r >= m {
                    break;
                }
                let row = &x[r * k..(r + 1) * k];
                for kp in 0..k2 {
                    let lo = f32_to_bf16(row[2 * kp]) as u32;
                    let hi = row.get(2 * kp + 1).map_or(0, |&v| f32_to_bf16(v) as u32);
                    panel[kp * 16 + i] = lo | (hi << 16);
                }
            }
        });
}

/// One task's tile of `y`: rows `r0..r1`, columns `c0..c1`, accumulated column-major in `cbuf`
/// (`[NT, MT]`) over blocks of [`KC`] `k`-pairs, then written with the bias.
///
/// The weights are read in their stored layout (`W [N, K]` row-major: a column's pairs are
/// contiguous), so nothing of the model is copied or repacked.
///
/// # Safety
/// The CPU must support AVX-512F and AVX512-BF16; no other task may write the tile.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(
    a: &[u32],
    w: &[u16],
    ldw: usize,
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    r0: usize,
    r1: usize,
    c0: usize,
    c1: usize,
    cbuf: &mut [f32],
    y: super::SyncPtr,
) {
    use std::arch::x86_64::*;
    let k2 = k.div_ceil(2);
    let _ = m;
    let rows = r1 - r0; // r0 is a multiple of 16 (MT is)
    let cols = c1 - c0;
    let rpanels = rows.div_ceil(16);
    cbuf[..NT * MT].fill(0.0);
    let mut kc0 = 0;
    while kc0 < k2 {
        let kc = KC.min(k2 - kc0);
        let mut j0 = 0;
        while j0 < cols {
            let nc = NC.min(cols - j0);
            let mut p0 = 0;
            while p0 < rpanels {
                let np = 2.min(rpanels - p0);
                // Accumulators: column j, row panel p.
                let mut acc = [[_mm512_setzero_ps(); 2]; NC];
                for (j, accj) in acc.iter_mut().enumerate().take(nc) {
                    for (p, v) in accj.iter_mut().enumerate().take(np) {
                        *v = _mm512_loadu_ps(cbuf.as_ptr().add((j0 + j) * MT + (p0 + p) * 16));
                    }
                }
                let pa0 = a.as_ptr().add(((r0 / 16 + p0) * k2 + kc0) * 16);
                let pa1 = a.as_ptr().add(((r0 / 16 + p0 + np - 1) * k2 + kc0) * 16);
                // Whole pairs; with K odd, the last pair's second weight is not read (its
                // activation is zero).
                let full = kc.min((k / 2).saturating_sub(kc0));
                let wcol = |jj: usize| w.as_ptr().add((c0 + j0 + jj) * ldw + 2 * kc0);
                if nc == NC {
                    let mut tile_acc: [[__m512; 2]; NC] = [[_mm512_setzero_ps(); 2]; NC];
                    tile_acc.copy_from_slice(&acc);
                    run::<NC>(&mut tile_acc, pa0, pa1, wcol(0), ldw, full, kc);
                    acc = tile_acc;
                } else {
                    for (jj, accj) in acc.iter_mut().enumerate().take(nc) {
                        let mut one = [*accj];
                        run::<1>(&mut one, pa0, pa1, wcol(jj), ldw, full, kc);
                        *accj = one[0];
                    }
                }
                for (j, accj) in acc.iter().enumerate().take(nc) {
                    for (p, v) in accj.iter().enumerate().take(np) {
                        _mm512_storeu_ps(cbuf.as_mut_ptr().add((j0 + j) * MT + (p0 + p) * 16), *v);
                    }
                }
                p0 += np;
            }
            j0 += nc;
        }
        kc0 += kc;
    }
    for i in 0..rows {
        let yr = y.slice((r0 + i) * n + c0, cols);
        for (j, v) in yr.iter_mut().enumerate() {
            *v = cbuf[j * MT + i] + bias.map_or(0.0, |b| b[c0 + j]);
        }
    }
}

/// The micro-kernel: `N` consecutive columns (weights rows `wc`, `wc + ldw`, …) against two
/// 16-row panels of activations, `kc` pairs (`full` of them whole), accumulators in registers.
///
/// # Safety
/// AVX-512F and AVX512-BF16; the pointers cover `kc` pairs of two panels and `N` weight rows.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn run<const N: usize>(
    acc: &mut [[std::arch::x86_64::__m512; 2]; N],
    pa0: *const u32,
    pa1: *const u32,
    wc: *const u16,
    ldw: usize,
    full: usize,
    kc: usize,
) {
    use std::arch::x86_64::*;
    let mut r = *acc;
    for kp in 0..kc {
        let va0: __m512bh = std::mem::transmute(_mm512_loadu_si512(pa0.add(kp * 16) as *const _));
        let va1: __m512bh = std::mem::transmute(_mm512_loadu_si512(pa1.add(kp * 16) as *const _));
        for (jj, rj) in r.iter_mut().enumerate() {
            let q = wc.add(jj * ldw + 2 * kp);
            let pair = if kp < full {
                (q as *const u32).read_unaligned()
            } else {
                *q as u32
            };
            let wb: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
            rj[0] = _mm512_dpbf16_ps(rj[0], va0, wb);
            rj[1] = _mm512_dpbf16_ps(rj[1], va1, wb);
        }
    }
    *acc = r;
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
