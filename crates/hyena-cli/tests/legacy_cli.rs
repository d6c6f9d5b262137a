//! Run directories written before the library redesign (issue 19) still load and give the same
//! numbers, bit for bit: `eval`, `score`, `embed`, `generate` (conv and recurrent) and a
//! `--resume` that continues the old optimizer state. The directories and the expected outputs
//! were made by the binary of commit 1a03315 with `tests/fixtures/legacy/make_legacy.sh`.

mod common;

use std::path::{Path, PathBuf};

use common::{hyena, ok};

fn legacy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/legacy")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn expected(name: &str) -> Vec<u8> {
    std::fs::read(legacy().join("expected").join(name)).unwrap()
}

/// One JSON value per line.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("hyena-legacy-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn eval_gives_the_same_numbers() {
    for m in ["run", "distilled"] {
        let out = ok(&hyena(&[
            "eval",
            "--model",
            &s(&legacy().join(m)),
            "--json",
        ]));
        let mut got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let obj = got.as_object_mut().unwrap();
        // The data summary names the genome's path, and `model` the path given: not numbers.
        obj.remove("data");
        obj.remove("model");
        let mut want: serde_json::Value =
            serde_json::from_slice(&expected(&format!("eval-{m}.json"))).unwrap();
        want.as_object_mut().unwrap().remove("model");
        assert_eq!(got, want, "{m}");
    }
}

#[test]
fn score_and_embed_give_the_same_numbers() {
    let tmp = Tmp::new("score");
    let fa = legacy().join("expected/records.fa");
    for m in ["run", "distilled"] {
        let model = s(&legacy().join(m));
        let tsv = tmp.0.join(format!("score-{m}.tsv"));
        let out = ok(&hyena(&[
            "score",
            "--model",
            &model,
            "--fasta",
            &s(&fa),
            "--json",
            "--per-base",
            &s(&tsv),
        ]));
        let want = String::from_utf8(expected(&format!("score-{m}.json"))).unwrap();
        assert_eq!(json_lines(&out), json_lines(&want), "{m}");
        assert_eq!(
            std::fs::read(&tsv).unwrap(),
            expected(&format!("score-{m}.tsv")),
            "{m}"
        );
        let npy = tmp.0.join(format!("embed-{m}.npy"));
        ok(&hyena(&[
            "embed",
            "--model",
            &model,
            "--fasta",
            &s(&fa),
            "--pool",
            "none",
            "--out",
            &s(&npy),
        ]));
        assert_eq!(
            std::fs::read(&npy).unwrap(),
            expected(&format!("embed-{m}.npy")),
            "{m}"
        );
    }
}

#[test]
fn generate_gives_the_same_tokens() {
    for (m, mode) in [
        ("run", "conv"),
        ("distilled", "conv"),
        ("distilled", "recurrent"),
    ] {
        let out = ok(&hyena(&[
            "generate",
            "--model",
            &s(&legacy().join(m)),
            "--mode",
            mode,
            "--prompt",
            "ACGTAC",
            "--tokens",
            "40",
            "--seed",
            "3",
        ]));
        let want = String::from_utf8(expected(&format!("generate-{m}-{mode}.txt"))).unwrap();
        assert_eq!(out, want, "{m} {mode}");
    }
}

#[test]
fn resume_continues_the_old_optimizer_state() {
    let tmp = Tmp::new("resume");
    let dir = tmp.0.join("run");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(legacy().join("run")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    ok(&hyena(&["train", "--resume", &s(&dir), "--steps", "50"]));
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let got: Vec<serde_json::Value> = json_lines(&metrics)
        .into_iter()
        .filter(|v| v["kind"] == "train")
        .collect();
    let want = json_lines(&String::from_utf8(expected("resume-metrics.jsonl")).unwrap());
    assert_eq!(got.len(), 10);
    assert_eq!(got, want);
}
