//! The one layer interface of the engine, [`Layer`], and its optional token-by-token form,
//! [`Recurrent`].
//!
//! Design (llm.c style, like the rest of the engine):
//! - A layer holds its configuration and the handles ([`crate::params::P`]) of its tensors in
//!   the model's one flat buffer; it owns no values. `forward` and `backward` receive the whole
//!   buffer `p` (and the whole gradient buffer `g`, laid out like `p`), so one AdamW loop, one
//!   checkpoint writer and one data-parallel reduction serve every layer.
//! - `forward` maps `x [B, L, D]` to `y [B, L, D]` (the residual branch: the block adds `y` to
//!   the stream) and fills a [`Slot`] with what its backward needs, of a type only the layer
//!   knows; `backward` overwrites `dx` and *accumulates* into `g`. The backward may keep its
//!   scratch in the same slot (fresh large buffers cost a page fault per 4 KiB on every step).
//! - A layer with a recurrent form ([`Layer::recurrent`]) steps one token at a time with an
//!   explicit per-sequence state; stepping through a sequence equals the parallel forward.
//!
//! Every layer that an architecture string can name passes one contract test: finite-difference
//! gradients, causality, and step == forward where it has a step
//! (`tests/layer_contract.rs`, with the helpers of the crate's `testing` module, which is
//! compiled only for tests and under the `testing` feature).

use std::any::Any;

use rand::rngs::StdRng;

use crate::error::{check_len, Error, Result};

/// A value of a type only its owner knows: a layer's saved activations, or the state of a
/// sequence being stepped.
#[derive(Default)]
pub struct Slot(Option<Box<dyn Any + Send + Sync>>);

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Slot(filled)"
        } else {
            "Slot(empty)"
        })
    }
}

impl Slot {
    /// A slot holding `v`.
    pub fn new<T: Any + Send + Sync>(v: T) -> Self {
        Slot(Some(Box::new(v)))
    }

    /// The value as `T`, created (default) when empty or of another type.
    pub fn get_or_default<T: Default + Any + Send + Sync>(&mut self) -> &mut T {
        if !self.0.as_ref().is_some_and(|b| b.is::<T>()) {
            self.0 = Some(Box::new(T::default()));
        }
        self.0
            .as_mut()
            .and_then(|b| b.downcast_mut::<T>())
            .expect("just set to T")
    }

    /// The value as `T`; an error naming `op` when the slot is empty or holds another type
    /// (a backward without its forward, a state of another layer).
    pub fn get<T: Any>(&self, op: &'static str) -> Result<&T> {
        self.0
            .as_ref()
            .and_then(|b| b.downcast_ref::<T>())
            .ok_or_else(|| not_filled(op))
    }

    /// [`Slot::get`], mutably.
    pub fn get_mut<T: Any>(&mut self, op: &'static str) -> Result<&mut T> {
        self.0
            .as_mut()
            .and_then(|b| b.downcast_mut::<T>())
            .ok_or_else(|| not_filled(op))
    }
}

fn not_filled(op: &'static str) -> Error {
    Error::config(
        op,
        "cache or state",
        "is empty or belongs to another layer: run this layer's forward (or start its state) \
         first",
    )
}

/// One layer: a sequence mixer or a channel mixer on `[B, L, D]`.
pub trait Layer: Send + Sync {
    /// The name that architecture strings use (`hyena`, `attn`, `swiglu`, …).
    fn kind(&self) -> &'static str;
    /// Width `D` of its input and output.
    fn d_model(&self) -> usize;
    /// Whether it mixes positions (a sequence mixer) or acts per position (a channel mixer).
    fn mixes_positions(&self) -> bool;
    /// Write the initial values of this layer's tensors into the model buffer `p`.
    fn init(&self, p: &mut [f32], rng: &mut StdRng);
    /// `y = layer(x)`, `x, y: [B, L, D]`; fills `cache` for the backward.
    fn forward(
        &self,
        p: &[f32],
        x: &[f32],
        b: usize,
        l: usize,
        y: &mut [f32],
        cache: &mut Slot,
    ) -> Result<()>;
    /// Given `dy [B, L, D]`: overwrite `dx [B, L, D]`, accumulate this layer's parameter
    /// gradients into `g` (laid out like `p`). `x` and `cache` are the forward's.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        p: &[f32],
        x: &[f32],
        dy: &[f32],
        b: usize,
        l: usize,
        cache: &mut Slot,
        dx: &mut [f32],
        g: &mut [f32],
    ) -> Result<()>;
    /// Extra loss terms on the parameters (e.g. Hyena-MR's optional decay penalty): returns
    /// `weight · r(p)` and adds `weight · ∂r/∂p` into `g`. Default: none.
    fn regularize(&self, _p: &[f32], _g: &mut [f32]) -> f64 {
        0.0
    }
    /// The token-by-token form, for layers that have one.
    fn recurrent(&self) -> Option<&dyn Recurrent> {
        None
    }
}

/// A layer stepped one token at a time with an explicit per-sequence state.
pub trait Recurrent {
    /// The state before a sequence's first token (with whatever the steps precompute from `p`).
    fn start(&self, p: &[f32]) -> Result<Slot>;
    /// One token of one sequence: `x [D]` → `y [D]`, updating `state`.
    fn step(&self, p: &[f32], state: &mut Slot, x: &[f32], y: &mut [f32]) -> Result<()>;
}

/// The checks of a layer whose filters are sized for `l_max` positions: `L ≤ l_max` (else
/// [`Error::TooLong`]) and `B, L ≥ 1` (`what` names the input in the message).
pub fn check_batch_len(
    op: &'static str,
    what: &str,
    b: usize,
    l: usize,
    l_max: usize,
) -> Result<()> {
    if l > l_max {
        return Err(Error::TooLong { op, len: l, l_max });
    }
    if l == 0 || b == 0 {
        return Err(Error::shape(
            op,
            what,
            "B >= 1 and L >= 1",
            format!("B={b}, L={l}"),
        ));
    }
    Ok(())
}

/// The checks every forward and backward starts with: `L, B ≥ 1` and each named buffer holding
/// `B·L·D` values.
pub fn check_io(
    op: &'static str,
    d: usize,
    b: usize,
    l: usize,
    bufs: &[(&str, usize)],
) -> Result<()> {
    if l == 0 {
        return Err(Error::shape(op, "sequence length", "L >= 1", 0));
    }
    if b == 0 {
        return Err(Error::shape(op, "batch size", "B >= 1", 0));
    }
    for (what, n) in bufs {
        check_len(op, what, *n, b * l * d)?;
    }
    Ok(())
}
