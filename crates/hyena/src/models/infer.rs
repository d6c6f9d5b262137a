//! Memory-lean inference for one long sequence: hidden states (embeddings) and per-base
//! log-likelihoods of a HyenaDNA model at up to a million bases on a CPU.
//!
//! The training forward ([`HyenaLm::forward`]) keeps every block's activations for the
//! backward: about 15 `[L, D]` buffers per block, 120 GB for the 8-block large model at 1M
//! bases. Inference needs none of that. It runs one block at a time in place on the residual
//! stream `x [L, D]`, with one channel-major buffer `Y [D, L]` for the long convolutions:
//!
//! 1. Position chunks of `P` rows: `LN1 → in_proj` (the `x1`, `v` columns only) → short filter
//!    (a K−1-row carry links the chunks) → `w = x1 ⊙ v`, written transposed into `Y`.
//! 2. The filter MLP once per block (`hidden [L, F]`), then per group of 16 channels the
//!    filters `W_out · hiddenᵀ` with their decay windows, and one FFT convolution per channel,
//!    in place in `Y` ([`RowConv`]: its own working memory is about 8L floats per thread).
//! 3. Position chunks again: `LN1 → in_proj` for the `x0` columns (recomputed rather than
//!    stored: it costs no extra FLOPs, since step 1 skipped them), `y = x0 ⊙ Y`, then
//!    `x += out_proj(y)`.
//! 4. The MLP, chunk by chunk, in place: `x += fc2(gelu(fc1(LN2(x))))`.
//!
//! Peak memory is `x` + `Y` + `hidden` (`(2D + F)·L` floats, 2.2 GiB at D = 256, L = 1M) plus
//! the chunk buffers, the FFT scratch and the parameters. Results equal the training forward's
//! up to float rounding (tested). Order-2 operators (HyenaDNA) only.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::layers::filter::window_row;
use crate::models::lm::{BlockParams, HyenaLm};
use crate::ops::act::{bias_gelu_forward, sin_forward};
use crate::ops::fftconv::{RowConv, RowConvScratch};
use crate::ops::linear::{linear_accumulate, linear_forward, matmul, MatMut, MatRef};
use crate::ops::norm::layernorm_forward;
use crate::ops::short_conv::forward_rows_carry;

/// Channels whose filters are materialised together (`[G, L]`): large enough for an efficient
/// filter GEMM, small enough to stay a few percent of the activations.
const FILTER_GROUP: usize = 16;

/// Reusable buffers of the lean forward (grow to the longest sequence seen, never shrink).
#[derive(Default)]
pub struct InferWorkspace {
    /// Rows per position chunk.
    chunk: usize,
    /// Residual stream `[L, D]`; after a run, the requested hidden states.
    x: Vec<f32>,
    /// Long-convolution rows `[D, L]`.
    y: Vec<f32>,
    /// Filter-MLP output `[L, F]`.
    hidden: Vec<f32>,
    /// Filters of one channel group `[G, L]`.
    filt: Vec<f32>,
    // Chunk buffers.
    h: Vec<f32>,     // [P, D]
    u: Vec<f32>,     // [P, 2D] (in_proj output), [P, d_inner] (fc1 output)
    s: Vec<f32>,     // [P, 2D] (short filter output), [P, d_inner] (gelu output)
    carry: Vec<f32>, // [K-1, 2D]
    mu: Vec<f32>,
    rs: Vec<f32>,
    /// The FFT plan of the current length and its per-task scratch (rebuilt when L changes).
    conv: Option<RowConv>,
    scratch: Vec<RowConvScratch>,
    l: usize,
    d: usize,
    /// Called with (blocks done, blocks to run) after each block: progress on long sequences.
    on_block: Option<Box<dyn FnMut(usize, usize) + Send>>,
}

impl std::fmt::Debug for InferWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferWorkspace")
            .field("chunk", &self.chunk)
            .field("len", &self.l)
            .finish()
    }
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

impl InferWorkspace {
    /// A workspace with position chunks of `chunk` rows (2048 is a good default: large enough
    /// for efficient matrix products, small beside the `[L, D]` buffers).
    pub fn new(chunk: usize) -> Self {
        InferWorkspace {
            chunk: chunk.max(1),
            ..Default::default()
        }
    }

    /// The rows `[L, D]` of the last run: hidden states of the requested layer.
    pub fn hidden_states(&self) -> &[f32] {
        &self.x[..self.l * self.d]
    }

    /// Report progress after every block (`(done, total)`), e.g. to a progress bar.
    pub fn set_progress(&mut self, f: Option<Box<dyn FnMut(usize, usize) + Send>>) {
        self.on_block = f;
    }
}

/// Whether [`hidden_states`] and [`log_likelihood`] can run `lm` (order-2 operators).
pub fn check_supported(lm: &HyenaLm) -> Result<()> {
    if lm.cfg.operator.order != 2 {
        return Err(Error::config(
            "operator.order",
            lm.cfg.operator.order,
            "lean inference (embed/score) supports order-2 operators (HyenaDNA)",
        ));
    }
    Ok(())
}

/// Run the first `n_blocks` blocks on `tokens [L]`; leaves the residual stream in `ws`.
fn run_blocks(
    lm: &HyenaLm,
    tokens: &[u32],
    n_blocks: usize,
    ws: &mut InferWorkspace,
) -> Result<()> {
    const OP: &str = "lean forward";
    check_supported(lm)?;
    let cfg = &lm.cfg;
    let (l, d, vp) = (tokens.len(), cfg.d_model(), cfg.padded_vocab());
    if l == 0 {
        return Err(Error::shape(OP, "sequence length", "L >= 1", 0));
    }
    if l > cfg.operator.l_max {
        return Err(Error::TooLong {
            op: OP,
            len: l,
            l_max: cfg.operator.l_max,
        });
    }
    if n_blocks > cfg.n_layer {
        return Err(Error::config(
            "layer",
            n_blocks,
            format!("the model has {} blocks (0 = embeddings)", cfg.n_layer),
        ));
    }
    if ws.chunk == 0 {
        ws.chunk = 2048;
    }
    ws.l = l;
    ws.d = d;
    grow(&mut ws.x, l * d);
    for (t, &tok) in tokens.iter().enumerate() {
        let tok = tok as usize;
        if tok >= vp {
            return Err(Error::shape(OP, "token id", format!("< {vp}"), tok));
        }
        ws.x[t * d..(t + 1) * d].copy_from_slice(&lm.params.wte[tok * d..(tok + 1) * d]);
    }
    for i in 0..n_blocks {
        mixer(lm, i, ws)?;
        mlp(lm, i, ws)?;
        if let Some(f) = ws.on_block.as_mut() {
            f(i + 1, n_blocks);
        }
    }
    Ok(())
}

/// `LN1`/`LN2` of rows `[t0, t1)` of `x` into `ws.h`.
#[allow(clippy::too_many_arguments)]
fn norm_rows(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    d: usize,
    h: &mut [f32],
    mu: &mut [f32],
    rs: &mut [f32],
) -> Result<()> {
    let p = x.len() / d;
    layernorm_forward(x, w, b, d, eps, &mut h[..p * d], &mut mu[..p], &mut rs[..p])
}

/// The rows of in_proj and the short filter that make some of the operator's channels:
/// `w [C, D]`, `b [C]`, `sw [C, K]`, `sb [C]`.
struct Proj<'a> {
    w: &'a [f32],
    b: &'a [f32],
    sw: &'a [f32],
    sb: &'a [f32],
    k: usize,
    c: usize,
}

/// `ws.s[..P·C] = short_filter(in_proj(LN1(x[t0..t0+P])))` for the channels of `pr`, the
/// short filter continuing from `ws.carry`.
fn proj_chunk(
    ws: &mut InferWorkspace,
    blk: &BlockParams,
    eps: f32,
    t0: usize,
    p: usize,
    pr: &Proj<'_>,
) -> Result<()> {
    let d = ws.d;
    norm_rows(
        &ws.x[t0 * d..(t0 + p) * d],
        &blk.norm1_w,
        &blk.norm1_b,
        eps,
        d,
        &mut ws.h,
        &mut ws.mu,
        &mut ws.rs,
    )?;
    let u = &mut ws.u[..p * pr.c];
    linear_forward(&ws.h[..p * d], pr.w, Some(pr.b), p, d, pr.c, u)?;
    let s = &mut ws.s[..p * pr.c];
    forward_rows_carry(u, pr.sw, pr.sb, pr.k, pr.c, &mut ws.carry, s)
}

/// The Hyena mixer of block `i`, in place on `ws.x` (`x += mixer(LN1(x))`).
fn mixer(lm: &HyenaLm, i: usize, ws: &mut InferWorkspace) -> Result<()> {
    let cfg = &lm.cfg;
    let (l, d) = (ws.l, ws.d);
    let blk = &lm.params.blocks[i];
    let m = &blk.mixer;
    let k = cfg.operator.short_filter_order;
    let eps = cfg.layer_norm_epsilon;
    let pch = ws.chunk;
    grow(&mut ws.y, d * l);
    grow(&mut ws.h, pch * d);
    grow(&mut ws.u, pch * 2 * d);
    grow(&mut ws.s, pch * 2 * d);
    grow(&mut ws.mu, pch);
    grow(&mut ws.rs, pch);
    let hk = k - 1;

    // 1. w = x1 ⊙ v for every position, channel-major into Y.
    ws.carry.clear();
    ws.carry.resize(hk * 2 * d, 0.0);
    let x12 = Proj {
        w: &m.in_w[d * d..3 * d * d],
        b: &m.in_b[d..3 * d],
        sw: &m.short_w[d * k..3 * d * k],
        sb: &m.short_b[d..3 * d],
        k,
        c: 2 * d,
    };
    for t0 in (0..l).step_by(pch) {
        let p = (t0 + pch).min(l) - t0;
        proj_chunk(ws, blk, eps, t0, p, &x12)?;
        scatter_gate(&ws.s[..p * 2 * d], d, p, t0, l, &mut ws.y);
    }

    // 2. Long convolutions, in place in Y.
    long_convs(lm, i, ws)?;

    // 3. y = x0 ⊙ conv; x += out_proj(y).
    ws.carry.clear();
    ws.carry.resize(hk * d, 0.0);
    let x0 = Proj {
        w: &m.in_w[..d * d],
        b: &m.in_b[..d],
        sw: &m.short_w[..d * k],
        sb: &m.short_b[..d],
        k,
        c: d,
    };
    for t0 in (0..l).step_by(pch) {
        let t1 = (t0 + pch).min(l);
        let p = t1 - t0;
        proj_chunk(ws, blk, eps, t0, p, &x0)?;
        let s = &mut ws.s[..p * d];
        gather_gate(s, d, p, t0, l, &ws.y);
        linear_accumulate(s, &m.out_w, &m.out_b, p, d, d, &mut ws.x[t0 * d..t1 * d])?;
    }
    Ok(())
}

/// `Y[c, t0 + t] = s[t, c] · s[t, D + c]` for the chunk's rows `s [P, 2D]` = (x1, v): the
/// gated input of the long convolution, transposed into channel-major rows. Tiles of 64
/// channels × 16 positions keep both sides in cache (a plain row-by-row transpose re-streamed
/// the whole chunk once per channel: 10% of the forward at L = 262144).
fn scatter_gate(s: &[f32], d: usize, p: usize, t0: usize, l: usize, y: &mut [f32]) {
    const TC: usize = 64;
    const TT: usize = 16;
    y[..d * l]
        .par_chunks_mut(TC * l)
        .enumerate()
        .for_each(|(cb, rows)| {
            let c0 = cb * TC;
            for tb in (0..p).step_by(TT) {
                let n = TT.min(p - tb);
                for (ci, row) in rows.chunks_exact_mut(l).enumerate() {
                    let c = c0 + ci;
                    let out = &mut row[t0 + tb..t0 + tb + n];
                    for (t, o) in out.iter_mut().enumerate() {
                        let r = (tb + t) * 2 * d;
                        *o = s[r + c] * s[r + d + c];
                    }
                }
            }
        });
}

/// `s[t, c] *= Y[c, t0 + t]` for the chunk's rows `s [P, D]` (the post-gate `x0 ⊙ conv`), in
/// tiles of 64 positions: each task reads contiguous runs of every Y row.
fn gather_gate(s: &mut [f32], d: usize, p: usize, t0: usize, l: usize, y: &[f32]) {
    const TT: usize = 64;
    s[..p * d]
        .par_chunks_mut(TT * d)
        .enumerate()
        .for_each(|(tb, rows)| {
            let n = rows.len() / d;
            let ts = t0 + tb * TT;
            for c in 0..d {
                let yr = &y[c * l + ts..c * l + ts + n];
                for (t, &g) in yr.iter().enumerate() {
                    rows[t * d + c] *= g;
                }
            }
        });
}

/// Step 2 of the module docs: filters by channel group, one FFT convolution per channel.
fn long_convs(lm: &HyenaLm, i: usize, ws: &mut InferWorkspace) -> Result<()> {
    let cfg = &lm.cfg.operator;
    let (l, d) = (ws.l, ws.d);
    let op = lm.operator(i);
    let fp = &lm.params.blocks[i].mixer.filter;
    let fsz = cfg.filter.filter_order;
    let explicit = op.explicit_filters();
    if explicit.is_none() {
        filter_hidden(lm, i, ws)?;
    }
    if ws.conv.as_ref().is_none_or(|c| c.len() != l) {
        ws.conv = Some(RowConv::new(l)?);
        ws.scratch.clear();
    }
    let Some(conv) = ws.conv.as_ref() else {
        return Ok(());
    };
    let g = FILTER_GROUP.min(d);
    grow(&mut ws.filt, g * l);
    let bufs = &op.filter.buffers;
    for c0 in (0..d).step_by(g) {
        let gn = g.min(d - c0);
        let filt = &mut ws.filt[..gn * l];
        match explicit {
            Some(k) => {
                let lm_max = cfg.l_max;
                for (ci, row) in filt.chunks_exact_mut(l).enumerate() {
                    let c = c0 + ci;
                    row.copy_from_slice(&k[c * lm_max..c * lm_max + l]);
                }
            }
            None => {
                // filt [G, L] = W_out[c0..c0+G] [G, F] · hiddenᵀ [F, L], then the windows.
                matmul(
                    MatMut::rm(filt, gn, l),
                    MatRef::rm(&fp.w_out[c0 * fsz..(c0 + gn) * fsz], gn, fsz),
                    MatRef::tr(&ws.hidden[..l * fsz], fsz, l),
                    false,
                )?;
                if cfg.filter.modulate {
                    let (t, shift) = (&bufs.t[..l], cfg.filter.shift);
                    filt.par_chunks_mut(l).enumerate().for_each(|(ci, row)| {
                        let a = bufs.deltas[c0 + ci].abs();
                        window_row(row, t, a, shift);
                    });
                }
            }
        }
        // One row per task; tasks take a scratch from the pool (kept across groups, blocks and
        // sequences of the same length: fresh large buffers cost a page fault per 4 KiB).
        let pool = std::sync::Mutex::new(std::mem::take(&mut ws.scratch));
        let rows = &mut ws.y[c0 * l..(c0 + gn) * l];
        let res: Result<()> = rows
            .par_chunks_mut(l)
            .zip(filt.par_chunks(l))
            .enumerate()
            .try_for_each(|(ci, (row, kr))| {
                let mut s = match pool.lock().ok().and_then(|mut p| p.pop()) {
                    Some(s) => s,
                    None => conv.scratch(),
                };
                let r = conv.conv_inplace(row, kr, fp.bias[c0 + ci], &mut s);
                if let Ok(mut p) = pool.lock() {
                    p.push(s);
                }
                r
            });
        ws.scratch = pool.into_inner().unwrap_or_default();
        res?;
    }
    Ok(())
}

/// The filter MLP `Sin(W_n … Sin(W_0 z + b_0) …)` on the first L points of the grid, chunk by
/// chunk, into `ws.hidden [L, F]`.
fn filter_hidden(lm: &HyenaLm, i: usize, ws: &mut InferWorkspace) -> Result<()> {
    let cfg = &lm.cfg.operator;
    let (l, e, f) = (ws.l, cfg.filter.emb_dim, cfg.filter.filter_order);
    let fp = &lm.params.blocks[i].mixer.filter;
    let bufs = &lm.operator(i).filter.buffers;
    let z: &[f32] = if cfg.filter.learn_pos_emb {
        &fp.z
    } else {
        &bufs.z
    };
    grow(&mut ws.hidden, l * f);
    let pch = ws.chunk;
    // Two [P, F] ping-pong buffers, borrowed from the chunk buffers (free during step 2).
    grow(&mut ws.u, pch * f);
    grow(&mut ws.s, pch * f);
    for t0 in (0..l).step_by(pch) {
        let t1 = (t0 + pch).min(l);
        let p = t1 - t0;
        let (pre, post) = (&mut ws.u[..p * f], &mut ws.s[..p * f]);
        linear_forward(&z[t0 * e..t1 * e], &fp.w0, Some(&fp.b0), p, e, f, pre)?;
        sin_forward(pre, &fp.freq, post)?;
        for (w, b) in fp.inner_w.iter().zip(&fp.inner_b) {
            linear_forward(post, w, Some(b), p, f, f, pre)?;
            sin_forward(pre, &fp.freq, post)?;
        }
        ws.hidden[t0 * f..t1 * f].copy_from_slice(post);
    }
    Ok(())
}

/// The MLP of block `i`, in place on `ws.x` (`x += fc2(gelu(fc1(LN2(x))))`).
fn mlp(lm: &HyenaLm, i: usize, ws: &mut InferWorkspace) -> Result<()> {
    let cfg = &lm.cfg;
    let (l, d, di) = (ws.l, ws.d, cfg.d_inner);
    let blk = &lm.params.blocks[i];
    let pch = ws.chunk;
    grow(&mut ws.u, pch * di);
    grow(&mut ws.s, pch * di);
    for t0 in (0..l).step_by(pch) {
        let t1 = (t0 + pch).min(l);
        let p = t1 - t0;
        norm_rows(
            &ws.x[t0 * d..t1 * d],
            &blk.norm2_w,
            &blk.norm2_b,
            cfg.layer_norm_epsilon,
            d,
            &mut ws.h,
            &mut ws.mu,
            &mut ws.rs,
        )?;
        let a = &mut ws.u[..p * di];
        matmul(
            MatMut::rm(a, p, di),
            MatRef::rm(&ws.h[..p * d], p, d),
            MatRef::tr(&blk.fc1_w, d, di),
            false,
        )?;
        let g = &mut ws.s[..p * di];
        bias_gelu_forward(a, &blk.fc1_b, g)?;
        linear_accumulate(
            g,
            &blk.fc2_w,
            &blk.fc2_b,
            p,
            di,
            d,
            &mut ws.x[t0 * d..t1 * d],
        )?;
    }
    Ok(())
}

/// Hidden states of `tokens [L]` after `layer` blocks (0: the embeddings; `n_layer`: the
/// final ones, after `ln_f`, as HyenaDNA's backbone returns them). Returns `[L, D]` rows,
/// borrowed from `ws`.
pub fn hidden_states<'w>(
    lm: &HyenaLm,
    tokens: &[u32],
    layer: usize,
    ws: &'w mut InferWorkspace,
) -> Result<&'w [f32]> {
    run_blocks(lm, tokens, layer, ws)?;
    if layer == lm.cfg.n_layer {
        final_norm(lm, ws)?;
    }
    Ok(ws.hidden_states())
}

/// `x ← ln_f(x)`, chunk by chunk.
fn final_norm(lm: &HyenaLm, ws: &mut InferWorkspace) -> Result<()> {
    let (l, d, pch) = (ws.l, ws.d, ws.chunk);
    grow(&mut ws.h, pch * d);
    grow(&mut ws.mu, pch);
    grow(&mut ws.rs, pch);
    for t0 in (0..l).step_by(pch) {
        let t1 = (t0 + pch).min(l);
        let p = t1 - t0;
        norm_rows(
            &ws.x[t0 * d..t1 * d],
            &lm.params.lnf_w,
            &lm.params.lnf_b,
            lm.cfg.layer_norm_epsilon,
            d,
            &mut ws.h,
            &mut ws.mu,
            &mut ws.rs,
        )?;
        ws.x[t0 * d..t1 * d].copy_from_slice(&ws.h[..p * d]);
    }
    Ok(())
}

/// Log-likelihood (natural log) of each token given its prefix: `out[t] = log p(tok[t+1] |
/// tok[..=t])` for `t < L−1` (`L−1` values; the first token has no prediction). The softmax runs
/// over all `V_pad` logits, as the reference's cross-entropy does. Returns the sum in f64.
pub fn log_likelihood(
    lm: &HyenaLm,
    tokens: &[u32],
    ws: &mut InferWorkspace,
    out: &mut Vec<f32>,
) -> Result<f64> {
    run_blocks(lm, tokens, lm.cfg.n_layer, ws)?;
    final_norm(lm, ws)?;
    let (l, d, pch) = (ws.l, ws.d, ws.chunk);
    let vp = lm.cfg.padded_vocab();
    let head = lm.lm_head();
    grow(&mut ws.u, pch * vp);
    out.clear();
    out.reserve(l.saturating_sub(1));
    let mut total = 0.0f64;
    for t0 in (0..l).step_by(pch) {
        let t1 = (t0 + pch).min(l);
        let p = t1 - t0;
        let logits = &mut ws.u[..p * vp];
        matmul(
            MatMut::rm(logits, p, vp),
            MatRef::rm(&ws.x[t0 * d..t1 * d], p, d),
            MatRef::tr(head, d, vp),
            false,
        )?;
        for (r, row) in logits.chunks_exact(vp).enumerate() {
            let t = t0 + r;
            if t + 1 >= l {
                break;
            }
            let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let lse = mx as f64
                + row
                    .iter()
                    .map(|&v| ((v - mx) as f64).exp())
                    .sum::<f64>()
                    .ln();
            let lp = row[tokens[t + 1] as usize] as f64 - lse;
            out.push(lp as f32);
            total += lp;
        }
    }
    Ok(total)
}
