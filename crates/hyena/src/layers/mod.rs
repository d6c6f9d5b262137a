//! Layers built from [`crate::ops`]: the Hyena operator with its implicit filter ([`hyena`]),
//! and the operator zoo that architecture strings name ([`multihyena`], [`attention`], the
//! StripedHyena 2 operators [`striped`], [`rtf`], the modal SSM of [`ssm`], the MLPs of
//! [`mlp`]), plus the norms that models put around them ([`norm`]), the initialisation helpers
//! ([`init`]) and the memory-lean inference workspace ([`lean`]).
//!
//! Every layer holds its configuration and the handles of its tensors in the model's flat
//! parameter buffer ([`crate::params`]); [`layer::Layer`] is the one interface they share
//! (with [`layer::Recurrent`] for those that step token by token). Each forward fills a cache
//! for its backward, and each backward *accumulates* into a gradient buffer laid out like the
//! parameters. The registry of the layers an architecture string can name is
//! [`crate::models::zoo::build_layer`].

pub mod attention;
pub mod hyena;
pub mod init;
pub mod layer;
pub mod lean;
pub mod mlp;
pub mod multihyena;
pub mod norm;
pub mod rtf;
pub mod ssm;
pub mod striped;

pub use hyena::filter::{FilterBuffers, FilterCache, HyenaFilter};
pub use hyena::{HyenaCache, HyenaGradWorkspace, HyenaOperator, OpInput, Projections};
