//! The training loop: random windows from a token stream, gradient accumulation, clipping,
//! AdamW under a warm-up + cosine schedule, periodic evaluation, and exact resume.
//!
//! Determinism: the batch of step `s` is drawn from an RNG seeded by `(seed, s, micro-batch)`,
//! so a run resumed from a checkpoint at step `s` sees exactly the batches an uninterrupted run
//! would, and (with the same thread count) produces the same losses bit for bit.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::safetensors::{collect_params, write_atomic, write_bytes_atomic, TensorFile};
use crate::layers::Params;
use crate::models::lm::{HyenaLm, LmConfig, LmParams, LmWorkspace};
use crate::train::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule};

/// Optimisation settings of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before each update.
    pub grad_accum: usize,
    /// Window length L (tokens per sequence; targets are the next tokens).
    pub seq_len: usize,
    /// Optimizer updates in the run.
    pub steps: u64,
    /// Evaluate every this many steps (and at the end).
    pub eval_every: u64,
    /// Validation windows evaluated, at most (`batch_size` per forward).
    pub eval_windows: usize,
    /// Global gradient-norm clip (0 = off).
    pub clip: f32,
    pub seed: u64,
    pub optim: AdamWConfig,
    pub warmup: u64,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 8,
            grad_accum: 1,
            seq_len: 1024,
            steps: 1000,
            eval_every: 100,
            eval_windows: 64,
            clip: 1.0,
            seed: 0,
            optim: AdamWConfig::default(),
            warmup: 50,
            min_lr_ratio: 0.1,
        }
    }
}

impl TrainConfig {
    /// The learning-rate schedule of this run.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            warmup: self.warmup,
            total: self.steps,
            min_ratio: self.min_lr_ratio,
        }
    }
}

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepStats {
    pub step: u64,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    pub tokens: usize,
}

/// Validation metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalStats {
    pub step: u64,
    pub loss: f64,
    pub perplexity: f64,
    pub bits_per_token: f64,
    pub accuracy: f64,
    pub tokens: usize,
}

/// A model, its optimizer, and the data it trains on.
pub struct Trainer {
    pub lm: HyenaLm,
    pub opt: AdamW,
    pub cfg: TrainConfig,
    train: Vec<u32>,
    val: Vec<u32>,
    /// Activations, logits gradients and per-shard gradients, reused across steps.
    ws: LmWorkspace,
    /// The step's gradient, zeroed and refilled each step (a fresh buffer would page-fault).
    grads: LmParams,
}

impl Trainer {
    /// A new run. `train`/`val` are token streams; both must hold more than `seq_len` tokens.
    pub fn new(lm: HyenaLm, cfg: TrainConfig, train: Vec<u32>, val: Vec<u32>) -> Result<Self> {
        for (what, toks) in [("training", &train), ("validation", &val)] {
            if toks.len() <= cfg.seq_len {
                return Err(Error::config(
                    "seq_len",
                    cfg.seq_len,
                    format!(
                        "the {what} data has only {} tokens; it needs more than one window \
                         (use a shorter --seq-len or more data)",
                        toks.len()
                    ),
                ));
            }
        }
        if cfg.seq_len > lm.cfg.operator.l_max {
            return Err(Error::config(
                "seq_len",
                cfg.seq_len,
                format!("exceeds the model's l_max {}", lm.cfg.operator.l_max),
            ));
        }
        if cfg.batch_size == 0 || cfg.grad_accum == 0 {
            return Err(Error::config(
                "batch_size/grad_accum",
                format!("{}/{}", cfg.batch_size, cfg.grad_accum),
                "must be >= 1",
            ));
        }
        let opt = AdamW::new(cfg.optim.clone());
        let grads = lm.zero_grads();
        Ok(Trainer {
            lm,
            opt,
            cfg,
            train,
            val,
            ws: LmWorkspace::default(),
            grads,
        })
    }

    /// Steps completed so far.
    pub fn step(&self) -> u64 {
        self.opt.step
    }

    /// The windows `(inputs, targets)` of micro-batch `micro` of step `step`: `[B, L]` each.
    pub fn batch(&self, step: u64, micro: usize) -> (Vec<u32>, Vec<u32>) {
        let (b, l) = (self.cfg.batch_size, self.cfg.seq_len);
        let mix = self.cfg.seed
            ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (micro as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut rng = StdRng::seed_from_u64(mix);
        let (mut x, mut y) = (Vec::with_capacity(b * l), Vec::with_capacity(b * l));
        for _ in 0..b {
            let s = rng.random_range(0..self.train.len() - l);
            x.extend_from_slice(&self.train[s..s + l]);
            y.extend_from_slice(&self.train[s + 1..s + l + 1]);
        }
        (x, y)
    }

    /// One optimizer update (with gradient accumulation over `grad_accum` micro-batches).
    pub fn train_step(&mut self) -> Result<StepStats> {
        let step = self.opt.step;
        let (b, l) = (self.cfg.batch_size, self.cfg.seq_len);
        self.grads.zero();
        let mut loss_sum = 0.0f32;
        // Each micro-batch contributes ∇(its mean loss) / grad_accum.
        let scale = 1.0 / self.cfg.grad_accum as f32;
        for micro in 0..self.cfg.grad_accum {
            let (x, y) = self.batch(step, micro);
            let st = self
                .lm
                .loss_and_grad(&x, &y, b, l, scale, &mut self.ws, &mut self.grads)?;
            loss_sum += (st.loss_sum / st.count.max(1) as f64) as f32;
        }
        let grad_norm = clip_grad_norm(&mut self.grads, self.cfg.clip);
        let lr = self.cfg.schedule().lr(self.cfg.optim.lr, step);
        self.opt.step(&mut self.lm.params, &self.grads, lr);
        Ok(StepStats {
            step: self.opt.step,
            loss: loss_sum / self.cfg.grad_accum as f32,
            lr,
            grad_norm,
            tokens: b * l * self.cfg.grad_accum,
        })
    }

    /// Loss, perplexity, bits per token and next-token accuracy on consecutive, non-overlapping
    /// validation windows (at most `eval_windows` of them).
    pub fn evaluate(&mut self) -> Result<EvalStats> {
        let mut e = evaluate_tokens(
            &self.lm,
            &self.val,
            self.cfg.batch_size,
            self.cfg.seq_len,
            self.cfg.eval_windows,
            &mut self.ws,
            &mut |_, _| {},
        )?;
        e.step = self.opt.step;
        Ok(e)
    }

    /// Write a checkpoint into `dir`: `model.safetensors` (parameters and filter buffers),
    /// `optimizer.safetensors`, `config.json` (`{"model": …, "train": …}` plus `extra`), and
    /// `state.json` (step). Every file is written atomically.
    pub fn save(&self, dir: &Path, extra: &serde_json::Value) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            file: dir.to_path_buf(),
            source,
        })?;
        save_model(&self.lm, dir)?;
        let meta = std::collections::BTreeMap::new();
        write_atomic(
            dir.join("optimizer.safetensors"),
            &self.opt.state_tensors(),
            &meta,
        )?;
        let mut cfg = serde_json::json!({ "model": self.lm.cfg, "train": self.cfg });
        if let (Some(obj), Some(ex)) = (cfg.as_object_mut(), extra.as_object()) {
            for (k, v) in ex {
                obj.insert(k.clone(), v.clone());
            }
        }
        write_json(&dir.join("config.json"), &cfg)?;
        write_json(
            &dir.join("state.json"),
            &serde_json::json!({ "step": self.opt.step }),
        )
    }

    /// Continue a run saved by [`Trainer::save`]. The model config in `dir` must equal `lm_cfg`
    /// (a different architecture cannot resume), and the data must be the same streams.
    pub fn resume(
        dir: &Path,
        lm_cfg: &LmConfig,
        cfg: TrainConfig,
        train: Vec<u32>,
        val: Vec<u32>,
    ) -> Result<Self> {
        let lm = load_model(dir)?;
        if &lm.cfg != lm_cfg {
            return Err(Error::Format {
                file: dir.join("config.json"),
                msg: "the checkpoint's model config differs from the requested one; \
                      resume with the same model settings or start a new run"
                    .into(),
            });
        }
        let mut t = Trainer::new(lm, cfg, train, val)?;
        let opt = TensorFile::read(dir.join("optimizer.safetensors"))?;
        t.opt.load_state(&opt.tensors)?;
        let st = read_json(&dir.join("state.json"))?;
        t.opt.step = st["step"].as_u64().ok_or_else(|| Error::Format {
            file: dir.join("state.json"),
            msg: "missing integer `step`".into(),
        })?;
        Ok(t)
    }
}

/// Score `lm` on consecutive, non-overlapping windows of `tokens` (at most `max_windows`,
/// `batch` windows per forward): mean next-token loss (nats), perplexity, bits per token and
/// accuracy. `ws` is reused between calls; `progress(done, total)` is called
/// after each batch of windows. The returned `step` is 0.
pub fn evaluate_tokens(
    lm: &HyenaLm,
    tokens: &[u32],
    batch: usize,
    seq_len: usize,
    max_windows: usize,
    ws: &mut LmWorkspace,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalStats> {
    let (b, l) = (batch.max(1), seq_len);
    if l == 0 || tokens.len() <= l {
        return Err(Error::config(
            "seq_len",
            l,
            format!(
                "the evaluation data has {} tokens; it needs more than one window of {l} \
                 (use a shorter --seq-len or more data)",
                tokens.len()
            ),
        ));
    }
    if l > lm.cfg.operator.l_max {
        return Err(Error::config(
            "seq_len",
            l,
            format!("exceeds the model's l_max {}", lm.cfg.operator.l_max),
        ));
    }
    let n_win = ((tokens.len() - 1) / l).min(max_windows).max(1);
    let (mut loss_sum, mut count, mut correct) = (0.0f64, 0usize, 0usize);
    let mut w = 0;
    while w < n_win {
        let nb = b.min(n_win - w);
        let (mut x, mut y) = (Vec::with_capacity(nb * l), Vec::with_capacity(nb * l));
        for i in 0..nb {
            let s = (w + i) * l;
            x.extend_from_slice(&tokens[s..s + l]);
            y.extend_from_slice(&tokens[s + 1..s + l + 1]);
        }
        let st = lm.loss(&x, &y, nb, l, ws)?;
        loss_sum += st.loss_sum;
        count += st.count;
        correct += st.correct;
        w += nb;
        progress(w, n_win);
    }
    let loss = loss_sum / count.max(1) as f64;
    Ok(EvalStats {
        step: 0,
        loss,
        perplexity: loss.exp(),
        bits_per_token: loss / std::f64::consts::LN_2,
        accuracy: correct as f64 / count.max(1) as f64,
        tokens: count,
    })
}

/// Write pretty JSON to `path` atomically.
pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Format {
        file: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    write_bytes_atomic(path, s.as_bytes())
}

pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let s = std::fs::read_to_string(path).map_err(|source| Error::Io {
        file: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&s).map_err(|e| Error::Format {
        file: path.to_path_buf(),
        msg: format!("invalid JSON: {e}"),
    })
}

/// Write `model.safetensors` (parameters with HF names, plus each block's filter buffers) and,
/// if absent, a `config.json` holding `{"model": …}`.
pub fn save_model(lm: &HyenaLm, dir: &Path) -> Result<()> {
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("format".to_string(), "hyena-lm".to_string());
    meta.insert("version".to_string(), "1".to_string());
    write_atomic(dir.join("model.safetensors"), &model_tensors(lm), &meta)?;
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        write_json(&cfg_path, &serde_json::json!({ "model": lm.cfg }))?;
    }
    Ok(())
}

/// The tensors [`save_model`] writes: parameters with HF names and each block's filter buffers.
pub fn model_tensors(
    lm: &HyenaLm,
) -> std::collections::BTreeMap<String, crate::io::safetensors::Tensor> {
    let mut tensors = collect_params("", &lm.params);
    let (lm_max, e) = (lm.cfg.operator.l_max, lm.cfg.operator.filter.emb_dim);
    for i in 0..lm.cfg.n_layer {
        let prefix = format!("hyena.backbone.layers.{i}.mixer.filter_fn.");
        let bufs = &lm.operator(i).filter.buffers;
        bufs.visit(&prefix, lm_max, e, &mut |n, s, d| {
            tensors.insert(
                n.to_string(),
                crate::io::safetensors::Tensor {
                    shape: s.to_vec(),
                    data: d.to_vec(),
                },
            );
        });
    }
    tensors
}

/// Section `key` of a run's parsed `config.json` (read from `file`), if present and not null.
pub(crate) fn config_section<T: serde::de::DeserializeOwned>(
    cfg_v: &serde_json::Value,
    key: &str,
    file: &Path,
) -> Result<Option<T>> {
    cfg_v
        .get(key)
        .filter(|x| !x.is_null())
        .map(T::deserialize)
        .transpose()
        .map_err(|e| Error::Format {
            file: file.to_path_buf(),
            msg: format!("{key} config: {e}"),
        })
}

/// Load a model saved by [`save_model`] / [`Trainer::save`] from `dir`.
pub fn load_model(dir: &Path) -> Result<HyenaLm> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        return Err(Error::Format {
            file: cfg_path,
            msg: "not found: a model directory holds config.json and its weights (a `hyena \
                  train` run, or a HyenaDNA checkpoint in the HF or Lightning layout)"
                .into(),
        });
    }
    load_model_with(dir, &read_json(&cfg_path)?)
}

/// [`load_model`] with the run's `config.json` already parsed into `cfg_v`.
///
/// A directory holding a released HyenaDNA checkpoint (HF or Lightning layout, see
/// [`crate::io::hf`]) loads too.
pub fn load_model_with(dir: &Path, cfg_v: &serde_json::Value) -> Result<HyenaLm> {
    use crate::io::hf::{kind_of, load_reference, CheckpointKind};
    if matches!(
        kind_of(cfg_v),
        Some(CheckpointKind::Hf | CheckpointKind::Lightning)
    ) {
        return Ok(load_reference(dir, cfg_v)?.0);
    }
    let cfg_path = dir.join("config.json");
    let cfg: LmConfig =
        config_section(cfg_v, "model", &cfg_path)?.ok_or_else(|| Error::Format {
            file: cfg_path.clone(),
            msg: "no `model` section (hyena run) and no `d_model` key (HyenaDNA checkpoint): is this a model directory?".into(),
        })?;
    let mut lm = HyenaLm::new(&cfg, 0)?;
    let f = TensorFile::read(dir.join("model.safetensors"))?;
    f.load_params("", &mut lm.params)?;
    lm.load_filter_buffers(&f, true)?;
    // A distilled model: its long filters are the stored modal filters.
    if cfg_v.get("distill").is_some_and(|x| !x.is_null()) {
        let banks = crate::distill::model::read_banks(&f, &lm)?;
        let l_max = cfg.operator.l_max;
        for (i, b) in banks.iter().enumerate() {
            lm.operator_mut(i)
                .set_explicit_filters(Some(b.impulse(l_max)))?;
        }
    }
    Ok(lm)
}
