//! One flat parameter buffer per model, handed out by name at construction.
//!
//! Two ideas, put together:
//! - llm.c's `ParameterTensors`: every parameter of a model lives in **one** contiguous `f32`
//!   buffer, and the gradient buffer has the same layout. AdamW, gradient clipping, summing the
//!   gradients of data-parallel shards and saving a checkpoint are then one loop over one
//!   slice, whatever the architecture.
//! - candle's `VarBuilder`: a layer's constructor asks a builder for each tensor by name and
//!   shape, under a prefix (`vb.pp("mixer").get(&[c, d], "in_proj.weight")`). The prefixes
//!   spell the checkpoint keys, so each key is written once, beside its shape, in the
//!   constructor that uses it; no name table, no second visitor.
//!
//! A [`Vb`] either starts every tensor at zero (a fresh model, then filled by the model's
//! `init`) or copies it from a [`TensorSource`] (a checkpoint), checking the shape as it goes:
//! the same constructor serves both. [`ParamStore::build`] runs a constructor and returns the
//! model with its store.
//!
//! A tensor is then reached through its handle [`P`] (an offset and a length into the model's
//! buffer): `self.w.of(p)` in the forward, `self.w.of_mut(g)` in the backward. Handles are
//! small `Copy` values, so layers hold them instead of borrowing the buffer.
//!
//! Tags given at [`Vb::get`] (through [`Vb::no_decay`] and [`Vb::frozen`]) say which tensors
//! the optimizer decays and which it trains; nothing matches on names.
//!
//! The loader is dtype-aware: a [`TensorSource`] is asked for `f32` or `bf16` values, so a
//! bf16 checkpoint can be kept in bf16 ([`DType::Bf16`]) instead of being widened. Training and
//! the kernels run on `f32` stores, and today every model family builds an `f32` store. The
//! file readers ([`crate::io::safetensors`], [`crate::io::torch`]) widen bf16/f16 to `f32` on
//! read, and the default [`TensorSource::read_bf16`] rounds back, which is exact for values
//! that were bf16.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// A handle to one tensor of a model's flat buffer: its offset and length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct P {
    off: usize,
    len: usize,
}

impl P {
    /// Elements of the tensor.
    pub fn len(self) -> usize {
        self.len
    }
    /// Whether the tensor has no elements (an optional tensor that is absent).
    pub fn is_empty(self) -> bool {
        self.len == 0
    }
    /// Its place in the model's buffer.
    pub fn range(self) -> Range<usize> {
        self.off..self.off + self.len
    }
    /// The tensor's values in the model's buffer `p` (parameters or gradients).
    #[inline]
    pub fn of(self, p: &[f32]) -> &[f32] {
        &p[self.off..self.off + self.len]
    }
    /// The tensor's values in `p`, to write (an initialisation, a gradient).
    #[inline]
    pub fn of_mut(self, p: &mut [f32]) -> &mut [f32] {
        &mut p[self.off..self.off + self.len]
    }
}

/// An error unless the model buffer `p` reaches the end of `last`, the handle a layer registered
/// last (a buffer of another model, or a gradient buffer of the wrong size).
pub fn check_params(op: &'static str, p: &[f32], last: P) -> Result<()> {
    if p.len() < last.range().end {
        return Err(Error::shape(
            op,
            "parameter buffer",
            format!("at least {} elements", last.range().end),
            p.len(),
        ));
    }
    Ok(())
}

/// Several tensors of one buffer, mutably at once (e.g. a norm's weight and bias gradients).
/// Handles of one store never overlap.
pub fn many_mut<const N: usize>(p: &mut [f32], hs: [P; N]) -> [&mut [f32]; N] {
    p.get_disjoint_mut(hs.map(P::range))
        .expect("handles of one parameter store are disjoint and inside its buffer")
}

/// The tensors `hs` of the buffer `p`, as slices (for layers that address their tensors by
/// position in their own list).
pub fn split_handles<'a>(p: &'a [f32], hs: &[P]) -> Vec<&'a [f32]> {
    hs.iter().map(|h| h.of(p)).collect()
}

/// The tensors `hs` of the buffer `g`, as mutable slices. `hs` must be in increasing offset
/// order, as a layer registers its tensors.
pub fn split_handles_mut<'a>(g: &'a mut [f32], hs: &[P]) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(hs.len());
    let (mut rest, mut at) = (g, 0);
    for h in hs {
        assert!(h.off >= at, "handles of one layer are registered in order");
        let (_, r) = std::mem::take(&mut rest).split_at_mut(h.off - at);
        let (a, r) = r.split_at_mut(h.len);
        out.push(a);
        rest = r;
        at = h.off + h.len;
    }
    out
}

/// The element type a store keeps its values in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DType {
    #[default]
    F32,
    /// bfloat16 (the top 16 bits of an f32): half the memory of released 7B-parameter models;
    /// loaded without widening.
    Bf16,
}

/// One tensor of a store: its checkpoint key, shape, place and tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub handle: P,
    /// In the weight-decay group (weights; not biases, norms, filter parameters).
    pub decay: bool,
    /// Updated by the optimizer (a frozen tensor keeps its value, e.g. the unused LM head of a
    /// classifier).
    pub trainable: bool,
}

/// Where a [`Vb`] takes tensor values from.
pub trait TensorSource {
    /// What the source is, for error messages (a file's path).
    fn origin(&self) -> PathBuf;
    /// The stored shape of `name`, if present.
    fn shape_of(&self, name: &str) -> Option<Vec<usize>>;
    /// Every tensor name of the source.
    fn names(&self) -> Vec<String>;
    /// Values of `name` as f32 (`dst` has the tensor's element count).
    fn read_f32(&self, name: &str, dst: &mut [f32]) -> Result<()>;
    /// Values of `name` as bf16 bits (`dst` has the tensor's element count). The default rounds
    /// the f32 values to nearest even; a source that stores bf16 hands its bits over unchanged.
    fn read_bf16(&self, name: &str, dst: &mut [u16]) -> Result<()> {
        let mut tmp = vec![0.0f32; dst.len()];
        self.read_f32(name, &mut tmp)?;
        for (d, v) in dst.iter_mut().zip(&tmp) {
            *d = f32_to_bf16(*v);
        }
        Ok(())
    }
}

/// Round an f32 to bf16 bits (nearest, ties to even; NaN stays NaN).
pub fn f32_to_bf16(v: f32) -> u16 {
    let b = v.to_bits();
    if (b & 0x7fff_ffff) > 0x7f80_0000 {
        return ((b >> 16) as u16) | 0x40;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 value of bf16 bits (exact).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// A source whose bf16 tensors can be used where they lie (a memory-mapped file): a store
/// built from it with [`ParamStore::build_mapped`] holds the source instead of a copy.
pub trait InPlaceSource: TensorSource + Send + Sync + std::fmt::Debug {
    /// The words every in-place tensor lies in.
    fn region(&self) -> &[u16];
    /// The element offset in [`InPlaceSource::region`] of `name`, if it is a bf16 tensor that
    /// can be used in place.
    fn bf16_offset(&self, name: &str) -> Option<usize>;
}

/// Values of a store.
#[derive(Clone, Debug)]
enum Storage {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    /// bf16 values left where they lie (handles are offsets into the source's region).
    Mapped(std::sync::Arc<dyn InPlaceSource>),
}

impl PartialEq for Storage {
    fn eq(&self, o: &Self) -> bool {
        match (self, o) {
            (Storage::F32(a), Storage::F32(b)) => a == b,
            (Storage::Bf16(a), Storage::Bf16(b)) => a == b,
            (Storage::Mapped(a), Storage::Mapped(b)) => a.region() == b.region(),
            _ => false,
        }
    }
}

/// A model's parameters: the flat buffer and what each part of it is.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamStore {
    specs: Vec<ParamSpec>,
    data: Storage,
}

impl Default for ParamStore {
    fn default() -> Self {
        ParamStore {
            specs: Vec::new(),
            data: Storage::F32(Vec::new()),
        }
    }
}

/// Where the values of a [`ParamStore::build`] come from.
#[derive(Clone, Copy)]
pub enum Init<'a> {
    /// Zeros; the model's own `init` fills them afterwards.
    Zeros,
    /// Copied from a checkpoint, every tensor required with exactly its shape.
    From(&'a dyn TensorSource),
}

impl ParamStore {
    /// Run the constructor `f` with a builder and return what it built with its parameters.
    /// With [`Init::From`] every tensor is read from the source (shape-checked), in `dtype`;
    /// with [`Init::Zeros`] they start at zero in f32.
    pub fn build<T>(
        init: Init<'_>,
        dtype: DType,
        f: impl FnOnce(&Vb<'_, '_>) -> Result<T>,
    ) -> Result<(T, ParamStore)> {
        let dtype = match init {
            Init::Zeros => DType::F32,
            Init::From(_) => dtype,
        };
        let b = RefCell::new(Builder {
            source: match init {
                Init::Zeros => None,
                Init::From(s) => Some(s),
            },
            store: ParamStore {
                specs: Vec::new(),
                data: match dtype {
                    DType::F32 => Storage::F32(Vec::new()),
                    DType::Bf16 => Storage::Bf16(Vec::new()),
                },
            },
            used: BTreeSet::new(),
            missing: Vec::new(),
        });
        let t = f(&Vb {
            b: &b,
            prefix: String::new(),
            decay: true,
            trainable: true,
        })?;
        let b = b.into_inner();
        if let (Some(src), false) = (b.source, b.missing.is_empty()) {
            return Err(missing_error(src, &b.missing, &b.used));
        }
        let mut store = b.store;
        store.shrink_to_fit();
        Ok((t, store))
    }

    /// Run the constructor `f` with a builder whose tensors are the bf16 tensors of `src`, used
    /// in place (no copy): every tensor must be bf16 in `src` with exactly its shape. The store
    /// keeps `src` alive.
    pub fn build_mapped<T>(
        src: std::sync::Arc<dyn InPlaceSource>,
        f: impl FnOnce(&Vb<'_, '_>) -> Result<T>,
    ) -> Result<(T, ParamStore)> {
        let b = RefCell::new(Builder {
            source: None,
            store: ParamStore {
                specs: Vec::new(),
                data: Storage::Mapped(src.clone()),
            },
            used: BTreeSet::new(),
            missing: Vec::new(),
        });
        let t = f(&Vb {
            b: &b,
            prefix: String::new(),
            decay: true,
            trainable: true,
        })?;
        let b = b.into_inner();
        if !b.missing.is_empty() {
            return Err(missing_error(src.as_ref(), &b.missing, &b.used));
        }
        Ok((t, b.store))
    }

    /// Give back the spare capacity that registering tensor by tensor leaves: the buffer grew
    /// by doubling, so without this a model could hold up to twice its size.
    fn shrink_to_fit(&mut self) {
        match &mut self.data {
            Storage::F32(v) => v.shrink_to_fit(),
            Storage::Bf16(v) => v.shrink_to_fit(),
            Storage::Mapped(_) => {}
        }
        self.specs.shrink_to_fit();
    }

    /// Register more tensors after the ones the store has (starting at zero), e.g. a
    /// classification head on a pretrained backbone. f32 stores only.
    pub fn extend<T>(&mut self, f: impl FnOnce(&Vb<'_, '_>) -> Result<T>) -> Result<T> {
        let b = RefCell::new(Builder {
            source: None,
            store: std::mem::take(self),
            used: BTreeSet::new(),
            missing: Vec::new(),
        });
        let t = f(&Vb {
            b: &b,
            prefix: String::new(),
            decay: true,
            trainable: true,
        });
        *self = b.into_inner().store;
        self.shrink_to_fit();
        t
    }

    /// Leave the tensor `h` out of training from now on (the optimizer skips it).
    pub fn freeze(&mut self, h: P) {
        for s in &mut self.specs {
            if s.handle == h {
                s.trainable = false;
            }
        }
    }

    /// The element type of the values.
    pub fn dtype(&self) -> DType {
        match self.data {
            Storage::F32(_) => DType::F32,
            Storage::Bf16(_) | Storage::Mapped(_) => DType::Bf16,
        }
    }

    /// Scalars in the store.
    pub fn len(&self) -> usize {
        match &self.data {
            Storage::F32(v) => v.len(),
            Storage::Bf16(v) => v.len(),
            Storage::Mapped(m) => m.region().len(),
        }
    }

    /// Whether the store holds no scalar.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tensors, in buffer order.
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// The tensor named `name`.
    pub fn spec(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// The f32 values (empty for a bf16 store, whose models cannot run yet: the kernels take
    /// f32; see [`ParamStore::to_f32`]).
    pub fn data(&self) -> &[f32] {
        match &self.data {
            Storage::F32(v) => v,
            Storage::Bf16(_) | Storage::Mapped(_) => &[],
        }
    }

    /// The f32 values, to write (an initialisation, an optimizer step).
    pub fn data_mut(&mut self) -> &mut [f32] {
        match &mut self.data {
            Storage::F32(v) => v,
            Storage::Bf16(_) | Storage::Mapped(_) => &mut [],
        }
    }

    /// The bf16 values of a bf16 store.
    pub fn bf16(&self) -> Option<&[u16]> {
        match &self.data {
            Storage::Bf16(v) => Some(v),
            Storage::Mapped(m) => Some(m.region()),
            Storage::F32(_) => None,
        }
    }

    /// The same tensors in f32 (a copy for a bf16 store).
    pub fn to_f32(&self) -> ParamStore {
        let data = match &self.data {
            Storage::F32(v) => v.clone(),
            Storage::Bf16(v) => v.iter().map(|&h| bf16_to_f32(h)).collect(),
            Storage::Mapped(m) => m.region().iter().map(|&h| bf16_to_f32(h)).collect(),
        };
        ParamStore {
            specs: self.specs.clone(),
            data: Storage::F32(data),
        }
    }

    /// A zero buffer of the store's layout (gradients, optimizer moments).
    pub fn zeros(&self) -> Vec<f32> {
        vec![0.0; self.len()]
    }

    /// Elements that the optimizer trains.
    pub fn trainable_len(&self) -> usize {
        self.specs
            .iter()
            .filter(|s| s.trainable)
            .map(|s| s.handle.len())
            .sum()
    }

    /// Every tensor as `(name, shape, values)` in f32, in buffer order (for a checkpoint).
    pub fn tensors(&self) -> Vec<(&str, &[usize], Vec<f32>)> {
        self.specs
            .iter()
            .map(|s| {
                let v = match &self.data {
                    Storage::F32(d) => s.handle.of(d).to_vec(),
                    Storage::Bf16(d) => d[s.handle.range()]
                        .iter()
                        .map(|&h| bf16_to_f32(h))
                        .collect(),
                    Storage::Mapped(m) => m.region()[s.handle.range()]
                        .iter()
                        .map(|&h| bf16_to_f32(h))
                        .collect(),
                };
                (s.name.as_str(), s.shape.as_slice(), v)
            })
            .collect()
    }

    /// `buf` (laid out like the store: parameters, gradients, moments) split by tensor, as
    /// `(name, shape, values)`.
    pub fn split<'a>(&'a self, buf: &'a [f32]) -> Vec<(&'a str, &'a [usize], &'a [f32])> {
        self.specs
            .iter()
            .map(|s| (s.name.as_str(), s.shape.as_slice(), s.handle.of(buf)))
            .collect()
    }

    /// Copy every tensor of `src` that the store has (by name, shape-checked) into `buf`, a
    /// buffer laid out like the store (e.g. optimizer moments saved per tensor). Tensors of
    /// the store that `src` lacks are an error naming the first.
    pub fn read_into(&self, src: &dyn TensorSource, prefix: &str, buf: &mut [f32]) -> Result<()> {
        for s in &self.specs {
            let name = format!("{prefix}{}", s.name);
            let numel: usize = s.shape.iter().product();
            match src.shape_of(&name) {
                None => {
                    return Err(Error::MissingTensor {
                        file: src.origin(),
                        name,
                        available: src.names().len(),
                    })
                }
                Some(sh) if sh.iter().product::<usize>() != numel => {
                    return Err(Error::Format {
                        file: src.origin(),
                        msg: format!(
                            "tensor `{name}` has shape {sh:?}, expected {} elements ({:?})",
                            numel, s.shape
                        ),
                    })
                }
                Some(_) => src.read_f32(&name, s.handle.of_mut(buf))?,
            }
        }
        Ok(())
    }
}

struct Builder<'a> {
    source: Option<&'a dyn TensorSource>,
    store: ParamStore,
    /// Names taken from the source (to report the ones a model does not use).
    used: BTreeSet<String>,
    /// Names the model asked for that the source lacks (reported together once the
    /// constructor has run, so that one error lists them all).
    missing: Vec<String>,
}

/// The builder a model's constructor receives: a prefix and the tags of the tensors it hands
/// out. Cheap to clone; children made by [`Vb::pp`] share the same store.
#[derive(Clone)]
pub struct Vb<'a, 's> {
    b: &'a RefCell<Builder<'s>>,
    prefix: String,
    decay: bool,
    trainable: bool,
}

impl<'a, 's> Vb<'a, 's> {
    /// A builder whose names are prefixed by `name.` (an empty name adds nothing).
    pub fn pp(&self, name: impl AsRef<str>) -> Vb<'a, 's> {
        let name = name.as_ref();
        let mut v = self.clone();
        if !name.is_empty() {
            v.prefix = format!("{}{name}.", self.prefix);
        }
        v
    }

    /// The same builder, handing out tensors outside the weight-decay group.
    pub fn no_decay(&self) -> Vb<'a, 's> {
        Vb {
            decay: false,
            ..self.clone()
        }
    }

    /// The same builder, handing out tensors that the optimizer leaves as they are.
    pub fn frozen(&self) -> Vb<'a, 's> {
        Vb {
            trainable: false,
            ..self.clone()
        }
    }

    /// The full name `name` gets under this builder's prefix.
    pub fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Whether the values come from a checkpoint (rather than a fresh initialisation).
    pub fn is_loading(&self) -> bool {
        self.b.borrow().source.is_some()
    }

    /// Whether the checkpoint has `name` (under the prefix); always false for a fresh model.
    pub fn contains(&self, name: &str) -> bool {
        let b = self.b.borrow();
        b.source
            .is_some_and(|s| s.shape_of(&self.name(name)).is_some())
    }

    /// The tensor `name` of shape `shape`: a handle into the model's buffer. Loading, the
    /// checkpoint must hold it with exactly this shape and finite values (a NaN or an infinity
    /// is an error naming the tensor and the index). A tensor the checkpoint lacks is an error
    /// of [`ParamStore::build`] once the constructor has run, listing every missing one.
    pub fn get(&self, shape: &[usize], name: &str) -> Result<P> {
        let full = self.name(name);
        let numel: usize = shape.iter().product();
        let mut b = self.b.borrow_mut();
        if b.store.specs.iter().any(|s| s.name == full) {
            return Err(Error::config(
                "parameter name",
                format!("`{full}`"),
                "registered twice; every tensor of a model needs its own name",
            ));
        }
        if let Storage::Mapped(src) = &b.store.data {
            let src = src.clone();
            let handle = match src.shape_of(&full) {
                None => {
                    b.missing.push(full.clone());
                    P { off: 0, len: 0 }
                }
                Some(s) if s != shape => {
                    return Err(Error::Format {
                        file: src.origin(),
                        msg: format!(
                            "tensor `{full}` has shape {s:?}, expected {shape:?} (does the \
                             config match the weights?)"
                        ),
                    })
                }
                Some(_) => match src.bf16_offset(&full) {
                    Some(off) if off + numel <= src.region().len() => {
                        b.used.insert(full.clone());
                        P { off, len: numel }
                    }
                    _ => {
                        return Err(Error::Format {
                            file: src.origin(),
                            msg: format!(
                                "tensor `{full}` is not stored as bf16, so it cannot be used in \
                                 place; re-convert the model with `hyena convert`"
                            ),
                        })
                    }
                },
            };
            b.store.specs.push(ParamSpec {
                name: full,
                shape: shape.to_vec(),
                handle,
                decay: self.decay,
                trainable: self.trainable,
            });
            return Ok(handle);
        }
        let off = b.store.len();
        let handle = P { off, len: numel };
        // Fallible: a tensor too large for the memory is an error naming it, not an abort.
        let reserved = match &mut b.store.data {
            Storage::F32(v) => v.try_reserve(numel).is_ok(),
            Storage::Bf16(v) => v.try_reserve(numel).is_ok(),
            Storage::Mapped(_) => false,
        };
        if !reserved {
            let what = "cannot be allocated (too large for the memory); use a smaller config";
            return Err(Error::config(
                "parameter size",
                format!("`{full}` {shape:?}"),
                what,
            ));
        }
        match &mut b.store.data {
            Storage::F32(v) => v.resize(off + numel, 0.0),
            Storage::Bf16(v) => v.resize(off + numel, 0),
            Storage::Mapped(_) => {}
        }
        if let Some(src) = b.source {
            match src.shape_of(&full) {
                None => b.missing.push(full.clone()),
                Some(s) if s != shape => {
                    return Err(Error::Format {
                        file: src.origin(),
                        msg: format!(
                            "tensor `{full}` has shape {s:?}, expected {shape:?} (does the \
                             config match the weights?)"
                        ),
                    })
                }
                Some(_) => {
                    match &mut b.store.data {
                        Storage::F32(v) => {
                            let dst = &mut v[handle.range()];
                            src.read_f32(&full, dst)?;
                            check_finite(src, &full, dst)?;
                        }
                        Storage::Bf16(v) => {
                            let dst = &mut v[handle.range()];
                            src.read_bf16(&full, dst)?;
                            check_finite_bf16(src, &full, dst)?;
                        }
                        // Handled before any allocation (build_mapped).
                        Storage::Mapped(_) => {}
                    }
                    b.used.insert(full.clone());
                }
            }
        }
        b.store.specs.push(ParamSpec {
            name: full,
            shape: shape.to_vec(),
            handle,
            decay: self.decay,
            trainable: self.trainable,
        });
        Ok(handle)
    }

    /// The names of the source that no [`Vb::get`] has taken so far (e.g. a classifier's
    /// `score.weight` when an LM is loaded from it).
    pub fn unused(&self) -> Vec<String> {
        let b = self.b.borrow();
        match b.source {
            None => Vec::new(),
            Some(s) => s
                .names()
                .into_iter()
                .filter(|n| !b.used.contains(n))
                .collect(),
        }
    }
}

/// A [`TensorSource`] over tensors held in memory (tests, renamed checkpoints).
#[derive(Clone, Debug, Default)]
pub struct MemSource {
    pub origin: PathBuf,
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl TensorSource for MemSource {
    fn origin(&self) -> PathBuf {
        self.origin.clone()
    }
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.0.clone())
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn read_f32(&self, name: &str, dst: &mut [f32]) -> Result<()> {
        let (_, v) = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            file: self.origin.clone(),
            name: name.to_string(),
            available: self.tensors.len(),
        })?;
        crate::error::check_len("MemSource", name, v.len(), dst.len())?;
        dst.copy_from_slice(v);
        Ok(())
    }
}

/// Several sources seen as one, with a prefix removed from the names that carry it: the
/// shards of one Hugging Face state dict (`model-00001-of-00003.safetensors`, …; keys
/// `backbone.…`). Each tensor is read from the shard that holds it, in that shard's precision.
pub struct JoinedSource {
    parts: Vec<Box<dyn TensorSource>>,
    /// Visible name → (shard, stored name).
    index: BTreeMap<String, (usize, String)>,
    origin: PathBuf,
}

impl JoinedSource {
    /// Join `parts` (`origin` names them all in messages, e.g. their directory), removing
    /// `prefix` from names that start with it. A name in two shards is an error naming both.
    pub fn new(parts: Vec<Box<dyn TensorSource>>, prefix: &str, origin: PathBuf) -> Result<Self> {
        let mut index: BTreeMap<String, (usize, String)> = BTreeMap::new();
        for (i, part) in parts.iter().enumerate() {
            for name in part.names() {
                let visible = name.strip_prefix(prefix).unwrap_or(&name).to_string();
                if let Some((j, _)) = index.get(&visible) {
                    return Err(Error::format(
                        part.origin(),
                        format!(
                            "tensor `{name}` is also in `{}`: shards of one checkpoint hold \
                             each tensor once",
                            parts[*j].origin().display()
                        ),
                    ));
                }
                index.insert(visible, (i, name));
            }
        }
        Ok(JoinedSource {
            parts,
            index,
            origin,
        })
    }

    fn find(&self, name: &str) -> Result<(&dyn TensorSource, &str)> {
        match self.index.get(name) {
            Some((i, stored)) => Ok((self.parts[*i].as_ref(), stored)),
            None => Err(Error::MissingTensor {
                file: self.origin.clone(),
                name: name.to_string(),
                available: self.index.len(),
            }),
        }
    }
}

impl TensorSource for JoinedSource {
    fn origin(&self) -> PathBuf {
        self.origin.clone()
    }
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        let (p, n) = self.find(name).ok()?;
        p.shape_of(n)
    }
    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }
    fn read_f32(&self, name: &str, dst: &mut [f32]) -> Result<()> {
        let (p, n) = self.find(name)?;
        p.read_f32(n, dst)
    }
    fn read_bf16(&self, name: &str, dst: &mut [u16]) -> Result<()> {
        let (p, n) = self.find(name)?;
        p.read_bf16(n, dst)
    }
}

impl ParamStore {
    /// The store as an in-memory source (e.g. to rebuild a model from its own values).
    pub fn to_source(&self) -> MemSource {
        MemSource {
            origin: PathBuf::from("<parameters>"),
            tensors: self
                .tensors()
                .into_iter()
                .map(|(n, s, v)| (n.to_string(), (s.to_vec(), v)))
                .collect(),
        }
    }
}

/// How many names an error lists before it gives the count of the rest.
const LIST_NAMES: usize = 10;

/// `names` as a list for an error message: the first ten in backticks, then how many more.
pub fn list_names<S: AsRef<str>>(names: &[S]) -> String {
    let mut s = names
        .iter()
        .take(LIST_NAMES)
        .map(|n| format!("`{}`", n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > LIST_NAMES {
        s.push_str(&format!(" and {} more", names.len() - LIST_NAMES));
    }
    s
}

/// The block index of a checkpoint name (`…layers.{i}.…`), if it has one.
fn layer_index(name: &str) -> Option<usize> {
    let at = if name.starts_with("layers.") {
        0
    } else {
        name.find(".layers.")? + 1
    };
    let rest = &name[at + "layers.".len()..];
    rest.split('.').next()?.parse().ok()
}

/// Blocks named in `names` (one more than the highest `layers.{i}` index), if any.
pub fn layers_in<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<usize> {
    names
        .into_iter()
        .filter_map(layer_index)
        .max()
        .map(|i| i + 1)
}

/// What to say when the blocks a model asks for (`want`) and those of the weights (`have`)
/// differ, the usual cause of missing or extra tensors. `key` is the config key that sets the
/// block count (`n_layer`; `layers` for a list of layers; empty when not known).
pub fn layer_hint(key: &str, want: Option<usize>, have: Option<usize>) -> String {
    match (want, have) {
        (Some(w), Some(h)) if w != h => {
            let said = if key == "layers" {
                format!("`layers` lists {w} layer(s)")
            } else if key.is_empty() {
                format!("{w} block(s)")
            } else {
                format!("{key} {w}")
            };
            format!(
                "the config says {said} but the weights have layers 0..{}: fix config.json \
                 or use the weights that match it",
                h - 1
            )
        }
        _ => "fix config.json to describe the model these weights belong to, or use the \
              weights that match the config"
            .to_string(),
    }
}

/// The error of a load that lacks tensors the model asked for (`missing`; `used`: the ones
/// found).
fn missing_error(src: &dyn TensorSource, missing: &[String], used: &BTreeSet<String>) -> Error {
    let want = layers_in(missing.iter().chain(used).map(String::as_str));
    let names = src.names();
    let have = layers_in(names.iter().map(String::as_str));
    Error::format(
        src.origin(),
        format!(
            "{} tensor(s) that the config's model needs are not in the weights: {}; {}",
            missing.len(),
            list_names(missing),
            layer_hint("", want, have)
        ),
    )
}

/// An error unless every value of `v` (tensor `name` of `src`) is finite: a NaN or an
/// infinity in a checkpoint makes every output NaN, so it is refused at load.
pub fn check_finite(src: &dyn TensorSource, name: &str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(non_finite(src, name, i, v[i], v.len())),
    }
}

/// [`check_finite`] for bf16 bits.
fn check_finite_bf16(src: &dyn TensorSource, name: &str, v: &[u16]) -> Result<()> {
    match v.iter().position(|&h| (h & 0x7f80) == 0x7f80) {
        None => Ok(()),
        Some(i) => Err(non_finite(src, name, i, bf16_to_f32(v[i]), v.len())),
    }
}

fn non_finite(src: &dyn TensorSource, name: &str, i: usize, x: f32, n: usize) -> Error {
    Error::format(
        src.origin(),
        format!(
            "tensor `{name}` holds {x} at index {i} (of {n} values): the weights are not \
             finite, so every output would be NaN; use an earlier checkpoint of the run or \
             retrain"
        ),
    )
}

/// A key of a weights file that a model may leave unread, with the reason (see
/// [`Tracked::check_all_read`]). `pattern` is the key with `*` standing for any run of
/// characters.
#[derive(Clone, Copy, Debug)]
pub struct IgnoredKey {
    pub pattern: &'static str,
    pub reason: &'static str,
}

impl IgnoredKey {
    /// Whether `key` matches the pattern.
    pub fn matches(&self, key: &str) -> bool {
        glob(self.pattern.as_bytes(), key.as_bytes())
    }
}

/// `*`-only glob match.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// A [`TensorSource`] that remembers which tensors were read and refuses non-finite values:
/// a family loads through it, then [`Tracked::check_all_read`] makes sure the weights file
/// held nothing the model did not use (a config with fewer layers than the weights would
/// otherwise evaluate a different model than the one trained).
pub struct Tracked<'a> {
    src: &'a dyn TensorSource,
    read: RefCell<BTreeSet<String>>,
}

impl<'a> Tracked<'a> {
    pub fn new(src: &'a dyn TensorSource) -> Self {
        Tracked {
            src,
            read: RefCell::new(BTreeSet::new()),
        }
    }

    /// Count `name` as read without reading it (a duplicate checked equal to a read copy).
    pub fn mark_read(&self, name: &str) {
        self.read.borrow_mut().insert(name.to_string());
    }

    /// The names of the source not read so far, in order.
    pub fn unread(&self) -> Vec<String> {
        let read = self.read.borrow();
        self.src
            .names()
            .into_iter()
            .filter(|n| !read.contains(n))
            .collect()
    }

    /// An error naming the tensors of the source that were not read and match none of
    /// `ignored`. `blocks` is the config key that sets the model's block count and its value,
    /// for the hint ([`layer_hint`]).
    pub fn check_all_read(
        &self,
        ignored: &[IgnoredKey],
        blocks: Option<(&str, usize)>,
    ) -> Result<()> {
        let extra: Vec<String> = self
            .unread()
            .into_iter()
            .filter(|n| !ignored.iter().any(|k| k.matches(n)))
            .collect();
        if extra.is_empty() {
            return Ok(());
        }
        let names = self.src.names();
        let have = layers_in(names.iter().map(String::as_str));
        Err(Error::format(
            self.src.origin(),
            format!(
                "{} tensor(s) of the weights are not used by the model that config.json \
                 describes: {}; {}",
                extra.len(),
                list_names(&extra),
                layer_hint(blocks.map_or("n_layer", |b| b.0), blocks.map(|b| b.1), have)
            ),
        ))
    }
}

impl TensorSource for Tracked<'_> {
    fn origin(&self) -> PathBuf {
        self.src.origin()
    }
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.src.shape_of(name)
    }
    fn names(&self) -> Vec<String> {
        self.src.names()
    }
    fn read_f32(&self, name: &str, dst: &mut [f32]) -> Result<()> {
        self.src.read_f32(name, dst)?;
        check_finite(self.src, name, dst)?;
        self.mark_read(name);
        Ok(())
    }
    fn read_bf16(&self, name: &str, dst: &mut [u16]) -> Result<()> {
        self.src.read_bf16(name, dst)?;
        check_finite_bf16(self.src, name, dst)?;
        self.mark_read(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lin {
        w: P,
        b: P,
    }

    /// A store built tensor by tensor (or extended) holds no spare capacity: a model's memory
    /// is its size, not the doubling buffer's.
    #[test]
    fn built_store_holds_no_spare_capacity() {
        let cap = |s: &ParamStore| match &s.data {
            Storage::F32(v) => (v.len(), v.capacity()),
            Storage::Bf16(v) => (v.len(), v.capacity()),
            Storage::Mapped(m) => (m.region().len(), m.region().len()),
        };
        let (_, mut store) = ParamStore::build(Init::Zeros, DType::F32, |vb| {
            (0..37)
                .map(|i| lin(&vb.pp(format!("l{i}")), 3 + i, 5))
                .collect::<Result<Vec<_>>>()
        })
        .unwrap();
        let (len, capacity) = cap(&store);
        assert_eq!(len, (0..37).map(|i| (3 + i) * 6).sum::<usize>());
        assert_eq!(capacity, len);
        store.extend(|vb| lin(&vb.pp("head"), 7, 11)).unwrap();
        let (len2, capacity2) = cap(&store);
        assert_eq!((len2, capacity2), (len + 84, len + 84));
    }

    fn lin(vb: &Vb<'_, '_>, o: usize, i: usize) -> Result<Lin> {
        Ok(Lin {
            w: vb.get(&[o, i], "weight")?,
            b: vb.no_decay().get(&[o], "bias")?,
        })
    }

    #[test]
    fn names_shapes_tags_and_layout() {
        let (m, store) = ParamStore::build(Init::Zeros, DType::F32, |vb| {
            let a = lin(&vb.pp("mixer").pp("in_proj"), 3, 2)?;
            let h = vb.frozen().get(&[4, 2], "lm_head.weight")?;
            Ok((a, h))
        })
        .unwrap();
        let names: Vec<_> = store.specs().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "mixer.in_proj.weight",
                "mixer.in_proj.bias",
                "lm_head.weight"
            ]
        );
        assert_eq!(store.len(), 6 + 3 + 8);
        assert_eq!(
            (m.0.w.range(), m.0.b.range(), m.1.range()),
            (0..6, 6..9, 9..17)
        );
        let s = store.spec("mixer.in_proj.bias").unwrap();
        assert!(!s.decay && s.trainable);
        let s = store.spec("lm_head.weight").unwrap();
        assert!(s.decay && !s.trainable);
        assert_eq!(store.trainable_len(), 9);
    }

    #[test]
    fn a_name_twice_is_an_error() {
        let e = ParamStore::build(Init::Zeros, DType::F32, |vb| {
            vb.get(&[2], "x")?;
            vb.get(&[3], "x")
        })
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("`x`") && e.contains("twice"), "{e}");
    }

    #[test]
    fn loading_copies_checks_shapes_and_reports_unused() {
        let mut src = MemSource::default();
        src.tensors
            .insert("l.weight".into(), (vec![2, 1], vec![1.5, -2.0]));
        src.tensors
            .insert("l.bias".into(), (vec![2], vec![0.25, 3.0]));
        src.tensors.insert("extra".into(), (vec![1], vec![9.0]));
        let ((m, unused), store) = ParamStore::build(Init::From(&src), DType::F32, |vb| {
            let m = lin(&vb.pp("l"), 2, 1)?;
            Ok((m, vb.unused()))
        })
        .unwrap();
        assert_eq!(m.w.of(store.data()), &[1.5, -2.0]);
        assert_eq!(m.b.of(store.data()), &[0.25, 3.0]);
        assert_eq!(unused, ["extra"]);
        // Wrong shape and missing tensor: errors naming the tensor.
        let e = ParamStore::build(Init::From(&src), DType::F32, |vb| lin(&vb.pp("l"), 1, 2))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("l.weight") && e.contains("[2, 1]"), "{e}");
        let e = ParamStore::build(Init::From(&src), DType::F32, |vb| lin(&vb.pp("m"), 2, 1))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("2 tensor(s)") && e.contains("`m.weight`, `m.bias`"),
            "{e}"
        );
        // Non-finite values: an error naming the tensor and the index.
        src.tensors
            .insert("l.bias".into(), (vec![2], vec![0.25, f32::NAN]));
        let e = ParamStore::build(Init::From(&src), DType::F32, |vb| lin(&vb.pp("l"), 2, 1))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("`l.bias`") && e.contains("NaN at index 1"),
            "{e}"
        );
        let e = ParamStore::build(Init::From(&src), DType::Bf16, |vb| lin(&vb.pp("l"), 2, 1))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("`l.bias`") && e.contains("NaN at index 1"),
            "{e}"
        );
    }

    #[test]
    fn tracked_sources_report_unread_tensors_but_ignored_ones() {
        let mut src = MemSource::default();
        for n in ["layers.0.w", "layers.1.w", "layers.2.w", "score.weight"] {
            src.tensors.insert(n.into(), (vec![1], vec![1.0]));
        }
        let t = Tracked::new(&src);
        let (_, _) = ParamStore::build(Init::From(&t), DType::F32, |vb| {
            vb.get(&[1], "layers.0.w")?;
            vb.get(&[1], "layers.1.w")
        })
        .unwrap();
        let ignore = [IgnoredKey {
            pattern: "score.*",
            reason: "a head",
        }];
        let e = t
            .check_all_read(&ignore, Some(("n_layer", 2)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 tensor(s)")
                && e.contains("`layers.2.w`")
                && !e.contains("score")
                && e.contains("n_layer 2 but the weights have layers 0..2"),
            "{e}"
        );
        t.mark_read("layers.2.w");
        t.check_all_read(&ignore, None).unwrap();
        assert!(t.check_all_read(&[], None).is_err());
        assert!(IgnoredKey {
            pattern: "model.*.freq",
            reason: ""
        }
        .matches("model.a.b.freq"));
        assert_eq!(
            list_names(&(0..12).map(|i| i.to_string()).collect::<Vec<_>>()),
            "`0`, `1`, `2`, `3`, `4`, `5`, `6`, `7`, `8`, `9` and 2 more"
        );
    }

    #[test]
    fn bf16_stays_bf16() {
        let mut src = MemSource::default();
        let vals = vec![1.0f32, -0.5, 3.140625, 1e-3];
        src.tensors.insert("w".into(), (vec![4], vals.clone()));
        let (h, store) =
            ParamStore::build(Init::From(&src), DType::Bf16, |vb| vb.get(&[4], "w")).unwrap();
        assert_eq!(store.dtype(), DType::Bf16);
        let bits = store.bf16().unwrap();
        assert_eq!(bits.len(), 4);
        // Exactly representable values are kept; 1e-3 rounds to the nearest bf16.
        let back: Vec<f32> = bits.iter().map(|&b| bf16_to_f32(b)).collect();
        assert_eq!(&back[..3], &vals[..3]);
        assert!((back[3] - 1e-3).abs() < 1e-3 / 128.0);
        assert!(store.data().is_empty());
        assert_eq!(h.of(store.to_f32().data()), &back[..]);
        assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8)), 0x3f80); // a tie rounds to even
        assert_eq!(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
    }

    #[test]
    fn many_mut_gives_disjoint_slices() {
        let (hs, store) = ParamStore::build(Init::Zeros, DType::F32, |vb| {
            Ok([vb.get(&[2], "a")?, vb.get(&[3], "b")?])
        })
        .unwrap();
        let mut g = store.zeros();
        let [a, b] = many_mut(&mut g, hs);
        a.fill(1.0);
        b.fill(2.0);
        assert_eq!(g, [1.0, 1.0, 2.0, 2.0, 2.0]);
    }
}
