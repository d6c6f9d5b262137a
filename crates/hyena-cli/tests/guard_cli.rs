//! CLI: no data lost and no abort. Every command that writes refuses an existing output
//! unless `--force`, and never writes into the model it reads; bad numbers are refused with
//! the flag or config key named; sizes too large for the memory are refused (exit 1, not an
//! abort) before anything is allocated. Each case checks the exit code, the message, and that
//! every file already on disk is byte-identical afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{hyena, ok, snapshot};

/// The HF-layout HyenaDNA fixture: d_model 64, 2 blocks, max_seq_len 1026.
fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hyenadna/tiny-hf")
}

/// A fresh temp directory, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("hyena-guard-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    /// A copy of the fixture model with `key` of its config.json set to `value` (JSON).
    fn model_with(&self, name: &str, key: &str, value: &str) -> PathBuf {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture_model().join(f), dir.join(f)).unwrap();
        }
        if !key.is_empty() {
            let p = dir.join("config.json");
            let mut c: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            c[key] = serde_json::from_str(value).unwrap();
            std::fs::write(&p, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
        }
        dir
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Run `hyena ARGS` with extra environment variables.
fn hyena_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hyena"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run hyena")
}

/// Exit code `code` (1: a refused run; 2: a refused flag value), a message naming every
/// needle, no panic and no allocation failure.
fn refused(out: &Output, code: i32, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
    for bad in ["panicked", "memory allocation", "unexpected argument"] {
        assert!(!err.contains(bad), "{err}");
    }
}

/// `f` runs within a few seconds (a refusal does no work).
fn quick<T>(f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let r = f();
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    r
}

const FASTA: &[u8] = b">r1\nACGTACGTACGTNACGT\n>r2\nGGGCCCAAATTT\n";

#[test]
fn embed_refuses_an_existing_out_unless_forced() {
    let tmp = Tmp::new("embed");
    let fa = tmp.write("in.fa", FASTA);
    let out = tmp.write("h.npy", b"precious");
    let m = fixture_model();
    let args = [
        "embed",
        "--model",
        s(&m),
        "--fasta",
        s(&fa),
        "--out",
        s(&out),
    ];
    let before = snapshot(&tmp.0);
    refused(
        &quick(|| hyena(&args)),
        1,
        &[s(&out), "already exists", "pass --force to replace it"],
    );
    assert_eq!(snapshot(&tmp.0), before);
    // The table beside the array is an output too.
    let out2 = tmp.path("g.npy");
    let tsv = tmp.write("g.npy.records.tsv", b"mine");
    let before = snapshot(&tmp.0);
    let o = hyena(&[
        "embed",
        "--model",
        s(&m),
        "--fasta",
        s(&fa),
        "--out",
        s(&out2),
    ]);
    refused(&o, 1, &[s(&tsv), "--force"]);
    assert_eq!(snapshot(&tmp.0), before);
    // --force replaces.
    ok(&hyena(&[&args[..], &["--force"]].concat()));
    let (shape, _) = hyena::io::npy::read_f32(&out).unwrap();
    assert_eq!(shape, vec![2, 64]);
}

#[test]
fn score_refuses_an_existing_per_base_unless_forced() {
    let tmp = Tmp::new("score");
    let fa = tmp.write("in.fa", FASTA);
    let pb = tmp.write("pb.tsv", b"precious");
    let m = fixture_model();
    let args = [
        "score",
        "--model",
        s(&m),
        "--fasta",
        s(&fa),
        "--per-base",
        s(&pb),
    ];
    let before = snapshot(&tmp.0);
    refused(
        &quick(|| hyena(&args)),
        1,
        &[s(&pb), "--per-base", "already exists", "--force"],
    );
    assert_eq!(snapshot(&tmp.0), before);
    ok(&hyena(&[&args[..], &["--force"]].concat()));
    let text = std::fs::read_to_string(&pb).unwrap();
    assert!(text.starts_with("record\tposition"), "{text}");
}

#[test]
fn force_never_writes_into_what_a_command_reads() {
    let tmp = Tmp::new("inside");
    let fa = tmp.write("in.fa", FASTA);
    let m = tmp.model_with("m", "", "");
    let weights = m.join("model.safetensors");
    let config = m.join("config.json");
    let before = snapshot(&tmp.0);
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "embed",
            "--model",
            s(&m),
            "--fasta",
            s(&fa),
            "--out",
            s(&weights),
        ],
        vec![
            "embed",
            "--model",
            s(&m),
            "--fasta",
            s(&fa),
            "--out",
            s(&config),
        ],
        vec![
            "embed",
            "--model",
            s(&m),
            "--fasta",
            s(&fa),
            "--out",
            s(&fa),
        ],
        vec![
            "score",
            "--model",
            s(&m),
            "--fasta",
            s(&fa),
            "--per-base",
            s(&config),
        ],
        vec!["distill", "--model", s(&m), "--out", s(&m)],
        vec!["analyze", "ess", "--model", s(&m), "--png", s(&config)],
    ];
    for mut args in cases {
        args.push("--force");
        let o = quick(|| hyena(&args));
        refused(
            &o,
            1,
            &["which this command reads", "--force does not allow this"],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.matches(s(&tmp.0)).count() >= 2, "{args:?}: {err}");
        assert_eq!(snapshot(&tmp.0), before, "{args:?}");
    }
    // Through another spelling of the same directory.
    let dotted = format!("{}/../m/model.safetensors", s(&m));
    let o = hyena(&[
        "embed",
        "--model",
        s(&m),
        "--fasta",
        s(&fa),
        "--out",
        &dotted,
        "--force",
    ]);
    refused(&o, 1, &["which this command reads"]);
    assert_eq!(snapshot(&tmp.0), before);
}

#[test]
fn absurd_model_configs_are_refused_by_key_before_allocating() {
    let tmp = Tmp::new("config");
    let fa = tmp.write("in.fa", FASTA);
    for (key, value, needles) in [
        ("n_layer", "1000000000", &["`n_layer`", "1000000000"][..]),
        (
            "max_seq_len",
            "1000000000000",
            &["`l_max`", "1000000000000"],
        ),
        ("layer_norm_epsilon", "-1", &["`layer_norm_epsilon`", "-1"]),
        ("d_model", "1000000", &["GiB", "d_model 1000000", "reduce"]),
        ("d_inner", "0", &["`d_inner`"]),
    ] {
        let m = tmp.model_with(key, key, value);
        let before = snapshot(&tmp.0);
        let out = tmp.path("h.npy");
        for args in [
            vec![
                "embed",
                "--model",
                s(&m),
                "--fasta",
                s(&fa),
                "--out",
                s(&out),
            ],
            vec!["score", "--model", s(&m), "--fasta", s(&fa)],
            vec![
                "generate",
                "--model",
                s(&m),
                "--prompt",
                "ACGT",
                "--tokens",
                "3",
            ],
        ] {
            let o = quick(|| hyena(&args));
            refused(&o, 1, needles);
            assert_eq!(snapshot(&tmp.0), before, "{args:?}");
        }
    }
}

#[test]
fn generating_too_many_tokens_is_refused() {
    let m = fixture_model();
    let o = quick(|| {
        hyena(&[
            "generate",
            "--model",
            s(&m),
            "--prompt",
            "ACGT",
            "--tokens",
            "100000000000",
        ])
    });
    refused(&o, 1, &["100000000000 tokens", "GiB", "--tokens"]);
}

#[test]
fn the_memory_limit_can_be_set_and_is_checked() {
    let tmp = Tmp::new("limit");
    let fa = tmp.write("in.fa", FASTA);
    let m = fixture_model();
    let out = tmp.path("h.npy");
    let args = [
        "embed",
        "--model",
        s(&m),
        "--fasta",
        s(&fa),
        "--out",
        s(&out),
    ];
    let o = quick(|| hyena_env(&args, &[("HYENA_MEMORY_LIMIT", "4K")]));
    refused(
        &o,
        1,
        &[
            "MiB of memory",
            "0.004 MiB are available",
            "n_layer, d_model",
        ],
    );
    assert!(!out.exists());
    refused(
        &hyena_env(&args, &[("HYENA_MEMORY_LIMIT", "lots")]),
        1,
        &["HYENA_MEMORY_LIMIT", "lots"],
    );
    ok(&hyena_env(&args, &[("HYENA_MEMORY_LIMIT", "4G")]));
}

#[test]
fn sampling_settings_are_checked() {
    let m = fixture_model();
    let base = [
        "generate",
        "--model",
        s(&m),
        "--prompt",
        "ACGT",
        "--tokens",
        "2",
    ];
    for t in [
        &["--temperature", "nan"][..],
        &["--temperature=-1"],
        &["--temperature", "-1"],
        &["--temperature", "inf"],
    ] {
        let o = quick(|| hyena(&[&base[..], t].concat()));
        refused(&o, 2, &["--temperature", "finite number >= 0"]);
    }
    let o = hyena(&[&base[..], &["--top-k", "13"]].concat());
    refused(&o, 1, &["--top-k 13", "vocabulary of 12"]);
    ok(&hyena(
        &[&base[..], &["--temperature", "0", "--top-k", "12"]].concat(),
    ));
}

#[test]
fn learning_rates_and_sizes_are_checked_by_flag() {
    let tmp = Tmp::new("lr");
    let m = fixture_model();
    let csv = tmp.write(
        "d.csv",
        b"sequence,label,split\nACGT,a,train\nTTTT,b,test\n",
    );
    let out = tmp.path("ft");
    let ft = [
        "finetune",
        "--data",
        s(&csv),
        "--preset",
        "hyenadna-tiny",
        "--out",
        s(&out),
    ];
    let dist = ["distill", "--model", s(&m), "--out", s(&out)];
    let before = snapshot(&tmp.0);
    for (base, flag, bad) in [
        (&ft[..], "--lr", "nan"),
        (&ft, "--lr", "inf"),
        (&ft, "--lr", "-0.01"),
        (&ft, "--lr", "0"),
        (&ft, "--epochs", "nan"),
        (&ft, "--weight-decay", "-1"),
        (&ft, "--batch", "0"),
        (&ft, "--batch", "-3"),
        (&ft, "--max-len", "0"),
        (&dist, "--lr", "nan"),
        (&dist, "--lr", "-0.01"),
        (&dist, "--tol", "-1"),
        (&dist, "--order", "0"),
    ] {
        // Both spellings: `--lr -0.01` reaches the check as `--lr=-0.01` does.
        for args in [
            [base, &[flag, bad]].concat(),
            [base, &[&format!("{flag}={bad}")[..]]].concat(),
        ] {
            let o = quick(|| hyena(&args));
            refused(&o, 2, &[flag, bad]);
        }
    }
    assert_eq!(snapshot(&tmp.0), before);
    assert!(!out.exists());
}

#[test]
fn a_failed_finetune_leaves_no_empty_output_directory() {
    let tmp = Tmp::new("ftmem");
    let csv = tmp.write(
        "d.csv",
        b"sequence,label,split\nACGTACGT,a,train\nTTTTACGT,b,train\nACGTACGT,a,test\nTTTTACGT,b,test\n",
    );
    let out = tmp.path("ft");
    let o = quick(|| {
        hyena(&[
            "finetune",
            "--data",
            s(&csv),
            "--preset",
            "hyenadna-tiny",
            "--batch",
            "100000000",
            "--max-len",
            "100000",
            "--out",
            s(&out),
        ])
    });
    refused(&o, 1, &["fine-tuning at batch 100000000", "GiB", "--batch"]);
    assert!(!out.exists());
    // An existing non-empty output is refused before the data is read.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let before = snapshot(&tmp.0);
    let o = hyena(&[
        "finetune",
        "--data",
        s(&tmp.path("missing.csv")),
        "--preset",
        "hyenadna-tiny",
        "--out",
        s(&out),
    ]);
    refused(&o, 1, &["missing.csv"]);
    let o = hyena(&[
        "finetune",
        "--data",
        s(&csv),
        "--preset",
        "hyenadna-tiny",
        "--out",
        s(&out),
    ]);
    refused(&o, 1, &[s(&out), "not empty", "--force"]);
    assert_eq!(snapshot(&tmp.0), before);
}

#[test]
fn absurd_training_sizes_are_refused() {
    let tmp = Tmp::new("train");
    let out = tmp.path("run");
    for (flag, value, needles) in [
        ("--d-model", "1000000", &["GiB", "--d-model"][..]),
        ("--n-layer", "1000000000", &["n_layer", "1000000000"]),
        ("--batch", "100000000", &["GiB", "--batch"]),
    ] {
        let o = quick(|| hyena(&["train", flag, value, "--out", s(&out)]));
        refused(&o, 1, needles);
        assert!(!out.exists(), "{flag}");
    }
}

#[test]
fn over_long_records_say_what_to_do() {
    let tmp = Tmp::new("long");
    let long = format!(">big\n{}\n", "ACGT".repeat(300));
    let fa = tmp.write("long.fa", long.as_bytes());
    let m = fixture_model();
    let o = hyena(&["score", "--model", s(&m), "--fasta", s(&fa)]);
    refused(
        &o,
        1,
        &[
            "'big'",
            "1200 tokens",
            "at most 1026",
            "split the record",
            "larger l_max",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("build the operator"), "{err}");
}

#[test]
fn missing_inputs_are_named_before_loading() {
    let tmp = Tmp::new("missing");
    let m = fixture_model();
    let o = hyena(&[
        "embed",
        "--model",
        s(&m),
        "--fasta",
        s(&tmp.path("nope.fa")),
        "--out",
        s(&tmp.path("h.npy")),
    ]);
    refused(&o, 1, &["--fasta", "nope.fa"]);
    let o = hyena(&[
        "generate",
        "--model",
        s(&tmp.path("nomodel")),
        "--prompt",
        "A",
    ]);
    refused(&o, 1, &["--model", "nomodel"]);
    assert!(!tmp.path("h.npy").exists());
}
