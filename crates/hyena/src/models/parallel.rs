//! Data parallelism over the sequences of a batch, shared by every model's training step and
//! batched evaluation.
//!
//! With `T` worker threads and `B ≥ 2` sequences, the batch is split into `min(T, B)`
//! contiguous shards, and each thread runs its shard end to end (forward, loss, backward) with
//! single-threaded kernels ([`crate::ops::serial`]). At small shapes (HyenaDNA-tiny, MAD) this
//! keeps every core inside large matrix products instead of meeting at a barrier after every
//! kernel. With one shard (`B = 1`, long sequences) the kernels themselves run in parallel.
//!
//! Gradients: shard 0 accumulates straight into the caller's buffer, the others into buffers of
//! their own (kept between steps: fresh ones would cost a page fault per 4 KiB), which are then
//! added in shard order. The summation order depends only on the shard count, so the same seed
//! and thread count give the same bits.

use rayon::prelude::*;

use crate::error::Result;

/// Split `b` sequences into `s` contiguous shards as evenly as possible: `(start, len)` each.
pub fn shard_ranges(b: usize, s: usize) -> Vec<(usize, usize)> {
    let (q, r) = (b / s.max(1), b % s.max(1));
    let mut start = 0;
    (0..s)
        .map(|i| {
            let n = q + usize::from(i < r);
            let out = (start, n);
            start += n;
            out
        })
        .collect()
}

/// Shards for a batch of `b` sequences: one per rayon worker, at most `b`.
pub fn shards_for(b: usize) -> usize {
    rayon::current_num_threads().min(b).max(1)
}

/// The gradient buffers of shards 1.. (shard 0 writes into the caller's), kept between steps.
#[derive(Clone, Debug, Default)]
pub struct ShardGrads(Vec<Vec<f32>>);

/// Run `f(state, (start, len), grads)` on the contiguous shards of a batch of `b` sequences,
/// one per worker, each with its own element of `states` (grown to the shard count).
///
/// With `grads`, shard 0 gets the caller's buffer and the others zeroed buffers of the same
/// length from `spare`, which are added into the caller's afterwards, in shard order. Without,
/// `f` gets `None` (a forward only). Returns `f`'s results in shard order.
pub fn run_shards<S, T>(
    states: &mut Vec<S>,
    spare: &mut ShardGrads,
    grads: Option<&mut [f32]>,
    b: usize,
    f: impl Fn(&mut S, (usize, usize), Option<&mut [f32]>) -> Result<T> + Sync,
) -> Result<Vec<T>>
where
    S: Default + Send,
    T: Send,
{
    let s = shards_for(b);
    states.resize_with(s.max(states.len()), S::default);
    let ranges = shard_ranges(b, s);
    let run = |st: &mut S, r: (usize, usize), g: Option<&mut [f32]>| {
        if s > 1 {
            crate::ops::serial(|| f(st, r, g))
        } else {
            f(st, r, g) // one shard: the kernels themselves run in parallel
        }
    };
    let Some(grads) = grads else {
        return states[..s]
            .par_iter_mut()
            .zip(ranges)
            .map(|(st, r)| run(st, r, None))
            .collect();
    };
    let n = grads.len();
    spare.0.resize_with(s - 1, Vec::new);
    for g in &mut spare.0 {
        g.clear();
        g.resize(n, 0.0);
    }
    let targets: Vec<&mut [f32]> = std::iter::once(&mut *grads)
        .chain(spare.0.iter_mut().map(|g| g.as_mut_slice()))
        .collect();
    let out: Vec<T> = states[..s]
        .par_iter_mut()
        .zip(targets.into_par_iter())
        .zip(ranges)
        .map(|((st, g), r)| run(st, r, Some(g)))
        .collect::<Result<_>>()?;
    for g in &spare.0 {
        for (a, b) in grads.iter_mut().zip(g) {
            *a += b;
        }
    }
    Ok(out)
}
