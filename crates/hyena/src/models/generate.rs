//! Sampling text or DNA from a language model, one token at a time.
//!
//! Two modes:
//! - conv ([`generate`]): each new token runs the full convolutional forward over the context
//!   (the last `l_max` tokens), O(L) memory and more than O(L) work per token;
//! - recurrent ([`generate_recurrent`]), for distilled models: the prompt is prefilled by the
//!   parallel forward, then each token is one O(1) step of [`RecurrentLm`].
//!
//! Sampling is seeded, so the same prompt, settings and seed give the same output; both modes
//! draw from the same random stream.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::lm::{HyenaLm, LmCache};
use crate::models::recurrent::RecurrentLm;

/// Sampling settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleConfig {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    pub seed: u64,
    /// Token ids that may be sampled (empty = the whole real vocabulary). Nucleotide models
    /// restrict this to the bases, so an undertrained model never emits `[PAD]` or `[SEP]`.
    pub allowed: Vec<u32>,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            temperature: 1.0,
            top_k: 0,
            seed: 0,
            allowed: Vec::new(),
        }
    }
}

/// Choose the next token from `logits` (real vocabulary only, padding rows excluded), among
/// `cfg.allowed` when it is not empty.
pub fn sample(logits: &[f32], cfg: &SampleConfig, rng: &mut StdRng) -> u32 {
    let mut idx: Vec<usize> = (0..logits.len())
        .filter(|&i| cfg.allowed.is_empty() || cfg.allowed.contains(&(i as u32)))
        .collect();
    if idx.is_empty() {
        // No allowed id inside the vocabulary: fall back to all of it.
        idx = (0..logits.len()).collect();
    }
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if cfg.temperature <= 0.0 {
        return idx[0] as u32;
    }
    if cfg.top_k > 0 {
        idx.truncate(cfg.top_k);
    }
    let m = logits[idx[0]];
    let w: Vec<f64> = idx
        .iter()
        .map(|&i| (((logits[i] - m) / cfg.temperature) as f64).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut r = rng.random::<f64>() * total;
    for (&i, &wi) in idx.iter().zip(&w) {
        r -= wi;
        if r <= 0.0 {
            return i as u32;
        }
    }
    idx[idx.len() - 1] as u32
}

/// An error unless `prompt` has at least one token (generation and prefill need one).
pub(crate) fn check_prompt(prompt: &[u32]) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::config(
            "prompt",
            "\"\"",
            "give at least one token of prompt",
        ));
    }
    Ok(())
}

/// Append `n` sampled tokens to `prompt` (which must not be empty); returns only the new tokens.
pub fn generate(lm: &HyenaLm, prompt: &[u32], n: usize, cfg: &SampleConfig) -> Result<Vec<u32>> {
    check_prompt(prompt)?;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let (v_real, v_pad) = (lm.cfg.vocab_size, lm.cfg.padded_vocab());
    let l_max = lm.cfg.operator.l_max;
    let mut ctx = prompt.to_vec();
    let mut cache = LmCache::default();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = ctx.len().saturating_sub(l_max);
        let window = &ctx[start..];
        let l = window.len();
        lm.forward(window, 1, l, &mut cache)?;
        let last = &cache.logits[(l - 1) * v_pad..(l - 1) * v_pad + v_real];
        let t = sample(last, cfg, &mut rng);
        ctx.push(t);
        out.push(t);
    }
    Ok(out)
}

/// [`generate`] by recurrence: prefill `prompt` (its first `l_max` tokens by the parallel
/// forward, any rest by steps), then one step per new token. Context beyond `l_max` is not
/// cut off: the state carries the whole past.
pub fn generate_recurrent(
    rlm: &RecurrentLm,
    prompt: &[u32],
    n: usize,
    cfg: &SampleConfig,
) -> Result<Vec<u32>> {
    // An empty prompt is refused by the prefill.
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let v_real = rlm.lm.cfg.vocab_size;
    let head = prompt.len().min(rlm.lm.cfg.operator.l_max);
    let mut st = rlm.prefill(&prompt[..head], &mut LmCache::default())?;
    for &t in &prompt[head..] {
        rlm.step(t, &mut st)?;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = sample(&st.logits[..v_real], cfg, &mut rng);
        out.push(t);
        if i + 1 < n {
            rlm.step(t, &mut st)?;
        }
    }
    Ok(out)
}
