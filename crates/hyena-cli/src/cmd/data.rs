//! `hyena data species` (build the species-of-origin classification task from real genomes)
//! and `hyena data baseline` (the k-mer / Markov-chain classifier on a dataset): argument
//! parsing and printing only; the work is in `hyena::data` and `hyena::baselines::kmer`. The
//! accuracy table printed here is `hyena finetune`'s too.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hyena::baselines::kmer::{
    fit_select, Evaluation, MarkovClassifier, MAX_K, SELECT_HOLDOUT, SELECT_MAX_K, SELECT_SEED,
};
use hyena::data::seqcls::{load_csv, load_dataset, SeqClsDataset};
use hyena::data::species::{
    build_species_task, SpeciesTaskOptions, StrainReport, DEFAULT_LENGTH, DEFAULT_MIN_RECORD_LEN,
    DEFAULT_SEED, DEFAULT_TEST_PER_CLASS, DEFAULT_TRAIN_PER_CLASS,
};

#[derive(clap::Subcommand, Debug)]
pub enum DataWhat {
    /// Build the 5-species "species of origin of a DNA fragment" task from real genomes.
    ///
    /// Classes e_coli, h_pylori, k_pneumoniae, s_aureus, v_cholerae, from the genomes of the
    /// Debian packages ragout-examples and kleborate-examples. One strain per species is held
    /// out: test fragments come only from it, train fragments only from the others.
    Species(SpeciesArgs),
    /// Fit the k-mer / Markov-chain baseline on a dataset and print its test accuracy.
    ///
    /// Fitted on the train split (one order-k Markov chain per class, both strands counted);
    /// prints the test accuracy overall and per class and the confusion matrix. Without --k,
    /// k is chosen on a held-out part of the train split, never on the test split.
    Baseline(BaselineArgs),
}

#[derive(clap::Args, Debug)]
pub struct SpeciesArgs {
    /// Directory searched for the genome files by their package paths (e.g.
    /// ragout/examples/E.Coli/references/MG1655-K12.fasta.gz): usr/share/doc of the extracted
    /// packages (`apt-get download ragout-examples kleborate-examples`, `dpkg -x`), or
    /// /usr/share/doc after `apt-get install`.
    #[arg(long)]
    pub genomes: PathBuf,
    /// Output directory (must not exist or be empty): train/<class>/*.txt, test/<class>/*.txt,
    /// dataset.json, fragments.tsv.
    #[arg(long)]
    pub out: PathBuf,
    /// Fragment length in bases.
    #[arg(long, default_value_t = DEFAULT_LENGTH)]
    pub length: usize,
    /// Train fragments per class (shared equally by the species' training strains).
    #[arg(long, default_value_t = DEFAULT_TRAIN_PER_CLASS)]
    pub train_per_class: usize,
    /// Test fragments per class (all from the held-out strain).
    #[arg(long, default_value_t = DEFAULT_TEST_PER_CLASS)]
    pub test_per_class: usize,
    /// Random seed of the fragment positions and strands.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Records shorter than this (bases) are not sampled: the default keeps the chromosomes
    /// and drops the plasmids, which move between species.
    #[arg(long, default_value_t = DEFAULT_MIN_RECORD_LEN)]
    pub min_record_len: usize,
}

#[derive(clap::Args, Debug)]
pub struct BaselineArgs {
    /// The dataset: a directory train/<class>/*, test/<class>/* (as `hyena data species`
    /// writes), a directory with train.csv and test.csv, or one CSV with a `split` column.
    #[arg(long)]
    pub data: PathBuf,
    /// A test CSV, when --data is the train CSV.
    #[arg(long)]
    pub test_csv: Option<PathBuf>,
    /// Markov order (context length in bases) [default: chosen in 1..=--max-k on a held-out
    /// part of the train split].
    #[arg(long)]
    pub k: Option<usize>,
    /// Largest order tried when choosing k.
    #[arg(long, default_value_t = SELECT_MAX_K)]
    pub max_k: usize,
    /// Fraction of each class's train examples held out to choose k (never the test split).
    #[arg(long, default_value_t = SELECT_HOLDOUT)]
    pub holdout: f64,
    /// Seed of the held-out split used to choose k.
    #[arg(long, default_value_t = SELECT_SEED)]
    pub seed: u64,
}

pub fn run_cmd(w: DataWhat) -> Result<()> {
    match w {
        DataWhat::Species(a) => species_cmd(a),
        DataWhat::Baseline(a) => baseline_cmd(a),
    }
}

fn species_cmd(a: SpeciesArgs) -> Result<()> {
    let opts = SpeciesTaskOptions {
        length: a.length,
        train_per_class: a.train_per_class,
        test_per_class: a.test_per_class,
        seed: a.seed,
        min_record_len: a.min_record_len,
        ..SpeciesTaskOptions::new(&a.genomes, &a.out)
    };
    let t0 = Instant::now();
    eprintln!(
        "building the species task from the genomes under {} ...",
        a.genomes.display()
    );
    let rep = build_species_task(&opts).context("building the species task")?;
    let secs = t0.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "hyena data species: {} classes, fragments of {} bp, seed {}, records >= {} bp\n",
        rep.classes.len(),
        rep.length,
        rep.seed,
        rep.min_record_len
    )?;
    writeln!(
        out,
        "| class | species | train strains | train fragments | test strain | test fragments |"
    )?;
    writeln!(out, "|---|---|---|---:|---|---:|")?;
    for s in &rep.species {
        let names = |v: &[StrainReport]| {
            v.iter()
                .map(|s| s.strain.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            s.class,
            s.species,
            names(&s.train),
            s.train_fragments,
            names(&s.test),
            s.test_fragments
        )?;
    }
    writeln!(
        out,
        "\nwrote {} (train/<class>/*.txt, test/<class>/*.txt, dataset.json, fragments.tsv) \
         in {secs:.1} s",
        rep.out.display()
    )?;
    Ok(())
}

fn load(a: &BaselineArgs) -> Result<SeqClsDataset> {
    let ds = match &a.test_csv {
        Some(t) => load_csv(&a.data, Some(t)),
        None => load_dataset(&a.data),
    };
    ds.with_context(|| format!("reading the dataset {}", a.data.display()))
}

fn baseline_cmd(a: BaselineArgs) -> Result<()> {
    if let Some(k) = a.k {
        if k > MAX_K {
            bail!("--k {k} is too large: the Markov order must be at most {MAX_K}");
        }
    }
    if a.max_k == 0 || a.max_k > MAX_K {
        bail!("--max-k {} must be in 1..={MAX_K}", a.max_k);
    }
    let t0 = Instant::now();
    let ds = load(&a)?;
    let t_load = t0.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    let sum = ds.summary();
    writeln!(
        out,
        "dataset {}: {} classes, {} train / {} test sequences, lengths {}..={} (read in {t_load:.1} s)\n",
        a.data.display(),
        ds.classes.len(),
        sum.train.n,
        sum.test.n,
        sum.train.min_len.min(sum.test.min_len),
        sum.train.max_len.max(sum.test.max_len)
    )?;
    let t1 = Instant::now();
    let nc = ds.classes.len();
    let model = match a.k {
        Some(k) => MarkovClassifier::fit(&ds.train, nc, k).context("fitting the baseline")?,
        None => {
            let (m, sel) = fit_select(&ds.train, nc, 1..=a.max_k, a.holdout, a.seed)
                .context("choosing k on held-out train data")?;
            writeln!(
                out,
                "choosing k on a held-out {:.0}% of train ({} fitted, {} held out; test unseen):\n",
                a.holdout * 100.0,
                sel.n_fit,
                sel.n_holdout
            )?;
            writeln!(out, "| k | held-out accuracy |")?;
            writeln!(out, "|---:|---:|")?;
            for s in &sel.table {
                let mark = if s.k == sel.best_k { " (best)" } else { "" };
                writeln!(out, "| {} | {:.4}{mark} |", s.k, s.holdout_accuracy)?;
            }
            writeln!(out)?;
            m
        }
    };
    let t_fit = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let ev = model.evaluate(&ds.test).context("scoring the test split")?;
    let t_test = t2.elapsed().as_secs_f64();
    writeln!(
        out,
        "Markov baseline, k = {} (both strands counted), fitted on all {} train sequences",
        model.k(),
        ds.train.len()
    )?;
    writeln!(
        out,
        "test accuracy: {:.4} ({} / {})\n",
        ev.accuracy, ev.correct, ev.n
    )?;
    print_eval(&mut out, &ds.classes, &ev)?;
    writeln!(
        out,
        "\ntime: fit{} {t_fit:.1} s, test {t_test:.1} s",
        if a.k.is_none() { " + choice of k" } else { "" }
    )?;
    Ok(())
}

pub(crate) fn print_eval(out: &mut impl Write, classes: &[String], ev: &Evaluation) -> Result<()> {
    writeln!(out, "| class | test n | accuracy |")?;
    writeln!(out, "|---|---:|---:|")?;
    for (name, s) in classes.iter().zip(&ev.per_class) {
        let acc = if s.n == 0 {
            "-".to_string()
        } else {
            format!("{:.4}", s.accuracy)
        };
        writeln!(out, "| {name} | {} | {acc} |", s.n)?;
    }
    writeln!(
        out,
        "\nconfusion matrix (rows: true class, columns: predicted):\n"
    )?;
    write!(out, "| true \\ predicted |")?;
    for c in classes {
        write!(out, " {c} |")?;
    }
    writeln!(out)?;
    writeln!(out, "|---|{}", "---:|".repeat(classes.len()))?;
    for (name, row) in classes.iter().zip(&ev.confusion) {
        write!(out, "| {name} |")?;
        for v in row {
            write!(out, " {v} |")?;
        }
        writeln!(out)?;
    }
    Ok(())
}
