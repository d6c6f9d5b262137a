//! Causal long convolution by FFT (Hyena, arXiv 2302.10866, Sec. 3.3; numerics of safari's
//! `fftconv_ref`, `src/models/sequence/hyena.py`).
//!
//! `y[t] = sum_{j<=t} k[t-j] * w[j] + D * w[t]`, with `w = pre ⊙ u` and the result optionally
//! multiplied by a post-gate: `out = post ⊙ y`. Gating is fused into the gather/scatter of the
//! FFT rows so that the operator never makes a separate pass over memory for it.
//!
//! Numerics follow the reference exactly: both signals are zero-padded to `n = 2L` (any L, no
//! rounding to a power of two; `realfft`/`rustfft` handle mixed radices; only when `2L` has a
//! prime factor above 7 is `n` the next 7-smooth size, see [`fft_size`]), the kernel
//! spectrum carries the `1/n` normalisation, and the inverse transform is unscaled. With
//! `n >= 2L - 1` the circular convolution equals the linear one, so the result is exact up to
//! float rounding.
//!
//! The filter spectrum of a channel is computed once per call and shared by the whole batch: the
//! parallel loop runs over channels, and the batch loop sits inside it. FFT plans are cached per
//! length in [`FftConv`], together with a pool of scratch buffers that is reused across calls
//! (fresh large allocations are expensive here because of first-touch page faults).
//!
//! What this is not: a general N-d convolution. The slow, obviously correct O(L²) references
//! live at the bottom of this file ([`mod@reference`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::{Fft, FftPlanner};

use crate::error::{check_len, Error, Result};
use crate::ops::{lanes8, lanes8_4, simd_fn, SyncPtr};

/// Where row `(b, c)` of a set of `[.., .., L]` sequences starts: `b * batch_stride + c * chan_stride`.
///
/// `RowLayout::bcl(B, C, L)` is the usual `[B, C, L]`; the Hyena operator keeps its activations
/// as `[C, B, L]` (`RowLayout::cbl`) so that the rows sharing one filter are contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowLayout {
    pub batch: usize,
    pub chans: usize,
    pub len: usize,
    pub batch_stride: usize,
    pub chan_stride: usize,
}

impl RowLayout {
    /// `[B, C, L]`, row-major.
    pub fn bcl(batch: usize, chans: usize, len: usize) -> Self {
        RowLayout {
            batch,
            chans,
            len,
            batch_stride: chans * len,
            chan_stride: len,
        }
    }
    /// `[C, B, L]`, row-major.
    pub fn cbl(batch: usize, chans: usize, len: usize) -> Self {
        RowLayout {
            batch,
            chans,
            len,
            batch_stride: len,
            chan_stride: batch * len,
        }
    }
    /// Number of elements of a buffer holding these rows.
    pub fn numel(&self) -> usize {
        self.batch * self.chans * self.len
    }
    #[inline]
    fn row(&self, b: usize, c: usize) -> usize {
        b * self.batch_stride + c * self.chan_stride
    }
    fn check(&self, op: &'static str, what: &str, buf_len: usize) -> Result<()> {
        check_len(op, what, buf_len, self.numel())
    }
}

/// One cached FFT size with its scratch pool.
///
/// Two kinds of transform: a complex FFT of size `n` that carries *two* real rows of the same
/// channel at once (`w_a + i·w_b`; the filter spectrum is Hermitian, so the real and imaginary
/// parts of the result are the two convolutions, with no separation step), and a real FFT for
/// the odd row left over when B is odd. Packing pairs avoids the real-FFT pre/post-processing,
/// which measured as a third of the convolution time.
struct Plan {
    n: usize,
    fwd: Arc<dyn RealToComplex<f32>>,
    inv: Arc<dyn ComplexToReal<f32>>,
    cfwd: Arc<dyn Fft<f32>>,
    cinv: Arc<dyn Fft<f32>>,
    pool: Mutex<Vec<Scratch>>,
}

/// Per-task working memory for one FFT size.
struct Scratch {
    real: Vec<f32>,           // [n]
    real2: Vec<f32>,          // [n]
    spec: Vec<Complex<f32>>,  // [n/2+1]
    spec2: Vec<Complex<f32>>, // [n/2+1]
    z: Vec<Complex<f32>>,     // [n]
    z2: Vec<Complex<f32>>,    // [n]
    zt: Vec<Complex<f32>>,    // [n], input of out-of-place transforms (destroyed)
    kfull: Vec<Complex<f32>>, // [n], filter spectrum / n
    acc: Vec<Complex<f32>>,   // [n], Σ_b G ⊙ conj(W)
    fft: Vec<Complex<f32>>,   // FFT scratch
}

impl Plan {
    fn new(rplanner: &mut RealFftPlanner<f32>, cplanner: &mut FftPlanner<f32>, n: usize) -> Self {
        Plan {
            n,
            fwd: rplanner.plan_fft_forward(n),
            inv: rplanner.plan_fft_inverse(n),
            cfwd: cplanner.plan_fft_forward(n),
            cinv: cplanner.plan_fft_inverse(n),
            pool: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Scratch {
        if let Some(s) = self.pool.lock().map(|mut p| p.pop()).ok().flatten() {
            return s;
        }
        let (n, m) = (self.n, self.n / 2 + 1);
        let fl = [
            self.fwd.get_scratch_len(),
            self.inv.get_scratch_len(),
            self.cfwd.get_outofplace_scratch_len(),
            self.cinv.get_outofplace_scratch_len(),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let c0 = Complex::default();
        Scratch {
            real: vec![0.0; n],
            real2: vec![0.0; n],
            spec: vec![c0; m],
            spec2: vec![c0; m],
            z: vec![c0; n],
            z2: vec![c0; n],
            zt: vec![c0; n],
            kfull: vec![c0; n],
            acc: vec![c0; n],
            fft: vec![c0; fl],
        }
    }

    fn give(&self, s: Scratch) {
        if let Ok(mut p) = self.pool.lock() {
            p.push(s);
        }
    }

    /// Real forward FFT: `real` (destroyed) → half spectrum `out`.
    #[inline]
    fn forward_into(&self, real: &mut [f32], out: &mut [Complex<f32>], fft: &mut [Complex<f32>]) {
        // Lengths are fixed by construction; realfft only fails on wrong lengths.
        let r = self.fwd.process_with_scratch(real, out, fft);
        debug_assert!(r.is_ok());
    }

    /// Unscaled real inverse: half spectrum `spec` (destroyed) → `real`.
    #[inline]
    fn inverse_into(&self, spec: &mut [Complex<f32>], real: &mut [f32], fft: &mut [Complex<f32>]) {
        // The spectrum of a real signal has a real DC (and Nyquist, for even n) bin; products of
        // such spectra keep that property up to rounding, which realfft would reject.
        spec[0].im = 0.0;
        if self.n.is_multiple_of(2) {
            let last = spec.len() - 1;
            spec[last].im = 0.0;
        }
        let r = self.inv.process_with_scratch(spec, real, fft);
        debug_assert!(r.is_ok());
    }

    /// `out = FFT(a ⊙ ga + i·(b ⊙ gb))`, zero-padded from `L` to `n` (absent gates: 1; absent `b`:
    /// zero). The gated products are formed while packing, so the rows are read once. Out of
    /// place through `tmp` (destroyed).
    #[inline]
    fn pack_forward(
        &self,
        out: &mut [Complex<f32>],
        tmp: &mut [Complex<f32>],
        a: &[f32],
        ga: Option<&[f32]>,
        b: Option<(&[f32], Option<&[f32]>)>,
        fft: &mut [Complex<f32>],
    ) {
        let l = a.len();
        pack_rows(&mut tmp[..l], a, ga, b);
        tmp[l..].fill(Complex::default());
        self.cfwd.process_outofplace_with_scratch(tmp, out, fft);
    }

    /// Full spectrum of one filter row, carrying the `1/n` normalisation on the kernel side as
    /// safari's `fftconv_ref` does: `out = FFT(k zero-padded to n) / n`.
    #[inline]
    fn filter_spectrum(
        &self,
        out: &mut [Complex<f32>],
        tmp: &mut [Complex<f32>],
        k: &[f32],
        fft: &mut [Complex<f32>],
    ) {
        self.pack_forward(out, tmp, k, None, None, fft);
        let scale = 1.0 / self.n as f32;
        for v in out.iter_mut() {
            *v *= scale;
        }
    }

    /// Unscaled complex inverse FFT of `z` (destroyed) through `tmp`, then `a = Re`, `b = Im`
    /// of its first `L` entries.
    #[inline]
    fn inverse_unpack(
        &self,
        z: &mut [Complex<f32>],
        tmp: &mut [Complex<f32>],
        a: &mut [f32],
        b: &mut [f32],
        fft: &mut [Complex<f32>],
    ) {
        self.cinv.process_outofplace_with_scratch(z, tmp, fft);
        unpack_rows(tmp, a, b);
    }
}

/// FFT long-convolution engine: caches plans per FFT size and reuses scratch buffers.
///
/// Cheap to share (`&FftConv` is `Sync`); create one per process or per model.
pub struct FftConv {
    planners: Mutex<(RealFftPlanner<f32>, FftPlanner<f32>)>,
    plans: Mutex<HashMap<usize, Arc<Plan>>>,
}

impl Default for FftConv {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for FftConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<usize> = self
            .plans
            .lock()
            .map(|p| p.keys().copied().collect())
            .unwrap_or_default();
        f.debug_struct("FftConv")
            .field("cached_sizes", &sizes)
            .finish()
    }
}

/// Inputs of a (gated) long convolution over rows described by `layout`.
///
/// `y = post ⊙ (k * w + D ⊙ w)` with `w = pre ⊙ u`, per channel `c` with filter `k[c]` and skip `d[c]`.
#[derive(Clone, Copy)]
pub struct GatedConv<'a> {
    pub layout: RowLayout,
    /// Input rows `u`. (layout)
    pub u: &'a [f32],
    /// Optional pre-gate, multiplied into `u` before the convolution. (layout)
    pub pre: Option<&'a [f32]>,
    /// Optional post-gate, multiplied into the result. (layout)
    pub post: Option<&'a [f32]>,
    /// Filters `[C, L]`.
    pub k: &'a [f32],
    /// Skip ("bias") `[C]`; multiplies the (pre-gated) input.
    pub d: &'a [f32],
}

impl<'a> GatedConv<'a> {
    /// Row `off` (a [`RowLayout::row`] offset) of `u`, `pre` and `post`.
    #[allow(clippy::type_complexity)]
    fn row(&self, off: usize) -> (&'a [f32], Option<&'a [f32]>, Option<&'a [f32]>) {
        let l = self.layout.len;
        let at = |q: &'a [f32]| &q[off..off + l];
        (at(self.u), self.pre.map(at), self.post.map(at))
    }

    fn validate(&self, op: &'static str) -> Result<()> {
        let l = &self.layout;
        l.check(op, "u", self.u.len())?;
        if let Some(p) = self.pre {
            l.check(op, "pre-gate", p.len())?;
        }
        if let Some(p) = self.post {
            l.check(op, "post-gate", p.len())?;
        }
        check_len(op, "filter k [C, L]", self.k.len(), l.chans * l.len)?;
        check_len(op, "skip D [C]", self.d.len(), l.chans)?;
        if l.len == 0 {
            return Err(Error::shape(op, "sequence length", "L >= 1", 0));
        }
        Ok(())
    }
}

/// Gradients written by [`FftConv::gated_backward`]. `dpre`/`dpost` must be given iff the
/// forward had that gate.
pub struct GatedConvGrads<'a> {
    /// `dL/du` (layout).
    pub du: &'a mut [f32],
    /// `dL/dpre` (layout).
    pub dpre: Option<&'a mut [f32]>,
    /// `dL/dpost` (layout).
    pub dpost: Option<&'a mut [f32]>,
    /// `dL/dk` `[C, L]` (overwritten).
    pub dk: &'a mut [f32],
    /// `dL/dD` `[C]` (overwritten).
    pub dd: &'a mut [f32],
}

impl FftConv {
    /// A new engine with an empty plan cache.
    pub fn new() -> Self {
        FftConv {
            planners: Mutex::new((RealFftPlanner::new(), FftPlanner::new())),
            plans: Mutex::new(HashMap::new()),
        }
    }

    /// The cached plan for FFT size `n` (= [`fft_size`]`(L)`), created on first use.
    fn plan(&self, n: usize) -> Arc<Plan> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        plans
            .entry(n)
            .or_insert_with(|| {
                let mut pl = self.planners.lock().unwrap_or_else(|e| e.into_inner());
                let (rp, cp) = &mut *pl;
                Arc::new(Plan::new(rp, cp, n))
            })
            .clone()
    }

    /// Plain causal FFT convolution with skip, `[B, C, L]` layout (reference `fftconv_ref`).
    ///
    /// `u: [B, C, L]`, `k: [C, L]`, `d: [C]` → `y: [B, C, L]`. With `saved`, keeps the spectra
    /// that make [`FftConv::backward`] cheaper (training).
    pub fn forward(
        &self,
        u: &[f32],
        k: &[f32],
        d: &[f32],
        (b, c, l): (usize, usize, usize),
        y: &mut [f32],
        saved: Option<&mut Spectra>,
    ) -> Result<()> {
        let args = GatedConv {
            layout: RowLayout::bcl(b, c, l),
            u,
            pre: None,
            post: None,
            k,
            d,
        };
        self.gated_forward(&args, y, None, saved)
    }

    /// Backward of [`FftConv::forward`]: from `dy: [B, C, L]` write `du`, `dk: [C, L]`, `dd: [C]`.
    /// `saved`: the spectra kept by that forward, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        dy: &[f32],
        u: &[f32],
        k: &[f32],
        d: &[f32],
        (b, c, l): (usize, usize, usize),
        saved: Option<&Spectra>,
        du: &mut [f32],
        dk: &mut [f32],
        dd: &mut [f32],
    ) -> Result<()> {
        let args = GatedConv {
            layout: RowLayout::bcl(b, c, l),
            u,
            pre: None,
            post: None,
            k,
            d,
        };
        self.gated_backward(
            &args,
            dy,
            None,
            saved,
            GatedConvGrads {
                du,
                dpre: None,
                dpost: None,
                dk,
                dd,
            },
        )
    }

    /// Gated forward. Writes `y` (layout) and, if given, the un-post-gated convolution output
    /// `conv_out` (layout), which [`FftConv::gated_backward`] needs when there is a post-gate.
    /// With `saved`, the input and filter spectra are kept so that the backward skips two of
    /// its FFTs (training); inference passes `None`.
    pub fn gated_forward(
        &self,
        a: &GatedConv<'_>,
        y: &mut [f32],
        conv_out: Option<&mut [f32]>,
        saved: Option<&mut Spectra>,
    ) -> Result<()> {
        const OP: &str = "fftconv forward";
        a.validate(OP)?;
        a.layout.check(OP, "output y", y.len())?;
        if let Some(co) = conv_out.as_deref() {
            a.layout.check(OP, "conv_out", co.len())?;
        }
        let lay = a.layout;
        let l = lay.len;
        let plan = self.plan(fft_size(l));
        let h = plan.n / 2 + 1;
        let yp = SyncPtr::new(y);
        let cp = conv_out.map(SyncPtr::new);
        let sp = saved.map(|s| {
            s.resize(lay);
            (SyncPtr::new(&mut s.w), SyncPtr::new(&mut s.k))
        });
        let (bsz, pairs) = (lay.batch, lay.batch / 2);
        let wrow = Spectra::row_floats(lay);
        let n = plan.n;

        (0..lay.chans).into_par_iter().for_each(|c| {
            let mut s = plan.take();
            let Scratch {
                real,
                real2,
                spec,
                z,
                z2,
                zt,
                kfull,
                fft,
                ..
            } = &mut s;
            // Filter spectrum, once per channel, shared by the batch; carries the 1/n.
            plan.filter_spectrum(kfull, zt, &a.k[c * l..(c + 1) * l], fft);
            if let Some((_, kp)) = &sp {
                // SAFETY: channel c's spectrum slot belongs to this task.
                as_complex(unsafe { kp.slice(2 * c * h, 2 * h) }).copy_from_slice(&kfull[..h]);
            }
            let dc = a.d[c];
            let w_slot = |wp: SyncPtr, b: usize, len: usize| {
                // SAFETY: the spectrum slots of channel c belong to this task.
                as_complex(unsafe { wp.slice(c * wrow + b * 2 * h, 2 * len) })
            };
            // Pairs of rows: one complex FFT carries both.
            for p in 0..pairs {
                let (b0, b1) = (2 * p, 2 * p + 1);
                let (o0, o1) = (lay.row(b0, c), lay.row(b1, c));
                let ((u0, pre0, _), (u1, pre1, _)) = (a.row(o0), a.row(o1));
                // With `saved`, the spectrum is written straight into its slot (a pair's slot
                // holds n complex numbers, within the two rows' (n/2+1)-slots) and multiplied from there.
                let wz: &mut [Complex<f32>] = match &sp {
                    Some(sp) => w_slot(sp.0, b0, n),
                    None => &mut z2[..],
                };
                plan.pack_forward(wz, zt, u0, pre0, Some((u1, pre1)), fft);
                cmul_into(z, wz, kfull);
                plan.inverse_unpack(z, zt, &mut real[..l], &mut real2[..l], fft);
                for (b, r) in [(b0, &mut real[..l]), (b1, &mut real2[..l])] {
                    let off = lay.row(b, c);
                    // SAFETY: row (b, c) is written by this task only; rows of distinct (b, c)
                    // are disjoint because the layout strides are at least `len` apart.
                    let yr = unsafe { yp.slice(off, l) };
                    let cr = cp.as_ref().map(|p| unsafe { p.slice(off, l) });
                    forward_epilogue(r, a, off, dc, yr, cr);
                }
            }
            // The odd row left over: a real FFT.
            if bsz % 2 == 1 {
                let b = bsz - 1;
                let off = lay.row(b, c);
                let (u, pre, _) = a.row(off);
                gather_product(&mut real[..l], u, pre);
                real[l..].fill(0.0);
                plan.forward_into(real, spec, fft);
                if let Some(sp) = &sp {
                    w_slot(sp.0, b, h).copy_from_slice(spec);
                }
                for (v, kz) in spec.iter_mut().zip(kfull.iter()) {
                    *v *= *kz;
                }
                plan.inverse_into(spec, real, fft);
                let yr = unsafe { yp.slice(off, l) };
                let cr = cp.as_ref().map(|p| unsafe { p.slice(off, l) });
                forward_epilogue(&mut real[..l], a, off, dc, yr, cr);
            }
            plan.give(s);
        });
        Ok(())
    }

    /// Gated backward. `dy` is the gradient of `y` (layout); `conv_out` is the forward's
    /// un-post-gated output (required iff there is a post-gate); `saved` are the spectra of the
    /// same forward, if it kept them.
    pub fn gated_backward(
        &self,
        a: &GatedConv<'_>,
        dy: &[f32],
        conv_out: Option<&[f32]>,
        saved: Option<&Spectra>,
        g: GatedConvGrads<'_>,
    ) -> Result<()> {
        const OP: &str = "fftconv backward";
        a.validate(OP)?;
        let lay = a.layout;
        let l = lay.len;
        lay.check(OP, "dy", dy.len())?;
        lay.check(OP, "du", g.du.len())?;
        check_len(OP, "dk [C, L]", g.dk.len(), lay.chans * l)?;
        check_len(OP, "dD [C]", g.dd.len(), lay.chans)?;
        if a.pre.is_some() != g.dpre.is_some() {
            return Err(Error::shape(
                OP,
                "dpre",
                "given iff the forward had a pre-gate",
                "mismatch",
            ));
        }
        match (a.post.is_some(), conv_out, g.dpost.is_some()) {
            (true, Some(co), true) => lay.check(OP, "conv_out", co.len())?,
            (false, _, false) => {}
            _ => {
                return Err(Error::shape(
                    OP,
                    "post-gate",
                    "conv_out and dpost given iff the forward had a post-gate",
                    "mismatch",
                ))
            }
        }
        if let Some(dp) = g.dpre.as_deref() {
            lay.check(OP, "dpre", dp.len())?;
        }
        if let Some(dp) = g.dpost.as_deref() {
            lay.check(OP, "dpost", dp.len())?;
        }
        if let Some(sv) = saved {
            if sv.layout != Some(lay) {
                return Err(Error::shape(
                    OP,
                    "saved spectra",
                    format!("{lay:?}"),
                    format!("{:?}", sv.layout),
                ));
            }
        }

        let plan = self.plan(fft_size(l));
        let h = plan.n / 2 + 1;
        let scale = 1.0 / plan.n as f32;
        let dup = SyncPtr::new(g.du);
        let dprep = g.dpre.map(SyncPtr::new);
        let dpostp = g.dpost.map(SyncPtr::new);
        let dkp = SyncPtr::new(g.dk);
        let ddp = SyncPtr::new(g.dd);

        let (bsz, pairs) = (lay.batch, lay.batch / 2);
        let wrow = Spectra::row_floats(lay);
        let n = plan.n;

        (0..lay.chans).into_par_iter().for_each(|c| {
            let mut s = plan.take();
            let Scratch {
                real,
                real2,
                spec,
                spec2,
                z,
                z2,
                zt,
                kfull,
                acc,
                fft,
            } = &mut s;
            match saved {
                // The saved half spectrum, mirrored: the spectrum of a real filter is Hermitian.
                Some(sv) => {
                    let half = as_complex_ref(&sv.k[2 * c * h..2 * (c + 1) * h]);
                    kfull[..h].copy_from_slice(half);
                    for k in h..n {
                        kfull[k] = kfull[n - k].conj();
                    }
                }
                None => {
                    plan.filter_spectrum(kfull, zt, &a.k[c * l..(c + 1) * l], fft);
                }
            }
            let kfull: &[Complex<f32>] = kfull;
            acc.fill(Complex::default());
            let dc = a.d[c];
            let mut dd_acc = 0.0f64;
            let w_slot = |b: usize, len: usize| -> Option<&[Complex<f32>]> {
                saved.map(|sv| {
                    let start = c * wrow + b * 2 * h;
                    as_complex_ref(&sv.w[start..start + 2 * len])
                })
            };
            let g_row = |out: &mut [f32], off: usize| {
                gather_product(out, &dy[off..off + l], a.row(off).2);
            };
            let w_row = |out: &mut [f32], off: usize| {
                let (u, pre, _) = a.row(off);
                gather_product(out, u, pre);
            };
            // SAFETY (all row writes below): rows (b, c) are disjoint across tasks.
            let mut emit = |b: usize, corr: &[f32]| {
                let off = lay.row(b, c);
                let du = unsafe { dup.slice(off, l) };
                let dpre = dprep.as_ref().map(|p| unsafe { p.slice(off, l) });
                let dpost = dpostp.as_ref().map(|p| unsafe { p.slice(off, l) });
                dd_acc += backward_epilogue(corr, a, dy, conv_out, off, dc, du, dpre, dpost) as f64;
            };
            for p in 0..pairs {
                let (b0, b1) = (2 * p, 2 * p + 1);
                let (o0, o1) = (lay.row(b0, c), lay.row(b1, c));
                // Zw = FFT(w0 + i w1) (saved or recomputed), Zg = FFT(g0 + i g1).
                let zw: &[Complex<f32>] = match w_slot(b0, n) {
                    Some(zw) => zw,
                    None => {
                        let ((u0, pre0, _), (u1, pre1, _)) = (a.row(o0), a.row(o1));
                        plan.pack_forward(z2, zt, u0, pre0, Some((u1, pre1)), fft);
                        z2
                    }
                };
                let g = |o: usize| &dy[o..o + l];
                let (post0, post1) = (a.row(o0).2, a.row(o1).2);
                plan.pack_forward(z, zt, g(o0), post0, Some((g(o1), post1)), fft);
                // Re IFFT(Zg ⊙ conj(Zw)) = Σ over the pair of corr(g_b, w_b): dK accumulates it.
                // dw = corr(g, k) + D g: spectrum G ⊙ conj(K).
                corr_spectra(acc, z, zw, kfull);
                plan.inverse_unpack(z, zt, &mut real[..l], &mut real2[..l], fft);
                emit(b0, &real[..l]);
                emit(b1, &real2[..l]);
            }
            if bsz % 2 == 1 {
                let b = bsz - 1;
                let off = lay.row(b, c);
                let wspec: &[Complex<f32>] = match w_slot(b, h) {
                    Some(ws) => ws,
                    None => {
                        w_row(&mut real[..l], off);
                        real[l..].fill(0.0);
                        plan.forward_into(real, spec, fft);
                        spec
                    }
                };
                g_row(&mut real[..l], off);
                real[l..].fill(0.0);
                plan.forward_into(real, spec2, fft);
                // Half-spectrum product, added to the full-length accumulator with its
                // Hermitian mirror (the spectrum of a real signal).
                for (k, (gz, wz)) in spec2.iter().zip(wspec.iter()).enumerate() {
                    let pz = *gz * wz.conj();
                    acc[k] += pz;
                    if k > 0 && k < n - k {
                        acc[n - k] += pz.conj();
                    }
                }
                for (gz, kz) in spec2.iter_mut().zip(kfull.iter()) {
                    *gz *= kz.conj();
                }
                plan.inverse_into(spec2, real, fft);
                emit(b, &real[..l]);
            }
            // dk = Re IFFT(Σ_b G ⊙ conj(W))[:L] / n.
            plan.cinv.process_outofplace_with_scratch(acc, zt, fft);
            // SAFETY: channel c's filter gradient and skip gradient belong to this task.
            let dk = unsafe { dkp.slice(c * l, l) };
            for (d, r) in dk.iter_mut().zip(zt.iter()) {
                *d = r.re * scale;
            }
            unsafe { ddp.slice(c, 1)[0] = dd_acc as f32 };
            plan.give(s);
        });
        Ok(())
    }
}

/// `out = a ⊙ b` (or `out = a` without `b`), written so that it vectorises.
#[inline]
fn gather_product(out: &mut [f32], a: &[f32], b: Option<&[f32]>) {
    match b {
        Some(b) => {
            for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
                *o = x * y;
            }
        }
        None => out.copy_from_slice(a),
    }
}

/// Forward epilogue of one row: `conv = r + D w` (w recomputed from u and pre rather than
/// stored), optionally kept in `cr`, and `y = post ⊙ conv`. `r` is overwritten with `conv`.
#[inline]
fn forward_epilogue(
    r: &mut [f32],
    a: &GatedConv<'_>,
    off: usize,
    dc: f32,
    yr: &mut [f32],
    cr: Option<&mut [f32]>,
) {
    let (u, pre, post) = a.row(off);
    forward_epilogue_row(r, u, pre, post, dc, yr, cr);
}

simd_fn! {
    fn forward_epilogue_row(
        r: &mut [f32],
        ur: &[f32],
        pre: Option<&[f32]>,
        post: Option<&[f32]>,
        dc: f32,
        yr: &mut [f32],
        cr: Option<&mut [f32]>,
    ) {
        match pre {
            Some(p) => {
                for ((v, &u), &g) in r.iter_mut().zip(ur).zip(p) {
                    *v += dc * u * g;
                }
            }
            None => {
                for (v, &u) in r.iter_mut().zip(ur) {
                    *v += dc * u;
                }
            }
        }
        if let Some(cr) = cr {
            cr.copy_from_slice(r);
        }
        match post {
            Some(q) => {
                for ((o, x), y) in yr.iter_mut().zip(r.iter()).zip(q) {
                    *o = x * y;
                }
            }
            None => yr.copy_from_slice(r),
        }
    }
}

/// Backward epilogue of one row. `corr[t] = Σ_s g[t+s] k[s]`; with `g = dy ⊙ post`:
/// `dw = corr + D g`, `du = dw ⊙ pre`, `dpre = dw ⊙ u`, `dpost = dy ⊙ conv_out`.
/// Returns this row's contribution `Σ_t g w` to `dD`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn backward_epilogue(
    corr: &[f32],
    a: &GatedConv<'_>,
    dy: &[f32],
    conv_out: Option<&[f32]>,
    off: usize,
    dc: f32,
    du: &mut [f32],
    dpre: Option<&mut [f32]>,
    dpost: Option<&mut [f32]>,
) -> f32 {
    let l = corr.len();
    let (ur, pre, post) = a.row(off);
    let dyr = &dy[off..off + l];
    let mut part = 0.0f32;
    backward_epilogue_row(corr, ur, dyr, pre, post, dc, du, dpre, &mut part);
    if let (Some(dpost), Some(co)) = (dpost, conv_out) {
        gather_product(dpost, dyr, Some(&co[off..off + l]));
    }
    part
}

simd_fn! {
    #[allow(clippy::too_many_arguments)]
    fn backward_epilogue_row(
        corr: &[f32],
        ur: &[f32],
        dyr: &[f32],
        pre: Option<&[f32]>,
        post: Option<&[f32]>,
        dc: f32,
        du: &mut [f32],
        dpre: Option<&mut [f32]>,
        part: &mut f32,
    ) {
        // Zipped loops (no indices, no running sum inside) so that they vectorise; the dD
        // contribution Σ g·w is a separate fixed-order lane-split sum.
        // Without a post-gate, `post` aliases `dyr` and `g` ignores it.
        let with_post = post.is_some();
        let post = post.unwrap_or(dyr);
        let g = |d: f32, q: f32| if with_post { d * q } else { d };
        match (pre, dpre) {
            (Some(p), Some(dpre)) => {
                *part = lanes8_4(dyr, post, p, ur, |d, q, pp, u| g(d, q) * pp * u);
                for (((((dut, dpt), &c), &d), &q), (&pp, &u)) in du
                    .iter_mut()
                    .zip(dpre.iter_mut())
                    .zip(corr)
                    .zip(dyr)
                    .zip(post)
                    .zip(p.iter().zip(ur))
                {
                    let dw = c + dc * g(d, q);
                    *dut = dw * pp;
                    *dpt = dw * u;
                }
            }
            _ => {
                *part = lanes8(dyr, post, ur, |d, q, u| g(d, q) * u);
                for (((dut, &c), &d), &q) in du.iter_mut().zip(corr).zip(dyr).zip(post) {
                    *dut = c + dc * g(d, q);
                }
            }
        }
    }
}

simd_fn! {
    /// `z = a ⊙ ga + i·(b ⊙ gb)` (absent gates: 1; absent `b`: zero).
    fn pack_rows(
        z: &mut [Complex<f32>],
        a: &[f32],
        ga: Option<&[f32]>,
        b: Option<(&[f32], Option<&[f32]>)>,
    ) {
        match (ga, b) {
            (None, None) => z
                .iter_mut()
                .zip(a)
                .for_each(|(z, &x)| *z = Complex::new(x, 0.0)),
            (Some(ga), None) => {
                for ((z, &x), &g) in z.iter_mut().zip(a).zip(ga) {
                    *z = Complex::new(x * g, 0.0);
                }
            }
            (None, Some((b, None))) => {
                for ((z, &x), &y) in z.iter_mut().zip(a).zip(b) {
                    *z = Complex::new(x, y);
                }
            }
            (Some(ga), Some((b, Some(gb)))) => {
                for (((z, &x), &y), (&g, &h)) in z.iter_mut().zip(a).zip(b).zip(ga.iter().zip(gb)) {
                    *z = Complex::new(x * g, y * h);
                }
            }
            (ga, Some((b, gb))) => {
                for (t, z) in z.iter_mut().enumerate() {
                    let x = ga.map_or(a[t], |g| a[t] * g[t]);
                    let y = gb.map_or(b[t], |g| b[t] * g[t]);
                    *z = Complex::new(x, y);
                }
            }
        }
    }
}

simd_fn! {
    /// `a = Re z`, `b = Im z` over the common length.
    fn unpack_rows(z: &[Complex<f32>], a: &mut [f32], b: &mut [f32]) {
        for ((zt, x), y) in z.iter().zip(a.iter_mut()).zip(b.iter_mut()) {
            *x = zt.re;
            *y = zt.im;
        }
    }
}

simd_fn! {
    /// `z = w ⊙ k` (complex).
    fn cmul_into(z: &mut [Complex<f32>], w: &[Complex<f32>], k: &[Complex<f32>]) {
        for ((v, w), kz) in z.iter_mut().zip(w).zip(k) {
            *v = *w * *kz;
        }
    }
}

simd_fn! {
    /// `acc += z ⊙ conj(w)`, then `z ⊙= conj(k)` (the two backward spectra of a row pair).
    fn corr_spectra(
        acc: &mut [Complex<f32>],
        z: &mut [Complex<f32>],
        w: &[Complex<f32>],
        k: &[Complex<f32>],
    ) {
        for (((ac, gz), wz), kz) in acc.iter_mut().zip(z.iter_mut()).zip(w).zip(k) {
            *ac += *gz * wz.conj();
            *gz *= kz.conj();
        }
    }
}

/// Causal long convolution of one row at a time with the least working memory: the inference
/// path at very long L (a 1M-base HyenaDNA forward), where [`FftConv`]'s per-task scratch (ten
/// `2L`-point buffers, sized for batched training) would not fit beside the activations.
///
/// `w ← (k * w)[..L] + d·w`. Zero padding to `2L` points, as [`FftConv`] does, would need `6L`
/// floats of buffers per task and two `2L`-point plans (about 70 MiB at L = 1M with two
/// threads). Instead, with `M >= L` even (`N = M/2` with small prime factors only: L itself
/// when it allows) and both rows zero-padded to `M`:
///
/// - the linear convolution truncated to `M` is the mean of the cyclic and the negacyclic
///   convolutions of length `M` (the wrapped-around terms enter them with opposite signs);
/// - the cyclic one is a real FFT of `M` points: a complex FFT of `N` points (even and odd
///   samples as real and imaginary parts) and a split step;
/// - the negacyclic one is a cyclic convolution of `N` complex points: `ℝ[x]/(x^M + 1) ≅
///   ℂ[x]/(x^N − i)` pairs samples `n` and `n + N` into one complex number, and the twist
///   `x = θu`, `θ = e^{iπ/M}`, turns `x^N − i` into `u^N − 1`.
///
/// So a task needs three `N`-point complex buffers (`3M` floats; a fourth when `M > L`, where
/// the row itself cannot hold a spectrum), and all transforms share one forward plan of `N`
/// points (an inverse is the forward transform of the conjugate). The skip term `d·w` enters as
/// `d` added to `k[0]`, which adds `d·w` to both convolutions. Results equal the zero-padded
/// transform's up to float rounding (tested against the direct sum).
pub struct RowConv {
    l: usize,
    /// `N`: complex points per transform.
    n: usize,
    fft: Arc<dyn Fft<f32>>,
    /// `θ^j = e^{iπj/M}` for `j < N`; its even entries are also the real FFT's split twiddles
    /// (`e^{−2πik/M} = conj(θ^{2k})`).
    twist: Vec<Complex<f32>>,
}

/// Working memory of one [`RowConv`] task (reuse it across rows): three `N`-point buffers, a
/// fourth when the transform is longer than the row, and the plan's own scratch (none for
/// lengths with small prime factors, which [`RowConv::new`] picks).
pub struct RowConvScratch {
    a: Vec<Complex<f32>>,
    b: Vec<Complex<f32>>,
    c: Vec<Complex<f32>>,
    d: Vec<Complex<f32>>,
    fft: Vec<Complex<f32>>,
}

impl std::fmt::Debug for RowConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowConv")
            .field("len", &self.l)
            .field("points", &(2 * self.n))
            .finish()
    }
}

/// FFT size of a causal convolution over `l` steps: `2L` as the reference pads (so the numerics
/// match it), unless `2L` has a prime factor above 7; then the least even 7-smooth size above
/// it. Any `n >= 2L - 1` gives the linear convolution exactly, and a size such as 254 = 2·127
/// runs Rader's algorithm (several times slower than 256: MAD's recall tasks have L = 127).
pub fn fft_size(l: usize) -> usize {
    let mut n = 2 * l;
    while !is_7_smooth(n) {
        n += 2;
    }
    n
}

/// Whether `n` has no prime factor above 7 (the radices `rustfft` has fast butterflies for).
fn is_7_smooth(mut n: usize) -> bool {
    for p in [2, 3, 5, 7] {
        while n.is_multiple_of(p) {
            n /= p;
        }
    }
    n == 1
}

impl RowConv {
    /// Plans for rows of length `l >= 1`.
    pub fn new(l: usize) -> Result<Self> {
        if l == 0 {
            return Err(Error::shape("row conv", "sequence length", "L >= 1", 0));
        }
        // The least N >= L/2 without large prime factors: a prime N would run Bluestein's
        // algorithm, several times slower and with scratch of its own.
        let mut n = l.div_ceil(2);
        while !is_7_smooth(n) {
            n += 1;
        }
        let m = (2 * n) as f64;
        let fft = FftPlanner::<f32>::new().plan_fft_forward(n);
        let twist = (0..n)
            .map(|j| {
                let a = std::f64::consts::PI * j as f64 / m;
                Complex::new(a.cos() as f32, a.sin() as f32)
            })
            .collect();
        Ok(RowConv { l, n, fft, twist })
    }

    /// Row length L.
    pub fn len(&self) -> usize {
        self.l
    }

    /// Always false (L >= 1).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the row itself can hold a spectrum (`M = L`), sparing the fourth buffer.
    fn in_row(&self) -> bool {
        2 * self.n == self.l
    }

    /// Fresh working memory for one task.
    pub fn scratch(&self) -> RowConvScratch {
        let z = |n| vec![Complex::default(); n];
        RowConvScratch {
            a: z(self.n),
            b: z(self.n),
            c: z(self.n),
            d: z(if self.in_row() { 0 } else { self.n }),
            fft: z(self.fft.get_outofplace_scratch_len()),
        }
    }

    fn check(&self, w: usize, k: usize, s: &RowConvScratch) -> Result<()> {
        const OP: &str = "row conv";
        check_len(OP, "row w [L]", w, self.l)?;
        check_len(OP, "filter k [L]", k, self.l)?;
        let d = if self.in_row() { 0 } else { self.n };
        for (len, want) in [
            (s.a.len(), self.n),
            (s.b.len(), self.n),
            (s.c.len(), self.n),
            (s.d.len(), d),
            (s.fft.len(), self.fft.get_outofplace_scratch_len()),
        ] {
            check_len(OP, "scratch (RowConv::scratch of this length)", len, want)?;
        }
        Ok(())
    }

    /// `w ← (k * w)[..L] + d·w` for one row `w [L]` with filter `k [L]`.
    pub fn conv_inplace(
        &self,
        w: &mut [f32],
        k: &[f32],
        d: f32,
        s: &mut RowConvScratch,
    ) -> Result<()> {
        self.check(w.len(), k.len(), s)?;
        self.run(w, k, true, d, s);
        Ok(())
    }

    /// `k ← (k * w)[..L] + d·w`: the same convolution written over the filter row (whose values
    /// are no longer needed), `w [L]` read only.
    pub fn conv_into_filter(
        &self,
        k: &mut [f32],
        w: &[f32],
        d: f32,
        s: &mut RowConvScratch,
    ) -> Result<()> {
        self.check(w.len(), k.len(), s)?;
        self.run(k, w, false, d, s);
        Ok(())
    }

    /// The convolution of `w` and `k`, where `out` holds `w` (`out_is_w`) or `k` on entry and
    /// the result on return, and `other` holds the other row. Both rows are read in full before
    /// `out` is first written (with `M = L` it then holds the input's cyclic spectrum).
    fn run(&self, out: &mut [f32], other: &[f32], out_is_w: bool, d: f32, s: &mut RowConvScratch) {
        let (l, n) = (self.l, self.n);
        let m = 2 * n;
        let tw = &self.twist[..];
        let in_row = self.in_row();
        let RowConvScratch {
            a,
            b,
            c,
            d: spare,
            fft: fs,
        } = s;
        let mut go = |i: &mut [Complex<f32>], o: &mut [Complex<f32>]| {
            self.fft.process_outofplace_with_scratch(i, o, fs)
        };
        {
            let (w, k) = if out_is_w {
                (&*out, other)
            } else {
                (other, &*out)
            };
            // 1. Negacyclic filter spectrum: c = FFT(twist(k + d·δ)).
            fold_twist(b, k, tw);
            b[0].re += d;
            go(b, c);
            // 2. The negacyclic half of the result, in natural order into a (as M floats):
            // a = FFT(twist(w)); b = FFT(conj(a·c)/M), the conjugate of the unscaled inverse.
            fold_twist(b, w, tw);
            go(b, a);
            mul_conj_scaled(a, c, 1.0 / m as f32);
            go(a, b);
            untwist_neg(as_floats_mut(a), b, tw);
            // 3. The cyclic filter spectrum (packed real FFT of M points) into c.
            load_pairs(b, k);
            b[0].re += d;
            go(b, c);
            split_forward(c, tw);
            // 4. The input's pairs into b: the last read of both rows.
            load_pairs(b, w);
        }
        // The cyclic half: the input's spectrum in the row itself when it fits (M = L), its
        // inverse in b, then the two halves summed into the row.
        let o: &mut [Complex<f32>] = if in_row {
            as_complex(&mut out[..m])
        } else {
            &mut spare[..]
        };
        go(b, o);
        split_forward(o, tw);
        mul_packed(o, c, 0.5 / m as f32);
        split_inverse_conj(o, tw);
        go(o, b);
        add_halves(out, &as_floats(a)[..l], b);
    }
}

/// `dst[j] = (x[2j] + i·x[2j+1])` for `x` = `src` zero-padded to `2·dst.len()` points.
fn load_pairs(dst: &mut [Complex<f32>], src: &[f32]) {
    let p = src.len() / 2;
    dst[..p].copy_from_slice(as_complex_ref(&src[..2 * p]));
    let rest = &mut dst[p..];
    if let Some(first) = rest.first_mut() {
        *first = Complex::new(src.get(2 * p).copied().unwrap_or(0.0), 0.0);
        rest[1..].fill(Complex::default());
    }
}

/// `dst[j] = (x[j] + i·x[j + N]) · θ^j`, `N = dst.len()`: the negacyclic fold and twist of `x` =
/// `src` zero-padded to `2N` points.
fn fold_twist(dst: &mut [Complex<f32>], src: &[f32], tw: &[Complex<f32>]) {
    let n = dst.len();
    let lo = &src[..src.len().min(n)];
    let hi = &src[lo.len()..];
    let h = hi.len();
    fold_twist_full(&mut dst[..h], &lo[..h], hi, &tw[..h]);
    for ((o, &r), &t) in dst[h..].iter_mut().zip(&lo[h..]).zip(&tw[h..]) {
        *o = t * r;
    }
    dst[lo.len()..].fill(Complex::default());
}

simd_fn! {
    /// `dst[j] = (lo[j] + i·hi[j]) · tw[j]`.
    fn fold_twist_full(dst: &mut [Complex<f32>], lo: &[f32], hi: &[f32], tw: &[Complex<f32>]) {
        for (((o, &r), &i), &t) in dst.iter_mut().zip(lo).zip(hi).zip(tw) {
            *o = Complex::new(r * t.re - i * t.im, r * t.im + i * t.re);
        }
    }
}

simd_fn! {
    /// `a[j] = conj(a[j] · c[j]) · s`.
    fn mul_conj_scaled(a: &mut [Complex<f32>], c: &[Complex<f32>], s: f32) {
        for (x, &y) in a.iter_mut().zip(c) {
            let p = *x * y;
            *x = Complex::new(p.re * s, -p.im * s);
        }
    }
}

simd_fn! {
    /// Undo the twist and fold of the negacyclic result: `z = b[j]·θ^j` is the conjugate of
    /// output pair `j` (the inverse ran as a forward transform), so `dst[j] = Re z` and
    /// `dst[j + N] = −Im z`.
    fn untwist_neg(dst: &mut [f32], b: &[Complex<f32>], tw: &[Complex<f32>]) {
        let n = b.len();
        let (lo, hi) = dst[..2 * n].split_at_mut(n);
        for (((x, y), &z), &t) in lo.iter_mut().zip(hi.iter_mut()).zip(b).zip(&tw[..n]) {
            *x = z.re * t.re - z.im * t.im;
            *y = -(z.re * t.im + z.im * t.re);
        }
    }
}

simd_fn! {
    /// `row[2j] = a[2j] + Re b[j]`, `row[2j + 1] = a[2j + 1] − Im b[j]` for the row's length:
    /// the negacyclic half plus the cyclic half (whose inverse ran as a forward transform, so
    /// its pairs are conjugated).
    fn add_halves(row: &mut [f32], a: &[f32], b: &[Complex<f32>]) {
        let half = row.len() / 2;
        let mut rc = row.chunks_exact_mut(2);
        let mut ac = a.chunks_exact(2);
        for ((o, x), &z) in (&mut rc).zip(&mut ac).zip(b) {
            o[0] = x[0] + z.re;
            o[1] = x[1] - z.im;
        }
        // An odd length's last value: the real part of the next pair.
        if let (Some(o), Some(x)) = (rc.into_remainder().first_mut(), ac.remainder().first()) {
            *o = x + b[half].re;
        }
    }
}

/// Split step of a real FFT of `M = 2N` points, in place: `z = FFT_N(pairs of x)` becomes `X[k]`
/// for `k < N`, with `X[0]` and `X[N]` (both real) packed as the real and imaginary parts of
/// slot 0.
fn split_forward(z: &mut [Complex<f32>], tw: &[Complex<f32>]) {
    let n = z.len();
    let z0 = z[0];
    z[0] = Complex::new(z0.re + z0.im, z0.re - z0.im);
    for k in 1..=n / 2 {
        let j = n - k;
        if k == j {
            z[k] = z[k].conj();
            continue;
        }
        let (zk, zj) = (z[k], z[j].conj());
        let e = (zk + zj) * 0.5;
        // O = (zk − conj zj) / 2i; the twiddle e^{−2πik/M} = conj(θ^{2k}).
        let dlt = (zk - zj) * 0.5;
        let o = Complex::new(dlt.im, -dlt.re);
        let to = tw[2 * k].conj() * o;
        z[k] = e + to;
        z[j] = (e - to).conj();
    }
}

/// The inverse of [`split_forward`], conjugated: turns a packed half spectrum `Y` into
/// `conj(Z)` such that the forward FFT of it, conjugated, interleaves the real signal
/// (`y[2n] + i·y[2n+1]`), unscaled.
fn split_inverse_conj(y: &mut [Complex<f32>], tw: &[Complex<f32>]) {
    let n = y.len();
    let (y0, yn) = (y[0].re, y[0].im);
    y[0] = Complex::new(y0 + yn, -(y0 - yn));
    for k in 1..=n / 2 {
        let j = n - k;
        if k == j {
            y[k] *= 2.0;
            continue;
        }
        let (yk, yj) = (y[k], y[j].conj());
        let ev = yk + yj;
        let od = (yk - yj) * tw[2 * k];
        let iod = Complex::new(-od.im, od.re);
        y[k] = (ev + iod).conj();
        y[j] = ev - iod;
    }
}

simd_fn! {
    /// `x ← x · k · s` on packed half spectra (slot 0: two real products).
    fn mul_packed(x: &mut [Complex<f32>], k: &[Complex<f32>], s: f32) {
        let (x0, k0) = (x[0], k[0]);
        for (a, &b) in x.iter_mut().zip(k).skip(1) {
            *a = *a * b * s;
        }
        x[0] = Complex::new(x0.re * k0.re * s, x0.im * k0.im * s);
    }
}

/// View interleaved `[re, im, re, im, …]` floats as complex numbers.
fn as_complex(s: &mut [f32]) -> &mut [Complex<f32>] {
    debug_assert!(s.len().is_multiple_of(2));
    // SAFETY: `Complex<f32>` is `#[repr(C)]` { re, im } with the alignment of f32.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut Complex<f32>, s.len() / 2) }
}

fn as_complex_ref(s: &[f32]) -> &[Complex<f32>] {
    debug_assert!(s.len().is_multiple_of(2));
    // SAFETY: as in `as_complex`.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const Complex<f32>, s.len() / 2) }
}

/// View complex numbers as their interleaved `[re, im, …]` floats.
fn as_floats(s: &[Complex<f32>]) -> &[f32] {
    // SAFETY: as in `as_complex` (the same layout, read the other way).
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const f32, 2 * s.len()) }
}

fn as_floats_mut(s: &mut [Complex<f32>]) -> &mut [f32] {
    // SAFETY: as in `as_floats`.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut f32, 2 * s.len()) }
}

/// Spectra kept by a training forward for its backward: the input spectra (per channel, the
/// packed complex spectrum of each pair of batch rows and the half spectrum of an odd last
/// row: `2(n/2+1)` floats per row, n = [`fft_size`]) and the half spectrum of the scaled filter `K/n` (`2(n/2+1)`
/// floats per channel).
/// About twice the input's memory; saves two of the backward's five transforms per row pair.
#[derive(Clone, Debug, Default)]
pub struct Spectra {
    layout: Option<RowLayout>,
    w: Vec<f32>,
    k: Vec<f32>,
}

impl Spectra {
    /// Floats per channel of the input spectra.
    fn row_floats(lay: RowLayout) -> usize {
        lay.batch * 2 * (fft_size(lay.len) / 2 + 1)
    }
    fn resize(&mut self, lay: RowLayout) {
        self.w.resize(lay.chans * Self::row_floats(lay), 0.0);
        self.k
            .resize(lay.chans * 2 * (fft_size(lay.len) / 2 + 1), 0.0);
        self.layout = Some(lay);
    }
}

/// Slow, obviously correct references: direct O(L²) sums, straight from the definitions.
pub mod reference {
    use super::{GatedConv, RowLayout};

    /// `y[t] = post[t] * (sum_{j<=t} k[t-j] w[j] + D w[t])`, `w = pre ⊙ u`. Returns `(y, conv_out)`.
    pub fn gated_forward(a: &GatedConv<'_>) -> (Vec<f32>, Vec<f32>) {
        let lay = a.layout;
        let l = lay.len;
        let mut y = vec![0.0f32; lay.numel()];
        let mut co = vec![0.0f32; lay.numel()];
        for b in 0..lay.batch {
            for c in 0..lay.chans {
                let off = b * lay.batch_stride + c * lay.chan_stride;
                let w: Vec<f64> = (0..l)
                    .map(|t| a.u[off + t] as f64 * a.pre.map_or(1.0, |p| p[off + t] as f64))
                    .collect();
                for t in 0..l {
                    let mut acc = a.d[c] as f64 * w[t];
                    for j in 0..=t {
                        acc += a.k[c * l + t - j] as f64 * w[j];
                    }
                    co[off + t] = acc as f32;
                    y[off + t] = (acc * a.post.map_or(1.0, |p| p[off + t] as f64)) as f32;
                }
            }
        }
        (y, co)
    }

    /// Gradients of `sum(dy ⊙ y)` by the direct formulas:
    /// `dw[j] = sum_{t>=j} g[t] k[t-j] + D g[j]`, `dk[s] = sum_b sum_t g[t] w[t-s]`, `dD = sum g w`,
    /// with `g = dy ⊙ post`. Returns `(du, dpre, dpost, dk, dd)`.
    #[allow(clippy::type_complexity)]
    pub fn gated_backward(
        a: &GatedConv<'_>,
        dy: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let lay: RowLayout = a.layout;
        let l = lay.len;
        let (_, co) = gated_forward(a);
        let mut du = vec![0.0f32; lay.numel()];
        let mut dpre = vec![0.0f32; lay.numel()];
        let mut dpost = vec![0.0f32; lay.numel()];
        let mut dk = vec![0.0f64; lay.chans * l];
        let mut dd = vec![0.0f64; lay.chans];
        for b in 0..lay.batch {
            for c in 0..lay.chans {
                let off = b * lay.batch_stride + c * lay.chan_stride;
                let pre = |t: usize| a.pre.map_or(1.0, |p| p[off + t] as f64);
                let w: Vec<f64> = (0..l).map(|t| a.u[off + t] as f64 * pre(t)).collect();
                let g: Vec<f64> = (0..l)
                    .map(|t| dy[off + t] as f64 * a.post.map_or(1.0, |p| p[off + t] as f64))
                    .collect();
                for j in 0..l {
                    let mut dw = a.d[c] as f64 * g[j];
                    for t in j..l {
                        dw += g[t] * a.k[c * l + t - j] as f64;
                    }
                    du[off + j] = (dw * pre(j)) as f32;
                    dpre[off + j] = (dw * a.u[off + j] as f64) as f32;
                    dpost[off + j] = dy[off + j] * co[off + j];
                }
                for s in 0..l {
                    for t in s..l {
                        dk[c * l + s] += g[t] * w[t - s];
                    }
                }
                dd[c] += (0..l).map(|t| g[t] * w[t]).sum::<f64>();
            }
        }
        let dk = dk.into_iter().map(|v| v as f32).collect();
        let dd = dd.into_iter().map(|v| v as f32).collect();
        (du, dpre, dpost, dk, dd)
    }
}

#[cfg(test)]
mod tests {
    use super::{reference, GatedConv, RowConv, RowLayout};
    use crate::testing::rand_vec;

    /// [`RowConv`] against the direct sum, at lengths that take each path: even and odd, `M = L`
    /// (the row holds a spectrum) and `M > L` (padded: odd lengths, and `L/2` with a prime
    /// factor above 7), tiny rows, and the written-over-the-filter variant.
    #[test]
    fn row_conv_matches_direct_sum_at_many_lengths() {
        for l in [
            1usize, 2, 3, 4, 5, 6, 8, 9, 15, 16, 22, 31, 64, 127, 128, 250, 255, 257, 262, 1000,
            1001, 2048, 4097, 5000,
        ] {
            let conv = RowConv::new(l).unwrap();
            let mut s = conv.scratch();
            let w = rand_vec(l, 3 * l as u64 + 1, 1.0);
            // A decaying filter, as the Hyena windows make them, plus noise.
            let k: Vec<f32> = rand_vec(l, 5 * l as u64 + 2, 0.5)
                .iter()
                .enumerate()
                .map(|(t, v)| v * (-(t as f32) / (0.3 * l as f32 + 1.0)).exp())
                .collect();
            let d = [-0.61f32];
            let (want, _) = reference::gated_forward(&GatedConv {
                layout: RowLayout::bcl(1, 1, l),
                u: &w,
                pre: None,
                post: None,
                k: &k,
                d: &d,
            });
            let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let err = |got: &[f32]| {
                got.iter()
                    .zip(&want)
                    .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
            };
            let mut got = w.clone();
            conv.conv_inplace(&mut got, &k, d[0], &mut s).unwrap();
            assert!(err(&got) <= 2e-6 * scale, "L={l}: {} ({scale})", err(&got));
            // Into the filter row: the same numbers (the same operations on the same values).
            let mut into_k = k.clone();
            conv.conv_into_filter(&mut into_k, &w, d[0], &mut s)
                .unwrap();
            assert_eq!(into_k, got, "L={l}");
            // The reused scratch gives the same result.
            let mut again = w.clone();
            conv.conv_inplace(&mut again, &k, d[0], &mut s).unwrap();
            assert_eq!(again, got, "L={l}");
        }
    }

    #[test]
    fn row_conv_rejects_other_lengths() {
        let conv = RowConv::new(10).unwrap();
        let mut s = conv.scratch();
        assert!(conv
            .conv_inplace(&mut [0.0; 9], &[0.0; 10], 0.0, &mut s)
            .is_err());
        assert!(conv
            .conv_into_filter(&mut [0.0; 10], &[0.0; 11], 0.0, &mut s)
            .is_err());
        let other = RowConv::new(7).unwrap();
        let mut s7 = other.scratch();
        assert!(conv
            .conv_inplace(&mut [0.0; 10], &[0.0; 10], 0.0, &mut s7)
            .is_err());
        assert!(RowConv::new(0).is_err());
    }
}

#[cfg(test)]
mod fft_size_tests {
    use super::{fft_size, is_7_smooth};

    #[test]
    fn fft_size_is_2l_when_smooth_else_the_next_even_smooth_size() {
        assert_eq!(fft_size(64), 128);
        assert_eq!(fft_size(1000), 2000);
        assert_eq!(fft_size(1), 2);
        assert_eq!(fft_size(127), 256); // 254 = 2·127
        assert_eq!(fft_size(4097), 8232); // 8194 = 2·17·241; 8232 = 2³·3·7³
        for l in 1..600 {
            let n = fft_size(l);
            assert!(
                n >= 2 * l && n.is_multiple_of(2) && is_7_smooth(n),
                "L = {l}: n = {n}"
            );
            assert!(
                (2 * l..n).step_by(2).all(|m| !is_7_smooth(m)),
                "L = {l}: n = {n} not least"
            );
        }
    }
}
