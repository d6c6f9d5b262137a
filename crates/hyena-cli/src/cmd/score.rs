//! `hyena score`: log-likelihood of the DNA records of a FASTA/FASTQ file under a model, per
//! record (a table or JSON lines) and optionally per base (a TSV file). The work is
//! `hyena::apps::dna::score_file` (lean inference, one record at a time).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use hyena::apps::dna::{score_file, Reduce, ScoreOptions};
use hyena::checkpoint::load_model;

use crate::alloc::CountingAlloc;
use crate::args::{
    check_inputs, check_output, ForceFlag, JsonFlag, LeanArgs, ModelArg, OutKind, PrecisionArg,
    RecordsFile, TokenArgs,
};
use crate::ui;

#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub records: RecordsFile,
    /// Also write log p(base | preceding bases) of every scored position to this TSV file.
    #[arg(long)]
    pub per_base: Option<PathBuf>,
    /// How a record's per-base log-likelihoods become its score: their sum (nats) or their
    /// mean (the evo2 package's default).
    #[arg(long, value_enum, default_value_t = ReduceArg::Sum)]
    pub reduce: ReduceArg,
    /// Average each record's score with its reverse complement's (strand-symmetric scores).
    #[arg(long)]
    pub reverse_complement: bool,
    #[command(flatten)]
    pub json: JsonFlag,
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(flatten)]
    pub lean: LeanArgs,
    #[command(flatten)]
    pub precision: PrecisionArg,
    #[command(flatten)]
    pub force: ForceFlag,
}

/// `--reduce` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ReduceArg {
    Sum,
    Mean,
}

pub fn run_cmd(a: ScoreArgs) -> Result<()> {
    CountingAlloc::mark_installed();
    let t0 = Instant::now();
    let dir = &a.model.model;
    // Everything that can be checked without the model, before loading it.
    check_inputs(&[("--model", dir), ("--fasta", &a.records.fasta)])?;
    if let Some(p) = &a.per_base {
        let reads = [dir.as_path(), a.records.fasta.as_path()];
        check_output("--per-base", p, OutKind::File, a.force.force, &reads)?;
    }
    let mut loaded =
        load_model(dir).with_context(|| format!("loading the model in {}", dir.display()))?;
    let precision = a.precision.apply(loaded.model.as_mut())?;
    if precision != hyena::models::Precision::F32 || loaded.family == "evo2" {
        eprintln!("matrix products in {precision}");
    }
    ui::print_notes(&loaded.notes);
    eprintln!("model loaded in {:.1} s", t0.elapsed().as_secs_f64());
    let (bar, f) = ui::record_progress();
    let opts = ScoreOptions {
        reduce: match a.reduce {
            ReduceArg::Sum => Reduce::Sum,
            ReduceArg::Mean => Reduce::Mean,
        },
        reverse_complement: a.reverse_complement,
    };
    let scores = score_file(
        loaded.model.as_ref(),
        &a.records.fasta,
        a.tokens.options(),
        a.lean.options(loaded.model.as_ref()),
        a.per_base.as_deref(),
        Some(f),
        opts,
    );
    bar.finish_and_clear();
    let scores = scores?;
    if a.json.json {
        for s in &scores {
            println!("{}", serde_json::to_string(s)?);
        }
    } else {
        println!(
            "| record | tokens | scored | log-likelihood (nats, {}) | bits/base |\n|---|---:|---:|---:|---:|",
            match opts.reduce {
                Reduce::Sum => "sum",
                Reduce::Mean => "mean",
            }
        );
        for s in &scores {
            println!(
                "| {} | {} | {} | {:.4} | {:.4} |",
                s.name, s.tokens, s.scored, s.log_likelihood, s.bits_per_base
            );
        }
        if scores.len() == 2 {
            println!(
                "difference ({} − {}): {:.4} nats",
                scores[1].name,
                scores[0].name,
                scores[1].log_likelihood - scores[0].log_likelihood
            );
        }
    }
    if let Some(p) = &a.per_base {
        eprintln!("per-base log-probabilities in {}", p.display());
    }
    ui::print_memory(t0);
    Ok(())
}
