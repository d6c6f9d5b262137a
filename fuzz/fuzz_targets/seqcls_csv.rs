//! Fuzz target `seqcls_csv`: bytes as a sequence-classification CSV dataset (plain, gzip or
//! xz), through the CSV loader. The first byte chooses the shape: even, one CSV (it needs a
//! `split` column); odd, a train CSV and a test CSV, the rest of the input cut in two at the
//! position the next two bytes give.
#![no_main]
use std::path::Path;

use hyena::data::seqcls::load_csv_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let train = Path::new("train.csv");
    if mode % 2 == 0 {
        let _ = load_csv_bytes((train, rest), None);
    } else if rest.len() >= 2 {
        let cut = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let rest = &rest[2..];
        let (a, b) = rest.split_at(cut.min(rest.len()));
        let _ = load_csv_bytes((train, a), Some((Path::new("test.csv"), b)));
    }
});
