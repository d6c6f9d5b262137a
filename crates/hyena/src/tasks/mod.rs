//! Synthetic benchmark tasks.
//!
//! - [`mad`]: the six Mechanistic Architecture Design (MAD) token-manipulation tasks of
//!   Poli et al., "Mechanistic Design and Scaling of Hybrid Architectures" (arXiv 2403.17844;
//!   reference code athms/mad-lab), with their baseline settings, difficulty sweeps, data
//!   generators and the accuracy metric (spec: `hyena-family.md` section 6).

pub mod mad;
