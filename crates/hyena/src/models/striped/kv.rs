//! The attention key/value cache of a StripedHyena attention block: the rotated keys and the
//! values of every position so far, per head, in f32 or bf16.
//!
//! Layout: f32 keys and values `[H, cap, hd]`; bf16 keys `[H, cap, hd]` and values transposed
//! `[H, hd, cap]` (the second attention product reads value rows as weight rows,
//! [`causal_attention_bf16_at`]). `cap` is the rows reserved per head; rows `0 .. len` hold
//! positions `0 .. len`. Growing past `cap` re-lays the rows out at a doubled capacity (amortised
//! O(1) per token while generating); a forward that knows its length reserves it exactly.
//!
//! The cache's precision is the attention's arithmetic: f32 keys and values go through the f32
//! kernel ([`causal_attention_at`]); bf16 ones through the bf16 kernel (queries and
//! probabilities rounded too, f32 sums), which is what the bf16 precision always ran. The
//! size, for a model with `n_attn` attention blocks of `H` query heads of width `hd`
//! (grouped-query models keep each query head's key/value rows):
//!
//! ```text
//! bytes = n_attn · 2 · L · H · hd · (4 for f32, 2 for bf16)
//! ```
//!
//! (Evo 2 7B: 5 blocks, H·hd = 4096: 80 KiB per base in bf16, 160 KiB in f32.)

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ops::attention::{causal_attention_at, causal_attention_bf16_at};
use crate::params::f32_to_bf16;

/// The precision of the key/value cache and of attention's two products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvPrecision {
    F32,
    Bf16,
}

impl std::fmt::Display for KvPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvPrecision::F32 => "f32",
            KvPrecision::Bf16 => "bf16",
        })
    }
}

impl KvPrecision {
    /// Bytes per cached value.
    pub fn bytes(self) -> usize {
        match self {
            KvPrecision::F32 => 4,
            KvPrecision::Bf16 => 2,
        }
    }
}

/// Bytes of the key/value caches of `n_attn` attention blocks of width `width = H·hd` holding
/// `len` positions (module docs).
pub fn kv_cache_bytes(n_attn: usize, width: usize, len: usize, prec: KvPrecision) -> u64 {
    crate::memory::mul(&[n_attn, 2, len, width, prec.bytes()])
}

/// One attention block's cache (module docs).
#[derive(Clone, Debug)]
pub struct KvCache {
    prec: KvPrecision,
    heads: usize,
    hd: usize,
    cap: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    kb: Vec<u16>,
    vtb: Vec<u16>,
}

impl KvCache {
    /// An empty cache.
    pub fn new(prec: KvPrecision, heads: usize, hd: usize) -> Self {
        KvCache {
            prec,
            heads,
            hd,
            cap: 0,
            k: Vec::new(),
            v: Vec::new(),
            kb: Vec::new(),
            vtb: Vec::new(),
        }
    }

    /// Reuse this cache's buffers for another block or sequence: precision and shape set, no
    /// rows kept.
    pub fn reset(&mut self, prec: KvPrecision, heads: usize, hd: usize) {
        if (prec, heads, hd) != (self.prec, self.heads, self.hd) {
            self.cap = 0;
        }
        self.prec = prec;
        self.heads = heads;
        self.hd = hd;
    }

    pub fn precision(&self) -> KvPrecision {
        self.prec
    }

    /// Rows reserved per head.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.k.len() + self.v.len()) + 2 * (self.kb.len() + self.vtb.len())
    }

    /// Make room for `rows` rows per head, keeping rows `0 .. keep`: exactly `rows` when
    /// `exact` (a forward that knows its length), else at least double the old capacity.
    pub fn reserve(&mut self, rows: usize, keep: usize, exact: bool) {
        if rows <= self.cap {
            return;
        }
        let cap = if exact { rows } else { rows.max(2 * self.cap) };
        let (h, hd, old) = (self.heads, self.hd, self.cap);
        let keep = keep.min(old);
        let n = h * cap * hd;
        match self.prec {
            KvPrecision::F32 => {
                for buf in [&mut self.k, &mut self.v] {
                    let mut next = vec![0.0f32; n];
                    for hh in 0..h {
                        next[hh * cap * hd..(hh * cap + keep) * hd]
                            .copy_from_slice(&buf[hh * old * hd..(hh * old + keep) * hd]);
                    }
                    *buf = next;
                }
                self.kb = Vec::new();
                self.vtb = Vec::new();
            }
            KvPrecision::Bf16 => {
                let mut kb = vec![0u16; n];
                let mut vtb = vec![0u16; n];
                for hh in 0..h {
                    kb[hh * cap * hd..(hh * cap + keep) * hd]
                        .copy_from_slice(&self.kb[hh * old * hd..(hh * old + keep) * hd]);
                    for i in 0..hd {
                        let (src, dst) = ((hh * hd + i) * old, (hh * hd + i) * cap);
                        vtb[dst..dst + keep].copy_from_slice(&self.vtb[src..src + keep]);
                    }
                }
                self.kb = kb;
                self.vtb = vtb;
                self.k = Vec::new();
                self.v = Vec::new();
            }
        }
        self.cap = cap;
    }

    /// Store the keys and values of positions `t0 .. t0 + m`, `k, v [H, m, hd]` (keys already
    /// rotated). The rows must be reserved.
    pub fn put(&mut self, t0: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let (h, hd, cap) = (self.heads, self.hd, self.cap);
        let m = k.len() / (h * hd).max(1);
        if k.len() != m * h * hd || v.len() != k.len() || t0 + m > cap {
            return Err(Error::shape(
                "key/value cache",
                "rows",
                format!("[{h}, m, {hd}] keys and values with t0 + m <= {cap}"),
                format!("{} and {} values at t0 = {t0}", k.len(), v.len()),
            ));
        }
        for hh in 0..h {
            let src = hh * m * hd..(hh + 1) * m * hd;
            let dst = (hh * cap + t0) * hd..(hh * cap + t0 + m) * hd;
            match self.prec {
                KvPrecision::F32 => {
                    self.k[dst.clone()].copy_from_slice(&k[src.clone()]);
                    self.v[dst].copy_from_slice(&v[src]);
                }
                KvPrecision::Bf16 => {
                    for (o, &x) in self.kb[dst].iter_mut().zip(&k[src]) {
                        *o = f32_to_bf16(x);
                    }
                    for t in 0..m {
                        for i in 0..hd {
                            self.vtb[(hh * hd + i) * cap + t0 + t] =
                                f32_to_bf16(v[(hh * m + t) * hd + i]);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Causal attention of the queries of positions `t0 .. t0 + m`, `q [H, m, hd]` (rotated),
    /// against rows `0 .. t0 + m` of the cache: `out [m, H·hd]`.
    pub fn attend(&self, q: &[f32], t0: usize, out: &mut [f32]) -> Result<()> {
        let (h, hd, cap) = (self.heads, self.hd, self.cap);
        match self.prec {
            KvPrecision::F32 => causal_attention_at(q, &self.k, &self.v, h, hd, t0, cap, out),
            KvPrecision::Bf16 => {
                causal_attention_bf16_at(q, &self.kb, &self.vtb, h, hd, t0, cap, out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rand_vec;

    /// Writing rows chunk by chunk into a growing cache (re-laid out several times) attends
    /// exactly like one cache reserved for the whole length and written at once.
    #[test]
    fn growing_cache_attends_like_one_reserved_cache() {
        let (h, hd, l) = (3, 8, 37);
        let q = rand_vec(h * l * hd, 1, 1.0);
        let k = rand_vec(h * l * hd, 2, 1.0);
        let v = rand_vec(h * l * hd, 3, 1.0);
        // Rows t0 .. t1 of every head, [H, m, hd].
        let rows = |x: &[f32], t0: usize, t1: usize| -> Vec<f32> {
            (0..h)
                .flat_map(|hh| x[(hh * l + t0) * hd..(hh * l + t1) * hd].to_vec())
                .collect()
        };
        for prec in [KvPrecision::F32, KvPrecision::Bf16] {
            let mut whole = KvCache::new(prec, h, hd);
            whole.reserve(l, 0, true);
            whole.put(0, &k, &v).unwrap();
            let mut want = vec![0.0; l * h * hd];
            whole.attend(&q, 0, &mut want).unwrap();
            let mut grown = KvCache::new(prec, h, hd);
            let mut got = vec![0.0; l * h * hd];
            let mut t0 = 0;
            for m in [1, 2, 5, 1, 13, 15] {
                let t1 = t0 + m;
                grown.reserve(t1, t0, false);
                grown.put(t0, &rows(&k, t0, t1), &rows(&v, t0, t1)).unwrap();
                grown
                    .attend(&rows(&q, t0, t1), t0, &mut got[t0 * h * hd..t1 * h * hd])
                    .unwrap();
                t0 = t1;
            }
            assert_eq!(t0, l);
            assert!(grown.capacity() >= l && grown.capacity() < 2 * l + 15);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 1e-5, "{prec}: {err}");
            assert_eq!(
                grown.bytes(),
                2 * h * hd * grown.capacity() * prec.bytes(),
                "{prec}"
            );
        }
    }

    #[test]
    fn writes_past_the_reserved_rows_are_refused() {
        let mut c = KvCache::new(KvPrecision::F32, 2, 4);
        c.reserve(3, 0, true);
        let x = vec![0.0; 2 * 2 * 4];
        assert!(c.put(1, &x, &x).is_ok());
        let e = c.put(2, &x, &x).unwrap_err().to_string();
        assert!(e.contains("t0 = 2"), "{e}");
    }

    #[test]
    fn size_formula_counts_both_tensors() {
        // Evo 2 7B: five attention blocks of width 4096, 80 KiB per base in bf16.
        assert_eq!(kv_cache_bytes(5, 4096, 1, KvPrecision::Bf16), 80 * 1024);
        assert_eq!(
            kv_cache_bytes(5, 4096, 131_072, KvPrecision::F32),
            20 * (1 << 30)
        );
    }
}
