//! The implicit long filter of Hyena (Hyena, arXiv 2302.10866, Sec. 3.3; safari
//! `src/models/sequence/hyena.py`: `HyenaFilter`, `PositionalEmbedding`, `ExponentialModulation`).
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
use crate::layers::init;
use crate::ops::act::{sin_backward, sin_forward};
use crate::ops::linear::{linear_backward, linear_forward, matmul, MatMut, MatRef};
use crate::params::{many_mut, TensorSource, Vb, P};

/// Handles of the filter's trainable tensors (names under the filter's prefix, the
/// reference's `filter_fn.*`).
#[derive(Clone, Debug)]
pub(crate) struct FilterHandles {
    /// `bias` [C_f]: the per-channel skip `D` of the long convolutions.
    pub(crate) bias: P,
    /// `implicit_filter.0.weight` [F, E], `.0.bias` [F].
    pub(crate) w0: P,
    pub(crate) b0: P,
    /// `implicit_filter.1.freq` [1, F], shared by all Sin activations.
    pub(crate) freq: P,
    /// `implicit_filter.{2+2i}.weight` [F, F] and `.bias` [F], for i < num_inner_mlps.
    pub(crate) inner_w: Vec<P>,
    pub(crate) inner_b: Vec<P>,
    /// `implicit_filter.{2+2n}.weight` [C_f, F] (no bias).
    pub(crate) w_out: P,
    /// `pos_emb.z` [1, l_max, E] when it is trained (`learn_pos_emb`); otherwise the filter
    /// reads [`FilterBuffers::z`].
    pub(crate) z: Option<P>,
}

/// Non-trainable state of the filter: `pos_emb.z` [1, l_max, E] (unless it is trained), `pos_emb.t` [1, l_max, 1], `modulation.deltas` [1, 1, C_f]. Stored in
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
    /// Recompute the buffers from the config, as safari's `PositionalEmbedding` and
    /// `ExponentialModulation` constructors define them (the linspaces evaluated in f64, then
    /// rounded). Values agree with PyTorch's f32 ones to float rounding; load them from the
    /// checkpoint for bit-exact parity.
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

    /// `(name, shape, values)` of the buffers under `prefix` (the filter's checkpoint prefix):
    /// `pos_emb.z` (when it is a buffer), `pos_emb.t`, `modulation.deltas`.
    pub fn tensors(&self, prefix: &str, lm: usize, e: usize) -> Vec<(String, Vec<usize>, &[f32])> {
        let mut v: Vec<(String, Vec<usize>, &[f32])> = Vec::with_capacity(3);
        if !self.z.is_empty() {
            v.push((format!("{prefix}pos_emb.z"), vec![1, lm, e], &self.z));
        }
        v.push((format!("{prefix}pos_emb.t"), vec![1, lm, 1], &self.t));
        v.push((
            format!("{prefix}modulation.deltas"),
            vec![1, 1, self.deltas.len()],
            &self.deltas,
        ));
        v
    }

    /// Read the buffers under `prefix` from `src`. `z` and `t` equal to `prev`'s (the block
    /// before, already loaded) share its copy instead of holding their own.
    ///
    /// `required`: every buffer must be present with exactly its shape (hyena checkpoints).
    /// Otherwise (reference checkpoints) a missing buffer keeps the value computed from the
    /// config, and a stored shape that differs only in singleton axes is accepted.
    pub fn load(
        &mut self,
        prefix: &str,
        (lm, e): (usize, usize),
        src: &dyn TensorSource,
        required: bool,
        prev: Option<&FilterBuffers>,
    ) -> Result<()> {
        let wanted: Vec<(String, Vec<usize>)> = self
            .tensors(prefix, lm, e)
            .into_iter()
            .map(|(n, s, _)| (n, s))
            .collect();
        for (name, shape) in wanted {
            let numel: usize = shape.iter().product();
            match src.shape_of(&name) {
                None if required => {
                    return Err(Error::MissingTensor {
                        file: src.origin(),
                        name,
                        available: src.names().len(),
                    })
                }
                None => continue,
                Some(s) if s == shape || (!required && s.iter().product::<usize>() == numel) => {}
                Some(s) => {
                    return Err(Error::format(
                        src.origin(),
                        format!(
                            "tensor `{name}` has shape {s:?}, expected {shape:?}: the config's \
                             max_seq_len/l_max or emb_dim disagrees with the weights"
                        ),
                    ))
                }
            }
            let mut data = vec![0.0f32; numel];
            src.read_f32(&name, &mut data)?;
            let shared = |own: &mut Arc<Vec<f32>>, theirs: Option<&Arc<Vec<f32>>>| match theirs {
                Some(p) if p.as_slice() == data.as_slice() => *own = p.clone(),
                _ => *own = Arc::new(data.clone()),
            };
            if name.ends_with("pos_emb.z") {
                shared(&mut self.z, prev.map(|p| &p.z));
            } else if name.ends_with("pos_emb.t") {
                shared(&mut self.t, prev.map(|p| &p.t));
            } else {
                self.deltas.copy_from_slice(&data);
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

/// The implicit filter: its config, the handles of its trainable tensors and its buffers.
#[derive(Clone, Debug)]
pub struct HyenaFilter {
    pub buffers: FilterBuffers,
    cfg: HyenaConfig,
    h: FilterHandles,
    /// The checkpoint prefix of this filter (`….filter_fn.`), where its buffers are saved.
    prefix: String,
}

impl HyenaFilter {
    /// The filter for `cfg`, its tensors registered under `vb` (the reference names, in the
    /// order of its state dict), with buffers computed from the config (`z` is a parameter
    /// instead when it is trained). The caller decides the tags: the reference trains the
    /// filter without weight decay.
    pub fn new(cfg: &HyenaConfig, vb: &Vb<'_, '_>) -> Result<Self> {
        let (e, f, cf) = (
            cfg.filter.emb_dim,
            cfg.filter.filter_order,
            cfg.filter_channels(),
        );
        let n = cfg.filter.num_inner_mlps;
        let mlp = vb.pp("implicit_filter");
        let bias = vb.get(&[cf], "bias")?;
        let w0 = mlp.get(&[f, e], "0.weight")?;
        let b0 = mlp.get(&[f], "0.bias")?;
        let freq = mlp.get(&[1, f], "1.freq")?;
        let (mut inner_w, mut inner_b) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            inner_w.push(mlp.get(&[f, f], &format!("{}.weight", 2 + 2 * i))?);
            inner_b.push(mlp.get(&[f], &format!("{}.bias", 2 + 2 * i))?);
        }
        let w_out = mlp.get(&[cf, f], &format!("{}.weight", 2 + 2 * n))?;
        let z = if cfg.filter.learn_pos_emb {
            Some(vb.get(&[1, cfg.l_max, e], "pos_emb.z")?)
        } else {
            None
        };
        let mut buffers = FilterBuffers::new(cfg);
        if cfg.filter.learn_pos_emb {
            buffers.z = Arc::new(Vec::new());
        }
        Ok(HyenaFilter {
            buffers,
            cfg: cfg.clone(),
            h: FilterHandles {
                bias,
                w0,
                b0,
                freq,
                inner_w,
                inner_b,
                w_out,
                z,
            },
            prefix: vb.name(""),
        })
    }

    /// PyTorch module defaults: Linear `U(±1/sqrt(fan_in))`, `bias ~ N(0, 1)`, `freq = w`, and
    /// a trained `z` starts at the computed positional embedding.
    pub fn init(&self, p: &mut [f32], rng: &mut StdRng) {
        let (e, f, cf) = (
            self.cfg.filter.emb_dim,
            self.cfg.filter.filter_order,
            self.cfg.filter_channels(),
        );
        let h = &self.h;
        let (w0, b0) = init::linear(rng, f, e, true);
        h.w0.of_mut(p).copy_from_slice(&w0);
        h.b0.of_mut(p).copy_from_slice(&b0);
        h.freq.of_mut(p).fill(self.cfg.filter.w);
        for (w, b) in h.inner_w.iter().zip(&h.inner_b) {
            let (iw, ib) = init::linear(rng, f, f, true);
            w.of_mut(p).copy_from_slice(&iw);
            b.of_mut(p).copy_from_slice(&ib);
        }
        h.w_out
            .of_mut(p)
            .copy_from_slice(&init::linear(rng, cf, f, false).0);
        h.bias.of_mut(p).copy_from_slice(&init::randn(rng, cf, 1.0));
        if let Some(z) = h.z {
            z.of_mut(p)
                .copy_from_slice(&FilterBuffers::new(&self.cfg).z);
        }
    }

    /// The linear layers of the filter MLP that get the LM initialisation `N(0, σ)` (every
    /// `nn.Linear` of the model is re-drawn there): `(weight, bias)` pairs in order, the
    /// output layer without a bias last.
    pub fn linears(&self) -> Vec<(P, Option<P>)> {
        let h = &self.h;
        let mut v = vec![(h.w0, Some(h.b0))];
        v.extend(
            h.inner_w
                .iter()
                .zip(&h.inner_b)
                .map(|(w, b)| (*w, Some(*b))),
        );
        v.push((h.w_out, None));
        v
    }

    /// The skip weights `bias [C_f]` (the reference's `filter_fn.bias`).
    pub fn bias(&self) -> P {
        self.h.bias
    }

    /// The buffers with their checkpoint names, for saving.
    pub fn buffer_tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        self.buffers
            .tensors(&self.prefix, self.cfg.l_max, self.cfg.filter.emb_dim)
    }

    /// Read the buffers from `src` under this filter's checkpoint prefix (see
    /// [`FilterBuffers::load`]).
    pub fn load_buffers(
        &mut self,
        src: &dyn TensorSource,
        required: bool,
        prev: Option<&FilterBuffers>,
    ) -> Result<()> {
        let dims = (self.cfg.l_max, self.cfg.filter.emb_dim);
        let prefix = self.prefix.clone();
        self.buffers.load(&prefix, dims, src, required, prev)
    }

    /// The handles of the filter's tensors (the lean forward reads them directly).
    pub(crate) fn handles(&self) -> &FilterHandles {
        &self.h
    }

    /// The positional embedding `[l_max, E]`: trained (in `p`) or a buffer.
    pub(crate) fn pos_emb<'a>(&'a self, p: &'a [f32]) -> &'a [f32] {
        match self.h.z {
            Some(z) => z.of(p),
            None => &self.buffers.z,
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
    fn stage_weight<'a>(&self, p: &'a [f32], o: usize) -> MatRef<'a> {
        let (start, step) = self.stage_rows(o);
        let (d, f) = (self.cfg.d_model, self.cfg.filter.filter_order);
        MatRef {
            data: &self.h.w_out.of(p)[start..],
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
    pub fn forward(&self, p: &[f32], l: usize, cache: &mut FilterCache) -> Result<()> {
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
        let z = self.pos_emb(p);
        check_len(OP, "pos_emb.z", z.len(), cfg.l_max * e)?;
        let h = &self.h;
        let n_layers = 1 + h.inner_w.len();
        cache.l = l;
        cache.pre.resize(n_layers, Vec::new());
        cache.post.resize(n_layers, Vec::new());
        for i in 0..n_layers {
            cache.pre[i].resize(l * f, 0.0);
            cache.post[i].resize(l * f, 0.0);
        }
        // [L, E] → [L, F] → Sin → ... (all row-major [L, F]).
        let freq = h.freq.of(p);
        linear_forward(
            &z[..l * e],
            h.w0.of(p),
            Some(h.b0.of(p)),
            l,
            e,
            f,
            &mut cache.pre[0],
        )?;
        sin_forward(&cache.pre[0], freq, &mut cache.post[0])?;
        for i in 1..n_layers {
            let (before, after) = cache.post.split_at_mut(i);
            linear_forward(
                &before[i - 1],
                h.inner_w[i - 1].of(p),
                Some(h.inner_b[i - 1].of(p)),
                l,
                f,
                f,
                &mut cache.pre[i],
            )?;
            sin_forward(&cache.pre[i], freq, &mut after[0])?;
        }
        let last = &cache.post[n_layers - 1];
        // k_o [D, L] = W_out[rows of o] [D, F] · lastᵀ [F, L], then the decay window.
        cache.k.resize(s * d * l, 0.0);
        cache.bias.resize(s * d, 0.0);
        for o in 0..s {
            let w = self.stage_weight(p, o);
            let ko = &mut cache.k[o * d * l..(o + 1) * d * l];
            matmul(MatMut::rm(ko, d, l), w, MatRef::tr(last, f, l), false)?;
            let bias = h.bias.of(p);
            for dd in 0..d {
                let ch = self.channel(o, dd);
                cache.bias[o * d + dd] = bias[ch];
            }
            self.apply_window(o, ko, l);
        }
        Ok(())
    }

    /// Backward. `dk: [N-1, D, L]` (consumed: used as scratch), `dbias: [N-1, D]`; accumulates
    /// into the gradient buffer `g` (including `z` when it is trained; never into the buffers
    /// `t`, `deltas`).
    pub fn backward(
        &self,
        p: &[f32],
        dk: &mut [f32],
        dbias: &[f32],
        cache: &FilterCache,
        g: &mut [f32],
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
        let h = &self.h;
        let n_layers = 1 + h.inner_w.len();
        let last = &cache.post[n_layers - 1];
        let mut dpost = vec![0.0f32; l * f]; // [L, F]
        for o in 0..s {
            let dko = &mut dk[o * d * l..(o + 1) * d * l];
            let gbias = h.bias.of_mut(g);
            for dd in 0..d {
                let ch = self.channel(o, dd);
                gbias[ch] += dbias[o * d + dd];
            }
            self.apply_window(o, dko, l);
            let (start, step) = self.stage_rows(o);
            // dW_out[rows of o] += dh_o [D, L] · last [L, F]
            let dw = MatMut {
                data: &mut h.w_out.of_mut(g)[start..],
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
            sin_backward(
                &dpost,
                &cache.pre[i],
                h.freq.of(p),
                &mut dpre,
                h.freq.of_mut(g),
            )?;
            if i > 0 {
                let [gw, gb] = many_mut(g, [h.inner_w[i - 1], h.inner_b[i - 1]]);
                linear_backward(
                    &dpre,
                    &cache.post[i - 1],
                    h.inner_w[i - 1].of(p),
                    (l, f, f),
                    Some(&mut dpost),
                    gw,
                    Some(gb),
                )?;
            } else {
                let z = &self.pos_emb(p)[..l * e];
                let [gw, gb] = many_mut(g, [h.w0, h.b0]);
                linear_backward(&dpre, z, h.w0.of(p), (l, e, f), None, gw, Some(gb))?;
                if let Some(hz) = h.z {
                    // dz[:L] [L, E] += dpre [L, F] · W0 [F, E]
                    let dz = MatMut::rm(&mut hz.of_mut(g)[..l * e], l, e);
                    matmul(
                        dz,
                        MatRef::rm(&dpre, l, f),
                        MatRef::rm(h.w0.of(p), f, e),
                        true,
                    )?;
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
