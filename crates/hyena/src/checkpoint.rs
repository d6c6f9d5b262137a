//! The run-directory module: the one place that knows what a model directory holds and which
//! model families exist. Every command loads its model through [`load_model`].
//!
//! A model directory has a `config.json` and one weights file:
//! - a hyena run (`hyena train`, `hyena distill`, `hyena finetune`, or a zoo language model saved
//!   with [`save_model`]): `config.json` with a `model` section (the rest of the run's config
//!   beside it) and `model.safetensors`; a training run adds `optimizer.safetensors` (the AdamW
//!   moments per tensor, `exp_avg.<name>`, `exp_avg_sq.<name>`), `state.json` (the step) and
//!   `metrics.jsonl`;
//! - a released HyenaDNA checkpoint: the HF layout (`config.json` with flat keys, and
//!   `model.safetensors` or `pytorch_model.bin`) or the Lightning layout (`weights.ckpt`).
//!
//! [`RunDir::open`] reads `config.json` once and the weights file once (safetensors, or a
//! PyTorch pickle read by the safe reader of [`crate::io::torch`]); the first family of
//! [`FAMILIES`] that recognises the config builds the model ([`crate::models::Family`]: `detect`
//! on the parsed config, then `load`), and the commands use it through
//! [`crate::models::LanguageModel`]. Every file is written atomically (a temp file beside it,
//! then a rename).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::safetensors::{write_atomic, write_bytes_atomic, Tensor, TensorFile};
use crate::models::classifier::ClassifierFamily;
use crate::models::hyenadna::family::HyenaDnaRuns;
use crate::models::hyenadna::hf::HyenaDnaReleased;
use crate::models::zoo::family::ZooRuns;
use crate::models::{Family, LanguageModel};

/// The model families, in the order they are tried (a fine-tuned classifier's config also has a
/// HyenaDNA `model` section, so it comes first). A new family is one line here.
pub static FAMILIES: &[&dyn Family] = &[
    &ClassifierFamily,
    &HyenaDnaRuns,
    &ZooRuns,
    &HyenaDnaReleased,
];

/// The weights files a model directory may have, in order of preference.
pub const WEIGHTS_FILES: [&str; 3] = ["model.safetensors", "pytorch_model.bin", "weights.ckpt"];

/// A model directory, its `config.json` parsed and its weights read (each once).
pub struct RunDir {
    pub dir: PathBuf,
    pub config: serde_json::Value,
    pub weights: TensorFile,
}

impl RunDir {
    /// Read `dir/config.json` and the directory's weights file.
    pub fn open(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        if !cfg_path.is_file() {
            return Err(Error::format(
                cfg_path,
                "not found: a model directory holds config.json and its weights (a `hyena \
                 train` run, or a HyenaDNA checkpoint in the HF or Lightning layout)",
            ));
        }
        let config = read_json(&cfg_path)?;
        let path = WEIGHTS_FILES
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::format(
                    dir,
                    "no weights file: expected model.safetensors, pytorch_model.bin or \
                     weights.ckpt beside config.json",
                )
            })?;
        let weights = if path.extension().is_some_and(|e| e == "safetensors") {
            TensorFile::read(&path)?
        } else {
            TensorFile {
                tensors: crate::io::torch::read_state_dict(&path)?,
                path,
                metadata: Default::default(),
            }
        };
        Ok(RunDir {
            dir: dir.to_path_buf(),
            config,
            weights,
        })
    }

    /// Section `key` of the config, if present and not null.
    pub fn section<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        crate::models::config_section(&self.config, key, &self.dir.join("config.json"))
    }

    /// The family that recognises this directory's config.
    pub fn family(&self) -> Result<&'static dyn Family> {
        FAMILIES
            .iter()
            .copied()
            .find(|f| f.detect(&self.config))
            .ok_or_else(|| {
                Error::format(
                    self.dir.join("config.json"),
                    "no `model` section (hyena run) and no `d_model` key (HyenaDNA \
                     checkpoint): is this a model directory?",
                )
            })
    }
}

/// A loaded model with the run directory it came from.
pub struct Loaded {
    pub run: RunDir,
    pub family: &'static str,
    pub model: Box<dyn LanguageModel>,
}

impl Loaded {
    /// Section `key` of the run's config (e.g. `data` for its tokenizer and data).
    pub fn section<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.run.section(key)
    }

    /// The model as its concrete type `T`, or an error saying what `what` (a command) needs.
    pub fn downcast<T: 'static>(&self, what: &str) -> Result<&T> {
        self.model.as_any().downcast_ref::<T>().ok_or_else(|| {
            Error::config(
                "model",
                self.run.dir.display(),
                format!(
                    "{what} works on HyenaDNA language models; this directory holds a `{}` model",
                    self.family
                ),
            )
        })
    }
}

/// Load the model in `dir` (any registered family; see the module docs).
pub fn load_model(dir: &Path) -> Result<Loaded> {
    let run = RunDir::open(dir)?;
    let family = run.family()?;
    let model = family.load(&run.config, &run.weights, &run.dir)?;
    Ok(Loaded {
        family: family.name(),
        model,
        run,
    })
}

/// Write a model directory: `model.safetensors` (the model's checkpoint tensors) and, unless
/// one is there already, a `config.json` holding `{"model": …}`.
pub fn save_model(dir: &Path, model: &dyn LanguageModel) -> Result<()> {
    save_weights(dir, &model.checkpoint_tensors(), model.family())?;
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        write_json(
            &cfg_path,
            &serde_json::json!({ "model": model.config_json() }),
        )?;
    }
    Ok(())
}

/// Write `model.safetensors` in `dir` with `tensors` and the metadata `format` (the kind of
/// checkpoint) and `version`.
pub fn save_weights(
    dir: &Path,
    tensors: &std::collections::BTreeMap<String, Tensor>,
    format: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("format".to_string(), format.to_string());
    meta.insert("version".to_string(), "1".to_string());
    write_atomic(dir.join("model.safetensors"), tensors, &meta)
}

/// Write pretty JSON to `path` atomically.
pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::format(path, e.to_string()))?;
    write_bytes_atomic(path, s.as_bytes())
}

/// Parse the JSON file at `path`.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let s = std::fs::read_to_string(path).map_err(Error::io(path))?;
    parse_json(s.as_bytes(), path)
}

/// [`read_json`] on bytes already in memory; `path` names them in errors. Used by the fuzz
/// targets (`fuzz/` in the repository).
pub fn parse_json(bytes: &[u8], path: &Path) -> Result<serde_json::Value> {
    serde_json::from_slice(bytes).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}
