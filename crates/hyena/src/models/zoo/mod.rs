//! Architectures composed from the operator zoo: an ordered list of layer names
//! (`hyena,swiglu,hyena,swiglu`, `se,mr,li,attn`, …) plus sizes, turned into MAD's language
//! model (mad-lab `mad/model/language_model.py`, `LanguageModel`; arXiv 2403.17844): token
//! embedding `N(0, 0.02)`, then per layer
//! `x ← x + layer(norm(x))`, then `norm` and an unembedding `Linear(D → V)` with a bias.
//!
//! All parameters live in one flat buffer ([`crate::params`]), named `embedding.weight`,
//! `layers.{i}.norm.*`, `layers.{i}.mixer.*`, `norm_f.*`, `decoder.*` (compression),
//! `unembed.*`. Forward and backward are explicit; the cache keeps each layer's input.

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::config::{FilterConfig, HyenaConfig};
use crate::error::{check_len, Error, Result};
use crate::layers::attention::{Attention, AttentionConfig};
use crate::layers::init;
use crate::layers::layer::{Layer, Slot};
use crate::layers::mlp::{Mlp, MlpConfig, SwiGlu};
use crate::layers::multihyena::{MultiHyena, MultiHyenaConfig};
use crate::layers::norm::{LayerNorm, RmsNorm};
use crate::layers::rtf::{RtfConfig, RtfLayer};
use crate::layers::ssm::{ModalConfig, ModalSsm};
use crate::layers::striped::{StripedConfig, StripedOp};
use crate::layers::HyenaOperator;
use crate::ops::linear::{linear_backward, linear_forward};
use crate::ops::loss::{cross_entropy_sum, LossSum};
use crate::ops::norm::{rmsnorm_backward, rmsnorm_forward};
use crate::params::{check_params, many_mut, DType, Init, ParamStore, Vb, P};

pub mod family;

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
    /// MAD's AutoEncoder head for the compression task (mad-lab `mad/model/auto_encoder.py`):
    /// the encoder's last
    /// position, plus a fixed sinusoidal position code, decoded at every position by
    /// `RMSNorm → Linear → GELU → RMSNorm → Linear → GELU → RMSNorm`, then unembedded.
    pub decoder: bool,
}

impl ArchConfig {
    /// Check the sizes by key: `d_model`, `vocab_size` and `max_len` at least 1 and below
    /// bounds far above any real model (those of [`crate::config`]); `n_heads` and
    /// `state_size` are checked by the layers that use them, with their upper bounds here. An
    /// absurd config is refused, named, before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        use crate::config::{MAX_D_MODEL, MAX_FILTER, MAX_L_MAX};
        for (key, v, lo, hi) in [
            ("d_model", self.d_model, 1, MAX_D_MODEL),
            ("vocab_size", self.vocab_size, 1, 1 << 24),
            ("max_len", self.max_len, 1, MAX_L_MAX),
            ("n_heads", self.n_heads, 0, MAX_FILTER),
            ("state_size", self.state_size, 0, MAX_FILTER),
            ("layers", self.layers.len(), 0, 1 << 16),
        ] {
            if v < lo || v > hi {
                return Err(Error::config(key, v, format!("must be in {lo}..={hi}")));
            }
        }
        Ok(())
    }

    /// The architecture in the JSON file `path` (fields missing from it at their defaults);
    /// its layer names are checked and lower-cased, as [`parse_layers`] does.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let mut a: ArchConfig = serde_json::from_str(&text).map_err(|e| {
            Error::format(
                path,
                format!("not an architecture config (layers, d_model, …): {e}"),
            )
        })?;
        a.layers = parse_layers(&a.layers.join(","))?;
        Ok(a)
    }
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
            decoder: false,
        }
    }
}

/// Layer names an architecture string can use, with what each is.
pub const LAYER_NAMES: &[(&str, &str)] = &[
    (
        "hyena",
        "Hyena operator, order 2, implicit long filter (arXiv:2302.10866)",
    ),
    (
        "mh-hyena",
        "MultiHyena: heads of size 16 (MAD's mh-hyena), one long filter per head (arXiv:2310.18780)",
    ),
    (
        "se",
        "Hyena-SE: short explicit filter, length 7 (StripedHyena 2 / Evo 2)",
    ),
    (
        "mr",
        "Hyena-MR: explicit filter of length 128 with exponential decay",
    ),
    (
        "li",
        "Hyena-LI: long implicit filter, sum of 16 real exponentials",
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
        "RTF: rational transfer function SSM, state-free kernel, ungated (arXiv:2405.06147)",
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
    if let Some(n) = names
        .iter()
        .find(|n| !LAYER_NAMES.iter().any(|(k, _)| k == n))
    {
        return Err(unknown_layer(n));
    }
    Ok(names)
}

fn unknown_layer(name: &str) -> Error {
    Error::config(
        "arch",
        name,
        format!("unknown layer name; valid names: {}", valid_names()),
    )
}

fn valid_names() -> String {
    LAYER_NAMES
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Build one layer by name, its tensors registered under `vb`: the registry of the layers an
/// architecture string can name (each passes the layer contract test).
pub fn build_layer(name: &str, a: &ArchConfig, vb: &Vb<'_, '_>) -> Result<Box<dyn Layer>> {
    let d = a.d_model;
    let mlp = MlpConfig {
        d_model: d,
        d_inner: None,
    };
    Ok(match name {
        "hyena" => Box::new(HyenaOperator::new(
            &HyenaConfig {
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
            },
            vb,
        )?),
        "mh-hyena" => Box::new(MultiHyena::new(
            &MultiHyenaConfig {
                // Head size 16 as MAD's config behaves; widths 16 does not divide fall back to
                // --heads heads.
                n_heads: if d.is_multiple_of(16) {
                    d / 16
                } else {
                    a.n_heads
                },
                ..MultiHyenaConfig::mad(d, a.max_len)
            },
            vb,
        )?),
        "se" => Box::new(StripedOp::new(StripedConfig::se(d), vb)?),
        "mr" => Box::new(StripedOp::new(StripedConfig::mr(d), vb)?),
        "li" => Box::new(StripedOp::new(
            StripedConfig {
                state: a.state_size,
                ..StripedConfig::li(d)
            },
            vb,
        )?),
        "attn" => Box::new(Attention::new(AttentionConfig::mad_attention(d), vb)?),
        "mh-attn" => Box::new(Attention::new(
            AttentionConfig {
                n_heads: a.n_heads,
                rotary_dim: mh_rotary(d, a.n_heads),
                ..AttentionConfig::mad_mh_attention(d)
            },
            vb,
        )?),
        "swa" => Box::new(Attention::new(
            AttentionConfig {
                n_heads: a.n_heads,
                rotary_dim: mh_rotary(d, a.n_heads),
                window: Some(SWA_WINDOW),
                ..AttentionConfig::mad_mh_attention(d)
            },
            vb,
        )?),
        "rtf" => Box::new(RtfLayer::new(
            RtfConfig {
                state_size: a.state_size,
                ..RtfConfig::new(d)
            },
            vb,
        )?),
        "ssm" => Box::new(ModalSsm::new(
            ModalConfig {
                state_size: a.state_size,
                ..ModalConfig::new(d)
            },
            vb,
        )?),
        "swiglu" => Box::new(SwiGlu::new(&mlp, vb)?),
        "mlp" => Box::new(Mlp::new(d, 4 * d, vb, ("l1", "l2"))?),
        other => return Err(unknown_layer(other)),
    })
}

/// MAD's multi-head rotary width, 8, capped at the head width (kept even).
fn mh_rotary(d: usize, heads: usize) -> usize {
    (d / heads.max(1)).min(8) & !1
}

/// Window of the `swa` layer.
pub const SWA_WINDOW: usize = 64;

/// The norm before each layer and before the unembedding, with its tensors.
#[derive(Clone, Copy, Debug)]
enum Norm {
    Rms(RmsNorm),
    Layer(LayerNorm),
}

impl Norm {
    fn new(kind: NormKind, d: usize, vb: &Vb<'_, '_>) -> Result<Self> {
        Ok(match kind {
            NormKind::Rms => Norm::Rms(RmsNorm::new(d, 1e-5, vb)?),
            NormKind::Layer => Norm::Layer(LayerNorm::new(d, 1e-5, vb)?),
        })
    }

    /// Weight 1 (bias 0).
    fn init(&self, p: &mut [f32]) {
        match self {
            Norm::Rms(n) => n.init(p),
            Norm::Layer(n) => n.init(p),
        }
    }

    fn forward(
        &self,
        p: &[f32],
        x: &[f32],
        h: &mut Vec<f32>,
        mean: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
    ) -> Result<()> {
        let d = match self {
            Norm::Rms(n) => n.d,
            Norm::Layer(n) => n.d,
        };
        let m = x.len() / d;
        h.resize(x.len(), 0.0);
        mean.resize(m, 0.0);
        rstd.resize(m, 0.0);
        match self {
            Norm::Rms(n) => n.forward(p, x, h, rstd),
            Norm::Layer(n) => n.forward(p, x, h, mean, rstd),
        }
    }

    /// Backward: adds the input gradient into `dx`, accumulates into `g`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        p: &[f32],
        dh: &[f32],
        x: &[f32],
        mean: &[f32],
        rstd: &[f32],
        dx: &mut [f32],
        g: &mut [f32],
    ) -> Result<()> {
        match self {
            Norm::Rms(n) => n.backward(p, dh, x, rstd, dx, true, g),
            Norm::Layer(n) => n.backward(p, dh, x, mean, rstd, dx, true, g),
        }
    }
}

/// MAD's AutoEncoder decoder (the compression task's head): `decoder.norm1.weight`,
/// `decoder.l1.{weight, bias}`, `decoder.norm2.weight`, `decoder.l2.{weight, bias}`,
/// `decoder.norm3.weight`.
#[derive(Clone, Copy, Debug)]
struct AeDecoder {
    n1: P,
    w1: P,
    b1: P,
    n2: P,
    w2: P,
    b2: P,
    n3: P,
}

impl AeDecoder {
    fn new(d: usize, vb: &Vb<'_, '_>) -> Result<Self> {
        let nd = vb.no_decay();
        Ok(AeDecoder {
            n1: nd.get(&[d], "norm1.weight")?,
            w1: vb.get(&[d, d], "l1.weight")?,
            b1: nd.get(&[d], "l1.bias")?,
            n2: nd.get(&[d], "norm2.weight")?,
            w2: vb.get(&[d, d], "l2.weight")?,
            b2: nd.get(&[d], "l2.bias")?,
            n3: nd.get(&[d], "norm3.weight")?,
        })
    }
}

/// A language model over a zoo architecture: the structure and the handles of its tensors.
pub struct ZooModel {
    pub cfg: ArchConfig,
    embedding: P,
    /// Per layer: its norm and the layer.
    layers: Vec<(Norm, Box<dyn Layer>)>,
    norm_f: Norm,
    decoder: Option<AeDecoder>,
    unembed_w: P,
    unembed_b: P,
}

impl std::fmt::Debug for ZooModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooModel")
            .field("layers", &self.cfg.layers)
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
    caches: Vec<Slot>,
    dec: DecoderCache,
    /// `[B·L, V]`, or `[S, V]` for the `S` rows of [`ZooCache::rows`].
    pub logits: Vec<f32>,
    ys: Vec<f32>,
    /// The rows (flat positions `b·L + t`) the head was evaluated on, when not all: see
    /// [`ZooModel::forward_scored`].
    rows: Option<Vec<usize>>,
    /// The head's input gathered at `rows` `[S, D]`.
    head_x: Vec<f32>,
}

impl ZooCache {
    /// The rows of `logits`, when the head ran on a subset of positions.
    pub fn rows(&self) -> Option<&[usize]> {
        self.rows.as_deref()
    }
}

impl ZooModel {
    /// The model of `cfg`, its tensors registered under `vb`.
    pub fn new(cfg: &ArchConfig, vb: &Vb<'_, '_>) -> Result<Self> {
        cfg.validate()?;
        for n in &cfg.layers {
            parse_layers(n)?;
        }
        let (d, v) = (cfg.d_model, cfg.vocab_size);
        let embedding = vb.get(&[v, d], "embedding.weight")?;
        let layers = cfg
            .layers
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let vb = vb.pp(format!("layers.{i}"));
                Ok((
                    Norm::new(cfg.norm, d, &vb.pp("norm"))?,
                    build_layer(n, cfg, &vb.pp("mixer"))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let norm_f = Norm::new(cfg.norm, d, &vb.pp("norm_f"))?;
        let decoder = if cfg.decoder {
            Some(AeDecoder::new(d, &vb.pp("decoder"))?)
        } else {
            None
        };
        Ok(ZooModel {
            cfg: cfg.clone(),
            embedding,
            layers,
            norm_f,
            decoder,
            unembed_w: vb.get(&[v, d], "unembed.weight")?,
            unembed_b: vb.no_decay().get(&[v], "unembed.bias")?,
        })
    }

    /// A freshly initialised model of `cfg` (seeded) and its parameters.
    pub fn fresh(cfg: &ArchConfig, seed: u64) -> Result<(Self, ParamStore)> {
        let (m, mut store) =
            ParamStore::build(Init::Zeros, DType::F32, |vb| ZooModel::new(cfg, vb))?;
        m.init(store.data_mut(), seed);
        Ok((m, store))
    }

    /// MAD's initialisation from one random stream: embedding `N(0, 0.02)`, norms 1, each
    /// layer its own init in order, the decoder's and the unembedding's weights PyTorch's
    /// `nn.Linear` default, every bias zero.
    pub fn init(&self, p: &mut [f32], seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        self.embedding.of_mut(p).copy_from_slice(&init::randn(
            &mut rng,
            self.embedding.len(),
            0.02,
        ));
        for (norm, layer) in &self.layers {
            norm.init(p);
            layer.init(p, &mut rng);
        }
        self.norm_f.init(p);
        let d = self.cfg.d_model;
        if let Some(dec) = &self.decoder {
            dec.n1.of_mut(p).fill(1.0);
            init::linear_into(&mut rng, dec.w1.of_mut(p), d);
            dec.b1.of_mut(p).fill(0.0);
            dec.n2.of_mut(p).fill(1.0);
            init::linear_into(&mut rng, dec.w2.of_mut(p), d);
            dec.b2.of_mut(p).fill(0.0);
            dec.n3.of_mut(p).fill(1.0);
        }
        init::linear_into(&mut rng, self.unembed_w.of_mut(p), d);
        // The unembedding bias stays zero (MAD zeroes biases).
        self.unembed_b.of_mut(p).fill(0.0);
    }

    /// Forward of `tokens [B, L]` to `cache.logits [B·L, V]`.
    pub fn forward(
        &self,
        p: &[f32],
        tokens: &[u32],
        b: usize,
        l: usize,
        cache: &mut ZooCache,
    ) -> Result<()> {
        self.forward_rows(p, tokens, b, l, None, cache)
    }

    /// Forward with the head evaluated only where `targets [B, L]` scores a position
    /// (`>= 0`): `cache.logits [S, V]` for those `S` rows, in order. MAD scores a fraction of
    /// the positions (memorization: half, at vocabularies up to 8192, where the head is most of
    /// a step's work); unscored rows get no gradient, so skipping them changes nothing but the
    /// cost. [`ZooModel::loss`] and [`ZooModel::backward`] follow the cache's rows.
    pub fn forward_scored(
        &self,
        p: &[f32],
        tokens: &[u32],
        targets: &[i32],
        b: usize,
        l: usize,
        cache: &mut ZooCache,
    ) -> Result<()> {
        check_len("zoo forward", "targets [B, L]", targets.len(), b * l)?;
        let rows: Vec<usize> = (0..b * l).filter(|&i| targets[i] >= 0).collect();
        self.forward_rows(p, tokens, b, l, Some(rows), cache)
    }

    fn forward_rows(
        &self,
        p: &[f32],
        tokens: &[u32],
        b: usize,
        l: usize,
        rows: Option<Vec<usize>>,
        cache: &mut ZooCache,
    ) -> Result<()> {
        const OP: &str = "zoo forward";
        let (d, v) = (self.cfg.d_model, self.cfg.vocab_size);
        check_params(OP, p, self.unembed_b)?;
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
        cache.caches.resize_with(nl, Slot::default);
        let emb = self.embedding.of(p);
        let x0 = &mut cache.xs[0];
        x0.resize(n, 0.0);
        for (row, &t) in x0.chunks_exact_mut(d).zip(tokens) {
            row.copy_from_slice(&emb[t as usize * d..(t as usize + 1) * d]);
        }
        cache.ys.resize(n, 0.0);
        for (i, (norm, layer)) in self.layers.iter().enumerate() {
            let (before, after) = cache.xs.split_at_mut(i + 1);
            let x = &before[i];
            norm.forward(
                p,
                x,
                &mut cache.hs[i],
                &mut cache.mean[i],
                &mut cache.rstd[i],
            )?;
            layer.forward(p, &cache.hs[i], b, l, &mut cache.ys, &mut cache.caches[i])?;
            let xn = &mut after[0];
            xn.resize(n, 0.0);
            for ((o, a), y) in xn.iter_mut().zip(x).zip(&cache.ys) {
                *o = a + y;
            }
        }
        self.norm_f.forward(
            p,
            &cache.xs[nl],
            &mut cache.hs[nl],
            &mut cache.mean[nl],
            &mut cache.rstd[nl],
        )?;
        let head_in = match &self.decoder {
            Some(dec) => {
                decoder_forward(p, dec, &cache.hs[nl], b, l, d, &mut cache.dec)?;
                &cache.dec.out
            }
            None => &cache.hs[nl],
        };
        let (head_in, m) = match &rows {
            Some(r) => {
                cache.head_x.clear();
                for &i in r {
                    cache.head_x.extend_from_slice(&head_in[i * d..(i + 1) * d]);
                }
                (&cache.head_x[..], r.len())
            }
            None => (&head_in[..], b * l),
        };
        cache.logits.resize(m * v, 0.0);
        if m == 0 {
            cache.rows = rows;
            return Ok(());
        }
        let res = linear_forward(
            head_in,
            self.unembed_w.of(p),
            Some(self.unembed_b.of(p)),
            m,
            d,
            v,
            &mut cache.logits,
        );
        cache.rows = rows;
        res
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
        let to_u32 = |t: i32| if t < 0 { u32::MAX } else { t as u32 };
        let t: Vec<u32> = match &cache.rows {
            Some(r) => {
                check_len(
                    "zoo loss",
                    "targets [B, L]",
                    targets.len(),
                    cache.b * cache.l,
                )?;
                r.iter().map(|&i| to_u32(targets[i])).collect()
            }
            None => targets.iter().map(|&t| to_u32(t)).collect(),
        };
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

    /// Backward from `dlogits [B·L, V]` (or `[S, V]` after [`ZooModel::forward_scored`]):
    /// accumulates into `grads` (laid out like `p`).
    pub fn backward(
        &self,
        p: &[f32],
        dlogits: &[f32],
        cache: &mut ZooCache,
        grads: &mut [f32],
    ) -> Result<()> {
        const OP: &str = "zoo backward";
        let (d, v) = (self.cfg.d_model, self.cfg.vocab_size);
        let (b, l) = (cache.b, cache.l);
        let n = b * l * d;
        let nl = self.layers.len();
        check_params(OP, p, self.unembed_b)?;
        check_len(OP, "grads", grads.len(), p.len())?;
        let m = cache.rows.as_ref().map_or(b * l, Vec::len);
        check_len(OP, "dlogits [rows, V]", dlogits.len(), m * v)?;
        let mut dh = vec![0.0; n];
        {
            let head_in = match &cache.rows {
                Some(_) => &cache.head_x,
                None if self.decoder.is_some() => &cache.dec.out,
                None => &cache.hs[nl],
            };
            let [gw, gb] = many_mut(grads, [self.unembed_w, self.unembed_b]);
            // On scored rows only, the head's input gradient goes to `dsel [S, D]` and is
            // scattered back to its positions; the other rows of `dh` stay zero.
            let mut dsel = Vec::new();
            let dst = match &cache.rows {
                Some(_) => {
                    dsel.resize(m * d, 0.0);
                    &mut dsel
                }
                None => &mut dh,
            };
            linear_backward(
                dlogits,
                head_in,
                self.unembed_w.of(p),
                (m, d, v),
                Some(dst),
                gw,
                Some(gb),
            )?;
            if let Some(rows) = &cache.rows {
                for (&i, r) in rows.iter().zip(dsel.chunks_exact(d)) {
                    dh[i * d..(i + 1) * d].copy_from_slice(r);
                }
            }
        }
        if let Some(dec) = &self.decoder {
            let dout = std::mem::take(&mut dh);
            dh = vec![0.0; n];
            decoder_backward(p, dec, &dout, b, l, d, &cache.dec, &mut dh, grads)?;
        }
        let mut dx = vec![0.0; n];
        self.norm_f.backward(
            p,
            &dh,
            &cache.xs[nl],
            &cache.mean[nl],
            &cache.rstd[nl],
            &mut dx,
            grads,
        )?;
        for i in (0..nl).rev() {
            let (norm, layer) = &self.layers[i];
            // x_{i+1} = x_i + layer(norm(x_i)): dx flows straight through and into the layer.
            layer.backward(
                p,
                &cache.hs[i],
                &dx,
                b,
                l,
                &mut cache.caches[i],
                &mut dh,
                grads,
            )?;
            norm.backward(
                p,
                &dh,
                &cache.xs[i],
                &cache.mean[i],
                &cache.rstd[i],
                &mut dx,
                grads,
            )?;
        }
        // Embedding rows: scatter-add.
        let ge = self.embedding.of_mut(grads);
        for (row, &t) in dx.chunks_exact(d).zip(&cache.tokens) {
            let g = &mut ge[t as usize * d..(t as usize + 1) * d];
            for (a, b) in g.iter_mut().zip(row) {
                *a += b;
            }
        }
        Ok(())
    }
}

/// Activations of the AutoEncoder decoder, each `[B·L, D]` (statistics `[B·L]`).
#[derive(Default)]
struct DecoderCache {
    z: Vec<f32>,
    r1: Vec<f32>,
    a1: Vec<f32>,
    u1: Vec<f32>,
    g1: Vec<f32>,
    r2: Vec<f32>,
    a2: Vec<f32>,
    u2: Vec<f32>,
    g2: Vec<f32>,
    r3: Vec<f32>,
    out: Vec<f32>,
}

/// MAD's fixed sinusoidal position code `[L, D]`: `sin(t·ω_j)` in the first half and
/// `cos(t·ω_j)` in the second, `ω_j = 10000^(−j/(half−1))` (mad-lab's AutoEncoder divides by
/// `half − 1`, not `half`).
pub fn sinusoidal_positions(l: usize, d: usize) -> Vec<f32> {
    let half = d / 2;
    let div = (half.max(2) - 1) as f64;
    let mut pe = vec![0.0f32; l * d];
    for t in 0..l {
        for j in 0..half {
            let w = 10000f64.powf(-(j as f64) / div);
            pe[t * d + j] = (t as f64 * w).sin() as f32;
            pe[t * d + half + j] = (t as f64 * w).cos() as f32;
        }
    }
    pe
}

const DEC_EPS: f32 = 1e-5;

/// Decoder forward: `hf [B·L, D]` (the encoder's normed states) → `c.out [B·L, D]`.
fn decoder_forward(
    p: &[f32],
    dec: &AeDecoder,
    hf: &[f32],
    b: usize,
    l: usize,
    d: usize,
    c: &mut DecoderCache,
) -> Result<()> {
    let m = b * l;
    let (n1, w1, b1) = (dec.n1.of(p), dec.w1.of(p), dec.b1.of(p));
    let (n2, w2, b2, n3) = (dec.n2.of(p), dec.w2.of(p), dec.b2.of(p), dec.n3.of(p));
    for v in [
        &mut c.z, &mut c.a1, &mut c.u1, &mut c.g1, &mut c.a2, &mut c.u2, &mut c.g2, &mut c.out,
    ] {
        v.resize(m * d, 0.0);
    }
    for v in [&mut c.r1, &mut c.r2, &mut c.r3] {
        v.resize(m, 0.0);
    }
    let pe = sinusoidal_positions(l, d);
    for bi in 0..b {
        let e = &hf[(bi * l + l - 1) * d..(bi * l + l) * d];
        for t in 0..l {
            let row = &mut c.z[(bi * l + t) * d..(bi * l + t + 1) * d];
            for ((z, &ev), &pv) in row.iter_mut().zip(e).zip(&pe[t * d..(t + 1) * d]) {
                *z = ev + pv;
            }
        }
    }
    rmsnorm_forward(&c.z, n1, d, DEC_EPS, &mut c.a1, &mut c.r1)?;
    linear_forward(&c.a1, w1, Some(b1), m, d, d, &mut c.u1)?;
    crate::ops::act::gelu_forward(&c.u1, &mut c.g1)?;
    rmsnorm_forward(&c.g1, n2, d, DEC_EPS, &mut c.a2, &mut c.r2)?;
    linear_forward(&c.a2, w2, Some(b2), m, d, d, &mut c.u2)?;
    crate::ops::act::gelu_forward(&c.u2, &mut c.g2)?;
    rmsnorm_forward(&c.g2, n3, d, DEC_EPS, &mut c.out, &mut c.r3)
}

/// Decoder backward: `dout [B·L, D]` → `dhf [B·L, D]` (non-zero only at each sequence's last
/// position, the pooled one); accumulates into `g` (laid out like `p`).
#[allow(clippy::too_many_arguments)]
fn decoder_backward(
    p: &[f32],
    dec: &AeDecoder,
    dout: &[f32],
    b: usize,
    l: usize,
    d: usize,
    c: &DecoderCache,
    dhf: &mut [f32],
    g: &mut [f32],
) -> Result<()> {
    let m = b * l;
    let (n1, w1, n2, w2, n3) = (
        dec.n1.of(p),
        dec.w1.of(p),
        dec.n2.of(p),
        dec.w2.of(p),
        dec.n3.of(p),
    );
    let [gn1, gw1, gb1, gn2, gw2, gb2, gn3] =
        many_mut(g, [dec.n1, dec.w1, dec.b1, dec.n2, dec.w2, dec.b2, dec.n3]);
    let mut t1 = vec![0.0; m * d];
    let mut t2 = vec![0.0; m * d];
    rmsnorm_backward(dout, &c.g2, n3, &c.r3, d, &mut t1, false, gn3)?;
    crate::ops::act::gelu_backward_inplace(&mut t1, &c.u2)?;
    linear_backward(&t1, &c.a2, w2, (m, d, d), Some(&mut t2), gw2, Some(gb2))?;
    rmsnorm_backward(&t2, &c.g1, n2, &c.r2, d, &mut t1, false, gn2)?;
    crate::ops::act::gelu_backward_inplace(&mut t1, &c.u1)?;
    linear_backward(&t1, &c.a1, w1, (m, d, d), Some(&mut t2), gw1, Some(gb1))?;
    rmsnorm_backward(&t2, &c.z, n1, &c.r1, d, &mut t1, false, gn1)?;
    // z[b, t] = e[b] + pe[t]: the pooled row's gradient is the sum over positions.
    dhf.fill(0.0);
    for bi in 0..b {
        let de = &mut dhf[(bi * l + l - 1) * d..(bi * l + l) * d];
        for t in 0..l {
            for (a, v) in de
                .iter_mut()
                .zip(&t1[(bi * l + t) * d..(bi * l + t + 1) * d])
            {
                *a += v;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_architecture_sizes_are_refused_by_key() {
        ArchConfig::default().validate().unwrap();
        for (cfg, key) in [
            (
                ArchConfig {
                    d_model: 0,
                    ..ArchConfig::default()
                },
                "`d_model`",
            ),
            (
                ArchConfig {
                    d_model: 1 << 40,
                    ..ArchConfig::default()
                },
                "`d_model`",
            ),
            (
                ArchConfig {
                    max_len: 1 << 40,
                    ..ArchConfig::default()
                },
                "`max_len`",
            ),
            (
                ArchConfig {
                    vocab_size: 0,
                    ..ArchConfig::default()
                },
                "`vocab_size`",
            ),
            (
                ArchConfig {
                    n_heads: 1 << 30,
                    ..ArchConfig::default()
                },
                "`n_heads`",
            ),
        ] {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }
}
