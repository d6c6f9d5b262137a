//! Long convolutions by filters that are sums of real exponentials, computed as the
//! recurrences they are: StripedHyena 2's Hyena-LI (Ku et al., arXiv 2503.01868, Sec. 2.1;
//! vortex `HyenaCascade.compute_filter` and `engine.parallel_iir`).
//!
//! Channel `c` has `N` modes with log-poles `a[c, n]` (real, ≤ 0 in trained models) and
//! residues `R[c, n]`; its filter is `h[c, t] = Σ_n R[c, n] · exp(a[c, n] · t)`, `t = 0, 1, …`.
//! The reference builds `h` over the whole length and convolves by FFT of size `2L`; since
//! `Σ_{s≤t} h[t−s] u[s] = Σ_n R_n · x_n[t]` with `x_n[t] = e^{a_n} · x_n[t−1] + u[t]`, the same
//! output is `N` first-order recurrences per channel: `O(L·C·N)` work, exact (no spectral
//! rounding), and the state `x [C, N]` after the last position is what recurrent decoding and a
//! chunked forward carry on from (the reference's prefill computes it by a second FFT).
//! `y[t, c] += D[c] · u[t, c]` (the skip term) is added when `d` is given.
//!
//! Activations are time-major `[L, C]`; the work is split over blocks of channels.

use rayon::prelude::*;

use crate::error::{check_len, Result};

/// Channels per parallel task.
const CHANS: usize = 16;

/// `y [L, C] = Σ_n R ⊙ x_n (+ D ⊙ u)` for `u [L, C]`, log-poles and residues `[C, N]`, starting
/// from `state [C, N]` (zeros for a sequence start) and leaving the state after the last
/// position in it.
pub fn modal_forward(
    u: &[f32],
    log_poles: &[f32],
    residues: &[f32],
    d: Option<&[f32]>,
    c: usize,
    state: &mut [f32],
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "modal forward";
    if c == 0 {
        return Ok(());
    }
    let n = log_poles.len() / c;
    let l = u.len() / c;
    check_len(OP, "u [L, C]", u.len(), l * c)?;
    check_len(OP, "y [L, C]", y.len(), l * c)?;
    check_len(OP, "log_poles [C, N]", log_poles.len(), c * n)?;
    check_len(OP, "residues [C, N]", residues.len(), c * n)?;
    check_len(OP, "state [C, N]", state.len(), c * n)?;
    if let Some(d) = d {
        check_len(OP, "D [C]", d.len(), c)?;
    }
    let lambda: Vec<f32> = log_poles.iter().map(|&a| a.exp()).collect();
    let yp = super::SyncPtr::new(y);
    state
        .par_chunks_mut(CHANS * n)
        .enumerate()
        .for_each(|(blk, st)| {
            let c0 = blk * CHANS;
            let cn = st.len() / n.max(1);
            let lam = &lambda[c0 * n..(c0 + cn) * n];
            let res = &residues[c0 * n..(c0 + cn) * n];
            for t in 0..l {
                let ur = &u[t * c + c0..t * c + c0 + cn];
                // SAFETY: this task writes only channels c0..c0+cn of each row; the blocks of
                // channels are disjoint across tasks.
                let yr = unsafe { yp.slice(t * c + c0, cn) };
                modal_step(st, lam, res, ur, n, yr);
                if let Some(d) = d {
                    for ((yv, &uv), &dv) in yr.iter_mut().zip(ur).zip(&d[c0..c0 + cn]) {
                        *yv += dv * uv;
                    }
                }
            }
        });
    Ok(())
}

super::simd_fn! {
    /// One position for a block of channels: `x ← λ ⊙ x + u`, `y = Σ_n R ⊙ x`.
    fn modal_step(x: &mut [f32], lam: &[f32], res: &[f32], u: &[f32], n: usize, y: &mut [f32]) {
        for (((xs, ls), rs), (&uv, yv)) in x
            .chunks_exact_mut(n)
            .zip(lam.chunks_exact(n))
            .zip(res.chunks_exact(n))
            .zip(u.iter().zip(y.iter_mut()))
        {
            let mut acc = 0.0f32;
            for ((xv, &lv), &rv) in xs.iter_mut().zip(ls).zip(rs) {
                *xv = lv * *xv + uv;
                acc += rv * *xv;
            }
            *yv = acc;
        }
    }
}

/// Slow, obviously correct versions for the tests.
pub mod reference {
    /// The filter `h [C, L]` of the module docs, in f64.
    pub fn filter(log_poles: &[f32], residues: &[f32], c: usize, l: usize) -> Vec<f64> {
        let n = log_poles.len() / c;
        let mut h = vec![0.0f64; c * l];
        for ch in 0..c {
            for t in 0..l {
                h[ch * l + t] = (0..n)
                    .map(|m| {
                        residues[ch * n + m] as f64
                            * (log_poles[ch * n + m] as f64 * t as f64).exp()
                    })
                    .sum();
            }
        }
        h
    }

    /// Direct causal convolution of `u [L, C]` with [`filter`], plus `D ⊙ u`.
    pub fn modal(
        u: &[f32],
        log_poles: &[f32],
        residues: &[f32],
        d: Option<&[f32]>,
        c: usize,
    ) -> Vec<f32> {
        let l = u.len() / c;
        let h = filter(log_poles, residues, c, l);
        let mut y = vec![0.0f32; l * c];
        for t in 0..l {
            for ch in 0..c {
                let mut acc: f64 = (0..=t)
                    .map(|s| h[ch * l + (t - s)] * u[s * c + ch] as f64)
                    .sum();
                if let Some(d) = d {
                    acc += d[ch] as f64 * u[t * c + ch] as f64;
                }
                y[t * c + ch] = acc as f32;
            }
        }
        y
    }
}
