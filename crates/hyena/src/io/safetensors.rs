//! safetensors reading (f32; f64 rounded, f16/bf16 widened to f32 on read) and atomic writing
//! (temp file + rename; tensors are written as f32).
//!
//! A [`TensorFile`] is the parsed content of one file: named tensors as `f32` with shapes, plus
//! the string metadata. Used for checkpoints and for the PyTorch parity fixtures; it is a
//! [`TensorSource`] that a model's constructor loads from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Error, Result};
use crate::params::TensorSource;

/// One named tensor as `f32`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// All tensors and metadata of one safetensors file.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

impl TensorFile {
    /// Read a safetensors file; every tensor is converted to `f32`.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            file: path.to_path_buf(),
            source,
        })?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
            Error::format(
                path,
                format!("not a valid safetensors file ({e}); was it truncated?"),
            )
        })?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::format(
                path,
                format!("not a valid safetensors file ({e}); was it truncated?"),
            )
        })?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let data = to_f32(path, &name, &view)?;
            tensors.insert(
                name,
                Tensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        let metadata = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        Ok(TensorFile {
            path: path.to_path_buf(),
            tensors,
            metadata,
        })
    }

    /// The tensor `name`, or an error naming the file.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            file: self.path.clone(),
            name: name.to_string(),
            available: self.tensors.len(),
        })
    }

    /// The tensor `name`, checking its shape.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<&Tensor> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(Error::format(
                &self.path,
                format!(
                    "tensor `{name}` has shape {:?}, expected {:?} (config mismatch?)",
                    t.shape, shape
                ),
            ));
        }
        Ok(t)
    }
}

impl TensorSource for TensorFile {
    fn origin(&self) -> PathBuf {
        self.path.clone()
    }
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.shape.clone())
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn read_f32(&self, name: &str, dst: &mut [f32]) -> Result<()> {
        let t = self.get(name)?;
        if t.data.len() != dst.len() {
            return Err(Error::format(
                &self.path,
                format!(
                    "tensor `{name}` has {} elements, expected {}",
                    t.data.len(),
                    dst.len()
                ),
            ));
        }
        dst.copy_from_slice(&t.data);
        Ok(())
    }
}

fn to_f32(path: &Path, name: &str, v: &TensorView<'_>) -> Result<Vec<f32>> {
    let b = v.data();
    let out = match v.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        other => {
            return Err(Error::format(
                path,
                format!("tensor `{name}` has dtype {other:?}; only float tensors are supported"),
            ))
        }
    };
    Ok(out)
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // subnormal: normalise
            let mut e = 127 - 15 + 1;
            let mut f = f;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Write `tensors` (f32) with `metadata` to `path` atomically: a temp file beside it, then rename,
/// so an interrupted write never leaves a truncated file under the final name.
pub fn write_atomic(
    path: impl AsRef<Path>,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                t.shape.clone(),
            )
        })
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (n, b, s) in &bytes {
        let v = TensorView::new(Dtype::F32, s.clone(), b)
            .map_err(|e| Error::format(path, format!("tensor `{n}`: {e}")))?;
        views.push((n.clone(), v));
    }
    let meta: std::collections::HashMap<String, String> = metadata.clone().into_iter().collect();
    let data = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::format(path, e.to_string()))?;
    write_bytes_atomic(path, &data)
}

/// Where an atomic write of `path` goes first: a hidden file in the same directory (so that
/// the final rename stays on one file system), named after the target and this process.
pub fn temp_path_beside(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{name}.tmp{}", std::process::id()))
}

/// Write bytes to `path` through a temp file in the same directory and a rename.
pub fn write_bytes_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        file: path.to_path_buf(),
        source,
    };
    let tmp = temp_path_beside(path);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(data).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}
