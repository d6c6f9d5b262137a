//! Architectures composed from the operator zoo: an ordered list of layer names
//! (`hyena,swiglu,hyena,swiglu`, `se,mr,li,attn`, …) plus sizes, turned into MAD's language
//! model (spec Sec. 6.3): token embedding `N(0, 0.02)`, then per layer
//! `x ← x + layer(norm(x))`, then `norm` and an unembedding `Linear(D → V)` with a bias.
//!
//! All parameters live in one flat buffer (see [`crate::layers::zoo`]), named
//! `embedding.weight`, `layers.{i}.norm.*`, `layers.{i}.mixer.*`, `norm_f.*`, `unembed.*`.
//! Forward and backward are explicit; the cache keeps each layer's input.

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr_free::normal;
use serde::{Deserialize, Serialize};

use crate::config::{FilterConfig, HyenaConfig};
use crate::error::{check_len, Error, Result};
use crate::layers::attention::{Attention, AttentionConfig};
use crate::layers::hyena_zoo::HyenaLayer;
use crate::layers::mlp::{GeluMlp, MlpConfig, SwiGlu};
use crate::layers::rtf_layer::{RtfConfig, RtfLayer};
use crate::layers::ssm::{ModalConfig, ModalSsm};
use crate::layers::zoo::{numel, LayerCache, SeqLayer, TensorSpec};
use crate::models::lm::{cross_entropy_sum, LossSum};
use crate::ops::linear::linear_backward;
use crate::ops::linear::linear_forward;
use crate::ops::norm::{
    layernorm_backward_acc, layernorm_forward, rmsnorm_backward, rmsnorm_forward,
};

/// Standard normal samples without an extra crate (Box–Muller).
mod rand_distr_free {
    use rand::Rng;
    pub fn normal(rng: &mut impl Rng) -> f32 {
        let u1: f64 = rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = rng.random();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// The norm before each layer and before the unembedding.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// RMSNorm: MAD's `LanguageModel` default (benchmark.py).
    #[default]
    Rms,
    /// LayerNorm: what MAD's train.py passes.
    Layer,
}

/// An architecture: layer names and sizes. Serialised as the `arch` part of run configs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ArchConfig {
    /// Layer names in order (see [`LAYER_NAMES`]).
    pub layers: Vec<String>,
    /// Width D (MAD: 128).
    pub d_model: usize,
    /// Heads of multi-head layers (`mh-attn`, `mh-hyena`).
    pub n_heads: usize,
    /// State size of the SSM layers (`ssm`, `rtf`, `li`).
    pub state_size: usize,
    pub norm: NormKind,
    /// Vocabulary size V (set from the task).
    pub vocab_size: usize,
    /// Longest sequence (fixes the implicit filters' grid).
    pub max_len: usize,
}

impl Default for ArchConfig {
    fn default() -> Self {
        ArchConfig {
            layers: vec!["hyena".into(), "swiglu".into()],
            d_model: 128,
            n_heads: 16,
            state_size: 16,
            norm: NormKind::Rms,
            vocab_size: 16,
            max_len: 1024,
        }
    }
}

/// Layer names an architecture string can use, with what each is.
pub const LAYER_NAMES: &[(&str, &str)] = &[
    (
        "hyena",
        "Hyena operator, order 2, implicit long filter (Sec. 2)",
    ),
    (
        "attn",
        "causal attention, 1 head, rotary on the whole head (MAD's attention)",
    ),
    (
        "mh-attn",
        "causal attention, n_heads heads, rotary dim 8 (MAD's mh-attention)",
    ),
    (
        "swa",
        "sliding-window attention, n_heads heads, window 64, rotary dim 8",
    ),
    (
        "rtf",
        "RTF: rational transfer function SSM, state-free kernel, ungated (Sec. 5)",
    ),
    ("ssm", "diagonal modal SSM (S4D-Lin init), ungated"),
    ("swiglu", "SwiGLU channel mixer (inner 16*ceil(8D/3/16))"),
    ("mlp", "GELU MLP channel mixer (inner 4D)"),
];

/// Parse `"hyena,swiglu,hyena,swiglu"` (commas or spaces; case-insensitive) into layer names,
/// checking each against [`LAYER_NAMES`].
pub fn parse_layers(spec: &str) -> Result<Vec<String>> {
    let names: Vec<String> = spec
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| s.to_ascii_lowercase())
        .collect();
    if names.is_empty() {
        return Err(Error::config(
            "arch",
            format!("{spec:?}"),
            format!(
                "give layer names separated by commas; valid: {}",
                valid_names()
            ),
        ));
    }
    for n in &names {
        if !LAYER_NAMES.iter().any(|(k, _)| k == n) {
            return Err(Error::config(
                "arch",
                n,
                format!("unknown layer name; valid names: {}", valid_names()),
            ));
        }
    }
    Ok(names)
}

fn valid_names() -> String {
    LAYER_NAMES
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Build one layer by name.
pub fn build_layer(name: &str, a: &ArchConfig) -> Result<Box<dyn SeqLayer>> {
    let d = a.d_model;
    let mlp = MlpConfig {
        d_model: d,
        d_inner: None,
    };
    Ok(match name {
        "hyena" => Box::new(HyenaLayer::new(&HyenaConfig {
            d_model: d,
            l_max: a.max_len,
            order: 2,
            short_filter_order: 3,
            // MAD's hyena.yml filter: emb_dim 3, w 1, modulated, shift 0 (its MLP width 4 is
            // below ours; we keep the safari default width 64).
            filter: FilterConfig {
                emb_dim: 3,
                w: 1.0,
                shift: 0.0,
                ..FilterConfig::default()
            },
        })?),
        "attn" => Box::new(Attention::new(AttentionConfig::mad_attention(d))?),
        "mh-attn" => Box::new(Attention::new(AttentionConfig {
            n_heads: a.n_heads,
            rotary_dim: mh_rotary(d, a.n_heads),
            ..AttentionConfig::mad_mh_attention(d)
        })?),
        "swa" => Box::new(Attention::new(AttentionConfig {
            n_heads: a.n_heads,
            rotary_dim: mh_rotary(d, a.n_heads),
            window: Some(SWA_WINDOW),
            ..AttentionConfig::mad_mh_attention(d)
        })?),
        "rtf" => Box::new(RtfLayer::new(RtfConfig {
            state_size: a.state_size,
            ..RtfConfig::new(d)
        })?),
        "ssm" => Box::new(ModalSsm::new(ModalConfig {
            state_size: a.state_size,
            ..ModalConfig::new(d)
        })?),
        "swiglu" => Box::new(SwiGlu::new(&mlp)?),
        "mlp" => Box::new(GeluMlp::new(&mlp)?),
        other => {
            return Err(Error::config(
                "arch",
                other,
                format!("unknown layer name; valid names: {}", valid_names()),
            ))
        }
    })
}

/// MAD's multi-head rotary width, 8, capped at the head width (kept even).
fn mh_rotary(d: usize, heads: usize) -> usize {
    (d / heads.max(1)).min(8) & !1
}

/// Window of the `swa` layer.
pub const SWA_WINDOW: usize = 64;

/// A language model over a zoo architecture.
pub struct ZooModel {
    pub cfg: ArchConfig,
    pub layers: Vec<Box<dyn SeqLayer>>,
    /// All parameters, laid out as [`ZooModel::specs`].
    pub params: Vec<f32>,
    /// Offsets of each layer's parameters in `params`.
    layer_off: Vec<usize>,
    specs: Vec<TensorSpec>,
}

impl std::fmt::Debug for ZooModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooModel")
            .field("layers", &self.cfg.layers)
            .field("params", &self.params.len())
            .finish()
    }
}

/// Saved activations of [`ZooModel::forward`].
#[derive(Default)]
pub struct ZooCache {
    b: usize,
    l: usize,
    tokens: Vec<u32>,
    /// Residual stream entering each layer `[n_layer + 1][B·L·D]` (the last: after all).
    xs: Vec<Vec<f32>>,
    /// Normed inputs of each layer and its norm's statistics.
    hs: Vec<Vec<f32>>,
    mean: Vec<Vec<f32>>,
    rstd: Vec<Vec<f32>>,
    caches: Vec<LayerCache>,
    /// `[B·L, V]`.
    pub logits: Vec<f32>,
    ys: Vec<f32>,
}

impl ZooModel {
    /// A fresh model with seeded initialisation.
    pub fn new(cfg: &ArchConfig, seed: u64) -> Result<Self> {
        if cfg.d_model == 0 || cfg.vocab_size == 0 || cfg.max_len == 0 {
            return Err(Error::config(
                "arch",
                format!(
                    "d_model {}, vocab {}, max_len {}",
                    cfg.d_model, cfg.vocab_size, cfg.max_len
                ),
                "all must be >= 1",
            ));
        }
        for n in &cfg.layers {
            parse_layers(n)?;
        }
        let layers = cfg
            .layers
            .iter()
            .map(|n| build_layer(n, cfg))
            .collect::<Result<Vec<_>>>()?;
        let (d, v) = (cfg.d_model, cfg.vocab_size);
        let norm_specs = |prefix: &str| {
            let mut s = vec![TensorSpec::new(&format!("{prefix}.weight"), &[d])];
            if cfg.norm == NormKind::Layer {
                s.push(TensorSpec::new(&format!("{prefix}.bias"), &[d]));
            }
            s
        };
        let mut specs = vec![TensorSpec::new("embedding.weight", &[v, d])];
        let mut layer_off = Vec::new();
        for (i, layer) in layers.iter().enumerate() {
            specs.extend(norm_specs(&format!("layers.{i}.norm")));
            layer_off.push(numel(&specs));
            for s in layer.param_specs() {
                specs.push(TensorSpec::new(
                    &format!("layers.{i}.mixer.{}", s.name),
                    &s.shape,
                ));
            }
        }
        specs.extend(norm_specs("norm_f"));
        specs.push(TensorSpec::new("unembed.weight", &[v, d]));
        specs.push(TensorSpec::new("unembed.bias", &[v]));
        let mut m = ZooModel {
            cfg: cfg.clone(),
            layers,
            params: vec![0.0; numel(&specs)],
            layer_off,
            specs,
        };
        m.init(seed);
        Ok(m)
    }

    fn init(&mut self, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let (d, v) = (self.cfg.d_model, self.cfg.vocab_size);
        for x in &mut self.params[..v * d] {
            *x = 0.02 * normal(&mut rng);
        }
        let mut off = v * d;
        let nn = self.norm_len();
        for (i, layer) in self.layers.iter().enumerate() {
            self.params[off..off + d].fill(1.0); // norm weight; bias (if any) stays 0
            let lo = self.layer_off[i];
            let n = numel(&layer.param_specs());
            layer.init(&mut self.params[lo..lo + n], &mut rng);
            off = lo + n;
        }
        debug_assert_eq!(off + nn, self.params.len() - v * d - v);
        self.params[off..off + d].fill(1.0);
        off += nn;
        crate::layers::mlp::init_linear(&mut self.params[off..off + v * d], d, &mut rng);
        // The unembedding bias stays zero (MAD zeroes biases).
    }

    /// Parameter tensors (names and shapes) in buffer order.
    pub fn specs(&self) -> &[TensorSpec] {
        &self.specs
    }

    fn norm_len(&self) -> usize {
        match self.cfg.norm {
            NormKind::Rms => self.cfg.d_model,
            NormKind::Layer => 2 * self.cfg.d_model,
        }
    }

    /// Offset of layer `i`'s norm parameters.
    fn norm_off(&self, i: usize) -> usize {
        self.layer_off[i] - self.norm_len()
    }

    /// Offset of the final norm.
    fn final_norm_off(&self) -> usize {
        let (d, v) = (self.cfg.d_model, self.cfg.vocab_size);
        self.params.len() - v * d - v - self.norm_len()
    }

    #[allow(clippy::too_many_arguments)]
    fn norm_fwd(
        &self,
        p: &[f32],
        off: usize,
        x: &[f32],
        h: &mut Vec<f32>,
        mean: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
    ) -> Result<()> {
        let d = self.cfg.d_model;
        let m = x.len() / d;
        h.resize(x.len(), 0.0);
        mean.resize(m, 0.0);
        rstd.resize(m, 0.0);
        match self.cfg.norm {
            NormKind::Rms => rmsnorm_forward(x, &p[off..off + d], d, 1e-5, h, rstd),
            NormKind::Layer => layernorm_forward(
                x,
                &p[off..off + d],
                &p[off + d..off + 2 * d],
                d,
                1e-5,
                h,
                mean,
                rstd,
            ),
        }
    }

    /// Norm backward: adds the input gradient into `dx`, accumulates into `g`.
    #[allow(clippy::too_many_arguments)]
    fn norm_bwd(
        &self,
        p: &[f32],
        off: usize,
        dh: &[f32],
        x: &[f32],
        mean: &[f32],
        rstd: &[f32],
        dx: &mut [f32],
        g: &mut [f32],
    ) -> Result<()> {
        let d = self.cfg.d_model;
        match self.cfg.norm {
            NormKind::Rms => rmsnorm_backward(
                dh,
                x,
                &p[off..off + d],
                rstd,
                d,
                dx,
                true,
                &mut g[off..off + d],
            ),
            NormKind::Layer => {
                let (gw, gb) = g[off..off + 2 * d].split_at_mut(d);
                layernorm_backward_acc(dh, x, &p[off..off + d], mean, rstd, d, dx, gw, gb)
            }
        }
    }

    /// Forward of `tokens [B, L]` to `cache.logits [B·L, V]`.
    pub fn forward(&self, tokens: &[u32], b: usize, l: usize, cache: &mut ZooCache) -> Result<()> {
        const OP: &str = "zoo forward";
        let (d, v) = (self.cfg.d_model, self.cfg.vocab_size);
        check_len(OP, "tokens [B, L]", tokens.len(), b * l)?;
        if l > self.cfg.max_len {
            return Err(Error::TooLong {
                op: OP,
                len: l,
                l_max: self.cfg.max_len,
            });
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= v) {
            return Err(Error::config("token id", t, format!("must be < vocab {v}")));
        }
        let p = &self.params;
        let nl = self.layers.len();
        let n = b * l * d;
        cache.b = b;
        cache.l = l;
        cache.tokens.clear();
        cache.tokens.extend_from_slice(tokens);
        cache.xs.resize_with(nl + 1, Vec::new);
        cache.hs.resize_with(nl + 1, Vec::new);
        cache.mean.resize_with(nl + 1, Vec::new);
        cache.rstd.resize_with(nl + 1, Vec::new);
        cache.caches.resize_with(nl, LayerCache::default);
        let x0 = &mut cache.xs[0];
        x0.resize(n, 0.0);
        for (row, &t) in x0.chunks_exact_mut(d).zip(tokens) {
            row.copy_from_slice(&p[t as usize * d..(t as usize + 1) * d]);
        }
        cache.ys.resize(n, 0.0);
        for (i, layer) in self.layers.iter().enumerate() {
            let (before, after) = cache.xs.split_at_mut(i + 1);
            let x = &before[i];
            self.norm_fwd(
                p,
                self.norm_off(i),
                x,
                &mut cache.hs[i],
                &mut cache.mean[i],
                &mut cache.rstd[i],
            )?;
            let lo = self.layer_off[i];
            let np = numel(&layer.param_specs());
            layer.forward(
                &p[lo..lo + np],
                &cache.hs[i],
                b,
                l,
                &mut cache.ys,
                &mut cache.caches[i],
            )?;
            let xn = &mut after[0];
            xn.resize(n, 0.0);
            for ((o, a), y) in xn.iter_mut().zip(x).zip(&cache.ys) {
                *o = a + y;
            }
        }
        self.norm_fwd(
            p,
            self.final_norm_off(),
            &cache.xs[nl],
            &mut cache.hs[nl],
            &mut cache.mean[nl],
            &mut cache.rstd[nl],
        )?;
        let uo = p.len() - v * d - v;
        cache.logits.resize(b * l * v, 0.0);
        linear_forward(
            &cache.hs[nl],
            &p[uo..uo + v * d],
            Some(&p[uo + v * d..]),
            b * l,
            d,
            v,
            &mut cache.logits,
        )
    }

    /// Cross-entropy of the last forward's logits against `targets [B, L]` (−100: not
    /// scored), summed; writes `dlogits` for a mean over `count` scored positions when
    /// `mean_over` is given (the batch's total, for sharded batches).
    pub fn loss(
        &self,
        cache: &ZooCache,
        targets: &[i32],
        mean_over: Option<usize>,
        dlogits: &mut Vec<f32>,
    ) -> Result<LossSum> {
        let v = self.cfg.vocab_size;
        let t: Vec<u32> = targets
            .iter()
            .map(|&t| if t < 0 { u32::MAX } else { t as u32 })
            .collect();
        let count = mean_over.unwrap_or_else(|| targets.iter().filter(|&&t| t >= 0).count());
        dlogits.resize(cache.logits.len(), 0.0);
        cross_entropy_sum(
            &cache.logits,
            &t,
            v,
            Some(u32::MAX),
            1.0 / count.max(1) as f32,
            dlogits,
        )
    }

    /// Backward from `dlogits [B·L, V]`: accumulates into `grads` (laid out like `params`).
    pub fn backward(&self, dlogits: &[f32], cache: &ZooCache, grads: &mut [f32]) -> Result<()> {
        const OP: &str = "zoo backward";
        let (d, v) = (self.cfg.d_model, self.cfg.vocab_size);
        let (b, l) = (cache.b, cache.l);
        let n = b * l * d;
        let nl = self.layers.len();
        check_len(OP, "grads", grads.len(), self.params.len())?;
        check_len(OP, "dlogits [B·L, V]", dlogits.len(), b * l * v)?;
        let p = &self.params;
        let uo = p.len() - v * d - v;
        let mut dh = vec![0.0; n];
        {
            let (gw, gb) = grads[uo..].split_at_mut(v * d);
            linear_backward(
                dlogits,
                &cache.hs[nl],
                &p[uo..uo + v * d],
                (b * l, d, v),
                Some(&mut dh),
                gw,
                Some(gb),
            )?;
        }
        let mut dx = vec![0.0; n];
        self.norm_bwd(
            p,
            self.final_norm_off(),
            &dh,
            &cache.xs[nl],
            &cache.mean[nl],
            &cache.rstd[nl],
            &mut dx,
            grads,
        )?;
        for i in (0..nl).rev() {
            let layer = &self.layers[i];
            let lo = self.layer_off[i];
            let np = numel(&layer.param_specs());
            // x_{i+1} = x_i + layer(norm(x_i)): dx flows straight through and into the layer.
            layer.backward(
                &p[lo..lo + np],
                &cache.hs[i],
                &dx,
                b,
                l,
                &cache.caches[i],
                &mut dh,
                &mut grads[lo..lo + np],
            )?;
            self.norm_bwd(
                p,
                self.norm_off(i),
                &dh,
                &cache.xs[i],
                &cache.mean[i],
                &cache.rstd[i],
                &mut dx,
                grads,
            )?;
        }
        // Embedding rows: scatter-add.
        for (row, &t) in dx.chunks_exact(d).zip(&cache.tokens) {
            let g = &mut grads[t as usize * d..(t as usize + 1) * d];
            for (a, b) in g.iter_mut().zip(row) {
                *a += b;
            }
        }
        Ok(())
    }
}
