//! AdamW with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay
//! Regularization", Alg. 2) over a model's flat parameter buffer, the linear-warm-up + cosine
//! schedule [`LrSchedule`], and global gradient-norm clipping. The loop that calls them is
//! [`crate::train::fit`].
//!
//! Groups are tags of the parameter store ([`crate::params`]), given where each tensor is
//! registered: as in the reference LMs, no weight decay on biases, normalisation weights and
//! the implicit-filter parameters (`filter_fn.*`, which the reference trains with `wd = 0`);
//! every other weight matrix (projections, MLP, embeddings, head) is decayed. Frozen tensors are
//! neither clipped nor updated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::safetensors::{Tensor, TensorFile};
use crate::params::ParamStore;

/// Optimizer hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// Peak learning rate (after warm-up).
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay for the decayed group.
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 6e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

impl AdamWConfig {
    /// Check the hyper-parameters (finite, in range), naming the config key of the first bad
    /// one.
    pub fn validate(&self) -> Result<()> {
        let checks: [(&'static str, f32, bool, &str); 5] = [
            (
                "train.optim.lr",
                self.lr,
                self.lr.is_finite() && self.lr > 0.0,
                "the learning rate (--lr) must be a finite number > 0, e.g. 0.002",
            ),
            (
                "train.optim.beta1",
                self.beta1,
                (0.0..1.0).contains(&self.beta1),
                "must be in [0, 1), e.g. 0.9",
            ),
            (
                "train.optim.beta2",
                self.beta2,
                (0.0..1.0).contains(&self.beta2),
                "must be in [0, 1), e.g. 0.999",
            ),
            (
                "train.optim.eps",
                self.eps,
                self.eps.is_finite() && self.eps > 0.0,
                "must be a finite number > 0, e.g. 1e-8",
            ),
            (
                "train.optim.weight_decay",
                self.weight_decay,
                self.weight_decay.is_finite() && self.weight_decay >= 0.0,
                "must be a finite number >= 0",
            ),
        ];
        for (key, v, ok, hint) in checks {
            if !ok {
                return Err(Error::config(key, v, hint));
            }
        }
        Ok(())
    }
}

/// Linear warm-up from 0 to the peak over `warmup` steps, then cosine decay to `min_lr` at `total`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LrSchedule {
    pub warmup: u64,
    pub total: u64,
    /// Final learning rate, as a fraction of the peak.
    pub min_ratio: f32,
}

impl Default for LrSchedule {
    fn default() -> Self {
        LrSchedule {
            warmup: 100,
            total: 1000,
            min_ratio: 0.1,
        }
    }
}

impl LrSchedule {
    /// Learning rate for step `step` (0-based) given the peak `lr`.
    pub fn lr(&self, lr: f32, step: u64) -> f32 {
        if step < self.warmup {
            return lr * (step + 1) as f32 / self.warmup as f32;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let p = ((step - self.warmup) as f32 / span as f32).min(1.0);
        let min = lr * self.min_ratio;
        min + 0.5 * (lr - min) * (1.0 + (std::f32::consts::PI * p).cos())
    }
}

/// Scale the trainable gradients of `store`'s layout in `grads` so that their global L2 norm
/// is at most `max_norm` (0: no clipping); returns the norm before. The squares are summed per
/// tensor in f64, tensor sums added in buffer order.
pub fn clip_grad_norm(store: &ParamStore, grads: &mut [f32], max_norm: f32) -> f32 {
    let mut sq = 0.0f64;
    for s in store.specs().iter().filter(|s| s.trainable) {
        sq += s
            .handle
            .of(grads)
            .iter()
            .map(|v| (*v as f64) * (*v as f64))
            .sum::<f64>();
    }
    let norm = sq.sqrt() as f32;
    if max_norm > 0.0 && norm > max_norm {
        let k = max_norm / (norm + 1e-6);
        for s in store.specs().iter().filter(|s| s.trainable) {
            s.handle.of_mut(grads).iter_mut().for_each(|v| *v *= k);
        }
    }
    norm
}

/// One AdamW update's constants: learning rate, decoupled decay, betas, epsilon and the bias
/// corrections of step `t` (Loshchilov & Hutter, Alg. 2; PyTorch's `AdamW`). [`AdamW::step`]
/// applies one per tensor (each tensor's decay depends on its tag).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f32,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// `1 − β1^t`, `1 − β2^t`.
    pub bc1: f32,
    pub bc2: f32,
}

impl AdamWStep {
    /// The constants of step `t` (1-based) with `cfg`'s betas and epsilon.
    pub fn new(cfg: &AdamWConfig, lr: f32, weight_decay: f32, t: u64) -> Self {
        let t = t.min(i32::MAX as u64) as i32;
        AdamWStep {
            lr,
            weight_decay,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            bc1: 1.0 - cfg.beta1.powi(t),
            bc2: 1.0 - cfg.beta2.powi(t),
        }
    }

    /// `m ← β1 m + (1-β1) g`, `v ← β2 v + (1-β2) g²`, `p ← p − lr·(wd·p + m̂ / (√v̂ + ε))`,
    /// elementwise over equal-length slices.
    pub fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let s = *self;
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = s.beta1 * *m + (1.0 - s.beta1) * g;
            *v = s.beta2 * *v + (1.0 - s.beta2) * g * g;
            let upd = (*m / s.bc1) / ((*v / s.bc2).sqrt() + s.eps);
            *p -= s.lr * (s.weight_decay * *p + upd);
        }
    }
}

/// AdamW state: first and second moments laid out like the parameters, and the step count.
#[derive(Clone, Debug, Default)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    m: Vec<f32>,
    v: Vec<f32>,
    /// Steps taken so far.
    pub step: u64,
    /// Decay every tensor, whatever its tag (PyTorch's `AdamW(model.parameters())`, as MAD
    /// trains); otherwise only the tensors tagged for weight decay.
    pub decay_all: bool,
}

/// Tensors this many elements long or more are updated in parallel chunks.
const PAR_CHUNK: usize = 1 << 14;

impl AdamW {
    /// A fresh optimizer.
    pub fn new(cfg: AdamWConfig) -> Self {
        AdamW {
            cfg,
            ..Default::default()
        }
    }

    /// One update of the trainable tensors of `store` with learning rate `lr`:
    /// `m ← β1 m + (1-β1) g`, `v ← β2 v + (1-β2) g²`, `p ← p - lr·(wd·p + m̂ / (√v̂ + ε))`
    /// with bias-corrected `m̂`, `v̂`, and `wd = 0` outside the weight-decay group.
    pub fn step(&mut self, store: &mut ParamStore, grads: &[f32], lr: f32) {
        use rayon::prelude::*;
        self.step += 1;
        let n = store.len();
        self.m.resize(n, 0.0);
        self.v.resize(n, 0.0);
        let (c, t) = (&self.cfg, self.step);
        let specs: Vec<(std::ops::Range<usize>, AdamWStep)> = store
            .specs()
            .iter()
            .filter(|s| s.trainable)
            .map(|s| {
                let wd = if s.decay || self.decay_all {
                    c.weight_decay
                } else {
                    0.0
                };
                (s.handle.range(), AdamWStep::new(c, lr, wd, t))
            })
            .collect();
        // Disjoint ranges of the four buffers, one task per tensor (large ones split further).
        let mut parts = Vec::with_capacity(specs.len());
        let (mut p, mut m, mut v, mut g) = (
            store.data_mut(),
            self.m.as_mut_slice(),
            self.v.as_mut_slice(),
            grads,
        );
        let mut at = 0;
        for (r, upd) in specs {
            let skip = r.start - at;
            let (_, p1) = std::mem::take(&mut p).split_at_mut(skip);
            let (_, m1) = std::mem::take(&mut m).split_at_mut(skip);
            let (_, v1) = std::mem::take(&mut v).split_at_mut(skip);
            let (_, g1) = g.split_at(skip);
            let len = r.len();
            let (pt, p2) = p1.split_at_mut(len);
            let (mt, m2) = m1.split_at_mut(len);
            let (vt, v2) = v1.split_at_mut(len);
            let (gt, g2) = g1.split_at(len);
            parts.push((pt, gt, mt, vt, upd));
            (p, m, v, g) = (p2, m2, v2, g2);
            at = r.end;
        }
        parts.into_par_iter().for_each(|(p, g, m, v, upd)| {
            if p.len() >= PAR_CHUNK {
                p.par_chunks_mut(PAR_CHUNK)
                    .zip(g.par_chunks(PAR_CHUNK))
                    .zip(m.par_chunks_mut(PAR_CHUNK).zip(v.par_chunks_mut(PAR_CHUNK)))
                    .for_each(|((p, g), (m, v))| upd.apply(p, g, m, v));
            } else {
                upd.apply(p, g, m, v);
            }
        });
    }

    /// The moments as named tensors (`exp_avg.<name>`, `exp_avg_sq.<name>`, flat) of the
    /// trainable tensors of `store`, for a checkpoint.
    pub fn state_tensors(&self, store: &ParamStore) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        if self.m.len() != store.len() {
            return out; // no step taken yet
        }
        for (prefix, buf) in [("exp_avg.", &self.m), ("exp_avg_sq.", &self.v)] {
            for s in store.specs().iter().filter(|s| s.trainable) {
                out.insert(
                    format!("{prefix}{}", s.name),
                    Tensor {
                        shape: vec![s.handle.len()],
                        data: s.handle.of(buf).to_vec(),
                    },
                );
            }
        }
        out
    }

    /// Restore moments saved by [`AdamW::state_tensors`] for the tensors of `store` (a tensor
    /// the file lacks starts at zero); `step` is restored separately. A tensor of another size,
    /// or one the model does not have, is an error naming it.
    pub fn load_state(&mut self, store: &ParamStore, file: &TensorFile) -> Result<()> {
        self.m = store.zeros();
        self.v = store.zeros();
        for (k, t) in &file.tensors {
            let (buf, name) = if let Some(n) = k.strip_prefix("exp_avg.") {
                (&mut self.m, n)
            } else if let Some(n) = k.strip_prefix("exp_avg_sq.") {
                (&mut self.v, n)
            } else {
                return Err(Error::config(
                    "optimizer state",
                    k,
                    "unexpected tensor name; expected exp_avg.* or exp_avg_sq.*",
                ));
            };
            let spec = store.spec(name).ok_or_else(|| {
                Error::format(
                    &file.path,
                    format!("`{k}`: the model has no tensor `{name}` (another run's optimizer?)"),
                )
            })?;
            if t.data.len() != spec.handle.len() {
                return Err(Error::format(
                    &file.path,
                    format!(
                        "`{k}` has {} values, the tensor {} (another run's optimizer?)",
                        t.data.len(),
                        spec.handle.len()
                    ),
                ));
            }
            spec.handle.of_mut(buf).copy_from_slice(&t.data);
        }
        Ok(())
    }
}
