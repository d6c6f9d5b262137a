//! Sequence classification on a HyenaDNA backbone: the backbone's final hidden states
//! (`LN_f` output, `[B·L, D]`), pooled over positions, then one linear layer to the classes.
//!
//! This is the head of the reference fine-tuning recipe (spec Sec. 3.2 and 3.6): the standalone
//! `HyenaDNAModel(use_head=True)` applies a `SequenceDecoder` in `pool` mode, i.e. the **mean
//! over all positions** (left padding included), then `Linear(D → n_classes)` with a bias. Its
//! parameters are named as there, `head.output_transform.{weight,bias}`. [`Pool::Last`] takes
//! the last position instead: with left padding that is the last base, which in a causal model
//! has seen the whole sequence (what the HF `HyenaDNAForSequenceClassification` intends).
//!
//! The backward is the head's, then [`HyenaLm::backward_hidden`]. Batches are split into one
//! shard per worker thread, as in [`HyenaLm::loss_and_grad`]. The LM head (`lm_head.weight`)
//! is not used and not trained; it stays in the checkpoint so that the fine-tuned backbone
//! still loads as a language model.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{check_len, Error, Result};
use crate::layers::{Params, Visitor, VisitorMut};
use crate::models::lm::{cross_entropy_sum, shard_ranges, HyenaLm, LmCache, LmParams, LossSum};
use crate::ops::linear::{linear_backward, linear_forward};

/// How the hidden states of a sequence become one vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// Mean over every position, padding included (the reference's `pool` decoder).
    #[default]
    Mean,
    /// The last position.
    Last,
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pool::Mean => "mean",
            Pool::Last => "last",
        })
    }
}

/// The classification head: `logits = W · pooled + b`.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadParams {
    /// `head.output_transform.weight` [C, D]
    pub w: Vec<f32>,
    /// `head.output_transform.bias` [C]
    pub b: Vec<f32>,
    c: usize,
    d: usize,
}

/// Name prefix of the head's parameters (the standalone reference's `head.output_transform`).
pub const HEAD: &str = "head.output_transform.";

impl HeadParams {
    /// Zero parameters for `c` classes on width `d`.
    pub fn zeros(c: usize, d: usize) -> Self {
        HeadParams {
            w: vec![0.0; c * d],
            b: vec![0.0; c],
            c,
            d,
        }
    }

    /// Classes.
    pub fn n_classes(&self) -> usize {
        self.c
    }
}

impl Params for HeadParams {
    fn visit(&self, prefix: &str, f: &mut Visitor<'_>) {
        f(&format!("{prefix}{HEAD}weight"), &[self.c, self.d], &self.w);
        f(&format!("{prefix}{HEAD}bias"), &[self.c], &self.b);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut VisitorMut<'_>) {
        let (c, d) = (self.c, self.d);
        f(&format!("{prefix}{HEAD}weight"), &[c, d], &mut self.w);
        f(&format!("{prefix}{HEAD}bias"), &[c], &mut self.b);
    }
}

/// Whether an LM parameter is trained by fine-tuning (everything but the unused LM head).
fn trained(name: &str) -> bool {
    !name.ends_with("lm_head.weight")
}

/// The trainable parameters of a classifier, or their gradients: the backbone (all of the LM
/// but its head) and the classification head, visited in that order.
pub struct Trainable<'a> {
    pub lm: &'a mut LmParams,
    pub head: &'a mut HeadParams,
}

impl Params for Trainable<'_> {
    fn visit(&self, prefix: &str, f: &mut Visitor<'_>) {
        self.lm.visit(prefix, &mut |n, s, d| {
            if trained(n) {
                f(n, s, d)
            }
        });
        self.head.visit(prefix, f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut VisitorMut<'_>) {
        self.lm.visit_mut(prefix, &mut |n, s, d| {
            if trained(n) {
                f(n, s, d)
            }
        });
        self.head.visit_mut(prefix, f);
    }
}

/// Gradients of a classifier (same shapes as its parameters).
#[derive(Clone, Debug, PartialEq)]
pub struct ClassifierGrads {
    pub lm: LmParams,
    pub head: HeadParams,
}

impl ClassifierGrads {
    /// The trainable view, for the optimizer and gradient clipping.
    pub fn trainable(&mut self) -> Trainable<'_> {
        Trainable {
            lm: &mut self.lm,
            head: &mut self.head,
        }
    }

    /// Set every gradient to zero.
    pub fn zero(&mut self) {
        self.lm.zero();
        self.head.zero();
    }

    fn add_assign_from(&mut self, o: &ClassifierGrads) {
        self.lm.add_assign_from(&o.lm);
        self.head.add_assign_from(&o.head);
    }
}

/// A HyenaDNA backbone with a pooled linear classification head.
#[derive(Clone, Debug)]
pub struct SeqClassifier {
    pub lm: HyenaLm,
    pub head: HeadParams,
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
    grads: Option<ClassifierGrads>,
}

/// Buffers for [`SeqClassifier::loss_and_grad`] and [`SeqClassifier::predict`], reused.
#[derive(Clone, Debug, Default)]
pub struct ClsWorkspace {
    shards: Vec<Shard>,
}

impl SeqClassifier {
    /// A classifier on `lm` with a fresh head for `n_classes` classes: weights drawn with
    /// PyTorch's `nn.Linear` default, uniform in ±1/√D (seeded), bias likewise.
    pub fn new(lm: HyenaLm, n_classes: usize, pool: Pool, seed: u64) -> Result<Self> {
        if n_classes < 2 {
            return Err(Error::config(
                "n_classes",
                n_classes,
                "a classifier needs at least 2 classes",
            ));
        }
        use rand::{Rng, SeedableRng};
        let d = lm.cfg.d_model();
        let mut head = HeadParams::zeros(n_classes, d);
        let bound = 1.0 / (d as f32).sqrt();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5EED_C1A5);
        for x in head.w.iter_mut().chain(head.b.iter_mut()) {
            *x = rng.random_range(-bound..bound);
        }
        Ok(SeqClassifier { lm, head, pool })
    }

    /// Zero gradients shaped like this classifier's parameters.
    pub fn zero_grads(&self) -> ClassifierGrads {
        ClassifierGrads {
            lm: self.lm.zero_grads(),
            head: HeadParams::zeros(self.head.c, self.head.d),
        }
    }

    /// The trainable parameters (for the optimizer).
    pub fn trainable(&mut self) -> Trainable<'_> {
        Trainable {
            lm: &mut self.lm.params,
            head: &mut self.head,
        }
    }

    /// Pool `hidden [n·L, D]` into `pooled [n, D]`.
    fn pool_rows(&self, hidden: &[f32], n: usize, l: usize, pooled: &mut [f32]) {
        let d = self.head.d;
        for (s, out) in pooled.chunks_exact_mut(d).enumerate().take(n) {
            let rows = &hidden[s * l * d..(s + 1) * l * d];
            match self.pool {
                Pool::Mean => {
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
    fn forward_shard(&self, sh: &mut Shard, tokens: &[u32], n: usize, l: usize) -> Result<()> {
        let (c, d) = (self.head.c, self.head.d);
        self.lm.forward_hidden(tokens, n, l, &mut sh.cache)?;
        sh.pooled.resize(n * d, 0.0);
        sh.logits.resize(n * c, 0.0);
        let mut pooled = std::mem::take(&mut sh.pooled);
        self.pool_rows(sh.cache.hidden(), n, l, &mut pooled);
        sh.pooled = pooled;
        linear_forward(
            &sh.pooled,
            &self.head.w,
            Some(&self.head.b),
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
        tokens: &[u32],
        b: usize,
        l: usize,
        ws: &mut ClsWorkspace,
    ) -> Result<Vec<f32>> {
        check_len("classifier", "tokens [B, L]", tokens.len(), b * l)?;
        let c = self.head.c;
        let mut out = vec![0.0; b * c];
        let s = HyenaLm::shards_for(b);
        ws.shards.resize_with(s, Shard::default);
        let ranges = shard_ranges(b, s);
        let parts = ws.shards[..s]
            .par_iter_mut()
            .zip(ranges.clone())
            .map(|(sh, (start, n))| {
                let run = |sh: &mut Shard| {
                    self.forward_shard(sh, &tokens[start * l..(start + n) * l], n, l)
                };
                if s > 1 {
                    crate::ops::serial(|| run(sh))
                } else {
                    run(sh)
                }
            })
            .collect::<Result<Vec<()>>>();
        parts?;
        for (sh, (start, n)) in ws.shards[..s].iter().zip(ranges) {
            out[start * c..(start + n) * c].copy_from_slice(&sh.logits[..n * c]);
        }
        Ok(out)
    }

    /// Forward, mean cross-entropy over the batch and backward for `tokens [B, L]` with
    /// `labels [B]`: accumulates `∇(mean loss)` into `grads`; returns summed statistics.
    pub fn loss_and_grad(
        &self,
        tokens: &[u32],
        labels: &[usize],
        l: usize,
        ws: &mut ClsWorkspace,
        grads: &mut ClassifierGrads,
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
        let s = HyenaLm::shards_for(b);
        ws.shards.resize_with(s, Shard::default);
        let scale = 1.0 / b.max(1) as f32;
        // Shard 0 accumulates into `grads`, the others into their own, added in shard order.
        let mut own: Vec<ClassifierGrads> = ws.shards[1..]
            .iter_mut()
            .map(|sh| {
                let mut g = sh.grads.take().unwrap_or_else(|| self.zero_grads());
                g.zero();
                g
            })
            .collect();
        let targets: Vec<&mut ClassifierGrads> =
            std::iter::once(&mut *grads).chain(own.iter_mut()).collect();
        let stats = ws.shards[..s]
            .par_iter_mut()
            .zip(targets)
            .zip(shard_ranges(b, s))
            .map(|((sh, g), (start, n))| {
                let mut run = |sh: &mut Shard| {
                    self.shard_step(
                        sh,
                        &tokens[start * l..(start + n) * l],
                        &labels[start..start + n],
                        l,
                        scale,
                        &mut *g,
                    )
                };
                if s > 1 {
                    crate::ops::serial(|| run(sh))
                } else {
                    run(sh)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        for g in &own {
            grads.add_assign_from(g);
        }
        for (sh, g) in ws.shards[1..].iter_mut().zip(own) {
            sh.grads = Some(g);
        }
        let mut total = LossSum::default();
        for st in stats {
            total.add(st);
        }
        Ok(total)
    }

    fn shard_step(
        &self,
        sh: &mut Shard,
        tokens: &[u32],
        labels: &[usize],
        l: usize,
        scale: f32,
        grads: &mut ClassifierGrads,
    ) -> Result<LossSum> {
        let n = labels.len();
        let (c, d) = (self.head.c, self.head.d);
        self.forward_shard(sh, tokens, n, l)?;
        sh.dlogits.resize(n * c, 0.0);
        sh.targets.clear();
        sh.targets.extend(labels.iter().map(|&y| y as u32));
        let st = cross_entropy_sum(&sh.logits, &sh.targets, c, None, scale, &mut sh.dlogits)?;
        sh.dpooled.resize(n * d, 0.0);
        linear_backward(
            &sh.dlogits,
            &sh.pooled,
            &self.head.w,
            (n, d, c),
            Some(&mut sh.dpooled),
            &mut grads.head.w,
            Some(&mut grads.head.b),
        )?;
        // d(hidden): the pooled gradient spread back over the positions it came from.
        sh.dhidden.resize(n * l * d, 0.0);
        for (s, dp) in sh.dpooled.chunks_exact(d).enumerate() {
            let rows = &mut sh.dhidden[s * l * d..(s + 1) * l * d];
            match self.pool {
                Pool::Mean => {
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
        self.lm
            .backward_hidden(&sh.dhidden, &mut sh.cache, &mut grads.lm)?;
        Ok(st)
    }
}

/// Index and value of the largest entry (the first on ties).
pub fn argmax(row: &[f32]) -> (usize, f32) {
    let (mut best, mut m) = (0, f32::NEG_INFINITY);
    for (j, &x) in row.iter().enumerate() {
        if x > m {
            m = x;
            best = j;
        }
    }
    (best, m)
}
