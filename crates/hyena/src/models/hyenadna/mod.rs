//! The HyenaDNA model family (Nguyen et al., arXiv 2306.15794): the causal language model
//! ([`model`]), its configuration and presets ([`config`]), the memory-lean inference path
//! ([`lean`]), recurrent generation for distilled models ([`recurrent`]), the released
//! checkpoint layouts ([`hf`]), and its memory estimates for the memory guard ([`memory`]).

pub mod config;
pub mod family;
pub mod hf;
pub mod lean;
pub mod memory;
pub mod model;
pub mod recurrent;

pub use config::LmConfig;
pub use model::{Block, Head, HyenaLm, LmCache, LmWorkspace};
pub use recurrent::RecurrentState;
