//! Opening data files whatever their compression, and reading plain-text corpora as bytes.
//!
//! Compression is detected from the file's first bytes (its magic number), never from its
//! extension:
//! - gzip (`1f 8b`), read with a multi-member decoder so that BGZF files (many concatenated gzip
//!   members, as produced by `bgzip`) and `cat a.gz b.gz` are read to the end;
//! - xz (`fd 37 7a 58 5a 00`), concatenated streams included;
//! - anything else is read as it is.
//!
//! Every error is a [`crate::Error`] that names the file: a missing file, a directory, an empty
//! file, and compressed data that ends early ("was the download cut short?") or is corrupt.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::path::Path;

use crate::error::{Error, Result};

/// Buffer size of the readers returned by [`open_decompressed`].
const BUF_SIZE: usize = 1 << 16;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// How a file's bytes are compressed, detected from its magic number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed (or in a format this crate does not decode).
    None,
    /// gzip, including multi-member files such as BGZF.
    Gzip,
    /// xz (LZMA2), including concatenated streams.
    Xz,
}

impl Compression {
    /// Detect the compression from the first bytes of a file (up to 6 are looked at; pass all of
    /// them, the whole file if it is shorter).
    pub fn detect(magic: &[u8]) -> Self {
        if magic.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if magic.starts_with(XZ_MAGIC) || (magic.len() >= 3 && XZ_MAGIC.starts_with(magic)) {
            // (A file shorter than the xz magic but starting like it is a truncated xz file:
            // the decoder then reports the truncation.)
            Compression::Xz
        } else {
            Compression::None
        }
    }

    /// `"gzip"`, `"xz"`, or `"uncompressed"`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Open `path` for reading and report missing files, directories and empty files clearly.
fn open_file(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        file: path.to_path_buf(),
        source: if source.kind() == io::ErrorKind::NotFound {
            io::Error::new(io::ErrorKind::NotFound, "file not found; check the path")
        } else {
            source
        },
    })?;
    if meta.is_dir() {
        return Err(Error::format(path, "is a directory, expected a file"));
    }
    if meta.is_file() && meta.len() == 0 {
        return Err(Error::format(path, "empty file (0 bytes)"));
    }
    File::open(path).map_err(|source| Error::Io {
        file: path.to_path_buf(),
        source,
    })
}

/// Turn an I/O error met while reading (and decompressing) `path` into a clear [`Error`].
///
/// `at` says where in the data the error happened (e.g. "line 12, record 'chr1'"); it may be
/// empty. Truncated compressed data gets the hint "was the download cut short?".
pub fn read_error(path: &Path, compression: Compression, at: &str, e: io::Error) -> Error {
    let at = if at.is_empty() {
        String::new()
    } else {
        format!(" (at {at})")
    };
    match compression {
        Compression::None => Error::Io {
            file: path.to_path_buf(),
            source: io::Error::new(e.kind(), format!("read failed{at}: {e}")),
        },
        Compression::Gzip | Compression::Xz => {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::format(
                    path,
                    format!(
                        "{compression} data ends before its end marker{at}: the file is truncated; \
                         was the download cut short?"
                    ),
                )
            } else {
                Error::format(
                    path,
                    format!(
                        "corrupt {compression} data{at}: {e}; the file is damaged \
                         (was the download cut short?)"
                    ),
                )
            }
        }
    }
}

/// Open `path` and return a buffered reader over its decompressed bytes, with the detected
/// [`Compression`].
///
/// Errors (naming the file): missing file, directory, empty file (0 bytes). Errors met later
/// while reading are plain `std::io::Error`s; pass them through [`read_error`] (as
/// [`read_text`] and the FASTA reader do) to get the file name and the truncation hint.
pub fn open_decompressed(path: impl AsRef<Path>) -> Result<(Box<dyn BufRead + Send>, Compression)> {
    let path = path.as_ref();
    decompressing(open_file(path)?, path)
}

/// [`open_decompressed`] on bytes that are not in a file (or not read from one here): `raw`
/// gives the file's bytes, `path` names it in errors. The path-taking readers call it; the
/// fuzz targets (`fuzz/` in the repository) call it on bytes in memory.
pub fn decompressing(
    mut raw: impl Read + Send + 'static,
    path: &Path,
) -> Result<(Box<dyn BufRead + Send>, Compression)> {
    // Read the magic bytes ourselves (a short read is possible on pipes), then chain them back.
    let mut magic = [0u8; 6];
    let mut n = 0;
    while n < magic.len() {
        match raw.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Io {
                    file: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    if n == 0 {
        return Err(Error::format(path, "empty file (0 bytes)"));
    }
    let compression = Compression::detect(&magic[..n]);
    let raw = BufReader::with_capacity(BUF_SIZE, Cursor::new(magic[..n].to_vec()).chain(raw));
    let reader: Box<dyn BufRead + Send> = match compression {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            BUF_SIZE,
            flate2::bufread::MultiGzDecoder::new(raw),
        )),
        Compression::Xz => Box::new(BufReader::with_capacity(
            BUF_SIZE,
            lzma_rust2::XzReader::new(raw, true),
        )),
    };
    Ok((reader, compression))
}

/// Read a whole plain-text file (gzip- or xz-compressed or not) as bytes, e.g. a corpus for a
/// byte-level model.
///
/// Errors (naming the file): missing file, directory, empty file (0 bytes, or nothing after
/// decompression), truncated or corrupt compressed data.
pub fn read_text(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    read_text_from(open_file(path)?, path)
}

/// [`read_text`] on bytes that are not in a file: `raw` gives the (possibly compressed)
/// bytes, `path` names them in errors.
pub fn read_text_from(raw: impl Read + Send + 'static, path: &Path) -> Result<Vec<u8>> {
    let (mut reader, compression) = decompressing(raw, path)?;
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(path, compression, "", e))?;
    if bytes.is_empty() {
        return Err(Error::format(
            path,
            format!("empty file: no data after {compression} decompression"),
        ));
    }
    Ok(bytes)
}
