//! `hyena`: a CPU-first engine for Hyena-family long-convolution sequence models.
//!
//! The engine is specialised, not a general framework (llm.c style): contiguous `f32` buffers,
//! one flat parameter buffer per model, an explicit forward and backward per layer, and a slow
//! reference beside every fast kernel. `docs/ARCHITECTURE.md` describes the house and how to
//! add a model family; `docs/numerics.md` the numerics and where they differ from the
//! reference implementations.
//!
//! # Shape legend
//! Used in the `// [..]` shape comments and the shapes in the docs of this crate:
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
//! # Example
//! A Hyena operator of order 2 in a parameter store of its own, on a batch of two sequences of
//! length 100 (any L ≤ `l_max`), forward and backward:
//! ```
//! use hyena::layers::{HyenaCache, HyenaGradWorkspace, HyenaOperator};
//! use hyena::params::{DType, Init, ParamStore};
//! use hyena::HyenaConfig;
//! use rand::SeedableRng;
//!
//! let cfg = HyenaConfig { d_model: 8, l_max: 128, ..HyenaConfig::default() };
//! let (op, mut store) =
//!     ParamStore::build(Init::Zeros, DType::F32, |vb| HyenaOperator::new(&cfg, vb))?;
//! op.init(store.data_mut(), &mut rand::rngs::StdRng::seed_from_u64(0));
//! let p = store.data();
//! let (b, l) = (2, 100);
//! let u = vec![0.1f32; b * l * cfg.d_model]; // [B, L, D]
//! let mut y = vec![0.0f32; u.len()]; // [B, L, D]
//! let mut cache = HyenaCache::default();
//! op.forward(p, &u, b, l, &mut y, &mut cache)?;
//!
//! let dy = vec![1.0f32; y.len()];
//! let (mut du, mut grads) = (vec![0.0f32; u.len()], store.zeros());
//! let mut ws = HyenaGradWorkspace::default();
//! op.backward(p, &dy, &u, &cache, &mut du, &mut grads, &mut ws)?;
//! assert!(y.iter().chain(&du).chain(&grads).all(|v| v.is_finite()));
//!
//! // Longer than l_max: a clear error, not a panic.
//! let long = vec![0.0f32; 200 * cfg.d_model];
//! let mut out = vec![0.0f32; long.len()];
//! assert!(op.forward(p, &long, 1, 200, &mut out, &mut cache).is_err());
//! # Ok::<(), hyena::Error>(())
//! ```
//!
//! # Layout
//! Lowest rank first; a module imports only from modules of its own rank or a lower one, and
//! the module graph has no cycle (`tests/layering.rs` checks both):
//! 0. [`error`], [`interrupt`], [`config`], [`params`], [`plot`], [`memory`]: the error type;
//!    cooperative cancellation of long calls; the serde
//!    configuration of the Hyena operator; the parameter store (one flat buffer per model,
//!    tensors registered by name, loaded through the `TensorSource` interface); charts; the
//!    memory guard (the memory available, and a check that an estimate fits in it).
//! 1. [`io`]: file formats only (safetensors, npy, FASTA/FASTQ, text, tokenizers, the safe
//!    PyTorch checkpoint reader); it knows no model. [`ops`]: kernels, the backend boundary:
//!    FFT long convolution, short convolution, linear, norms, activations, the loss; each with
//!    a slow reference.
//! 2. [`layers`]: the layer trait and every layer (the Hyena operator and its filter,
//!    MultiHyena, StripedHyena operators, attention, SSM/RTF, MLPs, norms) and the lean
//!    inference workspace. [`data`]: datasets and task builders (token streams,
//!    sequence classification, the species task, the MAD tasks).
//! 3. [`models`]: model families (HyenaDNA, the classifier, zoo LMs), generation, data
//!    parallelism, and the interfaces the run-directory module loads them through.
//!    [`baselines`]: Markov and k-mer baselines.
//! 4. [`checkpoint`]: the run-directory module: the registry of families, `load_model`.
//! 5. [`train`], [`distill`]: the one training loop and its objectives (LM, fine-tuning, MAD);
//!    Hankel spectra, effective state size and modal distillation.
//! 6. [`apps`]: the pipelines behind `hyena embed`/`score` and the benchmarks (and the
//!    test-only `testing` helpers).

// Kernels index several buffers with one loop counter; iterator chains would obscure them.
#![allow(clippy::needless_range_loop)]

pub mod apps;
pub mod baselines;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod distill;
pub mod error;
pub mod interrupt;
pub mod io;
pub mod layers;
pub mod memory;
pub mod models;
pub mod ops;
pub mod params;
pub mod plot;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod train;

pub use config::{FilterConfig, FilterLayout, HyenaConfig};
pub use error::{Error, Result};
