//! Streaming FASTA / FASTQ reader, gzip (BGZF included) and xz transparently decompressed.
//!
//! - The format is detected from the first non-empty byte of the (decompressed) data: `>` is
//!   FASTA, `@` is FASTQ. Compression is detected from magic bytes (see [`super::text`]), never
//!   from the file name.
//! - Records are read one at a time: memory is bounded by the largest record, never the file.
//! - FASTA: a header line `>ID description`, then any number of sequence lines, concatenated.
//!   Whitespace inside sequence lines (spaces, tabs, `\r`) is dropped. Blank lines are ignored.
//! - FASTQ: `@ID description`, sequence line(s), a `+` line, then quality line(s) until there
//!   are as many quality characters as bases (so wrapped FASTQ and qualities starting with `@`
//!   are read correctly). Qualities are checked and dropped.
//! - [`SeqRecord::id`] is the header's first whitespace-separated word (the record name, e.g.
//!   `K-12-MG1655`); the rest of the header (the description) is not kept.
//! - Sequence bytes are returned as they are in the file (case kept, no alphabet check): the
//!   tokenizer decides what is in its alphabet and counts the rest
//!   ([`super::tokenizer::NucleotideTokenizer::encode_checked`]).
//!
//! Errors are [`crate::Error`]s naming the file and, where it applies, the record and the line
//! number (of the decompressed data): missing or empty file, data that is neither FASTA nor
//! FASTQ, a record with an empty sequence, a FASTQ record without its `+` line or whose quality
//! length differs from its sequence length, truncated or corrupt gzip/xz data. After an error
//! the iterator ends.
//!
//! ```no_run
//! # fn main() -> hyena::Result<()> {
//! for rec in hyena::io::fasta::open_records("data/ecoli/MG1655-K12.fasta.gz")? {
//!     let rec = rec?;
//!     println!("{}: {} bp", rec.id, rec.seq.len());
//! }
//! # Ok(())
//! # }
//! ```

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use super::text::{decompressing, open_decompressed, read_error, Compression};
use crate::error::{Error, Result};

/// One sequence record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqRecord {
    /// The header's first word, without the leading `>` or `@`.
    pub id: String,
    /// The sequence, lines concatenated and whitespace removed; case as in the file.
    pub seq: Vec<u8>,
}

/// The sequence file format, detected from the first non-empty byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqFormat {
    /// `>` header, then sequence lines.
    Fasta,
    /// `@` header, sequence, `+` line, qualities.
    Fastq,
}

impl SeqFormat {
    /// `"FASTA"` or `"FASTQ"`.
    pub fn name(self) -> &'static str {
        match self {
            SeqFormat::Fasta => "FASTA",
            SeqFormat::Fastq => "FASTQ",
        }
    }
}

/// A header line read ahead: the record it starts and where.
#[derive(Debug)]
struct Header {
    id: String,
    line: u64,
}

/// Streaming iterator over the records of a FASTA or FASTQ file; see the module docs.
pub struct RecordReader {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    compression: Compression,
    format: SeqFormat,
    /// The line buffer, reused.
    line: Vec<u8>,
    /// Number of the last line read (1-based).
    line_no: u64,
    /// The header of the next record, already read.
    pending: Option<Header>,
    /// Records returned so far.
    n_records: u64,
    done: bool,
}

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordReader")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("compression", &self.compression)
            .field("line", &self.line_no)
            .field("records", &self.n_records)
            .finish()
    }
}

/// Open a FASTA or FASTQ file (optionally gzip/BGZF or xz compressed) and detect its format.
///
/// Fails here, before any record is read, on a missing or empty file and on data that is
/// neither FASTA nor FASTQ.
pub fn open_records(path: impl AsRef<Path>) -> Result<RecordReader> {
    let path = path.as_ref();
    records_from(open_decompressed(path)?, path)
}

/// [`open_records`] on bytes that are not in a file: `raw` gives the (possibly compressed)
/// bytes, `path` names them in errors. Used by the fuzz targets (`fuzz/` in the repository)
/// and by readers that already hold a file's bytes.
pub fn open_records_from(raw: impl Read + Send + 'static, path: &Path) -> Result<RecordReader> {
    records_from(decompressing(raw, path)?, path)
}

/// The reader over `reader`'s records, its format detected from the first non-blank line.
fn records_from(
    (reader, compression): (Box<dyn BufRead + Send>, Compression),
    path: &Path,
) -> Result<RecordReader> {
    let mut r = RecordReader {
        path: path.to_path_buf(),
        reader,
        compression,
        format: SeqFormat::Fasta,
        line: Vec::new(),
        line_no: 0,
        pending: None,
        n_records: 0,
        done: false,
    };
    // The first non-blank line decides the format.
    loop {
        if !r.next_line("the first record")? {
            let what = match compression {
                Compression::None => "empty file: only blank lines".to_string(),
                c => format!("empty file: no data after {c} decompression"),
            };
            return Err(r.err(what));
        }
        if r.line_no == 1 && r.line.starts_with(b"\xef\xbb\xbf") {
            r.line.drain(..3); // UTF-8 byte-order mark
        }
        let text = trim(&r.line);
        match text.first() {
            None => continue,
            Some(b'>') => r.format = SeqFormat::Fasta,
            Some(b'@') => r.format = SeqFormat::Fastq,
            Some(_) => return Err(r.err(not_sequence_msg(r.line_no, text, compression))),
        }
        r.pending = Some(Header {
            id: header_id(&text[1..]),
            line: r.line_no,
        });
        return Ok(r);
    }
}

/// Read every record of a FASTA or FASTQ file into memory.
pub fn read_records(path: impl AsRef<Path>) -> Result<Vec<SeqRecord>> {
    open_records(path)?.collect()
}

impl RecordReader {
    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// FASTA or FASTQ, as detected.
    pub fn format(&self) -> SeqFormat {
        self.format
    }

    /// The compression detected from the file's magic bytes.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Number of records returned so far.
    pub fn records_read(&self) -> u64 {
        self.n_records
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Format {
            file: self.path.clone(),
            msg: msg.into(),
        }
    }

    /// Read the next line into `self.line` (newline removed). `Ok(false)` at end of data.
    /// `at` names the record being read, for the error message.
    fn next_line(&mut self, at: &str) -> Result<bool> {
        self.line.clear();
        let n = self.reader.read_until(b'\n', &mut self.line).map_err(|e| {
            let at = format!("line {}, reading {at}", self.line_no + 1);
            read_error(&self.path, self.compression, &at, e)
        })?;
        if n == 0 {
            return Ok(false);
        }
        self.line_no += 1;
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
        }
        Ok(true)
    }

    fn read_fasta(&mut self, header: Header) -> Result<SeqRecord> {
        let at = record_label(&header.id, self.n_records + 1);
        let mut seq = Vec::new();
        loop {
            if !self.next_line(&at)? {
                break;
            }
            let text = trim(&self.line);
            if text.first() == Some(&b'>') {
                self.pending = Some(Header {
                    id: header_id(&text[1..]),
                    line: self.line_no,
                });
                break;
            }
            seq.extend(
                self.line
                    .iter()
                    .copied()
                    .filter(|b| !b.is_ascii_whitespace()),
            );
        }
        if seq.is_empty() {
            return Err(self.err(format!(
                "line {}: FASTA {at} has an empty sequence (a header with no sequence lines after it)",
                header.line
            )));
        }
        Ok(SeqRecord { id: header.id, seq })
    }

    fn read_fastq(&mut self, header: Header) -> Result<SeqRecord> {
        let at = record_label(&header.id, self.n_records + 1);
        let mut seq = Vec::new();
        // Sequence lines until the '+' separator.
        loop {
            if !self.next_line(&at)? {
                return Err(self.err(format!(
                    "line {}: FASTQ {at} (header at line {}) has no '+' line: the file ends after \
                     its sequence; was it truncated?",
                    self.line_no, header.line
                )));
            }
            let text = trim(&self.line);
            match text.first() {
                Some(b'+') => break,
                Some(b'@') => {
                    return Err(self.err(format!(
                        "line {}: FASTQ {at} (header at line {}) has no '+' line before the next \
                         '@' header",
                        self.line_no, header.line
                    )))
                }
                _ => seq.extend(
                    self.line
                        .iter()
                        .copied()
                        .filter(|b| !b.is_ascii_whitespace()),
                ),
            }
        }
        if seq.is_empty() {
            return Err(self.err(format!(
                "line {}: FASTQ {at} has an empty sequence",
                header.line
            )));
        }
        // Quality lines until they cover the sequence.
        let mut n_qual = 0usize;
        while n_qual < seq.len() {
            if !self.next_line(&at)? {
                return Err(self.err(format!(
                    "line {}: FASTQ {at} (header at line {}) has {n_qual} quality characters for \
                     {} bases: the file ends early; was it truncated?",
                    self.line_no,
                    header.line,
                    seq.len()
                )));
            }
            n_qual += self
                .line
                .iter()
                .filter(|b| !b.is_ascii_whitespace())
                .count();
        }
        if n_qual != seq.len() {
            return Err(self.err(format!(
                "line {}: FASTQ {at} (header at line {}) has {n_qual} quality characters for {} \
                 bases; they must be equal",
                self.line_no,
                header.line,
                seq.len()
            )));
        }
        // The next non-blank line must be the next record's header.
        loop {
            if !self.next_line(&at)? {
                break;
            }
            let text = trim(&self.line);
            match text.first() {
                None => continue,
                Some(b'@') => {
                    self.pending = Some(Header {
                        id: header_id(&text[1..]),
                        line: self.line_no,
                    });
                    break;
                }
                Some(_) => {
                    return Err(self.err(format!(
                        "line {}: expected the '@' header of the record after FASTQ {at}; \
                         is its quality longer than its sequence ({} bases)?",
                        self.line_no,
                        seq.len()
                    )))
                }
            }
        }
        Ok(SeqRecord { id: header.id, seq })
    }
}

impl Iterator for RecordReader {
    type Item = Result<SeqRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let Some(header) = self.pending.take() else {
            self.done = true;
            return None;
        };
        let rec = match self.format {
            SeqFormat::Fasta => self.read_fasta(header),
            SeqFormat::Fastq => self.read_fastq(header),
        };
        match rec {
            Ok(r) => {
                self.n_records += 1;
                Some(Ok(r))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for RecordReader {}

/// `record 'ID' (#N)`, for error messages.
fn record_label(id: &str, n: u64) -> String {
    format!("record '{id}' (#{n})")
}

/// The line without leading and trailing ASCII whitespace.
fn trim(line: &[u8]) -> &[u8] {
    line.trim_ascii()
}

/// The first whitespace-separated word of a header (without its `>` / `@`).
fn header_id(rest: &[u8]) -> String {
    let rest = rest.trim_ascii_start();
    let end = rest
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

/// The message for data whose first non-empty line starts with neither `>` nor `@`.
fn not_sequence_msg(line_no: u64, text: &[u8], compression: Compression) -> String {
    let hint = if text.starts_with(b"BZh") {
        " It looks bzip2-compressed, which is not supported: recompress it with gzip or xz."
    } else if text.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        " It looks zstd-compressed, which is not supported: recompress it with gzip or xz."
    } else if text.starts_with(b"PK\x03\x04") {
        " It looks like a zip archive: unzip it first."
    } else {
        ""
    };
    let after = match compression {
        Compression::None => String::new(),
        c => format!(" (after {c} decompression)"),
    };
    let shown: String = String::from_utf8_lossy(&text[..text.len().min(40)])
        .escape_debug()
        .collect();
    format!(
        "line {line_no}: neither FASTA nor FASTQ{after}: the first non-empty line starts with \
         \"{shown}\", expected '>' (FASTA) or '@' (FASTQ).{hint}"
    )
}
