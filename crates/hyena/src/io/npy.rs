//! `.npy` files (NumPy format 1.0) of little-endian `float32`, written as a stream.
//!
//! [`NpyWriter`] takes rows as they are computed (record by record: the row count is not known
//! in advance), reserving a fixed-size header that [`NpyWriter::finish`] fills in with the final
//! shape. It writes to a temp file beside the target and renames it at the end, so an
//! interrupted run never leaves a truncated `.npy` under the final name. [`read_f32`] reads
//! such files back (C order, `<f4` only).

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Bytes reserved for magic, version, header length and the header dict (a multiple of 64).
pub const HEADER: usize = 128;

/// A streaming writer of a 2-d `float32` array `[rows, cols]`.
pub struct NpyWriter {
    path: PathBuf,
    tmp: PathBuf,
    /// `None` once finished.
    out: Option<BufWriter<File>>,
    cols: usize,
    rows: u64,
    /// The temp file is a resumable `OUT.partial` ([`NpyWriter::resumable`]): kept on errors.
    keep: bool,
}

impl Drop for NpyWriter {
    /// An unfinished writer (an error on the way) removes its temp file, unless it is
    /// resumable.
    fn drop(&mut self) {
        if self.out.take().is_some() && !self.keep {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl std::fmt::Debug for NpyWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpyWriter")
            .field("path", &self.path)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

/// The [`HEADER`] bytes of a `<f4` array of `shape`, as [`NpyWriter`] writes them.
pub fn header(shape: &[u64]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    let mut h = Vec::with_capacity(HEADER);
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    let len = HEADER - 10;
    h.extend_from_slice(&(len as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    while h.len() < HEADER - 1 {
        h.push(b' ');
    }
    h.push(b'\n');
    h
}

impl NpyWriter {
    /// Start `path` (written as a temp file until [`finish`](Self::finish)) for rows of
    /// `cols` values.
    pub fn create(path: impl AsRef<Path>, cols: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let tmp = crate::io::safetensors::temp_path_beside(&path);
        let f = File::create(&tmp).map_err(Error::io(&path))?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        out.write_all(&[0u8; HEADER]).map_err(Error::io(&path))?;
        Ok(NpyWriter {
            path,
            tmp,
            out: Some(out),
            cols,
            rows: 0,
            keep: false,
        })
    }

    /// A writer of `path` that grows in `partial` across runs: with `rows` 0 it starts the file
    /// afresh; otherwise it keeps the first `rows` rows already there (cutting off anything
    /// after them: a row torn by a kill) and appends after them. The partial file is kept when
    /// the writer is dropped unfinished, for the next resume.
    pub fn resumable(path: &Path, partial: &Path, cols: usize, rows: u64) -> Result<Self> {
        let keep_bytes = (HEADER as u64).saturating_add(rows.saturating_mul(cols as u64 * 4));
        let f = if rows == 0 {
            let mut f = File::create(partial).map_err(Error::io(partial))?;
            f.write_all(&[0u8; HEADER]).map_err(Error::io(partial))?;
            f
        } else {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(partial)
                .map_err(Error::io(partial))?;
            let len = f.metadata().map_err(Error::io(partial))?.len();
            if len < keep_bytes {
                return Err(Error::format(
                    partial,
                    format!(
                        "holds {} rows of {cols} values where {rows} were written: remove the                          shard's manifest to run it again",
                        len.saturating_sub(HEADER as u64) / (cols as u64 * 4).max(1)
                    ),
                ));
            }
            f.set_len(keep_bytes).map_err(Error::io(partial))?;
            f.seek(SeekFrom::End(0)).map_err(Error::io(partial))?;
            f
        };
        Ok(NpyWriter {
            path: path.to_path_buf(),
            tmp: partial.to_path_buf(),
            out: Some(BufWriter::with_capacity(1 << 20, f)),
            cols,
            rows,
            keep: true,
        })
    }

    /// Push the rows written so far to the file (a resumable writer's progress survives a
    /// kill after this).
    pub fn flush(&mut self) -> Result<()> {
        if let Some(o) = self.out.as_mut() {
            o.flush().map_err(Error::io(&self.tmp))?;
        }
        Ok(())
    }

    /// Append rows `[n, cols]` (row-major).
    pub fn write_rows(&mut self, data: &[f32]) -> Result<()> {
        if self.cols == 0 || !data.len().is_multiple_of(self.cols) {
            return Err(Error::shape(
                "npy write",
                "rows",
                format!("a multiple of {} values", self.cols),
                data.len(),
            ));
        }
        let mut buf = Vec::with_capacity(data.len().min(1 << 18) * 4);
        for chunk in data.chunks(1 << 18) {
            buf.clear();
            buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            if let Some(o) = self.out.as_mut() {
                o.write_all(&buf).map_err(Error::io(&self.path))?;
            }
        }
        self.rows += (data.len() / self.cols) as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Write the header with the final shape `[rows, cols]` and move the file into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        let h = header(&[self.rows, self.cols as u64]);
        let Some(out) = self.out.take() else {
            return Ok(self.path.clone());
        };
        let (path, tmp) = (self.path.clone(), self.tmp.clone());
        let done = (|| -> std::io::Result<()> {
            let mut f = out.into_inner().map_err(|x| x.into_error())?;
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&h)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &path)
        })();
        match done {
            Ok(()) => Ok(path),
            Err(source) => {
                let _ = std::fs::remove_file(&tmp);
                Err(Error::Io { file: path, source })
            }
        }
    }
}

/// Read a C-order `<f4` `.npy` file: `(shape, data)`.
pub fn read_f32(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<f32>)> {
    let path = path.as_ref();
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(Error::io(path))?;
    parse_f32(&bytes, path)
}

/// The shape of a C-order `<f4` `.npy` file from its first bytes (at least the header), and
/// where its data starts.
pub fn parse_header(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, usize)> {
    let fmt = |msg: String| Error::Format {
        file: path.to_path_buf(),
        msg,
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(fmt("not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(fmt(format!("unsupported .npy version {v}"))),
    };
    let dict = bytes
        .get(start..start + hlen)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .ok_or_else(|| fmt("truncated header".into()))?;
    if !dict.contains("'<f4'") || dict.contains("'fortran_order': True") {
        return Err(fmt(format!(
            "only C-order float32 arrays are read; header {dict}"
        )));
    }
    let shape: Vec<usize> = dict
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .map(|s| {
            s.trim()
                .trim_start_matches('(')
                .split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect()
        })
        .ok_or_else(|| fmt(format!("no shape in header {dict}")))?;
    Ok((shape, start + hlen))
}

/// [`read_f32`] on the bytes of a `.npy` file already in memory; `path` names it in errors.
/// Used by the fuzz targets (`fuzz/` in the repository).
pub fn parse_f32(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let fmt = |msg: String| Error::Format {
        file: path.to_path_buf(),
        msg,
    };
    let (shape, data_start) = parse_header(bytes, path)?;
    let body = &bytes[data_start..];
    // The declared size in bytes, `None` past `usize` (a corrupt shape).
    let need = shape.iter().try_fold(4usize, |a, &d| a.checked_mul(d));
    if need != Some(body.len()) {
        let need = need.map_or_else(|| "more".to_string(), |n| n.to_string());
        return Err(fmt(format!(
            "shape {shape:?} needs {need} data bytes, the file has {}; the file is truncated \
             or its header is corrupt",
            body.len()
        )));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_rows_round_trip() {
        let p = std::env::temp_dir().join(format!("hyena-npy-{}.npy", std::process::id()));
        let mut w = NpyWriter::create(&p, 3).unwrap();
        w.write_rows(&[1.0, 2.0, 3.0]).unwrap();
        w.write_rows(&[4.0, 5.0, 6.0, -7.5, 8.0, 9.0]).unwrap();
        assert!(w.write_rows(&[1.0]).is_err());
        assert!(!p.exists(), "the final name appears only at finish");
        w.finish().unwrap();
        let (shape, data) = read_f32(&p).unwrap();
        assert_eq!(shape, vec![3, 3]);
        assert_eq!(data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -7.5, 8.0, 9.0]);
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), HEADER + 36);
        assert_eq!(bytes[HEADER - 1], b'\n');
        let _ = std::fs::remove_file(&p);
    }
}
