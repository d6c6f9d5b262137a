//! Sequence and text input: FASTA/FASTQ parsing, gzip (multi-member) and xz decompression,
//! the errors a user meets with bad files, the tokenizers' ids, and the shipped E. coli genome.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::TempDir;
use hyena::io::fasta::{open_records, read_records, SeqFormat, SeqRecord};
use hyena::io::text::{read_text, Compression};
use hyena::io::tokenizer::{ByteTokenizer, NucleotideTokenizer, Tokenizer, PAD_ID, SEP_ID, UNK_ID};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn xz(bytes: &[u8]) -> Vec<u8> {
    let mut enc =
        lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(6)).unwrap();
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn rec(id: &str, seq: &str) -> SeqRecord {
    SeqRecord {
        id: id.to_string(),
        seq: seq.as_bytes().to_vec(),
    }
}

/// The error message of a call that must fail.
fn err_msg<T: std::fmt::Debug>(r: hyena::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

/// A deterministic pseudo-random FASTA of `n_rec` records of `len` bases, 60 per line.
fn random_fasta(n_rec: usize, len: usize) -> (Vec<u8>, Vec<SeqRecord>) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut text = Vec::new();
    let mut recs = Vec::new();
    for r in 0..n_rec {
        let seq: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b"ACGT"[(state >> 60) as usize & 3]
            })
            .collect();
        writeln!(text, ">seq{r} random test record").unwrap();
        for chunk in seq.chunks(60) {
            text.extend_from_slice(chunk);
            text.push(b'\n');
        }
        recs.push(SeqRecord {
            id: format!("seq{r}"),
            seq,
        });
    }
    (text, recs)
}

const MULTI_FASTA: &str =
    ">chr1 first record\nACGTAC\nGTNNac\n\n>chr2\r\nTT GG\r\nCCAA\n>chr3\nacgtn\n";

fn multi_fasta_records() -> Vec<SeqRecord> {
    vec![
        rec("chr1", "ACGTACGTNNac"),
        rec("chr2", "TTGGCCAA"),
        rec("chr3", "acgtn"),
    ]
}

#[test]
fn fasta_multiline_multiple_records_keeps_case() {
    let dir = TempDir::new("fasta");
    let p = dir.write("genome.txt", MULTI_FASTA.as_bytes());
    let reader = open_records(&p).unwrap();
    assert_eq!(reader.format(), SeqFormat::Fasta);
    assert_eq!(reader.compression(), Compression::None);
    let recs: Vec<SeqRecord> = reader.collect::<hyena::Result<_>>().unwrap();
    assert_eq!(recs, multi_fasta_records());
    // Leading blank lines and a UTF-8 byte-order mark are tolerated.
    let p = dir.write("bom.fa", b"\xef\xbb\xbf\n\n>x\nAC\n");
    assert_eq!(read_records(&p).unwrap(), vec![rec("x", "AC")]);
}

#[test]
fn fastq_single_line_and_wrapped() {
    let dir = TempDir::new("fastq");
    // The second record's quality starts with '@' and the third is wrapped over two lines.
    let text = "@r1 extra\nACGT\n+\nIIII\n@r2\nGGA\n+r2\n@@I\n\n@r3\nACGT\nAC\n+\nIIII\nII\n";
    let p = dir.write("reads.fq", text.as_bytes());
    let reader = open_records(&p).unwrap();
    assert_eq!(reader.format(), SeqFormat::Fastq);
    let recs: Vec<SeqRecord> = reader.collect::<hyena::Result<_>>().unwrap();
    assert_eq!(
        recs,
        vec![rec("r1", "ACGT"), rec("r2", "GGA"), rec("r3", "ACGTAC")]
    );
}

#[test]
fn gzip_and_xz_are_detected_by_magic_bytes() {
    let dir = TempDir::new("compressed");
    // Names deliberately say nothing (or lie) about the compression.
    let cases = [
        ("a.fa", gzip(MULTI_FASTA.as_bytes()), Compression::Gzip),
        ("b.txt", xz(MULTI_FASTA.as_bytes()), Compression::Xz),
        ("c.gz", MULTI_FASTA.as_bytes().to_vec(), Compression::None),
    ];
    for (name, bytes, compression) in cases {
        let p = dir.write(name, &bytes);
        let reader = open_records(&p).unwrap();
        assert_eq!(reader.compression(), compression, "{name}");
        let recs: Vec<SeqRecord> = reader.collect::<hyena::Result<_>>().unwrap();
        assert_eq!(recs, multi_fasta_records(), "{name}");
    }
    // A FASTQ inside xz.
    let p = dir.write("reads", &xz(b"@r1\nACGT\n+\nIIII\n"));
    assert_eq!(read_records(&p).unwrap(), vec![rec("r1", "ACGT")]);
}

#[test]
fn multi_member_gzip_is_read_to_the_end() {
    // BGZF and `cat a.gz b.gz` are several gzip members; a single-member decoder stops at the
    // first. Split in the middle of a sequence line so the members must be joined byte-exactly.
    let (text, expected) = random_fasta(3, 5_000);
    let cut = text.len() / 2 + 7;
    let mut bytes = gzip(&text[..cut]);
    bytes.extend(gzip(&text[cut..]));
    bytes.extend(gzip(b"")); // BGZF ends with an empty member
    let dir = TempDir::new("bgzf");
    let p = dir.write("multi.fa.gz", &bytes);
    assert_eq!(read_records(&p).unwrap(), expected);
    // And for plain text.
    assert_eq!(read_text(&p).unwrap(), text);
}

#[test]
fn truncated_compressed_files_say_the_download_was_cut_short() {
    let (text, _) = random_fasta(2, 50_000);
    let dir = TempDir::new("truncated");
    for (kind, full) in [("gzip", gzip(&text)), ("xz", xz(&text))] {
        // Cut inside the header, inside the data, and just before the end (inside the trailer).
        for cut in [4, full.len() / 2, full.len() - 3] {
            let name = format!("cut-{kind}-{cut}.fa");
            let p = dir.write(&name, &full[..cut]);
            let result: hyena::Result<Vec<SeqRecord>> = open_records(&p).and_then(|r| r.collect());
            let msg = err_msg(result);
            assert!(msg.contains(&name), "{msg}");
            assert!(msg.contains(kind), "{msg}");
            assert!(msg.contains("cut short"), "{msg}");
            let msg = err_msg(read_text(&p));
            assert!(msg.contains("cut short"), "{msg}");
        }
    }
}

#[test]
fn missing_and_empty_files_are_clear_errors() {
    let dir = TempDir::new("empty");
    let missing = dir.0.join("no-such-genome.fa");
    let err = open_records(&missing).unwrap_err();
    assert!(
        matches!(&err, hyena::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    );
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-genome.fa") && msg.contains("not found"),
        "{msg}"
    );
    assert!(err_msg(read_text(&missing)).contains("not found"));

    let cases: [(&str, Vec<u8>); 3] = [
        ("zero.fa", vec![]),
        ("blank.fa", b"\n  \n\n".to_vec()),
        ("empty.fa.gz", gzip(b"")),
    ];
    for (name, bytes) in cases {
        let p = dir.write(name, &bytes);
        let msg = err_msg(open_records(&p));
        assert!(msg.contains(name) && msg.contains("empty file"), "{msg}");
    }
    let p = dir.write("zero.txt", b"");
    assert!(err_msg(read_text(&p)).contains("empty file"));
    let p = dir.write("empty.txt.xz", &xz(b""));
    assert!(err_msg(read_text(&p)).contains("empty file"));
    // A directory is not a file.
    assert!(err_msg(open_records(&dir.0)).contains("directory"));
}

#[test]
fn empty_record_names_the_record_and_line() {
    let dir = TempDir::new("emptyrec");
    let p = dir.write("x.fa", b">r1\nACGT\n>r2 nothing here\n>r3\nAC\n");
    let mut reader = open_records(&p).unwrap();
    assert_eq!(reader.next().unwrap().unwrap(), rec("r1", "ACGT"));
    let msg = reader.next().unwrap().unwrap_err().to_string();
    assert!(msg.contains("x.fa"), "{msg}");
    assert!(msg.contains("'r2'") && msg.contains("line 3"), "{msg}");
    assert!(msg.contains("empty sequence"), "{msg}");
    assert!(reader.next().is_none(), "the iterator ends after an error");
    // The last record empty.
    let p = dir.write("y.fa", b">r1\nACGT\n>last\n\n");
    let msg = err_msg(read_records(&p));
    assert!(
        msg.contains("'last'") && msg.contains("empty sequence"),
        "{msg}"
    );
}

#[test]
fn fastq_quality_mismatch_and_missing_plus_line() {
    let dir = TempDir::new("fastqbad");
    let p = dir.write("short.fq", b"@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\nIII\n");
    let msg = err_msg(read_records(&p));
    assert!(msg.contains("short.fq") && msg.contains("'r2'"), "{msg}");
    assert!(msg.contains("3 quality characters for 4 bases"), "{msg}");

    let p = dir.write("long.fq", b"@r1\nACGT\n+\nIIIII\n@r2\nA\n+\nI\n");
    let msg = err_msg(read_records(&p));
    assert!(
        msg.contains("'r1'") && msg.contains("5 quality characters for 4 bases"),
        "{msg}"
    );
    assert!(msg.contains("line 4"), "{msg}");

    let p = dir.write("noplus.fq", b"@r1\nACGT\nIIII\n@r2\nAC\n+\nII\n");
    let msg = err_msg(read_records(&p));
    assert!(msg.contains("'r1'") && msg.contains("no '+' line"), "{msg}");

    let p = dir.write("cut.fq", b"@r1\nACGT\n");
    let msg = err_msg(read_records(&p));
    assert!(msg.contains("no '+' line"), "{msg}");

    let p = dir.write("emptyseq.fq", b"@r1\n+\n\n");
    let msg = err_msg(read_records(&p));
    assert!(
        msg.contains("'r1'") && msg.contains("empty sequence"),
        "{msg}"
    );
}

#[test]
fn neither_fasta_nor_fastq_is_rejected_at_open() {
    let dir = TempDir::new("notfasta");
    let p = dir.write("notes.fa", b"\n\nhello world\n>x\nAC\n");
    let msg = err_msg(open_records(&p));
    assert!(
        msg.contains("notes.fa") && msg.contains("neither FASTA nor FASTQ"),
        "{msg}"
    );
    assert!(
        msg.contains("line 3") && msg.contains("hello world"),
        "{msg}"
    );
    // Compressed garbage says it was decompressed; bzip2 gets a hint.
    let p = dir.write("table.gz", &gzip(b"col1\tcol2\n"));
    let msg = err_msg(open_records(&p));
    assert!(msg.contains("after gzip decompression"), "{msg}");
    let p = dir.write("x.bz2", b"BZh91AY&SY\x00\x01");
    assert!(err_msg(open_records(&p)).contains("bzip2"));
}

#[test]
fn read_text_plain_and_gzip() {
    let dir = TempDir::new("text");
    let body = "To be, or not to be, that is the question:\n\u{e9}t\u{e9}\n".as_bytes();
    let p = dir.write("plain.txt", body);
    assert_eq!(read_text(&p).unwrap(), body);
    let p = dir.write("packed.txt", &gzip(body));
    assert_eq!(read_text(&p).unwrap(), body);
}

#[test]
fn nucleotide_ids_match_hyenadna_character_tokenizer() {
    let t = NucleotideTokenizer::default();
    assert!(!t.uppercase, "case-sensitive by default, as the reference");
    assert_eq!(t.vocab_size(), 12);
    assert_eq!(t.encode(b"ACGTN"), vec![7, 8, 9, 10, 11]);
    assert_eq!(t.encode(b"acgt"), vec![UNK_ID; 4]);
    assert_eq!(UNK_ID, 6);
    assert_eq!(t.encode(b"RY-\n"), vec![6; 4]);
    let up = NucleotideTokenizer::new(true);
    assert_eq!(up.encode(b"acgtn"), vec![7, 8, 9, 10, 11]);
    assert_eq!(up.encode(b"r"), vec![6]);

    let (ids, unknown) = t.encode_checked(b"ACgtNx");
    assert_eq!(ids, vec![7, 8, 6, 6, 11, 6]);
    assert_eq!(unknown, 3);
    assert_eq!(up.encode_checked(b"ACgtNx").1, 1);

    // Specials render by name, in id order.
    let all: Vec<u32> = (0..12).collect();
    assert_eq!(
        t.decode(&all),
        "[CLS][SEP][BOS][MASK][PAD][RESERVED][UNK]ACGTN"
    );
    assert_eq!(t.decode(&[13]), "[UNK]");
    assert_eq!((SEP_ID, PAD_ID), (1, 4));
    let seq = b"GATTACANNCCGT";
    assert_eq!(t.decode(&t.encode(seq)).as_bytes(), seq);
}

#[test]
fn byte_tokenizer_round_trips_every_byte() {
    let t = ByteTokenizer;
    assert_eq!(t.vocab_size(), 256);
    let bytes: Vec<u8> = (0..=255u8).collect();
    let ids = t.encode(&bytes);
    assert_eq!(ids, (0..256u32).collect::<Vec<_>>());
    assert_eq!(t.decode(&ids), bytes);
    assert_eq!(
        t.decode_lossy(&t.encode("h\u{e9}llo".as_bytes())),
        "h\u{e9}llo"
    );
}

#[test]
fn tokenizer_choice_serialises_for_config_json() {
    let nuc = Tokenizer::Nucleotide { uppercase: true };
    assert_eq!(
        serde_json::to_value(nuc).unwrap(),
        serde_json::json!({"kind": "nucleotide", "uppercase": true})
    );
    assert_eq!(
        serde_json::to_value(Tokenizer::Bytes).unwrap(),
        serde_json::json!({"kind": "bytes"})
    );
    let back: Tokenizer = serde_json::from_str(r#"{"kind": "nucleotide"}"#).unwrap();
    assert_eq!(back, Tokenizer::Nucleotide { uppercase: false });
    assert_eq!(back, Tokenizer::default());
    let back: Tokenizer = serde_json::from_str(r#"{"kind": "bytes"}"#).unwrap();
    assert_eq!(back, Tokenizer::Bytes);
    assert!(serde_json::from_str::<Tokenizer>(r#"{"kind": "bpe"}"#).is_err());
    assert!(serde_json::from_str::<Tokenizer>(r#"{"kind": "nucleotide", "upper": true}"#).is_err());

    assert_eq!(nuc.vocab_size(), 12);
    assert_eq!(Tokenizer::Bytes.vocab_size(), 256);
    assert_eq!(nuc.encode(b"acgt"), vec![7, 8, 9, 10]);
    assert_eq!(
        Tokenizer::default().encode_checked(b"acgt"),
        (vec![6; 4], 4)
    );
    assert_eq!(Tokenizer::Bytes.encode_checked(b"acgt").1, 0);
    assert_eq!(nuc.separator(), SEP_ID);
    assert_eq!(Tokenizer::Bytes.separator(), u32::from(b'\n'));
    assert_eq!(Tokenizer::Bytes.decode(&[104, 105]), "hi");
    for name in ["nucleotide", "nucleotide-uppercase", "bytes"] {
        let t: Tokenizer = name.parse().unwrap();
        assert_eq!(t.to_string(), name);
    }
    assert!("char".parse::<Tokenizer>().is_err());
}

fn ecoli_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/ecoli/MG1655-K12.fasta.gz")
}

#[test]
fn shipped_ecoli_genome_is_one_complete_record() {
    let path = ecoli_path();
    let reader = open_records(&path).unwrap();
    assert_eq!(reader.compression(), Compression::Gzip);
    let recs: Vec<SeqRecord> = reader.collect::<hyena::Result<_>>().unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].id, "K-12-MG1655");
    let seq = &recs[0].seq;
    assert_eq!(seq.len(), 4_639_675);
    let acgt = seq.iter().filter(|b| b"ACGT".contains(b)).count();
    assert!(
        acgt as f64 > 0.999 * seq.len() as f64,
        "{acgt} of {} bases are ACGT",
        seq.len()
    );
    // The origin region starts the record, as in the NCBI sequence.
    assert!(seq.starts_with(b"AGCTTTTCATTCTGACTGCAACGGGCAATATGTC"));
    let (_, unknown) = NucleotideTokenizer::default().encode_checked(seq);
    assert_eq!(unknown, seq.len() - acgt);
}
