//! Models built from layers, one folder or file per family, and the interface every loadable
//! family offers the commands.
//!
//! - [`hyenadna`]: the HyenaDNA language model (training, lean inference, recurrent
//!   generation, the released checkpoint layouts).
//! - [`classifier`]: a sequence classifier on a HyenaDNA backbone.
//! - [`zoo`]: language models over the operator zoo (MAD's architectures).
//! - [`generate`]: sampling, one loop over any [`generate::Decoder`].
//! - [`parallel`]: data parallelism over the sequences of a batch.
//! - [`score`]: scoring a growing sequence with a saved position (variant-effect scoring).
//! - [`striped`]: StripedHyena 1 and 2 / Evo 1 and 2 (released checkpoints, scoring,
//!   embeddings, recurrent generation).
//!
//! A model is its structure (configuration and tensor handles) plus one flat parameter buffer
//! ([`crate::params::ParamStore`]); [`Model`] holds the two together. A family that the
//! run-directory module ([`crate::checkpoint`]) can load implements [`Family`] (how to
//! recognise and build it from a `config.json` and its weights) and [`LanguageModel`] (what
//! the commands do with it). Adding a family is its folder here plus one line in
//! [`crate::checkpoint::FAMILIES`].

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::safetensors::{Tensor, TensorFile};
use crate::layers::layer::Slot;
use crate::layers::lean::InferWorkspace;
use crate::ops::loss::LossSum;
use crate::params::ParamStore;

pub mod classifier;
pub mod generate;
pub mod hyenadna;
pub mod parallel;
pub mod score;
pub mod striped;
pub mod zoo;

/// How the hidden states of a sequence become one vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// Mean over every position, padding included (the reference's `pool` decoder).
    #[default]
    Mean,
    /// The last position (what a causal model has seen the whole sequence at).
    Last,
    /// Every position (embeddings only; a classifier needs one vector).
    None,
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pool::Mean => "mean",
            Pool::Last => "last",
            Pool::None => "none",
        })
    }
}

/// How a family's models turn sequence text into token ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// HyenaDNA's character tokenizer (A C G T N and specials; case-sensitive).
    #[default]
    Nucleotide,
    /// One token per byte (`CharLevelTokenizer(512)` of StripedHyena / Evo 2: id = UTF-8 byte).
    Bytes,
}

/// The arithmetic of a forward's matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Activations and products in f32 (bf16 weights widened exactly): the reference path.
    #[default]
    F32,
    /// Products with bf16 inputs and f32 accumulation ([`crate::ops::bf16`]); everything else
    /// f32.
    Bf16,
}

impl Precision {
    /// `bf16` where the CPU multiplies bf16 natively (AVX512-BF16), else `f32`.
    pub fn auto() -> Self {
        if crate::ops::bf16::native() {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// A model's structure with its parameters.
#[derive(Clone, Debug)]
pub struct Model<N> {
    pub net: N,
    pub params: ParamStore,
}

impl<N> Model<N> {
    /// The parameter values (f32).
    pub fn p(&self) -> &[f32] {
        self.params.data()
    }
}

/// What the commands do with a loaded model: score windows, embed and score long sequences,
/// generate. Workspaces are passed in so that repeated calls reuse their buffers.
pub trait LanguageModel: Send + Sync {
    /// The family's registry name (e.g. `hyenadna`).
    fn family(&self) -> &'static str;
    /// The model's section of `config.json`.
    fn config_json(&self) -> serde_json::Value;
    /// Real vocabulary size (token ids below it).
    fn vocab_size(&self) -> usize;
    /// Longest sequence the model takes.
    fn max_len(&self) -> usize;
    /// Width of the hidden states.
    fn d_model(&self) -> usize;
    /// Blocks (the layers `hidden_states` can stop after).
    fn n_layer(&self) -> usize;
    /// Summed next-token statistics of windows `x, y [B, L]` (`ws` keeps the buffers).
    fn loss(&self, x: &[u32], y: &[u32], b: usize, l: usize, ws: &mut Slot) -> Result<LossSum>;
    /// Hidden states `[L, D]` of one sequence after `layer` blocks (`n_layer`: the final,
    /// normalised ones), by a memory-lean forward.
    fn hidden_states<'w>(
        &self,
        tokens: &[u32],
        layer: usize,
        ws: &'w mut InferWorkspace,
    ) -> Result<&'w [f32]>;
    /// [`LanguageModel::hidden_states`] as a buffer of the caller's: families whose lean
    /// forward leaves the rows in a buffer of their own move it out of `ws` (no copy); the
    /// others copy.
    fn hidden_states_owned(
        &self,
        tokens: &[u32],
        layer: usize,
        ws: &mut InferWorkspace,
    ) -> Result<Vec<f32>> {
        self.hidden_states(tokens, layer, ws).map(<[f32]>::to_vec)
    }
    /// Natural-log likelihood of each token given its prefix (`L − 1` values into `out`);
    /// returns their sum.
    fn log_likelihood(
        &self,
        tokens: &[u32],
        ws: &mut InferWorkspace,
        out: &mut Vec<f32>,
    ) -> Result<f64>;
    /// Logits of every position of `tokens` into `out` (`[L, V]` rows); returns `V`, the
    /// width of the model's output head (HyenaDNA: the padded vocabulary, as the reference's
    /// `lm_head`; Evo 2: 512).
    fn logits(
        &self,
        _tokens: &[u32],
        _ws: &mut InferWorkspace,
        _out: &mut Vec<f32>,
    ) -> Result<usize> {
        Err(Error::config(
            "logits",
            self.family(),
            "this model has no language-model head (a classifier): use embed or its predictions",
        ))
    }
    /// A decoder for sampling ([`generate::generate`]).
    fn decoder(&self, mode: generate::DecodeMode) -> Result<Box<dyn generate::Decoder + '_>>;
    /// The tensors of a checkpoint of this model: parameters and buffers, by name.
    fn checkpoint_tensors(&self) -> BTreeMap<String, Tensor>;
    /// The concrete type, for commands that need one family (e.g. distillation).
    fn as_any(&self) -> &dyn Any;
    /// Set the precision of the attention key/value caches (`None`: the model's precision);
    /// only StripedHyena models have one.
    fn set_kv_cache(&mut self, kv: Option<striped::KvPrecision>) -> Result<()> {
        match kv {
            None => Ok(()),
            Some(k) => Err(Error::config(
                "--kv",
                k,
                format!(
                    "{} models have no attention key/value cache; the option is for Evo 2 / \
                     StripedHyena",
                    self.family()
                ),
            )),
        }
    }
    /// Bytes the family's lean forward (embed, score) holds for a sequence of `tokens` in
    /// chunks of `chunk`, beyond the weights, when it has its own estimate (`None`: the
    /// HyenaDNA lean forward's, [`crate::apps::dna`]).
    fn forward_bytes(&self, _tokens: usize, _chunk: usize) -> Option<u64> {
        None
    }
    /// A scorer of sequences extended piece by piece that carries the forward's state
    /// (families with a streaming forward); `None` for the others, which
    /// [`score::prefix_scorer`] serves by re-running the whole forward.
    fn stream_scorer(&self, _chunk: usize) -> Option<Box<dyn score::PrefixScorer + '_>> {
        None
    }
    /// Set the arithmetic of the forward's matrix products; families without a bf16 path
    /// refuse [`Precision::Bf16`].
    fn set_precision(&mut self, p: Precision) -> Result<()> {
        match p {
            Precision::F32 => Ok(()),
            Precision::Bf16 => Err(Error::config(
                "--precision",
                "bf16",
                format!(
                    "{} models compute in f32 only; the bf16 path is for Evo 2 / StripedHyena",
                    self.family()
                ),
            )),
        }
    }
    /// Positions per chunk of the family's lean forward when the user sets none (`None`: the
    /// lean forward's default).
    fn default_chunk(&self) -> Option<usize> {
        None
    }
    /// How sequences become token ids.
    fn tokenizer(&self) -> TokenizerKind {
        TokenizerKind::Nucleotide
    }
    /// Width of the named intermediate output `name` (a reference module name such as
    /// `blocks.28.mlp.l3`), if the family records it.
    fn named_width(&self, _name: &str) -> Option<usize> {
        None
    }
    /// The named intermediate output `name` of `tokens`, `[L, width]` rows.
    fn named_output(
        &self,
        _tokens: &[u32],
        name: &str,
        _ws: &mut InferWorkspace,
    ) -> Result<Vec<f32>> {
        Err(Error::config(
            "layer",
            name,
            format!(
                "{} models have no named outputs: give a block count (0 = embeddings, n_layer = \
                 the final states)",
                self.family()
            ),
        ))
    }
}

/// A model a family loaded from its directory by its own means, and notes for the user
/// ([`Family::load_dir`]).
pub type DirModel = (Box<dyn LanguageModel>, Vec<String>);

/// A model family the run-directory module can load: how to recognise its `config.json` and
/// build the model from it and its weights.
pub trait Family: Sync {
    /// The registry name.
    fn name(&self) -> &'static str;
    /// Whether `config` (a parsed `config.json`) describes a model of this family.
    fn detect(&self, config: &serde_json::Value) -> bool;
    /// The model of `config` with the tensors of `weights` (read from `dir`).
    fn load(
        &self,
        config: &serde_json::Value,
        weights: &TensorFile,
        dir: &Path,
    ) -> Result<Box<dyn LanguageModel>>;
    /// Load `dir` by the family's own means, if it is one of the family's directories that
    /// must not be read eagerly as f32 (released multi-gigabyte checkpoints, memory-mapped
    /// weights): the model and notes for the user. `None`: the directory goes through
    /// [`Family::detect`] and [`Family::load`].
    fn load_dir(&self, _dir: &Path) -> Option<Result<DirModel>> {
        None
    }
}

/// Section `key` of a parsed `config.json` (read from `file`), if present and not null.
pub fn config_section<T: serde::de::DeserializeOwned>(
    config: &serde_json::Value,
    key: &str,
    file: &Path,
) -> Result<Option<T>> {
    config
        .get(key)
        .filter(|x| !x.is_null())
        .map(T::deserialize)
        .transpose()
        .map_err(|e| Error::format(file, format!("{key} config: {e}")))
}

/// Section `key` of a model directory's parsed `config.json` (read from `file`), every field
/// required: a model's config is what hyena wrote beside its weights, so a key missing from it
/// is an error naming the key and the file, not a silent default that would build another
/// model. `optional` lists the dotted paths (under the section) that may be absent and then
/// take their defaults: keys added after model directories were first written, documented
/// where the family calls this. Fields are those of `T::default()` serialised, nested objects
/// checked key by key.
pub fn model_section<T>(
    config: &serde_json::Value,
    key: &str,
    file: &Path,
    optional: &[&str],
) -> Result<Option<T>>
where
    T: serde::de::DeserializeOwned + Serialize + Default,
{
    let Some(section) = config.get(key).filter(|x| !x.is_null()) else {
        return Ok(None);
    };
    let full = serde_json::to_value(T::default())
        .map_err(|e| Error::format(file, format!("{key} config: {e}")))?;
    let mut missing = Vec::new();
    missing_keys(&full, section, key, optional, &mut missing);
    if !missing.is_empty() {
        return Err(Error::format(
            file,
            format!(
                "missing config key(s) {}: a model's config must state every field (nothing \
                 is filled in by default); add the key with the value the weights were \
                 trained with, or use the config.json that came with the weights",
                missing
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    config_section(config, key, file)
}

/// The dotted paths of `full`'s object keys that `given` lacks (recursing where both hold an
/// object), except those in `optional`.
fn missing_keys(
    full: &serde_json::Value,
    given: &serde_json::Value,
    path: &str,
    optional: &[&str],
    out: &mut Vec<String>,
) {
    let (Some(f), Some(g)) = (full.as_object(), given.as_object()) else {
        return;
    };
    for (k, fv) in f {
        let p = format!("{path}.{k}");
        let rel = p.split_once('.').map_or("", |x| x.1);
        match g.get(k) {
            None if optional.contains(&rel) => {}
            None => out.push(p),
            Some(gv) => missing_keys(fv, gv, &p, optional, out),
        }
    }
}

/// The tensors of `params` plus `buffers` (name, shape, values) as a checkpoint map.
pub fn tensor_map<'a>(
    params: &ParamStore,
    buffers: impl IntoIterator<Item = (String, Vec<usize>, &'a [f32])>,
) -> BTreeMap<String, Tensor> {
    let mut out: BTreeMap<String, Tensor> = params
        .tensors()
        .into_iter()
        .map(|(n, s, v)| {
            (
                n.to_string(),
                Tensor {
                    shape: s.to_vec(),
                    data: v,
                },
            )
        })
        .collect();
    for (n, s, v) in buffers {
        out.insert(
            n,
            Tensor {
                shape: s,
                data: v.to_vec(),
            },
        );
    }
    out
}
