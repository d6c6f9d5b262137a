//! The Hyena operator's memory-lean forward: `x += operator(norm(x))` in place on the
//! residual stream of one long sequence ([`crate::layers::lean`]), for embeddings and
//! likelihoods of up to a million bases on a CPU. Order-2 operators (HyenaDNA) only.
//!
//! It keeps one channel-major buffer `Y [D, L]` for the long convolutions. The operator's
//! channels split in two, `A = [0, D−F)` and `B = [D−F, D)` (F: the filter MLP's width), so
//! that B's rows of `Y` can hold the filter MLP's output while A is convolved:
//!
//! 1. The filter MLP on the first L grid points, `hidden [F, L]`, into B's rows of `Y`.
//! 2. Position chunks of `P` rows: `norm → in_proj` (the `x1`, `v` columns of A) → short
//!    filter (a K−1-row carry links the chunks) → `w = x1 ⊙ v`, written transposed into A's
//!    rows. The norm's per-position statistics are kept (`2L` floats) for the later passes.
//! 3. Per group of G channels of A: the filters `W_out · hidden` with their decay windows
//!    (`[G, L]`), then one FFT convolution per channel, in place in `Y` ([`RowConv`]: about
//!    `3L` floats of working memory per thread).
//! 4. B's filters replace `hidden` in place, chunk by chunk of positions (the filters at
//!    positions `[t0, t1)` need only those columns of `hidden`). Then per group of G channels
//!    of B: a pass like step 2 writes their `w` into the `[G, L]` buffer, and each
//!    convolution is written over its filter's row.
//! 5. Position chunks again: `norm → in_proj` for the `x0` columns (recomputed rather than
//!    stored: it costs no extra FLOPs, since the earlier passes skipped them), `y = x0 ⊙ Y`,
//!    then `x += out_proj(y)`.
//!
//! Holding `x` and `Y` in f32 costs `2DL` floats (1.91 GiB at D = 256, L = 1M). Peak memory is
//! `x` + `Y` plus the `[G, L]` group, the FFT working memory of each thread and its plan, the
//! norm's statistics and the parameters. Keeping `hidden` inside `Y` saves `F·L` floats
//! (244 MiB at 1M) for F/G extra passes over `x` in step 4; their matrix products only split
//! step 2's, so what they add is reading `x` and applying the norm. With F > D, or explicit
//! filters, every channel is in A and `hidden` (if any) has a buffer of its own. Results equal
//! the training forward's up to float rounding (tested in `models::hyenadna::lean`).

use std::sync::Mutex;

use rayon::prelude::*;

use super::filter::window_row;
use super::HyenaOperator;
use crate::error::{Error, Result};
use crate::layers::lean::{ln_apply, InferWorkspace};
use crate::layers::norm::LayerNorm;
use crate::ops::act::sin_forward;
use crate::ops::fftconv::{RowConv, RowConvScratch};
use crate::ops::grow;
use crate::ops::linear::{linear_accumulate, linear_forward, matmul, MatMut, MatRef};
use crate::ops::short_conv::forward_rows_carry;

/// Channels handled together (`[G, L]`, 31 MiB at L = 1M): A's filters materialised at once
/// (each group reads all of `hidden`), and B's convolution inputs made by one pass over `x`
/// (F/G passes, each about 1% of a block's time at HyenaDNA's shapes). 16 measured a few
/// percent faster for 31 MiB more at 1M; 4 would add eight more passes to save 15 MiB.
pub(crate) const FILTER_GROUP: usize = 8;

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

impl HyenaOperator {
    /// Whether [`HyenaOperator::forward_lean`] can run this operator (order 2).
    pub fn check_lean(&self) -> Result<()> {
        if self.cfg.order != 2 {
            return Err(Error::config(
                "operator.order",
                self.cfg.order,
                "lean inference (embed/score) supports order-2 operators (HyenaDNA)",
            ));
        }
        Ok(())
    }

    /// `x += operator(norm(x))` on the residual stream of `ws` (one sequence), in place: the
    /// steps of the module docs. `ws` holds the stream that the model's lean forward started in it.
    pub fn forward_lean(&self, p: &[f32], norm: &LayerNorm, ws: &mut InferWorkspace) -> Result<()> {
        self.check_lean()?;
        let cfg = &self.cfg;
        let (l, d) = (ws.l, ws.d);
        let k = cfg.short_filter_order;
        let f = cfg.filter.filter_order;
        let implicit = self.explicit_filters().is_none();
        // Channels [a, d) lend their rows to `hidden` (step 1) until step 4.
        let a = if implicit && f <= d { d - f } else { d };
        grow(&mut ws.y, d * l);
        grow(&mut ws.ln1_mean, l);
        grow(&mut ws.ln1_rstd, l);
        ws.ln1_ready = false;

        // 1. The filter MLP's output.
        if implicit {
            self.filter_hidden(p, ws, a)?;
        }

        // 2. w = x1 ⊙ v for the channels of A, channel-major into Y.
        self.gate_pass(p, norm, ws, (0, a), false)?;

        // 3-4. Long convolutions, in place in Y. The chunk buffers are not needed until
        // step 5: free them rather than carry them through the peak (3 MiB each at P = 2048).
        ws.u = Vec::new();
        ws.s = Vec::new();
        if ws.conv.as_ref().is_none_or(|c| c.len() != l) {
            ws.conv = None;
            ws.scratch.clear();
            ws.conv = Some(RowConv::new(l)?);
        }
        self.convs_a(p, ws, a)?;
        if a < d {
            self.convs_b(p, norm, ws, a)?;
        }
        // Free the group until the next block's convolutions: kept, it would add to the chunk
        // buffers of steps 5 and 2 (the larger of which, [P, 2·|A|], step 3 frees).
        ws.group = Vec::new();

        // 5. y = x0 ⊙ conv; x += out_proj(y).
        ws.chunk_buffers(d);
        ws.carry.clear();
        ws.carry.resize((k - 1) * d, 0.0);
        let x0 = self.proj_rows(p, &[(0, d)]);
        let pch = ws.chunk;
        let (out_w, out_b) = (self.proj.out_w.of(p), self.proj.out_b.of(p));
        for t0 in (0..l).step_by(pch) {
            let t1 = (t0 + pch).min(l);
            let n = t1 - t0;
            proj_chunk(p, norm, ws, t0, n, &x0)?;
            let s = &mut ws.s[..n * d];
            gather_gate(s, d, n, t0, l, &ws.y);
            // The chunk proj_chunk just read: unpacked once.
            let xr = ws.x.modify(t0 * d, t1 * d);
            linear_accumulate(s, out_w, out_b, n, d, d, xr)?;
            ws.x.commit(t0 * d, t1 * d);
        }
        Ok(())
    }

    /// The in_proj output rows `ranges` (`(first, count)`, in this order) with their short
    /// filters.
    fn proj_rows(&self, p: &[f32], ranges: &[(usize, usize)]) -> Proj {
        let (d, k) = (self.cfg.d_model, self.cfg.short_filter_order);
        let pr = &self.proj;
        let (in_w, in_b) = (pr.in_w.of(p), pr.in_b.of(p));
        let (short_w, short_b) = (pr.short_w.of(p), pr.short_b.of(p));
        let c = ranges.iter().map(|r| r.1).sum();
        let mut out = Proj {
            w: Vec::with_capacity(c * d),
            b: Vec::with_capacity(c),
            sw: Vec::with_capacity(c * k),
            sb: Vec::with_capacity(c),
            k,
            c,
        };
        for &(r0, n) in ranges {
            out.w.extend_from_slice(&in_w[r0 * d..(r0 + n) * d]);
            out.b.extend_from_slice(&in_b[r0..r0 + n]);
            out.sw.extend_from_slice(&short_w[r0 * k..(r0 + n) * k]);
            out.sb.extend_from_slice(&short_b[r0..r0 + n]);
        }
        out
    }

    /// `w = x1 ⊙ v` of channels `[c0, c1)` for every position: into their rows of `Y`, or
    /// (with `into_group`) into the group buffer's first rows. One pass over `x`.
    fn gate_pass(
        &self,
        p: &[f32],
        norm: &LayerNorm,
        ws: &mut InferWorkspace,
        (c0, c1): (usize, usize),
        into_group: bool,
    ) -> Result<()> {
        let (l, d, pch) = (ws.l, ws.d, ws.chunk);
        let k = self.cfg.short_filter_order;
        let n = c1 - c0;
        if n == 0 {
            return Ok(());
        }
        let pr = self.proj_rows(p, &[(d + c0, n), (2 * d + c0, n)]);
        ws.chunk_buffers(2 * n);
        ws.carry.clear();
        ws.carry.resize((k - 1) * 2 * n, 0.0);
        if into_group {
            grow(&mut ws.group, n * l);
        }
        for t0 in (0..l).step_by(pch) {
            let rows_n = (t0 + pch).min(l) - t0;
            proj_chunk(p, norm, ws, t0, rows_n, &pr)?;
            let rows = if into_group {
                &mut ws.group[..n * l]
            } else {
                &mut ws.y[c0 * l..c1 * l]
            };
            scatter_gate(&ws.s[..rows_n * 2 * n], n, rows_n, t0, l, rows);
        }
        ws.ln1_ready = true;
        Ok(())
    }

    /// Step 3 of the module docs: A's filters group by group (from `hidden`, or the explicit
    /// filters), one FFT convolution per channel.
    fn convs_a(&self, p: &[f32], ws: &mut InferWorkspace, a: usize) -> Result<()> {
        let cfg = &self.cfg;
        let (l, d) = (ws.l, ws.d);
        let fsz = cfg.filter.filter_order;
        let explicit = self.explicit_filters();
        let fh = self.filter.handles();
        let (w_out, fbias) = (fh.w_out.of(p), fh.bias.of(p));
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
        let bufs = &self.filter.buffers;
        for c0 in (0..a).step_by(g) {
            let gn = g.min(a - c0);
            let rows = &mut rows_a[c0 * l..(c0 + gn) * l];
            let bias = &fbias[c0..c0 + gn];
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
                        MatRef::rm(&w_out[c0 * fsz..(c0 + gn) * fsz], gn, fsz),
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

    /// Step 4 of the module docs: B's filters over `hidden` in B's rows of `Y`, then per
    /// group one pass over `x` for the group's inputs and one convolution per channel, written
    /// over its filter's row.
    fn convs_b(
        &self,
        p: &[f32],
        norm: &LayerNorm,
        ws: &mut InferWorkspace,
        a: usize,
    ) -> Result<()> {
        let (l, d, pch) = (ws.l, ws.d, ws.chunk);
        let fh = self.filter.handles();
        let bufs = &self.filter.buffers;
        let f = d - a; // B's channels = the filter MLP's width
        let fcfg = &self.cfg.filter;
        // B's filters, chunk by chunk of positions: the columns [t0, t1) of hidden [F, L] go
        // to a small [F, P] copy, and W_out[B] [F, F] · that copy replaces them.
        grow(&mut ws.h, f * pch);
        let w_b = &fh.w_out.of(p)[a * f..d * f];
        for t0 in (0..l).step_by(pch) {
            let t1 = (t0 + pch).min(l);
            let n = t1 - t0;
            let hid = &mut ws.y[a * l..d * l];
            let cols = &mut ws.h[..f * n];
            for (j, c) in cols.chunks_exact_mut(n).enumerate() {
                c.copy_from_slice(&hid[j * l + t0..j * l + t1]);
            }
            let dst = MatMut {
                data: &mut hid[t0..],
                rows: f,
                cols: n,
                rs: l,
                cs: 1,
            };
            matmul(dst, MatRef::rm(w_b, f, f), MatRef::rm(cols, f, n), false)?;
            if fcfg.modulate {
                let (t, shift) = (&bufs.t[t0..t1], fcfg.shift);
                hid.par_chunks_mut(l).enumerate().for_each(|(ci, row)| {
                    let dl = bufs.deltas[a + ci].abs();
                    window_row(&mut row[t0..t1], t, dl, shift);
                });
            }
        }
        let fbias = fh.bias.of(p);
        let g = FILTER_GROUP.min(d);
        for c0 in (a..d).step_by(g) {
            let c1 = (c0 + g).min(d);
            self.gate_pass(p, norm, ws, (c0, c1), true)?;
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
                &fbias[c0..c1],
                true,
            )?;
        }
        Ok(())
    }

    /// The filter MLP `Sin(W_n … Sin(W_0 z + b_0) …)` on the first L points of the grid,
    /// chunk by chunk, into `hidden [F, L]`: B's rows of `Y` when `a < D`, else `ws.hidden`.
    fn filter_hidden(&self, p: &[f32], ws: &mut InferWorkspace, a: usize) -> Result<()> {
        let cfg = &self.cfg;
        let (l, d, e, f) = (ws.l, ws.d, cfg.filter.emb_dim, cfg.filter.filter_order);
        let fh = self.filter.handles();
        let z = self.filter.pos_emb(p);
        let freq = fh.freq.of(p);
        if a == d {
            grow(&mut ws.hidden, f * l);
        }
        let pch = ws.chunk;
        // Two [P, F] ping-pong buffers, borrowed from the chunk buffers.
        grow(&mut ws.u, pch * f);
        grow(&mut ws.s, pch * f);
        for t0 in (0..l).step_by(pch) {
            let t1 = (t0 + pch).min(l);
            let n = t1 - t0;
            let (pre, post) = (&mut ws.u[..n * f], &mut ws.s[..n * f]);
            linear_forward(
                &z[t0 * e..t1 * e],
                fh.w0.of(p),
                Some(fh.b0.of(p)),
                n,
                e,
                f,
                pre,
            )?;
            sin_forward(pre, freq, post)?;
            for (w, b) in fh.inner_w.iter().zip(&fh.inner_b) {
                linear_forward(post, w.of(p), Some(b.of(p)), n, f, f, pre)?;
                sin_forward(pre, freq, post)?;
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
}

/// `ws.s[..n·C] = short_filter(in_proj(norm(x[t0..t0+n])))` for the channels of `pr`, the
/// short filter continuing from `ws.carry`. The norm's statistics are computed and kept on
/// the block's first pass, and reused after.
fn proj_chunk(
    p: &[f32],
    norm: &LayerNorm,
    ws: &mut InferWorkspace,
    t0: usize,
    n: usize,
    pr: &Proj,
) -> Result<()> {
    let d = ws.d;
    let (x, h) = (ws.x.read(t0 * d, (t0 + n) * d), &mut ws.h[..n * d]);
    let (mean, rstd) = (&mut ws.ln1_mean[t0..t0 + n], &mut ws.ln1_rstd[t0..t0 + n]);
    if ws.ln1_ready {
        ln_apply(h, x, norm.w.of(p), norm.b.of(p), mean, rstd);
    } else {
        norm.forward(p, x, h, mean, rstd)?;
    }
    let u = &mut ws.u[..n * pr.c];
    linear_forward(&ws.h[..n * d], &pr.w, Some(&pr.b), n, d, pr.c, u)?;
    let s = &mut ws.s[..n * pr.c];
    forward_rows_carry(u, &pr.sw, &pr.sb, pr.k, pr.c, &mut ws.carry, s)
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
