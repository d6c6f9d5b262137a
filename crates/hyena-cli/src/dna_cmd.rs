//! `hyena embed` and `hyena score`: argument parsing and printing only; the work is
//! `hyena::apps::dna` (lean inference over FASTA/FASTQ records).

use std::path::PathBuf;
use std::time::Instant;

use crate::alloc::{peak_heap_bytes, peak_rss_bytes, CountingAlloc};
use anyhow::{Context, Result};
use hyena::apps::dna::{
    embed_file, score_file, EmbedOptions, Progress, ProgressFn, TokenizeOptions,
};
use hyena::checkpoint::load_model;
use hyena::layers::lean::{LeanOptions, ResidualStore};
use hyena::models::Pool;
use indicatif::{ProgressBar, ProgressStyle};

/// How input bases become token ids (shared by embed and score).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct TokenArgs {
    /// Upper-case bases before lookup (for soft-masked genomes). Off by default: HyenaDNA's
    /// tokenizer is case-sensitive and maps a/c/g/t to [UNK].
    #[arg(long)]
    pub uppercase: bool,
    /// Map characters outside A C G T N to [UNK], as the reference tokenizer does, instead of
    /// stopping with an error that names the record and position.
    #[arg(long)]
    pub unknown_as_unk: bool,
    /// Append the [SEP] token to every record (the HF tokenizer's default), adding one row.
    #[arg(long)]
    pub special_tokens: bool,
    /// Positions per chunk of the lean forward (memory/speed trade-off; results do not change).
    #[arg(long, default_value_t = 2048)]
    pub chunk: usize,
    /// How the residual stream is held between passes: `auto` packs it to 24 bits per value
    /// above 2^27 values (L·d_model; past 524,288 bases at d_model 256), which keeps a
    /// 1M-base HyenaDNA-large forward under 2 GiB; `f32` is exact at a third more memory;
    /// `packed24` always packs (relative rounding <= 2^-16 per store).
    #[arg(long, value_enum, default_value_t = ResidualArg::Auto)]
    pub residual: ResidualArg,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ResidualArg {
    Auto,
    F32,
    Packed24,
}

impl ResidualArg {
    pub fn store(self) -> ResidualStore {
        match self {
            ResidualArg::Auto => ResidualStore::Auto,
            ResidualArg::F32 => ResidualStore::F32,
            ResidualArg::Packed24 => ResidualStore::Packed24,
        }
    }
}

impl TokenArgs {
    fn lean(&self) -> LeanOptions {
        LeanOptions {
            chunk: self.chunk,
            residual: self.residual.store(),
        }
    }
}

impl TokenArgs {
    fn options(&self) -> TokenizeOptions {
        TokenizeOptions {
            uppercase: self.uppercase,
            unknown_as_unk: self.unknown_as_unk,
            add_sep: self.special_tokens,
        }
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PoolArg {
    /// Mean over positions: one row per record.
    Mean,
    /// Last position: one row per record.
    Last,
    /// Every position: one row per base.
    None,
}

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// Model directory: a hyena run, or a HyenaDNA checkpoint (HF `config.json` +
    /// `model.safetensors`/`pytorch_model.bin`, or Lightning `weights.ckpt`).
    #[arg(long)]
    pub model: PathBuf,
    /// FASTA or FASTQ file (plain, gzip or xz), read one record at a time.
    #[arg(long)]
    pub fasta: PathBuf,
    /// Hidden states after this many blocks: 0 = the token embeddings [default: all blocks,
    /// then the final LayerNorm, as HyenaDNA's backbone returns them].
    #[arg(long)]
    pub layer: Option<usize>,
    /// Reduce positions per record.
    #[arg(long, value_enum, default_value = "mean")]
    pub pool: PoolArg,
    /// Output `.npy` (float32): [records, d_model] pooled, [bases, d_model] with --pool none
    /// (all records' rows in order; `<out>.records.tsv` says which rows are whose).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub tokens: TokenArgs,
}

#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// Model directory (see `hyena embed --help`).
    #[arg(long)]
    pub model: PathBuf,
    /// FASTA or FASTQ file (plain, gzip or xz), scored one record at a time.
    #[arg(long)]
    pub fasta: PathBuf,
    /// Also write log p(base | preceding bases) of every scored position to this TSV file.
    #[arg(long)]
    pub per_base: Option<PathBuf>,
    /// Print one JSON object per record instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tokens: TokenArgs,
}

fn progress_bar() -> (ProgressBar, ProgressFn) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {bar:20} {pos}/{len} blocks [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let b = bar.clone();
    let f = Box::new(move |p: &Progress| {
        b.set_length(p.blocks as u64);
        b.set_position(p.blocks_done as u64);
        b.set_message(format!(
            "record {} '{}' ({} tokens)",
            p.record + 1,
            p.name,
            p.tokens
        ));
    });
    (bar, f)
}

fn mib(b: Option<usize>) -> String {
    b.map(|v| format!("{:.0} MiB", v as f64 / 1048576.0))
        .unwrap_or_else(|| "n/a".into())
}

fn print_memory(t0: Instant) {
    eprintln!(
        "time {:.1} s; peak memory: heap {}, resident {}",
        t0.elapsed().as_secs_f64(),
        mib(peak_heap_bytes()),
        mib(peak_rss_bytes())
    );
}

pub fn embed_cmd(a: EmbedArgs) -> Result<()> {
    CountingAlloc::mark_installed();
    let t0 = Instant::now();
    let loaded = load_model(&a.model)
        .with_context(|| format!("loading the model in {}", a.model.display()))?;
    let lm = loaded.model.as_ref();
    let opts = EmbedOptions {
        layer: a.layer,
        pool: match a.pool {
            PoolArg::Mean => Pool::Mean,
            PoolArg::Last => Pool::Last,
            PoolArg::None => Pool::None,
        },
        tokenize: a.tokens.options(),
        lean: a.tokens.lean(),
    };
    eprintln!(
        "model: d_model {}, {} blocks, max length {}; embedding layer {} ({:?} pooling)",
        lm.d_model(),
        lm.n_layer(),
        lm.max_len(),
        opts.layer.unwrap_or(lm.n_layer()),
        opts.pool
    );
    let (bar, f) = progress_bar();
    let rep = embed_file(lm, &a.fasta, &a.out, &opts, Some(f));
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
    print_memory(t0);
    Ok(())
}

pub fn score_cmd(a: ScoreArgs) -> Result<()> {
    CountingAlloc::mark_installed();
    let t0 = Instant::now();
    let loaded = load_model(&a.model)
        .with_context(|| format!("loading the model in {}", a.model.display()))?;
    let (bar, f) = progress_bar();
    let scores = score_file(
        loaded.model.as_ref(),
        &a.fasta,
        a.tokens.options(),
        a.tokens.lean(),
        a.per_base.as_deref(),
        Some(f),
    );
    bar.finish_and_clear();
    let scores = scores?;
    if a.json {
        for s in &scores {
            println!("{}", serde_json::to_string(s)?);
        }
    } else {
        println!(
            "| record | tokens | scored | log-likelihood (nats) | bits/base |\n|---|---:|---:|---:|---:|"
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
    print_memory(t0);
    Ok(())
}
