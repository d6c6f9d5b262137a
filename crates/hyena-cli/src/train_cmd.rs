//! `hyena train`, `hyena eval`, `hyena generate`: argument parsing and printing only; the work
//! is `hyena::train::run` and `hyena::models::generate`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use hyena::io::tokenizer::Tokenizer;
use hyena::models::generate::{generate, SampleConfig};
use hyena::train::run::{run, Event, RunConfig};
use hyena::train::trainer::{load_model, TrainConfig};
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
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 600)]
    pub steps: u64,
    /// Window length in tokens.
    #[arg(long, default_value_t = 1024)]
    pub seq_len: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Model width.
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    /// Residual blocks.
    #[arg(long, default_value_t = 2)]
    pub n_layer: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f32,
    /// Evaluate and checkpoint every this many steps.
    #[arg(long, default_value_t = 100)]
    pub eval_every: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep DNA case as is (lowercase then maps to [UNK], as in the reference tokenizer).
    #[arg(long)]
    pub case_sensitive: bool,
}

impl TrainArgs {
    /// Resolve flags (and an optional config file) into the library's run config.
    fn to_config(&self) -> Result<RunConfig> {
        let mut cfg = match &self.config {
            Some(p) => {
                let s = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                serde_json::from_str::<RunConfig>(&s)
                    .with_context(|| format!("parsing {}", p.display()))?
            }
            None => RunConfig::default(),
        };
        if !self.text.is_empty() && !self.fasta.is_empty() {
            bail!("give either --fasta or --text, not both (they use different tokenizers)");
        }
        cfg.data.fasta = self.fasta.clone();
        cfg.data.text = self.text.clone();
        cfg.data.tokenizer = if self.text.is_empty() {
            Tokenizer::Nucleotide {
                uppercase: !self.case_sensitive,
            }
        } else {
            Tokenizer::Bytes
        };
        cfg.model.vocab_size = cfg.data.tokenizer.vocab_size();
        cfg.model.n_layer = self.n_layer;
        cfg.model.d_inner = 4 * self.d_model;
        cfg.model.operator.d_model = self.d_model;
        cfg.model.operator.l_max = self.seq_len;
        cfg.model.operator.filter.emb_dim = 5;
        cfg.model.operator.filter.w = 10.0;
        cfg.model.operator.filter.shift = 0.05;
        cfg.train = TrainConfig {
            batch_size: self.batch,
            seq_len: self.seq_len,
            steps: self.steps,
            eval_every: self.eval_every,
            seed: self.seed,
            warmup: (self.steps / 20).max(1),
            optim: hyena::train::AdamWConfig {
                lr: self.lr,
                ..cfg.train.optim.clone()
            },
            ..cfg.train.clone()
        };
        Ok(cfg)
    }
}

pub fn train(a: TrainArgs) -> Result<()> {
    let (out, resume) = match &a.resume {
        Some(d) => (d.clone(), true),
        None => (a.out.clone(), false),
    };
    let cfg = if resume {
        // The run's own config; only --steps may extend it.
        let p = out.join("config.json");
        let s = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let mut c: RunConfig =
            serde_json::from_str(&s).with_context(|| format!("parsing {}", p.display()))?;
        c.train.steps = c.train.steps.max(a.steps);
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
}

pub fn generate_cmd(a: GenerateArgs) -> Result<()> {
    let lm = load_model(&a.model)
        .with_context(|| format!("loading the model in {}", a.model.display()))?;
    let p = a.model.join("config.json");
    let s = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let cfg: serde_json::Value = serde_json::from_str(&s)?;
    let tok: Tokenizer =
        serde_json::from_value(cfg["data"]["tokenizer"].clone()).unwrap_or_default();
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
    };
    let out = generate(&lm, &prompt, a.tokens, &sc)?;
    println!("{}{}", a.prompt, tok.decode(&out));
    Ok(())
}
