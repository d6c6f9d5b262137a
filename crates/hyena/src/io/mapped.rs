//! safetensors files memory-mapped and used in place, and a streaming writer for files too
//! large to assemble in memory (a converted 7B Evo 2 model is 13.8 GB of bf16).
//!
//! [`MappedSafetensors::open`] maps the file read-only and parses only its header; a model
//! built from it through [`crate::params::Init::Mapped`] keeps its bf16 tensors in the mapping
//! (the pages are the operating system's file cache: loading takes milliseconds, several
//! processes share one copy, and nothing is widened). Tensors of other dtypes are read
//! through [`TensorSource`] (copied, converted).
//!
//! The header is the safetensors format's: 8 bytes of little-endian header length `N`, `N`
//! bytes of JSON `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
//! {..}}`, then the data region. Every entry is checked against the file (offsets inside the
//! data, length = shape × dtype size), so a damaged or hostile header is an error naming the
//! tensor, never an out-of-bounds read.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::params::{bf16_to_f32, f32_to_bf16, TensorSource};

/// Element types of the tensors this engine writes and maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapDtype {
    F32,
    Bf16,
    F16,
}

impl MapDtype {
    fn size(self) -> usize {
        match self {
            MapDtype::F32 => 4,
            MapDtype::Bf16 | MapDtype::F16 => 2,
        }
    }
    fn name(self) -> &'static str {
        match self {
            MapDtype::F32 => "F32",
            MapDtype::Bf16 => "BF16",
            MapDtype::F16 => "F16",
        }
    }
}

/// One tensor's place in the data region.
#[derive(Clone, Debug)]
struct Entry {
    dtype: MapDtype,
    shape: Vec<usize>,
    /// Byte range in the data region.
    begin: usize,
    end: usize,
}

/// A memory-mapped safetensors file (see the module docs).
pub struct MappedSafetensors {
    path: PathBuf,
    map: memmap2::Mmap,
    /// Byte offset of the data region in the file.
    data_start: usize,
    entries: BTreeMap<String, Entry>,
    pub metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for MappedSafetensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MappedSafetensors({}, {} tensors)",
            self.path.display(),
            self.entries.len()
        )
    }
}

impl MappedSafetensors {
    /// Map `path` and parse its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let f = std::fs::File::open(path).map_err(Error::io(path))?;
        // SAFETY: the mapping is read-only; like every reader of memory-mapped weights, this
        // relies on the file not being truncated while the model is loaded (hyena writes its
        // files by rename, never in place).
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(Error::io(path))?;
        let (data_start, entries, metadata) =
            parse_header(&map).map_err(|msg| Error::format(path, msg))?;
        Ok(MappedSafetensors {
            path: path.to_path_buf(),
            map,
            data_start,
            entries,
            metadata,
        })
    }

    fn data(&self) -> &[u8] {
        &self.map[self.data_start..]
    }

    /// The whole data region as bf16 words, and the element offset of the bf16 tensor `name`
    /// in it, if `name` is a bf16 tensor (its values are then `region[off .. off + numel]`).
    pub fn bf16_in_place(&self, name: &str) -> Option<usize> {
        let e = self.entries.get(name)?;
        (e.dtype == MapDtype::Bf16
            && self.data_start.is_multiple_of(2)
            && e.begin.is_multiple_of(2))
        .then_some(e.begin / 2)
    }

    /// The data region as bf16 words (its last byte left out if the region's length is odd).
    pub fn bf16_region(&self) -> &[u16] {
        let d = self.data();
        // The map is page-aligned and `data_start` is checked even where a tensor is used in
        // place, so the region is 2-byte aligned.
        let (pre, words, _) = unsafe { d.align_to::<u16>() };
        if pre.is_empty() {
            words
        } else {
            &[]
        }
    }

    /// The dtype of `name` as the safetensors header spells it.
    pub fn dtype_name(&self, name: &str) -> Option<&'static str> {
        self.entries.get(name).map(|e| e.dtype.name())
    }

    fn entry(&self, name: &str, n: usize) -> Result<&Entry> {
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            file: self.path.clone(),
            name: name.to_string(),
            available: self.entries.len(),
        })?;
        if e.shape.iter().product::<usize>() != n {
            return Err(Error::format(
                &self.path,
                format!("tensor `{name}` has shape {:?}, not {n} elements", e.shape),
            ));
        }
        Ok(e)
    }
}

impl TensorSource for MappedSafetensors {
    fn origin(&self) -> PathBuf {
        self.path.clone()
    }
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.entries.get(name).map(|e| e.shape.clone())
    }
    fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }
    fn read_f32(&self, name: &str, dst: &mut [f32]) -> Result<()> {
        let e = self.entry(name, dst.len())?;
        let b = &self.data()[e.begin..e.end];
        match e.dtype {
            MapDtype::F32 => {
                for (d, c) in dst.iter_mut().zip(b.chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            MapDtype::Bf16 => {
                for (d, c) in dst.iter_mut().zip(b.chunks_exact(2)) {
                    *d = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
                }
            }
            MapDtype::F16 => {
                for (d, c) in dst.iter_mut().zip(b.chunks_exact(2)) {
                    *d = super::safetensors::f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
                }
            }
        }
        Ok(())
    }
    fn read_bf16(&self, name: &str, dst: &mut [u16]) -> Result<()> {
        let e = self.entry(name, dst.len())?;
        if e.dtype == MapDtype::Bf16 {
            let b = &self.data()[e.begin..e.end];
            for (d, c) in dst.iter_mut().zip(b.chunks_exact(2)) {
                *d = u16::from_le_bytes([c[0], c[1]]);
            }
            return Ok(());
        }
        let mut tmp = vec![0.0f32; dst.len()];
        self.read_f32(name, &mut tmp)?;
        for (d, v) in dst.iter_mut().zip(&tmp) {
            *d = f32_to_bf16(*v);
        }
        Ok(())
    }
}

type Header = (usize, BTreeMap<String, Entry>, BTreeMap<String, String>);

fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    let short = || "shorter than a safetensors header: the file is truncated or not safetensors";
    let n = u64::from_le_bytes(
        bytes
            .get(..8)
            .ok_or_else(short)?
            .try_into()
            .map_err(|_| short())?,
    );
    let n = usize::try_from(n).map_err(|_| short())?;
    let end = 8usize.checked_add(n).ok_or_else(short)?;
    let head = bytes.get(8..end).ok_or_else(short)?;
    let v: serde_json::Value =
        serde_json::from_slice(head).map_err(|e| format!("safetensors header: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("safetensors header: not a JSON object")?;
    let data_len = bytes.len() - end;
    let mut entries = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (k, x) in obj {
        if k == "__metadata__" {
            if let Some(m) = x.as_object() {
                for (mk, mv) in m {
                    metadata.insert(mk.clone(), mv.as_str().unwrap_or_default().to_string());
                }
            }
            continue;
        }
        let bad = |what: &str| format!("safetensors header: tensor `{k}`: {what}");
        let dtype = match x.get("dtype").and_then(|d| d.as_str()) {
            Some("F32") => MapDtype::F32,
            Some("BF16") => MapDtype::Bf16,
            Some("F16") => MapDtype::F16,
            Some(other) => {
                return Err(bad(&format!(
                    "dtype {other} is not a float type this engine reads"
                )))
            }
            None => return Err(bad("no dtype")),
        };
        let shape: Vec<usize> = x
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("shape is not a list of sizes"))?;
        let offs: Vec<usize> = x
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no data_offsets"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("data_offsets are not offsets"))?;
        let [begin, stop] = offs[..] else {
            return Err(bad("data_offsets must be [begin, end]"));
        };
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad("shape overflows"))?;
        let want = numel
            .checked_mul(dtype.size())
            .ok_or_else(|| bad("shape overflows"))?;
        if begin > stop || stop > data_len || stop - begin != want {
            return Err(bad(&format!(
                "data_offsets [{begin}, {stop}] do not hold {want} bytes inside the {data_len}-byte \
                 data region: the file is damaged or truncated"
            )));
        }
        entries.insert(
            k.clone(),
            Entry {
                dtype,
                shape,
                begin,
                end: stop,
            },
        );
    }
    Ok((end, entries, metadata))
}

/// One tensor to write: name, dtype, shape and its little-endian bytes.
pub struct OutTensor<'a> {
    pub name: String,
    pub dtype: MapDtype,
    pub shape: Vec<usize>,
    pub data: OutData<'a>,
}

/// Values of an [`OutTensor`].
pub enum OutData<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

/// Write a safetensors file tensor by tensor (never the whole file in memory), atomically: a
/// temp file beside `path`, flushed, then renamed, and the directory flushed.
pub fn write_streaming(
    path: &Path,
    tensors: &[OutTensor<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(metadata).unwrap_or_default(),
    );
    let mut off = 0usize;
    for t in tensors {
        let n = match t.data {
            OutData::F32(v) => v.len(),
            OutData::Bf16(v) => v.len(),
        };
        let ok = matches!(
            (&t.data, t.dtype),
            (OutData::F32(_), MapDtype::F32) | (OutData::Bf16(_), MapDtype::Bf16)
        );
        if !ok || n != t.shape.iter().product::<usize>() {
            return Err(Error::format(
                path,
                format!(
                    "tensor `{}`: values do not match dtype {:?} and shape {:?}",
                    t.name, t.dtype, t.shape
                ),
            ));
        }
        let bytes = n * t.dtype.size();
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [off, off + bytes]}),
        );
        off += bytes;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| Error::format(path, e.to_string()))?;
    h.resize(h.len().next_multiple_of(8), b' ');
    let tmp = super::safetensors::temp_path_beside(path);
    let write = || -> Result<()> {
        let f = std::fs::File::create(&tmp).map_err(Error::io(path))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 22, f);
        let io = |source| Error::Io {
            file: path.to_path_buf(),
            source,
        };
        w.write_all(&(h.len() as u64).to_le_bytes()).map_err(&io)?;
        w.write_all(&h).map_err(&io)?;
        let mut buf = Vec::with_capacity(1 << 20);
        for t in tensors {
            match t.data {
                OutData::F32(v) => {
                    for c in v.chunks(1 << 18) {
                        buf.clear();
                        buf.extend(c.iter().flat_map(|x| x.to_le_bytes()));
                        w.write_all(&buf).map_err(&io)?;
                    }
                }
                OutData::Bf16(v) => {
                    for c in v.chunks(1 << 19) {
                        buf.clear();
                        buf.extend(c.iter().flat_map(|x| x.to_le_bytes()));
                        w.write_all(&buf).map_err(&io)?;
                    }
                }
            }
        }
        let f = w.into_inner().map_err(|e| Error::Io {
            file: path.to_path_buf(),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(Error::io(path))
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(Error::io(path))?;
    super::safetensors::sync_dir(path.parent().unwrap_or(Path::new(".")))
}

impl crate::params::InPlaceSource for MappedSafetensors {
    fn region(&self) -> &[u16] {
        self.bf16_region()
    }
    fn bf16_offset(&self, name: &str) -> Option<usize> {
        self.bf16_in_place(name)
    }
}
