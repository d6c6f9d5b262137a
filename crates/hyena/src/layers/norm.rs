//! Normalisation layers over the last axis of `[M, D]` rows, with their tensors in the model
//! buffer: [`LayerNorm`] (`weight`, `bias`; HyenaDNA, MAD's train.py) and [`RmsNorm`]
//! (`weight`; MAD's default, StripedHyena). The kernels are [`crate::ops::norm`]'s; these
//! types only hold handles and hand the right slices to them. Both are outside the
//! weight-decay group, as in the reference recipes.

use crate::error::Result;
use crate::params::{many_mut, Vb, P};

use crate::ops::norm::{layernorm_backward, layernorm_forward, rmsnorm_backward, rmsnorm_forward};

/// `y = (x − mean) / sqrt(var + eps) · weight + bias` per row.
#[derive(Clone, Copy, Debug)]
pub struct LayerNorm {
    pub w: P,
    pub b: P,
    pub d: usize,
    pub eps: f32,
}

impl LayerNorm {
    /// `weight [D]`, `bias [D]` under `vb`.
    pub fn new(d: usize, eps: f32, vb: &Vb<'_, '_>) -> Result<Self> {
        let vb = vb.no_decay();
        Ok(LayerNorm {
            w: vb.get(&[d], "weight")?,
            b: vb.get(&[d], "bias")?,
            d,
            eps,
        })
    }

    /// The reference init: weight 1, bias 0.
    pub fn init(&self, p: &mut [f32]) {
        self.w.of_mut(p).fill(1.0);
        self.b.of_mut(p).fill(0.0);
    }

    /// `y = LN(x)` for rows `x [M, D]`, keeping each row's mean and 1/std `[M]`.
    pub fn forward(
        &self,
        p: &[f32],
        x: &[f32],
        y: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
    ) -> Result<()> {
        layernorm_forward(
            x,
            self.w.of(p),
            self.b.of(p),
            self.d,
            self.eps,
            y,
            mean,
            rstd,
        )
    }

    /// Backward: writes `dx` (or adds into it with `acc`: a residual stream's gradient that
    /// already holds the skip path), accumulates the weight and bias gradients into `g`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        p: &[f32],
        dy: &[f32],
        x: &[f32],
        mean: &[f32],
        rstd: &[f32],
        dx: &mut [f32],
        acc: bool,
        g: &mut [f32],
    ) -> Result<()> {
        let [gw, gb] = many_mut(g, [self.w, self.b]);
        self.backward_into(p, dy, x, mean, rstd, dx, acc, gw, gb)
    }

    /// [`LayerNorm::backward`] with the weight and bias gradients given as slices (when `dx`
    /// lives in the gradient buffer too, e.g. an embedding's rows).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_into(
        &self,
        p: &[f32],
        dy: &[f32],
        x: &[f32],
        mean: &[f32],
        rstd: &[f32],
        dx: &mut [f32],
        acc: bool,
        gw: &mut [f32],
        gb: &mut [f32],
    ) -> Result<()> {
        layernorm_backward(dy, x, self.w.of(p), mean, rstd, self.d, dx, acc, gw, gb)
    }
}

/// `y = x / sqrt(mean(x²) + eps) · weight` per row.
#[derive(Clone, Copy, Debug)]
pub struct RmsNorm {
    pub w: P,
    pub d: usize,
    pub eps: f32,
}

impl RmsNorm {
    /// `weight [D]` under `vb`.
    pub fn new(d: usize, eps: f32, vb: &Vb<'_, '_>) -> Result<Self> {
        Ok(RmsNorm {
            w: vb.no_decay().get(&[d], "weight")?,
            d,
            eps,
        })
    }

    /// Weight 1.
    pub fn init(&self, p: &mut [f32]) {
        self.w.of_mut(p).fill(1.0);
    }

    /// `y = RMSNorm(x)` for rows `x [M, D]`, keeping each row's 1/rms `[M]`.
    pub fn forward(&self, p: &[f32], x: &[f32], y: &mut [f32], rstd: &mut [f32]) -> Result<()> {
        rmsnorm_forward(x, self.w.of(p), self.d, self.eps, y, rstd)
    }

    /// Backward: writes `dx` (adds into it with `acc`), accumulates the weight gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        p: &[f32],
        dy: &[f32],
        x: &[f32],
        rstd: &[f32],
        dx: &mut [f32],
        acc: bool,
        g: &mut [f32],
    ) -> Result<()> {
        rmsnorm_backward(dy, x, self.w.of(p), rstd, self.d, dx, acc, self.w.of_mut(g))
    }
}
