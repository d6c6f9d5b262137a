//! Loading released HyenaDNA checkpoints (the `LongSafari/hyenadna-*` models) into a
//! [`HyenaLm`]: the second registry entry of the HyenaDNA family.
//!
//! Three directory layouts are understood, besides hyena's own run directories:
//! - **HF** (`LongSafari/hyenadna-*-hf`): `config.json` with flat keys (`d_model`, `n_layer`,
//!   `d_inner`, `max_seq_len`, `emb_dim`, `filter_order`, …) and `model.safetensors` or
//!   `pytorch_model.bin`; keys `hyena.backbone.…` plus `lm_head.weight` (CausalLM), or
//!   `backbone.…` (the bare model), or `hyena.backbone.…` plus `score.weight` (classifier).
//! - **Lightning** (`LongSafari/hyenadna-*`, non-HF): `config.json` with the model keys at the
//!   top and the operator under `layer` (`{"_name_": "hyena", "l_max": …, "emb_dim": …}`), and
//!   `weights.ckpt`, whose `state_dict` keys start with `model.backbone.`.
//! - Either may use the `.mixer.layer.` / `.mlp.layer.` key variant that activation
//!   checkpointing introduces (`checkpoint_mixer`/`checkpoint_mlp`); it is folded away.
//!
//! The operator settings that no config stores are those of the released code: filter shift 0.05
//! and the `(o d)` channel layout (HyenaDNA's `standalone_hyenadna.py` and the HF port's
//! `modeling_hyena.py`; the training repository's copy has shift 0), with modulation on. The
//! filters' buffers (`pos_emb.z`, `pos_emb.t`, `modulation.deltas`) are read from the file when
//! present and recomputed from the config otherwise. A checkpoint without `lm_head.weight` gets the
//! embedding as its head (the training repo ties them). Pickle files are read by
//! [`crate::io::torch`], which extracts tensors only; the run-directory module reads the weights
//! file once ([`crate::checkpoint`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::config::LmConfig;
use super::model::HyenaLm;
use crate::config::{FilterConfig, FilterLayout, HyenaConfig};
use crate::error::{Error, Result};
use crate::io::safetensors::{Tensor, TensorFile};
use crate::models::{Family, LanguageModel, Model};
use crate::params::{list_names, IgnoredKey, Tracked};

/// Which layout a model directory has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointKind {
    /// Written by hyena (`config.json` has a `model` section).
    Hyena,
    /// HuggingFace port: flat config keys.
    Hf,
    /// PyTorch Lightning `weights.ckpt` with the training repo's config.
    Lightning,
}

/// What was loaded from a reference checkpoint, for the user to see.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub kind: CheckpointKind,
    /// The weights file read.
    pub weights: PathBuf,
    /// Tensors in the file that the model does not use, each matching [`IGNORED_KEYS`] (e.g. a
    /// classifier's `score.weight`).
    pub unused: Vec<String>,
    /// Whether the LM head was tied to the embedding because the file had none.
    pub tied_head: bool,
}

/// Decide the layout of `dir` from its `config.json` (already parsed).
pub fn kind_of(cfg: &Value) -> Option<CheckpointKind> {
    if cfg.get("model").is_some_and(|m| m.is_object()) {
        Some(CheckpointKind::Hyena)
    } else if cfg.get("layer").is_some_and(|m| m.is_object()) {
        Some(CheckpointKind::Lightning)
    } else if cfg.get("d_model").is_some() {
        Some(CheckpointKind::Hf)
    } else {
        None
    }
}

/// A required unsigned integer key of a reference config.
fn req_usize(obj: &Value, key: &str, file: &Path) -> Result<usize> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(Error::format(
            file,
            format!(
                "missing config key `{key}`; a HyenaDNA config needs d_model, n_layer, d_inner, \
                 vocab_size, max_seq_len (or layer.l_max), emb_dim and filter_order: use the \
                 config.json released with the weights"
            ),
        )),
        Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
            Error::format(
                file,
                format!("config key `{key}` = {v} is not a non-negative integer"),
            )
        }),
    }
}

fn opt_usize(obj: &Value, key: &str, default: usize, file: &Path) -> Result<usize> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(_) => req_usize(obj, key, file),
    }
}

fn opt_f32(obj: &Value, key: &str, default: f32, file: &Path) -> Result<f32> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_f64().map(|x| x as f32).ok_or_else(|| {
            Error::format(file, format!("config key `{key}` = {v} is not a number"))
        }),
    }
}

/// The model config of a reference `config.json` (`file` names it in errors).
///
/// The keys that set the model's size are required (`d_model`, `n_layer`, `d_inner`,
/// `vocab_size`, `max_seq_len` or `layer.l_max`, `emb_dim`, `filter_order`): a missing one is an
/// error naming it and the file. The others may be absent because the released code fixes them
/// and the Lightning configs leave them out (they are the constructor defaults of
/// `standalone_hyenadna.py`, the values every released checkpoint uses): padding of the
/// vocabulary to a multiple of 8, order 2, short filter 3, 2 inner filter layers, Sin
/// frequency 10, LayerNorm eps 1e-5, modulation on. A wrong one of these that changes a shape
/// is caught by the weights' shapes.
pub fn lm_config_from_reference(cfg: &Value, file: &Path) -> Result<LmConfig> {
    let kind = kind_of(cfg).ok_or_else(|| {
        Error::format(
            file,
            "not a HyenaDNA config: no `d_model` (HF layout), `layer` (Lightning layout) or \
             `model` (hyena run) key",
        )
    })?;
    // Operator keys live at the top (HF) or under `layer` (Lightning), with different names.
    let (op, l_max_key, order_key, w_key) = match kind {
        CheckpointKind::Lightning => (&cfg["layer"], "l_max", "order", "w"),
        _ => (cfg, "max_seq_len", "hyena_order", "activation_freq"),
    };
    if let Some(name) = op.get("_name_").and_then(|v| v.as_str()) {
        if name != "hyena" {
            return Err(Error::format(
                file,
                format!("layer `_name_` = {name:?}: only Hyena layers are supported"),
            ));
        }
    }
    let d_model = req_usize(cfg, "d_model", file)?;
    let lm = LmConfig {
        vocab_size: req_usize(cfg, "vocab_size", file)?,
        pad_vocab_size_multiple: opt_usize(cfg, "pad_vocab_size_multiple", 8, file)?,
        n_layer: req_usize(cfg, "n_layer", file)?,
        d_inner: req_usize(cfg, "d_inner", file)?,
        layer_norm_epsilon: opt_f32(cfg, "layer_norm_epsilon", 1e-5, file)?,
        tie_embeddings: false,
        operator: HyenaConfig {
            d_model,
            l_max: req_usize(op, l_max_key, file)?,
            order: opt_usize(op, order_key, 2, file)?,
            short_filter_order: opt_usize(op, "short_filter_order", 3, file)?,
            filter: FilterConfig {
                emb_dim: req_usize(op, "emb_dim", file)?,
                filter_order: req_usize(op, "filter_order", file)?,
                num_inner_mlps: opt_usize(op, "num_inner_mlps", 2, file)?,
                w: opt_f32(op, w_key, 10.0, file)?,
                modulate: op.get("modulate").and_then(|v| v.as_bool()).unwrap_or(true),
                shift: 0.05,
                layout: FilterLayout::Blocked,
                learn_pos_emb: false,
                ..FilterConfig::default()
            },
        },
    };
    lm.validate()
        .map_err(|e| Error::format(file, format!("config describes an invalid model: {e}")))?;
    Ok(lm)
}

/// hyena's name for a reference key, or `None` for keys the LM does not use.
///
/// Strips the prefixes `hyena.` / `model.` (HF CausalLM, Lightning), maps `backbone.…` to
/// `hyena.backbone.…`, and folds the `.mixer.layer.` / `.mlp.layer.` checkpointing variant.
pub fn canonical_key(key: &str) -> Option<String> {
    let k = key
        .strip_prefix("hyena.")
        .or_else(|| key.strip_prefix("model."))
        .unwrap_or(key);
    if k == "lm_head.weight" {
        return Some(k.to_string());
    }
    let rest = k.strip_prefix("backbone.")?;
    let rest = rest
        .replace(".mixer.layer.", ".mixer.")
        .replace(".mlp.layer.", ".mlp.");
    Some(format!("hyena.backbone.{rest}"))
}

/// Keys of a released weights file that the language model does not read, with why; any other
/// key it does not read is an error (a config with fewer layers than the weights, a file of
/// another model). Buffers the model recomputes when absent (`pos_emb.z`, `pos_emb.t`,
/// `modulation.deltas`) are read when present, and the copies of the shared Sin frequency
/// (`implicit_filter.{3,5,…}.freq`) are checked equal to the first, so neither is listed here.
pub const IGNORED_KEYS: &[IgnoredKey] = &[
    IgnoredKey {
        pattern: "score.*",
        reason:
            "the head of the HF sequence-classification port (HyenaDNAForSequenceClassification); \
                 the language model is its backbone",
    },
    IgnoredKey {
        pattern: "hyena.score.*",
        reason: "the same classification head under the CausalLM prefix",
    },
    IgnoredKey {
        pattern: "decoder.*",
        reason: "a task decoder of the training repository's Lightning module (SequenceDecoder), \
                 outside the language model",
    },
    IgnoredKey {
        pattern: "model.decoder.*",
        reason: "the same task decoder saved under the Lightning `model.` prefix",
    },
    IgnoredKey {
        pattern: "encoder.*",
        reason: "a task encoder of the training repository's Lightning module, outside the \
                 language model",
    },
    IgnoredKey {
        pattern: "model.encoder.*",
        reason: "the same task encoder saved under the Lightning `model.` prefix",
    },
];

/// The registry entry of the released HyenaDNA layouts (HF and Lightning).
pub struct HyenaDnaReleased;

impl Family for HyenaDnaReleased {
    fn name(&self) -> &'static str {
        "hyenadna-released"
    }
    fn detect(&self, config: &Value) -> bool {
        matches!(
            kind_of(config),
            Some(CheckpointKind::Hf | CheckpointKind::Lightning)
        )
    }
    fn load(
        &self,
        config: &Value,
        weights: &TensorFile,
        dir: &Path,
    ) -> Result<Box<dyn LanguageModel>> {
        Ok(Box::new(load_reference(config, weights, dir)?.0))
    }
}

/// Load a released HyenaDNA checkpoint (HF or Lightning layout; see the module docs) from its
/// parsed `config.json` and its weights (read from `dir`).
pub fn load_reference(
    cfg: &Value,
    raw: &TensorFile,
    dir: &Path,
) -> Result<(Model<HyenaLm>, LoadReport)> {
    let cfg_path = dir.join("config.json");
    let kind = kind_of(cfg).unwrap_or(CheckpointKind::Hf);
    let mut lm_cfg = lm_config_from_reference(cfg, &cfg_path)?;
    let weights = raw.path.clone();
    // Rename to hyena's keys; the shared Sin frequency may be stored once or three times.
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut original: BTreeMap<String, String> = BTreeMap::new();
    let mut unused = Vec::new();
    let mut unknown = Vec::new();
    for (k, t) in &raw.tensors {
        match canonical_key(k) {
            Some(c) => {
                let c = freq_alias(&c);
                if let Some(prev) = tensors.get(&c) {
                    if prev != t {
                        return Err(Error::format(
                            &weights,
                            format!(
                                "`{k}` differs from another copy of `{c}`; the Sin frequency \
                                 is shared by the whole filter MLP"
                            ),
                        ));
                    }
                    continue;
                }
                original.insert(c.clone(), k.clone());
                tensors.insert(c, t.clone());
            }
            None if IGNORED_KEYS.iter().any(|i| i.matches(k)) => unused.push(k.clone()),
            None => unknown.push(k.clone()),
        }
    }
    if !unknown.is_empty() {
        return Err(Error::format(
            &weights,
            format!(
                "{} tensor(s) are not part of a HyenaDNA language model: {}; is this a \
                 HyenaDNA checkpoint (keys `hyena.backbone.…`, `backbone.…` or \
                 `model.backbone.…`)?",
                unknown.len(),
                list_names(&unknown)
            ),
        ));
    }
    let tied_head = !tensors.contains_key("lm_head.weight");
    lm_cfg.tie_embeddings = tied_head;
    let file = TensorFile {
        path: weights.clone(),
        tensors,
        metadata: BTreeMap::new(),
    };
    // Buffers may be missing (then computed from the config) or stored without their
    // leading singleton axes. Every other tensor of the file must be read.
    let src = Tracked::new(&file);
    let (net, params) = HyenaLm::load(&lm_cfg, &src, false)?;
    if let Err(e) = src.check_all_read(&[], Some(("n_layer", lm_cfg.n_layer))) {
        // Name the keys as the file spells them.
        let mut msg = e.to_string();
        for (c, k) in &original {
            if c != k {
                msg = msg.replace(&format!("`{c}`"), &format!("`{k}`"));
            }
        }
        let msg = msg
            .strip_prefix(&format!("{}: ", weights.display()))
            .unwrap_or(&msg)
            .to_string();
        return Err(Error::format(&weights, msg));
    }
    Ok((
        Model { net, params },
        LoadReport {
            kind,
            weights,
            unused,
            tied_head,
        },
    ))
}

/// `implicit_filter.{3,5,…}.freq` are the same shared Sin as `implicit_filter.1.freq`.
fn freq_alias(key: &str) -> String {
    if let Some((head, tail)) = key.rsplit_once(".implicit_filter.") {
        if let Some(idx) = tail.strip_suffix(".freq") {
            if idx.parse::<usize>().is_ok() {
                return format!("{head}.implicit_filter.1.freq");
            }
        }
    }
    key.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_keys_of_every_layout() {
        let c = |k: &str| canonical_key(k);
        assert_eq!(
            c("hyena.backbone.layers.0.mixer.in_proj.weight").as_deref(),
            Some("hyena.backbone.layers.0.mixer.in_proj.weight")
        );
        assert_eq!(
            c("backbone.ln_f.weight").as_deref(),
            Some("hyena.backbone.ln_f.weight")
        );
        assert_eq!(
            c("model.backbone.layers.3.mixer.layer.filter_fn.bias").as_deref(),
            Some("hyena.backbone.layers.3.mixer.filter_fn.bias")
        );
        assert_eq!(
            c("model.backbone.layers.1.mlp.layer.fc1.weight").as_deref(),
            Some("hyena.backbone.layers.1.mlp.fc1.weight")
        );
        assert_eq!(c("lm_head.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(c("model.lm_head.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(c("score.weight"), None);
        assert_eq!(c("model.decoder.0.output_transform.weight"), None);
        assert_eq!(
            freq_alias("hyena.backbone.layers.0.mixer.filter_fn.implicit_filter.5.freq"),
            "hyena.backbone.layers.0.mixer.filter_fn.implicit_filter.1.freq"
        );
    }

    #[test]
    fn configs_of_both_layouts_and_a_missing_key() {
        let p = Path::new("config.json");
        let hf = serde_json::json!({
            "d_model": 256, "n_layer": 8, "d_inner": 1024, "vocab_size": 12,
            "max_seq_len": 1000002, "emb_dim": 5, "filter_order": 64,
            "activation_freq": 10, "hyena_order": 2, "short_filter_order": 3,
            "num_inner_mlps": 2, "pad_vocab_size_multiple": 8, "layer_norm_epsilon": 1e-5
        });
        let c = lm_config_from_reference(&hf, p).unwrap();
        assert_eq!(
            (c.d_model(), c.n_layer, c.d_inner, c.operator.l_max),
            (256, 8, 1024, 1000002)
        );
        assert_eq!(c.operator.filter.shift, 0.05);
        assert_eq!(c.operator.filter.w, 10.0);
        let lit = serde_json::json!({
            "d_model": 128, "n_layer": 2, "d_inner": 512, "vocab_size": 12,
            "layer": {"_name_": "hyena", "emb_dim": 5, "filter_order": 64, "l_max": 1026,
                      "modulate": true, "w": 10, "lr": 6e-4, "wd": 0.0, "lr_pos_emb": 0.0}
        });
        let c = lm_config_from_reference(&lit, p).unwrap();
        assert_eq!((c.d_model(), c.operator.l_max), (128, 1026));
        let mut bad = hf.clone();
        bad.as_object_mut().unwrap().remove("d_inner");
        let e = lm_config_from_reference(&bad, p).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("`d_inner`"), "{e}");
        let mut bad = hf;
        bad["n_layer"] = serde_json::json!("eight");
        let e = lm_config_from_reference(&bad, p).unwrap_err().to_string();
        assert!(e.contains("`n_layer`") && e.contains("eight"), "{e}");
    }
}
