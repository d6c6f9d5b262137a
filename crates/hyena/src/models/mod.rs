//! Models built from layers: the HyenaDNA-style causal language model and sampling from it.

pub mod dna;
pub mod generate;
pub mod infer;
pub mod lm;
pub mod recurrent;

pub use lm::{HyenaLm, LmCache, LmConfig, LmParams};
