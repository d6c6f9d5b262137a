//! The trainable RTF mixer of the operator zoo (kind `"rtf"`): rational transfer function SSM,
//! Parnichkun et al., "State-Free Inference of State-Space Models: The Transfer Function
//! Approach", arXiv 2405.06147; reference code `ruke1ire/RTF` `rtf.py`).
//!
//! Structure: the plain ungated mixer of [`crate::layers::ssm`] ([`RtfLayer`] is a
//! [`crate::layers::ssm::ConvMixer`] with this kernel),
//! `y = out_proj(k * in_proj(x))`, with per channel `d` the transfer function
//! `H_d(z) = h0_d + (b_1 z⁻¹ + … + b_N z⁻ᴺ) / (1 + a_1 z⁻¹ + … + a_N z⁻ᴺ)`. The direct term `h0`
//! sits inside `k[0]` and *is* the skip, so there is no separate `D` (unlike mad-lab's
//! `HyenaConv` with the RTF filter, which adds a bias of its own, and unlike RTF's safari
//! wrapper `experiments/safari/src/models/sequence/ssm/rtf_wrapper.py`, whose `h_0` is both in
//! the kernel and passed as the Hyena operator's bias, so it counts twice).
//!
//! Kernel (`rtf.py`, `get_k`), per channel in f64, with the even FFT length `M = L + (L mod 2)`:
//!
//! ```text
//! a = a_raw / (Σ|a_raw| + |s| + 1e-6)         (l1_montel: Σ|a| < 1, all poles inside |z| = 1)
//! A = [1, a_1 … a_N, 0 …],  B = [0, b_1 … b_N, 0 …]    (length M)
//! K = rfft(B) / rfft(A) + h0,   k = irfft(K)[:L]
//! ```
//!
//! `k` is the impulse response aliased with period `M`: `k[n] = Σ_m h[n + mM]`. When `N + 1 > M`
//! (short sequences) the coefficients are *folded* modulo `M` (coefficient `i` lands in bin
//! `i mod M`), which evaluates the polynomials exactly at the M-th roots of unity, so the
//! identity above holds for every `N` and `L` (PyTorch's `rfft(·, n=M)` would truncate them
//! instead). The constraint is always on: without it `rfft(A)` can vanish.
//!
//! Backward (adjoint of each step): with `X = rfft(dk)` (zero-padded to `M`),
//! `P = X / (M · conj(rfft(A)))`: `dB = irfft_unscaled(P)`, `dA = irfft_unscaled(−P ·
//! conj(rfft(B)/rfft(A)))`, `dh0 = dk[0]`; then through `l1_montel` with
//! `S = Σ|a_raw| + |s| + 1e-6`: `da_raw_i = da_i/S − sgn(a_raw_i)·(da·a_raw)/S²`,
//! `ds = −sgn(s)·(da·a_raw)/S²`, using the subgradient `sgn(0) = 0` of `|·|`.
//!
//! Init (the `init` options of `rtf.py`): `ab` "zeros" (kernel = `h0` delta), "xavier"
//! `U(±1/sqrt(N))` or "montel" `U(±1/N)`; `h0 ~ N(0, 1)`; `s ~ U(0, 1)`. Default **xavier**: it is
//! what the Hyena-RTF WikiText-103 configuration uses
//! (`experiments/safari/configs/model/layer/hyena_rtf.yaml`), and with `l1_montel` on its
//! instability does not arise (the poles stay inside the unit circle); "zeros" starts with `b = 0`,
//! where `a` gets no gradient at all until `b` has moved.

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::Rng;
use rayon::prelude::*;
use realfft::num_complex::Complex64;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use super::{fft_len, Rtf};
use crate::error::{Error, Result};
use crate::layers::init;
use crate::layers::ssm::{ConvMixer, KernelGen};
use crate::params::{check_params, many_mut, Vb, P};

/// Initialisation of the `ab` coefficients (the `init` option of `rtf.py`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RtfInit {
    /// All zero: the kernel is a pure `h0` delta.
    Zeros,
    /// `U(±1/sqrt(N))`.
    #[default]
    Xavier,
    /// `U(±1/N)`.
    Montel,
}

impl FromStr for RtfInit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "zeros" => Ok(RtfInit::Zeros),
            "xavier" => Ok(RtfInit::Xavier),
            "montel" => Ok(RtfInit::Montel),
            other => Err(Error::config(
                "rtf init",
                other,
                "expected one of \"zeros\", \"xavier\", \"montel\"",
            )),
        }
    }
}

/// Configuration of an [`RtfLayer`].
#[derive(Clone, Debug, PartialEq)]
pub struct RtfConfig {
    /// Width `D`.
    pub d_model: usize,
    /// State size `N` (numerator and denominator degree).
    pub state_size: usize,
    pub init: RtfInit,
}

impl RtfConfig {
    /// Defaults: `N = 16`, xavier init.
    pub fn new(d_model: usize) -> Self {
        RtfConfig {
            d_model,
            state_size: 16,
            init: RtfInit::default(),
        }
    }
}

/// The RTF mixer (module docs). Tensors, in order: `in_proj.weight [D, D]`, `in_proj.bias [D]`,
/// `ab [2D, N]` (rows `0..D` the raw denominators `a_raw`, rows `D..2D` the numerators `b`;
/// `num_a = D`), `h_0 [D]`, `s [D]` (the l1_montel scalars), `out_proj.weight [D, D]`,
/// `out_proj.bias [D]`.
pub type RtfLayer = ConvMixer<RtfKernel>;

/// The kernel of an [`RtfLayer`]: its transfer-function tensors.
pub struct RtfKernel {
    cfg: RtfConfig,
    ab: P,
    h0: P,
    s: P,
    planner: Mutex<RealFftPlanner<f64>>,
}

impl std::fmt::Debug for RtfKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtfKernel").field("cfg", &self.cfg).finish()
    }
}

type Plans = (Arc<dyn RealToComplex<f64>>, Arc<dyn ComplexToReal<f64>>);

/// `sgn` with the subgradient `sgn(0) = 0`.
fn sgn(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

fn fft_err(e: impl std::fmt::Display) -> Error {
    Error::config("rtf", "FFT", e.to_string())
}

/// One channel's constrained denominator `a [N]` and the normaliser `S`.
fn constrain(a_raw: &[f32], s: f32) -> (Vec<f64>, f64) {
    let den = a_raw.iter().map(|v| (*v as f64).abs()).sum::<f64>() + (s as f64).abs() + 1e-6;
    (a_raw.iter().map(|&v| v as f64 / den).collect(), den)
}

/// Spectra of one channel at FFT length `m`: `(rfft(A), rfft(B)/rfft(A))`, the coefficients
/// folded modulo `m`.
fn spectra(
    plans: &Plans,
    a: &[f64],
    b: &[f32],
    m: usize,
) -> Result<(Vec<Complex64>, Vec<Complex64>)> {
    let (fwd, _) = plans;
    let (mut ta, mut tb) = (vec![0.0f64; m], vec![0.0f64; m]);
    ta[0] = 1.0;
    for (i, (&av, &bv)) in a.iter().zip(b).enumerate() {
        ta[(i + 1) % m] += av;
        tb[(i + 1) % m] += bv as f64;
    }
    let (mut fa, mut fb) = (fwd.make_output_vec(), fwd.make_output_vec());
    fwd.process(&mut ta, &mut fa).map_err(fft_err)?;
    fwd.process(&mut tb, &mut fb).map_err(fft_err)?;
    for (x, y) in fb.iter_mut().zip(&fa) {
        *x /= *y;
    }
    Ok((fa, fb))
}

/// Unscaled inverse of a half spectrum whose DC and Nyquist bins are made real.
fn irfft(plans: &Plans, mut spec: Vec<Complex64>, m: usize) -> Result<Vec<f64>> {
    let (_, inv) = plans;
    spec[0].im = 0.0;
    if let Some(last) = spec.last_mut() {
        last.im = 0.0;
    }
    let mut out = vec![0.0f64; m];
    inv.process(&mut spec, &mut out).map_err(fft_err)?;
    Ok(out)
}

impl RtfLayer {
    /// An RTF layer, its tensors registered under `vb`; errors (no panic) on `d_model = 0` or
    /// `state_size = 0`.
    pub fn new(cfg: RtfConfig, vb: &Vb<'_, '_>) -> Result<Self> {
        if cfg.d_model == 0 {
            return Err(Error::config("rtf d_model", 0, "must be at least 1"));
        }
        if cfg.state_size == 0 {
            return Err(Error::config(
                "rtf state_size",
                0,
                "must be at least 1 (the degree of the transfer function)",
            ));
        }
        let (d, n) = (cfg.d_model, cfg.state_size);
        ConvMixer::build(d, vb, |vb| {
            Ok(RtfKernel {
                ab: vb.get(&[2 * d, n], "ab")?,
                h0: vb.get(&[d], "h_0")?,
                s: vb.get(&[d], "s")?,
                cfg,
                planner: Mutex::new(RealFftPlanner::new()),
            })
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RtfConfig {
        &self.kern.cfg
    }

    /// The constrained transfer functions as an inference [`Rtf`] (`a` after l1_montel), e.g.
    /// for its companion recurrence.
    pub fn to_rtf(&self, p: &[f32]) -> Result<Rtf> {
        check_params("rtf", p, self.out_b)?;
        let k = &self.kern;
        let (d, n) = (k.cfg.d_model, k.cfg.state_size);
        let (ab, s) = (k.ab.of(p), k.s.of(p));
        let mut a = Vec::with_capacity(d * n);
        for ch in 0..d {
            a.extend(constrain(&ab[ch * n..(ch + 1) * n], s[ch]).0);
        }
        Ok(Rtf {
            d,
            n,
            a,
            b: ab[d * n..].iter().map(|&v| v as f64).collect(),
            h0: k.h0.of(p).iter().map(|&v| v as f64).collect(),
        })
    }
}

impl RtfKernel {
    fn plans(&self, m: usize) -> Plans {
        let mut pl = self.planner.lock().unwrap_or_else(|e| e.into_inner());
        (pl.plan_fft_forward(m), pl.plan_fft_inverse(m))
    }
}

impl KernelGen for RtfKernel {
    const KIND: &'static str = "rtf";

    fn d_model(&self) -> usize {
        self.cfg.d_model
    }

    fn init(&self, p: &mut [f32], rng: &mut StdRng) {
        let (d, n) = (self.cfg.d_model, self.cfg.state_size);
        let ab = self.ab.of_mut(p);
        match self.cfg.init {
            RtfInit::Zeros => ab.fill(0.0),
            RtfInit::Xavier => {
                ab.copy_from_slice(&init::uniform(rng, 2 * d * n, 1.0 / (n as f32).sqrt()))
            }
            RtfInit::Montel => ab.copy_from_slice(&init::uniform(rng, 2 * d * n, 1.0 / n as f32)),
        }
        self.h0.of_mut(p).copy_from_slice(&init::randn(rng, d, 1.0));
        for v in self.s.of_mut(p).iter_mut() {
            *v = rng.random::<f32>();
        }
    }

    /// The kernels `k [D, L]` (module docs).
    fn kernel(&self, p: &[f32], l: usize) -> Result<Vec<f32>> {
        if l == 0 {
            return Err(Error::shape("rtf kernel", "sequence length", "L >= 1", 0));
        }
        let (ab, h0s, ss) = (self.ab.of(p), self.h0.of(p), self.s.of(p));
        let (d, n) = (self.cfg.d_model, self.cfg.state_size);
        let m = fft_len(l);
        let plans = self.plans(m);
        let mut k = vec![0.0f32; d * l];
        k.par_chunks_mut(l)
            .enumerate()
            .try_for_each(|(ch, kr)| -> Result<()> {
                let (a, _) = constrain(&ab[ch * n..(ch + 1) * n], ss[ch]);
                let (_, mut kb) = spectra(&plans, &a, &ab[(d + ch) * n..(d + ch + 1) * n], m)?;
                let h0 = h0s[ch] as f64;
                for v in kb.iter_mut() {
                    *v += h0;
                }
                let out = irfft(&plans, kb, m)?;
                for (o, v) in kr.iter_mut().zip(&out) {
                    *o = (v / m as f64) as f32;
                }
                Ok(())
            })?;
        Ok(k)
    }

    /// `h0` sits inside `k[0]` and is the skip: no separate one.
    fn skip(&self, _p: &[f32]) -> Vec<f32> {
        vec![0.0; self.cfg.d_model]
    }

    /// Map `dk [D, L]` onto `ab`, `h_0` and `s` (the skip is zero: `dskip` has nowhere to go).
    fn backward(
        &self,
        p: &[f32],
        dk: &[f32],
        _dskip: &[f32],
        l: usize,
        g: &mut [f32],
    ) -> Result<()> {
        let (ab, ss) = (self.ab.of(p), self.s.of(p));
        let (d, n) = (self.cfg.d_model, self.cfg.state_size);
        let m = fft_len(l);
        let plans = self.plans(m);
        // Per channel: (da_raw [N], db [N], dh0, ds).
        type ChanGrad = (Vec<f64>, Vec<f64>, f64, f64);
        let per: Vec<ChanGrad> = (0..d)
            .into_par_iter()
            .map(|ch| -> Result<ChanGrad> {
                let a_raw = &ab[ch * n..(ch + 1) * n];
                let s = ss[ch];
                let (a, den) = constrain(a_raw, s);
                let (fa, kb) = spectra(&plans, &a, &ab[(d + ch) * n..(d + ch + 1) * n], m)?;
                let dkr = &dk[ch * l..(ch + 1) * l];
                let mut t = vec![0.0f64; m];
                for (o, v) in t.iter_mut().zip(dkr) {
                    *o = *v as f64;
                }
                let mut x = plans.0.make_output_vec();
                plans.0.process(&mut t, &mut x).map_err(fft_err)?;
                let pm: Vec<Complex64> = x
                    .iter()
                    .zip(&fa)
                    .map(|(xv, av)| xv / (av.conj() * m as f64))
                    .collect();
                let qm: Vec<Complex64> =
                    pm.iter().zip(&kb).map(|(pv, kv)| -pv * kv.conj()).collect();
                let db_full = irfft(&plans, pm, m)?;
                let da_full = irfft(&plans, qm, m)?;
                let da: Vec<f64> = (0..n).map(|i| da_full[(i + 1) % m]).collect();
                let db: Vec<f64> = (0..n).map(|i| db_full[(i + 1) % m]).collect();
                // l1_montel: a = a_raw / S.
                let dot: f64 = da.iter().zip(a_raw).map(|(g, r)| g * *r as f64).sum();
                let s2 = den * den;
                let da_raw = da
                    .iter()
                    .zip(a_raw)
                    .map(|(g, r)| g / den - sgn(*r as f64) * dot / s2)
                    .collect();
                let ds = -sgn(s as f64) * dot / s2;
                Ok((da_raw, db, dkr[0] as f64, ds))
            })
            .collect::<Result<_>>()?;
        let [g_ab, g_h0, g_s] = many_mut(g, [self.ab, self.h0, self.s]);
        for (ch, (da_raw, db, dh0, ds)) in per.into_iter().enumerate() {
            for (i, (ga, gb)) in da_raw.iter().zip(&db).enumerate() {
                g_ab[ch * n + i] += *ga as f32;
                g_ab[(d + ch) * n + i] += *gb as f32;
            }
            g_h0[ch] += dh0 as f32;
            g_s[ch] += ds as f32;
        }
        Ok(())
    }
}
