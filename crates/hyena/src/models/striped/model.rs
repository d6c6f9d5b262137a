//! The StripedHyena language models (Evo 2 / StripedHyena 2, Evo 1 / StripedHyena 1) for
//! inference: structure, loading from any [`TensorSource`] (a released `.pt`, Hugging Face
//! shards, a converted safetensors file) and the forward pass over one sequence, with named
//! intermediate outputs.
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
//! StripedHyena 1 (`generation: 1`; the `stripedhyena` package's `model.py`, `engine.py`;
//! `hyena-family.md` section 7) differs in four places: every Hyena block has a long filter
//! of complex modes, `h = Re Σ_n R ⊙ p^t` (`filter.poles`, `filter.residues` `[D, N, 1, 2]`,
//! f32) plus `D ⊙ u` (ops::modal::modal_complex_forward); the channels are split per head as
//! `[x2 | x1 | v]` blocks of the head width (`column_split_hyena`: post = x2, pre = x1);
//! `projections` and `out_filter_dense` always have biases; and attention rows are
//! `[Q (H heads); K (H/g heads); V (H/g heads)]` with query head `h` reading key/value head
//! `h / g` (`g = proj_groups`, flash-attn's MHA). Its MLP activation applies in every block.
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
//!
//! **Precision.** [`Precision::F32`] widens the bf16 weights exactly; over several chunks a
//! block's matrices are widened once and kept for all its chunks (`Scratch::widened`).
//! [`Precision::Bf16`] feeds every matrix product bf16 operands with f32 sums
//! ([`linear_bf16`]), the attention's two products included (keys, values and probabilities
//! rounded, [`causal_attention_bf16_at`]); norms, softmax, convolutions and recurrences stay
//! f32.

use crate::error::{Error, Result};
use crate::models::striped::config::{BlockKind, Evo2Config};
use crate::models::striped::kv::{KvCache, KvPrecision};
use crate::models::Precision;
use crate::ops::act::gelu_erf_inplace;
use crate::ops::attention::rotary_inplace;
use crate::ops::bf16::{linear_bf16, Bf16Scratch};
use crate::ops::fir::{expand_taps, fir_forward_carry, FirOrder, FirShape};
use crate::ops::linear::{linear_few_rows, linear_forward, linear_weight, Weight, FEW_ROWS};
use crate::ops::loss::log_prob;
use crate::ops::modal::{modal_complex_forward, modal_forward};
use crate::ops::norm::{rmsnorm_forward, rmsnorm_rms_eps_forward};
use std::sync::Arc;

use crate::io::mapped::MappedSafetensors;
use crate::params::{
    bf16_to_f32, f32_to_bf16, DType, IgnoredKey, InPlaceSource, Init, ParamStore, TensorSource,
    Tracked, Vb, P,
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
    Se {
        h: P,
    },
    Mr {
        h: P,
        d: P,
    },
    Li {
        log_poles: P,
        residues: P,
        d: P,
    },
    /// StripedHyena 1: complex poles and residues `[D, N, 1, 2]` (re, im).
    Complex {
        poles: P,
        residues: P,
        d: P,
    },
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
    /// The attention caches' precision; `None` follows `precision` ([`Evo2::kv_precision`]).
    pub kv: Option<KvPrecision>,
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
            None => ParamStore::build(Init::From(&tracked), dtype, |vb| Self::structure(&cfg, vb))?,
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
                (
                    Mixer::Hyena {
                        inner:
                            Inner::Complex {
                                poles, residues, ..
                            },
                        ..
                    },
                    Exact::Li(p, r),
                ) => {
                    *poles = p;
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
            kv: None,
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
                let rows = cfg.qkv_rows();
                Mixer::Attn {
                    wqkv: m.get(&[rows, d], "Wqkv.weight")?,
                    bqkv: opt(cfg.qkv_proj_bias, || m.get(&[rows], "Wqkv.bias"))?,
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
                    _ if cfg.generation == 1 => Inner::Complex {
                        poles: none,
                        residues: none,
                        d: f.get(&[d], "D")?,
                    },
                    _ => Inner::Li {
                        log_poles: none,
                        residues: none,
                        d: f.get(&[d], "D")?,
                    },
                };
                // StripedHyena 1's projections are a plain (biased) nn.Linear; vortex ties the
                // bias to qkv_proj_bias.
                let proj_bias = cfg.generation == 1 || cfg.qkv_proj_bias;
                Mixer::Hyena {
                    proj_w: b.get(&[3 * d, d], "projections.weight")?,
                    proj_b: opt(proj_bias, || b.get(&[3 * d], "projections.bias"))?,
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
                    BlockKind::Li if cfg.generation == 1 => Exact::Li(
                        b.get(&[d, cfg.state_size, 1, 2], "filter.poles")?,
                        b.get(&[d, cfg.state_size, 1, 2], "filter.residues")?,
                    ),
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

    fn w(&self, h: P) -> Weight<'_> {
        match self.params.bf16() {
            Some(b) => Weight::Bf16(&b[h.range()]),
            None => Weight::F32(h.of(self.params.data())),
        }
    }

    /// A small tensor of the main store as f32 (norm scales, biases, filters).
    fn small(&self, h: P) -> Vec<f32> {
        match self.w(h) {
            Weight::F32(w) => w.to_vec(),
            Weight::Bf16(b) => b.iter().map(|&x| bf16_to_f32(x)).collect(),
        }
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

    /// Reject what no forward can run: no tokens, ids outside the vocabulary, or a sequence
    /// (ending at position `end`) past the model's `max_seqlen`.
    fn check_tokens(&self, tokens: &[u32], end: usize) -> Result<()> {
        let cfg = &self.cfg;
        if tokens.is_empty() {
            return Err(Error::config(
                "tokens",
                0,
                "an empty sequence has nothing to run",
            ));
        }
        if end > cfg.max_seqlen {
            return Err(Error::TooLong {
                op: "StripedHyena forward",
                len: end,
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
        Ok(())
    }

    /// The embedding rows of `tokens` into `x [m, D]`, widened row by row.
    fn embed_rows(&self, tokens: &[u32], x: &mut [f32]) {
        let d = self.cfg.hidden_size;
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
            x[t * d..(t + 1) * d].copy_from_slice(r);
        }
    }

    /// Run the first `blocks` blocks on `tokens` (all of them plus the final norm and the
    /// logits when `blocks` is the block count and `logits` is set), recording the outputs
    /// named in `taps` into it.
    ///
    /// Block by block: each block runs over the whole sequence, `ws.chunk` positions at a time
    /// with its state carried between chunks ([`Evo2::block_chunk`]), before the next block
    /// starts. This keeps the residual stream `x [L, D]` but only one attention block's keys and
    /// values at a time (the least memory for scoring and embedding a whole sequence);
    /// [`Evo2::stream_forward`] runs the other order.
    pub fn forward(
        &self,
        tokens: &[u32],
        blocks: usize,
        logits: bool,
        taps: &mut Taps,
        ws: &mut Workspace,
        progress: Option<&mut (dyn FnMut(usize, usize) + Send)>,
    ) -> Result<()> {
        let (l, d, v) = (tokens.len(), self.cfg.hidden_size, self.cfg.vocab_size);
        self.check_tokens(tokens, l)?;
        ws.resize(l, &self.cfg);
        let p = ws.chunk.clamp(1, l);
        let mut x = std::mem::take(&mut ws.x);
        let mut lg = std::mem::take(&mut ws.logits);
        let r = (|| {
            self.embed_rows(tokens, &mut x[..l * d]);
            taps.put_rows(|| "embedding_layer".to_string(), 0, l, &x[..l * d], d);
            self.blocks_by_layer(blocks, l, &mut x[..l * d], taps, ws, progress)?;
            if blocks >= self.blocks.len() {
                if logits {
                    crate::ops::grow(&mut lg, l * v);
                }
                ws.wide.begin(self.widen_once(l, p));
                let mut t0 = 0;
                while t0 < l {
                    let t1 = (t0 + p).min(l);
                    let out = logits.then(|| &mut lg[t0 * v..t1 * v]);
                    self.head_chunk(&x[t0 * d..t1 * d], t0, l, out, taps, ws)?;
                    t0 = t1;
                }
            }
            Ok(())
        })();
        ws.x = x;
        ws.logits = lg;
        r
    }

    /// The blocks of [`Evo2::forward`] over the residual stream `x [L, D]`.
    fn blocks_by_layer(
        &self,
        blocks: usize,
        l: usize,
        x: &mut [f32],
        taps: &mut Taps,
        ws: &mut Workspace,
        mut progress: Option<&mut (dyn FnMut(usize, usize) + Send)>,
    ) -> Result<()> {
        let d = self.cfg.hidden_size;
        let p = ws.chunk.clamp(1, l);
        for (i, b) in self.blocks.iter().enumerate().take(blocks) {
            let c = self.consts(b)?;
            let mut carry = self.carry(b, ws.spare_kv.take());
            if let Carry::Attn(kv) = &mut carry {
                kv.reserve(l, 0, true);
            }
            ws.wide.begin(self.widen_once(l, p));
            let mut t0 = 0;
            while t0 < l {
                crate::interrupt::check()?;
                let t1 = (t0 + p).min(l);
                let xc = &mut x[t0 * d..t1 * d];
                self.block_chunk(i, b, &c, &mut carry, xc, t0, l, taps, ws)?;
                t0 = t1;
            }
            if let Carry::Attn(kv) = carry {
                ws.spare_kv = Some(kv);
            }
            taps.put_rows(|| format!("blocks.{i}"), 0, l, &x[..l * d], d);
            if let Some(f) = progress.as_mut() {
                f(i + 1, blocks.min(self.blocks.len()));
            }
        }
        Ok(())
    }

    /// The final norm and (into `logits [m, V]` when given) the logits of the rows
    /// `x [m, D]` of positions `t0 ..` of a sequence of `tap_len`.
    fn head_chunk(
        &self,
        x: &[f32],
        t0: usize,
        tap_len: usize,
        logits: Option<&mut [f32]>,
        taps: &mut Taps,
        ws: &mut Workspace,
    ) -> Result<()> {
        let (d, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let m = x.len() / d;
        let md = m * d;
        match self.norm {
            Some(n) => {
                self.rmsnorm(x, &self.small(n), &mut ws.xn[..md])?;
                taps.put_rows(|| "norm".to_string(), t0, tap_len, &ws.xn[..md], d);
            }
            None => ws.xn[..md].copy_from_slice(x),
        }
        if let Some(lg) = logits {
            let e = self.unembed.unwrap_or(self.embed);
            self.lin(&ws.xn[..md], m, e, None, d, v, lg, &mut ws.wide)?;
        }
        Ok(())
    }

    /// The precision of the attention key/value caches: as set, else the model's precision.
    pub fn kv_precision(&self) -> KvPrecision {
        self.kv.unwrap_or(match self.precision {
            Precision::Bf16 => KvPrecision::Bf16,
            Precision::F32 => KvPrecision::F32,
        })
    }

    /// Bytes [`Evo2::forward`] holds beyond the weights for `l` tokens in chunks of `chunk`: the
    /// residual stream `[L, D]` f32, one attention block's keys and values at a time
    /// ([`crate::models::striped::kv`]), the logits `[L, V]`, the chunk buffers (about `10·D +
    /// 2·inner` floats per position) and, for f32 arithmetic on bf16 weights over several
    /// chunks, one block's matrices widened.
    pub fn forward_bytes(&self, l: usize, chunk: usize) -> u64 {
        use crate::memory::mul;
        let cfg = &self.cfg;
        let (d, n, v) = (cfg.hidden_size, cfg.inner_mlp_size, cfg.vocab_size);
        let p = chunk.clamp(1, l.max(1));
        let kv = super::kv::kv_cache_bytes(
            1,
            cfg.num_attention_heads * cfg.head_dim(),
            l,
            self.kv_precision(),
        );
        let widened = if self.widen_once(l, p) {
            mul(&[4, d, 4 * d + 3 * n])
        } else {
            0
        };
        mul(&[4, l, d])
            .saturating_add(if self.n_attention() > 0 { kv } else { 0 })
            .saturating_add(mul(&[4, l, v]))
            .saturating_add(mul(&[4, p, 10 * d + 2 * n]))
            .saturating_add(widened)
    }

    /// The number of attention blocks (what the key/value cache size scales with).
    pub fn n_attention(&self) -> usize {
        self.blocks
            .iter()
            .filter(|b| b.kind == BlockKind::Mha)
            .count()
    }

    /// A sequence fed piece by piece: every block's carried state at position 0, the attention
    /// caches reserved for `reserve` positions (they grow past it as needed).
    pub fn stream(&self, reserve: usize) -> Result<Stream> {
        let consts = self
            .blocks
            .iter()
            .map(|b| self.consts(b))
            .collect::<Result<Vec<_>>>()?;
        let carry = self
            .blocks
            .iter()
            .map(|b| {
                let mut c = self.carry(b, None);
                if let Carry::Attn(kv) = &mut c {
                    kv.reserve(reserve.min(self.cfg.max_seqlen), 0, true);
                }
                c
            })
            .collect();
        Ok(Stream {
            consts,
            carry,
            pos: 0,
        })
    }

    /// Continue the sequence of `s` with `tokens`: every block runs on a chunk of `ws.chunk`
    /// positions before the next chunk starts, each block's state carried exactly (FIR tails,
    /// modal states, keys and values), so feeding a sequence in any pieces and any chunk size
    /// gives the one-shot forward's logits (to float rounding), and one token at a time is
    /// recurrent decoding (`hyena-family.md` sections 7.4 and 8.3: the FIR caches, the modal
    /// states `x ← p ⊙ x + u`, the key/value cache). Memory beyond the caches is `O(chunk)`:
    /// no `[L, D]` buffer. With `logits`, the logits of the tokens are left in
    /// `ws.logits [n, V]`.
    ///
    /// On an error the stream is left part-way and must not be fed further.
    pub fn stream_forward(
        &self,
        tokens: &[u32],
        s: &mut Stream,
        logits: bool,
        ws: &mut Workspace,
    ) -> Result<()> {
        let (n, d, v) = (tokens.len(), self.cfg.hidden_size, self.cfg.vocab_size);
        self.check_tokens(tokens, s.pos + n)?;
        if ws.chunk == 0 {
            ws.chunk = DEFAULT_CHUNK;
        }
        let p = ws.chunk.min(n);
        ws.resize(p, &self.cfg);
        let mut x = std::mem::take(&mut ws.x);
        let mut lg = std::mem::take(&mut ws.logits);
        if logits {
            crate::ops::grow(&mut lg, n * v);
        }
        let r = (|| {
            ws.wide.begin(false);
            let mut a = 0;
            while a < n {
                crate::interrupt::check()?;
                let b = (a + p).min(n);
                let (m, t0) = (b - a, s.pos);
                let xc = &mut x[..m * d];
                self.embed_rows(&tokens[a..b], xc);
                for (i, blk) in self.blocks.iter().enumerate() {
                    if let Carry::Attn(kv) = &mut s.carry[i] {
                        kv.reserve(t0 + m, t0, false);
                    }
                    let (c, carry) = (&s.consts[i], &mut s.carry[i]);
                    self.block_chunk(i, blk, c, carry, xc, t0, 0, &mut Taps::none(), ws)?;
                }
                s.pos += m;
                let out = logits.then(|| &mut lg[a * v..b * v]);
                self.head_chunk(xc, t0, 0, out, &mut Taps::none(), ws)?;
                a = b;
            }
            Ok(())
        })();
        ws.x = x;
        ws.logits = lg;
        r
    }

    /// The constants of block `b`'s forward: norm weights, the featurizer's and the inner
    /// FIR's expanded taps, `D`, rotary frequencies.
    fn consts(&self, b: &Block) -> Result<Consts> {
        let cfg = &self.cfg;
        let d = cfg.hidden_size;
        let c3 = 3 * d;
        let mixer = match &b.mixer {
            Mixer::Hyena {
                short_w,
                short_b,
                inner,
                ..
            } => {
                let taps0 = expand_taps(
                    &self.small(*short_w),
                    FirShape {
                        channels: c3,
                        groups: c3,
                        taps: cfg.short_filter_length,
                    },
                    FirOrder::Correlation,
                )?;
                let inner = match inner {
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
                        let dv = match inner {
                            Inner::Mr { d: dp, .. } => Some(self.small(*dp)),
                            _ => None,
                        };
                        InnerConsts::Fir { w, d: dv }
                    }
                    Inner::Li { d: dp, .. } | Inner::Complex { d: dp, .. } => {
                        InnerConsts::Modal { d: self.small(*dp) }
                    }
                };
                MixerConsts::Hyena {
                    taps0,
                    short_b: short_b.map(|sb| self.small(sb)),
                    inner,
                }
            }
            Mixer::Attn { inv_freq, .. } => {
                let hd = cfg.head_dim();
                let freqs = match inv_freq {
                    Some(f) => self.ex(*f).to_vec(),
                    None => (0..hd / 2)
                        .map(|j| {
                            (1.0 / cfg.rotary_emb_base.powf((2 * j) as f64 / hd as f64)) as f32
                        })
                        .collect(),
                };
                MixerConsts::Attn { freqs }
            }
        };
        Ok(Consts {
            pre: self.small(b.pre_norm),
            post: self.small(b.post_norm),
            mixer,
        })
    }

    /// Block `b`'s state at a sequence start (zeros; an empty key/value cache, reusing `kv`'s
    /// buffers when given).
    fn carry(&self, b: &Block, kv: Option<KvCache>) -> Carry {
        let cfg = &self.cfg;
        let d = cfg.hidden_size;
        match &b.mixer {
            Mixer::Hyena { inner, .. } => {
                let inner = match inner {
                    Inner::Se { .. } => (cfg.hcs_filter_length - 1) * d,
                    Inner::Mr { .. } => (cfg.hcm_filter_length - 1) * d,
                    Inner::Li { .. } => d * cfg.state_size,
                    // (re, im) pairs.
                    Inner::Complex { .. } => 2 * d * cfg.state_size,
                };
                Carry::Hyena {
                    fir0: vec![0.0; (cfg.short_filter_length - 1) * 3 * d],
                    inner: vec![0.0; inner],
                }
            }
            Mixer::Attn { .. } => {
                let (prec, h, hd) = (self.kv_precision(), cfg.num_attention_heads, cfg.head_dim());
                let mut kv = kv.unwrap_or_else(|| KvCache::new(prec, h, hd));
                kv.reset(prec, h, hd);
                Carry::Attn(kv)
            }
        }
    }

    /// Block `i` on the rows `x [m, D]` of positions `t0 .. t0 + m` of the residual stream
    /// (updated in place), continuing from its state `carry` (the featurizer's and the inner
    /// FIR's last rows, the modal state, the keys and values of `0 .. t0`), which is left at
    /// `t0 + m`. Outputs named in `taps` are recorded as rows of a sequence of `tap_len`.
    #[allow(clippy::too_many_arguments)]
    fn block_chunk(
        &self,
        i: usize,
        b: &Block,
        c: &Consts,
        carry: &mut Carry,
        x: &mut [f32],
        t0: usize,
        tap_len: usize,
        taps: &mut Taps,
        ws: &mut Workspace,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let d = cfg.hidden_size;
        let c3 = 3 * d;
        let n_in = cfg.inner_mlp_size;
        let complex = cfg.generation == 1;
        let md = x.len();
        let m = md / d;
        let l = tap_len;
        {
            self.rmsnorm(x, &c.pre, &mut ws.xn[..md])?;
            taps.put_rows(|| format!("blocks.{i}.pre_norm"), t0, l, &ws.xn[..md], d);
            // Each mixer leaves its output in `inner`; the output projection is shared.
            let (out_w, out_b, out_name) = match (&b.mixer, &c.mixer, carry) {
                (
                    Mixer::Hyena {
                        proj_w,
                        proj_b,
                        out_w,
                        out_b,
                        inner,
                        ..
                    },
                    MixerConsts::Hyena {
                        taps0,
                        short_b,
                        inner: ic,
                    },
                    Carry::Hyena { fir0, inner: state },
                ) => {
                    self.lin(
                        &ws.xn[..md],
                        m,
                        *proj_w,
                        *proj_b,
                        d,
                        c3,
                        &mut ws.z[..m * c3],
                        &mut ws.wide,
                    )?;
                    taps.put_rows(
                        || format!("blocks.{i}.projections"),
                        t0,
                        l,
                        &ws.z[..m * c3],
                        c3,
                    );
                    // Featurizer: depthwise FIR over the 3D channels in their original order.
                    fir_forward_carry(&ws.z[..m * c3], taps0, c3, fir0, &mut ws.zc[..m * c3])?;
                    if let Some(sb) = short_b {
                        // StripedHyena adds the featurizer's bias after the convolution.
                        for row in ws.zc[..m * c3].chunks_exact_mut(c3) {
                            for (v, &bv) in row.iter_mut().zip(sb.iter()) {
                                *v += bv;
                            }
                        }
                    }
                    if complex {
                        // The column split: per head, [x2 | x1 | v] blocks of the head width
                        // (stripedhyena `utils.column_split`); post = x2, u = x1 ⊙ v.
                        let hd = cfg.head_dim();
                        for t in 0..m {
                            let zr = &ws.zc[t * c3..(t + 1) * c3];
                            let ur = &mut ws.u[t * d..(t + 1) * d];
                            let pr = &mut ws.post[t * d..(t + 1) * d];
                            for (hh, zh) in zr.chunks_exact(3 * hd).enumerate() {
                                let (x2, rest) = zh.split_at(hd);
                                let (x1, v) = rest.split_at(hd);
                                for j in 0..hd {
                                    pr[hh * hd + j] = x2[j];
                                    ur[hh * hd + j] = x1[j] * v[j];
                                }
                            }
                        }
                    } else {
                        // The interleave: post = 0::3, pre = 1::3, v = 2::3; u = pre ⊙ v.
                        for t in 0..m {
                            let zr = &ws.zc[t * c3..(t + 1) * c3];
                            let ur = &mut ws.u[t * d..(t + 1) * d];
                            let pr = &mut ws.post[t * d..(t + 1) * d];
                            for c in 0..d {
                                pr[c] = zr[3 * c];
                                ur[c] = zr[3 * c + 1] * zr[3 * c + 2];
                            }
                        }
                    }
                    match (inner, ic) {
                        (_, InnerConsts::Fir { w, d: dv }) => {
                            fir_forward_carry(&ws.u[..md], w, d, state, &mut ws.inner[..md])?;
                            if let Some(dv) = dv {
                                add_skip(&mut ws.inner[..md], &ws.u[..md], dv);
                            }
                        }
                        (
                            Inner::Li {
                                log_poles,
                                residues,
                                ..
                            },
                            InnerConsts::Modal { d: dv },
                        ) => {
                            modal_forward(
                                &ws.u[..md],
                                self.ex(*log_poles),
                                self.ex(*residues),
                                Some(dv),
                                d,
                                state,
                                &mut ws.inner[..md],
                            )?;
                        }
                        (
                            Inner::Complex {
                                poles, residues, ..
                            },
                            InnerConsts::Modal { d: dv },
                        ) => {
                            modal_complex_forward(
                                &ws.u[..md],
                                self.ex(*poles),
                                self.ex(*residues),
                                Some(dv),
                                d,
                                state,
                                &mut ws.inner[..md],
                            )?;
                        }
                        _ => unreachable!("the inner filter's kind and its constants agree"),
                    }
                    for (y, &pv) in ws.inner[..md].iter_mut().zip(&ws.post[..md]) {
                        *y *= pv;
                    }
                    taps.put_rows(|| format!("blocks.{i}.filter"), t0, l, &ws.inner[..md], d);
                    (*out_w, *out_b, "out_filter_dense")
                }
                (
                    Mixer::Attn {
                        wqkv,
                        bqkv,
                        out_w,
                        out_b,
                        ..
                    },
                    MixerConsts::Attn { freqs },
                    Carry::Attn(kv),
                ) => {
                    let (h, hd) = (cfg.num_attention_heads, cfg.head_dim());
                    let (rows, hkv) = (cfg.qkv_rows(), cfg.kv_heads());
                    self.lin(
                        &ws.xn[..md],
                        m,
                        *wqkv,
                        *bqkv,
                        d,
                        rows,
                        &mut ws.z[..m * rows],
                        &mut ws.wide,
                    )?;
                    // q, k, v of the chunk [H, m, hd] (module docs for the column layout). With
                    // grouped-query heads (StripedHyena 1), each query head gets its key/value
                    // head's rows.
                    for t in 0..m {
                        let zr = &ws.z[t * rows..(t + 1) * rows];
                        for hh in 0..h {
                            let g = hh / (h / hkv);
                            let col = |p: usize| {
                                if cfg.column_split {
                                    hh * 3 * hd + p * hd
                                } else if p == 0 {
                                    hh * hd
                                } else {
                                    h * hd + (p - 1) * hkv * hd + g * hd
                                }
                            };
                            let r = (hh * m + t) * hd..(hh * m + t + 1) * hd;
                            ws.q[r.clone()].copy_from_slice(&zr[col(0)..col(0) + hd]);
                            ws.kt[r.clone()].copy_from_slice(&zr[col(1)..col(1) + hd]);
                            ws.vt[r].copy_from_slice(&zr[col(2)..col(2) + hd]);
                        }
                    }
                    let scale = cfg.rotary_scale();
                    rotary_inplace(&mut ws.q[..md], h, hd, freqs, scale, t0)?;
                    rotary_inplace(&mut ws.kt[..md], h, hd, freqs, scale, t0)?;
                    kv.put(t0, &ws.kt[..md], &ws.vt[..md])?;
                    kv.attend(&ws.q[..md], t0, &mut ws.inner[..md])?;
                    (*out_w, *out_b, "inner_mha_cls")
                }
                _ => unreachable!("a block's mixer, constants and state agree"),
            };
            let (xin, o) = (&ws.inner[..md], &mut ws.o[..md]);
            self.lin(xin, m, out_w, out_b, d, d, o, &mut ws.wide)?;
            taps.put_rows(|| format!("blocks.{i}.{out_name}"), t0, l, &ws.o[..md], d);
            for (x, &o) in x.iter_mut().zip(&ws.o[..md]) {
                *x += o;
            }
            // MLP.
            self.rmsnorm(x, &c.post, &mut ws.xn[..md])?;
            taps.put_rows(|| format!("blocks.{i}.post_norm"), t0, l, &ws.xn[..md], d);
            let mn = m * n_in;
            self.lin(
                &ws.xn[..md],
                m,
                b.l1,
                None,
                d,
                n_in,
                &mut ws.a[..mn],
                &mut ws.wide,
            )?;
            self.lin(
                &ws.xn[..md],
                m,
                b.l2,
                None,
                d,
                n_in,
                &mut ws.b[..mn],
                &mut ws.wide,
            )?;
            taps.put_rows(|| format!("blocks.{i}.mlp.l1"), t0, l, &ws.a[..mn], n_in);
            taps.put_rows(|| format!("blocks.{i}.mlp.l2"), t0, l, &ws.b[..mn], n_in);
            // vortex ParallelGatedMLP: GELU (erf) or SiLU, identity after block 0 in Evo 2.
            if i == 0 || !cfg.evo2_style_activations {
                if cfg.mlp_activation == "silu" {
                    for v in ws.a[..mn].iter_mut() {
                        *v /= 1.0 + (-*v).exp();
                    }
                } else {
                    gelu_erf_inplace(&mut ws.a[..mn]);
                }
            }
            for (a, &bv) in ws.a[..mn].iter_mut().zip(&ws.b[..mn]) {
                *a *= bv;
            }
            self.lin(
                &ws.a[..mn],
                m,
                b.l3,
                None,
                n_in,
                d,
                &mut ws.o[..md],
                &mut ws.wide,
            )?;
            taps.put_rows(|| format!("blocks.{i}.mlp.l3"), t0, l, &ws.o[..md], d);
            taps.put_rows(|| format!("blocks.{i}.mlp"), t0, l, &ws.o[..md], d);
            for (x, &o) in x.iter_mut().zip(&ws.o[..md]) {
                *x += o;
            }
        }
        Ok(())
    }

    /// Whether a block's widened weights are kept for all its chunks: f32 arithmetic on bf16
    /// weights over more than one chunk of `p` positions.
    fn widen_once(&self, l: usize, p: usize) -> bool {
        self.precision == Precision::F32 && self.params.bf16().is_some() && p < l
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

    #[allow(clippy::too_many_arguments)]
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
        let wv = self.w(w);
        if m <= FEW_ROWS {
            // Decoding: one pass over the stored weights, no widened or packed copy.
            match (self.precision, wv) {
                (Precision::F32, _) => {
                    return linear_few_rows(x, wv, bias.as_deref(), m, k, n, y);
                }
                (Precision::Bf16, Weight::Bf16(_)) => {
                    // bf16 inputs times bf16 weights are exact in f32: the bf16 product.
                    let xr: Vec<f32> = x.iter().map(|&v| bf16_to_f32(f32_to_bf16(v))).collect();
                    return linear_few_rows(&xr, wv, bias.as_deref(), m, k, n, y);
                }
                _ => {}
            }
        }
        match self.precision {
            Precision::F32 if wide.cache && matches!(self.w(w), Weight::Bf16(_)) => {
                // Widen once per block, not once per chunk (module docs of Scratch).
                let key = w.range().start;
                let valid = &wide.widened[..wide.n_widened];
                let i = match valid.iter().position(|(o, _)| *o == key) {
                    Some(i) => i,
                    None => {
                        if wide.n_widened == wide.widened.len() {
                            wide.widened.push((key, Vec::new()));
                        }
                        let i = wide.n_widened;
                        wide.n_widened += 1;
                        let (o, buf) = &mut wide.widened[i];
                        *o = key;
                        self.w(w).widen(buf);
                        i
                    }
                };
                let wf = &wide.widened[i].1[..n * k];
                linear_forward(x, wf, bias.as_deref(), m, k, n, y)
            }
            Precision::F32 => {
                linear_weight(x, self.w(w), bias.as_deref(), m, k, n, y, &mut wide.f32)
            }
            Precision::Bf16 => {
                linear_bf16(x, self.w(w), bias.as_deref(), m, k, n, y, &mut wide.bf16)
            }
        }
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
            if !self.cfg.model_name.is_empty() {
                &self.cfg.model_name
            } else if self.cfg.generation == 1 {
                "StripedHyena 1"
            } else {
                "StripedHyena 2"
            },
            self.blocks.len(),
            self.cfg.hidden_size,
            self.params.len() + self.exact.len(),
            match self.params.dtype() {
                DType::Bf16 => "bf16 (poles, residues f32)",
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

/// The constants of one block's forward ([`Evo2::consts`]).
struct Consts {
    pre: Vec<f32>,
    post: Vec<f32>,
    mixer: MixerConsts,
}

enum MixerConsts {
    Hyena {
        /// The featurizer's taps `[K0, 3D]`, convolution order.
        taps0: Vec<f32>,
        short_b: Option<Vec<f32>>,
        inner: InnerConsts,
    },
    Attn {
        freqs: Vec<f32>,
    },
}

enum InnerConsts {
    /// SE / MR: taps `[K, D]` in convolution order, and MR's `D`.
    Fir { w: Vec<f32>, d: Option<Vec<f32>> },
    /// LI / complex modes: `D`.
    Modal { d: Vec<f32> },
}

/// What one block carries from a position to the next (its recurrent state).
#[derive(Clone)]
enum Carry {
    Hyena {
        /// The featurizer's input rows before the chunk `[K0 − 1, 3D]`.
        fir0: Vec<f32>,
        /// SE / MR: the inner FIR's input rows before the chunk `[K − 1, D]`; LI: the modal
        /// state `[D, N]`; complex modes: `[D, N, 2]`.
        inner: Vec<f32>,
    },
    Attn(KvCache),
}

/// A sequence being fed to the model piece by piece ([`Evo2::stream_forward`]): every block's
/// carried state after the positions fed so far. One token at a time, this is recurrent
/// generation; a [`StreamMark`] saves the state at a position so that two continuations
/// (a reference and an alternative allele) can share everything before it.
pub struct Stream {
    consts: Vec<Consts>,
    carry: Vec<Carry>,
    pos: usize,
}

/// The state of a [`Stream`] at one position ([`Stream::mark`]): the FIR tails and modal
/// states (small, `O(D·(K + N))` per block) and the position; the attention caches are
/// append-only, so their rows before the position stay valid and are not copied.
pub struct StreamMark {
    pos: usize,
    small: Vec<Vec<f32>>,
}

impl Stream {
    /// Positions fed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes held by the attention caches.
    pub fn kv_bytes(&self) -> usize {
        self.carry
            .iter()
            .map(|c| match c {
                Carry::Attn(kv) => kv.bytes(),
                Carry::Hyena { .. } => 0,
            })
            .sum()
    }

    /// Back to position 0 (zero states, empty caches; their buffers are kept).
    pub fn reset(&mut self) {
        for c in &mut self.carry {
            if let Carry::Hyena { fir0, inner } = c {
                fir0.fill(0.0);
                inner.fill(0.0);
            }
        }
        self.pos = 0;
    }

    /// Save the state at the current position.
    pub fn mark(&self) -> StreamMark {
        let mut small = Vec::new();
        for c in &self.carry {
            if let Carry::Hyena { fir0, inner } = c {
                small.push(fir0.clone());
                small.push(inner.clone());
            }
        }
        StreamMark {
            pos: self.pos,
            small,
        }
    }

    /// Go back to the state saved in `mark` (taken from this stream, at or before its
    /// current position); what was fed after it is forgotten.
    pub fn rewind(&mut self, mark: &StreamMark) -> Result<()> {
        if mark.pos > self.pos || mark.small.len() != 2 * self.n_hyena() {
            return Err(Error::config(
                "stream mark",
                mark.pos,
                format!(
                    "is not a mark of this stream (at position {}); take marks with \
                     Stream::mark",
                    self.pos
                ),
            ));
        }
        let mut it = mark.small.iter();
        for c in &mut self.carry {
            if let Carry::Hyena { fir0, inner } = c {
                let (a, b) = (it.next(), it.next());
                if let (Some(a), Some(b)) = (a, b) {
                    fir0.copy_from_slice(a);
                    inner.copy_from_slice(b);
                }
            }
        }
        self.pos = mark.pos;
        Ok(())
    }

    fn n_hyena(&self) -> usize {
        self.carry
            .iter()
            .filter(|c| matches!(c, Carry::Hyena { .. }))
            .count()
    }
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

    /// Record rows `t0 ..` of `[l, width]` output `name` (built only if it is wanted).
    fn put_rows(
        &mut self,
        name: impl FnOnce() -> String,
        t0: usize,
        l: usize,
        data: &[f32],
        width: usize,
    ) {
        if self.wanted.is_empty() {
            return;
        }
        let n = name();
        if !self.wanted.contains(&n) {
            return;
        }
        let e = self
            .got
            .entry(n)
            .or_insert_with(|| (vec![0.0; l * width], width));
        e.0[t0 * width..t0 * width + data.len()].copy_from_slice(data);
    }
}

/// Scratch of the matrix products of either precision.
#[derive(Default)]
struct Scratch {
    f32: Vec<f32>,
    bf16: Bf16Scratch,
    /// The f32 path over several chunks: the current block's bf16 weights widened once and
    /// reused by every chunk, `(offset in the store, values)`; the first `n_widened` are valid
    /// (the buffers are kept across blocks so their pages are touched once).
    widened: Vec<(usize, Vec<f32>)>,
    n_widened: usize,
    cache: bool,
}

impl Scratch {
    /// Start a block (or the head): forget the widened weights; keep them from now on when
    /// `cache` (f32 arithmetic on bf16 weights over more than one chunk).
    fn begin(&mut self, cache: bool) {
        self.n_widened = 0;
        self.cache = cache;
    }
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
    /// The chunk's keys and values `[H, m, hd]`, before they go into the cache.
    kt: Vec<f32>,
    vt: Vec<f32>,
    /// The key/value cache of the block-by-block forward, kept for its buffers.
    spare_kv: Option<KvCache>,
    /// A weight matrix widened from bf16, or packed operands of bf16 products.
    wide: Scratch,
    pub logits: Vec<f32>,
    /// Positions per chunk (see [`Evo2::forward`]); 0 takes [`DEFAULT_CHUNK`].
    pub chunk: usize,
}

/// Positions per chunk of the forward by default: large enough for efficient products, small
/// beside a long sequence's `[L, D]` residual stream.
pub const DEFAULT_CHUNK: usize = 1024;

impl Workspace {
    /// A workspace with chunks of `chunk` positions.
    pub fn with_chunk(chunk: usize) -> Self {
        Workspace {
            chunk,
            ..Default::default()
        }
    }

    fn resize(&mut self, l: usize, cfg: &Evo2Config) {
        use crate::ops::grow;
        if self.chunk == 0 {
            self.chunk = DEFAULT_CHUNK;
        }
        let p = self.chunk.min(l);
        let (d, n) = (cfg.hidden_size, cfg.inner_mlp_size);
        grow(&mut self.x, l * d);
        for v in [
            &mut self.xn,
            &mut self.u,
            &mut self.post,
            &mut self.inner,
            &mut self.o,
            &mut self.q,
            &mut self.kt,
            &mut self.vt,
        ] {
            grow(v, p * d);
        }
        grow(&mut self.z, p * 3 * d);
        grow(&mut self.zc, p * 3 * d);
        grow(&mut self.a, p * n);
        grow(&mut self.b, p * n);
    }
}
