//! Count-based baselines for next-token prediction: unigram and order-k Markov models, so a
//! user can see what a trained model adds beyond short-range statistics.
//!
//! Both are fit on the training tokens and scored on the validation targets, in bits per
//! token. Probabilities use additive (Krichevsky–Trofimov, α = ½) smoothing over the symbols
//! seen in training: `P(x | c) = (n(c, x) + ½) / (n(c) + ½·V)`. A symbol never seen in training
//! gets the smoothed share of a zero count.

use std::collections::HashMap;

/// Bits per token of one baseline on the validation targets.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BaselineScore {
    /// 0 = unigram.
    pub order: usize,
    pub bits_per_token: f64,
}

/// Score the unigram and Markov models of order `1..=max_order` (contexts longer than the data
/// allows are skipped). `train` and `val` are token streams; validation predicts `val[t]` from
/// the `k` tokens before it (the first `k` validation tokens use the end of `train` as context).
/// Fails only when the caller cancels it ([`crate::interrupt`]; a genome's counts take seconds).
pub fn markov_scores(
    train: &[u32],
    val: &[u32],
    max_order: usize,
) -> crate::Result<Vec<BaselineScore>> {
    let vocab: usize = {
        let mut seen = std::collections::BTreeSet::new();
        seen.extend(train.iter().copied());
        seen.len().max(1)
    };
    let mut out = Vec::new();
    for k in 0..=max_order {
        if k >= train.len() {
            break;
        }
        out.push(BaselineScore {
            order: k,
            bits_per_token: order_k_bits(train, val, k, vocab)?,
        });
    }
    Ok(out)
}

/// The `k` tokens before position `t`, packed 8 bits each (ids are < 256 for every tokenizer
/// here; larger ids are folded, which only merges contexts). Orders up to 16 fit.
#[inline]
fn key(s: &[u32], t: usize, k: usize) -> u128 {
    s[t - k..t]
        .iter()
        .fold(0u128, |acc, &x| (acc << 8) | (x & 0xff) as u128)
}

fn order_k_bits(train: &[u32], val: &[u32], k: usize, vocab: usize) -> crate::Result<f64> {
    let k = k.min(16);
    let mut ctx: HashMap<u128, u64> = HashMap::new();
    let mut pair: HashMap<(u128, u32), u64> = HashMap::new();
    for t in k..train.len() {
        if t % (1 << 18) == 0 {
            crate::interrupt::check()?;
        }
        let c = key(train, t, k);
        *ctx.entry(c).or_default() += 1;
        *pair.entry((c, train[t])).or_default() += 1;
    }
    // Validation with the tail of train as the first contexts.
    let tail = &train[train.len().saturating_sub(k)..];
    let joined: Vec<u32> = tail.iter().chain(val).copied().collect();
    let a = 0.5f64;
    let mut bits = 0.0f64;
    for t in tail.len()..joined.len() {
        let c = key(&joined, t, k);
        let n_c = ctx.get(&c).copied().unwrap_or(0) as f64;
        let n_cx = pair.get(&(c, joined[t])).copied().unwrap_or(0) as f64;
        bits -= ((n_cx + a) / (n_c + a * vocab as f64)).log2();
    }
    Ok(bits / val.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_iid_costs_two_bits_and_a_cycle_costs_almost_none() {
        // Pseudo-random iid over 4 symbols: every order is ~2 bits (no structure to find).
        let mut s = 7u64;
        let mut gen = |n: usize| -> Vec<u32> {
            (0..n)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (s >> 62) as u32
                })
                .collect()
        };
        let (train, val) = (gen(200_000), gen(20_000));
        let sc = markov_scores(&train, &val, 3).unwrap();
        for b in &sc {
            assert!((b.bits_per_token - 2.0).abs() < 0.02, "{b:?}");
        }
        // A period-5 cycle: unigram ~log2(5) bits, order >= 1 near zero.
        let cyc: Vec<u32> = (0..10_000).map(|i| (i % 5) as u32).collect();
        let sc = markov_scores(&cyc[..9000], &cyc[9000..], 2).unwrap();
        assert!(
            (sc[0].bits_per_token - 5f64.log2()).abs() < 0.01,
            "{:?}",
            sc[0]
        );
        assert!(
            sc[1].bits_per_token < 0.01 && sc[2].bits_per_token < 0.01,
            "{sc:?}"
        );
    }
}
