//! The StripedHyena family: StripedHyena 2 / Evo 2 (Ku et al., arXiv 2503.01868; Brixi et al.,
//! "Genome modeling and design across all domains of life with Evo 2", 2025), multi-hybrids of
//! Hyena-SE, Hyena-MR, Hyena-LI and attention blocks over a byte vocabulary.
//!
//! - [`config`]: the architecture (vortex YAML keys) and the released models as presets.
//! - [`model`]: the network, its loading and its forward with named outputs.
//! - [`kv`]: the attention key/value cache and its size.
//! - [`family`]: what the commands do with it, and the model directories it loads from.

pub mod config;
pub mod family;
pub mod kv;
pub mod model;

pub use config::{preset, BlockKind, Evo2Config, PRESETS};
pub use family::{Evo2Lm, StripedFamily};
pub use kv::{kv_cache_bytes, KvCache, KvPrecision};
pub use model::{Evo2, Stream, StreamMark, Taps, Workspace};
