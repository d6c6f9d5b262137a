//! Layers built from [`crate::ops`]: the implicit Hyena filter and the Hyena operator.
//!
//! Each layer owns its parameters (named exactly like the reference state-dict keys, see
//! [`Params`]), has `forward` (which fills a cache for the backward) and `backward` (which
//! *accumulates* into a gradient struct of the same type as the parameters).

pub mod attention;
pub mod filter;
pub mod hyena;
pub mod hyena_zoo;
pub mod init;
pub mod mlp;
pub mod multihyena;
pub mod rtf;
pub mod rtf_layer;
pub mod ssm;
pub mod striped;
pub mod zoo;

/// Visiting named parameters: `(name, shape, data)`. Names follow the reference state dicts.
/// Callback of [`Params::visit`]: `(name, shape, data)`.
pub type Visitor<'a> = dyn FnMut(&str, &[usize], &[f32]) + 'a;
/// Callback of [`Params::visit_mut`].
pub type VisitorMut<'a> = dyn FnMut(&str, &[usize], &mut [f32]) + 'a;

pub trait Params {
    /// Call `f` for every trainable parameter, with `prefix` prepended to its name.
    fn visit(&self, prefix: &str, f: &mut Visitor<'_>);
    /// Mutable visit, same order and names as [`Params::visit`].
    fn visit_mut(&mut self, prefix: &str, f: &mut VisitorMut<'_>);

    /// Total number of trainable scalars.
    fn num_params(&self) -> usize {
        let mut n = 0;
        self.visit("", &mut |_, _, d| n += d.len());
        n
    }
    /// Set every value to zero (used for gradient buffers).
    fn zero(&mut self) {
        self.visit_mut("", &mut |_, _, d| d.fill(0.0));
    }
    /// `self += other`, tensor by tensor (e.g. summing the gradients of batch shards).
    fn add_assign_from(&mut self, other: &Self)
    where
        Self: Sized,
    {
        let mut src: Vec<(*const f32, usize)> = Vec::new();
        other.visit("", &mut |_, _, d| src.push((d.as_ptr(), d.len())));
        let mut it = src.into_iter();
        self.visit_mut("", &mut |name, _, d| {
            let (p, n) = it
                .next()
                .unwrap_or((std::ptr::NonNull::dangling().as_ptr(), 0));
            assert_eq!(n, d.len(), "add_assign_from: `{name}` differs in size");
            // SAFETY: `p` points at `n` floats of `other`, which is borrowed (immutably) for
            // this whole call and cannot alias `self` (a unique borrow).
            let o = unsafe { std::slice::from_raw_parts(p, n) };
            for (a, b) in d.iter_mut().zip(o) {
                *a += b;
            }
        });
    }
}

pub use filter::{FilterBuffers, FilterCache, FilterParams, HyenaFilter};
pub use hyena::{HyenaCache, HyenaGradWorkspace, HyenaOperator, HyenaParams, OpInput};
