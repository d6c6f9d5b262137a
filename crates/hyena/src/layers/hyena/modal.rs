//! Modal (complex-diagonal) long filters: a filter as a direct term plus modes,
//! `ĥ_0 = h_0`, `ĥ_t = Re Σ_n R_n λ_n^{t−1}` for `t ≥ 1` (Massaroli et al., "Laughing Hyena
//! Distillery", arXiv 2310.18780, Sec. 3; the modal form StripedHyena stores as
//! `poles`/`residues`). It is the impulse response of the recurrence
//! `y_t = h_0 u_t + Re Σ_n R_n s_n(t)`, `s_n(t+1) = λ_n s_n(t) + u_t` (state read before
//! update): what a distilled Hyena operator steps token by token
//! ([`crate::layers::HyenaOperator::step`]). A real pole costs one state dimension; a complex
//! pole stands for a conjugate pair and costs two. Fitting these to a trained filter is
//! [`crate::distill`]'s job.

use faer::c64;

use super::{HyenaCache, HyenaOperator};
use crate::error::{Error, Result};
use crate::ops::linear::linear_forward;

/// One mode of a [`ModalFilter`]: a real pole (`pole.im == 0`, real residue) or a complex pole
/// standing for a conjugate pair.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mode {
    pub pole: c64,
    pub residue: c64,
}

impl Mode {
    /// Whether this is a real pole (one state dimension) rather than a conjugate pair (two).
    pub fn is_real(&self) -> bool {
        self.pole.im == 0.0
    }
    /// Real state dimension: 1 or 2.
    pub fn dim(&self) -> usize {
        if self.is_real() {
            1
        } else {
            2
        }
    }
}

/// A filter as direct term plus modes (see the module docs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModalFilter {
    /// The lag-0 tap `h_0`, kept exactly.
    pub h0: f64,
    pub modes: Vec<Mode>,
}

impl ModalFilter {
    /// Real state dimension (Σ of the modes' dims).
    pub fn order(&self) -> usize {
        self.modes.iter().map(Mode::dim).sum()
    }

    /// The impulse response `ĥ [l]`.
    pub fn impulse(&self, l: usize) -> Vec<f64> {
        let mut out = vec![0.0; l];
        if l == 0 {
            return out;
        }
        out[0] = self.h0;
        for m in &self.modes {
            let mut z = m.residue; // R λ^{t−1} at t = 1
            for o in out.iter_mut().skip(1) {
                *o += z.re;
                z *= m.pole;
            }
        }
        out
    }
}

/// The modal filters of one Hyena operator: `S = N−1` stages × `D` channels, each padded to
/// the same number `M` of modes (padding modes have pole and residue 0, so they add nothing).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModalBank {
    pub stages: usize,
    pub d: usize,
    /// Modes per filter.
    pub m: usize,
    /// Lag-0 taps `[S, D]`.
    pub h0: Vec<f64>,
    /// `[S, D, M]`.
    pub poles: Vec<c64>,
    /// `[S, D, M]`.
    pub residues: Vec<c64>,
}

impl ModalBank {
    /// Pack `filters [S·D]` (stage-major).
    pub fn from_filters(stages: usize, d: usize, filters: &[ModalFilter]) -> Result<Self> {
        if filters.len() != stages * d {
            return Err(Error::shape(
                "ModalBank",
                "filters [S, D]",
                format!("{stages}·{d} = {}", stages * d),
                filters.len(),
            ));
        }
        let m = filters.iter().map(|f| f.modes.len()).max().unwrap_or(0);
        let zero = c64::new(0.0, 0.0);
        let mut bank = ModalBank {
            stages,
            d,
            m,
            h0: filters.iter().map(|f| f.h0).collect(),
            poles: vec![zero; stages * d * m],
            residues: vec![zero; stages * d * m],
        };
        for (i, f) in filters.iter().enumerate() {
            for (j, md) in f.modes.iter().enumerate() {
                bank.poles[i * m + j] = md.pole;
                bank.residues[i * m + j] = md.residue;
            }
        }
        Ok(bank)
    }

    /// Filter `i` of `[S·D]` (padding modes dropped).
    pub fn filter(&self, i: usize) -> ModalFilter {
        let modes = (0..self.m)
            .map(|j| Mode {
                pole: self.poles[i * self.m + j],
                residue: self.residues[i * self.m + j],
            })
            .filter(|md| md.residue != c64::new(0.0, 0.0) || md.pole != c64::new(0.0, 0.0))
            .collect();
        ModalFilter {
            h0: self.h0[i],
            modes,
        }
    }

    /// Impulse responses `[S, D, l]` in f32.
    pub fn impulse(&self, l: usize) -> Vec<f32> {
        (0..self.stages * self.d)
            .flat_map(|i| self.filter(i).impulse(l).into_iter().map(|v| v as f32))
            .collect()
    }
}

/// The state of one distilled Hyena operator for one sequence: O(C·(K−1) + (N−1)·D·M)
/// numbers, independent of the context length.
#[derive(Clone, Debug, Default)]
pub struct OpState {
    /// The last K−1 in_proj outputs `[C, K−1]`, oldest first (the short filter's FIR state).
    pub fir: Vec<f32>,
    /// Modal states `[N−1, D, M]`.
    pub modal: Vec<c64>,
}

impl OpState {
    /// Bytes this state holds (for memory reports).
    pub fn bytes(&self) -> usize {
        self.fir.len() * 4 + self.modal.len() * 16
    }
}

/// Scratch of [`HyenaOperator::step`] for one position.
#[derive(Clone, Debug, Default)]
pub struct StepScratch {
    z: Vec<f32>,
    uc: Vec<f32>,
    cur: Vec<f32>,
    yg: Vec<f32>,
}

impl HyenaOperator {
    /// Make the long filters the modal filters of `bank` (`[N−1, D]` filters): the parallel
    /// forward convolves with their impulse responses at `l_max`, and [`HyenaOperator::step`]
    /// runs them as recurrences.
    pub fn set_modal(&mut self, bank: ModalBank) -> Result<()> {
        let (s, d) = (self.cfg.order - 1, self.cfg.d_model);
        if bank.stages != s || bank.d != d {
            return Err(Error::shape(
                "modal filters",
                "bank [stages, D]",
                format!("[{s}, {d}]"),
                format!("[{}, {}]", bank.stages, bank.d),
            ));
        }
        self.set_explicit_filters(Some(bank.impulse(self.cfg.l_max)))?;
        self.modal = Some(std::sync::Arc::new(bank));
        Ok(())
    }

    /// The modal filters, for a distilled operator.
    pub fn modal(&self) -> Option<&ModalBank> {
        self.modal.as_deref()
    }

    /// The state before a sequence's first token.
    pub fn start_state(&self) -> Result<OpState> {
        let bank = self.modal_bank("start_state")?;
        let (c, k) = (self.cfg.inner_channels(), self.cfg.short_filter_order);
        Ok(OpState {
            fir: vec![0.0; c * (k - 1)],
            modal: vec![c64::new(0.0, 0.0); bank.stages * bank.d * bank.m],
        })
    }

    fn modal_bank(&self, op: &'static str) -> Result<&ModalBank> {
        self.modal.as_deref().ok_or_else(|| {
            Error::config(
                op,
                "implicit long filters",
                "only a distilled operator (modal filters) has a recurrent step: make one with \
                 `hyena distill`",
            )
        })
    }

    /// The state after the `t` positions of the last forward on one sequence (read from its
    /// cache): the last K−1 in_proj outputs, and `s_n = Σ_{τ<t} λ_n^{t−1−τ} u_τ` by Horner's
    /// rule over the stored gated inputs of each stage.
    pub fn state_after(&self, cache: &HyenaCache) -> Result<OpState> {
        let bank = self.modal_bank("prefill")?;
        let (b, t) = cache.dims();
        if b != 1 {
            return Err(Error::shape("prefill", "batch of the forward", 1, b));
        }
        let (n, d) = (self.cfg.order, self.cfg.d_model);
        let (c, k) = (self.cfg.inner_channels(), self.cfg.short_filter_order);
        let mut st = self.start_state()?;
        let (z, uc, conv) = (cache.z(), cache.uc(), cache.conv());
        // FIR state: z[c, T−(K−1) .. T], zeros before the start.
        for ch in 0..c {
            for j in 0..k - 1 {
                let pos = (t + j) as isize - (k - 1) as isize;
                st.fir[ch * (k - 1) + j] = if pos >= 0 {
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
                let s = &mut st.modal[f * m..(f + 1) * m];
                let poles = &bank.poles[f * m..(f + 1) * m];
                for tt in 0..t {
                    let u = (input[ch * t + tt] * pre[ch * t + tt]) as f64;
                    for (sn, &p) in s.iter_mut().zip(poles) {
                        *sn = *sn * p + u;
                    }
                }
            }
        }
        Ok(st)
    }

    /// One position of one sequence: `y [D] = operator(u [D])`, advancing `state`. The
    /// position-wise maps are the parallel forward's; the two convolutions become
    /// recurrences: the short filter a FIR over the last K−1 in_proj outputs (the newest sample
    /// meets `w[K−1]`), each long filter its modal step
    /// `y_t = (h_0 + skip) u_t + Re Σ_n R_n s_n`, `s_n ← λ_n s_n + u_t` (states in f64).
    pub fn step(
        &self,
        p: &[f32],
        state: &mut OpState,
        u: &[f32],
        y: &mut [f32],
        scr: &mut StepScratch,
    ) -> Result<()> {
        let bank = self.modal_bank("step")?;
        let (n, d) = (self.cfg.order, self.cfg.d_model);
        let (c, k) = (self.cfg.inner_channels(), self.cfg.short_filter_order);
        let pr = &self.proj;
        scr.z.resize(c, 0.0);
        scr.uc.resize(c, 0.0);
        scr.yg.resize(d, 0.0);
        linear_forward(u, pr.in_w.of(p), Some(pr.in_b.of(p)), 1, d, c, &mut scr.z)?;
        // Short filter: the newest sample meets w[K−1].
        let (short_w, short_b) = (pr.short_w.of(p), pr.short_b.of(p));
        for ch in 0..c {
            let w = &short_w[ch * k..(ch + 1) * k];
            let past = &mut state.fir[ch * (k - 1)..(ch + 1) * (k - 1)];
            let mut acc = short_b[ch];
            for (wj, pj) in w.iter().zip(past.iter()) {
                acc += wj * pj;
            }
            scr.uc[ch] = acc + w[k - 1] * scr.z[ch];
            if k > 1 {
                past.rotate_left(1);
                past[k - 2] = scr.z[ch];
            }
        }
        // Gated modal convolutions, stage by stage.
        let m = bank.m;
        let skip = self.filter.bias().of(p);
        scr.cur.clear();
        scr.cur.extend_from_slice(&scr.uc[n * d..(n + 1) * d]); // v
        for o in 0..n - 1 {
            let pre = &scr.uc[(n - 1 - o) * d..(n - o) * d];
            for ch in 0..d {
                let f = o * d + ch;
                let uf = (scr.cur[ch] * pre[ch]) as f64;
                let sk = skip[self.filter.channel(o, ch)] as f64;
                let s = &mut state.modal[f * m..(f + 1) * m];
                let (poles, res) = (
                    &bank.poles[f * m..(f + 1) * m],
                    &bank.residues[f * m..(f + 1) * m],
                );
                let mut out = (bank.h0[f] + sk) * uf;
                for ((sn, &pl), &r) in s.iter_mut().zip(poles).zip(res) {
                    out += (r * *sn).re;
                    *sn = *sn * pl + uf;
                }
                scr.cur[ch] = out as f32;
            }
        }
        for ch in 0..d {
            scr.yg[ch] = scr.cur[ch] * scr.uc[ch]; // x_0 ⊙ v
        }
        linear_forward(&scr.yg, pr.out_w.of(p), Some(pr.out_b.of(p)), 1, d, d, y)
    }
}
