//! The architecture of a StripedHyena model: the keys of a vortex YAML config (StripedHyena 2,
//! Evo 2) that change the computation, their defaults as vortex reads them
//! (`config.get(key, default)`), the checks that make a config buildable, and the released
//! models as named presets; and the Hugging Face `config.json` of StripedHyena 1 models (Evo 1,
//! StripedHyena-Hessian), read into the same structure with `generation: 1`.
//!
//! The released Evo 2 checkpoints carry no architecture; it comes from the YAML files of the
//! `evo2` package (`evo2/configs/*.yml`, mapped to model names in `evo2/utils.py`). The presets
//! below restate those files' values (`hyena-family.md` section 8.2); keys that only steer the
//! reference's GPU kernels (`use_flash_attn`, `use_flashfft`, …) are not kept.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which operator a block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Hyena-SE: short explicit FIR (cross-correlation order), no `D` term.
    Se,
    /// Hyena-MR: medium explicit FIR (convolution order) plus `D ⊙ u`.
    Mr,
    /// Hyena-LI: long implicit filter, a sum of real exponentials, plus `D ⊙ u`.
    Li,
    /// Multi-head attention with rotary embeddings.
    Mha,
}

/// A StripedHyena 2 architecture, named as in vortex's YAML configs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evo2Config {
    /// 2: StripedHyena 2 (vortex: SE/MR/LI blocks, interleaved channel split). 1: StripedHyena
    /// 1 (the `stripedhyena` package: every Hyena block has complex modal filters and is listed
    /// in `hcl_layer_idxs`, column-split channels, biased projections, attention rows
    /// `[Q; K; V]` with grouped-query heads).
    #[serde(default = "default_generation")]
    pub generation: u8,
    #[serde(default)]
    pub model_name: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_attention_heads: usize,
    pub attn_layer_idxs: Vec<usize>,
    pub hcl_layer_idxs: Vec<usize>,
    pub hcm_layer_idxs: Vec<usize>,
    pub hcs_layer_idxs: Vec<usize>,
    pub hcm_filter_length: usize,
    pub hcs_filter_length: usize,
    pub hcm_filter_groups: usize,
    pub hcs_filter_groups: usize,
    pub short_filter_length: usize,
    pub short_filter_bias: bool,
    pub state_size: usize,
    pub inner_mlp_size: usize,
    pub eps: f64,
    pub rotary_emb_base: f64,
    pub rotary_emb_scaling_factor: f64,
    pub use_interpolated_rotary_pos_emb: bool,
    pub proj_groups: usize,
    pub tie_embeddings: bool,
    pub mha_out_proj_bias: bool,
    pub hyena_out_proj_bias: bool,
    pub qkv_proj_bias: bool,
    pub interleave: bool,
    pub column_split: bool,
    pub column_split_hyena: bool,
    pub hyena_flip_x1x2: bool,
    pub evo2_style_activations: bool,
    pub mlp_activation: String,
    pub final_norm: bool,
    pub use_flash_rmsnorm: bool,
    pub max_seqlen: usize,
    /// The released file's in-projections were trained with FP8 (Transformer Engine): the 1B,
    /// 20B and 40B checkpoints give wrong likelihoods without FP8 numerics.
    pub use_fp8_input_projections: bool,
}

fn default_generation() -> u8 {
    2
}

/// The keys vortex reads with a default (`config.get(key, default)`), and those defaults.
fn vortex_defaults() -> serde_json::Value {
    serde_json::json!({
        "generation": 2,
        "model_name": "",
        "short_filter_bias": false,
        "rotary_emb_base": 1000000.0,
        "rotary_emb_scaling_factor": 1.0,
        "use_interpolated_rotary_pos_emb": false,
        "proj_groups": 1,
        "tie_embeddings": true,
        "mha_out_proj_bias": true,
        "hyena_out_proj_bias": true,
        "qkv_proj_bias": true,
        "interleave": false,
        "column_split": true,
        "column_split_hyena": true,
        "hyena_flip_x1x2": false,
        "evo2_style_activations": false,
        "mlp_activation": "gelu",
        "final_norm": true,
        "use_flash_rmsnorm": false,
        "max_seqlen": 8192,
        "use_fp8_input_projections": false,
    })
}

/// Keys of vortex configs that do not change the computation on a CPU (GPU kernel choices,
/// logging, parallelism, initialisation) and are ignored here.
const IGNORED: &[&str] = &[
    "num_filters",
    "hcl_filter_groups",
    "hyena_filter_groups",
    "mlp_init_method",
    "mlp_output_init_method",
    "make_vocab_size_divisible_by",
    "inner_size_multiple_of",
    "log_intermediate_values",
    "model_parallel_size",
    "pipe_parallel_size",
    "max_batch_size",
    "use_flash_attn",
    "use_flash_depthwise",
    "use_flashfft",
    "use_laughing_hyena",
    "inference_mode",
    "tokenizer_type",
    "prefill_style",
    "print_activations",
    "use_hcs_kernel",
    "use_hcm_kernel",
    "use_hcl_kernel",
    "compile",
    "low_mem_mode",
    "smeared_gqa",
    "params_dtype",
    "hyena_block_dtype",
    "attn_block_dtype",
    "mlp_dtype",
    "ground_truth_activations_path",
    "long_fir_threshold",
    "seqlen",
    "padding_idx",
];

impl Evo2Config {
    /// Read a parsed vortex YAML config (`file` names it in errors): known keys are taken,
    /// absent ones get vortex's defaults, keys that only steer GPU kernels are ignored, and any
    /// other key is an error (it may change the computation in a way this engine does not).
    pub fn from_vortex(v: &serde_json::Value, file: &Path) -> Result<Self> {
        let Some(obj) = v.as_object() else {
            return Err(Error::format(
                file,
                "a vortex config is a mapping of keys to values",
            ));
        };
        let mut merged = vortex_defaults();
        let m = merged.as_object_mut().expect("defaults are an object");
        let mut unknown = Vec::new();
        for (k, x) in obj {
            if IGNORED.contains(&k.as_str()) {
                continue;
            }
            if !is_field(k) {
                unknown.push(k.clone());
                continue;
            }
            m.insert(k.clone(), x.clone());
        }
        if !unknown.is_empty() {
            return Err(Error::format(
                file,
                format!(
                    "unknown vortex config key(s) {}: this engine does not know what they do, so \
                     it will not guess; remove them if they only concern GPU kernels",
                    unknown
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let cfg: Evo2Config = serde_json::from_value(merged)
            .map_err(|e| Error::format(file, format!("vortex config: {e}")))?;
        cfg.validate().map_err(|e| Error::format(file, e))?;
        Ok(cfg)
    }

    /// Read a StripedHyena 1 Hugging Face `config.json` (`model_type: "stripedhyena"`; `file`
    /// names it in errors) with the `stripedhyena` package's defaults for absent keys
    /// (`config.get(key, default)` in its `model.py` and `layers.py`). Keys of the Hugging Face
    /// wrapper and of GPU kernels are ignored; any other key is an error. Settings this engine
    /// does not compute (filter groups other than 1, `smeared_gqa`, `long_fir_threshold`) are
    /// refused by name.
    pub fn from_hf_stripedhyena(v: &serde_json::Value, file: &Path) -> Result<Self> {
        use serde_json::Value;
        let Some(obj) = v.as_object() else {
            return Err(Error::format(
                file,
                "a config.json is a mapping of keys to values",
            ));
        };
        let unknown: Vec<&String> = obj
            .keys()
            .filter(|k| !SH1_KEYS.contains(&k.as_str()) && !SH1_IGNORED.contains(&k.as_str()))
            .collect();
        if !unknown.is_empty() {
            return Err(Error::format(
                file,
                format!(
                    "unknown StripedHyena config key(s) {}: this engine does not know what they \
                     do, so it will not guess",
                    unknown
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let bad = |k: &str, why: String| Error::format(file, format!("`{k}`: {why}"));
        let usize_of = |k: &str, default: Option<usize>| -> Result<usize> {
            match obj.get(k) {
                None | Some(Value::Null) => {
                    default.ok_or_else(|| bad(k, "missing; the config must give it".into()))
                }
                Some(x) => x
                    .as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| bad(k, format!("expected a non-negative integer, got {x}"))),
            }
        };
        let f64_of = |k: &str, default: Option<f64>| -> Result<f64> {
            match obj.get(k) {
                None | Some(Value::Null) => {
                    default.ok_or_else(|| bad(k, "missing; the config must give it".into()))
                }
                Some(x) => x
                    .as_f64()
                    .ok_or_else(|| bad(k, format!("expected a number, got {x}"))),
            }
        };
        // `dotdict` returns None for a missing key, which the package tests for truth.
        let bool_of = |k: &str, default: bool| -> Result<bool> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(x) => Err(bad(k, format!("expected true or false, got {x}"))),
            }
        };
        let list_of = |k: &str| -> Result<Vec<usize>> {
            let x = obj
                .get(k)
                .ok_or_else(|| bad(k, "missing; the config must give it".into()))?;
            x.as_array()
                .and_then(|a| a.iter().map(|i| i.as_u64().map(|n| n as usize)).collect())
                .ok_or_else(|| bad(k, format!("expected a list of block indices, got {x}")))
        };
        let hidden = usize_of("hidden_size", None)?;
        let num_layers = usize_of("num_layers", None)?;
        // layers.py ParallelGatedMLP: int(2·D·4/3) rounded up to a multiple of 64 when absent.
        let default_inner = {
            let m = usize_of("model_parallel_size", Some(1))?
                .max(1)
                .saturating_mul(64);
            (hidden.saturating_mul(8) / 3).div_ceil(m).saturating_mul(m)
        };
        if usize_of("hyena_filter_groups", Some(hidden))? != 1 {
            return Err(bad(
                "hyena_filter_groups",
                "only 1 (one filter per channel, as every released StripedHyena 1 model) is \
                 supported"
                    .into(),
            ));
        }
        if bool_of("smeared_gqa", false)? {
            return Err(bad("smeared_gqa", "true is not supported".into()));
        }
        if obj.get("long_fir_threshold").is_some_and(|x| !x.is_null()) {
            return Err(bad(
                "long_fir_threshold",
                "a truncated long filter is not supported; remove the key for the exact model"
                    .into(),
            ));
        }
        let act = match obj.get("mlp_activation") {
            None | Some(Value::Null) => "silu".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(x) => return Err(bad("mlp_activation", format!("expected a string, got {x}"))),
        };
        let interp = bool_of("use_interpolated_rotary_pos_emb", false)?;
        let cfg = Evo2Config {
            generation: 1,
            model_name: match obj.get("_name_or_path") {
                Some(Value::String(s)) => s.clone(),
                _ => String::new(),
            },
            vocab_size: usize_of("vocab_size", None)?,
            hidden_size: hidden,
            num_layers,
            num_attention_heads: usize_of("num_attention_heads", None)?,
            attn_layer_idxs: list_of("attn_layer_idxs")?,
            // The released configs list one index past the last block (7.1); the package
            // never asks for it.
            hcl_layer_idxs: list_of("hyena_layer_idxs")?
                .into_iter()
                .filter(|&i| i < num_layers)
                .collect(),
            hcm_layer_idxs: vec![],
            hcs_layer_idxs: vec![],
            hcm_filter_length: 1,
            hcs_filter_length: 1,
            hcm_filter_groups: 1,
            hcs_filter_groups: 1,
            short_filter_length: usize_of("short_filter_length", None)?,
            short_filter_bias: bool_of("short_filter_bias", false)?,
            state_size: usize_of("state_size", None)?,
            inner_mlp_size: usize_of("inner_mlp_size", Some(default_inner))?,
            eps: f64_of("eps", None)?,
            rotary_emb_base: f64_of("rotary_emb_base", Some(10000.0))?,
            rotary_emb_scaling_factor: f64_of("rotary_emb_scaling_factor", Some(1.0))?,
            use_interpolated_rotary_pos_emb: interp,
            proj_groups: usize_of("proj_groups", Some(1))?,
            tie_embeddings: bool_of("tie_embeddings", false)?,
            mha_out_proj_bias: bool_of("mha_out_proj_bias", true)?,
            // `projections` and `out_filter_dense` are plain nn.Linear layers: always biased.
            hyena_out_proj_bias: true,
            qkv_proj_bias: bool_of("qkv_proj_bias", true)?,
            interleave: false,
            // flash-attn's MHA reads Wqkv as [Q; K; V]; the package never reads `column_split`.
            column_split: false,
            column_split_hyena: bool_of("column_split_hyena", true)?,
            hyena_flip_x1x2: false,
            evo2_style_activations: false,
            mlp_activation: act,
            final_norm: bool_of("final_norm", true)?,
            use_flash_rmsnorm: bool_of("use_flash_rmsnorm", false)?,
            max_seqlen: usize_of("max_seqlen", Some(8192))?,
            use_fp8_input_projections: false,
        };
        cfg.validate().map_err(|e| Error::format(file, e))?;
        Ok(cfg)
    }

    /// Rows of the attention `Wqkv`: `H` query heads and `2 · H / proj_groups` key and value
    /// heads of the head width.
    pub fn qkv_rows(&self) -> usize {
        (self.num_attention_heads + 2 * self.kv_heads()) * self.head_dim()
    }

    /// Key/value heads of the attention blocks.
    pub fn kv_heads(&self) -> usize {
        self.num_attention_heads / self.proj_groups.max(1)
    }

    /// Which operator block `i` is.
    pub fn kind(&self, i: usize) -> BlockKind {
        if self.attn_layer_idxs.contains(&i) {
            BlockKind::Mha
        } else if self.hcl_layer_idxs.contains(&i) {
            BlockKind::Li
        } else if self.hcm_layer_idxs.contains(&i) {
            BlockKind::Mr
        } else {
            BlockKind::Se
        }
    }

    /// Head width of the attention blocks.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Check that the config describes a model this engine builds; the message says what is
    /// wrong and what would be right.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let d = self.hidden_size;
        if d == 0 || self.num_layers == 0 || self.vocab_size == 0 {
            return Err("hidden_size, num_layers and vocab_size must be positive".into());
        }
        if self.num_attention_heads == 0 || !d.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "num_attention_heads {} must divide hidden_size {d}",
                self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "the head width {} must be even (rotary)",
                self.head_dim()
            ));
        }
        for (name, g) in [
            ("hcm_filter_groups", self.hcm_filter_groups),
            ("hcs_filter_groups", self.hcs_filter_groups),
        ] {
            if g == 0 || !d.is_multiple_of(g) {
                return Err(format!("{name} {g} must divide hidden_size {d}"));
            }
        }
        if self.short_filter_length == 0
            || self.hcs_filter_length == 0
            || self.hcm_filter_length == 0
            || self.state_size == 0
            || self.inner_mlp_size == 0
        {
            return Err(
                "short_filter_length, hcs/hcm_filter_length, state_size and inner_mlp_size must \
                 be positive"
                    .into(),
            );
        }
        // Sizes beyond any model (and beyond what the checks below can allocate for).
        if self.num_layers > 100_000 || d > 1 << 24 || self.vocab_size > 1 << 24 {
            return Err(format!(
                "num_layers {}, hidden_size {d}, vocab_size {}: larger than any model this \
                 engine can hold",
                self.num_layers, self.vocab_size
            ));
        }
        // Every block index in exactly one list.
        let mut seen = vec![0u8; self.num_layers];
        for (name, list) in [
            ("attn_layer_idxs", &self.attn_layer_idxs),
            ("hcl_layer_idxs", &self.hcl_layer_idxs),
            ("hcm_layer_idxs", &self.hcm_layer_idxs),
            ("hcs_layer_idxs", &self.hcs_layer_idxs),
        ] {
            for &i in list {
                if i >= self.num_layers {
                    return Err(format!(
                        "{name} lists block {i}, but num_layers is {}",
                        self.num_layers
                    ));
                }
                seen[i] = seen[i].saturating_add(1);
            }
        }
        if let Some(i) = seen.iter().position(|&n| n != 1) {
            return Err(format!(
                "block {i} is listed {} times in attn/hcl/hcm/hcs_layer_idxs; each block must be \
                 exactly one operator",
                seen[i]
            ));
        }
        match self.generation {
            1 => {
                if !self.column_split_hyena
                    || self.interleave
                    || self.hyena_flip_x1x2
                    || self.column_split
                    || !self.hcm_layer_idxs.is_empty()
                    || !self.hcs_layer_idxs.is_empty()
                {
                    return Err("a StripedHyena 1 config has column-split Hyena channels \
                         (column_split_hyena: true) and only attention and Hyena blocks"
                        .into());
                }
                if self.proj_groups == 0
                    || !self.num_attention_heads.is_multiple_of(self.proj_groups)
                {
                    return Err(format!(
                        "proj_groups {} must divide num_attention_heads {}",
                        self.proj_groups, self.num_attention_heads
                    ));
                }
                return self.validate_common();
            }
            2 => {}
            g => {
                return Err(format!(
                    "generation {g}: expected 1 (StripedHyena 1) or 2 (StripedHyena 2)"
                ))
            }
        }
        if !self.interleave || self.column_split_hyena || self.hyena_flip_x1x2 {
            return Err(
                "only the StripedHyena 2 channel split is supported here (interleave: True, \
                 column_split_hyena: False, hyena_flip_x1x2: False)"
                    .into(),
            );
        }
        if self.proj_groups != 1 {
            return Err(format!(
                "proj_groups {} (grouped-query attention) is not supported for StripedHyena 2 \
                 models; the released Evo 2 configs use 1",
                self.proj_groups
            ));
        }
        self.validate_common()
    }

    fn validate_common(&self) -> std::result::Result<(), String> {
        if !matches!(self.mlp_activation.as_str(), "gelu" | "silu") {
            return Err(format!(
                "mlp_activation `{}`: expected gelu or silu",
                self.mlp_activation
            ));
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let eps_ok = self.eps.is_finite() && self.eps >= 0.0;
        if !eps_ok || !positive(self.rotary_emb_base) || !positive(self.rotary_emb_scaling_factor) {
            return Err("eps must be >= 0 and the rotary base and scaling factor > 0".into());
        }
        if self.max_seqlen == 0 {
            return Err("max_seqlen must be positive".into());
        }
        Ok(())
    }

    /// The rotary position-interpolation factor actually applied.
    pub fn rotary_scale(&self) -> f32 {
        if self.use_interpolated_rotary_pos_emb {
            self.rotary_emb_scaling_factor as f32
        } else {
            1.0
        }
    }

    /// Whether the released checkpoint of this architecture is known to need FP8 in-projection
    /// numerics to give the published likelihoods (1B base, 20B, 40B: bionemo-evo2 README; the
    /// 7B models match in bf16, 0.9951 vs 0.9953).
    pub fn needs_fp8(&self) -> bool {
        self.use_fp8_input_projections && !self.model_name.contains("-7b")
    }
}

/// The 1B base architecture (what [`crate::models::model_section`] lists the keys of).
impl Default for Evo2Config {
    fn default() -> Self {
        preset_evo2_1b_base()
    }
}

fn is_field(k: &str) -> bool {
    // Serialising a config lists exactly its fields.
    static FIELDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FIELDS
        .get_or_init(|| match serde_json::to_value(preset_evo2_1b_base()) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        })
        .iter()
        .any(|f| f == k)
}

/// Keys of a StripedHyena 1 `config.json` that [`Evo2Config::from_hf_stripedhyena`] reads.
const SH1_KEYS: &[&str] = &[
    "_name_or_path",
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_attention_heads",
    "attn_layer_idxs",
    "hyena_layer_idxs",
    "hyena_filter_groups",
    "short_filter_length",
    "short_filter_bias",
    "state_size",
    "inner_mlp_size",
    "eps",
    "rotary_emb_base",
    "rotary_emb_scaling_factor",
    "use_interpolated_rotary_pos_emb",
    "proj_groups",
    "tie_embeddings",
    "mha_out_proj_bias",
    "qkv_proj_bias",
    "column_split_hyena",
    "mlp_activation",
    "final_norm",
    "use_flash_rmsnorm",
    "max_seqlen",
    "model_parallel_size",
    "smeared_gqa",
    "long_fir_threshold",
];

/// Keys of a StripedHyena 1 `config.json` that do not change the computation on a CPU: the
/// Hugging Face wrapper's, GPU kernel choices, dtypes, parallelism, logging, and `column_split`
/// (which the package never reads).
const SH1_IGNORED: &[&str] = &[
    "architectures",
    "auto_map",
    "model_type",
    "torch_dtype",
    "transformers_version",
    "_commit_hash",
    "use_cache",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "tokenizer_class",
    "use_flash_attention_2",
    "use_flash_attn",
    "use_flash_depthwise",
    "use_flashfft",
    "inference_mode",
    "prefill_style",
    "log_intermediate_values",
    "make_vocab_size_divisible_by",
    "pipe_parallel_size",
    "num_filters",
    "split_k0",
    "column_split",
    "max_batch_size",
    "compile",
    "low_mem_mode",
    "inner_size_multiple_of",
    "params_dtype",
    "hyena_block_dtype",
    "attn_block_dtype",
    "mlp_dtype",
    "depthwise_dtype",
    "seqlen",
    "padding_idx",
];

/// The released Evo 2 models, by the `evo2` package's names.
pub const PRESETS: &[&str] = &[
    "evo2_1b_base",
    "evo2_7b_base",
    "evo2_7b",
    "evo2_7b_262k",
    "evo2_7b_microviridae",
    "evo2_20b",
    "evo2_40b_base",
    "evo2_40b",
];

/// The architecture of a released model (see [`PRESETS`]), or an error listing them.
pub fn preset(name: &str) -> Result<Evo2Config> {
    Ok(match name {
        "evo2_1b_base" => preset_evo2_1b_base(),
        "evo2_7b_base" | "evo2_7b_microviridae" => evo2_7b(11008, 32768, None),
        "evo2_7b_262k" => evo2_7b(11008, 262144, Some(32.0)),
        "evo2_7b" => evo2_7b(11264, 1048576, Some(128.0)),
        "evo2_40b_base" => evo2_big(50, 21888, 8192, None),
        "evo2_40b" => evo2_big(50, 22528, 1048576, Some(128.0)),
        "evo2_20b" => evo2_big(24, 22528, 1048576, Some(128.0)),
        other => {
            return Err(Error::config(
                "model",
                other,
                format!(
                    "not a released Evo 2 model; presets: {}",
                    PRESETS.join(", ")
                ),
            ))
        }
    })
}

/// Block lists of the released layouts: attention at `attn`, the other blocks cycling
/// SE, MR, LI in order.
fn layout(num_layers: usize, attn: &[usize]) -> [Vec<usize>; 4] {
    let mut lists: [Vec<usize>; 4] = Default::default();
    lists[0] = attn.to_vec();
    for (j, i) in (0..num_layers).filter(|i| !attn.contains(i)).enumerate() {
        // 1 = hcs (SE), 2 = hcm (MR), 3 = hcl (LI)
        lists[1 + j % 3].push(i);
    }
    lists
}

#[allow(clippy::too_many_arguments)]
fn released(
    name: &str,
    hidden: usize,
    layers: usize,
    heads: usize,
    attn: &[usize],
    groups: usize,
    inner: usize,
    max_seqlen: usize,
    base: f64,
    interp: Option<f64>,
) -> Evo2Config {
    let [attn, hcs, hcm, hcl] = layout(layers, attn);
    Evo2Config {
        generation: 2,
        model_name: name.into(),
        vocab_size: 512,
        hidden_size: hidden,
        num_layers: layers,
        num_attention_heads: heads,
        attn_layer_idxs: attn,
        hcl_layer_idxs: hcl,
        hcm_layer_idxs: hcm,
        hcs_layer_idxs: hcs,
        hcm_filter_length: 128,
        hcs_filter_length: 7,
        hcm_filter_groups: groups,
        hcs_filter_groups: groups,
        short_filter_length: 3,
        short_filter_bias: false,
        state_size: 16,
        inner_mlp_size: inner,
        eps: 1e-6,
        rotary_emb_base: base,
        rotary_emb_scaling_factor: interp.unwrap_or(1.0),
        use_interpolated_rotary_pos_emb: interp.is_some(),
        proj_groups: 1,
        tie_embeddings: true,
        mha_out_proj_bias: true,
        hyena_out_proj_bias: true,
        qkv_proj_bias: false,
        interleave: true,
        column_split: true,
        column_split_hyena: false,
        hyena_flip_x1x2: false,
        evo2_style_activations: true,
        mlp_activation: "gelu".into(),
        final_norm: true,
        use_flash_rmsnorm: false,
        max_seqlen,
        use_fp8_input_projections: true,
    }
}

fn preset_evo2_1b_base() -> Evo2Config {
    released(
        "shc-evo2-1b-8k-2T-v2",
        1920,
        25,
        15,
        &[3, 10, 17, 24],
        128,
        5120,
        8192,
        1e4,
        None,
    )
}

fn evo2_7b(inner: usize, max_seqlen: usize, interp: Option<f64>) -> Evo2Config {
    released(
        "shc-evo2-7b-8k-2T-v2",
        4096,
        32,
        32,
        &[3, 10, 17, 24, 31],
        256,
        inner,
        max_seqlen,
        1e4,
        interp,
    )
}

fn evo2_big(layers: usize, inner: usize, max_seqlen: usize, interp: Option<f64>) -> Evo2Config {
    let attn: &[usize] = if layers == 24 {
        &[3, 10, 17]
    } else {
        &[3, 10, 17, 24, 31, 35, 42, 49]
    };
    let name = if layers == 24 {
        "shc-evo2-20b"
    } else {
        "shc-evo2-40b-8k-11T-v2"
    };
    released(
        name, 8192, layers, 64, attn, 512, inner, max_seqlen, 1e6, interp,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_partition_their_blocks() {
        for name in PRESETS {
            let c = preset(name).unwrap();
            c.validate().unwrap();
            let n = c.attn_layer_idxs.len()
                + c.hcl_layer_idxs.len()
                + c.hcm_layer_idxs.len()
                + c.hcs_layer_idxs.len();
            assert_eq!(n, c.num_layers, "{name}");
        }
        // The released 1B layout (evo2-1b-8k.yml).
        let c = preset("evo2_1b_base").unwrap();
        assert_eq!(c.hcs_layer_idxs, [0, 4, 7, 11, 14, 18, 21]);
        assert_eq!(c.hcm_layer_idxs, [1, 5, 8, 12, 15, 19, 22]);
        assert_eq!(c.hcl_layer_idxs, [2, 6, 9, 13, 16, 20, 23]);
        // The 40B layout past block 31 (evo2-40b-8k.yml).
        let c = preset("evo2_40b").unwrap();
        assert_eq!(&c.hcs_layer_idxs[9..], [32, 36, 39, 43, 46]);
        assert_eq!(&c.hcl_layer_idxs[9..], [34, 38, 41, 45, 48]);
        assert!(preset("evo2_1b_base").unwrap().needs_fp8());
        assert!(!preset("evo2_7b").unwrap().needs_fp8());
        assert!(preset("evo2_20b").unwrap().needs_fp8());
    }

    #[test]
    fn unknown_preset_lists_the_names() {
        let e = preset("evo2_7").unwrap_err().to_string();
        assert!(e.contains("evo2_7b_262k") && e.contains("evo2_7"), "{e}");
    }

    #[test]
    fn stripedhyena_1_config_defaults() {
        let p = Path::new("config.json");
        let v = serde_json::json!({
            "model_type": "stripedhyena",
            "vocab_size": 512, "hidden_size": 96, "num_layers": 4, "num_attention_heads": 4,
            "attn_layer_idxs": [1, 3], "hyena_layer_idxs": [0, 2, 4],
            "hyena_filter_groups": 1, "short_filter_length": 3, "state_size": 2, "eps": 1e-5,
            "column_split": true,
        });
        let c = Evo2Config::from_hf_stripedhyena(&v, p).unwrap();
        // The package's defaults: SiLU, inner int(2·96·4/3) = 256 rounded up to 256, qkv and
        // out biases on, untied (`config.tie_embeddings` is None), base 10000; the index past
        // the last block dropped; `column_split` not read.
        assert_eq!(c.generation, 1);
        assert_eq!(c.mlp_activation, "silu");
        assert_eq!(c.inner_mlp_size, 256);
        assert!(c.qkv_proj_bias && c.mha_out_proj_bias && !c.tie_embeddings);
        assert_eq!(c.rotary_emb_base, 10000.0);
        assert_eq!(c.hcl_layer_idxs, [0, 2]);
        assert!(!c.column_split && c.column_split_hyena);
        assert_eq!(c.qkv_rows(), 3 * 96);
        // Absent filter groups default to the width in the package: refused.
        let mut w = v.clone();
        w.as_object_mut().unwrap().remove("hyena_filter_groups");
        let e = Evo2Config::from_hf_stripedhyena(&w, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hyena_filter_groups"), "{e}");
        // Required keys are named when missing; GQA groups must divide the heads.
        let mut w = v.clone();
        w.as_object_mut().unwrap().remove("eps");
        let e = Evo2Config::from_hf_stripedhyena(&w, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`eps`"), "{e}");
        let mut w = v.clone();
        w["proj_groups"] = serde_json::json!(3);
        let e = Evo2Config::from_hf_stripedhyena(&w, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("proj_groups 3"), "{e}");
        // The converted form round-trips through the serde config.
        let back: Evo2Config = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn vortex_keys_defaults_and_errors() {
        let p = Path::new("config.yml");
        let mut v = serde_json::to_value(preset("evo2_7b").unwrap()).unwrap();
        let m = v.as_object_mut().unwrap();
        m.insert("use_flashfft".into(), serde_json::json!(false));
        m.remove("qkv_proj_bias");
        let c = Evo2Config::from_vortex(&v, p).unwrap();
        // vortex's default for a missing qkv_proj_bias is True.
        assert!(c.qkv_proj_bias);
        v.as_object_mut()
            .unwrap()
            .insert("mystery_knob".into(), serde_json::json!(1));
        let e = Evo2Config::from_vortex(&v, p).unwrap_err().to_string();
        assert!(e.contains("mystery_knob"), "{e}");
        let mut v = serde_json::to_value(preset("evo2_7b").unwrap()).unwrap();
        v["hcm_filter_groups"] = serde_json::json!(300);
        let e = Evo2Config::from_vortex(&v, p).unwrap_err().to_string();
        assert!(e.contains("hcm_filter_groups 300"), "{e}");
        let mut v = serde_json::to_value(preset("evo2_7b").unwrap()).unwrap();
        v["attn_layer_idxs"] = serde_json::json!([3, 10, 17, 24, 31, 4]);
        let e = Evo2Config::from_vortex(&v, p).unwrap_err().to_string();
        assert!(e.contains("block 4"), "{e}");
    }
}
