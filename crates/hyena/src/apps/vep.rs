//! Variant-effect scoring (`hyena vep`): for each variant, the log-likelihood of the window
//! of the reference genome centred on it with the alternative allele minus with the reference
//! allele, as Evo 2's BRCA1 zero-shot example computes it (Brixi et al. 2025; the evo2
//! repository's `notebooks/brca1/brca1_zero_shot_vep.ipynb`): for a variant at 0-based
//! position `p` of a chromosome of length `n`, the window is `[max(0, p − W/2), min(n, p +
//! W/2))`, the alternative window replaces the reference allele's bases inside it by the
//! alternative's, and each window's score is the mean (by default, the package's
//! `score_sequences`) or the sum of `log p(base | preceding bases)` over it.
//!
//! **Shared work.** Both windows of a variant start with the same bases (everything before the
//! variant), so a model with a streaming forward runs that prefix once, marks its state, and
//! runs the two suffixes from the mark ([`PrefixScorer`]); consecutive variants at the same
//! position (other alternative alleles) share the prefix and the reference window too. The
//! scores equal those of the two full windows run separately (`share: false`, tested to 1e-4).
//!
//! **Output.** A TSV written to `OUT.partial`, one flushed row per variant in input order, then
//! renamed to `OUT` when every variant is scored; an interrupted run resumes from the partial
//! file (its settings line must match; a torn last row is dropped). Every variant is checked
//! against the reference genome before any scoring: a mismatched reference allele, an unknown
//! chromosome or a position past its end is an error naming the variant.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::apps::dna::{tokenize_as, Reduce, TokenizeOptions};
use crate::error::{Error, Result};
use crate::io::fasta::{read_records, SeqRecord};
use crate::io::variants::Variant;
use crate::models::score::PrefixScorer;
use crate::models::{LanguageModel, TokenizerKind};

/// The reference genome: FASTA records by name.
pub struct Genome {
    path: PathBuf,
    records: Vec<SeqRecord>,
    index: HashMap<String, usize>,
}

impl Genome {
    /// Read every record of `path` (FASTA/FASTQ, plain or compressed).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let records = read_records(path)?;
        if records.is_empty() {
            return Err(Error::format(path, "no sequence records"));
        }
        let index = records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        Ok(Genome {
            path: path.to_path_buf(),
            records,
            index,
        })
    }

    /// The record named `chrom`, also found as `chr17` for `17` and the reverse.
    pub fn get(&self, chrom: &str) -> Option<&SeqRecord> {
        let alt = match chrom.strip_prefix("chr") {
            Some(bare) => bare.to_string(),
            None => format!("chr{chrom}"),
        };
        self.index
            .get(chrom)
            .or_else(|| self.index.get(&alt))
            .map(|&i| &self.records[i])
    }
}

/// Settings of a scoring run (saved in the output's first line; a resumed run must match).
#[derive(Clone, Debug, Serialize)]
pub struct VepOptions {
    /// Bases per window (the reference window; the alternative one differs by the indel size).
    pub window: usize,
    /// How a window's per-base log-likelihoods become its score.
    pub reduce: Reduce,
    /// Upper-case the windows (soft-masked genomes).
    pub uppercase: bool,
    /// Share the prefix before the variant between the two windows (off: both full windows
    /// run separately; the same scores).
    #[serde(skip)]
    pub share: bool,
}

/// One scored variant.
#[derive(Clone, Debug, PartialEq)]
pub struct VepRow {
    /// Index of the variant in the input.
    pub index: usize,
    /// 1-based first base of the reference window, and its length.
    pub window_start: u64,
    pub window_len: usize,
    pub ref_score: f64,
    pub alt_score: f64,
}

impl VepRow {
    /// `alt_score − ref_score`: negative when the model finds the alternative less likely.
    pub fn delta(&self) -> f64 {
        self.alt_score - self.ref_score
    }
}

/// Where a variant sits: its record, the window `[start, end)` (0-based) and the variant's
/// offset inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    record: usize,
    start: usize,
    end: usize,
    off: usize,
}

impl Placed {
    /// Bases of the variant's window (what `--shard` balances variants on).
    pub fn window_len(&self) -> usize {
        self.end - self.start
    }
}

/// Place every variant in `genome` with windows of `window` bases, before any scoring: an
/// unknown chromosome, a position past the record's end, or a REF that differs from the
/// genome is an error naming the variant (the first such, and how many there are).
pub fn place_variants(genome: &Genome, variants: &[Variant], window: usize) -> Result<Vec<Placed>> {
    if window < 2 {
        return Err(Error::config(
            "--window",
            window,
            "a window needs at least 2 bases to score",
        ));
    }
    let mut out = Vec::with_capacity(variants.len());
    let mut first: Option<String> = None;
    let mut bad = 0usize;
    for v in variants {
        let placed = place(genome, v, window);
        match placed {
            Ok(p) => out.push(p),
            Err(msg) => {
                bad += 1;
                if first.is_none() {
                    first = Some(format!("line {}: variant {}: {msg}", v.line, v.label()));
                }
            }
        }
    }
    if let Some(f) = first {
        let more = if bad > 1 {
            format!(" ({} more variant(s) fail this check)", bad - 1)
        } else {
            String::new()
        };
        return Err(Error::format(
            &genome.path,
            format!(
                "{f}{more}; the variant file and the reference FASTA must be the same assembly"
            ),
        ));
    }
    Ok(out)
}

fn place(genome: &Genome, v: &Variant, window: usize) -> std::result::Result<Placed, String> {
    let Some(rec) = genome.get(&v.chrom) else {
        let names: Vec<&str> = genome
            .records
            .iter()
            .take(5)
            .map(|r| r.id.as_str())
            .collect();
        return Err(format!(
            "chromosome {:?} is not in the reference (its records: {}{})",
            v.chrom,
            names.join(", "),
            if genome.records.len() > 5 {
                ", …"
            } else {
                ""
            }
        ));
    };
    let n = rec.seq.len();
    let p = (v.pos - 1) as usize;
    let r_end = p.saturating_add(v.reference.len());
    if v.pos > n as u64 || r_end > n {
        return Err(format!(
            "outside the reference: record '{}' has {n} bases, the allele ends at base {r_end}",
            rec.id
        ));
    }
    let found = &rec.seq[p..r_end];
    if !found.eq_ignore_ascii_case(&v.reference) {
        return Err(format!(
            "REF {} does not match the reference, which has {} at {}:{}",
            String::from_utf8_lossy(&v.reference),
            String::from_utf8_lossy(found),
            rec.id,
            v.pos
        ));
    }
    let start = p.saturating_sub(window / 2);
    let end = n.min(p + window / 2).max(r_end);
    if end - start < 2 {
        return Err(format!(
            "its window has {} base(s); at least 2 are needed",
            end - start
        ));
    }
    let record = genome.index[&rec.id];
    Ok(Placed {
        record,
        start,
        end,
        off: p - start,
    })
}

/// Token ids of `seq` for a model whose tokenizer is `kind`.
fn tokens(seq: &[u8], kind: TokenizerKind, opts: &VepOptions, file: &Path) -> Result<Vec<u32>> {
    let rec = SeqRecord {
        id: "window".into(),
        seq: seq.to_vec(),
    };
    let t = TokenizeOptions {
        uppercase: opts.uppercase,
        unknown_as_unk: true,
        add_sep: false,
    };
    tokenize_as(&rec, t, file, kind)
}

/// A window's score from the sum of its `count` log-likelihoods.
fn reduce(sum: f64, count: usize, r: Reduce) -> f64 {
    match r {
        Reduce::Sum => sum,
        Reduce::Mean => sum / count.max(1) as f64,
    }
}

fn sum(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64).sum()
}

/// Score `variants[skip..]` (placed by [`place_variants`]) under `lm`, calling `sink` with each
/// row in input order and `progress(done, total)` after each. With `opts.share`, `scorer`
/// shares the prefix (module docs); without it, both full windows are scored separately by
/// `scorer` from the start.
#[allow(clippy::too_many_arguments)]
pub fn score_variants(
    lm: &dyn LanguageModel,
    scorer: &mut dyn PrefixScorer,
    genome: &Genome,
    variants: &[Variant],
    placed: &[Placed],
    opts: &VepOptions,
    skip: usize,
    sink: &mut dyn FnMut(&VepRow) -> Result<()>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let kind = lm.tokenizer();
    let file = genome.path.as_path();
    let total = variants.len();
    let mut lp = Vec::new();
    let mut i = skip;
    while i < total {
        crate::interrupt::check()?;
        // The group of consecutive variants at the same place: one prefix, one reference window.
        let pl = placed[i];
        let mut j = i + 1;
        while j < total && placed[j] == pl && variants[j].chrom == variants[i].chrom {
            j += 1;
        }
        let seq = &genome.records[pl.record].seq[pl.start..pl.end];
        let ref_tok = tokens(seq, kind, opts, file)?;
        let alt_tok = |v: &Variant| -> Result<Vec<u32>> {
            let mut s = seq[..pl.off].to_vec();
            s.extend_from_slice(&v.alt);
            s.extend_from_slice(&seq[pl.off + v.reference.len()..]);
            tokens(&s, kind, opts, file)
        };
        let score_full = |scorer: &mut dyn PrefixScorer, t: &[u32], lp: &mut Vec<f32>| {
            scorer
                .start(t, lp)
                .map(|_| reduce(sum(lp), t.len() - 1, opts.reduce))
        };
        if opts.share && pl.off > 0 {
            scorer.start(&ref_tok[..pl.off], &mut lp)?;
            let prefix = sum(&lp);
            scorer.mark();
            scorer.extend(&ref_tok[pl.off..], &mut lp)?;
            let ref_score = reduce(prefix + sum(&lp), ref_tok.len() - 1, opts.reduce);
            for (k, v) in variants.iter().enumerate().take(j).skip(i) {
                let at = alt_tok(v)?;
                scorer.rewind()?;
                scorer.extend(&at[pl.off..], &mut lp)?;
                let alt_score = reduce(prefix + sum(&lp), at.len() - 1, opts.reduce);
                sink(&VepRow {
                    index: k,
                    window_start: pl.start as u64 + 1,
                    window_len: pl.end - pl.start,
                    ref_score,
                    alt_score,
                })?;
                progress(k + 1, total);
            }
        } else {
            // Naive: both full windows per variant (or nothing to share: the variant is the
            // window's first base).
            let mut shared_ref = None;
            for (k, v) in variants.iter().enumerate().take(j).skip(i) {
                let ref_score = match (opts.share, shared_ref) {
                    (true, Some(r)) => r,
                    _ => score_full(scorer, &ref_tok, &mut lp)?,
                };
                shared_ref = Some(ref_score);
                let alt_score = score_full(scorer, &alt_tok(v)?, &mut lp)?;
                sink(&VepRow {
                    index: k,
                    window_start: pl.start as u64 + 1,
                    window_len: pl.end - pl.start,
                    ref_score,
                    alt_score,
                })?;
                progress(k + 1, total);
            }
        }
        i = j;
    }
    Ok(())
}

/// The output columns.
pub const COLUMNS: &str =
    "chrom\tpos\tid\tref\talt\twindow_start\twindow_len\tref_score\talt_score\tdelta";

/// One output row (`f64` printed shortest-exact, so a resumed file is byte-identical).
pub fn format_row(v: &Variant, r: &VepRow) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
        v.chrom,
        v.pos,
        v.id,
        String::from_utf8_lossy(&v.reference),
        String::from_utf8_lossy(&v.alt),
        r.window_start,
        r.window_len,
        r.ref_score,
        r.alt_score,
        r.delta()
    )
}

/// The file rows are written to until every variant is scored: `OUT.partial`.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// The output being written: the open partial file and how many variants it already holds.
pub struct VepWriter {
    file: File,
    partial: PathBuf,
    out: PathBuf,
    /// Variants already in the file (skipped by a resumed run).
    pub done: usize,
}

impl VepWriter {
    /// Open `OUT.partial` for `variants` under `settings` (one line, saved first). A fresh run
    /// refuses to overwrite an interrupted one's partial file; `resume` continues it after
    /// checking its settings and that its rows are the first variants' (a torn last row is
    /// dropped).
    pub fn open(out: &Path, settings: &str, variants: &[Variant], resume: bool) -> Result<Self> {
        let partial = partial_path(out);
        let head = format!("# hyena vep {settings}\n#{COLUMNS}\n");
        if !resume || !partial.exists() {
            if partial.exists() {
                return Err(Error::config(
                    "--out",
                    partial.display(),
                    "an interrupted run left this file: pass --resume to continue it, or \
                     remove it to start over",
                ));
            }
            let mut file = File::create(&partial).map_err(Error::io(&partial))?;
            file.write_all(head.as_bytes())
                .and_then(|_| file.flush())
                .map_err(Error::io(&partial))?;
            return Ok(VepWriter {
                file,
                partial,
                out: out.to_path_buf(),
                done: 0,
            });
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&partial)
            .map_err(Error::io(&partial))?;
        let mut reader = BufReader::new(&mut file);
        let mut line = String::new();
        let mut good = 0u64; // bytes of whole, checked lines
        let mut done = 0usize;
        let mut n = 0usize;
        loop {
            line.clear();
            let got = reader.read_line(&mut line).map_err(Error::io(&partial))?;
            if got == 0 || !line.ends_with('\n') {
                break; // end, or a torn last row
            }
            n += 1;
            let bad = |what: String| {
                Error::format(
                    &partial,
                    format!(
                        "line {n}: {what}; this partial output is not from the same run: \
                         remove it (or give another --out) to start over"
                    ),
                )
            };
            if n == 1 {
                if line != format!("# hyena vep {settings}\n") {
                    return Err(bad(format!(
                        "was written with other settings ({})",
                        line.trim_end()
                    )));
                }
            } else if n > 2 {
                let cols: Vec<&str> = line.trim_end().split('\t').collect();
                let Some(v) = variants.get(done) else {
                    return Err(bad("more rows than variants".into()));
                };
                let key = [
                    v.chrom.clone(),
                    v.pos.to_string(),
                    String::from_utf8_lossy(&v.reference).into(),
                    String::from_utf8_lossy(&v.alt).into(),
                ];
                if cols.len() != 10
                    || [cols[0], cols[1], cols[3], cols[4]] != [&key[0], &key[1], &key[2], &key[3]]
                {
                    return Err(bad(format!(
                        "the row is not variant {} ({})",
                        done + 1,
                        v.label()
                    )));
                }
                done += 1;
            }
            good += got as u64;
        }
        if n < 2 {
            return Err(Error::format(
                &partial,
                "the header is missing or torn: remove the file to start over",
            ));
        }
        drop(reader);
        file.set_len(good).map_err(Error::io(&partial))?;
        file.seek(SeekFrom::End(0)).map_err(Error::io(&partial))?;
        Ok(VepWriter {
            file,
            partial,
            out: out.to_path_buf(),
            done,
        })
    }

    /// Append one row and flush it to the file.
    pub fn write(&mut self, v: &Variant, r: &VepRow) -> Result<()> {
        self.file
            .write_all(format_row(v, r).as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(Error::io(&self.partial))
    }

    /// Every variant is written: sync and rename `OUT.partial` to `OUT`.
    pub fn finish(self) -> Result<PathBuf> {
        self.file.sync_all().map_err(Error::io(&self.partial))?;
        std::fs::rename(&self.partial, &self.out).map_err(Error::io(&self.out))?;
        Ok(self.out)
    }
}
