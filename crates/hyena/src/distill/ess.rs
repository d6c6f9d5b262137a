//! Effective state size (ESS, arXiv 2504.19561) of a HyenaDNA model's long-convolution layers.
//!
//! For a causal linear operator `y = T u`, the state needed at split time `i` is the rank of
//! `H_i = T[i:, :i]` (outputs at ≥ i against inputs before i). Two smooth versions of that rank
//! are reported from the singular values σ of `H_i` ([`super::hankel`]):
//! tolerance-ESS = #{σ_k > tol·σ_1} and entropy-ESS = exp(entropy of σ/Σσ).
//!
//! - Filters (input-invariant): for one long filter `T` is Toeplitz and `H_i` is Hankel in the
//!   taps `h_1, h_2, …`; the square Hankel matrix of the whole filter is used.
//! - Operator on an input (input-varying, order-2 Hyena): per channel the gated convolution is
//!   `T = diag(x_0) (Toeplitz(h) + D) diag(x_1)` with the gates `x_0, x_1` the forward computed
//!   on that input; `H_i[r, c] = x_0[r] h[r−c] x_1[c]` for `r ≥ i > c` (D sits on the diagonal,
//!   outside `H_i`). We take `i` at L/4, L/2 and 3L/4 and report the largest.
//!
//! Channels of a layer are independent long convolutions, so a layer's ESS is the sum over its
//! channels (the short filter's K−1 taps per channel are not counted). Per-channel means are
//! reported too.

use faer::Mat;
use rayon::prelude::*;
use serde::Serialize;

use super::hankel::{entropy_rank, hankel_singular_values, tolerance_rank};
use super::model::block_filters;
use crate::error::{Error, Result};
use crate::models::hyenadna::{HyenaLm, LmCache};
use crate::models::Model;

/// ESS of one layer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerEss {
    pub layer: usize,
    /// "filters" or "operator".
    pub kind: &'static str,
    /// Σ over channels (and stages) of tolerance-ESS.
    pub tolerance_total: f64,
    /// Σ over channels of entropy-ESS.
    pub entropy_total: f64,
    pub tolerance_mean: f64,
    pub entropy_mean: f64,
    /// Per channel `(tolerance-ESS, entropy-ESS)`, stage-major `[N−1, D]`.
    pub channels: Vec<(f64, f64)>,
}

fn layer(layer: usize, kind: &'static str, channels: Vec<(f64, f64)>) -> LayerEss {
    let n = channels.len().max(1) as f64;
    let (t, e) = channels
        .iter()
        .fold((0.0, 0.0), |(a, b), c| (a + c.0, b + c.1));
    LayerEss {
        layer,
        kind,
        tolerance_total: t,
        entropy_total: e,
        tolerance_mean: t / n,
        entropy_mean: e / n,
        channels,
    }
}

/// Input-invariant ESS of every long filter (Hankel spectra at length `l_max`).
/// `progress(done, total)` follows the layers.
pub fn filter_ess(
    model: &Model<HyenaLm>,
    tol: f64,
    max_hankel: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<LayerEss>> {
    check_tol(tol)?;
    let (lm, p) = (&model.net, model.p());
    let l = lm.cfg.operator.l_max;
    let rows = (lm.cfg.operator.order - 1) * lm.cfg.d_model();
    let n = lm.cfg.n_layer;
    progress(0, n);
    (0..n)
        .map(|i| {
            let k = block_filters(lm, p, i, l)?;
            let ch: Vec<(f64, f64)> = (0..rows)
                .into_par_iter()
                .map(|f| {
                    let sv = hankel_singular_values(&k[f * l..(f + 1) * l], max_hankel)?;
                    Ok((tolerance_rank(&sv, tol) as f64, entropy_rank(&sv)))
                })
                .collect::<Result<_>>()?;
            progress(i + 1, n);
            Ok(layer(i, "filters", ch))
        })
        .collect()
}

fn check_tol(tol: f64) -> Result<()> {
    if tol.is_finite() && tol > 0.0 && tol < 1.0 {
        Ok(())
    } else {
        Err(Error::config("tol", tol, "must be in (0, 1), e.g. 1e-3"))
    }
}

/// Input-varying ESS of each order-2 Hyena layer on `tokens` (one sequence, length ≤ l_max,
/// at least 8). `progress(done, total)` follows the layers.
pub fn operator_ess(
    model: &Model<HyenaLm>,
    tokens: &[u32],
    tol: f64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<LayerEss>> {
    check_tol(tol)?;
    let (lm, p) = (&model.net, model.p());
    if lm.cfg.operator.order != 2 {
        return Err(Error::config(
            "order",
            lm.cfg.operator.order,
            "the input-varying ESS is implemented for order-2 operators (HyenaDNA); the \
             filter ESS works for any order",
        ));
    }
    let l = tokens.len();
    if l < 8 {
        return Err(Error::config(
            "ESS input",
            format!("{l} tokens"),
            "give at least 8 tokens of input",
        ));
    }
    let d = lm.cfg.d_model();
    let mut cache = LmCache::default();
    lm.forward(p, tokens, 1, l, &mut cache)?;
    let splits = [l / 4, l / 2, 3 * l / 4];
    let n = lm.cfg.n_layer;
    progress(0, n);
    (0..n)
        .map(|i| {
            let k = block_filters(lm, p, i, l)?;
            let uc = cache.mixer(i).uc(); // [x_0, x_1, v] × [D, L]
            let ch: Vec<(f64, f64)> = (0..d)
                .into_par_iter()
                .map(|c| {
                    let h = &k[c * l..(c + 1) * l];
                    let x0 = &uc[c * l..(c + 1) * l];
                    let x1 = &uc[(d + c) * l..(d + c + 1) * l];
                    let mut best = (0.0f64, 0.0f64);
                    for &s in &splits {
                        let m = Mat::from_fn(l - s, s, |r, col| {
                            let (rr, cc) = (r + s, col);
                            x0[rr] as f64 * h[rr - cc] as f64 * x1[cc] as f64
                        });
                        let sv = m.singular_values().map_err(|e| {
                            Error::config(
                                "ESS",
                                format!("layer {i} channel {c}"),
                                format!("SVD: {e:?}"),
                            )
                        })?;
                        best.0 = best.0.max(tolerance_rank(&sv, tol) as f64);
                        best.1 = best.1.max(entropy_rank(&sv));
                    }
                    Ok(best)
                })
                .collect::<Result<_>>()?;
            progress(i + 1, n);
            Ok(layer(i, "operator", ch))
        })
        .collect()
}
