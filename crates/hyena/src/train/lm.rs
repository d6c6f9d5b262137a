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

use crate::checkpoint::{
    commit_checkpoint, load_model, read_state, weights_metadata, CheckpointState,
};
use crate::error::{Error, Result};
use crate::io::safetensors::{to_bytes, TensorFile};
use crate::layers::layer::Slot;
use crate::models::hyenadna::{HyenaLm, LmConfig, LmWorkspace};
use crate::models::{LanguageModel, Model};
use crate::ops::loss::LossSum;
use crate::train::dist::Comm;
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
    /// Commit a checkpoint every this many steps (and at the end); 0: at every evaluation.
    pub save_every: u64,
    /// Steps with a non-finite loss or gradient norm that are skipped (no update) before the
    /// run stops with an error; 0: stop at the first.
    pub skip_nonfinite: u64,
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
            save_every: 0,
            skip_nonfinite: 0,
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
    /// Check every setting (finite, in range), naming the config key of the first bad one.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("train.batch_size", self.batch_size as u64),
            ("train.grad_accum", self.grad_accum as u64),
            ("train.seq_len", self.seq_len as u64),
            ("train.steps", self.steps),
            ("train.eval_every", self.eval_every),
            ("train.eval_windows", self.eval_windows as u64),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(Error::config(key, v, "must be at least 1"));
            }
        }
        if !(self.clip.is_finite() && self.clip >= 0.0) {
            return Err(Error::config(
                "train.clip",
                self.clip,
                "must be a finite number >= 0 (0 turns clipping off)",
            ));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(Error::config(
                "train.min_lr_ratio",
                self.min_lr_ratio,
                "must be between 0 and 1 (the final learning rate as a fraction of the peak)",
            ));
        }
        self.optim.validate()
    }

    /// Steps between checkpoints.
    pub fn checkpoint_every(&self) -> u64 {
        if self.save_every == 0 {
            self.eval_every.max(1)
        } else {
            self.save_every
        }
    }

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
    /// The other ranks of a data-parallel run ([`Trainer::set_comm`]); `None`: one process.
    dist: Option<Box<dyn Comm>>,
    /// The all-reduce's receive buffer, reused.
    scratch: Vec<f32>,
    /// Seconds spent in the gradient all-reduce and loss exchange (after the ranks met at the
    /// step's agreement, so no waiting for a slower rank), and the steps they cover.
    comm_seconds: f64,
    comm_steps: u64,
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
        // Each micro-batch contributes ∇(its mean loss) / grad_accum; per position that is
        // (1 / grad_accum) / (B·L), whichever rank computes it.
        let scale = 1.0 / self.grad_accum as f32;
        let token_scale = scale / (b * l).max(1) as f32;
        let (rank, ranks) = self.dist.as_ref().map_or((0, 1), |c| (c.rank(), c.size()));
        // This rank's rows of every micro-batch (all of them in one process).
        let (start, n) = crate::train::dist::rank_rows(b, rank, ranks)?;
        let rows = start * l..(start + n) * l;
        let mut local = || -> Result<Vec<LossSum>> {
            let mut sums = Vec::with_capacity(self.grad_accum);
            for micro in 0..self.grad_accum {
                let (x, y) = self.batch(step, micro);
                sums.push(model.net.loss_and_grad_scaled(
                    model.p(),
                    &x[rows.clone()],
                    &y[rows.clone()],
                    n,
                    l,
                    token_scale,
                    self.ws.get_or_default::<LmWorkspace>(),
                    grads,
                )?);
            }
            Ok(sums)
        };
        let sums = local();
        let per_micro: Vec<LossSum> = match self.dist.as_mut() {
            None => sums?,
            Some(c) => {
                // A rank that failed stops every rank with its message.
                // The agreement is also a barrier: what follows is the transfer alone.
                let mine = crate::train::dist::agree(c.as_mut(), sums)?;
                let t0 = std::time::Instant::now();
                crate::train::dist::all_reduce_sum(c.as_mut(), grads, &mut self.scratch)?;
                let all = crate::train::dist::gather_loss_sums(c.as_mut(), &mine)?;
                self.comm_seconds += t0.elapsed().as_secs_f64();
                self.comm_steps += 1;
                // Each micro-batch's sums over the ranks, in rank order: what one process
                // adds over its thread shards.
                (0..self.grad_accum)
                    .map(|m| LossSum::total(all.iter().filter_map(|r| r.get(m).copied())))
                    .collect()
            }
        };
        let mut mean_sum = 0.0f32;
        let mut sum = LossSum::default();
        for st in per_micro {
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
    /// Drawn when the run starts, kept by its checkpoints (see [`CheckpointState::run_id`]).
    pub run_id: String,
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
        cfg.validate()?;
        if cfg.seq_len > model.net.cfg.operator.l_max {
            return Err(Error::config(
                "seq_len",
                cfg.seq_len,
                format!("exceeds the model's l_max {}", model.net.cfg.operator.l_max),
            ));
        }
        let mut fit = Fit::new(
            AdamW::new(cfg.optim.clone()),
            Schedule::WarmupCosine {
                peak: cfg.optim.lr,
                schedule: cfg.schedule(),
            },
            cfg.clip,
        );
        fit.skip_nonfinite = cfg.skip_nonfinite;
        let objective = LmObjective {
            train,
            batch_size: cfg.batch_size,
            seq_len: cfg.seq_len,
            grad_accum: cfg.grad_accum,
            seed: cfg.seed,
            ws: Slot::default(),
            dist: None,
            scratch: Vec::new(),
            comm_seconds: 0.0,
            comm_steps: 0,
        };
        Ok(Trainer {
            model,
            fit,
            cfg,
            run_id: format!("{:016x}", rand::random::<u64>()),
            objective,
            val,
        })
    }

    /// Steps completed so far.
    pub fn step(&self) -> u64 {
        self.fit.steps_done()
    }

    /// Train data-parallel with the other ranks of `comm` ([`crate::train::dist`]): this
    /// process computes its rows of every batch; gradients are summed over the ranks each
    /// step; only rank 0 evaluates and writes checkpoints. Every rank must hold the same
    /// model, data and configuration.
    pub fn set_comm(&mut self, comm: Box<dyn Comm>) -> Result<()> {
        crate::train::dist::rank_rows(self.cfg.batch_size, comm.rank(), comm.size())?;
        self.objective.dist = Some(comm);
        Ok(())
    }

    /// Mean seconds per step in the gradient all-reduce and loss exchange, over the steps this
    /// process ran; `None` when not data-parallel.
    pub fn comm_seconds_per_step(&self) -> Option<f64> {
        (self.objective.comm_steps > 0)
            .then(|| self.objective.comm_seconds / self.objective.comm_steps as f64)
    }

    /// This process's rank and the number of ranks (`(0, 1)` when not data-parallel).
    pub fn rank(&self) -> (usize, usize) {
        self.objective
            .dist
            .as_ref()
            .map_or((0, 1), |c| (c.rank(), c.size()))
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
    /// steps and at the last one the model is evaluated ([`Event::Eval`]), and every
    /// `checkpoint_every()` steps and at the last one a checkpoint is committed into `dir`
    /// ([`Trainer::save`]). Returns the last evaluation.
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
            run_id,
            objective,
            val,
        } = self;
        let mut last = None;
        let (every_eval, every_save) = (cfg.eval_every.max(1), cfg.checkpoint_every());
        fit.run(model, objective, cfg.steps, &mut |a| {
            let s = step_stats(a.step);
            on_event(&Event::Step(s.clone()))?;
            if !(a.step.loss.loss.is_finite() && a.step.grad_norm.is_finite()) {
                on_event(&Event::Info(format!(
                    "step {}: loss {}, gradient norm {}: update skipped ({} of \
                     --skip-nonfinite {})",
                    s.step, s.loss, s.grad_norm, a.skipped, cfg.skip_nonfinite
                )))?;
            }
            let last_step = s.step == cfg.steps;
            let rank0 = a.objective.dist.as_ref().is_none_or(|c| c.rank() == 0);
            let eval = s.step.is_multiple_of(every_eval) || last_step;
            let save = s.step.is_multiple_of(every_save) || last_step;
            // Rank 0 evaluates and commits checkpoints; the others wait for its outcome
            // (a failure there stops every rank with its message).
            let mut work = || -> Result<()> {
                if eval && rank0 {
                    let e = evaluate_val(a.model, val, cfg, &mut a.objective.ws, s.step)?;
                    on_event(&Event::Eval(e.clone()))?;
                    last = Some(e);
                }
                if save && rank0 {
                    save_checkpoint(dir, a.model, a.opt, cfg, extra, run_id, a.skipped)?;
                }
                Ok(())
            };
            let r = work();
            match a.objective.dist.as_mut() {
                Some(c) if eval || save => crate::train::dist::agree(c.as_mut(), r)?,
                _ => r?,
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
        save_checkpoint(
            dir,
            &self.model,
            &self.fit.opt,
            &self.cfg,
            extra,
            &self.run_id,
            self.fit.skipped,
        )
    }

    /// Continue a run saved by [`Trainer::save`]. The checkpoint's files must be the ones its
    /// `state.json` was written with ([`crate::checkpoint::verify_checkpoint`]); the model config in `dir` must
    /// equal `lm_cfg` (a different architecture cannot resume), and the data must be the same
    /// streams.
    pub fn resume(
        dir: &Path,
        lm_cfg: &LmConfig,
        cfg: TrainConfig,
        train: Vec<u32>,
        val: Vec<u32>,
    ) -> Result<Self> {
        // The checkpoint's fingerprints are checked where the model is loaded
        // (`RunDir::open`), before the optimizer file is read.
        let state = read_state(dir)?.ok_or_else(|| {
            Error::format(
                dir.join("state.json"),
                "not found: the run has no checkpoint to continue from (it stopped before its \
                 first one); start it again with the same command, without --resume",
            )
        })?;
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
        let opt =
            TensorFile::read(crate::checkpoint::current_dir(dir).join("optimizer.safetensors"))?;
        t.fit.opt.load_state(&t.model.params, &opt)?;
        t.fit.opt.step = state.step;
        t.fit.skipped = state.skipped;
        if !state.run_id.is_empty() {
            t.run_id = state.run_id;
        }
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

/// See [`Trainer::save`]. The weights are checked to be finite first: a checkpoint of a
/// diverged model is never committed over a good one.
fn save_checkpoint(
    dir: &Path,
    model: &Model<HyenaLm>,
    opt: &AdamW,
    train: &TrainConfig,
    extra: &serde_json::Value,
    run_id: &str,
    skipped: u64,
) -> Result<()> {
    if let Some(i) = model.params.data().iter().position(|v| !v.is_finite()) {
        return Err(Error::format(
            dir,
            format!(
                "not saving step {}: the weights hold a non-finite value (at flat index {i}); \
                 the last good checkpoint is kept. Lower the learning rate (--lr)",
                opt.step
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let model_bytes = to_bytes(
        &dir.join("model.safetensors"),
        &model.tensors(),
        &weights_metadata("hyena-lm"),
    )?;
    let opt_bytes = to_bytes(
        &dir.join("optimizer.safetensors"),
        &opt.state_tensors(&model.params),
        &Default::default(),
    )?;
    let mut cfg = serde_json::json!({ "model": model.net.cfg, "train": train });
    if let (Some(obj), Some(ex)) = (cfg.as_object_mut(), extra.as_object()) {
        for (k, v) in ex {
            obj.insert(k.clone(), v.clone());
        }
    }
    let cfg_bytes = serde_json::to_vec_pretty(&cfg)
        .map_err(|e| Error::format(dir.join("config.json"), e.to_string()))?;
    commit_checkpoint(
        dir,
        CheckpointState {
            step: opt.step,
            run_id: run_id.to_string(),
            skipped,
            files: Default::default(),
        },
        &[
            ("config.json", cfg_bytes),
            ("model.safetensors", model_bytes),
            ("optimizer.safetensors", opt_bytes),
        ],
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
        crate::interrupt::check()?;
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
