//! `hyena mad`: the MAD synthetic benchmark for one architecture, or several side by side
//! (`hyena mad compare`), with `--estimate` (projected wall time) and `--resume`. Argument
//! parsing and printing only; the work, the results files and the progress file are
//! `hyena::train::mad`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hyena::apps::shard::{assign_by_cost, Manifest};
use hyena::data::mad::{Average, MadTask};
use hyena::models::zoo::{parse_layers, ArchConfig, NormKind, LAYER_NAMES};
use hyena::train::mad::{
    estimate_mad, mad_items, markdown_table, run_mad_selected, setting_cost, write_results,
    MadEvent, MadProtocol, MadReport, ProgressLog, RESULTS_CSV, RESULTS_JSON, RESULTS_PNG,
};
use indicatif::ProgressBar;

use crate::args::JsonFlag;
use crate::ui;

#[derive(clap::Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Layer names: see `hyena mad --list-layers`. Example: \
                  hyena mad --arch hyena,swiglu,hyena,swiglu --quick"
)]
pub struct MadArgs {
    #[command(subcommand)]
    pub cmd: Option<MadSub>,
    /// The architecture: layer names separated by commas (e.g. `hyena,swiglu,hyena,swiglu`,
    /// `se,mr,li,attn`), or a JSON file with an `ArchConfig` (`layers`, `d_model`, …).
    #[arg(long)]
    pub arch: Option<String>,
    /// Print the valid layer names and exit.
    #[arg(long)]
    pub list_layers: bool,
    #[command(flatten)]
    pub common: MadCommon,
}

#[derive(clap::Subcommand, Debug)]
pub enum MadSub {
    /// Several architectures side by side: one table, one chart.
    Compare(CompareArgs),
}

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Architectures (layer strings or JSON files), two or more.
    #[arg(required = true, num_args = 1..)]
    pub specs: Vec<String>,
    #[command(flatten)]
    pub common: MadCommon,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum NormArg {
    Rms,
    Layer,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum AverageArg {
    /// Per-class accuracy averaged over the classes that occur as targets (MAD's default).
    Macro,
    /// Correct / scored positions.
    Micro,
    /// torchmetrics' exact macro: classes that are only ever predicted count as 0.
    MacroTorchmetrics,
}

#[derive(clap::Args, Debug, Clone)]
pub struct MadCommon {
    /// Task, or several separated by commas [default: all six]: in-context-recall,
    /// fuzzy-in-context-recall, noisy-in-context-recall, selective-copying, compression,
    /// memorization. (`--tasks` is an old spelling, still accepted.)
    #[arg(
        long = "task",
        alias = "tasks",
        value_delimiter = ',',
        value_name = "TASK"
    )]
    pub tasks: Vec<String>,
    /// Quick mode: baseline settings only, lr 1e-3 and weight decay 0 (one point of the
    /// sweep), batch 16, about 5M training tokens per task (whole epochs, rounded up), early
    /// stop at 0.999. Default: the full protocol (every setting, lr {1e-4, 5e-4, 1e-3} × wd
    /// {0, 0.1}, batch 128, 200 epochs).
    #[arg(long)]
    pub quick: bool,
    /// Model width.
    #[arg(long, default_value_t = ArchConfig::default().d_model)]
    pub d_model: usize,
    /// Heads of multi-head layers.
    #[arg(long, default_value_t = ArchConfig::default().n_heads)]
    pub heads: usize,
    /// State size of SSM layers.
    #[arg(long, default_value_t = ArchConfig::default().state_size)]
    pub state_size: usize,
    /// Norm before each layer.
    #[arg(long, value_enum, default_value_t = NormArg::Rms)]
    pub norm: NormArg,
    /// Which accuracy average scores a run (both are always recorded).
    #[arg(long, value_enum, default_value_t = AverageArg::Macro)]
    pub average: AverageArg,
    /// Epochs per run (overrides the protocol's 200).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Training-token budget per run (overrides quick mode's 5M; 0 = none).
    #[arg(long)]
    pub budget: Option<u64>,
    /// Learning rates to sweep (overrides the protocol's).
    #[arg(long, value_delimiter = ',')]
    pub lrs: Vec<f32>,
    /// Weight decays to sweep (overrides the protocol's).
    #[arg(long, value_delimiter = ',')]
    pub wds: Vec<f32>,
    /// Sequences per training step [default: 128, the full protocol's; 16 in quick mode].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Seed of model init and batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory to write results.json, results.csv, mad.png and progress.jsonl in
    /// [default: runs/mad].
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub json: JsonFlag,
    /// Go on from an interrupted run: `--resume` alone continues the run in --out, `--resume
    /// DIR` the one in DIR (which is then the output directory; a different --out is an
    /// error). Every finished setting is appended to progress.jsonl as it ends, and the
    /// settings recorded there for the same architecture and protocol are not trained again.
    /// Without --resume, an existing progress.jsonl is moved to progress.jsonl.prev and the
    /// run starts afresh.
    #[arg(long, num_args = 0..=1, value_name = "DIR")]
    pub resume: Option<Option<PathBuf>>,
    // --force: without --resume, start afresh in a non-empty --out (its results are replaced).
    #[command(flatten)]
    pub force: crate::args::ForceFlag,
    /// Run shard I of N of the protocol's settings (all architectures, tasks and settings,
    /// split by estimated cost: the costliest first onto the least-loaded shard), into --out
    /// with a manifest beside it (OUT.shard.json). A rerun of a finished shard does nothing,
    /// an interrupted one resumes; `hyena merge DIR1 … --out DIR` joins the shards' settings
    /// into the results of one unsharded run. [default: no sharding]
    #[arg(long, value_name = "I/N")]
    pub shard: Option<hyena::apps::shard::Shard>,
    /// Do not train: time a few optimizer steps of every setting and print the protocol's
    /// projected wall time on this machine (an upper bound: early stopping only shortens it).
    #[arg(long)]
    pub estimate: bool,
}

/// The architecture `spec`: a JSON file of an `ArchConfig`, or layer names sized by the flags.
fn arch_of(spec: &str, c: &MadCommon) -> Result<ArchConfig> {
    if spec.ends_with(".json") && Path::new(spec).exists() {
        return Ok(ArchConfig::read(Path::new(spec))?);
    }
    Ok(ArchConfig {
        layers: parse_layers(spec)?,
        d_model: c.d_model,
        n_heads: c.heads,
        state_size: c.state_size,
        norm: match c.norm {
            NormArg::Rms => NormKind::Rms,
            NormArg::Layer => NormKind::Layer,
        },
        ..ArchConfig::default()
    })
}

/// Where `hyena mad` writes when no --out is given.
pub const DEFAULT_OUT: &str = "runs/mad";

/// The output directory and whether the run continues ([`crate::args::resume_dir`]).
pub fn out_dir(c: &MadCommon) -> Result<(PathBuf, bool)> {
    crate::args::resume_dir(&c.resume, &c.out, DEFAULT_OUT)
}

fn protocol(c: &MadCommon) -> MadProtocol {
    let mut p = if c.quick {
        MadProtocol::quick()
    } else {
        MadProtocol::full()
    };
    if let Some(e) = c.epochs {
        p.train.epochs = e.max(1);
    }
    if let Some(b) = c.budget {
        p.token_budget = (b > 0).then_some(b);
    }
    if !c.lrs.is_empty() {
        p.lrs = c.lrs.clone();
    }
    if !c.wds.is_empty() {
        p.weight_decays = c.wds.clone();
    }
    if let Some(b) = c.batch {
        p.train.batch = b.max(1);
    }
    p.train.seed = c.seed;
    p.train.average = match c.average {
        AverageArg::Macro => Average::Macro,
        AverageArg::Micro => Average::Micro,
        AverageArg::MacroTorchmetrics => Average::MacroTorchmetrics,
    };
    p
}

fn tasks_of(c: &MadCommon) -> Result<Vec<MadTask>> {
    if c.tasks.is_empty() {
        return Ok(MadTask::all().to_vec());
    }
    c.tasks
        .iter()
        .map(|t| MadTask::from_name(t.trim()).map_err(Into::into))
        .collect()
}

pub fn run_cmd(a: MadArgs) -> Result<()> {
    if a.list_layers {
        for (k, what) in LAYER_NAMES {
            println!("{k:10} {what}");
        }
        return Ok(());
    }
    let (specs, common) = match a.cmd {
        Some(MadSub::Compare(c)) => (c.specs, c.common),
        None => match a.arch {
            Some(s) => (vec![s], a.common),
            None => bail!("give --arch SPEC (e.g. --arch hyena,swiglu,hyena,swiglu), or `hyena mad compare SPEC SPEC …`"),
        },
    };
    let archs = specs
        .iter()
        .map(|s| arch_of(s, &common).with_context(|| format!("architecture {s:?}")))
        .collect::<Result<Vec<_>>>()?;
    let tasks = tasks_of(&common)?;
    let proto = protocol(&common);
    if common.estimate {
        return estimate_cmd(&specs, &archs, &tasks, &proto);
    }
    let (out, mut resume) = out_dir(&common)?;
    // One shard of the protocol: its settings, and a manifest (a finished shard is done).
    let mut shard = None;
    if let Some(s) = common.shard {
        let items = mad_items(archs.len(), &tasks, &proto);
        let costs = items
            .iter()
            .map(|(a, _, st)| setting_cost(&archs[*a], st, &proto))
            .collect::<hyena::Result<Vec<f64>>>()?;
        let owner = assign_by_cost(&costs, s.count);
        let members: Vec<usize> = (0..items.len())
            .filter(|&i| owner[i] == s.index - 1)
            .collect();
        let weight = members.iter().map(|&i| costs[i]).sum();
        let fresh = Manifest::new(
            "mad",
            s,
            Vec::new(),
            None,
            serde_json::json!({
                "specs": specs, "architectures": archs, "tasks": tasks, "protocol": proto,
            }),
            "settings",
            0..items.len(),
            Some(members.clone()),
            items.len(),
            weight,
            [("out".to_string(), out.clone())].into_iter().collect(),
        );
        if !hyena::apps::shard::manifest_path(&out).exists() && !common.force.force {
            crate::args::check_output("--out", &out, crate::args::OutKind::Dir, false, &[])?;
        }
        match crate::args::start_shard(&out, fresh, common.force.force)? {
            None => return Ok(()),
            Some(m) => {
                // A shard always goes on from what its progress file holds.
                resume = out.join("progress.jsonl").exists() && !common.force.force;
                let keep: std::collections::HashSet<(usize, String, String)> = members
                    .iter()
                    .map(|&i| {
                        let (a, t, st) = &items[i];
                        (*a, t.name().to_string(), st.label())
                    })
                    .collect();
                shard = Some((m, keep));
            }
        }
    } else if !resume {
        let force = common.force.force;
        crate::args::check_output("--out", &out, crate::args::OutKind::Dir, force, &[])?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    eprintln!(
        "config: {}",
        serde_json::json!({ "architectures": archs, "tasks": tasks, "protocol": proto })
    );
    // Every finished setting is appended to the progress file as it ends (a killed run loses
    // at most the setting in progress); --resume takes the recorded ones back.
    let (mut progress, done) = if resume {
        let (log, read) = ProgressLog::resume(&out)?;
        if let Some((line, e)) = &read.skipped {
            eprintln!(
                "warning: {} line {line}: skipping an unfinished record ({e})",
                log.path().display()
            );
        }
        eprintln!(
            "resuming: {} finished settings in {}",
            read.records.len(),
            log.path().display()
        );
        (log, read.records)
    } else {
        let (log, moved) = ProgressLog::start(&out)?;
        if let Some(prev) = moved {
            eprintln!(
                "starting afresh; the earlier progress is in {} (use --resume to go on from it)",
                prev.display()
            );
        }
        (log, Vec::new())
    };
    let progress_path = progress.path().to_path_buf();
    let mut progress_err: Option<hyena::Error> = None;
    let mut reports: Vec<MadReport> = Vec::new();
    for (ai, (spec, arch)) in specs.iter().zip(&archs).enumerate() {
        let bar = ui::bar(0, "{prefix} [{bar:25}] epoch {pos}/{len} {msg} ({elapsed})");
        let mut ev = |e: &MadEvent| match e {
            MadEvent::RunStart {
                task,
                label,
                lr,
                weight_decay,
                epochs,
            } => {
                bar.set_prefix(format!(
                    "{spec} {} {label} lr {lr:.0e} wd {weight_decay}",
                    task.name()
                ));
                bar.set_length(*epochs as u64);
                bar.set_position(0);
                bar.reset_elapsed();
            }
            MadEvent::Epoch(e) => {
                bar.set_position(e.epoch as u64);
                bar.set_message(format!(
                    "loss {:.3} acc {:.3}/{:.3} (macro/micro)",
                    e.train_loss, e.test_macro, e.test_micro
                ));
            }
            MadEvent::RunEnd(r) => {
                ui::say(
                    &bar,
                    &format!(
                        "  {spec}: lr {:.0e} wd {} -> best acc {:.4} at epoch {} of {} ({:.0} s)",
                        r.lr, r.weight_decay, r.best_acc, r.best_epoch, r.epochs_run, r.seconds
                    ),
                );
            }
            MadEvent::SettingEnd { record, resumed } => {
                if *resumed {
                    ui::say(
                        &bar,
                        &format!(
                            "  {spec}: {} {}: best acc {:.4} (resumed from {})",
                            record.task.name(),
                            record.result.label,
                            record.result.best_acc,
                            progress_path.display()
                        ),
                    );
                } else if progress_err.is_none() {
                    if let Err(e) = progress.append(record) {
                        progress_err = Some(e);
                    }
                }
            }
        };
        let select = |t: MadTask, st: &hyena::data::mad::TaskSetting| {
            shard
                .as_ref()
                .is_none_or(|(_, keep)| keep.contains(&(ai, t.name().to_string(), st.label())))
        };
        let r = run_mad_selected(spec, arch, &tasks, &proto, &done, &select, &mut ev)
            .with_context(|| format!("MAD run of {spec}"))?;
        bar.finish_and_clear();
        if let Some(e) = progress_err.take() {
            return Err(e.into());
        }
        reports.push(r);
        // Keep what is done on disk as it finishes.
        write_results(&out, &reports)?;
    }
    if let Some((mut m, _)) = shard {
        m.done = m.members.as_ref().map_or(0, |v| v.len());
        m.finished = true;
        m.write(&hyena::apps::shard::manifest_path(&out))?;
        eprintln!(
            "shard {}: {} of the {} settings done in {}; join the shards with `hyena merge`",
            m.shard,
            m.done,
            m.total,
            out.display()
        );
    }
    if common.json.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        println!("{}", markdown_table(&reports));
        for r in &reports {
            for t in &r.tasks {
                let best: Vec<String> = t
                    .settings
                    .iter()
                    .map(|s| format!("{} {:.3}", s.label, s.best_acc))
                    .collect();
                println!("{} / {}: {}", r.spec, t.task.name(), best.join(", "));
            }
        }
        println!(
            "\nwrote {}/{RESULTS_JSON}, {RESULTS_CSV}, {RESULTS_PNG}",
            out.display()
        );
    }
    Ok(())
}

/// `--estimate`: a table of projected hours per task, from timed steps of every setting.
fn estimate_cmd(
    specs: &[String],
    archs: &[ArchConfig],
    tasks: &[MadTask],
    proto: &MadProtocol,
) -> Result<()> {
    eprintln!(
        "config: {}",
        serde_json::json!({ "architectures": archs, "tasks": tasks, "protocol": proto })
    );
    println!("| architecture | task | settings | runs each | epochs | s/step | projected hours |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (spec, arch) in specs.iter().zip(archs) {
        let bar = ProgressBar::new_spinner();
        let mut total = 0.0;
        for &task in tasks {
            let est = estimate_mad(arch, &[task], proto, &mut |e| {
                bar.set_message(format!("{spec} {} {}", e.task.name(), e.label));
                bar.tick();
            })
            .with_context(|| format!("estimating {spec} on {}", task.name()))?;
            let secs: f64 = est.iter().map(|e| e.seconds).sum();
            let step = est.iter().map(|e| e.step_seconds).sum::<f64>() / est.len().max(1) as f64;
            let epochs = est.first().map_or(0, |e| e.epochs);
            let runs = est.first().map_or(0, |e| e.runs);
            bar.suspend(|| {
                println!(
                    "| {spec} | {} | {} | {runs} | {epochs} | {step:.3} | {:.1} |",
                    task.name(),
                    est.len(),
                    secs / 3600.0
                )
            });
            total += secs;
        }
        bar.finish_and_clear();
        println!("| {spec} | **all** | | | | | **{:.1}** |", total / 3600.0);
    }
    println!(
        "\nProjected from timed steps on this machine, without early stopping (which only \
         shortens runs); s/step is the mean over a task's settings."
    );
    Ok(())
}
