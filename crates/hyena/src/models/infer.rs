//! Memory-lean inference for one long sequence: hidden states (embeddings) and per-base
//! log-likelihoods of a HyenaDNA model at up to a million bases on a CPU.
//!
//! The training forward ([`HyenaLm::forward`]) keeps every block's activations for the
//! backward: about 15 `[L, D]` buffers per block, 120 GB for the 8-block large model at 1M
//! bases. Inference needs none of that. It runs one block at a time in place on the residual
//! stream `x [L, D]`, with one channel-major buffer `Y [D, L]` for the long convolutions. The
//! operator's channels split in two, `A = [0, D−F)` and `B = [D−F, D)` (F: the filter MLP's
//! width), so that B's rows of `Y` can hold the filter MLP's output while A is convolved:
//!
//! 1. The filter MLP on the first L grid points, `hidden [F, L]`, into B's rows of `Y`.
//! 2. Position chunks of `P` rows: `LN1 → in_proj` (the `x1`, `v` columns of A) → short filter
//!    (a K−1-row carry links the chunks) → `w = x1 ⊙ v`, written transposed into A's rows.
//!    LN1's per-position statistics are kept (`2L` floats) for the later passes.
//! 3. Per group of G channels of A: the filters `W_out · hidden` with their decay windows
//!    (`[G, L]`), then one FFT convolution per channel, in place in `Y` ([`RowConv`]: about
//!    `3L` floats of working memory per thread).
//! 4. B's filters replace `hidden` in place, chunk by chunk of positions (the filters at
//!    positions `[t0, t1)` need only those columns of `hidden`). Then per group of G channels
//!    of B: a pass like step 2 writes their `w` into the `[G, L]` buffer, and each
//!    convolution is written over its filter's row.
//! 5. Position chunks again: `LN1 → in_proj` for the `x0` columns (recomputed rather than
//!    stored: it costs no extra FLOPs, since the earlier passes skipped them), `y = x0 ⊙ Y`,
//!    then `x += out_proj(y)`.
//! 6. The MLP, chunk by chunk, in place: `x += fc2(gelu(fc1(LN2(x))))`, its `[P, d_inner]`
//!    buffers borrowed from `Y`.
//!
//! Holding `x` and `Y` in f32 costs `2DL` floats (1.91 GiB at D = 256, L = 1M). Above 2^27
//! residual values ([`ResidualStore::Auto`]) `x` is therefore kept packed at 24 bits per value
//! (relative rounding ≤ 2^-16 per store, two stores per block) and only unpacked chunk by
//! chunk; that takes a quarter off `x` (244 MiB at 1M) for no measurable time, and the
//! HyenaDNA-large forward at 1M bases peaks at 1.85 GiB instead of 2.04 GiB.
//!
//! Peak memory is `x` + `Y` plus the `[G, L]`
//! group, the FFT working memory of each thread and its plan, LN1's statistics and the
//! parameters. Keeping `hidden` inside `Y` saves `F·L` floats (244 MiB at 1M) for F/G extra
//! passes over `x` in step 4; their matrix products only split step 2's, so what they add is
//! reading `x` and applying LN1. With F > D, or explicit filters, every channel is in A and
//! `hidden` (if any) has a buffer of its own. Results equal the training forward's up to float
//! rounding (tested). Order-2 operators (HyenaDNA) only.

use std::sync::Mutex;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::layers::filter::window_row;
use crate::layers::hyena::HyenaParams;
use crate::models::lm::{BlockParams, HyenaLm, LmConfig};
use crate::ops::act::{bias_gelu_forward, sin_forward};
use crate::ops::fftconv::{RowConv, RowConvScratch};
use crate::ops::linear::{linear_accumulate, linear_forward, matmul, MatMut, MatRef};
use crate::ops::norm::layernorm_forward;
use crate::ops::short_conv::forward_rows_carry;
use crate::ops::{grow, simd_fn};

/// Channels handled together (`[G, L]`, 31 MiB at L = 1M): A's filters materialised at once
/// (each group reads all of `hidden`), and B's convolution inputs made by one pass over `x`
/// (F/G passes, each about 1% of a block's time at HyenaDNA's shapes). 16 measured a few
/// percent faster for 31 MiB more at 1M; 4 would add eight more passes to save 15 MiB.
const FILTER_GROUP: usize = 8;

/// How [`InferWorkspace`] stores the residual stream `x [L, D]` between passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResidualStore {
    /// [`ResidualStore::Packed24`] when `L·D` exceeds 2^27 values (512 MiB as f32: above
    /// 524,288 bases at D = 256), else [`ResidualStore::F32`].
    #[default]
    Auto,
    /// Plain f32: results equal the training forward's up to float rounding.
    F32,
    /// 24 bits per value: f32 rounded to nearest (even) at 16 mantissa bits, relative error
    /// ≤ 2^-16 per store. Saves a quarter of the residual stream (244 MiB at D = 256, L = 1M),
    /// which brings the 1M-base forward of HyenaDNA-large under 2 GiB.
    Packed24,
}

/// Settings of the lean forward that trade memory for speed or precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeanOptions {
    /// Rows per position chunk (results do not depend on it).
    pub chunk: usize,
    pub residual: ResidualStore,
}

impl Default for LeanOptions {
    fn default() -> Self {
        LeanOptions {
            chunk: 2048,
            residual: ResidualStore::Auto,
        }
    }
}

/// [`ResidualStore::Auto`] packs above this many residual values.
pub const PACK_ABOVE: usize = 1 << 27;

/// The residual stream `[L, D]`, as f32 or packed to 24 bits (the top 16 bits of each f32 in
/// `hi`, the next 8 in `lo`: separate arrays so that packing and unpacking vectorise). It is
/// only ever touched in position chunks: [`Residual::read`] and [`Residual::modify`] give a
/// chunk as f32 (the stored values, or unpacked into `tmp`), [`Residual::commit`] stores a
/// modified chunk back.
#[derive(Default)]
struct Residual {
    packed: bool,
    f: Vec<f32>,
    hi: Vec<u16>,
    lo: Vec<u8>,
    tmp: Vec<f32>,
    /// The element range unpacked in `tmp` (empty: none).
    cached: (usize, usize),
}

impl Residual {
    /// Room for `n` values, stored as chosen; frees the other representation.
    fn reset(&mut self, n: usize, packed: bool) {
        self.packed = packed;
        self.cached = (0, 0);
        if packed {
            self.f = Vec::new();
            if self.hi.len() < n {
                self.hi.resize(n, 0);
                self.lo.resize(n, 0);
            }
        } else {
            self.hi = Vec::new();
            self.lo = Vec::new();
            self.tmp = Vec::new();
            grow(&mut self.f, n);
        }
    }

    /// Values `[r0, r1)` as f32.
    fn read(&mut self, r0: usize, r1: usize) -> &[f32] {
        self.modify(r0, r1)
    }

    /// Values `[r0, r1)` as f32, to modify and then [`Residual::commit`].
    fn modify(&mut self, r0: usize, r1: usize) -> &mut [f32] {
        if !self.packed {
            return &mut self.f[r0..r1];
        }
        let n = r1 - r0;
        grow(&mut self.tmp, n);
        if self.cached != (r0, r1) {
            unpack(&self.hi[r0..r1], &self.lo[r0..r1], &mut self.tmp[..n]);
            self.cached = (r0, r1);
        }
        &mut self.tmp[..n]
    }

    /// Store values `[r0, r1)` given by the last [`Residual::modify`] of that range. The
    /// unpacked copy is rounded too, so that it stays equal to what a fresh read would give.
    fn commit(&mut self, r0: usize, r1: usize) {
        if self.packed {
            debug_assert_eq!(self.cached, (r0, r1));
            let n = r1 - r0;
            pack(
                &mut self.tmp[..n],
                &mut self.hi[r0..r1],
                &mut self.lo[r0..r1],
            );
        }
    }

    /// Every value, unpacked into `out`.
    fn unpack_all(&self, out: &mut [f32]) {
        let n = out.len();
        unpack(&self.hi[..n], &self.lo[..n], out);
    }
}

/// Values per parallel task of [`pack`]/[`unpack`].
const PACK_TASK: usize = 1 << 16;

/// Round each value of `v` to 24 bits (nearest, ties to even; NaN kept as NaN) into `hi`/`lo`,
/// and write the rounded value back into `v`.
fn pack(v: &mut [f32], hi: &mut [u16], lo: &mut [u8]) {
    v.par_chunks_mut(PACK_TASK)
        .zip(hi.par_chunks_mut(PACK_TASK))
        .zip(lo.par_chunks_mut(PACK_TASK))
        .for_each(|((v, hi), lo)| pack_rows(v, hi, lo));
}

simd_fn! {
    fn pack_rows(v: &mut [f32], hi: &mut [u16], lo: &mut [u8]) {
        for ((x, h), l) in v.iter_mut().zip(hi.iter_mut()).zip(lo.iter_mut()) {
            let b = x.to_bits();
            let r = b.wrapping_add(0x7F + ((b >> 8) & 1));
            // A NaN's payload could carry into the sign bit: truncate NaNs instead.
            let r = if (b & 0x7fff_ffff) > 0x7f80_0000 { b } else { r } & 0xffff_ff00;
            *h = (r >> 16) as u16;
            *l = (r >> 8) as u8;
            *x = f32::from_bits(r);
        }
    }
}

/// `out[i]` = the f32 whose top 24 bits are `hi[i]`, `lo[i]`.
fn unpack(hi: &[u16], lo: &[u8], out: &mut [f32]) {
    out.par_chunks_mut(PACK_TASK)
        .zip(hi.par_chunks(PACK_TASK))
        .zip(lo.par_chunks(PACK_TASK))
        .for_each(|((o, hi), lo)| unpack_rows(hi, lo, o));
}

simd_fn! {
    fn unpack_rows(hi: &[u16], lo: &[u8], out: &mut [f32]) {
        for ((o, &h), &l) in out.iter_mut().zip(hi).zip(lo) {
            *o = f32::from_bits(((h as u32) << 16) | ((l as u32) << 8));
        }
    }
}

/// Reusable buffers of the lean forward (grow to the longest sequence seen, never shrink,
/// except the position-chunk buffers `u`, `s`, which are dropped before the convolutions).
#[derive(Default)]
pub struct InferWorkspace {
    /// Rows per position chunk.
    chunk: usize,
    /// Residual stream `[L, D]`; after a run, the requested hidden states (when it is packed,
    /// they are unpacked into `Y`'s memory, free by then).
    x: Residual,
    /// How the residual stream is stored.
    store: ResidualStore,
    /// Whether the last run's hidden states are in `y` (packed residual).
    out_in_y: bool,
    /// Long-convolution rows `[D, L]`.
    y: Vec<f32>,
    /// Filter-MLP output `[F, L]`, only when it cannot borrow rows of `Y` (F > D).
    hidden: Vec<f32>,
    /// One channel group `[G, L]`: filters of A, then convolution inputs of B.
    group: Vec<f32>,
    // Chunk buffers.
    h: Vec<f32>,     // [P, D] (LN output), [F, P] (columns of hidden)
    u: Vec<f32>,     // [P, 2C] (in_proj output), [P, d_inner] (fc1 output)
    s: Vec<f32>,     // [P, 2C] (short filter output), [P, d_inner] (gelu output)
    carry: Vec<f32>, // [K-1, 2C]
    mu: Vec<f32>,
    rs: Vec<f32>,
    /// LN1's per-position mean and 1/std `[L]` of the current block, from its first pass over
    /// `x`: later passes only apply them (the same arithmetic, so the same values).
    ln1_mean: Vec<f32>,
    ln1_rstd: Vec<f32>,
    /// Whether `ln1_mean`/`ln1_rstd` hold the current block's statistics.
    ln1_ready: bool,
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
        if self.out_in_y {
            &self.y[..self.l * self.d]
        } else {
            &self.x.f[..self.l * self.d]
        }
    }

    /// A workspace with these settings.
    pub fn with_options(o: LeanOptions) -> Self {
        Self::new(o.chunk).with_residual(o.residual)
    }

    /// Choose how the residual stream is stored (default [`ResidualStore::Auto`]).
    pub fn with_residual(mut self, store: ResidualStore) -> Self {
        self.store = store;
        self
    }

    /// Whether the last run kept the residual stream packed (24 bits per value).
    pub fn residual_packed(&self) -> bool {
        self.x.packed
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
    if let Some(&tok) = tokens.iter().find(|&&t| t as usize >= vp) {
        return Err(Error::shape(OP, "token id", format!("< {vp}"), tok));
    }
    ws.l = l;
    ws.d = d;
    ws.out_in_y = false;
    let packed = match ws.store {
        ResidualStore::F32 => false,
        ResidualStore::Packed24 => true,
        ResidualStore::Auto => l * d > PACK_ABOVE,
    };
    ws.x.reset(l * d, packed);
    let pch = ws.chunk;
    for t0 in (0..l).step_by(pch) {
        let t1 = (t0 + pch).min(l);
        let xr = ws.x.modify(t0 * d, t1 * d);
        for (row, &tok) in xr.chunks_exact_mut(d).zip(&tokens[t0..t1]) {
            let tok = tok as usize;
            row.copy_from_slice(&lm.params.wte[tok * d..(tok + 1) * d]);
        }
        ws.x.commit(t0 * d, t1 * d);
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

/// The rows of in_proj and the short filter that make some of the operator's channels,
/// gathered so that one matrix product makes them all: `w [C, D]`, `b [C]`, `sw [C, K]`,
/// `sb [C]`.
struct Proj {
    w: Vec<f32>,
    b: Vec<f32>,
    sw: Vec<f32>,
    sb: Vec<f32>,
    k: usize,
    c: usize,
}

impl Proj {
    /// The in_proj output rows `ranges` (`(first, count)`, in this order) of `m`, whose inputs
    /// have `d` features and whose short filters `k` taps.
    fn rows(m: &HyenaParams, d: usize, k: usize, ranges: &[(usize, usize)]) -> Self {
        let c = ranges.iter().map(|r| r.1).sum();
        let mut p = Proj {
            w: Vec::with_capacity(c * d),
            b: Vec::with_capacity(c),
            sw: Vec::with_capacity(c * k),
            sb: Vec::with_capacity(c),
            k,
            c,
        };
        for &(r0, n) in ranges {
            p.w.extend_from_slice(&m.in_w[r0 * d..(r0 + n) * d]);
            p.b.extend_from_slice(&m.in_b[r0..r0 + n]);
            p.sw.extend_from_slice(&m.short_w[r0 * k..(r0 + n) * k]);
            p.sb.extend_from_slice(&m.short_b[r0..r0 + n]);
        }
        p
    }
}

/// `ws.s[..P·C] = short_filter(in_proj(LN1(x[t0..t0+P])))` for the channels of `pr`, the
/// short filter continuing from `ws.carry`. LN1's statistics are computed and kept on the
/// block's first pass, and reused after.
fn proj_chunk(
    ws: &mut InferWorkspace,
    blk: &BlockParams,
    eps: f32,
    t0: usize,
    p: usize,
    pr: &Proj,
) -> Result<()> {
    let d = ws.d;
    let (x, h) = (ws.x.read(t0 * d, (t0 + p) * d), &mut ws.h[..p * d]);
    let (mean, rstd) = (&mut ws.ln1_mean[t0..t0 + p], &mut ws.ln1_rstd[t0..t0 + p]);
    if ws.ln1_ready {
        ln_apply(h, x, &blk.norm1_w, &blk.norm1_b, mean, rstd);
    } else {
        layernorm_forward(x, &blk.norm1_w, &blk.norm1_b, d, eps, h, mean, rstd)?;
    }
    let u = &mut ws.u[..p * pr.c];
    linear_forward(&ws.h[..p * d], &pr.w, Some(&pr.b), p, d, pr.c, u)?;
    let s = &mut ws.s[..p * pr.c];
    forward_rows_carry(u, &pr.sw, &pr.sb, pr.k, pr.c, &mut ws.carry, s)
}

/// `h = (x − mean)·rstd·γ + β` per row `[P, D]` with saved statistics: the arithmetic of the
/// layer norm that computed them, in the same order, so the same values; without the two
/// reductions per row it costs about a third of the layer norm.
fn ln_apply(h: &mut [f32], x: &[f32], gamma: &[f32], beta: &[f32], mean: &[f32], rstd: &[f32]) {
    const ROWS: usize = 64;
    let d = gamma.len();
    h.par_chunks_mut(ROWS * d)
        .zip(x.par_chunks(ROWS * d))
        .zip(mean.par_chunks(ROWS).zip(rstd.par_chunks(ROWS)))
        .for_each(|((hc, xc), (mc, rc))| ln_apply_rows(hc, xc, gamma, beta, mc, rc));
}

simd_fn! {
    fn ln_apply_rows(
        hc: &mut [f32],
        xc: &[f32],
        gamma: &[f32],
        beta: &[f32],
        mc: &[f32],
        rc: &[f32],
    ) {
        let d = gamma.len();
        for (((hr, xr), &mean), &r) in hc.chunks_exact_mut(d).zip(xc.chunks_exact(d)).zip(mc).zip(rc) {
            for ((yv, xv), (g, b)) in hr.iter_mut().zip(xr).zip(gamma.iter().zip(beta)) {
                *yv = (xv - mean) * r * g + b;
            }
        }
    }
}

/// Grow the position-chunk buffers for `c` in_proj channels (`[P, c]` each).
fn chunk_buffers(ws: &mut InferWorkspace, c: usize) {
    let (pch, d) = (ws.chunk, ws.d);
    grow(&mut ws.h, pch * d);
    grow(&mut ws.u, pch * c);
    grow(&mut ws.s, pch * c);
    grow(&mut ws.mu, pch);
    grow(&mut ws.rs, pch);
}

/// The Hyena mixer of block `i`, in place on `ws.x` (`x += mixer(LN1(x))`): the steps of the
/// module docs.
fn mixer(lm: &HyenaLm, i: usize, ws: &mut InferWorkspace) -> Result<()> {
    let cfg = &lm.cfg;
    let (l, d) = (ws.l, ws.d);
    let blk = &lm.params.blocks[i];
    let m = &blk.mixer;
    let k = cfg.operator.short_filter_order;
    let eps = cfg.layer_norm_epsilon;
    let f = cfg.operator.filter.filter_order;
    let implicit = lm.operator(i).explicit_filters().is_none();
    // Channels [a, d) lend their rows to `hidden` (step 1) until step 4.
    let a = if implicit && f <= d { d - f } else { d };
    grow(&mut ws.y, d * l);
    grow(&mut ws.ln1_mean, l);
    grow(&mut ws.ln1_rstd, l);
    ws.ln1_ready = false;

    // 1. The filter MLP's output.
    if implicit {
        filter_hidden(lm, i, ws, a)?;
    }

    // 2. w = x1 ⊙ v for the channels of A, channel-major into Y.
    gate_pass(ws, blk, cfg, (0, a), false)?;

    // 3-4. Long convolutions, in place in Y. The chunk buffers are not needed until step 5:
    // free them rather than carry them through the peak (3 MiB each at P = 2048).
    ws.u = Vec::new();
    ws.s = Vec::new();
    if ws.conv.as_ref().is_none_or(|c| c.len() != l) {
        ws.conv = None;
        ws.scratch.clear();
        ws.conv = Some(RowConv::new(l)?);
    }
    convs_a(lm, i, ws, a)?;
    if a < d {
        convs_b(lm, i, ws, a)?;
    }
    // Free the group until the next block's convolutions: kept, it would add to the chunk
    // buffers of steps 5 and 2 (the larger of which, [P, 2·|A|], step 3 frees).
    ws.group = Vec::new();

    // 5. y = x0 ⊙ conv; x += out_proj(y).
    chunk_buffers(ws, d);
    ws.carry.clear();
    ws.carry.resize((k - 1) * d, 0.0);
    let x0 = Proj::rows(m, d, k, &[(0, d)]);
    let pch = ws.chunk;
    for t0 in (0..l).step_by(pch) {
        let t1 = (t0 + pch).min(l);
        let p = t1 - t0;
        proj_chunk(ws, blk, eps, t0, p, &x0)?;
        let s = &mut ws.s[..p * d];
        gather_gate(s, d, p, t0, l, &ws.y);
        // The chunk proj_chunk just read: unpacked once.
        let xr = ws.x.modify(t0 * d, t1 * d);
        linear_accumulate(s, &m.out_w, &m.out_b, p, d, d, xr)?;
        ws.x.commit(t0 * d, t1 * d);
    }
    Ok(())
}

/// `w = x1 ⊙ v` of channels `[c0, c1)` for every position: into their rows of `Y`, or (with
/// `into_group`) into the group buffer's first rows. One pass over `x`.
fn gate_pass(
    ws: &mut InferWorkspace,
    blk: &BlockParams,
    cfg: &LmConfig,
    (c0, c1): (usize, usize),
    into_group: bool,
) -> Result<()> {
    let (l, d, pch) = (ws.l, ws.d, ws.chunk);
    let (k, eps) = (cfg.operator.short_filter_order, cfg.layer_norm_epsilon);
    let n = c1 - c0;
    if n == 0 {
        return Ok(());
    }
    let pr = Proj::rows(&blk.mixer, d, k, &[(d + c0, n), (2 * d + c0, n)]);
    chunk_buffers(ws, 2 * n);
    ws.carry.clear();
    ws.carry.resize((k - 1) * 2 * n, 0.0);
    if into_group {
        grow(&mut ws.group, n * l);
    }
    for t0 in (0..l).step_by(pch) {
        let p = (t0 + pch).min(l) - t0;
        proj_chunk(ws, blk, eps, t0, p, &pr)?;
        let rows = if into_group {
            &mut ws.group[..n * l]
        } else {
            &mut ws.y[c0 * l..c1 * l]
        };
        scatter_gate(&ws.s[..p * 2 * n], n, p, t0, l, rows);
    }
    ws.ln1_ready = true;
    Ok(())
}

/// `rows[c, t0 + t] = s[t, c] · s[t, n + c]` for the chunk's rows `s [P, 2n]` = (x1, v) of `n`
/// channels: the gated input of the long convolution, transposed into channel-major rows
/// `rows [n, L]`. Tiles of 32 channels × 16 positions keep both sides in cache (a plain
/// row-by-row transpose re-streamed the whole chunk once per channel: 10% of the forward at
/// L = 262144); 32-channel tasks also share A's 192 channels evenly between 2 threads, where
/// 64-channel ones made 3 tasks.
fn scatter_gate(s: &[f32], n: usize, p: usize, t0: usize, l: usize, rows: &mut [f32]) {
    const TC: usize = 32;
    const TT: usize = 16;
    rows[..n * l]
        .par_chunks_mut(TC * l)
        .enumerate()
        .for_each(|(cb, rows)| {
            let c0 = cb * TC;
            for tb in (0..p).step_by(TT) {
                let nt = TT.min(p - tb);
                for (ci, row) in rows.chunks_exact_mut(l).enumerate() {
                    let c = c0 + ci;
                    let out = &mut row[t0 + tb..t0 + tb + nt];
                    for (t, o) in out.iter_mut().enumerate() {
                        let r = (tb + t) * 2 * n;
                        *o = s[r + c] * s[r + n + c];
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

/// One FFT convolution per row of `rows [n, L]`, in parallel. `other(ci)` is row `ci`'s
/// partner: its filter (`into_filter` false: the rows hold the inputs), or its input
/// (`into_filter` true: the rows hold the filters). The results replace the rows; `bias [n]`
/// are the skip weights. Tasks take a scratch from `pool` (kept across groups, blocks and
/// sequences of the same length: fresh large buffers cost a page fault per 4 KiB).
fn conv_rows<'a>(
    conv: &RowConv,
    pool: &mut Vec<RowConvScratch>,
    rows: &mut [f32],
    other: impl Fn(usize) -> &'a [f32] + Sync,
    bias: &[f32],
    into_filter: bool,
) -> Result<()> {
    let l = conv.len();
    let shared = Mutex::new(std::mem::take(pool));
    let res: Result<()> = rows
        .par_chunks_mut(l)
        .enumerate()
        .try_for_each(|(ci, row)| {
            let mut s = match shared.lock().ok().and_then(|mut p| p.pop()) {
                Some(s) => s,
                None => conv.scratch(),
            };
            let r = if into_filter {
                conv.conv_into_filter(row, other(ci), bias[ci], &mut s)
            } else {
                conv.conv_inplace(row, other(ci), bias[ci], &mut s)
            };
            if let Ok(mut p) = shared.lock() {
                p.push(s);
            }
            r
        });
    *pool = shared.into_inner().unwrap_or_default();
    res
}

/// Step 3 of the module docs: A's filters group by group (from `hidden`, or the explicit
/// filters), one FFT convolution per channel.
fn convs_a(lm: &HyenaLm, i: usize, ws: &mut InferWorkspace, a: usize) -> Result<()> {
    let cfg = &lm.cfg.operator;
    let (l, d) = (ws.l, ws.d);
    let op = lm.operator(i);
    let fp = &lm.params.blocks[i].mixer.filter;
    let fsz = cfg.filter.filter_order;
    let explicit = op.explicit_filters();
    let g = FILTER_GROUP.min(d);
    if explicit.is_none() {
        grow(&mut ws.group, g * l);
    }
    let InferWorkspace {
        y,
        hidden,
        group,
        conv,
        scratch,
        ..
    } = ws;
    let Some(conv) = conv.as_ref() else {
        return Ok(());
    };
    let (rows_a, rows_b) = y[..d * l].split_at_mut(a * l);
    let bufs = &op.filter.buffers;
    for c0 in (0..a).step_by(g) {
        let gn = g.min(a - c0);
        let rows = &mut rows_a[c0 * l..(c0 + gn) * l];
        let bias = &fp.bias[c0..c0 + gn];
        match explicit {
            Some(k) => {
                // Rows [D, l_max], truncated to l: convolve straight from the model's copy.
                let lm_max = cfg.l_max;
                conv_rows(
                    conv,
                    scratch,
                    rows,
                    |ci| &k[(c0 + ci) * lm_max..(c0 + ci) * lm_max + l],
                    bias,
                    false,
                )?;
            }
            None => {
                let hid: &[f32] = if a < d {
                    &rows_b[..fsz * l]
                } else {
                    &hidden[..fsz * l]
                };
                // filt [G, L] = W_out[c0..c0+G] [G, F] · hidden [F, L], then the windows.
                let filt = &mut group[..gn * l];
                matmul(
                    MatMut::rm(filt, gn, l),
                    MatRef::rm(&fp.w_out[c0 * fsz..(c0 + gn) * fsz], gn, fsz),
                    MatRef::rm(hid, fsz, l),
                    false,
                )?;
                if cfg.filter.modulate {
                    let (t, shift) = (&bufs.t[..l], cfg.filter.shift);
                    filt.par_chunks_mut(l).enumerate().for_each(|(ci, row)| {
                        let dl = bufs.deltas[c0 + ci].abs();
                        window_row(row, t, dl, shift);
                    });
                }
                let filt: &[f32] = filt;
                conv_rows(
                    conv,
                    scratch,
                    rows,
                    |ci| &filt[ci * l..(ci + 1) * l],
                    bias,
                    false,
                )?;
            }
        }
    }
    Ok(())
}

/// Step 4 of the module docs: B's filters over `hidden` in B's rows of `Y`, then per group one
/// pass over `x` for the group's inputs and one convolution per channel, written over its
/// filter's row.
fn convs_b(lm: &HyenaLm, i: usize, ws: &mut InferWorkspace, a: usize) -> Result<()> {
    let cfg = &lm.cfg;
    let (l, d, pch) = (ws.l, ws.d, ws.chunk);
    let blk = &lm.params.blocks[i];
    let fp = &blk.mixer.filter;
    let bufs = &lm.operator(i).filter.buffers;
    let f = d - a; // B's channels = the filter MLP's width
    let fcfg = &cfg.operator.filter;
    // B's filters, chunk by chunk of positions: the columns [t0, t1) of hidden [F, L] go to a
    // small [F, P] copy, and W_out[B] [F, F] · that copy replaces them.
    grow(&mut ws.h, f * pch);
    let w_b = &fp.w_out[a * f..d * f];
    for t0 in (0..l).step_by(pch) {
        let t1 = (t0 + pch).min(l);
        let p = t1 - t0;
        let hid = &mut ws.y[a * l..d * l];
        let cols = &mut ws.h[..f * p];
        for (j, c) in cols.chunks_exact_mut(p).enumerate() {
            c.copy_from_slice(&hid[j * l + t0..j * l + t1]);
        }
        let dst = MatMut {
            data: &mut hid[t0..],
            rows: f,
            cols: p,
            rs: l,
            cs: 1,
        };
        matmul(dst, MatRef::rm(w_b, f, f), MatRef::rm(cols, f, p), false)?;
        if fcfg.modulate {
            let (t, shift) = (&bufs.t[t0..t1], fcfg.shift);
            hid.par_chunks_mut(l).enumerate().for_each(|(ci, row)| {
                let dl = bufs.deltas[a + ci].abs();
                window_row(&mut row[t0..t1], t, dl, shift);
            });
        }
    }
    let g = FILTER_GROUP.min(d);
    for c0 in (a..d).step_by(g) {
        let c1 = (c0 + g).min(d);
        gate_pass(ws, blk, cfg, (c0, c1), true)?;
        let InferWorkspace {
            y,
            group,
            conv,
            scratch,
            ..
        } = &mut *ws;
        let Some(conv) = conv.as_ref() else {
            return Ok(());
        };
        let group: &[f32] = group;
        conv_rows(
            conv,
            scratch,
            &mut y[c0 * l..c1 * l],
            |ci| &group[ci * l..(ci + 1) * l],
            &fp.bias[c0..c1],
            true,
        )?;
    }
    Ok(())
}

/// The filter MLP `Sin(W_n … Sin(W_0 z + b_0) …)` on the first L points of the grid, chunk by
/// chunk, into `hidden [F, L]`: B's rows of `Y` when `a < D`, else `ws.hidden`.
fn filter_hidden(lm: &HyenaLm, i: usize, ws: &mut InferWorkspace, a: usize) -> Result<()> {
    let cfg = &lm.cfg.operator;
    let (l, d, e, f) = (ws.l, ws.d, cfg.filter.emb_dim, cfg.filter.filter_order);
    let fp = &lm.params.blocks[i].mixer.filter;
    let bufs = &lm.operator(i).filter.buffers;
    let z: &[f32] = if cfg.filter.learn_pos_emb {
        &fp.z
    } else {
        &bufs.z
    };
    if a == d {
        grow(&mut ws.hidden, f * l);
    }
    let pch = ws.chunk;
    // Two [P, F] ping-pong buffers, borrowed from the chunk buffers.
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
        // [P, F] → columns [t0, t1) of [F, L].
        let hid = if a < d {
            &mut ws.y[a * l..(a + f) * l]
        } else {
            &mut ws.hidden[..f * l]
        };
        let post: &[f32] = post;
        hid.par_chunks_mut(l).enumerate().for_each(|(j, row)| {
            for (r, o) in row[t0..t1].iter_mut().enumerate() {
                *o = post[r * f + j];
            }
        });
    }
    Ok(())
}

/// The MLP of block `i`, in place on `ws.x` (`x += fc2(gelu(fc1(LN2(x))))`).
fn mlp(lm: &HyenaLm, i: usize, ws: &mut InferWorkspace) -> Result<()> {
    let cfg = &lm.cfg;
    let (l, d, di) = (ws.l, ws.d, cfg.d_inner);
    let blk = &lm.params.blocks[i];
    let pch = ws.chunk;
    // The fc1 and gelu outputs [P, d_inner] go into Y, free until the next block's mixer, when
    // it is large enough (L >= 8·P at d_inner = 4D): separate buffers would stay allocated
    // (16 MiB at P = 2048) or, freed and reallocated, stay resident.
    let need = pch.min(l) * di;
    let in_y = ws.y.len() >= 2 * need;
    if in_y {
        grow(&mut ws.h, pch * d);
        grow(&mut ws.mu, pch);
        grow(&mut ws.rs, pch);
    } else {
        chunk_buffers(ws, di);
    }
    let InferWorkspace {
        x,
        y,
        h,
        u,
        s,
        mu,
        rs,
        ..
    } = ws;
    let (fc1, act) = if in_y {
        let (a, b) = y.split_at_mut(need);
        (a, &mut b[..need])
    } else {
        (&mut u[..need], &mut s[..need])
    };
    for t0 in (0..l).step_by(pch) {
        let t1 = (t0 + pch).min(l);
        let p = t1 - t0;
        let xr = x.modify(t0 * d, t1 * d);
        norm_rows(
            xr,
            &blk.norm2_w,
            &blk.norm2_b,
            cfg.layer_norm_epsilon,
            d,
            h,
            mu,
            rs,
        )?;
        let a = &mut fc1[..p * di];
        matmul(
            MatMut::rm(a, p, di),
            MatRef::rm(&h[..p * d], p, d),
            MatRef::tr(&blk.fc1_w, d, di),
            false,
        )?;
        let g = &mut act[..p * di];
        bias_gelu_forward(a, &blk.fc1_b, g)?;
        linear_accumulate(g, &blk.fc2_w, &blk.fc2_b, p, di, d, xr)?;
        x.commit(t0 * d, t1 * d);
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
    if ws.x.packed {
        // Unpack into Y's memory (free after the last block; the output itself is [L, D]).
        let n = ws.l * ws.d;
        grow(&mut ws.y, n);
        ws.x.unpack_all(&mut ws.y[..n]);
        ws.out_in_y = true;
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
        let xr = ws.x.modify(t0 * d, t1 * d);
        norm_rows(
            xr,
            &lm.params.lnf_w,
            &lm.params.lnf_b,
            lm.cfg.layer_norm_epsilon,
            d,
            &mut ws.h,
            &mut ws.mu,
            &mut ws.rs,
        )?;
        xr.copy_from_slice(&ws.h[..p * d]);
        ws.x.commit(t0 * d, t1 * d);
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
            MatRef::rm(ws.x.read(t0 * d, t1 * d), p, d),
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

#[cfg(test)]
mod tests {
    use super::{hidden_states, log_likelihood, pack, unpack, InferWorkspace, FILTER_GROUP};
    use crate::layers::Params;
    use crate::models::lm::{HyenaLm, LmCache, LmConfig};
    use crate::ops::gradcheck::rand_vec;
    use crate::{FilterConfig, FilterLayout, HyenaConfig};

    #[test]
    fn pack24_rounds_to_nearest_even_and_round_trips() {
        let vals: Vec<f32> = [
            0.0f32,
            -0.0,
            1.0,
            -3.5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
        ]
        .into_iter()
        .chain(rand_vec(100_000, 3, 1e3))
        .chain([f32::from_bits(0x3f80_0080), f32::from_bits(0x3f80_0180)])
        .collect();
        let mut v = vals.clone();
        let (mut hi, mut lo) = (vec![0u16; v.len()], vec![0u8; v.len()]);
        pack(&mut v, &mut hi, &mut lo);
        let mut back = vec![0f32; v.len()];
        unpack(&hi, &lo, &mut back);
        for (i, ((&x, &r), &b)) in vals.iter().zip(&v).zip(&back).enumerate() {
            // What is stored is what the chunk now holds.
            assert_eq!(r.to_bits(), b.to_bits(), "{i}");
            assert_eq!(r.to_bits() & 0xff, 0);
            if x.is_finite() {
                // The nearest 24-bit value (subnormals included): at most half a unit of the
                // last kept bit away, i.e. 0x80 in the bits, with the same sign.
                let diff = (r.to_bits() as i64 - x.to_bits() as i64).abs();
                assert!(diff <= 0x80, "{i}: {x} -> {r}");
                if x.is_normal() && x.abs() < f32::MAX / 2.0 {
                    assert!(((r - x) / x).abs() <= 2f32.powi(-16), "{i}: {x} -> {r}");
                }
            } else if x.is_infinite() {
                assert_eq!(r, x);
            }
        }
        // Ties go to the even neighbour: 1 + 2^-16 (a tie, odd bit 0) rounds down to 1, and
        // 1 + 3·2^-16... (a tie above an odd value) rounds up.
        let n = vals.len();
        assert_eq!(v[n - 2], 1.0);
        assert_eq!(v[n - 1].to_bits(), 0x3f80_0200);
        let mut nan = [f32::NAN, f32::from_bits(0x7fff_ffff)];
        let (mut h2, mut l2) = ([0u16; 2], [0u8; 2]);
        pack(&mut nan, &mut h2, &mut l2);
        assert!(nan.iter().all(|v| v.is_nan()));
    }

    /// A 2-block model of width `d` and filter MLP width `f`, every parameter moved away from
    /// its init so that each one matters.
    fn model(d: usize, f: usize, l_max: usize, seed: u64) -> HyenaLm {
        let cfg = LmConfig {
            n_layer: 2,
            d_inner: 2 * d,
            operator: HyenaConfig {
                d_model: d,
                l_max,
                filter: FilterConfig {
                    emb_dim: 5,
                    filter_order: f,
                    w: 10.0,
                    shift: 0.05,
                    layout: FilterLayout::Blocked,
                    ..FilterConfig::default()
                },
                ..HyenaConfig::default()
            },
            ..LmConfig::default()
        };
        let mut lm = HyenaLm::new(&cfg, seed).unwrap();
        let mut i = 0u64;
        lm.params.visit_mut("", &mut |_, _, v| {
            i += 1;
            let r = rand_vec(v.len(), 90 + i, 0.3);
            for (x, n) in v.iter_mut().zip(r) {
                *x += n;
            }
        });
        lm
    }

    fn tokens(n: usize, seed: u64) -> Vec<u32> {
        rand_vec(n, seed, 1.0)
            .iter()
            .map(|v| 7 + ((v + 1.0) * 2.499) as u32)
            .collect()
    }

    /// The final hidden states of the lean forward against the training forward's, for `lm`
    /// at several lengths and chunk sizes.
    fn check_against_training(lm: &HyenaLm, what: &str) {
        for l in [1usize, 9, 130, 257] {
            let toks = tokens(l, 3 + l as u64);
            let mut cache = LmCache::default();
            lm.forward_hidden(&toks, 1, l, &mut cache).unwrap();
            let want = cache.hidden();
            let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            for chunk in [5usize, 64, 2048] {
                let mut ws = InferWorkspace::new(chunk);
                let got = hidden_states(lm, &toks, lm.cfg.n_layer, &mut ws).unwrap();
                let err = got
                    .iter()
                    .zip(want)
                    .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                // Float rounding only: about 1e-6 of the scale, up to 3e-5 with 5-row chunks
                // (the same as before the channel split and the M-point transforms).
                assert!(
                    err < 1e-4 * scale,
                    "{what}: L={l} chunk={chunk}: {err} (scale {scale})"
                );
                let mut lp = Vec::new();
                let total = log_likelihood(lm, &toks, &mut ws, &mut lp).unwrap();
                assert_eq!(lp.len(), l - 1);
                assert!(total.is_finite());
            }
        }
    }

    /// F < D with several groups on both sides of the split, neither a multiple of the group:
    /// channels [0, 25) are convolved while the filter MLP's output sits in the rows of
    /// [25, 45), which then take their filters and run in groups of their own.
    #[test]
    fn split_channels_match_the_training_forward() {
        let (d, f) = (45, 20);
        let g = FILTER_GROUP;
        assert!(d - f > g && f > g && (d - f) % g != 0 && f % g != 0);
        check_against_training(&model(d, f, 300, 1), "split");
    }

    /// F = D: every channel lends its row to the filter MLP's output first.
    #[test]
    fn all_channels_in_the_second_set() {
        check_against_training(&model(16, 16, 300, 2), "F = D");
    }

    /// F > D: the filter MLP's output cannot sit in Y and has its own buffer.
    #[test]
    fn wide_filter_mlp_uses_its_own_buffer() {
        check_against_training(&model(12, 20, 300, 3), "F > D");
    }

    /// Explicit (distilled) filters: convolved straight from the model's rows.
    #[test]
    fn explicit_filters_match_the_training_forward() {
        let mut lm = model(20, 16, 300, 4);
        for i in 0..lm.cfg.n_layer {
            let k = rand_vec(20 * 300, 40 + i as u64, 0.2);
            lm.operator_mut(i).set_explicit_filters(Some(k)).unwrap();
        }
        check_against_training(&lm, "explicit");
    }
}
