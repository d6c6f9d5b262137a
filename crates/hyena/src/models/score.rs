//! Scoring a sequence that is extended piece by piece, with one saved position to go back to:
//! what variant-effect scoring needs to score a reference and an alternative allele after a
//! shared prefix ([`PrefixScorer`]).
//!
//! Families with a streaming forward (StripedHyena) carry their state and do the shared work
//! once; every other family gets [`NaiveScorer`], which re-runs the whole forward over the
//! sequence so far on each call (the same numbers, no sharing).

use crate::error::{Error, Result};
use crate::layers::lean::InferWorkspace;
use crate::models::LanguageModel;

/// A sequence scored as it grows (module docs).
pub trait PrefixScorer {
    /// Start a new sequence with `tokens` (at least one): `out` gets `log p(tokens[j] |
    /// tokens[..j])` for `j = 1 ..` (`n − 1` values).
    fn start(&mut self, tokens: &[u32], out: &mut Vec<f32>) -> Result<()>;
    /// Append `tokens`: `out` gets the log-probability of each given everything before it.
    fn extend(&mut self, tokens: &[u32], out: &mut Vec<f32>) -> Result<()>;
    /// Remember the current position (one mark; a new mark replaces it).
    fn mark(&mut self);
    /// Go back to the marked position.
    fn rewind(&mut self) -> Result<()>;
}

/// The scorer of `lm`: its own streaming one when it has one (chunks of `chunk` positions),
/// else [`NaiveScorer`] with `ws`.
pub fn prefix_scorer<'a>(
    lm: &'a dyn LanguageModel,
    chunk: usize,
    ws: InferWorkspace,
) -> Box<dyn PrefixScorer + 'a> {
    match lm.stream_scorer(chunk) {
        Some(s) => s,
        None => Box::new(NaiveScorer::new(lm, ws)),
    }
}

/// [`PrefixScorer`] for any model: the whole forward over the tokens so far on every call.
pub struct NaiveScorer<'a> {
    lm: &'a dyn LanguageModel,
    ws: InferWorkspace,
    tokens: Vec<u32>,
    marked: Option<usize>,
    lp: Vec<f32>,
}

impl<'a> NaiveScorer<'a> {
    pub fn new(lm: &'a dyn LanguageModel, ws: InferWorkspace) -> Self {
        NaiveScorer {
            lm,
            ws,
            tokens: Vec::new(),
            marked: None,
            lp: Vec::new(),
        }
    }
}

impl PrefixScorer for NaiveScorer<'_> {
    fn start(&mut self, tokens: &[u32], out: &mut Vec<f32>) -> Result<()> {
        self.tokens.clear();
        self.marked = None;
        if tokens.is_empty() {
            return Err(Error::config(
                "tokens",
                0,
                "a scored sequence needs at least one token",
            ));
        }
        self.extend(tokens, out)
    }
    fn extend(&mut self, tokens: &[u32], out: &mut Vec<f32>) -> Result<()> {
        let before = self.tokens.len();
        self.tokens.extend_from_slice(tokens);
        out.clear();
        if tokens.is_empty() {
            return Ok(());
        }
        self.lm
            .log_likelihood(&self.tokens, &mut self.ws, &mut self.lp)?;
        // lp[j] scores token j + 1; the new tokens are before .. len.
        out.extend_from_slice(&self.lp[before.saturating_sub(1)..]);
        Ok(())
    }
    fn mark(&mut self) {
        self.marked = Some(self.tokens.len());
    }
    fn rewind(&mut self) -> Result<()> {
        let m = self
            .marked
            .ok_or_else(|| Error::config("scorer", "rewind", "no position was marked"))?;
        self.tokens.truncate(m);
        Ok(())
    }
}
