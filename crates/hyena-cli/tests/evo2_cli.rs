//! `hyena score`, `embed` and `convert` on an Evo 2 model directory as released (vortex YAML +
//! `.pt` with BytesIO entries; the tiny random model of `tests/fixtures/evo2`): the family is
//! detected from the directory, scores equal the reference's log-likelihoods, `--reduce mean`
//! and `--reverse-complement` do what they say, named layers embed, and a converted directory
//! (memory-mapped) gives the same numbers. The same for a StripedHyena 1 (Evo 1 layout) Hugging
//! Face directory of `tests/fixtures/stripedhyena`.

mod common;

use std::path::{Path, PathBuf};

use common::{fails_with, hyena, ok, tmpdir};
use hyena::io::npy::read_f32 as read_npy;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/evo2")
        .join(name)
}

/// The fixture's input as a FASTA record, and the reference's log-likelihood sum.
fn fixture_fasta(dir: &Path) -> (PathBuf, f64, usize) {
    fasta_of(&fixture("expected-tiny.safetensors"), dir)
}

/// The input of the expected-outputs file `expected` as a FASTA record in `dir`, and the
/// reference's log-likelihood sum.
fn fasta_of(expected: &Path, dir: &Path) -> (PathBuf, f64, usize) {
    let bytes = std::fs::read(expected).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    assert_eq!(ids.dtype(), safetensors::Dtype::I64);
    let seq: String = ids
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u8 as char)
        .collect();
    let ll: f64 = st
        .tensor("loglik")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
        .sum();
    let fa = dir.join("seq.fa");
    std::fs::write(&fa, format!(">fixture\n{seq}\n")).unwrap();
    (fa, ll, seq.len())
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn score_embed_convert_on_released_layout() {
    let tmp = tmpdir("evo2");
    let (fa, want, n) = fixture_fasta(&tmp);
    let model = fixture("tiny");
    let m = model.to_str().unwrap();
    let f = fa.to_str().unwrap();

    // score: the family is detected from the directory; the sum equals the reference's.
    let out = hyena(&["score", "--model", m, "--fasta", f, "--json"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let rows = json_lines(&ok(&out));
    assert_eq!(rows.len(), 1);
    let got = rows[0]["log_likelihood"].as_f64().unwrap();
    assert!(((got - want) / want).abs() < 1e-4, "{got} vs {want}");
    assert_eq!(rows[0]["scored"].as_u64().unwrap() as usize, n - 1);
    // The skipped BytesIO entries are reported.
    assert!(err.contains("_extra_state"), "{err}");

    // --reduce mean divides by the scored positions.
    let out = hyena(&[
        "score", "--model", m, "--fasta", f, "--json", "--reduce", "mean",
    ]);
    let mean = json_lines(&ok(&out))[0]["log_likelihood"].as_f64().unwrap();
    assert!((mean - got / (n - 1) as f64).abs() < 1e-9);

    // --reverse-complement averages with the reverse complement's score (not the same).
    let out = hyena(&[
        "score",
        "--model",
        m,
        "--fasta",
        f,
        "--json",
        "--reverse-complement",
    ]);
    let rc = json_lines(&ok(&out))[0]["log_likelihood"].as_f64().unwrap();
    assert!((rc - got).abs() > 1e-3, "{rc} vs {got}");

    // embed a named module output: [1, 32] mean-pooled, [L, 48] for an MLP's inner layer.
    let npy = tmp.join("l3.npy");
    ok(&hyena(&[
        "embed",
        "--model",
        m,
        "--fasta",
        f,
        "--layer",
        "blocks.3.mlp.l3",
        "--out",
        npy.to_str().unwrap(),
    ]));
    let (shape, _) = read_npy(&npy).unwrap();
    assert_eq!(shape, vec![1, 32]);
    let npy2 = tmp.join("l1.npy");
    ok(&hyena(&[
        "embed",
        "--model",
        m,
        "--fasta",
        f,
        "--layer",
        "blocks.0.mlp.l1",
        "--pool",
        "none",
        "--out",
        npy2.to_str().unwrap(),
    ]));
    let (shape, _) = read_npy(&npy2).unwrap();
    assert_eq!(shape, vec![n, 48]);
    // A name the model does not have: the error lists what exists, nothing is written.
    let bad = tmp.join("bad.npy");
    fails_with(
        &hyena(&[
            "embed",
            "--model",
            m,
            "--fasta",
            f,
            "--layer",
            "blocks.3.filter",
            "--out",
            bad.to_str().unwrap(),
        ]),
        &["blocks.3.filter", "inner_mha_cls"],
    );
    assert!(!bad.exists());

    // convert, then the converted (memory-mapped) directory scores the same.
    let conv = tmp.join("converted");
    ok(&hyena(&[
        "convert",
        "--model",
        m,
        "--out",
        conv.to_str().unwrap(),
    ]));
    assert!(conv.join("config.json").is_file() && conv.join("model.safetensors").is_file());
    let out = hyena(&[
        "score",
        "--model",
        conv.to_str().unwrap(),
        "--fasta",
        f,
        "--json",
    ]);
    let again = json_lines(&ok(&out))[0]["log_likelihood"].as_f64().unwrap();
    assert_eq!(again, got);
    // bf16 weights stay bf16 on disk: about half the f32 size.
    let size = std::fs::metadata(conv.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(size < 200_000, "{size} bytes");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn score_and_embeddings_do_not_depend_on_the_chunk_size() {
    // The fixture's 200 bases through `--chunk` 1, 7 and 127 (below the 128-tap MR filter, not
    // dividing the length), 129 and the whole record: the score and the per-base final states
    // and a named inner output agree with the one-shot run within float rounding.
    let tmp = tmpdir("evo2-chunks");
    let (fa, _, n) = fixture_fasta(&tmp);
    let model = fixture("tiny");
    let (m, f) = (model.to_str().unwrap(), fa.to_str().unwrap());
    let run = |chunk: usize| {
        let c = chunk.to_string();
        let out = hyena(&["score", "--model", m, "--fasta", f, "--json", "--chunk", &c]);
        let ll = json_lines(&ok(&out))[0]["log_likelihood"].as_f64().unwrap();
        let mut embs = Vec::new();
        for layer in [None, Some("blocks.3.mlp.l3")] {
            let npy = tmp.join(format!("e{chunk}-{}.npy", embs.len()));
            let mut args = vec!["embed", "--model", m, "--fasta", f, "--pool", "none"];
            args.extend(["--chunk", &c, "--out", npy.to_str().unwrap()]);
            if let Some(l) = layer {
                args.extend(["--layer", l]);
            }
            ok(&hyena(&args));
            let (shape, data) = read_npy(&npy).unwrap();
            assert_eq!(shape[0], n);
            embs.push(data);
        }
        (ll, embs)
    };
    let (ll0, e0) = run(n);
    for chunk in [1, 7, 127, 129] {
        let (ll, e) = run(chunk);
        assert!(
            (ll - ll0).abs() < 1e-4 * ll0.abs(),
            "chunk {chunk}: {ll} vs {ll0}"
        );
        for (a, b) in e.iter().zip(&e0) {
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(d < 1e-4, "chunk {chunk}: embeddings differ by {d}");
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn score_embed_convert_stripedhyena_1() {
    let tmp = tmpdir("sh1");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/stripedhyena");
    let (fa, want, n) = fasta_of(&root.join("expected-tiny-evo1.safetensors"), &tmp);
    let model = root.join("tiny-evo1");
    let m = model.to_str().unwrap();
    let f = fa.to_str().unwrap();
    let out = hyena(&["score", "--model", m, "--fasta", f, "--json"]);
    let rows = json_lines(&ok(&out));
    let got = rows[0]["log_likelihood"].as_f64().unwrap();
    assert!(((got - want) / want).abs() < 1e-4, "{got} vs {want}");
    assert_eq!(rows[0]["scored"].as_u64().unwrap() as usize, n - 1);
    let npy = tmp.join("filter.npy");
    ok(&hyena(&[
        "embed",
        "--model",
        m,
        "--fasta",
        f,
        "--layer",
        "blocks.1.filter",
        "--pool",
        "last",
        "--out",
        npy.to_str().unwrap(),
    ]));
    assert_eq!(read_npy(&npy).unwrap().0, vec![1, 32]);
    let conv = tmp.join("converted");
    ok(&hyena(&[
        "convert",
        "--model",
        m,
        "--out",
        conv.to_str().unwrap(),
    ]));
    let out = hyena(&[
        "score",
        "--model",
        conv.to_str().unwrap(),
        "--fasta",
        f,
        "--json",
    ]);
    let again = json_lines(&ok(&out))[0]["log_likelihood"].as_f64().unwrap();
    assert_eq!(again, got);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn generate_recurrent_equals_conv() {
    // Greedy: the recurrent decoder (the default for Evo 2) and the full forward per token
    // print the same continuation.
    let m = fixture("tiny");
    let m = m.to_str().unwrap();
    let args = |mode: &str| {
        let mut a = vec!["generate", "--model", m, "--prompt", "ACGTTGCAACGGATTACA"];
        a.extend(["--tokens", "24", "--temperature", "0", "--mode", mode]);
        ok(&hyena(&a))
    };
    let rec = args("auto");
    assert_eq!(rec, args("conv"));
    assert!(rec.starts_with("ACGTTGCAACGGATTACA") && rec.trim_end().len() >= 18 + 24 - 8);
    fails_with(
        &hyena(&["generate", "--model", m, "--prompt", "ACGT", "--kv", "f16"]),
        &["--kv"],
    );
}

#[test]
fn vep_scores_resume_after_a_kill_and_name_bad_variants() {
    let tmp = tmpdir("vep");
    let fa = tmp.join("ref.fa");
    common::toy_fasta(&fa, "chr7", 3000, 11, Some(60));
    let seq: Vec<u8> = std::fs::read_to_string(&fa)
        .unwrap()
        .lines()
        .skip(1)
        .flat_map(|l| l.bytes().collect::<Vec<_>>())
        .collect();
    let mut vcf = String::from("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n");
    for p in (700..2300).step_by(16) {
        let r = seq[p - 1] as char;
        let alts: Vec<String> = "ACGT"
            .chars()
            .filter(|&c| c != r)
            .map(String::from)
            .collect();
        vcf += &format!("chr7\t{p}\t.\t{r}\t{}\n", alts.join(","));
    }
    let v = tmp.join("v.vcf");
    std::fs::write(&v, &vcf).unwrap();
    let m = fixture("tiny");
    let base = |out: &Path| -> Vec<String> {
        [
            "vep",
            "--model",
            m.to_str().unwrap(),
            "--reference",
            fa.to_str().unwrap(),
            "--variants",
            v.to_str().unwrap(),
            "--window",
            "512",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let whole = tmp.join("whole.tsv");
    let a = base(&whole);
    ok(&hyena(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    let rows = std::fs::read_to_string(&whole).unwrap();
    assert_eq!(rows.lines().count(), 2 + 3 * 100);
    // Killed once a few rows are on disk, then resumed.
    let out = tmp.join("out.tsv");
    let partial = tmp.join("out.tsv.partial");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hyena"))
        .args(base(&out))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&partial).map_or(0, |s| s.lines().count()) < 12
        && t0.elapsed().as_secs() < 60
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = !out.exists();
    if killed {
        let done = std::fs::read_to_string(&partial).unwrap().lines().count();
        assert!((12..302).contains(&done), "{done}");
        let mut again = base(&out);
        // Without --resume the partial file is not overwritten.
        fails_with(
            &hyena(&again.iter().map(String::as_str).collect::<Vec<_>>()),
            &["--resume"],
        );
        again.push("--resume".into());
        let out2 = hyena(&again.iter().map(String::as_str).collect::<Vec<_>>());
        ok(&out2);
        assert!(String::from_utf8_lossy(&out2.stderr).contains("resuming"));
    }
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        rows,
        "killed: {killed}"
    );
    // --no-share gives the same scores.
    let naive = tmp.join("naive.tsv");
    let mut n = base(&naive);
    n.push("--no-share".into());
    ok(&hyena(&n.iter().map(String::as_str).collect::<Vec<_>>()));
    for (a, b) in rows
        .lines()
        .zip(std::fs::read_to_string(&naive).unwrap().lines())
        .skip(2)
    {
        let (a, b): (Vec<&str>, Vec<&str>) = (a.split('\t').collect(), b.split('\t').collect());
        for c in 7..10 {
            let (x, y): (f64, f64) = (a[c].parse().unwrap(), b[c].parse().unwrap());
            assert!((x - y).abs() < 1e-4, "{a:?} {b:?}");
        }
    }
    // A mismatched reference allele and a malformed line stop before the model loads.
    let r = if seq[99] == b'A' { 'C' } else { 'A' };
    std::fs::write(&v, format!("{vcf}chr7\t100\trs1\t{r}\tT\n")).unwrap();
    let bad = tmp.join("bad.tsv");
    let b = base(&bad);
    fails_with(
        &hyena(&b.iter().map(String::as_str).collect::<Vec<_>>()),
        &[&format!(
            "line 103: variant chr7:100 {r}>T: REF {r} does not match"
        )],
    );
    std::fs::write(&v, format!("{vcf}chr7\t100\n")).unwrap();
    fails_with(
        &hyena(&b.iter().map(String::as_str).collect::<Vec<_>>()),
        &["line 103: 2 column(s)"],
    );
    assert!(!bad.exists());
    let _ = std::fs::remove_dir_all(&tmp);
}
