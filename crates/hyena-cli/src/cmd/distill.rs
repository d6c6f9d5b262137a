//! `hyena distill`: distil the long convolutions of a trained model into small modal
//! recurrences, write the distilled model and its report, print a per-layer summary.
//! Argument parsing and printing only; the work is `hyena::distill::model`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use hyena::checkpoint::load_model;
use hyena::distill::model::{
    distill_lm, report_pngs, save_distilled, write_report, ChannelFit, DistillConfig, REPORT_FILE,
};
use hyena::models::hyenadna::HyenaLm;
use hyena::models::Model;

use crate::args::{
    at_least_one, check_inputs, check_output, positive_f64, ForceFlag, ModelArg, OutDir, OutKind,
};
use crate::ui;

#[derive(clap::Args, Debug)]
pub struct DistillArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Real state dimension per filter (instead of --tol).
    #[arg(long, conflicts_with = "tol", value_parser = at_least_one)]
    pub order: Option<usize>,
    /// Keep the Hankel singular values above TOL × the largest, per filter [default: 1e-3
    /// when --order is not given].
    #[arg(long, value_parser = positive_f64)]
    pub tol: Option<f64>,
    /// With --tol: the largest order any filter may get.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    pub max_order: usize,
    /// Gradient refinement steps on the poles (0: ERA and least squares only).
    #[arg(long, default_value_t = 200)]
    pub refine_steps: usize,
    /// Peak learning rate of the refinement steps (Adam on the poles, cosine decay).
    #[arg(long, default_value_t = DistillConfig::default().lr, value_parser = positive_f64)]
    pub lr: f64,
    /// Largest Hankel matrix side used for the spectrum and the first realisation.
    #[arg(long, default_value_t = 512, value_parser = at_least_one)]
    pub max_hankel: usize,
    /// Output directory for the distilled model (must not exist or be empty, unless --force).
    #[arg(long, default_value = "runs/distill")]
    pub out: PathBuf,
    #[command(flatten)]
    pub force: ForceFlag,
}

pub fn run_cmd(a: DistillArgs) -> Result<()> {
    let model = &a.model.model;
    check_inputs(&[("--model", model)])?;
    check_output("--out", &a.out, OutKind::Dir, a.force.force, &[model])?;
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
        lr: a.lr,
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
    let out_dir = OutDir::new(&a.out);
    save_distilled(&rlm, &cfg, &run_cfg, &a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    write_report(&a.out, model, &cfg, &fits)?;
    print_summary(&fits);
    eprint!("drawing the report ...\r");
    let pngs = report_pngs(lm, &rlm, &fits, &cfg, &a.out)?;
    eprint!("{:30}\r", "");
    out_dir.keep();
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
