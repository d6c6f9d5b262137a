//! CLI: `hyena embed` and `hyena score` on the PyTorch parity fixture (a HyenaDNA checkpoint
//! in the HF layout), and their errors on malformed input: each a clear message, no panic,
//! and no output file left behind.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::{fails_with, hyena};
use hyena::io::npy::read_f32;
use hyena::io::safetensors::TensorFile;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hyenadna")
}

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("hyena-dna-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn embed_and_score_match_the_pytorch_fixture() {
    let tmp = Tmp::new("ok");
    let exp = TensorFile::read(fixtures().join("expected-tiny-hf.safetensors")).unwrap();
    let seq = exp.metadata["sequence"].clone();
    // gzip-compressed FASTQ with the fixture's sequence, and a second, shorter record.
    let qual = "I".repeat(seq.len());
    let fq = format!("@fx desc\n{seq}\n+\n{qual}\n@short\nACGTNACGT\n+\nIIIIIIIII\n");
    let fq = tmp.write("in.fq.gz", &gzip(fq.as_bytes()));
    let model = s(&fixtures().join("tiny-hf"));
    let out = tmp.path("h.npy");
    let o = hyena(&[
        "embed",
        "--model",
        &model,
        "--fasta",
        &s(&fq),
        "--pool",
        "none",
        "--special-tokens",
        "--unknown-as-unk",
        "--out",
        &out,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("peak memory"));
    let (shape, data) = read_f32(&out).unwrap();
    let want = &exp.tensors["hidden.final"].data;
    assert_eq!(shape, vec![want.len() / 64 + 10, 64]);
    let err = data[..want.len()]
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(err <= 1e-4, "embed vs PyTorch: {err}");
    let tsv = std::fs::read_to_string(format!("{out}.records.tsv")).unwrap();
    assert!(tsv.contains("0\tfx\t301\t0\t301") && tsv.contains("1\tshort\t10\t301\t10"));

    // Pooled: one row per record; the mean of the per-position rows.
    let o = hyena(&[
        "embed",
        "--model",
        &model,
        "--fasta",
        &s(&fq),
        "--out",
        &tmp.path("m.npy"),
        "--special-tokens",
        "--unknown-as-unk",
    ]);
    assert!(o.status.success());
    let (shape, mean) = read_f32(tmp.path("m.npy")).unwrap();
    assert_eq!(shape, vec![2, 64]);
    for j in [0usize, 17, 63] {
        let m: f32 = (0..301).map(|t| data[t * 64 + j]).sum::<f32>() / 301.0;
        assert!((m - mean[j]).abs() < 1e-4);
    }

    // The packed residual stream (the default past 2^27 values) stays near the PyTorch states.
    let o = hyena(&[
        "embed",
        "--model",
        &model,
        "--fasta",
        &s(&fq),
        "--pool",
        "none",
        "--special-tokens",
        "--unknown-as-unk",
        "--residual",
        "packed24",
        "--out",
        &tmp.path("p.npy"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, packed) = read_f32(tmp.path("p.npy")).unwrap();
    let err = packed[..want.len()]
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(err > 0.0 && err <= 2e-3, "packed embed vs PyTorch: {err}");

    // Score: the per-base log-probabilities add up to the record's total.
    let pb = tmp.path("pb.tsv");
    let o = hyena(&[
        "score",
        "--model",
        &model,
        "--fasta",
        &s(&fq),
        "--uppercase",
        "--json",
        "--per-base",
        &pb,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["name"], "fx");
    assert_eq!(first["scored"], 299);
    let per: f64 = std::fs::read_to_string(&pb)
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| l.starts_with("fx\t"))
        .map(|l| l.rsplit('\t').next().unwrap().parse::<f64>().unwrap())
        .sum();
    let total = first["log_likelihood"].as_f64().unwrap();
    assert!((per - total).abs() < 1e-3 * total.abs(), "{per} vs {total}");
    assert!(total < 0.0);
}

#[test]
fn malformed_inputs_are_clear_errors() {
    let tmp = Tmp::new("bad");
    let model = s(&fixtures().join("tiny-hf"));
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "empty_record.fa",
            b">a\nACGT\n>empty\n>c\nACGT\n".to_vec(),
            vec!["empty_record.fa", "'empty'", "empty sequence"],
        ),
        (
            "soft_masked.fa",
            b">r1\nACGTacgt\n".to_vec(),
            vec!["soft_masked.fa", "'r1'", "base 5", "--uppercase"],
        ),
        (
            "iupac.fa",
            b">r2\nACGTRYACGT\n".to_vec(),
            vec!["iupac.fa", "'r2'", "'R'", "base 5", "--unknown-as-unk"],
        ),
        (
            "truncated.fa.gz",
            {
                let g = gzip(
                    b">r\nACGTACGTACGTACGTACGTACGTACGTACGT\n"
                        .repeat(200)
                        .as_slice(),
                );
                g[..g.len() / 2].to_vec()
            },
            vec!["truncated.fa.gz"],
        ),
        (
            "bad_quality.fq",
            b"@q\nACGT\n+\nII\n".to_vec(),
            vec!["bad_quality.fq", "'q'"],
        ),
        (
            "not_dna.txt",
            b"hello world\n".to_vec(),
            vec!["not_dna.txt"],
        ),
        (
            "too_long.fa",
            format!(">long\n{}\n", "A".repeat(1100)).into_bytes(),
            vec!["too_long.fa", "'long'", "1026", "split the record"],
        ),
    ];
    for (name, bytes, needles) in cases {
        let f = tmp.write(name, &bytes);
        let out = tmp.path(&format!("{name}.npy"));
        let o = hyena(&["embed", "--model", &model, "--fasta", &s(&f), "--out", &out]);
        fails_with(&o, &needles);
        assert!(!Path::new(&out).exists(), "{name}: no output on error");
        let o = hyena(&["score", "--model", &model, "--fasta", &s(&f)]);
        fails_with(&o, &needles);
    }
    // A model directory that is not one.
    std::fs::create_dir_all(tmp.path("not-a-model")).unwrap();
    let o = hyena(&[
        "embed",
        "--model",
        &tmp.path("not-a-model"),
        "--fasta",
        &tmp.path("iupac.fa"),
        "--out",
        &tmp.path("x.npy"),
    ]);
    fails_with(&o, &["config.json"]);
}
