//! `hyena bench conv|operator|train|generate|embed|mad|layers|products`: time kernels, training
//! steps, generation, the lean forward, MAD training, single zoo layers and the matrix products
//! of the StripedHyena forward, and print a markdown table or JSON lines.
//! Each kind has only its own flags; the measurements are `hyena::apps::bench`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use hyena::apps::bench::{run_one, run_train, BenchOp, BenchRecord, BenchSpec, TrainShape};
use hyena::layers::lean::LeanOptions;
use hyena::models::zoo::{parse_layers, ArchConfig};
use hyena::train::run::RunConfig;

use crate::alloc::{self, Counted, CountingAlloc};
use crate::args::{check_output, ForceFlag, JsonFlag, OutKind, ResidualFlag, ThreadsArg};

#[derive(clap::Subcommand, Debug)]
pub enum BenchWhat {
    /// FFT long convolution with skip, input [B, D, L]: forward and forward+backward, median
    /// ms, GFLOP/s, peak memory.
    Conv(KernelArgs),
    /// The Hyena operator (in_proj, short filter, implicit filter, gated long convs,
    /// out_proj): forward and forward+backward, median ms, GFLOP/s, peak memory.
    Operator(OperatorArgs),
    /// Full LM training steps (HyenaDNA-tiny and -small shapes): tokens/s and peak memory.
    Train(TrainArgs),
    /// Generation: per-token latency and memory per sequence, conv mode vs recurrent mode.
    Generate(GenerateArgs),
    /// `hyena embed`'s lean forward of a HyenaDNA-shaped model (random weights, default the
    /// large shape: d_model 256, 8 layers) on one sequence per length: time, peak memory.
    Embed(EmbedArgs),
    /// MAD training throughput of zoo architectures (`--arch`, repeatable): tokens/s and
    /// matmul GFLOP/s beside the machine's sgemm rate.
    Mad(MadArgs),
    /// Forward and backward of single zoo layers (`hyena mad --list-layers` names them) on a
    /// [B, L, D] input: median ms over `--reps` rounds after two warm-up rounds.
    Layers(LayersArgs),
    /// The matrix products of the StripedHyena (Evo 2) forward with bf16-stored weights, in f32
    /// arithmetic (weights widened) and in bf16 arithmetic (f32 accumulation): median GFLOP/s.
    Products(ProductsArgs),
}

#[derive(clap::Args, Debug)]
pub struct ProductsArgs {
    /// Rows M of the activations (positions per chunk of the forward).
    #[arg(long, default_value_t = 1024)]
    pub m: usize,
    /// Inner dimension K (the model width; 4096 for the 7B shape).
    #[arg(long, default_value_t = 4096)]
    pub k: usize,
    /// Output columns N (the MLP's inner width; 11264 for evo2_7b).
    #[arg(long, default_value_t = 11264)]
    pub n: usize,
    /// Timed products per precision (median reported), after one warm-up.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    #[command(flatten)]
    pub common: BenchCommon,
}

/// Flags of every benchmark.
#[derive(clap::Args, Debug)]
pub struct BenchCommon {
    #[command(flatten)]
    pub threads: ThreadsArg,
    #[command(flatten)]
    pub json: JsonFlag,
}

impl BenchCommon {
    /// Count allocations (peak memory) and size the thread pool.
    fn init(&self) -> Result<()> {
        CountingAlloc::mark_installed();
        self.threads.init_pool()
    }
}

/// `--reps` (conv, operator, train).
#[derive(clap::Args, Debug)]
pub struct RepsArg {
    /// Timed repetitions per measurement [default: adaptive, ~1 s each, 3 to 20].
    #[arg(long)]
    pub reps: Option<usize>,
}

/// `--lengths` (conv, operator, embed).
#[derive(clap::Args, Debug)]
pub struct LengthsArg {
    /// Comma-separated sequence lengths (any positive integers).
    #[arg(long, value_delimiter = ',', default_value = "1024,4096,16384,65536")]
    pub lengths: Vec<usize>,
}

impl LengthsArg {
    fn check(&self) -> Result<()> {
        if self.lengths.is_empty() || self.lengths.contains(&0) {
            bail!("--lengths must list positive integers, e.g. --lengths 1024,4096");
        }
        Ok(())
    }
}

/// `bench conv` (and the shared part of `bench operator`).
#[derive(clap::Args, Debug)]
pub struct KernelArgs {
    #[command(flatten)]
    pub lengths: LengthsArg,
    /// Batch size B.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Channels D (model width; `--dim` is an old spelling, still accepted).
    #[arg(long = "d-model", alias = "dim", default_value_t = 256)]
    pub dim: usize,
    #[command(flatten)]
    pub reps: RepsArg,
    #[command(flatten)]
    pub common: BenchCommon,
}

#[derive(clap::Args, Debug)]
pub struct OperatorArgs {
    #[command(flatten)]
    pub kernel: KernelArgs,
    /// Hyena order N.
    #[arg(long, default_value_t = 2)]
    pub order: usize,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Which shapes (tiny = d128 x 2 layers, L=1024, batch 8; small = d256 x 4 layers,
    /// L=32768, batch 1).
    #[arg(long, value_delimiter = ',', default_value = "tiny,small")]
    pub shapes: Vec<String>,
    #[command(flatten)]
    pub reps: RepsArg,
    #[command(flatten)]
    pub common: BenchCommon,
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Context lengths.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1024,4096,8192,16384,65536"
    )]
    pub contexts: Vec<usize>,
    /// Model width D (the default is the `hyena train` model's; `--dim` is an old spelling,
    /// still accepted).
    #[arg(long = "d-model", alias = "dim", default_value_t = RunConfig::quickstart().model.operator.d_model)]
    pub dim: usize,
    /// Blocks of the model (the default is the `hyena train` model's).
    #[arg(long, default_value_t = RunConfig::quickstart().model.n_layer)]
    pub layers: usize,
    /// Modes per modal filter (real order up to twice this).
    #[arg(long, default_value_t = 8)]
    pub modes: usize,
    /// Where to draw latency against context (its folder is created).
    #[arg(long, default_value = "runs/bench/generate.png")]
    pub png: PathBuf,
    #[command(flatten)]
    pub force: ForceFlag,
    #[command(flatten)]
    pub common: BenchCommon,
}

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub lengths: LengthsArg,
    /// Model width D (`--dim` is an old spelling, still accepted).
    #[arg(long = "d-model", alias = "dim", default_value_t = 256)]
    pub dim: usize,
    /// Blocks of the model.
    #[arg(long, default_value_t = 8)]
    pub layers: usize,
    #[command(flatten)]
    pub residual: ResidualFlag,
    #[command(flatten)]
    pub common: BenchCommon,
}

#[derive(clap::Args, Debug)]
pub struct MadArgs {
    /// Architectures (layer strings), repeatable.
    #[arg(long, default_value = "hyena,swiglu,hyena,swiglu")]
    pub arch: Vec<String>,
    /// Model width D (`--dim` is an old spelling, still accepted).
    #[arg(long = "d-model", alias = "dim", default_value_t = ArchConfig::default().d_model)]
    pub dim: usize,
    /// Sequences per training step (the default is the quick MAD protocol's batch).
    #[arg(long, default_value_t = hyena::train::mad::QUICK_BATCH)]
    pub batch: usize,
    /// The task whose baseline shape is trained, or several separated by commas (`--tasks`
    /// is an old spelling, still accepted).
    #[arg(
        long,
        alias = "tasks",
        value_delimiter = ',',
        default_value = "in-context-recall"
    )]
    pub task: Vec<String>,
    /// Training steps of `--batch` sequences timed.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Instead of a few steps, time the whole quick protocol (`hyena mad --quick`: the six
    /// baseline tasks, early stop included) per architecture, task by task.
    #[arg(long)]
    pub suite: bool,
    #[command(flatten)]
    pub common: BenchCommon,
}

#[derive(clap::Args, Debug)]
pub struct LayersArgs {
    /// Zoo layer names, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "hyena,mh-hyena,se,mr,li,attn,mh-attn,swa,rtf,ssm,swiglu,mlp"
    )]
    pub layers: Vec<String>,
    /// Batch size B.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Sequence length L (also the layers' max_len).
    #[arg(long, default_value_t = 128)]
    pub len: usize,
    /// Model width D (`--dim` is an old spelling, still accepted).
    #[arg(long = "d-model", alias = "dim", default_value_t = 128)]
    pub dim: usize,
    /// Timed rounds per layer.
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
    #[command(flatten)]
    pub common: BenchCommon,
}

pub fn run_cmd(w: BenchWhat) -> Result<()> {
    match w {
        BenchWhat::Conv(a) => kernel(BenchOp::Conv, &a, 2),
        BenchWhat::Operator(a) => kernel(BenchOp::Operator, &a.kernel, a.order),
        BenchWhat::Train(a) => train(&a),
        BenchWhat::Generate(a) => generate(&a),
        BenchWhat::Embed(a) => embed(&a),
        BenchWhat::Mad(a) => mad(&a),
        BenchWhat::Layers(a) => layers(&a),
        BenchWhat::Products(a) => products(&a),
    }
}

/// `bench products`.
fn products(a: &ProductsArgs) -> Result<()> {
    a.common.init()?;
    let r = hyena::apps::bench::product_rates(a.m, a.k, a.n, a.reps)?;
    if a.common.json.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "| product [M, K] x [K, N] | f32 GFLOP/s | bf16 GFLOP/s | bf16 instructions |\n\
             |---|---:|---:|---|\n| {} x {} x {} | {:.1} | {:.1} | {} |",
            r.m,
            r.k,
            r.n,
            r.f32_gflops,
            r.bf16_gflops,
            if r.bf16_native {
                "AVX512-BF16"
            } else {
                "none (widened to f32)"
            }
        );
    }
    Ok(())
}

/// `--batch` and `--d-model` must be at least 1.
fn check_batch_dim(batch: usize, dim: usize) -> Result<()> {
    if batch == 0 || dim == 0 {
        bail!("--batch and --d-model must be >= 1 (got --batch {batch} --d-model {dim})");
    }
    Ok(())
}

/// `bench conv` and `bench operator` (of order `order`).
fn kernel(op: BenchOp, a: &KernelArgs, order: usize) -> Result<()> {
    a.common.init()?;
    a.lengths.check()?;
    check_batch_dim(a.batch, a.dim)?;
    let (batch, dim) = (a.batch, a.dim);
    if op == BenchOp::Operator {
        // Fail before printing anything if the operator config is invalid (e.g. --order 1).
        hyena::apps::bench::bench_operator_config(dim, 1, order).validate()?;
    }
    let spec = BenchSpec {
        op,
        batch,
        dim,
        lengths: a.lengths.lengths.clone(),
        order,
        reps: a.reps.reps,
    };
    let json = a.common.json.json;
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(
            out,
            "hyena bench {}: B={} D={}{} threads={}\n",
            op.name(),
            batch,
            dim,
            if op == BenchOp::Operator {
                format!(" order={order}")
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
        if json {
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

fn embed(a: &EmbedArgs) -> Result<()> {
    a.common.init()?;
    a.lengths.check()?;
    let (d, layers) = (a.dim, a.layers);
    if d == 0 {
        bail!("--d-model must be >= 1");
    }
    if layers == 0 {
        bail!("--layers must be >= 1");
    }
    let json = a.common.json.json;
    let mut out = std::io::stdout().lock();
    if !json {
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
    let lean = LeanOptions {
        residual: a.residual.residual.store(),
        ..LeanOptions::default()
    };
    let recs =
        hyena::apps::bench::run_embed(&a.lengths.lengths, d, layers, lean, &Counted, &mut |l| {
            eprint!("measuring embed at L={l} ...\r")
        })
        .context("embedding benchmark")?;
    eprint!("{:50}\r", "");
    let rss = alloc::peak_rss_bytes().map(|b| b as f64 / 1048576.0);
    for r in &recs {
        if json {
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
    if !json {
        writeln!(
            out,
            "\n(peak resident is the whole process's high-water mark, over all lengths)"
        )?;
    }
    Ok(())
}

fn mad(a: &MadArgs) -> Result<()> {
    a.common.init()?;
    check_batch_dim(a.batch, a.dim)?;
    let arch_of = |spec: &str| -> Result<ArchConfig> {
        Ok(ArchConfig {
            layers: parse_layers(spec)?,
            d_model: a.dim,
            ..ArchConfig::default()
        })
    };
    if a.suite {
        return mad_suite(a, &arch_of);
    }
    let tasks = a
        .task
        .iter()
        .map(|t| hyena::data::mad::MadTask::from_name(t.trim()))
        .collect::<hyena::Result<Vec<_>>>()?;
    let mut out = std::io::stdout().lock();
    for task in tasks {
        mad_task(a, task, &arch_of, &mut out)?;
    }
    Ok(())
}

/// `hyena bench mad` on one task: a table row (or a JSON line) per architecture.
fn mad_task(
    a: &MadArgs,
    task: hyena::data::mad::MadTask,
    arch_of: &dyn Fn(&str) -> Result<ArchConfig>,
    out: &mut dyn Write,
) -> Result<()> {
    let (batch, json) = (a.batch, a.common.json.json);
    if !json {
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
    for spec in &a.arch {
        let arch = arch_of(spec)?;
        eprint!("measuring {spec} ...\r");
        let r = hyena::apps::bench::run_mad_bench(spec, &arch, task, a.steps.max(1), batch)
            .with_context(|| format!("MAD benchmark of {spec}"))?;
        eprint!("{:60}\r", "");
        if json {
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
fn mad_suite(a: &MadArgs, arch_of: &dyn Fn(&str) -> Result<ArchConfig>) -> Result<()> {
    use hyena::data::mad::MadTask;
    use hyena::train::mad::{run_mad, MadEvent, MadProtocol};
    let (batch, json) = (a.batch, a.common.json.json);
    let mut proto = MadProtocol::quick();
    proto.train.batch = batch;
    let mut out = std::io::stdout().lock();
    if !json {
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
    for spec in &a.arch {
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
        if json {
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

fn generate(a: &GenerateArgs) -> Result<()> {
    check_output("--png", &a.png, OutKind::File, a.force.force, &[])?;
    a.common.init()?;
    let (d, layers) = (a.dim, a.layers);
    if d == 0 {
        bail!("--d-model must be >= 1");
    }
    if a.contexts.is_empty() || a.contexts.contains(&0) || layers == 0 || a.modes == 0 {
        bail!("--contexts must list positive integers, and --layers and --modes must be >= 1");
    }
    let json = a.common.json.json;
    let mut out = std::io::stdout().lock();
    if !json {
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
        if json {
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
    if let Some(dir) = a.png.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    hyena::plot::log_log_png(
        &a.png,
        &format!("per-token generation latency, D={d}, {} layers", layers),
        "context length (tokens)",
        "ms per token",
        &series,
    )?;
    if !json {
        writeln!(out, "\nplot: {}", a.png.display())?;
    }
    Ok(())
}

fn train(a: &TrainArgs) -> Result<()> {
    a.common.init()?;
    let shapes = a
        .shapes
        .iter()
        .map(|s| TrainShape::parse(s))
        .collect::<hyena::Result<Vec<_>>>()?;
    let json = a.common.json.json;
    let mut out = std::io::stdout().lock();
    if !json {
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
        let r = run_train(sh, a.reps.reps, &Counted)
            .with_context(|| format!("training benchmark {}", sh.name()))?;
        eprint!("{:40}\r", "");
        if json {
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

fn layers(a: &LayersArgs) -> Result<()> {
    a.common.init()?;
    check_batch_dim(a.batch, a.dim)?;
    if a.len == 0 || a.reps == 0 {
        bail!("--len and --reps must be >= 1");
    }
    let names = parse_layers(&a.layers.join(","))?;
    let json = a.common.json.json;
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(
            out,
            "hyena bench layers: B={} L={} D={} threads={}\n",
            a.batch,
            a.len,
            a.dim,
            rayon::current_num_threads()
        )?;
        writeln!(out, "| layer | params | fwd ms | bwd ms | reps |")?;
        writeln!(out, "|---|---:|---:|---:|---:|")?;
        out.flush()?;
    }
    for name in &names {
        eprint!("measuring {name} ...\r");
        let r = hyena::apps::bench::run_layer(name, (a.batch, a.len, a.dim), a.reps)
            .with_context(|| format!("layer benchmark of {name}"))?;
        eprint!("{:40}\r", "");
        if json {
            writeln!(out, "{}", serde_json::to_string(&r)?)?;
        } else {
            writeln!(
                out,
                "| {} | {} | {:.2} | {:.2} | {} |",
                r.layer, r.params, r.fwd_ms, r.bwd_ms, r.reps
            )?;
        }
        out.flush()?;
    }
    Ok(())
}
