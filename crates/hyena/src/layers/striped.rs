//! The StripedHyena 2 operators Hyena-SE, Hyena-MR and Hyena-LI as zoo layers (Ku et al.,
//! "Systems and Algorithms for Convolutional Multi-Hybrid Language Models at Scale",
//! arXiv 2503.01868, Sec. 2.1; reference code: vortex's `HyenaCascade` and
//! `vortex/model/engine.py`, savanna's filter parametrisations under
//! `savanna/model/operators/hyena/parametrization/`).
//!
//! All three share one structure and differ only in the inner filter `h`:
//!
//! ```text
//! z  = projections(x)                        x [B, L, D] → z [B, L, 3D]   (Linear D→3D)
//! zc = short_conv(z)                         depthwise, length 3, cross-correlation, no bias
//! post = zc[.., 0::3], pre = zc[.., 1::3], v = zc[.., 2::3]     (interleaved split, as vortex)
//! u  = pre ⊙ v                               [B, L, D]
//! inner = h * u (+ D ⊙ u for MR and LI)      causal, per channel
//! y  = out_filter_dense(post ⊙ inner)        Linear D→D with bias
//! ```
//!
//! - **SE** (kind `"se"`): explicit FIR `filter.h [G, 1, K]` (K = 7), applied like PyTorch's
//!   `conv1d` with left padding: a *cross-correlation*, `inner[t] = Σ_j h[j] u[t-(K-1)+j]`
//!   (tap `K-1` multiplies the newest sample). No `D` term (as in vortex).
//! - **MR** (kind `"mr"`): explicit filter of length K = 128 (truncated to L when L < K),
//!   `h_eff[g, t] = h[g, t] · exp(-r_g τ_t)`, `τ = linspace(0, 1, K)`, `r = logspace` over the
//!   filter groups (preset [`MrDecay`]), applied as a *true convolution*
//!   (`inner[t] = Σ_s h_eff[s] u[t-s]`, tap 0 on the newest sample) plus `D ⊙ u`.
//!   `h` is initialised as `randn / sqrt(K) · 1e-5` (savanna's init): the layer starts as
//!   (almost) `out(post ⊙ D ⊙ u)`, the filter grows from there under training.
//! - **LI** (kind `"li"`): `h[g, t] = Σ_{n<N} R[g, n] · exp(a[g, n] · t)`, `t = 0..L-1`,
//!   `a = −exp(p) · exp(γ)` (savanna's parametrisation, N = 16), by FFT convolution, plus
//!   `D ⊙ u`. [`StripedRecurrence`] steps it token by token (`s ← e^a ⊙ s + u`,
//!   `inner = Σ_n R s + D u`), which equals the convolution.
//!
//! **Filter grouping** (`filter_groups = G`, default `D`): one filter is shared by `D/G`
//! consecutive channels (PyTorch `repeat_interleave`); its gradient is the sum over the group.
//! `D` (the skip) is always per channel.
//!
//! **MR regularisation.** The paper's "regularized" is the decay parametrisation itself
//! (`exp(-r_c τ)` multiplies every tap, forcing later taps towards zero with a per-group
//! strength), and that is what the forward implements. [`StripedConfig::mr_penalty`] adds an
//! optional extra loss (default 0, off) through [`Layer::regularize`]:
//! `λ Σ_g Σ_t (t/K) · h_eff[g, t]²`, which pushes later taps further towards zero; it is our
//! addition, not part of the reference.
//!
//! **Parameter names** (vortex/savanna checkpoints), in flat-buffer order:
//!
//! | name | shape | kinds | note |
//! |---|---|---|---|
//! | `projections.weight` | `[3D, D]` | all | rows in the *original* (interleaved) channel order |
//! | `projections.bias` | `[3D]` | all, iff `in_bias` | Evo 2 has none; default on for small models |
//! | `filter.short_filter_weight` | `[3D, 1, S]` | all | featurizer, S = 3, no bias |
//! | `filter.h` | `[G, 1, K]` | SE, MR | SE: conv1d taps; MR: the raw `h` before the decay |
//! | `filter.p`, `filter.gamma`, `filter.R` | `[G, N]` each | LI | vortex stores `log_poles = −e^p e^γ` and `residues = R` |
//! | `filter.D` | `[D]` | MR, LI | skip |
//! | `out_filter_dense.weight`, `.bias` | `[D, D]`, `[D]` | all | |
//!
//! **Layout.** Internally the in-projection rows are permuted so that the featurizer output is
//! channel-first `[3D, B, L]` with the three D-blocks `post | pre | v` contiguous: the
//! depthwise short conv commutes with a channel permutation, and the gated FFT convolution
//! ([`FftConv::gated_forward`]) then reads `v`, `pre` and `post` as plain `[D, B, L]` slices
//! with no gather pass. The weights are permuted per call (O(D²), small next to the GEMMs) and
//! their gradients scattered back, so the flat buffer keeps the checkpoint's order.

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{check_len, Error, Result};
use crate::layers::init;
use crate::layers::layer::{check_io, Layer, Recurrent, Slot};
use crate::ops::fftconv::{FftConv, GatedConv, GatedConvGrads, RowLayout, Spectra};
use crate::ops::linear::{
    matmul, out_proj_cf_backward, out_proj_cf_forward, row_sums_acc, MatMut, MatRef,
};
use crate::ops::set_len;
use crate::ops::short_conv;
use crate::params::{check_params, split_handles, split_handles_mut, Vb, P};

/// Which StripedHyena 2 operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StripedKind {
    /// Hyena-SE: short explicit FIR (cross-correlation), no skip.
    Se,
    /// Hyena-MR: medium explicit FIR with exponential decay (true convolution), plus skip.
    Mr,
    /// Hyena-LI: long implicit filter, a sum of real exponentials, plus skip.
    Li,
}

/// Hyena-MR decay preset: `r = logspace(lo, hi)` over the filter groups (savanna's presets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MrDecay {
    /// `10^0 .. 10^2`.
    Strong,
    /// `10^-1 .. 10^2`.
    #[default]
    Normal,
    /// `10^-2 .. 10^2`.
    Weak,
}

impl MrDecay {
    /// `(lo, hi)` exponents of the logspace.
    pub fn exponents(self) -> (f64, f64) {
        match self {
            MrDecay::Strong => (0.0, 2.0),
            MrDecay::Normal => (-1.0, 2.0),
            MrDecay::Weak => (-2.0, 2.0),
        }
    }
}

/// Configuration of a [`StripedOp`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StripedConfig {
    /// Width `D`.
    pub d_model: usize,
    pub kind: StripedKind,
    /// Explicit filter length `K` (SE 7, MR 128); unused by LI.
    pub filter_len: usize,
    /// Number of distinct filters `G` (divides `D`); `D` = one filter per channel.
    pub filter_groups: usize,
    /// LI: number of real modes `N` per filter (16); unused by SE and MR.
    pub state: usize,
    /// Featurizer short-conv length `S` (3).
    pub short_len: usize,
    /// Whether `projections` has a bias. Evo 2 has none; small models train better with one,
    /// so the constructors turn it on.
    pub in_bias: bool,
    /// MR decay preset.
    pub mr_decay: MrDecay,
    /// MR: weight λ of the optional extra penalty `λ Σ (t/K) h_eff²` (0 = off, the default).
    pub mr_penalty: f32,
    /// LI: range of the initial `exp(γ) ~ U(gamma_min, gamma_max)`.
    pub gamma_min: f32,
    pub gamma_max: f32,
}

impl StripedConfig {
    fn base(d_model: usize, kind: StripedKind, filter_len: usize) -> Self {
        StripedConfig {
            d_model,
            kind,
            filter_len,
            filter_groups: d_model,
            state: 16,
            short_len: 3,
            in_bias: true,
            mr_decay: MrDecay::Normal,
            mr_penalty: 0.0,
            gamma_min: 0.01,
            gamma_max: 0.1,
        }
    }
    /// Hyena-SE, filter length 7, one filter per channel.
    pub fn se(d_model: usize) -> Self {
        Self::base(d_model, StripedKind::Se, 7)
    }
    /// Hyena-MR, filter length 128, decay "normal", one filter per channel.
    pub fn mr(d_model: usize) -> Self {
        Self::base(d_model, StripedKind::Mr, 128)
    }
    /// Hyena-LI, 16 modes, one filter per channel.
    pub fn li(d_model: usize) -> Self {
        Self::base(d_model, StripedKind::Li, 0)
    }
    /// The same config with `filter_groups = g`.
    pub fn with_groups(mut self, g: usize) -> Self {
        self.filter_groups = g;
        self
    }
}

/// Positions of the tensors in the layer's list of handles.
#[derive(Clone, Debug)]
struct Idx {
    in_w: usize,
    in_b: Option<usize>,
    short_w: usize,
    /// SE/MR: `h`; LI: `p`.
    f0: usize,
    /// LI: `gamma`, `R`.
    gamma: usize,
    r: usize,
    skip: Option<usize>,
    out_w: usize,
    out_b: usize,
}

/// A Hyena-SE / -MR / -LI operator (kinds `"se"`, `"mr"`, `"li"`); see the module docs.
#[derive(Debug)]
pub struct StripedOp {
    cfg: StripedConfig,
    /// The layer's tensors in registration order, with their names relative to the layer.
    hs: Vec<P>,
    names: Vec<String>,
    idx: Idx,
    conv: FftConv,
}

/// Activations saved by the forward (buffers reused across calls).
#[derive(Default)]
pub struct StripedCache {
    b: usize,
    l: usize,
    /// Permuted in-projection output (bias included) `[3D, B, L]`, the featurizer's input.
    zp: Vec<f32>,
    /// Featurizer output `[3D, B, L]` = `post | pre | v` blocks of `[D, B, L]`.
    uc: Vec<f32>,
    /// SE: `u = pre ⊙ v` `[D, B, L]` (the FIR's input).
    w: Vec<f32>,
    /// Inner result before the post-gate `[D, B, L]`.
    conv_out: Vec<f32>,
    /// `post ⊙ inner` `[D, B, L]` (input of `out_filter_dense`).
    yg: Vec<f32>,
    /// Per-channel filters: SE `[D, K]` conv1d taps; MR/LI `[D, L]` convolution kernels.
    k: Vec<f32>,
    spectra: Spectra,
}

impl StripedOp {
    /// A new operator, its tensors registered under `vb`; errors on sizes that make no sense
    /// (no panic).
    pub fn new(cfg: StripedConfig, vb: &Vb<'_, '_>) -> Result<Self> {
        let d = cfg.d_model;
        if d == 0 {
            return Err(Error::config("striped d_model", 0, "must be at least 1"));
        }
        if cfg.filter_groups == 0 || !d.is_multiple_of(cfg.filter_groups) {
            return Err(Error::config(
                "striped filter_groups",
                cfg.filter_groups,
                format!("must be positive and divide d_model = {d}"),
            ));
        }
        if cfg.short_len == 0 {
            return Err(Error::config(
                "striped short_len",
                0,
                "the featurizer needs at least one tap (3 in StripedHyena 2)",
            ));
        }
        match cfg.kind {
            StripedKind::Se | StripedKind::Mr => {
                if cfg.filter_len == 0 {
                    return Err(Error::config(
                        "striped filter_len",
                        0,
                        "SE and MR need an explicit filter of at least one tap (7 / 128)",
                    ));
                }
            }
            StripedKind::Li => {
                if cfg.state == 0 {
                    return Err(Error::config(
                        "striped state",
                        0,
                        "LI needs at least one mode per filter (16 in StripedHyena 2)",
                    ));
                }
                if !(cfg.gamma_min > 0.0
                    && cfg.gamma_min <= cfg.gamma_max
                    && cfg.gamma_max.is_finite())
                {
                    return Err(Error::config(
                        "striped gamma range",
                        format!("[{}, {}]", cfg.gamma_min, cfg.gamma_max),
                        "need 0 < gamma_min <= gamma_max < inf",
                    ));
                }
            }
        }
        if !(cfg.mr_penalty >= 0.0 && cfg.mr_penalty.is_finite()) {
            return Err(Error::config(
                "striped mr_penalty",
                cfg.mr_penalty,
                "must be a finite value >= 0 (0 turns the extra penalty off)",
            ));
        }
        let (c3, g, k, n, s) = (
            3 * d,
            cfg.filter_groups,
            cfg.filter_len,
            cfg.state,
            cfg.short_len,
        );
        let mut specs = vec![("projections.weight".to_string(), vec![c3, d])];
        let in_b = cfg.in_bias.then(|| {
            specs.push(("projections.bias".to_string(), vec![c3]));
            specs.len() - 1
        });
        specs.push(("filter.short_filter_weight".to_string(), vec![c3, 1, s]));
        let short_w = specs.len() - 1;
        let f0 = specs.len();
        let (mut gamma, mut r) = (0, 0);
        match cfg.kind {
            StripedKind::Se | StripedKind::Mr => {
                specs.push(("filter.h".to_string(), vec![g, 1, k]))
            }
            StripedKind::Li => {
                specs.push(("filter.p".to_string(), vec![g, n]));
                specs.push(("filter.gamma".to_string(), vec![g, n]));
                gamma = f0 + 1;
                specs.push(("filter.R".to_string(), vec![g, n]));
                r = f0 + 2;
            }
        }
        let skip = (cfg.kind != StripedKind::Se).then(|| {
            specs.push(("filter.D".to_string(), vec![d]));
            specs.len() - 1
        });
        specs.push(("out_filter_dense.weight".to_string(), vec![d, d]));
        specs.push(("out_filter_dense.bias".to_string(), vec![d]));
        let out_w = specs.len() - 2;
        let idx = Idx {
            in_w: 0,
            in_b,
            short_w,
            f0,
            gamma,
            r,
            skip,
            out_w,
            out_b: out_w + 1,
        };
        let mut hs = Vec::with_capacity(specs.len());
        for (name, shape) in &specs {
            // Biases stay outside the weight-decay group.
            let v = if name.ends_with(".bias") {
                vb.no_decay()
            } else {
                vb.clone()
            };
            hs.push(v.get(shape, name)?);
        }
        Ok(StripedOp {
            cfg,
            hs,
            names: specs.into_iter().map(|s| s.0).collect(),
            idx,
            conv: FftConv::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &StripedConfig {
        &self.cfg
    }

    fn check_params(&self, p: &[f32]) -> Result<()> {
        check_params(self.op_name(), p, self.hs[self.hs.len() - 1])
    }

    fn op_name(&self) -> &'static str {
        match self.cfg.kind {
            StripedKind::Se => "hyena-se",
            StripedKind::Mr => "hyena-mr",
            StripedKind::Li => "hyena-li",
        }
    }

    /// Channels per filter group, `D / G`.
    fn group_size(&self) -> usize {
        self.cfg.d_model / self.cfg.filter_groups
    }

    /// Original channel of permuted row `q`: block `q / D` (0 post, 1 pre, 2 v), channel
    /// `q % D` of that block, which is projection row `3 (q % D) + q / D` (vortex's interleave).
    fn orig(&self, q: usize) -> usize {
        let d = self.cfg.d_model;
        3 * (q % d) + q / d
    }

    /// In-projection weight, bias and featurizer taps in the permuted row order.
    fn permuted(&self, ps: &[&[f32]]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (d, s) = (self.cfg.d_model, self.cfg.short_len);
        let c3 = 3 * d;
        let mut w = vec![0.0; c3 * d];
        let mut b = vec![0.0; c3];
        let mut sw = vec![0.0; c3 * s];
        for q in 0..c3 {
            let o = self.orig(q);
            w[q * d..(q + 1) * d].copy_from_slice(&ps[self.idx.in_w][o * d..(o + 1) * d]);
            if let Some(i) = self.idx.in_b {
                b[q] = ps[i][o];
            }
            sw[q * s..(q + 1) * s].copy_from_slice(&ps[self.idx.short_w][o * s..(o + 1) * s]);
        }
        (w, b, sw)
    }

    /// MR decay `exp(-r_g τ_t)` for group `g`, tap `t < K` (f64).
    fn mr_decay(&self, g: usize, t: usize) -> f64 {
        let (lo, hi) = self.cfg.mr_decay.exponents();
        let ng = self.cfg.filter_groups;
        let e = if ng > 1 {
            lo + (hi - lo) * g as f64 / (ng - 1) as f64
        } else {
            lo
        };
        let k = self.cfg.filter_len;
        let tau = if k > 1 {
            t as f64 / (k - 1) as f64
        } else {
            0.0
        };
        (-(10f64.powf(e)) * tau).exp()
    }

    /// LI poles `a = −exp(p) exp(γ)` `[G, N]` (f64).
    fn li_poles(&self, ps: &[&[f32]]) -> Vec<f64> {
        ps[self.idx.f0]
            .iter()
            .zip(ps[self.idx.gamma])
            .map(|(&p, &g)| -(p as f64).exp() * (g as f64).exp())
            .collect()
    }

    /// Per-group kernels `[G, L]` of MR / LI (true-convolution order, tap 0 = newest), in f64.
    fn group_kernels(&self, ps: &[&[f32]], l: usize) -> Vec<f64> {
        let (ng, k, n) = (self.cfg.filter_groups, self.cfg.filter_len, self.cfg.state);
        let mut out = vec![0.0f64; ng * l];
        match self.cfg.kind {
            StripedKind::Se => {}
            StripedKind::Mr => {
                let h = ps[self.idx.f0];
                for g in 0..ng {
                    for t in 0..k.min(l) {
                        out[g * l + t] = h[g * k + t] as f64 * self.mr_decay(g, t);
                    }
                }
            }
            StripedKind::Li => {
                let a = self.li_poles(ps);
                let r = ps[self.idx.r];
                for g in 0..ng {
                    let row = &mut out[g * l..(g + 1) * l];
                    for m in 0..n {
                        let (z, rg) = ((a[g * n + m]).exp(), r[g * n + m] as f64);
                        // z^t by running product: exact enough in f64 and L times cheaper
                        // than an exp per tap.
                        let mut zt = 1.0f64;
                        for v in row.iter_mut() {
                            *v += rg * zt;
                            zt *= z;
                        }
                    }
                }
            }
        }
        out
    }

    /// Per-channel filters used by the forward: SE `[D, K]` conv1d taps (cross-correlation
    /// order), MR/LI `[D, L]` convolution kernels. Groups are repeat-interleaved.
    fn channel_filters(&self, ps: &[&[f32]], l: usize) -> Vec<f32> {
        let (d, gs) = (self.cfg.d_model, self.group_size());
        let (row, src): (usize, Vec<f32>) = match self.cfg.kind {
            StripedKind::Se => (self.cfg.filter_len, ps[self.idx.f0].to_vec()),
            _ => (
                l,
                self.group_kernels(ps, l)
                    .into_iter()
                    .map(|v| v as f32)
                    .collect(),
            ),
        };
        let mut out = vec![0.0f32; d * row];
        for c in 0..d {
            let g = c / gs;
            out[c * row..(c + 1) * row].copy_from_slice(&src[g * row..(g + 1) * row]);
        }
        out
    }

    /// The effective causal kernel of every channel in true-convolution order (tap 0 on the
    /// newest sample), `[D, L]`: SE's taps reversed and zero-padded, MR's decayed and
    /// truncated filter, LI's sum of exponentials. Skip `D` not included. `p` as `param_specs`.
    pub fn conv_kernels(&self, p: &[f32], l: usize) -> Result<Vec<f32>> {
        self.check_params(p)?;
        let ps = split_handles(p, &self.hs);
        match self.cfg.kind {
            StripedKind::Se => {
                let (d, k) = (self.cfg.d_model, self.cfg.filter_len);
                let taps = self.channel_filters(&ps, l);
                let mut out = vec![0.0f32; d * l];
                for c in 0..d {
                    for t in 0..k.min(l) {
                        out[c * l + t] = taps[c * k + k - 1 - t];
                    }
                }
                Ok(out)
            }
            _ => Ok(self.channel_filters(&ps, l)),
        }
    }

    /// The token-by-token form of this operator with parameters `p`.
    pub fn recurrence(&self, p: &[f32]) -> Result<StripedRecurrence> {
        self.check_params(p)?;
        let ps = split_handles(p, &self.hs);
        let (d, gs) = (self.cfg.d_model, self.group_size());
        let (w_in, b_in, short_w) = self.permuted(&ps);
        let to64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let skip = match self.idx.skip {
            Some(i) => to64(ps[i]),
            None => vec![0.0; d],
        };
        let filter = match self.cfg.kind {
            StripedKind::Li => {
                let n = self.cfg.state;
                let a = self.li_poles(&ps);
                let r = ps[self.idx.r];
                let mut poles = Vec::with_capacity(d * n);
                let mut res = Vec::with_capacity(d * n);
                for c in 0..d {
                    let g = c / gs;
                    for m in 0..n {
                        poles.push(a[g * n + m].exp());
                        res.push(r[g * n + m] as f64);
                    }
                }
                StepFilter::Modal { n, poles, res }
            }
            StripedKind::Se => {
                let k = self.cfg.filter_len;
                let taps = self.channel_filters(&ps, 1);
                let mut kern = vec![0.0f64; d * k];
                for c in 0..d {
                    for t in 0..k {
                        kern[c * k + t] = taps[c * k + k - 1 - t] as f64;
                    }
                }
                StepFilter::Fir { k, kern }
            }
            StripedKind::Mr => {
                let k = self.cfg.filter_len;
                let gk = self.group_kernels(&ps, k);
                let mut kern = vec![0.0f64; d * k];
                for c in 0..d {
                    let g = c / gs;
                    kern[c * k..(c + 1) * k].copy_from_slice(&gk[g * k..(g + 1) * k]);
                }
                StepFilter::Fir { k, kern }
            }
        };
        Ok(StripedRecurrence {
            d,
            s: self.cfg.short_len,
            w_in: to64(&w_in),
            b_in: to64(&b_in),
            short_w: to64(&short_w),
            filter,
            skip,
            w_out: to64(ps[self.idx.out_w]),
            b_out: to64(ps[self.idx.out_b]),
        })
    }
}

/// `dst [rows, n] = row_bias (per row) then += W [rows, K] · X`, with `X` given as the
/// transpose of row-major `x [n, K]`: the in-projection written channel-first.
fn proj_channel_first(
    w: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    rows: usize,
    k: usize,
    n: usize,
    dst: &mut [f32],
) -> Result<()> {
    if let Some(b) = bias {
        for (r, &bv) in dst.chunks_exact_mut(n).zip(b) {
            r.fill(bv);
        }
    }
    matmul(
        MatMut::rm(dst, rows, n),
        MatRef::rm(w, rows, k),
        MatRef::tr(x, k, n),
        bias.is_some(),
    )
}

impl Layer for StripedOp {
    fn kind(&self) -> &'static str {
        match self.cfg.kind {
            StripedKind::Se => "se",
            StripedKind::Mr => "mr",
            StripedKind::Li => "li",
        }
    }

    fn d_model(&self) -> usize {
        self.cfg.d_model
    }

    fn mixes_positions(&self) -> bool {
        true
    }

    fn recurrent(&self) -> Option<&dyn Recurrent> {
        Some(self)
    }

    /// Projections and `out_filter_dense`: `nn.Linear` defaults (`U(±1/sqrt(D))`, bias too).
    /// Featurizer and SE taps: `nn.Conv1d` defaults (`U(±1/sqrt(taps))`). MR `h`:
    /// `randn/sqrt(K)·1e-5` (savanna). LI: `p = −1`, `γ = log U(γ_min, γ_max)`,
    /// `R = 0.1·randn/sqrt(N)` (savanna's `ImplicitModalFilter`). `D ~ N(0, 1)`, like the original
    /// Hyena operator's skip (`bias = randn(D)`), so that MR starts as a useful gated skip path.
    fn init(&self, p: &mut [f32], rng: &mut StdRng) {
        let (d, s, k, n) = (
            self.cfg.d_model,
            self.cfg.short_len,
            self.cfg.filter_len,
            self.cfg.state,
        );
        let ng = self.cfg.filter_groups;
        let bd = 1.0 / (d as f32).sqrt();
        let mut ps = split_handles_mut(p, &self.hs);
        ps[self.idx.in_w].copy_from_slice(&init::uniform(rng, 3 * d * d, bd));
        if let Some(i) = self.idx.in_b {
            ps[i].copy_from_slice(&init::uniform(rng, 3 * d, bd));
        }
        ps[self.idx.short_w].copy_from_slice(&init::uniform(
            rng,
            3 * d * s,
            1.0 / (s as f32).sqrt(),
        ));
        match self.cfg.kind {
            StripedKind::Se => ps[self.idx.f0].copy_from_slice(&init::uniform(
                rng,
                ng * k,
                1.0 / (k as f32).sqrt(),
            )),
            StripedKind::Mr => {
                ps[self.idx.f0].copy_from_slice(&init::randn(rng, ng * k, 1e-5 / (k as f32).sqrt()))
            }
            StripedKind::Li => {
                ps[self.idx.f0].fill(-1.0);
                let (lo, hi) = (self.cfg.gamma_min as f64, self.cfg.gamma_max as f64);
                for v in ps[self.idx.gamma].iter_mut() {
                    *v = (lo + (hi - lo) * rng.random::<f64>()).ln() as f32;
                }
                ps[self.idx.r].copy_from_slice(&init::randn(rng, ng * n, 0.1 / (n as f32).sqrt()));
            }
        }
        if let Some(i) = self.idx.skip {
            ps[i].copy_from_slice(&init::randn(rng, d, 1.0));
        }
        ps[self.idx.out_w].copy_from_slice(&init::uniform(rng, d * d, bd));
        ps[self.idx.out_b].copy_from_slice(&init::uniform(rng, d, bd));
    }

    fn forward(
        &self,
        p: &[f32],
        x: &[f32],
        b: usize,
        l: usize,
        y: &mut [f32],
        cache: &mut Slot,
    ) -> Result<()> {
        let op = self.op_name();
        let d = self.cfg.d_model;
        check_io(
            op,
            d,
            b,
            l,
            &[("x [B, L, D]", x.len()), ("y [B, L, D]", y.len())],
        )?;
        self.check_params(p)?;
        let ps = split_handles(p, &self.hs);
        let (m, c3, s) = (b * l, 3 * d, self.cfg.short_len);
        let dm = d * m;
        let c = cache.get_or_default::<StripedCache>();
        (c.b, c.l) = (b, l);
        let (w_in, b_in, short_w) = self.permuted(&ps);
        set_len(&mut c.zp, c3 * m);
        set_len(&mut c.uc, c3 * m);
        proj_channel_first(
            &w_in,
            self.idx.in_b.map(|_| &b_in[..]),
            x,
            c3,
            d,
            m,
            &mut c.zp,
        )?;
        short_conv::forward(
            &c.zp,
            &short_w,
            &vec![0.0; c3],
            s,
            RowLayout::cbl(b, c3, l),
            &mut c.uc,
        )?;
        let (post, rest) = c.uc.split_at(dm);
        let (pre, v) = rest.split_at(dm);
        let lay = RowLayout::cbl(b, d, l);
        set_len(&mut c.conv_out, dm);
        set_len(&mut c.yg, dm);
        match self.cfg.kind {
            StripedKind::Se => {
                let k = self.cfg.filter_len;
                c.k = self.channel_filters(&ps, l);
                set_len(&mut c.w, dm);
                for ((w, a), bv) in c.w.iter_mut().zip(pre).zip(v) {
                    *w = a * bv;
                }
                short_conv::forward(&c.w, &c.k, &vec![0.0; d], k, lay, &mut c.conv_out)?;
                for ((o, a), bv) in c.yg.iter_mut().zip(post).zip(&c.conv_out) {
                    *o = a * bv;
                }
            }
            StripedKind::Mr | StripedKind::Li => {
                c.k = self.channel_filters(&ps, l);
                let skip = self.idx.skip.map_or(&[][..], |i| ps[i]);
                let args = GatedConv {
                    layout: lay,
                    u: v,
                    pre: Some(pre),
                    post: Some(post),
                    k: &c.k,
                    d: skip,
                };
                self.conv.gated_forward(
                    &args,
                    &mut c.yg,
                    Some(&mut c.conv_out),
                    Some(&mut c.spectra),
                )?;
            }
        }
        // y [M, D] = ygᵀ · Woᵀ + bo (yg is channel-first [D, M]).
        out_proj_cf_forward(
            &c.yg,
            ps[self.idx.out_w],
            ps[self.idx.out_b],
            None,
            (m, d),
            y,
        )
    }

    fn backward(
        &self,
        p: &[f32],
        x: &[f32],
        dy: &[f32],
        b: usize,
        l: usize,
        cache: &mut Slot,
        dx: &mut [f32],
        g: &mut [f32],
    ) -> Result<()> {
        let op = self.op_name();
        let d = self.cfg.d_model;
        check_io(
            op,
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
        check_len(op, "gradient (flat, as param_specs)", g.len(), p.len())?;
        let c = cache.get::<StripedCache>(op)?;
        if (c.b, c.l) != (b, l) || c.yg.len() != b * l * d {
            return Err(Error::config(
                "striped backward",
                format!("(B, L) = ({b}, {l})"),
                format!(
                    "the cache holds a forward at (B, L) = ({}, {}); run forward on the same input",
                    c.b, c.l
                ),
            ));
        }
        let ps = split_handles(p, &self.hs);
        let (m, c3, s) = (b * l, 3 * d, self.cfg.short_len);
        let dm = d * m;
        let lay = RowLayout::cbl(b, d, l);
        let mut gs = split_handles_mut(g, &self.hs);

        // out_filter_dense: dyg [D, M] = Wo^T · dy^T; dWo += dy^T · yg^T; dbo += Σ_rows dy.
        let mut dyg = vec![0.0f32; dm];
        {
            let (ow, ob) = (self.idx.out_w, self.idx.out_b);
            let gw = std::mem::take(&mut gs[ow]);
            out_proj_cf_backward(
                dy,
                &c.yg,
                ps[ow],
                (m, d),
                &mut dyg,
                gw,
                gs[ob],
                &mut Vec::new(),
            )?;
            gs[ow] = gw;
        }

        // Inner filter and gates: duc [3D, M] = dpost | dpre | dv.
        let mut duc = vec![0.0f32; c3 * m];
        {
            let (post, rest) = c.uc.split_at(dm);
            let (pre, v) = rest.split_at(dm);
            let (dpost, rest) = duc.split_at_mut(dm);
            let (dpre, dv) = rest.split_at_mut(dm);
            let ng = self.cfg.filter_groups;
            let gsz = self.group_size();
            match self.cfg.kind {
                StripedKind::Se => {
                    let k = self.cfg.filter_len;
                    // dinner = post ⊙ dyg (in dv for now), dpost = inner ⊙ dyg.
                    for (((dp, di), (&a, &co)), &gy) in dpost
                        .iter_mut()
                        .zip(dv.iter_mut())
                        .zip(post.iter().zip(&c.conv_out))
                        .zip(&dyg)
                    {
                        *dp = co * gy;
                        *di = a * gy;
                    }
                    let mut dk = vec![0.0f32; d * k];
                    let mut dbias = vec![0.0f32; d];
                    // In place: dv holds dinner on entry and dw (= d(pre ⊙ v)) on return.
                    short_conv::backward_inplace(dv, &c.w, &c.k, k, lay, &mut dk, &mut dbias)?;
                    for ((dpr, dvv), (&a, &bv)) in
                        dpre.iter_mut().zip(dv.iter_mut()).zip(pre.iter().zip(v))
                    {
                        let dw = *dvv;
                        *dpr = dw * bv;
                        *dvv = dw * a;
                    }
                    let gh = &mut gs[self.idx.f0];
                    for ch in 0..d {
                        let gi = ch / gsz;
                        for j in 0..k {
                            gh[gi * k + j] += dk[ch * k + j];
                        }
                    }
                }
                StripedKind::Mr | StripedKind::Li => {
                    let skip = self.idx.skip.map_or(&[][..], |i| ps[i]);
                    let args = GatedConv {
                        layout: lay,
                        u: v,
                        pre: Some(pre),
                        post: Some(post),
                        k: &c.k,
                        d: skip,
                    };
                    let mut dk = vec![0.0f32; d * l];
                    let mut dd = vec![0.0f32; d];
                    self.conv.gated_backward(
                        &args,
                        &dyg,
                        Some(&c.conv_out),
                        Some(&c.spectra),
                        GatedConvGrads {
                            du: dv,
                            dpre: Some(dpre),
                            dpost: Some(dpost),
                            dk: &mut dk,
                            dd: &mut dd,
                        },
                    )?;
                    if let Some(i) = self.idx.skip {
                        for (a, bv) in gs[i].iter_mut().zip(&dd) {
                            *a += bv;
                        }
                    }
                    // Group sums of the kernel gradient, in f64.
                    let mut dkg = vec![0.0f64; ng * l];
                    for ch in 0..d {
                        let gi = ch / gsz;
                        for (a, &bv) in dkg[gi * l..(gi + 1) * l]
                            .iter_mut()
                            .zip(&dk[ch * l..(ch + 1) * l])
                        {
                            *a += bv as f64;
                        }
                    }
                    self.kernel_backward(&ps, &dkg, l, &mut gs);
                }
            }
        }

        // Featurizer, in place: duc holds dzc on entry and dzp on return.
        let (w_in, _, short_w) = self.permuted(&ps);
        let mut dsw = vec![0.0f32; c3 * s];
        let mut dsb = vec![0.0f32; c3];
        short_conv::backward_inplace(
            &mut duc,
            &c.zp,
            &short_w,
            s,
            RowLayout::cbl(b, c3, l),
            &mut dsw,
            &mut dsb,
        )?;

        // Projections: dx [M, D] = dzᵀ · Wp; dWp [3D, D] = dz · x; dbp = Σ_cols dz.
        matmul(
            MatMut::rm(dx, m, d),
            MatRef::tr(&duc, m, c3),
            MatRef::rm(&w_in, c3, d),
            false,
        )?;
        let mut dwp = vec![0.0f32; c3 * d];
        matmul(
            MatMut::rm(&mut dwp, c3, d),
            MatRef::rm(&duc, c3, m),
            MatRef::rm(x, m, d),
            false,
        )?;
        let mut dbp = vec![0.0f32; c3];
        if self.idx.in_b.is_some() {
            row_sums_acc(&duc, m, &mut dbp);
        }
        for q in 0..c3 {
            let o = self.orig(q);
            for (a, bv) in gs[self.idx.in_w][o * d..(o + 1) * d]
                .iter_mut()
                .zip(&dwp[q * d..(q + 1) * d])
            {
                *a += bv;
            }
            if let Some(i) = self.idx.in_b {
                gs[i][o] += dbp[q];
            }
            for (a, bv) in gs[self.idx.short_w][o * s..(o + 1) * s]
                .iter_mut()
                .zip(&dsw[q * s..(q + 1) * s])
            {
                *a += bv;
            }
        }
        Ok(())
    }

    /// MR's optional extra penalty `λ Σ_g Σ_{t<K} (t/K) h_eff[g, t]²` (see the module docs);
    /// zero for SE, LI, and MR with `mr_penalty = 0`.
    fn regularize(&self, p: &[f32], g: &mut [f32]) -> f64 {
        let lam = self.cfg.mr_penalty as f64;
        if self.cfg.kind != StripedKind::Mr || lam == 0.0 {
            return 0.0;
        }
        if self.check_params(p).is_err() || g.len() != p.len() {
            return 0.0;
        }
        let ps = split_handles(p, &self.hs);
        let (ng, k) = (self.cfg.filter_groups, self.cfg.filter_len);
        let h = ps[self.idx.f0];
        let mut gs = split_handles_mut(g, &self.hs);
        let gh = &mut gs[self.idx.f0];
        let mut r = 0.0f64;
        for gi in 0..ng {
            for t in 0..k {
                let (w, dec) = (t as f64 / k as f64, self.mr_decay(gi, t));
                let he = h[gi * k + t] as f64 * dec;
                r += w * he * he;
                gh[gi * k + t] += (lam * 2.0 * w * he * dec) as f32;
            }
        }
        lam * r
    }
}

impl StripedOp {
    /// Map the group-summed kernel gradient `dkg [G, L]` onto MR's `h` or LI's `p, γ, R`
    /// (accumulating into `gs`).
    fn kernel_backward(&self, ps: &[&[f32]], dkg: &[f64], l: usize, gs: &mut [&mut [f32]]) {
        let (ng, k, n) = (self.cfg.filter_groups, self.cfg.filter_len, self.cfg.state);
        match self.cfg.kind {
            StripedKind::Se => {}
            StripedKind::Mr => {
                let gh = &mut gs[self.idx.f0];
                for gi in 0..ng {
                    for t in 0..k.min(l) {
                        gh[gi * k + t] += (dkg[gi * l + t] * self.mr_decay(gi, t)) as f32;
                    }
                }
            }
            StripedKind::Li => {
                // k[t] = Σ_n R_n z_n^t with z = e^a, a = −e^p e^γ:
                // ∂/∂R_n = Σ_t dk[t] z^t; ∂/∂a_n = R_n Σ_t dk[t] t z^t; ∂a/∂p = ∂a/∂γ = a.
                let a = self.li_poles(ps);
                let r = ps[self.idx.r];
                for gi in 0..ng {
                    let row = &dkg[gi * l..(gi + 1) * l];
                    for m in 0..n {
                        let i = gi * n + m;
                        let z = a[i].exp();
                        let (mut s0, mut s1, mut zt) = (0.0f64, 0.0f64, 1.0f64);
                        for (t, &gk) in row.iter().enumerate() {
                            s0 += gk * zt;
                            s1 += gk * t as f64 * zt;
                            zt *= z;
                        }
                        let da = r[i] as f64 * s1;
                        gs[self.idx.r][i] += s0 as f32;
                        gs[self.idx.f0][i] += (da * a[i]) as f32;
                        gs[self.idx.gamma][i] += (da * a[i]) as f32;
                    }
                }
            }
        }
    }
}

/// The inner filter of a [`StripedRecurrence`].
#[derive(Clone, Debug)]
enum StepFilter {
    /// SE / MR: kernel `[D, K]` in convolution order (tap 0 = newest).
    Fir { k: usize, kern: Vec<f64> },
    /// LI: per channel `N` poles `e^a` and residues `R`, `[D, N]` each.
    Modal {
        n: usize,
        poles: Vec<f64>,
        res: Vec<f64>,
    },
}

/// A StripedHyena 2 operator stepped one token at a time (inference; f64 arithmetic).
///
/// State per sequence ([`StripedRecurrence::empty_state`]): the featurizer's last `S−1`
/// projected rows `[S−1, 3D]`, then the filter state: LI `[D, N]` real modes
/// (`s ← e^a ⊙ s + u_t`, `inner_t = Σ_n R_n s_n + D u_t`, vortex's LI inference state; with
/// `s_t = Σ_{j≤t} e^{a(t−j)} u_j` this is exactly `Σ_j h[t−j] u_j`), SE/MR the last `K`
/// gated inputs `u` `[D, K]` (newest first).
#[derive(Clone, Debug)]
pub struct StripedRecurrence {
    d: usize,
    s: usize,
    w_in: Vec<f64>,
    b_in: Vec<f64>,
    short_w: Vec<f64>,
    filter: StepFilter,
    skip: Vec<f64>,
    w_out: Vec<f64>,
    b_out: Vec<f64>,
}

impl StripedRecurrence {
    fn filter_state_len(&self) -> usize {
        match &self.filter {
            StepFilter::Fir { k, .. } => self.d * k,
            StepFilter::Modal { n, .. } => self.d * n,
        }
    }

    /// A zero state (the start of a sequence).
    pub fn empty_state(&self) -> Vec<f64> {
        vec![0.0; (self.s - 1) * 3 * self.d + self.filter_state_len()]
    }

    /// One step of one sequence: `x [D]` → `y [D]`, updating `state`.
    pub fn step(&self, state: &mut [f64], x: &[f32], y: &mut [f32]) -> Result<()> {
        const OP: &str = "striped step";
        let (d, s) = (self.d, self.s);
        let c3 = 3 * d;
        let nshort = (s - 1) * c3;
        check_len(OP, "state", state.len(), nshort + self.filter_state_len())?;
        check_len(OP, "x [D]", x.len(), d)?;
        check_len(OP, "y [D]", y.len(), d)?;
        let (carry, fstate) = state.split_at_mut(nshort);
        // Projection (permuted rows: post | pre | v).
        let z: Vec<f64> = (0..c3)
            .map(|q| {
                self.b_in[q]
                    + self.w_in[q * d..(q + 1) * d]
                        .iter()
                        .zip(x)
                        .map(|(w, &xv)| w * xv as f64)
                        .sum::<f64>()
            })
            .collect();
        // Featurizer: tap S−1 on the current row, tap j on row t−(S−1)+j (carry row j).
        let zc: Vec<f64> = (0..c3)
            .map(|q| {
                let w = &self.short_w[q * s..(q + 1) * s];
                let mut acc = w[s - 1] * z[q];
                for (j, wj) in w[..s - 1].iter().enumerate() {
                    acc += wj * carry[j * c3 + q];
                }
                acc
            })
            .collect();
        if s > 1 {
            carry.copy_within(c3.., 0);
            carry[(s - 2) * c3..].copy_from_slice(&z);
        }
        let mut yg = vec![0.0f64; d];
        for (ch, o) in yg.iter_mut().enumerate() {
            let (post, pre, v) = (zc[ch], zc[d + ch], zc[2 * d + ch]);
            let u = pre * v;
            let mut inner = self.skip[ch] * u;
            match &self.filter {
                StepFilter::Fir { k, kern } => {
                    let hist = &mut fstate[ch * k..(ch + 1) * k];
                    hist.copy_within(..k - 1, 1);
                    hist[0] = u;
                    inner += kern[ch * k..(ch + 1) * k]
                        .iter()
                        .zip(hist.iter())
                        .map(|(a, b)| a * b)
                        .sum::<f64>();
                }
                StepFilter::Modal { n, poles, res } => {
                    for m in 0..*n {
                        let i = ch * n + m;
                        fstate[i] = poles[i] * fstate[i] + u;
                        inner += res[i] * fstate[i];
                    }
                }
            }
            *o = post * inner;
        }
        for (j, o) in y.iter_mut().enumerate() {
            *o = (self.b_out[j]
                + self.w_out[j * d..(j + 1) * d]
                    .iter()
                    .zip(&yg)
                    .map(|(a, b)| a * b)
                    .sum::<f64>()) as f32;
        }
        Ok(())
    }
}

/// Slow references straight from the definitions (arXiv 2503.01868, Sec. 2.1), in f64, in the
/// checkpoint's channel order: no permutation, no FFT, kernels by their formulas, direct O(L·K)
/// sums.
pub mod reference {
    use super::{StripedKind, StripedOp};

    /// `y [B, L, D]` of `op` with parameters `p` on `x [B, L, D]`.
    pub fn forward(op: &StripedOp, p: &[f32], x: &[f32], b: usize, l: usize) -> Vec<f64> {
        let cfg = op.config();
        let (d, s, k, n) = (cfg.d_model, cfg.short_len, cfg.filter_len, cfg.state);
        let get = |name: &str| -> Vec<f64> {
            op.names
                .iter()
                .position(|t| t == name)
                .map(|i| op.hs[i].of(p).iter().map(|&v| v as f64).collect())
                .unwrap_or_default()
        };
        let (w_in, b_in, sw) = (
            get("projections.weight"),
            get("projections.bias"),
            get("filter.short_filter_weight"),
        );
        let (w_out, b_out, skip) = (
            get("out_filter_dense.weight"),
            get("out_filter_dense.bias"),
            get("filter.D"),
        );
        let gsz = d / cfg.filter_groups;
        let ng = cfg.filter_groups;
        // Kernel of group g at lag t (true-convolution order), for MR and LI.
        let kernel = |g: usize, t: usize| -> f64 {
            match cfg.kind {
                StripedKind::Se => 0.0,
                StripedKind::Mr => {
                    if t >= k {
                        return 0.0;
                    }
                    let h = get("filter.h");
                    let (lo, hi) = cfg.mr_decay.exponents();
                    let e = if ng > 1 {
                        lo + (hi - lo) * g as f64 / (ng - 1) as f64
                    } else {
                        lo
                    };
                    let tau = if k > 1 {
                        t as f64 / (k - 1) as f64
                    } else {
                        0.0
                    };
                    h[g * k + t] * (-(10f64.powf(e)) * tau).exp()
                }
                StripedKind::Li => {
                    let (pp, gm, r) = (get("filter.p"), get("filter.gamma"), get("filter.R"));
                    (0..n)
                        .map(|m| {
                            let i = g * n + m;
                            let logp = -pp[i].exp() * gm[i].exp();
                            r[i] * (logp * t as f64).exp()
                        })
                        .sum()
                }
            }
        };
        // Tabulate the kernels once (the closure above re-reads the tensors).
        let ktab: Vec<f64> = (0..ng * l).map(|i| kernel(i / l, i % l)).collect();
        let h_se = get("filter.h");
        let mut y = vec![0.0f64; b * l * d];
        for bi in 0..b {
            let xr = |t: usize, j: usize| x[(bi * l + t) * d + j] as f64;
            // z [L, 3D] in the original channel order.
            let z: Vec<f64> = (0..l * 3 * d)
                .map(|i| {
                    let (t, ch) = (i / (3 * d), i % (3 * d));
                    b_in.get(ch).copied().unwrap_or(0.0)
                        + (0..d).map(|j| w_in[ch * d + j] * xr(t, j)).sum::<f64>()
                })
                .collect();
            // Featurizer: causal cross-correlation, tap S−1 on the newest sample.
            let zc = |t: usize, ch: usize| -> f64 {
                (0..s)
                    .filter_map(|j| {
                        (t + j)
                            .checked_sub(s - 1)
                            .map(|src| sw[ch * s + j] * z[src * 3 * d + ch])
                    })
                    .sum()
            };
            // Interleaved split: post = 0::3, pre = 1::3, v = 2::3.
            let mut post = vec![0.0f64; l * d];
            let mut u = vec![0.0f64; l * d];
            for t in 0..l {
                for c in 0..d {
                    post[t * d + c] = zc(t, 3 * c);
                    u[t * d + c] = zc(t, 3 * c + 1) * zc(t, 3 * c + 2);
                }
            }
            let mut yg = vec![0.0f64; l * d];
            for t in 0..l {
                for c in 0..d {
                    let g = c / gsz;
                    let inner = match cfg.kind {
                        // conv1d: weight index K−1 multiplies the newest sample.
                        StripedKind::Se => (0..k)
                            .filter_map(|j| {
                                (t + j)
                                    .checked_sub(k - 1)
                                    .map(|src| h_se[g * k + j] * u[src * d + c])
                            })
                            .sum::<f64>(),
                        _ => {
                            (0..=t)
                                .map(|lag| ktab[g * l + lag] * u[(t - lag) * d + c])
                                .sum::<f64>()
                                + skip[c] * u[t * d + c]
                        }
                    };
                    yg[t * d + c] = post[t * d + c] * inner;
                }
            }
            for t in 0..l {
                for j in 0..d {
                    y[(bi * l + t) * d + j] = b_out[j]
                        + (0..d)
                            .map(|c| w_out[j * d + c] * yg[t * d + c])
                            .sum::<f64>();
                }
            }
        }
        y
    }
}

/// The state of a [`StripedOp`] stepped through one sequence: its recurrence and the state.
struct StripedStep {
    rec: StripedRecurrence,
    state: Vec<f64>,
}

impl Recurrent for StripedOp {
    fn start(&self, p: &[f32]) -> Result<Slot> {
        let rec = self.recurrence(p)?;
        let state = rec.empty_state();
        Ok(Slot::new(StripedStep { rec, state }))
    }
    fn step(&self, _p: &[f32], state: &mut Slot, x: &[f32], y: &mut [f32]) -> Result<()> {
        let s = state.get_mut::<StripedStep>("striped step")?;
        s.rec.step(&mut s.state, x, y)
    }
}
