//! Training: the AdamW optimizer with parameter groups, the learning-rate schedule and
//! gradient-norm clipping; language-model training runs and classifier fine-tuning.

pub mod finetune;
pub mod fit;
pub mod lm;
pub mod mad;
pub mod optim;
pub mod run;

pub use optim::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule};
