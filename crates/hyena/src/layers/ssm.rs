//! Plain (ungated) SSM sequence mixers for the operator zoo, and the diagonal modal SSM.
//!
//! Both SSM layers of the zoo share one structure, MAD's "SSM without gating" baseline:
//!
//! ```text
//! u = in_proj(x)                      x, u: [B, L, D]   (Linear D→D with bias)
//! v[b, :, c] = k[c] * u[b, :, c] + skip[c] ⊙ u[b, :, c]   (causal, per channel, by FFT)
//! y = out_proj(v)                     y: [B, L, D]      (Linear D→D with bias)
//! ```
//!
//! The layers differ only in how the per-channel kernels `k [D, L]` and the skip `[D]` come
//! from their SSM parameters: [`ModalSsm`] here (S4D-style diagonal complex SSM, Gu et al.,
//! "On the Parameterization and Initialization of Diagonal State Space Models", arXiv
//! 2206.11893), and [`crate::layers::rtf_layer::RtfLayer`] (the rational transfer function,
//! Parnichkun et al., arXiv 2405.06147; reference spec Sec. 5). No gate, no activation, no
//! short convolution: the mixer is linear in `x`, which is the point of the baseline. The long
//! convolution is [`FftConv`] (spec Sec. 1), whose backward gives `dk` and `du`; each layer
//! then maps `dk` back to its own parameters.
//!
//! ## Modal SSM (kind `"ssm"`)
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

use crate::error::{check_len, Error, Result};
use crate::layers::init;
use crate::layers::zoo::{split, split_mut, LayerCache, SeqLayer, TensorSpec};
use crate::ops::fftconv::{FftConv, Spectra};
use crate::ops::linear::{linear_backward, linear_forward};

// ---------------------------------------------------------------------------------------------
// The shared mixer: projections around a per-channel causal long convolution.
// ---------------------------------------------------------------------------------------------

/// Saved activations of the shared mixer (and thus of both SSM layers).
#[derive(Default)]
pub(crate) struct MixCache {
    /// `in_proj` output, channel-major `[B, D, L]`.
    u_t: Vec<f32>,
    /// Convolution output `[B·L, D]` (the input of `out_proj`).
    v: Vec<f32>,
    /// Kernels `[D, L]` used by the forward.
    k: Vec<f32>,
    /// Skip `[D]` used by the forward.
    skip: Vec<f32>,
    spectra: Spectra,
    /// `(B, L)` of the forward.
    shape: (usize, usize),
}

/// The projection weights of a mixer: `in_proj` and `out_proj`, each `W [D, D]`, `b [D]`.
pub(crate) struct Proj<'a> {
    pub w_in: &'a [f32],
    pub b_in: &'a [f32],
    pub w_out: &'a [f32],
    pub b_out: &'a [f32],
}

/// Gradient slices of [`Proj`] (accumulated into).
pub(crate) struct ProjGrad<'a> {
    pub w_in: &'a mut [f32],
    pub b_in: &'a mut [f32],
    pub w_out: &'a mut [f32],
    pub b_out: &'a mut [f32],
}

/// `[B, L, D]` → `[B, D, L]`.
fn btd_to_bdt(src: &[f32], b: usize, l: usize, d: usize, dst: &mut [f32]) {
    for bi in 0..b {
        let s = &src[bi * l * d..(bi + 1) * l * d];
        let o = &mut dst[bi * l * d..(bi + 1) * l * d];
        for t in 0..l {
            for c in 0..d {
                o[c * l + t] = s[t * d + c];
            }
        }
    }
}

/// `[B, D, L]` → `[B, L, D]`.
fn bdt_to_btd(src: &[f32], b: usize, l: usize, d: usize, dst: &mut [f32]) {
    for bi in 0..b {
        let s = &src[bi * l * d..(bi + 1) * l * d];
        let o = &mut dst[bi * l * d..(bi + 1) * l * d];
        for c in 0..d {
            for t in 0..l {
                o[t * d + c] = s[c * l + t];
            }
        }
    }
}

/// Validate the buffers of a forward/backward call on `[B, L, D]`.
pub(crate) fn check_io(
    op: &'static str,
    d: usize,
    b: usize,
    l: usize,
    bufs: &[(&str, usize)],
) -> Result<()> {
    if l == 0 {
        return Err(Error::shape(op, "sequence length", "L >= 1", 0));
    }
    if b == 0 {
        return Err(Error::shape(op, "batch size", "B >= 1", 0));
    }
    for (what, n) in bufs {
        check_len(op, what, *n, b * l * d)?;
    }
    Ok(())
}

/// Forward of the mixer: `y = out_proj(k * u + skip ⊙ u)`, `u = in_proj(x)`; fills `c`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mix_forward(
    conv: &FftConv,
    pr: &Proj<'_>,
    d: usize,
    x: &[f32],
    (b, l): (usize, usize),
    k: Vec<f32>,
    skip: Vec<f32>,
    y: &mut [f32],
    c: &mut MixCache,
) -> Result<()> {
    let m = b * l;
    let mut tmp = vec![0.0f32; m * d];
    linear_forward(x, pr.w_in, Some(pr.b_in), m, d, d, &mut tmp)?;
    c.u_t.resize(m * d, 0.0);
    btd_to_bdt(&tmp, b, l, d, &mut c.u_t);
    conv.forward(&c.u_t, &k, &skip, (b, d, l), &mut tmp, Some(&mut c.spectra))?;
    c.v.resize(m * d, 0.0);
    bdt_to_btd(&tmp, b, l, d, &mut c.v);
    linear_forward(&c.v, pr.w_out, Some(pr.b_out), m, d, d, y)?;
    c.k = k;
    c.skip = skip;
    c.shape = (b, l);
    Ok(())
}

/// Backward of [`mix_forward`]: overwrites `dx`, accumulates the projection gradients, and
/// returns `(dk [D, L], dskip [D])` for the layer to map onto its SSM parameters.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mix_backward(
    conv: &FftConv,
    pr: &Proj<'_>,
    d: usize,
    x: &[f32],
    dy: &[f32],
    (b, l): (usize, usize),
    c: &MixCache,
    dx: &mut [f32],
    g: ProjGrad<'_>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    if c.shape != (b, l) || c.v.len() != b * l * d {
        return Err(Error::config(
            "ssm backward",
            format!("(B, L) = ({b}, {l})"),
            format!(
                "the cache holds a forward at (B, L) = {:?}; run forward on the same input",
                c.shape
            ),
        ));
    }
    let m = b * l;
    let mut tmp = vec![0.0f32; m * d];
    linear_backward(
        dy,
        &c.v,
        pr.w_out,
        (m, d, d),
        Some(&mut tmp),
        g.w_out,
        Some(g.b_out),
    )?;
    let mut dv_t = vec![0.0f32; m * d];
    btd_to_bdt(&tmp, b, l, d, &mut dv_t);
    let mut dk = vec![0.0f32; d * l];
    let mut dskip = vec![0.0f32; d];
    conv.backward(
        &dv_t,
        &c.u_t,
        &c.k,
        &c.skip,
        (b, d, l),
        Some(&c.spectra),
        &mut tmp,
        &mut dk,
        &mut dskip,
    )?;
    bdt_to_btd(&tmp, b, l, d, &mut dv_t);
    linear_backward(&dv_t, x, pr.w_in, (m, d, d), Some(dx), g.w_in, Some(g.b_in))?;
    Ok((dk, dskip))
}

/// `nn.Linear(D, D)` init used by both SSM layers: weight `U(±1/sqrt(D))`, bias zero.
pub(crate) fn init_proj(w: &mut [f32], bias: &mut [f32], d: usize, rng: &mut StdRng) {
    w.copy_from_slice(&init::uniform(rng, d * d, 1.0 / (d.max(1) as f32).sqrt()));
    bias.fill(0.0);
}

// ---------------------------------------------------------------------------------------------
// Modal SSM.
// ---------------------------------------------------------------------------------------------

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

/// The diagonal modal (S4D-style) SSM mixer, kind `"ssm"`; see the module docs.
///
/// Parameters (in this order): `in_proj.weight [D, D]`, `in_proj.bias [D]`, `log_dt [D]`,
/// `log_a_real [D, N/2]`, `a_imag [D, N/2]`, `c [D, N/2, 2]` (re, im), `d [D]`,
/// `out_proj.weight [D, D]`, `out_proj.bias [D]`.
#[derive(Debug)]
pub struct ModalSsm {
    cfg: ModalConfig,
    conv: FftConv,
}

const M_IN_W: usize = 0;
const M_IN_B: usize = 1;
const M_LOG_DT: usize = 2;
const M_LOG_A: usize = 3;
const M_A_IM: usize = 4;
const M_C: usize = 5;
const M_D: usize = 6;
const M_OUT_W: usize = 7;
const M_OUT_B: usize = 8;

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
    /// A modal SSM; errors (no panic) on `d_model = 0`, `state_size` 0 or odd, or a bad `dt`
    /// range.
    pub fn new(cfg: ModalConfig) -> Result<Self> {
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
        Ok(ModalSsm {
            cfg,
            conv: FftConv::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModalConfig {
        &self.cfg
    }

    /// Number of complex modes per channel, `H = N/2`.
    pub fn modes(&self) -> usize {
        self.cfg.state_size / 2
    }

    fn check_params(&self, p: &[f32]) -> Result<()> {
        check_len(
            "ssm",
            "parameters (flat, as param_specs)",
            p.len(),
            crate::layers::zoo::numel(&self.param_specs()),
        )
    }

    /// The kernels `k [D, L]` (module docs), from the flat parameters `p`.
    pub fn kernel(&self, p: &[f32], l: usize) -> Result<Vec<f32>> {
        self.check_params(p)?;
        let specs = self.param_specs();
        let ps = split(p, &specs);
        let h = self.modes();
        let mut k = vec![0.0f32; self.cfg.d_model * l];
        if l == 0 {
            return Ok(k);
        }
        k.par_chunks_mut(l).enumerate().for_each(|(ch, kr)| {
            let dt = (ps[M_LOG_DT][ch] as f64).exp();
            let mut acc = vec![0.0f64; l];
            for n in 0..h {
                let i = ch * h + n;
                let (_, z, e, c) = modal_mode(
                    dt,
                    ps[M_LOG_A][i],
                    ps[M_A_IM][i],
                    &ps[M_C][2 * i..2 * i + 2],
                );
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

    /// Map `dk [D, L]` onto `log_dt`, `log_a_real`, `a_imag` and `c` (accumulating into `g`).
    fn kernel_backward(&self, p: &[f32], dk: &[f32], l: usize, g: &mut [f32]) {
        let specs = self.param_specs();
        let ps = split(p, &specs);
        let h = self.modes();
        let d = self.cfg.d_model;
        // Per channel: (dlog_dt, [dlog_a, da_im, dc_re, dc_im] per mode).
        let per: Vec<(f64, Vec<[f64; 4]>)> = (0..d)
            .into_par_iter()
            .map(|ch| {
                let dkr = &dk[ch * l..(ch + 1) * l];
                let dt = (ps[M_LOG_DT][ch] as f64).exp();
                let mut ddt = 0.0f64;
                let mut modes = Vec::with_capacity(h);
                for n in 0..h {
                    let i = ch * h + n;
                    let (a, z, e, c) = modal_mode(
                        dt,
                        ps[M_LOG_A][i],
                        ps[M_A_IM][i],
                        &ps[M_C][2 * i..2 * i + 2],
                    );
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
        let mut gs = split_mut(g, &specs);
        for (ch, (dlogdt, modes)) in per.into_iter().enumerate() {
            gs[M_LOG_DT][ch] += dlogdt as f32;
            for (n, m) in modes.into_iter().enumerate() {
                let i = ch * h + n;
                gs[M_LOG_A][i] += m[0] as f32;
                gs[M_A_IM][i] += m[1] as f32;
                gs[M_C][2 * i] += m[2] as f32;
                gs[M_C][2 * i + 1] += m[3] as f32;
            }
        }
    }

    /// The token-by-token form of this layer with parameters `p` (see [`ModalRecurrence`]).
    pub fn recurrence(&self, p: &[f32]) -> Result<ModalRecurrence> {
        self.check_params(p)?;
        let specs = self.param_specs();
        let ps = split(p, &specs);
        let (d, h) = (self.cfg.d_model, self.modes());
        let mut z = Vec::with_capacity(d * h);
        let mut cp = Vec::with_capacity(d * h);
        for ch in 0..d {
            let dt = (ps[M_LOG_DT][ch] as f64).exp();
            for n in 0..h {
                let i = ch * h + n;
                let (_, zi, e, c) = modal_mode(
                    dt,
                    ps[M_LOG_A][i],
                    ps[M_A_IM][i],
                    &ps[M_C][2 * i..2 * i + 2],
                );
                z.push(zi);
                cp.push(c * e);
            }
        }
        Ok(ModalRecurrence {
            d,
            h,
            z,
            cp,
            skip: ps[M_D].iter().map(|&v| v as f64).collect(),
            w_in: ps[M_IN_W].to_vec(),
            b_in: ps[M_IN_B].to_vec(),
            w_out: ps[M_OUT_W].to_vec(),
            b_out: ps[M_OUT_B].to_vec(),
        })
    }
}

impl SeqLayer for ModalSsm {
    fn kind(&self) -> &'static str {
        "ssm"
    }

    fn d_model(&self) -> usize {
        self.cfg.d_model
    }

    fn mixes_positions(&self) -> bool {
        true
    }

    fn param_specs(&self) -> Vec<TensorSpec> {
        let (d, h) = (self.cfg.d_model, self.modes());
        vec![
            TensorSpec::new("in_proj.weight", &[d, d]),
            TensorSpec::new("in_proj.bias", &[d]),
            TensorSpec::new("log_dt", &[d]),
            TensorSpec::new("log_a_real", &[d, h]),
            TensorSpec::new("a_imag", &[d, h]),
            TensorSpec::new("c", &[d, h, 2]),
            TensorSpec::new("d", &[d]),
            TensorSpec::new("out_proj.weight", &[d, d]),
            TensorSpec::new("out_proj.bias", &[d]),
        ]
    }

    fn init(&self, p: &mut [f32], rng: &mut StdRng) {
        let specs = self.param_specs();
        let (d, h) = (self.cfg.d_model, self.modes());
        let mut ps = split_mut(p, &specs);
        {
            let (a, b) = ps.split_at_mut(M_IN_B);
            init_proj(a[M_IN_W], b[0], d, rng);
        }
        let (lo, hi) = ((self.cfg.dt_min as f64).ln(), (self.cfg.dt_max as f64).ln());
        for v in ps[M_LOG_DT].iter_mut() {
            *v = (lo + (hi - lo) * rng.random::<f64>()) as f32;
        }
        ps[M_LOG_A].fill(0.5f32.ln());
        for (i, v) in ps[M_A_IM].iter_mut().enumerate() {
            *v = std::f32::consts::PI * (i % h) as f32;
        }
        ps[M_C].copy_from_slice(&init::randn(
            rng,
            d * h * 2,
            std::f32::consts::FRAC_1_SQRT_2,
        ));
        ps[M_D].copy_from_slice(&init::randn(rng, d, 1.0));
        let (a, b) = ps.split_at_mut(M_OUT_B);
        init_proj(a[M_OUT_W], b[0], d, rng);
    }

    fn forward(
        &self,
        p: &[f32],
        x: &[f32],
        b: usize,
        l: usize,
        y: &mut [f32],
        cache: &mut LayerCache,
    ) -> Result<()> {
        let d = self.cfg.d_model;
        check_io(
            "ssm forward",
            d,
            b,
            l,
            &[("x [B, L, D]", x.len()), ("y [B, L, D]", y.len())],
        )?;
        let k = self.kernel(p, l)?;
        let specs = self.param_specs();
        let ps = split(p, &specs);
        let pr = Proj {
            w_in: ps[M_IN_W],
            b_in: ps[M_IN_B],
            w_out: ps[M_OUT_W],
            b_out: ps[M_OUT_B],
        };
        let skip = ps[M_D].to_vec();
        mix_forward(
            &self.conv,
            &pr,
            d,
            x,
            (b, l),
            k,
            skip,
            y,
            cache.get_mut::<MixCache>(),
        )
    }

    fn backward(
        &self,
        p: &[f32],
        x: &[f32],
        dy: &[f32],
        b: usize,
        l: usize,
        cache: &LayerCache,
        dx: &mut [f32],
        g: &mut [f32],
    ) -> Result<()> {
        let d = self.cfg.d_model;
        check_io(
            "ssm backward",
            d,
            b,
            l,
            &[
                ("x [B, L, D]", x.len()),
                ("dy [B, L, D]", dy.len()),
                ("dx [B, L, D]", dx.len()),
            ],
        )?;
        self.check_params(p)?;
        check_len(
            "ssm backward",
            "gradient (flat, as param_specs)",
            g.len(),
            p.len(),
        )?;
        let c = cache.get::<MixCache>("ssm")?;
        let specs = self.param_specs();
        let ps = split(p, &specs);
        let pr = Proj {
            w_in: ps[M_IN_W],
            b_in: ps[M_IN_B],
            w_out: ps[M_OUT_W],
            b_out: ps[M_OUT_B],
        };
        let (dk, dskip) = {
            let mut gs = split_mut(g, &specs);
            let (lo, hi) = gs.split_at_mut(M_OUT_W);
            let (lo_in, _) = lo.split_at_mut(M_LOG_DT);
            let (gin_w, gin_b) = lo_in.split_at_mut(M_IN_B);
            let (gout_w, gout_b) = hi.split_at_mut(1);
            mix_backward(
                &self.conv,
                &pr,
                d,
                x,
                dy,
                (b, l),
                c,
                dx,
                ProjGrad {
                    w_in: gin_w[0],
                    b_in: gin_b[0],
                    w_out: gout_w[0],
                    b_out: gout_b[0],
                },
            )?
        };
        {
            let mut gs = split_mut(g, &specs);
            for (gv, v) in gs[M_D].iter_mut().zip(&dskip) {
                *gv += v;
            }
        }
        self.kernel_backward(p, &dk, l, g);
        Ok(())
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
