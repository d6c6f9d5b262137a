//! `hyena finetune`: fine-tune a sequence classifier (a pooled head on a HyenaDNA backbone)
//! on a labelled dataset, print its test accuracy (and optionally the k-mer baseline's).
//! Argument parsing and printing only; the work is `hyena::train::finetune`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use hyena::baselines::kmer::{fit_select, SELECT_HOLDOUT, SELECT_MAX_K, SELECT_SEED};
use hyena::train::finetune::{finetune_ranks, FinetuneConfig, FinetuneEvent, FinetuneRun};

use crate::args::{
    at_least_one, check_inputs, check_output, non_negative_f32, positive_f32, positive_f64,
    ForceFlag, OutDir, OutKind, PoolArg,
};
use crate::cmd::data::print_eval;
use crate::ui;

#[derive(clap::Args, Debug)]
pub struct FinetuneArgs {
    /// The dataset: a directory train/<class>/*, test/<class>/* (the GenomicBenchmarks layout,
    /// as `hyena data species` writes), a directory with train.csv and test.csv, or one CSV
    /// (sequence,label[,split]).
    #[arg(long)]
    pub data: PathBuf,
    /// A test CSV, when --data is the train CSV.
    #[arg(long)]
    pub test_csv: Option<PathBuf>,
    // Not `args::ModelArg`: here the model is optional (--preset trains a fresh backbone).
    /// Pretrained backbone: a `hyena train` run directory or a released HyenaDNA checkpoint
    /// (HF or Lightning layout).
    #[arg(long, value_name = "DIR", conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// Train a freshly initialised backbone of this shape instead (no pretraining), e.g.
    /// hyenadna-tiny; its l_max is set to the sequence length.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(
        hyena::train::run::PRESETS.iter().map(|p| p.0)))]
    pub preset: Option<String>,
    /// Output directory: config.json, model.safetensors, metrics.jsonl, eval.json,
    /// accuracy.png.
    #[arg(long, default_value = "runs/finetune")]
    pub out: PathBuf,
    #[command(flatten)]
    pub force: ForceFlag,
    /// Passes over the training examples (fractions allowed).
    #[arg(long, default_value_t = 1.0, value_parser = positive_f64)]
    pub epochs: f64,
    /// Sequences per step.
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    pub batch: usize,
    /// Peak learning rate (AdamW; warm-up over 1% of the steps, then cosine to 0.1x).
    #[arg(long, default_value_t = 6e-4, value_parser = positive_f32)]
    pub lr: f32,
    /// Decoupled weight decay (not on biases, norms and the implicit filter).
    #[arg(long, default_value_t = 0.1, value_parser = non_negative_f32)]
    pub weight_decay: f32,
    /// Length every sequence is left-padded with [PAD] (or truncated, keeping its first bases)
    /// to [default: the longest training sequence].
    #[arg(long, value_parser = at_least_one)]
    pub max_len: Option<usize>,
    /// How the hidden states of a sequence are pooled for the head: mean (over all positions,
    /// padding included: the reference's pooled decoder) or last (the last base: sequences are
    /// left-padded).
    #[arg(long, default_value = "mean",
          value_parser = PoolArg::parser(&[PoolArg::Mean, PoolArg::Last]))]
    pub pool: PoolArg,
    /// Seed of the head's initialisation, a fresh backbone and the example order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Evaluate on (a sample of --eval-limit) test examples every this many steps; 0: only at
    /// the end, on the whole test split.
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Train on at most this many examples (a seeded random subset).
    #[arg(long, value_parser = at_least_one)]
    pub train_limit: Option<usize>,
    /// Test examples scored at the intermediate evaluations (the final one uses all).
    #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
    pub eval_limit: usize,
    /// Reverse-complement each training example with probability 1/2 at every step (the
    /// reference's rc_aug): a fragment read from either strand has the same label.
    #[arg(long)]
    pub rc_aug: bool,
    /// Also fit the k-mer / Markov-chain baseline (k chosen on held-out training examples) on
    /// the same training examples and print its test accuracy beside the model's.
    #[arg(long)]
    pub baseline: bool,
}

pub fn run_cmd(a: FinetuneArgs) -> Result<()> {
    if a.model.is_none() && a.preset.is_none() {
        anyhow::bail!(
            "give --model DIR (a pretrained backbone) or --preset NAME (a fresh one, e.g. \
             hyenadna-tiny)"
        );
    }
    // Inputs and the output first: nothing is read or created before these checks.
    let mut inputs = vec![("--data", a.data.as_path())];
    inputs.extend(a.test_csv.as_deref().map(|p| ("--test-csv", p)));
    inputs.extend(a.model.as_deref().map(|p| ("--model", p)));
    check_inputs(&inputs)?;
    let reads: Vec<_> = inputs.iter().map(|(_, p)| *p).collect();
    check_output("--out", &a.out, OutKind::Dir, a.force.force, &reads)?;
    let ds = match &a.test_csv {
        Some(t) => hyena::data::seqcls::load_csv(&a.data, Some(t)),
        None => hyena::data::seqcls::load_dataset(&a.data),
    }
    .with_context(|| format!("reading the dataset {}", a.data.display()))?;
    let cfg = FinetuneConfig {
        epochs: a.epochs,
        batch_size: a.batch,
        max_len: a.max_len,
        pool: a.pool.pool(),
        optim: hyena::train::AdamWConfig {
            lr: a.lr,
            weight_decay: a.weight_decay,
            ..FinetuneConfig::default().optim
        },
        seed: a.seed,
        eval_every: a.eval_every,
        train_limit: a.train_limit,
        rc_aug: a.rc_aug,
        eval_limit: Some(a.eval_limit),
        ..FinetuneConfig::default()
    };
    let model = match (&a.model, &a.preset) {
        (None, Some(p)) => {
            let mut m = hyena::train::run::preset(p)?.model;
            let longest = ds.train.iter().map(|e| e.seq.len()).max().unwrap_or(1);
            m.operator.l_max = a.max_len.unwrap_or(longest);
            m
        }
        // Replaced by the checkpoint's own config when it is loaded (--model is given: checked
        // at the start).
        _ => hyena::models::hyenadna::LmConfig::default(),
    };
    let run = FinetuneRun {
        data: a.data.clone(),
        test_csv: a.test_csv.clone(),
        init: a.model.clone(),
        model,
        finetune: cfg,
    };

    // Under mpirun/srun: this rank of a data-parallel run; only rank 0 prints and writes.
    let comm = crate::ranks::world()?;
    let rank0 = crate::ranks::is_rank0(&comm);
    let bar = if rank0 {
        ui::bar(
            1,
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (mut ema_loss, mut ema_acc) = (f64::NAN, f64::NAN);
    let mut on_event = |e: &FinetuneEvent| match e {
        FinetuneEvent::Info(s) => ui::say(&bar, s),
        FinetuneEvent::Step {
            step,
            total,
            loss,
            accuracy,
            lr,
        } => {
            let k = 0.05;
            ema_loss = if ema_loss.is_nan() {
                *loss
            } else {
                ema_loss + k * (loss - ema_loss)
            };
            ema_acc = if ema_acc.is_nan() {
                *accuracy
            } else {
                ema_acc + k * (accuracy - ema_acc)
            };
            bar.set_length(*total);
            bar.set_position(*step);
            bar.set_message(format!(
                "loss {ema_loss:.4}  train acc {ema_acc:.3}  lr {lr:.2e}"
            ));
        }
        FinetuneEvent::Eval { step, eval } => ui::say(
            &bar,
            &format!(
                "step {step:>6}  test accuracy {:.4} ({} / {})",
                eval.accuracy, eval.correct, eval.n
            ),
        ),
    };
    let out_dir = rank0.then(|| OutDir::new(&a.out));
    let s = finetune_ranks(&run, &ds, &a.out, comm, &mut on_event)?;
    if let Some(d) = out_dir {
        d.keep();
    }
    bar.finish_and_clear();
    if !rank0 {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\nfine-tuned {} steps in {:.1} s; test accuracy {:.4} ({} / {})\n",
        s.steps, s.seconds, s.test.accuracy, s.test.correct, s.test.n
    )?;
    print_eval(&mut out, &s.classes, &s.test)?;
    if a.baseline {
        let train: Vec<_> = match a.train_limit {
            // The same seeded subset the model trained on.
            Some(_) => hyena::train::finetune::training_subset(&ds.train, &run.finetune)
                .into_iter()
                .cloned()
                .collect(),
            None => ds.train.clone(),
        };
        let (m, sel) = fit_select(
            &train,
            ds.classes.len(),
            1..=SELECT_MAX_K,
            SELECT_HOLDOUT,
            SELECT_SEED,
        )
        .context("fitting the Markov baseline")?;
        let ev = m.evaluate(&ds.test).context("scoring the baseline")?;
        writeln!(
            out,
            "\nMarkov baseline (k = {} chosen on held-out training examples, both strands): \
             test accuracy {:.4} ({} / {}); model {:.4}",
            sel.best_k, ev.accuracy, ev.correct, ev.n, s.test.accuracy
        )?;
    }
    writeln!(
        out,
        "\nwrote {} (model.safetensors, config.json, metrics.jsonl, eval.json, accuracy.png)",
        a.out.display()
    )?;
    Ok(())
}
