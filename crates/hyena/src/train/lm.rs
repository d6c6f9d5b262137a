//! Language-model training: the objective (random windows of a token stream, next-token
//! cross-entropy, gradient accumulation over micro-batches) that the one training loop
//! ([`crate::train::fit`]) steps under a warm-up + cosine schedule with clipping; evaluation on
//! consecutive validation windows; checkpoints and exact resume.
//!
//! Determinism: the batch of step `s` is drawn from an RNG seeded by `(seed, s, micro-batch)`,
//! so a run resumed from a checkpoint at step `s` sees exactly the batches an uninterrupted run
//! would, and (with the same thread count) produces the same losses bit for bit.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_model, read_json, save_weights, write_json};
use crate::error::{Error, Result};
use crate::io::safetensors::{write_atomic, TensorFile};
use crate::layers::layer::Slot;
use crate::models::hyenadna::{HyenaLm, LmConfig, LmWorkspace};
use crate::models::{LanguageModel, Model};
use crate::ops::loss::LossSum;
use crate::train::fit::{Fit, Flow, Objective, Schedule, Step, StepLoss};
use crate::train::{AdamW, AdamWConfig, LrSchedule};

/// Optimisation settings of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before each update.
    pub grad_accum: usize,
    /// Window length L (tokens per sequence; targets are the next tokens).
    pub seq_len: usize,
    /// Optimizer updates in the run.
    pub steps: u64,
    /// Evaluate every this many steps (and at the end).
    pub eval_every: u64,
    /// Validation windows evaluated, at most (`batch_size` per forward).
    pub eval_windows: usize,
    /// Global gradient-norm clip (0 = off).
    pub clip: f32,
    pub seed: u64,
    pub optim: AdamWConfig,
    pub warmup: u64,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 8,
            grad_accum: 1,
            seq_len: 1024,
            steps: 1000,
            eval_every: 100,
            eval_windows: 64,
            clip: 1.0,
            seed: 0,
            optim: AdamWConfig::default(),
            warmup: 50,
            min_lr_ratio: 0.1,
        }
    }
}

impl TrainConfig {
    /// The learning-rate schedule of this run.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            warmup: self.warmup,
            total: self.steps,
            min_ratio: self.min_lr_ratio,
        }
    }
}

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepStats {
    pub step: u64,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    pub tokens: usize,
}

/// What a run reports as it goes.
#[derive(Clone, Debug)]
pub enum Event {
    /// Something to print once (data summary, baselines, config).
    Info(String),
    Step(StepStats),
    Eval(EvalStats),
}

/// Validation metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalStats {
    pub step: u64,
    pub loss: f64,
    pub perplexity: f64,
    pub bits_per_token: f64,
    pub accuracy: f64,
    pub tokens: usize,
}

/// The language-model objective: the windows of a step are drawn from the training stream by
/// an RNG seeded with `(seed, step, micro-batch)`; each micro-batch adds
/// ∇(its mean loss) / `grad_accum` to the gradient.
pub struct LmObjective {
    train: Vec<u32>,
    batch_size: usize,
    seq_len: usize,
    grad_accum: usize,
    seed: u64,
    /// Activations, logits gradients and per-shard gradients ([`LmWorkspace`]), reused across
    /// steps and by the evaluations.
    ws: Slot,
}

impl LmObjective {
    /// The windows `(inputs, targets)` of micro-batch `micro` of step `step`: `[B, L]` each.
    pub fn batch(&self, step: u64, micro: usize) -> (Vec<u32>, Vec<u32>) {
        let (b, l) = (self.batch_size, self.seq_len);
        let mix = self.seed
            ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (micro as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut rng = StdRng::seed_from_u64(mix);
        let (mut x, mut y) = (Vec::with_capacity(b * l), Vec::with_capacity(b * l));
        for _ in 0..b {
            let s = rng.random_range(0..self.train.len() - l);
            x.extend_from_slice(&self.train[s..s + l]);
            y.extend_from_slice(&self.train[s + 1..s + l + 1]);
        }
        (x, y)
    }
}

impl Objective<HyenaLm> for LmObjective {
    fn loss_and_grad(
        &mut self,
        model: &Model<HyenaLm>,
        step: u64,
        grads: &mut [f32],
    ) -> Result<StepLoss> {
        let (b, l) = (self.batch_size, self.seq_len);
        let mut mean_sum = 0.0f32;
        let mut sum = LossSum::default();
        // Each micro-batch contributes ∇(its mean loss) / grad_accum.
        let scale = 1.0 / self.grad_accum as f32;
        for micro in 0..self.grad_accum {
            let (x, y) = self.batch(step, micro);
            let st = model.net.loss_and_grad(
                model.p(),
                &x,
                &y,
                b,
                l,
                scale,
                self.ws.get_or_default::<LmWorkspace>(),
                grads,
            )?;
            mean_sum += (st.loss_sum / st.count.max(1) as f64) as f32;
            sum.add(st);
        }
        Ok(StepLoss {
            loss: (mean_sum / self.grad_accum as f32) as f64,
            sum,
            tokens: b * l * self.grad_accum,
        })
    }
}

/// A language model, the training loop's state, and the data it trains on.
pub struct Trainer {
    pub model: Model<HyenaLm>,
    pub fit: Fit,
    pub cfg: TrainConfig,
    objective: LmObjective,
    val: Vec<u32>,
}

impl Trainer {
    /// A new run. `train`/`val` are token streams; both must hold more than `seq_len` tokens.
    pub fn new(
        model: Model<HyenaLm>,
        cfg: TrainConfig,
        train: Vec<u32>,
        val: Vec<u32>,
    ) -> Result<Self> {
        for (what, toks) in [("training", &train), ("validation", &val)] {
            if toks.len() <= cfg.seq_len {
                return Err(Error::config(
                    "seq_len",
                    cfg.seq_len,
                    format!(
                        "the {what} data has only {} tokens; it needs more than one window \
                         (use a shorter --seq-len or more data)",
                        toks.len()
                    ),
                ));
            }
        }
        if cfg.seq_len > model.net.cfg.operator.l_max {
            return Err(Error::config(
                "seq_len",
                cfg.seq_len,
                format!("exceeds the model's l_max {}", model.net.cfg.operator.l_max),
            ));
        }
        if cfg.batch_size == 0 || cfg.grad_accum == 0 {
            return Err(Error::config(
                "batch_size/grad_accum",
                format!("{}/{}", cfg.batch_size, cfg.grad_accum),
                "must be >= 1",
            ));
        }
        let fit = Fit::new(
            AdamW::new(cfg.optim.clone()),
            Schedule::WarmupCosine {
                peak: cfg.optim.lr,
                schedule: cfg.schedule(),
            },
            cfg.clip,
        );
        let objective = LmObjective {
            train,
            batch_size: cfg.batch_size,
            seq_len: cfg.seq_len,
            grad_accum: cfg.grad_accum,
            seed: cfg.seed,
            ws: Slot::default(),
        };
        Ok(Trainer {
            model,
            fit,
            cfg,
            objective,
            val,
        })
    }

    /// Steps completed so far.
    pub fn step(&self) -> u64 {
        self.fit.steps_done()
    }

    /// The windows `(inputs, targets)` of micro-batch `micro` of step `step`: `[B, L]` each.
    pub fn batch(&self, step: u64, micro: usize) -> (Vec<u32>, Vec<u32>) {
        self.objective.batch(step, micro)
    }

    /// One optimizer update (with gradient accumulation over `grad_accum` micro-batches).
    pub fn train_step(&mut self) -> Result<StepStats> {
        let s = self.fit.step(&mut self.model, &mut self.objective)?;
        Ok(step_stats(&s))
    }

    /// Train until `cfg.steps` steps are done: `on_event` sees every step; every `eval_every`
    /// steps and at the last one the model is evaluated ([`Event::Eval`]) and the run saved
    /// into `dir` ([`Trainer::save`]). Returns the last evaluation.
    pub fn run(
        &mut self,
        dir: &Path,
        extra: &serde_json::Value,
        on_event: &mut dyn FnMut(&Event) -> Result<()>,
    ) -> Result<Option<EvalStats>> {
        let Trainer {
            model,
            fit,
            cfg,
            objective,
            val,
        } = self;
        let mut last = None;
        fit.run(model, objective, cfg.steps, &mut |a| {
            let s = step_stats(a.step);
            on_event(&Event::Step(s.clone()))?;
            if s.step.is_multiple_of(cfg.eval_every.max(1)) || s.step == cfg.steps {
                let e = evaluate_val(a.model, val, cfg, &mut a.objective.ws, s.step)?;
                on_event(&Event::Eval(e.clone()))?;
                save_checkpoint(dir, a.model, a.opt, cfg, extra)?;
                last = Some(e);
            }
            Ok(Flow::Continue)
        })?;
        Ok(last)
    }

    /// Loss, perplexity, bits per token and next-token accuracy on consecutive, non-overlapping
    /// validation windows (at most `eval_windows` of them).
    pub fn evaluate(&mut self) -> Result<EvalStats> {
        let step = self.fit.steps_done();
        evaluate_val(
            &self.model,
            &self.val,
            &self.cfg,
            &mut self.objective.ws,
            step,
        )
    }

    /// Write a checkpoint into `dir`: `model.safetensors` (parameters and filter buffers),
    /// `optimizer.safetensors`, `config.json` (`{"model": …, "train": …}` plus `extra`), and
    /// `state.json` (step). Every file is written atomically.
    pub fn save(&self, dir: &Path, extra: &serde_json::Value) -> Result<()> {
        save_checkpoint(dir, &self.model, &self.fit.opt, &self.cfg, extra)
    }

    /// Continue a run saved by [`Trainer::save`]. The model config in `dir` must equal `lm_cfg`
    /// (a different architecture cannot resume), and the data must be the same streams.
    pub fn resume(
        dir: &Path,
        lm_cfg: &LmConfig,
        cfg: TrainConfig,
        train: Vec<u32>,
        val: Vec<u32>,
    ) -> Result<Self> {
        let loaded = load_model(dir)?;
        let m = loaded.downcast::<Model<HyenaLm>>("--resume")?.clone();
        if &m.net.cfg != lm_cfg {
            return Err(Error::Format {
                file: dir.join("config.json"),
                msg: "the checkpoint's model config differs from the requested one; \
                      resume with the same model settings or start a new run"
                    .into(),
            });
        }
        let mut t = Trainer::new(m, cfg, train, val)?;
        let opt = TensorFile::read(dir.join("optimizer.safetensors"))?;
        t.fit.opt.load_state(&t.model.params, &opt)?;
        let st = read_json(&dir.join("state.json"))?;
        t.fit.opt.step = st["step"].as_u64().ok_or_else(|| Error::Format {
            file: dir.join("state.json"),
            msg: "missing integer `step`".into(),
        })?;
        Ok(t)
    }
}

fn step_stats(s: &Step) -> StepStats {
    StepStats {
        step: s.step,
        loss: s.loss.loss as f32,
        lr: s.lr,
        grad_norm: s.grad_norm,
        tokens: s.loss.tokens,
    }
}

/// [`evaluate_tokens`] on the validation stream with the run's batch, window and window cap.
fn evaluate_val(
    model: &Model<HyenaLm>,
    val: &[u32],
    cfg: &TrainConfig,
    ws: &mut Slot,
    step: u64,
) -> Result<EvalStats> {
    let mut e = evaluate_tokens(
        model,
        val,
        cfg.batch_size,
        cfg.seq_len,
        cfg.eval_windows,
        ws,
        &mut |_, _| {},
    )?;
    e.step = step;
    Ok(e)
}

/// See [`Trainer::save`].
fn save_checkpoint(
    dir: &Path,
    model: &Model<HyenaLm>,
    opt: &AdamW,
    train: &TrainConfig,
    extra: &serde_json::Value,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    save_weights(dir, &model.tensors(), "hyena-lm")?;
    let meta = std::collections::BTreeMap::new();
    write_atomic(
        dir.join("optimizer.safetensors"),
        &opt.state_tensors(&model.params),
        &meta,
    )?;
    let mut cfg = serde_json::json!({ "model": model.net.cfg, "train": train });
    if let (Some(obj), Some(ex)) = (cfg.as_object_mut(), extra.as_object()) {
        for (k, v) in ex {
            obj.insert(k.clone(), v.clone());
        }
    }
    write_json(&dir.join("config.json"), &cfg)?;
    write_json(
        &dir.join("state.json"),
        &serde_json::json!({ "step": opt.step }),
    )
}

/// Score `lm` on consecutive, non-overlapping windows of `tokens` (at most `max_windows`,
/// `batch` windows per forward): mean next-token loss (nats), perplexity, bits per token and
/// accuracy. `ws` is reused between calls; `progress(done, total)` is called
/// after each batch of windows. The returned `step` is 0.
pub fn evaluate_tokens(
    model: &dyn LanguageModel,
    tokens: &[u32],
    batch: usize,
    seq_len: usize,
    max_windows: usize,
    ws: &mut Slot,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalStats> {
    let (b, l) = (batch.max(1), seq_len);
    if l == 0 || tokens.len() <= l {
        return Err(Error::config(
            "seq_len",
            l,
            format!(
                "the evaluation data has {} tokens; it needs more than one window of {l} \
                 (use a shorter --seq-len or more data)",
                tokens.len()
            ),
        ));
    }
    if l > model.max_len() {
        return Err(Error::config(
            "seq_len",
            l,
            format!("exceeds the model's l_max {}", model.max_len()),
        ));
    }
    let n_win = ((tokens.len() - 1) / l).min(max_windows).max(1);
    let (mut loss_sum, mut count, mut correct) = (0.0f64, 0usize, 0usize);
    let mut w = 0;
    while w < n_win {
        let nb = b.min(n_win - w);
        let (mut x, mut y) = (Vec::with_capacity(nb * l), Vec::with_capacity(nb * l));
        for i in 0..nb {
            let s = (w + i) * l;
            x.extend_from_slice(&tokens[s..s + l]);
            y.extend_from_slice(&tokens[s + 1..s + l + 1]);
        }
        let st = model.loss(&x, &y, nb, l, ws)?;
        loss_sum += st.loss_sum;
        count += st.count;
        correct += st.correct;
        w += nb;
        progress(w, n_win);
    }
    let loss = loss_sum / count.max(1) as f64;
    Ok(EvalStats {
        step: 0,
        loss,
        perplexity: loss.exp(),
        bits_per_token: loss / std::f64::consts::LN_2,
        accuracy: correct as f64 / count.max(1) as f64,
        tokens: count,
    })
}
