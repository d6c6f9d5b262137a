//! Flags that several subcommands share, each defined once as a `clap::Args` struct and taken
//! into a subcommand's arguments with `#[command(flatten)]`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::ValueEnum;
use hyena::apps::dna::TokenizeOptions;
use hyena::layers::lean::{LeanOptions, ResidualStore};
use hyena::models::{Pool, Precision};

/// `--model DIR`: the model a command reads.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArg {
    /// Model directory: a hyena run (from `hyena train`, `hyena distill` or `hyena finetune`),
    /// a released HyenaDNA checkpoint (HF `config.json` with `model.safetensors` or
    /// `pytorch_model.bin`, or Lightning `weights.ckpt`), released Evo 2 files (a vortex YAML
    /// config beside `NAME.pt` or `NAME.pt.part0…N`; without the YAML, NAME must be a released
    /// model such as evo2_7b), or what `hyena convert` made of them.
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

/// `--precision`: the arithmetic of the forward's matrix products.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct PrecisionArg {
    /// Matrix products in f32 (exact: bf16 weights widened; the reference path), bf16 (bf16
    /// inputs, f32 sums; Evo 2 / StripedHyena models only; norms, softmax, convolutions stay
    /// f32), or auto (bf16 where the CPU has AVX512-BF16 and the model a bf16 path, else f32).
    #[arg(long, value_enum, default_value_t = PrecisionChoice::F32)]
    pub precision: PrecisionChoice,
    /// Precision of the attention key/value cache (Evo 2 / StripedHyena): auto follows
    /// --precision; bf16 halves the cache (2·L·H·hd·2 bytes per attention block, 80 KiB per base
    /// for evo2_7b) and runs attention's two products in bf16; f32 keeps both exact.
    #[arg(long, value_enum, default_value_t = KvChoice::Auto)]
    pub kv: KvChoice,
}

/// `--kv` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvChoice {
    Auto,
    F32,
    Bf16,
}

/// `--precision` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecisionChoice {
    F32,
    Bf16,
    Auto,
}

impl PrecisionArg {
    /// Set the model's precision; `auto` falls back to f32 where bf16 is not available.
    pub fn apply(&self, lm: &mut dyn hyena::models::LanguageModel) -> Result<Precision> {
        use hyena::models::striped::KvPrecision;
        lm.set_kv_cache(match self.kv {
            KvChoice::Auto => None,
            KvChoice::F32 => Some(KvPrecision::F32),
            KvChoice::Bf16 => Some(KvPrecision::Bf16),
        })?;
        Ok(match self.precision {
            PrecisionChoice::F32 => {
                lm.set_precision(Precision::F32)?;
                Precision::F32
            }
            PrecisionChoice::Bf16 => {
                lm.set_precision(Precision::Bf16)?;
                Precision::Bf16
            }
            PrecisionChoice::Auto => {
                let p = Precision::auto();
                if p == Precision::Bf16 && lm.set_precision(p).is_ok() {
                    p
                } else {
                    lm.set_precision(Precision::F32)?;
                    Precision::F32
                }
            }
        })
    }
}

/// Settings of the lean (inference-only) forward (`hyena embed`, `hyena score`).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct LeanArgs {
    /// Positions per chunk of the lean forward (memory/speed trade-off; results do not change)
    /// [default: 2048; 1024 for Evo 2 models].
    #[arg(long, value_parser = at_least_one)]
    pub chunk: Option<usize>,
    #[command(flatten)]
    pub residual: ResidualFlag,
}

impl LeanArgs {
    /// The options for model `lm` (its own default chunk unless --chunk is given).
    pub fn options(&self, lm: &dyn hyena::models::LanguageModel) -> LeanOptions {
        LeanOptions {
            chunk: self
                .chunk
                .or(lm.default_chunk())
                .unwrap_or(LeanOptions::default().chunk),
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
    #[arg(long, value_parser = at_least_one)]
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

/// `--force`: replace an existing output (see [`check_output`]).
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct ForceFlag {
    /// Replace an existing output file, or write into a non-empty output directory (its files
    /// of the same names are replaced). Never allowed into the model directory or over a file
    /// the command reads.
    #[arg(long)]
    pub force: bool,
}

/// Whether an output is one file or a directory of files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutKind {
    File,
    Dir,
}

/// `path` made absolute with its symbolic links resolved, as far as it exists: the longest
/// existing ancestor is canonicalized and the rest appended. So an output that does not exist
/// yet still compares with the directories a command reads.
fn resolved(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let mut rest = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            return rest.iter().rev().fold(c, |p, n| p.join(n));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

/// The directory a command with `--out` and `--resume [DIR]` works in, and whether it
/// continues a run there: `--resume` alone continues `--out` (or `default`), `--resume DIR`
/// continues DIR, which must exist; an explicit `--out` naming another directory beside it is
/// an error (a resumed run writes into the directory it continues).
pub fn resume_dir(
    resume: &Option<Option<PathBuf>>,
    out: &Option<PathBuf>,
    default: &str,
) -> Result<(PathBuf, bool)> {
    let out_or_default = || out.clone().unwrap_or_else(|| PathBuf::from(default));
    match resume {
        None => Ok((out_or_default(), false)),
        Some(None) => Ok((out_or_default(), true)),
        Some(Some(dir)) => {
            if !dir.is_dir() {
                anyhow::bail!(
                    "--resume {}: no such directory to continue (to continue the run in --out, \
                     give --resume without a value, after any positional arguments)",
                    dir.display()
                );
            }
            match out {
                Some(o) if resolved(o) != resolved(dir) => anyhow::bail!(
                    "--resume {} and --out {} name different directories: a resumed run writes \
                     into the directory it continues. Pass only --resume {} (or the same \
                     directory to both)",
                    dir.display(),
                    o.display(),
                    dir.display()
                ),
                _ => Ok((dir.clone(), true)),
            }
        }
    }
}

/// Check an output before anything is loaded or written: `flag` (e.g. `--out`) names `path`.
/// Refused: an existing file (an existing non-empty directory for [`OutKind::Dir`]) unless
/// `force`; and, even with `force`, a path that is one of `inputs` or lies inside an input
/// directory (a model directory, the data being read), whose files the command is reading.
/// A file output's directory must exist.
pub fn check_output(
    flag: &str,
    path: &Path,
    kind: OutKind,
    force: bool,
    inputs: &[&Path],
) -> Result<()> {
    let out = resolved(path);
    for input in inputs {
        let inp = resolved(input);
        if out == inp || (inp.is_dir() && out.starts_with(&inp)) {
            anyhow::bail!(
                "{flag} {} would {} {}, which this command reads; choose another {flag} \
                 (--force does not allow this)",
                path.display(),
                if out == inp { "replace" } else { "write into" },
                input.display()
            );
        }
    }
    match kind {
        OutKind::File => {
            if path.is_dir() {
                anyhow::bail!(
                    "{flag} {} is a directory; give a file name (e.g. {})",
                    path.display(),
                    path.join("out").display()
                );
            }
            if path.exists() && !force {
                anyhow::bail!(
                    "{flag} {} already exists; pass --force to replace it, or choose another \
                     {flag}",
                    path.display()
                );
            }
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            if let Some(dir) = parent {
                if !dir.is_dir() {
                    anyhow::bail!(
                        "{flag} {}: the directory {} does not exist; create it first or choose \
                         another {flag}",
                        path.display(),
                        dir.display()
                    );
                }
            }
        }
        OutKind::Dir => {
            if path.exists() && !path.is_dir() {
                anyhow::bail!(
                    "{flag} {} is a file, not a directory; choose another {flag}",
                    path.display()
                );
            }
            let non_empty = std::fs::read_dir(path)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false);
            if non_empty && !force {
                anyhow::bail!(
                    "{flag} {} already exists and is not empty; pass --force to replace its \
                     files, or choose another {flag} (nothing was written)",
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// Check that each input file or directory exists, before a model is loaded or data read.
pub fn check_inputs(inputs: &[(&str, &Path)]) -> Result<()> {
    for (flag, p) in inputs {
        if let Err(e) = std::fs::metadata(p) {
            anyhow::bail!("{flag} {}: {e}", p.display());
        }
    }
    Ok(())
}

/// An output directory a command may create: when the command fails, the directory is removed
/// again if this command created it and it is still empty, so a failure leaves nothing behind.
pub struct OutDir {
    path: PathBuf,
    existed: bool,
    done: bool,
}

impl OutDir {
    /// Note whether `path` exists now (before the command creates anything).
    pub fn new(path: &Path) -> Self {
        OutDir {
            path: path.to_path_buf(),
            existed: path.exists(),
            done: false,
        }
    }

    /// The command succeeded: keep the directory.
    pub fn keep(mut self) {
        self.done = true;
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if !self.done && !self.existed {
            // `remove_dir` removes only an empty directory: written results stay.
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// Parse a finite number > 0 (learning rates, temperatures with no greedy meaning): clap
/// reports the flag, the value and this message.
pub fn positive_f32(s: &str) -> std::result::Result<f32, String> {
    let v: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("must be a finite number > 0, got {v}"));
    }
    Ok(v)
}

/// Parse a finite number >= 0.
pub fn non_negative_f32(s: &str) -> std::result::Result<f32, String> {
    let v: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("must be a finite number >= 0, got {v}"));
    }
    Ok(v)
}

/// Parse a finite number > 0 (f64).
pub fn positive_f64(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("must be a finite number > 0, got {v}"));
    }
    Ok(v)
}

/// Parse an integer >= 1 (sizes, counts).
pub fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    let v: i128 = s
        .parse()
        .map_err(|e| format!("{e} (an integer is expected)"))?;
    if v < 1 {
        return Err(format!("must be >= 1, got {v}"));
    }
    usize::try_from(v).map_err(|_| format!("{v} is too large"))
}

/// `--shard I/N`: run one of N deterministic slices of the job (`hyena merge` joins them).
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct ShardArg {
    /// Run shard I of N (1 ≤ I ≤ N) of the job: the items are split into N balanced, contiguous
    /// slices from the inputs alone, so N processes (Slurm array tasks, Snakemake jobs) agree
    /// on them. Writes OUT and a manifest OUT.shard.json; a rerun of a finished shard does
    /// nothing, an interrupted one resumes; `hyena merge` joins the shards' outputs into what
    /// one unsharded run writes. [default: no sharding]
    #[arg(long, value_name = "I/N")]
    pub shard: Option<hyena::apps::shard::Shard>,
}

/// The output checks of a sharded command's `out`: the usual ones, except that an output with
/// a manifest beside it is the shard's own (finished, to be skipped, or to be resumed; the
/// manifest decides) rather than a file to protect.
/// `file` is one of the outputs of the shard writing `out`.
pub fn check_shard_output(
    flag: &str,
    file: &Path,
    out: &Path,
    force: bool,
    inputs: &[&Path],
) -> Result<()> {
    let own = hyena::apps::shard::manifest_path(out).exists();
    check_output(flag, file, OutKind::File, force || own, inputs)
}

/// Start a shard: `None` (after saying so) when its manifest says it finished this same job;
/// else its manifest, `done` telling how many items an interrupted run already wrote.
pub fn start_shard(
    out: &Path,
    fresh: hyena::apps::shard::Manifest,
    force: bool,
) -> Result<Option<hyena::apps::shard::Manifest>> {
    use hyena::apps::shard::{begin, manifest_path, Start};
    let shard = fresh.shard;
    let (unit, first, end, total) = (fresh.unit.clone(), fresh.first, fresh.end, fresh.total);
    match begin(out, fresh, force)? {
        Start::Finished(m) => {
            println!(
                "shard {shard} already finished ({} {unit}; manifest {}): nothing to do",
                m.done,
                manifest_path(out).display()
            );
            Ok(None)
        }
        Start::Run(m) => {
            eprintln!(
                "shard {shard}: {} {unit} ({}..{} of {total})",
                end - first,
                first + 1,
                end
            );
            Ok(Some(m))
        }
    }
}
