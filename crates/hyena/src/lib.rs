//! `hyena`: a CPU-first engine for Hyena-family long-convolution sequence models.
//!
//! The engine is specialised, not a general framework (llm.c style): contiguous `f32` buffers,
//! an explicit forward and backward per layer, and a slow reference beside every fast kernel.
//!
//! # Shape legend
//! Used in every `// [..]` comment and `# Shapes` section of this crate:
//! - `B`: batch size
//! - `L`: sequence length (any positive integer, not only powers of two); `L ≤ l_max`
//! - `D`: model width (`d_model`)
//! - `N`: Hyena order (number of gates; `N-1` long convolutions)
//! - `C`: channels of a kernel's rows; in the operator `C = (N+1)·D` after `in_proj`
//! - `C_f = (N-1)·D`: channels of the implicit filter; `F`: filter-MLP width; `E`: positional-embedding width
//! - `K`: short-filter length (3)
//! - `n = 2L`: FFT size of a long convolution
//!
//! Blocks exchange `[B, L, D]` row-major. Inside the operator, activations are channel-first
//! `[C, B, L]` so that the rows that share one long filter are contiguous.
//!
//! # Layout
//! - [`ops`]: kernels (the backend boundary): FFT long conv, short conv, linear, norm, activations.
//! - [`layers`]: the implicit Hyena filter and the Hyena operator built from ops.
//! - [`io`]: safetensors reading and atomic writing.
//! - [`config`]: the serde configuration tree; [`error`]: the error type.

// Kernels index several buffers with one loop counter; iterator chains would obscure them.
#![allow(clippy::needless_range_loop)]

pub mod bench;
pub mod config;
pub mod error;
pub mod io;
pub mod layers;
pub mod ops;

pub use config::{FilterConfig, FilterLayout, HyenaConfig};
pub use error::{Error, Result};
