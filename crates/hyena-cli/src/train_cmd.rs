//! `hyena train`, `hyena eval`, `hyena generate`: argument parsing and printing only; the work
//! is `hyena::train::run` and `hyena::models::generate`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use hyena::checkpoint::load_model;
use hyena::io::tokenizer::Tokenizer;
use hyena::models::generate::{generate, DecodeMode, SampleConfig};
use hyena::train::lm::TrainConfig;
use hyena::train::run::{evaluate_run, run, EvalOptions, Event, RunConfig};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// FASTA/FASTQ files (gzip/xz allowed). Default: the E. coli K-12 genome in data/ecoli.
    #[arg(long, num_args = 1..)]
    pub fasta: Vec<PathBuf>,
    /// Plain-text files, tokenized as bytes (instead of --fasta).
    #[arg(long, num_args = 1..)]
    pub text: Vec<PathBuf>,
    /// Run directory (checkpoints, metrics.jsonl, loss.png).
    #[arg(long, default_value = "runs/default")]
    pub out: PathBuf,
    /// Continue the run in this directory (same settings; the loss curve continues exactly).
    #[arg(long)]
    pub resume: Option<PathBuf>,
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
    #[arg(long)]
    pub lr: Option<f32>,
    /// Evaluate and checkpoint every this many steps [default: 200].
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Seed of the initialisation and of the batches [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep DNA case as is (lowercase then maps to [UNK], as in the reference tokenizer).
    #[arg(long)]
    pub case_sensitive: bool,
}

/// Defaults of the `hyena train` flags (the run that the README's quick start makes).
const STEPS: u64 = 1000;
const SEQ_LEN: usize = 1024;
const BATCH: usize = 8;
const D_MODEL: usize = 128;
const N_LAYER: usize = 2;
const LR: f32 = 2e-3;
const EVAL_EVERY: u64 = 200;

impl TrainArgs {
    /// Resolve flags (and an optional config file) into the library's run config.
    fn to_config(&self) -> Result<RunConfig> {
        if !self.text.is_empty() && !self.fasta.is_empty() {
            bail!("give either --fasta or --text, not both (they use different tokenizers)");
        }
        // Base: the --config file, or the quick-start run; then the flags that were given.
        let mut cfg = match &self.config {
            Some(p) => {
                let s = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                serde_json::from_str::<RunConfig>(&s)
                    .with_context(|| format!("parsing {}", p.display()))?
            }
            None => match &self.preset {
                Some(name) => hyena::train::run::preset(name)?,
                None => default_run(),
            },
        };
        if !self.fasta.is_empty() || !self.text.is_empty() {
            cfg.data.fasta = self.fasta.clone();
            cfg.data.text = self.text.clone();
        }
        if !self.text.is_empty() {
            cfg.data.tokenizer = Tokenizer::Bytes;
        } else if !self.fasta.is_empty() || self.case_sensitive {
            cfg.data.tokenizer = Tokenizer::Nucleotide {
                uppercase: !self.case_sensitive,
            };
        }
        cfg.model.vocab_size = cfg.data.tokenizer.vocab_size();
        for s in self.settings() {
            (s.apply)(&mut cfg);
        }
        if let Some(st) = self.steps {
            // Keep the base config's warm-up fraction (5% quick start, 1% presets).
            let frac = cfg.train.warmup as f64 / cfg.train.steps.max(1) as f64;
            cfg.train.steps = st;
            cfg.train.warmup = ((st as f64 * frac).round() as u64).max(1);
        }
        Ok(cfg)
    }

    /// The setting flags that were given (all but `--steps`, which a resume may change, and
    /// the data flags). One table serves both building a config and checking a resume.
    fn settings(&self) -> Vec<Setting> {
        [
            setting(
                "--d-model",
                self.d_model,
                |c, d| {
                    c.model.operator.d_model = d;
                    c.model.d_inner = 4 * d;
                },
                |c| c.model.operator.d_model,
            ),
            setting(
                "--n-layer",
                self.n_layer,
                |c, n| c.model.n_layer = n,
                |c| c.model.n_layer,
            ),
            setting(
                "--seq-len",
                self.seq_len,
                |c, l| {
                    // Keep the base config's margin (presets: l_max = window + 2, as released).
                    let extra = c.model.operator.l_max.saturating_sub(c.train.seq_len);
                    c.train.seq_len = l;
                    c.model.operator.l_max = l + extra;
                },
                |c| c.train.seq_len,
            ),
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

/// The run `hyena train` makes with no flags: a HyenaDNA-style LM (filter settings of the
/// released checkpoints: emb_dim 5, w 10, shift 0.05) on the shipped E. coli genome.
fn default_run() -> RunConfig {
    let mut cfg = RunConfig::default();
    cfg.data.tokenizer = Tokenizer::Nucleotide { uppercase: true };
    cfg.model.vocab_size = cfg.data.tokenizer.vocab_size();
    cfg.model.n_layer = N_LAYER;
    cfg.model.d_inner = 4 * D_MODEL;
    cfg.model.operator.d_model = D_MODEL;
    cfg.model.operator.l_max = SEQ_LEN;
    cfg.model.operator.filter.emb_dim = 5;
    cfg.model.operator.filter.w = 10.0;
    cfg.model.operator.filter.shift = 0.05;
    cfg.train = TrainConfig {
        batch_size: BATCH,
        seq_len: SEQ_LEN,
        steps: STEPS,
        eval_every: EVAL_EVERY,
        // Every window of the default validation split (226 of 1024 tokens), so the model and
        // the baselines are scored on the same tokens.
        eval_windows: 512,
        seed: 0,
        warmup: (STEPS / 20).max(1),
        optim: hyena::train::AdamWConfig {
            lr: LR,
            ..cfg.train.optim.clone()
        },
        ..cfg.train.clone()
    };
    cfg
}

/// With `--resume`, every flag given (other than `--steps`) must match the saved run.
fn check_resume_flags(a: &TrainArgs, c: &RunConfig, out: &std::path::Path) -> Result<()> {
    let mut diffs = Vec::new();
    for s in a.settings() {
        let saved = (s.saved)(c);
        if s.given != saved {
            diffs.push(format!("{} {} (the run has {saved})", s.name, s.given));
        }
    }
    if !a.fasta.is_empty() && a.fasta != c.data.fasta {
        diffs.push("--fasta (the run used other files)".into());
    }
    if !a.text.is_empty() && a.text != c.data.text {
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

pub fn train(a: TrainArgs) -> Result<()> {
    let (out, resume) = match &a.resume {
        Some(d) => (d.clone(), true),
        None => (a.out.clone(), false),
    };
    let cfg = if resume {
        // The run's own config; only --steps may extend it, and any other setting given must
        // agree with it (a run cannot change its model or data halfway).
        let p = out.join("config.json");
        let s = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "reading {} (is {} a run directory?)",
                p.display(),
                out.display()
            )
        })?;
        let mut c: RunConfig =
            serde_json::from_str(&s).with_context(|| format!("parsing {}", p.display()))?;
        check_resume_flags(&a, &c, &out)?;
        if let Some(st) = a.steps {
            c.train.steps = c.train.steps.max(st);
        }
        c
    } else {
        a.to_config()?
    };
    eprintln!("config: {}", serde_json::to_string(&cfg)?);
    let bar = ProgressBar::new(cfg.train.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // Without a terminal the bar is hidden and would swallow its println: print directly.
    let say = |s: &str| {
        if bar.is_hidden() {
            eprintln!("{s}");
        } else {
            bar.println(s);
        }
    };
    let t0 = std::time::Instant::now();
    let mut tokens = 0usize;
    let mut on_event = |e: &Event| match e {
        Event::Info(s) => say(s),
        Event::Step(s) => {
            tokens += s.tokens;
            let tps = tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(s.step);
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                s.loss, s.lr, tps
            ));
        }
        Event::Eval(v) => say(&format!(
            "step {:>6}  val loss {:.4}  ppl {:.3}  bits/token {:.4}  acc {:.4}  ({:.0} tok/s)",
            v.step,
            v.loss,
            v.perplexity,
            v.bits_per_token,
            v.accuracy,
            tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9)
        )),
    };
    let summary = run(&cfg, &out, resume, &mut on_event)?;
    bar.finish_and_clear();
    if let Some(e) = &summary.last_eval {
        let best = summary
            .baselines
            .iter()
            .skip(1)
            .min_by(|a, b| a.bits_per_token.total_cmp(&b.bits_per_token));
        println!(
            "final: validation {:.4} bits/token; unigram {:.4}; best Markov {}",
            e.bits_per_token,
            summary
                .baselines
                .first()
                .map_or(f64::NAN, |b| b.bits_per_token),
            best.map_or("-".into(), |b| format!(
                "(order {}) {:.4}",
                b.order, b.bits_per_token
            )),
        );
    }
    println!(
        "run directory: {} (model.safetensors, metrics.jsonl, loss.png)",
        out.display()
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Run directory of a trained model.
    #[arg(long)]
    pub model: PathBuf,
    /// FASTA/FASTQ files to score, every token (default: the validation split of the run's data).
    #[arg(long, num_args = 1..)]
    pub fasta: Vec<PathBuf>,
    /// Plain-text files to score, every token.
    #[arg(long, num_args = 1..)]
    pub text: Vec<PathBuf>,
    /// Window length (default: the run's training window).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Windows per forward pass (default: the run's batch size).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Score at most this many windows (default: all).
    #[arg(long)]
    pub max_windows: Option<usize>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn eval_cmd(a: EvalArgs) -> Result<()> {
    let data = if a.fasta.is_empty() && a.text.is_empty() {
        None
    } else {
        Some(hyena::data::tokens::DataConfig {
            fasta: a.fasta.clone(),
            text: a.text.clone(),
            ..Default::default()
        })
    };
    let opts = EvalOptions {
        data,
        seq_len: a.seq_len,
        batch: a.batch,
        max_windows: a.max_windows,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} windows  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let r = evaluate_run(&a.model, &opts, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("evaluating the model in {}", a.model.display()))?;
    bar.finish_and_clear();
    if a.json {
        let v = serde_json::json!({
            "model": a.model,
            "data": r.summary,
            "seq_len": r.seq_len,
            "unknown_chars": r.unknown,
            "loss": r.stats.loss,
            "perplexity": r.stats.perplexity,
            "bits_per_token": r.stats.bits_per_token,
            "accuracy": r.stats.accuracy,
            "tokens": r.stats.tokens,
            "baselines": r.baselines,
        });
        println!("{v}");
        return Ok(());
    }
    println!("data: {}", r.summary);
    if r.unknown > 0 {
        println!(
            "note: {} characters outside the alphabet were mapped to the unknown token",
            r.unknown
        );
    }
    println!(
        "{} tokens in windows of {}: loss {:.4} nats, perplexity {:.4}, {:.4} bits/token, accuracy {:.4}",
        r.stats.tokens,
        r.seq_len,
        r.stats.loss,
        r.stats.perplexity,
        r.stats.bits_per_token,
        r.stats.accuracy
    );
    if !r.baselines.is_empty() {
        let list: Vec<String> = r
            .baselines
            .iter()
            .map(|b| {
                let name = if b.order == 0 {
                    "unigram".to_string()
                } else {
                    format!("order {}", b.order)
                };
                format!("{name} {:.4}", b.bits_per_token)
            })
            .collect();
        println!(
            "baselines fitted on the run's training split (bits/token): {}",
            list.join(", ")
        );
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Run directory of a trained model.
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt text (DNA letters for nucleotide models).
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    pub tokens: usize,
    /// Softmax temperature (0 = greedy).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Sample among the k most likely tokens only (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// conv: full forward over the context per token; recurrent: O(1) steps (distilled models).
    #[arg(long, value_enum, default_value_t = GenMode::Conv)]
    pub mode: GenMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GenMode {
    Conv,
    Recurrent,
}

pub fn generate_cmd(a: GenerateArgs) -> Result<()> {
    let loaded = load_model(&a.model)
        .with_context(|| format!("loading the model in {}", a.model.display()))?;
    let tok: Tokenizer = loaded
        .section::<hyena::data::tokens::DataConfig>("data")
        .ok()
        .flatten()
        .map(|d| d.tokenizer)
        .unwrap_or_default();
    let (prompt, unk) = tok.encode_checked(a.prompt.as_bytes());
    if unk > 0 {
        eprintln!(
            "note: {unk} prompt characters are outside the alphabet (mapped to the unknown token)"
        );
    }
    let sc = SampleConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        seed: a.seed,
        allowed: tok.sampleable_ids(),
    };
    let mode = match a.mode {
        GenMode::Conv => DecodeMode::Conv,
        GenMode::Recurrent => DecodeMode::Recurrent,
    };
    let mut dec = loaded
        .model
        .decoder(mode)
        .with_context(|| format!("{}", a.model.display()))?;
    let out = generate(dec.as_mut(), &prompt, a.tokens, &sc)?;
    println!("{}{}", a.prompt, tok.decode(&out));
    Ok(())
}
