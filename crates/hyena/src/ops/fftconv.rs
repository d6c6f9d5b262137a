//! Causal long convolution by real FFT (Hyena paper, Sec. 3.3; reference spec Sec. 1).
//!
//! `y[t] = sum_{j<=t} k[t-j] * w[j] + D * w[t]`, with `w = pre ⊙ u` and the result optionally
//! multiplied by a post-gate: `out = post ⊙ y`. Gating is fused into the gather/scatter of the
//! FFT rows so that the operator never makes a separate pass over memory for it.
//!
//! Numerics follow the reference exactly: both signals are zero-padded to `n = 2L` (any L, no
//! rounding to a power of two; `realfft`/`rustfft` handle mixed radices and primes), the kernel
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
//! live at the bottom of this file ([`reference`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use crate::error::{check_len, Error, Result};
use crate::ops::SyncPtr;

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
struct Plan {
    n: usize,
    fwd: Arc<dyn RealToComplex<f32>>,
    inv: Arc<dyn ComplexToReal<f32>>,
    pool: Mutex<Vec<Scratch>>,
}

/// Per-task working memory for one FFT size.
struct Scratch {
    real: Vec<f32>,           // [n]
    spec: Vec<Complex<f32>>,  // [n/2+1]
    spec2: Vec<Complex<f32>>, // [n/2+1]
    kspec: Vec<Complex<f32>>, // [n/2+1]
    acc: Vec<Complex<f32>>,   // [n/2+1]
    fft: Vec<Complex<f32>>,   // rustfft scratch
}

impl Plan {
    fn new(planner: &mut RealFftPlanner<f32>, n: usize) -> Self {
        let fwd = planner.plan_fft_forward(n);
        let inv = planner.plan_fft_inverse(n);
        Plan {
            n,
            fwd,
            inv,
            pool: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Scratch {
        if let Some(s) = self.pool.lock().map(|mut p| p.pop()).ok().flatten() {
            return s;
        }
        let m = self.n / 2 + 1;
        let fl = self.fwd.get_scratch_len().max(self.inv.get_scratch_len());
        Scratch {
            real: vec![0.0; self.n],
            spec: vec![Complex::default(); m],
            spec2: vec![Complex::default(); m],
            kspec: vec![Complex::default(); m],
            acc: vec![Complex::default(); m],
            fft: vec![Complex::default(); fl],
        }
    }

    fn give(&self, s: Scratch) {
        if let Ok(mut p) = self.pool.lock() {
            p.push(s);
        }
    }

    /// `s.real` (first `len` entries filled by `fill`, rest zero) → `out` spectrum.
    #[inline]
    fn forward_into(&self, real: &mut [f32], out: &mut [Complex<f32>], fft: &mut [Complex<f32>]) {
        // Lengths are fixed by construction; realfft only fails on wrong lengths.
        let r = self.fwd.process_with_scratch(real, out, fft);
        debug_assert!(r.is_ok());
    }

    /// Unscaled inverse: `spec` → `real` (`spec` is destroyed).
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
}

/// FFT long-convolution engine: caches plans per FFT size and reuses scratch buffers.
///
/// Cheap to share (`&FftConv` is `Sync`); create one per process or per model.
pub struct FftConv {
    planner: Mutex<RealFftPlanner<f32>>,
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

impl GatedConv<'_> {
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
    #[inline]
    fn w(&self, i: usize) -> f32 {
        match self.pre {
            Some(p) => p[i] * self.u[i],
            None => self.u[i],
        }
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
            planner: Mutex::new(RealFftPlanner::new()),
            plans: Mutex::new(HashMap::new()),
        }
    }

    /// The cached plan for FFT size `n` (= 2L), created on first use.
    fn plan(&self, n: usize) -> Arc<Plan> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        plans
            .entry(n)
            .or_insert_with(|| {
                let mut planner = self.planner.lock().unwrap_or_else(|e| e.into_inner());
                Arc::new(Plan::new(&mut planner, n))
            })
            .clone()
    }

    /// Plain causal FFT convolution with skip, `[B, C, L]` layout (reference `fftconv_ref`).
    ///
    /// `u: [B, C, L]`, `k: [C, L]`, `d: [C]` → `y: [B, C, L]`.
    pub fn forward(
        &self,
        u: &[f32],
        k: &[f32],
        d: &[f32],
        (b, c, l): (usize, usize, usize),
        y: &mut [f32],
    ) -> Result<()> {
        let args = GatedConv {
            layout: RowLayout::bcl(b, c, l),
            u,
            pre: None,
            post: None,
            k,
            d,
        };
        self.gated_forward(&args, y, None)
    }

    /// Backward of [`FftConv::forward`]: from `dy: [B, C, L]` write `du`, `dk: [C, L]`, `dd: [C]`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        dy: &[f32],
        u: &[f32],
        k: &[f32],
        d: &[f32],
        (b, c, l): (usize, usize, usize),
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
    pub fn gated_forward(
        &self,
        a: &GatedConv<'_>,
        y: &mut [f32],
        conv_out: Option<&mut [f32]>,
    ) -> Result<()> {
        const OP: &str = "fftconv forward";
        a.validate(OP)?;
        a.layout.check(OP, "output y", y.len())?;
        if let Some(co) = conv_out.as_deref() {
            a.layout.check(OP, "conv_out", co.len())?;
        }
        let lay = a.layout;
        let l = lay.len;
        let plan = self.plan(2 * l);
        let scale = 1.0 / plan.n as f32;
        let yp = SyncPtr::new(y);
        let cp = conv_out.map(SyncPtr::new);

        (0..lay.chans).into_par_iter().for_each(|c| {
            let mut s = plan.take();
            let Scratch {
                real,
                spec,
                kspec,
                fft,
                ..
            } = &mut s;
            // Filter spectrum, once per channel, shared by the batch; carries the 1/n.
            real[..l].copy_from_slice(&a.k[c * l..(c + 1) * l]);
            real[l..].fill(0.0);
            plan.forward_into(real, kspec, fft);
            for z in kspec.iter_mut() {
                *z *= scale;
            }
            let dc = a.d[c];
            for b in 0..lay.batch {
                let off = lay.row(b, c);
                for t in 0..l {
                    real[t] = a.w(off + t);
                }
                real[l..].fill(0.0);
                plan.forward_into(real, spec, fft);
                for (z, kz) in spec.iter_mut().zip(kspec.iter()) {
                    *z *= *kz;
                }
                plan.inverse_into(spec, real, fft);
                // SAFETY: row (b, c) is written by this task only; rows of distinct (b, c) are
                // disjoint because the layout strides are at least `len` apart.
                let yr = unsafe { yp.slice(off, l) };
                let cr = cp.as_ref().map(|p| unsafe { p.slice(off, l) });
                match (a.post, cr) {
                    (Some(post), Some(cr)) => {
                        for t in 0..l {
                            let v = real[t] + dc * a.w(off + t);
                            cr[t] = v;
                            yr[t] = post[off + t] * v;
                        }
                    }
                    (Some(post), None) => {
                        for t in 0..l {
                            yr[t] = post[off + t] * (real[t] + dc * a.w(off + t));
                        }
                    }
                    (None, cr) => {
                        for t in 0..l {
                            yr[t] = real[t] + dc * a.w(off + t);
                        }
                        if let Some(cr) = cr {
                            cr.copy_from_slice(yr);
                        }
                    }
                }
            }
            plan.give(s);
        });
        Ok(())
    }

    /// Gated backward. `dy` is the gradient of `y` (layout); `conv_out` is the forward's
    /// un-post-gated output (required iff there is a post-gate).
    pub fn gated_backward(
        &self,
        a: &GatedConv<'_>,
        dy: &[f32],
        conv_out: Option<&[f32]>,
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

        let plan = self.plan(2 * l);
        let scale = 1.0 / plan.n as f32;
        let dup = SyncPtr::new(g.du);
        let dprep = g.dpre.map(SyncPtr::new);
        let dpostp = g.dpost.map(SyncPtr::new);
        let dkp = SyncPtr::new(g.dk);
        let ddp = SyncPtr::new(g.dd);

        (0..lay.chans).into_par_iter().for_each(|c| {
            let mut s = plan.take();
            let Scratch {
                real,
                spec,
                spec2,
                kspec,
                acc,
                fft,
            } = &mut s;
            real[..l].copy_from_slice(&a.k[c * l..(c + 1) * l]);
            real[l..].fill(0.0);
            plan.forward_into(real, kspec, fft);
            for z in kspec.iter_mut() {
                *z *= scale;
            }
            acc.fill(Complex::default());
            let dc = a.d[c];
            let mut dd_acc = 0.0f64;
            for b in 0..lay.batch {
                let off = lay.row(b, c);
                // G = FFT(g), g = dy ⊙ post: the gradient at the convolution output.
                let gv = |t: usize| match a.post {
                    Some(p) => dy[off + t] * p[off + t],
                    None => dy[off + t],
                };
                // W = FFT(w), G = FFT(g); dK += G ⊙ conj(W) (cross-correlation of g with w).
                for t in 0..l {
                    real[t] = a.w(off + t);
                }
                real[l..].fill(0.0);
                plan.forward_into(real, spec, fft);
                for t in 0..l {
                    real[t] = gv(t);
                }
                real[l..].fill(0.0);
                plan.forward_into(real, spec2, fft);
                for ((ac, wz), gz) in acc.iter_mut().zip(spec.iter()).zip(spec2.iter()) {
                    *ac += *gz * wz.conj();
                }
                // dw = corr(g, k) + D g: spectrum G ⊙ conj(K) (K carries the 1/n).
                for (gz, kz) in spec2.iter_mut().zip(kspec.iter()) {
                    *gz *= kz.conj();
                }
                plan.inverse_into(spec2, real, fft);
                // SAFETY: rows (b, c) are disjoint across tasks (see gated_forward).
                let du = unsafe { dup.slice(off, l) };
                let dpre = dprep.as_ref().map(|p| unsafe { p.slice(off, l) });
                let dpost = dpostp.as_ref().map(|p| unsafe { p.slice(off, l) });
                // real[t] now holds corr(g, k)[t]; dw = that + D g; du = dw ⊙ pre; dpre = dw ⊙ u.
                let mut part = 0.0f32;
                match (a.pre, dpre) {
                    (Some(p), Some(dpre)) => {
                        for t in 0..l {
                            let gt = gv(t);
                            let ut = a.u[off + t];
                            let pt = p[off + t];
                            part += gt * pt * ut;
                            let dw = real[t] + dc * gt;
                            du[t] = dw * pt;
                            dpre[t] = dw * ut;
                        }
                    }
                    _ => {
                        for t in 0..l {
                            let gt = gv(t);
                            part += gt * a.u[off + t];
                            du[t] = real[t] + dc * gt;
                        }
                    }
                }
                dd_acc += part as f64;
                if let (Some(dpost), Some(co)) = (dpost, conv_out) {
                    for t in 0..l {
                        dpost[t] = dy[off + t] * co[off + t];
                    }
                }
            }
            // dk = IFFT(Σ_b G ⊙ conj(W))[:L] / n.
            plan.inverse_into(acc, real, fft);
            let dk = unsafe { dkp.slice(c * l, l) };
            for t in 0..l {
                dk[t] = real[t] * scale;
            }
            unsafe { ddp.slice(c, 1)[0] = dd_acc as f32 };
            plan.give(s);
        });
        Ok(())
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
