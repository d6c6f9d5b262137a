//! Memory estimates of the HyenaDNA language model, for the memory guard
//! ([`crate::memory::check_fits`]): what building or loading a model of an [`LmConfig`] takes,
//! what training it at batch `B` and window `L` takes, and what the lean inference of one
//! sequence takes. Each counts the large buffers of the code paths in this family (the
//! parameter store, AdamW's moments, the per-block activations an `LmCache` keeps for the
//! backward, the lean workspace), so it is within a factor of about 2 of the peak, and on the
//! low side: the guard refuses what cannot fit, not what might not.
//!
//! Every product saturates ([`crate::memory::mul`]): a config with `n_layer = 10^9` or
//! `l_max = 10^12` gives an estimate of many TiB, not an overflow.

use super::config::LmConfig;
use crate::error::Result;
use crate::memory::{floats, mul};

/// Parameters of the model (the one f32 buffer of its parameter store).
pub fn param_count(cfg: &LmConfig) -> u64 {
    let (v, d, di) = (cfg.padded_vocab(), cfg.d_model(), cfg.d_inner);
    let op = &cfg.operator;
    let n = op.order;
    let (e, f) = (op.filter.emb_dim, op.filter.filter_order);
    let c = n.saturating_add(1).saturating_mul(d); // in_proj channels (N+1)·D
    let heads = if cfg.tie_embeddings { 1 } else { 2 };
    let embed = mul(&[heads, v, d]);
    let block = [
        mul(&[c, d]).saturating_add(c as u64),              // in_proj
        mul(&[d, d]).saturating_add(d as u64),              // out_proj
        mul(&[c, op.short_filter_order.saturating_add(1)]), // short filter and bias
        mul(&[e, f]),                                       // filter MLP: first layer
        mul(&[op.filter.num_inner_mlps, f, f]),             // its inner layers
        mul(&[f, n.saturating_sub(1), d]),                  // its output layer
        mul(&[4, d]),                                       // two LayerNorms
        mul(&[2, d, di]),                                   // fc1, fc2
        (di as u64).saturating_add(d as u64),               // their biases
    ]
    .iter()
    .fold(0u64, |a, &x| a.saturating_add(x));
    embed
        .saturating_add(block.saturating_mul(cfg.n_layer as u64))
        .saturating_add(mul(&[2, d]))
}

/// Bytes of the filters' buffers (positional embedding `z [l_max, E]` and time `t [l_max]`,
/// shared by the blocks).
fn buffer_bytes(cfg: &LmConfig) -> u64 {
    let op = &cfg.operator;
    floats(mul(&[op.l_max, op.filter.emb_dim.saturating_add(1)]))
}

/// Bytes to build or load the model: its parameters and its filters' buffers.
pub fn model_bytes(cfg: &LmConfig) -> u64 {
    floats(param_count(cfg)).saturating_add(buffer_bytes(cfg))
}

/// Floats the training forward keeps per position and block for the backward: the residual
/// stream and the two norms' inputs and outputs (4·D), their statistics (4), the MLP's hidden
/// activations before and after GELU (2·d_inner), and the operator's projections, short
/// convolution and gates (about 3·(N+1)·D).
fn train_floats_per_position_block(cfg: &LmConfig) -> u64 {
    let d = cfg.d_model() as u64;
    let c = (cfg.operator.order as u64)
        .saturating_add(1)
        .saturating_mul(d);
    d.saturating_mul(4)
        .saturating_add(4)
        .saturating_add((cfg.d_inner as u64).saturating_mul(2))
        .saturating_add(c.saturating_mul(3))
}

/// Bytes to train a HyenaDNA LM of `cfg` on batches of `batch` windows of `len` tokens with
/// `shards` data-parallel shards (`min(worker threads, batch)`): the parameters, their
/// gradient and AdamW's two moments (4 copies), one more gradient buffer per extra shard, the
/// activations the forward keeps for the backward (per block and position,
/// [`train_floats_per_position_block`], plus each block's filters `(N-1)·D·L`), the logits and
/// their gradient (`2·B·L·V_pad`), and the backward's scratch (about `B·L·(4·D + d_inner)`).
///
/// For `hyena train` (the run checks it right after validating the config, with
/// [`crate::memory::check_fits`]).
pub fn train_bytes(cfg: &LmConfig, batch: usize, len: usize, shards: usize) -> u64 {
    let params = param_count(cfg);
    let copies = 4u64.saturating_add(shards.max(1) as u64 - 1);
    let bl = mul(&[batch, len]);
    let d = cfg.d_model() as u64;
    let per_block = bl
        .saturating_mul(train_floats_per_position_block(cfg))
        .saturating_add(mul(&[
            cfg.operator.order.saturating_sub(1),
            cfg.d_model(),
            len,
        ]));
    let head = bl.saturating_mul(2u64.saturating_mul(cfg.padded_vocab() as u64));
    let scratch = bl.saturating_mul(d.saturating_mul(4).saturating_add(cfg.d_inner as u64));
    let acts = per_block
        .saturating_mul(cfg.n_layer as u64)
        .saturating_add(head)
        .saturating_add(scratch);
    floats(params.saturating_mul(copies).saturating_add(acts)).saturating_add(buffer_bytes(cfg))
}

/// Refuse training `cfg` at `batch` windows of `len` tokens when [`train_bytes`] (with one
/// shard per worker thread, at most one per window) exceeds the available memory; the message
/// names the flags of `hyena train` that reduce it.
pub fn check_train(cfg: &LmConfig, batch: usize, len: usize) -> Result<()> {
    let shards = rayon::current_num_threads().min(batch).max(1);
    crate::memory::check_fits(
        &format!(
            "training a model of {} blocks, d_model {} at batch {batch} x {len} tokens",
            cfg.n_layer,
            cfg.d_model()
        ),
        train_bytes(cfg, batch, len, shards),
        "--batch, --seq-len, --d-model or --n-layer (or the config's batch_size, seq_len, \
         d_model, n_layer)",
    )
}

/// Bytes of the lean inference (`embed`, `score`) of one sequence of `len` tokens, in chunks
/// of `chunk` positions, beside the model ([`model_bytes`]): the residual stream and the long
/// convolution rows (about `3·L·D` with the norm statistics), and the chunk buffers (about
/// `P·(4·(N+1)·D + 2·d_inner)`).
pub fn lean_bytes(cfg: &LmConfig, len: usize, chunk: usize) -> u64 {
    let d = cfg.d_model();
    let c = cfg.operator.order.saturating_add(1).saturating_mul(d);
    let stream = mul(&[len, d.saturating_mul(3).saturating_add(8)]);
    let chunks = mul(&[
        chunk.min(len.max(1)),
        c.saturating_mul(4)
            .saturating_add(cfg.d_inner.saturating_mul(2)),
    ]);
    floats(stream.saturating_add(chunks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::hyenadna::HyenaLm;

    #[test]
    fn the_parameter_count_is_close_to_the_built_model() {
        for cfg in [
            LmConfig::default(),
            LmConfig::hyenadna(128, 2, 1024),
            LmConfig::hyenadna(64, 3, 300),
        ] {
            let (_, store) = HyenaLm::fresh(&cfg, 0).unwrap();
            let (got, est) = (store.data().len() as f64, param_count(&cfg) as f64);
            assert!(
                (est / got - 1.0).abs() < 0.1,
                "estimate {est} vs {got} parameters"
            );
        }
    }

    #[test]
    fn absurd_configs_saturate_instead_of_overflowing() {
        let mut cfg = LmConfig {
            n_layer: 1_000_000_000,
            ..LmConfig::default()
        };
        assert!(model_bytes(&cfg) > 1 << 40);
        cfg.operator.l_max = usize::MAX;
        cfg.operator.d_model = usize::MAX;
        assert_eq!(train_bytes(&cfg, usize::MAX, usize::MAX, 8), u64::MAX);
        assert_eq!(lean_bytes(&cfg, usize::MAX, 4096), u64::MAX);
    }

    #[test]
    fn training_grows_with_batch_and_window() {
        let cfg = LmConfig::hyenadna(128, 2, 1024);
        let small = train_bytes(&cfg, 1, 128, 1);
        assert!(train_bytes(&cfg, 8, 128, 1) > small);
        assert!(train_bytes(&cfg, 1, 1024, 1) > small);
        assert!(small > 4 * 4 * param_count(&cfg));
    }
}
