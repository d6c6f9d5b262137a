//! Fuzz target `fasta`: bytes as a FASTA or FASTQ file, plain, gzip or xz (detected from the
//! magic bytes, as the file reader does), through the streaming record reader and through
//! the whole-text reader.
#![no_main]
use std::io::Cursor;
use std::path::Path;

use hyena::io::fasta::open_records_from;
use hyena::io::text::read_text_from;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.fa");
    if let Ok(records) = open_records_from(Cursor::new(data.to_vec()), path) {
        for rec in records {
            if rec.is_err() {
                break;
            }
        }
    }
    let _ = read_text_from(Cursor::new(data.to_vec()), path);
});
