//! Training: the AdamW optimizer with parameter groups, the learning-rate schedule and
//! gradient-norm clipping.

pub mod baseline;
pub mod kmer;
pub mod optim;
pub mod plot;
pub mod run;
pub mod trainer;

pub use optim::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule};
