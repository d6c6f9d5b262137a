//! Fuzz target `genomic_benchmarks`: bytes as one sequence file of the GenomicBenchmarks
//! directory layout (plain text, or FASTA/FASTQ; plain, gzip or xz), through the reader that
//! the directory loader uses for each file.
#![no_main]
use std::path::Path;

use hyena::data::seqcls::read_sequence_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_sequence_bytes(data, Path::new("train/class/seq.txt"));
});
