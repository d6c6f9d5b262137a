//! The architecture of a StripedHyena 2 model (Evo 2): the keys of a vortex YAML config that
//! change the computation, their defaults as vortex reads them (`config.get(key, default)`),
//! the checks that make a config buildable, and the released models as named presets.
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

/// The keys vortex reads with a default (`config.get(key, default)`), and those defaults.
fn vortex_defaults() -> serde_json::Value {
    serde_json::json!({
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
                seen[i] += 1;
            }
        }
        if let Some(i) = seen.iter().position(|&n| n != 1) {
            return Err(format!(
                "block {i} is listed {} times in attn/hcl/hcm/hcs_layer_idxs; each block must be \
                 exactly one operator",
                seen[i]
            ));
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
