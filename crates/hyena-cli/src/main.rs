//! `hyena`: the command-line tool. Thin by design: parse arguments, build a library config,
//! call the library, print. All numerics, defaults of the models and file formats live in the
//! `hyena` crate; each subcommand is one module of `cmd`, and flags that several share are
//! defined once in `args`.

mod alloc;
mod args;
mod cmd;
mod ranks;
mod ui;

use alloc::CountingAlloc;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

// Counting allocator: lets `hyena bench`, `hyena embed` and `hyena score` report peak heap
// memory.
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Parser, Debug)]
#[command(
    name = "hyena",
    version,
    about = "Hyena-family long-convolution models on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a Hyena language model (default: a small model on the E. coli genome, ~3 min on 2
    /// cores).
    Train(cmd::train::TrainArgs),
    /// Score a trained model on held-out data (the run's validation split, or all of --fasta or
    /// --text): loss, perplexity, bits/token, accuracy, baselines.
    Eval(cmd::eval::EvalArgs),
    /// Sample a continuation of a prompt from a trained model (recurrent decoding for Evo 2 /
    /// StripedHyena).
    Generate(cmd::generate::GenerateArgs),
    /// Hidden states of DNA records (FASTA/FASTQ) as a .npy array, pooled or per base.
    Embed(cmd::embed::EmbedArgs),
    /// Log-likelihood of DNA records (FASTA/FASTQ) under a model, per record and per base.
    Score(cmd::score::ScoreArgs),
    /// Variant-effect scores: log-likelihood of the window centred on each variant (VCF/TSV)
    /// with the alternative allele minus with the reference allele; resumable TSV output.
    Vep(cmd::vep::VepArgs),
    /// Join the outputs of the shards of an embed, score or vep job (run with --shard I/N) into
    /// what one unsharded run writes.
    Merge(cmd::merge::MergeArgs),
    /// Write a released checkpoint (Evo 2: vortex YAML config + NAME.pt or its .partN shards)
    /// as a hyena model directory whose weights later loads memory-map.
    Convert(cmd::convert::ConvertArgs),
    /// Fine-tune a sequence classifier (pooled head on a HyenaDNA backbone) on a labelled
    /// dataset: GenomicBenchmarks layout or CSV; reports test accuracy, writes a checkpoint.
    Finetune(cmd::finetune::FinetuneArgs),
    /// MAD synthetic benchmark of an architecture (`--arch hyena,swiglu,…`), or several side
    /// by side (`compare`): markdown table, results JSON/CSV and a PNG chart.
    Mad(Box<cmd::mad::MadArgs>),
    /// Distil the long convolutions of a trained model into small modal recurrences.
    Distill(cmd::distill::DistillArgs),
    /// Analyses of a trained model (effective state size).
    #[command(subcommand)]
    Analyze(cmd::analyze::AnalyzeWhat),
    /// Sequence-classification data: build the species-of-origin task, fit the k-mer baseline.
    #[command(subcommand)]
    Data(cmd::data::DataWhat),
    /// Time kernels, training, generation, the lean forward and MAD training: a markdown table,
    /// or one JSON object per line with --json.
    #[command(subcommand)]
    Bench(cmd::bench::BenchWhat),
}

fn main() -> std::process::ExitCode {
    let matches = negative_numbers(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let res = match cli.cmd {
        Command::Train(a) => cmd::train::run_cmd(a),
        Command::Eval(a) => cmd::eval::run_cmd(a),
        Command::Generate(a) => cmd::generate::run_cmd(a),
        Command::Embed(a) => cmd::embed::run_cmd(a),
        Command::Score(a) => cmd::score::run_cmd(a),
        Command::Vep(a) => cmd::vep::run_cmd(a),
        Command::Merge(a) => cmd::merge::run_cmd(a),
        Command::Convert(a) => cmd::convert::run_cmd(a),
        Command::Finetune(a) => cmd::finetune::run_cmd(a),
        Command::Mad(a) => cmd::mad::run_cmd(*a),
        Command::Distill(a) => cmd::distill::run_cmd(a),
        Command::Analyze(w) => cmd::analyze::run_cmd(w),
        Command::Data(w) => cmd::data::run_cmd(w),
        Command::Bench(w) => cmd::bench::run_cmd(w),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One write: the lines of several ranks (mpirun) do not interleave within a line.
            let line = format!("error: {}\n", error_line(&e));
            eprint!("{line}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Let every option of every subcommand take a negative number as its value (`--lr -0.01`,
/// `--temperature -1`), so that the value reaches its check and is refused with a message
/// about the value, instead of clap's "unexpected argument '-1' found".
fn negative_numbers(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| a.allow_negative_numbers(true))
        .mut_subcommands(negative_numbers)
}

/// The context chain on one line, without a backtrace; a cause already spelled out by the
/// message before it (library errors quote their I/O cause) is not repeated.
fn error_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if !msg.contains(&c) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&c);
        }
    }
    msg
}
