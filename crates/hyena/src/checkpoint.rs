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
//!   `model.safetensors` or `pytorch_model.bin`) or the Lightning layout (`weights.ckpt`);
//! - released Evo 2 files as downloaded (no `config.json`: a vortex YAML config beside
//!   `NAME.pt` or its byte-split parts), loaded lazily by
//!   [`crate::models::striped::family::load_vortex_dir`]; and what `hyena convert` makes of
//!   them (`config.json` with an `evo2` section, `model.safetensors` memory-mapped). Such
//!   families read their directories themselves ([`crate::models::Family::load_dir`]).
//!
//! [`RunDir::open`] reads `config.json` once and the weights file once (safetensors, or a
//! PyTorch pickle read by the safe reader of [`crate::io::torch`]); the first family of
//! [`FAMILIES`] that recognises the config builds the model ([`crate::models::Family`]: `detect`
//! on the parsed config, then `load`), and the commands use it through
//! [`crate::models::LanguageModel`]. Every file is written atomically (a temp file beside it,
//! then a rename).
//!
//! A training run's checkpoints are sets of files committed as a whole ([`commit_checkpoint`];
//! the layout and the protocol are described where it is defined); [`RunDir::open`] reads the
//! committed set and checks it against the fingerprints in its `state.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::safetensors::{write_atomic, write_bytes_atomic, write_synced, Tensor, TensorFile};
use crate::models::classifier::ClassifierFamily;
use crate::models::hyenadna::family::HyenaDnaRuns;
use crate::models::hyenadna::hf::HyenaDnaReleased;
use crate::models::striped::StripedFamily;
use crate::models::zoo::family::ZooRuns;
use crate::models::{Family, LanguageModel};

/// The model families, in the order they are tried (a fine-tuned classifier's config also has a
/// HyenaDNA `model` section, so it comes first). A new family is one line here.
pub static FAMILIES: &[&dyn Family] = &[
    &ClassifierFamily,
    &HyenaDnaRuns,
    &ZooRuns,
    &HyenaDnaReleased,
    &StripedFamily,
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
        // A training run's committed checkpoint, or the directory's own files.
        let base = current_dir(dir);
        let cfg_path = base.join("config.json");
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
            .map(|n| base.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::format(
                    dir,
                    "no weights file: expected model.safetensors, pytorch_model.bin or \
                     weights.ckpt beside config.json",
                )
            })?;
        // A training checkpoint's weights must be the ones its state.json was written with.
        if base.join("state.json").is_file() {
            verify_checkpoint(dir)?;
        }
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
    /// What loading found worth telling the user (entries of a released checkpoint that were
    /// skipped, unused leftovers, warnings about the checkpoint's numerics).
    pub notes: Vec<String>,
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
    // Families that read their directories themselves (lazily, or memory-mapped).
    for f in FAMILIES {
        if let Some(r) = f.load_dir(dir) {
            let (model, notes) = r?;
            return Ok(Loaded {
                family: f.name(),
                run: RunDir {
                    dir: dir.to_path_buf(),
                    config: model.config_json(),
                    weights: TensorFile::default(),
                },
                model,
                notes,
            });
        }
    }
    let run = RunDir::open(dir)?;
    let family = run.family()?;
    let model = family.load(&run.config, &run.weights, &run.dir)?;
    Ok(Loaded {
        family: family.name(),
        model,
        run,
        notes: Vec::new(),
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
    if dir.join(CURRENT).symlink_metadata().is_ok() {
        return Err(Error::format(
            dir,
            "is a training run directory (its weights belong to a checkpoint); save this model \
             into another directory",
        ));
    }
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    write_atomic(
        dir.join("model.safetensors"),
        tensors,
        &weights_metadata(format),
    )
}

/// The metadata of a `model.safetensors` that hyena writes: `format` (the kind of checkpoint)
/// and `version`.
pub fn weights_metadata(format: &str) -> BTreeMap<String, String> {
    [
        ("format".to_string(), format.to_string()),
        ("version".to_string(), "1".to_string()),
    ]
    .into()
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

// === Training checkpoints: a set of files that appears as a whole ===
//
// A training run's directory:
//
//   config.json            -> checkpoint/config.json   (a plain file until the first checkpoint)
//   model.safetensors      -> checkpoint/model.safetensors
//   optimizer.safetensors  -> checkpoint/optimizer.safetensors
//   state.json             -> checkpoint/state.json
//   checkpoint             -> checkpoints/step-000400  (the pointer)
//   checkpoints/step-000400/{config.json, model.safetensors, optimizer.safetensors, state.json}
//   metrics.jsonl, loss.png
//
// A checkpoint is written into a fresh, hidden step folder; every file and the folder are
// flushed to disk; the folder is renamed to its step name; then the pointer `checkpoint` is
// replaced by one rename (atomic on POSIX file systems). A kill at any instant leaves the
// pointer on the previous complete set or on the new complete one, never on a mix; whatever a
// killed write left behind is removed by [`recover_run_dir`] when the next run starts. The
// top-level names are links through the pointer, so every reader that opens
// `dir/model.safetensors` sees the committed set. `state.json` records the length and CRC-32 of
// the other files and an id of the run, so a file swapped in from elsewhere is refused by
// [`verify_checkpoint`] instead of being trained on.

/// The pointer to the current checkpoint: a link to its step folder.
pub const CURRENT: &str = "checkpoint";
/// The folder holding the step folders.
pub const STEP_DIRS: &str = "checkpoints";
/// The files of a training checkpoint, each also reachable from the run directory's top level.
pub const CHECKPOINT_FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "optimizer.safetensors",
    "state.json",
];

/// The length and CRC-32 of a file's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    pub bytes: u64,
    pub crc32: u32,
}

impl Fingerprint {
    pub fn of(data: &[u8]) -> Self {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        Fingerprint {
            bytes: data.len() as u64,
            crc32: crc.sum(),
        }
    }

    /// The fingerprint of the file at `path`, read in blocks.
    pub fn of_file(path: &Path) -> Result<Self> {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(Error::io(path))?;
        let (mut crc, mut buf) = (flate2::Crc::new(), vec![0u8; 1 << 20]);
        loop {
            let n = f.read(&mut buf).map_err(Error::io(path))?;
            if n == 0 {
                break;
            }
            crc.update(&buf[..n]);
        }
        Ok(Fingerprint {
            bytes: crc.amount() as u64,
            crc32: crc.sum(),
        })
    }
}

/// `state.json` of a training checkpoint.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointState {
    /// Optimizer steps done.
    pub step: u64,
    /// Drawn when the run started; kept by every checkpoint of the run.
    #[serde(default)]
    pub run_id: String,
    /// Steps whose update was skipped for a non-finite loss or gradient (`skip_nonfinite`).
    #[serde(default)]
    pub skipped: u64,
    /// The other files of the checkpoint, by name. Empty in checkpoints written before
    /// fingerprints existed (then nothing can be checked).
    #[serde(default)]
    pub files: BTreeMap<String, Fingerprint>,
}

/// The folder that holds a model directory's current files: the committed checkpoint
/// (`dir/checkpoint`) of a training run when there is one, else `dir` itself.
pub fn current_dir(dir: &Path) -> PathBuf {
    let cur = dir.join(CURRENT);
    if cur.is_dir() {
        cur
    } else {
        dir.to_path_buf()
    }
}

/// Whether `dir` holds a committed training checkpoint (or, for a run directory written
/// before checkpoints were folders, its weights at the top level).
pub fn has_checkpoint(dir: &Path) -> bool {
    dir.join(CURRENT).is_dir() || dir.join("model.safetensors").is_file()
}

/// The step folder name of step `step`.
fn step_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// Commit a training checkpoint of step `state.step` into the run directory `dir`: `files`
/// (name, bytes) and a `state.json` with their fingerprints are written into a fresh step
/// folder, flushed, and made current by one rename of the pointer (see the section's notes).
/// Older step folders are removed once the new one is current.
pub fn commit_checkpoint(
    dir: &Path,
    mut state: CheckpointState,
    files: &[(&str, Vec<u8>)],
) -> Result<()> {
    let steps = dir.join(STEP_DIRS);
    std::fs::create_dir_all(&steps).map_err(Error::io(&steps))?;
    let name = step_name(state.step);
    let staging = steps.join(format!(".{name}.tmp{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(Error::io(&staging))?;
    }
    std::fs::create_dir(&staging).map_err(Error::io(&staging))?;
    state.files.clear();
    for (file, data) in files {
        write_synced(&staging.join(file), data)?;
        state.files.insert(file.to_string(), Fingerprint::of(data));
        crash_point();
    }
    let st = serde_json::to_vec_pretty(&state)
        .map_err(|e| Error::format(staging.join("state.json"), e.to_string()))?;
    write_synced(&staging.join("state.json"), &st)?;
    crate::io::safetensors::sync_dir(&staging)?;
    crash_point();
    let folder = steps.join(&name);
    if folder.exists() {
        // A folder of this step that never became current (a killed commit).
        std::fs::remove_dir_all(&folder).map_err(Error::io(&folder))?;
    }
    std::fs::rename(&staging, &folder).map_err(Error::io(&folder))?;
    crate::io::safetensors::sync_dir(&steps)?;
    crash_point();
    // The commit: one rename of the pointer.
    replace_link(&dir.join(CURRENT), &Path::new(STEP_DIRS).join(&name))?;
    crash_point();
    link_top_level(dir)?;
    crash_point();
    remove_stale_steps(dir)
}

/// Tidy the run directory `dir` before a run writes into it: remove the temp files and folders
/// of writes that were killed, and step folders that no checkpoint points to; restore the
/// top-level links to the current checkpoint. Returns whether a checkpoint is committed.
pub fn recover_run_dir(dir: &Path) -> Result<bool> {
    if !dir.is_dir() {
        return Ok(false);
    }
    for e in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let e = e.map_err(Error::io(dir))?;
        if is_temp_name(&e.file_name().to_string_lossy()) {
            remove_any(&e.path())?;
        }
    }
    let committed = dir.join(CURRENT).is_dir();
    if dir.join(CURRENT).symlink_metadata().is_ok() && !committed {
        return Err(Error::format(
            dir.join(CURRENT),
            "points to a checkpoint folder that is missing (was checkpoints/ edited by hand?); \
             restore the folder or start a new run",
        ));
    }
    remove_stale_steps(dir)?;
    if committed {
        link_top_level(dir)?;
    }
    Ok(committed)
}

/// Read the current checkpoint's `state.json` in the run directory `dir` and check that every
/// file it lists is the one it was written with (so weights, optimizer and step belong
/// together). `Ok(None)`: no checkpoint.
pub fn verify_checkpoint(dir: &Path) -> Result<Option<CheckpointState>> {
    let Some(state) = read_state(dir)? else {
        return Ok(None);
    };
    let base = current_dir(dir);
    for (name, want) in &state.files {
        let p = base.join(name);
        let got = Fingerprint::of_file(&p)?;
        if got != *want {
            return Err(Error::format(
                &p,
                format!(
                    "does not belong to this checkpoint: state.json records {} bytes with \
                     CRC-32 {:08x}, the file has {} bytes with CRC-32 {:08x} (a file copied \
                     in from another run or another step?). Put back the checkpoint's own \
                     file, or start a new run",
                    want.bytes, want.crc32, got.bytes, got.crc32
                ),
            ));
        }
    }
    Ok(Some(state))
}

/// The current checkpoint's `state.json` in the run directory `dir`, parsed but not checked
/// against its files (see [`verify_checkpoint`]). `Ok(None)`: no checkpoint.
pub fn read_state(dir: &Path) -> Result<Option<CheckpointState>> {
    let path = current_dir(dir).join("state.json");
    if !path.is_file() {
        return Ok(None);
    }
    let v = read_json(&path)?;
    serde_json::from_value(v)
        .map(Some)
        .map_err(|e| Error::format(&path, format!("not a checkpoint state ({e})")))
}

/// A temp file or folder of an atomic write (`.name.tmpPID`), left by a killed write and
/// removed when the next run starts.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp")
}

/// Make `at` a link to `target` with one rename (a temp link beside it first).
fn replace_link(at: &Path, target: &Path) -> Result<()> {
    if std::fs::read_link(at).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let tmp = crate::io::safetensors::temp_path_beside(at);
    let _ = std::fs::remove_file(&tmp);
    symlink(target, &tmp).map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, at).map_err(Error::io(at))?;
    crate::io::safetensors::sync_dir(at.parent().unwrap_or(Path::new(".")))
}

/// Point each top-level checkpoint name of `dir` through the pointer (`config.json` ->
/// `checkpoint/config.json`, …).
fn link_top_level(dir: &Path) -> Result<()> {
    for name in CHECKPOINT_FILES {
        replace_link(&dir.join(name), &Path::new(CURRENT).join(name))?;
    }
    Ok(())
}

/// Remove every step folder of `dir` but the current one, and staging folders of killed
/// commits.
fn remove_stale_steps(dir: &Path) -> Result<()> {
    let steps = dir.join(STEP_DIRS);
    if !steps.is_dir() {
        return Ok(());
    }
    let current = std::fs::read_link(dir.join(CURRENT))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_os_string()));
    for e in std::fs::read_dir(&steps).map_err(Error::io(&steps))? {
        let e = e.map_err(Error::io(&steps))?;
        if Some(e.file_name()) != current {
            remove_any(&e.path())?;
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<()> {
    let is_dir = p.symlink_metadata().is_ok_and(|m| m.is_dir());
    if is_dir {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
    .map_err(Error::io(p))
}

#[cfg(unix)]
fn symlink(target: &Path, at: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, at)
}

#[cfg(windows)]
fn symlink(target: &Path, at: &Path) -> std::io::Result<()> {
    if target.extension().is_some() {
        std::os::windows::fs::symlink_file(target, at)
    } else {
        std::os::windows::fs::symlink_dir(target, at)
    }
}

/// A point inside a checkpoint write where the crash tests stop the process: with
/// `HYENA_CRASH_AT=N` in the environment, the N-th point reached kills the process at once
/// with SIGKILL, as `kill -9` would (no destructor, no flush). Without it, nothing happens.
fn crash_point() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| {
        std::env::var("HYENA_CRASH_AT")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(at) = at {
        if SEEN.fetch_add(1, Ordering::SeqCst) + 1 == *at {
            // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
            #[cfg(unix)]
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            std::process::abort();
        }
    }
}
