//! Tokenizers: HyenaDNA's nucleotide `CharacterTokenizer`, and raw bytes.
//!
//! # Nucleotide ids (identical to HyenaDNA's `CharacterTokenizer`)
//!
//! | id | token | | id | token |
//! |---|---|---|---|---|
//! | 0 | `[CLS]` | | 7 | `A` |
//! | 1 | `[SEP]` | | 8 | `C` |
//! | 2 | `[BOS]` | | 9 | `G` |
//! | 3 | `[MASK]` | | 10 | `T` |
//! | 4 | `[PAD]` | | 11 | `N` |
//! | 5 | `[RESERVED]` | | | |
//! | 6 | `[UNK]` | | | |
//!
//! Vocabulary size 12 (models pad their embedding table to a multiple of 8, i.e. 16 rows).
//!
//! Lookup is **case-sensitive**, as in the reference: `a c g t n` map to `[UNK]`. Set
//! [`NucleotideTokenizer::uppercase`] to upper-case the input first (soft-masked genomes store
//! repeats in lower case).
//!
//! **Unknown characters policy.** Every byte outside the alphabet (IUPAC codes such as `R`/`Y`,
//! lower case when `uppercase` is off, digits, whitespace, ...) maps to `[UNK]` = 6; nothing is
//! dropped, so positions are kept. [`NucleotideTokenizer::encode_checked`] returns how many
//! bytes did so; callers report it ("N characters outside the alphabet") rather than fail.
//!
//! No special token is added by `encode`: callers add `[SEP]` (HyenaDNA pre-training appends it)
//! or left-pad with `[PAD]` themselves.
//!
//! # Bytes
//! [`ByteTokenizer`]: id `b` is the byte `b`, ids 0..=255, vocabulary size 256, no special
//! tokens and no unknown bytes.
//!
//! # Choosing one in a config
//! [`Tokenizer`] holds either and (de)serialises as `{"kind": "nucleotide", "uppercase": true}`
//! or `{"kind": "bytes"}` (`uppercase` defaults to `false`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `[CLS]`
pub const CLS_ID: u32 = 0;
/// `[SEP]` (end of sequence in HyenaDNA pre-training)
pub const SEP_ID: u32 = 1;
/// `[BOS]`
pub const BOS_ID: u32 = 2;
/// `[MASK]`
pub const MASK_ID: u32 = 3;
/// `[PAD]` (HyenaDNA pads on the left; the loss may ignore this id)
pub const PAD_ID: u32 = 4;
/// `[RESERVED]`
pub const RESERVED_ID: u32 = 5;
/// `[UNK]`: every byte outside the alphabet.
pub const UNK_ID: u32 = 6;

/// The special tokens, indexed by id (0..=6).
pub const SPECIAL_TOKENS: [&str; 7] = [
    "[CLS]",
    "[SEP]",
    "[BOS]",
    "[MASK]",
    "[PAD]",
    "[RESERVED]",
    "[UNK]",
];

/// The nucleotide alphabet in id order: `A` = 7, `C` = 8, `G` = 9, `T` = 10, `N` = 11.
pub const NUCLEOTIDES: [u8; 5] = *b"ACGTN";

/// Byte → id, case-sensitive.
const CASE_SENSITIVE: [u8; 256] = build_table(false);
/// Byte → id, lower case folded to upper case.
const FOLDED: [u8; 256] = build_table(true);

const fn build_table(fold_case: bool) -> [u8; 256] {
    let mut t = [UNK_ID as u8; 256];
    let mut i = 0;
    while i < NUCLEOTIDES.len() {
        let c = NUCLEOTIDES[i];
        let id = (SPECIAL_TOKENS.len() + i) as u8;
        t[c as usize] = id;
        if fold_case {
            t[c.to_ascii_lowercase() as usize] = id;
        }
        i += 1;
    }
    t
}

/// HyenaDNA's character tokenizer over `A C G T N`; see the module docs for the ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NucleotideTokenizer {
    /// Upper-case the input before lookup (off by default, as in the reference).
    #[serde(default)]
    pub uppercase: bool,
}

impl NucleotideTokenizer {
    /// Number of ids: 7 specials + 5 nucleotides.
    pub const VOCAB_SIZE: usize = 12;

    /// A tokenizer; `uppercase` folds lower case to upper case before lookup.
    pub fn new(uppercase: bool) -> Self {
        NucleotideTokenizer { uppercase }
    }

    /// Always 12.
    pub fn vocab_size(&self) -> usize {
        Self::VOCAB_SIZE
    }

    fn table(&self) -> &'static [u8; 256] {
        if self.uppercase {
            &FOLDED
        } else {
            &CASE_SENSITIVE
        }
    }

    /// The id of one byte ([`UNK_ID`] outside the alphabet).
    pub fn id(&self, byte: u8) -> u32 {
        u32::from(self.table()[byte as usize])
    }

    /// Whether `byte` maps to a nucleotide id (not to `[UNK]`).
    pub fn is_known(&self, byte: u8) -> bool {
        self.id(byte) != UNK_ID
    }

    /// One id per byte; bytes outside the alphabet become [`UNK_ID`].
    pub fn encode(&self, bytes: &[u8]) -> Vec<u32> {
        let t = self.table();
        bytes.iter().map(|&b| u32::from(t[b as usize])).collect()
    }

    /// Like [`encode`](Self::encode), also returning how many bytes mapped to `[UNK]`.
    pub fn encode_checked(&self, bytes: &[u8]) -> (Vec<u32>, usize) {
        let mut ids = Vec::with_capacity(bytes.len());
        let unknown = self.encode_into(bytes, &mut ids);
        (ids, unknown)
    }

    /// Append the ids of `bytes` to `out`; returns how many bytes mapped to `[UNK]`.
    pub fn encode_into(&self, bytes: &[u8], out: &mut Vec<u32>) -> usize {
        let t = self.table();
        let mut unknown = 0;
        out.reserve(bytes.len());
        out.extend(bytes.iter().map(|&b| {
            let id = t[b as usize];
            unknown += usize::from(u32::from(id) == UNK_ID);
            u32::from(id)
        }));
        unknown
    }

    /// The token of one id: `"A"`, `"[SEP]"`, ...; ids ≥ 12 (e.g. the padding rows of an
    /// embedding table) render as `"[UNK]"`.
    pub fn token(&self, id: u32) -> &'static str {
        const LETTERS: [&str; 5] = ["A", "C", "G", "T", "N"];
        let id = id as usize;
        if id < SPECIAL_TOKENS.len() {
            SPECIAL_TOKENS[id]
        } else if id < Self::VOCAB_SIZE {
            LETTERS[id - SPECIAL_TOKENS.len()]
        } else {
            SPECIAL_TOKENS[UNK_ID as usize]
        }
    }

    /// The ids as text: nucleotides as letters, specials as `"[SEP]"` etc. (see [`token`](Self::token)).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut s = String::with_capacity(ids.len());
        for &id in ids {
            s.push_str(self.token(id));
        }
        s
    }
}

/// Raw bytes: id `b` is byte `b` (0..=255), vocabulary size 256, no special tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByteTokenizer;

impl ByteTokenizer {
    /// Always 256.
    pub const VOCAB_SIZE: usize = 256;

    /// Always 256.
    pub fn vocab_size(&self) -> usize {
        Self::VOCAB_SIZE
    }

    /// One id per byte.
    pub fn encode(&self, bytes: &[u8]) -> Vec<u32> {
        bytes.iter().map(|&b| u32::from(b)).collect()
    }

    /// The bytes of the ids. Ids ≥ 256 (impossible with a 256-row vocabulary) become the
    /// UTF-8 replacement character U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            match u8::try_from(id) {
                Ok(b) => out.push(b),
                Err(_) => out.extend_from_slice("\u{FFFD}".as_bytes()),
            }
        }
        out
    }

    /// [`decode`](Self::decode) as text, invalid UTF-8 replaced by U+FFFD.
    pub fn decode_lossy(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode(ids)).into_owned()
    }
}

/// Either tokenizer, as chosen in a config:
/// `{"kind": "nucleotide", "uppercase": true}` or `{"kind": "bytes"}` (`uppercase` defaults to
/// `false`; unknown fields are rejected).
///
/// As a string (CLI flags, [`std::str::FromStr`] / [`std::fmt::Display`]): `nucleotide`,
/// `nucleotide-uppercase`, `bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Tokenizer {
    /// HyenaDNA's nucleotide tokenizer (vocabulary 12); see [`NucleotideTokenizer`].
    Nucleotide {
        /// Upper-case the input before lookup.
        #[serde(default)]
        uppercase: bool,
    },
    /// Raw bytes (vocabulary 256); see [`ByteTokenizer`].
    Bytes,
}

impl Default for Tokenizer {
    /// The HyenaDNA tokenizer, case-sensitive as the reference.
    fn default() -> Self {
        Tokenizer::Nucleotide { uppercase: false }
    }
}

impl From<NucleotideTokenizer> for Tokenizer {
    fn from(t: NucleotideTokenizer) -> Self {
        Tokenizer::Nucleotide {
            uppercase: t.uppercase,
        }
    }
}

impl From<ByteTokenizer> for Tokenizer {
    fn from(_: ByteTokenizer) -> Self {
        Tokenizer::Bytes
    }
}

impl Tokenizer {
    /// 12 for nucleotides, 256 for bytes.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Nucleotide { .. } => NucleotideTokenizer::VOCAB_SIZE,
            Tokenizer::Bytes => ByteTokenizer::VOCAB_SIZE,
        }
    }

    /// One id per byte.
    pub fn encode(&self, bytes: &[u8]) -> Vec<u32> {
        match *self {
            Tokenizer::Nucleotide { uppercase } => {
                NucleotideTokenizer::new(uppercase).encode(bytes)
            }
            Tokenizer::Bytes => ByteTokenizer.encode(bytes),
        }
    }

    /// One id per byte, and how many bytes fell outside the alphabet (always 0 for bytes).
    pub fn encode_checked(&self, bytes: &[u8]) -> (Vec<u32>, usize) {
        match *self {
            Tokenizer::Nucleotide { uppercase } => {
                NucleotideTokenizer::new(uppercase).encode_checked(bytes)
            }
            Tokenizer::Bytes => (ByteTokenizer.encode(bytes), 0),
        }
    }

    /// The ids as text (bytes: lossy UTF-8).
    pub fn decode(&self, ids: &[u32]) -> String {
        match *self {
            Tokenizer::Nucleotide { uppercase } => NucleotideTokenizer::new(uppercase).decode(ids),
            Tokenizer::Bytes => ByteTokenizer.decode_lossy(ids),
        }
    }

    /// The id placed between concatenated records/documents: `[SEP]` = 1 for nucleotides
    /// (HyenaDNA appends it to every sequence in pre-training), `b'\n'` = 10 for bytes.
    pub fn separator(&self) -> u32 {
        match self {
            Tokenizer::Nucleotide { .. } => SEP_ID,
            Tokenizer::Bytes => u32::from(b'\n'),
        }
    }

    /// The ids generation may emit: the bases A C G T N (7–11) for nucleotides (never a
    /// special token), every byte for bytes.
    pub fn sampleable_ids(&self) -> Vec<u32> {
        match self {
            Tokenizer::Nucleotide { .. } => (7..12).collect(),
            Tokenizer::Bytes => (0..256).collect(),
        }
    }

    /// The padding id: `[PAD]` = 4 for nucleotides; none for bytes.
    pub fn pad_id(&self) -> Option<u32> {
        match self {
            Tokenizer::Nucleotide { .. } => Some(PAD_ID),
            Tokenizer::Bytes => None,
        }
    }
}

impl std::fmt::Display for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tokenizer::Nucleotide { uppercase: false } => "nucleotide",
            Tokenizer::Nucleotide { uppercase: true } => "nucleotide-uppercase",
            Tokenizer::Bytes => "bytes",
        })
    }
}

impl std::str::FromStr for Tokenizer {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nucleotide" => Ok(Tokenizer::Nucleotide { uppercase: false }),
            "nucleotide-uppercase" => Ok(Tokenizer::Nucleotide { uppercase: true }),
            "bytes" => Ok(Tokenizer::Bytes),
            _ => Err(Error::config(
                "tokenizer",
                s,
                "expected `nucleotide`, `nucleotide-uppercase` or `bytes`",
            )),
        }
    }
}
