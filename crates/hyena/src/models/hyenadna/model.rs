//! The HyenaDNA causal language model (Nguyen et al., "HyenaDNA: Long-Range Genomic Sequence
//! Modeling at Single Nucleotide Resolution", arXiv 2306.15794, Sec. 3; the HF
//! `HyenaDNAForCausalLM` layout).
//!
//! ```text
//! tokens [B, L] ─embed→ x_0 [B·L, D]
//! x_{l+½} = x_l + Hyena(LN1(x_l));  x_{l+1} = x_{l+½} + fc2(gelu(fc1(LN2(x_{l+½)))))
//! logits [B·L, V_pad] = LN_f(x_n) · lm_headᵀ
//! ```
//! Pre-norm residual blocks with a tanh-GELU MLP; the vocabulary is padded to a multiple of 8;
//! no position embeddings (the Hyena filters carry position). Tensor names are the HF
//! checkpoint keys (`hyena.backbone.layers.{i}.mixer.in_proj.weight`, …, `lm_head.weight`),
//! spelled once, by the constructors.
//!
//! [`Block`] is the one definition of a HyenaDNA block. It has three ways to run, each calling
//! the same layer objects: the training forward and backward here (activations kept in an
//! [`LmCache`]), the memory-lean chunked forward of [`super::lean`] (in place on the residual
//! stream, for a million bases), and the recurrent step of [`super::recurrent`] (one token,
//! O(1) state, for distilled models).

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::config::LmConfig;
use crate::error::{check_len, Error, Result};
use crate::layers::mlp::Mlp;
use crate::layers::norm::LayerNorm;
use crate::layers::{init, HyenaCache, HyenaGradWorkspace, HyenaOperator, OpInput};
use crate::models::parallel::{run_shards, ShardGrads};
use crate::ops::fftconv::FftConv;
use crate::ops::linear::{linear_backward, linear_forward};
use crate::ops::loss::{cross_entropy_sum, LossSum};
use crate::ops::set_len;
use crate::params::{check_params, many_mut, DType, Init, ParamStore, TensorSource, Vb, P};

/// One residual block: `x += mixer(norm1(x)); x += mlp(norm2(x))`.
#[derive(Clone, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub mixer: HyenaOperator,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
}

/// The language model: its configuration and the handles of its tensors in the model's
/// parameter buffer (see [`crate::params`]).
#[derive(Clone, Debug)]
pub struct HyenaLm {
    pub cfg: LmConfig,
    /// `hyena.backbone.embeddings.word_embeddings.weight` [V_pad, D].
    pub wte: P,
    pub blocks: Vec<Block>,
    /// `hyena.backbone.ln_f`.
    pub ln_f: LayerNorm,
    /// `lm_head.weight` [V_pad, D]; `None` when tied to the embedding.
    pub head: Option<P>,
}

/// How the constructor registers the LM head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Trained with the rest (language-model training).
    Trained,
    /// Kept but not trained: a classifier's backbone, whose checkpoint still loads as an LM.
    Frozen,
}

impl HyenaLm {
    /// The model for `cfg`, its tensors registered under `vb` (the HF checkpoint keys).
    pub fn new(cfg: &LmConfig, vb: &Vb<'_, '_>) -> Result<Self> {
        Self::with_head(cfg, vb, Head::Trained)
    }

    /// [`HyenaLm::new`] with the LM head registered as `head` says.
    pub fn with_head(cfg: &LmConfig, vb: &Vb<'_, '_>, head: Head) -> Result<Self> {
        cfg.validate()?;
        // Before the first tensor is registered: a config too large for the machine is refused
        // with the sizes to reduce, instead of aborting on a failed allocation.
        crate::memory::check_fits(
            &format!(
                "a HyenaDNA model of {} blocks, d_model {}, d_inner {}, l_max {}",
                cfg.n_layer,
                cfg.d_model(),
                cfg.d_inner,
                cfg.operator.l_max
            ),
            super::memory::model_bytes(cfg),
            "the config's n_layer, d_model, d_inner or l_max",
        )?;
        let (v, d, di) = (cfg.padded_vocab(), cfg.d_model(), cfg.d_inner);
        let eps = cfg.layer_norm_epsilon;
        let engine = Arc::new(FftConv::new());
        let bb = vb.pp("hyena").pp("backbone");
        let wte = bb.get(&[v, d], "embeddings.word_embeddings.weight")?;
        let blocks = (0..cfg.n_layer)
            .map(|i| {
                let vb = bb.pp(format!("layers.{i}"));
                Ok(Block {
                    norm1: LayerNorm::new(d, eps, &vb.pp("norm1"))?,
                    mixer: HyenaOperator::with_engine(
                        &cfg.operator,
                        &vb.pp("mixer"),
                        engine.clone(),
                    )?,
                    norm2: LayerNorm::new(d, eps, &vb.pp("norm2"))?,
                    mlp: Mlp::new(d, di, &vb.pp("mlp"), ("fc1", "fc2"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::new(d, eps, &bb.pp("ln_f"))?;
        let head = if cfg.tie_embeddings {
            None
        } else {
            let vb = match head {
                Head::Trained => vb.clone(),
                Head::Frozen => vb.frozen(),
            };
            Some(vb.get(&[v, d], "lm_head.weight")?)
        };
        let mut lm = HyenaLm {
            cfg: cfg.clone(),
            wte,
            blocks,
            ln_f,
            head,
        };
        lm.share_filter_buffers();
        Ok(lm)
    }

    /// A freshly initialised model and its parameters.
    pub fn fresh(cfg: &LmConfig, seed: u64) -> Result<(Self, ParamStore)> {
        let (lm, mut store) =
            ParamStore::build(Init::Zeros, DType::F32, |vb| HyenaLm::new(cfg, vb))?;
        lm.init(store.data_mut(), seed);
        Ok((lm, store))
    }

    /// The model stored in `src` (every tensor required, shape-checked) with its filter
    /// buffers (`required`: present with exactly their shapes; otherwise a missing buffer keeps
    /// the value computed from the config, as for released checkpoints).
    pub fn load(
        cfg: &LmConfig,
        src: &dyn TensorSource,
        required_buffers: bool,
    ) -> Result<(Self, ParamStore)> {
        let (mut lm, store) =
            ParamStore::build(Init::From(src), DType::F32, |vb| HyenaLm::new(cfg, vb))?;
        lm.load_buffers(src, required_buffers)?;
        Ok((lm, store))
    }

    /// The initialisation of the reference LMs (HyenaDNA's `_init_weights`, from GPT-2):
    /// Linear and embedding weights `N(0, 0.02)`, biases 0, `out_proj`/`fc2` weights
    /// `N(0, 0.02/sqrt(2·n_layer))`, LayerNorm weight 1; the short filter and the filter's
    /// skip keep their module defaults. Every `nn.Linear` is re-drawn, the filter MLP's too.
    pub fn init(&self, p: &mut [f32], seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let std = 0.02f32;
        let std_out = std / (2.0 * self.cfg.n_layer as f32).sqrt();
        let normal = |h: P, p: &mut [f32], s: f32, rng: &mut StdRng| {
            h.of_mut(p).copy_from_slice(&init::randn(rng, h.len(), s));
        };
        normal(self.wte, p, std, &mut rng);
        if let Some(h) = self.head {
            normal(h, p, std, &mut rng);
        }
        self.ln_f.init(p);
        for (i, blk) in self.blocks.iter().enumerate() {
            // The operator's module defaults from its own stream, as the reference builds the
            // module before `_init_weights` re-draws the linear layers.
            let mut op_rng = StdRng::seed_from_u64(seed.wrapping_add(1 + i as u64));
            blk.mixer.init(p, &mut op_rng);
            let pr = blk.mixer.proj;
            normal(pr.in_w, p, std, &mut rng);
            pr.in_b.of_mut(p).fill(0.0);
            normal(pr.out_w, p, std_out, &mut rng);
            pr.out_b.of_mut(p).fill(0.0);
            for (w, b) in blk.mixer.filter.linears() {
                normal(w, p, std, &mut rng);
                if let Some(b) = b {
                    b.of_mut(p).fill(0.0);
                }
            }
            blk.norm1.init(p);
            blk.norm2.init(p);
            let m = blk.mlp;
            normal(m.w1, p, std, &mut rng);
            m.b1.of_mut(p).fill(0.0);
            normal(m.w2, p, std_out, &mut rng);
            m.b2.of_mut(p).fill(0.0);
        }
    }

    /// Read every block's filter buffers from `src` (see [`crate::layers::FilterBuffers::load`]
    /// for `required`); blocks whose `z`, `t` equal the block before share one copy.
    pub fn load_buffers(&mut self, src: &dyn TensorSource, required: bool) -> Result<()> {
        for i in 0..self.blocks.len() {
            let (before, rest) = self.blocks.split_at_mut(i);
            let prev = before.last().map(|b| &b.mixer.filter.buffers);
            rest[0].mixer.filter.load_buffers(src, required, prev)?;
        }
        Ok(())
    }

    /// Every block's filter buffers with their checkpoint names (`….filter_fn.pos_emb.z`, …).
    pub fn buffer_tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        self.blocks
            .iter()
            .flat_map(|b| b.mixer.filter.buffer_tensors())
            .collect()
    }

    /// Let every block share the first block's filter buffers `z`, `t` where they are equal
    /// (they depend only on `l_max` and `E`): saves `(n_layer − 1)·(E+1)·l_max` floats, 170 MB
    /// at HyenaDNA-large's shape.
    fn share_filter_buffers(&mut self) {
        if let Some((first, rest)) = self.blocks.split_first_mut() {
            for b in rest {
                b.mixer
                    .filter
                    .buffers
                    .share_with(&first.mixer.filter.buffers);
            }
        }
    }

    /// The operator of block `i`.
    pub fn operator(&self, i: usize) -> &HyenaOperator {
        &self.blocks[i].mixer
    }

    /// Mutable access to block `i`'s operator, e.g. to give it explicit filters.
    pub fn operator_mut(&mut self, i: usize) -> &mut HyenaOperator {
        &mut self.blocks[i].mixer
    }

    /// The output head `[V_pad, D]` (the embedding when tied).
    pub fn lm_head(&self) -> P {
        self.head.unwrap_or(self.wte)
    }

    /// An error unless `p` is a parameter buffer of this model's layout.
    fn check(&self, op: &'static str, p: &[f32]) -> Result<()> {
        check_params(op, p, self.head.unwrap_or(self.ln_f.b))
    }
}

/// Activations of one block saved for the backward, `[B·L, ·]` rows.
#[derive(Clone, Debug, Default)]
struct BlockCache {
    x: Vec<f32>,   // block input (residual stream) [BL, D]
    h1: Vec<f32>,  // LN1(x) [BL, D], or LN1 of the embedding rows [V_pad, D] when folded
    mu1: Vec<f32>, // [BL] (or [V_pad])
    rs1: Vec<f32>, // [BL] (or [V_pad])
    mixer: HyenaCache,
    xh: Vec<f32>, // x + mixer(h1)
    h2: Vec<f32>, // LN2(xh)
    mu2: Vec<f32>,
    rs2: Vec<f32>,
    a: Vec<f32>, // fc1 output [BL, d_inner]
    g: Vec<f32>, // gelu(a)
}

/// Everything the LM forward keeps for its backward (reused across steps).
#[derive(Clone, Debug, Default)]
pub struct LmCache {
    b: usize,
    l: usize,
    /// Whether the first block's in_proj runs on a token table ([`OpInput::Table`]): `None`
    /// decides per forward (when the batch has at least 4 positions per vocabulary row).
    token_table: Option<bool>,
    /// The choice of the last forward.
    folded: bool,
    tokens: Vec<u32>,
    blocks: Vec<BlockCache>,
    xn: Vec<f32>, // final residual stream [BL, D]
    hf: Vec<f32>, // LN_f(xn)
    muf: Vec<f32>,
    rsf: Vec<f32>,
    /// Logits `[B·L, V_pad]` of the last forward.
    pub logits: Vec<f32>,
    // backward scratch, kept between steps: large fresh allocations are mmapped and cost a
    // page fault per 4 KiB on first touch (about 0.3 s per step at the -small shape).
    mixer_ws: HyenaGradWorkspace,
    d_h: Vec<f32>,   // [BL, D]
    d_x: Vec<f32>,   // [BL, D]
    d_g: Vec<f32>,   // [BL, D_inner]: d(gelu output), then d(fc1 output) in place
    d_tab: Vec<f32>, // [V_pad, D]: first block's LN1-output gradient per vocabulary row (folded)
}

impl LmCache {
    /// The Hyena operator cache of block `i` from the last forward (its inputs, gates and
    /// convolution outputs: what a recurrent prefill reads).
    pub fn mixer(&self, i: usize) -> &HyenaCache {
        &self.blocks[i].mixer
    }

    /// `LN_f` of the final residual stream, `[B·L, D]`, from the last forward (the backbone
    /// output).
    pub fn hidden(&self) -> &[f32] {
        &self.hf
    }

    /// Sequences and length `(B, L)` of the last forward.
    pub fn shape(&self) -> (usize, usize) {
        (self.b, self.l)
    }

    /// A cache whose forward always (`true`) or never (`false`) runs the first block's in_proj
    /// on the token table; the default decides by shape. Both give the same function; this is
    /// for tests and measurements.
    pub fn with_token_table(on: bool) -> Self {
        LmCache {
            token_table: Some(on),
            ..Default::default()
        }
    }
}

impl HyenaLm {
    /// Forward: `tokens [B, L]` → `cache.logits [B·L, V_pad]`, with the parameters `p`.
    pub fn forward(
        &self,
        p: &[f32],
        tokens: &[u32],
        b: usize,
        l: usize,
        cache: &mut LmCache,
    ) -> Result<()> {
        self.forward_hidden(p, tokens, b, l, cache)?;
        let (v, d, bl) = (self.cfg.padded_vocab(), self.cfg.d_model(), b * l);
        set_len(&mut cache.logits, bl * v);
        linear_forward(
            &cache.hf,
            self.lm_head().of(p),
            None,
            bl,
            d,
            v,
            &mut cache.logits,
        )
    }

    /// The forward up to the final LayerNorm: afterwards [`LmCache::hidden`] holds
    /// `LN_f(x) [B·L, D]`, the backbone output that a sequence head pools (the reference's
    /// `HyenaDNAModel` output), and [`HyenaLm::backward_hidden`] can run. The logits are not
    /// computed.
    pub fn forward_hidden(
        &self,
        p: &[f32],
        tokens: &[u32],
        b: usize,
        l: usize,
        cache: &mut LmCache,
    ) -> Result<()> {
        const OP: &str = "HyenaLm forward";
        self.check(OP, p)?;
        check_len(OP, "tokens [B, L]", tokens.len(), b * l)?;
        let (v, d, di) = (
            self.cfg.padded_vocab(),
            self.cfg.d_model(),
            self.cfg.d_inner,
        );
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(Error::config(
                "token id",
                t,
                format!("must be < vocab_size {}", self.cfg.vocab_size),
            ));
        }
        let bl = b * l;
        cache.b = b;
        cache.l = l;
        // The first block's input is the embedding row of each token, so LN1 and in_proj are
        // functions of the token: run them on the V_pad vocabulary rows and gather (both maps
        // are linear in the row for the backward's sums). At HyenaDNA-tiny (V_pad 16,
        // B·L 4096 per shard) this removes 1/8 of the step's matrix-product FLOPs.
        cache.folded = cache.token_table.unwrap_or(4 * v <= bl);
        cache.tokens.clear();
        cache.tokens.extend_from_slice(tokens);
        cache
            .blocks
            .resize_with(self.cfg.n_layer, BlockCache::default);
        let wte = self.wte.of(p);
        // x_0 = embedding rows [BL, D]
        let mut x = std::mem::take(&mut cache.xn);
        set_len(&mut x, bl * d);
        for (row, &t) in x.chunks_exact_mut(d).zip(tokens) {
            row.copy_from_slice(&wte[t as usize * d..(t as usize + 1) * d]);
        }
        for (i, (blk, bc)) in self.blocks.iter().zip(cache.blocks.iter_mut()).enumerate() {
            std::mem::swap(&mut bc.x, &mut x); // bc.x = block input
            let folded = i == 0 && cache.folded;
            let n1 = if folded { v } else { bl };
            set_len(&mut bc.h1, n1 * d);
            set_len(&mut bc.mu1, n1);
            set_len(&mut bc.rs1, n1);
            for buf in [&mut bc.xh, &mut bc.h2] {
                set_len(buf, bl * d);
            }
            for buf in [&mut bc.mu2, &mut bc.rs2] {
                set_len(buf, bl);
            }
            set_len(&mut bc.a, bl * di);
            set_len(&mut bc.g, bl * di);
            blk.norm1.forward(
                p,
                if folded { wte } else { &bc.x },
                &mut bc.h1,
                &mut bc.mu1,
                &mut bc.rs1,
            )?;
            let input = if folded {
                OpInput::Table {
                    table: &bc.h1,
                    idx: tokens,
                }
            } else {
                OpInput::Rows(&bc.h1)
            };
            // xh = x + mixer(LN1(x)), the skip folded into out_proj's bias pass.
            blk.mixer
                .forward_input(p, input, Some(&bc.x), b, l, &mut bc.xh, &mut bc.mixer)?;
            blk.norm2
                .forward(p, &bc.xh, &mut bc.h2, &mut bc.mu2, &mut bc.rs2)?;
            // next residual stream: x = xh + mlp(h2) (x holds the previous block's input buffer)
            set_len(&mut x, bl * d);
            blk.mlp
                .forward(p, &bc.h2, Some(&bc.xh), bl, &mut bc.a, &mut bc.g, &mut x)?;
        }
        cache.xn = x;
        set_len(&mut cache.hf, bl * d);
        set_len(&mut cache.muf, bl);
        set_len(&mut cache.rsf, bl);
        self.ln_f
            .forward(p, &cache.xn, &mut cache.hf, &mut cache.muf, &mut cache.rsf)
    }

    /// Backward from `dlogits [B·L, V_pad]` (e.g. from [`crate::ops::loss::cross_entropy`]);
    /// accumulates into the gradient buffer `g` (laid out like `p`).
    pub fn backward(
        &self,
        p: &[f32],
        dlogits: &[f32],
        cache: &mut LmCache,
        g: &mut [f32],
    ) -> Result<()> {
        const OP: &str = "HyenaLm backward";
        self.check(OP, p)?;
        check_len(OP, "gradient buffer", g.len(), p.len())?;
        let (b, l) = (cache.b, cache.l);
        let (v, d) = (self.cfg.padded_vocab(), self.cfg.d_model());
        let bl = b * l;
        check_len(OP, "dlogits [B·L, V_pad]", dlogits.len(), bl * v)?;
        // logits = hf · headᵀ
        let mut dh = std::mem::take(&mut cache.d_h);
        set_len(&mut dh, bl * d);
        let head = self.lm_head();
        linear_backward(
            dlogits,
            &cache.hf,
            head.of(p),
            (bl, d, v),
            Some(&mut dh),
            head.of_mut(g),
            None,
        )?;
        self.backward_blocks(p, dh, cache, g)
    }

    /// Backward from `dhidden [B·L, D]`, the gradient of the final hidden states
    /// ([`LmCache::hidden`], after `LN_f`), e.g. from a pooled classification head; accumulates
    /// into `g` (the LM head gets none). Runs after [`HyenaLm::forward_hidden`] or
    /// [`HyenaLm::forward`].
    pub fn backward_hidden(
        &self,
        p: &[f32],
        dhidden: &[f32],
        cache: &mut LmCache,
        g: &mut [f32],
    ) -> Result<()> {
        const OP: &str = "HyenaLm backward_hidden";
        self.check(OP, p)?;
        let bl = cache.b * cache.l;
        check_len(
            OP,
            "dhidden [B·L, D]",
            dhidden.len(),
            bl * self.cfg.d_model(),
        )?;
        let mut dh = std::mem::take(&mut cache.d_h);
        dh.clear();
        dh.extend_from_slice(dhidden);
        self.backward_blocks(p, dh, cache, g)
    }

    /// The backward below the LM head: `dh [B·L, D]` holds d(LN_f output) and becomes scratch.
    fn backward_blocks(
        &self,
        p: &[f32],
        mut dh: Vec<f32>,
        cache: &mut LmCache,
        g: &mut [f32],
    ) -> Result<()> {
        let bl = cache.b * cache.l;
        let (v, d, di) = (
            self.cfg.padded_vocab(),
            self.cfg.d_model(),
            self.cfg.d_inner,
        );
        // Every kernel below writes (not accumulates) these, so stale contents do not matter.
        let mut dx = std::mem::take(&mut cache.d_x);
        let mut dg = std::mem::take(&mut cache.d_g);
        for (buf, n) in [(&mut dx, bl * d), (&mut dg, bl * di)] {
            set_len(buf, n);
        }
        // dx = d(residual stream), flowing down through the blocks.
        self.ln_f
            .backward(p, &dh, &cache.xn, &cache.muf, &cache.rsf, &mut dx, false, g)?;
        for i in (0..self.cfg.n_layer).rev() {
            let (blk, bc) = (&self.blocks[i], &mut cache.blocks[i]);
            // x_{i+1} = xh + mlp(LN2(xh)); dg is scratch, dh gets d(LN2 output).
            blk.mlp
                .backward(p, &dx, &bc.h2, &bc.a, &bc.g, bl, &mut dg, &mut dh, g)?;
            // dxh = dx (residual) + the branch through LN2, added in place.
            blk.norm2
                .backward(p, &dh, &bc.xh, &bc.mu2, &bc.rs2, &mut dx, true, g)?;
            // xh = x + mixer(LN1(x))
            if i == 0 && cache.folded {
                // The branch through LN1 per vocabulary row: dh [V_pad, D] holds each row's
                // gradient summed over its positions; LN1's backward is linear in it (the
                // row's statistics are fixed), so it goes straight into the embedding gradient.
                let input = OpInput::Table {
                    table: &bc.h1,
                    idx: &cache.tokens,
                };
                let dtab = &mut cache.d_tab;
                set_len(dtab, v * d);
                blk.mixer
                    .backward_input(p, &dx, input, &bc.mixer, dtab, g, &mut cache.mixer_ws)?;
                let [gwte, gw, gb] = many_mut(g, [self.wte, blk.norm1.w, blk.norm1.b]);
                blk.norm1.backward_into(
                    p,
                    dtab,
                    self.wte.of(p),
                    &bc.mu1,
                    &bc.rs1,
                    gwte,
                    true,
                    gw,
                    gb,
                )?;
                continue;
            }
            blk.mixer
                .backward(p, &dx, &bc.h1, &bc.mixer, &mut dh, g, &mut cache.mixer_ws)?;
            blk.norm1
                .backward(p, &dh, &bc.x, &bc.mu1, &bc.rs1, &mut dx, true, g)?;
        }
        // embedding: scatter-add rows
        let gwte = self.wte.of_mut(g);
        for (row, &t) in dx.chunks_exact(d).zip(&cache.tokens) {
            let dst = &mut gwte[t as usize * d..(t as usize + 1) * d];
            for (a, r) in dst.iter_mut().zip(row) {
                *a += r;
            }
        }
        cache.d_h = dh;
        cache.d_x = dx;
        cache.d_g = dg;
        Ok(())
    }
}

/// One data-parallel shard's buffers: its activations and logits gradient.
#[derive(Clone, Debug, Default)]
struct Shard {
    cache: LmCache,
    dlogits: Vec<f32>,
}

/// Buffers for [`HyenaLm::loss_and_grad`] and [`HyenaLm::loss`], kept between steps so that
/// steady-state steps allocate nothing. One shard per worker thread (at most one per sequence).
#[derive(Clone, Debug, Default)]
pub struct LmWorkspace {
    shards: Vec<Shard>,
    grads: ShardGrads,
}

impl HyenaLm {
    /// One forward, cross-entropy and backward over `x, y [B, L]`: accumulates
    /// `scale · ∇(mean loss)` into `g` and returns the summed loss statistics. Data-parallel
    /// over the batch ([`crate::models::parallel`]): the numbers depend on the shard count
    /// (the summation order), hence on the thread count, and on nothing else.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grad(
        &self,
        p: &[f32],
        x: &[u32],
        y: &[u32],
        b: usize,
        l: usize,
        scale: f32,
        ws: &mut LmWorkspace,
        g: &mut [f32],
    ) -> Result<LossSum> {
        self.loss_and_grad_scaled(p, x, y, b, l, scale / (b * l).max(1) as f32, ws, g)
    }

    /// [`HyenaLm::loss_and_grad`] with the factor of each position's gradient given:
    /// `token_scale = scale / (B_total · L)`. A data-parallel rank runs its rows of a batch with
    /// the whole batch's factor, so that the ranks' gradients add up to the whole batch's.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grad_scaled(
        &self,
        p: &[f32],
        x: &[u32],
        y: &[u32],
        b: usize,
        l: usize,
        token_scale: f32,
        ws: &mut LmWorkspace,
        g: &mut [f32],
    ) -> Result<LossSum> {
        check_len("HyenaLm loss", "tokens [B, L]", x.len(), b * l)?;
        check_len("HyenaLm loss", "targets [B, L]", y.len(), b * l)?;
        let scale = token_scale;
        let stats = run_shards(
            &mut ws.shards,
            &mut ws.grads,
            Some(g),
            b,
            |sh, (start, n), g| {
                let rows = start * l..(start + n) * l;
                let st = self.forward_ce(p, sh, &x[rows.clone()], &y[rows], n, l, scale)?;
                if let Some(g) = g {
                    self.backward(p, &sh.dlogits, &mut sh.cache, g)?;
                }
                Ok(st)
            },
        )?;
        Ok(LossSum::total(stats))
    }

    /// Forward and cross-entropy only (evaluation), data-parallel like
    /// [`HyenaLm::loss_and_grad`].
    pub fn loss(
        &self,
        p: &[f32],
        x: &[u32],
        y: &[u32],
        b: usize,
        l: usize,
        ws: &mut LmWorkspace,
    ) -> Result<LossSum> {
        check_len("HyenaLm loss", "tokens [B, L]", x.len(), b * l)?;
        check_len("HyenaLm loss", "targets [B, L]", y.len(), b * l)?;
        let stats = run_shards(&mut ws.shards, &mut ws.grads, None, b, |sh, (s, n), _| {
            let rows = s * l..(s + n) * l;
            self.forward_ce(p, sh, &x[rows.clone()], &y[rows], n, l, 0.0)
        })?;
        Ok(LossSum::total(stats))
    }

    /// Forward of `xs [n, L]` into the shard's cache, then cross-entropy against `ys [n, L]`,
    /// writing the shard's `dlogits = (softmax - onehot) · scale`.
    #[allow(clippy::too_many_arguments)]
    fn forward_ce(
        &self,
        p: &[f32],
        sh: &mut Shard,
        xs: &[u32],
        ys: &[u32],
        n: usize,
        l: usize,
        scale: f32,
    ) -> Result<LossSum> {
        let v = self.cfg.padded_vocab();
        self.forward(p, xs, n, l, &mut sh.cache)?;
        sh.dlogits.resize(n * l * v, 0.0);
        cross_entropy_sum(&sh.cache.logits, ys, v, None, scale, &mut sh.dlogits)
    }
}
