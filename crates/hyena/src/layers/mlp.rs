//! Channel mixers: SwiGLU (Shazeer 2020, arXiv 2002.05202; the zoo's `swiglu`) and the
//! tanh-GELU MLP ([`Mlp`]: HyenaDNA's block MLP `fc1`/`fc2`, and the zoo's `mlp` with MAD's
//! names `l1`/`l2`). Both act on each position alone (`[B·L, D]` rows).
//!
//! MAD's settings: SwiGLU without biases and inner width `16·ceil(⌊2·4D/3⌋/16)` (352 at
//! D = 128, so that it has about the parameters of a 4D GELU MLP); the MLP with inner width 4D.
//! Linear weights take PyTorch's default init `U(±1/√fan_in)`; biases start at zero, as MAD
//! zeroes them.

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layers::init;
use crate::layers::layer::{check_io, Layer, Slot};

use crate::ops::act::{bias_gelu_forward, exp_fast, gelu_backward_bias};
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

/// SwiGLU: `y = W3 (silu(W1 x) ⊙ W2 x)`, no biases. Tensors `l1.weight [I, D]`,
/// `l2.weight [I, D]`, `l3.weight [D, I]`.
#[derive(Clone, Debug)]
pub struct SwiGlu {
    w1: P,
    w2: P,
    w3: P,
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
    dh: Vec<f32>,
    db: Vec<f32>,
    dx2: Vec<f32>,
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
    pub fn new(cfg: &MlpConfig, vb: &Vb<'_, '_>) -> Result<Self> {
        let (d, di) = (
            cfg.d_model,
            cfg.d_inner.unwrap_or(swiglu_inner(cfg.d_model)),
        );
        check_dims("swiglu", d, di)?;
        Ok(SwiGlu {
            w1: vb.get(&[di, d], "l1.weight")?,
            w2: vb.get(&[di, d], "l2.weight")?,
            w3: vb.get(&[d, di], "l3.weight")?,
            d,
            di,
        })
    }
}

impl Layer for SwiGlu {
    fn kind(&self) -> &'static str {
        "swiglu"
    }
    fn d_model(&self) -> usize {
        self.d
    }
    fn mixes_positions(&self) -> bool {
        false
    }
    fn init(&self, p: &mut [f32], rng: &mut StdRng) {
        init::linear_into(rng, self.w1.of_mut(p), self.d);
        init::linear_into(rng, self.w2.of_mut(p), self.d);
        init::linear_into(rng, self.w3.of_mut(p), self.di);
    }
    fn forward(
        &self,
        p: &[f32],
        x: &[f32],
        b: usize,
        l: usize,
        y: &mut [f32],
        cache: &mut Slot,
    ) -> Result<()> {
        let (d, di, m) = (self.d, self.di, b * l);
        check_io(
            "swiglu",
            d,
            b,
            l,
            &[("x [B, L, D]", x.len()), ("y [B, L, D]", y.len())],
        )?;
        let c = cache.get_or_default::<SwiGluCache>();
        for v in [&mut c.a, &mut c.b, &mut c.h] {
            v.resize(m * di, 0.0);
        }
        linear_forward(x, self.w1.of(p), None, m, d, di, &mut c.a)?;
        linear_forward(x, self.w2.of(p), None, m, d, di, &mut c.b)?;
        swiglu_gate(&mut c.h, &c.a, &c.b);
        linear_forward(&c.h, self.w3.of(p), None, m, di, d, y)
    }
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
    ) -> Result<()> {
        let (d, di, m) = (self.d, self.di, b * l);
        check_io(
            "swiglu backward",
            d,
            b,
            l,
            &[("x", x.len()), ("dy", dy.len()), ("dx", dx.len())],
        )?;
        let c = cache.get_mut::<SwiGluCache>("swiglu")?;
        let [g1, g2, g3] = many_mut(g, [self.w1, self.w2, self.w3]);
        let SwiGluCache {
            a,
            b: bv,
            h,
            dh,
            db,
            dx2,
        } = c;
        dh.resize(m * di, 0.0);
        db.resize(m * di, 0.0);
        dx2.resize(m * d, 0.0);
        linear_backward(dy, h, self.w3.of(p), (m, di, d), Some(dh), g3, None)?;
        // dh → da (into dh), db.
        swiglu_gate_backward(dh, db, a, bv);
        linear_backward(dh, x, self.w1.of(p), (m, d, di), Some(dx), g1, None)?;
        linear_backward(db, x, self.w2.of(p), (m, d, di), Some(dx2), g2, None)?;
        for (a, b) in dx.iter_mut().zip(dx2.iter()) {
            *a += b;
        }
        Ok(())
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
    /// (biases outside the weight-decay group). HyenaDNA names them `fc1`/`fc2`, MAD `l1`/`l2`.
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

/// Saved activations of [`Mlp`] as a zoo layer, with its backward scratch.
#[derive(Default)]
struct MlpCache {
    a: Vec<f32>,  // [M, I] biased pre-activation
    g: Vec<f32>,  // [M, I] gelu(a)
    dg: Vec<f32>, // [M, I] backward scratch
}

impl Layer for Mlp {
    fn kind(&self) -> &'static str {
        "mlp"
    }
    fn d_model(&self) -> usize {
        self.d
    }
    fn mixes_positions(&self) -> bool {
        false
    }
    /// MAD's init: weights PyTorch's `nn.Linear` default `U(±1/√fan_in)`, biases zero.
    fn init(&self, p: &mut [f32], rng: &mut StdRng) {
        init::linear_into(rng, self.w1.of_mut(p), self.d);
        self.b1.of_mut(p).fill(0.0);
        init::linear_into(rng, self.w2.of_mut(p), self.di);
        self.b2.of_mut(p).fill(0.0);
    }
    fn forward(
        &self,
        p: &[f32],
        x: &[f32],
        b: usize,
        l: usize,
        y: &mut [f32],
        cache: &mut Slot,
    ) -> Result<()> {
        let m = b * l;
        check_io(
            "mlp",
            self.d,
            b,
            l,
            &[("x [B, L, D]", x.len()), ("y [B, L, D]", y.len())],
        )?;
        let c = cache.get_or_default::<MlpCache>();
        c.a.resize(m * self.di, 0.0);
        c.g.resize(m * self.di, 0.0);
        Mlp::forward(self, p, x, None, m, &mut c.a, &mut c.g, y)
    }
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
    ) -> Result<()> {
        let m = b * l;
        check_io(
            "mlp backward",
            self.d,
            b,
            l,
            &[("x", x.len()), ("dy", dy.len()), ("dx", dx.len())],
        )?;
        let c = cache.get_mut::<MlpCache>("mlp")?;
        c.dg.resize(m * self.di, 0.0);
        Mlp::backward(self, p, dy, x, &c.a, &c.g, m, &mut c.dg, dx, g)
    }
}
