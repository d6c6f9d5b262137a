//! Sequence-classification datasets: reading them from a GenomicBenchmarks directory layout
//! or CSV files. The species-of-origin task that builds one from real genomes is
//! [`crate::data::species`].
//!
//!
//! # Reading: [`load_dataset`], [`load_dir`], [`load_csv`]
//! - **Directory** (the GenomicBenchmarks layout): `DIR/train/<class>/*` and `DIR/test/<class>/*`.
//!   Each file holds one sequence as plain text (GenomicBenchmarks writes one `.txt` per
//!   sequence; lines are concatenated, whitespace dropped), or is a FASTA/FASTQ file whose every
//!   record is one example. Files may be gzip/xz compressed (detected from their bytes). Classes
//!   are the sub-directory names, sorted; train and test must have the same classes. Files are
//!   read in name order; hidden entries (names starting with `.`) are skipped.
//! - **CSV**: a header naming a `sequence` column and a `label` column (any order, other columns
//!   ignored, names case-insensitive), one example per line, fields optionally double-quoted.
//!   Labels are class names, or integers: when every label is an integer the classes are those
//!   integers in numeric order (so labels `0..n` keep their meaning), else the names sorted.
//!   Classes come from the train rows; a test label outside them is an error. Two files
//!   ([`load_csv`] with a test CSV), or **one file with a `split` column** whose values are
//!   `train` or `test`. One CSV without a `split` column is an error that asks for a test CSV:
//!   a split made up here would not be reproducible by anyone else.
//!
//! Sequences are upper-cased on reading (soft-masked lower case is annotation, not sequence,
//! and would otherwise leak into k-mer statistics). Any letter is accepted (`N` and IUPAC codes
//! included); a non-letter is an error naming the file, the line and the character.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::io::fasta::open_records_from;
use crate::io::text::{read_text, read_text_from};

/// One labelled sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// The sequence, upper case.
    pub seq: Vec<u8>,
    /// Index into [`SeqClsDataset::classes`].
    pub label: usize,
}

/// A sequence-classification dataset with a fixed train/test split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqClsDataset {
    /// Class names; a label is an index into this list.
    pub classes: Vec<String>,
    pub train: Vec<Example>,
    pub test: Vec<Example>,
}

/// Examples per class in each split.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassSummary {
    pub name: String,
    pub train: usize,
    pub test: usize,
}

/// Size and sequence lengths of one split.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SplitSummary {
    pub n: usize,
    /// Shortest sequence (0 when the split is empty).
    pub min_len: usize,
    /// Longest sequence (0 when the split is empty).
    pub max_len: usize,
    /// Mean length (0 when the split is empty).
    pub mean_len: f64,
}

/// What [`SeqClsDataset::summary`] reports; `Display` prints it as a table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DatasetSummary {
    pub classes: Vec<ClassSummary>,
    pub train: SplitSummary,
    pub test: SplitSummary,
}

impl SeqClsDataset {
    /// Counts per class and the length range of each split.
    pub fn summary(&self) -> DatasetSummary {
        let count = |xs: &[Example], c: usize| xs.iter().filter(|e| e.label == c).count();
        let split = |xs: &[Example]| {
            let lens = xs.iter().map(|e| e.seq.len());
            SplitSummary {
                n: xs.len(),
                min_len: lens.clone().min().unwrap_or(0),
                max_len: lens.clone().max().unwrap_or(0),
                mean_len: if xs.is_empty() {
                    0.0
                } else {
                    lens.sum::<usize>() as f64 / xs.len() as f64
                },
            }
        };
        DatasetSummary {
            classes: self
                .classes
                .iter()
                .enumerate()
                .map(|(c, name)| ClassSummary {
                    name: name.clone(),
                    train: count(&self.train, c),
                    test: count(&self.test, c),
                })
                .collect(),
            train: split(&self.train),
            test: split(&self.test),
        }
    }
}

impl std::fmt::Display for DatasetSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "| class | train | test |")?;
        writeln!(f, "|---|---:|---:|")?;
        for c in &self.classes {
            writeln!(f, "| {} | {} | {} |", c.name, c.train, c.test)?;
        }
        writeln!(f, "| **total** | {} | {} |", self.train.n, self.test.n)?;
        for (name, s) in [("train", &self.train), ("test", &self.test)] {
            writeln!(
                f,
                "{name} lengths: {}..={} (mean {:.1})",
                s.min_len, s.max_len, s.mean_len
            )?;
        }
        Ok(())
    }
}

/// Load a dataset from a directory or a CSV file:
/// - a directory with `train/` and `test/` sub-directories: [`load_dir`];
/// - a directory with `train.csv` and `test.csv` (and no `train/`): [`load_csv`] on the pair;
/// - a file: [`load_csv`] on it alone (it needs a `split` column).
pub fn load_dataset(path: impl AsRef<Path>) -> Result<SeqClsDataset> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        file: path.to_path_buf(),
        source: if source.kind() == std::io::ErrorKind::NotFound {
            std::io::Error::new(
                source.kind(),
                "not found: expected a dataset directory (train/<class>/*, test/<class>/*) \
                 or a CSV file",
            )
        } else {
            source
        },
    })?;
    if !meta.is_dir() {
        return load_csv(path, None);
    }
    let (tr_csv, te_csv) = (path.join("train.csv"), path.join("test.csv"));
    if !path.join("train").exists() && tr_csv.is_file() && te_csv.is_file() {
        return load_csv(&tr_csv, Some(&te_csv));
    }
    load_dir(path)
}

/// Load the GenomicBenchmarks directory layout (see the module docs).
pub fn load_dir(root: impl AsRef<Path>) -> Result<SeqClsDataset> {
    let root = root.as_ref();
    let layout = "expected the layout train/<class>/<files> and test/<class>/<files> \
                  (GenomicBenchmarks), one sequence per file";
    let mut splits = Vec::new();
    for split in ["train", "test"] {
        let dir = root.join(split);
        if !dir.is_dir() {
            return Err(Error::format(
                root,
                format!("no `{split}` directory: {layout}"),
            ));
        }
        splits.push((dir.clone(), class_dirs(&dir, layout)?));
    }
    let train_classes: BTreeSet<&String> = splits[0].1.iter().collect();
    let test_classes: BTreeSet<&String> = splits[1].1.iter().collect();
    if train_classes != test_classes {
        let only = |a: &BTreeSet<&String>, b: &BTreeSet<&String>| {
            a.difference(b)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut msg = String::from("train and test must have the same classes:");
        let (tr_only, te_only) = (
            only(&train_classes, &test_classes),
            only(&test_classes, &train_classes),
        );
        if !tr_only.is_empty() {
            let _ = write!(msg, " missing from test/: {tr_only};");
        }
        if !te_only.is_empty() {
            let _ = write!(msg, " missing from train/: {te_only};");
        }
        msg.push_str(" add the missing class directories or remove the extra ones");
        return Err(Error::format(root, msg));
    }
    let classes = splits[0].1.clone();
    let mut out = [Vec::new(), Vec::new()];
    for (s, (dir, _)) in splits.iter().enumerate() {
        for (label, class) in classes.iter().enumerate() {
            let cdir = dir.join(class);
            let files = visible_entries(&cdir)?;
            if files.is_empty() {
                return Err(Error::format(
                    &cdir,
                    "class directory has no sequence files; each class needs at least one",
                ));
            }
            for f in files {
                if f.is_dir() {
                    return Err(Error::format(
                        &f,
                        format!("unexpected directory inside a class directory: {layout}"),
                    ));
                }
                for seq in read_sequence_file(&f)? {
                    out[s].push(Example { seq, label });
                }
            }
        }
    }
    let [train, test] = out;
    Ok(SeqClsDataset {
        classes,
        train,
        test,
    })
}

/// Non-hidden entries of a directory, sorted by name.
fn visible_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let e = e.map_err(Error::io(dir))?;
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        v.push(e.path());
    }
    v.sort();
    Ok(v)
}

/// The class sub-directories of a split directory, sorted.
fn class_dirs(dir: &Path, layout: &str) -> Result<Vec<String>> {
    let mut classes = Vec::new();
    for p in visible_entries(dir)? {
        if !p.is_dir() {
            return Err(Error::format(
                &p,
                format!("expected only class directories here: {layout}"),
            ));
        }
        classes.push(
            p.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        );
    }
    if classes.is_empty() {
        return Err(Error::format(
            dir,
            format!("no class directories: {layout}"),
        ));
    }
    Ok(classes)
}

/// The sequences of one file: one plain-text sequence, or every record of a FASTA/FASTQ file.
fn read_sequence_file(path: &Path) -> Result<Vec<Vec<u8>>> {
    let raw = std::fs::read(path).map_err(Error::io(path))?;
    read_sequence_bytes(&raw, path)
}

/// The sequences of one file of the GenomicBenchmarks layout (see the module docs), from the
/// file's (possibly compressed) bytes already in memory; `path` names it in errors. What
/// [`load_dir`] reads each file with; the fuzz targets (`fuzz/` in the repository) call it
/// on bytes in memory.
pub fn read_sequence_bytes(raw: &[u8], path: &Path) -> Result<Vec<Vec<u8>>> {
    let empty = "empty sequence file: each file must hold one sequence (or FASTA records)";
    if raw.is_empty() {
        return Err(Error::format(
            path,
            format!("{empty} (the file has 0 bytes)"),
        ));
    }
    let bytes = read_text_from(Cursor::new(raw.to_vec()), path)?;
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(Error::format(path, format!("{empty} (only whitespace)"))),
        Some(b'>') | Some(b'@') => open_records_from(Cursor::new(bytes), path)?
            .map(|r| {
                let r = r?;
                check_letters(&r.seq)
                    .map_err(|(i, b)| {
                        Error::format(
                            path,
                            format!(
                                "record '{}': character {} at base {} is not a base letter",
                                r.id,
                                show_byte(b),
                                i + 1
                            ),
                        )
                    })
                    .map(|()| r.seq.to_ascii_uppercase())
            })
            .collect(),
        Some(_) => {
            let mut seq = Vec::with_capacity(bytes.len());
            let mut line = 1usize;
            for &b in &bytes {
                if b == b'\n' {
                    line += 1;
                } else if b.is_ascii_alphabetic() {
                    seq.push(b.to_ascii_uppercase());
                } else if !b.is_ascii_whitespace() {
                    return Err(Error::format(
                        path,
                        format!(
                            "line {line}: character {} is not a base letter; a sequence file \
                             holds one sequence of letters (or FASTA records)",
                            show_byte(b)
                        ),
                    ));
                }
            }
            Ok(vec![seq])
        }
    }
}

/// `Err((index, byte))` at the first byte that is not an ASCII letter.
fn check_letters(seq: &[u8]) -> std::result::Result<(), (usize, u8)> {
    match seq.iter().position(|b| !b.is_ascii_alphabetic()) {
        Some(i) => Err((i, seq[i])),
        None => Ok(()),
    }
}

fn show_byte(b: u8) -> String {
    format!("'{}'", (b as char).escape_default())
}

/// Train or test, for a CSV row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    Train,
    Test,
}

/// One CSV data row.
struct CsvRow {
    seq: Vec<u8>,
    label: String,
    split: Option<Split>,
    line: usize,
}

/// A CSV row with the file it was read from (for error messages).
type Sourced<'a> = (&'a Path, CsvRow);

/// Split one CSV line into fields: commas separate, double quotes group (`""` is a quote).
fn csv_fields(line: &str) -> std::result::Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cur.push(c),
            (false, '"') if cur.trim().is_empty() => {
                cur.clear();
                quoted = true;
            }
            (false, ',') => fields.push(std::mem::take(&mut cur)),
            (false, c) => cur.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed (fields cannot span lines)");
    }
    fields.push(cur);
    Ok(fields.into_iter().map(|f| f.trim().to_string()).collect())
}

/// Read a CSV with `sequence` and `label` columns (and optionally `split`).
fn read_csv(path: &Path, raw: Option<&[u8]>) -> Result<(Vec<CsvRow>, bool)> {
    let bytes = match raw {
        None => read_text(path)?,
        Some(raw) => read_text_from(Cursor::new(raw.to_vec()), path)?,
    };
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        Error::format(
            path,
            format!(
                "not UTF-8 text (at byte {}): is it a CSV file?",
                e.valid_up_to()
            ),
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty());
    let expected = "expected a header line `sequence,label` (optionally with a `split` column)";
    let Some((hline, header)) = lines.next() else {
        return Err(Error::format(path, format!("no header line: {expected}")));
    };
    let names =
        csv_fields(header).map_err(|m| Error::format(path, format!("line {hline}: {m}")))?;
    let col = |want: &str| names.iter().position(|n| n.eq_ignore_ascii_case(want));
    let (Some(i_seq), Some(i_label)) = (col("sequence"), col("label")) else {
        return Err(Error::format(
            path,
            format!(
                "line {hline}: the header `{header}` lacks a `{}` column; {expected}",
                if col("sequence").is_none() {
                    "sequence"
                } else {
                    "label"
                }
            ),
        ));
    };
    let i_split = col("split");
    let mut rows = Vec::new();
    for (line, l) in lines {
        let f = csv_fields(l).map_err(|m| Error::format(path, format!("line {line}: {m}")))?;
        if f.len() != names.len() {
            return Err(Error::format(
                path,
                format!(
                    "line {line}: {} fields, but the header has {} ({header}); is a comma \
                     missing or extra?",
                    f.len(),
                    names.len()
                ),
            ));
        }
        let seq = f[i_seq].as_bytes();
        if seq.is_empty() {
            return Err(Error::format(path, format!("line {line}: empty sequence")));
        }
        if let Err((i, b)) = check_letters(seq) {
            return Err(Error::format(
                path,
                format!(
                    "line {line}: character {} at base {} of the sequence is not a base letter",
                    show_byte(b),
                    i + 1
                ),
            ));
        }
        if f[i_label].is_empty() {
            return Err(Error::format(path, format!("line {line}: empty label")));
        }
        let split = match i_split {
            None => None,
            Some(i) => Some(match f[i].to_ascii_lowercase().as_str() {
                "train" => Split::Train,
                "test" => Split::Test,
                v => {
                    return Err(Error::format(
                        path,
                        format!("line {line}: split `{v}` is neither `train` nor `test`"),
                    ))
                }
            }),
        };
        rows.push(CsvRow {
            seq: seq.to_ascii_uppercase(),
            label: f[i_label].clone(),
            split,
            line,
        });
    }
    if rows.is_empty() {
        return Err(Error::format(path, "no data rows after the header"));
    }
    Ok((rows, i_split.is_some()))
}

/// Load a CSV dataset: `train_csv` and `test_csv`, or one CSV with a `split` column (module
/// docs).
pub fn load_csv(train_csv: impl AsRef<Path>, test_csv: Option<&Path>) -> Result<SeqClsDataset> {
    csv_dataset(train_csv.as_ref(), test_csv, |p, _| read_csv(p, None))
}

/// [`load_csv`] on the (possibly compressed) bytes of the CSV files already in memory, each
/// with the path that names it in errors. Used by the fuzz targets (`fuzz/` in the
/// repository).
pub fn load_csv_bytes(
    train_csv: (&Path, &[u8]),
    test_csv: Option<(&Path, &[u8])>,
) -> Result<SeqClsDataset> {
    csv_dataset(train_csv.0, test_csv.map(|t| t.0), |p, test| {
        let bytes = if test {
            test_csv.map(|t| t.1)
        } else {
            Some(train_csv.1)
        };
        read_csv(p, bytes)
    })
}

/// The dataset of the CSV files `train_csv` and `test_csv`, each read with `read_csv` (its
/// second argument says whether it is the test file).
fn csv_dataset(
    train_csv: &Path,
    test_csv: Option<&Path>,
    read_csv: impl Fn(&Path, bool) -> Result<(Vec<CsvRow>, bool)>,
) -> Result<SeqClsDataset> {
    let (rows, has_split) = read_csv(train_csv, false)?;
    // (file, rows) of each split.
    let (train_rows, test_rows): (Vec<Sourced>, Vec<Sourced>) = match test_csv {
        Some(test_csv) => {
            if has_split {
                return Err(Error::format(
                    train_csv,
                    "has a `split` column, but a test CSV was given too: give one CSV with a \
                     `split` column, or two CSVs without one",
                ));
            }
            let (te, te_split) = read_csv(test_csv, true)?;
            if te_split {
                return Err(Error::format(
                    test_csv,
                    "has a `split` column, but it was given as the test CSV: give one CSV with \
                     a `split` column, or two CSVs without one",
                ));
            }
            (
                rows.into_iter().map(|r| (train_csv, r)).collect(),
                te.into_iter().map(|r| (test_csv, r)).collect(),
            )
        }
        None => {
            if !has_split {
                return Err(Error::format(
                    train_csv,
                    "one CSV without a `split` column: give a test CSV as well, or add a \
                     `split` column whose values are `train` or `test`",
                ));
            }
            let (tr, te) = rows
                .into_iter()
                .partition(|r| r.split == Some(Split::Train));
            let tag = |v: Vec<CsvRow>| v.into_iter().map(|r| (train_csv, r)).collect::<Vec<_>>();
            (tag(tr), tag(te))
        }
    };
    for (rows, which) in [(&train_rows, "train"), (&test_rows, "test")] {
        if rows.is_empty() {
            return Err(Error::format(
                train_csv,
                format!("no {which} rows: both splits need at least one example"),
            ));
        }
    }
    // Classes from the train rows: integers in numeric order when every label is one.
    let all_int = train_rows
        .iter()
        .chain(&test_rows)
        .all(|(_, r)| r.label.parse::<i64>().is_ok());
    let classes: Vec<String> = if all_int {
        let set: BTreeSet<i64> = train_rows
            .iter()
            .filter_map(|(_, r)| r.label.parse().ok())
            .collect();
        set.into_iter().map(|v| v.to_string()).collect()
    } else {
        let set: BTreeSet<&str> = train_rows.iter().map(|(_, r)| r.label.as_str()).collect();
        set.into_iter().map(str::to_string).collect()
    };
    let index: BTreeMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let convert = |rows: Vec<Sourced>, which: &str| -> Result<Vec<Example>> {
        rows.into_iter()
            .map(|(file, r)| {
                let key = if all_int {
                    r.label
                        .parse::<i64>()
                        .map_or(r.label.clone(), |v| v.to_string())
                } else {
                    r.label.clone()
                };
                match index.get(key.as_str()) {
                    Some(&label) => Ok(Example { seq: r.seq, label }),
                    None => Err(Error::format(
                        file,
                        format!(
                            "line {}: unknown class `{}` in {which}: the train classes are {}",
                            r.line,
                            r.label,
                            classes.join(", ")
                        ),
                    )),
                }
            })
            .collect()
    };
    let train = convert(train_rows, "train")?;
    let test = convert(test_rows, "test")?;
    Ok(SeqClsDataset {
        classes,
        train,
        test,
    })
}

/// The reverse complement of an upper-case ACGT sequence (other letters map to `N`).
pub fn reverse_complement(seq: &[u8]) -> Vec<u8> {
    seq.iter()
        .rev()
        .map(|b| match b {
            b'A' => b'T',
            b'C' => b'G',
            b'G' => b'C',
            b'T' => b'A',
            b'a' => b't',
            b'c' => b'g',
            b'g' => b'c',
            b't' => b'a',
            _ => b'N',
        })
        .collect()
}
