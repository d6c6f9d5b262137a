//! MultiHyena: multi-head Hyena with one implicit filter per head, weight-tied across the
//! channels of the head (Massaroli et al., "Laughing Hyena Distillery", arXiv 2310.18780,
//! which introduces MultiHyena and its weight tying; reference code: mad-lab
//! `mad/model/layers/hyena.py`, `MultiHeadHyenaOperator`, with `fftconv_heads` in
//! `mad/model/layers/ops/fftconv.py`), as a zoo layer (kind "mh-hyena").
//!
//! ```text
//! u [B, L, D] ─in_proj→ z [3D, B, L] ─short_filter→ uc = [x1 | x2 | v], each [D, B, L]
//! per head h (channels h·M .. h·M+M, D = H·M):
//!   kv[i, j, t] = v[hM+i, t] · x2[hM+j, t]                       (M×M outer product)
//!   ỹ[i, j, ·]  = f_h * kv[i, j, ·] + bias_h · kv[i, j, ·]       (causal long conv, ONE filter)
//!   yg[hM+j, t] = Σ_i x1[hM+i, t] · ỹ[i, j, t]
//! y = out_proj(yg)  [B, L, D]
//! ```
//! Equivalently (the slow reference of the tests) linear attention with a causal Toeplitz
//! mixing matrix per head: `yg_t = Σ_{s≤t} f_h(t−s) (x1_t · v_s) x2_s + bias_h (x1_t · v_t) x2_t`.
//! With `M = 1` it is the order-2 Hyena operator (one filter per channel), parameter for
//! parameter.
//!
//! The `H` filters `[H, L]` come from the Hyena implicit filter ([`HyenaFilter`]) configured
//! with `H` output channels and order 2, so the filter MLP, its decay window and its backward
//! are shared with the Hyena operator.
//!
//! Compute, two interchangeable paths ([`MixAlgo`], chosen per call from L and M):
//! - FFT: `B·H·M²` FFT convolutions of length `L` (at D = 128, M = 16: 2048 per sequence), run
//!   by [`FftConv`] over a `[B·H, M², L]` row layout whose "channel" is the pair `(b, h)`: the
//!   filter spectrum is formed once per `(b, h)` (B times per head, `1/M²` of the work) and the
//!   parallel loop runs over the `B·H` pairs. The M² rows of a pair are packed two per complex
//!   FFT. `O(B·D·M·L log L)`.
//! - Direct: the linear-attention form `Y = (T ⊙ Q Kᵀ) V` per `(b, h)` as GEMMs on `[L, L]`
//!   scores. `O(B·D·L²)`, faster while L is below a few dozen times M (e.g. 3× at L = 128,
//!   M = 16), and it keeps no `B·D·M·L` state.
//!
//! Memory (FFT path): the cache keeps `kv` and `ỹ` (`[B, H, M, M, L]` each, i.e. `B·D·M·L`
//! floats) besides the `[3D, B, L]` projections: at B = 64, D = 128, M = 16, L = 128 that is
//! 2 × 16M floats (128 MiB). Keeping `ỹ` spares a second forward convolution in the backward (it is needed for
//! `dx1`); keeping `kv` spares recomputing the outer product. The input spectra are not saved
//! (they would double that again); the backward recomputes them.
//!
//! Not replicated from MAD-lab's `MultiHeadHyenaOperator`: its inherited `proj_groups = 4`
//! (an in_proj of `3D/4` outputs tiled 4×). This layer's in_proj is a full `D → 3D` map.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::{FilterConfig, HyenaConfig};
use crate::error::{Error, Result};
use crate::layers::hyena::filter::{FilterCache, HyenaFilter};
use crate::layers::hyena::Projections;
use crate::layers::layer::{Layer, Slot};
use crate::ops::fftconv::{FftConv, GatedConv, GatedConvGrads, RowLayout};
use crate::ops::linear::{
    matmul, out_proj_cf_backward, out_proj_cf_forward, row_sums_acc, MatMut, MatRef,
};
use crate::ops::set_len;
use crate::ops::short_conv;
use crate::params::{check_params, many_mut, Vb};

/// Configuration of a [`MultiHyena`] layer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MultiHyenaConfig {
    /// Model width D.
    pub d_model: usize,
    /// Number of heads H (= number of long filters); head size `M = D / H`.
    pub n_heads: usize,
    /// Longest sequence; fixes the implicit filter's time grid.
    pub l_max: usize,
    /// Length of the depthwise short filter (3, as in the Hyena operator).
    pub short_filter_order: usize,
    /// The implicit filter (its output has `n_heads` channels).
    pub filter: FilterConfig,
}

impl Default for MultiHyenaConfig {
    fn default() -> Self {
        MultiHyenaConfig::mad(128, 1024)
    }
}

impl MultiHyenaConfig {
    /// The behaviour of mad-lab's `configs/layers/mh-hyena.yml` (not its names): its
    /// `num_heads: 16` ends up as the *head size* (the names are swapped inside), so D = 128
    /// gives 8 heads of size 16, i.e. 8 filters. Here: head size 16, `H = D / 16` (at least 1;
    /// a D that 16 does not divide is rejected by [`MultiHyena::new`]). Filter: MAD's
    /// `HyenaFilter` defaults with `filter_cfg.order: 2` (MLP width 2), emb_dim 3, w 1,
    /// modulate, shift 0; short filter 3.
    pub fn mad(d_model: usize, l_max: usize) -> Self {
        MultiHyenaConfig {
            d_model,
            n_heads: (d_model / 16).max(1),
            l_max,
            short_filter_order: 3,
            filter: FilterConfig {
                emb_dim: 3,
                filter_order: 2,
                w: 1.0,
                modulate: true,
                shift: 0.0,
                ..FilterConfig::default()
            },
        }
    }

    /// Head size `M = D / H` (0 for an invalid config).
    pub fn head_dim(&self) -> usize {
        self.d_model.checked_div(self.n_heads).unwrap_or(0)
    }

    /// The config of the implicit filter: a Hyena operator of order 2 and width `H`, whose
    /// filter outputs `H` channels (one per head).
    pub fn filter_config(&self) -> HyenaConfig {
        HyenaConfig {
            d_model: self.n_heads,
            l_max: self.l_max,
            order: 2,
            short_filter_order: self.short_filter_order,
            filter: self.filter.clone(),
        }
    }

    /// Check every field; the error names the field and what is allowed.
    pub fn validate(&self) -> Result<()> {
        if self.d_model == 0 {
            return Err(Error::config("d_model", 0, "must be >= 1"));
        }
        if self.n_heads == 0 {
            return Err(Error::config("n_heads", 0, "must be >= 1"));
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(Error::config(
                "n_heads",
                self.n_heads,
                format!(
                    "must divide d_model = {} (head size M = d_model / n_heads)",
                    self.d_model
                ),
            ));
        }
        if self.l_max == 0 {
            return Err(Error::config(
                "l_max",
                0,
                "must be >= 1 (the longest sequence length)",
            ));
        }
        if self.short_filter_order == 0 {
            return Err(Error::config(
                "short_filter_order",
                0,
                "must be >= 1 (reference: 3)",
            ));
        }
        self.filter_config().validate()
    }
}

/// Saved activations of [`MultiHyena`]'s forward (buffers are reused across calls).
#[derive(Clone, Debug, Default)]
pub struct MultiHyenaCache {
    b: usize,
    l: usize,
    /// in_proj output with its bias `[3D, B, L]` (the short filter's input).
    z: Vec<f32>,
    /// Short-filter output `[3D, B, L]` = `[x1 | x2 | v]`.
    uc: Vec<f32>,
    /// Outer products `kv [B, H, M, M, L]`.
    kv: Vec<f32>,
    /// Convolved states `ỹ [B, H, M, M, L]`.
    yt: Vec<f32>,
    /// Contracted output `yg [D, B, L]` (out_proj's input).
    yg: Vec<f32>,
    /// Head filters replicated per batch row, `[B·H, L]`, and skips `[B·H]`.
    kb: Vec<f32>,
    db: Vec<f32>,
    filter: FilterCache,
    /// Whether the forward took the direct (quadratic) path.
    direct: bool,
}

/// The MultiHyena layer (kind "mh-hyena"). Parameters, in the flat buffer's order:
/// `in_proj.weight [3D, D]`, `in_proj.bias [3D]`, `short_filter.weight [3D, 1, K]`,
/// `short_filter.bias [3D]`, `filter_fn.bias [H]`, `filter_fn.implicit_filter.*` (the MLP,
/// last layer `[H, F]`), `out_proj.weight [D, D]`, `out_proj.bias [D]`.
#[derive(Clone, Debug)]
pub struct MultiHyena {
    cfg: MultiHyenaConfig,
    proj: Projections,
    filter: HyenaFilter,
    conv: Arc<FftConv>,
    algo: MixAlgo,
}

/// How the heads' state is mixed over time (the same function either way, up to rounding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MixAlgo {
    /// [`MixAlgo::Direct`] when `L <= 24·M`, else [`MixAlgo::Fft`].
    #[default]
    Auto,
    /// `B·H·M²` FFT convolutions of length L: `O(B·D·M·L log L)`.
    Fft,
    /// The quadratic linear-attention form, `O(B·D·L²)` (half of it: the mixing is causal).
    Direct,
}

/// Parameter slices of one flat buffer.
struct View<'a> {
    in_w: &'a [f32],
    in_b: &'a [f32],
    short_w: &'a [f32],
    short_b: &'a [f32],
    out_w: &'a [f32],
    out_b: &'a [f32],
}

impl MultiHyena {
    /// A layer for `cfg` (validated), its tensors registered under `vb`.
    pub fn new(cfg: &MultiHyenaConfig, vb: &Vb<'_, '_>) -> Result<Self> {
        cfg.validate()?;
        let fcfg = cfg.filter_config();
        let (d, k) = (cfg.d_model, cfg.short_filter_order);
        let c = 3 * d;
        let (proj, filter) = Projections::new(vb, (c, d, k), || {
            HyenaFilter::new(&fcfg, &vb.pp("filter_fn").no_decay())
        })?;
        Ok(MultiHyena {
            cfg: cfg.clone(),
            proj,
            filter,
            conv: Arc::new(FftConv::new()),
            algo: MixAlgo::Auto,
        })
    }

    /// The same layer with the mixing algorithm `algo` (default [`MixAlgo::Auto`]).
    pub fn with_algo(mut self, algo: MixAlgo) -> Self {
        self.algo = algo;
        self
    }

    /// The algorithm a forward at length `l` runs: `Fft` or `Direct`.
    ///
    /// Why 24·M: per `(b, h)` the direct form costs a few `L²·M` GEMMs, the FFT form `M²`
    /// convolutions of `O(L log L)` each, so the break-even length grows with M. Measured (the
    /// `timing` test, D = 128, M = 16, 2 threads, forward + backward): L = 128 direct 24 ms vs
    /// FFT 76-84 ms; L = 512 (B = 4) direct 112 ms vs FFT 106 ms.
    pub fn algo_for(&self, l: usize) -> MixAlgo {
        match self.algo {
            MixAlgo::Auto if l <= 24 * self.cfg.head_dim() => MixAlgo::Direct,
            MixAlgo::Auto => MixAlgo::Fft,
            a => a,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MultiHyenaConfig {
        &self.cfg
    }

    fn view<'a>(&self, p: &'a [f32]) -> Result<View<'a>> {
        check_params("mh-hyena", p, self.proj.out_b)?;
        let pr = &self.proj;
        Ok(View {
            in_w: pr.in_w.of(p),
            in_b: pr.in_b.of(p),
            short_w: pr.short_w.of(p),
            short_b: pr.short_b.of(p),
            out_w: pr.out_w.of(p),
            out_b: pr.out_b.of(p),
        })
    }

    /// The head filters for length `l` from parameters `p`: `(k [H, L], bias [H])`, the
    /// implicit filter's output (decay window included).
    pub fn filters(&self, p: &[f32], l: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        self.view(p)?;
        let mut fc = FilterCache::default();
        self.filter.forward(p, l, &mut fc)?;
        Ok((fc.k, fc.bias))
    }

    fn check_dims(&self, op: &'static str, x: usize, b: usize, l: usize) -> Result<()> {
        super::layer::check_batch_len(op, "input x [B, L, D]", b, l, self.cfg.l_max)?;
        let n = b * l * self.cfg.d_model;
        if x != n {
            return Err(Error::shape(
                op,
                "input x [B, L, D]",
                format!("{n} elements"),
                x,
            ));
        }
        Ok(())
    }
}

/// `out[j] = Σ_i a_i[j] · b_i[j]` over the pairs of rows yielded by `rows`.
#[inline]
fn sum_products<'a>(out: &mut [f32], rows: impl Iterator<Item = (&'a [f32], &'a [f32])>) {
    out.fill(0.0);
    for (a, b) in rows {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o += x * y;
        }
    }
}

/// Row `bi` (length `l`) of channel `ch` in a `[C, B, L]` buffer with `B = nb`.
#[inline]
fn row(buf: &[f32], ch: usize, bi: usize, nb: usize, l: usize) -> &[f32] {
    let o = (ch * nb + bi) * l;
    &buf[o..o + l]
}

impl Layer for MultiHyena {
    fn kind(&self) -> &'static str {
        "mh-hyena"
    }
    fn d_model(&self) -> usize {
        self.cfg.d_model
    }
    fn mixes_positions(&self) -> bool {
        true
    }

    /// PyTorch module defaults, drawn in the Hyena operator's order: Linear `U(±1/sqrt(fan_in))`,
    /// depthwise Conv1d `U(±1/sqrt(K))`, the implicit filter's own init ([`HyenaFilter::init`]).
    fn init(&self, p: &mut [f32], rng: &mut StdRng) {
        let mut r = StdRng::seed_from_u64(rng.random());
        let (d, k) = (self.cfg.d_model, self.cfg.short_filter_order);
        self.proj.init(p, &mut r, (3 * d, d, k));
        self.filter.init(p, &mut r);
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
        const OP: &str = "mh-hyena forward";
        self.check_dims(OP, x.len(), b, l)?;
        let (d, h) = (self.cfg.d_model, self.cfg.n_heads);
        let m = self.cfg.head_dim();
        let (bl, mm) = (b * l, m * m);
        if y.len() != bl * d {
            return Err(Error::shape(
                OP,
                "output y [B, L, D]",
                format!("{} elements", bl * d),
                y.len(),
            ));
        }
        let pv = self.view(p)?;
        let c = cache.get_or_default::<MultiHyenaCache>();
        c.b = b;
        c.l = l;
        let nst = b * h * mm * l;
        set_len(&mut c.z, 3 * d * bl);
        set_len(&mut c.uc, 3 * d * bl);
        set_len(&mut c.yg, d * bl);

        // in_proj: z [3D, B·L] = W [3D, D] · xᵀ [D, B·L]; its bias is added inside the short
        // conv's pass over z (channel-first, so each channel's B rows are contiguous).
        matmul(
            MatMut::rm(&mut c.z, 3 * d, bl),
            MatRef::rm(pv.in_w, 3 * d, d),
            MatRef::tr(x, d, bl),
            false,
        )?;
        let lay_c = RowLayout::cbl(b, 3 * d, l);
        short_conv::forward_biased_input(
            &mut c.z,
            pv.in_b,
            pv.short_w,
            pv.short_b,
            self.cfg.short_filter_order,
            lay_c,
            &mut c.uc,
        )?;

        self.filter.forward(p, l, &mut c.filter)?;
        c.direct = self.algo_for(l) == MixAlgo::Direct;
        if c.direct {
            // The kv/ỹ buffers of the FFT path are not needed: free them.
            (c.kv, c.yt) = (Vec::new(), Vec::new());
            direct_forward(c, (b, h, m, l))?;
        } else {
            set_len(&mut c.kv, nst);
            set_len(&mut c.yt, nst);
            // Head filters [H, L] and skips [H], replicated per batch row so that the convolution
            // engine's parallel loop runs over the B·H (batch, head) pairs, not just the H heads.
            set_len(&mut c.kb, b * h * l);
            set_len(&mut c.db, b * h);
            for (kr, dr) in c.kb.chunks_exact_mut(h * l).zip(c.db.chunks_exact_mut(h)) {
                kr.copy_from_slice(&c.filter.k);
                dr.copy_from_slice(&c.filter.bias);
            }

            let chunk = d * bl;
            let (x1, rest) = c.uc.split_at(chunk);
            let (x2, v) = rest.split_at(chunk);
            // kv[b, h, i, j] = v[hM+i] ⊙ x2[hM+j], one (b, h) block of M²·L per task.
            c.kv.par_chunks_mut(mm * l)
                .enumerate()
                .for_each(|(bh, blk)| {
                    let (bi, hi) = (bh / h, bh % h);
                    for (ij, out) in blk.chunks_exact_mut(l).enumerate() {
                        let (i, j) = (ij / m, ij % m);
                        let vr = row(v, hi * m + i, bi, b, l);
                        let xr = row(x2, hi * m + j, bi, b, l);
                        for ((o, &a), &bb) in out.iter_mut().zip(vr).zip(xr) {
                            *o = a * bb;
                        }
                    }
                });
            // ỹ = f_h * kv + bias_h · kv over rows (r = i·M + j, "channel" = b·H + h).
            let lay_s = RowLayout::cbl(mm, b * h, l);
            let args = GatedConv {
                layout: lay_s,
                u: &c.kv,
                pre: None,
                post: None,
                k: &c.kb,
                d: &c.db,
            };
            self.conv.gated_forward(&args, &mut c.yt, None, None)?;
            // yg[hM+j, b] = Σ_i x1[hM+i, b] ⊙ ỹ[b, h, i, j]; one channel per task.
            let yt = &c.yt;
            c.yg.par_chunks_mut(bl).enumerate().for_each(|(ch, out)| {
                let (hi, j) = (ch / m, ch % m);
                for (bi, o) in out.chunks_exact_mut(l).enumerate() {
                    let base = (bi * h + hi) * mm;
                    sum_products(
                        o,
                        (0..m).map(|i| {
                            let r = (base + i * m + j) * l;
                            (row(x1, hi * m + i, bi, b, l), &yt[r..r + l])
                        }),
                    );
                }
            });
        }
        // out_proj: y [B·L, D] = bias + ygᵀ [B·L, D] · Woᵀ.
        out_proj_cf_forward(&c.yg, pv.out_w, pv.out_b, None, (bl, d), y)
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
        const OP: &str = "mh-hyena backward";
        let c = cache.get::<MultiHyenaCache>(OP)?;
        self.check_dims(OP, x.len(), b, l)?;
        if (c.b, c.l) != (b, l) {
            return Err(Error::shape(
                OP,
                "(B, L) of the cached forward",
                format!("({b}, {l})"),
                format!("({}, {})", c.b, c.l),
            ));
        }
        let (d, h) = (self.cfg.d_model, self.cfg.n_heads);
        let m = self.cfg.head_dim();
        let (bl, mm) = (b * l, m * m);
        for (what, len) in [("dy [B, L, D]", dy.len()), ("dx [B, L, D]", dx.len())] {
            if len != bl * d {
                return Err(Error::shape(OP, what, format!("{} elements", bl * d), len));
            }
        }
        if g.len() != p.len() {
            return Err(Error::shape(
                OP,
                "gradient buffer",
                format!("{} elements (as the parameters)", p.len()),
                g.len(),
            ));
        }
        let pv = self.view(p)?;
        let pr = &self.proj;

        // out_proj: dWo += dyᵀ · ygᵀ; dbo += Σ dy; dyg [D, B·L] = Woᵀ · dyᵀ.
        let mut dyg = vec![0.0f32; d * bl];
        {
            let [gw, gb] = many_mut(g, [pr.out_w, pr.out_b]);
            out_proj_cf_backward(
                dy,
                &c.yg,
                pv.out_w,
                (bl, d),
                &mut dyg,
                gw,
                gb,
                &mut Vec::new(),
            )?;
        }

        let chunk = d * bl;
        let (x1, rest) = c.uc.split_at(chunk);
        let (x2, v) = rest.split_at(chunk);
        // duc = [dx1 | dx2 | dv], [3D, B, L]; becomes dz in place (short conv backward).
        let mut duc = vec![0.0f32; 3 * chunk];
        let (dkb, ddb) = if c.direct {
            direct_backward(c, &dyg, &mut duc, (b, h, m, l))?
        } else {
            let (dx1, drest) = duc.split_at_mut(chunk);
            let (dx2, dv) = drest.split_at_mut(chunk);
            // Contraction: dx1[hM+i, b] = Σ_j ỹ[b,h,i,j] ⊙ dyg[hM+j, b].
            let yt = &c.yt;
            dx1.par_chunks_mut(bl).enumerate().for_each(|(ch, out)| {
                let (hi, i) = (ch / m, ch % m);
                for (bi, o) in out.chunks_exact_mut(l).enumerate() {
                    let base = ((bi * h + hi) * mm + i * m) * l;
                    sum_products(
                        o,
                        (0..m).map(|j| {
                            let r = base + j * l;
                            (&yt[r..r + l], row(&dyg, hi * m + j, bi, b, l))
                        }),
                    );
                }
            });
            // dỹ[b,h,i,j] = x1[hM+i, b] ⊙ dyg[hM+j, b].
            let nst = b * h * mm * l;
            let mut dyt = vec![0.0f32; nst];
            dyt.par_chunks_mut(mm * l)
                .enumerate()
                .for_each(|(bh, blk)| {
                    let (bi, hi) = (bh / h, bh % h);
                    for (ij, out) in blk.chunks_exact_mut(l).enumerate() {
                        let (i, j) = (ij / m, ij % m);
                        let a = row(x1, hi * m + i, bi, b, l);
                        let gr = row(&dyg, hi * m + j, bi, b, l);
                        for ((o, &s), &q) in out.iter_mut().zip(a).zip(gr) {
                            *o = s * q;
                        }
                    }
                });
            // The long convolutions: dkv (correlation of dỹ with f_h, plus the skip), and per
            // (b, h) the filter and skip gradients, summed over b below (the filter is shared by
            // the batch and by all M² state entries of the head; the engine sums the latter).
            let lay_s = RowLayout::cbl(mm, b * h, l);
            let args = GatedConv {
                layout: lay_s,
                u: &c.kv,
                pre: None,
                post: None,
                k: &c.kb,
                d: &c.db,
            };
            let mut dkv = vec![0.0f32; nst];
            let mut dkb = vec![0.0f32; b * h * l];
            let mut ddb = vec![0.0f32; b * h];
            self.conv.gated_backward(
                &args,
                &dyt,
                None,
                None,
                GatedConvGrads {
                    du: &mut dkv,
                    dpre: None,
                    dpost: None,
                    dk: &mut dkb,
                    dd: &mut ddb,
                },
            )?;
            drop(dyt);
            // dx2[hM+j, b] = Σ_i dkv[b,h,i,j] ⊙ v[hM+i, b].
            dx2.par_chunks_mut(bl).enumerate().for_each(|(ch, out)| {
                let (hi, j) = (ch / m, ch % m);
                for (bi, o) in out.chunks_exact_mut(l).enumerate() {
                    let base = (bi * h + hi) * mm;
                    sum_products(
                        o,
                        (0..m).map(|i| {
                            let r = (base + i * m + j) * l;
                            (&dkv[r..r + l], row(v, hi * m + i, bi, b, l))
                        }),
                    );
                }
            });
            // dv[hM+i, b] = Σ_j dkv[b,h,i,j] ⊙ x2[hM+j, b].
            dv.par_chunks_mut(bl).enumerate().for_each(|(ch, out)| {
                let (hi, i) = (ch / m, ch % m);
                for (bi, o) in out.chunks_exact_mut(l).enumerate() {
                    let base = ((bi * h + hi) * mm + i * m) * l;
                    sum_products(
                        o,
                        (0..m).map(|j| {
                            let r = base + j * l;
                            (&dkv[r..r + l], row(x2, hi * m + j, bi, b, l))
                        }),
                    );
                }
            });
            drop(dkv);
            (dkb, ddb)
        };

        // Filter: sum the per-(b, h) gradients over b, then the implicit filter's backward.
        let mut dk = vec![0.0f32; h * l];
        let mut dbias = vec![0.0f32; h];
        for (kr, dr) in dkb.chunks_exact(h * l).zip(ddb.chunks_exact(h)) {
            for (a, &s) in dk.iter_mut().zip(kr) {
                *a += s;
            }
            for (a, &s) in dbias.iter_mut().zip(dr) {
                *a += s;
            }
        }
        self.filter.backward(p, &mut dk, &dbias, &c.filter, g)?;

        // short_filter backward in place: duc becomes dz [3D, B·L].
        let lay_c = RowLayout::cbl(b, 3 * d, l);
        {
            let [gw, gb] = many_mut(g, [pr.short_w, pr.short_b]);
            short_conv::backward_inplace(
                &mut duc,
                &c.z,
                pv.short_w,
                self.cfg.short_filter_order,
                lay_c,
                gw,
                gb,
            )?;
        }
        // in_proj: dWi [3D, D] += dz [3D, B·L] · x [B·L, D]; dbi += row sums of dz;
        // dx [B·L, D] = dzᵀ · Wi.
        matmul(
            MatMut::rm(pr.in_w.of_mut(g), 3 * d, d),
            MatRef::rm(&duc, 3 * d, bl),
            MatRef::rm(x, bl, d),
            true,
        )?;
        row_sums_acc(&duc, bl, pr.in_b.of_mut(g));
        matmul(
            MatMut::rm(dx, bl, d),
            MatRef::tr(&duc, bl, 3 * d),
            MatRef::rm(pv.in_w, 3 * d, d),
            false,
        )
    }
}

/// The `[L, M]` view (rows: positions, columns: the head's channels) of head `hi` at batch row
/// `bi` in a channel-first `[D, B, L]` buffer, read in place by the GEMM (no gather pass).
fn head_view(
    buf: &[f32],
    (hi, bi): (usize, usize),
    (nb, m, l): (usize, usize, usize),
) -> MatRef<'_> {
    MatRef {
        data: &buf[(hi * m * nb + bi) * l..],
        rows: l,
        cols: m,
        rs: 1,
        cs: nb * l,
    }
}

/// The transpose of a view (no copy).
fn tr(x: MatRef<'_>) -> MatRef<'_> {
    MatRef {
        data: x.data,
        rows: x.cols,
        cols: x.rows,
        rs: x.cs,
        cs: x.rs,
    }
}

/// Mixing coefficient `T(τ)` of head filter `f [L]` with skip `bias`: `f(0) + bias` at `τ = 0`.
#[inline]
fn toeplitz(f: &[f32], bias: f32, tau: usize) -> f32 {
    if tau == 0 {
        f[0] + bias
    } else {
        f[tau]
    }
}

/// `a[t, s] *= T(t − s)` on and below the diagonal, `0` above: the causal Toeplitz mask of one
/// head applied to an `[L, L]` score matrix.
fn mask_toeplitz(a: &mut [f32], f: &[f32], bias: f32, l: usize) {
    for (t, r) in a.chunks_exact_mut(l).enumerate() {
        let (lo, hi) = r.split_at_mut(t + 1);
        for (s, v) in lo.iter_mut().enumerate() {
            *v *= toeplitz(f, bias, t - s);
        }
        hi.fill(0.0);
    }
}

/// Direct forward, per `(b, h)`: `Y = (T ⊙ Q Kᵀ) V` with `Q = x1`, `K = v`, `V = x2` (`[L, M]`
/// views) and `T` the causal Toeplitz matrix of the head's filter, into `c.yg`. Two small GEMMs
/// per `(b, h)`, each serial inside the parallel loop over the `B·H` pairs. Nothing extra is
/// cached: the backward recomputes `Q Kᵀ` (one GEMM) rather than keeping `B·H·L²` floats.
fn direct_forward(
    c: &mut MultiHyenaCache,
    (b, h, m, l): (usize, usize, usize, usize),
) -> Result<()> {
    let chunk = h * m * b * l;
    let mut yd = vec![0.0f32; b * h * m * l];
    let (x1, rest) = c.uc.split_at(chunk);
    let (x2, v) = rest.split_at(chunk);
    let (fk, fb) = (&c.filter.k, &c.filter.bias);
    let dims = (b, m, l);
    yd.par_chunks_mut(m * l).enumerate().try_for_each_init(
        || vec![0.0f32; l * l],
        |sc, (bh, yo)| {
            let (bi, hi) = (bh / h, bh % h);
            let at = (hi, bi);
            crate::ops::serial(|| {
                let kt = tr(head_view(v, at, dims));
                matmul(MatMut::rm(sc, l, l), head_view(x1, at, dims), kt, false)?;
                mask_toeplitz(sc, &fk[hi * l..(hi + 1) * l], fb[hi], l);
                // Y [L, M] written as its transpose [M, L] (the block's layout).
                matmul(
                    MatMut::tr(yo, l, m),
                    MatRef::rm(sc, l, l),
                    head_view(x2, at, dims),
                    false,
                )
            })
        },
    )?;
    // yg [D, B, L] from the per-(b, h) blocks [M, L].
    c.yg.par_chunks_mut(b * l)
        .enumerate()
        .for_each(|(ch, out)| {
            let (hi, j) = (ch / m, ch % m);
            for (bi, o) in out.chunks_exact_mut(l).enumerate() {
                let r = ((bi * h + hi) * m + j) * l;
                o.copy_from_slice(&yd[r..r + l]);
            }
        });
    Ok(())
}

/// Backward of [`direct_forward`]. With `P = Q Kᵀ`, `A = T ⊙ P` (causal) and `E = dY Vᵀ`:
/// `dV = Aᵀ dY`, `dP = T ⊙ E`, `dQ = dP K`, `dK = dPᵀ Q`, `df(τ) = Σ_{t−s=τ} (E ⊙ P)[t, s]`
/// and `dbias = Σ_t (E ⊙ P)[t, t]` (the skip sits on the diagonal). Writes
/// `duc = [dx1 | dx2 | dv]` and returns the per-`(b, h)` filter and skip gradients
/// `([B·H, L], [B·H])`.
fn direct_backward(
    c: &MultiHyenaCache,
    dyg: &[f32],
    duc: &mut [f32],
    (b, h, m, l): (usize, usize, usize, usize),
) -> Result<(Vec<f32>, Vec<f32>)> {
    let chunk = h * m * b * l;
    let lm = l * m;
    let (x1, rest) = c.uc.split_at(chunk);
    let (x2, v) = rest.split_at(chunk);
    let (fk, fb) = (&c.filter.k, &c.filter.bias);
    let dims = (b, m, l);
    // Per (b, h): [dQ | dV | dK], each [M, L].
    let mut out = vec![0.0f32; b * h * 3 * lm];
    let mut dkb = vec![0.0f32; b * h * l];
    let mut ddb = vec![0.0f32; b * h];
    out.par_chunks_mut(3 * lm)
        .zip(dkb.par_chunks_mut(l))
        .zip(ddb.par_chunks_mut(1))
        .enumerate()
        .try_for_each_init(
            || vec![0.0f32; 2 * l * l],
            |sc, (bh, ((o, dk), db))| {
                let (bi, hi) = (bh / h, bh % h);
                let at = (hi, bi);
                let (pm, em) = sc.split_at_mut(l * l);
                let f = &fk[hi * l..(hi + 1) * l];
                let (q, k, vv) = (
                    head_view(x1, at, dims),
                    head_view(v, at, dims),
                    head_view(x2, at, dims),
                );
                let dy = head_view(dyg, at, dims);
                crate::ops::serial(|| -> Result<()> {
                    matmul(MatMut::rm(pm, l, l), q, tr(k), false)?;
                    matmul(MatMut::rm(em, l, l), dy, tr(vv), false)?;
                    // Filter and skip gradients from E ⊙ P on and below the diagonal.
                    for t in 0..l {
                        let (pr, er) = (&pm[t * l..t * l + t + 1], &em[t * l..t * l + t + 1]);
                        for (s, (&pv, &ev)) in pr.iter().zip(er).enumerate() {
                            dk[t - s] += pv * ev;
                        }
                        db[0] += pr[t] * er[t];
                    }
                    mask_toeplitz(pm, f, fb[hi], l);
                    mask_toeplitz(em, f, fb[hi], l);
                    let (oq, orest) = o.split_at_mut(lm);
                    let (ov, ok) = orest.split_at_mut(lm);
                    // Each [L, M] gradient written as its transpose [M, L].
                    matmul(MatMut::tr(ov, l, m), tr(MatRef::rm(pm, l, l)), dy, false)?;
                    matmul(MatMut::tr(oq, l, m), MatRef::rm(em, l, l), k, false)?;
                    matmul(MatMut::tr(ok, l, m), tr(MatRef::rm(em, l, l)), q, false)
                })
            },
        )?;
    // duc sections x1 → dQ (slot 0), x2 → dV (slot 1), v → dK (slot 2), as [3D, B, L].
    let d = h * m;
    duc.par_chunks_mut(b * l).enumerate().for_each(|(ch, dst)| {
        let (slot, cc) = (ch / d, ch % d);
        let (hi, i) = (cc / m, cc % m);
        for (bi, o) in dst.chunks_exact_mut(l).enumerate() {
            let r = ((bi * h + hi) * 3 + slot) * lm + i * l;
            o.copy_from_slice(&out[r..r + l]);
        }
    });
    Ok((dkb, ddb))
}
