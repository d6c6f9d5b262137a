//! Reading PyTorch checkpoints (`torch.save` zip archives: `pytorch_model.bin`, Lightning
//! `*.ckpt`) *safely*: tensors only, nothing in the file is ever executed or instantiated.
//!
//! A PyTorch >= 1.6 checkpoint is a zip archive with one folder `<root>/` holding `data.pkl`
//! (a pickle of the saved object), `data/<key>` (the raw little-endian bytes of each tensor
//! storage), and optionally `byteorder`. `torch.load` unpickles `data.pkl`, which may import and
//! call any Python function; a malicious checkpoint can thus run code. Here `data.pkl` is only
//! *parsed* ([`crate::io::torch::pickle`]) into an inert tree, and the tree is interpreted with an
//! allowlist:
//!
//! - `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` (a tensor),
//! - `torch._utils._rebuild_parameter(tensor, ...)`, `..._rebuild_parameter_with_state(...)`,
//! - `collections.OrderedDict` (a state dict), `torch.Size`,
//! - the storage classes `torch.FloatStorage`, `torch.HalfStorage`, ... and the dtype names
//!   `torch.float32`, ... that name a storage's element type.
//!
//! **Which dict is the state dict.** The top-level object must be a dict (or `OrderedDict`).
//! If it has an entry `state_dict` (PyTorch Lightning), `model` or `module` (common training
//! scripts) — checked in that order — whose value is a dict, that dict is the state dict and the
//! rest of the file (Lightning's `hyper_parameters` with omegaconf objects, `optimizer_states`,
//! `callbacks`, ...) is ignored, never interpreted. Otherwise the top-level dict itself is the
//! state dict. Every value of the state dict must be a tensor; anything else (a call of
//! `posix.system`, an instance of some class, a string, ...) rejects the whole file with an error
//! naming the entry and the offending Python name.
//!
//! **Dtypes.** float32, float16, bfloat16 and float64 tensors are converted to `f32` (float64
//! rounds to nearest). Non-float tensors (int64, int32, bool, ... e.g. BatchNorm's
//! `num_batches_tracked`) are not weights: they are left out of [`TorchFile::tensors`] and listed,
//! with their dtype, in [`TorchFile::skipped`], so a caller that needs one can say so by name.
//!
//! **Memory.** The zip is read through its central directory with seeks; each storage is read
//! once (however many tensors view it), converted, and dropped, so the peak is the `f32` output
//! plus the largest single storage, not the whole file.
//!
//! The legacy pre-1.6 format (a bare pickle stream, `_use_new_zipfile_serialization=False`) is
//! rejected with a message saying how to re-save the file.

pub mod lazy;
pub mod objects;
pub mod parts;
pub mod pickle;

pub use self::lazy::TorchCheckpoint;
pub use self::objects::Skipped;
pub use self::parts::find_checkpoint;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use self::pickle::{printable, Value};
use crate::error::{Error, Result};
use crate::io::safetensors::Tensor;

/// The state dict of one PyTorch checkpoint: its float tensors as `f32`.
#[derive(Clone, Debug, Default)]
pub struct TorchFile {
    pub path: PathBuf,
    /// Where the state dict was found: `None` for the top-level dict, or the top-level key
    /// (`"state_dict"`, `"model"` or `"module"`) it sits under.
    pub state_dict_key: Option<String>,
    /// Float tensors by name (float32/float16/bfloat16/float64 read as `f32`).
    pub tensors: BTreeMap<String, Tensor>,
    /// Entries not loaded, by name: non-float tensors with their dtype (`"int64"`,
    /// `"bool"`, ...), and the Transformer Engine objects of released Evo 2 files described as
    /// by [`Skipped`]'s `Display` (`"io.BytesIO (312 bytes)"`).
    pub skipped: BTreeMap<String, String>,
}

impl TorchFile {
    /// Read the state dict of a `torch.save` zip checkpoint (see the module docs for which dict
    /// that is, and what is rejected).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        read_torch_file(path.as_ref())
    }

    /// The tensor `name`, or an error naming the file (and saying so if it was a skipped
    /// non-float tensor).
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        if let Some(t) = self.tensors.get(name) {
            return Ok(t);
        }
        if let Some(dtype) = self.skipped.get(name) {
            return Err(Error::format(
                &self.path,
                format!(
                    "tensor `{name}` has dtype {dtype}; only float tensors are loaded \
                     (convert it with `.float()` before saving if it is a weight)"
                ),
            ));
        }
        Err(Error::MissingTensor {
            file: self.path.clone(),
            name: name.to_string(),
            available: self.tensors.len(),
        })
    }
}

/// Read the state dict of a `torch.save` zip checkpoint; see [`TorchFile`].
pub fn read_torch_file(path: &Path) -> Result<TorchFile> {
    torch_file_from(Zip::open(path)?)
}

/// [`read_torch_file`] on the bytes of a checkpoint already in memory; `path` names it in
/// errors (and becomes [`TorchFile::path`]). Used by the fuzz targets (`fuzz/` in the
/// repository).
pub fn read_torch_bytes(bytes: Vec<u8>, path: &Path) -> Result<TorchFile> {
    torch_file_from(Zip::from_bytes(bytes, path)?)
}

/// The state dict of the checkpoint `zip`, every float tensor read.
fn torch_file_from(zip: Zip) -> Result<TorchFile> {
    TorchCheckpoint::from_zip(zip)?.into_torch_file()
}

/// Read only the state dict's float tensors; see [`TorchFile`] (non-float tensors are left out).
pub fn read_state_dict(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    Ok(read_torch_file(path)?.tensors)
}

/// The inert parse tree of a checkpoint's `data.pkl`, e.g. to inspect a Lightning checkpoint's
/// `hyper_parameters`. Nothing in it is executed; interpreting it is up to the caller.
pub fn read_torch_pickle(path: &Path) -> Result<Value> {
    let mut zip = Zip::open(path)?;
    let root = zip.root()?;
    parse_data_pkl(&mut zip, &root)
}

fn where_(key: &Option<String>) -> String {
    match key {
        Some(k) => format!("the state dict under `{k}` "),
        None => "the state dict ".into(),
    }
}

fn in_(key: &Option<String>) -> String {
    match key {
        Some(k) => format!("(under `{k}`) "),
        None => String::new(),
    }
}

fn check_byteorder(zip: &mut Zip, root: &str) -> Result<()> {
    let Some(idx) = zip.find(&format!("{root}/byteorder")) else {
        // Files written before the entry existed are little-endian.
        return Ok(());
    };
    let b = zip.read(idx)?;
    let order = String::from_utf8_lossy(&b);
    if order.trim() != "little" {
        return Err(Error::format(
            &zip.path,
            format!(
                "the tensors are stored {:?}-endian; only little-endian checkpoints are \
                 supported: load and re-save it with torch on a little-endian machine",
                order.trim()
            ),
        ));
    }
    Ok(())
}

fn parse_data_pkl(zip: &mut Zip, root: &str) -> Result<Value> {
    let name = format!("{root}/data.pkl");
    let idx = zip
        .find(&name)
        .ok_or_else(|| Error::format(&zip.path, format!("no `{name}` in the archive")))?;
    let pkl = zip.read(idx)?;
    pickle::parse(&pkl, &zip.path).map_err(|e| match e {
        Error::Format { file, msg } => Error::Format {
            file,
            msg: format!("{}: {msg}", printable(&name)),
        },
        e => e,
    })
}

// === Interpreting the tree ===

fn is_global(v: &Value, module: &str, name: &str) -> bool {
    v.as_global() == Some((module, name))
}

/// The items of a dict or `collections.OrderedDict`, or `None` if `v` is neither.
fn dict_items(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    match v {
        Value::Dict(items) => Some(items.iter().map(|(k, x)| (k, x)).collect()),
        Value::Call(c) if is_global(&c.func, "collections", "OrderedDict") => {
            let mut out = Vec::new();
            // `OrderedDict()` filled by SETITEMS (what pickle writes), or the older
            // `OrderedDict([(k, v), ...])` form.
            match &c.args {
                Value::Tuple(a) if a.is_empty() => {}
                Value::Tuple(a) => match a.as_slice() {
                    [Value::List(pairs)] => {
                        for p in pairs {
                            match p {
                                Value::Tuple(kv) => match kv.as_slice() {
                                    [k, x] => out.push((k, x)),
                                    _ => return None,
                                },
                                _ => return None,
                            }
                        }
                    }
                    _ => return None,
                },
                _ => return None,
            }
            out.extend(c.dict_items.iter().map(|(k, x)| (k, x)));
            Some(out)
        }
        _ => None,
    }
}

fn lookup<'v>(items: &[(&'v Value, &'v Value)], key: &str) -> Option<&'v Value> {
    items
        .iter()
        .rev()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| *v)
}

fn is_tensor_call(v: &Value) -> bool {
    match v {
        Value::Call(c) => matches!(
            c.func.as_global(),
            Some((
                "torch._utils",
                "_rebuild_tensor_v2" | "_rebuild_parameter" | "_rebuild_parameter_with_state"
            ))
        ),
        _ => false,
    }
}

type Items<'v> = Vec<(&'v Value, &'v Value)>;

fn select_state_dict<'v>(path: &Path, top: &'v Value) -> Result<(Option<String>, Items<'v>)> {
    let Some(items) = dict_items(top) else {
        let msg = match top {
            Value::Call(_) if !is_tensor_call(top) => format!(
                "the top-level object is {}, which is not allowed: a checkpoint must hold only \
                 tensors in a dict, so the file was rejected (nothing in it was executed). If \
                 this is a whole pickled model, re-save it with \
                 `torch.save(model.state_dict(), path)`; if you did not make this file, it may \
                 be malicious: do not open it with `torch.load` either",
                top.describe()
            ),
            _ => format!(
                "the top-level object is {}, not a dict; expected a state dict (a dict of \
                 tensors) or a Lightning checkpoint with a `state_dict` entry: re-save with \
                 `torch.save(model.state_dict(), path)`",
                top.describe()
            ),
        };
        return Err(Error::format(path, msg));
    };
    for key in ["state_dict", "model", "module"] {
        let Some(v) = lookup(&items, key) else {
            continue;
        };
        if let Some(inner) = dict_items(v) {
            return Ok((Some(key.to_string()), inner));
        }
        if is_tensor_call(v) {
            // A tensor that happens to be named like this in a flat state dict.
            continue;
        }
        return Err(Error::format(
            path,
            format!(
                "top-level entry `{key}` is {}, not a dict of tensors; a checkpoint must hold \
                 only tensors, so the file was rejected (nothing in it was executed). If it is a \
                 whole pickled model, re-save with `torch.save(model.state_dict(), path)`",
                v.describe()
            ),
        ));
    }
    Ok((None, items))
}

/// Element type of a storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DType {
    F32,
    F16,
    BF16,
    F64,
    /// Any non-float type: its name, e.g. `"int64"`.
    Other(&'static str),
}

impl DType {
    fn is_float(self) -> bool {
        !matches!(self, DType::Other(_))
    }

    fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F64 => 8,
            // Non-float data is never read.
            DType::Other(_) => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F64 => "float64",
            DType::Other(n) => n,
        }
    }

    /// From the storage class (`torch.FloatStorage`) or dtype (`torch.float32`) name.
    fn from_torch_name(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" | "float32" | "float" => DType::F32,
            "HalfStorage" | "float16" | "half" => DType::F16,
            "BFloat16Storage" | "bfloat16" => DType::BF16,
            "DoubleStorage" | "float64" | "double" => DType::F64,
            "LongStorage" | "int64" | "long" => DType::Other("int64"),
            "IntStorage" | "int32" | "int" => DType::Other("int32"),
            "ShortStorage" | "int16" | "short" => DType::Other("int16"),
            "CharStorage" | "int8" => DType::Other("int8"),
            "ByteStorage" | "uint8" | "UntypedStorage" => DType::Other("uint8"),
            "BoolStorage" | "bool" => DType::Other("bool"),
            "ComplexFloatStorage" | "complex64" => DType::Other("complex64"),
            "ComplexDoubleStorage" | "complex128" => DType::Other("complex128"),
            "QInt8Storage" => DType::Other("qint8"),
            "QUInt8Storage" => DType::Other("quint8"),
            "QInt32Storage" => DType::Other("qint32"),
            "QUInt4x2Storage" => DType::Other("quint4x2"),
            "QUInt2x4Storage" => DType::Other("quint2x4"),
            _ => return None,
        })
    }
}

/// A tensor as the pickle describes it: a strided view of one storage.
#[derive(Clone, Debug)]
struct Spec {
    storage_key: String,
    dtype: DType,
    /// Elements in the storage, as the pickle declares it.
    storage_numel: u64,
    offset: u64,
    shape: Vec<usize>,
    stride: Vec<u64>,
}

/// The allowlisted tensor constructors; anything else is an error message naming it.
fn tensor_spec(v: &Value) -> std::result::Result<Spec, String> {
    tensor_spec_inner(v, true)
}

fn tensor_spec_inner(v: &Value, allow_parameter: bool) -> std::result::Result<Spec, String> {
    let Value::Call(c) = v else {
        return Err(format!("is {}, not a tensor", v.describe()));
    };
    let Some((module, name)) = c.func.as_global() else {
        return Err(format!("is {}, not a tensor", v.describe()));
    };
    let args = match &c.args {
        Value::Tuple(a) => a.as_slice(),
        other => {
            return Err(format!(
                "is {} with {} as arguments, not a tuple",
                v.describe(),
                other.describe()
            ))
        }
    };
    match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2") => rebuild_tensor(args),
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")
            if allow_parameter =>
        {
            let t = args
                .first()
                .ok_or_else(|| format!("is {} without arguments", v.describe()))?;
            tensor_spec_inner(t, false).map_err(|e| format!("is a parameter whose tensor {e}"))
        }
        _ => Err(format!(
            "is {}, which is not an allowed tensor constructor (allowed: \
             torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter, \
             torch._utils._rebuild_parameter_with_state)",
            v.describe()
        )),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks
/// [, metadata])`; the arguments after `stride` do not affect the values and are ignored.
fn rebuild_tensor(args: &[Value]) -> std::result::Result<Spec, String> {
    let [storage, offset, size, stride, ..] = args else {
        return Err(format!(
            "is a call of `torch._utils._rebuild_tensor_v2` with {} arguments, expected at \
             least 4",
            args.len()
        ));
    };
    // ('storage', <storage class>, key, location, numel)
    let Value::PersId(pid) = storage else {
        return Err(format!(
            "is a tensor whose storage is {}, not a storage reference",
            storage.describe()
        ));
    };
    let parts = match pid.as_ref() {
        Value::Tuple(p) => p.as_slice(),
        other => {
            return Err(format!(
                "is a tensor whose storage reference is {}, not a tuple",
                other.describe()
            ))
        }
    };
    let [tag, class, key, _location, numel, ..] = parts else {
        return Err(format!(
            "is a tensor whose storage reference has {} fields, expected 5",
            parts.len()
        ));
    };
    if tag.as_str() != Some("storage") {
        return Err(format!(
            "is a tensor whose storage reference is tagged {}, expected \"storage\"",
            tag.describe()
        ));
    }
    let dtype = match class.as_global() {
        Some(("torch", n)) => DType::from_torch_name(n),
        _ => None,
    }
    .ok_or_else(|| {
        format!(
            "is a tensor whose storage type is {}, which is not an allowed torch storage class",
            class.describe()
        )
    })?;
    let storage_key = match key {
        Value::Str(s) => s.clone(),
        other => {
            return Err(format!(
                "is a tensor whose storage key is {}, not a string",
                other.describe()
            ))
        }
    };
    let storage_numel = non_negative(numel, "storage size")?;
    let offset = non_negative(offset, "storage offset")?;
    let shape: Vec<usize> = int_tuple(size, "size")?
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| format!("has a dimension {d} too large")))
        .collect::<std::result::Result<_, _>>()?;
    let stride = int_tuple(stride, "stride")?;
    if shape.len() != stride.len() {
        return Err(format!(
            "is a tensor with {} sizes but {} strides",
            shape.len(),
            stride.len()
        ));
    }
    Ok(Spec {
        storage_key,
        dtype,
        storage_numel,
        offset,
        shape,
        stride,
    })
}

fn non_negative(v: &Value, what: &str) -> std::result::Result<u64, String> {
    match v {
        Value::Int(i) => {
            u64::try_from(*i).map_err(|_| format!("is a tensor with a negative {what} ({i})"))
        }
        other => Err(format!(
            "is a tensor whose {what} is {}, not an integer",
            other.describe()
        )),
    }
}

/// A tuple of non-negative ints (a size or stride), also as `torch.Size((...))`.
fn int_tuple(v: &Value, what: &str) -> std::result::Result<Vec<u64>, String> {
    match v {
        Value::Tuple(items) => items.iter().map(|i| non_negative(i, what)).collect(),
        Value::Call(c) if is_global(&c.func, "torch", "Size") => match &c.args {
            Value::Tuple(a) => match a.as_slice() {
                [inner @ Value::Tuple(_)] => int_tuple(inner, what),
                _ => Err(format!("is a tensor with a malformed torch.Size {what}")),
            },
            _ => Err(format!("is a tensor with a malformed torch.Size {what}")),
        },
        other => Err(format!(
            "is a tensor whose {what} is {}, not a tuple of integers",
            other.describe()
        )),
    }
}

// === Tensor data ===

/// Fill `dst` with the strided view `spec` of storage elements read as `bytes`, which start
/// at storage element `base`; `conv` turns one element's little-endian bytes into a value.
/// The view was checked against the storage when the checkpoint was opened; a view reaching
/// outside `bytes` is still an error here, never a panic.
fn gather_into<T>(
    bytes: &[u8],
    base: u64,
    spec: &Spec,
    dst: &mut [T],
    conv: impl Fn(&[u8]) -> T,
) -> std::result::Result<(), String> {
    let es = spec.dtype.size();
    let out_of_range = || "view out of range".to_string();
    let numel = dst.len();
    if numel == 0 {
        return Ok(());
    }
    // Contiguous (row-major, ignoring size-1 dims): one slice conversion.
    let mut expect = 1u64;
    let mut contiguous = true;
    for (&d, &s) in spec.shape.iter().zip(&spec.stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
            break;
        }
        expect = expect.saturating_mul(d as u64);
    }
    let index = |i: u64| -> std::result::Result<usize, String> {
        i.checked_sub(base)
            .and_then(|k| usize::try_from(k).ok())
            .and_then(|k| k.checked_mul(es))
            .ok_or_else(out_of_range)
    };
    if contiguous {
        let start = index(spec.offset)?;
        let raw = numel
            .checked_mul(es)
            .and_then(|n| bytes.get(start..start.checked_add(n)?))
            .ok_or_else(out_of_range)?;
        for (d, c) in dst.iter_mut().zip(raw.chunks_exact(es)) {
            *d = conv(c);
        }
        return Ok(());
    }

    // General strided gather: an odometer over the indices, innermost dimension fastest.
    let ndim = spec.shape.len();
    let mut idx = vec![0usize; ndim];
    for d in dst.iter_mut() {
        let pos: u64 = spec.offset
            + idx
                .iter()
                .zip(&spec.stride)
                .map(|(&i, &s)| i as u64 * s)
                .sum::<u64>();
        let at = index(pos)?;
        let c = bytes.get(at..at + es).ok_or_else(out_of_range)?;
        *d = conv(c);
        for (i, &d) in idx.iter_mut().zip(&spec.shape).rev() {
            *i += 1;
            if *i < d {
                break;
            }
            *i = 0;
        }
    }
    Ok(())
}

/// Little-endian element bytes → `f32`.
fn converter(dtype: DType) -> fn(&[u8]) -> f32 {
    fn f32_(c: &[u8]) -> f32 {
        f32::from_le_bytes(arr(c))
    }
    fn f64_(c: &[u8]) -> f32 {
        f64::from_le_bytes(arr(c)) as f32
    }
    fn f16_(c: &[u8]) -> f32 {
        f16_to_f32(u16::from_le_bytes(arr(c)))
    }
    fn bf16_(c: &[u8]) -> f32 {
        f32::from_bits(u32::from(u16::from_le_bytes(arr(c))) << 16)
    }
    fn none(_: &[u8]) -> f32 {
        f32::NAN
    }
    match dtype {
        DType::F32 => f32_,
        DType::F64 => f64_,
        DType::F16 => f16_,
        DType::BF16 => bf16_,
        DType::Other(_) => none,
    }
}

/// The first `N` bytes of `c` (callers pass exactly `N`; shorter input is zero-padded).
fn arr<const N: usize>(c: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    for (d, s) in a.iter_mut().zip(c) {
        *d = *s;
    }
    a
}

/// IEEE half → single, exact (normals, subnormals, infinities, NaN payloads).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: value f · 2^-24, exactly representable as a normal f32.
            let v = f as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

// === Zip archive reading ===

/// One entry of the central directory.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    flags: u16,
    method: u16,
    crc: u32,
    comp_size: u64,
    size: u64,
    local_offset: u64,
}

/// A zip archive read through its central directory (stored and deflate entries, zip64).
/// Small on purpose: a checkpoint needs no more, and entries are read on demand with seeks.
struct Zip {
    path: PathBuf,
    /// The archive's bytes: the file, or a buffer in memory.
    file: Box<dyn ReadSeek>,
    len: u64,
    entries: Vec<Entry>,
}

/// What a [`Zip`] reads from.
pub(crate) trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CDIR_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

/// Little-endian field readers over a byte slice, `None` past the end.
fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(arr(b.get(at..at + 2)?)))
}
fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(arr(b.get(at..at + 4)?)))
}
fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(arr(b.get(at..at + 8)?)))
}

impl Zip {
    fn open(path: &Path) -> Result<Zip> {
        let file = File::open(path).map_err(Error::io(path))?;
        let len = file.metadata().map_err(Error::io(path))?.len();
        Zip::from_source(Box::new(file), len, path)
    }

    fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Zip> {
        let len = bytes.len() as u64;
        Zip::from_source(Box::new(std::io::Cursor::new(bytes)), len, path)
    }

    /// The archive of `len` bytes read from `file`, named `path` in errors.
    fn from_source(mut file: Box<dyn ReadSeek>, len: u64, path: &Path) -> Result<Zip> {
        let mut head = [0u8; 16];
        let n = read_up_to(&mut file, &mut head).map_err(Error::io(path))?;
        let head = head.get(..n).unwrap_or(&[]);
        if !head.starts_with(b"PK") {
            return Err(Error::format(path, not_zip_msg(head)));
        }
        let mut zip = Zip {
            path: path.to_path_buf(),
            file,
            len,
            entries: Vec::new(),
        };
        zip.entries = zip.read_directory()?;
        Ok(zip)
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::format(
            &self.path,
            format!(
                "{msg}; the zip archive is truncated or corrupt: re-download the checkpoint or \
                 re-save it"
            ),
        )
    }

    fn read_at(&mut self, at: u64, n: usize) -> Result<Vec<u8>> {
        let fits = at.checked_add(n as u64).is_some_and(|end| end <= self.len);
        if !fits {
            return Err(self.err(format!(
                "a record at byte {at} ({n} bytes) runs past the end of the file ({} bytes)",
                self.len
            )));
        }
        let mut buf = vec![0u8; n];
        let path = self.path.clone();
        self.file
            .seek(SeekFrom::Start(at))
            .and_then(|_| self.file.read_exact(&mut buf))
            .map_err(Error::io(&path))?;
        Ok(buf)
    }

    fn read_directory(&mut self) -> Result<Vec<Entry>> {
        // The end-of-central-directory record is 22 bytes plus a comment of up to 64 KiB.
        let tail_len = self.len.min(22 + 0xffff);
        let tail_start = self.len - tail_len;
        let tail = self.read_at(tail_start, tail_len as usize)?;
        let eocd = (0..tail.len().saturating_sub(21))
            .rev()
            .find(|&i| le32(&tail, i) == Some(EOCD_SIG))
            .ok_or_else(|| self.err("no end-of-central-directory record"))?;
        let field = |at: usize| le16(&tail, eocd + at).unwrap_or(0);
        let mut count = u64::from(field(10));
        let mut cd_size = u64::from(le32(&tail, eocd + 12).unwrap_or(0));
        let mut cd_offset = u64::from(le32(&tail, eocd + 16).unwrap_or(0));
        if count == 0xffff || cd_size == 0xffff_ffff || cd_offset == 0xffff_ffff {
            // Zip64: a locator just before the record points at the zip64 record.
            let eocd_at = tail_start + eocd as u64;
            let loc_at = eocd_at
                .checked_sub(20)
                .ok_or_else(|| self.err("zip64 locator missing"))?;
            let loc = self.read_at(loc_at, 20)?;
            if le32(&loc, 0) != Some(ZIP64_LOCATOR_SIG) {
                return Err(self.err("zip64 locator missing"));
            }
            let rec_at = le64(&loc, 8).unwrap_or(u64::MAX);
            let rec = self.read_at(rec_at, 56)?;
            if le32(&rec, 0) != Some(ZIP64_EOCD_SIG) {
                return Err(self.err("zip64 end-of-central-directory record missing"));
            }
            count = le64(&rec, 32).unwrap_or(0);
            cd_size = le64(&rec, 40).unwrap_or(0);
            cd_offset = le64(&rec, 48).unwrap_or(0);
        }
        let cd_len = usize::try_from(cd_size)
            .map_err(|_| self.err(format!("central directory of {cd_size} bytes")))?;
        let cd = self.read_at(cd_offset, cd_len)?;
        let mut entries = Vec::new();
        let mut at = 0usize;
        for i in 0..count {
            let bad = || self.err(format!("central directory entry {i} is malformed"));
            if le32(&cd, at) != Some(CDIR_SIG) {
                return Err(bad());
            }
            let flags = le16(&cd, at + 8).ok_or_else(bad)?;
            let method = le16(&cd, at + 10).ok_or_else(bad)?;
            let crc = le32(&cd, at + 16).ok_or_else(bad)?;
            let mut comp_size = u64::from(le32(&cd, at + 20).ok_or_else(bad)?);
            let mut size = u64::from(le32(&cd, at + 24).ok_or_else(bad)?);
            let name_len = usize::from(le16(&cd, at + 28).ok_or_else(bad)?);
            let extra_len = usize::from(le16(&cd, at + 30).ok_or_else(bad)?);
            let comment_len = usize::from(le16(&cd, at + 32).ok_or_else(bad)?);
            let mut local_offset = u64::from(le32(&cd, at + 42).ok_or_else(bad)?);
            let name = cd.get(at + 46..at + 46 + name_len).ok_or_else(bad)?;
            let name = String::from_utf8_lossy(name).into_owned();
            let extra_at = at + 46 + name_len;
            let extra = cd.get(extra_at..extra_at + extra_len).ok_or_else(bad)?;
            if size == 0xffff_ffff || comp_size == 0xffff_ffff || local_offset == 0xffff_ffff {
                // The zip64 extra field holds, in this order, only the fields that overflowed.
                let z = zip64_extra(extra).ok_or_else(bad)?;
                let mut k = 0;
                let mut next = || {
                    let v = le64(z, k);
                    k += 8;
                    v
                };
                if size == 0xffff_ffff {
                    size = next().ok_or_else(bad)?;
                }
                if comp_size == 0xffff_ffff {
                    comp_size = next().ok_or_else(bad)?;
                }
                if local_offset == 0xffff_ffff {
                    local_offset = next().ok_or_else(bad)?;
                }
            }
            entries.push(Entry {
                name,
                flags,
                method,
                crc,
                comp_size,
                size,
                local_offset,
            });
            at = extra_at + extra_len + comment_len;
        }
        Ok(entries)
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.entries.iter().rposition(|e| e.name == name)
    }

    /// The archive's top folder: the one holding `data.pkl` (`archive`, or the file's stem).
    fn root(&self) -> Result<String> {
        let mut roots = self
            .entries
            .iter()
            .filter_map(|e| e.name.strip_suffix("/data.pkl"))
            .filter(|r| !r.contains('/'));
        let root = roots.next().ok_or_else(|| {
            Error::format(
                &self.path,
                "a zip archive without `<folder>/data.pkl`: not a torch.save checkpoint",
            )
        })?;
        if roots.next().is_some() {
            return Err(Error::format(
                &self.path,
                "the archive has several `<folder>/data.pkl`: not a single torch.save checkpoint",
            ));
        }
        Ok(root.to_string())
    }

    /// Entry `idx` and where its data starts, checked to lie inside the file.
    fn locate(&mut self, idx: usize) -> Result<(Entry, u64)> {
        let e = self
            .entries
            .get(idx)
            .cloned()
            .ok_or_else(|| self.err("entry index out of range"))?;
        if e.flags & 1 != 0 {
            return Err(Error::format(
                &self.path,
                format!("entry `{}` is encrypted; torch never writes that", e.name),
            ));
        }
        // The local header's name and extra lengths may differ from the central directory's
        // (torch pads the extra field to align the data), so read them here.
        let local = self.read_at(e.local_offset, 30)?;
        if le32(&local, 0) != Some(LOCAL_SIG) {
            return Err(self.err(format!("entry `{}` has no local header", e.name)));
        }
        let skip = 30
            + u64::from(le16(&local, 26).unwrap_or(0))
            + u64::from(le16(&local, 28).unwrap_or(0));
        let data_at = e.local_offset + skip;
        let end_ok = data_at
            .checked_add(e.comp_size)
            .is_some_and(|end| end <= self.len);
        if !end_ok {
            return Err(self.err(format!(
                "entry `{}` ({} bytes at byte {data_at}) runs past the end of the file ({} bytes)",
                e.name, e.comp_size, self.len
            )));
        }
        Ok((e, data_at))
    }

    /// The uncompressed size entry `idx` declares, if the archive can hold it: a stored entry
    /// within the file, a deflated one within deflate's largest ratio (about 1032:1) of its
    /// compressed size. Checked before the size is trusted to size a read.
    fn checked_size(&self, idx: usize) -> Result<u64> {
        let e = self
            .entries
            .get(idx)
            .ok_or_else(|| self.err("entry index out of range"))?;
        let fits = match e.method {
            0 => e.size == e.comp_size && e.size <= self.len,
            _ => e.comp_size <= self.len && e.size <= e.comp_size.saturating_mul(1032),
        };
        if !fits {
            return Err(self.err(format!(
                "entry `{}` declares {} bytes ({} stored) in a file of {} bytes",
                e.name, e.size, e.comp_size, self.len
            )));
        }
        Ok(e.size)
    }

    /// Bytes `start..start + n` of the uncompressed entry `idx`. A stored entry is read only in
    /// that range (CRC-checked when the range is the whole entry); a deflated one is inflated
    /// whole (and CRC-checked) first.
    fn read_range(&mut self, idx: usize, start: u64, n: usize) -> Result<Vec<u8>> {
        let (e, data_at) = self.locate(idx)?;
        let end = start.checked_add(n as u64);
        if end.is_none_or(|end| end > e.size) {
            return Err(self.err(format!(
                "entry `{}` ({} bytes) has no bytes {start}..{start}+{n}",
                e.name, e.size
            )));
        }
        if e.method == 0 && start == 0 && n as u64 == e.size {
            return self.read(idx);
        }
        if e.method == 0 {
            if e.size != e.comp_size {
                return Err(self.err(format!("stored entry `{}` has two sizes", e.name)));
            }
            return self.read_at(data_at + start, n);
        }
        let all = self.read(idx)?;
        let from = usize::try_from(start).unwrap_or(usize::MAX);
        all.get(from..from.saturating_add(n))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| self.err(format!("entry `{}` is shorter than declared", e.name)))
    }

    /// The uncompressed bytes of entry `idx`, CRC-checked.
    fn read(&mut self, idx: usize) -> Result<Vec<u8>> {
        let (e, data_at) = self.locate(idx)?;
        let path = self.path.clone();
        let too_big = || {
            Error::format(
                &path,
                format!(
                    "entry `{}` of {} bytes is too large for memory",
                    e.name, e.size
                ),
            )
        };
        let n = usize::try_from(e.size).map_err(|_| too_big())?;
        let out = match e.method {
            0 => {
                if e.size != e.comp_size {
                    return Err(self.err(format!("stored entry `{}` has two sizes", e.name)));
                }
                self.read_at(data_at, n)?
            }
            8 => {
                self.file
                    .seek(SeekFrom::Start(data_at))
                    .map_err(Error::io(&path))?;
                // Deflate expands at most ~1032:1, so a larger declared size is a lie: do not
                // let it reserve memory.
                let cap = n.min(usize::try_from(e.comp_size.saturating_mul(1032)).unwrap_or(n));
                let mut out = Vec::with_capacity(cap);
                let mut dec = flate2::read::DeflateDecoder::new((&mut self.file).take(e.comp_size));
                let res = (&mut dec)
                    .take(e.size.saturating_add(1))
                    .read_to_end(&mut out);
                drop(dec);
                if let Err(err) = res {
                    return Err(self.err(format!("entry `{}`: bad deflate data ({err})", e.name)));
                }
                out
            }
            m => {
                return Err(Error::format(
                    &self.path,
                    format!(
                        "entry `{}` uses zip compression method {m}; only stored and deflate are \
                         supported: re-save the checkpoint with torch.save",
                        e.name
                    ),
                ))
            }
        };
        if out.len() as u64 != e.size {
            return Err(self.err(format!(
                "entry `{}` holds {} bytes, the directory says {}",
                e.name,
                out.len(),
                e.size
            )));
        }
        let mut crc = flate2::Crc::new();
        crc.update(&out);
        if crc.sum() != e.crc {
            return Err(self.err(format!("entry `{}` fails its CRC check", e.name)));
        }
        Ok(out)
    }
}

/// The data of the zip64 extended-information extra field (id 1), if present.
fn zip64_extra(extra: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let id = le16(extra, at)?;
        let n = usize::from(le16(extra, at + 2)?);
        let data = extra.get(at + 4..at + 4 + n)?;
        if id == 1 {
            return Some(data);
        }
        at += 4 + n;
    }
    None
}

/// Fill `buf` as far as the file allows.
fn read_up_to(f: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let Some(rest) = buf.get_mut(n..) else {
            break;
        };
        match f.read(rest)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Why a file that is not a zip archive cannot be read, and what to do.
fn not_zip_msg(head: &[u8]) -> String {
    // torch < 1.6 (or `_use_new_zipfile_serialization=False`) starts with the pickled magic
    // number 0x1950a86a20f9469cfc6c (PROTO 2, LONG1 of 10 bytes).
    const LEGACY: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
    if head.starts_with(LEGACY) {
        "this is the legacy (pre-1.6) PyTorch serialization format, which is not supported; \
         load it in Python with PyTorch and re-save it with a current version \
         (`torch.save(torch.load(path, weights_only=True), new_path)`), or convert it to \
         safetensors"
            .into()
    } else if head.first() == Some(&0x80) {
        "this is a bare pickle, not a torch.save zip checkpoint; re-save the state dict with \
         `torch.save` from PyTorch >= 1.6 or convert it to safetensors"
            .into()
    } else if head.is_empty() {
        "the file is empty; re-download the checkpoint".into()
    } else {
        format!(
            "not a PyTorch checkpoint (a zip archive starts with `PK`, this file with {:02x?}); \
             expected a `torch.save` file such as pytorch_model.bin or a Lightning .ckpt",
            head.get(..4).unwrap_or(head)
        )
    }
}
