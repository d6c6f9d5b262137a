//! Memory-lean inference for one long sequence: hidden states (embeddings) and per-base
//! log-likelihoods of a HyenaDNA model at up to a million bases on a CPU.
//!
//! Each block runs in place on the residual stream, chunk by chunk
//! ([`crate::layers::lean`]): the operator's half by [`HyenaOperator::forward_lean`] (its
//! algorithm and memory budget are described there), the MLP's by
//! [`InferWorkspace::mlp_pass`], with the block's own norm, operator and MLP objects: the same
//! layers as the training forward. Results equal the training forward's up to float rounding
//! (tested below). Order-2 operators (HyenaDNA) only.
//!
//! [`HyenaOperator::forward_lean`]: crate::layers::HyenaOperator::forward_lean

use super::model::HyenaLm;
use crate::error::{Error, Result};
use crate::layers::lean::InferWorkspace;
use crate::ops::grow;
use crate::ops::linear::{matmul, MatMut, MatRef};
use crate::ops::loss::log_prob;

impl HyenaLm {
    /// Whether [`HyenaLm::hidden_states`] and [`HyenaLm::log_likelihood`] can run this model
    /// (order-2 operators).
    pub fn check_lean(&self) -> Result<()> {
        match self.blocks.first() {
            Some(b) => b.mixer.check_lean(),
            None => Ok(()),
        }
    }

    /// Run the first `n_blocks` blocks on `tokens [L]`; leaves the residual stream in `ws`.
    fn run_lean(
        &self,
        p: &[f32],
        tokens: &[u32],
        n_blocks: usize,
        ws: &mut InferWorkspace,
    ) -> Result<()> {
        const OP: &str = "lean forward";
        self.check_lean()?;
        let cfg = &self.cfg;
        let (l, d, vp) = (tokens.len(), cfg.d_model(), cfg.padded_vocab());
        if l == 0 {
            return Err(Error::shape(OP, "sequence length", "L >= 1", 0));
        }
        if l > cfg.operator.l_max {
            return Err(Error::TooLong {
                op: OP,
                len: l,
                l_max: cfg.operator.l_max,
            });
        }
        if n_blocks > cfg.n_layer {
            return Err(Error::config(
                "layer",
                n_blocks,
                format!("the model has {} blocks (0 = embeddings)", cfg.n_layer),
            ));
        }
        if let Some(&tok) = tokens.iter().find(|&&t| t as usize >= vp) {
            return Err(Error::shape(OP, "token id", format!("< {vp}"), tok));
        }
        ws.start(l, d);
        let pch = ws.chunk;
        let wte = self.wte.of(p);
        for t0 in (0..l).step_by(pch) {
            let t1 = (t0 + pch).min(l);
            let xr = ws.x.modify(t0 * d, t1 * d);
            for (row, &tok) in xr.chunks_exact_mut(d).zip(&tokens[t0..t1]) {
                let tok = tok as usize;
                row.copy_from_slice(&wte[tok * d..(tok + 1) * d]);
            }
            ws.x.commit(t0 * d, t1 * d);
        }
        for (i, blk) in self.blocks[..n_blocks].iter().enumerate() {
            crate::interrupt::check()?;
            blk.mixer.forward_lean(p, &blk.norm1, ws)?;
            ws.mlp_pass(p, &blk.norm2, &blk.mlp)?;
            if let Some(f) = ws.on_block.as_mut() {
                f(i + 1, n_blocks);
            }
        }
        Ok(())
    }

    /// Hidden states of `tokens [L]` after `layer` blocks (0: the embeddings; `n_layer`: the
    /// final ones, after `ln_f`, as HyenaDNA's backbone returns them). Returns `[L, D]` rows,
    /// borrowed from `ws`.
    pub fn hidden_states<'w>(
        &self,
        p: &[f32],
        tokens: &[u32],
        layer: usize,
        ws: &'w mut InferWorkspace,
    ) -> Result<&'w [f32]> {
        self.run_lean(p, tokens, layer, ws)?;
        if layer == self.cfg.n_layer {
            ws.norm_pass(p, &self.ln_f)?;
        }
        Ok(ws.finish())
    }

    /// Log-likelihood (natural log) of each token given its prefix: `out[t] = log p(tok[t+1] |
    /// tok[..=t])` for `t < L−1` (`L−1` values; the first token has no prediction). The
    /// softmax runs over all `V_pad` logits, as the reference's cross-entropy does. Returns
    /// the sum in f64.
    pub fn log_likelihood(
        &self,
        p: &[f32],
        tokens: &[u32],
        ws: &mut InferWorkspace,
        out: &mut Vec<f32>,
    ) -> Result<f64> {
        out.clear();
        out.reserve(tokens.len().saturating_sub(1));
        let mut total = 0.0f64;
        let l = tokens.len();
        self.head_chunks(p, tokens, ws, |t0, logits, vp| {
            for (r, row) in logits.chunks_exact(vp).enumerate() {
                let t = t0 + r;
                if t + 1 >= l {
                    break;
                }
                let lp = log_prob(row, tokens[t + 1] as usize);
                out.push(lp as f32);
                total += lp;
            }
        })?;
        Ok(total)
    }

    /// Logits `[L, V_pad]` of every position into `out` (all `V_pad` columns, as the
    /// reference's `lm_head` returns them); returns `V_pad`.
    pub fn logits(
        &self,
        p: &[f32],
        tokens: &[u32],
        ws: &mut InferWorkspace,
        out: &mut Vec<f32>,
    ) -> Result<usize> {
        out.clear();
        let vp = self.cfg.padded_vocab();
        crate::memory::check_fits(
            &format!("the logits of {} tokens", tokens.len()),
            crate::memory::floats(crate::memory::mul(&[tokens.len(), vp])),
            "the sequence's length",
        )?;
        out.reserve(tokens.len() * vp);
        self.head_chunks(p, tokens, ws, |_, logits, _| out.extend_from_slice(logits))?;
        Ok(vp)
    }

    /// The final states of `tokens` through `lm_head`, chunk by chunk: `each(t0, logits
    /// [n, V_pad], V_pad)` for the chunk of positions starting at `t0`.
    fn head_chunks(
        &self,
        p: &[f32],
        tokens: &[u32],
        ws: &mut InferWorkspace,
        mut each: impl FnMut(usize, &[f32], usize),
    ) -> Result<()> {
        self.run_lean(p, tokens, self.cfg.n_layer, ws)?;
        ws.norm_pass(p, &self.ln_f)?;
        let (l, d, pch) = (ws.l, ws.d, ws.chunk);
        let vp = self.cfg.padded_vocab();
        let head = self.lm_head().of(p);
        grow(&mut ws.u, pch * vp);
        for t0 in (0..l).step_by(pch) {
            let t1 = (t0 + pch).min(l);
            let n = t1 - t0;
            let logits = &mut ws.u[..n * vp];
            matmul(
                MatMut::rm(logits, n, vp),
                MatRef::rm(ws.x.read(t0 * d, t1 * d), n, d),
                MatRef::tr(head, d, vp),
                false,
            )?;
            each(t0, logits, vp);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::layers::hyena::lean::FILTER_GROUP;
    use crate::layers::lean::InferWorkspace;
    use crate::models::hyenadna::{HyenaLm, LmCache, LmConfig};
    use crate::params::ParamStore;
    use crate::testing::rand_vec;

    /// A 2-block model of width `d` and filter MLP width `f`, every parameter moved away from
    /// its init so that each one matters.
    fn model(d: usize, f: usize, l_max: usize, seed: u64) -> (HyenaLm, ParamStore) {
        let mut cfg = LmConfig::hyenadna(d, 2, l_max);
        cfg.d_inner = 2 * d;
        cfg.operator.filter.filter_order = f;
        let (lm, mut store) = HyenaLm::fresh(&cfg, seed).unwrap();
        let specs = store.specs().to_vec();
        for (i, s) in specs.iter().enumerate() {
            let r = rand_vec(s.handle.len(), 91 + i as u64, 0.3);
            for (x, n) in s.handle.of_mut(store.data_mut()).iter_mut().zip(r) {
                *x += n;
            }
        }
        (lm, store)
    }

    fn tokens(n: usize, seed: u64) -> Vec<u32> {
        rand_vec(n, seed, 1.0)
            .iter()
            .map(|v| 7 + ((v + 1.0) * 2.499) as u32)
            .collect()
    }

    /// The final hidden states of the lean forward against the training forward's, for `lm`
    /// at several lengths and chunk sizes.
    fn check_against_training((lm, store): &(HyenaLm, ParamStore), what: &str) {
        let p = store.data();
        for l in [1usize, 9, 130, 257] {
            let toks = tokens(l, 3 + l as u64);
            let mut cache = LmCache::default();
            lm.forward_hidden(p, &toks, 1, l, &mut cache).unwrap();
            let want = cache.hidden();
            let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            for chunk in [5usize, 64, 2048] {
                let mut ws = InferWorkspace::new(chunk);
                let got = lm.hidden_states(p, &toks, lm.cfg.n_layer, &mut ws).unwrap();
                let err = got
                    .iter()
                    .zip(want)
                    .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                // Float rounding only: about 1e-6 of the scale, up to 3e-5 with 5-row chunks
                // (the same as before the channel split and the M-point transforms).
                assert!(
                    err < 1e-4 * scale,
                    "{what}: L={l} chunk={chunk}: {err} (scale {scale})"
                );
                let mut lp = Vec::new();
                let total = lm.log_likelihood(p, &toks, &mut ws, &mut lp).unwrap();
                assert_eq!(lp.len(), l - 1);
                assert!(total.is_finite());
            }
        }
    }

    /// F < D with several groups on both sides of the split, neither a multiple of the group:
    /// channels [0, 25) are convolved while the filter MLP's output sits in the rows of
    /// [25, 45), which then take their filters and run in groups of their own.
    #[test]
    fn split_channels_match_the_training_forward() {
        let (d, f) = (45, 20);
        let g = FILTER_GROUP;
        assert!(d - f > g && f > g && (d - f) % g != 0 && f % g != 0);
        check_against_training(&model(d, f, 300, 1), "split");
    }

    /// F = D: every channel lends its row to the filter MLP's output first.
    #[test]
    fn all_channels_in_the_second_set() {
        check_against_training(&model(16, 16, 300, 2), "F = D");
    }

    /// F > D: the filter MLP's output cannot sit in Y and has its own buffer.
    #[test]
    fn wide_filter_mlp_uses_its_own_buffer() {
        check_against_training(&model(12, 20, 300, 3), "F > D");
    }

    /// Explicit (distilled) filters: convolved straight from the model's rows.
    #[test]
    fn explicit_filters_match_the_training_forward() {
        let (mut lm, store) = model(20, 16, 300, 4);
        for i in 0..lm.cfg.n_layer {
            let k = rand_vec(20 * 300, 40 + i as u64, 0.2);
            lm.operator_mut(i).set_explicit_filters(Some(k)).unwrap();
        }
        check_against_training(&(lm, store), "explicit");
    }
}
