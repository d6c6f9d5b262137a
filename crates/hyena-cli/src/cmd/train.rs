//! `hyena train`: resolve the flags into a run config (the quick-start run, a preset or a
//! `--config` file, then the flags given), run it, print progress and a summary. The work is
//! `hyena::train::run`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use hyena::io::tokenizer::Tokenizer;
use hyena::train::run::{run_ranks, Event, RunConfig, Start};

use crate::args::DataFiles;
use crate::ui;

#[derive(clap::Args, Debug)]
#[command(mut_arg(
    "fasta",
    DataFiles::fasta_default("the E. coli K-12 genome in data/ecoli")
))]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataFiles,
    /// Run directory (checkpoint, metrics.jsonl, loss.png) [default: runs/train].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue a run from its last checkpoint: `--resume` alone continues --out, `--resume
    /// DIR` continues DIR (same settings; the loss curve continues exactly).
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    pub resume: Option<Option<PathBuf>>,
    /// Replace the run already in --out (its checkpoint stays current until the new run
    /// commits its first one).
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// A JSON run config ({"model": …, "train": …, "data": …}); flags below override it.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// Start from a named configuration instead of the quick-start run; flags below override
    /// it. hyenadna-tiny: the released tiny-1k shape (d_model 128, 2 layers, l_max 1026) with
    /// the reference recipe (AdamW 6e-4, weight decay 0.1, 1% warm-up, clip 1), 2000 steps of
    /// 8 x 1024 bases; hyenadna-tiny-d256; hyenadna-small (d_model 256, 4 layers, 32768-base
    /// windows).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(
        hyena::train::run::PRESETS.iter().map(|p| p.0)))]
    pub preset: Option<String>,
    /// Optimizer steps [default: 1000]. With --resume, a larger value extends the run.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Window length in tokens [default: 1024].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Sequences per step [default: 8].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Model width [default: 128].
    #[arg(long)]
    pub d_model: Option<usize>,
    /// Residual blocks [default: 2].
    #[arg(long)]
    pub n_layer: Option<usize>,
    /// Peak learning rate [default: 0.002].
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// Evaluate every this many steps [default: 200].
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Commit a checkpoint every this many steps, and at the end [default: --eval-every].
    #[arg(long, value_name = "STEPS")]
    pub save_every: Option<u64>,
    /// Skip up to this many steps whose loss or gradient is NaN or infinite (no update)
    /// before stopping the run [default: 0: stop at the first].
    #[arg(long, value_name = "N")]
    pub skip_nonfinite: Option<u64>,
    /// Seed of the initialisation and of the batches [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep DNA case as is (lowercase then maps to [UNK], as in the reference tokenizer).
    #[arg(long)]
    pub case_sensitive: bool,
}

impl TrainArgs {
    /// Resolve flags (and an optional config file) into the library's run config.
    fn to_config(&self) -> Result<RunConfig> {
        let files = &self.data;
        if !files.text.is_empty() && !files.fasta.is_empty() {
            bail!("give either --fasta or --text, not both (they use different tokenizers)");
        }
        // Base: the --config file, a preset, or the quick-start run; then the flags given.
        let mut cfg = match (&self.config, &self.preset) {
            (Some(p), _) => RunConfig::read(p)?,
            (None, Some(name)) => hyena::train::run::preset(name)?,
            (None, None) => RunConfig::quickstart(),
        };
        if !files.is_empty() {
            cfg.data.fasta = files.fasta.clone();
            cfg.data.text = files.text.clone();
        }
        let tokenizer = if !files.text.is_empty() {
            Tokenizer::Bytes
        } else if !files.fasta.is_empty() || self.case_sensitive {
            Tokenizer::Nucleotide {
                uppercase: !self.case_sensitive,
            }
        } else {
            cfg.data.tokenizer
        };
        cfg.set_tokenizer(tokenizer);
        for s in self.settings() {
            (s.apply)(&mut cfg);
        }
        if let Some(st) = self.steps {
            cfg.set_steps(st);
        }
        self.apply_run_flags(&mut cfg);
        Ok(cfg)
    }

    /// The flags that a resumed run may also change: how often it checkpoints and how many
    /// non-finite steps it skips (neither changes the weights of a healthy run).
    fn apply_run_flags(&self, cfg: &mut RunConfig) {
        if let Some(e) = self.save_every {
            cfg.train.save_every = e;
        }
        if let Some(n) = self.skip_nonfinite {
            cfg.train.skip_nonfinite = n;
        }
    }

    /// The setting flags that were given (all but `--steps`, which a resume may change, and
    /// the data flags). One table serves both building a config and checking a resume.
    fn settings(&self) -> Vec<Setting> {
        [
            setting("--d-model", self.d_model, RunConfig::set_d_model, |c| {
                c.model.operator.d_model
            }),
            setting(
                "--n-layer",
                self.n_layer,
                |c, n| c.model.n_layer = n,
                |c| c.model.n_layer,
            ),
            setting("--seq-len", self.seq_len, RunConfig::set_seq_len, |c| {
                c.train.seq_len
            }),
            setting(
                "--batch",
                self.batch,
                |c, b| c.train.batch_size = b,
                |c| c.train.batch_size,
            ),
            setting(
                "--lr",
                self.lr,
                |c, lr| c.train.optim.lr = lr,
                |c| c.train.optim.lr,
            ),
            setting(
                "--eval-every",
                self.eval_every,
                |c, e| c.train.eval_every = e,
                |c| c.train.eval_every,
            ),
            setting(
                "--seed",
                self.seed,
                |c, s| c.train.seed = s,
                |c| c.train.seed,
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// A setting flag that was given: its name and value, how it sets the run config, and what
/// the run config holds for it.
struct Setting {
    name: &'static str,
    given: String,
    apply: Box<dyn Fn(&mut RunConfig)>,
    saved: Box<dyn Fn(&RunConfig) -> String>,
}

fn setting<T: ToString + Copy + 'static>(
    name: &'static str,
    given: Option<T>,
    set: fn(&mut RunConfig, T),
    get: fn(&RunConfig) -> T,
) -> Option<Setting> {
    given.map(|v| Setting {
        name,
        given: v.to_string(),
        apply: Box::new(move |c| set(c, v)),
        saved: Box::new(move |c| get(c).to_string()),
    })
}

/// With `--resume`, every flag given (other than `--steps`) must match the saved run.
fn check_resume_flags(a: &TrainArgs, c: &RunConfig, out: &Path) -> Result<()> {
    let mut diffs = Vec::new();
    for s in a.settings() {
        let saved = (s.saved)(c);
        if s.given != saved {
            diffs.push(format!("{} {} (the run has {saved})", s.name, s.given));
        }
    }
    if !a.data.fasta.is_empty() && a.data.fasta != c.data.fasta {
        diffs.push("--fasta (the run used other files)".into());
    }
    if !a.data.text.is_empty() && a.data.text != c.data.text {
        diffs.push("--text (the run used other files)".into());
    }
    if a.config.is_some() {
        diffs.push("--config (a resumed run keeps its own config.json)".into());
    }
    if a.preset.is_some() {
        diffs.push("--preset (a resumed run keeps its own config.json)".into());
    }
    if !diffs.is_empty() {
        bail!(
            "cannot resume {} with different settings: {}; resume with the run's own settings \
             (only --steps may grow), or start a new run with --out",
            out.display(),
            diffs.join(", ")
        );
    }
    Ok(())
}

/// The run directory when --out is not given.
const DEFAULT_OUT: &str = "runs/train";

pub fn run_cmd(a: TrainArgs) -> Result<()> {
    let (out, resume) = crate::args::resume_dir(&a.resume, &a.out, DEFAULT_OUT)?;
    let cfg = if resume {
        // The run's own config; only --steps may extend it, and any other setting given must
        // agree with it (a run cannot change its model or data halfway).
        let mut c = RunConfig::load(&out)?;
        check_resume_flags(&a, &c, &out)?;
        if let Some(st) = a.steps {
            // The library refuses a total below the steps already done.
            c.train.steps = st;
        }
        a.apply_run_flags(&mut c);
        c
    } else {
        a.to_config()?
    };
    let start = match (resume, a.force) {
        (true, _) => Start::Resume,
        (false, true) => Start::Replace,
        (false, false) => Start::New,
    };
    // Numbers out of range are refused before anything is printed or read.
    cfg.model.validate()?;
    cfg.train.validate()?;
    // Under mpirun/srun: this rank of a data-parallel run; only rank 0 prints.
    let comm = crate::ranks::world()?;
    let rank0 = crate::ranks::is_rank0(&comm);
    if rank0 {
        eprintln!("config: {}", serde_json::to_string(&cfg)?);
    }
    let bar = if rank0 {
        ui::bar(
            cfg.train.steps,
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    let t0 = std::time::Instant::now();
    let mut tokens = 0usize;
    // Seconds between consecutive steps: their median is the step time (evaluations and
    // checkpoints fall between a few of them and are left out by the median).
    let mut last_step: Option<std::time::Instant> = None;
    let mut gaps: Vec<f64> = Vec::new();
    let mut on_event = |e: &Event| match e {
        Event::Info(s) => ui::say(&bar, s),
        Event::Step(s) => {
            let now = std::time::Instant::now();
            if let Some(p) = last_step.replace(now) {
                gaps.push((now - p).as_secs_f64());
            }
            tokens += s.tokens;
            let tps = tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(s.step);
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                s.loss, s.lr, tps
            ));
        }
        Event::Eval(v) => ui::say(
            &bar,
            &format!(
                "step {:>6}  val loss {:.4}  ppl {:.3}  bits/token {:.4}  acc {:.4}  ({:.0} tok/s)",
                v.step,
                v.loss,
                v.perplexity,
                v.bits_per_token,
                v.accuracy,
                tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9)
            ),
        ),
    };
    let summary = run_ranks(&cfg, &out, start, comm, &mut on_event)?;
    bar.finish_and_clear();
    if !rank0 {
        return Ok(());
    }
    if !gaps.is_empty() {
        gaps.sort_by(f64::total_cmp);
        eprintln!(
            "step time: median {:.4} s over {} steps",
            gaps[gaps.len() / 2],
            gaps.len()
        );
    }
    if let Some(e) = &summary.last_eval {
        println!("{}", verdict(e.bits_per_token, &summary.baselines));
    }
    println!(
        "run directory: {} (model.safetensors, metrics.jsonl, loss.png)",
        out.display()
    );
    Ok(())
}

/// The run's last line: the model's validation score beside the best count baseline, and
/// plainly whether (and by how much) it beats it.
fn verdict(bits: f64, baselines: &[hyena::baselines::markov::BaselineScore]) -> String {
    let unigram = baselines.first().map_or(f64::NAN, |b| b.bits_per_token);
    let Some(best) = baselines
        .iter()
        .min_by(|a, b| a.bits_per_token.total_cmp(&b.bits_per_token))
    else {
        return format!("final: validation {bits:.4} bits/token");
    };
    let name = if best.order == 0 {
        "the unigram baseline".to_string()
    } else {
        format!("the best Markov baseline (order {})", best.order)
    };
    let gap = best.bits_per_token - bits;
    let pct = 100.0 * gap / best.bits_per_token;
    let judgement = if !bits.is_finite() {
        "is broken: its validation loss is not finite (lower --lr)".to_string()
    } else if gap > 0.0 {
        format!("beats it by {gap:.4} bits/token ({pct:.2}%)")
    } else {
        format!(
            "does NOT beat it: worse by {:.4} bits/token ({:.2}%); train longer (--steps) or \
             larger (--d-model, --n-layer)",
            -gap, -pct
        )
    };
    format!(
        "final: validation {bits:.4} bits/token vs {name} {:.4} (unigram {unigram:.4}): the \
         model {judgement}",
        best.bits_per_token
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        a: TrainArgs,
    }

    fn score(order: usize, bits: f64) -> hyena::baselines::markov::BaselineScore {
        hyena::baselines::markov::BaselineScore {
            order,
            bits_per_token: bits,
        }
    }

    /// The last line says plainly whether the model beats the best baseline, and by how much.
    #[test]
    fn verdict_compares_with_the_best_baseline() {
        let b = [score(0, 1.99), score(2, 1.95), score(3, 1.94)];
        let v = verdict(1.9329, &b);
        assert!(v.contains("order 3") && v.contains("1.9400"), "{v}");
        assert!(v.contains("beats it by 0.0071"), "{v}");
        let v = verdict(1.9450, &b);
        assert!(v.contains("does NOT beat it: worse by 0.0050"), "{v}");
        let v = verdict(f64::NAN, &b);
        assert!(v.contains("not finite"), "{v}");
        let v = verdict(1.98, &b[..1]);
        assert!(
            v.contains("the unigram baseline") && v.contains("beats it"),
            "{v}"
        );
    }

    /// The `[default: …]` of the setting flags' help is the quick-start run's.
    #[test]
    fn help_defaults_are_the_quickstart_run() {
        let q = RunConfig::quickstart();
        let expected = [
            ("steps", q.train.steps.to_string()),
            ("seq_len", q.train.seq_len.to_string()),
            ("batch", q.train.batch_size.to_string()),
            ("d_model", q.model.operator.d_model.to_string()),
            ("n_layer", q.model.n_layer.to_string()),
            ("lr", q.train.optim.lr.to_string()),
            ("eval_every", q.train.eval_every.to_string()),
            ("seed", q.train.seed.to_string()),
        ];
        let cmd = Cmd::command();
        for (id, value) in expected {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("no argument {id}"));
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(
                help.contains(&format!("[default: {value}]")),
                "--{id}: help {help:?} should say [default: {value}]"
            );
        }
    }
}
