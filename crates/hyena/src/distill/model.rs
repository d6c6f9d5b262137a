//! Distilling every long filter of a trained language model (Laughing Hyena, spec Sec. 9), and
//! the checkpoint of the result.
//!
//! A distilled run directory is a normal one (`model.safetensors`, `config.json`) whose
//! `config.json` has a `distill` section and whose `model.safetensors` also holds, per block,
//! `hyena.backbone.layers.{i}.mixer.filter_fn.{poles,residues}` `[(N−1)·D, M, 1, 2]` (re, im:
//! StripedHyena's modal layout, spec Sec. 7.3) and `filter_fn.h0` `[(N−1)·D]`.

use std::path::Path;

use faer::c64;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::modal::{fit_filter, FitOptions, ModalBank, ModalFilter, Mode, OrderChoice};
use crate::error::{Error, Result};
use crate::io::safetensors::{write_atomic, Tensor, TensorFile};
use crate::layers::FilterCache;
use crate::models::lm::HyenaLm;
use crate::models::recurrent::RecurrentLm;
use crate::train::trainer::{load_model_with, model_tensors, read_json, write_json};

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
pub fn block_filters(lm: &HyenaLm, i: usize, l: usize) -> Result<Vec<f32>> {
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
    lm.operator(i)
        .filter
        .forward(&lm.params.blocks[i].mixer.filter, l, &mut c)?;
    Ok(c.k)
}

/// Fit every long filter of `lm` (at length `l_max`); `progress(done, total)` is called after
/// each filter (from worker threads). Filters are fitted in parallel.
pub fn distill_lm(
    lm: &HyenaLm,
    cfg: &DistillConfig,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(RecurrentLm, Vec<ChannelFit>)> {
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
        let k = block_filters(lm, i, l)?;
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
    Ok((RecurrentLm::new(lm.clone(), banks)?, fits))
}

fn modal_prefix(i: usize) -> String {
    format!("hyena.backbone.layers.{i}.mixer.filter_fn.")
}

/// Write a distilled model to `dir` (created if needed): `model.safetensors` with the modal
/// tensors and `config.json` = `run_config` (a JSON object) plus `distill`.
pub fn save_distilled(
    rlm: &RecurrentLm,
    cfg: &DistillConfig,
    run_config: &serde_json::Value,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        file: dir.to_path_buf(),
        source,
    })?;
    let mut tensors = model_tensors(&rlm.lm);
    for (i, b) in rlm.banks.iter().enumerate() {
        let p = modal_prefix(i);
        let flat = |v: &[c64]| v.iter().flat_map(|z| [z.re as f32, z.im as f32]).collect();
        let shape = vec![b.stages * b.d, b.m, 1, 2];
        tensors.insert(
            format!("{p}poles"),
            Tensor {
                shape: shape.clone(),
                data: flat(&b.poles),
            },
        );
        tensors.insert(
            format!("{p}residues"),
            Tensor {
                shape,
                data: flat(&b.residues),
            },
        );
        tensors.insert(
            format!("{p}h0"),
            Tensor {
                shape: vec![b.stages * b.d],
                data: b.h0.iter().map(|&v| v as f32).collect(),
            },
        );
    }
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("format".to_string(), "hyena-lm-distilled".to_string());
    meta.insert("version".to_string(), "1".to_string());
    let mut config = run_config.clone();
    if !config.is_object() {
        config = serde_json::json!({});
    }
    config["model"] = serde_json::to_value(&rlm.lm.cfg).map_err(|e| Error::Format {
        file: dir.join("config.json"),
        msg: e.to_string(),
    })?;
    config["distill"] = serde_json::to_value(cfg).map_err(|e| Error::Format {
        file: dir.join("config.json"),
        msg: e.to_string(),
    })?;
    write_atomic(dir.join("model.safetensors"), &tensors, &meta)?;
    write_json(&dir.join("config.json"), &config)
}

/// Whether `dir` holds a distilled model (its `config.json` has a `distill` section).
pub fn is_distilled(dir: &Path) -> Result<bool> {
    let v = read_json(&dir.join("config.json"))?;
    Ok(v.get("distill").is_some_and(|x| !x.is_null()))
}

/// Load a model written by [`save_distilled`].
pub fn load_distilled(dir: &Path) -> Result<RecurrentLm> {
    let cfg_v = read_json(&dir.join("config.json"))?;
    if cfg_v.get("distill").is_none_or(|x| x.is_null()) {
        return Err(Error::Format {
            file: dir.join("config.json"),
            msg: "no `distill` section: not a distilled model (make one with `hyena distill`)"
                .into(),
        });
    }
    let lm = load_model_with(dir, &cfg_v)?;
    let f = TensorFile::read(dir.join("model.safetensors"))?;
    let banks = read_banks(&f, &lm)?;
    RecurrentLm::new(lm, banks)
}

/// The modal banks stored in a distilled checkpoint, one per block of `lm`.
pub fn read_banks(f: &TensorFile, lm: &HyenaLm) -> Result<Vec<ModalBank>> {
    let (s, d) = (lm.cfg.operator.order - 1, lm.cfg.d_model());
    let mut banks = Vec::with_capacity(lm.cfg.n_layer);
    for i in 0..lm.cfg.n_layer {
        let p = modal_prefix(i);
        let poles = f.get(&format!("{p}poles"))?;
        let m = poles.shape.get(1).copied().unwrap_or(0);
        let shape = [s * d, m, 1, 2];
        let poles = f.get_shaped(&format!("{p}poles"), &shape)?;
        let res = f.get_shaped(&format!("{p}residues"), &shape)?;
        let h0 = f.get_shaped(&format!("{p}h0"), &[s * d])?;
        let filters: Vec<ModalFilter> = (0..s * d)
            .map(|k| ModalFilter {
                h0: h0.data[k] as f64,
                modes: (0..m)
                    .map(|j| {
                        let o = (k * m + j) * 2;
                        Mode {
                            pole: c64::new(poles.data[o] as f64, poles.data[o + 1] as f64),
                            residue: c64::new(res.data[o] as f64, res.data[o + 1] as f64),
                        }
                    })
                    .collect(),
            })
            .collect();
        banks.push(ModalBank::from_filters(s, d, &filters)?);
    }
    Ok(banks)
}

/// Draw the distillation report into `dir`: `distill_error_vs_order.png` (relative ℓ2 error
/// against order for up to four filters per layer, spread over the channels, refitted at
/// orders 1, 2, 4, … up to `max(chosen orders)`), and `distill_filters.png` (four of those
/// filters, layer 0 and the last layer, against their fits in `rlm`). Returns the files.
pub fn report_pngs(
    lm: &HyenaLm,
    rlm: &RecurrentLm,
    fits: &[ChannelFit],
    cfg: &DistillConfig,
    dir: &Path,
) -> Result<Vec<std::path::PathBuf>> {
    use crate::plot::{lines_png, log_log_png};
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
        let k = block_filters(lm, i, l)?;
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
            let fitted = rlm.banks[i].impulse(l);
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
