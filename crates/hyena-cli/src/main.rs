//! `hyena`: the command-line tool. Thin by design: parse arguments, build a library config,
//! call the library, print. All numerics live in the `hyena` crate.

mod alloc;
mod analyze_cmd;
mod data_cmd;
mod distill_cmd;
mod dna_cmd;
mod finetune_cmd;
mod mad_cmd;
mod train_cmd;

use std::io::Write;

use alloc::{Counted, CountingAlloc};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use hyena::apps::bench::{run_one, run_train, BenchOp, BenchRecord, BenchSpec, TrainShape};

// Counting allocator: lets `hyena bench` report peak heap memory per measurement.
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
    /// Train a Hyena language model (default: a small model on the E. coli genome, ~5 min).
    Train(train_cmd::TrainArgs),
    /// Score a trained model on held-out data: loss, perplexity, bits/token, accuracy, baselines.
    Eval(train_cmd::EvalArgs),
    /// Sample a continuation of a prompt from a trained model.
    Generate(train_cmd::GenerateArgs),
    /// Hidden states of DNA records (FASTA/FASTQ) as a .npy array, pooled or per base.
    Embed(dna_cmd::EmbedArgs),
    /// Log-likelihood of DNA records (FASTA/FASTQ) under a model, per record and per base.
    Score(dna_cmd::ScoreArgs),
    /// Fine-tune a sequence classifier (pooled head on a HyenaDNA backbone) on a labelled
    /// dataset: GenomicBenchmarks layout or CSV; reports test accuracy, writes a checkpoint.
    Finetune(finetune_cmd::FinetuneArgs),
    /// MAD synthetic benchmark of an architecture (`--arch hyena,swiglu,…`), or several side
    /// by side (`compare`): markdown table, results JSON/CSV and a PNG chart.
    Mad(mad_cmd::MadArgs),
    /// Distil the long convolutions of a trained model into small modal recurrences.
    Distill(distill_cmd::DistillArgs),
    /// Analyses of a trained model (effective state size).
    #[command(subcommand)]
    Analyze(analyze_cmd::AnalyzeWhat),
    /// Sequence-classification data: build the species-of-origin task, fit the k-mer baseline.
    #[command(subcommand)]
    Data(data_cmd::DataWhat),
    /// Time kernels: forward and forward+backward, median ms, GFLOP/s, peak memory.
    Bench(BenchArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BenchWhat {
    /// FFT long convolution with skip, input [B, D, L].
    Conv,
    /// The Hyena operator (in_proj, short filter, implicit filter, gated long convs, out_proj).
    Operator,
    /// Full LM training steps (HyenaDNA-tiny and -small shapes): tokens/s and peak memory.
    Train,
    /// Generation: per-token latency and memory per sequence, conv mode vs recurrent mode.
    Generate,
    /// `hyena embed`'s lean forward of a HyenaDNA-shaped model (random weights, default the
    /// large shape: d_model 256, 8 layers) on one sequence per length: time, peak memory.
    Embed,
    /// MAD training throughput of zoo architectures (`--arch`, repeatable; width 128 unless
    /// `--dim`): tokens/s and matmul GFLOP/s beside the machine's sgemm rate.
    Mad,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// What to time.
    what: BenchWhat,
    /// Comma-separated sequence lengths (any positive integers).
    #[arg(long, value_delimiter = ',', default_value = "1024,4096,16384,65536")]
    lengths: Vec<usize>,
    /// Batch size B [default: 4; mad: 16, the quick MAD protocol's batch].
    #[arg(long)]
    batch: Option<usize>,
    /// Channels / model width D [default: 256; generate: 128, the `hyena train` model].
    #[arg(long)]
    dim: Option<usize>,
    /// Hyena order N (operator only).
    #[arg(long, default_value_t = 2)]
    order: usize,
    /// Timed repetitions per measurement (default: adaptive, ~1 s each, 3 to 20).
    #[arg(long)]
    reps: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// `train` only: which shapes (tiny = d128 x 2 layers, L=1024, batch 8; small = d256 x 4
    /// layers, L=32768, batch 1).
    #[arg(long, value_delimiter = ',', default_value = "tiny,small")]
    shapes: Vec<String>,
    /// `generate` only: context lengths.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1024,4096,8192,16384,65536"
    )]
    contexts: Vec<usize>,
    /// `generate` and `embed`: blocks of the model [default: generate 2, embed 8].
    #[arg(long)]
    layers: Option<usize>,
    /// `generate` only: modes per modal filter (real order up to twice this).
    #[arg(long, default_value_t = 8)]
    modes: usize,
    /// `embed` only: residual stream storage (see `hyena embed --help`).
    #[arg(long, value_enum, default_value_t = dna_cmd::ResidualArg::Auto)]
    residual: dna_cmd::ResidualArg,
    /// `mad` only: architectures (layer strings), repeatable
    /// [default: hyena,swiglu,hyena,swiglu].
    #[arg(long)]
    arch: Vec<String>,
    /// `mad` only: the task whose baseline shape is trained.
    #[arg(long, default_value = "in-context-recall")]
    task: String,
    /// `mad` only: training steps of `--batch` sequences timed.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// `mad` only: instead of a few steps, time the whole quick protocol (`hyena mad --quick`:
    /// the six baseline tasks, early stop included) per architecture, task by task.
    #[arg(long)]
    suite: bool,
    /// `generate` only: where to draw latency against context.
    #[arg(long, default_value = "bench-generate.png")]
    png: std::path::PathBuf,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Command::Train(a) => train_cmd::train(a),
        Command::Eval(a) => train_cmd::eval_cmd(a),
        Command::Generate(a) => train_cmd::generate_cmd(a),
        Command::Embed(a) => dna_cmd::embed_cmd(a),
        Command::Score(a) => dna_cmd::score_cmd(a),
        Command::Finetune(a) => finetune_cmd::finetune_cmd(a),
        Command::Mad(a) => mad_cmd::mad_cmd(a),
        Command::Distill(a) => distill_cmd::distill_cmd(a),
        Command::Analyze(w) => analyze_cmd::analyze_cmd(w),
        Command::Data(w) => data_cmd::data_cmd(w),
        Command::Bench(a) => bench(a),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The context chain on one line, without a backtrace; a cause already spelled out
            // by the message before it (library errors quote their I/O cause) is not repeated.
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
            eprintln!("error: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench(a: BenchArgs) -> Result<()> {
    CountingAlloc::mark_installed();
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("configuring the thread pool")?;
    }
    if a.lengths.is_empty() || a.lengths.contains(&0) {
        bail!("--lengths must list positive integers, e.g. --lengths 1024,4096");
    }
    if a.batch == Some(0) || a.dim == Some(0) {
        bail!(
            "--batch and --dim must be >= 1 (got --batch {:?} --dim {:?})",
            a.batch,
            a.dim
        );
    }
    let op = match a.what {
        BenchWhat::Conv => BenchOp::Conv,
        BenchWhat::Operator => BenchOp::Operator,
        BenchWhat::Train => return bench_train(&a),
        BenchWhat::Generate => return bench_generate(&a),
        BenchWhat::Embed => return bench_embed(&a),
        BenchWhat::Mad => return bench_mad(&a),
    };
    let dim = a.dim.unwrap_or(256);
    if op == BenchOp::Operator {
        // Fail before printing anything if the operator config is invalid (e.g. --order 1).
        hyena::apps::bench::bench_operator_config(dim, 1, a.order).validate()?;
    }
    let batch = a.batch.unwrap_or(4);
    let spec = BenchSpec {
        op,
        batch,
        dim,
        lengths: a.lengths.clone(),
        order: a.order,
        reps: a.reps,
    };
    let mut out = std::io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "hyena bench {}: B={} D={}{} threads={}\n",
            op.name(),
            batch,
            dim,
            if op == BenchOp::Operator {
                format!(" order={}", a.order)
            } else {
                String::new()
            },
            rayon::current_num_threads()
        )?;
        writeln!(
            out,
            "| L | fwd ms | fwd GFLOP/s | fwd+bwd ms | fwd+bwd GFLOP/s | peak MiB | reps |"
        )?;
        writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|")?;
        out.flush()?;
    }
    for &l in &spec.lengths {
        eprint!("measuring {} L={l} ...\r", op.name());
        let r: BenchRecord = run_one(&spec, l, &Counted)
            .with_context(|| format!("benchmark {} at L={l}", op.name()))?;
        eprint!("{:40}\r", "");
        if a.json {
            writeln!(out, "{}", serde_json::to_string(&r)?)?;
        } else {
            let peak = r.peak_mib.map_or("-".to_string(), |p| format!("{p:.1}"));
            writeln!(
                out,
                "| {} | {:.2} | {:.1} | {:.2} | {:.1} | {} | {} |",
                r.L, r.fwd_ms, r.fwd_gflops, r.fwdbwd_ms, r.fwdbwd_gflops, peak, r.reps
            )?;
        }
        out.flush()?;
    }
    Ok(())
}

fn bench_embed(a: &BenchArgs) -> Result<()> {
    let (d, layers) = (a.dim.unwrap_or(256), a.layers.unwrap_or(8));
    if layers == 0 {
        bail!("--layers must be >= 1");
    }
    let mut out = std::io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "hyena bench embed: HyenaDNA shape D={d} layers={layers} (d_inner {}), random weights, \
             threads={}\n",
            4 * d,
            rayon::current_num_threads()
        )?;
        writeln!(
            out,
            "| L | seconds | bases/s | residual | model MiB | peak heap MiB | peak resident MiB |"
        )?;
        writeln!(out, "|---:|---:|---:|---|---:|---:|---:|")?;
        out.flush()?;
    }
    let lean = hyena::layers::lean::LeanOptions {
        chunk: 2048,
        residual: a.residual.store(),
    };
    let recs = hyena::apps::bench::run_embed(&a.lengths, d, layers, lean, &Counted, &mut |l| {
        eprint!("measuring embed at L={l} ...\r")
    })
    .context("embedding benchmark")?;
    eprint!("{:50}\r", "");
    let rss = alloc::peak_rss_bytes().map(|b| b as f64 / 1048576.0);
    for r in &recs {
        if a.json {
            let mut v = serde_json::to_value(r)?;
            v["peak_rss_mib_process"] = serde_json::json!(rss);
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "| {} | {:.2} | {:.0} | {} | {:.1} | {} | {} |",
                r.length,
                r.seconds,
                r.bases_per_s,
                if r.residual_packed { "packed24" } else { "f32" },
                r.model_mib,
                r.peak_heap_mib.map_or("-".into(), |m| format!("{m:.1}")),
                rss.map_or("-".into(), |m| format!("{m:.1}"))
            )?;
        }
    }
    if !a.json {
        writeln!(
            out,
            "\n(peak resident is the whole process's high-water mark, over all lengths)"
        )?;
    }
    Ok(())
}

fn bench_mad(a: &BenchArgs) -> Result<()> {
    use hyena::models::zoo::{parse_layers, ArchConfig};
    let specs = if a.arch.is_empty() {
        vec!["hyena,swiglu,hyena,swiglu".to_string()]
    } else {
        a.arch.clone()
    };
    let batch = a.batch.unwrap_or(hyena::train::mad::QUICK_BATCH);
    let arch_of = |spec: &str| -> Result<ArchConfig> {
        Ok(ArchConfig {
            layers: parse_layers(spec)?,
            d_model: a.dim.unwrap_or(128),
            ..ArchConfig::default()
        })
    };
    if a.suite {
        return bench_mad_suite(a, &specs, batch, &arch_of);
    }
    let task = hyena::data::mad::MadTask::from_name(&a.task)?;
    let mut out = std::io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "hyena bench mad: {} baseline shape, batch {batch}, {} steps, threads={}\n",
            task.name(),
            a.steps,
            rayon::current_num_threads()
        )?;
        writeln!(
            out,
            "| architecture | params | step ms | tokens/s | matmul GFLOP/s | sgemm GFLOP/s | share |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|---:|")?;
    }
    for spec in &specs {
        let arch = arch_of(spec)?;
        eprint!("measuring {spec} ...\r");
        let r = hyena::apps::bench::run_mad_bench(spec, &arch, task, a.steps.max(1), batch)
            .with_context(|| format!("MAD benchmark of {spec}"))?;
        eprint!("{:60}\r", "");
        if a.json {
            writeln!(out, "{}", serde_json::to_string(&r)?)?;
        } else {
            writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0}% |",
                r.arch,
                r.params,
                r.step_ms,
                r.tokens_per_s,
                r.matmul_gflops,
                r.sgemm_gflops,
                100.0 * r.matmul_gflops / r.sgemm_gflops
            )?;
        }
        out.flush()?;
    }
    Ok(())
}

/// `hyena bench mad --suite`: the quick protocol end to end, timed task by task (the issue's
/// goal: the six baseline tasks of one 4-layer width-128 architecture in under 15 minutes).
fn bench_mad_suite(
    a: &BenchArgs,
    specs: &[String],
    batch: usize,
    arch_of: &dyn Fn(&str) -> Result<hyena::models::zoo::ArchConfig>,
) -> Result<()> {
    use hyena::data::mad::MadTask;
    use hyena::train::mad::{run_mad, MadEvent, MadProtocol};
    let mut proto = MadProtocol::quick();
    proto.train.batch = batch;
    let mut out = std::io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "hyena bench mad --suite: the quick protocol (baseline settings, lr 1e-3, wd 0, batch {batch}, ~{}M tokens per task, early stop at {}), threads={}\n",
            proto.token_budget.unwrap_or(0) / 1_000_000,
            proto.train.stop_at,
            rayon::current_num_threads()
        )?;
        writeln!(
            out,
            "| architecture | task | epochs | train tokens | seconds | tokens/s | accuracy |"
        )?;
        writeln!(out, "|---|---|---:|---:|---:|---:|---:|")?;
        out.flush()?;
    }
    for spec in specs {
        let arch = arch_of(spec)?;
        let report = run_mad(spec, &arch, &MadTask::all(), &proto, &[], &mut |e| {
            if let MadEvent::RunStart { task, epochs, .. } = e {
                eprint!(
                    "{spec}: {} ({epochs} epochs at most) ...{:20}\r",
                    task.name(),
                    ""
                );
            }
        })
        .with_context(|| format!("quick MAD suite of {spec}"))?;
        eprint!("{:80}\r", "");
        if a.json {
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
            continue;
        }
        for t in &report.tasks {
            let (epochs, tokens) = t
                .settings
                .iter()
                .flat_map(|s| &s.runs)
                .fold((0, 0), |(e, n), r| (e + r.epochs_run, n + r.train_tokens));
            writeln!(
                out,
                "| {spec} | {} | {epochs} | {tokens} | {:.0} | {:.0} | {:.4} |",
                t.task.name(),
                t.seconds,
                tokens as f64 / t.seconds.max(1e-9),
                t.score
            )?;
        }
        writeln!(
            out,
            "| {spec} | **all six** | | | **{:.0}** ({:.1} min) | | **{:.4}** |",
            report.seconds,
            report.seconds / 60.0,
            report.overall
        )?;
        out.flush()?;
    }
    Ok(())
}

fn bench_generate(a: &BenchArgs) -> Result<()> {
    let layers = a.layers.unwrap_or(2);
    if a.contexts.is_empty() || a.contexts.contains(&0) || layers == 0 || a.modes == 0 {
        bail!("--contexts must list positive integers, and --layers and --modes must be >= 1");
    }
    let d = a.dim.unwrap_or(128);
    let mut out = std::io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "hyena bench generate: D={d} layers={} modes={} threads={}\n",
            layers,
            a.modes,
            rayon::current_num_threads()
        )?;
        writeln!(out, "| context | conv ms/token | recurrent ms/token | speedup | conv MiB/sequence | recurrent KiB/sequence | prefill ms |")?;
        writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|")?;
        out.flush()?;
    }
    let recs =
        hyena::apps::bench::run_generate(&a.contexts, d, layers, a.modes, &Counted, &mut |c| {
            eprint!("measuring generate at context {c} ...\r")
        })
        .context("generation benchmark")?;
    eprint!("{:50}\r", "");
    for r in &recs {
        if a.json {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        } else {
            writeln!(
                out,
                "| {} | {:.3} | {:.4} | {:.0}x | {} | {:.1} | {:.1} |",
                r.context,
                r.conv_ms_per_token,
                r.recurrent_ms_per_token,
                r.speedup,
                r.conv_mib_per_sequence
                    .map_or("-".into(), |m| format!("{m:.1}")),
                r.recurrent_kib_per_sequence,
                r.prefill_ms
            )?;
        }
    }
    let series = vec![
        (
            "conv mode (forward over the context)".to_string(),
            recs.iter()
                .map(|r| (r.context as f64, r.conv_ms_per_token))
                .collect(),
        ),
        (
            format!("recurrent mode ({} modes per filter)", a.modes),
            recs.iter()
                .map(|r| (r.context as f64, r.recurrent_ms_per_token))
                .collect(),
        ),
    ];
    hyena::plot::log_log_png(
        &a.png,
        &format!("per-token generation latency, D={d}, {} layers", layers),
        "context length (tokens)",
        "ms per token",
        &series,
    )?;
    if !a.json {
        writeln!(out, "\nplot: {}", a.png.display())?;
    }
    Ok(())
}

fn bench_train(a: &BenchArgs) -> Result<()> {
    let shapes = a
        .shapes
        .iter()
        .map(|s| TrainShape::parse(s))
        .collect::<hyena::Result<Vec<_>>>()?;
    let mut out = std::io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "hyena bench train: threads={}\n",
            rayon::current_num_threads()
        )?;
        writeln!(out, "| shape | B | L | D | layers | step ms | tokens/s | peak MiB | activation MiB | steps |")?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        out.flush()?;
    }
    for sh in shapes {
        eprint!("measuring train {} ...\r", sh.name());
        let r = run_train(sh, a.reps, &Counted)
            .with_context(|| format!("training benchmark {}", sh.name()))?;
        eprint!("{:40}\r", "");
        if a.json {
            writeln!(out, "{}", serde_json::to_string(&r)?)?;
        } else {
            let f = |v: Option<f64>| v.map_or("-".to_string(), |p| format!("{p:.1}"));
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.1} | {:.0} | {} | {} | {} |",
                r.shape,
                r.B,
                r.L,
                r.D,
                r.n_layer,
                r.step_ms,
                r.tokens_per_s,
                f(r.peak_mib),
                f(r.activation_mib),
                r.steps
            )?;
        }
        out.flush()?;
    }
    Ok(())
}
