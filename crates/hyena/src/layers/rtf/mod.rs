//! RTF: the rational transfer function SSM (Parnichkun et al., arXiv 2405.06147; reference code
//! `ruke1ire/RTF` `rtf.py`), per channel
//! `H(z) = h_0 + (b_1 z⁻¹ + … + b_N z⁻ᴺ) / (1 + a_1 z⁻¹ + … + a_N z⁻ᴺ)`.
//!
//! Parallel mode (`rtf.py`: `get_k`, then the convolution of `forward`): the state-free kernel
//! `k = irfft(rfft(B)/rfft(A) + h_0)[:L]` with one FFT of length `M = L + (L mod 2)` of the
//! coefficients, then a causal convolution. That kernel is the impulse response *aliased* with
//! period M: `k[n] = Σ_{m≥0} h[n + mM]`.
//!
//! Recurrent mode (`rtf.py`, `step`), companion form: state `x [N]`,
//! `y_t = c·x_t + d·u_t`, `x_{t+1}[0] = −Σ_n a_n x_t[n] + u_t`, `x_{t+1}[n] = x_t[n−1]`. With
//! `c = b` and `d = h_0` it runs the true impulse response `h`; to reproduce the aliased
//! kernel exactly (so that stepping equals the parallel forward) we use
//! `cᵀ = (I − A^M)^{−T} b` and `d = k[0] = h_0 + c·A^{M−1} e_1`, a transposed solve (the
//! repository's `get_C` solves the non-transposed system, which leaves an error of order
//! ‖A^M‖).
//!
//! [`Rtf`] holds the constrained coefficients (`a` after `l1_montel`) in f64; the trainable
//! zoo layer, its parameters and initialisation are in [`layer`]. The zoo layer has no
//! token-by-token form; [`RtfRecurrence`] is used by the tests.

pub mod layer;

pub use layer::{RtfConfig, RtfInit, RtfKernel, RtfLayer};

use faer::linalg::solvers::Solve;
use faer::Mat;
use realfft::RealFftPlanner;

use crate::error::{check_len, Error, Result};

/// One RTF layer's coefficients: `D` SISO channels of state size `N`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rtf {
    pub d: usize,
    pub n: usize,
    /// Denominators `[D, N]` (`a_1 … a_N`).
    pub a: Vec<f64>,
    /// Numerators `[D, N]` (`b_1 … b_N`).
    pub b: Vec<f64>,
    /// Direct terms `[D]`.
    pub h0: Vec<f64>,
}

/// The companion-form recurrence of an [`Rtf`] for one FFT length `M`.
#[derive(Clone, Debug, PartialEq)]
pub struct RtfRecurrence {
    pub d: usize,
    pub n: usize,
    /// `[D, N]`.
    pub a: Vec<f64>,
    /// Corrected readout `[D, N]`.
    pub c: Vec<f64>,
    /// Corrected direct term `[D]` (`k[0]`).
    pub dd: Vec<f64>,
}

/// FFT length used for sequences of length `l`: the even `l + (l mod 2)`.
pub fn fft_len(l: usize) -> usize {
    l + l % 2
}

impl Rtf {
    fn check(&self) -> Result<()> {
        check_len("Rtf", "a [D, N]", self.a.len(), self.d * self.n)?;
        check_len("Rtf", "b [D, N]", self.b.len(), self.d * self.n)?;
        check_len("Rtf", "h0 [D]", self.h0.len(), self.d)
    }

    /// The state-free kernel `k [D, L]` (`rtf.py`, `get_k`).
    pub fn kernel(&self, l: usize) -> Result<Vec<f64>> {
        self.check()?;
        let m = fft_len(l);
        if self.n + 1 > m {
            return Err(Error::config(
                "RTF state size",
                self.n,
                format!("needs an FFT of at least N+1 points; L = {l} is too short"),
            ));
        }
        let mut planner = RealFftPlanner::<f64>::new();
        let (fwd, inv) = (planner.plan_fft_forward(m), planner.plan_fft_inverse(m));
        let mut out = vec![0.0; self.d * l];
        let (mut ta, mut tb) = (vec![0.0; m], vec![0.0; m]);
        let (mut sa, mut sb) = (fwd.make_output_vec(), fwd.make_output_vec());
        for ch in 0..self.d {
            ta.fill(0.0);
            tb.fill(0.0);
            ta[0] = 1.0;
            ta[1..=self.n].copy_from_slice(&self.a[ch * self.n..(ch + 1) * self.n]);
            tb[1..=self.n].copy_from_slice(&self.b[ch * self.n..(ch + 1) * self.n]);
            fwd.process(&mut ta, &mut sa)
                .map_err(|e| Error::config("RTF", "FFT", e.to_string()))?;
            fwd.process(&mut tb, &mut sb)
                .map_err(|e| Error::config("RTF", "FFT", e.to_string()))?;
            for (x, y) in sb.iter_mut().zip(&sa) {
                *x = *x / *y + self.h0[ch];
            }
            // The inverse of a real spectrum has real DC and Nyquist bins.
            sb[0].im = 0.0;
            if let Some(last) = sb.last_mut() {
                last.im = 0.0;
            }
            inv.process(&mut sb, &mut tb)
                .map_err(|e| Error::config("RTF", "FFT", e.to_string()))?;
            for (o, v) in out[ch * l..(ch + 1) * l].iter_mut().zip(&tb) {
                *o = v / m as f64;
            }
        }
        Ok(out)
    }

    /// Parallel forward: `u [L, D]` → `y [L, D]`, causal convolution with [`Rtf::kernel`]
    /// (direct sum in f64: this is the reference the recurrence is checked against).
    pub fn forward(&self, u: &[f64], l: usize) -> Result<Vec<f64>> {
        check_len("Rtf forward", "u [L, D]", u.len(), l * self.d)?;
        let k = self.kernel(l)?;
        let d = self.d;
        let mut y = vec![0.0; l * d];
        for ch in 0..d {
            let kc = &k[ch * l..(ch + 1) * l];
            for t in 0..l {
                y[t * d + ch] = (0..=t).map(|j| kc[j] * u[(t - j) * d + ch]).sum();
            }
        }
        Ok(y)
    }

    /// The companion recurrence that reproduces [`Rtf::kernel`] at length `l` exactly (module
    /// docs). Errors if `I − A^M` is singular (a pole on the unit circle at an M-th root of 1).
    pub fn recurrence(&self, l: usize) -> Result<RtfRecurrence> {
        self.check()?;
        let (n, m) = (self.n, fft_len(l));
        let mut c = vec![0.0; self.d * n];
        let mut dd = vec![0.0; self.d];
        for ch in 0..self.d {
            let a = &self.a[ch * n..(ch + 1) * n];
            let comp = Mat::from_fn(n, n, |i, j| {
                if i == 0 {
                    -a[j]
                } else if i == j + 1 {
                    1.0
                } else {
                    0.0
                }
            });
            // A^{M−1} by squaring, then A^M.
            let pow = |mut e: usize| {
                let mut r = Mat::<f64>::identity(n, n);
                let mut base = comp.clone();
                while e > 0 {
                    if e & 1 == 1 {
                        r = &r * &base;
                    }
                    base = &base * &base;
                    e >>= 1;
                }
                r
            };
            let am1 = pow(m - 1);
            let am = &am1 * &comp;
            let lhs = Mat::from_fn(n, n, |i, j| f64::from(i == j) - am[(j, i)]); // (I − A^M)ᵀ
            let rhs = Mat::from_fn(n, 1, |i, _| self.b[ch * n + i]);
            let sol = lhs.partial_piv_lu().solve(&rhs);
            if !(0..n).all(|i| sol[(i, 0)].is_finite()) {
                return Err(Error::config(
                    "RTF denominator",
                    format!("channel {ch}"),
                    "I − A^M is singular (a pole on the unit circle); constrain a (l1_montel)",
                ));
            }
            for i in 0..n {
                c[ch * n + i] = sol[(i, 0)];
            }
            // d = h0 + c · A^{M−1} e_1
            dd[ch] = self.h0[ch] + (0..n).map(|i| sol[(i, 0)] * am1[(i, 0)]).sum::<f64>();
        }
        Ok(RtfRecurrence {
            d: self.d,
            n,
            a: self.a.clone(),
            c,
            dd,
        })
    }
}

impl RtfRecurrence {
    /// A zero state `[D, N]`.
    pub fn empty_state(&self) -> Vec<f64> {
        vec![0.0; self.d * self.n]
    }

    /// One step: `u [D]` → `y [D]`, updating `state [D, N]` (read, then shift in).
    pub fn step(&self, state: &mut [f64], u: &[f64], y: &mut [f64]) -> Result<()> {
        check_len("Rtf step", "state [D, N]", state.len(), self.d * self.n)?;
        check_len("Rtf step", "u [D]", u.len(), self.d)?;
        check_len("Rtf step", "y [D]", y.len(), self.d)?;
        let n = self.n;
        for ch in 0..self.d {
            let x = &mut state[ch * n..(ch + 1) * n];
            let (a, c) = (&self.a[ch * n..(ch + 1) * n], &self.c[ch * n..(ch + 1) * n]);
            y[ch] =
                c.iter().zip(x.iter()).map(|(ci, xi)| ci * xi).sum::<f64>() + self.dd[ch] * u[ch];
            if n > 0 {
                let new0 = u[ch] - a.iter().zip(x.iter()).map(|(ai, xi)| ai * xi).sum::<f64>();
                x.rotate_right(1);
                x[0] = new0;
            }
        }
        Ok(())
    }
}
