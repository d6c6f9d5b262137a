//! `hyena analyze ess`: effective state size per layer of a trained model (of its long filters
//! and of its operator on an input), as a table or JSON and a chart. Argument parsing and
//! printing only; the work is `hyena::distill::ess`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use hyena::checkpoint::load_model;
use hyena::data::tokens::{load_tokens, DataConfig};
use hyena::distill::ess::{filter_ess, operator_ess, LayerEss};
use hyena::models::hyenadna::HyenaLm;
use hyena::models::Model;

use crate::args::{check_inputs, check_output, ForceFlag, JsonFlag, ModelArg, OutKind};
use crate::ui;

#[derive(clap::Subcommand, Debug)]
pub enum AnalyzeWhat {
    /// Effective state size per layer: of the long filters (Hankel spectra) and of the gated
    /// operator on an input (the run's first validation window, or --fasta).
    Ess(EssArgs),
}

#[derive(clap::Args, Debug)]
pub struct EssArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Tolerance-ESS counts singular values above TOL × the largest.
    #[arg(long, default_value_t = 1e-3)]
    pub tol: f64,
    /// FASTA/FASTQ input for the operator ESS (its first l_max tokens).
    #[arg(long)]
    pub fasta: Option<PathBuf>,
    /// Input length for the operator ESS [default: min(l_max, 1024)].
    #[arg(long)]
    pub len: Option<usize>,
    /// Largest Hankel matrix side for the filter ESS.
    #[arg(long, default_value_t = 512)]
    pub max_hankel: usize,
    #[command(flatten)]
    pub json: JsonFlag,
    /// Where to draw the per-layer ESS (its folder is created).
    #[arg(long, default_value = "runs/analyze/ess.png")]
    pub png: PathBuf,
    #[command(flatten)]
    pub force: ForceFlag,
}

pub fn run_cmd(w: AnalyzeWhat) -> Result<()> {
    match w {
        AnalyzeWhat::Ess(a) => ess_cmd(a),
    }
}

fn ess_cmd(a: EssArgs) -> Result<()> {
    let model = &a.model.model;
    let mut inputs = vec![("--model", model.as_path())];
    inputs.extend(a.fasta.as_deref().map(|p| ("--fasta", p)));
    check_inputs(&inputs)?;
    let reads: Vec<_> = inputs.iter().map(|(_, p)| *p).collect();
    check_output("--png", &a.png, OutKind::File, a.force.force, &reads)?;
    let loaded =
        load_model(model).with_context(|| format!("loading the model in {}", model.display()))?;
    let lm = loaded.downcast::<Model<HyenaLm>>("hyena analyze ess")?;
    let bar = ui::bar(0, "{prefix} [{bar:25}] layer {pos}/{len} ({elapsed})");
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    bar.set_prefix("filter ESS");
    let filters = filter_ess(lm, a.tol, a.max_hankel, &mut progress)?;
    // The run's data settings (a distilled directory keeps them beside its `distill` section).
    let run_data: Option<DataConfig> = loaded.section("data").ok().flatten();
    let data = match (&a.fasta, &run_data) {
        (Some(f), _) => Some(DataConfig {
            fasta: vec![f.clone()],
            text: Vec::new(),
            val_fraction: 0.0,
            ..run_data.clone().unwrap_or_default()
        }),
        (None, Some(d)) => Some(d.clone()),
        (None, None) => None,
    };
    let (operator, input) = match data {
        Some(dc) => {
            let td = load_tokens(&dc).context("reading the input for the operator ESS")?;
            let src = if a.fasta.is_some() || td.val.is_empty() {
                &td.train
            } else {
                &td.val
            };
            let n = a
                .len
                .unwrap_or(1024)
                .min(lm.net.cfg.operator.l_max)
                .min(src.len());
            bar.set_prefix("operator ESS");
            bar.reset_elapsed();
            let ess = operator_ess(lm, &src[..n], a.tol, &mut progress)
                .with_context(|| format!("operator ESS on {n} tokens"))?;
            (ess, format!("{n} tokens of {}", td.summary))
        }
        None => (
            Vec::new(),
            "none (no data section in config.json; pass --fasta)".into(),
        ),
    };
    bar.finish_and_clear();
    if a.json.json {
        println!(
            "{}",
            serde_json::json!({"model": model, "tol": a.tol, "input": input,
                               "filters": filters, "operator": operator})
        );
    } else {
        println!(
            "ESS per layer (tolerance {:e}; sums over channels, per-channel means in parentheses)",
            a.tol
        );
        println!("operator input: {input}\n");
        println!("| layer | filter tol-ESS | filter entropy-ESS | operator tol-ESS | operator entropy-ESS |");
        println!("|---:|---:|---:|---:|---:|");
        let cell = |e: Option<&LayerEss>, tol: bool| {
            e.map_or("-".to_string(), |e| {
                if tol {
                    format!("{:.0} ({:.2})", e.tolerance_total, e.tolerance_mean)
                } else {
                    format!("{:.1} ({:.2})", e.entropy_total, e.entropy_mean)
                }
            })
        };
        for f in &filters {
            let o = operator.iter().find(|o| o.layer == f.layer);
            println!(
                "| {} | {} | {} | {} | {} |",
                f.layer,
                cell(Some(f), true),
                cell(Some(f), false),
                cell(o, true),
                cell(o, false)
            );
        }
    }
    let line = |v: &[LayerEss], tol: bool| -> Vec<(f64, f64)> {
        v.iter()
            .map(|e| {
                (
                    e.layer as f64,
                    if tol {
                        e.tolerance_mean
                    } else {
                        e.entropy_mean
                    },
                )
            })
            .collect()
    };
    let mut series = vec![
        ("filters: tolerance-ESS".to_string(), line(&filters, true)),
        ("filters: entropy-ESS".to_string(), line(&filters, false)),
    ];
    if !operator.is_empty() {
        series.push((
            "operator on input: tolerance-ESS".to_string(),
            line(&operator, true),
        ));
        series.push((
            "operator on input: entropy-ESS".to_string(),
            line(&operator, false),
        ));
    }
    if let Some(dir) = a.png.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    hyena::plot::lines_png(
        &a.png,
        "effective state size per channel (mean over channels)",
        "layer",
        "ESS per channel",
        &series,
    )?;
    if !a.json.json {
        println!("\nplot: {}", a.png.display());
    }
    Ok(())
}
