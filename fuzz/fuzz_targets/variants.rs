//! Fuzz target `variants`: bytes as a variant file, read as VCF and as TSV. Neither may panic;
//! every variant read has a position of at least 1 and non-empty base alleles that differ.
#![no_main]
use std::path::Path;

use hyena::io::variants::{parse_variants, VariantFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in [VariantFormat::Vcf, VariantFormat::Tsv] {
        if let Ok(vs) = parse_variants(data, format, Path::new("variants")) {
            for v in vs {
                assert!(v.pos >= 1 && v.line >= 1);
                assert!(!v.reference.is_empty() && !v.alt.is_empty());
                assert!(!v.reference.eq_ignore_ascii_case(&v.alt));
                assert!(!v.chrom.is_empty());
            }
        }
    }
});
