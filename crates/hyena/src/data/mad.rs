//! The six MAD synthetic tasks: settings, difficulty sweeps, data generators and accuracy.
//!
//! MAD = Mechanistic Architecture Design, Poli et al., "Mechanistic Design and Scaling of
//! Hybrid Architectures", arXiv 2403.17844 (reference code: athms/mad-lab,
//! `mad/data/instances.py` for the generators, `configs/tasks/*.yml` for the baselines and
//! sweeps, `train.py` for the accuracy metric).
//!
//! # Conventions
//! - Targets use the ignore index [`IGNORE`] = −100 for positions that are not scored.
//! - One RNG ([`StdRng`] seeded with [`TaskSetting::seed`]) is shared sequentially: the train set
//!   is generated first, then the test set, from the same stream (as mad-lab's `train.py`). Only
//!   the generation rules are reproduced, not numpy's bit stream.
//! - Every example has `inputs: [T]` and `targets: [T]` with `T = TaskData::seq_len`, the model
//!   input length (for the recall tasks `T = seq_len − 1` after the autoregressive shift).
//!
//! # Example
//! ```
//! use hyena::data::mad::{baseline, generate, MadTask};
//!
//! let mut s = baseline(MadTask::SelectiveCopying);
//! s.num_train = 8; // keep the doc test fast
//! s.num_test = 4;
//! let data = generate(&s)?;
//! assert_eq!(data.train.len(), 8);
//! assert_eq!(data.test[0].inputs.len(), 256); // [T]
//! # Ok::<(), hyena::Error>(())
//! ```

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Target value of positions that are not scored (PyTorch's `ignore_index`).
pub const IGNORE: i32 = -100;

/// Size of the fixed test set of every MAD task setting (mad-lab `configs/tasks/*.yml`).
pub const NUM_TEST: usize = 1280;

/// Seed of the MAD runs (mad-lab's `np.random.default_rng(12345)`).
pub const DEFAULT_SEED: u64 = 12345;

// ---------------------------------------------------------------------------------------------
// Task names
// ---------------------------------------------------------------------------------------------

/// One of the six MAD tasks (mad-lab `mad/data/instances.py`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MadTask {
    /// Multi-query associative recall of single-token keys and values.
    InContextRecall,
    /// Associative recall with keys and values of 1..=k (1..=v) tokens.
    FuzzyInContextRecall,
    /// In-context recall with noise-token pairs interleaved.
    NoisyInContextRecall,
    /// Copy the content tokens of a sequence interspersed with blanks.
    SelectiveCopying,
    /// Encode a random sequence into one vector and decode it back (encoder-decoder).
    Compression,
    /// Recall a fixed key→value map that is the same in every sequence (memorised in weights).
    Memorization,
}

impl MadTask {
    /// The kebab-case name used by MAD's configs, e.g. `"in-context-recall"`.
    pub fn name(self) -> &'static str {
        match self {
            MadTask::InContextRecall => "in-context-recall",
            MadTask::FuzzyInContextRecall => "fuzzy-in-context-recall",
            MadTask::NoisyInContextRecall => "noisy-in-context-recall",
            MadTask::SelectiveCopying => "selective-copying",
            MadTask::Compression => "compression",
            MadTask::Memorization => "memorization",
        }
    }

    /// Parse a kebab-case name; the error lists the valid names.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::all()
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| {
                let valid: Vec<&str> = Self::all().iter().map(|t| t.name()).collect();
                Error::config(
                    "task",
                    name,
                    format!("unknown MAD task; valid names: {}", valid.join(", ")),
                )
            })
    }

    /// All six tasks in the order of the MAD paper.
    pub fn all() -> [MadTask; 6] {
        [
            MadTask::InContextRecall,
            MadTask::FuzzyInContextRecall,
            MadTask::NoisyInContextRecall,
            MadTask::SelectiveCopying,
            MadTask::Compression,
            MadTask::Memorization,
        ]
    }
}

impl std::fmt::Display for MadTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------
// Settings and sweeps
// ---------------------------------------------------------------------------------------------

/// One task setting: the generator arguments of one MAD run (mad-lab `mad/data/instances.py`,
/// `configs/tasks/*.yml`).
///
/// Fields that a task does not use keep MAD's defaults (`k_motif_size = v_motif_size = 1`,
/// `n_copy = 16`, no noise) and are ignored by its generator.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskSetting {
    /// Which task.
    pub task: MadTask,
    /// Vocabulary size V, special and noise tokens included (= number of model classes).
    pub vocab_size: usize,
    /// Sequence length L as in MAD's configs (before the recall tasks' shift by one).
    pub seq_len: usize,
    /// Number of training examples.
    pub num_train: usize,
    /// Number of test examples (1280 in MAD).
    pub num_test: usize,
    /// Probability that a pair slot is noise (recall tasks, memorization) or that a token is
    /// replaced by noise (compression). In `[0, 1)`.
    pub frac_noise: f64,
    /// Number of noise tokens; they are the last non-special ids (`noise_vocab_size ≤ V`).
    pub noise_vocab_size: usize,
    /// Maximum key motif size (fuzzy recall).
    pub k_motif_size: usize,
    /// Maximum value motif size (fuzzy recall).
    pub v_motif_size: usize,
    /// Number of tokens to copy (selective copying).
    pub n_copy: usize,
    /// Multi-query recall (MAD: true). When false, a copy-prefix token V−1 precedes the final
    /// probe and only that probe is scored.
    pub multi_query: bool,
    /// Seed of the one data RNG (and of memorization's fixed map).
    pub seed: u64,
}

/// The baseline setting of a task (mad-lab `configs/tasks/*.yml`).
pub fn baseline(task: MadTask) -> TaskSetting {
    let base = TaskSetting {
        task,
        vocab_size: 16,
        seq_len: 128,
        num_train: 12800,
        num_test: NUM_TEST,
        frac_noise: 0.0,
        noise_vocab_size: 0,
        k_motif_size: 1,
        v_motif_size: 1,
        n_copy: 16,
        multi_query: true,
        seed: DEFAULT_SEED,
    };
    match task {
        MadTask::InContextRecall => base,
        MadTask::FuzzyInContextRecall => TaskSetting {
            k_motif_size: 3,
            v_motif_size: 3,
            ..base
        },
        MadTask::NoisyInContextRecall => TaskSetting {
            vocab_size: 32,
            noise_vocab_size: 16,
            frac_noise: 0.2,
            ..base
        },
        MadTask::SelectiveCopying => TaskSetting {
            seq_len: 256,
            ..base
        },
        MadTask::Compression => TaskSetting {
            seq_len: 32,
            ..base
        },
        MadTask::Memorization => TaskSetting {
            vocab_size: 256,
            seq_len: 32,
            num_train: 256,
            ..base
        },
    }
}

/// The settings MAD scores a task on: the baseline first, then every single change of the
/// task's sweep in mad-lab's `configs/tasks/*.yml`, one at a time, in the order vocab, length,
/// train size, then the task's own knob. The MAD score of a task is the mean best test
/// accuracy over these.
pub fn sweep(task: MadTask) -> Vec<TaskSetting> {
    let b = baseline(task);
    let mut out = vec![b.clone()];
    let vocabs: &[usize] = match task {
        MadTask::NoisyInContextRecall => &[48, 80, 144],
        MadTask::Memorization => &[512, 1024, 2048, 4096, 8192],
        _ => &[32, 64, 128],
    };
    let lens: &[usize] = match task {
        MadTask::SelectiveCopying => &[512, 1024],
        MadTask::Compression => &[64, 128, 256],
        MadTask::Memorization => &[],
        _ => &[256, 512, 1024],
    };
    let trains: &[usize] = match task {
        MadTask::Memorization => &[],
        _ => &[6400, 3200, 1600, 800],
    };
    for &v in vocabs {
        out.push(TaskSetting {
            vocab_size: v,
            ..b.clone()
        });
    }
    for &l in lens {
        out.push(TaskSetting {
            seq_len: l,
            ..b.clone()
        });
    }
    for &n in trains {
        out.push(TaskSetting {
            num_train: n,
            ..b.clone()
        });
    }
    if task == MadTask::NoisyInContextRecall {
        for f in [0.4, 0.6, 0.8] {
            out.push(TaskSetting {
                frac_noise: f,
                ..b.clone()
            });
        }
    }
    if task == MadTask::SelectiveCopying {
        for n in [32, 64, 96] {
            out.push(TaskSetting {
                n_copy: n,
                ..b.clone()
            });
        }
    }
    out
}

impl TaskSetting {
    /// A short label relative to the task's baseline: `"baseline"`, or the changed fields,
    /// e.g. `"vocab=32"`, `"seq_len=256"`, `"train=6400"`, `"frac_noise=0.4"`, `"n_copy=32"`
    /// (several changes are joined with `,`).
    pub fn label(&self) -> String {
        let b = baseline(self.task);
        let mut parts = Vec::new();
        if self.vocab_size != b.vocab_size {
            parts.push(format!("vocab={}", self.vocab_size));
        }
        if self.seq_len != b.seq_len {
            parts.push(format!("seq_len={}", self.seq_len));
        }
        if self.num_train != b.num_train {
            parts.push(format!("train={}", self.num_train));
        }
        if self.num_test != b.num_test {
            parts.push(format!("test={}", self.num_test));
        }
        if self.frac_noise != b.frac_noise {
            parts.push(format!("frac_noise={}", self.frac_noise));
        }
        if self.noise_vocab_size != b.noise_vocab_size {
            parts.push(format!("noise_vocab={}", self.noise_vocab_size));
        }
        if self.k_motif_size != b.k_motif_size {
            parts.push(format!("k_motif={}", self.k_motif_size));
        }
        if self.v_motif_size != b.v_motif_size {
            parts.push(format!("v_motif={}", self.v_motif_size));
        }
        if self.n_copy != b.n_copy {
            parts.push(format!("n_copy={}", self.n_copy));
        }
        if self.multi_query != b.multi_query {
            parts.push(format!("multi_query={}", self.multi_query));
        }
        if self.seed != b.seed {
            parts.push(format!("seed={}", self.seed));
        }
        if parts.is_empty() {
            "baseline".to_string()
        } else {
            parts.join(",")
        }
    }

    /// The model input length `T` of this setting's examples (recall tasks with multi-query:
    /// `seq_len − 1`; otherwise `seq_len`).
    pub fn model_seq_len(&self) -> usize {
        match self.task {
            MadTask::InContextRecall | MadTask::NoisyInContextRecall => {
                if self.multi_query {
                    self.seq_len.saturating_sub(1)
                } else {
                    self.seq_len
                }
            }
            _ => self.seq_len,
        }
    }

    /// Check the setting; a clear [`Error::Config`] names the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.num_train == 0 {
            return Err(Error::config(
                "num_train",
                0,
                "need at least one training example",
            ));
        }
        if self.num_test == 0 {
            return Err(Error::config(
                "num_test",
                0,
                "need at least one test example",
            ));
        }
        if !(self.frac_noise.is_finite() && (0.0..1.0).contains(&self.frac_noise)) {
            return Err(Error::config(
                "frac_noise",
                self.frac_noise,
                "must be in [0, 1)",
            ));
        }
        if self.frac_noise > 0.0 && self.noise_vocab_size == 0 {
            return Err(Error::config(
                "noise_vocab_size",
                0,
                format!("must be > 0 when frac_noise = {} > 0", self.frac_noise),
            ));
        }
        if self.vocab_size > u32::MAX as usize / 2 {
            return Err(Error::config(
                "vocab_size",
                self.vocab_size,
                "too large for u32 token ids",
            ));
        }
        let v = self.vocab_size;
        // Non-special (key/value/content) tokens left after the special and noise tokens.
        let non_special = |special: usize| -> Result<usize> {
            v.checked_sub(special + self.noise_vocab_size)
                .ok_or_else(|| {
                    Error::config(
                        "vocab_size",
                        v,
                        format!(
                            "{}: need vocab_size >= {} special + {} noise tokens",
                            self.task, special, self.noise_vocab_size
                        ),
                    )
                })
        };
        match self.task {
            MadTask::InContextRecall | MadTask::NoisyInContextRecall => {
                let ns = non_special(usize::from(!self.multi_query))?;
                if ns < 2 {
                    return Err(Error::config(
                        "vocab_size",
                        v,
                        format!("{}: need >= 2 key/value tokens, have {ns}", self.task),
                    ));
                }
                if !self.seq_len.is_multiple_of(2) || self.seq_len < 4 {
                    return Err(Error::config(
                        "seq_len",
                        self.seq_len,
                        "in-context recall needs an even seq_len >= 4 (at least one pair + probe)",
                    ));
                }
            }
            MadTask::FuzzyInContextRecall => {
                if self.k_motif_size == 0 || self.v_motif_size == 0 {
                    return Err(Error::config(
                        "k_motif_size/v_motif_size",
                        format!("{}/{}", self.k_motif_size, self.v_motif_size),
                        "motif sizes must be >= 1",
                    ));
                }
                let ns = non_special(if self.multi_query { 1 } else { 2 })?;
                let (nk, nv) = (ns / 2, ns - ns / 2);
                if nk < self.k_motif_size || nv < self.v_motif_size {
                    return Err(Error::config(
                        "vocab_size",
                        v,
                        format!(
                            "fuzzy recall: {nk} key / {nv} value tokens cannot form motifs of \
                             {} / {} distinct tokens",
                            self.k_motif_size, self.v_motif_size
                        ),
                    ));
                }
                let kv = self.k_motif_size + self.v_motif_size;
                if self.seq_len <= 2 * kv {
                    return Err(Error::config(
                        "seq_len",
                        self.seq_len,
                        format!(
                            "fuzzy recall needs seq_len > 2·(k_motif + v_motif) = {}",
                            2 * kv
                        ),
                    ));
                }
            }
            MadTask::Memorization => {
                let ns = non_special(1)?;
                if ns < 2 {
                    return Err(Error::config(
                        "vocab_size",
                        v,
                        format!("memorization: need >= 2 key/value tokens, have {ns}"),
                    ));
                }
                if !self.seq_len.is_multiple_of(2) || self.seq_len < 2 {
                    return Err(Error::config(
                        "seq_len",
                        self.seq_len,
                        "memorization needs an even seq_len >= 2 (key, insert pairs)",
                    ));
                }
            }
            MadTask::Compression => {
                let ns = non_special(1)?;
                if ns < 1 {
                    return Err(Error::config(
                        "vocab_size",
                        v,
                        "compression needs >= 1 content token besides the compression token",
                    ));
                }
                if self.seq_len < 2 {
                    return Err(Error::config(
                        "seq_len",
                        self.seq_len,
                        "compression needs seq_len >= 2",
                    ));
                }
            }
            MadTask::SelectiveCopying => {
                if v < 3 {
                    return Err(Error::config(
                        "vocab_size",
                        v,
                        "selective copying needs vocab_size >= 3 (copy, blank, >= 1 content)",
                    ));
                }
                if self.n_copy == 0 {
                    return Err(Error::config("n_copy", 0, "must be >= 1"));
                }
                if self.seq_len <= 2 * self.n_copy + 1 {
                    return Err(Error::config(
                        "seq_len",
                        self.seq_len,
                        format!(
                            "selective copying needs seq_len > 2·n_copy + 1 = {}",
                            2 * self.n_copy + 1
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// One example. `inputs: [T]` token ids `< V`; `targets: [T]`, [`IGNORE`] where not scored.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Example {
    /// Model input tokens, `[T]`.
    pub inputs: Vec<u32>,
    /// Target token per position, `[T]`; −100 = not scored.
    pub targets: Vec<i32>,
}

/// A generated train/test split of one task setting.
#[derive(Clone, Debug)]
pub struct TaskData {
    /// Training examples (`num_train`), generated first.
    pub train: Vec<Example>,
    /// Test examples (`num_test`), generated after the train set from the same RNG stream.
    pub test: Vec<Example>,
    /// Number of token ids / output classes V.
    pub vocab_size: usize,
    /// Model input length `T` of every example.
    pub seq_len: usize,
    /// True for compression: MAD trains it with the AutoEncoder backbone (encoder, 'last'
    /// pooling, position-embedding decoder; mad-lab `mad/model/auto_encoder.py`), scored at all
    /// positions.
    pub encoder_decoder: bool,
}

/// Generate the train set then the test set of `setting` from one RNG seeded with
/// `setting.seed` (deterministic). Invalid settings give [`Error::Config`].
pub fn generate(setting: &TaskSetting) -> Result<TaskData> {
    setting.validate()?;
    let mut rng = StdRng::seed_from_u64(setting.seed);
    let kv = match setting.task {
        MadTask::Memorization => Some(memorization_map(
            setting.vocab_size - 1 - setting.noise_vocab_size,
            setting.seed,
        )),
        _ => None,
    };
    let one = |rng: &mut StdRng, training: bool| -> Example {
        match setting.task {
            MadTask::InContextRecall | MadTask::NoisyInContextRecall => {
                recall_instance(setting, training, rng)
            }
            MadTask::FuzzyInContextRecall => fuzzy_recall_instance(setting, training, rng),
            MadTask::SelectiveCopying => selective_copying_instance(setting, rng),
            MadTask::Compression => compression_instance(setting, rng),
            MadTask::Memorization => {
                memorization_instance(setting, kv.as_deref().unwrap_or(&[]), rng)
            }
        }
    };
    let train: Vec<Example> = (0..setting.num_train)
        .map(|_| one(&mut rng, true))
        .collect();
    let test: Vec<Example> = (0..setting.num_test)
        .map(|_| one(&mut rng, false))
        .collect();
    Ok(TaskData {
        train,
        test,
        vocab_size: setting.vocab_size,
        seq_len: setting.model_seq_len(),
        encoder_decoder: setting.task == MadTask::Compression,
    })
}

/// Number of test examples whose `inputs` appear verbatim among the train inputs.
///
/// MAD (`dataset.py`, `check_for_leakage`) warns above 0.1 %. The random-sequence tasks can
/// collide by chance, but at MAD's sizes collisions are astronomically unlikely except for
/// compression/selective copying at tiny `V^L` (none of MAD's settings).
pub fn overlap(train: &[Example], test: &[Example]) -> usize {
    let seen: HashSet<&[u32]> = train.iter().map(|e| e.inputs.as_slice()).collect();
    test.iter()
        .filter(|e| seen.contains(e.inputs.as_slice()))
        .count()
}

/// Uniform index in `0..n` (`n ≥ 1`).
fn below(rng: &mut StdRng, n: usize) -> usize {
    rng.random_range(0..n)
}

/// Shift for next-token training: `(inputs[:-1], inputs[1:])` (train) or
/// `(inputs[:-1], targets[1:])` (test).
fn shifted(inputs: &[u32], targets: &[i32], training: bool) -> Example {
    let n = inputs.len();
    let t = if training {
        inputs[1..].iter().map(|&x| x as i32).collect()
    } else {
        targets[1..].to_vec()
    };
    Example {
        inputs: inputs[..n - 1].to_vec(),
        targets: t,
    }
}

/// In-context recall (also the noisy variant; mad-lab `mad/data/instances.py`).
///
/// Vocabulary: `ns = V − noise (− 1 without multi-query)`; keys `0..ns/2`, values
/// `ns/2..ns`, noise `ns..ns+noise`, copy prefix `V − 1` (only without multi-query).
/// `P = L/2` pair slots: `P − 1` key/value (or noise) pairs, then a probe pair.
fn recall_instance(s: &TaskSetting, training: bool, rng: &mut StdRng) -> Example {
    let ns = s.vocab_size - s.noise_vocab_size - usize::from(!s.multi_query);
    let nk = ns / 2;
    let nv = ns - nk;
    let pairs = s.seq_len / 2;
    let mut inputs: Vec<u32> = Vec::with_capacity(s.seq_len + 1);
    let mut targets: Vec<i32> = Vec::with_capacity(s.seq_len + 1);
    let mut kv_map: Vec<Option<u32>> = vec![None; nk];
    let mut presented: Vec<u32> = Vec::new(); // distinct keys in order of first presentation
                                              // The reference draws this slot from 0..P, so it can be the probe slot and, with bad luck,
                                              // leave no key to probe (a numpy error). We draw from 0..P−1 so that at least one real
                                              // pair is always presented, which is the comment's stated intent.
    let not_noise = below(rng, pairs - 1);
    for i in 0..pairs - 1 {
        let is_noise = s.frac_noise > 0.0 && i != not_noise && rng.random::<f64>() < s.frac_noise;
        if is_noise {
            for _ in 0..2 {
                inputs.push((ns + below(rng, s.noise_vocab_size)) as u32);
                targets.push(IGNORE);
            }
            continue;
        }
        let k = below(rng, nk);
        let v = match kv_map[k] {
            Some(v) => v,
            None => {
                let v = (nk + below(rng, nv)) as u32;
                kv_map[k] = Some(v);
                v
            }
        };
        inputs.extend([k as u32, v]);
        targets.push(IGNORE);
        let seen = presented.contains(&(k as u32));
        targets.push(if seen && s.multi_query {
            v as i32
        } else {
            IGNORE
        });
        if !seen {
            presented.push(k as u32);
        }
    }
    // Probe: a key drawn uniformly from the distinct presented keys, and its value.
    let kp = presented[below(rng, presented.len())];
    let vp = kv_map[kp as usize].unwrap_or(0);
    if !s.multi_query {
        inputs.push((s.vocab_size - 1) as u32);
        targets.push(IGNORE);
    }
    inputs.extend([kp, vp]);
    targets.extend([IGNORE, vp as i32]);
    shifted(&inputs, &targets, training)
}

/// A uniform random motif of `size` distinct tokens from `lo..lo+n` (partial Fisher–Yates).
///
/// The reference draws uniformly from the shuffled list of all `itertools.permutations` of the
/// vocabulary of that size; a uniform draw from that list is the same distribution as this,
/// without materialising up to 63·62·61 tuples per example.
fn motif(rng: &mut StdRng, lo: usize, n: usize, size: usize, scratch: &mut Vec<u32>) -> Vec<u32> {
    scratch.clear();
    scratch.extend((lo..lo + n).map(|t| t as u32));
    for i in 0..size {
        let j = i + below(rng, n - i);
        scratch.swap(i, j);
    }
    scratch[..size].to_vec()
}

/// Fuzzy in-context recall (mad-lab `mad/data/instances.py`): keys of 1..=k and values of 1..=v
/// distinct tokens.
///
/// Vocabulary: pad `V − 1` (multi-query; `V − 2` otherwise, copy prefix `V − 1`),
/// `ns = V − 1 (− 1) − noise`, keys `0..ns/2`, values `ns/2..ns`, noise `ns..ns+noise`.
/// Test keys always have the maximum size `k`. The result is left-padded to `L + 1` tokens and
/// shifted, so `T = L`.
fn fuzzy_recall_instance(s: &TaskSetting, training: bool, rng: &mut StdRng) -> Example {
    let (pad, special) = if s.multi_query {
        (s.vocab_size - 1, 1)
    } else {
        (s.vocab_size - 2, 2)
    };
    let ns = s.vocab_size - special - s.noise_vocab_size;
    let nk = ns / 2;
    let nv = ns - nk;
    let (kmax, vmax) = (s.k_motif_size, s.v_motif_size);
    let mut scratch = Vec::with_capacity(ns);
    let key_size = |rng: &mut StdRng| if training { 1 + below(rng, kmax) } else { kmax };

    let kp_size = key_size(rng);
    let vp_size = 1 + below(rng, vmax);
    let k_probe = motif(rng, 0, nk, kp_size, &mut scratch);
    let v_probe = motif(rng, nk, nv, vp_size, &mut scratch);
    let kvp = kp_size + vp_size;
    // Validation guarantees L > 2·(k+v) ≥ 2·kvp.
    let probe_idx = below(rng, s.seq_len - 2 * kvp);
    let mut probe_added = false;

    let mut inputs: Vec<u32> = Vec::with_capacity(s.seq_len + 1);
    let mut targets: Vec<i32> = Vec::with_capacity(s.seq_len + 1);
    // Key motif → value motif (the motif length encodes the reference's per-size maps).
    let mut kv_map: HashMap<Vec<u32>, Vec<u32>> = HashMap::new();
    let mut presented: HashSet<Vec<u32>> = HashSet::new();
    let limit = s.seq_len - kvp - (kmax + vmax);
    while inputs.len() < limit {
        let k_size = key_size(rng);
        let v_size = 1 + below(rng, vmax);
        if inputs.len() >= probe_idx && !probe_added {
            inputs.extend(&k_probe);
            inputs.extend(&v_probe);
            targets.extend(std::iter::repeat_n(IGNORE, kvp));
            kv_map.insert(k_probe.clone(), v_probe.clone());
            presented.insert(k_probe.clone());
            probe_added = true;
            continue;
        }
        let is_noise = s.frac_noise > 0.0 && rng.random::<f64>() < s.frac_noise;
        if is_noise {
            for _ in 0..k_size + v_size {
                inputs.push((ns + below(rng, s.noise_vocab_size)) as u32);
                targets.push(IGNORE);
            }
            continue;
        }
        let k = motif(rng, 0, nk, k_size, &mut scratch);
        let v = if k == k_probe {
            probe_added = true;
            v_probe.clone()
        } else if let Some(v) = kv_map.get(&k) {
            v.clone()
        } else {
            let v = motif(rng, nk, nv, v_size, &mut scratch);
            kv_map.insert(k.clone(), v.clone());
            v
        };
        inputs.extend(&k);
        inputs.extend(&v);
        targets.extend(std::iter::repeat_n(IGNORE, k.len()));
        if presented.contains(&k) && s.multi_query {
            targets.extend(v.iter().map(|&t| t as i32));
        } else {
            targets.extend(std::iter::repeat_n(IGNORE, v.len()));
        }
        presented.insert(k);
    }
    // Final probe (its value is always scored, as in the reference, even in the rare case that
    // the probe slot fell after the loop's end and the pair was never shown before).
    if !s.multi_query {
        inputs.push((s.vocab_size - 1) as u32);
        targets.push(IGNORE);
    }
    inputs.extend(&k_probe);
    inputs.extend(&v_probe);
    targets.extend(std::iter::repeat_n(IGNORE, kp_size));
    targets.extend(v_probe.iter().map(|&t| t as i32));
    // Left padding to L + 1 (the loop bound keeps the content ≤ L tokens).
    let n_pad = (s.seq_len + 1).saturating_sub(inputs.len());
    let mut padded_in = vec![pad as u32; n_pad];
    padded_in.extend(inputs);
    let mut padded_t = vec![IGNORE; n_pad];
    padded_t.extend(targets);
    shifted(&padded_in, &padded_t, training)
}

/// The fixed key→value map of memorization over `ns = V − 1 − noise` tokens (mad-lab
/// `mad/data/instances.py`).
///
/// Keys `0..ns/2` and values `ns/2..ns` are each shuffled by an RNG seeded with `seed` (separate
/// from the data stream, so identical for train and test) and zipped: `min(ns/2, ns − ns/2)`
/// pairs `(key, value)`, in the shuffled key order.
pub fn memorization_map(ns: usize, seed: u64) -> Vec<(u32, u32)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let nk = ns / 2;
    let mut keys: Vec<u32> = (0..nk as u32).collect();
    let mut values: Vec<u32> = (nk as u32..ns as u32).collect();
    shuffle(&mut keys, &mut rng);
    shuffle(&mut values, &mut rng);
    keys.into_iter().zip(values).collect()
}

/// Fisher–Yates shuffle.
fn shuffle(v: &mut [u32], rng: &mut StdRng) {
    for i in (1..v.len()).rev() {
        let j = below(rng, i + 1);
        v.swap(i, j);
    }
}

/// Memorization (mad-lab `mad/data/instances.py`): `L/2` pairs `(key, INSERT = V − 1)` with targets
/// `(−100, value)` from the fixed map; not shifted. Noise pairs (if `frac_noise > 0`) use
/// `ns..ns+noise`.
///
/// Test instances: as in MAD's `dataset.py`, the test set is generated by the same instance
/// function (it ignores `is_training`) continuing the RNG stream after the train set, with the
/// same fixed map. So test *sequences* are fresh random orderings of keys (verbatim overlap
/// with train is ~0), while every test *fact* (key → value) is one the train set teaches: the
/// map is identical, which is what the task measures.
fn memorization_instance(s: &TaskSetting, map: &[(u32, u32)], rng: &mut StdRng) -> Example {
    let ns = s.vocab_size - 1 - s.noise_vocab_size;
    let insert = (s.vocab_size - 1) as u32;
    let pairs = s.seq_len / 2;
    let mut inputs = Vec::with_capacity(s.seq_len);
    let mut targets = Vec::with_capacity(s.seq_len);
    let not_noise = if s.frac_noise > 0.0 {
        below(rng, pairs)
    } else {
        usize::MAX
    };
    for i in 0..pairs {
        let is_noise = s.frac_noise > 0.0 && i != not_noise && rng.random::<f64>() < s.frac_noise;
        if is_noise {
            for _ in 0..2 {
                inputs.push((ns + below(rng, s.noise_vocab_size)) as u32);
                targets.push(IGNORE);
            }
        } else {
            let (k, v) = map[below(rng, map.len())];
            inputs.extend([k, insert]);
            targets.extend([IGNORE, v as i32]);
        }
    }
    Example { inputs, targets }
}

/// Compression (mad-lab `mad/data/instances.py`): `L − 1` uniform tokens from `0..ns`
/// (`ns = V − 1 − noise`), then the compression token `V − 1`; targets = inputs at all `L`
/// positions.
///
/// With `frac_noise > 0` the reference replaces tokens by noise and then returns
/// `(inputs, inputs)`, discarding its noise-masked targets (a bug, irrelevant at MAD's
/// `frac_noise = 0`); we reproduce that: noisy tokens appear in both inputs and targets.
fn compression_instance(s: &TaskSetting, rng: &mut StdRng) -> Example {
    let ns = s.vocab_size - 1 - s.noise_vocab_size;
    let mut inputs: Vec<u32> = (0..s.seq_len - 1).map(|_| below(rng, ns) as u32).collect();
    inputs.push((s.vocab_size - 1) as u32);
    if s.frac_noise > 0.0 {
        for t in inputs.iter_mut().take(s.seq_len - 1) {
            if rng.random::<f64>() < s.frac_noise {
                *t = (ns + below(rng, s.noise_vocab_size)) as u32;
            }
        }
    }
    let targets = inputs.iter().map(|&t| t as i32).collect();
    Example { inputs, targets }
}

/// Selective copying (mad-lab `mad/data/instances.py`): copy `V − 1`, blank `V − 2`, content
/// `0..V−2`.
///
/// `n_copy` content tokens with `num_blank = L − 2·n_copy − 1` blanks inserted before content
/// positions drawn uniformly in `0..n_copy` (numpy `np.insert` semantics: never after the last
/// content token), then the copy token, then `n_copy` blanks. Targets: −100 on the first
/// `n_copy + num_blank + 1` positions, then the content tokens in order. Not shifted.
///
/// The reference draws the blank positions from numpy's *global* RNG (`np.random.randint`);
/// we draw them from the same seeded stream as everything else.
fn selective_copying_instance(s: &TaskSetting, rng: &mut StdRng) -> Example {
    let copy = (s.vocab_size - 1) as u32;
    let blank = (s.vocab_size - 2) as u32;
    let n = s.n_copy;
    let num_blank = s.seq_len - 2 * n - 1;
    let to_copy: Vec<u32> = (0..n)
        .map(|_| below(rng, s.vocab_size - 2) as u32)
        .collect();
    let mut blanks_before = vec![0usize; n];
    for _ in 0..num_blank {
        blanks_before[below(rng, n)] += 1;
    }
    let mut inputs = Vec::with_capacity(s.seq_len);
    for (&tok, &nb) in to_copy.iter().zip(&blanks_before) {
        inputs.extend(std::iter::repeat_n(blank, nb));
        inputs.push(tok);
    }
    inputs.push(copy);
    inputs.extend(std::iter::repeat_n(blank, n));
    let mut targets = vec![IGNORE; n + num_blank + 1];
    targets.extend(to_copy.iter().map(|&t| t as i32));
    Example { inputs, targets }
}

// ---------------------------------------------------------------------------------------------
// Accuracy
// ---------------------------------------------------------------------------------------------

/// How per-position correctness is averaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Average {
    /// Mean over classes of per-class recall `tp_c / (tp_c + fn_c)`, over the classes that occur
    /// as a (non-ignored) target. MAD's metric is torchmetrics `MulticlassAccuracy` whose
    /// default is macro; see [`Average::MacroTorchmetrics`] for its exact class set.
    Macro,
    /// Correct / scored positions.
    Micro,
    /// torchmetrics ≥ 0.11 macro exactly (`_adjust_weights_safe_divide`, `top_k = 1`): a class
    /// is excluded only when `tp + fp + fn = 0`, so a class that is predicted at a scored
    /// position but never a target counts with recall 0 and lowers the mean.
    /// [`Average::Macro`] excludes such classes (only classes with target support count);
    /// the two agree whenever every predicted class also occurs as a target.
    MacroTorchmetrics,
}

/// Accuracy of `preds` (argmax ids) against `targets` over the scored positions.
///
/// Positions with target −100 (or any target outside `0..vocab`) are skipped entirely (the
/// prediction there counts nowhere, as torchmetrics' `ignore_index`). A prediction `≥ vocab`
/// is simply wrong. `preds` and `targets` must have equal length (extra entries of the longer
/// one are ignored). Returns 0.0 when nothing is scored (torchmetrics' safe divide).
pub fn accuracy(preds: &[u32], targets: &[i32], vocab: usize, avg: Average) -> f64 {
    debug_assert_eq!(preds.len(), targets.len());
    let mut c = AccuracyCounter::new(vocab);
    c.add(preds, targets);
    c.get(avg)
}

/// Streaming accuracy: accumulate per-class counts over batches, read any average at the end.
#[derive(Clone, Debug)]
pub struct AccuracyCounter {
    /// Correct predictions per target class, `[V]`.
    tp: Vec<u64>,
    /// Scored positions per target class (`tp + fn`), `[V]`.
    support: Vec<u64>,
    /// Scored positions predicted as each class (`tp + fp`), `[V]`.
    predicted: Vec<u64>,
}

impl AccuracyCounter {
    /// An empty counter for `vocab` classes.
    pub fn new(vocab: usize) -> Self {
        AccuracyCounter {
            tp: vec![0; vocab],
            support: vec![0; vocab],
            predicted: vec![0; vocab],
        }
    }

    /// Add one batch of flattened predictions and targets (`[B·T]` each; −100 = skip).
    pub fn add(&mut self, preds: &[u32], targets: &[i32]) {
        debug_assert_eq!(preds.len(), targets.len());
        let v = self.tp.len();
        for (&p, &t) in preds.iter().zip(targets) {
            if t < 0 || t as usize >= v {
                continue;
            }
            let t = t as usize;
            self.support[t] += 1;
            if p as usize == t {
                self.tp[t] += 1;
            }
            if (p as usize) < v {
                self.predicted[p as usize] += 1;
            }
        }
    }

    /// Add the counts of `other` (same vocabulary): the counter of both parts' batches.
    pub fn merge(&mut self, other: &AccuracyCounter) {
        for (a, b) in [
            (&mut self.tp, &other.tp),
            (&mut self.support, &other.support),
            (&mut self.predicted, &other.predicted),
        ] {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }

    /// Number of scored positions so far.
    pub fn scored(&self) -> u64 {
        self.support.iter().sum()
    }

    /// [`Average::Macro`] over everything added.
    pub fn macro_(&self) -> f64 {
        self.get(Average::Macro)
    }

    /// [`Average::Micro`] over everything added.
    pub fn micro(&self) -> f64 {
        self.get(Average::Micro)
    }

    /// The accuracy under `avg` over everything added (0.0 when nothing is scored).
    pub fn get(&self, avg: Average) -> f64 {
        match avg {
            Average::Micro => {
                let total = self.scored();
                if total == 0 {
                    0.0
                } else {
                    self.tp.iter().sum::<u64>() as f64 / total as f64
                }
            }
            Average::Macro | Average::MacroTorchmetrics => {
                let (mut sum, mut classes) = (0.0, 0usize);
                for c in 0..self.tp.len() {
                    let counted = match avg {
                        Average::Macro => self.support[c] > 0,
                        _ => self.support[c] > 0 || self.predicted[c] > 0,
                    };
                    if counted {
                        classes += 1;
                        if self.support[c] > 0 {
                            sum += self.tp[c] as f64 / self.support[c] as f64;
                        }
                    }
                }
                if classes == 0 {
                    0.0
                } else {
                    sum / classes as f64
                }
            }
        }
    }
}
