//! `hyena vep`: variant-effect scores of the variants of a VCF/TSV file against a reference
//! FASTA, as a TSV (one flushed row per variant; `--resume` continues an interrupted run). The
//! work is `hyena::apps::vep`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use hyena::apps::dna::Reduce;
use hyena::apps::vep::{
    partial_path, place_variants, score_variants, Genome, VepOptions, VepWriter,
};
use hyena::checkpoint::load_model;
use hyena::io::variants::read_variants;
use hyena::layers::lean::InferWorkspace;
use hyena::models::score::prefix_scorer;

use crate::alloc::CountingAlloc;
use crate::args::{
    check_inputs, check_output, check_shard_output, start_shard, ForceFlag, LeanArgs, ModelArg,
    OutKind, PrecisionArg, ShardArg,
};
use crate::cmd::score::ReduceArg;
use crate::ui;
use hyena::apps::shard::{manifest_path, split_contiguous, InputSum, Manifest, ModelPrint};

#[derive(clap::Args, Debug)]
pub struct VepArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// The reference genome (FASTA, plain or compressed); chromosome names match the variant
    /// file's with or without a `chr` prefix.
    #[arg(long)]
    pub reference: PathBuf,
    /// The variants: a VCF (`##fileformat=VCF` header; multi-allelic records give one row per
    /// ALT) or a TSV of `chrom pos ref alt [id]`, 1-based positions, plain or compressed.
    #[arg(long)]
    pub variants: PathBuf,
    /// The output TSV (written as OUT.partial and renamed when every variant is scored).
    #[arg(long)]
    pub out: PathBuf,
    /// Bases of reference genome around each variant: [p − W/2, p + W/2), cut at the
    /// chromosome's ends.
    #[arg(long, default_value_t = 8192)]
    pub window: usize,
    /// A window's score: the mean of its per-base log-likelihoods (the evo2 package's
    /// score_sequences, as in its BRCA1 example) or their sum.
    #[arg(long, value_enum, default_value_t = ReduceArg::Mean)]
    pub reduce: ReduceArg,
    /// Keep the reference's case (by default soft-masked lowercase bases are upper-cased).
    #[arg(long)]
    pub keep_case: bool,
    /// Continue an interrupted run from OUT.partial (its settings must be the same).
    #[arg(long)]
    pub resume: bool,
    /// Score the two full windows of each variant separately instead of sharing the bases
    /// before the variant (the same scores, slower; for checking).
    #[arg(long)]
    pub no_share: bool,
    #[command(flatten)]
    pub lean: LeanArgs,
    #[command(flatten)]
    pub precision: PrecisionArg,
    #[command(flatten)]
    pub shard: ShardArg,
    #[command(flatten)]
    pub force: ForceFlag,
}

pub fn run_cmd(a: VepArgs) -> Result<()> {
    CountingAlloc::mark_installed();
    let t0 = Instant::now();
    let dir = &a.model.model;
    check_inputs(&[
        ("--model", dir),
        ("--reference", &a.reference),
        ("--variants", &a.variants),
    ])?;
    let reads = [dir.as_path(), a.reference.as_path(), a.variants.as_path()];
    if a.shard.shard.is_some() {
        check_shard_output("--out", &a.out, &a.out, a.force.force, &reads)?;
    } else {
        check_output("--out", &a.out, OutKind::File, a.force.force, &reads)?;
    }
    check_output(
        "--out (its .partial file)",
        &partial_path(&a.out),
        OutKind::File,
        true,
        &reads,
    )?;
    // Inputs before the model: a bad variant stops the run in seconds, not after the load.
    let variants = read_variants(&a.variants)?;
    if variants.is_empty() {
        anyhow::bail!("{}: no variants", a.variants.display());
    }
    let genome = Genome::read(&a.reference)?;
    let placed = place_variants(&genome, &variants, a.window)?;
    let opts = VepOptions {
        window: a.window,
        reduce: match a.reduce {
            ReduceArg::Sum => Reduce::Sum,
            ReduceArg::Mean => Reduce::Mean,
        },
        uppercase: !a.keep_case,
        share: !a.no_share,
    };
    // One shard: a contiguous slice of the variants balanced by window bases.
    let (variants, placed, mut shard) = match a.shard.shard {
        None => (&variants[..], &placed[..], None),
        Some(s) => {
            let w: Vec<u64> = placed.iter().map(|p| p.window_len() as u64).collect();
            let r = split_contiguous(&w, s.count)[s.index - 1].clone();
            let settings = serde_json::json!({
                "options": opts,
                "precision": format!("{:?}", a.precision),
            });
            let fresh = Manifest::new(
                "vep",
                s,
                vec![
                    InputSum::of("reference", &a.reference)?,
                    InputSum::of("variants", &a.variants)?,
                ],
                Some(ModelPrint::of(dir)?),
                settings,
                "variants",
                r.clone(),
                None,
                variants.len(),
                w[r.clone()].iter().sum::<u64>() as f64,
                [("out".to_string(), a.out.clone())].into_iter().collect(),
            );
            match start_shard(&a.out, fresh, a.force.force)? {
                None => return Ok(()),
                Some(m) => (&variants[r.clone()], &placed[r], Some(m)),
            }
        }
    };
    let mut loaded =
        load_model(dir).with_context(|| format!("loading the model in {}", dir.display()))?;
    let precision = a.precision.apply(loaded.model.as_mut())?;
    ui::print_notes(&loaded.notes);
    eprintln!(
        "model loaded in {:.1} s; matrix products in {precision}; {} variants",
        t0.elapsed().as_secs_f64(),
        variants.len()
    );
    let lm = loaded.model.as_ref();
    let lean = a.lean.options(lm);
    let settings = serde_json::json!({
        "model": dir,
        "reference": a.reference,
        "variants": a.variants,
        "options": opts,
        "precision": precision.to_string(),
        "kv": format!("{:?}", a.precision.kv).to_lowercase(),
    })
    .to_string();
    // A shard always resumes (its manifest was checked above).
    let mut w = VepWriter::open(&a.out, &settings, variants, a.resume || shard.is_some())?;
    if w.done > 0 {
        eprintln!(
            "resuming: {} of {} variants already in {}",
            w.done,
            variants.len(),
            partial_path(&a.out).display()
        );
    }
    let mut scorer = prefix_scorer(lm, lean.chunk, InferWorkspace::with_options(lean));
    let bar = ui::bar(
        variants.len() as u64,
        "{spinner} {bar:30} {pos}/{len} variants [{elapsed} < {eta}]",
    );
    bar.set_position(w.done as u64);
    let t1 = Instant::now();
    let start = w.done;
    let r = score_variants(
        lm,
        scorer.as_mut(),
        &genome,
        variants,
        placed,
        &opts,
        start,
        &mut |row| w.write(&variants[row.index], row),
        &mut |done, _| bar.set_position(done as u64),
    );
    bar.finish_and_clear();
    r?;
    let out = w.finish()?;
    if let Some(m) = shard.as_mut() {
        m.done = variants.len();
        m.finished = true;
        m.write(&manifest_path(&a.out))?;
    }
    let n = variants.len() - start;
    let secs = t1.elapsed().as_secs_f64();
    eprintln!(
        "{n} variants scored in {secs:.1} s ({:.3} s per variant{}); scores in {}",
        secs / n.max(1) as f64,
        if opts.share { "" } else { ", unshared" },
        out.display()
    );
    ui::print_memory(t0);
    Ok(())
}
