//! Micro-benchmarks behind `hyena bench`: FFT long convolution and the Hyena operator,
//! forward and forward+backward, with medians, GFLOP/s and peak heap memory.
//!
//! Peak memory is measured through a [`MemProbe`] that the binary passes in (the `hyena`
//! binary counts its allocations): bytes live on the heap at the high-water mark of one
//! forward+backward, counted from before the inputs are allocated (so inputs, parameters,
//! activations, gradients and scratch are included). With [`NoProbe`], `peak_mib` is `None`.
//!
//! The FLOP model is shared with `bench/torch_bench.py` so both sides report comparable GFLOP/s.

use std::time::Instant;

use serde::Serialize;

use crate::config::HyenaConfig;
use crate::error::Result;
use crate::layers::{HyenaCache, HyenaGradWorkspace, HyenaOperator};
use crate::ops::fftconv::{FftConv, Spectra};
use crate::params::{DType, Init, ParamStore};

/// Seeded uniform values in `[-scale, scale)`: benchmark inputs (timings do not depend on them).
fn rand_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Heap measurements, provided by the binary that runs the benchmarks (the library installs no
/// allocator of its own).
pub trait MemProbe: Sync {
    /// Start a peak measurement; returns the live bytes now (the baseline).
    fn start(&self) -> usize;
    /// Peak live heap MiB above `baseline` since the last [`MemProbe::start`], if measured.
    fn peak_mib(&self, baseline: usize) -> Option<f64>;
    /// Live heap bytes now (0 when not measured).
    fn live(&self) -> usize;
}

/// No measurement: every peak is `None`.
pub struct NoProbe;

impl MemProbe for NoProbe {
    fn start(&self) -> usize {
        0
    }
    fn peak_mib(&self, _: usize) -> Option<f64> {
        None
    }
    fn live(&self) -> usize {
        0
    }
}

/// Which computation to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchOp {
    /// FFT long convolution with skip, `[B, D, L]`.
    Conv,
    /// The full Hyena operator, `[B, L, D]`.
    Operator,
}

impl BenchOp {
    pub fn name(self) -> &'static str {
        match self {
            BenchOp::Conv => "conv",
            BenchOp::Operator => "operator",
        }
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    pub op: BenchOp,
    pub batch: usize,
    pub dim: usize,
    pub lengths: Vec<usize>,
    pub order: usize,
    /// Fixed repetitions; `None` = adaptive (about 1 s per measurement, 3 to 20 runs).
    pub reps: Option<usize>,
}

/// One measured row. Field names are the JSON keys of `hyena bench --json`.
#[derive(Clone, Debug, Serialize)]
#[allow(non_snake_case)]
pub struct BenchRecord {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    pub op: &'static str,
    pub B: usize,
    pub D: usize,
    pub L: usize,
    pub order: usize,
    pub threads: usize,
    pub fwd_ms: f64,
    pub fwdbwd_ms: f64,
    pub fwd_gflops: f64,
    pub fwdbwd_gflops: f64,
    pub peak_mib: Option<f64>,
    pub reps: usize,
}

fn fft_flops(n: usize) -> f64 {
    2.5 * n as f64 * (n as f64).log2()
}

/// FLOPs of one FFT-conv forward: per row two size-2L FFTs and a complex product, plus one
/// filter FFT per channel. Forward+backward counts as 3× forward.
pub fn conv_fwd_flops(b: usize, d: usize, l: usize) -> f64 {
    let n = 2 * l;
    (b * d) as f64 * (2.0 * fft_flops(n) + 8.0 * (l + 1) as f64) + d as f64 * fft_flops(n)
}

/// FLOPs of one operator forward: projections, short conv, N-1 long convs, filter MLP.
pub fn operator_fwd_flops(cfg: &HyenaConfig, b: usize, l: usize) -> f64 {
    let (d, n) = (cfg.d_model as f64, cfg.order as f64);
    let (e, f) = (cfg.filter.emb_dim as f64, cfg.filter.filter_order as f64);
    let bl = (b * l) as f64;
    let cf = cfg.filter_channels() as f64;
    2.0 * bl * d * (n + 1.0) * d
        + 2.0 * bl * d * d
        + 2.0 * bl * (n + 1.0) * d * cfg.short_filter_order as f64
        + (n - 1.0) * conv_fwd_flops(b, cfg.d_model, l)
        + 2.0 * l as f64 * (e * f + cfg.filter.num_inner_mlps as f64 * f * f + f * cf)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// Time `f`: one warm-up already done by the caller; `first_ms` sizes the adaptive rep count.
fn time_reps(
    reps: Option<usize>,
    first_ms: f64,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, usize)> {
    let n = reps.unwrap_or_else(|| ((1000.0 / first_ms.max(1e-3)).ceil() as usize).clamp(3, 20));
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(times), n))
}

/// Run `step(true)` (forward+backward) once to warm up and read the peak memory, then time
/// `step(true)` and `step(false)` (forward only). Returns `(fwd_ms, fwdbwd_ms, peak_mib, reps)`.
fn measure(
    reps: Option<usize>,
    mem: &dyn MemProbe,
    mem_base: usize,
    mut step: impl FnMut(bool) -> Result<()>,
) -> Result<(f64, f64, Option<f64>, usize)> {
    let t = Instant::now();
    step(true)?;
    let first = t.elapsed().as_secs_f64() * 1e3;
    let peak = mem.peak_mib(mem_base);
    let (fbm, reps) = time_reps(reps, first, || step(true))?;
    let (fm, _) = time_reps(Some(reps), first / 3.0, || step(false))?;
    Ok((fm, fbm, peak, reps))
}

/// The operator config used by `hyena bench operator` (reference defaults, `l_max = L`).
pub fn bench_operator_config(dim: usize, l: usize, order: usize) -> HyenaConfig {
    HyenaConfig {
        d_model: dim,
        l_max: l,
        order,
        ..HyenaConfig::default()
    }
}

/// Measure one length. `progress` is told what is being measured.
pub fn run_one(spec: &BenchSpec, l: usize, mem: &dyn MemProbe) -> Result<BenchRecord> {
    let (b, d) = (spec.batch, spec.dim);
    let threads = rayon::current_num_threads();
    let base = mem.start();
    let (fwd_ms, fwdbwd_ms, peak, reps, flops) = match spec.op {
        BenchOp::Conv => {
            let engine = FftConv::new();
            let u = rand_vec(b * d * l, 1, 1.0);
            let k = rand_vec(d * l, 2, 0.1);
            let dd = rand_vec(d, 3, 1.0);
            let g = rand_vec(b * d * l, 4, 1.0);
            let mut y = vec![0.0f32; b * d * l];
            let mut du = vec![0.0f32; b * d * l];
            let mut dk = vec![0.0f32; d * l];
            let mut ddd = vec![0.0f32; d];
            let mut spectra = Spectra::default();
            let step = |train: bool| -> Result<()> {
                if !train {
                    return engine.forward(&u, &k, &dd, (b, d, l), &mut y, None);
                }
                engine.forward(&u, &k, &dd, (b, d, l), &mut y, Some(&mut spectra))?;
                let saved = Some(&spectra);
                engine.backward(
                    &g,
                    &u,
                    &k,
                    &dd,
                    (b, d, l),
                    saved,
                    &mut du,
                    &mut dk,
                    &mut ddd,
                )
            };
            let (fm, fbm, peak, reps) = measure(spec.reps, mem, base, step)?;
            (fm, fbm, peak, reps, conv_fwd_flops(b, d, l))
        }
        BenchOp::Operator => {
            let cfg = bench_operator_config(d, l, spec.order);
            let (op, mut store) =
                ParamStore::build(Init::Zeros, DType::F32, |vb| HyenaOperator::new(&cfg, vb))?;
            op.init(
                store.data_mut(),
                &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0),
            );
            let p = store.data();
            let u = rand_vec(b * l * d, 1, 1.0);
            let g = rand_vec(b * l * d, 4, 1.0);
            let mut y = vec![0.0f32; b * l * d];
            let mut du = vec![0.0f32; b * l * d];
            let mut grads = store.zeros();
            let mut cache = HyenaCache::default();
            let mut ws = HyenaGradWorkspace::default();
            let step = |train: bool| -> Result<()> {
                op.forward(p, &u, b, l, &mut y, &mut cache)?;
                if !train {
                    return Ok(());
                }
                grads.fill(0.0);
                op.backward(p, &g, &u, &cache, &mut du, &mut grads, &mut ws)
            };
            let (fm, fbm, peak, reps) = measure(spec.reps, mem, base, step)?;
            (fm, fbm, peak, reps, operator_fwd_flops(&cfg, b, l))
        }
    };
    Ok(BenchRecord {
        implementation: "hyena",
        op: spec.op.name(),
        B: b,
        D: d,
        L: l,
        order: spec.order,
        threads,
        fwd_ms,
        fwdbwd_ms,
        fwd_gflops: flops / (fwd_ms * 1e-3) / 1e9,
        fwdbwd_gflops: 3.0 * flops / (fwdbwd_ms * 1e-3) / 1e9,
        peak_mib: peak,
        reps,
    })
}

/// A training-throughput shape for `hyena bench train`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainShape {
    /// HyenaDNA-tiny: d_model 128, 2 layers, L=1024, batch 8.
    Tiny,
    /// HyenaDNA-small: d_model 256, 4 layers, L=32768, batch 1.
    Small,
}

impl TrainShape {
    pub fn name(self) -> &'static str {
        match self {
            TrainShape::Tiny => "tiny",
            TrainShape::Small => "small",
        }
    }
    /// Parse `tiny` / `small`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "tiny" => Ok(TrainShape::Tiny),
            "small" => Ok(TrainShape::Small),
            other => Err(crate::Error::config(
                "shape",
                other,
                "expected `tiny` or `small`",
            )),
        }
    }
    /// `(d_model, n_layer, seq_len, batch)`.
    pub fn dims(self) -> (usize, usize, usize, usize) {
        match self {
            TrainShape::Tiny => (128, 2, 1024, 8),
            TrainShape::Small => (256, 4, 32768, 1),
        }
    }
}

/// One `hyena bench train` row.
#[derive(Clone, Debug, Serialize)]
#[allow(non_snake_case)]
pub struct TrainBenchRecord {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    pub shape: &'static str,
    pub B: usize,
    pub L: usize,
    pub D: usize,
    pub n_layer: usize,
    pub threads: usize,
    pub step_ms: f64,
    pub tokens_per_s: f64,
    /// Peak heap during one training step, counted from before the model is built.
    pub peak_mib: Option<f64>,
    /// `peak_mib` minus parameters, gradients and the two AdamW moments.
    pub activation_mib: Option<f64>,
    pub steps: usize,
}

/// Time full training steps (forward, cross-entropy, backward, clipping, AdamW) of a
/// HyenaDNA-shaped LM (order 2, emb_dim 5, filter_order 64, w 10, shift 0.05, l_max = L) on
/// random DNA tokens.
pub fn run_train(
    shape: TrainShape,
    steps: Option<usize>,
    mem: &dyn MemProbe,
) -> Result<TrainBenchRecord> {
    use crate::models::hyenadna::{HyenaLm, LmConfig, LmWorkspace};
    use crate::train::{clip_grad_norm, AdamW, AdamWConfig};
    let (d, n_layer, l, b) = shape.dims();
    let base = mem.start();
    // The HyenaDNA preset in the interleaved filter layout (as this benchmark always ran).
    let mut cfg = LmConfig::hyenadna(d, n_layer, l);
    cfg.operator.filter.layout = crate::config::FilterLayout::Interleaved;
    let (lm, mut params) = HyenaLm::fresh(&cfg, 0)?;
    let mut opt = AdamW::new(AdamWConfig::default());
    let toks: Vec<u32> = rand_vec(b * (l + 1), 7, 1.0)
        .iter()
        .map(|x| 7 + ((x + 1.0) * 1.999) as u32)
        .collect();
    let x: Vec<u32> = (0..b)
        .flat_map(|r| toks[r * (l + 1)..r * (l + 1) + l].to_vec())
        .collect();
    let y: Vec<u32> = (0..b)
        .flat_map(|r| toks[r * (l + 1) + 1..(r + 1) * (l + 1)].to_vec())
        .collect();
    let mut ws = LmWorkspace::default();
    let mut grads = params.zeros();
    let mut step = |params: &mut ParamStore, grads: &mut Vec<f32>| -> Result<()> {
        grads.fill(0.0);
        lm.loss_and_grad(params.data(), &x, &y, b, l, 1.0, &mut ws, grads)?;
        clip_grad_norm(params, grads, 1.0);
        opt.step(params, grads, 6e-4);
        Ok(())
    };
    let t = Instant::now();
    step(&mut params, &mut grads)?;
    let first = t.elapsed().as_secs_f64() * 1e3;
    let peak = mem.peak_mib(base);
    let n = steps.unwrap_or_else(|| ((3000.0 / first.max(1e-3)).ceil() as usize).clamp(2, 10));
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        step(&mut params, &mut grads)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let step_ms = median(times);
    let state_mib = 4.0 * params.len() as f64 * 4.0 / (1024.0 * 1024.0);
    Ok(TrainBenchRecord {
        implementation: "hyena",
        shape: shape.name(),
        B: b,
        L: l,
        D: d,
        n_layer,
        threads: rayon::current_num_threads(),
        step_ms,
        tokens_per_s: (b * l) as f64 / (step_ms * 1e-3),
        peak_mib: peak,
        activation_mib: peak.map(|p| p - state_mib),
        steps: n,
    })
}

/// One context length of `hyena bench generate`.
#[allow(non_snake_case)]
#[derive(Clone, Debug, Serialize)]
pub struct GenBenchRecord {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    pub context: usize,
    pub D: usize,
    pub n_layer: usize,
    /// Modes per modal filter (real order up to 2·modes).
    pub modes: usize,
    pub threads: usize,
    /// Conv mode: one forward over the whole context per generated token.
    pub conv_ms_per_token: f64,
    /// Recurrent mode: one step.
    pub recurrent_ms_per_token: f64,
    pub speedup: f64,
    /// Conv mode: peak heap of one forward over the context (its activations).
    pub conv_mib_per_sequence: Option<f64>,
    /// Recurrent mode: the state carried between tokens.
    pub recurrent_kib_per_sequence: f64,
    /// Recurrent mode: prefill of the context (parallel forward + state), ms.
    pub prefill_ms: f64,
    pub conv_reps: usize,
    pub recurrent_steps: usize,
}

/// Per-token latency and memory per sequence of generation in conv mode and recurrent mode
/// (Laughing Hyena Distillery, arXiv:2310.18780: O(1)-per-token recurrent decoding), for an LM of width `d` with `n_layer` blocks (order 2, d_inner 4d,
/// l_max = the largest context) whose long filters are random stable modal filters of `modes`
/// modes: latency does not depend on the values. Calls `progress(context)` before each.
pub fn run_generate(
    contexts: &[usize],
    d: usize,
    n_layer: usize,
    modes: usize,
    mem: &dyn MemProbe,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<GenBenchRecord>> {
    use crate::layers::hyena::modal::{ModalBank, ModalFilter, Mode};
    use crate::models::hyenadna::{HyenaLm, LmCache, LmConfig};
    use faer::c64;
    let l_max = contexts.iter().copied().max().unwrap_or(1).max(1);
    let cfg = LmConfig {
        n_layer,
        d_inner: 4 * d,
        operator: bench_operator_config(d, l_max, 2),
        ..LmConfig::default()
    };
    let (mut lm, params) = HyenaLm::fresh(&cfg, 0)?;
    let p = params.data();
    let banks = (0..n_layer)
        .map(|i| {
            let r = rand_vec(d * modes * 3, 11 + i as u64, 1.0);
            let filters: Vec<ModalFilter> = (0..d)
                .map(|ch| ModalFilter {
                    h0: 0.1,
                    modes: (0..modes)
                        .map(|j| {
                            let q = &r[(ch * modes + j) * 3..(ch * modes + j) * 3 + 3];
                            Mode {
                                pole: c64::from_polar(0.9 + 0.099 * q[0].abs() as f64, q[1] as f64),
                                residue: c64::new(0.1 * q[2] as f64, 0.05),
                            }
                        })
                        .collect(),
                })
                .collect();
            ModalBank::from_filters(1, d, &filters)
        })
        .collect::<Result<Vec<_>>>()?;
    lm.set_modal_banks(banks)?;
    let toks: Vec<u32> = rand_vec(l_max, 5, 1.0)
        .iter()
        .map(|x| 7 + ((x + 1.0) * 1.999) as u32)
        .collect();
    let mut out = Vec::with_capacity(contexts.len());
    for &c in contexts {
        progress(c);
        let ctx = &toks[..c];
        // Conv mode: what `generate` does per new token at this context.
        let base = mem.start();
        let mut cache = LmCache::default();
        let t = Instant::now();
        lm.forward(p, ctx, 1, c, &mut cache)?;
        let first = t.elapsed().as_secs_f64() * 1e3;
        let conv_mib = mem.peak_mib(base);
        let reps = ((2000.0 / first.max(1e-3)).ceil() as usize).clamp(2, 20);
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            lm.forward(p, ctx, 1, c, &mut cache)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let conv_ms = median(times);
        drop(cache);
        // Recurrent mode: prefill, then steps.
        let t = Instant::now();
        let mut st = lm.prefill(p, ctx, &mut LmCache::default())?;
        let prefill_ms = t.elapsed().as_secs_f64() * 1e3;
        let steps = 300;
        let mut times = Vec::with_capacity(steps);
        for i in 0..steps {
            let t = Instant::now();
            lm.step(p, toks[i % c], &mut st)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let rec_ms = median(times);
        out.push(GenBenchRecord {
            implementation: "hyena",
            context: c,
            D: d,
            n_layer,
            modes,
            threads: rayon::current_num_threads(),
            conv_ms_per_token: conv_ms,
            recurrent_ms_per_token: rec_ms,
            speedup: conv_ms / rec_ms,
            conv_mib_per_sequence: conv_mib,
            recurrent_kib_per_sequence: st.bytes() as f64 / 1024.0,
            prefill_ms,
            conv_reps: reps,
            recurrent_steps: steps,
        });
    }
    Ok(out)
}

/// One length of [`run_embed`].
#[derive(Clone, Debug, Serialize)]
pub struct EmbedBenchRecord {
    pub length: usize,
    pub d_model: usize,
    pub n_layer: usize,
    /// Wall time of one lean forward to the final hidden states.
    pub seconds: f64,
    pub bases_per_s: f64,
    /// Whether the residual stream was packed to 24 bits ([`crate::layers::lean::ResidualStore`]).
    pub residual_packed: bool,
    /// Heap bytes of the model (parameters and filter buffers), MiB.
    pub model_mib: f64,
    /// Peak live heap of the whole process during the forward (model included), MiB.
    pub peak_heap_mib: Option<f64>,
}

/// Time the lean inference forward ([`crate::models::hyenadna::HyenaLm::hidden_states`], what `hyena
/// embed` runs) of a randomly initialised HyenaDNA-shaped model on random bases, one sequence
/// per length (`l_max` = the longest + 2, as the released configs). `progress(length)` is
/// called before each.
pub fn run_embed(
    lengths: &[usize],
    d: usize,
    n_layer: usize,
    lean: crate::layers::lean::LeanOptions,
    mem: &dyn MemProbe,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<EmbedBenchRecord>> {
    use crate::layers::lean::InferWorkspace;
    let l_max = lengths.iter().copied().max().unwrap_or(1).max(1) + 2;
    let base = mem.start();
    let (lm, params) = crate::models::hyenadna::HyenaLm::fresh(
        &crate::models::hyenadna::LmConfig::hyenadna(d, n_layer, l_max),
        0,
    )?;
    let model_mib = mem.live().saturating_sub(base) as f64 / 1048576.0;
    let mut out = Vec::with_capacity(lengths.len());
    for &l in lengths {
        progress(l);
        let toks: Vec<u32> = rand_vec(l, 9, 1.0)
            .iter()
            .map(|x| 7 + ((x + 1.0) * 1.999) as u32)
            .collect();
        mem.start();
        let mut ws = InferWorkspace::with_options(lean);
        let t = Instant::now();
        let h = lm.hidden_states(params.data(), &toks, n_layer, &mut ws)?;
        let seconds = t.elapsed().as_secs_f64();
        if !h.iter().all(|v| v.is_finite()) {
            return Err(crate::Error::Format {
                file: "bench".into(),
                msg: format!("non-finite hidden states at L={l}"),
            });
        }
        let peak_heap_mib = mem.peak_mib(0);
        let residual_packed = ws.residual_packed();
        drop(ws);
        out.push(EmbedBenchRecord {
            length: l,
            d_model: d,
            n_layer,
            seconds,
            bases_per_s: l as f64 / seconds,
            residual_packed,
            model_mib,
            peak_heap_mib,
        });
    }
    Ok(out)
}

/// One `hyena bench mad` measurement: training throughput of a zoo architecture on a MAD
/// task's baseline shape, beside the machine's sgemm rate measured in the same process.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MadBenchRecord {
    pub arch: String,
    pub task: String,
    pub params: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub steps: usize,
    /// Training tokens per second (forward, backward and AdamW; one small test evaluation of
    /// 128 sequences included).
    pub tokens_per_s: f64,
    pub step_ms: f64,
    /// Matrix-product FLOPs of the run per second of it (FFTs and elementwise work not counted).
    pub matmul_gflops: f64,
    /// `[2048, 512] · [512, 512]` products on all threads, the machine's sgemm rate here.
    pub sgemm_gflops: f64,
}

/// The machine's sgemm rate (GFLOP/s) through the engine's [`crate::ops::linear::matmul`] on
/// all threads: `[2048, 512] · [512, 512]`, best of 5 after a warm-up.
pub fn sgemm_rate() -> Result<f64> {
    use crate::ops::linear::{matmul, MatMut, MatRef};
    let (m, k, n) = (2048, 512, 512);
    let a = rand_vec(m * k, 1, 1.0);
    let b = rand_vec(k * n, 2, 1.0);
    let mut c = vec![0.0f32; m * n];
    let mut best = f64::INFINITY;
    for rep in 0..6 {
        let t = Instant::now();
        matmul(
            MatMut::rm(&mut c, m, n),
            MatRef::rm(&a, m, k),
            MatRef::rm(&b, k, n),
            false,
        )?;
        if rep > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

/// Throughput of the matrix products the StripedHyena forward uses, `y [M, N] = x [M, K] · Wᵀ`
/// with bf16-stored weights: f32 arithmetic (the weights widened, `ops::linear::linear_weight`)
/// and bf16 arithmetic with f32 accumulation (`ops::bf16::linear_bf16`). Median GFLOP/s over
/// `reps` timed products after one warm-up each.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProductRates {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub f32_gflops: f64,
    pub bf16_gflops: f64,
    /// Whether the bf16 products ran on AVX512-BF16 instructions (else widened to f32).
    pub bf16_native: bool,
}

pub fn product_rates(m: usize, k: usize, n: usize, reps: usize) -> Result<ProductRates> {
    use crate::ops::bf16::{linear_bf16, native, Bf16Scratch};
    use crate::ops::linear::{linear_weight, Weight};
    if m == 0 || k == 0 || n == 0 {
        return Err(crate::error::Error::config(
            "shape",
            format!("{m}x{k}x{n}"),
            "every dimension must be at least 1",
        ));
    }
    let x = rand_vec(m * k, 1, 1.0);
    let w: Vec<u16> = rand_vec(n * k, 2, 0.05)
        .iter()
        .map(|&v| crate::params::f32_to_bf16(v))
        .collect();
    let mut y = vec![0.0f32; m * n];
    let (mut wide, mut s16) = (Vec::new(), Bf16Scratch::default());
    let flops = 2.0 * (m * k * n) as f64;
    let mut rate = |bf16: bool| -> Result<f64> {
        let mut times = Vec::with_capacity(reps);
        for rep in 0..=reps.max(1) {
            let t = Instant::now();
            if bf16 {
                linear_bf16(&x, Weight::Bf16(&w), None, m, k, n, &mut y, &mut s16)?;
            } else {
                linear_weight(&x, Weight::Bf16(&w), None, m, k, n, &mut y, &mut wide)?;
            }
            if rep > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        Ok(flops / times[times.len() / 2] / 1e9)
    };
    let f32_gflops = rate(false)?;
    let bf16_gflops = rate(true)?;
    Ok(ProductRates {
        m,
        k,
        n,
        f32_gflops,
        bf16_gflops,
        bf16_native: native(),
    })
}

/// Train `arch` for `steps` steps of `batch` sequences of `task`'s baseline setting (one epoch
/// over `steps · batch` examples) and report throughput.
pub fn run_mad_bench(
    spec: &str,
    arch: &crate::models::zoo::ArchConfig,
    task: crate::data::mad::MadTask,
    steps: usize,
    batch: usize,
) -> Result<MadBenchRecord> {
    use crate::data::mad::{baseline, generate};
    use crate::train::mad::{train_run, MadTrainConfig};
    let mut s = baseline(task);
    s.num_train = steps.max(1) * batch.max(1);
    s.num_test = 128;
    let data = generate(&s)?;
    let cfg = MadTrainConfig {
        epochs: 1,
        batch: batch.max(1),
        stop_at: 2.0,
        ..MadTrainConfig::default()
    };
    let sgemm = sgemm_rate()?;
    let f0 = crate::ops::linear::matmul_flops();
    let r = train_run(arch, &data, 1e-3, 0.0, &cfg, &mut |_| {})?;
    let flops = crate::ops::linear::matmul_flops() - f0;
    let params = crate::train::mad::params_at(arch, &data)?;
    Ok(MadBenchRecord {
        arch: spec.to_string(),
        task: task.name().to_string(),
        params,
        batch,
        seq_len: data.seq_len,
        steps,
        tokens_per_s: r.train_tokens as f64 / r.seconds,
        step_ms: r.seconds * 1e3 / steps.max(1) as f64,
        matmul_gflops: flops as f64 / r.seconds / 1e9,
        sgemm_gflops: sgemm,
    })
}

/// One zoo layer of `hyena bench layers`: forward and backward time at one shape.
#[allow(non_snake_case)]
#[derive(Clone, Debug, Serialize)]
pub struct LayerBenchRecord {
    /// The zoo name ([`crate::models::zoo::LAYER_NAMES`]).
    pub layer: String,
    pub B: usize,
    pub L: usize,
    pub D: usize,
    pub threads: usize,
    pub params: usize,
    /// Median forward time, ms.
    pub fwd_ms: f64,
    /// Median backward time (after a forward that filled the cache), ms.
    pub bwd_ms: f64,
    pub reps: usize,
}

/// Time the forward and the backward of the zoo layer `name` (as
/// [`crate::models::zoo::build_layer`] builds it for width `d` and `max_len = l`, MAD's
/// defaults otherwise) on a `[b, l, d]` input: two warm-up rounds, then `reps` timed rounds,
/// medians reported.
pub fn run_layer(
    name: &str,
    (b, l, d): (usize, usize, usize),
    reps: usize,
) -> Result<LayerBenchRecord> {
    use crate::layers::layer::Slot;
    use crate::models::zoo::{build_layer, ArchConfig};
    use rand::SeedableRng;
    let arch = ArchConfig {
        d_model: d,
        max_len: l,
        ..ArchConfig::default()
    };
    let reps = reps.max(1);
    let (layer, store) =
        ParamStore::build(Init::Zeros, DType::F32, |vb| build_layer(name, &arch, vb))?;
    let mut p = store.zeros();
    layer.init(&mut p, &mut rand::rngs::StdRng::seed_from_u64(1));
    let x = rand_vec(b * l * d, 2, 1.0); // [B, L, D]
    let dy = rand_vec(b * l * d, 3, 1.0);
    let (mut y, mut dx, mut g) = (vec![0.0; x.len()], vec![0.0; x.len()], vec![0.0; p.len()]);
    let mut cache = Slot::default();
    let (mut tf, mut tb) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for round in 0..reps + 2 {
        let t0 = Instant::now();
        layer.forward(&p, &x, b, l, &mut y, &mut cache)?;
        let t1 = Instant::now();
        layer.backward(&p, &x, &dy, b, l, &mut cache, &mut dx, &mut g)?;
        let t2 = Instant::now();
        if round >= 2 {
            tf.push((t1 - t0).as_secs_f64() * 1e3);
            tb.push((t2 - t1).as_secs_f64() * 1e3);
        }
    }
    Ok(LayerBenchRecord {
        layer: name.to_string(),
        B: b,
        L: l,
        D: d,
        threads: rayon::current_num_threads(),
        params: p.len(),
        fwd_ms: median(tf),
        bwd_ms: median(tb),
        reps,
    })
}
