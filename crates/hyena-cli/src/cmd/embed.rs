//! `hyena embed`: hidden states of the DNA records of a FASTA/FASTQ file as a `.npy` array,
//! pooled per record or per base. The work is `hyena::apps::dna::embed_file` (lean inference,
//! one record at a time).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use hyena::apps::dna::{embed_file, EmbedOptions};
use hyena::checkpoint::load_model;

use crate::alloc::CountingAlloc;
use crate::args::{
    check_inputs, check_output, ForceFlag, LeanArgs, ModelArg, OutKind, PoolArg, RecordsFile,
    TokenArgs,
};
use crate::ui;

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub records: RecordsFile,
    /// Hidden states after this many blocks: 0 = the token embeddings [default: all blocks,
    /// then the final LayerNorm, as HyenaDNA's backbone returns them].
    #[arg(long)]
    pub layer: Option<usize>,
    /// Reduce positions per record: mean or last (one row per record), none (one per base).
    #[arg(long, value_enum, default_value_t = PoolArg::Mean)]
    pub pool: PoolArg,
    /// Output `.npy` (float32): [records, d_model] pooled, [bases, d_model] with --pool none
    /// (all records' rows in order; `<out>.records.tsv` says which rows are whose).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(flatten)]
    pub lean: LeanArgs,
    #[command(flatten)]
    pub force: ForceFlag,
}

/// The table of records `hyena embed` writes beside its `.npy` output.
fn records_tsv(out: &std::path::Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".records.tsv");
    PathBuf::from(name)
}

pub fn run_cmd(a: EmbedArgs) -> Result<()> {
    CountingAlloc::mark_installed();
    let t0 = Instant::now();
    let dir = &a.model.model;
    // Everything that can be checked without the model, before loading it.
    check_inputs(&[("--model", dir), ("--fasta", &a.records.fasta)])?;
    let reads = [dir.as_path(), a.records.fasta.as_path()];
    let force = a.force.force;
    check_output("--out", &a.out, OutKind::File, force, &reads)?;
    check_output("--out", &records_tsv(&a.out), OutKind::File, force, &reads)?;
    let loaded =
        load_model(dir).with_context(|| format!("loading the model in {}", dir.display()))?;
    let lm = loaded.model.as_ref();
    let opts = EmbedOptions {
        layer: a.layer,
        pool: a.pool.pool(),
        tokenize: a.tokens.options(),
        lean: a.lean.options(),
    };
    eprintln!(
        "model: d_model {}, {} blocks, max length {}; embedding layer {} ({:?} pooling)",
        lm.d_model(),
        lm.n_layer(),
        lm.max_len(),
        opts.layer.unwrap_or(lm.n_layer()),
        opts.pool
    );
    let (bar, f) = ui::record_progress();
    let rep = embed_file(lm, &a.records.fasta, &a.out, &opts, Some(f));
    bar.finish_and_clear();
    let rep = rep?;
    println!(
        "wrote {} [{} x {}] float32 from {} record(s) ({} tokens); rows per record in {}",
        rep.out.display(),
        rep.shape[0],
        rep.shape[1],
        rep.records.len(),
        rep.records.iter().map(|r| r.tokens).sum::<usize>(),
        rep.records_tsv.display()
    );
    ui::print_memory(t0);
    Ok(())
}
