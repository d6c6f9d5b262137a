//! Sharded, resumable file jobs (`--shard I/N` of `hyena embed`, `score`, `vep` and `mad`) and
//! `hyena merge`, which joins the shards' outputs into exactly what one unsharded run writes.
//!
//! A shard is a deterministic slice of the job's items, chosen from the inputs alone so that N
//! independent processes (Slurm array tasks, Snakemake jobs) agree on it without talking:
//! - records of a FASTA/FASTQ: contiguous ranges balanced by bases ([`split_contiguous`]);
//! - variants: contiguous ranges balanced by the bases of their windows;
//! - MAD settings: by estimated cost, longest first onto the least-loaded shard
//!   ([`assign_by_cost`]; the classic LPT rule, within 4/3 of the best balance).
//!
//! Contiguous ranges keep the merge a concatenation in the unsharded order, so merged
//! `.npy`/TSV/JSON-lines outputs are byte for byte the unsharded ones (each record and each
//! variant is computed alone, so its bits do not depend on which shard ran it).
//!
//! Every shard writes a small manifest beside its output, `OUT.shard.json` ([`Manifest`]): the
//! inputs with their SHA-256, the model's fingerprint, the settings, the shard, the item range,
//! how many items are done and whether the shard finished. A rerun of a finished shard does
//! nothing; an interrupted one continues from its `.partial` files; a manifest whose inputs or
//! settings differ from the rerun's is refused (the outputs would mix two jobs).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::io::safetensors::write_bytes_atomic;

/// The manifest format written in [`Manifest::format`].
pub const FORMAT: &str = "hyena-shard/1";

/// One shard of a job: `index` of `count`, 1-based (`--shard 2/3`; Slurm's
/// `SLURM_ARRAY_TASK_ID` with `--array=1-N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("'{s}' is not a shard: give I/N with 1 ≤ I ≤ N, e.g. 2/8");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Split items of the given weights into `n` contiguous ranges of about equal weight: item `i`
/// goes to the shard its weight's midpoint falls in (`⌊(W_<i + w_i/2)·n / W⌋`), so the ranges
/// are in order, cover every item once and differ from the ideal by at most one item's weight.
/// Shards may be empty when there are fewer items than shards.
pub fn split_contiguous(weights: &[u64], n: usize) -> Vec<Range<usize>> {
    let n = n.max(1);
    let total: u128 = weights.iter().map(|&w| w as u128).sum();
    let mut owner = Vec::with_capacity(weights.len());
    let mut before: u128 = 0;
    for (i, &w) in weights.iter().enumerate() {
        let s = if total == 0 {
            // All weights zero: split by count.
            i * n / weights.len().max(1)
        } else {
            // Twice the midpoint keeps it in integers.
            (((2 * before + w as u128) * n as u128) / (2 * total)) as usize
        };
        owner.push(s.min(n - 1));
        before += w as u128;
    }
    (0..n)
        .map(|s| {
            let a = owner.partition_point(|&o| o < s);
            let b = owner.partition_point(|&o| o <= s);
            a..b
        })
        .collect()
}

/// Assign items of estimated `costs` to `n` shards: the costliest first, each onto the shard
/// with the least cost so far (ties: the lower item index, the lower shard). Returns each
/// item's shard (0-based). Deterministic for the same costs.
pub fn assign_by_cost(costs: &[f64], n: usize) -> Vec<usize> {
    let n = n.max(1);
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|&a, &b| costs[b].total_cmp(&costs[a]).then(a.cmp(&b)));
    let mut load = vec![0.0f64; n];
    let mut owner = vec![0usize; costs.len()];
    for i in order {
        let mut best = 0;
        for s in 1..n {
            if load[s] < load[best] {
                best = s;
            }
        }
        load[best] += costs[i].max(0.0);
        owner[i] = best;
    }
    owner
}

/// SHA-256 of a file's bytes (as stored: a compressed file's compressed bytes), hex.
pub fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).map_err(Error::io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hex(&h.finalize())))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An input file of a job and its checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSum {
    /// The flag it came from (`fasta`, `reference`, `variants`).
    pub role: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

impl InputSum {
    pub fn of(role: &str, path: &Path) -> Result<Self> {
        let (bytes, sha256) = sha256_file(path)?;
        Ok(InputSum {
            role: role.to_string(),
            path: path.to_path_buf(),
            bytes,
            sha256,
        })
    }
}

/// A model's fingerprint: its files' names and sizes, and the SHA-256 of the small ones
/// (configs, tokenizers, small weights). Hashing a released model's gigabytes of weights on
/// every shard would cost minutes; a changed config or a replaced weight file of another size
/// is what this catches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrint {
    pub path: PathBuf,
    /// `name → size`, and `sha256` for files of at most [`ModelPrint::HASHED`] bytes.
    pub files: BTreeMap<String, FilePrint>,
}

/// One file of a [`ModelPrint`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePrint {
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl ModelPrint {
    /// Files up to this size are hashed.
    pub const HASHED: u64 = 16 << 20;

    /// The fingerprint of a model directory (its files, not its subfolders) or file.
    pub fn of(path: &Path) -> Result<Self> {
        let mut files = BTreeMap::new();
        let mut add = |p: &Path, name: String| -> Result<()> {
            let bytes = std::fs::metadata(p).map_err(Error::io(p))?.len();
            let sha256 = if bytes <= Self::HASHED {
                Some(sha256_file(p)?.1)
            } else {
                None
            };
            files.insert(name, FilePrint { bytes, sha256 });
            Ok(())
        };
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(Error::io(path))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            entries.sort();
            for p in entries {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // Files a run writes while it is read elsewhere do not name the model.
                if name.ends_with(".partial") || name.starts_with('.') {
                    continue;
                }
                add(&p, name)?;
            }
        } else {
            add(path, String::new())?;
        }
        Ok(ModelPrint {
            path: path.to_path_buf(),
            files,
        })
    }
}

/// The manifest of one shard, `OUT.shard.json` ([`manifest_path`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// `embed`, `score`, `vep` or `mad`.
    pub command: String,
    pub shard: Shard,
    pub inputs: Vec<InputSum>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelPrint>,
    /// Everything else that changes the outputs (options, precision, …).
    pub settings: serde_json::Value,
    /// What the items are: `records`, `variants`, `settings`.
    pub unit: String,
    /// The shard's items, `first..end` of the job's (contiguous for records and variants, so
    /// the merge is a concatenation).
    pub first: usize,
    pub end: usize,
    /// The job's items that are this shard's, where they are not a range (MAD settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<usize>>,
    /// Items of the whole job.
    pub total: usize,
    /// The shard's share of the balancing weight (bases, window bases, estimated seconds).
    pub weight: f64,
    /// Output files by role (`out`, `records`, `per_base`), as given.
    pub outputs: BTreeMap<String, PathBuf>,
    /// Items done (written to the outputs or their `.partial` files).
    pub done: usize,
    pub finished: bool,
    /// The hyena version that wrote it.
    pub version: String,
}

/// `OUT.shard.json`: where the manifest of the shard writing `out` lives.
pub fn manifest_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".shard.json");
    PathBuf::from(s)
}

/// `OUT.partial`: the file a shard's output grows in until it is finished.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

impl Manifest {
    /// A new manifest (nothing done) of a shard's items.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        command: &str,
        shard: Shard,
        inputs: Vec<InputSum>,
        model: Option<ModelPrint>,
        settings: serde_json::Value,
        unit: &str,
        items: Range<usize>,
        members: Option<Vec<usize>>,
        total: usize,
        weight: f64,
        outputs: BTreeMap<String, PathBuf>,
    ) -> Self {
        Manifest {
            format: FORMAT.into(),
            command: command.into(),
            shard,
            inputs,
            model,
            settings,
            unit: unit.into(),
            first: items.start,
            end: items.end,
            members,
            total,
            weight,
            outputs,
            done: 0,
            finished: false,
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Read `path`; errors name the file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| {
            Error::format(
                path,
                format!("not a shard manifest ({e}): remove it to run the shard again"),
            )
        })?;
        if m.format != FORMAT {
            return Err(Error::format(
                path,
                format!(
                    "manifest format '{}', this hyena reads '{FORMAT}'",
                    m.format
                ),
            ));
        }
        Ok(m)
    }

    /// Write it atomically to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut s =
            serde_json::to_string_pretty(self).map_err(|e| Error::format(path, e.to_string()))?;
        s.push('\n');
        write_bytes_atomic(path, s.as_bytes())
    }

    /// `None` when `other` describes the same job (inputs by checksum, model by fingerprint,
    /// settings, command), else what differs, in words. Paths may differ (a relative and an
    /// absolute path to the same file are the same input).
    pub fn differs_from(&self, other: &Manifest) -> Option<String> {
        if self.command != other.command {
            return Some(format!(
                "it is a '{}' shard, not '{}'",
                self.command, other.command
            ));
        }
        for a in &self.inputs {
            match other.inputs.iter().find(|b| b.role == a.role) {
                Some(b) if b.sha256 != a.sha256 || b.bytes != a.bytes => {
                    return Some(format!(
                        "the {} input changed: {} ({} bytes, sha256 {}…) then, {} ({} bytes, \
                         sha256 {}…) now",
                        a.role,
                        a.path.display(),
                        a.bytes,
                        &a.sha256[..12.min(a.sha256.len())],
                        b.path.display(),
                        b.bytes,
                        &b.sha256[..12.min(b.sha256.len())]
                    ))
                }
                None => return Some(format!("it has no {} input", a.role)),
                _ => {}
            }
        }
        if self.inputs.len() != other.inputs.len() {
            return Some("the inputs are not the same files".into());
        }
        match (&self.model, &other.model) {
            (Some(a), Some(b)) if a.files != b.files => {
                let what = a
                    .files
                    .iter()
                    .find(|(k, v)| b.files.get(*k) != Some(v))
                    .map(|(k, _)| format!("its file '{k}' differs"))
                    .or_else(|| {
                        b.files
                            .keys()
                            .find(|k| !a.files.contains_key(*k))
                            .map(|k| format!("'{k}' is new"))
                    })
                    .unwrap_or_default();
                return Some(format!(
                    "the model changed ({} then, {} now: {what})",
                    a.path.display(),
                    b.path.display()
                ));
            }
            (Some(_), None) | (None, Some(_)) => return Some("the model differs".into()),
            _ => {}
        }
        if self.settings != other.settings {
            return Some(format!(
                "the settings differ: {} then, {} now",
                self.settings, other.settings
            ));
        }
        None
    }
}

/// How a shard starts.
#[derive(Debug)]
pub enum Start {
    /// Its manifest says it finished for the same job: nothing to do.
    Finished(Manifest),
    /// Continue after `done` items (0: from the start).
    Run(Manifest),
}

/// Decide how the shard described by `fresh` (writing `out`) starts: a finished shard of the
/// same job is done; an unfinished one resumes where its manifest says; a manifest of another
/// job is refused naming what changed, unless `force` (then the shard starts over).
pub fn begin(out: &Path, fresh: Manifest, force: bool) -> Result<Start> {
    let path = manifest_path(out);
    if !force && path.exists() {
        let old = Manifest::read(&path)?;
        if let Some(why) = old.differs_from(&fresh) {
            return Err(Error::config(
                "--shard",
                fresh.shard,
                format!(
                    "{} is the manifest of an earlier run of this shard, and {why}: its \
                     outputs are not this job's. Remove {} and its outputs, give another \
                     --out, or pass --force to start this shard over",
                    path.display(),
                    path.display()
                ),
            ));
        }
        if old.shard != fresh.shard
            || (old.first, old.end, &old.members) != (fresh.first, fresh.end, &fresh.members)
        {
            return Err(Error::config(
                "--shard",
                fresh.shard,
                format!(
                    "{} was written by shard {} ({} {}..{}): give each shard its own --out",
                    path.display(),
                    old.shard,
                    old.unit,
                    old.first,
                    old.end
                ),
            ));
        }
        if old.finished && old.outputs.values().all(|p| p.exists()) {
            return Ok(Start::Finished(old));
        }
        if !old.finished {
            let mut m = fresh;
            m.done = old.done;
            return Ok(Start::Run(m));
        }
        // Finished, but an output was removed since: run it again.
    }
    fresh.write(&path)?;
    Ok(Start::Run(fresh))
}

/// A text file grown line by line as `FILE.partial` (each line flushed: a killed process
/// leaves whole lines, and at most one torn line that a resume cuts off), renamed to `FILE`
/// when finished.
pub struct LineFile {
    path: PathBuf,
    partial: PathBuf,
    w: std::io::BufWriter<File>,
}

impl LineFile {
    /// Start `FILE.partial` afresh with `header` (may be empty).
    pub fn create(path: &Path, header: &str) -> Result<Self> {
        let partial = partial_path(path);
        let f = File::create(&partial).map_err(Error::io(&partial))?;
        let mut lf = LineFile {
            path: path.to_path_buf(),
            partial,
            w: std::io::BufWriter::new(f),
        };
        lf.write(header)?;
        Ok(lf)
    }

    /// Reopen `FILE.partial` keeping its first `lines` lines (cut after them); an error if it
    /// holds fewer.
    pub fn resume(path: &Path, lines: usize) -> Result<Self> {
        let partial = partial_path(path);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&partial)
            .map_err(Error::io(&partial))?;
        let keep = {
            let mut r = BufReader::new(&mut f);
            let mut line = Vec::new();
            let mut keep = 0u64;
            for n in 0..lines {
                line.clear();
                let got = r
                    .read_until(b'\n', &mut line)
                    .map_err(Error::io(&partial))?;
                if got == 0 || line.last() != Some(&b'\n') {
                    return Err(Error::format(
                        &partial,
                        format!(
                            "holds {n} whole lines where its manifest says {lines}: remove \
                             the shard's manifest to run it again"
                        ),
                    ));
                }
                keep += got as u64;
            }
            keep
        };
        f.set_len(keep).map_err(Error::io(&partial))?;
        f.seek(SeekFrom::End(0)).map_err(Error::io(&partial))?;
        Ok(LineFile {
            path: path.to_path_buf(),
            partial,
            w: std::io::BufWriter::new(f),
        })
    }

    /// Append text (whole lines) and flush it to the file.
    pub fn write(&mut self, text: &str) -> Result<()> {
        self.w
            .write_all(text.as_bytes())
            .and_then(|_| self.w.flush())
            .map_err(Error::io(&self.partial))
    }

    /// Sync and rename `FILE.partial` to `FILE`.
    pub fn finish(self) -> Result<PathBuf> {
        let f = self
            .w
            .into_inner()
            .map_err(|e| Error::io(&self.partial)(e.into_error()))?;
        f.sync_all().map_err(Error::io(&self.partial))?;
        std::fs::rename(&self.partial, &self.path).map_err(Error::io(&self.path))?;
        Ok(self.path)
    }
}

/// Count the whole lines of a file (a torn last line is not counted); 0 for a missing file.
pub fn whole_lines(path: &Path) -> Result<usize> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(path)(e)),
    };
    let mut r = BufReader::new(f);
    let mut line = Vec::new();
    let mut n = 0;
    loop {
        line.clear();
        let got = r.read_until(b'\n', &mut line).map_err(Error::io(path))?;
        if got == 0 || line.last() != Some(&b'\n') {
            return Ok(n);
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_syntax() {
        assert_eq!(
            "2/3".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 3 }
        );
        for bad in ["0/3", "4/3", "1/0", "3", "a/b", "1/-2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn contiguous_split_covers_in_order_and_balances() {
        let w: Vec<u64> = (0..37).map(|i| 100 + (i * 7919 % 300)).collect();
        let total: u64 = w.iter().sum();
        let max = *w.iter().max().unwrap();
        for n in [1, 2, 3, 5, 8, 37, 50] {
            let r = split_contiguous(&w, n);
            assert_eq!(r.len(), n);
            let mut next = 0;
            for s in &r {
                assert_eq!(s.start, next);
                next = s.end;
                let sw: u64 = w[s.clone()].iter().sum();
                // Each shard within one item's weight of the ideal share.
                assert!(
                    (sw as f64 - total as f64 / n as f64).abs() <= max as f64,
                    "n {n}: {sw} vs {}",
                    total as f64 / n as f64
                );
            }
            assert_eq!(next, w.len());
        }
        // One huge record: it is one shard's, the others share the rest.
        let r = split_contiguous(&[10, 1_000_000, 10, 10], 3);
        assert_eq!(r.iter().map(|x| x.len()).sum::<usize>(), 4);
        assert!(r.iter().any(|x| x.contains(&1)));
        assert_eq!(split_contiguous(&[], 3), vec![0..0, 0..0, 0..0]);
    }

    #[test]
    fn cost_assignment_is_deterministic_and_balanced() {
        let c = [5.0, 1.0, 4.0, 3.0, 3.0, 2.0, 2.0];
        let a = assign_by_cost(&c, 2);
        assert_eq!(a, assign_by_cost(&c, 2));
        let load = |s| {
            c.iter()
                .zip(&a)
                .filter(|(_, &o)| o == s)
                .map(|(x, _)| x)
                .sum::<f64>()
        };
        assert_eq!(load(0) + load(1), 20.0);
        assert!((load(0) - load(1)).abs() <= 2.0, "{a:?}");
    }

    #[test]
    fn line_file_resumes_after_whole_lines() {
        let dir = std::env::temp_dir().join(format!("hyena-shard-lf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.tsv");
        let mut f = LineFile::create(&p, "h\n").unwrap();
        f.write("a\nb\n").unwrap();
        drop(f);
        // A torn line after the two rows.
        let mut raw = OpenOptions::new()
            .append(true)
            .open(partial_path(&p))
            .unwrap();
        raw.write_all(b"c-torn").unwrap();
        assert_eq!(whole_lines(&partial_path(&p)).unwrap(), 3);
        let mut f = LineFile::resume(&p, 3).unwrap();
        f.write("c\n").unwrap();
        f.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "h\na\nb\nc\n");
        assert!(LineFile::resume(&p, 1).is_err(), "no partial file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
