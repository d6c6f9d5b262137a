//! `hyena score`: log-likelihood of the DNA records of a FASTA/FASTQ file under a model, per
//! record (a table or JSON lines) and optionally per base (a TSV file). The work is
//! `hyena::apps::dna::score_file` (lean inference, one record at a time).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use hyena::apps::dna::{score_file, Reduce, ScoreOptions};
use hyena::apps::sharded::{records_manifest, score_shard};
use hyena::checkpoint::load_model;

use crate::alloc::CountingAlloc;
use crate::args::{
    check_inputs, check_output, check_shard_output, start_shard, ForceFlag, JsonFlag, LeanArgs,
    ModelArg, OutKind, PrecisionArg, RecordsFile, ShardArg, TokenArgs,
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
    /// Write the records' scores to this file, one JSON object per line (what --json prints),
    /// instead of printing them; needed with --shard. [default: print]
    #[arg(long)]
    pub out: Option<PathBuf>,
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
    pub shard: ShardArg,
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
    let reads = [dir.as_path(), a.records.fasta.as_path()];
    let force = a.force.force;
    let opts = ScoreOptions {
        reduce: match a.reduce {
            ReduceArg::Sum => Reduce::Sum,
            ReduceArg::Mean => Reduce::Mean,
        },
        reverse_complement: a.reverse_complement,
    };
    let mut shard = None;
    if let Some(s) = a.shard.shard {
        let Some(out) = &a.out else {
            anyhow::bail!(
                "--shard {s} needs --out FILE: each shard writes its scores and a manifest                  beside them for `hyena merge`"
            );
        };
        check_shard_output("--out", out, out, force, &reads)?;
        if let Some(p) = &a.per_base {
            check_shard_output("--per-base", p, out, force, &reads)?;
        }
        let settings = serde_json::json!({
            "reduce": opts.reduce,
            "reverse_complement": opts.reverse_complement,
            "tokenize": a.tokens.options(),
            "precision": format!("{:?}", a.precision),
        });
        let mut outputs = std::collections::BTreeMap::new();
        outputs.insert("out".to_string(), out.clone());
        if let Some(p) = &a.per_base {
            outputs.insert("per_base".to_string(), p.clone());
        }
        let fresh = records_manifest("score", s, &a.records.fasta, dir, settings, outputs)?;
        match start_shard(out, fresh, force)? {
            None => return Ok(()),
            Some(m) => shard = Some(m),
        }
    } else {
        if let Some(p) = &a.per_base {
            check_output("--per-base", p, OutKind::File, force, &reads)?;
        }
        if let Some(p) = &a.out {
            check_output("--out", p, OutKind::File, force, &reads)?;
        }
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
    if let (Some(mut m), Some(out)) = (shard, &a.out) {
        let r = score_shard(
            loaded.model.as_ref(),
            &a.records.fasta,
            out,
            a.per_base.as_deref(),
            a.tokens.options(),
            a.lean.options(loaded.model.as_ref()),
            opts,
            &mut m,
            Some(f),
        );
        bar.finish_and_clear();
        let resumed = r?.resumed;
        println!(
            "shard {}: {} records scored into {}{}; manifest {}",
            m.shard,
            m.done,
            out.display(),
            if resumed > 0 {
                format!(" (resumed after {resumed} done by an interrupted run)")
            } else {
                String::new()
            },
            hyena::apps::shard::manifest_path(out).display()
        );
        ui::print_memory(t0);
        return Ok(());
    }
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
    if let Some(out) = &a.out {
        let mut text = String::new();
        for s in &scores {
            text.push_str(&serde_json::to_string(s)?);
            text.push('\n');
        }
        hyena::io::safetensors::write_bytes_atomic(out, text.as_bytes())?;
        println!("{} records scored into {}", scores.len(), out.display());
    } else if a.json.json {
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
