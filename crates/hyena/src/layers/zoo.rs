//! The operator zoo's common interface: every layer that an architecture string can name
//! (`hyena,swiglu,attn,…`, spec Sec. 6.3 and issue 6) implements [`SeqLayer`].
//!
//! Design (llm.c style, like the rest of the engine):
//! - A layer holds only its configuration. Its parameters live in one flat `f32` buffer owned
//!   by the model, in the order and shapes of [`SeqLayer::param_specs`]; gradients use the same
//!   layout. So one AdamW loop, one checkpoint writer and one data-parallel reduction serve
//!   every layer.
//! - `forward` maps `x [B, L, D]` to `y [B, L, D]` (the residual branch: the block adds `y` to
//!   the stream) and fills a [`LayerCache`] of the layer's own type; `backward` overwrites
//!   `dx` and *accumulates* into the gradient slice.
//! - Each layer has a slow reference beside it, a finite-difference check
//!   ([`check_layer_grads`]) and a causality test ([`check_causal`]) in the tests.

use std::any::Any;

use rand::rngs::StdRng;

use crate::error::{Error, Result};
use crate::ops::gradcheck::{check, dot, rand_vec};

/// Name and shape of one parameter tensor of a layer (names relative to the layer, the
/// reference's where one exists, e.g. `Wqkv.weight`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: &str, shape: &[usize]) -> Self {
        TensorSpec {
            name: name.to_string(),
            shape: shape.to_vec(),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Total scalars of `specs`.
pub fn numel(specs: &[TensorSpec]) -> usize {
    specs.iter().map(TensorSpec::numel).sum()
}

/// Split a flat buffer laid out as `specs` into one slice per tensor.
pub fn split<'a>(p: &'a [f32], specs: &[TensorSpec]) -> Vec<&'a [f32]> {
    let mut out = Vec::with_capacity(specs.len());
    let mut rest = p;
    for s in specs {
        let (a, b) = rest.split_at(s.numel());
        out.push(a);
        rest = b;
    }
    out
}

/// Mutable [`split`].
pub fn split_mut<'a>(p: &'a mut [f32], specs: &[TensorSpec]) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(specs.len());
    let mut rest = p;
    for s in specs {
        let (a, b) = std::mem::take(&mut rest).split_at_mut(s.numel());
        out.push(a);
        rest = b;
    }
    out
}

/// A layer's saved activations, of a type only the layer knows.
#[derive(Default)]
pub struct LayerCache(Option<Box<dyn Any + Send + Sync>>);

impl std::fmt::Debug for LayerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "LayerCache(filled)"
        } else {
            "LayerCache(empty)"
        })
    }
}

impl LayerCache {
    /// The cache as `T`, created (default) when empty or of another type.
    pub fn get_mut<T: Default + Any + Send + Sync>(&mut self) -> &mut T {
        if !self.0.as_ref().is_some_and(|b| b.is::<T>()) {
            self.0 = Some(Box::new(T::default()));
        }
        self.0
            .as_mut()
            .and_then(|b| b.downcast_mut::<T>())
            .expect("just set to T")
    }

    /// The cache as `T`, as the forward left it; an error if the forward did not run.
    pub fn get<T: Any>(&self, op: &'static str) -> Result<&T> {
        self.0
            .as_ref()
            .and_then(|b| b.downcast_ref::<T>())
            .ok_or_else(|| {
                Error::config(
                    op,
                    "backward",
                    "backward called without a forward filling this cache; run forward first",
                )
            })
    }
}

/// One layer of the zoo: a sequence mixer or a channel mixer on `[B, L, D]`.
pub trait SeqLayer: Send + Sync {
    /// The name that architecture strings use (`attn`, `swiglu`, …).
    fn kind(&self) -> &'static str;
    /// Width `D` of its input and output.
    fn d_model(&self) -> usize;
    /// Whether it mixes positions (a sequence mixer) or acts per position (a channel mixer).
    fn mixes_positions(&self) -> bool;
    /// The parameter tensors, in the order of the flat buffer.
    fn param_specs(&self) -> Vec<TensorSpec>;
    /// Fill `p` (laid out as [`SeqLayer::param_specs`]) with the initial values.
    fn init(&self, p: &mut [f32], rng: &mut StdRng);
    /// `y = layer(x)`, `x, y: [B, L, D]`.
    fn forward(
        &self,
        p: &[f32],
        x: &[f32],
        b: usize,
        l: usize,
        y: &mut [f32],
        cache: &mut LayerCache,
    ) -> Result<()>;
    /// Given `dy [B, L, D]`: overwrite `dx [B, L, D]`, accumulate parameter gradients into `g`
    /// (laid out like `p`). `x` and `cache` are the forward's.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        p: &[f32],
        x: &[f32],
        dy: &[f32],
        b: usize,
        l: usize,
        cache: &LayerCache,
        dx: &mut [f32],
        g: &mut [f32],
    ) -> Result<()>;
    /// Extra loss terms on the parameters (e.g. Hyena-MR's decay regularisation): adds
    /// `weight · r(p)` to the returned value and `weight · ∂r/∂p` into `g`. Default: none.
    fn regularize(&self, _p: &[f32], _g: &mut [f32]) -> f64 {
        0.0
    }
}

/// A layer's freshly initialised flat parameters.
pub fn init_params(layer: &dyn SeqLayer, seed: u64) -> Vec<f32> {
    use rand::SeedableRng;
    let mut p = vec![0.0; numel(&layer.param_specs())];
    layer.init(&mut p, &mut StdRng::seed_from_u64(seed));
    p
}

/// Finite-difference check of a layer's backward, for input and parameters, at `(b, l)`:
/// loss `Σ dy ⊙ y` with a random `dy`. Parameters are moved away from their init (some inits
/// are zero, which hides errors) by `p_jitter`. Returns the worst relative error; an error
/// message names the tensor and index that failed.
pub fn check_layer_grads(
    layer: &dyn SeqLayer,
    b: usize,
    l: usize,
    seed: u64,
    p_jitter: f32,
    rtol: f64,
) -> std::result::Result<f64, String> {
    let d = layer.d_model();
    let specs = layer.param_specs();
    let mut p = init_params(layer, seed);
    let jitter = rand_vec(p.len(), seed + 1, p_jitter);
    for (v, r) in p.iter_mut().zip(jitter) {
        *v += r;
    }
    let x = rand_vec(b * l * d, seed + 2, 1.0);
    let dy = rand_vec(b * l * d, seed + 3, 1.0);
    let run = |p: &[f32], x: &[f32]| -> f64 {
        let mut y = vec![0.0; b * l * d];
        let mut c = LayerCache::default();
        layer
            .forward(p, x, b, l, &mut y, &mut c)
            .expect("forward in gradcheck");
        dot(&dy, &y)
    };
    let mut y = vec![0.0; b * l * d];
    let mut cache = LayerCache::default();
    layer
        .forward(&p, &x, b, l, &mut y, &mut cache)
        .map_err(|e| e.to_string())?;
    let mut dx = vec![f32::NAN; b * l * d];
    let mut g = vec![0.0; p.len()];
    layer
        .backward(&p, &x, &dy, b, l, &cache, &mut dx, &mut g)
        .map_err(|e| e.to_string())?;
    let mut worst = check(
        &format!("{} dx", layer.kind()),
        &x,
        &dx,
        |xp| run(&p, xp),
        64,
        1e-2,
        rtol,
    )?;
    // Each parameter tensor on its own, so that a small tensor is not drowned by a large one.
    let mut off = 0;
    for s in &specs {
        let n = s.numel();
        let (p0, g0) = (p.clone(), g[off..off + n].to_vec());
        let w = check(
            &format!("{} {}", layer.kind(), s.name),
            &p0[off..off + n],
            &g0,
            |pt| {
                let mut pp = p0.clone();
                pp[off..off + n].copy_from_slice(pt);
                run(&pp, &x)
            },
            24,
            1e-2,
            rtol,
        )?;
        worst = worst.max(w);
        off += n;
    }
    Ok(worst)
}

/// Causality: changing the input at position `t` leaves every output before `t` unchanged
/// (bit for bit up to `tol`), for several `t`, and changes some output at or after `t` (when
/// `must_change`). Returns an error message naming the position that leaked.
pub fn check_causal(
    layer: &dyn SeqLayer,
    b: usize,
    l: usize,
    seed: u64,
    tol: f32,
) -> std::result::Result<(), String> {
    let d = layer.d_model();
    let mut p = init_params(layer, seed);
    let jitter = rand_vec(p.len(), seed + 1, 0.1);
    for (v, r) in p.iter_mut().zip(jitter) {
        *v += r;
    }
    let x = rand_vec(b * l * d, seed + 2, 1.0);
    let fwd = |x: &[f32]| {
        let mut y = vec![0.0; b * l * d];
        layer
            .forward(&p, x, b, l, &mut y, &mut LayerCache::default())
            .map_err(|e| e.to_string())
            .map(|_| y)
    };
    let y0 = fwd(&x)?;
    for t in [0, l / 3, l / 2, l - 1] {
        let mut xp = x.clone();
        for bi in 0..b {
            for j in 0..d {
                xp[(bi * l + t) * d + j] += 0.5;
            }
        }
        let y1 = fwd(&xp)?;
        for bi in 0..b {
            for s in 0..t {
                for j in 0..d {
                    let i = (bi * l + s) * d + j;
                    if (y1[i] - y0[i]).abs() > tol {
                        return Err(format!(
                            "{}: input at t={t} changed output at s={s} < t (channel {j}): {} -> {}",
                            layer.kind(),
                            y0[i],
                            y1[i]
                        ));
                    }
                }
            }
            let changed = (t..l).any(|s| {
                (0..d).any(|j| {
                    let i = (bi * l + s) * d + j;
                    (y1[i] - y0[i]).abs() > tol
                })
            });
            if !changed {
                return Err(format!(
                    "{}: input at t={t} changed no output at or after t",
                    layer.kind()
                ));
            }
        }
    }
    Ok(())
}
