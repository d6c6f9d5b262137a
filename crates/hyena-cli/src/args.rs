//! Flags that several subcommands share, each defined once as a `clap::Args` struct and taken
//! into a subcommand's arguments with `#[command(flatten)]`.

use std::path::PathBuf;

use anyhow::{Context, Result};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::ValueEnum;
use hyena::apps::dna::TokenizeOptions;
use hyena::layers::lean::{LeanOptions, ResidualStore};
use hyena::models::Pool;

/// `--model DIR`: the model a command reads.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArg {
    /// Model directory: a hyena run (from `hyena train`, `hyena distill` or `hyena finetune`),
    /// or a released HyenaDNA checkpoint (HF `config.json` with `model.safetensors` or
    /// `pytorch_model.bin`, or Lightning `weights.ckpt`).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
}

/// `--fasta FILE…` / `--text FILE…`: the data files of `hyena train` and `hyena eval` (each
/// states its default of `--fasta` with [`DataFiles::fasta_default`]).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DataFiles {
    /// FASTA/FASTQ files (plain, gzip or xz).
    #[arg(long, num_args = 1..)]
    pub fasta: Vec<PathBuf>,
    /// Plain-text files, instead of --fasta (a new `hyena train` run tokenizes them as bytes).
    #[arg(long, num_args = 1..)]
    pub text: Vec<PathBuf>,
}

impl DataFiles {
    /// `--fasta`'s help with `default` (what is read without files) as its `[default: …]`; for
    /// `#[command(mut_arg("fasta", DataFiles::fasta_default("…")))]`.
    pub fn fasta_default(default: &'static str) -> impl FnOnce(clap::Arg) -> clap::Arg {
        move |a| {
            a.help(format!(
                "FASTA/FASTQ files (plain, gzip or xz) [default: {default}]"
            ))
        }
    }

    /// Whether no file was given.
    pub fn is_empty(&self) -> bool {
        self.fasta.is_empty() && self.text.is_empty()
    }
}

/// `--fasta FILE`: the DNA records of `hyena embed` and `hyena score`.
#[derive(clap::Args, Debug, Clone)]
pub struct RecordsFile {
    /// FASTA or FASTQ file (plain, gzip or xz), read one record at a time.
    #[arg(long)]
    pub fasta: PathBuf,
}

/// How the bases of a DNA record become token ids (`hyena embed`, `hyena score`).
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
}

impl TokenArgs {
    pub fn options(&self) -> TokenizeOptions {
        TokenizeOptions {
            uppercase: self.uppercase,
            unknown_as_unk: self.unknown_as_unk,
            add_sep: self.special_tokens,
        }
    }
}

/// Settings of the lean (inference-only) forward (`hyena embed`, `hyena score`).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct LeanArgs {
    /// Positions per chunk of the lean forward (memory/speed trade-off; results do not change).
    #[arg(long, default_value_t = LeanOptions::default().chunk)]
    pub chunk: usize,
    #[command(flatten)]
    pub residual: ResidualFlag,
}

impl LeanArgs {
    pub fn options(&self) -> LeanOptions {
        LeanOptions {
            chunk: self.chunk,
            residual: self.residual.residual.store(),
        }
    }
}

/// `--residual`: how the lean forward holds the residual stream (`hyena embed`, `hyena score`,
/// `hyena bench embed`).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct ResidualFlag {
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

/// `--pool`: how the hidden states of a sequence are reduced (`hyena embed`, and without
/// `none`, `hyena finetune`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolArg {
    /// Mean over positions: one vector per sequence.
    Mean,
    /// The last position: one vector per sequence.
    Last,
    /// Every position: one vector per base.
    None,
}

impl PoolArg {
    pub fn pool(self) -> Pool {
        match self {
            PoolArg::Mean => Pool::Mean,
            PoolArg::Last => Pool::Last,
            PoolArg::None => Pool::None,
        }
    }

    /// A parser of `--pool` that accepts only the values in `allowed`.
    pub fn parser(allowed: &'static [PoolArg]) -> impl TypedValueParser<Value = PoolArg> {
        PossibleValuesParser::new(allowed.iter().filter_map(|p| p.to_possible_value()))
            .map(|s| PoolArg::from_str(&s, false).expect("a value the parser accepted"))
    }
}

/// `--threads`: the size of the worker pool.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct ThreadsArg {
    /// Worker threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ThreadsArg {
    /// Size the global worker pool (left at its default without `--threads`).
    pub fn init_pool(&self) -> Result<()> {
        if let Some(t) = self.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build_global()
                .context("configuring the thread pool")?;
        }
        Ok(())
    }
}

/// `--json`: machine-readable output.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct JsonFlag {
    /// Print the results as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}
