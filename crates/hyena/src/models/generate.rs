//! Sampling text or DNA from a language model, one token at a time: one loop
//! ([`generate`]) over any [`Decoder`], which a model family provides per [`DecodeMode`] (the
//! full forward per token, or a recurrent step for distilled models).
//!
//! Sampling is seeded, so the same prompt, settings and seed give the same output.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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

impl SampleConfig {
    /// Check the settings against a vocabulary of `vocab` tokens: `temperature` finite and
    /// not negative (0 is greedy), `top_k` at most `vocab` (0 = all). The messages name the
    /// fields.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(Error::config(
                "temperature",
                t,
                "must be a finite number >= 0 (0 = greedy; 1 samples from the model's \
                 distribution)",
            ));
        }
        if self.top_k > vocab {
            return Err(Error::config(
                "top_k",
                self.top_k,
                format!("must be at most the vocabulary size {vocab} (0 = all tokens)"),
            ));
        }
        Ok(())
    }
}

/// Bytes to generate `n` tokens after a prompt of `prompt` tokens from a model of `n_layer`
/// blocks of width `d_model` over `vocab` tokens, whose forward takes at most `window` tokens:
/// the model's parameters (`params`), the context and output token buffers, and the
/// activations of one forward over the context (about `24·D` floats per position and block,
/// plus the logits). For the memory guard ([`crate::memory::check_fits`]).
pub fn generate_bytes(
    params: usize,
    d_model: usize,
    n_layer: usize,
    vocab: usize,
    window: usize,
    prompt: usize,
    n: usize,
) -> u64 {
    use crate::memory::{floats, mul};
    let total = (prompt as u64).saturating_add(n as u64);
    // The output (4 bytes a token) and the context, which grows by doubling (up to 8).
    let tokens = (n as u64)
        .saturating_mul(4)
        .saturating_add(total.saturating_mul(8));
    let ctx = total.min(window as u64) as usize;
    let acts = mul(&[ctx, n_layer, d_model, 24]).saturating_add(mul(&[ctx, vocab, 2]));
    floats((params as u64).saturating_add(acts)).saturating_add(tokens)
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

/// How a decoder computes the next token's logits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeMode {
    /// The full convolutional forward over the context (its last `max_len` tokens) for every
    /// new token: O(L) memory and more than O(L) work per token; works for every model.
    #[default]
    Conv,
    /// A prefill by the parallel forward, then one O(1) step per token (distilled models).
    Recurrent,
}

/// A model being sampled from: it consumes the prompt, then one token at a time, and exposes
/// the logits of the next token.
pub trait Decoder {
    /// Consume the prompt (at least one token).
    fn prefill(&mut self, prompt: &[u32]) -> Result<()>;
    /// Consume one more token.
    fn step(&mut self, token: u32) -> Result<()>;
    /// Logits of the next token over the real vocabulary.
    fn logits(&self) -> &[f32];
}

/// A model whose full forward over a window gives the next-token logits at every position:
/// what [`ConvDecoder`] runs.
pub trait WindowForward {
    /// The forward's saved state, reused from token to token.
    type Cache: Default;
    /// The longest window the forward takes.
    fn window(&self) -> usize;
    /// The forward of one sequence `tokens [L]`.
    fn forward_window(&self, tokens: &[u32], cache: &mut Self::Cache) -> Result<()>;
    /// Logits over the real vocabulary after position `t` of the last forward.
    fn logits_at<'c>(&self, cache: &'c Self::Cache, t: usize) -> &'c [f32];
}

/// Generation by the full forward over the context (its last `window` tokens) per token:
/// O(L) memory and more than O(L) work per token, for every model.
pub struct ConvDecoder<'a, M: WindowForward> {
    m: &'a M,
    ctx: Vec<u32>,
    cache: M::Cache,
}

impl<'a, M: WindowForward> ConvDecoder<'a, M> {
    pub fn new(m: &'a M) -> Self {
        ConvDecoder {
            m,
            ctx: Vec::new(),
            cache: M::Cache::default(),
        }
    }

    fn run(&mut self) -> Result<()> {
        let start = self.ctx.len().saturating_sub(self.m.window());
        self.m.forward_window(&self.ctx[start..], &mut self.cache)
    }
}

impl<M: WindowForward> Decoder for ConvDecoder<'_, M> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        self.ctx = prompt.to_vec();
        self.run()
    }
    fn step(&mut self, token: u32) -> Result<()> {
        self.ctx.push(token);
        self.run()
    }
    fn logits(&self) -> &[f32] {
        let l = self.ctx.len().min(self.m.window());
        self.m.logits_at(&self.cache, l - 1)
    }
}

/// The text of tokens of the byte tokenizer (StripedHyena / Evo 2): each id is its byte; ids
/// past 255 (unused by byte-level training data) print as '?'; invalid UTF-8 is replaced.
pub fn byte_text(ids: &[u32]) -> String {
    let b: Vec<u8> = ids
        .iter()
        .map(|&t| u8::try_from(t).unwrap_or(b'?'))
        .collect();
    String::from_utf8_lossy(&b).into_owned()
}

/// Sample `n` tokens after `prompt` (which must not be empty): prefill, then for each new
/// token sample from the logits and feed it back. Returns only the new tokens. Every decoder
/// draws from the same random stream, so conv and recurrent decoding of the same model agree
/// wherever their logits do.
pub fn generate(
    dec: &mut dyn Decoder,
    prompt: &[u32],
    n: usize,
    cfg: &SampleConfig,
) -> Result<Vec<u32>> {
    check_prompt(prompt)?;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    // Reserved up front and fallibly: a count too large for the memory is an error here, not
    // an abort halfway through.
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|_| {
        Error::config(
            "tokens",
            n,
            "too many tokens to hold in memory; generate fewer",
        )
    })?;
    dec.prefill(prompt)?;
    for i in 0..n {
        crate::interrupt::check()?;
        let t = sample(dec.logits(), cfg, &mut rng);
        out.push(t);
        if i + 1 < n {
            dec.step(t)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_settings_are_checked_by_name() {
        let ok = SampleConfig::default();
        ok.validate(12).unwrap();
        SampleConfig {
            temperature: 0.0,
            top_k: 12,
            ..ok.clone()
        }
        .validate(12)
        .unwrap();
        for t in [f32::NAN, f32::INFINITY, -1.0] {
            let e = SampleConfig {
                temperature: t,
                ..ok.clone()
            }
            .validate(12)
            .unwrap_err();
            assert!(e.to_string().contains("`temperature`"), "{e}");
        }
        let e = SampleConfig { top_k: 13, ..ok }.validate(12).unwrap_err();
        assert!(e.to_string().contains("`top_k`"), "{e}");
    }

    #[test]
    fn byte_text_is_the_bytes_with_out_of_range_ids_as_question_marks() {
        assert_eq!(byte_text(&[65, 67, 71, 84]), "ACGT");
        assert_eq!(byte_text(&[65, 300, 84]), "A?T");
        assert_eq!(byte_text(&[]), "");
    }

    #[test]
    fn generation_memory_saturates_and_grows_with_tokens() {
        let small = generate_bytes(1000, 64, 2, 16, 1024, 4, 100);
        assert!(generate_bytes(1000, 64, 2, 16, 1024, 4, 100_000) > small);
        assert_eq!(generate_bytes(0, 64, 2, 16, 1024, 4, usize::MAX), u64::MAX);
        // 10^11 tokens need far more than any machine has.
        assert!(generate_bytes(0, 64, 2, 16, 1024, 4, 100_000_000_000) > 1 << 40);
    }
}
