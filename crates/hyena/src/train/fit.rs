//! The one training loop. Language-model pretraining ([`crate::train::lm`]), classifier
//! fine-tuning ([`crate::train::finetune`]) and MAD runs ([`crate::train::mad`]) differ in
//! their data and loss, which an [`Objective`] supplies, and in what they do between steps
//! (evaluate, save, stop early), which the `on_step` callback of [`Fit::run`] does; the step
//! itself is the same for all three:
//!
//! 1. zero the gradient buffer (one buffer per run, reused: a fresh one would page-fault),
//! 2. let the objective add ∇loss of step `s`'s batch to it,
//! 3. clip the global gradient norm (`clip` 0: measure it only),
//! 4. take the learning rate of step `s` from the [`Schedule`],
//! 5. one AdamW update.
//!
//! A loss or gradient norm that is not finite (NaN or ±inf: the run has diverged) is caught
//! between steps 2 and 3, before the update can spread it into the weights: the step fails
//! with [`Error::Diverged`], or, with [`Fit::skip_nonfinite`] set, up to that many such steps
//! are skipped (no update; the step still counts, so the next step draws the next batch), as
//! large trainers do with a loss scaler.
//!
//! Steps are counted by the optimizer (`opt.step`, saved with it), so a resumed run continues
//! at the step and learning rate where it stopped, and an objective that draws its batch from
//! the step number sees the same batches as an uninterrupted run.

use crate::error::{Error, Result};
use crate::models::Model;
use crate::ops::loss::LossSum;
use crate::train::optim::{clip_grad_norm, AdamW, LrSchedule};

/// What the loop trains: the batch of a step, its loss and gradient.
pub trait Objective<N> {
    /// Add ∇(the loss of step `step`'s batch) with respect to `model`'s parameters to `grads`
    /// (laid out as `model.params`, zeroed by the loop) and say what the batch measured.
    /// `step` is 0-based.
    fn loss_and_grad(&mut self, model: &Model<N>, step: u64, grads: &mut [f32])
        -> Result<StepLoss>;
}

/// What one step's batch measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepLoss {
    /// The step's loss as the objective reports it (the mean it optimises).
    pub loss: f64,
    /// The summed per-position statistics behind it.
    pub sum: LossSum,
    /// Tokens the step processed (every position of every sequence).
    pub tokens: usize,
}

/// The learning rate as a function of the step.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// Linear warm-up, then cosine decay to a fraction of `peak` (the HyenaDNA recipes).
    WarmupCosine { peak: f32, schedule: LrSchedule },
    /// PyTorch's `CosineAnnealingLR` with `T_max` = `epochs`, stepped once per epoch of
    /// `steps_per_epoch` steps (MAD's recipe: mad-lab `train.py`).
    EpochCosine {
        lr: f32,
        eta_min: f32,
        steps_per_epoch: u64,
        epochs: usize,
    },
}

impl Schedule {
    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: u64) -> f32 {
        match self {
            Schedule::WarmupCosine { peak, schedule } => schedule.lr(*peak, step),
            Schedule::EpochCosine {
                lr,
                eta_min,
                steps_per_epoch,
                epochs,
            } => cosine_lr(
                *lr,
                *eta_min,
                (step / (*steps_per_epoch).max(1)) as usize,
                *epochs,
            ),
        }
    }
}

/// Cosine annealing stepped per epoch (PyTorch `CosineAnnealingLR`, `T_max` = `epochs`):
/// `eta_min + (lr − eta_min)·(1 + cos(π·epoch/epochs))/2`.
pub fn cosine_lr(lr: f32, eta_min: f32, epoch: usize, epochs: usize) -> f32 {
    let t = epoch as f64 / epochs.max(1) as f64;
    (eta_min as f64 + (lr - eta_min) as f64 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// Steps completed, this one included (1-based).
    pub step: u64,
    pub loss: StepLoss,
    pub lr: f32,
    /// Global L2 norm of the gradient before clipping.
    pub grad_norm: f32,
}

/// Whether [`Fit::run`] goes on after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// What the `on_step` callback of [`Fit::run`] sees: the model after the update, the
/// objective (for its buffers and data: evaluations reuse them), the optimizer (to save it)
/// and the step.
pub struct AfterStep<'a, N, O> {
    pub model: &'a Model<N>,
    pub objective: &'a mut O,
    pub opt: &'a AdamW,
    pub step: &'a Step,
    /// Non-finite steps skipped so far, this one included if it was.
    pub skipped: u64,
}

/// The optimizer, the schedule, the clip and the gradient buffer of a run.
pub struct Fit {
    pub opt: AdamW,
    pub schedule: Schedule,
    /// Global gradient-norm clip (0: off).
    pub clip: f32,
    /// Non-finite steps that may be skipped before the run stops (0: stop at the first).
    pub skip_nonfinite: u64,
    /// Non-finite steps skipped so far (saved with a checkpoint).
    pub skipped: u64,
    /// Stop on a non-finite loss or gradient norm ([`Fit::new`] turns it on; MAD sweeps,
    /// where a diverging learning rate is a result to record, turn it off).
    pub check_finite: bool,
    grads: Vec<f32>,
}

impl Fit {
    pub fn new(opt: AdamW, schedule: Schedule, clip: f32) -> Self {
        Fit {
            opt,
            schedule,
            clip,
            skip_nonfinite: 0,
            skipped: 0,
            check_finite: true,
            grads: Vec::new(),
        }
    }

    /// Steps completed so far.
    pub fn steps_done(&self) -> u64 {
        self.opt.step
    }

    /// One optimizer step of `model` on `objective`'s batch of the current step.
    pub fn step<N, O: Objective<N>>(
        &mut self,
        model: &mut Model<N>,
        objective: &mut O,
    ) -> Result<Step> {
        let step = self.opt.step;
        let n = model.params.len();
        if self.grads.len() != n {
            self.grads.resize(n, 0.0);
        }
        self.grads.fill(0.0);
        let loss = objective.loss_and_grad(model, step, &mut self.grads)?;
        let grad_norm = clip_grad_norm(&model.params, &mut self.grads, self.clip);
        let lr = self.schedule.lr(step);
        if self.check_finite && !(loss.loss.is_finite() && grad_norm.is_finite()) {
            if self.skipped < self.skip_nonfinite {
                // Skip the update: the weights and moments stay as they were.
                self.skipped += 1;
                self.opt.step += 1;
                return Ok(Step {
                    step: self.opt.step,
                    loss,
                    lr,
                    grad_norm,
                });
            }
            return Err(Error::Diverged {
                step: step + 1,
                loss: loss.loss,
                grad_norm,
                lr,
                skipped: self.skipped,
            });
        }
        self.opt.step(&mut model.params, &self.grads, lr);
        Ok(Step {
            step: self.opt.step,
            loss,
            lr,
            grad_norm,
        })
    }

    /// Step until `total` steps are done or `on_step` says [`Flow::Stop`]. Returns the steps
    /// done.
    pub fn run<N, O: Objective<N>>(
        &mut self,
        model: &mut Model<N>,
        objective: &mut O,
        total: u64,
        on_step: &mut dyn FnMut(AfterStep<'_, N, O>) -> Result<Flow>,
    ) -> Result<u64> {
        while self.opt.step < total {
            // Between two steps: a cancelled caller leaves the last committed checkpoint.
            crate::interrupt::check()?;
            let s = self.step(model, objective)?;
            let flow = on_step(AfterStep {
                model,
                objective,
                opt: &self.opt,
                step: &s,
                skipped: self.skipped,
            })?;
            if flow == Flow::Stop {
                break;
            }
        }
        Ok(self.opt.step)
    }
}
