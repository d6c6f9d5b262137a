//! Token streams for language-model training and evaluation: FASTA/FASTQ records or text
//! files, tokenized and joined into one stream (records separated by the tokenizer's
//! separator), with the last `val_fraction` held out as the validation stream.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::fasta::open_records;
use crate::io::text::read_text;
use crate::io::tokenizer::Tokenizer;

/// Where the training tokens come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// FASTA/FASTQ files (gzip or xz allowed). With no files at all, the E. coli K-12 genome
    /// shipped in `data/ecoli/` is used.
    pub fasta: Vec<PathBuf>,
    /// Plain-text files (gzip allowed), tokenized as bytes.
    pub text: Vec<PathBuf>,
    pub tokenizer: Tokenizer,
    /// Fraction of the token stream, at its end, held out for validation.
    pub val_fraction: f32,
    /// Largest Markov order scored as a baseline.
    pub markov_order: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            fasta: Vec::new(),
            text: Vec::new(),
            tokenizer: Tokenizer::default(),
            val_fraction: 0.05,
            markov_order: 8,
        }
    }
}

/// The embedded default data set.
pub fn default_genome() -> PathBuf {
    // The workspace root is two levels above this crate's manifest.
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(crate_dir)
        .join("data/ecoli/MG1655-K12.fasta.gz")
}

/// Tokens of a data set, split into training and validation streams.
#[derive(Clone, Debug)]
pub struct TokenData {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    /// Characters that were outside the tokenizer's alphabet (mapped to its unknown token).
    pub unknown: usize,
    /// A one-line description (files, records, tokens).
    pub summary: String,
}

/// Read and tokenize the configured files and split them (validation = the last
/// `val_fraction` of the stream). FASTA records are separated by the tokenizer's separator.
pub fn load_tokens(cfg: &DataConfig) -> Result<TokenData> {
    if !(0.0..1.0).contains(&cfg.val_fraction) || cfg.val_fraction <= 0.0 {
        return Err(Error::config(
            "data.val_fraction",
            cfg.val_fraction,
            "must lie in (0, 1), e.g. 0.05",
        ));
    }
    let mut all = load_stream(cfg)?;
    let n_val = ((all.train.len() as f64) * cfg.val_fraction as f64).round() as usize;
    let val = all
        .train
        .split_off(all.train.len() - n_val.min(all.train.len()));
    all.summary = format!(
        "{}: {} training + {} validation tokens",
        all.summary,
        all.train.len(),
        val.len()
    );
    all.val = val;
    Ok(all)
}

/// Read and tokenize the configured files into one stream (returned in `train`; `val` is
/// empty). With no files at all, the shipped E. coli genome is read.
pub fn load_stream(cfg: &DataConfig) -> Result<TokenData> {
    let mut fasta = cfg.fasta.clone();
    if fasta.is_empty() && cfg.text.is_empty() {
        fasta.push(default_genome());
    }
    let mut toks: Vec<u32> = Vec::new();
    let (mut unknown, mut records) = (0usize, 0usize);
    for path in &fasta {
        for rec in open_records(path)? {
            let rec = rec?;
            if !toks.is_empty() {
                toks.push(cfg.tokenizer.separator());
            }
            let (ids, unk) = cfg.tokenizer.encode_checked(&rec.seq);
            toks.extend(ids);
            unknown += unk;
            records += 1;
        }
    }
    for path in &cfg.text {
        let bytes = read_text(path)?;
        let (ids, unk) = cfg.tokenizer.encode_checked(&bytes);
        toks.extend(ids);
        unknown += unk;
    }
    let files: Vec<String> = fasta
        .iter()
        .chain(&cfg.text)
        .map(|p| p.display().to_string())
        .collect();
    let summary = format!("{} ({} records)", files.join(", "), records);
    Ok(TokenData {
        train: toks,
        val: Vec::new(),
        unknown,
        summary,
    })
}
