//! The HyenaDNA causal language model (spec Sec. 3.2; the HF `HyenaDNAForCausalLM` layout).
//!
//! ```text
//! tokens [B, L] ─embed→ x_0 [B·L, D]
//! x_{l+½} = x_l + Hyena(LN1(x_l));  x_{l+1} = x_{l+½} + fc2(gelu(fc1(LN2(x_{l+½)))))
//! logits [B·L, V_pad] = LN_f(x_n) · lm_headᵀ
//! ```
//! Pre-norm residual blocks with a tanh-GELU MLP; the vocabulary is padded to a multiple of 8;
//! no position embeddings (the Hyena filters carry position). Parameter names mirror the HF
//! checkpoint keys (`hyena.backbone.layers.{i}.mixer.in_proj.weight`, …, `lm_head.weight`).
//! Forward fills an [`LmCache`]; backward accumulates into an [`LmParams`] of gradients.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::config::HyenaConfig;
use crate::error::{check_len, Error, Result};
use crate::layers::{
    init, HyenaCache, HyenaGradWorkspace, HyenaOperator, HyenaParams, OpInput, Params, Visitor,
    VisitorMut,
};
use crate::ops::act::{bias_gelu_forward, gelu_backward_bias};
use crate::ops::fftconv::FftConv;
use crate::ops::linear::{linear_backward, linear_forward, linear_forward_residual};
use crate::ops::norm::{layernorm_backward, layernorm_backward_acc, layernorm_forward};
use crate::ops::set_len;

/// Language-model configuration (HF `config.json` names where they exist).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LmConfig {
    /// Real vocabulary size (12 for the HyenaDNA character tokenizer).
    pub vocab_size: usize,
    /// Embedding rows are padded up to a multiple of this (8 in HyenaDNA).
    pub pad_vocab_size_multiple: usize,
    /// Number of residual blocks.
    pub n_layer: usize,
    /// MLP hidden width (`4·D` in HyenaDNA).
    pub d_inner: usize,
    pub layer_norm_epsilon: f32,
    /// Share the LM head with the embedding (safari) or keep a separate one (HF HyenaDNA).
    pub tie_embeddings: bool,
    /// The Hyena operator of every block; its `d_model` is the model width.
    pub operator: HyenaConfig,
}

impl Default for LmConfig {
    fn default() -> Self {
        LmConfig {
            vocab_size: 12,
            pad_vocab_size_multiple: 8,
            n_layer: 2,
            d_inner: 512,
            layer_norm_epsilon: 1e-5,
            tie_embeddings: false,
            operator: HyenaConfig {
                d_model: 128,
                ..HyenaConfig::default()
            },
        }
    }
}

impl LmConfig {
    /// The shape of the released HyenaDNA checkpoints (spec Sec. 3.4) at width `d`: `n_layer`
    /// blocks, `d_inner` 4·d, order 2, implicit filter with emb_dim 5, filter_order 64, w 10,
    /// shift 0.05 and the released `(o d)` channel layout; vocabulary 12 padded to 16.
    pub fn hyenadna(d: usize, n_layer: usize, l_max: usize) -> Self {
        use crate::config::{FilterConfig, FilterLayout};
        LmConfig {
            n_layer,
            d_inner: 4 * d,
            operator: HyenaConfig {
                d_model: d,
                l_max,
                filter: FilterConfig {
                    emb_dim: 5,
                    filter_order: 64,
                    w: 10.0,
                    shift: 0.05,
                    layout: FilterLayout::Blocked,
                    ..FilterConfig::default()
                },
                ..HyenaConfig::default()
            },
            ..LmConfig::default()
        }
    }

    /// Model width D.
    pub fn d_model(&self) -> usize {
        self.operator.d_model
    }
    /// Vocabulary rows after padding.
    pub fn padded_vocab(&self) -> usize {
        let m = self.pad_vocab_size_multiple.max(1);
        self.vocab_size.div_ceil(m) * m
    }
    /// Check every field.
    pub fn validate(&self) -> Result<()> {
        if self.vocab_size == 0 {
            return Err(Error::config("vocab_size", 0, "must be >= 1"));
        }
        if self.n_layer == 0 {
            return Err(Error::config("n_layer", 0, "must be >= 1"));
        }
        if self.d_inner == 0 {
            return Err(Error::config(
                "d_inner",
                0,
                "must be >= 1 (HyenaDNA uses 4·d_model)",
            ));
        }
        self.operator.validate()
    }
}

/// One residual block's parameters. Names: `norm1.*`, `mixer.*`, `norm2.*`, `mlp.fc1.*`, `mlp.fc2.*`.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockParams {
    pub norm1_w: Vec<f32>,
    pub norm1_b: Vec<f32>,
    pub mixer: HyenaParams,
    pub norm2_w: Vec<f32>,
    pub norm2_b: Vec<f32>,
    pub fc1_w: Vec<f32>,
    pub fc1_b: Vec<f32>,
    pub fc2_w: Vec<f32>,
    pub fc2_b: Vec<f32>,
    d: usize,
    di: usize,
}

/// All trainable parameters of the LM (gradients use the same type).
#[derive(Clone, Debug, PartialEq)]
pub struct LmParams {
    /// `hyena.backbone.embeddings.word_embeddings.weight` [V_pad, D].
    pub wte: Vec<f32>,
    pub blocks: Vec<BlockParams>,
    /// `hyena.backbone.ln_f.{weight,bias}` [D].
    pub lnf_w: Vec<f32>,
    pub lnf_b: Vec<f32>,
    /// `lm_head.weight` [V_pad, D]; empty when tied to `wte`.
    pub lm_head: Vec<f32>,
    v: usize,
    d: usize,
}

const BACKBONE: &str = "hyena.backbone.";

impl LmParams {
    /// Zero parameters shaped for `cfg`.
    pub fn zeros(cfg: &LmConfig) -> Self {
        let (v, d, di) = (cfg.padded_vocab(), cfg.d_model(), cfg.d_inner);
        let block = BlockParams {
            norm1_w: vec![0.0; d],
            norm1_b: vec![0.0; d],
            mixer: HyenaParams::zeros(&cfg.operator),
            norm2_w: vec![0.0; d],
            norm2_b: vec![0.0; d],
            fc1_w: vec![0.0; di * d],
            fc1_b: vec![0.0; di],
            fc2_w: vec![0.0; d * di],
            fc2_b: vec![0.0; d],
            d,
            di,
        };
        LmParams {
            wte: vec![0.0; v * d],
            blocks: vec![block; cfg.n_layer],
            lnf_w: vec![0.0; d],
            lnf_b: vec![0.0; d],
            lm_head: if cfg.tie_embeddings {
                Vec::new()
            } else {
                vec![0.0; v * d]
            },
            v,
            d,
        }
    }
}

impl Params for LmParams {
    fn visit(&self, prefix: &str, f: &mut Visitor<'_>) {
        let (v, d) = (self.v, self.d);
        f(
            &format!("{prefix}{BACKBONE}embeddings.word_embeddings.weight"),
            &[v, d],
            &self.wte,
        );
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("{prefix}{BACKBONE}layers.{i}.");
            f(&format!("{p}norm1.weight"), &[d], &b.norm1_w);
            f(&format!("{p}norm1.bias"), &[d], &b.norm1_b);
            b.mixer.visit(&format!("{p}mixer."), f);
            f(&format!("{p}norm2.weight"), &[d], &b.norm2_w);
            f(&format!("{p}norm2.bias"), &[d], &b.norm2_b);
            f(&format!("{p}mlp.fc1.weight"), &[b.di, d], &b.fc1_w);
            f(&format!("{p}mlp.fc1.bias"), &[b.di], &b.fc1_b);
            f(&format!("{p}mlp.fc2.weight"), &[d, b.di], &b.fc2_w);
            f(&format!("{p}mlp.fc2.bias"), &[d], &b.fc2_b);
        }
        f(&format!("{prefix}{BACKBONE}ln_f.weight"), &[d], &self.lnf_w);
        f(&format!("{prefix}{BACKBONE}ln_f.bias"), &[d], &self.lnf_b);
        if !self.lm_head.is_empty() {
            f(&format!("{prefix}lm_head.weight"), &[v, d], &self.lm_head);
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut VisitorMut<'_>) {
        let (v, d) = (self.v, self.d);
        f(
            &format!("{prefix}{BACKBONE}embeddings.word_embeddings.weight"),
            &[v, d],
            &mut self.wte,
        );
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("{prefix}{BACKBONE}layers.{i}.");
            f(&format!("{p}norm1.weight"), &[d], &mut b.norm1_w);
            f(&format!("{p}norm1.bias"), &[d], &mut b.norm1_b);
            b.mixer.visit_mut(&format!("{p}mixer."), f);
            f(&format!("{p}norm2.weight"), &[d], &mut b.norm2_w);
            f(&format!("{p}norm2.bias"), &[d], &mut b.norm2_b);
            f(&format!("{p}mlp.fc1.weight"), &[b.di, d], &mut b.fc1_w);
            f(&format!("{p}mlp.fc1.bias"), &[b.di], &mut b.fc1_b);
            f(&format!("{p}mlp.fc2.weight"), &[d, b.di], &mut b.fc2_w);
            f(&format!("{p}mlp.fc2.bias"), &[d], &mut b.fc2_b);
        }
        f(
            &format!("{prefix}{BACKBONE}ln_f.weight"),
            &[d],
            &mut self.lnf_w,
        );
        f(
            &format!("{prefix}{BACKBONE}ln_f.bias"),
            &[d],
            &mut self.lnf_b,
        );
        if !self.lm_head.is_empty() {
            f(
                &format!("{prefix}lm_head.weight"),
                &[v, d],
                &mut self.lm_head,
            );
        }
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

/// The language model: config, parameters and the operators of its blocks.
#[derive(Clone, Debug)]
pub struct HyenaLm {
    pub cfg: LmConfig,
    pub params: LmParams,
    /// One operator per block; their `params` are unused (the LM's `params.blocks[i].mixer`
    /// is the source of truth), they provide filters, buffers and the FFT engine.
    ops: Vec<HyenaOperator>,
}

impl HyenaLm {
    /// A fresh model initialised like the reference LMs (spec Sec. 2.4): Linear and embedding
    /// weights `N(0, 0.02)`, biases 0, `out_proj`/`fc2` `N(0, 0.02/sqrt(2·n_layer))`,
    /// LayerNorm weight 1, short filter and filter bias at their module defaults.
    pub fn new(cfg: &LmConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let engine = Arc::new(FftConv::new());
        let mut params = LmParams::zeros(cfg);
        let mut ops = Vec::with_capacity(cfg.n_layer);
        let std = 0.02f32;
        let std_out = std / (2.0 * cfg.n_layer as f32).sqrt();
        params.wte = init::randn(&mut rng, params.wte.len(), std);
        if !cfg.tie_embeddings {
            params.lm_head = init::randn(&mut rng, params.lm_head.len(), std);
        }
        params.lnf_w.fill(1.0);
        for (i, b) in params.blocks.iter_mut().enumerate() {
            let op = HyenaOperator::with_engine(
                &cfg.operator,
                seed.wrapping_add(1 + i as u64),
                engine.clone(),
            )?;
            let mut m = op.params.clone();
            // Every nn.Linear is re-drawn, including the filter MLP (spec Sec. 2.4).
            m.in_w = init::randn(&mut rng, m.in_w.len(), std);
            m.in_b.fill(0.0);
            m.out_w = init::randn(&mut rng, m.out_w.len(), std_out);
            m.out_b.fill(0.0);
            let fp = &mut m.filter;
            fp.w0 = init::randn(&mut rng, fp.w0.len(), std);
            fp.b0.fill(0.0);
            for (w, bb) in fp.inner_w.iter_mut().zip(fp.inner_b.iter_mut()) {
                *w = init::randn(&mut rng, w.len(), std);
                bb.fill(0.0);
            }
            fp.w_out = init::randn(&mut rng, fp.w_out.len(), std);
            b.mixer = m;
            b.norm1_w.fill(1.0);
            b.norm2_w.fill(1.0);
            b.fc1_w = init::randn(&mut rng, b.fc1_w.len(), std);
            b.fc2_w = init::randn(&mut rng, b.fc2_w.len(), std_out);
            ops.push(op);
        }
        let mut lm = HyenaLm {
            cfg: cfg.clone(),
            params,
            ops,
        };
        lm.share_filter_buffers();
        Ok(lm)
    }

    /// Read every block's filter buffers from `file` (see [`FilterBuffers::load`] for
    /// `required`); blocks whose `z`, `t` equal the block before share one copy.
    ///
    /// [`FilterBuffers::load`]: crate::layers::FilterBuffers::load
    pub fn load_filter_buffers(
        &mut self,
        file: &crate::io::safetensors::TensorFile,
        required: bool,
    ) -> Result<()> {
        let dims = (self.cfg.operator.l_max, self.cfg.operator.filter.emb_dim);
        for i in 0..self.ops.len() {
            let (before, rest) = self.ops.split_at_mut(i);
            let prefix = format!("{BACKBONE}layers.{i}.mixer.filter_fn.");
            let prev = before.last().map(|op| &op.filter.buffers);
            rest[0]
                .filter
                .buffers
                .load(&prefix, dims, file, required, prev)?;
        }
        Ok(())
    }

    /// Let every block share the first block's filter buffers `z`, `t` where they are equal
    /// (they depend only on `l_max` and `E`): saves `(n_layer − 1)·(E+1)·l_max` floats, 170 MB
    /// at HyenaDNA-large's shape.
    fn share_filter_buffers(&mut self) {
        if let Some((first, rest)) = self.ops.split_first_mut() {
            for op in rest {
                op.filter.buffers.share_with(&first.filter.buffers);
            }
        }
    }

    /// Gradient buffers shaped like the parameters, all zero.
    pub fn zero_grads(&self) -> LmParams {
        LmParams::zeros(&self.cfg)
    }

    /// The operator of block `i` (filters and buffers; see the field doc).
    pub fn operator(&self, i: usize) -> &HyenaOperator {
        &self.ops[i]
    }

    /// Mutable access to block `i`'s operator, e.g. to load filter buffers from a checkpoint.
    pub fn operator_mut(&mut self, i: usize) -> &mut HyenaOperator {
        &mut self.ops[i]
    }

    /// The output head `[V_pad, D]` (the embedding when tied).
    pub fn lm_head(&self) -> &[f32] {
        if self.cfg.tie_embeddings {
            &self.params.wte
        } else {
            &self.params.lm_head
        }
    }

    /// Forward: `tokens [B, L]` → `cache.logits [B·L, V_pad]`.
    pub fn forward(&self, tokens: &[u32], b: usize, l: usize, cache: &mut LmCache) -> Result<()> {
        self.forward_hidden(tokens, b, l, cache)?;
        let (v, d, bl) = (self.cfg.padded_vocab(), self.cfg.d_model(), b * l);
        set_len(&mut cache.logits, bl * v);
        linear_forward(&cache.hf, self.lm_head(), None, bl, d, v, &mut cache.logits)
    }

    /// The forward up to the final LayerNorm: afterwards [`LmCache::hidden`] holds
    /// `LN_f(x) [B·L, D]`, the backbone output that a sequence head pools (the reference's
    /// `HyenaDNAModel` output), and [`HyenaLm::backward_hidden`] can run. The logits are not
    /// computed.
    pub fn forward_hidden(
        &self,
        tokens: &[u32],
        b: usize,
        l: usize,
        cache: &mut LmCache,
    ) -> Result<()> {
        const OP: &str = "HyenaLm forward";
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
        let eps = self.cfg.layer_norm_epsilon;
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
        // x_0 = embedding rows [BL, D]
        let mut x = std::mem::take(&mut cache.xn);
        set_len(&mut x, bl * d);
        for (row, &t) in x.chunks_exact_mut(d).zip(tokens) {
            row.copy_from_slice(&self.params.wte[t as usize * d..(t as usize + 1) * d]);
        }
        for (i, (bp, bc)) in self
            .params
            .blocks
            .iter()
            .zip(cache.blocks.iter_mut())
            .enumerate()
        {
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
            layernorm_forward(
                if folded { &self.params.wte } else { &bc.x },
                &bp.norm1_w,
                &bp.norm1_b,
                d,
                eps,
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
            self.ops[i].forward_input_with(
                &bp.mixer,
                input,
                Some(&bc.x),
                b,
                l,
                &mut bc.xh,
                &mut bc.mixer,
            )?;
            layernorm_forward(
                &bc.xh,
                &bp.norm2_w,
                &bp.norm2_b,
                d,
                eps,
                &mut bc.h2,
                &mut bc.mu2,
                &mut bc.rs2,
            )?;
            // fc1 without its bias: the GELU pass adds it (a keeps the biased pre-activation).
            linear_forward(&bc.h2, &bp.fc1_w, None, bl, d, di, &mut bc.a)?;
            bias_gelu_forward(&mut bc.a, &bp.fc1_b, &mut bc.g)?;
            // next residual stream: x = xh + fc2(g) (x holds the previous block's input buffer)
            set_len(&mut x, bl * d);
            linear_forward_residual(
                &bc.g,
                &bp.fc2_w,
                Some(&bp.fc2_b),
                Some(&bc.xh),
                bl,
                di,
                d,
                &mut x,
            )?;
        }
        cache.xn = x;
        set_len(&mut cache.hf, bl * d);
        set_len(&mut cache.muf, bl);
        set_len(&mut cache.rsf, bl);
        let p = &self.params;
        layernorm_forward(
            &cache.xn,
            &p.lnf_w,
            &p.lnf_b,
            d,
            eps,
            &mut cache.hf,
            &mut cache.muf,
            &mut cache.rsf,
        )
    }

    /// Backward from `dlogits [B·L, V_pad]` (e.g. from [`cross_entropy`]); accumulates into `grads`.
    pub fn backward(
        &self,
        dlogits: &[f32],
        cache: &mut LmCache,
        grads: &mut LmParams,
    ) -> Result<()> {
        const OP: &str = "HyenaLm backward";
        let (b, l) = (cache.b, cache.l);
        let (v, d, _) = (
            self.cfg.padded_vocab(),
            self.cfg.d_model(),
            self.cfg.d_inner,
        );
        let bl = b * l;
        check_len(OP, "dlogits [B·L, V_pad]", dlogits.len(), bl * v)?;
        // logits = hf · headᵀ
        let mut dh = std::mem::take(&mut cache.d_h);
        set_len(&mut dh, bl * d);
        let dhead = if self.cfg.tie_embeddings {
            &mut grads.wte
        } else {
            &mut grads.lm_head
        };
        linear_backward(
            dlogits,
            &cache.hf,
            self.lm_head(),
            (bl, d, v),
            Some(&mut dh),
            dhead,
            None,
        )?;
        self.backward_blocks(dh, cache, grads)
    }

    /// Backward from `dhidden [B·L, D]`, the gradient of the final hidden states
    /// ([`LmCache::hidden`], after `LN_f`), e.g. from a pooled classification head; accumulates
    /// into `grads` (the LM head gets none). Runs after [`HyenaLm::forward_hidden`] or
    /// [`HyenaLm::forward`].
    pub fn backward_hidden(
        &self,
        dhidden: &[f32],
        cache: &mut LmCache,
        grads: &mut LmParams,
    ) -> Result<()> {
        let bl = cache.b * cache.l;
        check_len(
            "HyenaLm backward_hidden",
            "dhidden [B·L, D]",
            dhidden.len(),
            bl * self.cfg.d_model(),
        )?;
        let mut dh = std::mem::take(&mut cache.d_h);
        dh.clear();
        dh.extend_from_slice(dhidden);
        self.backward_blocks(dh, cache, grads)
    }

    /// The backward below the LM head: `dh [B·L, D]` holds d(LN_f output) and becomes scratch.
    fn backward_blocks(
        &self,
        mut dh: Vec<f32>,
        cache: &mut LmCache,
        grads: &mut LmParams,
    ) -> Result<()> {
        let bl = cache.b * cache.l;
        let (v, d, di) = (
            self.cfg.padded_vocab(),
            self.cfg.d_model(),
            self.cfg.d_inner,
        );
        let p = &self.params;
        // Every kernel below writes (not accumulates) these, so stale contents do not matter.
        let mut dx = std::mem::take(&mut cache.d_x);
        let mut dg = std::mem::take(&mut cache.d_g);
        for (buf, n) in [(&mut dx, bl * d), (&mut dg, bl * di)] {
            set_len(buf, n);
        }
        // dx = d(residual stream), flowing down through the blocks.
        layernorm_backward(
            &dh,
            &cache.xn,
            &p.lnf_w,
            &cache.muf,
            &cache.rsf,
            d,
            &mut dx,
            &mut grads.lnf_w,
            &mut grads.lnf_b,
        )?;
        for i in (0..self.cfg.n_layer).rev() {
            let (bp, bc, gb) = (&p.blocks[i], &mut cache.blocks[i], &mut grads.blocks[i]);
            // x_{i+1} = xh + fc2(gelu(fc1(LN2(xh))))
            linear_backward(
                &dx,
                &bc.g,
                &bp.fc2_w,
                (bl, di, d),
                Some(&mut dg),
                &mut gb.fc2_w,
                Some(&mut gb.fc2_b),
            )?;
            // dg now holds d(fc1 output); fc1's bias gradient is summed in the same pass.
            gelu_backward_bias(&mut dg, &bc.a, &mut gb.fc1_b)?;
            linear_backward(
                &dg,
                &bc.h2,
                &bp.fc1_w,
                (bl, d, di),
                Some(&mut dh),
                &mut gb.fc1_w,
                None,
            )?;
            // dxh = dx (residual) + the branch through LN2, added in place.
            layernorm_backward_acc(
                &dh,
                &bc.xh,
                &bp.norm2_w,
                &bc.mu2,
                &bc.rs2,
                d,
                &mut dx,
                &mut gb.norm2_w,
                &mut gb.norm2_b,
            )?;
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
                self.ops[i].backward_input_with(
                    &bp.mixer,
                    &dx,
                    input,
                    &bc.mixer,
                    dtab,
                    &mut gb.mixer,
                    &mut cache.mixer_ws,
                )?;
                layernorm_backward_acc(
                    dtab,
                    &p.wte,
                    &bp.norm1_w,
                    &bc.mu1,
                    &bc.rs1,
                    d,
                    &mut grads.wte,
                    &mut gb.norm1_w,
                    &mut gb.norm1_b,
                )?;
                continue;
            }
            self.ops[i].backward_with(
                &bp.mixer,
                &dx,
                &bc.h1,
                &bc.mixer,
                &mut dh,
                &mut gb.mixer,
                &mut cache.mixer_ws,
            )?;
            layernorm_backward_acc(
                &dh,
                &bc.x,
                &bp.norm1_w,
                &bc.mu1,
                &bc.rs1,
                d,
                &mut dx,
                &mut gb.norm1_w,
                &mut gb.norm1_b,
            )?;
        }
        // embedding: scatter-add rows
        for (row, &t) in dx.chunks_exact(d).zip(&cache.tokens) {
            let dst = &mut grads.wte[t as usize * d..(t as usize + 1) * d];
            for (g, r) in dst.iter_mut().zip(row) {
                *g += r;
            }
        }
        cache.d_h = dh;
        cache.d_x = dx;
        cache.d_g = dg;
        Ok(())
    }
}

/// Mean cross-entropy of `logits [N, V]` against `targets [N]` (targets equal to `ignore` are
/// skipped). Writes `dlogits = (softmax - onehot) / count` and returns `(mean loss, count,
/// correct)` where `correct` counts argmax hits (next-token accuracy).
pub fn cross_entropy(
    logits: &[f32],
    targets: &[u32],
    v: usize,
    ignore: Option<u32>,
    dlogits: &mut [f32],
) -> Result<(f32, usize, usize)> {
    let count = targets.iter().filter(|&&t| Some(t) != ignore).count();
    let scale = 1.0 / count.max(1) as f32;
    let s = cross_entropy_sum(logits, targets, v, ignore, scale, dlogits)?;
    Ok((
        (s.loss_sum / s.count.max(1) as f64) as f32,
        s.count,
        s.correct,
    ))
}

/// Summed next-token statistics of some windows: divide `loss_sum` by `count` for the mean.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossSum {
    /// Σ of per-token cross-entropies (nats).
    pub loss_sum: f64,
    /// Tokens scored.
    pub count: usize,
    /// Tokens whose argmax logit is the target.
    pub correct: usize,
}

impl LossSum {
    /// Add another set of sums.
    pub fn add(&mut self, o: LossSum) {
        self.loss_sum += o.loss_sum;
        self.count += o.count;
        self.correct += o.correct;
    }
}

/// Cross-entropy of `logits [N, V]` against `targets [N]` as a sum; writes
/// `dlogits = (softmax - onehot) · scale` (zero rows for ignored targets).
pub fn cross_entropy_sum(
    logits: &[f32],
    targets: &[u32],
    v: usize,
    ignore: Option<u32>,
    scale: f32,
    dlogits: &mut [f32],
) -> Result<LossSum> {
    const OP: &str = "cross_entropy";
    let n = targets.len();
    check_len(OP, "logits [N, V]", logits.len(), n * v)?;
    check_len(OP, "dlogits [N, V]", dlogits.len(), n * v)?;
    if let Some(&t) = targets
        .iter()
        .find(|&&t| t as usize >= v && Some(t) != ignore)
    {
        return Err(Error::config("target id", t, format!("must be < {v}")));
    }
    let mut out = LossSum::default();
    for ((row, drow), &t) in logits
        .chunks_exact(v)
        .zip(dlogits.chunks_exact_mut(v))
        .zip(targets)
    {
        if Some(t) == ignore {
            drow.fill(0.0);
            continue;
        }
        let (mut amax, mut m) = (0, f32::NEG_INFINITY);
        for (j, &x) in row.iter().enumerate() {
            if x > m {
                m = x;
                amax = j;
            }
        }
        let sum: f32 = row.iter().map(|&x| (x - m).exp()).sum();
        let lse = m + sum.ln();
        out.loss_sum += (lse - row[t as usize]) as f64;
        out.count += 1;
        out.correct += usize::from(amax == t as usize);
        for (dv, &x) in drow.iter_mut().zip(row) {
            *dv = (x - lse).exp() * scale;
        }
        drow[t as usize] -= scale;
    }
    Ok(out)
}

/// One data-parallel shard's buffers: its activations, logits gradient and parameter gradients.
#[derive(Clone, Debug, Default)]
struct Shard {
    cache: LmCache,
    dlogits: Vec<f32>,
    grads: Option<LmParams>,
}

/// Buffers for [`HyenaLm::loss_and_grad`] and [`HyenaLm::loss`], kept between steps so that
/// steady-state steps allocate nothing. One shard per worker thread (at most one per sequence).
#[derive(Clone, Debug, Default)]
pub struct LmWorkspace {
    shards: Vec<Shard>,
}

/// Split `b` sequences into `s` contiguous shards as evenly as possible: `(start, len)` each.
pub(crate) fn shard_ranges(b: usize, s: usize) -> Vec<(usize, usize)> {
    let (q, r) = (b / s, b % s);
    let mut start = 0;
    (0..s)
        .map(|i| {
            let n = q + usize::from(i < r);
            let out = (start, n);
            start += n;
            out
        })
        .collect()
}

impl HyenaLm {
    /// Data-parallel shards for a batch of `b` sequences: one per rayon worker, at most `b`.
    pub fn shards_for(b: usize) -> usize {
        rayon::current_num_threads().min(b).max(1)
    }

    /// One forward, cross-entropy and backward over `x, y [B, L]`: accumulates
    /// `scale · ∇(mean loss)` into `grads` and returns the summed loss statistics.
    ///
    /// With several worker threads and `B ≥ 2` the batch is split into contiguous shards, one
    /// per thread, each run end to end with single-threaded kernels, and the shards' gradients
    /// are added to `grads` in shard order. At small shapes (HyenaDNA-tiny) this keeps both
    /// cores in large matrix products instead of synchronising at every kernel. The numbers
    /// depend on the shard count (the summation order), hence on the thread count, and on
    /// nothing else.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grad(
        &self,
        x: &[u32],
        y: &[u32],
        b: usize,
        l: usize,
        scale: f32,
        ws: &mut LmWorkspace,
        grads: &mut LmParams,
    ) -> Result<LossSum> {
        let s = Self::shards_for(b);
        let scale = scale / (b * l).max(1) as f32;
        ws.shards.resize_with(s, Shard::default);
        // Shard 0 accumulates straight into `grads`; the others into their own buffers, added
        // afterwards in shard order (a fixed summation order for a fixed thread count).
        let mut own: Vec<LmParams> = ws.shards[1..]
            .iter_mut()
            .map(|sh| {
                let mut g = sh.grads.take().unwrap_or_else(|| self.zero_grads());
                g.zero();
                g
            })
            .collect();
        let targets: Vec<&mut LmParams> =
            std::iter::once(&mut *grads).chain(own.iter_mut()).collect();
        let total = self.over_shards(x, y, b, l, ws, targets, |sh, xs, ys, n, g| {
            let st = self.forward_ce(sh, xs, ys, n, l, scale)?;
            self.backward(&sh.dlogits, &mut sh.cache, g)?;
            Ok(st)
        });
        for g in &own {
            grads.add_assign_from(g);
        }
        for (sh, g) in ws.shards[1..].iter_mut().zip(own) {
            sh.grads = Some(g);
        }
        total
    }

    /// Forward and cross-entropy only (evaluation), data-parallel like
    /// [`HyenaLm::loss_and_grad`].
    pub fn loss(
        &self,
        x: &[u32],
        y: &[u32],
        b: usize,
        l: usize,
        ws: &mut LmWorkspace,
    ) -> Result<LossSum> {
        let s = Self::shards_for(b);
        ws.shards.resize_with(s, Shard::default);
        self.over_shards(x, y, b, l, ws, vec![(); s], |sh, xs, ys, n, ()| {
            self.forward_ce(sh, xs, ys, n, l, 0.0)
        })
    }

    /// Run `f(shard, tokens, targets, sequences, target)` on each of `ws`'s first
    /// `targets.len()` shards, each with its contiguous slice of the batch `x, y [B, L]`: one
    /// shard per worker with single-threaded kernels, or, with a single shard, parallel
    /// kernels. Returns the statistics summed in shard order.
    #[allow(clippy::too_many_arguments)]
    fn over_shards<T: Send>(
        &self,
        x: &[u32],
        y: &[u32],
        b: usize,
        l: usize,
        ws: &mut LmWorkspace,
        targets: Vec<T>,
        f: impl Fn(&mut Shard, &[u32], &[u32], usize, T) -> Result<LossSum> + Sync,
    ) -> Result<LossSum> {
        check_len("HyenaLm loss", "targets [B, L]", y.len(), b * l)?;
        check_len("HyenaLm loss", "tokens [B, L]", x.len(), b * l)?;
        let run = |sh: &mut Shard, (start, n): (usize, usize), t: T| {
            let rows = start * l..(start + n) * l;
            f(sh, &x[rows.clone()], &y[rows], n, t)
        };
        use rayon::prelude::*;
        let s = targets.len();
        let stats = ws.shards[..s]
            .par_iter_mut()
            .zip(targets)
            .zip(shard_ranges(b, s))
            .map(|((sh, t), r)| {
                if s > 1 {
                    crate::ops::serial(|| run(sh, r, t))
                } else {
                    run(sh, r, t) // one shard: the kernels themselves run in parallel
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let mut total = LossSum::default();
        for st in stats {
            total.add(st);
        }
        Ok(total)
    }

    /// Forward of `xs [n, L]` into the shard's cache, then cross-entropy against `ys [n, L]`,
    /// writing the shard's `dlogits = (softmax - onehot) · scale`.
    fn forward_ce(
        &self,
        sh: &mut Shard,
        xs: &[u32],
        ys: &[u32],
        n: usize,
        l: usize,
        scale: f32,
    ) -> Result<LossSum> {
        let v = self.cfg.padded_vocab();
        self.forward(xs, n, l, &mut sh.cache)?;
        sh.dlogits.resize(n * l * v, 0.0);
        cross_entropy_sum(&sh.cache.logits, ys, v, None, scale, &mut sh.dlogits)
    }
}
