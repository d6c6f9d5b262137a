//! The Hyena operator of order N (Hyena, arXiv 2302.10866, Sec. 3, Alg. 1–3; safari
//! `src/models/sequence/hyena.py`, `HyenaOperator.forward`).
//!
//! ```text
//! u [B, L, D] ─in_proj→ z [(N+1)D, B·L] ─short_filter→ uc = [x_0, …, x_{N-1}, v]
//! v ← conv_o(v ⊙ x_{N-1-o}, k_o) + bias_o ⊙ (v ⊙ x_{N-1-o})   for o = 0..N-2
//! y = out_proj(x_0 ⊙ v)  [B, L, D]
//! ```
//! Activations are channel-first `[C, B, L]` (written straight from the `in_proj` GEMM, no
//! transpose pass), so the B rows of a channel are contiguous and share one filter spectrum.
//! The gates are fused into the FFT convolution kernel ([`crate::ops::fftconv`]).
//!
//! Parameter names are the reference's (`in_proj`, `short_filter`, `filter_fn.*`, `out_proj`).
//!
//! Beside the training forward and backward here: [`filter`] (the implicit filter), [`lean`]
//! (the memory-lean forward of one long sequence) and [`modal`] (a distilled operator's modal
//! filters and its token-by-token step). As a zoo layer (kind `hyena`) the operator has no
//! recurrent form; only a distilled operator steps.

pub mod filter;
pub mod lean;
pub mod modal;

use std::sync::Arc;

use rand::rngs::StdRng;

use self::filter::{FilterCache, HyenaFilter};
use crate::config::HyenaConfig;
use crate::error::{check_len, Error, Result};
use crate::layers::init;
use crate::layers::layer::{Layer, Slot};
use crate::ops::fftconv::{FftConv, GatedConv, GatedConvGrads, RowLayout, Spectra};
use crate::ops::linear::{
    linear_forward, matmul, out_proj_cf_backward, out_proj_cf_forward, row_sums_acc, MatMut, MatRef,
};
use crate::ops::set_len;
use crate::ops::short_conv;
use crate::params::{check_params, many_mut, Vb, P};

/// The operator's input `u [B, L, D]`.
#[derive(Clone, Copy, Debug)]
pub enum OpInput<'a> {
    /// The rows themselves, `[B·L, D]`.
    Rows(&'a [f32]),
    /// Row `t` of `u` is row `idx[t]` of `table [V, D]` (`idx: [B·L]`): an input that depends
    /// on the token alone, like the first block of a language model, which sees
    /// `LN(embedding(token))`. `in_proj` then runs on the V table rows instead of the B·L
    /// positions, and its backward on the per-token sums of the gradient (both are linear in
    /// the rows): 3 of a block's 12 matrix products shrink from B·L rows to V.
    Table { table: &'a [f32], idx: &'a [u32] },
}

impl OpInput<'_> {
    /// Number of rows of the input gradient the backward writes: `B·L`, or `V` for a table.
    pub fn grad_rows(&self, bl: usize, d: usize) -> usize {
        match self {
            OpInput::Rows(_) => bl,
            OpInput::Table { table, .. } => table.len() / d.max(1),
        }
    }
}

/// The tensors around a Hyena-style mixer, named as the reference: `in_proj.{weight, bias}`
/// `[C, D]`, `[C]`, the depthwise `short_filter.{weight, bias}` `[C, 1, K]`, `[C]`, and
/// `out_proj.{weight, bias}` `[D, D]`, `[D]`. Shared by the Hyena operator (`C = (N+1)·D`) and
/// MultiHyena (`C = 3·D`).
#[derive(Clone, Copy, Debug)]
pub struct Projections {
    pub in_w: P,
    pub in_b: P,
    pub short_w: P,
    pub short_b: P,
    pub out_w: P,
    pub out_b: P,
}

impl Projections {
    /// Register the projections under `vb`, with `between` (the mixer's filter) registered
    /// after the short filter and before `out_proj`: the order of the reference state dict.
    pub fn new<T>(
        vb: &Vb<'_, '_>,
        (c, d, k): (usize, usize, usize),
        between: impl FnOnce() -> Result<T>,
    ) -> Result<(Self, T)> {
        let in_w = vb.get(&[c, d], "in_proj.weight")?;
        let in_b = vb.no_decay().get(&[c], "in_proj.bias")?;
        let short_w = vb.get(&[c, 1, k], "short_filter.weight")?;
        let short_b = vb.no_decay().get(&[c], "short_filter.bias")?;
        let t = between()?;
        let out_w = vb.get(&[d, d], "out_proj.weight")?;
        let out_b = vb.no_decay().get(&[d], "out_proj.bias")?;
        Ok((
            Projections {
                in_w,
                in_b,
                short_w,
                short_b,
                out_w,
                out_b,
            },
            t,
        ))
    }

    /// PyTorch module defaults, drawn in the operator's order: `in_proj`, the depthwise Conv1d
    /// (`fan_in = K`), `out_proj`; each `U(±1/sqrt(fan_in))`, weights then biases.
    pub fn init(&self, p: &mut [f32], rng: &mut StdRng, (c, d, k): (usize, usize, usize)) {
        let (w, b) = init::linear(rng, c, d, true);
        self.in_w.of_mut(p).copy_from_slice(&w);
        self.in_b.of_mut(p).copy_from_slice(&b);
        let bound = 1.0 / (k as f32).sqrt();
        self.short_w
            .of_mut(p)
            .copy_from_slice(&init::uniform(rng, c * k, bound));
        self.short_b
            .of_mut(p)
            .copy_from_slice(&init::uniform(rng, c, bound));
        let (w, b) = init::linear(rng, d, d, true);
        self.out_w.of_mut(p).copy_from_slice(&w);
        self.out_b.of_mut(p).copy_from_slice(&b);
    }
}

/// Activations saved by the forward for the backward. Reused across calls (buffers only grow).
#[derive(Clone, Debug, Default)]
pub struct HyenaCache {
    b: usize,
    l: usize,
    /// in_proj output `[C, B, L]`.
    z: Vec<f32>,
    /// in_proj output per table row `[V, C]` (bias included), for an [`OpInput::Table`] input.
    ztab: Vec<f32>,
    /// short-filter output `[C, B, L]` = `[x_0, …, x_{N-1}, v]`.
    uc: Vec<f32>,
    /// Output of each long convolution (before the final gate) `[N-1, D, B, L]`.
    conv: Vec<f32>,
    /// Gated result `x_0 ⊙ v` `[D, B, L]` (input of out_proj).
    yg: Vec<f32>,
    /// Input and filter spectra of each long convolution, for a cheaper backward.
    spectra: Vec<Spectra>,
    filter: FilterCache,
}

impl HyenaCache {
    /// `(B, L)` of the last forward.
    pub fn dims(&self) -> (usize, usize) {
        (self.b, self.l)
    }
    /// in_proj output with its bias, `[C, B, L]` (the short filter's input).
    pub fn z(&self) -> &[f32] {
        &self.z
    }
    /// Short-filter output `[C, B, L]` = `[x_0, …, x_{N-1}, v]`.
    pub fn uc(&self) -> &[f32] {
        &self.uc
    }
    /// Output of each long convolution before the final gate, `[N-1, D, B, L]`.
    pub fn conv(&self) -> &[f32] {
        &self.conv
    }
}

/// Scratch for the backward, reused across steps.
#[derive(Clone, Debug, Default)]
pub struct HyenaGradWorkspace {
    dyg: Vec<f32>,
    /// Ping-pong buffers for the gradients between stages (order > 2 only).
    dstage: [Vec<f32>; 2],
    /// Gradient of the short-filter output, then (in place) of its input.
    duc: Vec<f32>,
    dk: Vec<f32>,
    dbias: Vec<f32>,
    /// `dWoᵀ [D, D]` before it is added into the gradient (scratch of [`out_proj_cf_backward`]).
    dwo_t: Vec<f32>,
    /// Per-table-row sums of the in_proj output gradient `[C, V]` ([`OpInput::Table`]).
    dztab_t: Vec<f32>,
}

/// The Hyena operator.
#[derive(Clone, Debug)]
pub struct HyenaOperator {
    pub cfg: HyenaConfig,
    /// `in_proj`, `short_filter`, `out_proj`.
    pub proj: Projections,
    /// The implicit filter `filter_fn.*` (its tensors outside the weight-decay group, as the
    /// reference trains them).
    pub filter: HyenaFilter,
    conv: Arc<FftConv>,
    /// Explicit long filters `[N-1, D, l_max]` used instead of the implicit filter's output
    /// (e.g. the impulse responses of a distilled model's modal filters); inference only.
    explicit: Option<Arc<Vec<f32>>>,
    /// The modal filters of a distilled operator, which [`HyenaOperator::step`] runs as
    /// recurrences (their impulse responses are `explicit`).
    modal: Option<Arc<modal::ModalBank>>,
}

impl HyenaOperator {
    /// An operator for `cfg` with its tensors registered under `vb` (reference names).
    pub fn new(cfg: &HyenaConfig, vb: &Vb<'_, '_>) -> Result<Self> {
        Self::with_engine(cfg, vb, Arc::new(FftConv::new()))
    }

    /// Like [`HyenaOperator::new`], sharing an FFT engine (plan cache) with other layers.
    pub fn with_engine(cfg: &HyenaConfig, vb: &Vb<'_, '_>, conv: Arc<FftConv>) -> Result<Self> {
        cfg.validate()?;
        let (proj, filter) = Projections::new(vb, Self::dims(cfg), || {
            HyenaFilter::new(cfg, &vb.pp("filter_fn").no_decay())
        })?;
        Ok(HyenaOperator {
            cfg: cfg.clone(),
            proj,
            filter,
            conv,
            explicit: None,
            modal: None,
        })
    }

    /// `(C, D, K)`: in_proj outputs, width, short-filter taps.
    fn dims(cfg: &HyenaConfig) -> (usize, usize, usize) {
        (cfg.inner_channels(), cfg.d_model, cfg.short_filter_order)
    }

    /// Reference-default initialisation (PyTorch module defaults): the projections, then the
    /// implicit filter, from one random stream.
    pub fn init(&self, p: &mut [f32], rng: &mut StdRng) {
        self.proj.init(p, rng, Self::dims(&self.cfg));
        self.filter.init(p, rng);
    }

    /// Use the explicit filters `k [N-1, D, l_max]` instead of the implicit filter (`None`:
    /// back to the implicit filter). The skip terms (`filter_fn.bias`) still apply. An
    /// operator with explicit filters has no backward.
    pub fn set_explicit_filters(&mut self, k: Option<Vec<f32>>) -> Result<()> {
        if let Some(k) = &k {
            let want = (self.cfg.order - 1) * self.cfg.d_model * self.cfg.l_max;
            check_len("set_explicit_filters", "k [N-1, D, l_max]", k.len(), want)?;
        }
        self.explicit = k.map(Arc::new);
        Ok(())
    }

    /// The explicit filters `[N-1, D, l_max]`, if set.
    pub fn explicit_filters(&self) -> Option<&[f32]> {
        self.explicit.as_deref().map(|v| v.as_slice())
    }

    /// Whether explicit filters replace the implicit one.
    pub fn has_explicit_filters(&self) -> bool {
        self.explicit.is_some()
    }

    fn check_input(&self, op: &'static str, input: OpInput<'_>, b: usize, l: usize) -> Result<()> {
        super::layer::check_batch_len(op, "input u [B, L, D]", b, l, self.cfg.l_max)?;
        let d = self.cfg.d_model;
        match input {
            OpInput::Rows(u) if u.len() != b * l * d => Err(Error::shape(
                op,
                "input u [B, L, D]",
                format!("[{b}, {l}, {d}] = {} elements", b * l * d),
                format!("{} elements (D mismatch?)", u.len()),
            )),
            OpInput::Rows(_) => Ok(()),
            OpInput::Table { table, idx } => {
                if table.is_empty() || table.len() % d != 0 {
                    return Err(Error::shape(
                        op,
                        "input table [V, D]",
                        format!("a non-empty multiple of D = {d} elements"),
                        table.len(),
                    ));
                }
                check_len(op, "input rows idx [B·L]", idx.len(), b * l)?;
                let v = table.len() / d;
                match idx.iter().find(|&&i| i as usize >= v) {
                    Some(&i) => Err(Error::shape(
                        op,
                        "input row index",
                        format!("< {v} (table rows)"),
                        i,
                    )),
                    None => Ok(()),
                }
            }
        }
    }

    /// Forward. `u: [B, L, D]` → `y: [B, L, D]` with the parameters of the model buffer `p`;
    /// fills `cache` for [`HyenaOperator::backward`].
    pub fn forward(
        &self,
        p: &[f32],
        u: &[f32],
        b: usize,
        l: usize,
        y: &mut [f32],
        cache: &mut HyenaCache,
    ) -> Result<()> {
        self.forward_input(p, OpInput::Rows(u), None, b, l, y, cache)
    }

    /// [`HyenaOperator::forward`] on an [`OpInput`] (rows or a token table), with
    /// `y = residual + operator(u)` when `residual: [B, L, D]` is given (the block's skip
    /// connection, folded into out_proj's bias pass).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_input(
        &self,
        p: &[f32],
        input: OpInput<'_>,
        residual: Option<&[f32]>,
        b: usize,
        l: usize,
        y: &mut [f32],
        cache: &mut HyenaCache,
    ) -> Result<()> {
        const OP: &str = "HyenaOperator forward";
        self.check_input(OP, input, b, l)?;
        let (cfg, pr) = (&self.cfg, &self.proj);
        let (d, c, n) = (cfg.d_model, cfg.inner_channels(), cfg.order);
        let bl = b * l;
        check_len(OP, "output y [B, L, D]", y.len(), bl * d)?;
        if let Some(r) = residual {
            check_len(OP, "residual [B, L, D]", r.len(), bl * d)?;
        }
        cache.b = b;
        cache.l = l;
        set_len(&mut cache.z, c * bl);
        set_len(&mut cache.uc, c * bl);
        set_len(&mut cache.conv, (n - 1) * d * bl);
        set_len(&mut cache.yg, d * bl);
        cache.spectra.resize_with(n - 1, Spectra::default);
        check_params(OP, p, self.proj.out_b)?;

        let lay_c = RowLayout::cbl(b, c, l);
        match input {
            OpInput::Rows(u) => {
                // in_proj: z [C, B·L] = W [C, D] · uᵀ [D, B·L], then + bias inside the short
                // conv's pass over z.
                matmul(
                    MatMut::rm(&mut cache.z, c, bl),
                    MatRef::rm(pr.in_w.of(p), c, d),
                    MatRef::tr(u, d, bl),
                    false,
                )?;
                short_conv::forward_biased_input(
                    &mut cache.z,
                    pr.in_b.of(p),
                    pr.short_w.of(p),
                    pr.short_b.of(p),
                    cfg.short_filter_order,
                    lay_c,
                    &mut cache.uc,
                )?;
            }
            OpInput::Table { table, idx } => {
                // in_proj of the V table rows, ztab [V, C] = table · Wᵀ + bias, then z [C, B·L]
                // gathered from it.
                let v = table.len() / d;
                set_len(&mut cache.ztab, v * c);
                linear_forward(
                    table,
                    pr.in_w.of(p),
                    Some(pr.in_b.of(p)),
                    v,
                    d,
                    c,
                    &mut cache.ztab,
                )?;
                gather_columns(&cache.ztab, c, idx, &mut cache.z);
                short_conv::forward(
                    &cache.z,
                    pr.short_w.of(p),
                    pr.short_b.of(p),
                    cfg.short_filter_order,
                    lay_c,
                    &mut cache.uc,
                )?;
            }
        }
        match &self.explicit {
            None => self.filter.forward(p, l, &mut cache.filter)?,
            Some(k) => {
                // Rows [N-1, D] of length l_max, truncated to l (a causal filter over l steps
                // only uses its first l taps).
                let (s_d, lm) = ((n - 1) * d, cfg.l_max);
                let fc = &mut cache.filter;
                fc.l = l;
                fc.k.resize(s_d * l, 0.0);
                for (dst, src) in fc.k.chunks_exact_mut(l).zip(k.chunks_exact(lm)) {
                    dst.copy_from_slice(&src[..l]);
                }
                fc.bias.resize(s_d, 0.0);
                let bias = self.filter.bias().of(p);
                for o in 0..n - 1 {
                    for dd in 0..d {
                        fc.bias[o * d + dd] = bias[self.filter.channel(o, dd)];
                    }
                }
            }
        }

        let lay = RowLayout::cbl(b, d, l);
        let chunk = d * bl;
        let x = |i: usize| &cache.uc[i * chunk..(i + 1) * chunk];
        for o in 0..n - 1 {
            // Stage o reads the previous stage's output and writes its own slot of `conv`.
            let (done, rest) = cache.conv.split_at_mut(o * chunk);
            let input = if o == 0 {
                x(n)
            } else {
                &done[(o - 1) * chunk..]
            };
            let conv_o = &mut rest[..chunk];
            let spec_o = &mut cache.spectra[o];
            let args = GatedConv {
                layout: lay,
                u: input,
                pre: Some(x(n - 1 - o)),
                post: if o == n - 2 { Some(x(0)) } else { None },
                k: &cache.filter.k[o * d * l..(o + 1) * d * l],
                d: &cache.filter.bias[o * d..(o + 1) * d],
            };
            if o == n - 2 {
                self.conv
                    .gated_forward(&args, &mut cache.yg, Some(conv_o), Some(spec_o))?;
            } else {
                self.conv.gated_forward(&args, conv_o, None, Some(spec_o))?;
            }
        }
        // out_proj: y [B·L, D] = (residual +) ygᵀ [B·L, D] · Woᵀ + bias.
        out_proj_cf_forward(
            &cache.yg,
            pr.out_w.of(p),
            pr.out_b.of(p),
            residual,
            (bl, d),
            y,
        )
    }

    /// Backward of the last [`HyenaOperator::forward`] on `u` (which filled `cache`).
    /// Writes `du: [B, L, D]`, *accumulates* parameter gradients into `g` (laid out like `p`).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        p: &[f32],
        dy: &[f32],
        u: &[f32],
        cache: &HyenaCache,
        du: &mut [f32],
        g: &mut [f32],
        ws: &mut HyenaGradWorkspace,
    ) -> Result<()> {
        self.backward_input(p, dy, OpInput::Rows(u), cache, du, g, ws)
    }

    /// Backward of [`HyenaOperator::forward_input`] on the same `input`. `du` is
    /// `[B·L, D]` for rows and `[V, D]` for a table (each table row's gradient summed over the
    /// positions that use it; see [`OpInput::grad_rows`]).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_input(
        &self,
        p: &[f32],
        dy: &[f32],
        input: OpInput<'_>,
        cache: &HyenaCache,
        du: &mut [f32],
        g: &mut [f32],
        ws: &mut HyenaGradWorkspace,
    ) -> Result<()> {
        const OP: &str = "HyenaOperator backward";
        if self.explicit.is_some() {
            return Err(Error::config(
                "HyenaOperator backward",
                "explicit (distilled) filters",
                "a distilled operator is for inference; train the original model instead",
            ));
        }
        let (b, l) = (cache.b, cache.l);
        self.check_input(OP, input, b, l)?;
        let (cfg, pr) = (&self.cfg, &self.proj);
        let (d, c, n) = (cfg.d_model, cfg.inner_channels(), cfg.order);
        let bl = b * l;
        check_len(OP, "dy [B, L, D]", dy.len(), bl * d)?;
        check_len(
            OP,
            "du (input gradient rows × D)",
            du.len(),
            input.grad_rows(bl, d) * d,
        )?;
        let chunk = d * bl;
        check_params(OP, p, self.proj.out_b)?;
        set_len(&mut ws.dyg, chunk);
        set_len(&mut ws.duc, c * bl);
        set_len(&mut ws.dk, (n - 1) * d * l);
        set_len(&mut ws.dbias, (n - 1) * d);

        // out_proj: dWo += dyᵀ · ygᵀ; dbo += Σ dy; dyg [D, B·L] = Woᵀ · dyᵀ.
        let [gw, gb] = many_mut(g, [pr.out_w, pr.out_b]);
        out_proj_cf_backward(
            dy,
            &cache.yg,
            pr.out_w.of(p),
            (bl, d),
            &mut ws.dyg,
            gw,
            gb,
            &mut ws.dwo_t,
        )?;

        // Long convolutions, last stage first. The gradient w.r.t. a stage's input becomes the
        // upstream gradient of the previous stage; stage 0's input is v.
        let lay = RowLayout::cbl(b, d, l);
        let x = |i: usize| &cache.uc[i * chunk..(i + 1) * chunk];
        let HyenaGradWorkspace {
            dyg,
            dstage,
            duc,
            dk,
            dbias,
            ..
        } = &mut *ws;
        // Which buffer holds the upstream gradient: 2 = dyg, 0/1 = dstage[0/1] (ping-pong, order > 2).
        let mut up = 2usize;
        for o in (0..n - 1).rev() {
            let input = if o == 0 {
                x(n)
            } else {
                &cache.conv[(o - 1) * chunk..o * chunk]
            };
            let last = o == n - 2;
            let args = GatedConv {
                layout: lay,
                u: input,
                pre: Some(x(n - 1 - o)),
                post: if last { Some(x(0)) } else { None },
                k: &cache.filter.k[o * d * l..(o + 1) * d * l],
                d: &cache.filter.bias[o * d..(o + 1) * d],
            };
            let (s0, s1) = dstage.split_at_mut(1);
            let (upstream, spare, next): (&[f32], &mut Vec<f32>, usize) = match up {
                2 => (dyg, &mut s0[0], 0),
                0 => (&s0[0], &mut s1[0], 1),
                _ => (&s1[0], &mut s0[0], 0),
            };
            // duc = [dx_0 | dx_1 … dx_{N-1} | dv]
            let (x0_and_mid, v_part) = duc.split_at_mut(n * chunk);
            let (x0_part, mid) = x0_and_mid.split_at_mut(chunk);
            let pre_idx = n - 1 - o; // gate index in 1..=N-1
            let dpre = &mut mid[(pre_idx - 1) * chunk..pre_idx * chunk];
            let dinput: &mut [f32] = if o == 0 {
                v_part
            } else {
                set_len(spare, chunk);
                spare
            };
            let conv_o = &cache.conv[o * chunk..(o + 1) * chunk];
            self.conv.gated_backward(
                &args,
                upstream,
                if last { Some(conv_o) } else { None },
                Some(&cache.spectra[o]),
                GatedConvGrads {
                    du: dinput,
                    dpre: Some(dpre),
                    dpost: if last { Some(x0_part) } else { None },
                    dk: &mut dk[o * d * l..(o + 1) * d * l],
                    dd: &mut dbias[o * d..(o + 1) * d],
                },
            )?;
            up = next;
        }
        self.filter
            .backward(p, &mut ws.dk, &ws.dbias, &cache.filter, g)?;

        // short_filter backward, in place: duc becomes dz [C, B·L], the in_proj output gradient.
        let lay_c = RowLayout::cbl(b, c, l);
        let [gw, gb] = many_mut(g, [pr.short_w, pr.short_b]);
        short_conv::backward_inplace(
            &mut ws.duc,
            &cache.z,
            pr.short_w.of(p),
            cfg.short_filter_order,
            lay_c,
            gw,
            gb,
        )?;
        // in_proj: with A [C, n] the output gradient per input row and X [n, D] those rows,
        // dWi += A · X, dbi += row sums of A, du [n, D] = Aᵀ · Wi. For a table input,
        // z[:, t] = W · table[idx[t]] + b is linear in the row, so A = S [C, V] with
        // S[:, r] = Σ_{t: idx[t] = r} dz[:, t] and X = the table.
        let (a, n, x): (&[f32], usize, &[f32]) = match input {
            OpInput::Rows(u) => (&ws.duc, bl, u),
            OpInput::Table { table, idx } => {
                let v = table.len() / d;
                set_len(&mut ws.dztab_t, c * v);
                scatter_columns(&ws.duc, bl, idx, v, &mut ws.dztab_t);
                (&ws.dztab_t, v, table)
            }
        };
        matmul(
            MatMut::rm(pr.in_w.of_mut(g), c, d),
            MatRef::rm(a, c, n),
            MatRef::rm(x, n, d),
            true,
        )?;
        row_sums_acc(a, n, pr.in_b.of_mut(g));
        matmul(
            MatMut::rm(du, n, d),
            MatRef::tr(a, n, c),
            MatRef::rm(pr.in_w.of(p), c, d),
            false,
        )
    }
}

/// `z[c, t] = tab[idx[t], c]` for `tab: [V, C]` (row-major), `z: [C, T]`, `T = idx.len()`.
fn gather_columns(tab: &[f32], c: usize, idx: &[u32], z: &mut [f32]) {
    use rayon::prelude::*;
    let t = idx.len();
    z.par_chunks_mut(t).enumerate().for_each(|(ch, row)| {
        let col: Vec<f32> = tab.iter().skip(ch).step_by(c).copied().collect();
        for (zt, &i) in row.iter_mut().zip(idx) {
            *zt = col[i as usize];
        }
    });
}

/// `s[c, r] = Σ_{t: idx[t] = r} dz[c, t]` for `dz: [C, T]`, `s: [C, V]` (written). Each
/// channel's sum runs in four interleaved banks (t mod 4), added in a fixed order at the end:
/// repeated tokens then do not form one serial chain of dependent adds, and the result does
/// not depend on the thread count.
fn scatter_columns(dz: &[f32], t: usize, idx: &[u32], v: usize, s: &mut [f32]) {
    use rayon::prelude::*;
    s.par_chunks_mut(v).zip(dz.par_chunks(t)).for_each_init(
        || vec![0.0f32; 4 * v],
        |banks, (out, row)| {
            banks.fill(0.0);
            let (b01, b23) = banks.split_at_mut(2 * v);
            let (b0, b1) = b01.split_at_mut(v);
            let (b2, b3) = b23.split_at_mut(v);
            let mut quads = row.chunks_exact(4).zip(idx.chunks_exact(4));
            for (g, i) in &mut quads {
                b0[i[0] as usize] += g[0];
                b1[i[1] as usize] += g[1];
                b2[i[2] as usize] += g[2];
                b3[i[3] as usize] += g[3];
            }
            let tail = row.len() / 4 * 4;
            for (g, &i) in row[tail..].iter().zip(&idx[tail..]) {
                b0[i as usize] += g;
            }
            for (r, o) in out.iter_mut().enumerate() {
                *o = (b0[r] + b1[r]) + (b2[r] + b3[r]);
            }
        },
    );
}

/// The operator's forward activations and backward scratch, kept together when it runs as a
/// zoo layer (the scratch is reused from step to step: fresh buffers would page-fault).
#[derive(Default)]
struct LayerState {
    cache: HyenaCache,
    ws: HyenaGradWorkspace,
}

impl Layer for HyenaOperator {
    fn kind(&self) -> &'static str {
        "hyena"
    }
    fn d_model(&self) -> usize {
        self.cfg.d_model
    }
    fn mixes_positions(&self) -> bool {
        true
    }
    /// The reference-default init from a stream of its own, seeded from `rng` (so that a zoo
    /// model draws the same values whatever the operator draws).
    fn init(&self, p: &mut [f32], rng: &mut StdRng) {
        use rand::{Rng, SeedableRng};
        HyenaOperator::init(self, p, &mut StdRng::seed_from_u64(rng.random()));
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
        HyenaOperator::forward(
            self,
            p,
            x,
            b,
            l,
            y,
            &mut cache.get_or_default::<LayerState>().cache,
        )
    }
    fn backward(
        &self,
        p: &[f32],
        x: &[f32],
        dy: &[f32],
        _b: usize,
        _l: usize,
        cache: &mut Slot,
        dx: &mut [f32],
        g: &mut [f32],
    ) -> Result<()> {
        let st = cache.get_mut::<LayerState>("hyena layer")?;
        HyenaOperator::backward(self, p, dy, x, &st.cache, dx, g, &mut st.ws)
    }
}
