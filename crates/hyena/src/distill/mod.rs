//! Distillation of long convolutions into small recurrences (Massaroli et al., "Laughing Hyena
//! Distillery", arXiv 2310.18780) and the effective state size of a filter (ESS, arXiv
//! 2504.19561).
//!
//! - [`hankel`]: the Hankel matrix of a filter, its singular values, order selection from a
//!   tolerance on them, and the tolerance- and entropy-ESS they define.
//! - [`modal`]: a modal (complex-diagonal) state-space fit of one filter: a first realisation
//!   by ERA/Ho–Kalman, residues by least squares, then gradient refinement of the poles on the
//!   ℓ2 error over the taps.
//! - [`model`]: every long filter of a HyenaDNA model fitted in parallel, and the distilled run
//!   directory (`hyena distill`), which loads with modal filters and steps recurrently.
//! - [`ess`]: the effective state size per layer, from the filters alone or from the gated
//!   operator on an input (`hyena analyze ess`).
//!
//! Linear algebra runs in `f64` through `faer` (these are per-filter analyses, not kernels).

pub mod ess;
pub mod hankel;
pub mod modal;
pub mod model;
