//! Cross-entropy of logits against integer targets, with its gradient, and the argmax that
//! accuracy counts: the loss of every model (language models, classifiers, MAD).

use crate::error::{check_len, Error, Result};

/// Mean cross-entropy of `logits [N, V]` against `targets [N]` (targets equal to `ignore` are
/// skipped). Writes `dlogits = (softmax - onehot) / count` and returns `(mean loss, count,
/// correct)` where `correct` counts argmax hits (next-token accuracy).
pub fn cross_entropy(
    logits: &[f32],
    targets: &[u32],
    v: usize,
    ignore: Option<u32>,
    dlogits: &mut [f32],
) -> Result<(f32, usize, usize)> {
    let count = targets.iter().filter(|&&t| Some(t) != ignore).count();
    let scale = 1.0 / count.max(1) as f32;
    let s = cross_entropy_sum(logits, targets, v, ignore, scale, dlogits)?;
    Ok((
        (s.loss_sum / s.count.max(1) as f64) as f32,
        s.count,
        s.correct,
    ))
}

/// Summed next-token statistics of some windows: divide `loss_sum` by `count` for the mean.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossSum {
    /// Σ of per-token cross-entropies (nats).
    pub loss_sum: f64,
    /// Tokens scored.
    pub count: usize,
    /// Tokens whose argmax logit is the target.
    pub correct: usize,
}

impl LossSum {
    /// The sums of several parts (e.g. the shards of a batch), added in order.
    pub fn total(parts: impl IntoIterator<Item = LossSum>) -> LossSum {
        let mut t = LossSum::default();
        for p in parts {
            t.add(p);
        }
        t
    }

    /// Add another set of sums.
    pub fn add(&mut self, o: LossSum) {
        self.loss_sum += o.loss_sum;
        self.count += o.count;
        self.correct += o.correct;
    }
}

/// Cross-entropy of `logits [N, V]` against `targets [N]` as a sum; writes
/// `dlogits = (softmax - onehot) · scale` (zero rows for ignored targets).
pub fn cross_entropy_sum(
    logits: &[f32],
    targets: &[u32],
    v: usize,
    ignore: Option<u32>,
    scale: f32,
    dlogits: &mut [f32],
) -> Result<LossSum> {
    const OP: &str = "cross_entropy";
    let n = targets.len();
    check_len(OP, "logits [N, V]", logits.len(), n * v)?;
    check_len(OP, "dlogits [N, V]", dlogits.len(), n * v)?;
    if let Some(&t) = targets
        .iter()
        .find(|&&t| t as usize >= v && Some(t) != ignore)
    {
        return Err(Error::config("target id", t, format!("must be < {v}")));
    }
    let mut out = LossSum::default();
    for ((row, drow), &t) in logits
        .chunks_exact(v)
        .zip(dlogits.chunks_exact_mut(v))
        .zip(targets)
    {
        if Some(t) == ignore {
            drow.fill(0.0);
            continue;
        }
        let (mut amax, mut m) = (0, f32::NEG_INFINITY);
        for (j, &x) in row.iter().enumerate() {
            if x > m {
                m = x;
                amax = j;
            }
        }
        let sum: f32 = row.iter().map(|&x| (x - m).exp()).sum();
        let lse = m + sum.ln();
        out.loss_sum += (lse - row[t as usize]) as f64;
        out.count += 1;
        out.correct += usize::from(amax == t as usize);
        for (dv, &x) in drow.iter_mut().zip(row) {
            *dv = (x - lse).exp() * scale;
        }
        drow[t as usize] -= scale;
    }
    Ok(out)
}

/// Index and value of the largest entry (the first on ties).
pub fn argmax(row: &[f32]) -> (usize, f32) {
    let (mut best, mut m) = (0, f32::NEG_INFINITY);
    for (j, &x) in row.iter().enumerate() {
        if x > m {
            m = x;
            best = j;
        }
    }
    (best, m)
}

/// `log softmax(row)[target]`, the log-sum-exp taken in f64 about the row's maximum: the
/// per-token log-likelihood that `hyena score` reports.
pub fn log_prob(row: &[f32], target: usize) -> f64 {
    let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let lse = mx as f64
        + row
            .iter()
            .map(|&v| ((v - mx) as f64).exp())
            .sum::<f64>()
            .ln();
    row[target] as f64 - lse
}
