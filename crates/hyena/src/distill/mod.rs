//! Distillation of long convolutions into small recurrences (Laughing Hyena Distillery, spec
//! Sec. 9) and the effective state size of a filter (spec Sec. 10).
//!
//! - [`hankel`]: the Hankel matrix of a filter, its singular values, order selection from a
//!   tolerance on them, and the tolerance- and entropy-ESS they define.
//! - [`modal`]: a modal (complex-diagonal) state-space fit of one filter: a first realisation
//!   by ERA/Ho–Kalman, residues by least squares, then gradient refinement of the poles on the
//!   ℓ2 error over the taps.
//!
//! Linear algebra runs in `f64` through `faer` (these are per-filter analyses, not kernels).

pub mod ess;
pub mod hankel;
pub mod modal;
pub mod model;
