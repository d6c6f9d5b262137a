//! A whole training run, as `hyena train` does it: read and tokenize the data, hold out a
//! contiguous validation tail, score the count baselines on it, train with periodic evaluation,
//! and keep a run directory up to date.
//!
//! Run directory: the committed checkpoint (`config.json` with the whole [`RunConfig`],
//! `model.safetensors`, `optimizer.safetensors`, `state.json`: one set, switched atomically by
//! [`crate::checkpoint::commit_checkpoint`]), `metrics.jsonl` (one JSON object per step and per
//! evaluation, cut back to the checkpoint's step when the run is resumed) and, at the end,
//! `loss.png`. Nothing is written before the configuration and the data have been checked; a
//! run killed at any instant can be resumed from its last checkpoint (bit for bit, on the same
//! machine and thread count), and one killed before its first checkpoint can be started again
//! with the same command.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::baselines::markov::{markov_scores, BaselineScore};
use crate::data::tokens::{load_stream, load_tokens, DataConfig, TokenData};
use crate::error::{Error, Result};
use crate::io::tokenizer::Tokenizer;
use crate::models::hyenadna::{HyenaLm, LmConfig};
use crate::models::Model;
use crate::plot::{loss_curve_png, RefLine};
use crate::train::dist::Comm;
pub use crate::train::lm::Event;
use crate::train::lm::{EvalStats, TrainConfig, Trainer};

/// Everything a run is: model, optimisation and data. Saved as `config.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub model: LmConfig,
    pub train: TrainConfig,
    pub data: DataConfig,
}

impl RunConfig {
    /// The quick-start run: what `hyena train` does with no flags (the README's first run,
    /// about 3 minutes on 2 cores). A HyenaDNA-shaped language model ([`LmConfig::hyenadna`]:
    /// d_model 128, 2 blocks, d_inner 512, the released checkpoints' filter settings emb_dim 5,
    /// w 10, shift 0.05) in the training repository's interleaved filter-channel layout, with
    /// `l_max` the window; the nucleotide tokenizer (case folded); 1000 AdamW steps of 8
    /// windows of 1024 tokens at peak lr 2e-3, warm-up over the first 5%, evaluation and a
    /// checkpoint every 200 steps on up to 512 validation windows (all of the default
    /// validation split, so the model and the count baselines score the same tokens), seed 0.
    /// The data files are left empty: the shipped E. coli genome ([`DataConfig`]'s default).
    pub fn quickstart() -> Self {
        use crate::config::FilterLayout;
        let (d, n_layer, window, batch, steps) = (128, 2, 1024, 8, 1000);
        let mut model = LmConfig::hyenadna(d, n_layer, window);
        model.operator.filter.layout = FilterLayout::Interleaved;
        let mut cfg = RunConfig {
            model,
            train: TrainConfig {
                batch_size: batch,
                seq_len: window,
                steps,
                eval_every: 200,
                eval_windows: 512,
                seed: 0,
                warmup: (steps / 20).max(1),
                optim: crate::train::AdamWConfig {
                    lr: 2e-3,
                    ..Default::default()
                },
                ..TrainConfig::default()
            },
            data: DataConfig::default(),
        };
        cfg.set_tokenizer(Tokenizer::Nucleotide { uppercase: true });
        cfg
    }

    /// The run config in the JSON file `path`: a run's `config.json`, or a config written by
    /// hand (`{"model": …, "train": …, "data": …}`): every key it leaves out takes the
    /// quick-start run's value ([`RunConfig::quickstart`]), so a file that sets only
    /// `train.steps` trains the quick-start model at the quick-start learning rate.
    pub fn read(path: &Path) -> Result<Self> {
        let s = std::fs::read_to_string(path).map_err(Error::io(path))?;
        Self::parse(&s, path)
    }

    /// [`read`](Self::read) on JSON text already in memory; `path` names it in errors. Used by
    /// the fuzz targets (`fuzz/` in the repository).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let given: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        if !given.is_object() {
            return Err(Error::format(
                path,
                "not a run config: expected a JSON object {\"model\": …, \"train\": …, \"data\": …}",
            ));
        }
        let mut tree = serde_json::to_value(RunConfig::quickstart())
            .map_err(|e| Error::format(path, e.to_string()))?;
        overlay(&mut tree, given);
        serde_json::from_value(tree)
            .map_err(|e| Error::format(path, format!("not a run config ({e})")))
    }

    /// The run config saved in the run directory `dir` (its committed checkpoint's
    /// `config.json`).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = crate::checkpoint::current_dir(dir).join("config.json");
        if !path.is_file() {
            return Err(Error::format(
                path,
                format!(
                    "not found: is {} a run directory (one that `hyena train --out` wrote)?",
                    dir.display()
                ),
            ));
        }
        Self::read(&path)
    }

    /// Use tokenizer `t` for the data; the model's vocabulary follows it.
    pub fn set_tokenizer(&mut self, t: Tokenizer) {
        self.data.tokenizer = t;
        self.model.vocab_size = t.vocab_size();
    }

    /// Set the model width, with HyenaDNA's MLP width `d_inner` = 4·`d`.
    pub fn set_d_model(&mut self, d: usize) {
        self.model.operator.d_model = d;
        self.model.d_inner = 4 * d;
    }

    /// Set the training window, keeping the margin of the model's `l_max` over it (the
    /// presets': `l_max` = window + 2, as the released configs).
    pub fn set_seq_len(&mut self, l: usize) {
        let extra = self.model.operator.l_max.saturating_sub(self.train.seq_len);
        self.train.seq_len = l;
        self.model.operator.l_max = l + extra;
    }

    /// Set the number of optimizer steps, keeping the warm-up's fraction of them (5% in the
    /// quick start, 1% in the presets; at least one step).
    pub fn set_steps(&mut self, steps: u64) {
        let frac = self.train.warmup as f64 / self.train.steps.max(1) as f64;
        self.train.steps = steps;
        self.train.warmup = ((steps as f64 * frac).round() as u64).max(1);
    }
}

/// Set every key of `given` in `base`, recursing into objects (a key `given` holds as an
/// object replaces `base`'s value only where `base` has no object there).
fn overlay(base: &mut serde_json::Value, given: serde_json::Value) {
    match (base, given) {
        (serde_json::Value::Object(b), serde_json::Value::Object(g)) => {
            for (k, v) in g {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => overlay(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, g) => *b = g,
    }
}

/// Named starting points for `hyena train --preset` (and `hyena finetune --preset`): the shapes
/// of the released HyenaDNA checkpoints (arXiv:2306.15794; the `LongSafari/hyenadna-*`
/// configs) with the reference pretraining recipe (hyena-dna
/// `configs/experiment/hg38/hg38_hyena*.yaml`) scaled to a CPU: `(name, description)`.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "hyenadna-tiny",
        "hyenadna-tiny-1k-seqlen: d_model 128, 2 layers, d_inner 512, l_max 1026, 1024-base windows",
    ),
    (
        "hyenadna-tiny-d256",
        "hyenadna-tiny-1k-seqlen-d256: d_model 256, 2 layers, d_inner 1024, l_max 1026, 1024-base windows",
    ),
    (
        "hyenadna-small",
        "hyenadna-small-32k-seqlen: d_model 256, 4 layers, d_inner 1024, l_max 32770, 32768-base windows",
    ),
];

/// The run config of preset `name` (see [`PRESETS`]).
///
/// Model: the released shape (`l_max` = window + 2, as the released configs). Optimisation, as
/// the reference pretraining: AdamW lr 6e-4, weight decay 0.1, warm-up over 1% of the steps
/// then cosine decay to 0.1·lr, gradient clip 1.0. The reference's global batch of 256 windows
/// is a GPU budget; here a step is 8 windows of 1024 (tiny) or 1 of 32768 (small), 2,000
/// steps by default. Data: nucleotide tokenizer (case folded, ids of the reference), records
/// separated by `[SEP]` as the reference's `add_eos`; FASTA files are set by the caller.
pub fn preset(name: &str) -> Result<RunConfig> {
    let (d, n_layer, window, batch) = match name {
        "hyenadna-tiny" => (128, 2, 1024, 8),
        "hyenadna-tiny-d256" => (256, 2, 1024, 8),
        "hyenadna-small" => (256, 4, 32768, 1),
        _ => {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
            return Err(Error::config(
                "preset",
                name,
                format!("unknown; the presets are {}", names.join(", ")),
            ));
        }
    };
    let mut cfg = RunConfig::default();
    cfg.data.tokenizer = Tokenizer::Nucleotide { uppercase: true };
    cfg.model = LmConfig::hyenadna(d, n_layer, window + 2);
    cfg.model.vocab_size = cfg.data.tokenizer.vocab_size();
    let steps = 2000;
    cfg.train = TrainConfig {
        batch_size: batch,
        seq_len: window,
        steps,
        eval_every: 250,
        eval_windows: 256,
        clip: 1.0,
        warmup: steps / 100,
        min_lr_ratio: 0.1,
        optim: crate::train::AdamWConfig {
            lr: 6e-4,
            weight_decay: 0.1,
            ..Default::default()
        },
        ..TrainConfig::default()
    };
    Ok(cfg)
}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub last_eval: Option<EvalStats>,
    pub baselines: Vec<BaselineScore>,
    pub out_dir: PathBuf,
}

/// How [`run`] treats the run directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new run: the directory must not hold a checkpoint (one left by a run killed before
    /// its first checkpoint is started again).
    New,
    /// A new run that replaces the run in the directory (`--force`); the old checkpoint stays
    /// current until the new run commits its first one.
    Replace,
    /// Continue the run in the directory from its checkpoint; `train.steps` may only grow.
    Resume,
}

/// Run (or continue) a training run into `out`. `on_event` sees every step and evaluation
/// (the CLI draws its progress bar from them).
pub fn run(
    cfg: &RunConfig,
    out: &Path,
    start: Start,
    on_event: &mut dyn FnMut(&Event),
) -> Result<RunSummary> {
    run_ranks(cfg, out, start, None, on_event)
}

/// [`run`], data-parallel over the ranks of `comm` when given ([`crate::train::dist`]):
/// every rank calls it with the same arguments; each computes its rows of every batch, and
/// rank 0 alone checks and writes the run directory, computes the baselines, evaluates, logs
/// metrics and sends events (the others' `on_event` sees nothing). A failure on any rank stops
/// all of them with that rank's message. The batches, hence the run, do not depend on the
/// number of ranks: a run may be resumed with another.
pub fn run_ranks(
    cfg: &RunConfig,
    out: &Path,
    start: Start,
    comm: Option<Box<dyn Comm>>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<RunSummary> {
    let created = !out.exists();
    let rank0 = comm.as_ref().is_none_or(|c| c.rank() == 0);
    let res = run_inner(cfg, out, start, comm, on_event);
    if res.is_err() && created && rank0 {
        // A failed run leaves no empty directory behind (remove_dir refuses a non-empty one).
        let _ = std::fs::remove_dir(out);
    }
    res
}

/// The files and folders a training run writes into its directory beside the checkpoint's
/// own ([`crate::checkpoint::CHECKPOINT_FILES`]).
const RUN_FILES: &[&str] = &[
    "metrics.jsonl",
    "loss.png",
    crate::checkpoint::CURRENT,
    crate::checkpoint::STEP_DIRS,
];

/// Whether `name` in a run directory is something a training run writes.
fn is_run_file(name: &str) -> bool {
    RUN_FILES.contains(&name)
        || crate::checkpoint::CHECKPOINT_FILES.contains(&name)
        || crate::checkpoint::is_temp_name(name)
}

/// Check that a new run may write into `out` (see [`Start`]) before any work is done.
fn check_new_run_dir(out: &Path, start: Start) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(Error::config(
            "out",
            out.display(),
            "is a file, not a directory; choose another --out",
        ));
    }
    let foreign: Vec<String> = std::fs::read_dir(out)
        .map_err(Error::io(out))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !is_run_file(n))
        .collect();
    if start == Start::New && crate::checkpoint::has_checkpoint(out) {
        let step = crate::checkpoint::read_state(out)
            .ok()
            .flatten()
            .map_or(String::new(), |s| format!(" at step {}", s.step));
        return Err(Error::config(
            "out",
            out.display(),
            format!(
                "already holds a run{step}; continue it with --resume, choose another --out, or \
                 pass --force to replace it"
            ),
        ));
    }
    if start == Start::New && !foreign.is_empty() {
        return Err(Error::config(
            "out",
            out.display(),
            format!(
                "is not a run directory (it holds {}); choose another --out, or pass --force",
                foreign.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Keep the lines of `metrics.jsonl` up to step `step` (those after it were logged after the
/// checkpoint the run resumes from, and will be logged again).
fn cut_metrics(path: &Path, step: u64) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path)(e)),
    };
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        let keep = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["step"].as_u64())
            .is_some_and(|s| s <= step);
        if keep {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    crate::io::safetensors::write_bytes_atomic(path, kept.as_bytes())
}

fn run_inner(
    cfg: &RunConfig,
    out: &Path,
    start: Start,
    mut comm: Option<Box<dyn Comm>>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<RunSummary> {
    let rank0 = comm.as_ref().is_none_or(|c| c.rank() == 0);
    let mut quiet = |_: &Event| {};
    let on_event: &mut dyn FnMut(&Event) = if rank0 { on_event } else { &mut quiet };
    // Checks, the run directory and the data: rank 0's checks and writes first, then every
    // rank agrees before the model is built (so a bad file on any rank stops them all).
    let setup = setup_run(cfg, out, start, rank0, on_event);
    let (data, baselines) = match comm.as_mut() {
        Some(c) => crate::train::dist::agree(c.as_mut(), setup)?,
        None => setup?,
    };
    let resume = start == Start::Resume;
    let metrics_path = out.join("metrics.jsonl");
    let built = (|| -> Result<Trainer> {
        if resume {
            let t = Trainer::resume(out, &cfg.model, cfg.train.clone(), data.train, data.val)?;
            if rank0 {
                on_event(&Event::Info(format!(
                    "resuming {} at step {}",
                    out.display(),
                    t.step()
                )));
                cut_metrics(&metrics_path, t.step())?;
            }
            if t.step() >= cfg.train.steps {
                on_event(&Event::Info(format!(
                    "the run is already at step {} of {}: nothing to do (pass a larger --steps \
                     to extend it)",
                    t.step(),
                    cfg.train.steps
                )));
            }
            Ok(t)
        } else {
            let (net, params) = HyenaLm::fresh(&cfg.model, cfg.train.seed)?;
            let t = Trainer::new(
                Model { net, params },
                cfg.train.clone(),
                data.train,
                data.val,
            )?;
            if rank0 {
                std::fs::create_dir_all(out).map_err(|source| Error::Io {
                    file: out.to_path_buf(),
                    source,
                })?;
                let _ = std::fs::remove_file(&metrics_path);
            }
            Ok(t)
        }
    })();
    let mut trainer = match comm {
        Some(mut c) => {
            let mut t = crate::train::dist::agree(c.as_mut(), built)?;
            on_event(&Event::Info(format!(
                "data-parallel over {}: {} of the batch's {} sequences per rank",
                c.describe(),
                crate::train::dist::rank_rows(cfg.train.batch_size, 0, c.size()).map_or(0, |r| r.1),
                cfg.train.batch_size
            )));
            t.set_comm(c)?;
            t
        }
        None => built?,
    };
    let extra = serde_json::json!({ "data": cfg.data });
    // Only rank 0 logs metrics.
    let mut metrics = if rank0 {
        Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .map_err(|source| Error::Io {
                    file: metrics_path.clone(),
                    source,
                })?,
        )
    } else {
        None
    };
    let mut log = |v: serde_json::Value| -> Result<()> {
        match metrics.as_mut() {
            Some(m) => writeln!(m, "{v}").map_err(|source| Error::Io {
                file: metrics_path.clone(),
                source,
            }),
            None => Ok(()),
        }
    };
    let last_eval = trainer.run(out, &extra, &mut |ev| {
        match ev {
            Event::Step(s) => log(
                serde_json::json!({ "kind": "train", "step": s.step, "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm }),
            )?,
            Event::Eval(e) => log(serde_json::to_value(e)
                .map(|mut v| {
                    v["kind"] = "eval".into();
                    v
                })
                .map_err(|e| Error::Format {
                    file: metrics_path.clone(),
                    msg: e.to_string(),
                })?)?,
            Event::Info(_) => {}
        }
        on_event(ev);
        Ok(())
    })?;
    if let Some(c) = trainer.comm_seconds_per_step() {
        on_event(&Event::Info(format!(
            "data-parallel: {:.2} ms per step in the gradient all-reduce and loss exchange \
             ({} floats per step)",
            c * 1e3,
            trainer.model.params.len()
        )));
    }
    if rank0 {
        plot_run(out, &baselines)?;
    }
    Ok(RunSummary {
        last_eval,
        baselines,
        out_dir: out.to_path_buf(),
    })
}

/// The checks and reads before a run's model is built: the configuration, the run directory
/// (rank 0 only: checks, recovery of what a killed run left), the data, and the baselines
/// (rank 0 only).
fn setup_run(
    cfg: &RunConfig,
    out: &Path,
    start: Start,
    rank0: bool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(TokenData, Vec<BaselineScore>)> {
    let resume = start == Start::Resume;
    cfg.model.validate()?;
    cfg.train.validate()?;
    crate::models::hyenadna::memory::check_train(
        &cfg.model,
        cfg.train.batch_size,
        cfg.train.seq_len,
    )?;
    if cfg.data.tokenizer.vocab_size() != cfg.model.vocab_size {
        return Err(Error::config(
            "model.vocab_size",
            cfg.model.vocab_size,
            format!(
                "must equal the tokenizer's vocabulary ({})",
                cfg.data.tokenizer.vocab_size()
            ),
        ));
    }
    // Refuse to overwrite an existing run before doing any work, and tidy what a killed run
    // left (temp files, uncommitted step folders).
    if !resume && rank0 {
        check_new_run_dir(out, start)?;
    }
    if rank0 {
        crate::checkpoint::recover_run_dir(out)?;
    }
    if resume {
        let state = crate::checkpoint::verify_checkpoint(out)?;
        match state {
            None => {
                return Err(Error::config(
                    "resume",
                    out.display(),
                    "holds no checkpoint yet (the run stopped before its first one): start it \
                     again with the same command, without --resume",
                ))
            }
            Some(s) if cfg.train.steps < s.step => {
                return Err(Error::config(
                    "train.steps",
                    cfg.train.steps,
                    format!(
                        "the run is already at step {}; --steps must be at least that (a larger \
                         value extends the run: the cosine decay is stretched to the new total)",
                        s.step
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    let data = load_tokens(&cfg.data)?;
    on_event(&Event::Info(format!("data: {}", data.summary)));
    if data.unknown > 0 {
        on_event(&Event::Info(format!(
            "note: {} characters outside the alphabet were mapped to the unknown token",
            data.unknown
        )));
    }
    if !rank0 {
        return Ok((data, Vec::new()));
    }
    let baselines = markov_scores(&data.train, &data.val, cfg.data.markov_order)?;
    let best = baselines
        .iter()
        .skip(1)
        .min_by(|a, b| a.bits_per_token.total_cmp(&b.bits_per_token));
    on_event(&Event::Info(format!(
        "baselines on the validation set: unigram {:.4} bits/token{}",
        baselines.first().map_or(f64::NAN, |b| b.bits_per_token),
        best.map_or(String::new(), |b| format!(
            ", best Markov (order {}) {:.4} bits/token",
            b.order, b.bits_per_token
        ))
    )));

    Ok((data, baselines))
}

/// What `hyena eval` scores and how.
#[derive(Clone, Debug, Default)]
pub struct EvalOptions {
    /// Data to score. `None`: the validation split of the run's own data (from its
    /// `config.json`). `Some`: every token of these files (tokenized as the run's data was).
    pub data: Option<DataConfig>,
    /// Window length (default: the run's training window).
    pub seq_len: Option<usize>,
    /// Windows per forward (default: the run's batch size).
    pub batch: Option<usize>,
    /// Score at most this many windows (default: all).
    pub max_windows: Option<usize>,
}

/// The outcome of `hyena eval`.
#[derive(Clone, Debug)]
pub struct EvalReport {
    pub stats: EvalStats,
    /// Unigram and Markov baselines fitted on the run's training split and scored on the same
    /// tokens as the model (empty when the run's training data cannot be read).
    pub baselines: Vec<BaselineScore>,
    /// What was scored, in words.
    pub summary: String,
    /// Characters outside the tokenizer's alphabet in the scored data.
    pub unknown: usize,
    pub seq_len: usize,
}

impl EvalReport {
    /// The report as `hyena eval --json` prints it: one object with `model` (the directory
    /// scored), `data` (the summary), `seq_len`, `unknown_chars`, the statistics (`loss`,
    /// `perplexity`, `bits_per_token`, `accuracy`, `tokens`) and `baselines`.
    pub fn to_json(&self, model: &Path) -> serde_json::Value {
        serde_json::json!({
            "model": model,
            "data": self.summary,
            "seq_len": self.seq_len,
            "unknown_chars": self.unknown,
            "loss": self.stats.loss,
            "perplexity": self.stats.perplexity,
            "bits_per_token": self.stats.bits_per_token,
            "accuracy": self.stats.accuracy,
            "tokens": self.stats.tokens,
            "baselines": self.baselines,
        })
    }
}

/// Score the model saved in `dir` (a run directory) on held-out data: loss, perplexity,
/// bits per token and accuracy, beside the count baselines. `progress(done, total)` follows
/// the windows.
pub fn evaluate_run(
    dir: &Path,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let loaded = crate::checkpoint::load_model(dir)?;
    let cfg_path = dir.join("config.json");
    let run_data: Option<DataConfig> = loaded.section("data")?;
    let run_train: Option<TrainConfig> = loaded.section("train")?;
    let seq_len = opts
        .seq_len
        .or(run_train.as_ref().map(|t| t.seq_len))
        .unwrap_or(loaded.model.max_len());
    let batch = opts
        .batch
        .or(run_train.as_ref().map(|t| t.batch_size))
        .unwrap_or(8);
    // The run's own split: needed for the default data and for the baselines.
    let own = run_data.as_ref().map(load_tokens);
    let (tokens, unknown, summary) = match (&opts.data, own.as_ref()) {
        (Some(d), _) => {
            let mut d = d.clone();
            if let Some(rd) = &run_data {
                d.tokenizer = rd.tokenizer;
            }
            let s = load_stream(&d)?;
            let summary = format!("{}: all {} tokens", s.summary, s.train.len());
            (s.train, s.unknown, summary)
        }
        (None, Some(Ok(o))) => (
            o.val.clone(),
            o.unknown,
            format!("validation split of the run's data ({})", o.summary),
        ),
        (None, Some(Err(e))) => {
            return Err(Error::Format {
                file: cfg_path,
                msg: format!(
                "cannot read the run's data ({e}); pass the data to score with --fasta or --text"
            ),
            })
        }
        (None, None) => {
            return Err(Error::Format {
                file: cfg_path,
                msg: "has no `data` section, so there is no validation split to score; \
                      pass the data with --fasta or --text"
                    .into(),
            })
        }
    };
    // A forward of `batch` windows holds all their activations: refuse a batch that cannot fit
    // before allocating it (HyenaDNA models, with the training estimate, whose optimizer terms
    // are small beside the activations of a large batch).
    if let Some(m) = loaded.model.as_any().downcast_ref::<Model<HyenaLm>>() {
        let windows = (tokens.len().saturating_sub(1) / seq_len.max(1))
            .min(opts.max_windows.unwrap_or(usize::MAX))
            .max(1);
        let b = batch.min(windows);
        crate::memory::check_fits(
            &format!("evaluating {b} windows of {seq_len} tokens per forward"),
            crate::models::hyenadna::memory::train_bytes(&m.net.cfg, b, seq_len, 1),
            "--batch or --seq-len",
        )?;
    }
    let mut ws = crate::layers::layer::Slot::default();
    let stats = crate::train::lm::evaluate_tokens(
        loaded.model.as_ref(),
        &tokens,
        batch,
        seq_len,
        opts.max_windows.unwrap_or(usize::MAX),
        &mut ws,
        progress,
    )?;
    // Baselines fitted on the run's training split, scored on the stretch of tokens the model
    // was scored on.
    let baselines = match (own, &run_data) {
        (Some(Ok(o)), Some(d)) => {
            let n = (stats.tokens + 1).min(tokens.len());
            markov_scores(&o.train, &tokens[..n], d.markov_order)?
        }
        _ => Vec::new(),
    };
    Ok(EvalReport {
        stats,
        baselines,
        summary,
        unknown,
        seq_len,
    })
}

/// Draw `loss.png` from `metrics.jsonl` (training loss smoothed over a window, validation
/// points, baselines), all in bits per token.
pub fn plot_run(out: &Path, baselines: &[BaselineScore]) -> Result<()> {
    let path = out.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        file: path.clone(),
        source,
    })?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let step = v["step"].as_u64().unwrap_or(0);
        match v["kind"].as_str() {
            Some("train") => train.push((
                step,
                v["loss"].as_f64().unwrap_or(f64::NAN) / std::f64::consts::LN_2,
            )),
            Some("eval") => val.push((step, v["bits_per_token"].as_f64().unwrap_or(f64::NAN))),
            _ => {}
        }
    }
    // A running mean over 20 steps keeps the curve readable.
    let smooth = crate::plot::running_mean(&train, 20);
    let mut refs = Vec::new();
    if let Some(u) = baselines.first() {
        refs.push(RefLine {
            label: "unigram".into(),
            value: u.bits_per_token,
        });
    }
    if let Some(b) = baselines
        .iter()
        .skip(1)
        .min_by(|a, b| a.bits_per_token.total_cmp(&b.bits_per_token))
    {
        refs.push(RefLine {
            label: format!("order-{} Markov", b.order),
            value: b.bits_per_token,
        });
    }
    loss_curve_png(
        &out.join("loss.png"),
        "hyena train: bits per token",
        &smooth,
        &val,
        &refs,
    )
}
