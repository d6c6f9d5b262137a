//! The HyenaDNA language model's configuration (HF `config.json` names where they exist) and
//! its named shapes.

use serde::{Deserialize, Serialize};

use crate::config::HyenaConfig;
use crate::error::{Error, Result};

/// Language-model configuration (HF `config.json` names where they exist).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LmConfig {
    /// Real vocabulary size (12 for the HyenaDNA character tokenizer).
    pub vocab_size: usize,
    /// Embedding rows are padded up to a multiple of this (8 in HyenaDNA).
    pub pad_vocab_size_multiple: usize,
    /// Number of residual blocks.
    pub n_layer: usize,
    /// MLP hidden width (`4·D` in HyenaDNA).
    pub d_inner: usize,
    pub layer_norm_epsilon: f32,
    /// Share the LM head with the embedding (safari) or keep a separate one (HF HyenaDNA).
    pub tie_embeddings: bool,
    /// The Hyena operator of every block; its `d_model` is the model width.
    pub operator: HyenaConfig,
}

impl Default for LmConfig {
    fn default() -> Self {
        LmConfig {
            vocab_size: 12,
            pad_vocab_size_multiple: 8,
            n_layer: 2,
            d_inner: 512,
            layer_norm_epsilon: 1e-5,
            tie_embeddings: false,
            operator: HyenaConfig {
                d_model: 128,
                ..HyenaConfig::default()
            },
        }
    }
}

impl LmConfig {
    /// The shape of the released HyenaDNA checkpoints (the `config.json` of the
    /// `LongSafari/hyenadna-*-hf` models) at width `d`: `n_layer` blocks, `d_inner` 4·d, order 2,
    /// implicit filter with emb_dim 5, filter_order 64, w 10, shift 0.05 and the released `(o d)`
    /// channel layout; vocabulary 12 padded to 16.
    pub fn hyenadna(d: usize, n_layer: usize, l_max: usize) -> Self {
        use crate::config::{FilterConfig, FilterLayout};
        LmConfig {
            n_layer,
            d_inner: 4 * d,
            operator: HyenaConfig {
                d_model: d,
                l_max,
                filter: FilterConfig {
                    emb_dim: 5,
                    filter_order: 64,
                    w: 10.0,
                    shift: 0.05,
                    layout: FilterLayout::Blocked,
                    ..FilterConfig::default()
                },
                ..HyenaConfig::default()
            },
            ..LmConfig::default()
        }
    }

    /// Model width D.
    pub fn d_model(&self) -> usize {
        self.operator.d_model
    }
    /// Vocabulary rows after padding.
    pub fn padded_vocab(&self) -> usize {
        let m = self.pad_vocab_size_multiple.max(1);
        self.vocab_size.div_ceil(m) * m
    }
    /// Check every field: sizes at least 1 and below [`MAX_N_LAYER`], [`MAX_WIDTH`] and
    /// [`MAX_VOCAB`] (far above any real model; a typo like `n_layer: 1000000000` is refused
    /// here, by name, before anything is allocated), `layer_norm_epsilon` finite and > 0, and
    /// the operator's fields ([`HyenaConfig::validate`]).
    pub fn validate(&self) -> Result<()> {
        in_range("vocab_size", self.vocab_size, 1, MAX_VOCAB, "(12 for DNA)")?;
        in_range(
            "pad_vocab_size_multiple",
            self.pad_vocab_size_multiple,
            0,
            MAX_WIDTH,
            "(8 in HyenaDNA)",
        )?;
        in_range(
            "n_layer",
            self.n_layer,
            1,
            MAX_N_LAYER,
            "(the number of blocks)",
        )?;
        in_range(
            "d_inner",
            self.d_inner,
            1,
            MAX_WIDTH,
            "(HyenaDNA uses 4·d_model)",
        )?;
        let eps = self.layer_norm_epsilon;
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::config(
                "layer_norm_epsilon",
                eps,
                "must be a finite number > 0 (HyenaDNA uses 1e-5)",
            ));
        }
        self.operator.validate()
    }
}

/// The most blocks a config may ask for.
pub const MAX_N_LAYER: usize = 1 << 16;
/// The widest `d_inner` (and `pad_vocab_size_multiple`) a config may ask for: 4 times the
/// widest `d_model`, the MLP width HyenaDNA uses.
pub const MAX_WIDTH: usize = 1 << 22;
/// The largest vocabulary a config may ask for.
pub const MAX_VOCAB: usize = 1 << 24;

/// An error naming `key` unless `lo <= v <= hi`.
fn in_range(key: &'static str, v: usize, lo: usize, hi: usize, note: &str) -> Result<()> {
    if v < lo || v > hi {
        return Err(Error::config(
            key,
            v,
            format!("must be in {lo}..={hi} {note}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(f: impl FnOnce(&mut LmConfig), key: &str) {
        let mut c = LmConfig::default();
        f(&mut c);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(&format!("`{key}`")), "{e}");
    }

    #[test]
    fn every_size_and_epsilon_is_checked_by_name() {
        LmConfig::default().validate().unwrap();
        refused(|c| c.n_layer = 0, "n_layer");
        refused(|c| c.n_layer = 1_000_000_000, "n_layer");
        refused(|c| c.vocab_size = 0, "vocab_size");
        refused(|c| c.d_inner = usize::MAX, "d_inner");
        refused(|c| c.layer_norm_epsilon = -1.0, "layer_norm_epsilon");
        refused(|c| c.layer_norm_epsilon = 0.0, "layer_norm_epsilon");
        refused(|c| c.layer_norm_epsilon = f32::NAN, "layer_norm_epsilon");
        refused(|c| c.operator.l_max = 1_000_000_000_000, "l_max");
        refused(|c| c.operator.d_model = 1_000_000_000, "d_model");
        refused(|c| c.operator.filter.w = f32::INFINITY, "filter.w");
    }
}
