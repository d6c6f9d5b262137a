//! Causal depthwise FIR filters on time-major activations `[L, C]`, with filters shared by
//! groups of consecutive channels: StripedHyena 2's featurizer (length 3, one filter per
//! channel), Hyena-SE (length 7) and Hyena-MR (length 128), each filter repeated over `C / G`
//! consecutive channels (vortex `HyenaCascade.parallel_forward`: `h.repeat_interleave(C / G)`;
//! Ku et al., arXiv 2503.01868, Sec. 2.1).
//!
//! The two tap orders of the reference differ and both occur in one model
//! (`hyena-family.md` section 8.3, gotcha 11):
//! - [`FirOrder::Correlation`] is PyTorch's `conv1d` with left padding `K − 1`:
//!   `y[t] = Σ_j h[j] · u[t − (K−1) + j]`, tap `K − 1` on the newest sample (featurizer, SE);
//! - [`FirOrder::Convolution`] is a true convolution, `y[t] = Σ_s h[s] · u[t − s]`, tap 0 on
//!   the newest sample (MR, computed by the reference through an FFT of size `2L`, which is the
//!   same sum up to float rounding).
//!
//! Samples before `t = 0` are zero, so a filter longer than the sequence is truncated to it as
//! the reference's `h[..., :L]` does. [`fir_forward`] expands the filters to a `[K, C]` table
//! in convolution order once and runs a vectorised loop over channels, parallel over blocks
//! of rows; [`reference::fir`] is the plain double sum.

use rayon::prelude::*;

use crate::error::{check_len, Error, Result};

/// Which tap multiplies the newest sample (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirOrder {
    /// `conv1d` order: tap `K − 1` on the newest sample.
    Correlation,
    /// True convolution: tap 0 on the newest sample.
    Convolution,
}

/// The shape of a grouped FIR: `C` channels, `G` filters of `K` taps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirShape {
    pub channels: usize,
    pub groups: usize,
    pub taps: usize,
}

impl FirShape {
    fn check(&self, op: &'static str) -> Result<usize> {
        if self.groups == 0 || self.taps == 0 || !self.channels.is_multiple_of(self.groups) {
            return Err(Error::shape(
                op,
                "filter groups",
                format!(
                    "a positive number of groups dividing the {} channels, and taps > 0",
                    self.channels
                ),
                format!("{} groups of {} taps", self.groups, self.taps),
            ));
        }
        Ok(self.channels / self.groups)
    }
}

/// The per-channel taps `[K, C]` in convolution order (`[s, c]` multiplies `u[t − s, c]`) of
/// grouped filters `h [G, K]` (row `g` shared by channels `g·C/G .. (g+1)·C/G`).
pub fn expand_taps(h: &[f32], shape: FirShape, order: FirOrder) -> Result<Vec<f32>> {
    const OP: &str = "fir taps";
    let per = shape.check(OP)?;
    let (c, k) = (shape.channels, shape.taps);
    check_len(OP, "h [G, K]", h.len(), shape.groups * k)?;
    let mut w = vec![0.0f32; k * c];
    for s in 0..k {
        let j = match order {
            FirOrder::Convolution => s,
            FirOrder::Correlation => k - 1 - s,
        };
        for (ch, v) in w[s * c..(s + 1) * c].iter_mut().enumerate() {
            *v = h[(ch / per) * k + j];
        }
    }
    Ok(w)
}

/// Rows per parallel task.
const ROWS: usize = 32;

/// `y [L, C] = FIR(u [L, C])` with taps `w [K, C]` from [`expand_taps`] (convolution order),
/// `K = w.len() / C`. Writes every element of `y`.
pub fn fir_forward(u: &[f32], w: &[f32], c: usize, y: &mut [f32]) -> Result<()> {
    // A sequence start: the history before it is zeros.
    let k = w.len().checked_div(c).unwrap_or(1).max(1);
    let mut carry = vec![0.0f32; (k - 1) * c];
    fir_forward_carry(u, w, c, &mut carry, y)
}

/// [`fir_forward`] on one chunk of a longer sequence: `carry [K−1, C]` holds the `K − 1` rows
/// before the chunk (zeros at the sequence start) and is left holding the chunk's last `K − 1`
/// rows, so that chunk after chunk gives exactly the one-shot result.
pub fn fir_forward_carry(
    u: &[f32],
    w: &[f32],
    c: usize,
    carry: &mut [f32],
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "fir forward (carried)";
    if c == 0 {
        return Ok(());
    }
    let l = u.len() / c;
    check_len(OP, "u [L, C]", u.len(), l * c)?;
    check_len(OP, "y [L, C]", y.len(), l * c)?;
    if w.is_empty() || !w.len().is_multiple_of(c) {
        return Err(Error::shape(OP, "w [K, C]", format!("[K, {c}]"), w.len()));
    }
    let k = w.len() / c;
    check_len(OP, "carry [K-1, C]", carry.len(), (k - 1) * c)?;
    // Sample `t − s` of the chunk, or of the carried history when it lies before the chunk.
    let row = |t: usize, s: usize| -> &[f32] {
        if s <= t {
            &u[(t - s) * c..(t - s + 1) * c]
        } else {
            let h = k - 1 - (s - t); // index into carry
            &carry[h * c..(h + 1) * c]
        }
    };
    y.par_chunks_mut(ROWS * c)
        .enumerate()
        .for_each(|(blk, yc)| {
            let t0 = blk * ROWS;
            for (i, yr) in yc.chunks_exact_mut(c).enumerate() {
                let t = t0 + i;
                yr.fill(0.0);
                for s in 0..k {
                    axpy_row(yr, &w[s * c..(s + 1) * c], row(t, s));
                }
            }
        });
    // The new history: the last K − 1 rows of (old history ++ chunk).
    let keep = k - 1;
    if keep > 0 {
        let mut next = vec![0.0f32; keep * c];
        for j in 0..keep {
            // Row j of the new history is position l − keep + j (negative: old history).
            let pos = l as isize - keep as isize + j as isize;
            let src = if pos >= 0 {
                &u[pos as usize * c..(pos as usize + 1) * c]
            } else {
                let h = (keep as isize + pos) as usize;
                &carry[h * c..(h + 1) * c]
            };
            next[j * c..(j + 1) * c].copy_from_slice(src);
        }
        carry.copy_from_slice(&next);
    }
    Ok(())
}

super::simd_fn! {
    /// `y += w ⊙ u` elementwise.
    fn axpy_row(y: &mut [f32], w: &[f32], u: &[f32]) {
        for ((yv, &wv), &uv) in y.iter_mut().zip(w).zip(u) {
            *yv += wv * uv;
        }
    }
}

/// Slow, obviously correct versions for the tests.
pub mod reference {
    use super::{FirOrder, FirShape};

    /// The double sum of the module docs, in f64, straight from the grouped filters.
    pub fn fir(u: &[f32], h: &[f32], shape: FirShape, order: FirOrder) -> Vec<f32> {
        let (c, k) = (shape.channels, shape.taps);
        let per = c / shape.groups;
        let l = u.len() / c;
        let mut y = vec![0.0f32; l * c];
        for t in 0..l {
            for ch in 0..c {
                let g = ch / per;
                let mut acc = 0.0f64;
                for j in 0..k {
                    // The sample tap j of `h` multiplies.
                    let back = match order {
                        FirOrder::Correlation => (k - 1 - j) as isize,
                        FirOrder::Convolution => j as isize,
                    };
                    let src = t as isize - back;
                    if src >= 0 {
                        acc += h[g * k + j] as f64 * u[src as usize * c + ch] as f64;
                    }
                }
                y[t * c + ch] = acc as f32;
            }
        }
        y
    }
}
