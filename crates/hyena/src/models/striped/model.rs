//! The StripedHyena 2 language model (Evo 2) for inference: structure, loading from any
//! [`TensorSource`] (a released `.pt`, a converted safetensors file) and the forward pass over
//! one sequence, with named intermediate outputs.
//!
//! Numerics follow vortex (`vortex/model/model.py`, `engine.py`, `layers.py`, `attention.py`;
//! `hyena-family.md` section 8.3), block `i` on the residual stream `x [L, D]`:
//!
//! ```text
//! Hyena (SE / MR / LI):
//!   z   = projections(RMSNorm(x))                     [L, 3D]  (no bias in Evo 2)
//!   zc  = FIR_3(z)                                    depthwise, cross-correlation order
//!   post, pre, v = zc[:, 0::3], zc[:, 1::3], zc[:, 2::3]        (the interleave)
//!   u   = pre ⊙ v
//!   y   = post ⊙ inner(u)                             "blocks.i.filter"
//!         SE: FIR_7(u), correlation order, filters shared by C/G channels, no D
//!         MR: FIR_128(u), convolution order, grouped, + D ⊙ u
//!         LI: Σ_n R ⊙ (e^{a} recurrence)(u) + D ⊙ u   (ops::modal; the reference: FFT)
//!   x  += out_filter_dense(y)
//! Attention:
//!   qkv = Wqkv(RMSNorm(x)); rotary on q, k; causal softmax; x += out_proj(·)
//! Both:
//!   x  += l3(act(l1(RMSNorm(x))) ⊙ l2(RMSNorm(x)))   act = GELU (erf) in block 0, identity
//!                                                       after (evo2_style_activations)
//! logits = RMSNorm(x) · Eᵀ                            tied embeddings
//! ```
//!
//! RMSNorm adds eps to the RMS (ops::norm::rmsnorm_rms_eps_forward) unless the config asks for
//! the flash form. Attention's `Wqkv` rows are used in the file's order: with `column_split`
//! (all Evo 2 configs) they are grouped per head as `[q | k | v]` blocks of the head width, and
//! the forward reads q, k and v of head `h` from those rows — the same as vortex permuting the
//! rows to `[Q; K; V]` at load, without rewriting the tensor.
//!
//! **Storage.** The weights live in one [`ParamStore`] in the checkpoint's precision (bf16 for
//! released models: never widened as a whole; [`Weight::widen`] widens one matrix at a time
//! into a reused buffer). The LI log-poles and residues and the rotary `inv_freq` buffers stay
//! f32, as in the released files, in a second small f32 store (`exact`).

use crate::error::{Error, Result};
use crate::models::striped::config::{BlockKind, Evo2Config};
use crate::ops::act::gelu_erf_inplace;
use crate::ops::attention::{causal_attention, rotary_inplace};
use crate::ops::fir::{expand_taps, fir_forward, FirOrder, FirShape};
use crate::models::Precision;
use crate::ops::bf16::{linear_bf16, Bf16Scratch};
use crate::ops::linear::{linear_weight, Weight};
use crate::ops::loss::log_prob;
use crate::ops::modal::modal_forward;
use crate::ops::norm::{rmsnorm_forward, rmsnorm_rms_eps_forward};
use std::sync::Arc;

use crate::io::mapped::MappedSafetensors;
use crate::params::{
    DType, IgnoredKey, InPlaceSource, Init, ParamStore, TensorSource, Tracked, Vb, P,
};

/// Tensors of released checkpoints that the model does not use (`hyena-family.md` 8.5).
pub const LEFTOVER_KEYS: &[IgnoredKey] = &[
    IgnoredKey {
        pattern: "blocks.*.mixer.mixer.filter.t",
        reason: "a time grid left in the released files; recomputed",
    },
    IgnoredKey {
        pattern: "blocks.*.filter.t",
        reason: "a time grid; recomputed",
    },
    IgnoredKey {
        pattern: "unembed.weight",
        reason: "a copy of the tied embedding",
    },
];

/// The inner filter of a Hyena block.
#[derive(Clone, Debug)]
enum Inner {
    Se { h: P },
    Mr { h: P, d: P },
    Li { log_poles: P, residues: P, d: P },
}

#[derive(Clone, Debug)]
enum Mixer {
    Hyena {
        proj_w: P,
        proj_b: Option<P>,
        short_w: P,
        short_b: Option<P>,
        inner: Inner,
        out_w: P,
        out_b: Option<P>,
    },
    Attn {
        wqkv: P,
        bqkv: Option<P>,
        out_w: P,
        out_b: Option<P>,
        /// In the f32 store; computed from the base when the checkpoint has none.
        inv_freq: Option<P>,
    },
}

#[derive(Clone, Debug)]
struct Block {
    kind: BlockKind,
    pre_norm: P,
    post_norm: P,
    mixer: Mixer,
    l1: P,
    l2: P,
    l3: P,
}

/// A loaded StripedHyena 2 model.
#[derive(Debug)]
pub struct Evo2 {
    pub cfg: Evo2Config,
    blocks: Vec<Block>,
    embed: P,
    norm: Option<P>,
    unembed: Option<P>,
    /// Every tensor but the f32 ones, in the checkpoint's precision.
    pub params: ParamStore,
    /// LI log-poles and residues, rotary inverse frequencies: f32.
    pub exact: ParamStore,
    /// Tensors of the weights file left unused, with the reason (leftovers of the released
    /// files), for the load report.
    pub ignored: Vec<String>,
    /// The arithmetic of the matrix products (attention scores, norms, convolutions and the
    /// LI recurrences are f32 either way).
    pub precision: Precision,
}

/// Whether a tensor belongs in the f32 store.
fn is_exact(name: &str) -> bool {
    name.ends_with(".filter.log_poles")
        || name.ends_with(".filter.residues")
        || name.ends_with(".rotary_emb.inv_freq")
}

impl Evo2 {
    /// Build the model of `cfg` from `src`, every tensor required with its shape (except the
    /// optional rotary buffers), big weights in `dtype`, and nothing of `src` left unused but
    /// the known leftovers ([`LEFTOVER_KEYS`]).
    pub fn load(cfg: Evo2Config, src: &dyn TensorSource, dtype: DType) -> Result<Self> {
        Self::load_from(cfg, src, None, dtype)
    }

    /// [`Evo2::load`] from a memory-mapped file whose bf16 tensors are used in place (what
    /// `hyena convert` writes): no copy of the big weights, loading takes milliseconds.
    pub fn load_mapped(cfg: Evo2Config, src: Arc<MappedSafetensors>) -> Result<Self> {
        let in_place: Arc<dyn InPlaceSource> = src.clone();
        Self::load_from(cfg, src.as_ref(), Some(in_place), DType::Bf16)
    }

    fn load_from(
        cfg: Evo2Config,
        src: &dyn TensorSource,
        in_place: Option<Arc<dyn InPlaceSource>>,
        dtype: DType,
    ) -> Result<Self> {
        cfg.validate().map_err(|e| Error::format(src.origin(), e))?;
        let tracked = Tracked::new(src);
        let (net, params) = match in_place {
            Some(m) => {
                let r = ParamStore::build_mapped(m, |vb| Self::structure(&cfg, vb))?;
                // Count the in-place tensors as read (for the unused-tensor check).
                for s in r.1.specs() {
                    tracked.mark_read(&s.name);
                }
                r
            }
            None => {
                ParamStore::build(Init::From(&tracked), dtype, |vb| Self::structure(&cfg, vb))?
            }
        };
        let (exact_handles, exact) = ParamStore::build(Init::From(&tracked), DType::F32, |vb| {
            Self::exact_structure(&cfg, vb, &tracked)
        })?;
        tracked.check_all_read(LEFTOVER_KEYS, Some(("num_layers", cfg.num_layers)))?;
        let ignored = tracked
            .unread()
            .into_iter()
            .filter_map(|n| {
                LEFTOVER_KEYS
                    .iter()
                    .find(|k| k.matches(&n))
                    .map(|k| format!("{n} ({})", k.reason))
            })
            .collect();
        let (mut blocks, embed, norm, unembed) = net;
        for (b, e) in blocks.iter_mut().zip(exact_handles) {
            match (&mut b.mixer, e) {
                (
                    Mixer::Hyena {
                        inner:
                            Inner::Li {
                                log_poles,
                                residues,
                                ..
                            },
                        ..
                    },
                    Exact::Li(lp, r),
                ) => {
                    *log_poles = lp;
                    *residues = r;
                }
                (Mixer::Attn { inv_freq, .. }, Exact::Rotary(f)) => *inv_freq = f,
                _ => {}
            }
        }
        Ok(Evo2 {
            cfg,
            blocks,
            embed,
            norm,
            unembed,
            params,
            exact,
            ignored,
            precision: Precision::F32,
        })
    }

    #[allow(clippy::type_complexity)]
    fn structure(
        cfg: &Evo2Config,
        vb: &Vb<'_, '_>,
    ) -> Result<(Vec<Block>, P, Option<P>, Option<P>)> {
        let d = cfg.hidden_size;
        let embed = vb.get(&[cfg.vocab_size, d], "embedding_layer.weight")?;
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        // Placeholder handles for the f32 tensors, replaced after the second store is built.
        let none = P::default();
        for i in 0..cfg.num_layers {
            let b = vb.pp(format!("blocks.{i}"));
            let kind = cfg.kind(i);
            let pre_norm = b.get(&[d], "pre_norm.scale")?;
            let post_norm = b.get(&[d], "post_norm.scale")?;
            let mixer = if kind == BlockKind::Mha {
                let m = b.pp("inner_mha_cls");
                Mixer::Attn {
                    wqkv: m.get(&[3 * d, d], "Wqkv.weight")?,
                    bqkv: opt(cfg.qkv_proj_bias, || m.get(&[3 * d], "Wqkv.bias"))?,
                    out_w: m.get(&[d, d], "out_proj.weight")?,
                    out_b: opt(cfg.mha_out_proj_bias, || m.get(&[d], "out_proj.bias"))?,
                    inv_freq: None,
                }
            } else {
                let f = b.pp("filter");
                let k0 = cfg.short_filter_length;
                let inner = match kind {
                    BlockKind::Se => {
                        let h = f.get(&[cfg.hcs_filter_groups, 1, cfg.hcs_filter_length], "h")?;
                        // vortex: a D parameter exists only for filters of 128 taps or more.
                        if cfg.hcs_filter_length >= 128 {
                            Inner::Mr {
                                h,
                                d: f.get(&[d], "D")?,
                            }
                        } else {
                            Inner::Se { h }
                        }
                    }
                    BlockKind::Mr => {
                        let h = f.get(&[cfg.hcm_filter_groups, 1, cfg.hcm_filter_length], "h")?;
                        if cfg.hcm_filter_length >= 128 {
                            Inner::Mr {
                                h,
                                d: f.get(&[d], "D")?,
                            }
                        } else {
                            Inner::Se { h }
                        }
                    }
                    _ => Inner::Li {
                        log_poles: none,
                        residues: none,
                        d: f.get(&[d], "D")?,
                    },
                };
                Mixer::Hyena {
                    proj_w: b.get(&[3 * d, d], "projections.weight")?,
                    proj_b: opt(cfg.qkv_proj_bias, || b.get(&[3 * d], "projections.bias"))?,
                    short_w: f.get(&[3 * d, 1, k0], "short_filter_weight")?,
                    short_b: opt(cfg.short_filter_bias, || {
                        f.get(&[3 * d], "short_filter_bias")
                    })?,
                    inner,
                    out_w: b.get(&[d, d], "out_filter_dense.weight")?,
                    out_b: opt(cfg.hyena_out_proj_bias, || {
                        b.get(&[d], "out_filter_dense.bias")
                    })?,
                }
            };
            let m = b.pp("mlp");
            let n = cfg.inner_mlp_size;
            blocks.push(Block {
                kind,
                pre_norm,
                post_norm,
                mixer,
                l1: m.get(&[n, d], "l1.weight")?,
                l2: m.get(&[n, d], "l2.weight")?,
                l3: m.get(&[d, n], "l3.weight")?,
            });
        }
        let norm = opt(cfg.final_norm, || vb.get(&[d], "norm.scale"))?;
        let unembed = opt(!cfg.tie_embeddings, || {
            vb.get(&[cfg.vocab_size, d], "unembed.weight")
        })?;
        Ok((blocks, embed, norm, unembed))
    }

    fn exact_structure(
        cfg: &Evo2Config,
        vb: &Vb<'_, '_>,
        src: &dyn TensorSource,
    ) -> Result<Vec<Exact>> {
        let d = cfg.hidden_size;
        (0..cfg.num_layers)
            .map(|i| {
                let b = vb.pp(format!("blocks.{i}"));
                Ok(match cfg.kind(i) {
                    BlockKind::Li => Exact::Li(
                        b.get(&[d, cfg.state_size, 1], "filter.log_poles")?,
                        b.get(&[d, cfg.state_size], "filter.residues")?,
                    ),
                    BlockKind::Mha => {
                        let name = format!("blocks.{i}.inner_mha_cls.rotary_emb.inv_freq");
                        // Optional: recomputed from the base when absent.
                        if src.shape_of(&name).is_some() {
                            Exact::Rotary(Some(
                                b.get(&[cfg.head_dim() / 2], "inner_mha_cls.rotary_emb.inv_freq")?,
                            ))
                        } else {
                            Exact::Rotary(None)
                        }
                    }
                    _ => Exact::None,
                })
            })
            .collect()
    }

    /// Width of the residual stream.
    pub fn d_model(&self) -> usize {
        self.cfg.hidden_size
    }

    /// The checkpoint names of every tensor, in the order of the stores.
    pub fn tensor_names(&self) -> Vec<String> {
        self.params
            .specs()
            .iter()
            .chain(self.exact.specs())
            .map(|s| s.name.clone())
            .collect()
    }

    /// Whether a tensor of this model belongs in the f32 store (see the module docs).
    pub fn is_exact_name(name: &str) -> bool {
        is_exact(name)
    }

    fn w(&self, h: P) -> Weight<'_> {
        match self.params.bf16() {
            Some(b) => Weight::Bf16(&b[h.range()]),
            None => Weight::F32(h.of(self.params.data())),
        }
    }

    /// A small tensor of the main store as f32 (norm scales, biases, filters).
    fn small(&self, h: P) -> Vec<f32> {
        let mut v = Vec::new();
        self.w(h).widen(&mut v).to_vec()
    }

    fn ex(&self, h: P) -> &[f32] {
        h.of(self.exact.data())
    }

    /// The names [`Evo2::forward`] can record, for block `i` of kind `kind`.
    pub fn tap_names(&self) -> Vec<String> {
        let mut v = vec!["embedding_layer".to_string()];
        for (i, b) in self.blocks.iter().enumerate() {
            let mut names = vec!["pre_norm", "post_norm", "mlp", "mlp.l1", "mlp.l2", "mlp.l3"];
            if b.kind == BlockKind::Mha {
                names.push("inner_mha_cls");
            } else {
                names.extend(["projections", "filter", "out_filter_dense"]);
            }
            v.push(format!("blocks.{i}"));
            v.extend(names.iter().map(|n| format!("blocks.{i}.{n}")));
        }
        if self.norm.is_some() {
            v.push("norm".into());
        }
        v
    }

    /// Blocks needed to produce the named output, and its width; `None` for an unknown name.
    pub fn tap_info(&self, name: &str) -> Option<(usize, usize)> {
        let d = self.d_model();
        if name == "embedding_layer" {
            return Some((0, d));
        }
        if name == "norm" {
            return self.norm.map(|_| (self.blocks.len(), d));
        }
        let rest = name.strip_prefix("blocks.")?;
        let (idx, sub) = match rest.split_once('.') {
            Some((i, s)) => (i, Some(s)),
            None => (rest, None),
        };
        let i: usize = idx.parse().ok()?;
        let b = self.blocks.get(i)?;
        let n = self.cfg.inner_mlp_size;
        let width = match (sub, b.kind) {
            (None, _) => d,
            (Some("pre_norm" | "post_norm" | "mlp" | "mlp.l3"), _) => d,
            (Some("mlp.l1" | "mlp.l2"), _) => n,
            (Some("inner_mha_cls"), BlockKind::Mha) => d,
            (Some("projections"), k) if k != BlockKind::Mha => 3 * d,
            (Some("filter" | "out_filter_dense"), k) if k != BlockKind::Mha => d,
            _ => return None,
        };
        Some((i + 1, width))
    }

    /// Run the first `blocks` blocks on `tokens` (all of them plus the final norm and the
    /// logits when `blocks` is the block count and `logits` is set), recording the outputs
    /// named in `taps` into it.
    pub fn forward(
        &self,
        tokens: &[u32],
        blocks: usize,
        logits: bool,
        taps: &mut Taps,
        ws: &mut Workspace,
        mut progress: Option<&mut (dyn FnMut(usize, usize) + Send)>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (l, d) = (tokens.len(), cfg.hidden_size);
        if l == 0 {
            return Err(Error::config(
                "tokens",
                0,
                "an empty sequence has nothing to run",
            ));
        }
        if l > cfg.max_seqlen {
            return Err(Error::TooLong {
                op: "StripedHyena forward",
                len: l,
                l_max: cfg.max_seqlen,
            });
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::config(
                "token id",
                t,
                format!("outside the vocabulary of {} ids", cfg.vocab_size),
            ));
        }
        ws.resize(l, cfg);
        // Embedding lookup, widened row by row.
        {
            let mut row = Vec::new();
            let e = self.w(self.embed);
            for (t, &tok) in tokens.iter().enumerate() {
                let r = match e {
                    Weight::F32(w) => &w[tok as usize * d..(tok as usize + 1) * d],
                    Weight::Bf16(w) => {
                        let s = Weight::Bf16(&w[tok as usize * d..(tok as usize + 1) * d]);
                        s.widen(&mut row);
                        &row[..d]
                    }
                };
                ws.x[t * d..(t + 1) * d].copy_from_slice(r);
            }
        }
        taps.put("embedding_layer", &ws.x[..l * d], d);
        for (i, b) in self.blocks.iter().enumerate().take(blocks) {
            self.block(i, b, l, taps, ws)?;
            taps.put_with(|| format!("blocks.{i}"), &ws.x[..l * d], d);
            if let Some(f) = progress.as_mut() {
                f(i + 1, blocks.min(self.blocks.len()));
            }
        }
        if blocks >= self.blocks.len() {
            if let Some(nw) = self.norm {
                let w = self.small(nw);
                self.rmsnorm(&ws.x[..l * d], &w, &mut ws.xn[..l * d])?;
                taps.put("norm", &ws.xn[..l * d], d);
            } else {
                ws.xn[..l * d].copy_from_slice(&ws.x[..l * d]);
            }
            if logits {
                let v = cfg.vocab_size;
                crate::ops::grow(&mut ws.logits, l * v);
                let e = self.unembed.unwrap_or(self.embed);
                let (xn, logits) = (&ws.xn[..l * d], &mut ws.logits[..l * v]);
                self.lin(xn, l, e, None, d, v, logits, &mut ws.wide)?;
            }
        }
        Ok(())
    }

    fn rmsnorm(&self, x: &[f32], w: &[f32], y: &mut [f32]) -> Result<()> {
        let d = self.cfg.hidden_size;
        if self.cfg.use_flash_rmsnorm {
            let mut rstd = vec![0.0f32; x.len() / d];
            rmsnorm_forward(x, w, d, self.cfg.eps as f32, y, &mut rstd)
        } else {
            rmsnorm_rms_eps_forward(x, w, d, self.cfg.eps as f32, y)
        }
    }

    fn lin(
        &self,
        x: &[f32],
        m: usize,
        w: P,
        b: Option<P>,
        k: usize,
        n: usize,
        y: &mut [f32],
        wide: &mut Scratch,
    ) -> Result<()> {
        let bias = b.map(|b| self.small(b));
        match self.precision {
            Precision::F32 => linear_weight(x, self.w(w), bias.as_deref(), m, k, n, y, &mut wide.f32),
            Precision::Bf16 => linear_bf16(x, self.w(w), bias.as_deref(), m, k, n, y, &mut wide.bf16),
        }
    }

    fn block(
        &self,
        i: usize,
        b: &Block,
        l: usize,
        taps: &mut Taps,
        ws: &mut Workspace,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let d = cfg.hidden_size;
        let ld = l * d;
        let pre = self.small(b.pre_norm);
        self.rmsnorm(&ws.x[..ld], &pre, &mut ws.xn[..ld])?;
        taps.put_with(|| format!("blocks.{i}.pre_norm"), &ws.xn[..ld], d);
        match &b.mixer {
            Mixer::Hyena {
                proj_w,
                proj_b,
                short_w,
                short_b,
                inner,
                out_w,
                out_b,
            } => {
                let c3 = 3 * d;
                self.lin(
                    &ws.xn[..ld],
                    l,
                    *proj_w,
                    *proj_b,
                    d,
                    c3,
                    &mut ws.z[..l * c3],
                    &mut ws.wide,
                )?;
                taps.put_with(|| format!("blocks.{i}.projections"), &ws.z[..l * c3], c3);
                // Featurizer: depthwise FIR over the 3D channels in their original order.
                let k0 = cfg.short_filter_length;
                let taps0 = expand_taps(
                    &self.small(*short_w),
                    FirShape {
                        channels: c3,
                        groups: c3,
                        taps: k0,
                    },
                    FirOrder::Correlation,
                )?;
                fir_forward(&ws.z[..l * c3], &taps0, c3, &mut ws.zc[..l * c3])?;
                if let Some(sb) = short_b {
                    // StripedHyena adds the featurizer's bias after the convolution.
                    let sb = self.small(*sb);
                    for row in ws.zc[..l * c3].chunks_exact_mut(c3) {
                        for (v, &bv) in row.iter_mut().zip(&sb) {
                            *v += bv;
                        }
                    }
                }
                // The interleave: post = 0::3, pre = 1::3, v = 2::3; u = pre ⊙ v.
                for t in 0..l {
                    let zr = &ws.zc[t * c3..(t + 1) * c3];
                    let (ur, pr) = (
                        &mut ws.u[t * d..(t + 1) * d],
                        &mut ws.post[t * d..(t + 1) * d],
                    );
                    for c in 0..d {
                        pr[c] = zr[3 * c];
                        ur[c] = zr[3 * c + 1] * zr[3 * c + 2];
                    }
                }
                match inner {
                    Inner::Se { h } | Inner::Mr { h, .. } => {
                        let (groups, k, order) = match b.kind {
                            BlockKind::Se => (
                                cfg.hcs_filter_groups,
                                cfg.hcs_filter_length,
                                FirOrder::Correlation,
                            ),
                            _ => (
                                cfg.hcm_filter_groups,
                                cfg.hcm_filter_length,
                                FirOrder::Convolution,
                            ),
                        };
                        // SE is a `conv1d` (cross-correlation); MR an FFT convolution (true
                        // convolution); vortex `engine.parallel_fir`.
                        let w = expand_taps(
                            &self.small(*h),
                            FirShape {
                                channels: d,
                                groups,
                                taps: k,
                            },
                            order,
                        )?;
                        fir_forward(&ws.u[..ld], &w, d, &mut ws.inner[..ld])?;
                        if let Inner::Mr { d: dp, .. } = inner {
                            let dv = self.small(*dp);
                            add_skip(&mut ws.inner[..ld], &ws.u[..ld], &dv);
                        }
                    }
                    Inner::Li {
                        log_poles,
                        residues,
                        d: dp,
                    } => {
                        let dv = self.small(*dp);
                        let n = cfg.state_size;
                        ws.state.clear();
                        ws.state.resize(d * n, 0.0);
                        modal_forward(
                            &ws.u[..ld],
                            self.ex(*log_poles),
                            self.ex(*residues),
                            Some(&dv),
                            d,
                            &mut ws.state,
                            &mut ws.inner[..ld],
                        )?;
                    }
                }
                for (y, &p) in ws.inner[..ld].iter_mut().zip(&ws.post[..ld]) {
                    *y *= p;
                }
                taps.put_with(|| format!("blocks.{i}.filter"), &ws.inner[..ld], d);
                self.lin(
                    &ws.inner[..ld],
                    l,
                    *out_w,
                    *out_b,
                    d,
                    d,
                    &mut ws.o[..ld],
                    &mut ws.wide,
                )?;
                taps.put_with(|| format!("blocks.{i}.out_filter_dense"), &ws.o[..ld], d);
            }
            Mixer::Attn {
                wqkv,
                bqkv,
                out_w,
                out_b,
                inv_freq,
            } => {
                let (h, hd) = (cfg.num_attention_heads, cfg.head_dim());
                let c3 = 3 * d;
                self.lin(
                    &ws.xn[..ld],
                    l,
                    *wqkv,
                    *bqkv,
                    d,
                    c3,
                    &mut ws.z[..l * c3],
                    &mut ws.wide,
                )?;
                // Gather q, k, v [H, L, hd] from the projection's columns (module docs).
                for t in 0..l {
                    let zr = &ws.z[t * c3..(t + 1) * c3];
                    for hh in 0..h {
                        for (p, dst) in [&mut ws.q, &mut ws.k, &mut ws.v].into_iter().enumerate() {
                            let col = if cfg.column_split {
                                hh * 3 * hd + p * hd
                            } else {
                                p * d + hh * hd
                            };
                            dst[(hh * l + t) * hd..(hh * l + t + 1) * hd]
                                .copy_from_slice(&zr[col..col + hd]);
                        }
                    }
                }
                let freqs: Vec<f32> = match inv_freq {
                    Some(f) => self.ex(*f).to_vec(),
                    None => (0..hd / 2)
                        .map(|j| {
                            (1.0 / cfg.rotary_emb_base.powf((2 * j) as f64 / hd as f64)) as f32
                        })
                        .collect(),
                };
                let scale = cfg.rotary_scale();
                rotary_inplace(&mut ws.q[..ld], h, hd, &freqs, scale, 0)?;
                rotary_inplace(&mut ws.k[..ld], h, hd, &freqs, scale, 0)?;
                causal_attention(
                    &ws.q[..ld],
                    &ws.k[..ld],
                    &ws.v[..ld],
                    h,
                    hd,
                    &mut ws.inner[..ld],
                )?;
                self.lin(
                    &ws.inner[..ld],
                    l,
                    *out_w,
                    *out_b,
                    d,
                    d,
                    &mut ws.o[..ld],
                    &mut ws.wide,
                )?;
                taps.put_with(|| format!("blocks.{i}.inner_mha_cls"), &ws.o[..ld], d);
            }
        }
        for (x, &o) in ws.x[..ld].iter_mut().zip(&ws.o[..ld]) {
            *x += o;
        }
        // MLP.
        let post = self.small(b.post_norm);
        self.rmsnorm(&ws.x[..ld], &post, &mut ws.xn[..ld])?;
        taps.put_with(|| format!("blocks.{i}.post_norm"), &ws.xn[..ld], d);
        let n = cfg.inner_mlp_size;
        self.lin(
            &ws.xn[..ld],
            l,
            b.l1,
            None,
            d,
            n,
            &mut ws.a[..l * n],
            &mut ws.wide,
        )?;
        self.lin(
            &ws.xn[..ld],
            l,
            b.l2,
            None,
            d,
            n,
            &mut ws.b[..l * n],
            &mut ws.wide,
        )?;
        taps.put_with(|| format!("blocks.{i}.mlp.l1"), &ws.a[..l * n], n);
        taps.put_with(|| format!("blocks.{i}.mlp.l2"), &ws.b[..l * n], n);
        // vortex ParallelGatedMLP: GELU (erf) or SiLU, identity after block 0 in Evo 2.
        if i == 0 || !cfg.evo2_style_activations {
            if cfg.mlp_activation == "silu" {
                for v in ws.a[..l * n].iter_mut() {
                    *v /= 1.0 + (-*v).exp();
                }
            } else {
                gelu_erf_inplace(&mut ws.a[..l * n]);
            }
        }
        for (a, &bv) in ws.a[..l * n].iter_mut().zip(&ws.b[..l * n]) {
            *a *= bv;
        }
        self.lin(
            &ws.a[..l * n],
            l,
            b.l3,
            None,
            n,
            d,
            &mut ws.o[..ld],
            &mut ws.wide,
        )?;
        taps.put_with(|| format!("blocks.{i}.mlp.l3"), &ws.o[..ld], d);
        taps.put_with(|| format!("blocks.{i}.mlp"), &ws.o[..ld], d);
        for (x, &o) in ws.x[..ld].iter_mut().zip(&ws.o[..ld]) {
            *x += o;
        }
        Ok(())
    }

    /// Logits `[L, V]` of `tokens` (in `ws.logits`).
    pub fn logits<'w>(&self, tokens: &[u32], ws: &'w mut Workspace) -> Result<&'w [f32]> {
        self.forward(tokens, self.blocks.len(), true, &mut Taps::none(), ws, None)?;
        Ok(&ws.logits[..tokens.len() * self.cfg.vocab_size])
    }

    /// `log p(tokens[t+1] | tokens[..=t])` for every position into `out` (`L − 1` values); returns
    /// the sum (the evo2 package's `score_sequences` with `reduce_method="sum"`).
    pub fn log_likelihood(
        &self,
        tokens: &[u32],
        ws: &mut Workspace,
        out: &mut Vec<f32>,
    ) -> Result<f64> {
        let v = self.cfg.vocab_size;
        let logits = self.logits(tokens, ws)?;
        out.clear();
        let mut total = 0.0f64;
        for t in 0..tokens.len().saturating_sub(1) {
            let lp = log_prob(&logits[t * v..(t + 1) * v], tokens[t + 1] as usize);
            total += lp;
            out.push(lp as f32);
        }
        Ok(total)
    }

    /// The number of blocks.
    pub fn n_layer(&self) -> usize {
        self.blocks.len()
    }

    /// Where the weights came from, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} blocks, width {}, {} parameters in {})",
            if self.cfg.model_name.is_empty() {
                "StripedHyena 2"
            } else {
                &self.cfg.model_name
            },
            self.blocks.len(),
            self.cfg.hidden_size,
            self.params.len() + self.exact.len(),
            match self.params.dtype() {
                DType::Bf16 => "bf16 (log-poles, residues f32)",
                DType::F32 => "f32",
            }
        )
    }
}

/// `y += D ⊙ u` on `[L, C]` rows.
fn add_skip(y: &mut [f32], u: &[f32], dv: &[f32]) {
    let c = dv.len();
    for (yr, ur) in y.chunks_exact_mut(c).zip(u.chunks_exact(c)) {
        for ((yv, &uv), &dd) in yr.iter_mut().zip(ur).zip(dv) {
            *yv += dd * uv;
        }
    }
}

fn opt(on: bool, f: impl FnOnce() -> Result<P>) -> Result<Option<P>> {
    if on {
        f().map(Some)
    } else {
        Ok(None)
    }
}

/// f32 tensors of a block, built in the second store.
enum Exact {
    None,
    Li(P, P),
    Rotary(Option<P>),
}

/// Named intermediate outputs to record during a forward (PyTorch module names of the
/// reference, e.g. `blocks.28.mlp.l3`), each as `[L, width]` rows.
#[derive(Debug, Default)]
pub struct Taps {
    wanted: Vec<String>,
    pub got: std::collections::BTreeMap<String, (Vec<f32>, usize)>,
}

impl Taps {
    /// Record nothing.
    pub fn none() -> Self {
        Taps::default()
    }

    /// Record these names.
    pub fn of(names: &[&str]) -> Self {
        Taps {
            wanted: names.iter().map(|s| s.to_string()).collect(),
            got: Default::default(),
        }
    }

    fn put(&mut self, name: &str, data: &[f32], width: usize) {
        if self.wanted.iter().any(|w| w == name) {
            self.got.insert(name.to_string(), (data.to_vec(), width));
        }
    }

    fn put_with(&mut self, name: impl FnOnce() -> String, data: &[f32], width: usize) {
        if !self.wanted.is_empty() {
            let n = name();
            self.put(&n, data, width);
        }
    }
}

/// Scratch of the matrix products of either precision.
#[derive(Default)]
struct Scratch {
    f32: Vec<f32>,
    bf16: Bf16Scratch,
}

/// Buffers of [`Evo2::forward`], grown to the longest sequence seen and reused.
#[derive(Default)]
pub struct Workspace {
    x: Vec<f32>,
    xn: Vec<f32>,
    z: Vec<f32>,
    zc: Vec<f32>,
    u: Vec<f32>,
    post: Vec<f32>,
    inner: Vec<f32>,
    o: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    state: Vec<f32>,
    /// A weight matrix widened from bf16, or packed operands of bf16 products.
    wide: Scratch,
    pub logits: Vec<f32>,
}

impl Workspace {
    fn resize(&mut self, l: usize, cfg: &Evo2Config) {
        use crate::ops::grow;
        let (d, n) = (cfg.hidden_size, cfg.inner_mlp_size);
        for v in [
            &mut self.x,
            &mut self.xn,
            &mut self.u,
            &mut self.post,
            &mut self.inner,
            &mut self.o,
            &mut self.q,
            &mut self.k,
            &mut self.v,
        ] {
            grow(v, l * d);
        }
        grow(&mut self.z, l * 3 * d);
        grow(&mut self.zc, l * 3 * d);
        grow(&mut self.a, l * n);
        grow(&mut self.b, l * n);
    }
}
