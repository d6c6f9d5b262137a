//! Training: one loop ([`fit`]: an [`fit::Objective`] supplies each step's loss and gradient;
//! [`fit::Fit`] clips, schedules and steps AdamW) and the objectives run on it.
//!
//! - [`optim`]: AdamW with weight-decay and frozen tags, the warm-up + cosine schedule, clipping.
//! - [`lm`]: language-model training (random windows, gradient accumulation, evaluation,
//!   checkpoints and exact resume); [`run`]: a whole `hyena train` run and `hyena eval`.
//! - [`finetune`]: fine-tuning a sequence classifier (`hyena finetune`).
//! - [`mad`]: a zoo architecture on the MAD tasks (`hyena mad`).

pub mod dist;
pub mod finetune;
pub mod fit;
pub mod lm;
pub mod mad;
pub mod optim;
pub mod run;

pub use optim::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule};
