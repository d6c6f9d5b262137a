//! `hyena distill`: distil the long convolutions of a trained model into small modal
//! recurrences, write the distilled model and its report, print a per-layer summary.
//! Argument parsing and printing only; the work is `hyena::distill::model`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use hyena::checkpoint::load_model;
use hyena::distill::model::{
    distill_lm, report_pngs, save_distilled, write_report, ChannelFit, DistillConfig, REPORT_FILE,
};
use hyena::models::hyenadna::HyenaLm;
use hyena::models::Model;

use crate::args::ModelArg;
use crate::ui;

#[derive(clap::Args, Debug)]
pub struct DistillArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Real state dimension per filter (instead of --tol).
    #[arg(long, conflicts_with = "tol")]
    pub order: Option<usize>,
    /// Keep the Hankel singular values above TOL × the largest, per filter [default: 1e-3
    /// when --order is not given].
    #[arg(long)]
    pub tol: Option<f64>,
    /// With --tol: the largest order any filter may get.
    #[arg(long, default_value_t = 64)]
    pub max_order: usize,
    /// Gradient refinement steps on the poles (0: ERA and least squares only).
    #[arg(long, default_value_t = 200)]
    pub refine_steps: usize,
    /// Largest Hankel matrix side used for the spectrum and the first realisation.
    #[arg(long, default_value_t = 512)]
    pub max_hankel: usize,
    /// Output directory for the distilled model (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run_cmd(a: DistillArgs) -> Result<()> {
    let model = &a.model.model;
    if a.out.exists()
        && std::fs::read_dir(&a.out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} already exists and is not empty; choose a new --out (nothing was written)",
            a.out.display()
        );
    }
    let loaded =
        load_model(model).with_context(|| format!("loading the model in {}", model.display()))?;
    let lm = loaded.downcast::<Model<HyenaLm>>("hyena distill")?;
    let run_cfg = loaded.run.config.clone();
    let cfg = DistillConfig {
        order: a.order,
        tol: if a.order.is_some() {
            None
        } else {
            Some(a.tol.unwrap_or(1e-3))
        },
        max_order: a.max_order,
        max_hankel: a.max_hankel,
        refine_steps: a.refine_steps,
        ..DistillConfig::default()
    };
    println!(
        "distill config: {}",
        serde_json::to_string(&cfg).unwrap_or_default()
    );
    let bar = ui::bar(
        0,
        "{bar:30} {pos}/{len} filters  [{elapsed_precise} < {eta_precise}]",
    );
    let (rlm, fits) = distill_lm(lm, &cfg, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("distilling the model in {}", model.display()))?;
    bar.finish_and_clear();
    save_distilled(&rlm, &cfg, &run_cfg, &a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    write_report(&a.out, model, &cfg, &fits)?;
    print_summary(&fits);
    eprint!("drawing the report ...\r");
    let pngs = report_pngs(lm, &rlm, &fits, &cfg, &a.out)?;
    eprint!("{:30}\r", "");
    println!(
        "wrote {} (model.safetensors, config.json, {REPORT_FILE}, {})",
        a.out.display(),
        pngs.iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn print_summary(fits: &[ChannelFit]) {
    println!("| layer | filters | order mean | order max | rel. err median | rel. err p90 | rel. err max |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let layers = fits.iter().map(|f| f.layer).max().map_or(0, |m| m + 1);
    for i in 0..layers {
        let mut e: Vec<f64> = fits
            .iter()
            .filter(|f| f.layer == i)
            .map(|f| f.rel_err)
            .collect();
        let o: Vec<usize> = fits
            .iter()
            .filter(|f| f.layer == i)
            .map(|f| f.order)
            .collect();
        if e.is_empty() {
            continue;
        }
        e.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| e[((e.len() - 1) as f64 * p).round() as usize];
        println!(
            "| {i} | {} | {:.1} | {} | {:.2e} | {:.2e} | {:.2e} |",
            e.len(),
            o.iter().sum::<usize>() as f64 / o.len() as f64,
            o.iter().max().copied().unwrap_or(0),
            q(0.5),
            q(0.9),
            q(1.0)
        );
    }
}
