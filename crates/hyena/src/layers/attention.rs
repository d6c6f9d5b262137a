//! Causal multi-head softmax attention with rotary position embeddings (RoPE) and an optional
//! sliding window: the `attention` / `mh-attention` layers of the MAD zoo (mad-lab
//! `configs/layers/attention.yml`: one head, rotary over its whole width;
//! `configs/layers/mh-attention.yml`: 16 heads, rotary over 8 dimensions of each) and the
//! attention block of StripedHyena / Evo 2 (vortex's MHA: softmax scale `1/sqrt(head_dim)`,
//! rotary embeddings; arXiv 2503.01868).
//!
//! RoPE follows RoFormer (Su et al., arXiv 2104.09864): each query and key is rotated by an
//! angle proportional to its position, so `q_t · k_s` depends on `t − s` only.
//!
//! # Conventions
//! - `Wqkv: [3D, D]` produces `[q | k | v]` (all Q rows, then all K, then all V, the layout
//!   vortex permutes savanna's weights into); head `h` owns dims `h·hd .. (h+1)·hd` of each.
//! - **Rotary pairing** is GPT-NeoX's "rotate_half": of each head's first `rotary_dim` dims,
//!   dim `i` is paired with dim `i + rotary_dim/2` (`i < rotary_dim/2`), rotated by the angle
//!   `pos · base^(−2i/rotary_dim)`:
//!   `x'_i = x_i cos − x_{i+r/2} sin`, `x'_{i+r/2} = x_{i+r/2} cos + x_i sin`.
//!   Dims `rotary_dim .. head_dim` pass through. (GPT-J / the RoFormer paper pair adjacent dims
//!   `(2i, 2i+1)` instead; the two are equal up to a fixed permutation of the head dims, which
//!   a checkpoint importer would have to apply.) Angles are computed in f64, then rounded.
//! - **Mask**: position `t` attends to `s` with `t − window < s ≤ t` (`window = None`: all
//!   `s ≤ t`). `window = Some(1)` attends to itself only.
//!
//! # Memory and compute
//! The `[L, L]` probabilities are **not** stored: the forward keeps each row's log-sum-exp
//! (`B·H·L` floats) and the backward recomputes `P = exp(S/√hd − lse)` block by block (one
//! extra `Q Kᵀ` product, ~1/6 more FLOPs) so that MAD-size batches at `L = 1024` do not need
//! `B·H·L²` floats. Work is split over `(batch, head)` with rayon; inside a task, rows are
//! processed in blocks of [`BLOCK`] queries against only the keys the block can see (the
//! causal triangle and, with a window, the band), so a window `w ≪ L` costs `O(L·w)`.

use rand::rngs::StdRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{check_len, Error, Result};
use crate::layers::init;
use crate::layers::layer::{Layer, Slot};
use crate::ops::linear::{linear_backward, linear_forward, matmul, MatMut, MatRef};
use crate::params::{check_params, many_mut, Vb, P};

/// Query rows per block inside one `(batch, head)` task.
pub const BLOCK: usize = 64;

fn default_rope_base() -> f64 {
    10000.0
}

fn default_true() -> bool {
    true
}

/// Configuration of an [`Attention`] layer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AttentionConfig {
    /// Model width `D`.
    pub d_model: usize,
    /// Number of heads `H`; `head_dim = D / H`.
    pub n_heads: usize,
    /// Dims of each head's q and k that are rotated (even, `≤ head_dim`; 0 disables RoPE).
    pub rotary_dim: usize,
    /// RoPE base `b` of the frequencies `b^(−2i/rotary_dim)`.
    #[serde(default = "default_rope_base")]
    pub rope_base: f64,
    /// Sliding window: position `t` attends to `s` with `t − window < s ≤ t`. `None`: full causal.
    #[serde(default)]
    pub window: Option<usize>,
    /// Biases on `Wqkv` and `out_proj`.
    #[serde(default = "default_true")]
    pub bias: bool,
}

impl AttentionConfig {
    /// MAD's `attention` layer: 1 head, rotary over the whole head (mad-lab
    /// `configs/layers/attention.yml`).
    pub fn mad_attention(d_model: usize) -> Self {
        AttentionConfig {
            d_model,
            n_heads: 1,
            rotary_dim: d_model,
            rope_base: 10000.0,
            window: None,
            bias: true,
        }
    }

    /// MAD's `mh-attention` layer: 16 heads, rotary dim 8 (mad-lab
    /// `configs/layers/mh-attention.yml`).
    pub fn mad_mh_attention(d_model: usize) -> Self {
        AttentionConfig {
            d_model,
            n_heads: 16,
            rotary_dim: 8,
            rope_base: 10000.0,
            window: None,
            bias: true,
        }
    }

    /// `D / H`.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }

    /// Check every field; an [`Error::Config`] names the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.d_model == 0 {
            return Err(Error::config("attention.d_model", 0, "must be positive"));
        }
        if self.n_heads == 0 {
            return Err(Error::config("attention.n_heads", 0, "must be positive"));
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(Error::config(
                "attention.n_heads",
                self.n_heads,
                format!("must divide d_model = {}", self.d_model),
            ));
        }
        let hd = self.head_dim();
        if !self.rotary_dim.is_multiple_of(2) || self.rotary_dim > hd {
            return Err(Error::config(
                "attention.rotary_dim",
                self.rotary_dim,
                format!("must be even and at most head_dim = {hd} (0 disables RoPE)"),
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return Err(Error::config(
                "attention.rope_base",
                self.rope_base,
                "must be a positive finite number (10000 is the usual value)",
            ));
        }
        if self.window == Some(0) {
            return Err(Error::config(
                "attention.window",
                0,
                "must be at least 1 (1 = attend to the current position only), or None",
            ));
        }
        Ok(())
    }
}

/// `cos` and `sin` of the RoPE angles for positions `offset .. offset + l`: two `[l, rotary_dim/2]`
/// tables. Computed in f64 (the angle grows with the position), stored in f32.
pub fn rope_tables(l: usize, rotary_dim: usize, base: f64, offset: usize) -> (Vec<f32>, Vec<f32>) {
    let half = rotary_dim / 2;
    let mut cos = Vec::with_capacity(l * half);
    let mut sin = Vec::with_capacity(l * half);
    for t in 0..l {
        let pos = (t + offset) as f64;
        for i in 0..half {
            let inv_freq = base.powf(-((2 * i) as f64) / rotary_dim as f64);
            let (s, c) = (pos * inv_freq).sin_cos();
            cos.push(c as f32);
            sin.push(s as f32);
        }
    }
    (cos, sin)
}

/// Rotate one head vector `v [head_dim]` in place by the angles of one table row
/// (`cos, sin: [rotary_dim/2]`); `inverse` rotates by `−θ` (the transpose, used by the backward).
#[inline]
fn rotate(v: &mut [f32], cos: &[f32], sin: &[f32], inverse: bool) {
    let half = cos.len();
    let (a, b) = v.split_at_mut(half);
    for i in 0..half {
        let (c, s) = (cos[i], if inverse { -sin[i] } else { sin[i] });
        let (x1, x2) = (a[i], b[i]);
        a[i] = x1 * c - x2 * s;
        b[i] = x2 * c + x1 * s;
    }
}

/// Apply RoPE in place to `x: [N, L, n_heads, head_dim]` (any `N ≥ 0`), position `t` of each
/// sequence getting the angle of position `t + offset`. Convention: see the module docs
/// (GPT-NeoX rotate_half pairing `(i, i + rotary_dim/2)`).
pub fn rope_apply(
    x: &mut [f32],
    l: usize,
    n_heads: usize,
    head_dim: usize,
    rotary_dim: usize,
    base: f64,
    offset: usize,
) -> Result<()> {
    const OP: &str = "rope_apply";
    if !rotary_dim.is_multiple_of(2) || rotary_dim > head_dim {
        return Err(Error::config(
            "rotary_dim",
            rotary_dim,
            format!("must be even and at most head_dim = {head_dim}"),
        ));
    }
    let row = n_heads * head_dim;
    if l == 0 || row == 0 {
        return check_len(OP, "x [N, L, H, hd]", x.len(), 0);
    }
    if !x.len().is_multiple_of(l * row) {
        return Err(Error::shape(
            OP,
            "x [N, L, H, hd]",
            format!("a multiple of L·H·hd = {}", l * row),
            format!("{} elements", x.len()),
        ));
    }
    if rotary_dim == 0 {
        return Ok(());
    }
    let half = rotary_dim / 2;
    let (cos, sin) = rope_tables(l, rotary_dim, base, offset);
    for seq in x.chunks_exact_mut(l * row) {
        for (t, r) in seq.chunks_exact_mut(row).enumerate() {
            let (c, s) = (
                &cos[t * half..(t + 1) * half],
                &sin[t * half..(t + 1) * half],
            );
            for head in r.chunks_exact_mut(head_dim) {
                rotate(&mut head[..rotary_dim], c, s, false);
            }
        }
    }
    Ok(())
}

/// The causal-and-window mask: the first key position that query `t` sees (it sees `lo ..= t`).
#[inline]
fn first_key(t: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (t + 1).saturating_sub(w))
}

/// Causal multi-head attention with RoPE (see the module docs). Tensors `Wqkv.weight [3D, D]`,
/// `Wqkv.bias [3D]` (with `bias`), `out_proj.weight [D, D]`, `out_proj.bias [D]` (with `bias`).
#[derive(Clone, Debug)]
pub struct Attention {
    pub cfg: AttentionConfig,
    wqkv: P,
    bqkv: Option<P>,
    wout: P,
    bout: Option<P>,
}

/// Saved activations of [`Attention::forward`].
#[derive(Default)]
pub struct AttentionCache {
    /// Rotated queries, head-major `[B, H, L, hd]`.
    q: Vec<f32>,
    /// Rotated keys `[B, H, L, hd]`.
    k: Vec<f32>,
    /// Values `[B, H, L, hd]`.
    v: Vec<f32>,
    /// Log-sum-exp of each scaled score row `[B, H, L]` (to recompute `P` in the backward).
    lse: Vec<f32>,
    /// Attention output before `out_proj`, `[B, L, D]` (the input of `out_proj`).
    o: Vec<f32>,
    /// The `(b, l)` the cache was filled for.
    shape: (usize, usize),
}

/// The parameter tensors of one layer, borrowed from the flat buffer.
struct Views<'a> {
    wqkv: &'a [f32],
    bqkv: Option<&'a [f32]>,
    wout: &'a [f32],
    bout: Option<&'a [f32]>,
}

impl Attention {
    /// Build the layer, its tensors registered under `vb`; an [`Error::Config`] if the
    /// configuration is invalid.
    pub fn new(cfg: AttentionConfig, vb: &Vb<'_, '_>) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.d_model;
        let wqkv = vb.get(&[3 * d, d], "Wqkv.weight")?;
        let bqkv = if cfg.bias {
            Some(vb.no_decay().get(&[3 * d], "Wqkv.bias")?)
        } else {
            None
        };
        let wout = vb.get(&[d, d], "out_proj.weight")?;
        let bout = if cfg.bias {
            Some(vb.no_decay().get(&[d], "out_proj.bias")?)
        } else {
            None
        };
        Ok(Attention {
            cfg,
            wqkv,
            bqkv,
            wout,
            bout,
        })
    }

    fn views<'a>(&self, p: &'a [f32]) -> Result<Views<'a>> {
        check_params("attention", p, self.bout.unwrap_or(self.wout))?;
        Ok(Views {
            wqkv: self.wqkv.of(p),
            bqkv: self.bqkv.map(|h| h.of(p)),
            wout: self.wout.of(p),
            bout: self.bout.map(|h| h.of(p)),
        })
    }

    /// Whether to keep each `(b, h)` task's products single-threaded: yes when the tasks alone
    /// fill the thread pool (gemm's own fork/join would then only add synchronisation).
    fn serial_tasks(&self, b: usize) -> bool {
        b * self.cfg.n_heads >= rayon::current_num_threads()
    }
}

/// Run `f` single-threaded for gemm when `serial`.
fn maybe_serial<R>(serial: bool, f: impl FnOnce() -> R) -> R {
    if serial {
        crate::ops::serial(f)
    } else {
        f()
    }
}

/// What every `(batch, head)` task shares: sequence length, head width, score scale, window.
#[derive(Clone, Copy)]
struct Geometry {
    l: usize,
    hd: usize,
    scale: f32,
    window: Option<usize>,
}

/// One `(batch, head)` of the forward: `q, k, v: [L, hd]` (rotated), writes `o: [L, hd]` and
/// `lse: [L]`. `s_buf` is scratch of at least `BLOCK · L` floats.
fn head_forward(
    (q, k, v): (&[f32], &[f32], &[f32]),
    geo: Geometry,
    o: &mut [f32],
    lse: &mut [f32],
    s_buf: &mut [f32],
) -> Result<()> {
    let Geometry {
        l,
        hd,
        scale,
        window,
    } = geo;
    for t0 in (0..l).step_by(BLOCK) {
        let t1 = (t0 + BLOCK).min(l);
        let bs = t1 - t0;
        // Keys the block can see: from the first key of its first row to its last row.
        let c0 = first_key(t0, window);
        let wc = t1 - c0;
        let s = &mut s_buf[..bs * wc];
        // S = Q_blk · K_blkᵀ   [bs, wc]
        matmul(
            MatMut::rm(s, bs, wc),
            MatRef::rm(&q[t0 * hd..t1 * hd], bs, hd),
            MatRef::tr(&k[c0 * hd..t1 * hd], hd, wc),
            false,
        )?;
        // Masked softmax of each row, in place; masked entries become exactly 0.
        for (r, row) in s.chunks_exact_mut(wc).enumerate() {
            let t = t0 + r;
            let (lo, hi) = (first_key(t, window) - c0, t - c0 + 1);
            let mut m = f32::NEG_INFINITY;
            for x in &mut row[lo..hi] {
                *x *= scale;
                m = m.max(*x);
            }
            let mut sum = 0.0f32;
            for x in &mut row[lo..hi] {
                *x = (*x - m).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            for x in &mut row[lo..hi] {
                *x *= inv;
            }
            row[..lo].fill(0.0);
            row[hi..].fill(0.0);
            lse[t] = m + sum.ln();
        }
        // O_blk = P_blk · V_blk   [bs, hd]
        matmul(
            MatMut::rm(&mut o[t0 * hd..t1 * hd], bs, hd),
            MatRef::rm(s, bs, wc),
            MatRef::rm(&v[c0 * hd..t1 * hd], wc, hd),
            false,
        )?;
    }
    Ok(())
}

/// Inputs of one `(batch, head)` backward task, all `[L, hd]` except `lse: [L]`.
struct HeadSaved<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    lse: &'a [f32],
    d_o: &'a [f32],
}

/// One `(batch, head)` of the backward: writes `dq`, `dk`, `dv: [L, hd]` (gradients w.r.t. the
/// rotated q, k and v). `p_buf`, `dp_buf`: scratch of at least `BLOCK · L` floats each.
fn head_backward(
    sv: &HeadSaved<'_>,
    geo: Geometry,
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    p_buf: &mut [f32],
    dp_buf: &mut [f32],
) -> Result<()> {
    let Geometry {
        l,
        hd,
        scale,
        window,
    } = geo;
    // dK and dV gather contributions of several row blocks: accumulate from zero.
    dk.fill(0.0);
    dv.fill(0.0);
    for t0 in (0..l).step_by(BLOCK) {
        let t1 = (t0 + BLOCK).min(l);
        let bs = t1 - t0;
        let c0 = first_key(t0, window);
        let wc = t1 - c0;
        let (p, dp) = (&mut p_buf[..bs * wc], &mut dp_buf[..bs * wc]);
        let (q_blk, do_blk) = (&sv.q[t0 * hd..t1 * hd], &sv.d_o[t0 * hd..t1 * hd]);
        let (k_blk, v_blk) = (&sv.k[c0 * hd..t1 * hd], &sv.v[c0 * hd..t1 * hd]);
        // Recompute P = exp(Q Kᵀ · scale − lse) on the visible entries.
        matmul(
            MatMut::rm(p, bs, wc),
            MatRef::rm(q_blk, bs, hd),
            MatRef::tr(k_blk, hd, wc),
            false,
        )?;
        // dP = dO · Vᵀ   [bs, wc]
        matmul(
            MatMut::rm(dp, bs, wc),
            MatRef::rm(do_blk, bs, hd),
            MatRef::tr(v_blk, hd, wc),
            false,
        )?;
        for (r, (prow, dprow)) in p
            .chunks_exact_mut(wc)
            .zip(dp.chunks_exact_mut(wc))
            .enumerate()
        {
            let t = t0 + r;
            let (lo, hi) = (first_key(t, window) - c0, t - c0 + 1);
            let m = sv.lse[t];
            let mut rowdot = 0.0f32;
            for (x, &g) in prow[lo..hi].iter_mut().zip(&dprow[lo..hi]) {
                *x = (*x * scale - m).exp();
                rowdot += *x * g;
            }
            // Softmax backward: dS = P ⊙ (dP − Σ_s P dP), times the score scale (chain rule
            // through S = scale · q·k). Stored in place of dP.
            for (g, &x) in dprow[lo..hi].iter_mut().zip(&prow[lo..hi]) {
                *g = x * (*g - rowdot) * scale;
            }
            for buf in [&mut *prow, &mut *dprow] {
                buf[..lo].fill(0.0);
                buf[hi..].fill(0.0);
            }
        }
        let ds: &[f32] = dp;
        // dV_blk += P_blkᵀ · dO_blk   [wc, hd]
        matmul(
            MatMut::rm(&mut dv[c0 * hd..t1 * hd], wc, hd),
            MatRef::tr(p, wc, bs),
            MatRef::rm(do_blk, bs, hd),
            true,
        )?;
        // dQ_blk = dS · K_blk   [bs, hd] (each query row belongs to one block only)
        matmul(
            MatMut::rm(&mut dq[t0 * hd..t1 * hd], bs, hd),
            MatRef::rm(ds, bs, wc),
            MatRef::rm(k_blk, wc, hd),
            false,
        )?;
        // dK_blk += dSᵀ · Q_blk   [wc, hd]
        matmul(
            MatMut::rm(&mut dk[c0 * hd..t1 * hd], wc, hd),
            MatRef::tr(ds, wc, bs),
            MatRef::rm(q_blk, bs, hd),
            true,
        )?;
    }
    Ok(())
}

impl Layer for Attention {
    fn kind(&self) -> &'static str {
        "attn"
    }

    fn d_model(&self) -> usize {
        self.cfg.d_model
    }

    fn mixes_positions(&self) -> bool {
        true
    }

    /// `nn.Linear` default weights `U(±1/√D)`; biases zero (MAD zeroes every Linear bias).
    fn init(&self, p: &mut [f32], rng: &mut StdRng) {
        let d = self.cfg.d_model;
        for (w, b) in [(self.wqkv, self.bqkv), (self.wout, self.bout)] {
            let (v, _) = init::linear(rng, w.len() / d, d, false);
            w.of_mut(p).copy_from_slice(&v);
            if let Some(b) = b {
                b.of_mut(p).fill(0.0);
            }
        }
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
        const OP: &str = "attention forward";
        let (d, h, hd) = (self.cfg.d_model, self.cfg.n_heads, self.cfg.head_dim());
        let (r, n) = (self.cfg.rotary_dim, b * l);
        check_len(OP, "x [B, L, D]", x.len(), n * d)?;
        check_len(OP, "y [B, L, D]", y.len(), n * d)?;
        let pv = self.views(p)?;
        let c = cache.get_or_default::<AttentionCache>();
        c.shape = (b, l);
        if n == 0 {
            return Ok(());
        }
        // qkv = x Wqkvᵀ + b   [B, L, 3D]
        let mut qkv = vec![0.0; n * 3 * d];
        linear_forward(x, pv.wqkv, pv.bqkv, n, d, 3 * d, &mut qkv)?;
        let (cos, sin) = rope_tables(l, r, self.cfg.rope_base, 0);
        for buf in [&mut c.q, &mut c.k, &mut c.v] {
            buf.resize(n * d, 0.0);
        }
        c.lse.resize(b * h * l, 0.0);
        let mut o_h = vec![0.0; n * d]; // [B, H, L, hd]
        let geo = Geometry {
            l,
            hd,
            scale: 1.0 / (hd as f32).sqrt(),
            window: self.cfg.window,
        };
        let serial = self.serial_tasks(b);
        let lh = l * hd;
        c.q.par_chunks_mut(lh)
            .zip(c.k.par_chunks_mut(lh))
            .zip(c.v.par_chunks_mut(lh))
            .zip(o_h.par_chunks_mut(lh))
            .zip(c.lse.par_chunks_mut(l))
            .enumerate()
            .try_for_each(|(bh, ((((q, k), v), o), lse))| {
                let (bi, hi) = (bh / h, bh % h);
                // Gather this head's q, k, v from the [B, L, 3D] rows, rotating q and k.
                for t in 0..l {
                    let row = &qkv[(bi * l + t) * 3 * d..(bi * l + t + 1) * 3 * d];
                    let (dst, src) = (t * hd..(t + 1) * hd, hi * hd..(hi + 1) * hd);
                    q[dst.clone()].copy_from_slice(&row[src.clone()]);
                    k[dst.clone()].copy_from_slice(&row[d + src.start..d + src.end]);
                    v[dst.clone()].copy_from_slice(&row[2 * d + src.start..2 * d + src.end]);
                    if r > 0 {
                        let (ct, st) = (
                            &cos[t * r / 2..(t + 1) * r / 2],
                            &sin[t * r / 2..(t + 1) * r / 2],
                        );
                        rotate(&mut q[dst.start..dst.start + r], ct, st, false);
                        rotate(&mut k[dst.start..dst.start + r], ct, st, false);
                    }
                }
                let mut s_buf = vec![0.0; BLOCK.min(l) * l];
                maybe_serial(serial, || head_forward((q, k, v), geo, o, lse, &mut s_buf))
            })?;
        // Heads back to rows: o [B, L, D].
        c.o.resize(n * d, 0.0);
        c.o.par_chunks_mut(d).enumerate().for_each(|(row, dst)| {
            let (bi, t) = (row / l, row % l);
            for hi in 0..h {
                let src = ((bi * h + hi) * l + t) * hd;
                dst[hi * hd..(hi + 1) * hd].copy_from_slice(&o_h[src..src + hd]);
            }
        });
        // y = o W_outᵀ + b   [B, L, D]
        linear_forward(&c.o, pv.wout, pv.bout, n, d, d, y)
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
        const OP: &str = "attention backward";
        let (d, h, hd) = (self.cfg.d_model, self.cfg.n_heads, self.cfg.head_dim());
        let (r, n) = (self.cfg.rotary_dim, b * l);
        check_len(OP, "x [B, L, D]", x.len(), n * d)?;
        check_len(OP, "dy [B, L, D]", dy.len(), n * d)?;
        check_len(OP, "dx [B, L, D]", dx.len(), n * d)?;
        check_len(OP, "gradient", g.len(), p.len())?;
        let pv = self.views(p)?;
        let c = cache.get::<AttentionCache>("attention")?;
        if c.shape != (b, l) {
            return Err(Error::shape(
                OP,
                "cache (B, L)",
                format!("({b}, {l})"),
                format!("{:?} (the forward ran on another shape)", c.shape),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        // The gradient tensors, disjoint slices of `g` (both biases or neither).
        let (g_wqkv, g_bqkv, g_wout, g_bout) = match (self.bqkv, self.bout) {
            (Some(bq), Some(bo)) => {
                let [a, b, c, e] = many_mut(g, [self.wqkv, bq, self.wout, bo]);
                (a, Some(b), c, Some(e))
            }
            _ => {
                let [a, c] = many_mut(g, [self.wqkv, self.wout]);
                (a, None, c, None)
            }
        };

        // out_proj: d_o = dy W_out   [B, L, D]; dW_out += dyᵀ o; db_out += Σ dy.
        let mut d_o = vec![0.0; n * d];
        linear_backward(dy, &c.o, pv.wout, (n, d, d), Some(&mut d_o), g_wout, g_bout)?;

        let (cos, sin) = rope_tables(l, r, self.cfg.rope_base, 0);
        let (mut dq, mut dk, mut dv) = (vec![0.0; n * d], vec![0.0; n * d], vec![0.0; n * d]);
        let geo = Geometry {
            l,
            hd,
            scale: 1.0 / (hd as f32).sqrt(),
            window: self.cfg.window,
        };
        let serial = self.serial_tasks(b);
        let lh = l * hd;
        dq.par_chunks_mut(lh)
            .zip(dk.par_chunks_mut(lh))
            .zip(dv.par_chunks_mut(lh))
            .enumerate()
            .try_for_each(|(bh, ((dq, dk), dv))| {
                let (bi, hi) = (bh / h, bh % h);
                // This head's dO, gathered from the [B, L, D] rows.
                let mut d_oh = vec![0.0; lh];
                for t in 0..l {
                    let src = (bi * l + t) * d + hi * hd;
                    d_oh[t * hd..(t + 1) * hd].copy_from_slice(&d_o[src..src + hd]);
                }
                let sv = HeadSaved {
                    q: &c.q[bh * lh..(bh + 1) * lh],
                    k: &c.k[bh * lh..(bh + 1) * lh],
                    v: &c.v[bh * lh..(bh + 1) * lh],
                    lse: &c.lse[bh * l..(bh + 1) * l],
                    d_o: &d_oh,
                };
                let mut p_buf = vec![0.0; BLOCK.min(l) * l];
                let mut dp_buf = vec![0.0; BLOCK.min(l) * l];
                maybe_serial(serial, || {
                    head_backward(
                        &sv,
                        geo,
                        (&mut *dq, &mut *dk, &mut *dv),
                        &mut p_buf,
                        &mut dp_buf,
                    )
                })?;
                // RoPE's transpose is the rotation by −θ: gradients w.r.t. the unrotated q, k.
                if r > 0 {
                    for t in 0..l {
                        let (ct, st) = (
                            &cos[t * r / 2..(t + 1) * r / 2],
                            &sin[t * r / 2..(t + 1) * r / 2],
                        );
                        rotate(&mut dq[t * hd..t * hd + r], ct, st, true);
                        rotate(&mut dk[t * hd..t * hd + r], ct, st, true);
                    }
                }
                Ok::<(), Error>(())
            })?;
        // Heads back into [B, L, 3D] rows of dqkv.
        let mut dqkv = vec![0.0; n * 3 * d];
        dqkv.par_chunks_mut(3 * d)
            .enumerate()
            .for_each(|(row, dst)| {
                let (bi, t) = (row / l, row % l);
                for hi in 0..h {
                    let src = ((bi * h + hi) * l + t) * hd;
                    let c0 = hi * hd;
                    dst[c0..c0 + hd].copy_from_slice(&dq[src..src + hd]);
                    dst[d + c0..d + c0 + hd].copy_from_slice(&dk[src..src + hd]);
                    dst[2 * d + c0..2 * d + c0 + hd].copy_from_slice(&dv[src..src + hd]);
                }
            });
        // Wqkv: dx = dqkv Wqkv (overwrites); dWqkv += dqkvᵀ x; dbqkv += Σ dqkv.
        linear_backward(&dqkv, x, pv.wqkv, (n, d, 3 * d), Some(dx), g_wqkv, g_bqkv)
    }
}

/// Slow, obviously-correct references (plain loops in f64, no gemm), for the tests.
pub mod reference {
    use super::Attention;
    use crate::error::{check_len, Result};

    /// `y [B, L, D]` of `layer` with the parameters `p` on `x [B, L, D]`, every sum in f64 and
    /// RoPE computed from f64 angles.
    pub fn attention_reference(
        layer: &Attention,
        p: &[f32],
        x: &[f32],
        b: usize,
        l: usize,
    ) -> Result<Vec<f32>> {
        let cfg = &layer.cfg;
        let pv = layer.views(p)?;
        let (d, h, hd, r) = (cfg.d_model, cfg.n_heads, cfg.head_dim(), cfg.rotary_dim);
        check_len("attention reference", "x [B, L, D]", x.len(), b * l * d)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut y = vec![0.0f32; b * l * d];
        for bi in 0..b {
            // qkv[t][j] for j in 0..3D.
            let mut qkv = vec![vec![0.0f64; 3 * d]; l];
            for (t, row) in qkv.iter_mut().enumerate() {
                for (j, out) in row.iter_mut().enumerate() {
                    let mut acc = pv.bqkv.map_or(0.0, |bb| bb[j] as f64);
                    for i in 0..d {
                        acc += x[(bi * l + t) * d + i] as f64 * pv.wqkv[j * d + i] as f64;
                    }
                    *out = acc;
                }
            }
            // RoPE on q (offset 0) and k (offset D) of every head.
            for (t, row) in qkv.iter_mut().enumerate() {
                for base_off in [0, d] {
                    for hi in 0..h {
                        let v = &mut row[base_off + hi * hd..base_off + (hi + 1) * hd];
                        for i in 0..r / 2 {
                            let theta = t as f64 * cfg.rope_base.powf(-2.0 * i as f64 / r as f64);
                            let (x1, x2) = (v[i], v[i + r / 2]);
                            v[i] = x1 * theta.cos() - x2 * theta.sin();
                            v[i + r / 2] = x2 * theta.cos() + x1 * theta.sin();
                        }
                    }
                }
            }
            // Per head: masked softmax(q·k · scale) · v.
            let mut o = vec![vec![0.0f64; d]; l];
            for hi in 0..h {
                for t in 0..l {
                    let visible: Vec<usize> = (0..=t)
                        .filter(|&s| cfg.window.is_none_or(|w| s + w > t))
                        .collect();
                    let scores: Vec<f64> = visible
                        .iter()
                        .map(|&s| {
                            (0..hd)
                                .map(|i| qkv[t][hi * hd + i] * qkv[s][d + hi * hd + i])
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (&s, &w) in visible.iter().zip(&e) {
                        for i in 0..hd {
                            o[t][hi * hd + i] += w / z * qkv[s][2 * d + hi * hd + i];
                        }
                    }
                }
            }
            for t in 0..l {
                for j in 0..d {
                    let mut acc = pv.bout.map_or(0.0, |bb| bb[j] as f64);
                    for i in 0..d {
                        acc += o[t][i] * pv.wout[j * d + i] as f64;
                    }
                    y[(bi * l + t) * d + j] = acc as f32;
                }
            }
        }
        Ok(y)
    }
}
