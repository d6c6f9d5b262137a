//! Channel mixers of the operator zoo (spec Sec. 6.3): SwiGLU (Shazeer 2020, arXiv 2002.05202)
//! and the tanh-GELU MLP. Both act on each position alone (`[B·L, D]` rows).
//!
//! MAD's settings: SwiGLU without biases and inner width `16·ceil(⌊2·4D/3⌋/16)` (352 at
//! D = 128, so that it has about the parameters of a 4D GELU MLP); the MLP with inner width 4D.
//! Linear weights take PyTorch's default init `U(±1/√fan_in)`; biases start at zero, as MAD
//! zeroes them.

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::error::{check_len, Error, Result};
use crate::layers::init;
use crate::layers::zoo::{split, split_mut, LayerCache, SeqLayer, TensorSpec};
use std::sync::Mutex;

use crate::ops::act::{
    bias_gelu_forward, exp_fast, gelu_backward_bias, gelu_backward_inplace, gelu_forward,
};
use crate::ops::linear::{
    linear_accumulate, linear_backward, linear_forward, linear_forward_residual,
};
use crate::ops::simd_fn;
use crate::params::{many_mut, Vb, P};

/// Inner width of MAD's SwiGLU for width `d`: `16·ceil(⌊8d/3⌋/16)`.
pub fn swiglu_inner(d: usize) -> usize {
    (2 * d * 4 / 3).div_ceil(16) * 16
}

/// Settings of the channel mixers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MlpConfig {
    pub d_model: usize,
    /// Inner width; `None`: the MAD default (SwiGLU: [`swiglu_inner`], MLP: 4D).
    pub d_inner: Option<usize>,
}

fn check_dims(kind: &'static str, d: usize, di: usize) -> Result<()> {
    if d == 0 || di == 0 {
        return Err(Error::config(
            kind,
            format!("d_model {d}, d_inner {di}"),
            "widths must be >= 1",
        ));
    }
    Ok(())
}

/// SwiGLU: `y = W3 (silu(W1 x) ⊙ W2 x)`, no biases. Parameters `l1.weight [I, D]`,
/// `l2.weight [I, D]`, `l3.weight [D, I]`.
#[derive(Clone, Debug)]
pub struct SwiGlu {
    d: usize,
    di: usize,
}

#[derive(Default)]
struct SwiGluCache {
    a: Vec<f32>, // [M, I] W1 x
    b: Vec<f32>, // [M, I] W2 x
    h: Vec<f32>, // [M, I] silu(a) ⊙ b
    /// Backward scratch `[M, I]`, `[M, I]`, `[M, D]`, kept with the cache: fresh buffers of
    /// this size cost a page fault per 4 KiB on every step.
    scratch: Mutex<(Vec<f32>, Vec<f32>, Vec<f32>)>,
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-x))
}

simd_fn! {
    /// `h = silu(a) ⊙ b`.
    fn swiglu_gate(h: &mut [f32], a: &[f32], b: &[f32]) {
        for ((h, &a), &b) in h.iter_mut().zip(a).zip(b) {
            *h = a * sigmoid(a) * b;
        }
    }
}

simd_fn! {
    /// Given `dh`: `db = dh ⊙ silu(a)`, and `dh ← dh ⊙ b ⊙ silu'(a)` (the gradient of `a`).
    fn swiglu_gate_backward(dh: &mut [f32], db: &mut [f32], a: &[f32], b: &[f32]) {
        for (((dh, db), &a), &b) in dh.iter_mut().zip(db.iter_mut()).zip(a).zip(b) {
            let s = sigmoid(a);
            *db = *dh * a * s;
            *dh *= b * s * (1.0 + a * (1.0 - s));
        }
    }
}

impl SwiGlu {
    pub fn new(cfg: &MlpConfig) -> Result<Self> {
        let di = cfg.d_inner.unwrap_or(swiglu_inner(cfg.d_model));
        check_dims("swiglu", cfg.d_model, di)?;
        Ok(SwiGlu { d: cfg.d_model, di })
    }
}

impl SeqLayer for SwiGlu {
    fn kind(&self) -> &'static str {
        "swiglu"
    }
    fn d_model(&self) -> usize {
        self.d
    }
    fn mixes_positions(&self) -> bool {
        false
    }
    fn param_specs(&self) -> Vec<TensorSpec> {
        vec![
            TensorSpec::new("l1.weight", &[self.di, self.d]),
            TensorSpec::new("l2.weight", &[self.di, self.d]),
            TensorSpec::new("l3.weight", &[self.d, self.di]),
        ]
    }
    fn init(&self, p: &mut [f32], rng: &mut StdRng) {
        let specs = self.param_specs();
        let mut t = split_mut(p, &specs);
        init::linear_into(rng, t[0], self.d);
        init::linear_into(rng, t[1], self.d);
        init::linear_into(rng, t[2], self.di);
    }
    fn forward(
        &self,
        p: &[f32],
        x: &[f32],
        b: usize,
        l: usize,
        y: &mut [f32],
        cache: &mut LayerCache,
    ) -> Result<()> {
        let (d, di, m) = (self.d, self.di, b * l);
        check_len("swiglu", "x [B, L, D]", x.len(), m * d)?;
        check_len("swiglu", "y [B, L, D]", y.len(), m * d)?;
        let specs = self.param_specs();
        let w = split(p, &specs);
        let c = cache.get_mut::<SwiGluCache>();
        for v in [&mut c.a, &mut c.b, &mut c.h] {
            v.resize(m * di, 0.0);
        }
        linear_forward(x, w[0], None, m, d, di, &mut c.a)?;
        linear_forward(x, w[1], None, m, d, di, &mut c.b)?;
        swiglu_gate(&mut c.h, &c.a, &c.b);
        linear_forward(&c.h, w[2], None, m, di, d, y)
    }
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
    ) -> Result<()> {
        let (d, di, m) = (self.d, self.di, b * l);
        let c = cache.get::<SwiGluCache>("swiglu")?;
        let specs = self.param_specs();
        let w = split(p, &specs);
        let gw = split_mut(g, &specs);
        let [g1, g2, g3] = <[&mut [f32]; 3]>::try_from(gw)
            .map_err(|_| Error::config("swiglu", "params", "three tensors"))?;
        let mut guard = c
            .scratch
            .lock()
            .map_err(|_| Error::config("swiglu", "scratch", "poisoned by an earlier panic"))?;
        let (dh, db, dx2) = &mut *guard;
        dh.resize(m * di, 0.0);
        db.resize(m * di, 0.0);
        dx2.resize(m * d, 0.0);
        linear_backward(dy, &c.h, w[2], (m, di, d), Some(dh), g3, None)?;
        // dh → da (into dh), db.
        swiglu_gate_backward(dh, db, &c.a, &c.b);
        linear_backward(dh, x, w[0], (m, d, di), Some(dx), g1, None)?;
        linear_backward(db, x, w[1], (m, d, di), Some(dx2), g2, None)?;
        for (a, b) in dx.iter_mut().zip(dx2.iter()) {
            *a += b;
        }
        Ok(())
    }
}

/// The MLP: `y = W2 gelu_tanh(W1 x + b1) + b2`. Parameters `l1.weight [I, D]`, `l1.bias [I]`,
/// `l2.weight [D, I]`, `l2.bias [D]`.
#[derive(Clone, Debug)]
pub struct GeluMlp {
    d: usize,
    di: usize,
}

#[derive(Default)]
struct MlpCache {
    a: Vec<f32>, // [M, I] pre-activation
    h: Vec<f32>, // [M, I] gelu(a)
}

impl GeluMlp {
    pub fn new(cfg: &MlpConfig) -> Result<Self> {
        let di = cfg.d_inner.unwrap_or(4 * cfg.d_model);
        check_dims("mlp", cfg.d_model, di)?;
        Ok(GeluMlp { d: cfg.d_model, di })
    }
}

impl SeqLayer for GeluMlp {
    fn kind(&self) -> &'static str {
        "mlp"
    }
    fn d_model(&self) -> usize {
        self.d
    }
    fn mixes_positions(&self) -> bool {
        false
    }
    fn param_specs(&self) -> Vec<TensorSpec> {
        vec![
            TensorSpec::new("l1.weight", &[self.di, self.d]),
            TensorSpec::new("l1.bias", &[self.di]),
            TensorSpec::new("l2.weight", &[self.d, self.di]),
            TensorSpec::new("l2.bias", &[self.d]),
        ]
    }
    fn init(&self, p: &mut [f32], rng: &mut StdRng) {
        let specs = self.param_specs();
        let mut t = split_mut(p, &specs);
        init::linear_into(rng, t[0], self.d);
        t[1].fill(0.0);
        init::linear_into(rng, t[2], self.di);
        t[3].fill(0.0);
    }
    fn forward(
        &self,
        p: &[f32],
        x: &[f32],
        b: usize,
        l: usize,
        y: &mut [f32],
        cache: &mut LayerCache,
    ) -> Result<()> {
        let (d, di, m) = (self.d, self.di, b * l);
        check_len("mlp", "x [B, L, D]", x.len(), m * d)?;
        check_len("mlp", "y [B, L, D]", y.len(), m * d)?;
        let specs = self.param_specs();
        let w = split(p, &specs);
        let c = cache.get_mut::<MlpCache>();
        c.a.resize(m * di, 0.0);
        c.h.resize(m * di, 0.0);
        linear_forward(x, w[0], Some(w[1]), m, d, di, &mut c.a)?;
        gelu_forward(&c.a, &mut c.h)?;
        linear_forward(&c.h, w[2], Some(w[3]), m, di, d, y)
    }
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
    ) -> Result<()> {
        let (d, di, m) = (self.d, self.di, b * l);
        let c = cache.get::<MlpCache>("mlp")?;
        let specs = self.param_specs();
        let w = split(p, &specs);
        let gw = split_mut(g, &specs);
        let [g1w, g1b, g2w, g2b] = <[&mut [f32]; 4]>::try_from(gw)
            .map_err(|_| Error::config("mlp", "params", "four tensors"))?;
        let mut dh = vec![0.0; m * di];
        linear_backward(dy, &c.h, w[2], (m, di, d), Some(&mut dh), g2w, Some(g2b))?;
        gelu_backward_inplace(&mut dh, &c.a)?;
        linear_backward(&dh, x, w[0], (m, d, di), Some(dx), g1w, Some(g1b))
    }
}

/// Two linear layers around a tanh-GELU, with biases: `y = W2 gelu_tanh(W1 x + b1) + b2`,
/// `W1 [I, D]`, `W2 [D, I]` (HyenaDNA's block MLP, `fc1`/`fc2`). Handles into the model buffer.
#[derive(Clone, Copy, Debug)]
pub struct Mlp {
    pub w1: P,
    pub b1: P,
    pub w2: P,
    pub b2: P,
    pub d: usize,
    pub di: usize,
}

impl Mlp {
    /// `{n1}.weight [I, D]`, `{n1}.bias [I]`, `{n2}.weight [D, I]`, `{n2}.bias [D]` under `vb`
    /// (biases outside the weight-decay group).
    pub fn new(d: usize, di: usize, vb: &Vb<'_, '_>, (n1, n2): (&str, &str)) -> Result<Self> {
        check_dims("mlp", d, di)?;
        let (l1, l2) = (vb.pp(n1), vb.pp(n2));
        Ok(Mlp {
            w1: l1.get(&[di, d], "weight")?,
            b1: l1.no_decay().get(&[di], "bias")?,
            w2: l2.get(&[d, di], "weight")?,
            b2: l2.no_decay().get(&[d], "bias")?,
            d,
            di,
        })
    }

    /// `y = (residual +) W2 gelu(W1 x + b1) + b2` for rows `x [M, D]`. `a [M, I]` keeps the
    /// biased pre-activation and `g [M, I]` its GELU for the backward. The first GEMM writes
    /// without a bias pre-fill (the GELU pass adds it); the residual is folded into the second
    /// GEMM's bias pass.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        p: &[f32],
        x: &[f32],
        residual: Option<&[f32]>,
        m: usize,
        a: &mut [f32],
        g: &mut [f32],
        y: &mut [f32],
    ) -> Result<()> {
        let (d, di) = (self.d, self.di);
        linear_forward(x, self.w1.of(p), None, m, d, di, a)?;
        bias_gelu_forward(a, self.b1.of(p), g)?;
        linear_forward_residual(g, self.w2.of(p), Some(self.b2.of(p)), residual, m, di, d, y)
    }

    /// `y += W2 gelu(W1 x + b1) + b2` in place, for rows `x [M, D]` (`a`, `g`: `[M, I]`
    /// scratch): the lean inference path, which updates the residual stream where it lies.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_accumulate(
        &self,
        p: &[f32],
        x: &[f32],
        m: usize,
        a: &mut [f32],
        g: &mut [f32],
        y: &mut [f32],
    ) -> Result<()> {
        let (d, di) = (self.d, self.di);
        linear_forward(x, self.w1.of(p), None, m, d, di, a)?;
        bias_gelu_forward(a, self.b1.of(p), g)?;
        linear_accumulate(g, self.w2.of(p), self.b2.of(p), m, di, d, y)
    }

    /// Backward of [`Mlp::forward`] on rows `x [M, D]` with its saved `a`, `act` (the GELU
    /// output): writes `dx [M, D]` (the gradient of `x` through the MLP only; a residual's is
    /// the caller's), accumulates into `grads`. `dg [M, I]` is scratch.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        p: &[f32],
        dy: &[f32],
        x: &[f32],
        a: &[f32],
        act: &[f32],
        m: usize,
        dg: &mut [f32],
        dx: &mut [f32],
        grads: &mut [f32],
    ) -> Result<()> {
        let (d, di) = (self.d, self.di);
        let [g1w, g1b, g2w, g2b] = many_mut(grads, [self.w1, self.b1, self.w2, self.b2]);
        linear_backward(dy, act, self.w2.of(p), (m, di, d), Some(dg), g2w, Some(g2b))?;
        // dg now holds d(W1 x + b1); b1's gradient is summed in the same pass.
        gelu_backward_bias(dg, a, g1b)?;
        linear_backward(dg, x, self.w1.of(p), (m, d, di), Some(dx), g1w, None)
    }
}
