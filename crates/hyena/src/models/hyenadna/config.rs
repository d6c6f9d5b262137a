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
    /// Check every field.
    pub fn validate(&self) -> Result<()> {
        if self.vocab_size == 0 {
            return Err(Error::config("vocab_size", 0, "must be >= 1"));
        }
        if self.n_layer == 0 {
            return Err(Error::config("n_layer", 0, "must be >= 1"));
        }
        if self.d_inner == 0 {
            return Err(Error::config(
                "d_inner",
                0,
                "must be >= 1 (HyenaDNA uses 4·d_model)",
            ));
        }
        self.operator.validate()
    }
}
