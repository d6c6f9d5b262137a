//! A k-mer (Markov-chain) baseline classifier for DNA sequence classification: the natural
//! reference to report beside a trained model (what short-range base statistics alone get).
//!
//! - **Model**: per class, an order-`k` Markov chain of the bases: `P(x_t | x_{t-k..t})` from
//!   the counts of every `(k+1)`-mer (context → next base) in the class's training sequences,
//!   with add-α smoothing, `(n(c, x) + α) / (n(c) + 4α)`. Windows holding a non-ACGT character
//!   (`N`, IUPAC codes) are skipped; lower case counts as upper case.
//! - **Both strands**: by default each training sequence is counted together with its reverse
//!   complement. A fragment may come from either strand of a genome, and with both strands
//!   counted the `(k+1)`-mer table is reverse-complement symmetric, so a sequence and its reverse
//!   complement get the same score up to edge terms (the first `k` bases of each, where the
//!   context is counted as a prefix on one strand and a suffix on the other): the classifier
//!   is strand-invariant in practice.
//! - **Decision**: the class of largest `log prior + Σ_t log P(x_t | context)` over the
//!   sequence's windows (the first `k` bases have no full context and are not scored; that is
//!   the same for every class). Priors are the classes' shares of the training sequences (equal
//!   on a balanced dataset). Ties go to the lowest class index.
//! - **Choosing k**: [`select_k`] fits every k of a range on a stratified part of the *train*
//!   set and scores it on the rest (never on the test set); [`fit_select`] then refits the
//!   best k on the whole train set. Ties go to the smaller k.
//!
//! ```
//! use hyena::data::seqcls::Example;
//! use hyena::baselines::kmer::MarkovClassifier;
//!
//! let ex = |s: &str, label| Example { seq: s.as_bytes().to_vec(), label };
//! let train = [ex("GCGCGGCCGCGCGGCGCC", 0), ex("ATATTAATATAATTATAT", 1)];
//! let m = MarkovClassifier::fit(&train, 2, 1)?;
//! assert_eq!(m.predict(b"GGCGCCGC"), 0);
//! assert_eq!(m.predict(b"TTATAATA"), 1);
//! # Ok::<(), hyena::Error>(())
//! ```

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::Serialize;

use crate::data::seqcls::Example;
use crate::error::{Error, Result};

/// Largest order accepted: the table has `4^(k+1)` entries per class (16 MiB per class at 10).
pub const MAX_K: usize = 10;
/// How [`fit_select`] is called when the order is not given (`hyena data baseline`'s defaults,
/// and always `hyena finetune --baseline`): orders 1..=[`SELECT_MAX_K`], scored on a held-out
/// [`SELECT_HOLDOUT`] of each class's train examples drawn with seed [`SELECT_SEED`].
pub const SELECT_MAX_K: usize = 8;
/// See [`SELECT_MAX_K`].
pub const SELECT_HOLDOUT: f64 = 0.1;
/// See [`SELECT_MAX_K`].
pub const SELECT_SEED: u64 = 1;
/// Default add-α smoothing (Krichevsky–Trofimov, as the LM baselines in `baseline.rs`).
pub const DEFAULT_ALPHA: f64 = 0.5;

/// Options of [`MarkovClassifier::fit_with`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MarkovOptions {
    /// Markov order: the number of preceding bases in a context (0 = base composition).
    pub k: usize,
    /// Add-α smoothing, > 0.
    pub alpha: f64,
    /// Count the reverse complement of every training sequence too (module docs).
    pub both_strands: bool,
}

impl MarkovOptions {
    /// Order `k`, α = [`DEFAULT_ALPHA`], both strands.
    pub fn new(k: usize) -> Self {
        MarkovOptions {
            k,
            alpha: DEFAULT_ALPHA,
            both_strands: true,
        }
    }
}

/// A fitted per-class Markov-chain classifier.
#[derive(Clone, Debug)]
pub struct MarkovClassifier {
    opts: MarkovOptions,
    n_classes: usize,
    /// `[4^(k+1)][n_classes]`: log P(next | context) of window `w = context·4 + next`; the
    /// classes of one window are adjacent so scoring reads one cache line per base.
    log_prob: Vec<f32>,
    /// `[n_classes]`: log share of the training sequences.
    log_prior: Vec<f64>,
}

/// A base's 2-bit code (A=0, C=1, G=2, T=3; complement = 3 − code), or 4 for anything else.
#[inline]
fn code(b: u8) -> u8 {
    match b {
        b'A' | b'a' => 0,
        b'C' | b'c' => 1,
        b'G' | b'g' => 2,
        b'T' | b't' => 3,
        _ => 4,
    }
}

/// Call `f(w)` for the index `w` of every ACGT-only `(k+1)`-window of `codes`.
#[inline]
fn for_windows(codes: impl Iterator<Item = u8>, k: usize, mut f: impl FnMut(usize)) {
    let mask = (1usize << (2 * (k + 1))) - 1;
    let (mut w, mut valid) = (0usize, 0usize);
    for c in codes {
        if c > 3 {
            valid = 0;
            w = 0;
            continue;
        }
        w = ((w << 2) | c as usize) & mask;
        valid += 1;
        if valid > k {
            f(w);
        }
    }
}

impl MarkovClassifier {
    /// Fit order `k` with the default α and both strands; see [`Self::fit_with`].
    pub fn fit(train: &[Example], n_classes: usize, k: usize) -> Result<Self> {
        Self::fit_with(train, n_classes, &MarkovOptions::new(k))
    }

    /// Fit one Markov chain per class on `train` (labels in `0..n_classes`).
    ///
    /// Errors: `k` > [`MAX_K`], α ≤ 0, no classes, a label out of range, a class without any
    /// training sequence.
    pub fn fit_with(train: &[Example], n_classes: usize, opts: &MarkovOptions) -> Result<Self> {
        let k = opts.k;
        if k > MAX_K {
            return Err(Error::config(
                "k",
                k,
                format!("the Markov order must be at most {MAX_K} (the table has 4^(k+1) entries per class)"),
            ));
        }
        if !(opts.alpha > 0.0 && opts.alpha.is_finite()) {
            return Err(Error::config(
                "alpha",
                opts.alpha,
                "smoothing must be a positive number, e.g. 0.5",
            ));
        }
        if n_classes == 0 {
            return Err(Error::config("n_classes", 0, "need at least one class"));
        }
        let mut per_class = vec![0usize; n_classes];
        for (i, e) in train.iter().enumerate() {
            if e.label >= n_classes {
                return Err(Error::config(
                    "label",
                    e.label,
                    format!("training example #{i} has label {} but there are {n_classes} classes (labels 0..{n_classes})", e.label),
                ));
            }
            per_class[e.label] += 1;
        }
        if let Some(c) = per_class.iter().position(|&n| n == 0) {
            return Err(Error::config(
                "train",
                format!("class {c}"),
                "a class has no training sequence; every class needs at least one",
            ));
        }
        let n_win = 1usize << (2 * (k + 1));
        // Count per class in parallel: each class has its own table.
        let counts: Vec<Vec<u64>> = (0..n_classes)
            .into_par_iter()
            .map(|c| {
                let mut n = vec![0u64; n_win];
                for e in train.iter().filter(|e| e.label == c) {
                    for_windows(e.seq.iter().map(|&b| code(b)), k, |w| n[w] += 1);
                    if opts.both_strands {
                        let rc = e.seq.iter().rev().map(|&b| match code(b) {
                            4 => 4,
                            x => 3 - x,
                        });
                        for_windows(rc, k, |w| n[w] += 1);
                    }
                }
                n
            })
            .collect();
        let mut log_prob = vec![0f32; n_win * n_classes];
        let a = opts.alpha;
        for (c, n) in counts.iter().enumerate() {
            for ctx in 0..n_win / 4 {
                let row = &n[ctx * 4..ctx * 4 + 4];
                let total: u64 = row.iter().sum();
                let denom = (total as f64 + 4.0 * a).ln();
                for (x, &nx) in row.iter().enumerate() {
                    log_prob[(ctx * 4 + x) * n_classes + c] = ((nx as f64 + a).ln() - denom) as f32;
                }
            }
        }
        let total = train.len() as f64;
        let log_prior = per_class.iter().map(|&n| (n as f64 / total).ln()).collect();
        Ok(MarkovClassifier {
            opts: *opts,
            n_classes,
            log_prob,
            log_prior,
        })
    }

    /// The Markov order.
    pub fn k(&self) -> usize {
        self.opts.k
    }

    /// The options it was fitted with.
    pub fn options(&self) -> &MarkovOptions {
        &self.opts
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// Per class: `Σ_t log P(x_t | context)` (natural log) over the ACGT-only windows of `seq`,
    /// without the prior.
    pub fn log_likelihoods(&self, seq: &[u8]) -> Vec<f64> {
        let nc = self.n_classes;
        let mut ll = vec![0f64; nc];
        for_windows(seq.iter().map(|&b| code(b)), self.opts.k, |w| {
            for (l, &p) in ll.iter_mut().zip(&self.log_prob[w * nc..w * nc + nc]) {
                *l += p as f64;
            }
        });
        ll
    }

    /// The most likely class of `seq` (module docs).
    pub fn predict(&self, seq: &[u8]) -> usize {
        let ll = self.log_likelihoods(seq);
        let mut best = 0;
        let mut best_v = f64::NEG_INFINITY;
        for (c, (&l, &p)) in ll.iter().zip(&self.log_prior).enumerate() {
            if l + p > best_v {
                best_v = l + p;
                best = c;
            }
        }
        best
    }

    /// Accuracy, per-class accuracy and confusion matrix on `test` (in parallel).
    ///
    /// Errors: an empty set, a label out of range.
    pub fn evaluate(&self, test: &[Example]) -> Result<Evaluation> {
        if test.is_empty() {
            return Err(Error::config("test", 0, "no examples to evaluate"));
        }
        if let Some((i, e)) = test
            .iter()
            .enumerate()
            .find(|(_, e)| e.label >= self.n_classes)
        {
            return Err(Error::config(
                "label",
                e.label,
                format!(
                    "example #{i} has label {} but the classifier has {} classes",
                    e.label, self.n_classes
                ),
            ));
        }
        let preds: Vec<usize> = test.par_iter().map(|e| self.predict(&e.seq)).collect();
        Ok(Evaluation::from_predictions(
            self.n_classes,
            test.iter().map(|e| e.label).zip(preds),
        ))
    }

    /// Fraction of `test` classified correctly.
    pub fn accuracy(&self, test: &[Example]) -> Result<f64> {
        Ok(self.evaluate(test)?.accuracy)
    }
}

/// Correct predictions of one class.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassScore {
    /// Examples of this class.
    pub n: usize,
    pub correct: usize,
    /// `correct / n` (NaN, `null` in JSON, when `n` = 0).
    pub accuracy: f64,
}

/// The result of [`MarkovClassifier::evaluate`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evaluation {
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// By true class.
    pub per_class: Vec<ClassScore>,
    /// `confusion[true][predicted]`: counts.
    pub confusion: Vec<Vec<usize>>,
}

impl Evaluation {
    /// Tally `(true label, predicted label)` pairs (both `< n_classes`).
    pub fn from_predictions(
        n_classes: usize,
        pairs: impl IntoIterator<Item = (usize, usize)>,
    ) -> Self {
        let mut confusion = vec![vec![0usize; n_classes]; n_classes];
        for (t, p) in pairs {
            confusion[t][p] += 1;
        }
        let per_class: Vec<ClassScore> = confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let n: usize = row.iter().sum();
                ClassScore {
                    n,
                    correct: row[c],
                    accuracy: row[c] as f64 / n as f64,
                }
            })
            .collect();
        let n: usize = per_class.iter().map(|c| c.n).sum();
        let correct: usize = per_class.iter().map(|c| c.correct).sum();
        Evaluation {
            n,
            correct,
            accuracy: correct as f64 / n as f64,
            per_class,
            confusion,
        }
    }
}

/// One order scored by [`select_k`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KScore {
    pub k: usize,
    /// Accuracy on the held-out part of the train set.
    pub holdout_accuracy: f64,
}

/// The result of [`select_k`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KSelection {
    /// Train examples the candidates were fitted on.
    pub n_fit: usize,
    /// Train examples held out to score them.
    pub n_holdout: usize,
    /// Every order tried, in increasing k.
    pub table: Vec<KScore>,
    /// The order of best held-out accuracy (the smallest among ties).
    pub best_k: usize,
}

/// Split `train` into (fit, held-out) parts, stratified by class: from each class,
/// `round(fraction · n_c)` examples (at least 1, at most `n_c − 1`) chosen at random (seeded).
pub fn holdout_split(
    train: &[Example],
    n_classes: usize,
    fraction: f64,
    seed: u64,
) -> Result<(Vec<Example>, Vec<Example>)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::config(
            "holdout_fraction",
            fraction,
            "must be strictly between 0 and 1, e.g. 0.1",
        ));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut fit, mut held) = (Vec::new(), Vec::new());
    for c in 0..n_classes {
        let mut idx: Vec<usize> = (0..train.len()).filter(|&i| train[i].label == c).collect();
        if idx.len() < 2 {
            return Err(Error::config(
                "train",
                format!("class {c} with {} example(s)", idx.len()),
                "choosing k on held-out train data needs at least 2 examples per class; give k explicitly",
            ));
        }
        idx.shuffle(&mut rng);
        let n_h = ((fraction * idx.len() as f64).round() as usize).clamp(1, idx.len() - 1);
        held.extend(idx[..n_h].iter().map(|&i| train[i].clone()));
        fit.extend(idx[n_h..].iter().map(|&i| train[i].clone()));
    }
    Ok((fit, held))
}

/// Score every order in `ks` by fitting on a stratified `1 − holdout_fraction` of `train` and
/// measuring accuracy on the rest ([`holdout_split`]); the test set is never looked at.
pub fn select_k(
    train: &[Example],
    n_classes: usize,
    ks: impl IntoIterator<Item = usize>,
    holdout_fraction: f64,
    seed: u64,
) -> Result<KSelection> {
    let (fit, held) = holdout_split(train, n_classes, holdout_fraction, seed)?;
    let mut table = Vec::new();
    for k in ks {
        let m = MarkovClassifier::fit(&fit, n_classes, k)?;
        table.push(KScore {
            k,
            holdout_accuracy: m.accuracy(&held)?,
        });
    }
    let Some(best) = table.iter().fold(None::<&KScore>, |b, s| match b {
        Some(b) if b.holdout_accuracy >= s.holdout_accuracy => Some(b),
        _ => Some(s),
    }) else {
        return Err(Error::config(
            "ks",
            "an empty range",
            "give at least one order, e.g. 1..=8",
        ));
    };
    Ok(KSelection {
        n_fit: fit.len(),
        n_holdout: held.len(),
        best_k: best.k,
        table,
    })
}

/// [`select_k`], then the best order refitted on the whole of `train`.
pub fn fit_select(
    train: &[Example],
    n_classes: usize,
    ks: impl IntoIterator<Item = usize>,
    holdout_fraction: f64,
    seed: u64,
) -> Result<(MarkovClassifier, KSelection)> {
    let sel = select_k(train, n_classes, ks, holdout_fraction, seed)?;
    let m = MarkovClassifier::fit(train, n_classes, sel.best_k)?;
    Ok((m, sel))
}
