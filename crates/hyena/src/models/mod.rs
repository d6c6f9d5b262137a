//! Models built from layers: the HyenaDNA-style causal language model.

pub mod lm;

pub use lm::{HyenaLm, LmCache, LmConfig, LmParams};
