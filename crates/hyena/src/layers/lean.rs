//! The memory-lean inference path's residual stream and workspace, and its per-position
//! passes (`x += mlp(norm(x))`, `x ← norm(x)`), run chunk by chunk in place.
//!
//! The training forward keeps every block's activations for the backward: about 15 `[L, D]`
//! buffers per block, 120 GB for an 8-block model at 1M bases. Inference needs none of that:
//! it runs one block at a time in place on the residual stream `x [L, D]`, in position chunks
//! of `P` rows, with one channel-major buffer `Y [D, L]` for the long convolutions (see
//! [`crate::layers::hyena::lean`]). Above 2^27 residual values ([`ResidualStore::Auto`]) `x` is
//! kept packed at 24 bits per value (relative rounding ≤ 2^-16 per store) and only unpacked
//! chunk by chunk: that takes a quarter off `x` (244 MiB at D = 256, L = 1M) for no
//! measurable time.

use rayon::prelude::*;

use crate::error::Result;
use crate::layers::mlp::Mlp;
use crate::layers::norm::LayerNorm;
use crate::ops::fftconv::{RowConv, RowConvScratch};
use crate::ops::{grow, simd_fn};

/// How [`InferWorkspace`] stores the residual stream `x [L, D]` between passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResidualStore {
    /// [`ResidualStore::Packed24`] when `L·D` exceeds 2^27 values (512 MiB as f32: above
    /// 524,288 bases at D = 256), else [`ResidualStore::F32`].
    #[default]
    Auto,
    /// Plain f32: results equal the training forward's up to float rounding.
    F32,
    /// 24 bits per value: f32 rounded to nearest (even) at 16 mantissa bits, relative error
    /// ≤ 2^-16 per store. Saves a quarter of the residual stream (244 MiB at D = 256, L = 1M),
    /// which brings the 1M-base forward of HyenaDNA-large under 2 GiB.
    Packed24,
}

/// Settings of the lean forward that trade memory for speed or precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeanOptions {
    /// Rows per position chunk (results do not depend on it).
    pub chunk: usize,
    pub residual: ResidualStore,
}

impl Default for LeanOptions {
    fn default() -> Self {
        LeanOptions {
            chunk: 2048,
            residual: ResidualStore::Auto,
        }
    }
}

/// [`ResidualStore::Auto`] packs above this many residual values.
pub const PACK_ABOVE: usize = 1 << 27;

/// The residual stream `[L, D]`, as f32 or packed to 24 bits (the top 16 bits of each f32 in
/// `hi`, the next 8 in `lo`: separate arrays so that packing and unpacking vectorise). It is
/// only ever touched in position chunks: [`Residual::read`] and [`Residual::modify`] give a
/// chunk as f32 (the stored values, or unpacked into `tmp`), [`Residual::commit`] stores a
/// modified chunk back.
#[derive(Default)]
pub(crate) struct Residual {
    pub(crate) packed: bool,
    pub(crate) f: Vec<f32>,
    pub(crate) hi: Vec<u16>,
    pub(crate) lo: Vec<u8>,
    pub(crate) tmp: Vec<f32>,
    /// The element range unpacked in `tmp` (empty: none).
    pub(crate) cached: (usize, usize),
}

impl Residual {
    /// Room for `n` values, stored as chosen; frees the other representation.
    pub(crate) fn reset(&mut self, n: usize, packed: bool) {
        self.packed = packed;
        self.cached = (0, 0);
        if packed {
            self.f = Vec::new();
            if self.hi.len() < n {
                self.hi.resize(n, 0);
                self.lo.resize(n, 0);
            }
        } else {
            self.hi = Vec::new();
            self.lo = Vec::new();
            self.tmp = Vec::new();
            grow(&mut self.f, n);
        }
    }

    /// Values `[r0, r1)` as f32.
    pub(crate) fn read(&mut self, r0: usize, r1: usize) -> &[f32] {
        self.modify(r0, r1)
    }

    /// Values `[r0, r1)` as f32, to modify and then [`Residual::commit`].
    pub(crate) fn modify(&mut self, r0: usize, r1: usize) -> &mut [f32] {
        if !self.packed {
            return &mut self.f[r0..r1];
        }
        let n = r1 - r0;
        grow(&mut self.tmp, n);
        if self.cached != (r0, r1) {
            unpack(&self.hi[r0..r1], &self.lo[r0..r1], &mut self.tmp[..n]);
            self.cached = (r0, r1);
        }
        &mut self.tmp[..n]
    }

    /// Store values `[r0, r1)` given by the last [`Residual::modify`] of that range. The
    /// unpacked copy is rounded too, so that it stays equal to what a fresh read would give.
    pub(crate) fn commit(&mut self, r0: usize, r1: usize) {
        if self.packed {
            debug_assert_eq!(self.cached, (r0, r1));
            let n = r1 - r0;
            pack(
                &mut self.tmp[..n],
                &mut self.hi[r0..r1],
                &mut self.lo[r0..r1],
            );
        }
    }

    /// Every value, unpacked into `out`.
    pub(crate) fn unpack_all(&self, out: &mut [f32]) {
        let n = out.len();
        unpack(&self.hi[..n], &self.lo[..n], out);
    }
}

/// Values per parallel task of [`pack`]/[`unpack`].
const PACK_TASK: usize = 1 << 16;

/// Round each value of `v` to 24 bits (nearest, ties to even; NaN kept as NaN) into `hi`/`lo`,
/// and write the rounded value back into `v`.
pub(crate) fn pack(v: &mut [f32], hi: &mut [u16], lo: &mut [u8]) {
    v.par_chunks_mut(PACK_TASK)
        .zip(hi.par_chunks_mut(PACK_TASK))
        .zip(lo.par_chunks_mut(PACK_TASK))
        .for_each(|((v, hi), lo)| pack_rows(v, hi, lo));
}

simd_fn! {
    fn pack_rows(v: &mut [f32], hi: &mut [u16], lo: &mut [u8]) {
        for ((x, h), l) in v.iter_mut().zip(hi.iter_mut()).zip(lo.iter_mut()) {
            let b = x.to_bits();
            let r = b.wrapping_add(0x7F + ((b >> 8) & 1));
            // A NaN's payload could carry into the sign bit: truncate NaNs instead.
            let r = if (b & 0x7fff_ffff) > 0x7f80_0000 { b } else { r } & 0xffff_ff00;
            *h = (r >> 16) as u16;
            *l = (r >> 8) as u8;
            *x = f32::from_bits(r);
        }
    }
}

/// `out[i]` = the f32 whose top 24 bits are `hi[i]`, `lo[i]`.
pub(crate) fn unpack(hi: &[u16], lo: &[u8], out: &mut [f32]) {
    out.par_chunks_mut(PACK_TASK)
        .zip(hi.par_chunks(PACK_TASK))
        .zip(lo.par_chunks(PACK_TASK))
        .for_each(|((o, hi), lo)| unpack_rows(hi, lo, o));
}

simd_fn! {
    fn unpack_rows(hi: &[u16], lo: &[u8], out: &mut [f32]) {
        for ((o, &h), &l) in out.iter_mut().zip(hi).zip(lo) {
            *o = f32::from_bits(((h as u32) << 16) | ((l as u32) << 8));
        }
    }
}

/// Reusable buffers of the lean forward (grow to the longest sequence seen, never shrink,
/// except the position-chunk buffers `u`, `s`, which are dropped before the convolutions).
#[derive(Default)]
pub struct InferWorkspace {
    /// Rows per position chunk.
    pub(crate) chunk: usize,
    /// Residual stream `[L, D]`; after a run, the requested hidden states (when it is packed,
    /// they are unpacked into `Y`'s memory, free by then).
    pub(crate) x: Residual,
    /// How the residual stream is stored.
    pub(crate) store: ResidualStore,
    /// Whether the last run's hidden states are in `y` (packed residual).
    pub(crate) out_in_y: bool,
    /// Long-convolution rows `[D, L]`.
    pub(crate) y: Vec<f32>,
    /// Filter-MLP output `[F, L]`, only when it cannot borrow rows of `Y` (F > D).
    pub(crate) hidden: Vec<f32>,
    /// One channel group `[G, L]`: filters of A, then convolution inputs of B.
    pub(crate) group: Vec<f32>,
    // Chunk buffers.
    pub(crate) h: Vec<f32>, // [P, D] (LN output), [F, P] (columns of hidden)
    pub(crate) u: Vec<f32>, // [P, 2C] (in_proj output), [P, d_inner] (fc1 output)
    pub(crate) s: Vec<f32>, // [P, 2C] (short filter output), [P, d_inner] (gelu output)
    pub(crate) carry: Vec<f32>, // [K-1, 2C]
    pub(crate) mu: Vec<f32>,
    pub(crate) rs: Vec<f32>,
    /// LN1's per-position mean and 1/std `[L]` of the current block, from its first pass over
    /// `x`: later passes only apply them (the same arithmetic, so the same values).
    pub(crate) ln1_mean: Vec<f32>,
    pub(crate) ln1_rstd: Vec<f32>,
    /// Whether `ln1_mean`/`ln1_rstd` hold the current block's statistics.
    pub(crate) ln1_ready: bool,
    /// The FFT plan of the current length and its per-task scratch (rebuilt when L changes).
    pub(crate) conv: Option<RowConv>,
    pub(crate) scratch: Vec<RowConvScratch>,
    pub(crate) l: usize,
    pub(crate) d: usize,
    /// Called with (blocks done, blocks to run) after each block: progress on long sequences.
    pub(crate) on_block: Option<Box<dyn FnMut(usize, usize) + Send>>,
    /// The buffers of a model family without a lean path of its own (e.g. a zoo model's
    /// training-forward cache), reused across calls like the rest.
    pub other: crate::layers::layer::Slot,
}

impl std::fmt::Debug for InferWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferWorkspace")
            .field("chunk", &self.chunk)
            .field("len", &self.l)
            .finish()
    }
}

impl InferWorkspace {
    /// A workspace with position chunks of `chunk` rows (2048 is a good default: large enough
    /// for efficient matrix products, small beside the `[L, D]` buffers).
    pub fn new(chunk: usize) -> Self {
        InferWorkspace {
            chunk: chunk.max(1),
            ..Default::default()
        }
    }

    /// The rows `[L, D]` of the last run: hidden states of the requested layer.
    pub fn hidden_states(&self) -> &[f32] {
        if self.out_in_y {
            &self.y[..self.l * self.d]
        } else {
            &self.x.f[..self.l * self.d]
        }
    }

    /// Move the rows of the last run (what [`InferWorkspace::hidden_states`] shows, `[L, D]`)
    /// out of the workspace instead of copying them: the buffer that held them is allocated
    /// again by the next run. For callers that keep the rows (the Python binding's arrays),
    /// this saves a copy of `L·D` floats at the peak.
    pub fn take_hidden_states(&mut self) -> Vec<f32> {
        let n = self.l * self.d;
        let mut v = if self.out_in_y {
            std::mem::take(&mut self.y)
        } else {
            std::mem::take(&mut self.x.f)
        };
        v.truncate(n);
        v
    }

    /// A workspace with these settings.
    pub fn with_options(o: LeanOptions) -> Self {
        Self::new(o.chunk).with_residual(o.residual)
    }

    /// Choose how the residual stream is stored (default [`ResidualStore::Auto`]).
    pub fn with_residual(mut self, store: ResidualStore) -> Self {
        self.store = store;
        self
    }

    /// Whether the last run kept the residual stream packed (24 bits per value).
    pub fn residual_packed(&self) -> bool {
        self.x.packed
    }

    /// Report progress after every block (`(done, total)`), e.g. to a progress bar.
    pub fn set_progress(&mut self, f: Option<Box<dyn FnMut(usize, usize) + Send>>) {
        self.on_block = f;
    }
}

impl InferWorkspace {
    /// `x += mlp(norm(x))` over the whole residual stream, chunk by chunk, in place: the
    /// per-position half of a pre-norm block.
    pub fn mlp_pass(&mut self, p: &[f32], norm: &LayerNorm, mlp: &Mlp) -> Result<()> {
        let (l, d, di) = (self.l, self.d, mlp.di);
        let pch = self.chunk;
        // The fc1 and gelu outputs [P, d_inner] go into Y, free until the next block's mixer,
        // when it is large enough (L >= 8·P at d_inner = 4D): separate buffers would stay
        // allocated (16 MiB at P = 2048) or, freed and reallocated, stay resident.
        let need = pch.min(l) * di;
        let in_y = self.y.len() >= 2 * need;
        if in_y {
            grow(&mut self.h, pch * d);
            grow(&mut self.mu, pch);
            grow(&mut self.rs, pch);
        } else {
            self.chunk_buffers(di);
        }
        let InferWorkspace {
            x,
            y,
            h,
            u,
            s,
            mu,
            rs,
            ..
        } = self;
        let (fc1, act) = if in_y {
            let (a, b) = y.split_at_mut(need);
            (a, &mut b[..need])
        } else {
            (&mut u[..need], &mut s[..need])
        };
        for t0 in (0..l).step_by(pch) {
            let t1 = (t0 + pch).min(l);
            let n = t1 - t0;
            let xr = x.modify(t0 * d, t1 * d);
            norm.forward(p, xr, &mut h[..n * d], &mut mu[..n], &mut rs[..n])?;
            mlp.forward_accumulate(
                p,
                &h[..n * d],
                n,
                &mut fc1[..n * di],
                &mut act[..n * di],
                xr,
            )?;
            x.commit(t0 * d, t1 * d);
        }
        Ok(())
    }

    /// `x ← norm(x)` over the whole residual stream, chunk by chunk (the final norm).
    pub fn norm_pass(&mut self, p: &[f32], norm: &LayerNorm) -> Result<()> {
        let (l, d, pch) = (self.l, self.d, self.chunk);
        grow(&mut self.h, pch * d);
        grow(&mut self.mu, pch);
        grow(&mut self.rs, pch);
        for t0 in (0..l).step_by(pch) {
            let t1 = (t0 + pch).min(l);
            let n = t1 - t0;
            let xr = self.x.modify(t0 * d, t1 * d);
            norm.forward(
                p,
                xr,
                &mut self.h[..n * d],
                &mut self.mu[..n],
                &mut self.rs[..n],
            )?;
            xr.copy_from_slice(&self.h[..n * d]);
            self.x.commit(t0 * d, t1 * d);
        }
        Ok(())
    }

    /// Grow the position-chunk buffers for `c` channels (`[P, c]` each).
    pub(crate) fn chunk_buffers(&mut self, c: usize) {
        let (pch, d) = (self.chunk, self.d);
        grow(&mut self.h, pch * d);
        grow(&mut self.u, pch * c);
        grow(&mut self.s, pch * c);
        grow(&mut self.mu, pch);
        grow(&mut self.rs, pch);
    }

    /// Start a run on `l` positions of width `d`: the residual stream `[L, D]` stored as
    /// [`InferWorkspace::with_residual`] chose.
    pub(crate) fn start(&mut self, l: usize, d: usize) {
        if self.chunk == 0 {
            self.chunk = 2048;
        }
        self.l = l;
        self.d = d;
        self.out_in_y = false;
        let packed = match self.store {
            ResidualStore::F32 => false,
            ResidualStore::Packed24 => true,
            ResidualStore::Auto => l * d > PACK_ABOVE,
        };
        self.x.reset(l * d, packed);
    }

    /// After a run: the hidden states `[L, D]`, unpacked into `Y`'s memory when the stream is
    /// packed (free after the last block; the output itself is `[L, D]`).
    pub(crate) fn finish(&mut self) -> &[f32] {
        if self.x.packed {
            let n = self.l * self.d;
            grow(&mut self.y, n);
            self.x.unpack_all(&mut self.y[..n]);
            self.out_in_y = true;
        }
        self.hidden_states()
    }
}

/// `h = (x − mean)·rstd·γ + β` per row `[P, D]` with saved statistics: the arithmetic of the
/// layer norm that computed them, in the same order, so the same values; without the two
/// reductions per row it costs about a third of the layer norm.
pub(crate) fn ln_apply(
    h: &mut [f32],
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    rstd: &[f32],
) {
    const ROWS: usize = 64;
    let d = gamma.len();
    h.par_chunks_mut(ROWS * d)
        .zip(x.par_chunks(ROWS * d))
        .zip(mean.par_chunks(ROWS).zip(rstd.par_chunks(ROWS)))
        .for_each(|((hc, xc), (mc, rc))| ln_apply_rows(hc, xc, gamma, beta, mc, rc));
}

simd_fn! {
    fn ln_apply_rows(
        hc: &mut [f32],
        xc: &[f32],
        gamma: &[f32],
        beta: &[f32],
        mc: &[f32],
        rc: &[f32],
    ) {
        let d = gamma.len();
        for (((hr, xr), &mean), &r) in hc.chunks_exact_mut(d).zip(xc.chunks_exact(d)).zip(mc).zip(rc) {
            for ((yv, xv), (g, b)) in hr.iter_mut().zip(xr).zip(gamma.iter().zip(beta)) {
                *yv = (xv - mean) * r * g + b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{pack, unpack};
    use crate::testing::rand_vec;

    #[test]
    fn pack24_rounds_to_nearest_even_and_round_trips() {
        let vals: Vec<f32> = [
            0.0f32,
            -0.0,
            1.0,
            -3.5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
        ]
        .into_iter()
        .chain(rand_vec(100_000, 3, 1e3))
        .chain([f32::from_bits(0x3f80_0080), f32::from_bits(0x3f80_0180)])
        .collect();
        let mut v = vals.clone();
        let (mut hi, mut lo) = (vec![0u16; v.len()], vec![0u8; v.len()]);
        pack(&mut v, &mut hi, &mut lo);
        let mut back = vec![0f32; v.len()];
        unpack(&hi, &lo, &mut back);
        for (i, ((&x, &r), &b)) in vals.iter().zip(&v).zip(&back).enumerate() {
            // What is stored is what the chunk now holds.
            assert_eq!(r.to_bits(), b.to_bits(), "{i}");
            assert_eq!(r.to_bits() & 0xff, 0);
            if x.is_finite() {
                // The nearest 24-bit value (subnormals included): at most half a unit of the
                // last kept bit away, i.e. 0x80 in the bits, with the same sign.
                let diff = (r.to_bits() as i64 - x.to_bits() as i64).abs();
                assert!(diff <= 0x80, "{i}: {x} -> {r}");
                if x.is_normal() && x.abs() < f32::MAX / 2.0 {
                    assert!(((r - x) / x).abs() <= 2f32.powi(-16), "{i}: {x} -> {r}");
                }
            } else if x.is_infinite() {
                assert_eq!(r, x);
            }
        }
        // Ties go to the even neighbour: 1 + 2^-16 (a tie, odd bit 0) rounds down to 1, and
        // 1 + 3·2^-16... (a tie above an odd value) rounds up.
        let n = vals.len();
        assert_eq!(v[n - 2], 1.0);
        assert_eq!(v[n - 1].to_bits(), 0x3f80_0200);
        let mut nan = [f32::NAN, f32::from_bits(0x7fff_ffff)];
        let (mut h2, mut l2) = ([0u16; 2], [0u8; 2]);
        pack(&mut nan, &mut h2, &mut l2);
        assert!(nan.iter().all(|v| v.is_nan()));
    }
}
