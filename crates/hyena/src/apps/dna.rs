//! Embeddings and likelihoods of DNA records from FASTA/FASTQ files (`hyena embed`,
//! `hyena score`), one record at a time through a loaded model's [`LanguageModel`]
//! interface: `hidden_states` and `log_likelihood`, which for HyenaDNA run the memory-lean
//! forward ([`crate::models::hyenadna::lean`], workspace [`crate::layers::lean`]).
//!
//! Tokenisation is HyenaDNA's (`CharacterTokenizer`, `hg38_char_tokenizer.py`):
//! `A C G T N` → 7–11, case-sensitive. Soft-masked
//! (lower-case) bases and other letters would silently become `[UNK]` in the reference; here
//! they are an error naming the record and position unless the user chooses: `uppercase`
//! folds case first, `unknown_as_unk` keeps the reference's behaviour. No special tokens are
//! added unless `add_sep` asks for the `[SEP]` the HF tokenizer appends by default.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::io::fasta::{open_records, SeqRecord};
use crate::io::npy::NpyWriter;
use crate::io::safetensors::{temp_path_beside, write_bytes_atomic};
use crate::io::tokenizer::{NucleotideTokenizer, SEP_ID, UNK_ID};
use crate::layers::lean::{InferWorkspace, LeanOptions};
use crate::models::{LanguageModel, Pool, TokenizerKind};

/// How records become token ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TokenizeOptions {
    /// Upper-case bases before lookup (soft-masked genomes); off, as in the reference.
    pub uppercase: bool,
    /// Map characters outside `A C G T N` to `[UNK]` (the reference's behaviour) instead of
    /// failing.
    pub unknown_as_unk: bool,
    /// Append `[SEP]` (what the HF tokenizer does by default; pre-training data had it).
    pub add_sep: bool,
}

/// Token ids of one record; `file` names it in errors.
pub fn tokenize_record(rec: &SeqRecord, opts: TokenizeOptions, file: &Path) -> Result<Vec<u32>> {
    tokenize_as(rec, opts, file, TokenizerKind::Nucleotide)
}

/// Token ids of one record for a model whose tokenizer is `kind`; `file` names it in errors.
/// The byte tokenizer (Evo 2) takes every byte as its id, as the reference's
/// `CharLevelTokenizer` does; it has no `[SEP]`.
pub fn tokenize_as(
    rec: &SeqRecord,
    opts: TokenizeOptions,
    file: &Path,
    kind: TokenizerKind,
) -> Result<Vec<u32>> {
    if kind == TokenizerKind::Bytes {
        if opts.add_sep {
            return Err(Error::config(
                "--special-tokens",
                "on",
                "the byte tokenizer of StripedHyena / Evo 2 models has no [SEP]: drop the flag",
            ));
        }
        return Ok(rec
            .seq
            .iter()
            .map(|&b| {
                if opts.uppercase {
                    b.to_ascii_uppercase() as u32
                } else {
                    b as u32
                }
            })
            .collect());
    }
    let tok = NucleotideTokenizer::new(opts.uppercase);
    let (mut ids, unknown) = tok.encode_checked(&rec.seq);
    if unknown > 0 && !opts.unknown_as_unk {
        let pos = ids.iter().position(|&i| i == UNK_ID).unwrap_or(0);
        let c = rec.seq.get(pos).copied().unwrap_or(b'?');
        let hint = if c.is_ascii_lowercase() && !opts.uppercase {
            "the tokenizer is case-sensitive like HyenaDNA's: pass --uppercase for soft-masked \
             sequence"
        } else {
            "only A, C, G, T and N have ids: pass --unknown-as-unk to map other letters to \
             [UNK] as the reference tokenizer does"
        };
        return Err(Error::Format {
            file: file.to_path_buf(),
            msg: format!(
                "record '{}': {unknown} character(s) outside the alphabet, the first {:?} at \
                 base {}; {hint}",
                rec.id,
                c as char,
                pos + 1
            ),
        });
    }
    if opts.add_sep {
        ids.push(SEP_ID);
    }
    Ok(ids)
}

/// Settings of [`embed_file`].
#[derive(Clone, Debug)]
pub struct EmbedOptions {
    /// Blocks to run: 0 = embeddings, `n_layer` (default) = final states after `ln_f`.
    pub layer: Option<usize>,
    /// A named intermediate output instead of a block count (families that record them, e.g.
    /// `blocks.28.mlp.l3` of an Evo 2 model).
    pub name: Option<String>,
    pub pool: Pool,
    pub tokenize: TokenizeOptions,
    /// Chunk size and residual storage of the lean forward.
    pub lean: LeanOptions,
}

/// One record's place in the output.
#[derive(Clone, Debug, Serialize)]
pub struct RecordRow {
    pub name: String,
    /// Tokens fed to the model (bases, plus `[SEP]` if asked).
    pub tokens: usize,
    /// First output row of the record.
    pub row: u64,
    /// Output rows of the record (1 when pooled).
    pub rows: u64,
}

/// What [`embed_file`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct EmbedReport {
    pub out: PathBuf,
    /// The record table written beside the array (`<out>.records.tsv`).
    pub records_tsv: PathBuf,
    pub shape: [u64; 2],
    pub layer: usize,
    pub records: Vec<RecordRow>,
}

/// Progress of a file: the record being processed and the blocks done on it.
#[derive(Clone, Debug)]
pub struct Progress {
    pub record: usize,
    pub name: String,
    pub tokens: usize,
    pub blocks_done: usize,
    pub blocks: usize,
}

/// A progress callback: called when a record starts and after each of its blocks.
pub type ProgressFn = Box<dyn FnMut(&Progress) + Send>;

/// Where the records of [`embed_records`] and [`score_records`] come from.
#[derive(Clone, Copy, Debug)]
pub enum Records<'a> {
    /// A FASTA/FASTQ file (plain, gzip or xz), streamed one record at a time.
    File(&'a Path),
    /// The records `first..end` (0-based, in file order) of a FASTA/FASTQ file: one shard's
    /// (`--shard`, [`crate::apps::shard`]).
    FileRange(&'a Path, usize, usize),
    /// Records already in memory (the Python binding's strings); errors name them as the
    /// records of `<sequences>`.
    Memory(&'a [SeqRecord]),
}

impl Records<'_> {
    /// The name errors give the source.
    pub fn path(&self) -> &Path {
        match self {
            Records::File(p) | Records::FileRange(p, ..) => p,
            Records::Memory(_) => Path::new("<sequences>"),
        }
    }
}

/// Run `each(record, ids, workspace)` on every record of `src`, tokenized with `tokenize`,
/// telling `progress` (if any) when a record starts and after each of its `blocks` blocks.
/// Errors of `each` are said to concern that record.
fn for_each_record(
    kind: TokenizerKind,
    src: Records<'_>,
    tokenize: TokenizeOptions,
    lean: LeanOptions,
    blocks: usize,
    progress: Option<ProgressFn>,
    mut each: impl FnMut(&SeqRecord, &[u32], &mut InferWorkspace) -> Result<()>,
) -> Result<()> {
    use std::sync::{Arc, Mutex};
    let progress = progress.map(|p| Arc::new(Mutex::new(p)));
    let mut ws = InferWorkspace::with_options(lean);
    let file = src.path();
    let mut one = |i: usize, rec: &SeqRecord, ws: &mut InferWorkspace| -> Result<()> {
        crate::interrupt::check()?;
        let ids = tokenize_as(rec, tokenize, file, kind)?;
        if let Some(p) = &progress {
            let (p, mut cur) = (
                p.clone(),
                Progress {
                    record: i,
                    name: rec.id.clone(),
                    tokens: ids.len(),
                    blocks_done: 0,
                    blocks,
                },
            );
            if let Ok(mut f) = p.lock() {
                f(&cur);
            }
            ws.set_progress(Some(Box::new(move |done, total| {
                cur.blocks_done = done;
                cur.blocks = total;
                if let Ok(mut f) = p.lock() {
                    f(&cur);
                }
            })));
        }
        each(rec, &ids, ws).map_err(|e| in_record(e, file, rec))
    };
    match src {
        Records::File(fasta) => {
            for (i, rec) in open_records(fasta)?.enumerate() {
                one(i, &rec?, &mut ws)?;
            }
        }
        Records::FileRange(fasta, first, end) => {
            for (i, rec) in open_records(fasta)?.enumerate().take(end) {
                // Records before the range are parsed (a FASTA has no index) but not run.
                let rec = rec?;
                if i >= first {
                    one(i, &rec, &mut ws)?;
                }
            }
        }
        Records::Memory(recs) => {
            for (i, rec) in recs.iter().enumerate() {
                one(i, rec, &mut ws)?;
            }
        }
    }
    Ok(())
}

/// The length in bases of every record of a FASTA/FASTQ file, in order (one streamed pass:
/// what `--shard` balances on).
pub fn record_lengths(fasta: &Path) -> Result<Vec<u64>> {
    open_records(fasta)?
        .map(|r| r.map(|r| r.seq.len() as u64))
        .collect()
}

/// The width of the rows [`embed_records`] gives for `opts` (the model's, or that of the named
/// output), or the family's error naming the outputs that exist.
pub fn embed_width(lm: &dyn LanguageModel, opts: &EmbedOptions) -> Result<usize> {
    match &opts.name {
        None => Ok(lm.d_model()),
        Some(n) => match lm.named_width(n) {
            Some(w) => Ok(w),
            // The family's own error, naming what exists.
            None => Err(lm
                .named_output(&[], n, &mut InferWorkspace::new(1))
                .err()
                .unwrap_or_else(|| Error::config("layer", n, "unknown output"))),
        },
    }
}

/// The rows of one record from [`embed_records`]: borrowed from the workspace, or handed
/// over (asked for with `own_rows`, per-base rows only).
#[derive(Debug)]
pub enum RecordRows<'a> {
    Borrowed(&'a [f32]),
    Owned(Vec<f32>),
}

impl RecordRows<'_> {
    pub fn as_slice(&self) -> &[f32] {
        match self {
            RecordRows::Borrowed(s) => s,
            RecordRows::Owned(v) => v,
        }
    }
    /// The rows as a vector: the handed-over buffer, or a copy of the borrowed rows.
    pub fn into_vec(self) -> Vec<f32> {
        match self {
            RecordRows::Borrowed(s) => s.to_vec(),
            RecordRows::Owned(v) => v,
        }
    }
}

/// Embed every record of `src`: `sink(record, tokens, rows)` gets each record's rows, one
/// (`[D]`) when pooled, `[L, D]` with [`Pool::None`]. The pooling of `hyena embed` and of the
/// Python binding, so that both give the same bits. With `own_rows`, per-base rows are handed
/// over as [`RecordRows::Owned`] (moved out of the workspace where the family allows, see
/// [`LanguageModel::hidden_states_owned`]) for callers that keep them.
pub fn embed_records(
    lm: &dyn LanguageModel,
    src: Records<'_>,
    opts: &EmbedOptions,
    own_rows: bool,
    progress: Option<ProgressFn>,
    mut sink: impl FnMut(&SeqRecord, usize, RecordRows<'_>) -> Result<()>,
) -> Result<()> {
    let layer = opts.layer.unwrap_or(lm.n_layer());
    let d = embed_width(lm, opts)?;
    let mut named = Vec::new();
    let mut pooled = vec![0.0f32; d];
    for_each_record(
        lm.tokenizer(),
        src,
        opts.tokenize,
        opts.lean,
        layer,
        progress,
        |rec, ids, ws| {
            check_record_fits(lm, ids.len(), opts.lean.chunk)?;
            if own_rows && opts.pool == Pool::None {
                let rows = match &opts.name {
                    None => lm.hidden_states_owned(ids, layer, ws)?,
                    Some(n) => lm.named_output(ids, n, ws)?,
                };
                return sink(rec, ids.len(), RecordRows::Owned(rows));
            }
            let h = match &opts.name {
                None => lm.hidden_states(ids, layer, ws)?,
                Some(n) => {
                    named = lm.named_output(ids, n, ws)?;
                    &named
                }
            };
            match opts.pool {
                Pool::None => sink(rec, ids.len(), RecordRows::Borrowed(h)),
                Pool::Mean => {
                    let mut acc = vec![0.0f64; d];
                    for r in h.chunks_exact(d) {
                        for (a, &v) in acc.iter_mut().zip(r) {
                            *a += v as f64;
                        }
                    }
                    let n = (h.len() / d) as f64;
                    for (p, a) in pooled.iter_mut().zip(&acc) {
                        *p = (*a / n) as f32;
                    }
                    sink(rec, ids.len(), RecordRows::Borrowed(&pooled))
                }
                Pool::Last => sink(rec, ids.len(), RecordRows::Borrowed(&h[h.len() - d..])),
            }
        },
    )
}

/// The header of the record table `hyena embed` writes beside its array.
pub const RECORDS_HEADER: &str = "record\tname\ttokens\tfirst_row\trows\n";
/// The header of `hyena score --per-base`.
pub const PER_BASE_HEADER: &str = "record\tposition\tbase\tlog_prob\n";

/// `OUT.records.tsv`: the record table beside an embedding array.
pub fn records_tsv(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".records.tsv");
    PathBuf::from(name)
}

/// One line of the record table.
pub fn record_line(i: usize, name: &str, tokens: usize, row: u64, rows: u64) -> String {
    format!("{i}\t{name}\t{tokens}\t{row}\t{rows}\n")
}

/// Embed every record of `fasta` (FASTA/FASTQ, plain, gzip or xz; streamed) into `out`
/// (`.npy`, float32): `[records, D]` when pooled, `[Σ tokens, D]` with [`Pool::None`] (one
/// record: `[bases, D]`). A tab-separated table of records and their rows is written to
/// `<out>.records.tsv`.
pub fn embed_file(
    lm: &dyn LanguageModel,
    fasta: &Path,
    out: &Path,
    opts: &EmbedOptions,
    progress: Option<ProgressFn>,
) -> Result<EmbedReport> {
    let layer = opts.layer.unwrap_or(lm.n_layer());
    let d = embed_width(lm, opts)?;
    let mut npy = NpyWriter::create(out, d)?;
    let mut records = Vec::new();
    embed_records(
        lm,
        Records::File(fasta),
        opts,
        false,
        progress,
        |rec, tokens, rows| {
            let row = npy.rows();
            npy.write_rows(rows.as_slice())?;
            records.push(RecordRow {
                name: rec.id.clone(),
                tokens,
                row,
                rows: npy.rows() - row,
            });
            Ok(())
        },
    )?;
    let shape = [npy.rows(), d as u64];
    let out = npy.finish()?;
    let records_tsv = records_tsv(&out);
    let mut s = String::from(RECORDS_HEADER);
    for (i, r) in records.iter().enumerate() {
        s.push_str(&record_line(i, &r.name, r.tokens, r.row, r.rows));
    }
    write_bytes_atomic(&records_tsv, s.as_bytes())?;
    Ok(EmbedReport {
        out,
        records_tsv,
        shape,
        layer,
        records,
    })
}

/// Say which record an error of the forward concerns; a record longer than the model takes
/// gets what the user can do about it (the operator's own advice is about building one).
fn in_record(e: Error, file: &Path, rec: &SeqRecord) -> Error {
    let msg = match &e {
        Error::TooLong { len, l_max, .. } => format!(
            "record '{}' ({} bases) is {len} tokens long, but the model takes at most {l_max} \
             (its l_max / max_seq_len): split the record into pieces of at most {l_max} bases, \
             or use a model trained with a larger l_max (--chunk only sets the memory per \
             pass, not the longest record)",
            rec.id,
            rec.seq.len()
        ),
        _ => format!("record '{}' ({} bases): {e}", rec.id, rec.seq.len()),
    };
    Error::Format {
        file: file.to_path_buf(),
        msg,
    }
}

/// Refuse a record whose lean forward would not fit in memory, before running it: the
/// family's own estimate ([`LanguageModel::forward_bytes`]; StripedHyena: residual stream,
/// one block's keys and values, logits, chunk buffers), else the HyenaDNA lean forward's: the
/// residual stream and convolution rows (about `3·L·D` floats) and the chunk buffers (about
/// `P·20·D`).
fn check_record_fits(lm: &dyn LanguageModel, tokens: usize, chunk: usize) -> Result<()> {
    use crate::memory::{floats, mul};
    if tokens > lm.max_len() {
        // Refused by the forward with what to do about a record that long.
        return Ok(());
    }
    let d = lm.d_model();
    let bytes = lm.forward_bytes(tokens, chunk).unwrap_or_else(|| {
        floats(
            mul(&[tokens, d.saturating_mul(3).saturating_add(8)]).saturating_add(mul(&[
                chunk.min(tokens.max(1)),
                d,
                20,
            ])),
        )
    });
    crate::memory::check_fits(
        &format!("the lean forward of {tokens} tokens at d_model {d}"),
        bytes,
        "the record's length (split it) or --chunk",
    )
}

/// Likelihood of one record under the model.
#[derive(Clone, Debug, Serialize)]
pub struct RecordScore {
    pub name: String,
    /// Tokens fed to the model.
    pub tokens: usize,
    /// Positions scored: every token after the first (the first has no context).
    pub scored: usize,
    /// Σ log p(token | prefix), natural log (the mean over scored positions with
    /// [`Reduce::Mean`]; averaged with the reverse complement's when asked).
    pub log_likelihood: f64,
    /// `-log_likelihood / scored / ln 2`.
    pub bits_per_base: f64,
}

/// How a record's per-token log-likelihoods become its score.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reduce {
    /// Σ log p (nats), the default.
    #[default]
    Sum,
    /// The mean over scored positions (the evo2 package's `score_sequences` default).
    Mean,
}

/// Settings of [`score_file`] beyond tokenization.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScoreOptions {
    pub reduce: Reduce,
    /// Average the score with the reverse complement's (strand-symmetric scores).
    pub reverse_complement: bool,
}

/// The reverse complement of DNA text (A↔T, C↔G, case kept, N stays N); an error naming the
/// first other character.
pub fn reverse_complement(seq: &[u8]) -> std::result::Result<Vec<u8>, (usize, u8)> {
    seq.iter()
        .rev()
        .enumerate()
        .map(|(i, &b)| {
            Ok(match b {
                b'A' => b'T',
                b'T' => b'A',
                b'C' => b'G',
                b'G' => b'C',
                b'a' => b't',
                b't' => b'a',
                b'c' => b'g',
                b'g' => b'c',
                b'N' | b'n' => b,
                other => return Err((seq.len() - 1 - i, other)),
            })
        })
        .collect()
}

/// Score every record of `src`: `sink(record, ids, score, log_probs)` gets each record's
/// score and its `L − 1` per-position log-probabilities (`log_probs[j]` is that of token
/// `j + 1`; of the forward strand with `reverse_complement`).
pub fn score_records(
    lm: &dyn LanguageModel,
    src: Records<'_>,
    tokenize: TokenizeOptions,
    lean: LeanOptions,
    progress: Option<ProgressFn>,
    score: ScoreOptions,
    mut sink: impl FnMut(&SeqRecord, &[u32], RecordScore, &[f32]) -> Result<()>,
) -> Result<()> {
    let file = src.path().to_path_buf();
    let mut lp = Vec::new();
    let mut rc_lp = Vec::new();
    for_each_record(
        lm.tokenizer(),
        src,
        tokenize,
        lean,
        lm.n_layer(),
        progress,
        |rec, ids, ws| {
            check_record_fits(lm, ids.len(), lean.chunk)?;
            let mut total = lm.log_likelihood(ids, ws, &mut lp)?;
            let scored = lp.len();
            if score.reverse_complement {
                let rc = reverse_complement(&rec.seq).map_err(|(pos, c)| {
                    Error::config(
                        "--reverse-complement",
                        format!("{:?} at base {}", c as char, pos + 1),
                        "only A, C, G, T and N have complements",
                    )
                })?;
                let rc_rec = SeqRecord {
                    id: rec.id.clone(),
                    seq: rc,
                };
                let rc_ids = tokenize_as(&rc_rec, tokenize, &file, lm.tokenizer())?;
                let rc_total = lm.log_likelihood(&rc_ids, ws, &mut rc_lp)?;
                total = 0.5 * (total + rc_total);
            }
            let total = match score.reduce {
                Reduce::Sum => total,
                Reduce::Mean if scored > 0 => total / scored as f64,
                Reduce::Mean => f64::NAN,
            };
            let s = RecordScore {
                name: rec.id.clone(),
                tokens: ids.len(),
                scored,
                log_likelihood: total,
                bits_per_base: if scored > 0 {
                    let sum = if score.reduce == Reduce::Mean {
                        total * scored as f64
                    } else {
                        total
                    };
                    -sum / scored as f64 / std::f64::consts::LN_2
                } else {
                    f64::NAN
                },
            };
            sink(rec, ids, s, &lp)
        },
    )
}

/// The per-base TSV lines of one record: `record`, 1-based `position`, `base`, `log_prob`
/// (what `hyena score --per-base` writes).
pub fn per_base_lines(
    lm: &dyn LanguageModel,
    tok: &NucleotideTokenizer,
    name: &str,
    ids: &[u32],
    lp: &[f32],
) -> String {
    let mut s = String::with_capacity(lp.len() * (name.len() + 20));
    for (j, &v) in lp.iter().enumerate() {
        let base = match lm.tokenizer() {
            TokenizerKind::Bytes => (ids[j + 1] as u8 as char).to_string(),
            TokenizerKind::Nucleotide => tok.token(ids[j + 1]).to_string(),
        };
        s.push_str(&format!("{name}\t{}\t{base}\t{v:.6}\n", j + 2));
    }
    s
}

/// Score every record of `fasta`; with `per_base`, also write one line per scored position
/// (`record`, 1-based `position`, `base`, `log_prob`) to that TSV file.
pub fn score_file(
    lm: &dyn LanguageModel,
    fasta: &Path,
    tokenize: TokenizeOptions,
    lean: LeanOptions,
    per_base: Option<&Path>,
    progress: Option<ProgressFn>,
    score: ScoreOptions,
) -> Result<Vec<RecordScore>> {
    let mut tsv = match per_base {
        Some(p) => Some(TsvOut::create(p)?),
        None => None,
    };
    let tok = NucleotideTokenizer::new(tokenize.uppercase);
    let mut out = Vec::new();
    score_records(
        lm,
        Records::File(fasta),
        tokenize,
        lean,
        progress,
        score,
        |rec, ids, s, lp| {
            if let Some(t) = tsv.as_mut() {
                t.line(format_args!(
                    "{}",
                    per_base_lines(lm, &tok, &rec.id, ids, lp)
                ))?;
            }
            out.push(s);
            Ok(())
        },
    )?;
    if let Some(t) = tsv {
        t.finish()?;
    }
    Ok(out)
}

/// A TSV written through a temp file and renamed at the end.
struct TsvOut {
    path: PathBuf,
    tmp: PathBuf,
    w: std::io::BufWriter<std::fs::File>,
    done: bool,
}

impl Drop for TsvOut {
    /// Unfinished (an error on the way): remove the temp file.
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl TsvOut {
    fn create(path: &Path) -> Result<Self> {
        let tmp = temp_path_beside(path);
        let f = std::fs::File::create(&tmp).map_err(|source| Error::Io {
            file: path.to_path_buf(),
            source,
        })?;
        let mut t = TsvOut {
            path: path.to_path_buf(),
            tmp,
            w: std::io::BufWriter::new(f),
            done: false,
        };
        t.line(format_args!("{PER_BASE_HEADER}"))?;
        Ok(t)
    }
    fn line(&mut self, a: std::fmt::Arguments<'_>) -> Result<()> {
        self.w.write_fmt(a).map_err(|source| Error::Io {
            file: self.path.clone(),
            source,
        })
    }
    fn finish(mut self) -> Result<()> {
        let io = |source| Error::Io {
            file: self.path.clone(),
            source,
        };
        self.w.flush().map_err(io)?;
        std::fs::rename(&self.tmp, &self.path).map_err(io)?;
        self.done = true;
        Ok(())
    }
}
