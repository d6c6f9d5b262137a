//! Modal (complex-diagonal) state-space fits of long-convolution filters (Laughing Hyena
//! Distillery, arXiv 2310.18780; the target is the modal form StripedHyena stores as
//! `poles`/`residues`).
//!
//! A fit represents a filter `h [L]` as
//! `ĥ_0 = h_0`, `ĥ_t = Re Σ_n R_n λ_n^{t−1}` for `t ≥ 1`,
//! which is the impulse response of the recurrence
//! `y_t = h_0 u_t + Re Σ_n R_n s_n(t)`, `s_n(t+1) = λ_n s_n(t) + u_t` (state read before update).
//! A real pole costs one state dimension; a complex pole stands for a conjugate pair (its
//! partner is implicit in the real part) and costs two. The *order* of a fit is that real
//! state dimension, the quantity the Hankel rank bounds ([`super::hankel`]).
//!
//! Fitting (after Laughing Hyena Distillery, which has no public code; this is our procedure):
//! 1. ERA / Ho–Kalman: from the SVD `H_0 = U Σ Vᵀ` of the Hankel matrix and its shift `H_1`,
//!    `A = Σ_r^{-1/2} U_rᵀ H_1 V_r Σ_r^{-1/2}`; the poles are the eigenvalues of `A`.
//! 2. Residues by linear least squares over all taps, given the poles.
//! 3. Refinement: Adam on the poles of the variable-projection objective (residues re-solved
//!    by least squares at every step, so the gradient is the partial derivative in the poles),
//!    keeping the best fit seen. Poles stay inside the disc of radius [`MAX_RADIUS`], so the
//!    recurrence stays stable beyond the fitted length.

use faer::linalg::solvers::SolveLstsq;
use faer::{c64, Mat};

use super::hankel::{check_finite, hankel_singular_values, tolerance_rank};
use crate::error::{Error, Result};
use crate::layers::hyena::modal::{ModalFilter, Mode};

/// Largest pole modulus a fit may use. Trained HyenaDNA filters do not decay to zero (their
/// window is `exp(−t|δ|) + shift`), so poles on the unit circle are needed; outside it the
/// recurrence would grow without bound past the fitted length.
pub const MAX_RADIUS: f64 = 1.0;

/// How the order of a fit is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OrderChoice {
    /// This real state dimension.
    Fixed(usize),
    /// The number of Hankel singular values above `tol · σ_1`.
    Tolerance(f64),
}

/// Knobs of [`fit_filter`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FitOptions {
    /// Largest Hankel matrix side (the ERA and the spectrum use taps up to twice this).
    pub max_hankel: usize,
    /// Refinement steps (0: ERA and least squares only).
    pub refine_steps: usize,
    /// Adam step size on the poles (cosine-decayed to 1% over the steps).
    pub lr: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            max_hankel: 512,
            refine_steps: 200,
            lr: 1e-3,
        }
    }
}

/// Result of [`fit_filter`].
#[derive(Clone, Debug, PartialEq)]
pub struct FitReport {
    pub filter: ModalFilter,
    /// `‖ĥ − h‖₂ / ‖h‖₂` over all L taps, after refinement.
    pub rel_err: f64,
    /// The same before refinement (ERA + least squares).
    pub rel_err_initial: f64,
    /// Hankel singular values of `h`, largest first.
    pub hankel_sv: Vec<f64>,
}

/// Largest order the ERA supports at length `l`: the Hankel pair `H_0, H_1` needs `2m + 1`
/// taps `h_1 … h_{2m}`.
pub fn max_order(l: usize) -> usize {
    l.saturating_sub(1) / 2
}

/// Fit one filter `h [L]` (see the module docs).
pub fn fit_filter(h: &[f32], order: OrderChoice, opts: &FitOptions) -> Result<FitReport> {
    check_finite(h)?;
    let l = h.len();
    if l == 0 {
        return Err(Error::config(
            "filter length",
            0,
            "a filter needs at least one tap",
        ));
    }
    let sv = hankel_singular_values(h, opts.max_hankel)?;
    let m = max_order(l).min(opts.max_hankel);
    let r = match order {
        OrderChoice::Fixed(r) => {
            if r > m {
                return Err(Error::config(
                    "order",
                    r,
                    format!(
                        "at most {m} for filters of length {l} (the Hankel matrices need 2·order+1 \
                         taps; at most max_hankel = {}): pass a smaller --order or a --tol",
                        opts.max_hankel
                    ),
                ));
            }
            r
        }
        OrderChoice::Tolerance(tol) => {
            if !(tol.is_finite() && tol > 0.0) {
                return Err(Error::config(
                    "tol",
                    tol,
                    "must be a positive number, e.g. 1e-3",
                ));
            }
            tolerance_rank(&sv, tol).min(m)
        }
    };
    let h64: Vec<f64> = h.iter().map(|&v| v as f64).collect();
    let norm = h64.iter().map(|v| v * v).sum::<f64>().sqrt();
    let rel = |e2: f64| if norm > 0.0 { e2.sqrt() / norm } else { 0.0 };
    let poles = era_poles(&h64, r, m)?;
    let (modes, e2) = fit_residues(&h64, &poles);
    let initial = rel(e2);
    let (modes, e2) = refine(&h64, modes, opts.refine_steps, opts.lr);
    Ok(FitReport {
        filter: ModalFilter { h0: h64[0], modes },
        rel_err: rel(e2),
        rel_err_initial: initial,
        hankel_sv: sv,
    })
}

/// ERA poles of order `r` (at most the numerical rank of the Hankel matrix), from `m × m`
/// Hankel matrices; one pole per conjugate pair, moduli clipped to [`MAX_RADIUS`].
pub fn era_poles(h: &[f64], r: usize, m: usize) -> Result<Vec<c64>> {
    if r == 0 || m == 0 {
        return Ok(Vec::new());
    }
    let h0 = Mat::from_fn(m, m, |i, j| h[1 + i + j]);
    let h1 = Mat::from_fn(m, m, |i, j| h[2 + i + j]);
    let svd = h0
        .thin_svd()
        .map_err(|e| Error::config("filter", "Hankel matrix", format!("SVD failed: {e:?}")))?;
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    // Directions with σ ≈ 0 carry no signal and would blow up Σ^{-1/2}.
    let r = r.min(s.iter().filter(|&&x| x > 1e-13 * s[0]).count());
    if r == 0 {
        return Ok(Vec::new());
    }
    let (u, v) = (svd.U(), svd.V());
    let isq: Vec<f64> = s[..r].iter().map(|x| 1.0 / x.sqrt()).collect();
    // A = Σ^{-1/2} U_rᵀ H1 V_r Σ^{-1/2}
    let uh = u.subcols(0, r).transpose() * &h1; // [r, m]
    let core = uh * v.subcols(0, r); // [r, r]
    let a = Mat::from_fn(r, r, |i, j| isq[i] * core[(i, j)] * isq[j]);
    let ev = a
        .eigenvalues()
        .map_err(|e| Error::config("filter", "ERA state matrix", format!("eigensolver: {e:?}")))?;
    Ok(select_poles(&ev))
}

/// One pole per conjugate pair: real ones (|Im| tiny) made exactly real, complex ones with
/// Im > 0; moduli clipped to [`MAX_RADIUS`].
fn select_poles(ev: &[c64]) -> Vec<c64> {
    let mut out: Vec<c64> = Vec::with_capacity(ev.len());
    for &z in ev {
        let z = if z.im.abs() <= 1e-10 * z.norm().max(1.0) {
            c64::new(z.re, 0.0)
        } else if z.im > 0.0 {
            z
        } else {
            continue;
        };
        let z = clip(z);
        // Clipping can merge poles (e.g. two real poles above 1); a repeated pole adds nothing
        // to the least-squares basis but a dependent column.
        if out.iter().all(|p| (p - z).norm() > 1e-9) {
            out.push(z);
        }
    }
    out
}

fn clip(z: c64) -> c64 {
    let n = z.norm();
    if n > MAX_RADIUS {
        z * (MAX_RADIUS / n)
    } else {
        z
    }
}

/// Least-squares residues for `poles` over the taps `h_1 … h_{L−1}`; returns the modes and the
/// squared error `Σ_{t≥1} (ĥ_t − h_t)²`.
pub fn fit_residues(h: &[f64], poles: &[c64]) -> (Vec<Mode>, f64) {
    let t = h.len().saturating_sub(1);
    let cols: usize = poles.iter().map(|p| if p.im == 0.0 { 1 } else { 2 }).sum();
    if t == 0 || cols == 0 {
        let modes = poles
            .iter()
            .map(|&pole| Mode {
                pole,
                residue: c64::new(0.0, 0.0),
            })
            .collect();
        return (modes, h.iter().skip(1).map(|v| v * v).sum());
    }
    // Columns: a real pole gives λ^{t−1}; a complex one gives Re λ^{t−1} and −Im λ^{t−1}, so
    // that coefficients (a, b) mean R = a + ib (Re(R z) = a Re z − b Im z).
    let mut phi = Mat::<f64>::zeros(t, cols);
    let mut c = 0;
    for &p in poles {
        let mut z = c64::new(1.0, 0.0);
        for i in 0..t {
            phi[(i, c)] = z.re;
            if p.im != 0.0 {
                phi[(i, c + 1)] = -z.im;
            }
            z *= p;
        }
        c += if p.im == 0.0 { 1 } else { 2 };
    }
    let rhs = Mat::from_fn(t, 1, |i, _| h[1 + i]);
    let mut x = phi.qr().solve_lstsq(&rhs);
    if !(0..cols).all(|i| x[(i, 0)].is_finite()) {
        // Nearly dependent columns (close poles): the minimum-norm solution instead.
        if let Ok(svd) = phi.thin_svd() {
            x = svd.pseudoinverse() * &rhs;
        }
    }
    let mut modes = Vec::with_capacity(poles.len());
    let mut c = 0;
    for &pole in poles {
        let residue = if pole.im == 0.0 {
            c64::new(x[(c, 0)], 0.0)
        } else {
            c64::new(x[(c, 0)], x[(c + 1, 0)])
        };
        c += if pole.im == 0.0 { 1 } else { 2 };
        modes.push(Mode { pole, residue });
    }
    let e2 = sq_error(h, &modes);
    if e2.is_finite() {
        (modes, e2)
    } else {
        // A degenerate basis (e.g. repeated poles): no modes is always a valid fit.
        let zero = poles.iter().map(|&pole| Mode {
            pole,
            residue: c64::new(0.0, 0.0),
        });
        (zero.collect(), h.iter().skip(1).map(|v| v * v).sum())
    }
}

/// `Σ_{t≥1} (ĥ_t − h_t)²` of `modes` against `h`.
pub fn sq_error(h: &[f64], modes: &[Mode]) -> f64 {
    let fit = ModalFilter {
        h0: h.first().copied().unwrap_or(0.0),
        modes: modes.to_vec(),
    };
    let hh = fit.impulse(h.len());
    hh.iter()
        .zip(h)
        .skip(1)
        .map(|(a, b)| (a - b) * (a - b))
        .sum()
}

/// Squared error over `t ≥ 1` and its gradient in each pole's `(Re λ, Im λ)` with the residues
/// held fixed (`Im` component 0 for real poles, which stay real).
///
/// `ĥ_t = Re Σ R λ^{t−1}` is the real part of a holomorphic function of λ, so
/// `∂ĥ_t/∂Re λ = Re(R (t−1) λ^{t−2})` and `∂ĥ_t/∂Im λ = −Im(R (t−1) λ^{t−2})`.
pub fn pole_gradient(h: &[f64], modes: &[Mode]) -> (f64, Vec<(f64, f64)>) {
    let fit = ModalFilter {
        h0: h.first().copied().unwrap_or(0.0),
        modes: modes.to_vec(),
    };
    let hh = fit.impulse(h.len());
    let e: Vec<f64> = hh.iter().zip(h).map(|(a, b)| a - b).collect();
    let loss = e.iter().skip(1).map(|v| v * v).sum();
    let grads = modes
        .iter()
        .map(|m| {
            // d/dλ of R λ^{t−1} = R (t−1) λ^{t−2}: at t = 1 it is 0; then (t−1)·R λ^{t−2}.
            let (mut gx, mut gy) = (0.0, 0.0);
            let mut z = m.residue; // R λ^{t−2} at t = 2
            for (k, et) in e.iter().enumerate().skip(2) {
                let d = z * ((k - 1) as f64);
                gx += 2.0 * et * d.re;
                gy -= 2.0 * et * d.im;
                z *= m.pole;
            }
            (gx, if m.is_real() { 0.0 } else { gy })
        })
        .collect();
    (loss, grads)
}

/// Variable-projection refinement (module docs, step 3): `steps` Adam steps on the poles with
/// residues re-solved by least squares after each; returns the best modes seen and their
/// squared error.
pub fn refine(h: &[f64], modes: Vec<Mode>, steps: usize, lr: f64) -> (Vec<Mode>, f64) {
    let mut best_err = sq_error(h, &modes);
    let mut best = modes.clone();
    if modes.is_empty() || steps == 0 {
        return (best, best_err);
    }
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-12);
    let n = modes.len();
    let (mut m1, mut m2) = (vec![(0.0, 0.0); n], vec![(0.0, 0.0); n]);
    let mut cur = modes;
    for step in 0..steps {
        let (_, g) = pole_gradient(h, &cur);
        let frac = step as f64 / steps as f64;
        let a = lr * (0.01 + 0.99 * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos()));
        let (c1, c2) = (
            1.0 - b1.powi(step as i32 + 1),
            1.0 - b2.powi(step as i32 + 1),
        );
        let mut poles = Vec::with_capacity(n);
        for (i, md) in cur.iter().enumerate() {
            let (gx, gy) = g[i];
            m1[i] = (
                b1 * m1[i].0 + (1.0 - b1) * gx,
                b1 * m1[i].1 + (1.0 - b1) * gy,
            );
            m2[i] = (
                b2 * m2[i].0 + (1.0 - b2) * gx * gx,
                b2 * m2[i].1 + (1.0 - b2) * gy * gy,
            );
            let dx = a * (m1[i].0 / c1) / ((m2[i].0 / c2).sqrt() + eps);
            let dy = a * (m1[i].1 / c1) / ((m2[i].1 / c2).sqrt() + eps);
            let mut p = c64::new(
                md.pole.re - dx,
                if md.is_real() { 0.0 } else { md.pole.im - dy },
            );
            // A complex pole must not reach the real axis (its pair would become two real
            // poles with one state each, which this mode cannot represent).
            if !md.is_real() && p.im.abs() < 1e-9 {
                p.im = 1e-9;
            }
            poles.push(clip(p));
        }
        let (next, e2) = fit_residues(h, &poles);
        if e2 < best_err {
            best_err = e2;
            best = next.clone();
        }
        cur = next;
    }
    (best, best_err)
}
