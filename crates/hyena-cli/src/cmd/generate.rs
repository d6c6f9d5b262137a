//! `hyena generate`: sample a continuation of a prompt from a trained model and print it. The
//! work is `hyena::models::generate`.

use anyhow::{Context, Result};
use hyena::checkpoint::load_model;
use hyena::io::tokenizer::Tokenizer;
use hyena::models::generate::{byte_text, generate, generate_bytes, DecodeMode, SampleConfig};
use hyena::models::TokenizerKind;

use crate::args::{check_inputs, non_negative_f32, ModelArg, PrecisionArg};

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Prompt text (DNA letters for nucleotide models).
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate (refused, before sampling, when they would not fit in memory).
    #[arg(long, default_value_t = 200)]
    pub tokens: usize,
    /// Softmax temperature (0 = greedy).
    #[arg(long, default_value_t = 1.0, value_parser = non_negative_f32)]
    pub temperature: f32,
    /// Sample among the k most likely tokens only (0 = all; at most the vocabulary size).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// conv: the full forward over the context per token; recurrent: a prefill by the parallel
    /// forward, then one step per token from the carried state (StripedHyena / Evo 2 models:
    /// FIR caches, modal states, key/value cache; distilled models: O(1) steps); auto:
    /// recurrent for StripedHyena models, conv for the others.
    #[arg(long, value_enum, default_value_t = GenMode::Auto)]
    pub mode: GenMode,
    #[command(flatten)]
    pub precision: PrecisionArg,
    /// Print one JSON object (token ids, text, prefill time, decode rate) instead of the text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GenMode {
    Auto,
    Conv,
    Recurrent,
}

pub fn run_cmd(a: GenerateArgs) -> Result<()> {
    let dir = &a.model.model;
    check_inputs(&[("--model", dir)])?;
    let t0 = std::time::Instant::now();
    let mut loaded =
        load_model(dir).with_context(|| format!("loading the model in {}", dir.display()))?;
    let precision = a.precision.apply(loaded.model.as_mut())?;
    let bytes = loaded.model.tokenizer() == TokenizerKind::Bytes;
    if bytes {
        eprintln!(
            "model loaded in {:.1} s; matrix products in {precision}",
            t0.elapsed().as_secs_f64()
        );
    }
    let tok: Tokenizer = loaded
        .section::<hyena::data::tokens::DataConfig>("data")
        .ok()
        .flatten()
        .map(|d| d.tokenizer)
        .unwrap_or_default();
    let (prompt, unk) = if bytes {
        // The byte tokenizer of StripedHyena / Evo 2: every byte is its id.
        (a.prompt.bytes().map(u32::from).collect(), 0)
    } else {
        tok.encode_checked(a.prompt.as_bytes())
    };
    if unk > 0 {
        eprintln!(
            "note: {unk} prompt characters are outside the alphabet (mapped to the unknown token)"
        );
    }
    let sc = SampleConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        seed: a.seed,
        allowed: if bytes {
            Vec::new()
        } else {
            tok.sampleable_ids()
        },
    };
    let lm = loaded.model.as_ref();
    let vocab = lm.vocab_size();
    if a.top_k > vocab {
        anyhow::bail!(
            "--top-k {} is larger than the model's vocabulary of {vocab} tokens; give at most \
             {vocab} (0 = all tokens)",
            a.top_k
        );
    }
    sc.validate(vocab)?;
    hyena::memory::check_fits(
        &format!("generating {} tokens", a.tokens),
        generate_bytes(
            0, // the model is loaded: the available memory is what is left beside it
            lm.d_model(),
            lm.n_layer(),
            lm.vocab_size(),
            lm.max_len(),
            prompt.len(),
            a.tokens,
        ),
        "--tokens",
    )?;
    let mode = match a.mode {
        GenMode::Auto if loaded.family == "evo2" => DecodeMode::Recurrent,
        GenMode::Auto | GenMode::Conv => DecodeMode::Conv,
        GenMode::Recurrent => DecodeMode::Recurrent,
    };
    let mut dec = loaded
        .model
        .decoder(mode)
        .with_context(|| format!("{}", dir.display()))?;
    let mut timed = Timed {
        inner: dec.as_mut(),
        prefill_s: 0.0,
        step_s: 0.0,
        steps: 0,
    };
    let out = generate(&mut timed, &prompt, a.tokens, &sc)?;
    let text = if bytes {
        byte_text(&out)
    } else {
        tok.decode(&out)
    };
    let rate = timed.steps as f64 / timed.step_s.max(1e-9);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "prompt_tokens": prompt.len(),
                "ids": out,
                "text": text,
                "prefill_s": timed.prefill_s,
                "decode_s": timed.step_s,
                "decode_tokens_per_s": rate,
            })
        );
    } else {
        println!("{}{text}", a.prompt);
    }
    eprintln!(
        "prefill of {} tokens {:.2} s; {} tokens after it in {:.2} s ({rate:.3} tokens/s)",
        prompt.len(),
        timed.prefill_s,
        timed.steps,
        timed.step_s,
    );
    Ok(())
}

/// A decoder whose prefill and steps are timed (the decode rate excludes the prefill).
struct Timed<'a> {
    inner: &'a mut dyn hyena::models::generate::Decoder,
    prefill_s: f64,
    step_s: f64,
    steps: usize,
}

impl hyena::models::generate::Decoder for Timed<'_> {
    fn prefill(&mut self, prompt: &[u32]) -> hyena::error::Result<()> {
        let t = std::time::Instant::now();
        let r = self.inner.prefill(prompt);
        self.prefill_s += t.elapsed().as_secs_f64();
        r
    }
    fn step(&mut self, token: u32) -> hyena::error::Result<()> {
        let t = std::time::Instant::now();
        let r = self.inner.step(token);
        self.step_s += t.elapsed().as_secs_f64();
        self.steps += 1;
        r
    }
    fn logits(&self) -> &[f32] {
        self.inner.logits()
    }
}
