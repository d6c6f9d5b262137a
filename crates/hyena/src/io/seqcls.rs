//! Sequence-classification datasets: reading them (GenomicBenchmarks directory layout or CSV)
//! and building a real one, the species of origin of a DNA fragment, from bacterial genomes.
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
//!
//! # Building the species task: [`build_species_task`]
//! Five classes, one per species ([`SPECIES`], in class-name order, the order [`load_dir`]
//! gives): `e_coli`, `h_pylori`, `k_pneumoniae`, `s_aureus`, `v_cholerae`, from the complete
//! genomes in the Debian packages `ragout-examples` and `kleborate-examples`. For each species
//! one **fixed strain is held out for test**; train fragments come only from the other
//! strains, test fragments only from the held-out one, so the task measures generalisation to
//! an unseen strain rather than memorisation of a genome:
//!
//! | class | train strains | test strain |
//! |---|---|---|
//! | `e_coli` | MG1655-K12 | DH1 |
//! | `h_pylori` | ELS37, G27, Gambia94_24, Puno120 | SJM180 |
//! | `k_pneumoniae` | Klebs_HS11286, Klebs_Kp1084, NTUH-K2044 | MGH78578 |
//! | `s_aureus` | COL, JKD6008, N315, RF122 | USA300_FPR3757 |
//! | `v_cholerae` | O1_Inaba, O1_biovar, O395 | H1 |
//!
//! (For S. aureus, H. pylori and V. cholerae the held-out strain is the one whose draft
//! assembly the ragout example scaffolds; for E. coli it is DH1 so that MG1655, the genome the
//! repository's language-model training uses, stays on the train side; for K. pneumoniae the
//! choice of MGH78578 is arbitrary but fixed. The `*_contigs` draft assemblies are never used.)
//!
//! - **Records**: only records of at least `min_record_len` bases (default 1 Mbp) are used. That
//!   keeps every chromosome (the smallest, V. cholerae chromosome 2, is 1.05 Mbp) and drops the
//!   plasmids (at most 0.23 Mbp here): plasmids move between species (K. pneumoniae and E. coli
//!   share many), so a plasmid fragment's label would say which host it was sequenced in, not
//!   which genome it evolved in.
//! - **Sampling**: each strain of a split gets an equal share of the fragments (strains weighted
//!   equally, whatever their size; the first strains in table order take the remainder); within
//!   a strain the start is uniform over every position where a whole fragment fits in a record
//!   (so records are weighted by length). A fragment with any non-ACGT character is rejected
//!   and drawn again; a kept fragment is reverse-complemented with probability ½ (sequencing
//!   reads come from either strand). Sequences are upper case. Each class's fragments are
//!   shuffled, so any prefix of the files is a fair sample.
//! - **Determinism**: one random stream per (class, split), seeded from `seed`; the same
//!   options and inputs give byte-identical outputs with this build.
//! - **Output**: `OUT/train/<class>/NNNNN.txt` and `OUT/test/<class>/NNNNN.txt` (one sequence
//!   per file, readable by [`load_dataset`]), `OUT/dataset.json` (the [`BuildReport`]: options,
//!   strains and records used per split, counts) and `OUT/fragments.tsv` (where every fragment
//!   comes from: strain, record, 0-based start on the forward strand, strand). Everything is
//!   written to a temporary directory beside `OUT` and renamed into place at the end, so an
//!   interrupted build leaves no half-written dataset; a non-empty `OUT` is refused.
//!
//! The genome files are found by their package-relative names (e.g.
//! `ragout/examples/E.Coli/references/MG1655-K12.fasta.gz`, [`SPECIES`]) anywhere under the
//! `genomes` directory: point it at `usr/share/doc` of an extracted package (`apt-get download
//! ragout-examples kleborate-examples`, `dpkg -x`), at `/usr/share/doc` after `apt-get install`,
//! at a folder inside those trees, or at a flat folder holding the files (decompressed copies,
//! without the `.gz`/`.xz` suffix, are accepted too).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::fasta::open_records;
use super::text::read_text;
use crate::error::{Error, Result};

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

fn format_err(file: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        file: file.to_path_buf(),
        msg: msg.into(),
    }
}

fn io_err(file: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        file: file.to_path_buf(),
        source,
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
            return Err(format_err(
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
        return Err(format_err(root, msg));
    }
    let classes = splits[0].1.clone();
    let mut out = [Vec::new(), Vec::new()];
    for (s, (dir, _)) in splits.iter().enumerate() {
        for (label, class) in classes.iter().enumerate() {
            let cdir = dir.join(class);
            let files = visible_entries(&cdir)?;
            if files.is_empty() {
                return Err(format_err(
                    &cdir,
                    "class directory has no sequence files; each class needs at least one",
                ));
            }
            for f in files {
                if f.is_dir() {
                    return Err(format_err(
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
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
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
            return Err(format_err(
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
        return Err(format_err(dir, format!("no class directories: {layout}")));
    }
    Ok(classes)
}

/// The sequences of one file: one plain-text sequence, or every record of a FASTA/FASTQ file.
fn read_sequence_file(path: &Path) -> Result<Vec<Vec<u8>>> {
    let empty = "empty sequence file: each file must hold one sequence (or FASTA records)";
    if std::fs::metadata(path).map_err(io_err(path))?.len() == 0 {
        return Err(format_err(path, format!("{empty} (the file has 0 bytes)")));
    }
    let bytes = read_text(path)?;
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(format_err(path, format!("{empty} (only whitespace)"))),
        Some(b'>') | Some(b'@') => open_records(path)?
            .map(|r| {
                let r = r?;
                check_letters(&r.seq)
                    .map_err(|(i, b)| {
                        format_err(
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
                    return Err(format_err(
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
fn read_csv(path: &Path) -> Result<(Vec<CsvRow>, bool)> {
    let bytes = read_text(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        format_err(
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
        return Err(format_err(path, format!("no header line: {expected}")));
    };
    let names = csv_fields(header).map_err(|m| format_err(path, format!("line {hline}: {m}")))?;
    let col = |want: &str| names.iter().position(|n| n.eq_ignore_ascii_case(want));
    let (Some(i_seq), Some(i_label)) = (col("sequence"), col("label")) else {
        return Err(format_err(
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
        let f = csv_fields(l).map_err(|m| format_err(path, format!("line {line}: {m}")))?;
        if f.len() != names.len() {
            return Err(format_err(
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
            return Err(format_err(path, format!("line {line}: empty sequence")));
        }
        if let Err((i, b)) = check_letters(seq) {
            return Err(format_err(
                path,
                format!(
                    "line {line}: character {} at base {} of the sequence is not a base letter",
                    show_byte(b),
                    i + 1
                ),
            ));
        }
        if f[i_label].is_empty() {
            return Err(format_err(path, format!("line {line}: empty label")));
        }
        let split = match i_split {
            None => None,
            Some(i) => Some(match f[i].to_ascii_lowercase().as_str() {
                "train" => Split::Train,
                "test" => Split::Test,
                v => {
                    return Err(format_err(
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
        return Err(format_err(path, "no data rows after the header"));
    }
    Ok((rows, i_split.is_some()))
}

/// Load a CSV dataset: `train_csv` and `test_csv`, or one CSV with a `split` column (module
/// docs).
pub fn load_csv(train_csv: impl AsRef<Path>, test_csv: Option<&Path>) -> Result<SeqClsDataset> {
    let train_csv = train_csv.as_ref();
    let (rows, has_split) = read_csv(train_csv)?;
    // (file, rows) of each split.
    let (train_rows, test_rows): (Vec<Sourced>, Vec<Sourced>) = match test_csv {
        Some(test_csv) => {
            if has_split {
                return Err(format_err(
                    train_csv,
                    "has a `split` column, but a test CSV was given too: give one CSV with a \
                     `split` column, or two CSVs without one",
                ));
            }
            let (te, te_split) = read_csv(test_csv)?;
            if te_split {
                return Err(format_err(
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
                return Err(format_err(
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
            return Err(format_err(
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
                    None => Err(format_err(
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

// ---------------------------------------------------------------------------------------------
// The species-of-origin task.
// ---------------------------------------------------------------------------------------------

/// One strain's genome file, by its path inside the Debian package's `usr/share/doc`.
#[derive(Clone, Copy, Debug)]
pub struct StrainFile {
    pub strain: &'static str,
    pub path: &'static str,
}

/// One species (class) of the task.
#[derive(Clone, Copy, Debug)]
pub struct SpeciesDef {
    /// The class name.
    pub class: &'static str,
    /// The species' Latin name.
    pub species: &'static str,
    /// The Debian package holding the files.
    pub package: &'static str,
    /// The strain whose fragments make the test split.
    pub test_strain: &'static str,
    /// All strains; those other than `test_strain` make the train split.
    pub strains: &'static [StrainFile],
}

const fn sf(strain: &'static str, path: &'static str) -> StrainFile {
    StrainFile { strain, path }
}

/// The five species of the task, in class order, with their strains and held-out test strain.
pub const SPECIES: &[SpeciesDef] = &[
    SpeciesDef {
        class: "e_coli",
        species: "Escherichia coli",
        package: "ragout-examples",
        test_strain: "DH1",
        strains: &[
            sf(
                "MG1655-K12",
                "ragout/examples/E.Coli/references/MG1655-K12.fasta.gz",
            ),
            sf("DH1", "ragout/examples/E.Coli/references/DH1.fasta.gz"),
        ],
    },
    SpeciesDef {
        class: "h_pylori",
        species: "Helicobacter pylori",
        package: "ragout-examples",
        test_strain: "SJM180",
        strains: &[
            sf(
                "ELS37",
                "ragout/examples/H.Pylori/references/ELS37.fasta.gz",
            ),
            sf("G27", "ragout/examples/H.Pylori/references/G27.fasta.gz"),
            sf(
                "Gambia94_24",
                "ragout/examples/H.Pylori/references/Gambia94_24.fasta.gz",
            ),
            sf(
                "Puno120",
                "ragout/examples/H.Pylori/references/Puno120.fasta.gz",
            ),
            sf(
                "SJM180",
                "ragout/examples/H.Pylori/references/SJM180.fasta.gz",
            ),
        ],
    },
    SpeciesDef {
        class: "k_pneumoniae",
        species: "Klebsiella pneumoniae",
        package: "kleborate-examples",
        test_strain: "MGH78578",
        strains: &[
            sf(
                "Klebs_HS11286",
                "kleborate/examples/data/Klebs_HS11286.fna.xz",
            ),
            sf(
                "Klebs_Kp1084",
                "kleborate/examples/data/Klebs_Kp1084.fna.xz",
            ),
            sf("MGH78578", "kleborate/examples/data/MGH78578.fna.xz"),
            sf("NTUH-K2044", "kleborate/examples/data/NTUH-K2044.fna.xz"),
        ],
    },
    SpeciesDef {
        class: "s_aureus",
        species: "Staphylococcus aureus",
        package: "ragout-examples",
        test_strain: "USA300_FPR3757",
        strains: &[
            sf("COL", "ragout/examples/S.Aureus/references/COL.fasta.gz"),
            sf(
                "JKD6008",
                "ragout/examples/S.Aureus/references/JKD6008.fasta.gz",
            ),
            sf("N315", "ragout/examples/S.Aureus/references/N315.fasta.gz"),
            sf(
                "RF122",
                "ragout/examples/S.Aureus/references/RF122.fasta.gz",
            ),
            sf(
                "USA300_FPR3757",
                "ragout/examples/S.Aureus/references/USA300_FPR3757.fasta.gz",
            ),
        ],
    },
    SpeciesDef {
        class: "v_cholerae",
        species: "Vibrio cholerae",
        package: "ragout-examples",
        test_strain: "H1",
        strains: &[
            sf("H1", "ragout/examples/V.Cholerae/references/H1.fasta.gz"),
            sf(
                "O1_Inaba",
                "ragout/examples/V.Cholerae/references/O1_Inaba.fasta.gz",
            ),
            sf(
                "O1_biovar",
                "ragout/examples/V.Cholerae/references/O1_biovar.fasta.gz",
            ),
            sf(
                "O395",
                "ragout/examples/V.Cholerae/references/O395.fasta.gz",
            ),
        ],
    },
];

/// Default fragment length (bases).
pub const DEFAULT_LENGTH: usize = 500;
/// Default number of train fragments per class.
pub const DEFAULT_TRAIN_PER_CLASS: usize = 2000;
/// Default number of test fragments per class.
pub const DEFAULT_TEST_PER_CLASS: usize = 500;
/// Default seed.
pub const DEFAULT_SEED: u64 = 1;
/// Default smallest record used (bases): every chromosome, no plasmid (module docs).
pub const DEFAULT_MIN_RECORD_LEN: usize = 1_000_000;

/// Options of [`build_species_task`].
#[derive(Clone, Debug)]
pub struct SpeciesTaskOptions {
    /// Directory under which the genome files are searched (module docs).
    pub genomes: PathBuf,
    /// Output directory: must not exist, or be empty.
    pub out: PathBuf,
    /// Fragment length in bases.
    pub length: usize,
    pub train_per_class: usize,
    pub test_per_class: usize,
    pub seed: u64,
    /// Records shorter than this are not sampled (drops plasmids at the default).
    pub min_record_len: usize,
}

impl SpeciesTaskOptions {
    /// The options with every default ([`DEFAULT_LENGTH`] ...).
    pub fn new(genomes: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        SpeciesTaskOptions {
            genomes: genomes.into(),
            out: out.into(),
            length: DEFAULT_LENGTH,
            train_per_class: DEFAULT_TRAIN_PER_CLASS,
            test_per_class: DEFAULT_TEST_PER_CLASS,
            seed: DEFAULT_SEED,
            min_record_len: DEFAULT_MIN_RECORD_LEN,
        }
    }
}

/// One record of a genome file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordReport {
    pub id: String,
    pub length: usize,
    /// Whether fragments were drawn from it (length ≥ `min_record_len` and ≥ `length`).
    pub used: bool,
}

/// One strain as used in one split.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StrainReport {
    pub strain: String,
    /// The package-relative file name (not where it was found on this machine).
    pub file: String,
    pub records: Vec<RecordReport>,
    /// Bases in the used records.
    pub used_bases: usize,
    /// Fragments drawn from this strain.
    pub fragments: usize,
    /// Fragments drawn and rejected for a non-ACGT character.
    pub rejected_non_acgt: usize,
}

/// One class of the built task.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SpeciesReport {
    pub class: String,
    pub species: String,
    pub train: Vec<StrainReport>,
    pub test: Vec<StrainReport>,
    pub train_fragments: usize,
    pub test_fragments: usize,
}

/// What [`build_species_task`] built; also written as `dataset.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BuildReport {
    /// Where the dataset was written (not stored in `dataset.json`: the folder may move).
    #[serde(skip)]
    pub out: PathBuf,
    pub task: String,
    pub layout: String,
    pub length: usize,
    pub seed: u64,
    pub train_per_class: usize,
    pub test_per_class: usize,
    pub min_record_len: usize,
    pub classes: Vec<String>,
    pub species: Vec<SpeciesReport>,
}

/// Where a fragment comes from.
struct Provenance {
    strain: usize,
    record: usize,
    start: usize,
    reverse: bool,
}

/// A loaded strain: its eligible records, upper case.
struct StrainGenome {
    report: StrainReport,
    /// (record index in the file, sequence) of the records long enough to sample.
    records: Vec<(usize, Vec<u8>)>,
    /// Record ids, by index in the file.
    ids: Vec<String>,
}

/// Build the five-species task (module docs) into `opts.out`.
pub fn build_species_task(opts: &SpeciesTaskOptions) -> Result<BuildReport> {
    for (field, v) in [
        ("length", opts.length),
        ("train_per_class", opts.train_per_class),
        ("test_per_class", opts.test_per_class),
        ("min_record_len", opts.min_record_len),
    ] {
        if v == 0 {
            return Err(Error::config(field, v, "must be at least 1"));
        }
    }
    check_out_dir(&opts.out)?;
    // Find every file before reading any, so a missing package fails at once.
    let files = locate_genomes(&opts.genomes)?;
    let tmp = TempOut::create(&opts.out)?;
    let mut species_reports = Vec::new();
    let mut tsv = String::from("file\tsplit\tclass\tstrain\trecord\tstart\tstrand\n");
    for (ci, sp) in SPECIES.iter().enumerate() {
        let mut report = SpeciesReport {
            class: sp.class.to_string(),
            species: sp.species.to_string(),
            train: Vec::new(),
            test: Vec::new(),
            train_fragments: 0,
            test_fragments: 0,
        };
        for (si, split) in ["train", "test"].into_iter().enumerate() {
            let n = if si == 0 {
                opts.train_per_class
            } else {
                opts.test_per_class
            };
            let strains: Vec<&StrainFile> = sp
                .strains
                .iter()
                .filter(|s| (s.strain == sp.test_strain) == (si == 1))
                .collect();
            let mut genomes = Vec::new();
            for s in &strains {
                let path = files.get(s.path).ok_or_else(|| {
                    format_err(&opts.genomes, format!("{} was not located", s.path))
                })?;
                genomes.push(load_strain(s, path, opts)?);
            }
            let mut rng = StdRng::seed_from_u64(stream_seed(opts.seed, ci, si));
            let mut frags: Vec<(Vec<u8>, Provenance)> = Vec::with_capacity(n);
            let n_s = genomes.len();
            for (gi, g) in genomes.iter_mut().enumerate() {
                let quota = n / n_s + usize::from(gi < n % n_s);
                sample_fragments(g, gi, quota, opts.length, &mut rng, &mut frags)?;
            }
            frags.shuffle(&mut rng);
            let dir = tmp.path.join(split).join(sp.class);
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let width = n.saturating_sub(1).to_string().len().max(5);
            for (i, (seq, p)) in frags.iter().enumerate() {
                let name = format!("{i:0width$}.txt");
                let file = dir.join(&name);
                let mut text = seq.clone();
                text.push(b'\n');
                std::fs::write(&file, &text).map_err(io_err(&file))?;
                let g = &genomes[p.strain];
                let _ = writeln!(
                    tsv,
                    "{split}/{}/{name}\t{split}\t{}\t{}\t{}\t{}\t{}",
                    sp.class,
                    sp.class,
                    g.report.strain,
                    g.ids[p.record],
                    p.start,
                    if p.reverse { '-' } else { '+' }
                );
            }
            let reports: Vec<StrainReport> = genomes.into_iter().map(|g| g.report).collect();
            if si == 0 {
                report.train_fragments = frags.len();
                report.train = reports;
            } else {
                report.test_fragments = frags.len();
                report.test = reports;
            }
        }
        species_reports.push(report);
    }
    let report = BuildReport {
        out: opts.out.clone(),
        task: "species of origin of a DNA fragment (5 bacterial species; test strains held out)"
            .to_string(),
        layout: "train/<class>/NNNNN.txt and test/<class>/NNNNN.txt, one sequence per file \
                 (GenomicBenchmarks); fragments.tsv: the source of every fragment"
            .to_string(),
        length: opts.length,
        seed: opts.seed,
        train_per_class: opts.train_per_class,
        test_per_class: opts.test_per_class,
        min_record_len: opts.min_record_len,
        classes: SPECIES.iter().map(|s| s.class.to_string()).collect(),
        species: species_reports,
    };
    let manifest = tmp.path.join("dataset.json");
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| format_err(&manifest, format!("cannot serialise the manifest: {e}")))?;
    std::fs::write(&manifest, json + "\n").map_err(io_err(&manifest))?;
    let tsv_path = tmp.path.join("fragments.tsv");
    std::fs::write(&tsv_path, tsv).map_err(io_err(&tsv_path))?;
    tmp.commit(&opts.out)?;
    Ok(report)
}

/// A distinct, reproducible random stream per (class, split).
fn stream_seed(seed: u64, class: usize, split: usize) -> u64 {
    // splitmix64 finaliser over the three values: nearby seeds give unrelated streams.
    let mut z = seed
        .wrapping_add(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(1 + 2 * class as u64 + split as u64));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Refuse an output that exists and is not an empty directory.
fn check_out_dir(out: &Path) -> Result<()> {
    match std::fs::metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(out)(e)),
        Ok(m) if !m.is_dir() => Err(format_err(
            out,
            "exists and is not a directory: choose a new output directory",
        )),
        Ok(_) => {
            let mut it = std::fs::read_dir(out).map_err(io_err(out))?;
            if it.next().is_some() {
                Err(format_err(
                    out,
                    "output directory is not empty: choose a new one, or remove it first \
                     (nothing was written)",
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// A temporary directory beside the output, removed unless committed.
struct TempOut {
    path: PathBuf,
    committed: bool,
}

impl TempOut {
    fn create(out: &Path) -> Result<Self> {
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        let name = out.file_name().map_or_else(
            || "dataset".to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let path = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if path.exists() {
            // Left by an earlier build with the same process id that was killed.
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
        std::fs::create_dir(&path).map_err(io_err(&path))?;
        Ok(TempOut {
            path,
            committed: false,
        })
    }

    fn commit(mut self, out: &Path) -> Result<()> {
        if out.is_dir() {
            // Checked empty at the start; `remove_dir` fails (and we report it) if it no
            // longer is.
            std::fs::remove_dir(out).map_err(io_err(out))?;
        }
        std::fs::rename(&self.path, out).map_err(io_err(out))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempOut {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Read one strain's file and keep its records of at least `min_record_len` bases.
fn load_strain(s: &StrainFile, path: &Path, opts: &SpeciesTaskOptions) -> Result<StrainGenome> {
    let mut records = Vec::new();
    let mut ids = Vec::new();
    let mut reports = Vec::new();
    for (i, r) in open_records(path)?.enumerate() {
        let r = r?;
        let used = r.seq.len() >= opts.min_record_len && r.seq.len() >= opts.length;
        reports.push(RecordReport {
            id: r.id.clone(),
            length: r.seq.len(),
            used,
        });
        ids.push(r.id);
        if used {
            records.push((i, r.seq.to_ascii_uppercase()));
        }
    }
    if records.is_empty() {
        let lens: Vec<String> = reports.iter().map(|r| r.length.to_string()).collect();
        return Err(format_err(
            path,
            format!(
                "strain {}: no record of at least {} bases (min_record_len {}, fragment length \
                 {}); its records have {} bases: lower the minimum record length or the \
                 fragment length",
                s.strain,
                opts.min_record_len.max(opts.length),
                opts.min_record_len,
                opts.length,
                lens.join(", ")
            ),
        ));
    }
    Ok(StrainGenome {
        report: StrainReport {
            strain: s.strain.to_string(),
            file: s.path.to_string(),
            used_bases: records.iter().map(|(_, q)| q.len()).sum(),
            records: reports,
            fragments: 0,
            rejected_non_acgt: 0,
        },
        records,
        ids,
    })
}

/// Draw `n` ACGT-only fragments of `len` bases from `g` (module docs) into `out`.
fn sample_fragments(
    g: &mut StrainGenome,
    strain: usize,
    n: usize,
    len: usize,
    rng: &mut StdRng,
    out: &mut Vec<(Vec<u8>, Provenance)>,
) -> Result<()> {
    // Cumulative number of valid start positions, record by record.
    let mut cum = Vec::with_capacity(g.records.len());
    let mut total = 0u64;
    for (_, seq) in &g.records {
        total += (seq.len() - len + 1) as u64;
        cum.push(total);
    }
    // A genome that is mostly N would loop for ever; real genomes reject well under 1%.
    let max_rejects = 100 * n + 1000;
    let mut kept = 0;
    while kept < n {
        let u = rng.random_range(0..total);
        let r = cum.partition_point(|&c| c <= u);
        let start = (u - if r == 0 { 0 } else { cum[r - 1] }) as usize;
        let (rec_idx, seq) = &g.records[r];
        let frag = &seq[start..start + len];
        if !frag.iter().all(|b| matches!(b, b'A' | b'C' | b'G' | b'T')) {
            g.report.rejected_non_acgt += 1;
            if g.report.rejected_non_acgt > max_rejects {
                return Err(format_err(
                    Path::new(g.report.file.as_str()),
                    format!(
                        "strain {}: {} fragments of {len} bases drawn had non-ACGT characters \
                         (only {kept} of {n} kept): the genome is mostly ambiguous bases; use \
                         shorter fragments",
                        g.report.strain, g.report.rejected_non_acgt
                    ),
                ));
            }
            continue;
        }
        let reverse = rng.random_bool(0.5);
        let frag = if reverse {
            reverse_complement(frag)
        } else {
            frag.to_vec()
        };
        out.push((
            frag,
            Provenance {
                strain,
                record: *rec_idx,
                start,
                reverse,
            },
        ));
        kept += 1;
    }
    g.report.fragments += n;
    Ok(())
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

/// The compression suffixes a genome file may have lost when decompressed by hand.
fn strip_compression(name: &str) -> &str {
    name.strip_suffix(".gz")
        .or_else(|| name.strip_suffix(".xz"))
        .unwrap_or(name)
}

/// Find every genome file of [`SPECIES`] under `root` (module docs): package path → file.
fn locate_genomes(root: &Path) -> Result<BTreeMap<&'static str, PathBuf>> {
    let meta = std::fs::metadata(root).map_err(io_err(root))?;
    if !meta.is_dir() {
        return Err(format_err(
            root,
            "the genomes location must be a directory (e.g. usr/share/doc of the extracted \
             packages)",
        ));
    }
    let wanted: Vec<&'static str> = SPECIES
        .iter()
        .flat_map(|s| s.strains.iter().map(|f| f.path))
        .collect();
    let names: BTreeSet<&str> = wanted
        .iter()
        .filter_map(|p| p.rsplit('/').next())
        .flat_map(|n| [n, strip_compression(n)])
        .collect();
    // Candidate files: the right name, as components relative to `root`.
    let mut found: Vec<(PathBuf, Vec<String>)> = Vec::new();
    walk(root, root, 0, &names, &mut found)?;
    let mut map = BTreeMap::new();
    let mut missing = Vec::new();
    for want in &wanted {
        let w: Vec<&str> = want.split('/').collect();
        let w_last = w[w.len() - 1];
        // Score = number of trailing components matched; the best unique match wins.
        let mut best: Vec<(&PathBuf, usize)> = Vec::new();
        for (path, comps) in &found {
            let Some(last) = comps.last() else { continue };
            if last != w_last && last != strip_compression(w_last) {
                continue;
            }
            let m = w.len().min(comps.len());
            let parents_match = (2..=m).all(|i| comps[comps.len() - i] == w[w.len() - i]);
            if parents_match {
                best.push((path, m));
            }
        }
        let top = best.iter().map(|b| b.1).max();
        let best: Vec<&PathBuf> = best
            .iter()
            .filter(|b| Some(b.1) == top)
            .map(|b| b.0)
            .collect();
        match best.as_slice() {
            [] => missing.push(*want),
            [one] => {
                map.insert(*want, (*one).clone());
            }
            many => {
                let list: Vec<String> = many.iter().map(|p| p.display().to_string()).collect();
                return Err(format_err(
                    root,
                    format!(
                        "{want} is found {} times ({}): point the genomes directory at one copy",
                        many.len(),
                        list.join(", ")
                    ),
                ));
            }
        }
    }
    if !missing.is_empty() {
        let pkgs: BTreeSet<&str> = SPECIES
            .iter()
            .filter(|s| s.strains.iter().any(|f| missing.contains(&f.path)))
            .map(|s| s.package)
            .collect();
        let pkgs = pkgs.into_iter().collect::<Vec<_>>().join(" ");
        return Err(format_err(
            root,
            format!(
                "{} of the {} genome files not found under this directory: {}. They come from \
                 the Debian packages {pkgs}: `apt-get install {pkgs}` and use /usr/share/doc, \
                 or `apt-get download {pkgs}`, `dpkg -x <package>.deb <dir>` and use \
                 <dir>/usr/share/doc",
                missing.len(),
                wanted.len(),
                missing.join(", ")
            ),
        ));
    }
    Ok(map)
}

/// Collect the files under `dir` named in `names` (directory symlinks are not followed, so a
/// link loop cannot trap the walk; unreadable sub-directories are skipped).
fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    names: &BTreeSet<&str>,
    found: &mut Vec<(PathBuf, Vec<String>)>,
) -> Result<()> {
    const MAX_DEPTH: usize = 12;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if depth == 0 => return Err(io_err(dir)(e)),
        Err(_) => return Ok(()),
    };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(ft) = e.file_type() else { continue };
        let path = e.path();
        if ft.is_dir() {
            if depth < MAX_DEPTH {
                walk(root, &path, depth + 1, names, found)?;
            }
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if names.contains(name.as_str()) && path.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let comps = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            found.push((path, comps));
        }
    }
    Ok(())
}
