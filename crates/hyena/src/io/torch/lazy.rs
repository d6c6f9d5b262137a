//! [`TorchCheckpoint`]: a `torch.save` checkpoint opened *lazily*. Opening parses and
//! interprets `data.pkl` (every entry's dtype, shape, storage, offset and stride, checked
//! against the archive) but reads no tensor data; each tensor is then read on demand, alone:
//! a seek to its storage entry and a read of the byte range its view covers. Loading a model
//! from a 14 GB bf16 file therefore needs the destination buffer plus one tensor's bytes.
//!
//! It reads one file, a byte-split series of parts ([`TorchCheckpoint::open_parts`], see
//! [`super::parts`]), or bytes in memory. It implements [`crate::params::TensorSource`]:
//! `read_bf16` hands bfloat16 storage bits over unchanged; `read_f32` converts
//! bfloat16/float16/float32/float64 (float64 rounds to nearest).
//!
//! Entries that are not float tensors are listed in [`TorchCheckpoint::skipped`]: non-float
//! tensors, and the Transformer Engine objects of released Evo 2 files (see
//! [`super::objects`]). Anything else is refused as by [`super::TorchFile::read`].
//!
//! **Checks.** A storage entry read whole is CRC-checked; a read of part of an entry (one of
//! several views of a storage) cannot be, since the CRC covers the whole entry. Deflate
//! entries (never written by `torch.save`, but by re-zipping tools) are inflated whole on each
//! read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::objects::{skippable, Skipped};
use super::parts::{open_series, series_label, Concat};
use super::pickle::{printable, Value};
use super::{
    check_byteorder, converter, gather_into, in_, parse_data_pkl, select_state_dict, tensor_spec,
    where_, DType, ReadSeek, Spec, TorchFile, Zip,
};
use crate::error::{Error, Result};
use crate::io::safetensors::Tensor;
use crate::params::{f32_to_bf16, TensorSource};

/// A float tensor of the checkpoint: its view, and where its storage is in the archive.
#[derive(Clone, Debug)]
struct Entry {
    spec: Spec,
    /// Index of the storage entry in the zip directory.
    zip_index: usize,
    numel: usize,
    /// Lowest and one past the highest storage element the view touches.
    first: u64,
    end: u64,
}

/// A `torch.save` checkpoint whose tensors are read on demand; see the module docs.
pub struct TorchCheckpoint {
    path: PathBuf,
    state_dict_key: Option<String>,
    tensors: BTreeMap<String, Entry>,
    skipped: BTreeMap<String, Skipped>,
    zip: Mutex<Zip>,
}

impl std::fmt::Debug for TorchCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchCheckpoint")
            .field("path", &self.path)
            .field("state_dict_key", &self.state_dict_key)
            .field("tensors", &self.tensors.len())
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl TorchCheckpoint {
    /// Open the checkpoint file `path` (a `torch.save` zip), reading only its directory and
    /// `data.pkl`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_zip(Zip::open(path.as_ref())?)
    }

    /// Open a checkpoint stored as the parts `paths` (`NAME.pt.part0`, `NAME.pt.part1`, … in
    /// this order: the bytes of one file cut at arbitrary offsets), read as one file. Nothing
    /// is joined on disk or in memory. Errors name the series as `NAME.pt.part{0..N}`.
    pub fn open_parts(paths: &[PathBuf]) -> Result<Self> {
        let label = series_label(paths);
        if paths.is_empty() {
            return Err(Error::format(
                label,
                "no checkpoint parts given; pass the `NAME.pt.partN` files in order",
            ));
        }
        let (concat, len) = open_series(paths)?;
        Self::from_zip(Zip::from_source(Box::new(concat), len, &label)?)
    }

    /// A checkpoint already in memory; `path` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self> {
        Self::from_zip(Zip::from_bytes(bytes, path)?)
    }

    /// A checkpoint whose bytes are the concatenation of `parts` (as [`Self::open_parts`],
    /// from memory; used by the fuzz targets); `path` names it in errors.
    pub fn from_parts_bytes(parts: Vec<Vec<u8>>, path: &Path) -> Result<Self> {
        let parts: Vec<(String, u64, Box<dyn ReadSeek>)> = parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    format!("part {i}"),
                    p.len() as u64,
                    Box::new(std::io::Cursor::new(p)) as Box<dyn ReadSeek>,
                )
            })
            .collect();
        let concat = Concat::new(parts);
        let len = concat.len();
        Self::from_zip(Zip::from_source(Box::new(concat), len, path)?)
    }

    /// What names the checkpoint in errors (its file, or its part series).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the state dict was found: `None` for the top-level dict, or the top-level key
    /// (`"state_dict"`, `"model"` or `"module"`) it sits under.
    pub fn state_dict_key(&self) -> Option<&str> {
        self.state_dict_key.as_deref()
    }

    /// The float tensors' names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    /// The shape of float tensor `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.spec.shape.as_slice())
    }

    /// The stored dtype of float tensor `name`: `"float32"`, `"bfloat16"`, `"float16"` or
    /// `"float64"`.
    pub fn dtype_name(&self, name: &str) -> Option<&'static str> {
        self.tensors.get(name).map(|e| e.spec.dtype.name())
    }

    /// The entries that are not loaded, with what each was: non-float tensors, `io.BytesIO`
    /// objects, Transformer Engine recipe objects. `format!("{name}: {what}")` reads e.g.
    /// `blocks.2.projections._extra_state: io.BytesIO (312 bytes)`.
    pub fn skipped(&self) -> &BTreeMap<String, Skipped> {
        &self.skipped
    }

    /// Float tensor `name` as `f32`.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let e = self.entry(name)?;
        let mut data = vec![0f32; e.numel];
        self.read_f32(name, &mut data)?;
        Ok(Tensor {
            shape: e.spec.shape.clone(),
            data,
        })
    }

    /// Every float tensor as `f32`, as a [`TorchFile`]. Each storage is read whole (and
    /// CRC-checked) once, however many tensors view it.
    pub fn into_torch_file(self) -> Result<TorchFile> {
        let mut out = TorchFile {
            path: self.path.clone(),
            state_dict_key: self.state_dict_key.clone(),
            ..TorchFile::default()
        };
        for (name, s) in &self.skipped {
            let what = match s {
                Skipped::NonFloat { dtype, .. } => dtype.clone(),
                other => other.to_string(),
            };
            out.skipped.insert(name.clone(), what);
        }
        let mut by_storage: BTreeMap<usize, Vec<(&String, &Entry)>> = BTreeMap::new();
        for (name, e) in &self.tensors {
            by_storage.entry(e.zip_index).or_default().push((name, e));
        }
        let mut zip = self.lock();
        for (idx, group) in by_storage {
            let bytes = zip.read(idx)?;
            for (name, e) in group {
                let mut data = vec![0f32; e.numel];
                gather_into(&bytes, 0, &e.spec, &mut data, converter(e.spec.dtype))
                    .map_err(|msg| self.corrupt(name, msg))?;
                out.tensors.insert(
                    name.clone(),
                    Tensor {
                        shape: e.spec.shape.clone(),
                        data,
                    },
                );
            }
        }
        Ok(out)
    }

    fn lock(&self) -> MutexGuard<'_, Zip> {
        // A panic elsewhere while holding the lock leaves nothing half-done here: every read
        // seeks first.
        self.zip.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn corrupt(&self, name: &str, msg: String) -> Error {
        Error::format(
            &self.path,
            format!(
                "tensor `{}`: {msg}; the file is corrupt: re-save it",
                printable(name)
            ),
        )
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        if let Some(e) = self.tensors.get(name) {
            return Ok(e);
        }
        if let Some(s) = self.skipped.get(name) {
            let hint = match s {
                Skipped::NonFloat { .. } => {
                    "only float tensors are loaded (convert it with `.float()` before saving if \
                     it is a weight)"
                }
                _ => "it is not a tensor and was skipped",
            };
            return Err(Error::format(
                &self.path,
                format!("entry `{}` is {s}; {hint}", printable(name)),
            ));
        }
        Err(Error::MissingTensor {
            file: self.path.clone(),
            name: name.to_string(),
            available: self.tensors.len(),
        })
    }

    /// Read tensor `name` into `dst`, converting each element's bytes with `conv`.
    fn read_into<T>(
        &self,
        name: &str,
        dst: &mut [T],
        op: &'static str,
        conv: impl Fn(&[u8]) -> T,
    ) -> Result<()> {
        let e = self.entry(name)?;
        if dst.len() != e.numel {
            return Err(Error::shape(
                op,
                format!("`{}` of {}", printable(name), self.path.display()),
                format!("{} elements (shape {:?})", e.numel, e.spec.shape),
                format!("{} elements", dst.len()),
            ));
        }
        if e.numel == 0 {
            return Ok(());
        }
        let es = e.spec.dtype.size() as u64;
        let start = e.first * es;
        let n = usize::try_from((e.end - e.first) * es)
            .map_err(|_| self.corrupt(name, "too large for memory".into()))?;
        let bytes = self.lock().read_range(e.zip_index, start, n)?;
        gather_into(&bytes, e.first, &e.spec, dst, conv).map_err(|msg| self.corrupt(name, msg))
    }

    /// Interpret the state dict of `zip`, checking every float tensor's view against its
    /// storage entry; no tensor data is read.
    pub(super) fn from_zip(mut zip: Zip) -> Result<Self> {
        let path = zip.path.clone();
        let root = zip.root()?;
        check_byteorder(&mut zip, &root)?;
        let top = parse_data_pkl(&mut zip, &root)?;
        let (state_dict_key, items) = select_state_dict(&path, &top)?;

        let mut specs: BTreeMap<String, Spec> = BTreeMap::new();
        let mut skipped: BTreeMap<String, Skipped> = BTreeMap::new();
        for (k, v) in items {
            let key = match k {
                Value::Str(s) => s.clone(),
                other => {
                    return Err(Error::format(
                        &path,
                        format!(
                            "{}has a key that is {}, not a string; a state dict maps names to \
                             tensors",
                            where_(&state_dict_key),
                            other.describe()
                        ),
                    ))
                }
            };
            // A repeated key: the last one wins, as in Python.
            specs.remove(&key);
            skipped.remove(&key);
            let detail = match tensor_spec(v) {
                Ok(spec) => {
                    specs.insert(key, spec);
                    continue;
                }
                Err(detail) => match skippable(v) {
                    Some(Ok(s)) => {
                        skipped.insert(key, s);
                        continue;
                    }
                    Some(Err(why)) => why,
                    None => detail,
                },
            };
            return Err(refused(&path, &key, v, &state_dict_key, &detail));
        }

        let mut tensors = BTreeMap::new();
        for (name, spec) in specs {
            if !spec.dtype.is_float() {
                skipped.insert(
                    name,
                    Skipped::NonFloat {
                        dtype: spec.dtype.name().to_string(),
                        shape: spec.shape,
                    },
                );
                continue;
            }
            let entry_name = format!("{root}/data/{}", spec.storage_key);
            let Some(zip_index) = zip.find(&entry_name) else {
                return Err(Error::format(
                    &path,
                    format!(
                        "storage `{}` of tensor `{}` is missing from the archive; the file is \
                         truncated or corrupt: re-download or re-save it",
                        printable(&entry_name),
                        printable(&name)
                    ),
                ));
            };
            let stored = zip.checked_size(zip_index)?;
            let (numel, first, end) = view_extent(&spec, stored).map_err(|msg| {
                Error::format(
                    &path,
                    format!(
                        "tensor `{}`: {msg}; the file is corrupt: re-save it",
                        printable(&name)
                    ),
                )
            })?;
            tensors.insert(
                name,
                Entry {
                    spec,
                    zip_index,
                    numel,
                    first,
                    end,
                },
            );
        }
        Ok(TorchCheckpoint {
            path,
            state_dict_key,
            tensors,
            skipped,
            zip: Mutex::new(zip),
        })
    }
}

/// The error for state-dict entry `key` (value `v`) that is neither a tensor nor skippable.
fn refused(
    path: &Path,
    key: &str,
    v: &Value,
    state_dict_key: &Option<String>,
    detail: &str,
) -> Error {
    // A Python name where a tensor should be is what a malicious file looks like; plain data
    // (an int, a string) more likely means the wrong dict was picked.
    let advice = if matches!(v, Value::Call(_) | Value::Global { .. }) {
        "so the file was rejected (nothing in it was executed). If you did not make this file, \
         it may be malicious: do not open it with `torch.load` either; otherwise re-save the \
         weights with `torch.save(model.state_dict(), path)` or as safetensors"
    } else if state_dict_key.is_none() {
        "and a state dict was looked for at the top level and under `state_dict`, `model` and \
         `module`: re-save the weights with `torch.save(model.state_dict(), path)` or as \
         safetensors"
    } else {
        "so re-save the weights with `torch.save(model.state_dict(), path)` or as safetensors"
    };
    Error::format(
        path,
        format!(
            "state-dict entry `{}` {}{detail}; a checkpoint must hold only tensors (and the \
             Transformer Engine io.BytesIO and recipe objects, which are skipped), {advice}",
            printable(key),
            in_(state_dict_key)
        ),
    )
}

/// `(numel, first, end)` of the view `spec` of a storage entry of `stored` bytes: its element
/// count and the storage elements `first..end` it touches; an error if the pickle's storage
/// size does not fit the entry or the view reaches past it.
fn view_extent(spec: &Spec, stored: u64) -> std::result::Result<(usize, u64, u64), String> {
    let es = spec.dtype.size() as u64;
    let have = stored / es;
    if have < spec.storage_numel {
        return Err(format!(
            "storage `{}` holds {have} {} elements, the pickle says {} (truncated)",
            spec.storage_key,
            spec.dtype.name(),
            spec.storage_numel
        ));
    }
    let overflow = || format!("shape {:?} overflows", spec.shape);
    let numel = spec
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(overflow)?;
    if numel == 0 {
        return Ok((0, 0, 0));
    }
    // Strides are non-negative: the view spans offset ..= offset + Σ (size_i - 1) · stride_i.
    let mut last = spec.offset;
    for (&d, &s) in spec.shape.iter().zip(&spec.stride) {
        last = (d as u64 - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(overflow)?;
    }
    if last >= spec.storage_numel {
        return Err(format!(
            "view (offset {}, shape {:?}, stride {:?}) reaches element {last} of a storage of \
             {} elements",
            spec.offset, spec.shape, spec.stride, spec.storage_numel
        ));
    }
    Ok((numel, spec.offset, last + 1))
}

impl TensorSource for TorchCheckpoint {
    fn origin(&self) -> PathBuf {
        self.path.clone()
    }

    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.shape(name).map(<[usize]>::to_vec)
    }

    fn names(&self) -> Vec<String> {
        TorchCheckpoint::names(self)
    }

    /// bfloat16, float16 and float32 exactly; float64 rounded to nearest.
    fn read_f32(&self, name: &str, dst: &mut [f32]) -> Result<()> {
        let conv = converter(self.entry(name)?.spec.dtype);
        self.read_into(name, dst, "TorchCheckpoint::read_f32", conv)
    }

    /// bfloat16 storage bits unchanged (NaN payloads included); other dtypes through `f32`,
    /// rounded to nearest even.
    fn read_bf16(&self, name: &str, dst: &mut [u16]) -> Result<()> {
        let dtype = self.entry(name)?.spec.dtype;
        if dtype == DType::BF16 {
            self.read_into(name, dst, "TorchCheckpoint::read_bf16", |c| {
                u16::from_le_bytes([
                    c.first().copied().unwrap_or(0),
                    c.get(1).copied().unwrap_or(0),
                ])
            })
        } else {
            let conv = converter(dtype);
            self.read_into(name, dst, "TorchCheckpoint::read_bf16", |c| {
                f32_to_bf16(conv(c))
            })
        }
    }
}
