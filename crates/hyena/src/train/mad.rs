//! Training a zoo architecture on one MAD task setting (arXiv:2403.17844; mad-lab's `MADConfig`,
//! `pl_model_wrapper.py` and `train.py`) with the one training
//! loop ([`crate::train::fit`]): AdamW, batch 128, cosine schedule stepped per epoch (`T_max` = epochs, `eta_min` 1e-6), cross-entropy over
//! the scored positions, test accuracy after every epoch, early stop at 0.999.
//!
//! The reported accuracy of a run is its best test accuracy over epochs (MAD logs the test
//! accuracy every epoch and keeps the best). Both averages are tracked: macro (per-class
//! accuracy averaged over classes, torchmetrics' default and so MAD's) and micro.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::mad::{
    baseline, generate, sweep, AccuracyCounter, Average, Example, MadTask, TaskData, TaskSetting,
};
use crate::error::{Error, Result};
use crate::io::safetensors::write_bytes_atomic;
use crate::models::parallel::{run_shards, ShardGrads};
use crate::models::zoo::{ArchConfig, ZooCache, ZooModel};
use crate::models::Model;
use crate::ops::loss::{argmax, LossSum};
pub use crate::train::fit::cosine_lr;
use crate::train::fit::{Fit, Flow, Objective, Schedule, StepLoss};
use crate::train::optim::{AdamW, AdamWConfig};

/// Settings of one training run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MadTrainConfig {
    /// Epochs (MAD: 200).
    pub epochs: usize,
    /// Sequences per step (MAD: 128).
    pub batch: usize,
    /// Stop once the test accuracy reaches this (MAD: 0.999).
    pub stop_at: f64,
    /// Cosine schedule floor (MAD: 1e-6).
    pub eta_min: f32,
    /// Which accuracy average decides early stopping and the score.
    pub average: Average,
    /// Seed of the model init and the batch order.
    pub seed: u64,
}

impl Default for MadTrainConfig {
    fn default() -> Self {
        MadTrainConfig {
            epochs: 200,
            batch: 128,
            stop_at: 0.999,
            eta_min: 1e-6,
            average: Average::Macro,
            seed: 0,
        }
    }
}

/// What one run gave.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    pub lr: f32,
    pub weight_decay: f32,
    /// Best test accuracy over epochs, in the configured average.
    pub best_acc: f64,
    /// Best test accuracies in both averages (each its own best epoch).
    pub best_macro: f64,
    pub best_micro: f64,
    /// Epoch (1-based) of `best_acc`.
    pub best_epoch: usize,
    pub epochs_run: usize,
    /// Mean training loss of the last epoch (nats per scored position).
    pub final_train_loss: f64,
    pub seconds: f64,
    /// Training tokens processed (all positions of every training sequence seen).
    pub train_tokens: u64,
}

/// Reported after every epoch.
#[derive(Clone, Debug)]
pub struct EpochEvent {
    pub epoch: usize,
    pub epochs: usize,
    pub train_loss: f64,
    pub test_macro: f64,
    pub test_micro: f64,
    pub lr: f32,
    pub seconds: f64,
}

/// Working memory of one data-parallel shard, reused across steps.
#[derive(Default)]
struct Shard {
    cache: ZooCache,
    dlogits: Vec<f32>,
    toks: Vec<u32>,
    tg: Vec<i32>,
}

fn check_data(data: &TaskData) -> Result<()> {
    if data.train.is_empty() || data.test.is_empty() {
        return Err(Error::config(
            "task data",
            format!("{} train, {} test", data.train.len(), data.test.len()),
            "both splits need examples",
        ));
    }
    let l = data.seq_len;
    let bad = data
        .train
        .iter()
        .chain(&data.test)
        .find(|e| e.inputs.len() != l || e.targets.len() != l);
    if let Some(e) = bad {
        return Err(Error::shape(
            "MAD data",
            "example length",
            l,
            e.inputs.len().max(e.targets.len()),
        ));
    }
    Ok(())
}

/// Fill `s.toks`, `s.tg` with the examples of `idx`.
fn gather(s: &mut Shard, ex: &[Example], idx: &[usize]) {
    s.toks.clear();
    s.tg.clear();
    for &i in idx {
        s.toks.extend_from_slice(&ex[i].inputs);
        s.tg.extend_from_slice(&ex[i].targets);
    }
}

/// Test accuracy of `model` on `examples` (both averages), in batches of `batch`.
pub fn evaluate(
    model: &Model<ZooModel>,
    examples: &[Example],
    batch: usize,
    vocab: usize,
) -> Result<AccuracyCounter> {
    let mut shards = Vec::new();
    evaluate_with(model, examples, batch, vocab, &mut shards)
}

/// [`evaluate`] with scratch kept by the caller: one shard per thread, each scoring every
/// n-th batch. A run evaluates after every epoch, and fresh buffers (the logits alone are
/// `[batch · scored, V]`, 64 MiB at memorization's V = 8192) cost their first-touch page
/// faults every time: a quarter of a full-protocol memorization run's time, measured with
/// `perf`.
fn evaluate_with(
    model: &Model<ZooModel>,
    examples: &[Example],
    batch: usize,
    vocab: usize,
    shards: &mut Vec<Shard>,
) -> Result<AccuracyCounter> {
    let l = examples.first().map_or(0, |e| e.inputs.len());
    let idx: Vec<usize> = (0..examples.len()).collect();
    let chunks: Vec<&[usize]> = idx.chunks(batch.max(1)).collect();
    let n = rayon::current_num_threads().clamp(1, chunks.len().max(1));
    if shards.len() < n {
        shards.resize_with(n, Shard::default);
    }
    let counters = shards[..n]
        .par_iter_mut()
        .enumerate()
        .map(|(k, s)| -> Result<AccuracyCounter> {
            crate::ops::serial(|| {
                let mut total = AccuracyCounter::new(vocab);
                for c in chunks.iter().skip(k).step_by(n) {
                    gather(s, examples, c);
                    // Logits at the scored positions only (the others are not counted).
                    model.net.forward_scored(
                        model.p(),
                        &s.toks,
                        &s.tg,
                        c.len(),
                        l,
                        &mut s.cache,
                    )?;
                    let preds: Vec<u32> = s
                        .cache
                        .logits
                        .chunks_exact(vocab)
                        .map(|r| argmax(r).0 as u32)
                        .collect();
                    let tg: Vec<i32> = s.tg.iter().copied().filter(|&t| t >= 0).collect();
                    total.add(&preds, &tg);
                }
                Ok(total)
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut total = AccuracyCounter::new(vocab);
    for c in &counters {
        total.merge(c);
    }
    Ok(total)
}

/// The MAD objective: each epoch visits the training examples in a fresh order (one seeded
/// RNG shuffles the previous order at every epoch's first step, as a `DataLoader` with
/// `shuffle=True` does), `batch` at a time; cross-entropy over the scored positions, summed
/// over the data-parallel shards and divided by the batch's scored count.
struct MadObjective<'d> {
    data: &'d TaskData,
    batch: usize,
    steps_per_epoch: u64,
    order: Vec<usize>,
    rng: StdRng,
    shards: Vec<Shard>,
    spare: ShardGrads,
}

impl Objective<ZooModel> for MadObjective<'_> {
    fn loss_and_grad(
        &mut self,
        model: &Model<ZooModel>,
        step: u64,
        grads: &mut [f32],
    ) -> Result<StepLoss> {
        if step.is_multiple_of(self.steps_per_epoch) {
            self.order.shuffle(&mut self.rng);
        }
        let k = (step % self.steps_per_epoch) as usize * self.batch;
        let batch = &self.order[k..(k + self.batch).min(self.order.len())];
        let (data, l) = (self.data, self.data.seq_len);
        let count: usize = batch
            .iter()
            .map(|&i| data.train[i].targets.iter().filter(|&&t| t >= 0).count())
            .sum();
        let sums = run_shards(
            &mut self.shards,
            &mut self.spare,
            Some(grads),
            batch.len(),
            |s, (start, n), g| {
                gather(s, &data.train, &batch[start..start + n]);
                model
                    .net
                    .forward_scored(model.p(), &s.toks, &s.tg, n, l, &mut s.cache)?;
                let ls = model
                    .net
                    .loss(&s.cache, &s.tg, Some(count), &mut s.dlogits)?;
                if let Some(g) = g {
                    model.net.backward(model.p(), &s.dlogits, &mut s.cache, g)?;
                }
                Ok((ls.loss_sum, ls.count))
            },
        )?;
        let mut sum = LossSum::default();
        for (ls, n) in sums {
            sum.loss_sum += ls;
            sum.count += n;
        }
        Ok(StepLoss {
            loss: sum.loss_sum / sum.count.max(1) as f64,
            sum,
            tokens: batch.len() * l,
        })
    }
}

/// Train `arch` (its `vocab_size` and `max_len` are set from `data`) with AdamW at `lr`,
/// `weight_decay` (decoupled, on every parameter, as `torch.optim.AdamW(model.parameters())`),
/// no gradient clipping, the test accuracy measured after every epoch.
pub fn train_run(
    arch: &ArchConfig,
    data: &TaskData,
    lr: f32,
    weight_decay: f32,
    cfg: &MadTrainConfig,
    on_epoch: &mut dyn FnMut(&EpochEvent),
) -> Result<RunResult> {
    check_data(data)?;
    let t0 = Instant::now();
    let (net, params) = ZooModel::fresh(&sized_for(arch, data), cfg.seed)?;
    let mut model = Model { net, params };
    let v = data.vocab_size;
    let bsz = cfg.batch.max(1);
    let steps_per_epoch = data.train.len().div_ceil(bsz) as u64;
    let mut objective = MadObjective {
        data,
        batch: bsz,
        steps_per_epoch,
        order: (0..data.train.len()).collect(),
        rng: StdRng::seed_from_u64(cfg.seed ^ 0x5eed),
        shards: Vec::new(),
        spare: ShardGrads::default(),
    };
    // PyTorch's AdamW defaults (betas 0.9, 0.999; eps 1e-8), as mad-lab's optimizer, with the
    // decoupled decay on every parameter (`torch.optim.AdamW(model.parameters())`).
    let mut opt = AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay,
        ..AdamWConfig::default()
    });
    opt.decay_all = true;
    let schedule = Schedule::EpochCosine {
        lr,
        eta_min: cfg.eta_min,
        steps_per_epoch,
        epochs: cfg.epochs,
    };
    let mut fit = Fit::new(opt, schedule, 0.0);
    // A diverging setting is a result of the sweep (its accuracy says so), not a stop.
    fit.check_finite = false;
    let mut eval_shards: Vec<Shard> = Vec::new();
    let mut res = RunResult {
        lr,
        weight_decay,
        best_acc: 0.0,
        best_macro: 0.0,
        best_micro: 0.0,
        best_epoch: 0,
        epochs_run: 0,
        final_train_loss: f64::NAN,
        seconds: 0.0,
        train_tokens: 0,
    };
    let (mut loss_sum, mut loss_n) = (0.0f64, 0usize);
    let total = steps_per_epoch * cfg.epochs as u64;
    fit.run(&mut model, &mut objective, total, &mut |a| {
        loss_sum += a.step.loss.sum.loss_sum;
        loss_n += a.step.loss.sum.count;
        res.train_tokens += a.step.loss.tokens as u64;
        if a.step.step % steps_per_epoch != 0 {
            return Ok(Flow::Continue);
        }
        // The end of an epoch: test accuracy, best so far, early stop.
        let epoch = (a.step.step / steps_per_epoch) as usize;
        let acc = evaluate_with(a.model, &data.test, bsz, v, &mut eval_shards)?;
        let (ma, mi) = (acc.macro_(), acc.micro());
        let chosen = acc.get(cfg.average);
        res.epochs_run = epoch;
        res.final_train_loss = loss_sum / loss_n.max(1) as f64;
        (loss_sum, loss_n) = (0.0, 0);
        res.best_macro = res.best_macro.max(ma);
        res.best_micro = res.best_micro.max(mi);
        if chosen > res.best_acc || res.best_epoch == 0 {
            res.best_acc = chosen;
            res.best_epoch = epoch;
        }
        on_epoch(&EpochEvent {
            epoch,
            epochs: cfg.epochs,
            train_loss: res.final_train_loss,
            test_macro: ma,
            test_micro: mi,
            lr: a.step.lr,
            seconds: t0.elapsed().as_secs_f64(),
        });
        if !res.final_train_loss.is_finite() || chosen >= cfg.stop_at {
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    })?;
    res.seconds = t0.elapsed().as_secs_f64();
    Ok(res)
}

/// The MAD protocol's knobs (arXiv:2403.17844, the sweep of mad-lab's `benchmark.py` and
/// `MADConfig`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MadProtocol {
    /// Learning rates swept (MAD: 1e-4, 5e-4, 1e-3).
    pub lrs: Vec<f32>,
    /// Weight decays swept (MAD: 0, 0.1).
    pub weight_decays: Vec<f32>,
    /// Baseline settings only (`false`: baseline and every single change of the sweep table).
    pub baseline_only: bool,
    /// Training-token budget per run, rounded up to whole epochs (`None`: `train.epochs` epochs): the quick mode's budget.
    /// Epochs = `ceil(budget / tokens per epoch)`, at most `train.epochs`.
    pub token_budget: Option<u64>,
    pub train: MadTrainConfig,
}

impl MadProtocol {
    /// The full protocol: every setting, the 3 × 2 sweep, 200 epochs, early stop at 0.999.
    pub fn full() -> Self {
        MadProtocol {
            lrs: vec![1e-4, 5e-4, 1e-3],
            weight_decays: vec![0.0, 0.1],
            baseline_only: false,
            token_budget: None,
            train: MadTrainConfig::default(),
        }
    }

    /// Quick mode: baseline settings only, one point of the sweep (lr 1e-3, weight decay 0.0:
    /// the largest learning rate, which a small budget needs), about [`QUICK_TOKEN_BUDGET`]
    /// training tokens per task (whole epochs, rounded up), early stop as in the full protocol.
    ///
    /// Batch [`QUICK_BATCH`] instead of 128: the budget is a few epochs, and what a small
    /// budget lacks is optimizer steps. Measured on baseline in-context recall at lr 1e-3:
    /// `attn,swiglu,attn,swiglu`, 4 epochs: batch 128 reached 0.50, batch 32 0.73;
    /// `mh-attn,swiglu,mh-attn,swiglu`, 4 epochs: batch 32 reached 0.38, batch 16 0.9999 after
    /// its second epoch (attention's recall is learnt in a sudden jump that needs enough steps).
    pub fn quick() -> Self {
        MadProtocol {
            lrs: vec![1e-3],
            weight_decays: vec![0.0],
            baseline_only: true,
            token_budget: Some(QUICK_TOKEN_BUDGET),
            train: MadTrainConfig {
                batch: QUICK_BATCH,
                ..MadTrainConfig::default()
            },
        }
    }
}

impl MadProtocol {
    /// The settings of `task` this protocol runs: the baseline, or every row of the sweep.
    pub fn settings(&self, task: MadTask) -> Vec<TaskSetting> {
        if self.baseline_only {
            vec![baseline(task)]
        } else {
            sweep(task)
        }
    }

    /// Epochs of a run on `data`: `train.epochs`, capped by the token budget in whole epochs.
    pub fn epochs_for(&self, data: &TaskData) -> usize {
        let per_epoch = (data.train.len() * data.seq_len) as u64;
        match self.token_budget {
            Some(b) => self
                .train
                .epochs
                .min((b.div_ceil(per_epoch.max(1)) as usize).max(1)),
            None => self.train.epochs,
        }
    }
}

/// Training tokens per task in quick mode (about 3 epochs of the baseline recall tasks).
pub const QUICK_TOKEN_BUDGET: u64 = 5_000_000;

/// Sequences per step in quick mode (the full protocol: 128).
pub const QUICK_BATCH: usize = 16;

/// One task setting's sweep.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SettingResult {
    pub label: String,
    pub setting: TaskSetting,
    /// Every (lr, weight decay) run.
    pub runs: Vec<RunResult>,
    /// The best test accuracy over the runs (the protocol's number for this setting).
    pub best_acc: f64,
    pub best_lr: f32,
    pub best_weight_decay: f32,
    /// Wall seconds of the setting: data generation and every run (0 in results written
    /// before this field existed).
    #[serde(default)]
    pub seconds: f64,
}

/// A finished setting as [`run_mad`] reports it ([`MadEvent::SettingEnd`]) and takes it back
/// to resume an interrupted protocol: the full protocol runs for hours to days, so every
/// setting is worth keeping. A record is reused only for the same architecture, protocol,
/// task and setting.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SettingRecord {
    pub spec: String,
    pub arch: ArchConfig,
    pub protocol: MadProtocol,
    pub task: MadTask,
    pub result: SettingResult,
}

impl SettingRecord {
    /// Whether this record is the result of `setting` of `task` for `arch` under `proto`.
    pub fn matches(
        &self,
        arch: &ArchConfig,
        proto: &MadProtocol,
        task: MadTask,
        setting: &TaskSetting,
    ) -> bool {
        self.task == task
            && &self.result.setting == setting
            && &self.arch == arch
            && &self.protocol == proto
    }
}

/// The progress file of a MAD run, [`ProgressLog::FILE`] in its output directory: one JSON
/// [`SettingRecord`] per line, appended as each setting finishes and synced to disk, so that
/// a killed run loses at most the setting in progress and a resumed one
/// ([`ProgressLog::resume`]) trains only what is missing.
pub struct ProgressLog {
    path: PathBuf,
    file: std::fs::File,
}

/// The records of a progress file ([`ProgressLog::read`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProgressRecords {
    pub records: Vec<SettingRecord>,
    /// A last line that did not parse (a write cut short by a killed process) and was
    /// skipped: its line number (1-based) and the parse error.
    pub skipped: Option<(usize, String)>,
}

impl ProgressLog {
    /// The progress file's name in a run's output directory.
    pub const FILE: &'static str = "progress.jsonl";
    /// Where [`ProgressLog::start`] moves an earlier progress file.
    pub const PREV: &'static str = "progress.jsonl.prev";

    /// Start a fresh progress file in `dir` (which must exist). An earlier one is moved to
    /// [`ProgressLog::PREV`] first (replacing any older one there); its new path is returned.
    pub fn start(dir: &Path) -> Result<(Self, Option<PathBuf>)> {
        let path = dir.join(Self::FILE);
        let moved = if path.exists() {
            let prev = dir.join(Self::PREV);
            std::fs::rename(&path, &prev).map_err(|e| {
                Error::format(&path, format!("cannot move it to {} ({e})", prev.display()))
            })?;
            Some(prev)
        } else {
            None
        };
        Ok((Self::open(path)?, moved))
    }

    /// Go on from the progress file in `dir` (none: no records): read its records (see
    /// [`ProgressLog::read`]), rewrite it atomically with the whole records only (so that
    /// appends do not follow a cut line), and open it for appending.
    pub fn resume(dir: &Path) -> Result<(Self, ProgressRecords)> {
        let path = dir.join(Self::FILE);
        let read = Self::read(&path)?;
        let mut text = String::new();
        for r in &read.records {
            text.push_str(&record_line(r, &path)?);
        }
        write_bytes_atomic(&path, text.as_bytes())?;
        Ok((Self::open(path)?, read))
    }

    /// The records in the progress file `path` (none if it does not exist). A last line that
    /// does not parse (cut short by a killed process) is skipped and reported in
    /// [`ProgressRecords::skipped`]; a bad line elsewhere is an error naming the line. Blank
    /// lines are ignored.
    pub fn read(path: &Path) -> Result<ProgressRecords> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ProgressRecords::default())
            }
            Err(e) => return Err(Error::io(path)(e)),
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut out = ProgressRecords::default();
        for (i, l) in lines.iter().enumerate() {
            match serde_json::from_str::<SettingRecord>(l) {
                Ok(r) => out.records.push(r),
                Err(e) if i + 1 == lines.len() => out.skipped = Some((i + 1, e.to_string())),
                Err(e) => {
                    return Err(Error::format(
                        path,
                        format!(
                            "line {}: not a MAD setting record ({e}); remove the line or run \
                             without --resume",
                            i + 1
                        ),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Append `record` as one whole line and sync it to disk.
    pub fn append(&mut self, record: &SettingRecord) -> Result<()> {
        use std::io::Write;
        let line = record_line(record, &self.path)?;
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(Error::io(&self.path))
    }

    /// The progress file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(path: PathBuf) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        Ok(ProgressLog { path, file })
    }
}

/// `record` as one line of a progress file, newline included.
fn record_line(record: &SettingRecord, path: &Path) -> Result<String> {
    let mut line = serde_json::to_string(record)
        .map_err(|e| Error::format(path, format!("cannot encode a setting record ({e})")))?;
    line.push('\n');
    Ok(line)
}

/// The results files of a MAD run, written (atomically) into `dir`: [`RESULTS_JSON`] (the
/// reports, pretty-printed), [`RESULTS_CSV`] ([`csv_lines`]) and [`RESULTS_PNG`]
/// ([`chart_png`], titled after the protocol: baseline settings only, or the full one).
pub fn write_results(dir: &Path, reports: &[MadReport]) -> Result<()> {
    let json_path = dir.join(RESULTS_JSON);
    let json = serde_json::to_string_pretty(reports)
        .map_err(|e| Error::format(&json_path, e.to_string()))?;
    write_bytes_atomic(&json_path, json.as_bytes())?;
    write_bytes_atomic(&dir.join(RESULTS_CSV), csv_lines(reports).as_bytes())?;
    let title = if reports.first().is_some_and(|r| r.protocol.baseline_only) {
        "MAD scores (quick: baseline settings)"
    } else {
        "MAD scores (full protocol)"
    };
    chart_png(&dir.join(RESULTS_PNG), reports, title)
}

/// The reports of a MAD run as JSON ([`write_results`]).
pub const RESULTS_JSON: &str = "results.json";
/// One line per run ([`csv_lines`]).
pub const RESULTS_CSV: &str = "results.csv";
/// The scores chart ([`chart_png`]).
pub const RESULTS_PNG: &str = "mad.png";

/// One task: its settings and score (mean over settings of the best accuracy).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskScore {
    pub task: MadTask,
    pub score: f64,
    pub settings: Vec<SettingResult>,
    /// Sum of the settings' wall seconds (resumed ones with their recorded time).
    pub seconds: f64,
}

/// An architecture's MAD profile.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MadReport {
    /// The architecture string, as given.
    pub spec: String,
    pub arch: ArchConfig,
    pub protocol: MadProtocol,
    pub tasks: Vec<TaskScore>,
    /// Mean of the task scores.
    pub overall: f64,
    /// Sum of the tasks' seconds: the protocol's wall time, whether it ran in one process
    /// or was resumed.
    pub seconds: f64,
    /// Parameters of the model at the baseline vocabulary of the first task.
    pub params: usize,
}

/// Progress of [`run_mad`].
#[derive(Clone, Debug)]
pub enum MadEvent {
    /// A run starts: task, setting label, lr, weight decay, epochs planned.
    RunStart {
        task: MadTask,
        label: String,
        lr: f32,
        weight_decay: f32,
        epochs: usize,
    },
    Epoch(EpochEvent),
    RunEnd(RunResult),
    /// A setting is done (all its runs), or was taken from `done` (`resumed`).
    SettingEnd {
        record: Box<SettingRecord>,
        resumed: bool,
    },
}

/// Run the protocol for `arch` on `tasks`. Settings with a matching record in `done` (see
/// [`SettingRecord::matches`]) are not trained again: their recorded result is used, and
/// reported as `SettingEnd { resumed: true }`.
pub fn run_mad(
    spec: &str,
    arch: &ArchConfig,
    tasks: &[MadTask],
    proto: &MadProtocol,
    done: &[SettingRecord],
    on_event: &mut dyn FnMut(&MadEvent),
) -> Result<MadReport> {
    run_mad_selected(spec, arch, tasks, proto, done, &|_, _| true, on_event)
}

/// Every setting of a MAD job of several architectures, in the order [`run_mad`] runs them:
/// `(architecture index, task, setting)`.
pub fn mad_items(
    n_archs: usize,
    tasks: &[MadTask],
    proto: &MadProtocol,
) -> Vec<(usize, MadTask, TaskSetting)> {
    let mut out = Vec::new();
    for a in 0..n_archs {
        for &t in tasks {
            for s in proto.settings(t) {
                out.push((a, t, s));
            }
        }
    }
    out
}

/// The estimated cost of training one setting (all its learning rates and weight decays):
/// epochs × training tokens × parameters × runs, proportional to its training FLOPs; what
/// `hyena mad --shard` balances on.
pub fn setting_cost(arch: &ArchConfig, setting: &TaskSetting, proto: &MadProtocol) -> Result<f64> {
    let data = generate(setting)?;
    let epochs = proto.epochs_for(&data) as f64;
    let tokens = (data.train.len() * data.seq_len) as f64;
    let params = params_at(arch, &data)? as f64;
    let runs = (proto.lrs.len() * proto.weight_decays.len()) as f64;
    Ok(epochs * tokens * params * runs)
}

/// [`run_mad`] training only the settings `select` keeps (and that `done` does not hold):
/// one shard's part of a protocol (`hyena mad --shard`). The report lists the settings done or
/// trained here; its scores are over those alone.
pub fn run_mad_selected(
    spec: &str,
    arch: &ArchConfig,
    tasks: &[MadTask],
    proto: &MadProtocol,
    done: &[SettingRecord],
    select: &dyn Fn(MadTask, &TaskSetting) -> bool,
    on_event: &mut dyn FnMut(&MadEvent),
) -> Result<MadReport> {
    if tasks.is_empty() || proto.lrs.is_empty() || proto.weight_decays.is_empty() {
        return Err(Error::config(
            "mad",
            "empty",
            "give at least one task, learning rate and weight decay",
        ));
    }
    let mut out = Vec::new();
    let mut params = 0;
    for &task in tasks {
        let mut results = Vec::new();
        for setting in proto.settings(task) {
            if let Some(rec) = done.iter().find(|r| r.matches(arch, proto, task, &setting)) {
                if params == 0 {
                    params = params_at(arch, &generate(&setting)?)?;
                }
                on_event(&MadEvent::SettingEnd {
                    record: Box::new(rec.clone()),
                    resumed: true,
                });
                results.push(rec.result.clone());
                continue;
            }
            if !select(task, &setting) {
                continue;
            }
            let ts = Instant::now();
            let label = setting.label();
            let data = generate(&setting)?;
            if params == 0 {
                params = params_at(arch, &data)?;
            }
            let train = MadTrainConfig {
                epochs: proto.epochs_for(&data),
                ..proto.train.clone()
            };
            let mut runs = Vec::new();
            for &lr in &proto.lrs {
                for &wd in &proto.weight_decays {
                    on_event(&MadEvent::RunStart {
                        task,
                        label: label.clone(),
                        lr,
                        weight_decay: wd,
                        epochs: train.epochs,
                    });
                    let r = train_run(arch, &data, lr, wd, &train, &mut |e| {
                        on_event(&MadEvent::Epoch(e.clone()))
                    })?;
                    on_event(&MadEvent::RunEnd(r.clone()));
                    runs.push(r);
                }
            }
            let best = runs
                .iter()
                .fold(None::<&RunResult>, |b, r| match b {
                    Some(b) if b.best_acc >= r.best_acc => Some(b),
                    _ => Some(r),
                })
                .cloned();
            let (best_acc, best_lr, best_wd) =
                best.map_or((0.0, 0.0, 0.0), |b| (b.best_acc, b.lr, b.weight_decay));
            let result = SettingResult {
                label,
                setting,
                runs,
                best_acc,
                best_lr,
                best_weight_decay: best_wd,
                seconds: ts.elapsed().as_secs_f64(),
            };
            on_event(&MadEvent::SettingEnd {
                record: Box::new(SettingRecord {
                    spec: spec.to_string(),
                    arch: arch.clone(),
                    protocol: proto.clone(),
                    task,
                    result: result.clone(),
                }),
                resumed: false,
            });
            results.push(result);
        }
        let score = results.iter().map(|r| r.best_acc).sum::<f64>() / results.len().max(1) as f64;
        // Resumed settings count with their recorded time, so that a protocol finished over
        // several processes reports its whole cost.
        let seconds = results.iter().map(|r| r.seconds).sum();
        out.push(TaskScore {
            task,
            score,
            settings: results,
            seconds,
        });
    }
    let overall = out.iter().map(|t| t.score).sum::<f64>() / out.len().max(1) as f64;
    let out_seconds = out.iter().map(|t| t.seconds).sum();
    Ok(MadReport {
        spec: spec.to_string(),
        arch: arch.clone(),
        protocol: proto.clone(),
        tasks: out,
        overall,
        seconds: out_seconds,
        params,
    })
}

/// `arch` with the vocabulary, length and head (decoder for compression) of `data`: the
/// model a MAD run trains on it.
pub fn sized_for(arch: &ArchConfig, data: &TaskData) -> ArchConfig {
    let mut a = arch.clone();
    a.vocab_size = data.vocab_size;
    a.max_len = data.seq_len;
    a.decoder = data.encoder_decoder;
    a
}

/// Parameters of `arch` sized for `data`.
pub fn params_at(arch: &ArchConfig, data: &TaskData) -> Result<usize> {
    Ok(ZooModel::fresh(&sized_for(arch, data), 0)?.1.len())
}

/// Projected wall time of one task setting under a protocol (see [`estimate_mad`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SettingEstimate {
    pub task: MadTask,
    pub label: String,
    /// Measured seconds per optimizer step (batch `train.batch`).
    pub step_seconds: f64,
    /// Steps per epoch, and the epochs and (lr, wd) runs the protocol plans.
    pub steps_per_epoch: usize,
    pub epochs: usize,
    pub runs: usize,
    /// `runs × epochs × (steps × step time + test-set evaluation)`: an upper bound, since
    /// early stopping at `stop_at` can only shorten a run.
    pub seconds: f64,
}

/// Project the wall time of `proto` for `arch` on `tasks` without running it: for every
/// setting, time a few optimizer steps on its data (two short runs whose difference cancels
/// set-up and evaluation), then multiply out. The full protocol takes days on a laptop, so this
/// is how its cost is known in advance; `on_setting` reports each setting as it is measured.
pub fn estimate_mad(
    arch: &ArchConfig,
    tasks: &[MadTask],
    proto: &MadProtocol,
    on_setting: &mut dyn FnMut(&SettingEstimate),
) -> Result<Vec<SettingEstimate>> {
    const SHORT: usize = 2;
    const LONG: usize = 5;
    let mut out = Vec::new();
    for &task in tasks {
        for setting in proto.settings(task) {
            let data = generate(&setting)?;
            let bsz = proto.train.batch.max(1);
            let epochs = proto.epochs_for(&data);
            let timed = |steps: usize| -> Result<f64> {
                let sub = TaskData {
                    train: data
                        .train
                        .iter()
                        .cycle()
                        .take(steps * bsz)
                        .cloned()
                        .collect(),
                    // The same one-batch test set in both runs, so that its evaluation
                    // cancels in their difference.
                    test: data.test[..bsz.min(data.test.len()).max(1)].to_vec(),
                    vocab_size: data.vocab_size,
                    seq_len: data.seq_len,
                    encoder_decoder: data.encoder_decoder,
                };
                let cfg = MadTrainConfig {
                    epochs: 1,
                    stop_at: f64::INFINITY,
                    ..proto.train.clone()
                };
                Ok(train_run(arch, &sub, 1e-4, 0.0, &cfg, &mut |_| {})?.seconds)
            };
            let (t_short, t_long) = (timed(SHORT)?, timed(LONG)?);
            let step = ((t_long - t_short) / (LONG - SHORT) as f64).max(t_long / (LONG + 1) as f64);
            let steps_per_epoch = data.train.len().div_ceil(bsz);
            // Evaluation is a forward pass over the test set: about a third of a training step
            // per batch (forward ≈ 1/3 of forward + backward).
            let eval = data.test.len().div_ceil(bsz) as f64 * step / 3.0;
            let runs = proto.lrs.len() * proto.weight_decays.len();
            let e = SettingEstimate {
                task,
                label: setting.label(),
                step_seconds: step,
                steps_per_epoch,
                epochs,
                runs,
                seconds: runs as f64 * epochs as f64 * (steps_per_epoch as f64 * step + eval),
            };
            on_setting(&e);
            out.push(e);
        }
    }
    Ok(out)
}

/// A markdown table of reports side by side: one row per architecture, one column per task
/// and the overall score.
pub fn markdown_table(reports: &[MadReport]) -> String {
    let mut tasks: Vec<MadTask> = Vec::new();
    for r in reports {
        for t in &r.tasks {
            if !tasks.contains(&t.task) {
                tasks.push(t.task);
            }
        }
    }
    let mut s = String::from("| architecture | params |");
    for t in &tasks {
        s.push_str(&format!(" {} |", t.name()));
    }
    s.push_str(" overall | minutes |\n|---|---:|");
    for _ in &tasks {
        s.push_str("---:|");
    }
    s.push_str("---:|---:|\n");
    for r in reports {
        s.push_str(&format!("| {} | {} |", r.spec, r.params));
        for t in &tasks {
            match r.tasks.iter().find(|x| x.task == *t) {
                Some(x) => s.push_str(&format!(" {:.3} |", x.score)),
                None => s.push_str(" – |"),
            }
        }
        s.push_str(&format!(
            " **{:.3}** | {:.1} |\n",
            r.overall,
            r.seconds / 60.0
        ));
    }
    s
}

/// CSV: one line per (architecture, task, setting, lr, weight decay) run.
pub fn csv_lines(reports: &[MadReport]) -> String {
    let mut s = String::from(
        "arch,task,setting,lr,weight_decay,best_acc,best_macro,best_micro,best_epoch,epochs_run,seconds,setting_best,task_score,overall\n",
    );
    for r in reports {
        for t in &r.tasks {
            for st in &t.settings {
                for run in &st.runs {
                    s.push_str(&format!(
                        "\"{}\",{},\"{}\",{},{},{:.6},{:.6},{:.6},{},{},{:.1},{:.6},{:.6},{:.6}\n",
                        r.spec,
                        t.task.name(),
                        st.label,
                        run.lr,
                        run.weight_decay,
                        run.best_acc,
                        run.best_macro,
                        run.best_micro,
                        run.best_epoch,
                        run.epochs_run,
                        run.seconds,
                        st.best_acc,
                        t.score,
                        r.overall
                    ));
                }
            }
        }
    }
    s
}

/// The grouped bar chart of reports: tasks (and "overall") on x, one bar per architecture.
pub fn chart_png(path: &std::path::Path, reports: &[MadReport], title: &str) -> Result<()> {
    let mut tasks: Vec<MadTask> = Vec::new();
    for r in reports {
        for t in &r.tasks {
            if !tasks.contains(&t.task) {
                tasks.push(t.task);
            }
        }
    }
    let mut groups: Vec<String> = tasks.iter().map(|t| short_name(*t).to_string()).collect();
    groups.push("overall".into());
    let series: Vec<(String, Vec<f64>)> = reports
        .iter()
        .map(|r| {
            let mut v: Vec<f64> = tasks
                .iter()
                .map(|t| {
                    r.tasks
                        .iter()
                        .find(|x| x.task == *t)
                        .map_or(f64::NAN, |x| x.score)
                })
                .collect();
            v.push(r.overall);
            (r.spec.clone(), v)
        })
        .collect();
    crate::plot::grouped_bars_png(
        path,
        title,
        "MAD score (best test accuracy)",
        &groups,
        &series,
    )
}

/// Short task names for chart labels.
pub fn short_name(t: MadTask) -> &'static str {
    match t {
        MadTask::InContextRecall => "recall",
        MadTask::FuzzyInContextRecall => "fuzzy",
        MadTask::NoisyInContextRecall => "noisy",
        MadTask::SelectiveCopying => "sel-copy",
        MadTask::Compression => "compress",
        MadTask::Memorization => "memorize",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: &str, acc: f64) -> SettingRecord {
        let task = MadTask::Memorization;
        SettingRecord {
            spec: "hyena,swiglu".into(),
            arch: ArchConfig::default(),
            protocol: MadProtocol::quick(),
            task,
            result: SettingResult {
                label: label.into(),
                setting: baseline(task),
                runs: Vec::new(),
                best_acc: acc,
                best_lr: 1e-3,
                best_weight_decay: 0.0,
                seconds: 1.5,
            },
        }
    }

    fn fresh_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hyena-mad-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Appended records read back as they were; a resume keeps them and appends after them;
    /// a fresh start moves the file aside.
    #[test]
    fn progress_log_round_trip() {
        let dir = fresh_dir("progress");
        let recs = vec![record("a", 0.5), record("b", 0.75)];
        let (mut log, moved) = ProgressLog::start(&dir).unwrap();
        assert_eq!(moved, None);
        for r in &recs {
            log.append(r).unwrap();
        }
        drop(log);
        let path = dir.join(ProgressLog::FILE);
        let read = ProgressLog::read(&path).unwrap();
        assert_eq!((&read.records, read.skipped), (&recs, None));

        let (mut log, read) = ProgressLog::resume(&dir).unwrap();
        assert_eq!(read.records, recs);
        log.append(&record("c", 1.0)).unwrap();
        assert_eq!(ProgressLog::read(log.path()).unwrap().records.len(), 3);
        drop(log);

        let (_log, moved) = ProgressLog::start(&dir).unwrap();
        assert_eq!(moved, Some(dir.join(ProgressLog::PREV)));
        assert_eq!(
            ProgressLog::read(&path).unwrap(),
            ProgressRecords::default()
        );
        let prev = ProgressLog::read(&dir.join(ProgressLog::PREV)).unwrap();
        assert_eq!(prev.records.len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A last line cut short is skipped (and reported), and a resume drops it from the file;
    /// a bad line before the last is an error naming the line.
    #[test]
    fn progress_log_skips_a_cut_last_line() {
        let dir = fresh_dir("progress-cut");
        let path = dir.join(ProgressLog::FILE);
        let line = |r: &SettingRecord| serde_json::to_string(r).unwrap();
        let (a, b) = (record("a", 0.5), record("b", 0.75));
        let cut = line(&b);
        std::fs::write(&path, format!("{}\n{}", line(&a), &cut[..cut.len() / 2])).unwrap();
        let read = ProgressLog::read(&path).unwrap();
        assert_eq!(read.records, vec![a.clone()]);
        assert_eq!(read.skipped.map(|s| s.0), Some(2));

        let (mut log, read) = ProgressLog::resume(&dir).unwrap();
        assert_eq!(read.records, vec![a.clone()]);
        log.append(&b).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n{}\n", line(&a), line(&b)));

        std::fs::write(&path, format!("{{\"spec\":\n{}\n", line(&a))).unwrap();
        let err = ProgressLog::read(&path).unwrap_err().to_string();
        assert!(err.contains("line 1: not a MAD setting record"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
