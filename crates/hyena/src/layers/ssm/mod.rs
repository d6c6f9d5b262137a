//! Plain (ungated) SSM sequence mixers for the operator zoo: one mixer, [`ConvMixer`], and
//! the way each kind makes its kernels ([`KernelGen`]): [`modal::Modal`] (kind `ssm`) and
//! [`crate::layers::rtf::RtfKernel`] (kind `rtf`).
//!
//! Both SSM layers of the zoo share one structure, MAD's "SSM without gating" baseline:
//!
//! ```text
//! u = in_proj(x)                      x, u: [B, L, D]   (Linear D→D with bias)
//! v[b, :, c] = k[c] * u[b, :, c] + skip[c] ⊙ u[b, :, c]   (causal, per channel, by FFT)
//! y = out_proj(v)                     y: [B, L, D]      (Linear D→D with bias)
//! ```
//!
//! The layers differ only in how the per-channel kernels `k [D, L]` and the skip `[D]` come from
//! their SSM parameters: [`ModalSsm`] (S4D-style diagonal complex SSM, Gu et al., "On the
//! Parameterization and Initialization of Diagonal State Space Models", arXiv 2206.11893), and
//! [`crate::layers::rtf::RtfLayer`] (the rational transfer function, Parnichkun et al., arXiv
//! 2405.06147; reference code `ruke1ire/RTF` `rtf.py`). No gate, no activation, no short
//! convolution: the mixer is linear in `x`, which is the point of the baseline. The long
//! convolution is [`FftConv`] (the numerics of safari's `fftconv_ref`), whose backward gives `dk`
//! and `du`; each layer then maps `dk` back to its own parameters.
//!
//!
//! The mixer's tensors are `in_proj.weight [D, D]`, `in_proj.bias [D]`, the kernel's, then
//! `out_proj.weight [D, D]`, `out_proj.bias [D]`; the projections start at PyTorch's
//! `nn.Linear` weight init with zero biases (MAD zeroes biases).

pub mod modal;

use rand::rngs::StdRng;

use crate::error::{Error, Result};
use crate::layers::init;
use crate::layers::layer::{check_io, Layer, Recurrent, Slot};
use crate::ops::fftconv::{FftConv, Spectra};
use crate::ops::linear::{linear_backward, linear_forward};
use crate::params::{check_params, many_mut, Vb, P};

pub use modal::{ModalConfig, ModalRecurrence, ModalSsm};

/// How an ungated SSM mixer makes its per-channel kernels from its own parameters.
pub trait KernelGen: Send + Sync + 'static {
    /// The name architecture strings use.
    const KIND: &'static str;
    /// Whether the mixer steps token by token ([`KernelGen::recurrence`]).
    const HAS_STEP: bool = false;
    /// Width `D`.
    fn d_model(&self) -> usize;
    /// Initial values of the kernel's tensors (drawn between the two projections).
    fn init(&self, p: &mut [f32], rng: &mut StdRng);
    /// The kernels `k [D, L]`.
    fn kernel(&self, p: &[f32], l: usize) -> Result<Vec<f32>>;
    /// The skip `[D]` added to the convolution (zero when the kernel carries it).
    fn skip(&self, p: &[f32]) -> Vec<f32>;
    /// Map `dk [D, L]` and `dskip [D]` onto the kernel's tensors, accumulating into `g`.
    fn backward(&self, p: &[f32], dk: &[f32], dskip: &[f32], l: usize, g: &mut [f32])
        -> Result<()>;
    /// The token-by-token form of the whole mixer with parameters `p` (kinds with
    /// [`KernelGen::HAS_STEP`]).
    fn recurrence(&self, _mixer: &ConvMixer<Self>, _p: &[f32]) -> Result<Slot>
    where
        Self: Sized,
    {
        Err(Error::config(
            Self::KIND,
            "step",
            "this layer has no recurrent form",
        ))
    }
    /// One step of that form (see [`KernelGen::recurrence`]).
    fn step(&self, _state: &mut Slot, _x: &[f32], _y: &mut [f32]) -> Result<()> {
        Err(Error::config(
            Self::KIND,
            "step",
            "this layer has no recurrent form",
        ))
    }
}

/// `y = out_proj(k * in_proj(x) + skip ⊙ in_proj(x))`, with kernels from `K`.
pub struct ConvMixer<K> {
    pub(crate) in_w: P,
    pub(crate) in_b: P,
    pub(crate) out_w: P,
    pub(crate) out_b: P,
    pub(crate) kern: K,
    conv: FftConv,
}

impl<K: std::fmt::Debug> std::fmt::Debug for ConvMixer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvMixer")
            .field("kernel", &self.kern)
            .finish()
    }
}

impl<K: KernelGen> ConvMixer<K> {
    /// The mixer of width `d` with the kernel that `kernel` registers under `vb`, between the
    /// projections (the tensors' order).
    pub(crate) fn build(
        d: usize,
        vb: &Vb<'_, '_>,
        kernel: impl FnOnce(&Vb<'_, '_>) -> Result<K>,
    ) -> Result<Self> {
        let in_w = vb.get(&[d, d], "in_proj.weight")?;
        let in_b = vb.no_decay().get(&[d], "in_proj.bias")?;
        let kern = kernel(vb)?;
        let out_w = vb.get(&[d, d], "out_proj.weight")?;
        let out_b = vb.no_decay().get(&[d], "out_proj.bias")?;
        Ok(ConvMixer {
            in_w,
            in_b,
            out_w,
            out_b,
            kern,
            conv: FftConv::new(),
        })
    }

    /// The kernels `k [D, L]` of the parameters `p`.
    pub fn kernel(&self, p: &[f32], l: usize) -> Result<Vec<f32>> {
        check_params(K::KIND, p, self.out_b)?;
        self.kern.kernel(p, l)
    }

    fn proj<'a>(&self, p: &'a [f32]) -> Proj<'a> {
        Proj {
            w_in: self.in_w.of(p),
            b_in: self.in_b.of(p),
            w_out: self.out_w.of(p),
            b_out: self.out_b.of(p),
        }
    }
}

impl<K: KernelGen> Layer for ConvMixer<K> {
    fn kind(&self) -> &'static str {
        K::KIND
    }
    fn d_model(&self) -> usize {
        self.kern.d_model()
    }
    fn mixes_positions(&self) -> bool {
        true
    }
    fn init(&self, p: &mut [f32], rng: &mut StdRng) {
        let d = self.kern.d_model();
        let [w, b] = many_mut(p, [self.in_w, self.in_b]);
        init_proj(w, b, d, rng);
        self.kern.init(p, rng);
        let [w, b] = many_mut(p, [self.out_w, self.out_b]);
        init_proj(w, b, d, rng);
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
        let d = self.kern.d_model();
        check_io(
            K::KIND,
            d,
            b,
            l,
            &[("x [B, L, D]", x.len()), ("y [B, L, D]", y.len())],
        )?;
        let k = self.kernel(p, l)?;
        let skip = self.kern.skip(p);
        mix_forward(
            &self.conv,
            &self.proj(p),
            d,
            x,
            (b, l),
            k,
            skip,
            y,
            cache.get_or_default::<MixCache>(),
        )
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
        let d = self.kern.d_model();
        check_io(
            K::KIND,
            d,
            b,
            l,
            &[
                ("x [B, L, D]", x.len()),
                ("dy [B, L, D]", dy.len()),
                ("dx [B, L, D]", dx.len()),
            ],
        )?;
        check_params(K::KIND, p, self.out_b)?;
        crate::error::check_len(K::KIND, "gradient buffer", g.len(), p.len())?;
        let c = cache.get::<MixCache>(K::KIND)?;
        let (dk, dskip) = {
            let [w_in, b_in, w_out, b_out] =
                many_mut(g, [self.in_w, self.in_b, self.out_w, self.out_b]);
            mix_backward(
                &self.conv,
                &self.proj(p),
                d,
                x,
                dy,
                (b, l),
                c,
                dx,
                ProjGrad {
                    w_in,
                    b_in,
                    w_out,
                    b_out,
                },
            )?
        };
        self.kern.backward(p, &dk, &dskip, l, g)
    }
    fn recurrent(&self) -> Option<&dyn Recurrent> {
        if K::HAS_STEP {
            Some(self)
        } else {
            None
        }
    }
}

impl<K: KernelGen> Recurrent for ConvMixer<K> {
    fn start(&self, p: &[f32]) -> Result<Slot> {
        check_params(K::KIND, p, self.out_b)?;
        self.kern.recurrence(self, p)
    }
    fn step(&self, _p: &[f32], state: &mut Slot, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.kern.step(state, x, y)
    }
}

// ---------------------------------------------------------------------------------------------
// The shared mixer: projections around a per-channel causal long convolution.
// ---------------------------------------------------------------------------------------------

/// Saved activations of the shared mixer (and thus of both SSM layers).
#[derive(Default)]
pub(crate) struct MixCache {
    /// `in_proj` output, channel-major `[B, D, L]`.
    u_t: Vec<f32>,
    /// Convolution output `[B·L, D]` (the input of `out_proj`).
    v: Vec<f32>,
    /// Kernels `[D, L]` used by the forward.
    k: Vec<f32>,
    /// Skip `[D]` used by the forward.
    skip: Vec<f32>,
    spectra: Spectra,
    /// `(B, L)` of the forward.
    shape: (usize, usize),
}

/// The projection weights of a mixer: `in_proj` and `out_proj`, each `W [D, D]`, `b [D]`.
pub(crate) struct Proj<'a> {
    pub w_in: &'a [f32],
    pub b_in: &'a [f32],
    pub w_out: &'a [f32],
    pub b_out: &'a [f32],
}

/// Gradient slices of [`Proj`] (accumulated into).
pub(crate) struct ProjGrad<'a> {
    pub w_in: &'a mut [f32],
    pub b_in: &'a mut [f32],
    pub w_out: &'a mut [f32],
    pub b_out: &'a mut [f32],
}

/// `[B, L, D]` → `[B, D, L]`.
fn btd_to_bdt(src: &[f32], b: usize, l: usize, d: usize, dst: &mut [f32]) {
    for bi in 0..b {
        let s = &src[bi * l * d..(bi + 1) * l * d];
        let o = &mut dst[bi * l * d..(bi + 1) * l * d];
        for t in 0..l {
            for c in 0..d {
                o[c * l + t] = s[t * d + c];
            }
        }
    }
}

/// `[B, D, L]` → `[B, L, D]`.
fn bdt_to_btd(src: &[f32], b: usize, l: usize, d: usize, dst: &mut [f32]) {
    for bi in 0..b {
        let s = &src[bi * l * d..(bi + 1) * l * d];
        let o = &mut dst[bi * l * d..(bi + 1) * l * d];
        for c in 0..d {
            for t in 0..l {
                o[t * d + c] = s[c * l + t];
            }
        }
    }
}

/// Forward of the mixer: `y = out_proj(k * u + skip ⊙ u)`, `u = in_proj(x)`; fills `c`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mix_forward(
    conv: &FftConv,
    pr: &Proj<'_>,
    d: usize,
    x: &[f32],
    (b, l): (usize, usize),
    k: Vec<f32>,
    skip: Vec<f32>,
    y: &mut [f32],
    c: &mut MixCache,
) -> Result<()> {
    let m = b * l;
    let mut tmp = vec![0.0f32; m * d];
    linear_forward(x, pr.w_in, Some(pr.b_in), m, d, d, &mut tmp)?;
    c.u_t.resize(m * d, 0.0);
    btd_to_bdt(&tmp, b, l, d, &mut c.u_t);
    conv.forward(&c.u_t, &k, &skip, (b, d, l), &mut tmp, Some(&mut c.spectra))?;
    c.v.resize(m * d, 0.0);
    bdt_to_btd(&tmp, b, l, d, &mut c.v);
    linear_forward(&c.v, pr.w_out, Some(pr.b_out), m, d, d, y)?;
    c.k = k;
    c.skip = skip;
    c.shape = (b, l);
    Ok(())
}

/// Backward of [`mix_forward`]: overwrites `dx`, accumulates the projection gradients, and
/// returns `(dk [D, L], dskip [D])` for the layer to map onto its SSM parameters.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mix_backward(
    conv: &FftConv,
    pr: &Proj<'_>,
    d: usize,
    x: &[f32],
    dy: &[f32],
    (b, l): (usize, usize),
    c: &MixCache,
    dx: &mut [f32],
    g: ProjGrad<'_>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    if c.shape != (b, l) || c.v.len() != b * l * d {
        return Err(Error::config(
            "ssm backward",
            format!("(B, L) = ({b}, {l})"),
            format!(
                "the cache holds a forward at (B, L) = {:?}; run forward on the same input",
                c.shape
            ),
        ));
    }
    let m = b * l;
    let mut tmp = vec![0.0f32; m * d];
    linear_backward(
        dy,
        &c.v,
        pr.w_out,
        (m, d, d),
        Some(&mut tmp),
        g.w_out,
        Some(g.b_out),
    )?;
    let mut dv_t = vec![0.0f32; m * d];
    btd_to_bdt(&tmp, b, l, d, &mut dv_t);
    let mut dk = vec![0.0f32; d * l];
    let mut dskip = vec![0.0f32; d];
    conv.backward(
        &dv_t,
        &c.u_t,
        &c.k,
        &c.skip,
        (b, d, l),
        Some(&c.spectra),
        &mut tmp,
        &mut dk,
        &mut dskip,
    )?;
    bdt_to_btd(&tmp, b, l, d, &mut dv_t);
    linear_backward(&dv_t, x, pr.w_in, (m, d, d), Some(dx), g.w_in, Some(g.b_in))?;
    Ok((dk, dskip))
}

/// `nn.Linear(D, D)` init used by both SSM layers: weight `U(±1/sqrt(D))`, bias zero.
pub(crate) fn init_proj(w: &mut [f32], bias: &mut [f32], d: usize, rng: &mut StdRng) {
    w.copy_from_slice(&init::uniform(rng, d * d, 1.0 / (d.max(1) as f32).sqrt()));
    bias.fill(0.0);
}
