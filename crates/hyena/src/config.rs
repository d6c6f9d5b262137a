//! The configuration of the Hyena operator and its implicit filter (serde), with every default
//! in one place; derived sizes are methods. The language models' own configurations live with
//! them (`models::hyenadna::LmConfig`, `models::zoo::ArchConfig`).
//!
//! Defaults are the constructor defaults of safari's `HyenaOperator`, `HyenaFilter` and
//! `ExponentialModulation` (`src/models/sequence/hyena.py`), not a particular checkpoint's,
//! except that the positional embedding `z` is a buffer by default (`learn_pos_emb` off, as
//! HyenaDNA trains it; safari's default `lr_pos_emb` makes it a parameter). The released
//! HyenaDNA checkpoints use `emb_dim = 5`, `w = 10` (their HF `config.json`) and
//! `shift = 0.05` with the `(o d)` layout (`standalone_hyenadna.py`, the HF port
//! `modeling_hyena.py`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the implicit filter's `D·(N-1)` output channels map to (stage `o`, channel `d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FilterLayout {
    /// safari / training repo: `channel = d·(N-1) + o` (`(v o)` rearrange).
    #[default]
    Interleaved,
    /// HyenaDNA standalone / HF port: `channel = o·D + d` (`(o d)` rearrange).
    Blocked,
}

/// The implicit long filter (safari's `HyenaFilter` with its `ExponentialModulation`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Positional-embedding width E (odd, ≥ 3).
    pub emb_dim: usize,
    /// Width F of the filter MLP (`filter_order`).
    pub filter_order: usize,
    /// Number of hidden `Linear(F, F) → Sin` pairs.
    pub num_inner_mlps: usize,
    /// Initial Sin frequency.
    pub w: f32,
    /// Apply the exponential decay window.
    pub modulate: bool,
    pub fast_decay_pct: f32,
    pub slow_decay_pct: f32,
    pub target: f32,
    /// Added to the decay window: 0.0 in safari, 0.05 in HyenaDNA's released code.
    pub shift: f32,
    /// Channel layout of the filter outputs (matters only for order > 2).
    pub layout: FilterLayout,
    /// Train the positional embedding `z` (safari's `lr_pos_emb != 0` makes it a Parameter);
    /// off for HyenaDNA, whose checkpoints keep it as a buffer.
    pub learn_pos_emb: bool,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            emb_dim: 3,
            filter_order: 64,
            num_inner_mlps: 2,
            w: 1.0,
            modulate: true,
            fast_decay_pct: 0.3,
            slow_decay_pct: 1.5,
            target: 1e-2,
            shift: 0.0,
            layout: FilterLayout::Interleaved,
            learn_pos_emb: false,
        }
    }
}

/// The widest model a config may ask for.
pub const MAX_D_MODEL: usize = 1 << 20;
/// The longest `l_max` a config may ask for (2^32 - 1 positions, beyond any chromosome).
pub const MAX_L_MAX: usize = u32::MAX as usize;
/// The highest Hyena order.
pub const MAX_ORDER: usize = 64;
/// The largest filter sizes (`short_filter_order`, `emb_dim`, `filter_order`,
/// `num_inner_mlps`).
pub const MAX_FILTER: usize = 1 << 16;

/// The Hyena operator (safari's `HyenaOperator`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HyenaConfig {
    /// Model width D.
    pub d_model: usize,
    /// Longest sequence the filter is built for; fixes the filter's time grid.
    pub l_max: usize,
    /// Hyena order N (≥ 2): N gates, N-1 long convolutions.
    pub order: usize,
    /// Length of the short depthwise filter.
    pub short_filter_order: usize,
    pub filter: FilterConfig,
}

impl Default for HyenaConfig {
    fn default() -> Self {
        HyenaConfig {
            d_model: 128,
            l_max: 1024,
            order: 2,
            short_filter_order: 3,
            filter: FilterConfig::default(),
        }
    }
}

impl HyenaConfig {
    /// Channels after `in_proj`: `(N+1)·D`.
    pub fn inner_channels(&self) -> usize {
        (self.order + 1) * self.d_model
    }
    /// Channels of the implicit filter output: `D·(N-1)`.
    pub fn filter_channels(&self) -> usize {
        (self.order - 1) * self.d_model
    }

    /// Check every field's range; the message says which value is wrong and what is allowed.
    /// Sizes have upper bounds far above any real model ([`MAX_D_MODEL`], [`MAX_L_MAX`],
    /// [`MAX_FILTER`]), so an absurd config is refused by name before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        if self.d_model == 0 || self.d_model > MAX_D_MODEL {
            return Err(Error::config(
                "d_model",
                self.d_model,
                format!("must be in 1..={MAX_D_MODEL}"),
            ));
        }
        if self.l_max == 0 || self.l_max > MAX_L_MAX {
            return Err(Error::config(
                "l_max",
                self.l_max,
                format!("must be in 1..={MAX_L_MAX} (the longest sequence length)"),
            ));
        }
        if self.order > MAX_ORDER {
            return Err(Error::config(
                "order",
                self.order,
                format!("must be in 2..={MAX_ORDER}"),
            ));
        }
        if self.short_filter_order > MAX_FILTER {
            return Err(Error::config(
                "short_filter_order",
                self.short_filter_order,
                format!("must be in 1..={MAX_FILTER} (reference: 3)"),
            ));
        }
        let f = &self.filter;
        for (key, v) in [
            ("filter.emb_dim", f.emb_dim),
            ("filter.filter_order", f.filter_order),
            ("filter.num_inner_mlps", f.num_inner_mlps),
        ] {
            if v > MAX_FILTER {
                return Err(Error::config(key, v, format!("must be <= {MAX_FILTER}")));
            }
        }
        for (key, v) in [("filter.w", f.w), ("filter.shift", f.shift)] {
            if !v.is_finite() {
                return Err(Error::config(key, v, "must be a finite number"));
            }
        }
        if self.order < 2 {
            return Err(Error::config(
                "order",
                self.order,
                "Hyena order must be >= 2 (2 gates, 1 long conv)",
            ));
        }
        if self.short_filter_order == 0 {
            return Err(Error::config(
                "short_filter_order",
                0,
                "must be >= 1 (reference: 3)",
            ));
        }
        let f = &self.filter;
        if f.emb_dim < 3 || f.emb_dim.is_multiple_of(2) {
            return Err(Error::config(
                "filter.emb_dim",
                f.emb_dim,
                "must be odd and >= 3 (e.g. 3, 5, 33)",
            ));
        }
        if f.filter_order == 0 {
            return Err(Error::config(
                "filter.filter_order",
                0,
                "must be >= 1 (reference: 64)",
            ));
        }
        if !(f.fast_decay_pct > 0.0 && f.slow_decay_pct > 0.0) {
            return Err(Error::config(
                "filter.fast_decay_pct/slow_decay_pct",
                format!("{}/{}", f.fast_decay_pct, f.slow_decay_pct),
                "must be > 0",
            ));
        }
        if !(f.target > 0.0 && f.target < 1.0) {
            return Err(Error::config(
                "filter.target",
                f.target,
                "must lie in (0, 1)",
            ));
        }
        Ok(())
    }
}
