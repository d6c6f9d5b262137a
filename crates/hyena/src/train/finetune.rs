//! Fine-tuning a sequence classifier ([`SeqClassifier`]) on a labelled dataset
//! ([`SeqClsDataset`]: GenomicBenchmarks directory or CSV), as `hyena finetune` does it: an
//! objective on the one training loop ([`crate::train::fit`]).
//!
//! The recipe follows HyenaDNA's GenomicBenchmarks fine-tuning
//! (`configs/experiment/hg38/genomic_benchmark.yaml` with `configs/pipeline/genomic_benchmark.yaml`
//! and `configs/dataset/genomic_benchmark.yaml`): no special
//! tokens, **left padding** with `[PAD]` = 4 to a fixed length (longer sequences keep their
//! first `max_len` bases, as the reference tokenizer's right truncation does), mean pooling
//! with a linear head, cross-entropy, AdamW (lr 6e-4, weight decay 0.1, no decay on biases,
//! norms and the implicit filter), warm-up of 1% then cosine decay to 0.1·lr, gradient clip 1,
//! the whole backbone trained (`freeze_backbone` false). The batch is 32 rather than 128 and
//! the run is counted in epochs (default 1) rather than the reference's 100: a CPU budget.
//!
//! The backbone is either a pretrained model directory (a `hyena train` run or a released
//! HyenaDNA checkpoint) or a fresh initialisation of a given [`LmConfig`] (a from-scratch
//! baseline that shows what pretraining adds).
//!
//! Output directory: `config.json` (the whole [`FinetuneRun`] plus the classes), then at every
//! evaluation `model.safetensors` (the backbone under its LM names, its filter buffers, and
//! `head.output_transform.{weight,bias}`), `metrics.jsonl` (one JSON object per step and per
//! evaluation), and at the end `eval.json` (the final test [`Evaluation`]: accuracy, per class,
//! confusion matrix) and `accuracy.png`. Every file is written atomically. The model is
//! evaluated on the test split only at the evaluations and the end; nothing is selected on it.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::baselines::kmer::Evaluation;
use crate::checkpoint::{load_model, save_weights, write_json};
use crate::data::seqcls::{reverse_complement, Example, SeqClsDataset};
use crate::error::{Error, Result};
use crate::io::tokenizer::{NucleotideTokenizer, PAD_ID};
use crate::models::classifier::{ClsWorkspace, SeqClassifier};
use crate::models::hyenadna::{HyenaLm, LmConfig};
use crate::models::{LanguageModel, Model, Pool};
use crate::ops::loss::{argmax, LossSum};
use crate::train::dist::Comm;
use crate::train::fit::{Fit, Flow, Objective, Schedule, StepLoss};
use crate::train::{AdamW, AdamWConfig, LrSchedule};

/// Optimisation settings of a fine-tuning run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// Passes over the training examples (fractions allowed).
    pub epochs: f64,
    /// Sequences per optimizer step.
    pub batch_size: usize,
    /// Length every sequence is left-padded (or truncated) to; `None`: the longest training
    /// sequence.
    pub max_len: Option<usize>,
    pub pool: Pool,
    pub optim: AdamWConfig,
    /// Warm-up steps as a fraction of the run.
    pub warmup_frac: f64,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f32,
    /// Global gradient-norm clip (0 = off).
    pub clip: f32,
    /// Seed of the head's initialisation (and of a fresh backbone) and of the example order.
    pub seed: u64,
    /// Evaluate on the test split every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Use at most this many training examples (a seeded random subset), e.g. for a quick run.
    pub train_limit: Option<usize>,
    /// Reverse-complement each training example with probability ½ at every step (the
    /// reference's `rc_aug`, off in its GenomicBenchmarks configs): DNA read from either
    /// strand carries the same label.
    pub rc_aug: bool,
    /// Evaluate on at most this many test examples (a seeded random subset) at the intermediate
    /// evaluations; the final evaluation always uses the whole test split.
    pub eval_limit: Option<usize>,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            epochs: 1.0,
            batch_size: 32,
            max_len: None,
            pool: Pool::Mean,
            optim: AdamWConfig {
                lr: 6e-4,
                weight_decay: 0.1,
                ..AdamWConfig::default()
            },
            warmup_frac: 0.01,
            min_lr_ratio: 0.1,
            clip: 1.0,
            seed: 0,
            eval_every: 0,
            train_limit: None,
            rc_aug: false,
            eval_limit: Some(1000),
        }
    }
}

/// Everything a fine-tuning run is. Saved as `config.json` (with `classes` added).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneRun {
    /// The dataset: a GenomicBenchmarks-layout directory or a CSV file.
    pub data: PathBuf,
    /// Test CSV when `data` is a train CSV without a `split` column.
    #[serde(default)]
    pub test_csv: Option<PathBuf>,
    /// Pretrained backbone directory; `None` trains `model` from a fresh initialisation.
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// The backbone's config (for a pretrained backbone, filled in from its directory).
    pub model: LmConfig,
    pub finetune: FinetuneConfig,
}

/// What a fine-tuning run reports as it goes.
#[derive(Clone, Debug)]
pub enum FinetuneEvent {
    /// Something to print once (data, model, settings).
    Info(String),
    /// One optimizer step: `(step, total steps, mean loss, batch accuracy, lr)`.
    Step {
        step: u64,
        total: u64,
        loss: f64,
        accuracy: f64,
        lr: f32,
    },
    /// A test evaluation (on `n` examples).
    Eval { step: u64, eval: Evaluation },
}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct FinetuneSummary {
    /// The final evaluation on the whole test split.
    pub test: Evaluation,
    pub classes: Vec<String>,
    pub steps: u64,
    /// Wall-clock seconds of training and evaluation.
    pub seconds: f64,
    /// Training examples that were longer than `max_len` and lost their tail.
    pub truncated: usize,
    pub max_len: usize,
}

/// `seq` as `max_len` token ids: the first `max_len` bases (reference tokenizer ids, case as
/// given: the datasets are upper case), left-padded with `[PAD]`. Appends to `out`; returns
/// whether the sequence was truncated.
pub fn encode_padded(seq: &[u8], max_len: usize, out: &mut Vec<u32>) -> bool {
    let tok = NucleotideTokenizer::new(false);
    let keep = seq.len().min(max_len);
    out.extend(std::iter::repeat_n(PAD_ID, max_len - keep));
    out.extend(seq[..keep].iter().map(|&b| tok.id(b)));
    seq.len() > max_len
}

/// Tokens `[n, max_len]` and labels of `examples`.
fn encode_all(examples: &[&Example], max_len: usize) -> (Vec<u32>, Vec<usize>, usize) {
    let mut toks = Vec::with_capacity(examples.len() * max_len);
    let mut truncated = 0;
    for e in examples {
        truncated += usize::from(encode_padded(&e.seq, max_len, &mut toks));
    }
    (toks, examples.iter().map(|e| e.label).collect(), truncated)
}

/// Test accuracy, per class, and the confusion matrix of `clf` on `examples`
/// (`batch` sequences per forward); `progress(done, total)` after each batch.
pub fn evaluate(
    clf: &Model<SeqClassifier>,
    n_classes: usize,
    examples: &[&Example],
    max_len: usize,
    batch: usize,
    ws: &mut ClsWorkspace,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Evaluation> {
    if examples.is_empty() {
        return Err(Error::config("test", 0, "no examples to evaluate"));
    }
    let mut pairs = Vec::with_capacity(examples.len());
    for (i, part) in examples.chunks(batch.max(1)).enumerate() {
        let (toks, labels, _) = encode_all(part, max_len);
        let logits = clf.net.predict(clf.p(), &toks, part.len(), max_len, ws)?;
        for (row, y) in logits.chunks_exact(n_classes).zip(labels) {
            pairs.push((y, argmax(row).0));
        }
        progress((i * batch + part.len()).min(examples.len()), examples.len());
    }
    Ok(Evaluation::from_predictions(n_classes, pairs))
}

/// A seeded random subset of at most `limit` items (all of them, in order, without a limit).
fn subset<T>(xs: &[T], limit: Option<usize>, seed: u64) -> Vec<&T> {
    let mut v: Vec<&T> = xs.iter().collect();
    if let Some(n) = limit.filter(|&n| n < xs.len()) {
        v.shuffle(&mut StdRng::seed_from_u64(seed));
        v.truncate(n);
    }
    v
}

/// The training examples a run with `cfg` uses: all of them, or its seeded subset of
/// `cfg.train_limit`.
pub fn training_subset<'a>(train: &'a [Example], cfg: &FinetuneConfig) -> Vec<&'a Example> {
    subset(train, cfg.train_limit, cfg.seed ^ 0x7A1)
}

/// Load the backbone of a run: the pretrained directory's model (its config replaces
/// `run.model`), or a fresh `run.model`.
pub fn backbone(run: &mut FinetuneRun) -> Result<Model<HyenaLm>> {
    match &run.init {
        Some(dir) => {
            let loaded = load_model(dir)?;
            // A fine-tuned classifier's backbone can be fine-tuned again.
            let m = match loaded.model.as_any().downcast_ref::<Model<SeqClassifier>>() {
                Some(clf) => clf.backbone()?,
                None => loaded.downcast::<Model<HyenaLm>>("fine-tuning")?.clone(),
            };
            run.model = m.net.cfg.clone();
            Ok(m)
        }
        None => {
            let (net, params) = HyenaLm::fresh(&run.model, run.finetune.seed)?;
            Ok(Model { net, params })
        }
    }
}

/// Fine-tune into `out` (created; an existing `model.safetensors` there is refused).
pub fn finetune(
    run: &FinetuneRun,
    dataset: &SeqClsDataset,
    out: &Path,
    on_event: &mut dyn FnMut(&FinetuneEvent),
) -> Result<FinetuneSummary> {
    finetune_ranks(run, dataset, out, None, on_event)
}

/// [`finetune`], data-parallel over the ranks of `comm` when given
/// ([`crate::train::dist`]): every rank calls it with the same arguments and takes its rows
/// of each step's batch; rank 0 alone writes into `out`, evaluates and sends events (the
/// others' `on_event` sees nothing). A failure on any rank stops every rank with its message.
pub fn finetune_ranks(
    run: &FinetuneRun,
    dataset: &SeqClsDataset,
    out: &Path,
    mut comm: Option<Box<dyn Comm>>,
    on_event: &mut dyn FnMut(&FinetuneEvent),
) -> Result<FinetuneSummary> {
    let rank0 = comm.as_ref().is_none_or(|c| c.rank() == 0);
    let mut quiet = |_: &FinetuneEvent| {};
    let on_event: &mut dyn FnMut(&FinetuneEvent) = if rank0 { on_event } else { &mut quiet };
    let prepared = prepare(run, dataset, out, rank0, on_event);
    let p = match comm.as_mut() {
        Some(c) => crate::train::dist::agree(c.as_mut(), prepared)?,
        None => prepared?,
    };
    if let Some(c) = comm.as_ref() {
        on_event(&FinetuneEvent::Info(format!(
            "data-parallel over {}: each step's batch split over the ranks",
            c.describe()
        )));
    }
    train_prepared(p, dataset, out, comm, rank0, on_event)
}

/// What [`prepare`] sets up: the classifier, its objective's data and the schedule.
struct Prepared<'a> {
    clf: Model<SeqClassifier>,
    run: FinetuneRun,
    train: Vec<&'a Example>,
    max_len: usize,
    total: u64,
    steps_per_epoch: u64,
    n_classes: usize,
    truncated: usize,
}

/// The checks, the backbone and the classifier of a fine-tuning run; rank 0 also creates
/// `out` and writes its config.
fn prepare<'a>(
    run: &FinetuneRun,
    dataset: &'a SeqClsDataset,
    out: &Path,
    rank0: bool,
    on_event: &mut dyn FnMut(&FinetuneEvent),
) -> Result<Prepared<'a>> {
    let mut run = run.clone();
    let f = run.finetune.clone();
    if out.join("model.safetensors").exists() {
        return Err(Error::config(
            "out",
            out.display(),
            "already holds a model; choose another --out",
        ));
    }
    if dataset.train.is_empty() || dataset.test.is_empty() {
        return Err(Error::config(
            "data",
            run.data.display(),
            format!(
                "needs training and test examples (has {} and {})",
                dataset.train.len(),
                dataset.test.len()
            ),
        ));
    }
    if f.batch_size == 0 || f.epochs.is_nan() || f.epochs <= 0.0 {
        return Err(Error::config(
            "batch_size / epochs",
            format!("{} / {}", f.batch_size, f.epochs),
            "must both be positive",
        ));
    }
    let lm = backbone(&mut run)?;
    on_event(&FinetuneEvent::Info(format!(
        "config: {}",
        serde_json::to_string(&run).unwrap_or_default()
    )));
    let longest = dataset.train.iter().map(|e| e.seq.len()).max().unwrap_or(0);
    let max_len = f.max_len.unwrap_or(longest);
    if max_len == 0 || max_len > lm.net.cfg.operator.l_max {
        return Err(Error::config(
            "max_len",
            max_len,
            format!(
                "must lie in 1..={} (the backbone's l_max); pass a smaller --max-len (sequences \
                 keep their first max_len bases) or pretrain with a longer --seq-len",
                lm.net.cfg.operator.l_max
            ),
        ));
    }
    let shards = rayon::current_num_threads().min(f.batch_size);
    crate::memory::check_fits(
        &format!("fine-tuning at batch {} x {max_len} bases", f.batch_size),
        crate::models::hyenadna::memory::train_bytes(&lm.net.cfg, f.batch_size, max_len, shards),
        "--batch or --max-len, or fine-tune a smaller backbone",
    )?;
    let n_classes = dataset.classes.len();
    let clf = SeqClassifier::from_backbone(lm, n_classes, f.pool, f.seed)?;
    let train = training_subset(&dataset.train, &f);
    let n_train = train.len();
    let steps_per_epoch = n_train.div_ceil(f.batch_size) as u64;
    let total = ((f.epochs * n_train as f64) / f.batch_size as f64)
        .ceil()
        .max(1.0) as u64;
    let truncated = train.iter().filter(|e| e.seq.len() > max_len).count();
    on_event(&FinetuneEvent::Info(format!(
        "data: {} classes ({}), {} training examples{}, {} test; length {max_len} \
         (left-padded with [PAD]{})",
        n_classes,
        dataset.classes.join(", "),
        n_train,
        if n_train < dataset.train.len() {
            format!(" (of {})", dataset.train.len())
        } else {
            String::new()
        },
        dataset.test.len(),
        if truncated > 0 {
            format!("; {truncated} longer training sequences keep their first {max_len} bases")
        } else {
            String::new()
        }
    )));
    on_event(&FinetuneEvent::Info(format!(
        "backbone: {} (d_model {}, {} layers, l_max {}); {} trainable parameters; {} steps \
         of {} ({:.2} epochs)",
        run.init
            .as_ref()
            .map_or("fresh initialisation".to_string(), |p| p
                .display()
                .to_string()),
        run.model.d_model(),
        run.model.n_layer,
        run.model.operator.l_max,
        clf.params.trainable_len(),
        total,
        f.batch_size,
        total as f64 / steps_per_epoch as f64
    )));

    if rank0 {
        std::fs::create_dir_all(out).map_err(|source| Error::Io {
            file: out.to_path_buf(),
            source,
        })?;
        let mut cfg_json = serde_json::to_value(&run).map_err(|e| Error::Format {
            file: out.join("config.json"),
            msg: e.to_string(),
        })?;
        cfg_json["classes"] = serde_json::json!(dataset.classes);
        cfg_json["finetune"]["max_len"] = serde_json::json!(max_len);
        write_json(&out.join("config.json"), &cfg_json)?;
    }
    Ok(Prepared {
        clf,
        run,
        train,
        max_len,
        total,
        steps_per_epoch,
        n_classes,
        truncated,
    })
}

/// The training loop of [`finetune_ranks`] after [`prepare`].
fn train_prepared(
    p: Prepared<'_>,
    dataset: &SeqClsDataset,
    out: &Path,
    comm: Option<Box<dyn Comm>>,
    rank0: bool,
    on_event: &mut dyn FnMut(&FinetuneEvent),
) -> Result<FinetuneSummary> {
    let t0 = std::time::Instant::now();
    let Prepared {
        mut clf,
        run,
        train,
        max_len,
        total,
        steps_per_epoch,
        n_classes,
        truncated,
    } = p;
    let f = run.finetune.clone();
    let eval_sub = subset(&dataset.test, f.eval_limit, f.seed ^ 0xE7A1);
    let all_test: Vec<&Example> = dataset.test.iter().collect();
    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = if rank0 {
        Some(
            std::fs::File::create(&metrics_path).map_err(|source| Error::Io {
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

    let schedule = LrSchedule {
        warmup: ((total as f64 * f.warmup_frac).round() as u64).max(1),
        total,
        min_ratio: f.min_lr_ratio,
    };
    let mut fit = Fit::new(
        AdamW::new(f.optim.clone()),
        Schedule::WarmupCosine {
            peak: f.optim.lr,
            schedule,
        },
        f.clip,
    );
    let mut objective = ClsObjective {
        train,
        order: Vec::new(),
        steps_per_epoch,
        batch_size: f.batch_size,
        max_len,
        rc_aug: f.rc_aug,
        seed: f.seed,
        ws: ClsWorkspace::default(),
        dist: comm,
        scratch: Vec::new(),
    };
    let mut curve: Vec<(f64, f64)> = Vec::new();
    let mut test_curve: Vec<(f64, f64)> = Vec::new();
    let mut summary = None;
    fit.run(&mut clf, &mut objective, total, &mut |a| {
        let step = a.step.step;
        let st = a.step.loss.sum;
        let loss = a.step.loss.loss;
        let acc = st.correct as f64 / st.count.max(1) as f64;
        log(
            serde_json::json!({"kind": "train", "step": step, "loss": loss,
            "accuracy": acc, "lr": a.step.lr, "grad_norm": a.step.grad_norm}),
        )?;
        curve.push((step as f64, acc));
        on_event(&FinetuneEvent::Step {
            step,
            total,
            loss,
            accuracy: acc,
            lr: a.step.lr,
        });
        let last = step == total;
        let eval = (f.eval_every > 0 && step % f.eval_every == 0) || last;
        // Rank 0 evaluates and writes; the others wait for its outcome.
        let mut work = || -> Result<()> {
            if !(eval && rank0) {
                return Ok(());
            }
            let set = if last { &all_test } else { &eval_sub };
            let e = evaluate(
                a.model,
                n_classes,
                set,
                max_len,
                f.batch_size,
                &mut a.objective.ws,
                &mut |_, _| {},
            )?;
            log(serde_json::json!({"kind": "eval", "step": step, "n": e.n,
                "accuracy": e.accuracy}))?;
            test_curve.push((step as f64, e.accuracy));
            save_weights(out, &a.model.checkpoint_tensors(), "hyena-classifier")?;
            on_event(&FinetuneEvent::Eval {
                step,
                eval: e.clone(),
            });
            if last {
                write_json(
                    &out.join("eval.json"),
                    &serde_json::json!({"classes": dataset.classes, "test": e, "steps": total}),
                )?;
                summary = Some(e);
            }
            Ok(())
        };
        // Rank 0 evaluates and writes; the others wait for its outcome.
        let r = work();
        match a.objective.dist.as_mut() {
            Some(c) if eval => crate::train::dist::agree(c.as_mut(), r)?,
            _ => r?,
        }
        Ok(Flow::Continue)
    })?;
    if !rank0 {
        // The others return the step count; the test accuracy is rank 0's.
        return Ok(FinetuneSummary {
            test: Evaluation::from_predictions(n_classes, std::iter::empty()),
            classes: dataset.classes.clone(),
            steps: total,
            seconds: t0.elapsed().as_secs_f64(),
            truncated,
            max_len,
        });
    }
    plot_accuracy(out, &curve, &test_curve)?;
    let test = summary.ok_or_else(|| Error::config("steps", total, "the run took no step"))?;
    Ok(FinetuneSummary {
        test,
        classes: dataset.classes.clone(),
        steps: total,
        seconds: t0.elapsed().as_secs_f64(),
        truncated,
        max_len,
    })
}

/// The fine-tuning objective: each epoch visits the (subset of) training examples in a fresh
/// seeded order, `batch_size` per step (the last step of an epoch may be short); with
/// `rc_aug`, each example of a step is read from a seeded coin's strand; mean cross-entropy
/// of the batch.
struct ClsObjective<'a> {
    train: Vec<&'a Example>,
    order: Vec<usize>,
    steps_per_epoch: u64,
    batch_size: usize,
    max_len: usize,
    rc_aug: bool,
    seed: u64,
    ws: ClsWorkspace,
    /// The other ranks of a data-parallel run; `None`: one process.
    dist: Option<Box<dyn Comm>>,
    /// The all-reduce's receive buffer, reused.
    scratch: Vec<f32>,
}

impl Objective<SeqClassifier> for ClsObjective<'_> {
    fn loss_and_grad(
        &mut self,
        clf: &Model<SeqClassifier>,
        step: u64,
        grads: &mut [f32],
    ) -> Result<StepLoss> {
        let n_train = self.train.len();
        let pos = (step % self.steps_per_epoch) as usize * self.batch_size;
        if pos == 0 {
            self.order = (0..n_train).collect();
            let epoch = step / self.steps_per_epoch;
            self.order.shuffle(&mut StdRng::seed_from_u64(
                self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ));
        }
        let batch: Vec<&Example> = self.order[pos..(pos + self.batch_size).min(n_train)]
            .iter()
            .map(|&i| self.train[i])
            .collect();
        let flipped: Vec<Example>;
        let (toks, labels, _) = if self.rc_aug {
            // Each example of the step on a seeded coin's strand (the reference's `rc_aug`).
            let mut rng =
                StdRng::seed_from_u64(self.seed ^ 0x5C ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03));
            flipped = batch
                .iter()
                .map(|e| {
                    if rng.random_bool(0.5) {
                        Example {
                            seq: reverse_complement(&e.seq),
                            label: e.label,
                        }
                    } else {
                        (*e).clone()
                    }
                })
                .collect();
            encode_all(&flipped.iter().collect::<Vec<_>>(), self.max_len)
        } else {
            encode_all(&batch, self.max_len)
        };
        // This rank's rows of the batch (all of them in one process): the rows a thread shard
        // of one process takes, each with the whole batch's 1/B.
        let b = labels.len();
        let (rank, ranks) = self.dist.as_ref().map_or((0, 1), |c| (c.rank(), c.size()));
        let (start, n) = crate::models::parallel::shard_ranges(b, ranks)[rank];
        let l = self.max_len;
        let local = if n == 0 {
            // A short last batch of an epoch: fewer sequences than ranks.
            Ok(LossSum::default())
        } else {
            clf.net.loss_and_grad_scaled(
                clf.p(),
                &toks[start * l..(start + n) * l],
                &labels[start..start + n],
                l,
                1.0 / b.max(1) as f32,
                &mut self.ws,
                grads,
            )
        };
        let sum = match self.dist.as_mut() {
            None => local?,
            Some(c) => {
                let mine = crate::train::dist::agree(c.as_mut(), local)?;
                crate::train::dist::all_reduce_sum(c.as_mut(), grads, &mut self.scratch)?;
                let all = crate::train::dist::gather_loss_sums(c.as_mut(), &[mine])?;
                LossSum::total(all.iter().filter_map(|r| r.first().copied()))
            }
        };
        Ok(StepLoss {
            loss: sum.loss_sum / sum.count.max(1) as f64,
            sum,
            tokens: batch.len() * self.max_len,
        })
    }
}

/// Training accuracy (smoothed over 50 steps) and test accuracy per step, as `accuracy.png`.
fn plot_accuracy(out: &Path, train: &[(f64, f64)], test: &[(f64, f64)]) -> Result<()> {
    let smooth = crate::plot::running_mean(train, 50);
    crate::plot::lines_png(
        &out.join("accuracy.png"),
        "fine-tuning accuracy",
        "step",
        "accuracy",
        &[
            ("train (batch, mean of 50 steps)".to_string(), smooth),
            ("test".to_string(), test.to_vec()),
        ],
    )
}
