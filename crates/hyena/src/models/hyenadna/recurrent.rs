//! Recurrent (O(1) per token) generation for a HyenaDNA model whose long filters are modal
//! (a distilled model: Massaroli et al., "Laughing Hyena Distillery", arXiv 2310.18780).
//!
//! Per block and token the step runs the block's own layers, position-wise:
//! `x += operator.step(norm1(x)); x += mlp(norm2(x))`, where the operator's short filter and
//! long filters become recurrences ([`crate::layers::HyenaOperator::step`]). Prefill runs the
//! parallel (FFT) forward over the prompt, then reads the state at its last position from the
//! forward's cache ([`crate::layers::HyenaOperator::state_after`]).

use super::model::{Block, HyenaLm, LmCache};
use crate::error::{check_len, Error, Result};
use crate::layers::hyena::modal::{ModalBank, OpState, StepScratch};
use crate::ops::linear::linear_forward;

/// Per-sequence state of a distilled model: O(layers · (C·(K−1) + (N−1)·D·M)) numbers,
/// independent of the context length.
#[derive(Clone, Debug, Default)]
pub struct RecurrentState {
    /// One operator state per block.
    blocks: Vec<OpState>,
    /// Tokens consumed so far.
    pub pos: usize,
    /// Logits `[V_pad]` after the last token.
    pub logits: Vec<f32>,
    scratch: BlockScratch,
}

/// Scratch of one block step.
#[derive(Clone, Debug, Default)]
struct BlockScratch {
    h: Vec<f32>,
    y: Vec<f32>,
    a: Vec<f32>,
    g: Vec<f32>,
    op: StepScratch,
}

impl RecurrentState {
    /// Bytes this state holds (for memory reports).
    pub fn bytes(&self) -> usize {
        self.blocks.iter().map(OpState::bytes).sum::<usize>() + self.logits.len() * 4
    }
}

impl Block {
    /// One position of one sequence, in place on the residual row `x [D]`.
    fn step(
        &self,
        p: &[f32],
        x: &mut [f32],
        st: &mut OpState,
        scr: &mut BlockScratch,
    ) -> Result<()> {
        let (d, di) = (self.mlp.d, self.mlp.di);
        let (mut mu, mut rs) = ([0.0f32], [0.0f32]);
        scr.h.resize(d, 0.0);
        scr.y.resize(d, 0.0);
        scr.a.resize(di, 0.0);
        scr.g.resize(di, 0.0);
        self.norm1.forward(p, x, &mut scr.h, &mut mu, &mut rs)?;
        self.mixer.step(p, st, &scr.h, &mut scr.y, &mut scr.op)?;
        for (xv, yv) in x.iter_mut().zip(&scr.y) {
            *xv += yv;
        }
        self.norm2.forward(p, x, &mut scr.h, &mut mu, &mut rs)?;
        self.mlp
            .forward(p, &scr.h, None, 1, &mut scr.a, &mut scr.g, &mut scr.y)?;
        for (xv, yv) in x.iter_mut().zip(&scr.y) {
            *xv += yv;
        }
        Ok(())
    }
}

impl HyenaLm {
    /// Give every block's operator the modal filters of its bank (one bank per block,
    /// `[N−1, D]` filters each): the parallel forward then convolves with their impulse
    /// responses, and [`HyenaLm::step`] runs the same model as a recurrence.
    pub fn set_modal_banks(&mut self, banks: Vec<ModalBank>) -> Result<()> {
        if banks.len() != self.cfg.n_layer {
            return Err(Error::shape(
                "modal filters",
                "banks (one per block)",
                self.cfg.n_layer,
                banks.len(),
            ));
        }
        for (blk, bank) in self.blocks.iter_mut().zip(banks) {
            blk.mixer.set_modal(bank)?;
        }
        Ok(())
    }

    /// Whether every long filter is modal (a distilled model that can step).
    pub fn is_recurrent(&self) -> bool {
        self.blocks.iter().all(|b| b.mixer.modal().is_some())
    }

    /// The modal filters of block `i`, for a distilled model.
    pub fn bank(&self, i: usize) -> Option<&ModalBank> {
        self.blocks[i].mixer.modal()
    }

    /// A zero state (an empty context).
    pub fn empty_state(&self) -> Result<RecurrentState> {
        Ok(RecurrentState {
            blocks: self
                .blocks
                .iter()
                .map(|b| b.mixer.start_state())
                .collect::<Result<_>>()?,
            pos: 0,
            logits: vec![0.0; self.cfg.padded_vocab()],
            scratch: BlockScratch::default(),
        })
    }

    /// Consume `prompt` (at least one token) with the parallel forward and return the state
    /// after it; `state.logits` are those of the prompt's last position.
    pub fn prefill(
        &self,
        p: &[f32],
        prompt: &[u32],
        cache: &mut LmCache,
    ) -> Result<RecurrentState> {
        crate::models::generate::check_prompt(prompt)?;
        let t = prompt.len();
        self.forward(p, prompt, 1, t, cache)?;
        let v = self.cfg.padded_vocab();
        let mut st = self.empty_state()?;
        for (i, blk) in self.blocks.iter().enumerate() {
            st.blocks[i] = blk.mixer.state_after(cache.mixer(i))?;
        }
        st.logits.copy_from_slice(&cache.logits[(t - 1) * v..t * v]);
        st.pos = t;
        Ok(st)
    }

    /// Consume one token: updates `state` and writes its `logits [V_pad]`.
    pub fn step(&self, p: &[f32], token: u32, state: &mut RecurrentState) -> Result<()> {
        let cfg = &self.cfg;
        if token as usize >= cfg.vocab_size {
            return Err(Error::config(
                "token id",
                token,
                format!("must be < vocab_size {}", cfg.vocab_size),
            ));
        }
        check_len(
            "HyenaLm step",
            "state (blocks)",
            state.blocks.len(),
            cfg.n_layer,
        )?;
        let d = cfg.d_model();
        let t = token as usize;
        let mut x = self.wte.of(p)[t * d..(t + 1) * d].to_vec(); // [D]
        for (blk, st) in self.blocks.iter().zip(state.blocks.iter_mut()) {
            blk.step(p, &mut x, st, &mut state.scratch)?;
        }
        let (mut mu, mut rs) = ([0.0f32], [0.0f32]);
        let h = &mut state.scratch.h;
        self.ln_f.forward(p, &x, h, &mut mu, &mut rs)?;
        let v = cfg.padded_vocab();
        state.logits.resize(v, 0.0);
        linear_forward(h, self.lm_head().of(p), None, 1, d, v, &mut state.logits)?;
        state.pos += 1;
        Ok(())
    }
}
