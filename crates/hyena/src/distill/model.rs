//! Distilling every long filter of a trained HyenaDNA language model (Massaroli et al., "Laughing
//! Hyena Distillery", arXiv 2310.18780, Sec. 3), and writing the result.
//!
//! A distilled run directory is a normal one (`model.safetensors`, `config.json`) whose
//! `config.json` has a `distill` section and whose `model.safetensors` also holds the modal
//! filters of every block (the layout is the HyenaDNA family's:
//! [`crate::models::hyenadna::family`]).

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::modal::{fit_filter, FitOptions, OrderChoice};
use crate::checkpoint::{save_weights, write_json};
use crate::error::{Error, Result};
use crate::layers::hyena::modal::{ModalBank, ModalFilter};
use crate::layers::FilterCache;
use crate::models::hyenadna::HyenaLm;
use crate::models::Model;

/// How to distil: a fixed order or a tolerance on the Hankel singular values, and the fit's
/// knobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Real state dimension per filter (exclusive with `tol`).
    pub order: Option<usize>,
    /// Keep singular values above `tol · σ_1` (exclusive with `order`).
    pub tol: Option<f64>,
    /// With `tol`: never more than this order.
    pub max_order: usize,
    pub max_hankel: usize,
    pub refine_steps: usize,
    pub lr: f64,
}

impl Default for DistillConfig {
    fn default() -> Self {
        let f = FitOptions::default();
        DistillConfig {
            order: None,
            tol: Some(1e-3),
            max_order: 64,
            max_hankel: f.max_hankel,
            refine_steps: f.refine_steps,
            lr: f.lr,
        }
    }
}

impl DistillConfig {
    fn choice(&self) -> Result<OrderChoice> {
        match (self.order, self.tol) {
            (Some(o), None) => Ok(OrderChoice::Fixed(o)),
            (None, Some(t)) => Ok(OrderChoice::Tolerance(t)),
            (Some(_), Some(_)) => Err(Error::config(
                "order/tol",
                "both given",
                "give either --order N or --tol EPS, not both",
            )),
            (None, None) => Err(Error::config(
                "order/tol",
                "neither given",
                "give --order N or --tol EPS",
            )),
        }
    }
}

/// The fit of one filter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelFit {
    pub layer: usize,
    pub stage: usize,
    pub channel: usize,
    pub order: usize,
    pub rel_err: f64,
    pub rel_err_initial: f64,
    /// Leading Hankel singular values (at most 64), largest first.
    pub hankel_sv: Vec<f64>,
}

/// The original filters `[N−1, D, L]` of block `i` at length `l` (implicit or explicit).
pub fn block_filters(lm: &HyenaLm, p: &[f32], i: usize, l: usize) -> Result<Vec<f32>> {
    let op = lm.operator(i);
    if let Some(k) = op.explicit_filters() {
        let lm_max = op.cfg.l_max;
        if l > lm_max {
            return Err(Error::TooLong {
                op: "block_filters",
                len: l,
                l_max: lm_max,
            });
        }
        return Ok(k
            .chunks_exact(lm_max)
            .flat_map(|r| r[..l].to_vec())
            .collect());
    }
    let mut c = FilterCache::default();
    lm.operator(i).filter.forward(p, l, &mut c)?;
    Ok(c.k)
}

/// Fit every long filter of `model` (at length `l_max`); `progress(done, total)` is called
/// after each filter (from worker threads). Filters are fitted in parallel. Returns the model
/// with modal filters (it steps as a recurrence) and every fit.
pub fn distill_lm(
    model: &Model<HyenaLm>,
    cfg: &DistillConfig,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(Model<HyenaLm>, Vec<ChannelFit>)> {
    let (lm, p) = (&model.net, model.p());
    let choice = cfg.choice()?;
    let (n, d, l) = (
        lm.cfg.operator.order,
        lm.cfg.d_model(),
        lm.cfg.operator.l_max,
    );
    let s = n - 1;
    if lm.cfg.n_layer == 0 || s == 0 {
        return Err(Error::config(
            "model",
            format!("{} blocks of order {n}", lm.cfg.n_layer),
            "has no long convolutions to distil",
        ));
    }
    let opts = FitOptions {
        max_hankel: cfg.max_hankel,
        refine_steps: cfg.refine_steps,
        lr: cfg.lr,
    };
    let total = lm.cfg.n_layer * s * d;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let mut banks = Vec::with_capacity(lm.cfg.n_layer);
    let mut fits = Vec::with_capacity(total);
    for i in 0..lm.cfg.n_layer {
        crate::interrupt::check()?;
        let k = block_filters(lm, p, i, l)?;
        let res: Vec<(ModalFilter, ChannelFit)> = (0..s * d)
            .into_par_iter()
            .map(|f| {
                let (stage, channel) = (f / d, f % d);
                let h = &k[f * l..(f + 1) * l];
                let mut rep = fit_filter(h, choice, &opts).map_err(|e| {
                    Error::config(
                        "filter",
                        format!("layer {i}, stage {stage}, channel {channel}"),
                        e.to_string(),
                    )
                })?;
                if let OrderChoice::Tolerance(_) = choice {
                    if rep.filter.order() > cfg.max_order {
                        rep = fit_filter(h, OrderChoice::Fixed(cfg.max_order), &opts)?;
                    }
                }
                let c = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                progress(c, total);
                let fit = ChannelFit {
                    layer: i,
                    stage,
                    channel,
                    order: rep.filter.order(),
                    rel_err: rep.rel_err,
                    rel_err_initial: rep.rel_err_initial,
                    hankel_sv: rep.hankel_sv.iter().take(64).copied().collect(),
                };
                Ok((rep.filter, fit))
            })
            .collect::<Result<_>>()?;
        let (filters, f): (Vec<_>, Vec<_>) = res.into_iter().unzip();
        banks.push(ModalBank::from_filters(s, d, &filters)?);
        fits.extend(f);
    }
    let mut out = model.clone();
    out.net.set_modal_banks(banks)?;
    Ok((out, fits))
}

/// The report of a distillation in its output directory: [`write_report`].
pub const REPORT_FILE: &str = "distill_report.json";

/// Write [`REPORT_FILE`] into `dir`: `{"source": <the directory of the model that was
/// distilled>, "config": cfg, "filters": fits}` (pretty-printed). Returns its path.
pub fn write_report(
    dir: &Path,
    source: &Path,
    cfg: &DistillConfig,
    fits: &[ChannelFit],
) -> Result<std::path::PathBuf> {
    let path = dir.join(REPORT_FILE);
    write_json(
        &path,
        &serde_json::json!({ "source": source, "config": cfg, "filters": fits }),
    )?;
    Ok(path)
}

/// Write a distilled model to `dir` (created if needed): `model.safetensors` with the modal
/// tensors and `config.json` = `run_config` (a JSON object) plus `model` and `distill`.
pub fn save_distilled(
    model: &Model<HyenaLm>,
    cfg: &DistillConfig,
    run_config: &serde_json::Value,
    dir: &Path,
) -> Result<()> {
    let mut config = run_config.clone();
    if !config.is_object() {
        config = serde_json::json!({});
    }
    let json_err = |e: serde_json::Error| Error::format(dir.join("config.json"), e.to_string());
    config["model"] = serde_json::to_value(&model.net.cfg).map_err(json_err)?;
    config["distill"] = serde_json::to_value(cfg).map_err(json_err)?;
    save_weights(dir, &model.tensors(), "hyena-lm-distilled")?;
    write_json(&dir.join("config.json"), &config)
}

/// Draw the distillation report into `dir`: `distill_error_vs_order.png` (relative ℓ2 error
/// against order for up to four filters per layer, spread over the channels, refitted at
/// orders 1, 2, 4, … up to `max(chosen orders)`), and `distill_filters.png` (four of those
/// filters, layer 0 and the last layer, against their fits in `rlm`). Returns the files.
pub fn report_pngs(
    model: &Model<HyenaLm>,
    distilled: &Model<HyenaLm>,
    fits: &[ChannelFit],
    cfg: &DistillConfig,
    dir: &Path,
) -> Result<Vec<std::path::PathBuf>> {
    use crate::plot::{lines_png, log_log_png};
    let lm = &model.net;
    let (d, l, layers) = (lm.cfg.d_model(), lm.cfg.operator.l_max, lm.cfg.n_layer);
    let top = fits.iter().map(|f| f.order).max().unwrap_or(1).max(1);
    let mut orders = vec![];
    let mut o = 1;
    while o < top {
        orders.push(o);
        o *= 2;
    }
    orders.push(top);
    let opts = FitOptions {
        max_hankel: cfg.max_hankel,
        refine_steps: cfg.refine_steps,
        lr: cfg.lr,
    };
    let picks: Vec<usize> = (0..4.min(d)).map(|j| j * d / 4.min(d)).collect();
    let mut err_series = Vec::new();
    let mut filt_series = Vec::new();
    for i in 0..layers {
        let k = block_filters(lm, model.p(), i, l)?;
        let curves: Vec<(String, Vec<(f64, f64)>)> = picks
            .par_iter()
            .map(|&ch| {
                let h = &k[ch * l..(ch + 1) * l];
                let pts = orders
                    .iter()
                    .filter_map(|&o| {
                        fit_filter(h, OrderChoice::Fixed(o), &opts)
                            .ok()
                            .map(|r| (r.filter.order().max(1) as f64, r.rel_err.max(1e-12)))
                    })
                    .collect();
                (format!("layer {i} ch {ch}"), pts)
            })
            .collect();
        err_series.extend(curves);
        if i == 0 || i + 1 == layers {
            let fitted = distilled
                .net
                .bank(i)
                .ok_or_else(|| {
                    Error::config("report", "a model without modal filters", "distil it first")
                })?
                .impulse(l);
            for &ch in picks.iter().take(if layers > 1 { 2 } else { 4 }) {
                let f = ch; // stage 0
                let orig = &k[f * l..(f + 1) * l];
                let fit = &fitted[f * l..(f + 1) * l];
                let order = fits
                    .iter()
                    .find(|x| x.layer == i && x.stage == 0 && x.channel == ch)
                    .map_or(0, |x| x.order);
                filt_series.push((
                    format!("layer {i} ch {ch}"),
                    orig.iter()
                        .enumerate()
                        .map(|(t, &v)| (t as f64, v as f64))
                        .collect(),
                ));
                filt_series.push((
                    format!("fit, order {order}"),
                    fit.iter()
                        .enumerate()
                        .map(|(t, &v)| (t as f64, v as f64))
                        .collect(),
                ));
            }
        }
    }
    let a = dir.join("distill_error_vs_order.png");
    log_log_png(
        &a,
        "modal fit: relative l2 error against order",
        "order (real state dimension)",
        "relative l2 error",
        &err_series,
    )?;
    let b = dir.join("distill_filters.png");
    lines_png(
        &b,
        "long filters (colour) and their modal fits (black)",
        "t",
        "h[t]",
        &filt_series,
    )?;
    Ok(vec![a, b])
}
