//! Variant-effect scoring (`hyena::apps::vep`) on the Evo 2 tiny fixture model and a random
//! genome: shared-prefix scores equal the two full windows scored separately (1e-4) and the
//! window definition of the Evo 2 BRCA1 example computed by hand; an interrupted output
//! resumes to the same bytes; bad variants and mismatched partial files are refused by name.

use std::path::{Path, PathBuf};

use hyena::apps::dna::Reduce;
use hyena::apps::vep::{
    partial_path, place_variants, score_variants, Genome, VepOptions, VepRow, VepWriter,
};
use hyena::checkpoint::load_model;
use hyena::error::Error;
use hyena::io::variants::{read_variants, Variant};
use hyena::layers::lean::InferWorkspace;
use hyena::models::score::{prefix_scorer, NaiveScorer};
use hyena::models::LanguageModel;

fn model() -> Box<dyn LanguageModel> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/evo2/tiny");
    load_model(&dir).unwrap().model
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hyena-vep-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A random 1,500-base chr1 and a 300-base soft-masked chr2.
fn genome(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut x = 12345u64;
    let seq: Vec<u8> = (0..1500)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            b"ACGT"[(x >> 33) as usize % 4]
        })
        .collect();
    let mut fa = b">chr1 test\n".to_vec();
    for line in seq.chunks(70) {
        fa.extend_from_slice(line);
        fa.push(b'\n');
    }
    fa.extend_from_slice(b">chr2\n");
    fa.extend(seq[..300].iter().map(|b| b.to_ascii_lowercase()));
    fa.push(b'\n');
    let p = dir.join("ref.fa");
    std::fs::write(&p, fa).unwrap();
    (p, seq)
}

/// SNVs (three alternatives at one position, two at another), a deletion, an insertion,
/// variants at the first and last base, and one on the soft-masked record named without
/// its `chr` prefix.
fn variants(dir: &Path, seq: &[u8]) -> PathBuf {
    let b = |p: usize| seq[p - 1] as char;
    let other = |p: usize, k: usize| {
        let alts: Vec<char> = "ACGT".chars().filter(|&c| c != b(p)).collect();
        alts[k]
    };
    let mut v = String::from("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n");
    v += &format!("chr1\t1\tfirst\t{}\t{}\n", b(1), other(1, 0));
    v += &format!(
        "chr1\t700\tsat\t{}\t{},{},{}\n",
        b(700),
        other(700, 0),
        other(700, 1),
        other(700, 2)
    );
    v += &format!(
        "chr1\t701\t.\t{}\t{},{}\n",
        b(701),
        other(701, 0),
        other(701, 2)
    );
    let del: String = seq[899..903].iter().map(|&c| c as char).collect();
    v += &format!("chr1\t900\tdel\t{del}\t{}\n", b(900));
    v += &format!("chr1\t1000\tins\t{}\t{}TTG\n", b(1000), b(1000));
    v += &format!("chr1\t1500\tlast\t{}\t{}\n", b(1500), other(1500, 1));
    v += &format!("2\t150\tmasked\t{}\t{}\n", b(150), other(150, 2));
    let p = dir.join("v.vcf");
    std::fs::write(&p, v).unwrap();
    p
}

fn opts(share: bool) -> VepOptions {
    VepOptions {
        window: 400,
        reduce: Reduce::Mean,
        uppercase: true,
        share,
    }
}

fn run(
    lm: &dyn LanguageModel,
    genome: &Genome,
    vs: &[Variant],
    share: bool,
    naive_scorer: bool,
) -> Vec<VepRow> {
    let placed = place_variants(genome, vs, 400).unwrap();
    let mut rows = Vec::new();
    let mut scorer = if naive_scorer {
        Box::new(NaiveScorer::new(lm, InferWorkspace::new(64)))
    } else {
        prefix_scorer(lm, 64, InferWorkspace::new(64))
    };
    score_variants(
        lm,
        scorer.as_mut(),
        genome,
        vs,
        &placed,
        &opts(share),
        0,
        &mut |r| {
            rows.push(r.clone());
            Ok(())
        },
        &mut |_, _| {},
    )
    .unwrap();
    rows
}

#[test]
fn shared_prefix_scores_equal_the_full_windows() {
    let lm = model();
    let dir = tmp("share");
    let (fa, seq) = genome(&dir);
    let vs = read_variants(variants(&dir, &seq)).unwrap();
    assert_eq!(vs.len(), 10);
    let g = Genome::read(&fa).unwrap();
    let shared = run(lm.as_ref(), &g, &vs, true, false);
    let naive = run(lm.as_ref(), &g, &vs, false, false);
    let naive_scorer = run(lm.as_ref(), &g, &vs, true, true);
    assert_eq!(shared.len(), vs.len());
    for ((s, n), m) in shared.iter().zip(&naive).zip(&naive_scorer) {
        assert_eq!(
            (s.index, s.window_start, s.window_len),
            (n.index, n.window_start, n.window_len)
        );
        for (a, b) in [
            (s.ref_score, n.ref_score),
            (s.alt_score, n.alt_score),
            (s.alt_score, m.alt_score),
        ] {
            assert!((a - b).abs() < 1e-4, "variant {}: {a} vs {b}", s.index);
        }
        assert!(
            s.delta().abs() > 0.0,
            "variant {} scored no effect",
            s.index
        );
    }
    // The window by hand, for the third alternative at 700 (0-based p = 699, W = 400):
    // [p − 200, p + 200) with the base at offset 200 replaced.
    let v = &vs[3];
    assert_eq!(v.pos, 700);
    let mut alt = seq[499..899].to_vec();
    assert_eq!(alt[200], v.reference[0]);
    alt[200] = v.alt[0];
    let mut ws = InferWorkspace::new(64);
    let mut lp = Vec::new();
    let want = lm
        .log_likelihood(
            &alt.iter().map(|&b| b as u32).collect::<Vec<_>>(),
            &mut ws,
            &mut lp,
        )
        .unwrap()
        / 399.0;
    assert!(
        (shared[3].alt_score - want).abs() < 1e-4,
        "{} vs {want}",
        shared[3].alt_score
    );
    assert_eq!((shared[3].window_start, shared[3].window_len), (500, 400));
    // Near the ends the window is cut: the first base's is [0, 200), the last base's
    // [1299, 1500).
    assert_eq!((shared[0].window_start, shared[0].window_len), (1, 200));
    assert_eq!((shared[8].window_start, shared[8].window_len), (1300, 201));
    // The soft-masked record, upper-cased, scores as chr1's identical bases do.
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_interrupted_output_resumes_to_the_same_bytes() {
    let lm = model();
    let dir = tmp("resume");
    let (fa, seq) = genome(&dir);
    let vs = read_variants(variants(&dir, &seq)).unwrap();
    let g = Genome::read(&fa).unwrap();
    let placed = place_variants(&g, &vs, 400).unwrap();
    let o = opts(true);
    let full = |out: &Path, stop_after: Option<usize>, resume: bool| -> Result<usize, Error> {
        let mut w = VepWriter::open(out, "{\"window\":400}", &vs, resume)?;
        let start = w.done;
        let mut scorer = prefix_scorer(lm.as_ref(), 64, InferWorkspace::new(64));
        let mut n = 0;
        score_variants(
            lm.as_ref(),
            scorer.as_mut(),
            &g,
            &vs,
            &placed,
            &o,
            start,
            &mut |r| {
                if stop_after == Some(n) {
                    return Err(Error::config("test", "stop", "interrupted"));
                }
                n += 1;
                w.write(&vs[r.index], r)
            },
            &mut |_, _| {},
        )?;
        w.finish()?;
        Ok(start)
    };
    let whole = dir.join("whole.tsv");
    full(&whole, None, false).unwrap();
    let out = dir.join("out.tsv");
    assert!(full(&out, Some(4), false).is_err());
    assert!(!out.exists() && partial_path(&out).exists());
    // A torn last row, as a kill mid-write leaves.
    let mut bytes = std::fs::read(partial_path(&out)).unwrap();
    bytes.extend_from_slice(b"chr1\t701\t.\tA");
    std::fs::write(partial_path(&out), &bytes).unwrap();
    // A fresh run does not overwrite it; other settings are refused.
    let e = full(&out, None, false).unwrap_err().to_string();
    assert!(e.contains("--resume"), "{e}");
    let e = VepWriter::open(&out, "{\"window\":800}", &vs, true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("other settings"), "{e}");
    // Resumed twice (a second interruption), then to the end.
    assert!(full(&out, Some(2), true).is_err());
    assert_eq!(full(&out, None, true).unwrap(), 6);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&whole).unwrap());
    assert!(!partial_path(&out).exists());
    // A partial file whose rows are other variants' is refused.
    std::fs::write(
        partial_path(&out),
        std::fs::read_to_string(&whole)
            .unwrap()
            .replace("\t700\t", "\t799\t"),
    )
    .unwrap();
    let e = VepWriter::open(&out, "{\"window\":400}", &vs, true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not variant 2"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn variants_that_do_not_fit_the_reference_are_named() {
    let dir = tmp("errors");
    let (fa, seq) = genome(&dir);
    let g = Genome::read(&fa).unwrap();
    let wrong = if seq[9] == b'A' { 'C' } else { 'A' };
    for (line, want) in [
        (format!("chr1\t10\trs9\t{wrong}\tT"), format!("line 2: variant chr1:10 {wrong}>T: REF {wrong} does not match the reference, which has {}", seq[9] as char)),
        ("chrX\t10\t.\tA\tT".to_string(), "chromosome \"chrX\" is not in the reference (its records: chr1, chr2)".to_string()),
        ("chr2\t301\t.\tA\tT".to_string(), "outside the reference: record 'chr2' has 300 bases".to_string()),
        (format!("chr1\t1500\t.\t{}A\tT", seq[1499] as char), "the allele ends at base 1501".to_string()),
    ] {
        let p = dir.join("bad.vcf");
        std::fs::write(&p, format!("##fileformat=VCF\n{line}\n")).unwrap();
        let vs = read_variants(&p).unwrap();
        let e = place_variants(&g, &vs, 400).err().unwrap().to_string();
        assert!(e.contains(&want), "{line}: {e}");
        assert!(e.contains("same assembly"), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
