//! AdamW with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay
//! Regularization", Alg. 2), parameter groups by name, a linear-warm-up + cosine schedule, and
//! global gradient-norm clipping.
//!
//! Groups follow the reference LMs (spec Sec. 2.5): no weight decay on biases, normalisation
//! weights, and the implicit-filter parameters (`filter_fn.*`, which the reference trains with
//! `wd = 0`); every other weight matrix (projections, MLP, embeddings, head) is decayed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::safetensors::Tensor;
use crate::layers::Params;

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

/// Whether a parameter (by its reference name) is in the weight-decay group.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias")
        || name.contains("norm")
        || name.contains("ln_f")
        || name.contains("filter_fn."))
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

/// Callback of [`zip_params`]: `(name, param, grad)`.
pub type ZipVisitor<'a> = dyn FnMut(&str, &mut [f32], &[f32]) + 'a;

/// Call `f(name, param, grad)` for every parameter of `params` with its gradient in `grads`
/// (same type, hence same names, shapes and visiting order).
pub fn zip_params(params: &mut dyn Params, grads: &dyn Params, f: &mut ZipVisitor<'_>) {
    let mut gs: Vec<Vec<f32>> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    // Gradients are copied out once per call so that the two visits do not alias; the copy is
    // a few MB at most and far cheaper than a step.
    grads.visit("", &mut |n, _, g| {
        names.push(n.to_string());
        gs.push(g.to_vec());
    });
    let mut i = 0;
    params.visit_mut("", &mut |n, _, p| {
        debug_assert_eq!(names.get(i).map(String::as_str), Some(n));
        f(n, p, &gs[i]);
        i += 1;
    });
}

/// Scale `grads` so that their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut dyn Params, max_norm: f32) -> f32 {
    let mut sq = 0.0f64;
    grads.visit("", &mut |_, _, g| {
        sq += g.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>()
    });
    let norm = sq.sqrt() as f32;
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        grads.visit_mut("", &mut |_, _, g| g.iter_mut().for_each(|v| *v *= s));
    }
    norm
}

/// One AdamW update's constants: learning rate, decoupled decay, betas, epsilon and the bias
/// corrections of step `t` (Loshchilov & Hutter, Alg. 2; PyTorch's `AdamW`). Shared by the
/// named-tensor [`AdamW`] and the MAD trainer's flat-buffer loop, so both take the same step.
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

/// AdamW state: first and second moments per parameter, and the step count.
#[derive(Clone, Debug, Default)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    m: BTreeMap<String, Vec<f32>>,
    v: BTreeMap<String, Vec<f32>>,
    /// Steps taken so far.
    pub step: u64,
}

impl AdamW {
    /// A fresh optimizer.
    pub fn new(cfg: AdamWConfig) -> Self {
        AdamW {
            cfg,
            ..Default::default()
        }
    }

    /// One update with learning rate `lr`:
    /// `m ← β1 m + (1-β1) g`, `v ← β2 v + (1-β2) g²`, `p ← p - lr·(wd·p + m̂ / (√v̂ + ε))`
    /// with bias-corrected `m̂`, `v̂`, and `wd = 0` outside the decayed group.
    pub fn step(&mut self, params: &mut dyn Params, grads: &dyn Params, lr: f32) {
        self.step += 1;
        let c = self.cfg.clone();
        let t = self.step;
        let (ms, vs) = (&mut self.m, &mut self.v);
        zip_params(params, grads, &mut |name, p, g| {
            let m = ms
                .entry(name.to_string())
                .or_insert_with(|| vec![0.0; p.len()]);
            let v = vs
                .entry(name.to_string())
                .or_insert_with(|| vec![0.0; p.len()]);
            let wd = if decays(name) { c.weight_decay } else { 0.0 };
            AdamWStep::new(&c, lr, wd, t).apply(p, g, m, v);
        });
    }

    /// The moments as named tensors (`exp_avg.<name>`, `exp_avg_sq.<name>`) for a checkpoint.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (prefix, map) in [("exp_avg.", &self.m), ("exp_avg_sq.", &self.v)] {
            for (k, d) in map {
                out.insert(
                    format!("{prefix}{k}"),
                    Tensor {
                        shape: vec![d.len()],
                        data: d.clone(),
                    },
                );
            }
        }
        out
    }

    /// Restore moments saved by [`AdamW::state_tensors`]; `step` is restored separately.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        self.m.clear();
        self.v.clear();
        for (k, t) in tensors {
            if let Some(n) = k.strip_prefix("exp_avg.") {
                self.m.insert(n.to_string(), t.data.clone());
            } else if let Some(n) = k.strip_prefix("exp_avg_sq.") {
                self.v.insert(n.to_string(), t.data.clone());
            } else {
                return Err(Error::config(
                    "optimizer state",
                    k,
                    "unexpected tensor name; expected exp_avg.* or exp_avg_sq.*",
                ));
            }
        }
        Ok(())
    }
}
