//! The diagonal modal SSM (kind `"ssm"`): the kernels of a [`super::ConvMixer`] from an
//! S4D-style diagonal complex SSM (Gu et al., "On the Parameterization and Initialization of
//! Diagonal State Space Models", arXiv 2206.11893).
//!
//! Per channel `d` and complex mode `n < H = N/2` (so the real state size is `N`):
//! `A_n = −exp(log_a_real[d, n]) + i·a_imag[d, n]`, `Δ_d = exp(log_dt[d])`, zero-order hold
//! with `B = 1` folded into `C`:
//!
//! ```text
//! z = exp(Δ A),   E = (z − 1) / A,   k_d[t] = 2·Re Σ_n C_{d,n} · E_{d,n} · z_{d,n}^t
//! ```
//!
//! plus the skip `D_d` (parameter `d`). Init (S4D-Lin): `a_real = 0.5`, `a_imag = π n`,
//! `log Δ ~ U(log dt_min, log dt_max)` (defaults 1e-3, 1e-1), `C` standard complex normal
//! (real and imaginary parts `N(0, 1/2)`, like `torch.randn(..., dtype=cfloat)`), `D ~ N(0, 1)`.
//! Kernel generation and its backward run in f64 per channel (O(D·N·L), the powers `z^t` by
//! running products); the result is rounded to f32 for the convolution.
//! [`ModalRecurrence`] steps the same layer token by token (`s_t = z s_{t−1} + u_t`,
//! `v_t = 2 Re Σ C E s_t + D u_t`), which must equal the convolutional forward.

use rand::rngs::StdRng;
use rand::Rng;
use rayon::prelude::*;
use realfft::num_complex::Complex64;

use super::{ConvMixer, KernelGen};
use crate::error::{check_len, Error, Result};
use crate::layers::init;
use crate::layers::layer::Slot;
use crate::params::{many_mut, Vb, P};

/// Configuration of a [`ModalSsm`].
#[derive(Clone, Debug, PartialEq)]
pub struct ModalConfig {
    /// Width `D`.
    pub d_model: usize,
    /// Real state size `N` per channel (even): `N/2` complex modes.
    pub state_size: usize,
    /// Range of the initial step sizes, `log Δ ~ U(log dt_min, log dt_max)`.
    pub dt_min: f32,
    pub dt_max: f32,
}

impl ModalConfig {
    /// Defaults: `N = 16` (8 complex modes), `Δ ∈ [1e-3, 1e-1]`.
    pub fn new(d_model: usize) -> Self {
        ModalConfig {
            d_model,
            state_size: 16,
            dt_min: 1e-3,
            dt_max: 1e-1,
        }
    }
}

/// The modal SSM mixer (see the module docs). Tensors, in order: `in_proj.weight [D, D]`,
/// `in_proj.bias [D]`, `log_dt [D]`, `log_a_real [D, N/2]`, `a_imag [D, N/2]`,
/// `c [D, N/2, 2]` (re, im), `d [D]`, `out_proj.weight [D, D]`, `out_proj.bias [D]`.
pub type ModalSsm = ConvMixer<Modal>;

/// The kernel of a [`ModalSsm`]: its SSM tensors.
#[derive(Debug)]
pub struct Modal {
    cfg: ModalConfig,
    log_dt: P,
    log_a: P,
    a_im: P,
    c: P,
    skip: P,
}

/// Discretisation of one mode: `(A, z = exp(ΔA), E = (z − 1)/A, C)`.
#[inline]
fn modal_mode(
    dt: f64,
    log_a: f32,
    a_im: f32,
    c: &[f32],
) -> (Complex64, Complex64, Complex64, Complex64) {
    let a = Complex64::new(-(log_a as f64).exp(), a_im as f64);
    let z = (a * dt).exp();
    let e = (z - 1.0) / a;
    (a, z, e, Complex64::new(c[0] as f64, c[1] as f64))
}

impl ModalSsm {
    /// A modal SSM, its tensors registered under `vb`; errors (no panic) on `d_model = 0`,
    /// `state_size` 0 or odd, or a bad `dt` range.
    pub fn new(cfg: ModalConfig, vb: &Vb<'_, '_>) -> Result<Self> {
        if cfg.d_model == 0 {
            return Err(Error::config("ssm d_model", 0, "must be at least 1"));
        }
        if cfg.state_size == 0 || !cfg.state_size.is_multiple_of(2) {
            return Err(Error::config(
                "ssm state_size",
                cfg.state_size,
                "must be a positive even number (N/2 complex conjugate modes per channel)",
            ));
        }
        if !(cfg.dt_min > 0.0 && cfg.dt_min <= cfg.dt_max && cfg.dt_max.is_finite()) {
            return Err(Error::config(
                "ssm dt range",
                format!("[{}, {}]", cfg.dt_min, cfg.dt_max),
                "need 0 < dt_min <= dt_max < inf",
            ));
        }
        let (d, h) = (cfg.d_model, cfg.state_size / 2);
        ConvMixer::build(d, vb, |vb| {
            Ok(Modal {
                log_dt: vb.get(&[d], "log_dt")?,
                log_a: vb.get(&[d, h], "log_a_real")?,
                a_im: vb.get(&[d, h], "a_imag")?,
                c: vb.get(&[d, h, 2], "c")?,
                skip: vb.get(&[d], "d")?,
                cfg,
            })
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModalConfig {
        &self.kern.cfg
    }

    /// Number of complex modes per channel, `H = N/2`.
    pub fn modes(&self) -> usize {
        self.kern.modes()
    }

    /// The token-by-token form of this layer with parameters `p` (see [`ModalRecurrence`]).
    pub fn recurrence(&self, p: &[f32]) -> Result<ModalRecurrence> {
        crate::params::check_params("ssm", p, self.out_b)?;
        let k = &self.kern;
        let (d, h) = (k.cfg.d_model, k.modes());
        let (log_dt, log_a, a_im, c) = (k.log_dt.of(p), k.log_a.of(p), k.a_im.of(p), k.c.of(p));
        let mut z = Vec::with_capacity(d * h);
        let mut cp = Vec::with_capacity(d * h);
        for ch in 0..d {
            let dt = (log_dt[ch] as f64).exp();
            for n in 0..h {
                let i = ch * h + n;
                let (_, zi, e, ci) = modal_mode(dt, log_a[i], a_im[i], &c[2 * i..2 * i + 2]);
                z.push(zi);
                cp.push(ci * e);
            }
        }
        Ok(ModalRecurrence {
            d,
            h,
            z,
            cp,
            skip: k.skip.of(p).iter().map(|&v| v as f64).collect(),
            w_in: self.in_w.of(p).to_vec(),
            b_in: self.in_b.of(p).to_vec(),
            w_out: self.out_w.of(p).to_vec(),
            b_out: self.out_b.of(p).to_vec(),
        })
    }
}

impl Modal {
    fn modes(&self) -> usize {
        self.cfg.state_size / 2
    }
}

/// A [`ModalSsm`] being stepped: its recurrence and the state of one sequence.
struct ModalStep {
    rec: ModalRecurrence,
    state: Vec<f64>,
}

impl KernelGen for Modal {
    const KIND: &'static str = "ssm";
    const HAS_STEP: bool = true;

    fn d_model(&self) -> usize {
        self.cfg.d_model
    }

    /// S4D-Lin (module docs).
    fn init(&self, p: &mut [f32], rng: &mut StdRng) {
        let (d, h) = (self.cfg.d_model, self.modes());
        let (lo, hi) = ((self.cfg.dt_min as f64).ln(), (self.cfg.dt_max as f64).ln());
        for v in self.log_dt.of_mut(p).iter_mut() {
            *v = (lo + (hi - lo) * rng.random::<f64>()) as f32;
        }
        self.log_a.of_mut(p).fill(0.5f32.ln());
        for (i, v) in self.a_im.of_mut(p).iter_mut().enumerate() {
            *v = std::f32::consts::PI * (i % h) as f32;
        }
        self.c.of_mut(p).copy_from_slice(&init::randn(
            rng,
            d * h * 2,
            std::f32::consts::FRAC_1_SQRT_2,
        ));
        self.skip
            .of_mut(p)
            .copy_from_slice(&init::randn(rng, d, 1.0));
    }

    fn kernel(&self, p: &[f32], l: usize) -> Result<Vec<f32>> {
        let h = self.modes();
        let (log_dt, log_a, a_im, c) = (
            self.log_dt.of(p),
            self.log_a.of(p),
            self.a_im.of(p),
            self.c.of(p),
        );
        let mut k = vec![0.0f32; self.cfg.d_model * l];
        if l == 0 {
            return Ok(k);
        }
        k.par_chunks_mut(l).enumerate().for_each(|(ch, kr)| {
            let dt = (log_dt[ch] as f64).exp();
            let mut acc = vec![0.0f64; l];
            for n in 0..h {
                let i = ch * h + n;
                let (_, z, e, c) = modal_mode(dt, log_a[i], a_im[i], &c[2 * i..2 * i + 2]);
                let mut w = c * e;
                for v in acc.iter_mut() {
                    *v += 2.0 * w.re;
                    w *= z;
                }
            }
            for (o, v) in kr.iter_mut().zip(&acc) {
                *o = *v as f32;
            }
        });
        Ok(k)
    }

    fn skip(&self, p: &[f32]) -> Vec<f32> {
        self.skip.of(p).to_vec()
    }

    /// Map `dk [D, L]` onto `log_dt`, `log_a_real`, `a_imag` and `c`, and `dskip` onto `d`.
    fn backward(
        &self,
        p: &[f32],
        dk: &[f32],
        dskip: &[f32],
        l: usize,
        g: &mut [f32],
    ) -> Result<()> {
        for (gv, v) in self.skip.of_mut(g).iter_mut().zip(dskip) {
            *gv += v;
        }
        let h = self.modes();
        let d = self.cfg.d_model;
        let (log_dt, log_a, a_im, c) = (
            self.log_dt.of(p),
            self.log_a.of(p),
            self.a_im.of(p),
            self.c.of(p),
        );
        // Per channel: (dlog_dt, [dlog_a, da_im, dc_re, dc_im] per mode).
        let per: Vec<(f64, Vec<[f64; 4]>)> = (0..d)
            .into_par_iter()
            .map(|ch| {
                let dkr = &dk[ch * l..(ch + 1) * l];
                let dt = (log_dt[ch] as f64).exp();
                let mut ddt = 0.0f64;
                let mut modes = Vec::with_capacity(h);
                for n in 0..h {
                    let i = ch * h + n;
                    let (a, z, e, c) = modal_mode(dt, log_a[i], a_im[i], &c[2 * i..2 * i + 2]);
                    // W = Σ_t dk[t] z^t, V = ∂W/∂z = Σ_t dk[t] t z^{t−1}.
                    let (mut w, mut v) = (Complex64::new(0.0, 0.0), Complex64::new(0.0, 0.0));
                    let mut pw = Complex64::new(1.0, 0.0); // z^t
                    let mut prev = Complex64::new(0.0, 0.0); // z^{t−1}
                    for (t, &gk) in dkr.iter().enumerate() {
                        let gk = gk as f64;
                        w += pw * gk;
                        v += prev * (gk * t as f64);
                        prev = pw;
                        pw *= z;
                    }
                    // Loss = 2 Re(C E W(z)).
                    let cp = c * e;
                    let g_c = w * e;
                    // ∂z/∂A = Δz, ∂E/∂A = (Δz − E)/A; ∂z/∂Δ = Az, ∂E/∂Δ = z.
                    let g_a = w * c * ((z * dt - e) / a) + cp * v * (z * dt);
                    let g_dt = w * c * z + cp * v * (a * z);
                    ddt += 2.0 * g_dt.re;
                    // A = −exp(log_a) + i a_im.
                    modes.push([
                        2.0 * g_a.re * a.re,
                        -2.0 * g_a.im,
                        2.0 * g_c.re,
                        -2.0 * g_c.im,
                    ]);
                }
                (ddt * dt, modes)
            })
            .collect();
        let [g_dt, g_la, g_ai, g_c] = many_mut(g, [self.log_dt, self.log_a, self.a_im, self.c]);
        for (ch, (dlogdt, modes)) in per.into_iter().enumerate() {
            g_dt[ch] += dlogdt as f32;
            for (n, m) in modes.into_iter().enumerate() {
                let i = ch * h + n;
                g_la[i] += m[0] as f32;
                g_ai[i] += m[1] as f32;
                g_c[2 * i] += m[2] as f32;
                g_c[2 * i + 1] += m[3] as f32;
            }
        }
        Ok(())
    }

    fn recurrence(&self, mixer: &ConvMixer<Self>, p: &[f32]) -> Result<Slot> {
        let rec = mixer.recurrence(p)?;
        let state = rec.empty_state();
        Ok(Slot::new(ModalStep { rec, state }))
    }

    fn step(&self, state: &mut Slot, x: &[f32], y: &mut [f32]) -> Result<()> {
        let s = state.get_mut::<ModalStep>("ssm step")?;
        s.rec.step(&mut s.state, x, y)
    }
}

/// The modal SSM layer stepped one token at a time (diagonal recurrence, f64 state):
/// `u = in_proj(x_t)`, `s ← z ⊙ s + u`, `v = 2 Re Σ_n (C E)_n s_n + D u`, `y_t = out_proj(v)`.
#[derive(Clone, Debug)]
pub struct ModalRecurrence {
    d: usize,
    h: usize,
    /// `[D, H]` poles `exp(ΔA)`.
    z: Vec<Complex64>,
    /// `[D, H]` readouts `C E`.
    cp: Vec<Complex64>,
    skip: Vec<f64>,
    w_in: Vec<f32>,
    b_in: Vec<f32>,
    w_out: Vec<f32>,
    b_out: Vec<f32>,
}

impl ModalRecurrence {
    /// A zero state `[D, H, 2]` (re, im).
    pub fn empty_state(&self) -> Vec<f64> {
        vec![0.0; self.d * self.h * 2]
    }

    /// One step of one sequence: `x [D]` → `y [D]`, updating `state [D, H, 2]`.
    pub fn step(&self, state: &mut [f64], x: &[f32], y: &mut [f32]) -> Result<()> {
        let (d, h) = (self.d, self.h);
        check_len("ssm step", "state [D, N/2, 2]", state.len(), d * h * 2)?;
        check_len("ssm step", "x [D]", x.len(), d)?;
        check_len("ssm step", "y [D]", y.len(), d)?;
        let lin = |w: &[f32], b: &[f32], inp: &[f64], j: usize| -> f64 {
            b[j] as f64
                + w[j * d..(j + 1) * d]
                    .iter()
                    .zip(inp)
                    .map(|(a, b)| *a as f64 * b)
                    .sum::<f64>()
        };
        let xin: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let mut v = vec![0.0f64; d];
        for ch in 0..d {
            let u = lin(&self.w_in, &self.b_in, &xin, ch);
            let mut acc = self.skip[ch] * u;
            for n in 0..h {
                let i = ch * h + n;
                let s = Complex64::new(state[2 * i], state[2 * i + 1]) * self.z[i] + u;
                state[2 * i] = s.re;
                state[2 * i + 1] = s.im;
                acc += 2.0 * (self.cp[i] * s).re;
            }
            v[ch] = acc;
        }
        for (j, o) in y.iter_mut().enumerate() {
            *o = lin(&self.w_out, &self.b_out, &v, j) as f32;
        }
        Ok(())
    }
}
