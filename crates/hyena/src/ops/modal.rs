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
//!
//! [`modal_complex_forward`] is the same with complex poles `p` and residues `R` (StripedHyena 1,
//! `hyena-family.md` section 7.3: `h[c, t] = Re Σ_n R[c, n] · p[c, n]^t`, stored as (re, im)
//! pairs `[C, N, 2]`): `x_n[t] = p_n · x_n[t−1] + u[t]` (complex), `y[t] = Re Σ_n R_n · x_n[t]`.
//! The reference (stripedhyena `HyenaInferenceEngine.parallel_iir`) builds `h` by
//! `exp(t · log p)` and convolves by FFT; its prefill runs this recurrence (section 7.4).

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
    if c == 0 {
        return Ok(());
    }
    let (l, n) = check_shapes("modal forward", u, y, log_poles, residues, state, d, c)?;
    let lambda: Vec<f32> = log_poles.iter().map(|&a| a.exp()).collect();
    per_channel_block(state, n, c, l, y, |st, c0, cn, t, yr| {
        let ur = &u[t * c + c0..t * c + c0 + cn];
        let (lam, res) = (
            &lambda[c0 * n..(c0 + cn) * n],
            &residues[c0 * n..(c0 + cn) * n],
        );
        modal_step(st, lam, res, ur, n, yr);
        if let Some(d) = d {
            for ((yv, &uv), &dv) in yr.iter_mut().zip(ur).zip(&d[c0..c0 + cn]) {
                *yv += dv * uv;
            }
        }
    });
    Ok(())
}

/// Run `step(state block, c0, cn, t, y row)` at every position `t` for each block of [`CHANS`]
/// channels `c0 .. c0 + cn` (state `[C, W]`, its block `[cn, W]`; `y [L, C]`, the row's slice
/// of those channels), the blocks in parallel.
fn per_channel_block(
    state: &mut [f32],
    w: usize,
    c: usize,
    l: usize,
    y: &mut [f32],
    step: impl Fn(&mut [f32], usize, usize, usize, &mut [f32]) + Sync + Send,
) {
    let yp = super::SyncPtr::new(y);
    state
        .par_chunks_mut(CHANS * w)
        .enumerate()
        .for_each(|(blk, st)| {
            let c0 = blk * CHANS;
            let cn = st.len() / w.max(1);
            for t in 0..l {
                // SAFETY: this task writes only channels c0..c0+cn of each row; the blocks of
                // channels are disjoint across tasks.
                let yr = unsafe { yp.slice(t * c + c0, cn) };
                step(st, c0, cn, t, yr);
            }
        });
}

/// Check the shapes of a modal forward over `c > 0` channels: `u`, `y [L, C]`, the per-channel
/// parameters and state `[C, W]` (`W` modes, or `2·modes` for (re, im) pairs), `D [C]`;
/// returns `(L, W)`.
#[allow(clippy::too_many_arguments)]
fn check_shapes(
    op: &'static str,
    u: &[f32],
    y: &[f32],
    poles: &[f32],
    residues: &[f32],
    state: &[f32],
    d: Option<&[f32]>,
    c: usize,
) -> Result<(usize, usize)> {
    let w = poles.len() / c;
    let l = u.len() / c;
    check_len(op, "u [L, C]", u.len(), l * c)?;
    check_len(op, "y [L, C]", y.len(), l * c)?;
    check_len(op, "poles [C, N]", poles.len(), c * w)?;
    check_len(op, "residues [C, N]", residues.len(), c * w)?;
    check_len(op, "state [C, N]", state.len(), c * w)?;
    if let Some(d) = d {
        check_len(op, "D [C]", d.len(), c)?;
    }
    Ok((l, w))
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

/// The complex form (module docs): poles and residues `[C, N, 2]` as (re, im), state
/// `[C, N, 2]` (zeros at a sequence start; left at the last position's state).
pub fn modal_complex_forward(
    u: &[f32],
    poles: &[f32],
    residues: &[f32],
    d: Option<&[f32]>,
    c: usize,
    state: &mut [f32],
    y: &mut [f32],
) -> Result<()> {
    if c == 0 {
        return Ok(());
    }
    let (l, n2) = check_shapes("complex modal forward", u, y, poles, residues, state, d, c)?;
    if !n2.is_multiple_of(2) {
        return Err(crate::error::Error::config(
            "poles",
            n2,
            "complex poles are (re, im) pairs: the last axis must have length 2",
        ));
    }
    per_channel_block(state, n2, c, l, y, |st, c0, cn, t, yr| {
        let ur = &u[t * c + c0..t * c + c0 + cn];
        let (pl, res) = (
            &poles[c0 * n2..(c0 + cn) * n2],
            &residues[c0 * n2..(c0 + cn) * n2],
        );
        for ch in 0..cn {
            let (xs, ps, rs) = (
                &mut st[ch * n2..(ch + 1) * n2],
                &pl[ch * n2..(ch + 1) * n2],
                &res[ch * n2..(ch + 1) * n2],
            );
            let uv = ur[ch];
            let mut acc = 0.0f32;
            for ((x, p), r) in xs
                .chunks_exact_mut(2)
                .zip(ps.chunks_exact(2))
                .zip(rs.chunks_exact(2))
            {
                let re = p[0] * x[0] - p[1] * x[1] + uv;
                let im = p[0] * x[1] + p[1] * x[0];
                x[0] = re;
                x[1] = im;
                acc += r[0] * re - r[1] * im;
            }
            yr[ch] = acc + d.map_or(0.0, |d| d[c0 + ch] * uv);
        }
    });
    Ok(())
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
        convolve(&filter(log_poles, residues, c, l), u, d, c)
    }

    /// Direct causal convolution of `u [L, C]` with the filters `h [C, L]`, plus `D ⊙ u`.
    fn convolve(h: &[f64], u: &[f32], d: Option<&[f32]>, c: usize) -> Vec<f32> {
        let l = u.len() / c;
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

    /// The complex filter `h [C, L] = Re Σ_n R · exp(t · log p)` (principal log, as the
    /// reference), in f64, and the direct causal convolution of `u [L, C]` with it plus `D ⊙ u`.
    pub fn modal_complex(
        u: &[f32],
        poles: &[f32],
        residues: &[f32],
        d: Option<&[f32]>,
        c: usize,
    ) -> Vec<f32> {
        use realfft::num_complex::Complex64;
        let l = u.len() / c;
        let n = poles.len() / (2 * c);
        let mut h = vec![0.0f64; c * l];
        for ch in 0..c {
            for m in 0..n {
                let i = 2 * (ch * n + m);
                let p = Complex64::new(poles[i] as f64, poles[i + 1] as f64);
                let r = Complex64::new(residues[i] as f64, residues[i + 1] as f64);
                let lp = p.ln();
                for t in 0..l {
                    h[ch * l + t] += (r * (lp * t as f64).exp()).re;
                }
            }
        }
        convolve(&h, u, d, c)
    }
}
