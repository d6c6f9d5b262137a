//! Short depthwise causal convolution: the Hyena `short_filter` (safari
//! `src/models/sequence/hyena.py`, `HyenaOperator.forward`; the same in HyenaDNA).
//!
//! PyTorch's `Conv1d(C, C, K, groups=C, padding=K-1)` truncated to the first L outputs, i.e. a
//! causal *cross-correlation* with left zero padding, bias included:
//! `y[c, t] = bias[c] + Σ_{j=0}^{K-1} w[c, j] · x[c, t-(K-1)+j]` — the newest sample meets `w[c, K-1]`.
//! Rows follow a [`RowLayout`] (the operator uses `[C, B, L]`). Weight `[C, 1, K]` is stored as `[C, K]`.

use rayon::prelude::*;

use crate::error::{check_len, Result};
use crate::ops::fftconv::RowLayout;
use crate::ops::{lanes8, simd_fn, SyncPtr};

fn check(op: &'static str, lay: &RowLayout, x: usize, w: usize, b: usize, k: usize) -> Result<()> {
    check_len(op, "x (rows)", x, lay.numel())?;
    check_len(op, "weight [C, 1, K]", w, lay.chans * k)?;
    check_len(op, "bias [C]", b, lay.chans)
}

/// Forward: `x` (layout) → `y` (layout).
pub fn forward(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    k: usize,
    lay: RowLayout,
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "short_conv forward";
    check(OP, &lay, x.len(), w.len(), bias.len(), k)?;
    check_len(OP, "y (rows)", y.len(), lay.numel())?;
    let l = lay.len;
    let yp = SyncPtr::new(y);
    (0..lay.chans).into_par_iter().for_each(|c| {
        let wc = &w[c * k..(c + 1) * k];
        for b in 0..lay.batch {
            let off = b * lay.batch_stride + c * lay.chan_stride;
            let xr = &x[off..off + l];
            // SAFETY: row (b, c) belongs to this task alone.
            let yr = unsafe { yp.slice(off, l) };
            row_forward(yr, xr, wc, bias[c]);
        }
    });
    Ok(())
}

/// [`forward`] on `x + in_bias` (a per-channel bias of the layer that produced `x`, added
/// here in place so that `x` ends up holding the biased input that the backward needs): the
/// Hyena operator's in_proj bias costs no separate pass over its `[C, B·L]` output.
#[allow(clippy::too_many_arguments)]
pub fn forward_biased_input(
    x: &mut [f32],
    in_bias: &[f32],
    w: &[f32],
    bias: &[f32],
    k: usize,
    lay: RowLayout,
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "short_conv forward";
    check(OP, &lay, x.len(), w.len(), bias.len(), k)?;
    check_len(OP, "input bias [C]", in_bias.len(), lay.chans)?;
    check_len(OP, "y (rows)", y.len(), lay.numel())?;
    let l = lay.len;
    let xp = SyncPtr::new(x);
    let yp = SyncPtr::new(y);
    (0..lay.chans).into_par_iter().for_each(|c| {
        let wc = &w[c * k..(c + 1) * k];
        for b in 0..lay.batch {
            let off = b * lay.batch_stride + c * lay.chan_stride;
            // SAFETY: row (b, c) of x and of y belongs to this task alone.
            let (xr, yr) = unsafe { (xp.slice(off, l), yp.slice(off, l)) };
            add_scalar(xr, in_bias[c]);
            row_forward(yr, xr, wc, bias[c]);
        }
    });
    Ok(())
}

simd_fn! {
    fn add_scalar(xr: &mut [f32], v: f32) {
        for x in xr.iter_mut() {
            *x += v;
        }
    }
}

simd_fn! {
    /// One row: `y = bias + Σ_j w[j] · x shifted right by K-1-j`.
    fn row_forward(yr: &mut [f32], xr: &[f32], wc: &[f32], bias: f32) {
        let (l, k) = (yr.len(), wc.len());
        yr.fill(bias);
        // Tap j reads x shifted right by s = K-1-j: y[t] += w[j] · x[t - s].
        for (j, &wj) in wc.iter().enumerate() {
            let s = k - 1 - j;
            if s >= l {
                continue;
            }
            for (yt, xt) in yr[s..].iter_mut().zip(&xr[..l - s]) {
                *yt += wj * xt;
            }
        }
    }
}

simd_fn! {
    /// One row of the backward, in place: `gr` holds `dy` on entry and `dx` on return;
    /// accumulates the row's `dw [K]` and `db`.
    fn row_backward(gr: &mut [f32], xr: &[f32], wc: &[f32], dwc: &mut [f32], dbc: &mut f32) {
        let (l, k) = (gr.len(), wc.len());
        *dbc += lanes8(gr, gr, gr, |g, _, _| g);
        // y[t] += w[j] x[t-s] with s = K-1-j  ⇒  dw[j] += Σ_t dy[t] x[t-s].
        for (j, dwj) in dwc.iter_mut().enumerate() {
            let s = k - 1 - j;
            if s < l {
                let (g, x) = (&gr[s..], &xr[..l - s]);
                *dwj += lanes8(g, x, x, |g, x, _| g * x);
            }
        }
        // dx[t] = Σ_j w[j] dy[t+s_j]. In place, in blocks: a block's outputs are computed into
        // a stack buffer from dy[t0..t0+n+K-1] (not yet overwritten: earlier blocks only wrote
        // behind t0), then copied back.
        // Output t reads dy[t..t+K], all inside the row while t + K <= l: those outputs take
        // the branch-free path; only the last K-1 outputs of the row need bounds tests.
        const BLK: usize = 256;
        let mut tmp = [0.0f32; BLK];
        let fast_end = (l + 1).saturating_sub(k);
        let mut t0 = 0;
        while t0 < l {
            let n = BLK.min(l - t0);
            let out = &mut tmp[..n];
            let nf = fast_end.saturating_sub(t0).min(n);
            let (fast, slow) = out.split_at_mut(nf);
            fast.fill(0.0);
            if nf > 0 {
                for (j, &wj) in wc.iter().enumerate() {
                    let src = &gr[t0 + k - 1 - j..t0 + k - 1 - j + nf];
                    for (o, &v) in fast.iter_mut().zip(src) {
                        *o += wj * v;
                    }
                }
            }
            for (i, o) in slow.iter_mut().enumerate() {
                let t = t0 + nf + i;
                let mut acc = 0.0f32;
                for (j, &wj) in wc.iter().enumerate() {
                    let src = t + (k - 1 - j);
                    if src < l {
                        acc += wj * gr[src];
                    }
                }
                *o = acc;
            }
            gr[t0..t0 + n].copy_from_slice(out);
            t0 += n;
        }
    }
}

/// Backward: writes `dx` (layout), *accumulates* `dw [C, K]` and `db [C]`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    k: usize,
    lay: RowLayout,
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
) -> Result<()> {
    check_len("short_conv backward", "dy (rows)", dy.len(), lay.numel())?;
    check_len("short_conv backward", "dx (rows)", dx.len(), lay.numel())?;
    dx.copy_from_slice(dy);
    backward_inplace(dx, x, w, k, lay, dw, db)
}

/// Backward in place: `g` holds `dy` on entry and `dx` on return (saves one activation-sized
/// buffer in the operator). *Accumulates* `dw [C, K]` and `db [C]`.
///
/// `dx[t] = Σ_j w[j] dy[t + K-1-j]` reads only `dy[t..t+K]`, so an ascending sweep can overwrite
/// `dy[t]` once `dx[t]` is known.
pub fn backward_inplace(
    g: &mut [f32],
    x: &[f32],
    w: &[f32],
    k: usize,
    lay: RowLayout,
    dw: &mut [f32],
    db: &mut [f32],
) -> Result<()> {
    const OP: &str = "short_conv backward";
    check(OP, &lay, x.len(), w.len(), db.len(), k)?;
    check_len(OP, "dy (rows)", g.len(), lay.numel())?;
    check_len(OP, "dw [C, K]", dw.len(), lay.chans * k)?;
    let l = lay.len;
    let gp = SyncPtr::new(g);
    let dwp = SyncPtr::new(dw);
    let dbp = SyncPtr::new(db);
    (0..lay.chans).into_par_iter().for_each(|c| {
        let wc = &w[c * k..(c + 1) * k];
        // SAFETY: channel c's weight/bias gradients and rows belong to this task alone.
        let dwc = unsafe { dwp.slice(c * k, k) };
        let dbc = unsafe { dbp.slice(c, 1) };
        for b in 0..lay.batch {
            let off = b * lay.batch_stride + c * lay.chan_stride;
            let xr = &x[off..off + l];
            let gr = unsafe { gp.slice(off, l) };
            row_backward(gr, xr, wc, dwc, &mut dbc[0]);
        }
    });
    Ok(())
}

/// The definition, literally, in f64.
/// Streaming forward over position-major rows, one chunk of a sequence at a time (the
/// memory-lean inference path). `x: [P, C]` is the chunk's input, `carry: [K-1, C]` the K−1
/// input rows before it (zeros at the start of a sequence; updated here to the chunk's last
/// K−1 rows, so the next call continues the sequence), `w: [C, K]`, `bias: [C]`, `y: [P, C]`.
/// Chunks of any size give exactly [`forward`]'s result on the whole sequence.
#[allow(clippy::too_many_arguments)]
pub fn forward_rows_carry(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    k: usize,
    c: usize,
    carry: &mut [f32],
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "short_conv forward (rows)";
    let p = x.len().checked_div(c).unwrap_or(0);
    check_len(OP, "x [P, C]", x.len(), p * c)?;
    check_len(OP, "weight [C, 1, K]", w.len(), c * k)?;
    check_len(OP, "bias [C]", bias.len(), c)?;
    check_len(OP, "carry [K-1, C]", carry.len(), k.saturating_sub(1) * c)?;
    check_len(OP, "y [P, C]", y.len(), p * c)?;
    if k == 0 {
        return Err(crate::Error::shape(OP, "kernel size", "K >= 1", 0));
    }
    // Taps as [K, C] so the inner loop runs along contiguous channels.
    let mut wt = vec![0.0f32; k * c];
    for ch in 0..c {
        for j in 0..k {
            wt[j * c + ch] = w[ch * k + j];
        }
    }
    let h = k - 1;
    y.par_chunks_mut(64 * c).enumerate().for_each(|(blk, yb)| {
        for (i, yr) in yb.chunks_exact_mut(c).enumerate() {
            let t = blk * 64 + i;
            yr.copy_from_slice(bias);
            for j in 0..k {
                // input row t-(K-1)+j: inside the chunk, or in the carry before it.
                let src = if t + j >= h {
                    let r = t + j - h;
                    &x[r * c..(r + 1) * c]
                } else {
                    let r = t + j; // carry row index, < K-1
                    &carry[r * c..(r + 1) * c]
                };
                axpy_row(yr, &wt[j * c..(j + 1) * c], src);
            }
        }
    });
    // The new carry: the last K−1 input rows (from the old carry when the chunk is shorter).
    if p >= h {
        carry.copy_from_slice(&x[(p - h) * c..]);
    } else {
        carry.copy_within(p * c.., 0);
        carry[(h - p) * c..].copy_from_slice(x);
    }
    Ok(())
}

simd_fn! {
    fn axpy_row(y: &mut [f32], a: &[f32], x: &[f32]) {
        for ((yv, &av), &xv) in y.iter_mut().zip(a).zip(x) {
            *yv += av * xv;
        }
    }
}

pub mod reference {
    use crate::ops::fftconv::RowLayout;

    /// `y[c, t] = bias[c] + Σ_j w[c, j] x[c, t-(K-1)+j]` with `x[<0] = 0`.
    pub fn forward(x: &[f32], w: &[f32], bias: &[f32], k: usize, lay: RowLayout) -> Vec<f32> {
        let mut y = vec![0.0; lay.numel()];
        for b in 0..lay.batch {
            for c in 0..lay.chans {
                let off = b * lay.batch_stride + c * lay.chan_stride;
                for t in 0..lay.len {
                    let mut acc = bias[c] as f64;
                    for j in 0..k {
                        let src = t as isize - (k as isize - 1) + j as isize;
                        if src >= 0 {
                            acc += w[c * k + j] as f64 * x[off + src as usize] as f64;
                        }
                    }
                    y[off + t] = acc as f32;
                }
            }
        }
        y
    }
}
