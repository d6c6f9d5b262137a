//! Recurrent (O(1) per token) generation for a language model whose long convolutions are
//! modal filters (Laughing Hyena, spec Sec. 9; the modal step and prefill of Sec. 7.4).
//!
//! Per block and token the step runs
//! `x → LN1 → in_proj → short-filter step (a K−1 FIR state) → gates → modal step → out_proj`,
//! then the MLP, exactly the position-wise maps of the parallel forward; only the two
//! convolutions become recurrences:
//! - short filter: `uc_t = b + Σ_{j<K−1} w_j z_{t−(K−1)+j} + w_{K−1} z_t` with the last K−1
//!   in_proj outputs kept per channel;
//! - long filter (modal, [`crate::distill::modal`]): with the gated input `u_t`,
//!   `y_t = (h_0 + skip) u_t + Re Σ_n R_n s_n`, then `s_n ← λ_n s_n + u_t` (states in f64).
//!
//! Prefill runs the parallel (FFT) forward over the prompt, then reads the state at its last
//! position from the forward's cache: the last K−1 in_proj outputs, and
//! `s_n = Σ_{t<T} λ_n^{T−1−t} u_t` by Horner's rule over the stored gated inputs.

use faer::c64;

use crate::distill::modal::ModalBank;
use crate::error::{check_len, Error, Result};
use crate::models::lm::{HyenaLm, LmCache};
use crate::ops::act::gelu_forward;
use crate::ops::linear::linear_forward;
use crate::ops::norm::layernorm_forward;

/// A language model with modal long filters: `lm`'s operators use the banks' impulse
/// responses in the parallel forward, and [`RecurrentLm::step`] runs the same model as a
/// recurrence.
#[derive(Clone, Debug)]
pub struct RecurrentLm {
    pub lm: HyenaLm,
    /// One bank per block (`[N−1, D]` modal filters).
    pub banks: Vec<ModalBank>,
}

/// Per-sequence state of a [`RecurrentLm`]: O(layers · (C·(K−1) + (N−1)·D·M)) numbers,
/// independent of the context length.
#[derive(Clone, Debug, Default)]
pub struct RecurrentState {
    /// Per block: the last K−1 in_proj outputs `[C, K−1]`, oldest first.
    fir: Vec<Vec<f32>>,
    /// Per block: modal states `[N−1, D, M]`.
    modal: Vec<Vec<c64>>,
    /// Tokens consumed so far.
    pub pos: usize,
    /// Logits `[V_pad]` after the last token.
    pub logits: Vec<f32>,
}

impl RecurrentState {
    /// Bytes this state holds (for memory reports).
    pub fn bytes(&self) -> usize {
        self.fir.iter().map(|f| f.len() * 4).sum::<usize>()
            + self.modal.iter().map(|m| m.len() * 16).sum::<usize>()
            + self.logits.len() * 4
    }
}

impl RecurrentLm {
    /// Wrap `lm` with one bank per block; the operators switch to the banks' filters.
    pub fn new(mut lm: HyenaLm, banks: Vec<ModalBank>) -> Result<Self> {
        let (n, d, l_max) = (
            lm.cfg.operator.order,
            lm.cfg.d_model(),
            lm.cfg.operator.l_max,
        );
        if banks.len() != lm.cfg.n_layer {
            return Err(Error::shape(
                "RecurrentLm",
                "modal banks (one per block)",
                lm.cfg.n_layer,
                banks.len(),
            ));
        }
        for (i, b) in banks.iter().enumerate() {
            if b.stages != n - 1 || b.d != d {
                return Err(Error::shape(
                    "RecurrentLm",
                    format!("modal bank of block {i} [stages, D]"),
                    format!("[{}, {d}]", n - 1),
                    format!("[{}, {}]", b.stages, b.d),
                ));
            }
            lm.operator_mut(i)
                .set_explicit_filters(Some(b.impulse(l_max)))?;
        }
        Ok(RecurrentLm { lm, banks })
    }

    /// A zero state (an empty context).
    pub fn empty_state(&self) -> RecurrentState {
        let cfg = &self.lm.cfg;
        let (c, k) = (
            cfg.operator.inner_channels(),
            cfg.operator.short_filter_order,
        );
        RecurrentState {
            fir: vec![vec![0.0; c * (k - 1)]; cfg.n_layer],
            modal: self
                .banks
                .iter()
                .map(|b| vec![c64::new(0.0, 0.0); b.stages * b.d * b.m])
                .collect(),
            pos: 0,
            logits: vec![0.0; cfg.padded_vocab()],
        }
    }

    /// Consume `prompt` (at least one token) with the parallel forward and return the state
    /// after it; `state.logits` are those of the prompt's last position.
    pub fn prefill(&self, prompt: &[u32], cache: &mut LmCache) -> Result<RecurrentState> {
        crate::models::generate::check_prompt(prompt)?;
        let t = prompt.len();
        self.lm.forward(prompt, 1, t, cache)?;
        let cfg = &self.lm.cfg;
        let (n, d) = (cfg.operator.order, cfg.d_model());
        let (c, k) = (
            cfg.operator.inner_channels(),
            cfg.operator.short_filter_order,
        );
        let v = cfg.padded_vocab();
        let mut st = self.empty_state();
        for (i, bank) in self.banks.iter().enumerate() {
            let mc = cache.mixer(i);
            let (z, uc, conv) = (mc.z(), mc.uc(), mc.conv());
            // FIR state: z[c, T−(K−1) .. T], zeros before the start.
            for ch in 0..c {
                for j in 0..k - 1 {
                    let pos = (t + j) as isize - (k - 1) as isize;
                    st.fir[i][ch * (k - 1) + j] = if pos >= 0 {
                        z[ch * t + pos as usize]
                    } else {
                        0.0
                    };
                }
            }
            // Modal states by Horner over the gated inputs of each stage.
            let m = bank.m;
            for o in 0..n - 1 {
                let input = if o == 0 {
                    &uc[n * d * t..(n + 1) * d * t]
                } else {
                    &conv[(o - 1) * d * t..o * d * t]
                };
                let pre = &uc[(n - 1 - o) * d * t..(n - o) * d * t];
                for ch in 0..d {
                    let f = o * d + ch;
                    let s = &mut st.modal[i][f * m..(f + 1) * m];
                    let poles = &bank.poles[f * m..(f + 1) * m];
                    for tt in 0..t {
                        let u = (input[ch * t + tt] * pre[ch * t + tt]) as f64;
                        for (sn, &p) in s.iter_mut().zip(poles) {
                            *sn = *sn * p + u;
                        }
                    }
                }
            }
        }
        st.logits.copy_from_slice(&cache.logits[(t - 1) * v..t * v]);
        st.pos = t;
        Ok(st)
    }

    /// Consume one token: updates `state` and writes its `logits [V_pad]`.
    pub fn step(&self, token: u32, state: &mut RecurrentState) -> Result<()> {
        let lm = &self.lm;
        let cfg = &lm.cfg;
        if token as usize >= cfg.vocab_size {
            return Err(Error::config(
                "token id",
                token,
                format!("must be < vocab_size {}", cfg.vocab_size),
            ));
        }
        check_len(
            "RecurrentLm step",
            "state (blocks)",
            state.fir.len(),
            cfg.n_layer,
        )?;
        let (n, d, di) = (cfg.operator.order, cfg.d_model(), cfg.d_inner);
        let (c, k) = (
            cfg.operator.inner_channels(),
            cfg.operator.short_filter_order,
        );
        let eps = cfg.layer_norm_epsilon;
        let p = &lm.params;
        let t = token as usize;
        let mut x = p.wte[t * d..(t + 1) * d].to_vec(); // [D]
        let (mut h, mut mu, mut rs) = (vec![0.0f32; d], [0.0f32], [0.0f32]);
        let (mut z, mut uc) = (vec![0.0f32; c], vec![0.0f32; c]);
        let (mut yg, mut y, mut a, mut g) = (
            vec![0.0f32; d],
            vec![0.0f32; d],
            vec![0.0f32; di],
            vec![0.0f32; di],
        );
        for (i, bp) in p.blocks.iter().enumerate() {
            let mp = &bp.mixer;
            let op = lm.operator(i);
            let bank = &self.banks[i];
            layernorm_forward(
                &x,
                &bp.norm1_w,
                &bp.norm1_b,
                d,
                eps,
                &mut h,
                &mut mu,
                &mut rs,
            )?;
            linear_forward(&h, &mp.in_w, Some(&mp.in_b), 1, d, c, &mut z)?;
            // Short filter: the newest sample meets w[K−1].
            let fir = &mut state.fir[i];
            for ch in 0..c {
                let w = &mp.short_w[ch * k..(ch + 1) * k];
                let past = &mut fir[ch * (k - 1)..(ch + 1) * (k - 1)];
                let mut acc = mp.short_b[ch];
                for (wj, pj) in w.iter().zip(past.iter()) {
                    acc += wj * pj;
                }
                uc[ch] = acc + w[k - 1] * z[ch];
                if k > 1 {
                    past.rotate_left(1);
                    past[k - 2] = z[ch];
                }
            }
            // Gated modal convolutions, stage by stage.
            let m = bank.m;
            let s_all = &mut state.modal[i];
            let mut cur: Vec<f32> = uc[n * d..(n + 1) * d].to_vec(); // v
            for o in 0..n - 1 {
                let pre = &uc[(n - 1 - o) * d..(n - o) * d];
                for ch in 0..d {
                    let f = o * d + ch;
                    let u = (cur[ch] * pre[ch]) as f64;
                    let skip = mp.filter.bias[op.filter.channel(o, ch)] as f64;
                    let s = &mut s_all[f * m..(f + 1) * m];
                    let (poles, res) = (
                        &bank.poles[f * m..(f + 1) * m],
                        &bank.residues[f * m..(f + 1) * m],
                    );
                    let mut out = (bank.h0[f] + skip) * u;
                    for ((sn, &pl), &r) in s.iter_mut().zip(poles).zip(res) {
                        out += (r * *sn).re;
                        *sn = *sn * pl + u;
                    }
                    cur[ch] = out as f32;
                }
            }
            for ch in 0..d {
                yg[ch] = cur[ch] * uc[ch]; // x_0 ⊙ v
            }
            linear_forward(&yg, &mp.out_w, Some(&mp.out_b), 1, d, d, &mut y)?;
            for (xv, yv) in x.iter_mut().zip(&y) {
                *xv += yv;
            }
            layernorm_forward(
                &x,
                &bp.norm2_w,
                &bp.norm2_b,
                d,
                eps,
                &mut h,
                &mut mu,
                &mut rs,
            )?;
            linear_forward(&h, &bp.fc1_w, Some(&bp.fc1_b), 1, d, di, &mut a)?;
            gelu_forward(&a, &mut g)?;
            linear_forward(&g, &bp.fc2_w, Some(&bp.fc2_b), 1, di, d, &mut y)?;
            for (xv, yv) in x.iter_mut().zip(&y) {
                *xv += yv;
            }
        }
        layernorm_forward(&x, &p.lnf_w, &p.lnf_b, d, eps, &mut h, &mut mu, &mut rs)?;
        let v = cfg.padded_vocab();
        state.logits.resize(v, 0.0);
        linear_forward(&h, lm.lm_head(), None, 1, d, v, &mut state.logits)?;
        state.pos += 1;
        Ok(())
    }
}
