//! Layers built from [`crate::ops`]: the Hyena operator with its implicit filter, and the
//! operator zoo that architecture strings name (MultiHyena, attention, the StripedHyena 2
//! operators, RTF, modal SSM, MLPs), plus the norms that models put around them.
//!
//! Every layer holds its configuration and the handles of its tensors in the model's flat
//! parameter buffer ([`crate::params`]); [`layer::Layer`] is the one interface they share.
//! Each forward fills a cache for its backward, and each backward *accumulates* into a
//! gradient buffer laid out like the parameters.

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
