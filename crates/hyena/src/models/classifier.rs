//! Sequence classification on a HyenaDNA backbone: the backbone's final hidden states
//! (`LN_f` output, `[B·L, D]`), pooled over positions, then one linear layer to the classes.
//!
//! This is the head of HyenaDNA's fine-tuning recipe (the GenomicBenchmarks configs,
//! `configs/experiment/hg38/genomic_benchmark.yaml`; `standalone_hyenadna.py`): the standalone
//! `HyenaDNAModel(use_head=True)` applies a `SequenceDecoder` in `pool` mode, i.e. the **mean
//! over all positions** (left padding included), then `Linear(D → n_classes)` with a bias. Its
//! parameters are named as there, `head.output_transform.{weight,bias}`. [`Pool::Last`] takes
//! the last position instead: with left padding that is the last base, which in a causal model
//! has seen the whole sequence (what the HF `HyenaDNAForSequenceClassification` intends).
//!
//! The backward is the head's, then [`HyenaLm::backward_hidden`]. Batches are split into one
//! shard per worker thread ([`crate::models::parallel`]). The LM head (`lm_head.weight`) is
//! not used and not trained (a frozen tensor of the store); it stays in the checkpoint so that
//! the fine-tuned backbone still loads as a language model. The classifier's parameters are
//! the backbone's, in their order, followed by the head's: one buffer.
//!
//! [`ClassifierFamily`] is its entry in the run-directory registry: a `hyena finetune` output
//! directory (`config.json` with `finetune` and `classes`) loads as this classifier.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;

use rand::{Rng, SeedableRng};

use crate::error::{check_len, Error, Result};
use crate::io::safetensors::{Tensor, TensorFile};
use crate::layers::layer::Slot;
use crate::layers::lean::InferWorkspace;
use crate::models::generate::{DecodeMode, Decoder};
use crate::models::hyenadna::family::LM_OPTIONAL_KEYS;
use crate::models::hyenadna::{Head, HyenaLm, LmCache, LmConfig};
use crate::models::parallel::{run_shards, ShardGrads};
use crate::models::{config_section, model_section, Family, LanguageModel, Model, Pool};
use crate::ops::linear::{linear_backward, linear_forward};
use crate::ops::loss::{cross_entropy_sum, LossSum};
use crate::params::{many_mut, DType, Init, ParamStore, Tracked, Vb, P};

/// Name prefix of the head's tensors (the standalone reference's `head.output_transform`).
pub const HEAD: &str = "head.output_transform";

/// The classification head: `logits = W · pooled + b`, `weight [C, D]`, `bias [C]`.
#[derive(Clone, Copy, Debug)]
pub struct ClsHead {
    pub w: P,
    pub b: P,
    c: usize,
    d: usize,
}

impl ClsHead {
    /// `head.output_transform.{weight, bias}` for `c` classes on width `d`.
    pub fn new(c: usize, d: usize, vb: &Vb<'_, '_>) -> Result<Self> {
        if c < 2 {
            return Err(Error::config(
                "n_classes",
                c,
                "a classifier needs at least 2 classes",
            ));
        }
        let vb = vb.pp(HEAD);
        Ok(ClsHead {
            w: vb.get(&[c, d], "weight")?,
            b: vb.no_decay().get(&[c], "bias")?,
            c,
            d,
        })
    }

    /// Classes.
    pub fn n_classes(&self) -> usize {
        self.c
    }

    /// PyTorch's `nn.Linear` default, uniform in ±1/√D (seeded), weight then bias.
    pub fn init(&self, p: &mut [f32], seed: u64) {
        let bound = 1.0 / (self.d as f32).sqrt();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5EED_C1A5);
        let [w, b] = many_mut(p, [self.w, self.b]);
        for x in w.iter_mut().chain(b.iter_mut()) {
            *x = rng.random_range(-bound..bound);
        }
    }
}

/// A HyenaDNA backbone with a pooled linear classification head.
#[derive(Clone, Debug)]
pub struct SeqClassifier {
    pub lm: HyenaLm,
    pub head: ClsHead,
    pub pool: Pool,
}

/// One shard's buffers, kept between steps.
#[derive(Clone, Debug, Default)]
struct Shard {
    cache: LmCache,
    pooled: Vec<f32>,  // [n, D]
    logits: Vec<f32>,  // [n, C]
    dlogits: Vec<f32>, // [n, C]
    targets: Vec<u32>, // [n]
    dpooled: Vec<f32>, // [n, D]
    dhidden: Vec<f32>, // [n·L, D]
}

/// Buffers for [`SeqClassifier::loss_and_grad`] and [`SeqClassifier::predict`], reused.
#[derive(Clone, Debug, Default)]
pub struct ClsWorkspace {
    shards: Vec<Shard>,
    grads: ShardGrads,
}

impl SeqClassifier {
    /// The classifier for a backbone of `cfg` with `n_classes` classes, its tensors registered
    /// under `vb`: the backbone's (its LM head frozen), then the head's.
    pub fn new(cfg: &LmConfig, n_classes: usize, pool: Pool, vb: &Vb<'_, '_>) -> Result<Self> {
        if pool == Pool::None {
            return Err(Error::config(
                "pool",
                pool,
                "a classifier pools to one vector: mean or last",
            ));
        }
        let lm = HyenaLm::with_head(cfg, vb, Head::Frozen)?;
        let head = ClsHead::new(n_classes, cfg.d_model(), vb)?;
        Ok(SeqClassifier { lm, head, pool })
    }

    /// A classifier on `backbone` (pretrained or fresh) with a new head for `n_classes` classes
    /// (seeded): the backbone's parameters and buffers are kept as they are.
    pub fn from_backbone(
        backbone: Model<HyenaLm>,
        n_classes: usize,
        pool: Pool,
        seed: u64,
    ) -> Result<Model<SeqClassifier>> {
        if pool == Pool::None {
            return Err(Error::config(
                "pool",
                pool,
                "a classifier pools to one vector: mean or last",
            ));
        }
        let Model {
            net: lm,
            mut params,
        } = backbone;
        if let Some(h) = lm.head {
            params.freeze(h);
        }
        let d = lm.cfg.d_model();
        let head = params.extend(|vb| ClsHead::new(n_classes, d, vb))?;
        head.init(params.data_mut(), seed);
        Ok(Model {
            net: SeqClassifier { lm, head, pool },
            params,
        })
    }

    /// Pool `hidden [n·L, D]` into `pooled [n, D]`.
    fn pool_rows(&self, hidden: &[f32], n: usize, l: usize, pooled: &mut [f32]) {
        let d = self.head.d;
        for (s, out) in pooled.chunks_exact_mut(d).enumerate().take(n) {
            let rows = &hidden[s * l * d..(s + 1) * l * d];
            match self.pool {
                Pool::Mean | Pool::None => {
                    out.fill(0.0);
                    for r in rows.chunks_exact(d) {
                        for (o, v) in out.iter_mut().zip(r) {
                            *o += v;
                        }
                    }
                    let inv = 1.0 / l as f32;
                    out.iter_mut().for_each(|o| *o *= inv);
                }
                Pool::Last => out.copy_from_slice(&rows[(l - 1) * d..]),
            }
        }
    }

    /// Forward of `tokens [n, L]` into `sh`: backbone, pooling, head logits `[n, C]`.
    fn forward_shard(
        &self,
        p: &[f32],
        sh: &mut Shard,
        tokens: &[u32],
        n: usize,
        l: usize,
    ) -> Result<()> {
        let (c, d) = (self.head.c, self.head.d);
        self.lm.forward_hidden(p, tokens, n, l, &mut sh.cache)?;
        sh.pooled.resize(n * d, 0.0);
        sh.logits.resize(n * c, 0.0);
        let mut pooled = std::mem::take(&mut sh.pooled);
        self.pool_rows(sh.cache.hidden(), n, l, &mut pooled);
        sh.pooled = pooled;
        linear_forward(
            &sh.pooled,
            self.head.w.of(p),
            Some(self.head.b.of(p)),
            n,
            d,
            c,
            &mut sh.logits,
        )
    }

    /// Logits `[B, C]` of `tokens [B, L]` (every sequence `L` tokens; see
    /// [`crate::train::finetune::encode_padded`]).
    pub fn predict(
        &self,
        p: &[f32],
        tokens: &[u32],
        b: usize,
        l: usize,
        ws: &mut ClsWorkspace,
    ) -> Result<Vec<f32>> {
        check_len("classifier", "tokens [B, L]", tokens.len(), b * l)?;
        let c = self.head.c;
        let mut out = vec![0.0; b * c];
        run_shards(
            &mut ws.shards,
            &mut ws.grads,
            None,
            b,
            |sh, (start, n), _| {
                self.forward_shard(p, sh, &tokens[start * l..(start + n) * l], n, l)?;
                Ok((start, n))
            },
        )?
        .into_iter()
        .zip(&ws.shards)
        .for_each(|((start, n), sh)| {
            out[start * c..(start + n) * c].copy_from_slice(&sh.logits[..n * c]);
        });
        Ok(out)
    }

    /// Forward, mean cross-entropy over the batch and backward for `tokens [B, L]` with
    /// `labels [B]`: accumulates `∇(mean loss)` into `g`; returns summed statistics.
    pub fn loss_and_grad(
        &self,
        p: &[f32],
        tokens: &[u32],
        labels: &[usize],
        l: usize,
        ws: &mut ClsWorkspace,
        g: &mut [f32],
    ) -> Result<LossSum> {
        self.loss_and_grad_scaled(
            p,
            tokens,
            labels,
            l,
            1.0 / labels.len().max(1) as f32,
            ws,
            g,
        )
    }

    /// [`SeqClassifier::loss_and_grad`] of some rows of a batch, each row's gradient scaled by
    /// `scale` (1 / the whole batch's size: a data-parallel rank's rows).
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grad_scaled(
        &self,
        p: &[f32],
        tokens: &[u32],
        labels: &[usize],
        l: usize,
        scale: f32,
        ws: &mut ClsWorkspace,
        g: &mut [f32],
    ) -> Result<LossSum> {
        let b = labels.len();
        check_len("classifier", "tokens [B, L]", tokens.len(), b * l)?;
        let c = self.head.c;
        if let Some(&y) = labels.iter().find(|&&y| y >= c) {
            return Err(Error::config(
                "label",
                y,
                format!("must be < the classifier's {c} classes"),
            ));
        }
        let stats = run_shards(
            &mut ws.shards,
            &mut ws.grads,
            Some(g),
            b,
            |sh, (start, n), g| {
                let Some(g) = g else {
                    return Ok(LossSum::default());
                };
                self.shard_step(
                    p,
                    sh,
                    &tokens[start * l..(start + n) * l],
                    &labels[start..start + n],
                    l,
                    scale,
                    g,
                )
            },
        )?;
        Ok(LossSum::total(stats))
    }

    #[allow(clippy::too_many_arguments)]
    fn shard_step(
        &self,
        p: &[f32],
        sh: &mut Shard,
        tokens: &[u32],
        labels: &[usize],
        l: usize,
        scale: f32,
        g: &mut [f32],
    ) -> Result<LossSum> {
        let n = labels.len();
        let (c, d) = (self.head.c, self.head.d);
        self.forward_shard(p, sh, tokens, n, l)?;
        sh.dlogits.resize(n * c, 0.0);
        sh.targets.clear();
        sh.targets.extend(labels.iter().map(|&y| y as u32));
        let st = cross_entropy_sum(&sh.logits, &sh.targets, c, None, scale, &mut sh.dlogits)?;
        sh.dpooled.resize(n * d, 0.0);
        {
            let [gw, gb] = many_mut(g, [self.head.w, self.head.b]);
            linear_backward(
                &sh.dlogits,
                &sh.pooled,
                self.head.w.of(p),
                (n, d, c),
                Some(&mut sh.dpooled),
                gw,
                Some(gb),
            )?;
        }
        // d(hidden): the pooled gradient spread back over the positions it came from.
        sh.dhidden.resize(n * l * d, 0.0);
        for (s, dp) in sh.dpooled.chunks_exact(d).enumerate() {
            let rows = &mut sh.dhidden[s * l * d..(s + 1) * l * d];
            match self.pool {
                Pool::Mean | Pool::None => {
                    let inv = 1.0 / l as f32;
                    for r in rows.chunks_exact_mut(d) {
                        for (o, v) in r.iter_mut().zip(dp) {
                            *o = v * inv;
                        }
                    }
                }
                Pool::Last => {
                    rows.fill(0.0);
                    rows[(l - 1) * d..].copy_from_slice(dp);
                }
            }
        }
        self.lm.backward_hidden(p, &sh.dhidden, &mut sh.cache, g)?;
        Ok(st)
    }
}

/// The registry entry of fine-tuned classifiers (`hyena finetune` output: `config.json` with
/// `finetune`, `classes` and the backbone's `model`).
pub struct ClassifierFamily;

impl Family for ClassifierFamily {
    fn name(&self) -> &'static str {
        "classifier"
    }
    fn detect(&self, config: &serde_json::Value) -> bool {
        config.get("finetune").is_some() && config.get("classes").is_some()
    }
    fn load(
        &self,
        config: &serde_json::Value,
        weights: &TensorFile,
        dir: &Path,
    ) -> Result<Box<dyn LanguageModel>> {
        Ok(Box::new(load_classifier(config, weights, dir)?))
    }
}

/// The classifier of a `hyena finetune` directory's `config.json` and weights: the model,
/// its classes and its input length.
pub fn load_classifier(
    config: &serde_json::Value,
    weights: &TensorFile,
    dir: &Path,
) -> Result<Model<SeqClassifier>> {
    let cfg_path = dir.join("config.json");
    let bad = |msg: String| Error::format(&cfg_path, msg);
    let lm_cfg: LmConfig = model_section(config, "model", &cfg_path, LM_OPTIONAL_KEYS)?
        .ok_or_else(|| bad("missing `model` (the backbone's config)".into()))?;
    let classes: Vec<String> = config_section(config, "classes", &cfg_path)?
        .ok_or_else(|| bad("missing `classes` (a list of class names)".into()))?;
    let pool: Pool = config
        .get("finetune")
        .and_then(|f| f.get("pool"))
        .map(|v| serde_json::from_value(v.clone()))
        .transpose()
        .map_err(|e| bad(format!("finetune.pool: {e}")))?
        .unwrap_or_default();
    let src = Tracked::new(weights);
    let (mut net, params) = ParamStore::build(Init::From(&src), DType::F32, |vb| {
        SeqClassifier::new(&lm_cfg, classes.len(), pool, vb)
    })?;
    net.lm.load_buffers(&src, true)?;
    src.check_all_read(&[], Some(("n_layer", lm_cfg.n_layer)))?;
    Ok(Model { net, params })
}

impl Model<SeqClassifier> {
    /// The backbone as a language model of its own: its tensors (the head dropped, the LM head
    /// trainable again) and its filter buffers.
    pub fn backbone(&self) -> Result<Model<HyenaLm>> {
        let lm = &self.net.lm;
        let (mut net, params) =
            ParamStore::build(Init::From(&self.params.to_source()), DType::F32, |vb| {
                HyenaLm::new(&lm.cfg, vb)
            })?;
        for (b, src) in net.blocks.iter_mut().zip(&lm.blocks) {
            b.mixer.filter.buffers = src.mixer.filter.buffers.clone();
        }
        Ok(Model { net, params })
    }
}

impl LanguageModel for Model<SeqClassifier> {
    fn family(&self) -> &'static str {
        "classifier"
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.net.lm.cfg).unwrap_or_default()
    }
    fn vocab_size(&self) -> usize {
        self.net.lm.cfg.vocab_size
    }
    fn max_len(&self) -> usize {
        self.net.lm.cfg.operator.l_max
    }
    fn d_model(&self) -> usize {
        self.net.lm.cfg.d_model()
    }
    fn n_layer(&self) -> usize {
        self.net.lm.cfg.n_layer
    }
    fn loss(&self, x: &[u32], y: &[u32], b: usize, l: usize, ws: &mut Slot) -> Result<LossSum> {
        let ws = ws.get_or_default::<crate::models::hyenadna::LmWorkspace>();
        self.net.lm.loss(self.p(), x, y, b, l, ws)
    }
    fn hidden_states<'w>(
        &self,
        tokens: &[u32],
        layer: usize,
        ws: &'w mut InferWorkspace,
    ) -> Result<&'w [f32]> {
        self.net.lm.hidden_states(self.p(), tokens, layer, ws)
    }
    fn log_likelihood(
        &self,
        tokens: &[u32],
        ws: &mut InferWorkspace,
        out: &mut Vec<f32>,
    ) -> Result<f64> {
        self.net.lm.log_likelihood(self.p(), tokens, ws, out)
    }
    fn decoder(&self, _mode: DecodeMode) -> Result<Box<dyn Decoder + '_>> {
        Err(Error::config(
            "model",
            "a fine-tuned classifier",
            "generation needs a language model: use the backbone's own run directory",
        ))
    }
    fn checkpoint_tensors(&self) -> BTreeMap<String, Tensor> {
        crate::models::tensor_map(&self.params, self.net.lm.buffer_tensors())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
