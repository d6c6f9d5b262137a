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
        Self::from_bytes(&bytes, path)
    }

    /// [`read`](Self::read) on the bytes of a safetensors file already in memory; `path` names
    /// it in errors (and becomes [`TensorFile::path`]). Used by the fuzz targets (`fuzz/` in
    /// the repository).
    pub fn from_bytes(bytes: &[u8], path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
            Error::format(
                path,
                format!("not a valid safetensors file ({e}); was it truncated?"),
            )
        })?;
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
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

pub(crate) fn f16_to_f32(h: u16) -> f32 {
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
    let data = serialize_f32(tensors, metadata).map_err(|e| Error::format(path, e))?;
    write_bytes_atomic(path, &data)
}

/// The bytes [`write_atomic`] would write for `tensors` and `metadata` (`path` only names the
/// file in an error): for callers that fingerprint a file before writing it.
pub fn to_bytes(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    serialize_f32(tensors, metadata).map_err(|e| Error::format(path, e))
}

/// The safetensors bytes of f32 `tensors` with `metadata`, laid out as the `safetensors` crate
/// lays them out (tensors in name order, `__metadata__` first in the header, the header padded
/// with spaces to 8 bytes) but with the metadata keys in order: the crate's own writer takes
/// a `HashMap`, whose order changes from process to process, so the same model would be
/// written as different bytes.
fn serialize_f32(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    fn json(v: &impl serde::Serialize) -> std::result::Result<String, String> {
        serde_json::to_string(v).map_err(|e| e.to_string())
    }
    let mut header = format!("{{\"__metadata__\":{}", json(metadata)?);
    let mut offset = 0usize;
    for (name, t) in tensors {
        let n = t.shape.iter().product::<usize>();
        if n != t.data.len() {
            return Err(format!(
                "tensor `{name}`: shape {:?} holds {n} values but {} were given",
                t.shape,
                t.data.len()
            ));
        }
        header.push_str(&format!(
            ",{}:{{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[{offset},{}]}}",
            json(name)?,
            json(&t.shape)?,
            offset + 4 * n
        ));
        offset += 4 * n;
    }
    header.push('}');
    let mut header = header.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(header);
    for t in tensors.values() {
        out.extend(t.data.iter().flat_map(|v| v.to_le_bytes()));
    }
    Ok(out)
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

/// Write bytes to `path` through a temp file in the same directory and a rename; the file is
/// flushed to disk before the rename and the directory after it, so that after a crash or a
/// power cut `path` holds either its old content or all of the new.
pub fn write_bytes_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        file: path.to_path_buf(),
        source,
    };
    let tmp = temp_path_beside(path);
    if let Err(e) = write_synced(&tmp, data) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Create `path` with `data` and flush it to disk (no rename: for a file that is not yet
/// visible under its final name, e.g. in a staging folder or beside the target).
pub fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(Error::io(path))?;
    f.write_all(data).map_err(Error::io(path))?;
    f.sync_all().map_err(Error::io(path))
}

/// Flush a directory's entries (a rename into it) to disk. A no-op where directories cannot be
/// opened as files (not Unix).
pub fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors() -> BTreeMap<String, Tensor> {
        let t = |shape: &[usize], x0: f32| Tensor {
            shape: shape.to_vec(),
            data: (0..shape.iter().product::<usize>())
                .map(|i| x0 + i as f32 * 0.25)
                .collect(),
        };
        [
            ("b.weight".to_string(), t(&[3, 2], 1.0)),
            ("a\"quoted\".bias".to_string(), t(&[5], -2.0)),
            ("scalar".to_string(), t(&[], 7.0)),
            ("z.empty".to_string(), t(&[0, 4], 0.0)),
        ]
        .into()
    }

    /// With at most one metadata key (where the crate's HashMap has one order), the writer
    /// gives exactly the `safetensors` crate's bytes.
    #[test]
    fn same_bytes_as_the_safetensors_crate() {
        let ts = tensors();
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = ts
            .iter()
            .map(|(n, t)| {
                let b = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                (n.clone(), b, t.shape.clone())
            })
            .collect();
        for meta in [BTreeMap::new(), [("format".into(), "pt".into())].into()] {
            let views = bytes.iter().map(|(n, b, s)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            });
            let theirs = safetensors::serialize(views, Some(meta.clone().into_iter().collect()));
            assert_eq!(serialize_f32(&ts, &meta).unwrap(), theirs.unwrap());
        }
    }

    /// Several metadata keys come out in key order, every time, and read back.
    #[test]
    fn metadata_in_key_order() {
        let meta: BTreeMap<String, String> = [
            ("version".into(), "1".into()),
            ("format".into(), "pt".into()),
            ("arch".into(), "x".into()),
        ]
        .into();
        let a = serialize_f32(&tensors(), &meta).unwrap();
        let n = u64::from_le_bytes(a[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8_lossy(&a[8..8 + n]).into_owned();
        let pos = |k: &str| header.find(&format!("\"{k}\"")).unwrap();
        assert!(
            pos("arch") < pos("format") && pos("format") < pos("version"),
            "{header}"
        );
        let st = safetensors::SafeTensors::deserialize(&a).unwrap();
        assert_eq!(st.names().len(), 4);
        let (_, m) = safetensors::SafeTensors::read_metadata(&a).unwrap();
        assert_eq!(m.metadata().as_ref().unwrap().len(), 3);
        let mut bad = tensors();
        bad.get_mut("b.weight").unwrap().data.pop();
        let err = serialize_f32(&bad, &meta).unwrap_err();
        assert!(err.contains("b.weight") && err.contains("[3, 2]"), "{err}");
    }
}
