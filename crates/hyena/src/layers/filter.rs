//! The implicit long filter of Hyena (`HyenaFilter`; Hyena paper Sec. 3.3, spec Sec. 2.3).
//!
//! `h = FFN(PosEmb(t)) ⊙ window(t)`: a positional embedding `z [l_max, E]` feeds an MLP
//! `Linear(E,F) → Sin → [Linear(F,F) → Sin]×n → Linear(F, C_f, no bias)` whose Sin activations share
//! one learnable frequency vector, and the result is multiplied by an exponential decay window
//! `exp(-t·|δ_c|) + shift` with per-channel rates `δ`. The filter is evaluated on the first `L`
//! points of the `l_max` grid (time is *not* rescaled to `L`), so a filter depends on `l_max`.
//!
//! Output is arranged by convolution stage: `k: [N-1, D, L]` and `bias: [N-1, D]`, using the
//! configured channel layout (`(v o)` interleaved or `(o d)` blocked).

use std::sync::Arc;

use rand::rngs::StdRng;

use crate::config::{FilterLayout, HyenaConfig};
use crate::error::{check_len, Error, Result};
use crate::io::safetensors::TensorFile;
use crate::layers::{init, Params, Visitor, VisitorMut};
use crate::ops::act::{sin_backward, sin_forward};
use crate::ops::linear::{linear_backward, linear_forward, matmul, MatMut, MatRef};

/// Trainable parameters of the filter. Names: `filter_fn.{bias, implicit_filter.*}`.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterParams {
    /// `bias` [C_f]: the per-channel skip `D` of the long convolutions.
    pub bias: Vec<f32>,
    /// `implicit_filter.0.weight` [F, E], `.0.bias` [F].
    pub w0: Vec<f32>,
    pub b0: Vec<f32>,
    /// `implicit_filter.1.freq` [1, F], shared by all Sin activations.
    pub freq: Vec<f32>,
    /// `implicit_filter.{2+2i}.weight` [F, F] and `.bias` [F], for i < num_inner_mlps.
    pub inner_w: Vec<Vec<f32>>,
    pub inner_b: Vec<Vec<f32>>,
    /// `implicit_filter.{2+2n}.weight` [C_f, F] (no bias).
    pub w_out: Vec<f32>,
    /// `pos_emb.z` [1, l_max, E] when it is trained (`learn_pos_emb`); empty otherwise, and the
    /// filter reads [`FilterBuffers::z`].
    pub z: Vec<f32>,
    e: usize,
    f: usize,
    cf: usize,
}

impl FilterParams {
    /// All-zero parameters with the shapes of `cfg` (gradient buffers start like this).
    pub fn zeros(cfg: &HyenaConfig) -> Self {
        let (e, f, cf) = (
            cfg.filter.emb_dim,
            cfg.filter.filter_order,
            cfg.filter_channels(),
        );
        let n = cfg.filter.num_inner_mlps;
        FilterParams {
            bias: vec![0.0; cf],
            w0: vec![0.0; f * e],
            b0: vec![0.0; f],
            freq: vec![0.0; f],
            inner_w: vec![vec![0.0; f * f]; n],
            inner_b: vec![vec![0.0; f]; n],
            w_out: vec![0.0; cf * f],
            z: if cfg.filter.learn_pos_emb {
                vec![0.0; cfg.l_max * e]
            } else {
                Vec::new()
            },
            e,
            f,
            cf,
        }
    }

    /// PyTorch module defaults: Linear `U(±1/sqrt(fan_in))`, `bias ~ N(0, 1)`, `freq = w`.
    pub fn init(cfg: &HyenaConfig, rng: &mut StdRng) -> Self {
        let mut p = Self::zeros(cfg);
        let (e, f, cf) = (p.e, p.f, p.cf);
        (p.w0, p.b0) = init::linear(rng, f, e, true);
        p.freq = vec![cfg.filter.w; f];
        for i in 0..cfg.filter.num_inner_mlps {
            (p.inner_w[i], p.inner_b[i]) = init::linear(rng, f, f, true);
        }
        p.w_out = init::linear(rng, cf, f, false).0;
        p.bias = init::randn(rng, cf, 1.0);
        if cfg.filter.learn_pos_emb {
            p.z = Arc::unwrap_or_clone(FilterBuffers::new(cfg).z);
        }
        p
    }
}

impl Params for FilterParams {
    fn visit(&self, prefix: &str, f: &mut Visitor<'_>) {
        let (e, fo, cf) = (self.e, self.f, self.cf);
        f(&format!("{prefix}bias"), &[cf], &self.bias);
        f(
            &format!("{prefix}implicit_filter.0.weight"),
            &[fo, e],
            &self.w0,
        );
        f(&format!("{prefix}implicit_filter.0.bias"), &[fo], &self.b0);
        f(
            &format!("{prefix}implicit_filter.1.freq"),
            &[1, fo],
            &self.freq,
        );
        for i in 0..self.inner_w.len() {
            f(
                &format!("{prefix}implicit_filter.{}.weight", 2 + 2 * i),
                &[fo, fo],
                &self.inner_w[i],
            );
            f(
                &format!("{prefix}implicit_filter.{}.bias", 2 + 2 * i),
                &[fo],
                &self.inner_b[i],
            );
        }
        let last = 2 + 2 * self.inner_w.len();
        f(
            &format!("{prefix}implicit_filter.{last}.weight"),
            &[cf, fo],
            &self.w_out,
        );
        if !self.z.is_empty() {
            f(
                &format!("{prefix}pos_emb.z"),
                &[1, self.z.len() / e, e],
                &self.z,
            );
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut VisitorMut<'_>) {
        let (e, fo, cf) = (self.e, self.f, self.cf);
        f(&format!("{prefix}bias"), &[cf], &mut self.bias);
        f(
            &format!("{prefix}implicit_filter.0.weight"),
            &[fo, e],
            &mut self.w0,
        );
        f(
            &format!("{prefix}implicit_filter.0.bias"),
            &[fo],
            &mut self.b0,
        );
        f(
            &format!("{prefix}implicit_filter.1.freq"),
            &[1, fo],
            &mut self.freq,
        );
        for i in 0..self.inner_w.len() {
            f(
                &format!("{prefix}implicit_filter.{}.weight", 2 + 2 * i),
                &[fo, fo],
                &mut self.inner_w[i],
            );
            f(
                &format!("{prefix}implicit_filter.{}.bias", 2 + 2 * i),
                &[fo],
                &mut self.inner_b[i],
            );
        }
        let last = 2 + 2 * self.inner_w.len();
        f(
            &format!("{prefix}implicit_filter.{last}.weight"),
            &[cf, fo],
            &mut self.w_out,
        );
        if !self.z.is_empty() {
            f(
                &format!("{prefix}pos_emb.z"),
                &[1, self.z.len() / e, e],
                &mut self.z,
            );
        }
    }
}

/// Non-trainable state of the filter: `pos_emb.z` [1, l_max, E] (unless it is trained, see
/// [`FilterParams::z`]), `pos_emb.t` [1, l_max, 1], `modulation.deltas` [1, 1, C_f]. Stored in
/// checkpoints like the reference's buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterBuffers {
    /// Shared between the blocks of a model when equal (they are a function of `l_max` and
    /// `E` only): 24 MB each at HyenaDNA-large's l_max of 1M. Writes copy on write.
    pub z: Arc<Vec<f32>>,
    pub t: Arc<Vec<f32>>,
    pub deltas: Vec<f32>,
}

impl FilterBuffers {
    /// Recompute the buffers from the config (spec Sec. 2.3). Values agree with PyTorch's to
    /// float rounding; load them from the checkpoint for bit-exact parity.
    pub fn new(cfg: &HyenaConfig) -> Self {
        let (lm, e) = (cfg.l_max, cfg.filter.emb_dim);
        let bands = (e - 1) / 2;
        let linspace = |a: f64, b: f64, n: usize, i: usize| {
            if n == 1 {
                a
            } else {
                a + (b - a) * i as f64 / (n - 1) as f64
            }
        };
        let mut z = vec![0.0f32; lm * e];
        let mut t = vec![0.0f32; lm];
        for i in 0..lm {
            let ti = linspace(0.0, 1.0, lm, i);
            t[i] = ti as f32;
            // ω_i = 2π i / l_max; features cos(f ω), -sin(f ω) with f = linspace(1e-4, bands-1, bands).
            let w = 2.0 * std::f64::consts::PI * i as f64 / lm as f64;
            z[i * e] = ti as f32;
            for bnd in 0..bands {
                let fr = linspace(1e-4, bands as f64 - 1.0, bands, bnd);
                z[i * e + 1 + bnd] = (fr * w).cos() as f32;
                z[i * e + 1 + bands + bnd] = -(fr * w).sin() as f32;
            }
        }
        let cf = cfg.filter_channels();
        let fc = &cfg.filter;
        let (lo, hi) = (
            (fc.target as f64).ln() / fc.slow_decay_pct as f64,
            (fc.target as f64).ln() / fc.fast_decay_pct as f64,
        );
        let deltas = (0..cf).map(|i| linspace(lo, hi, cf, i) as f32).collect();
        FilterBuffers {
            z: Arc::new(z),
            t: Arc::new(t),
            deltas,
        }
    }

    /// Make `self` share `other`'s `z` and `t` where the values are equal.
    pub fn share_with(&mut self, other: &FilterBuffers) {
        if !Arc::ptr_eq(&self.z, &other.z) && self.z == other.z {
            self.z = other.z.clone();
        }
        if !Arc::ptr_eq(&self.t, &other.t) && self.t == other.t {
            self.t = other.t.clone();
        }
    }

    /// `(name, shape)` of the buffers under `prefix`: `pos_emb.z` (when it is a buffer),
    /// `pos_emb.t`, `modulation.deltas`.
    fn names(&self, prefix: &str, lm: usize, e: usize) -> Vec<(String, Vec<usize>)> {
        let mut v = Vec::with_capacity(3);
        if !self.z.is_empty() {
            v.push((format!("{prefix}pos_emb.z"), vec![1, lm, e]));
        }
        v.push((format!("{prefix}pos_emb.t"), vec![1, lm, 1]));
        v.push((
            format!("{prefix}modulation.deltas"),
            vec![1, 1, self.deltas.len()],
        ));
        v
    }

    /// Visit `(name, shape, data)` of the buffers (for saving).
    pub fn visit(&self, prefix: &str, lm: usize, e: usize, f: &mut Visitor<'_>) {
        for (name, shape) in self.names(prefix, lm, e) {
            let data: &[f32] = if name.ends_with("pos_emb.z") {
                &self.z
            } else if name.ends_with("pos_emb.t") {
                &self.t
            } else {
                &self.deltas
            };
            f(&name, &shape, data);
        }
    }

    /// Read the buffers under `prefix` from `file`. `z` and `t` equal to `prev`'s (the block
    /// before, already loaded) share its copy instead of holding their own.
    ///
    /// `required`: every buffer must be present with exactly its shape (hyena checkpoints).
    /// Otherwise (reference checkpoints) a missing buffer keeps the value computed from the
    /// config, and a stored shape that differs only in singleton axes is accepted.
    pub fn load(
        &mut self,
        prefix: &str,
        (lm, e): (usize, usize),
        file: &TensorFile,
        required: bool,
        prev: Option<&FilterBuffers>,
    ) -> Result<()> {
        for (name, shape) in self.names(prefix, lm, e) {
            let t = if required {
                file.get_shaped(&name, &shape)?
            } else {
                match file.tensors.get(&name) {
                    None => continue,
                    Some(t) if t.data.len() == shape.iter().product::<usize>() => t,
                    Some(t) => {
                        return Err(Error::Format {
                            file: file.path.clone(),
                            msg: format!(
                                "tensor `{name}` has shape {:?}, expected {shape:?}: the \
                                 config's max_seq_len/l_max or emb_dim disagrees with the \
                                 weights",
                                t.shape
                            ),
                        })
                    }
                }
            };
            let shared = |own: &mut Arc<Vec<f32>>, theirs: Option<&Arc<Vec<f32>>>| match theirs {
                Some(p) if p.as_slice() == t.data.as_slice() => *own = p.clone(),
                _ => *own = Arc::new(t.data.clone()),
            };
            if name.ends_with("pos_emb.z") {
                shared(&mut self.z, prev.map(|p| &p.z));
            } else if name.ends_with("pos_emb.t") {
                shared(&mut self.t, prev.map(|p| &p.t));
            } else {
                self.deltas.copy_from_slice(&t.data);
            }
        }
        Ok(())
    }
}

/// Activations saved by [`HyenaFilter::forward`] and the filters it produced.
#[derive(Clone, Debug, Default)]
pub struct FilterCache {
    /// Length the filter was evaluated at.
    pub l: usize,
    /// Pre-activation of each MLP layer, `[L, F]` each.
    pre: Vec<Vec<f32>>,
    /// Post-Sin activation of each MLP layer, `[L, F]` each.
    post: Vec<Vec<f32>>,
    /// Filters by stage: `[N-1, D, L]`.
    pub k: Vec<f32>,
    /// Skip terms by stage: `[N-1, D]`.
    pub bias: Vec<f32>,
}

/// The implicit filter: its config and buffers. The trainable [`FilterParams`] are passed to
/// `forward`/`backward`, so that they live in one place (the operator's parameters).
#[derive(Clone, Debug)]
pub struct HyenaFilter {
    pub buffers: FilterBuffers,
    cfg: HyenaConfig,
}

impl HyenaFilter {
    /// Filter for `cfg`, with buffers computed from the config (`z` lives in the parameters
    /// instead when it is trained).
    pub fn new(cfg: &HyenaConfig) -> Self {
        let mut buffers = FilterBuffers::new(cfg);
        if cfg.filter.learn_pos_emb {
            buffers.z = Arc::new(Vec::new());
        }
        HyenaFilter {
            buffers,
            cfg: cfg.clone(),
        }
    }

    /// The positional embedding `[l_max, E]`: trained (in `p`) or a buffer.
    fn z<'a>(&'a self, p: &'a FilterParams) -> &'a [f32] {
        if self.cfg.filter.learn_pos_emb {
            &p.z
        } else {
            &self.buffers.z
        }
    }

    /// Row of `implicit_filter`'s last weight (and of `bias`, `deltas`) for stage `o`, channel `d`.
    #[inline]
    pub fn channel(&self, o: usize, d: usize) -> usize {
        match self.cfg.filter.layout {
            FilterLayout::Interleaved => d * (self.cfg.order - 1) + o,
            FilterLayout::Blocked => o * self.cfg.d_model + d,
        }
    }

    /// Strided view of the `w_out` rows `[D, F]` that produce stage `o`.
    fn stage_rows(&self, o: usize) -> (usize, usize) {
        let f = self.cfg.filter.filter_order;
        let start = self.channel(o, 0) * f;
        let step = match self.cfg.filter.layout {
            FilterLayout::Interleaved => (self.cfg.order - 1) * f,
            FilterLayout::Blocked => f,
        };
        (start, step)
    }

    /// The `w_out` rows `[D, F]` that produce stage `o`, as a strided view.
    fn stage_weight<'a>(&self, p: &'a FilterParams, o: usize) -> MatRef<'a> {
        let (start, step) = self.stage_rows(o);
        let (d, f) = (self.cfg.d_model, self.cfg.filter.filter_order);
        MatRef {
            data: &p.w_out[start..],
            rows: d,
            cols: f,
            rs: step,
            cs: 1,
        }
    }

    /// Multiply the rows `[D, L]` of stage `o` by their decay windows `exp(-t·|δ|) + shift`
    /// (the same factor in the forward and the backward, since the window is a constant of the
    /// buffers `t`, `deltas`). Rows in parallel; the vectorised `exp` of `ops::act` (relative
    /// error below 2e-8 of libm's) keeps this off the profile at long L.
    fn apply_window(&self, o: usize, rows: &mut [f32], l: usize) {
        use rayon::prelude::*;
        if !self.cfg.filter.modulate || l == 0 {
            return;
        }
        let (t, shift) = (&self.buffers.t[..l], self.cfg.filter.shift);
        rows.par_chunks_mut(l).enumerate().for_each(|(dd, row)| {
            let a = self.buffers.deltas[self.channel(o, dd)].abs();
            window_row(row, t, a, shift);
        });
    }

    /// Evaluate the filters for length `l ≤ l_max` into `cache` (`cache.k: [N-1, D, L]`).
    pub fn forward(&self, p: &FilterParams, l: usize, cache: &mut FilterCache) -> Result<()> {
        const OP: &str = "HyenaFilter forward";
        let cfg = &self.cfg;
        if l > cfg.l_max {
            return Err(Error::TooLong {
                op: OP,
                len: l,
                l_max: cfg.l_max,
            });
        }
        if l == 0 {
            return Err(Error::shape(OP, "sequence length", "L >= 1", 0));
        }
        let (e, f, d, s) = (
            cfg.filter.emb_dim,
            cfg.filter.filter_order,
            cfg.d_model,
            cfg.order - 1,
        );
        let z = self.z(p);
        check_len(OP, "pos_emb.z", z.len(), cfg.l_max * e)?;
        let n_layers = 1 + p.inner_w.len();
        cache.l = l;
        cache.pre.resize(n_layers, Vec::new());
        cache.post.resize(n_layers, Vec::new());
        for i in 0..n_layers {
            cache.pre[i].resize(l * f, 0.0);
            cache.post[i].resize(l * f, 0.0);
        }
        // [L, E] → [L, F] → Sin → ... (all row-major [L, F]).
        linear_forward(&z[..l * e], &p.w0, Some(&p.b0), l, e, f, &mut cache.pre[0])?;
        sin_forward(&cache.pre[0], &p.freq, &mut cache.post[0])?;
        for i in 1..n_layers {
            let (before, after) = cache.post.split_at_mut(i);
            linear_forward(
                &before[i - 1],
                &p.inner_w[i - 1],
                Some(&p.inner_b[i - 1]),
                l,
                f,
                f,
                &mut cache.pre[i],
            )?;
            sin_forward(&cache.pre[i], &p.freq, &mut after[0])?;
        }
        let last = &cache.post[n_layers - 1];
        // k_o [D, L] = W_out[rows of o] [D, F] · lastᵀ [F, L], then the decay window.
        cache.k.resize(s * d * l, 0.0);
        cache.bias.resize(s * d, 0.0);
        for o in 0..s {
            let w = self.stage_weight(p, o);
            let ko = &mut cache.k[o * d * l..(o + 1) * d * l];
            matmul(MatMut::rm(ko, d, l), w, MatRef::tr(last, f, l), false)?;
            for dd in 0..d {
                let ch = self.channel(o, dd);
                cache.bias[o * d + dd] = p.bias[ch];
            }
            self.apply_window(o, ko, l);
        }
        Ok(())
    }

    /// Backward. `dk: [N-1, D, L]` (consumed: used as scratch), `dbias: [N-1, D]`; accumulates
    /// into `grads` (including `z` when it is trained; never into the buffers `t`, `deltas`).
    pub fn backward(
        &self,
        p: &FilterParams,
        dk: &mut [f32],
        dbias: &[f32],
        cache: &FilterCache,
        grads: &mut FilterParams,
    ) -> Result<()> {
        const OP: &str = "HyenaFilter backward";
        let cfg = &self.cfg;
        let l = cache.l;
        let (e, f, d, s) = (
            cfg.filter.emb_dim,
            cfg.filter.filter_order,
            cfg.d_model,
            cfg.order - 1,
        );
        check_len(OP, "dk [N-1, D, L]", dk.len(), s * d * l)?;
        check_len(OP, "dbias [N-1, D]", dbias.len(), s * d)?;
        let n_layers = 1 + p.inner_w.len();
        let last = &cache.post[n_layers - 1];
        let mut dpost = vec![0.0f32; l * f]; // [L, F]
        for o in 0..s {
            let dko = &mut dk[o * d * l..(o + 1) * d * l];
            for dd in 0..d {
                let ch = self.channel(o, dd);
                grads.bias[ch] += dbias[o * d + dd];
            }
            self.apply_window(o, dko, l);
            let (start, step) = self.stage_rows(o);
            // dW_out[rows of o] += dh_o [D, L] · last [L, F]
            let dw = MatMut {
                data: &mut grads.w_out[start..],
                rows: d,
                cols: f,
                rs: step,
                cs: 1,
            };
            matmul(dw, MatRef::rm(dko, d, l), MatRef::rm(last, l, f), true)?;
            // dlast [L, F] += dh_oᵀ [L, D] · W_out[rows of o] [D, F]
            let w = self.stage_weight(p, o);
            matmul(
                MatMut::rm(&mut dpost, l, f),
                MatRef::tr(dko, l, d),
                w,
                o > 0,
            )?;
        }
        let mut dpre = vec![0.0f32; l * f];
        for i in (0..n_layers).rev() {
            sin_backward(&dpost, &cache.pre[i], &p.freq, &mut dpre, &mut grads.freq)?;
            if i > 0 {
                linear_backward(
                    &dpre,
                    &cache.post[i - 1],
                    &p.inner_w[i - 1],
                    (l, f, f),
                    Some(&mut dpost),
                    &mut grads.inner_w[i - 1],
                    Some(&mut grads.inner_b[i - 1]),
                )?;
            } else {
                let z = &self.z(p)[..l * e];
                linear_backward(
                    &dpre,
                    z,
                    &p.w0,
                    (l, e, f),
                    None,
                    &mut grads.w0,
                    Some(&mut grads.b0),
                )?;
                if cfg.filter.learn_pos_emb {
                    // dz[:L] [L, E] += dpre [L, F] · W0 [F, E]
                    let dz = MatMut::rm(&mut grads.z[..l * e], l, e);
                    matmul(dz, MatRef::rm(&dpre, l, f), MatRef::rm(&p.w0, f, e), true)?;
                }
            }
        }
        Ok(())
    }

    /// The configuration this filter was built for.
    pub fn config(&self) -> &HyenaConfig {
        &self.cfg
    }
}

crate::ops::simd_fn! {
    /// `row[i] *= exp(-t[i]·a) + shift` (`a >= 0`, `t >= 0`).
    pub(crate) fn window_row(row: &mut [f32], t: &[f32], a: f32, shift: f32) {
        for (v, &ti) in row.iter_mut().zip(t) {
            *v *= crate::ops::act::exp_nonpos(-ti * a) + shift;
        }
    }
}
