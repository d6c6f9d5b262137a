//! Models built from layers: the HyenaDNA-style causal language model, sampling from it, and
//! a sequence classifier on its backbone.

pub mod classifier;
pub mod generate;
pub mod infer;
pub mod lm;
pub mod recurrent;

pub use lm::{HyenaLm, LmCache, LmConfig, LmParams};
pub mod zoo;
