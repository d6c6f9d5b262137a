//! What the commands refuse and how their flags are spelled: a model directory whose config
//! and weights disagree (fewer layers, a missing key) or whose weights are not finite fails
//! with exit 1 and a message naming the tensor or key, touching nothing; `mad --resume` takes
//! an optional directory; the old flag spellings (`--dim`, `--tasks`) still work.

mod common;

use std::path::{Path, PathBuf};

use common::{fails_with, hyena, ok, snapshot};
use hyena::io::safetensors::{write_atomic, TensorFile};

/// A fresh directory for this test (removed on drop).
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("hyena-strict-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of the legacy 2-block run directory at `dst`.
fn legacy_run(dst: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/legacy/run");
    std::fs::create_dir_all(dst).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
}

fn edit_config(run: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = run.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

fn eval_fails(run: &Path, needles: &[&str]) {
    let before = snapshot(run);
    let o = hyena(&["eval", "--model", run.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    fails_with(&o, needles);
    assert_eq!(snapshot(run), before, "files of {} changed", run.display());
}

#[test]
fn eval_refuses_a_config_that_disagrees_with_the_weights() {
    let tmp = Tmp::new("layers");
    let run = tmp.0.join("run");
    legacy_run(&run);
    edit_config(&run, |c| c["model"]["n_layer"] = 1.into());
    eval_fails(
        &run,
        &[
            "model.safetensors",
            "`hyena.backbone.layers.1.",
            "more",
            "n_layer 1 but the weights have layers 0..1",
            "fix config.json",
        ],
    );
    edit_config(&run, |c| {
        c["model"].as_object_mut().unwrap().remove("n_layer");
    });
    eval_fails(&run, &["config.json", "`model.n_layer`"]);
}

#[test]
fn eval_refuses_non_finite_weights() {
    let tmp = Tmp::new("nan");
    let run = tmp.0.join("run");
    legacy_run(&run);
    let w = run.join("model.safetensors");
    let mut f = TensorFile::read(&w).unwrap();
    let name = "hyena.backbone.layers.1.mixer.out_proj.weight";
    f.tensors.get_mut(name).unwrap().data[7] = f32::NAN;
    write_atomic(&w, &f.tensors, &f.metadata).unwrap();
    eval_fails(&run, &["model.safetensors", name, "NaN at index 7"]);
    let o = hyena(&[
        "generate",
        "--model",
        run.to_str().unwrap(),
        "--prompt",
        "ACGT",
    ]);
    fails_with(&o, &[name]);
}

/// `--resume` alone continues --out, `--resume DIR` continues DIR, and both with different
/// directories is an error; a following positional is not taken as the directory unnoticed.
#[test]
fn mad_resume_takes_an_optional_directory() {
    let tmp = Tmp::new("mad");
    let a = tmp.0.join("a");
    let a_s = a.to_str().unwrap();
    let base = [
        "mad",
        "--arch",
        "mlp",
        "--task",
        "memorization",
        "--quick",
        "--budget",
        "20000",
        "--d-model",
        "8",
    ];
    let with = |extra: &[&str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        hyena(&v)
    };
    ok(&with(&["--out", a_s]));
    let progress = a.join("progress.jsonl");
    assert!(progress.is_file());
    let resumed = |o: &std::process::Output| {
        ok(o);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(
            err.contains("resuming: 1 finished settings") && err.contains("(resumed from"),
            "{err}"
        );
    };
    resumed(&with(&["--out", a_s, "--resume"]));
    resumed(&with(&["--resume", a_s]));
    resumed(&with(&["--resume", a_s, "--out", a_s]));
    // A different --out, or a directory that is not there.
    let b = tmp.0.join("b");
    fails_with(
        &with(&["--resume", a_s, "--out", b.to_str().unwrap()]),
        &["--resume", "--out", "b"],
    );
    assert!(!b.exists());
    // `compare --resume SPEC SPEC`: the first spec would be the directory; refused, named.
    let o = hyena(&[
        "mad",
        "compare",
        "--resume",
        "mlp",
        "attn,mlp",
        "--task",
        "memorization",
        "--quick",
        "--budget",
        "20000",
        "--out",
        a_s,
    ]);
    fails_with(&o, &["--resume mlp", "no such directory"]);
    // The old spelling of --task is still accepted.
    let mut v = base.to_vec();
    v[3] = "--tasks";
    v.extend_from_slice(&["--resume", a_s]);
    resumed(&hyena(&v));
}

/// Model width is `--d-model` in every command; `--dim` still works in the benchmarks.
#[test]
fn bench_takes_d_model_and_the_old_dim() {
    for flag in ["--d-model", "--dim"] {
        let out = ok(&hyena(&[
            "bench", "layers", "--layers", "mlp", "--batch", "1", "--len", "8", flag, "8",
            "--reps", "1", "--json",
        ]));
        assert!(out.contains("mlp"), "{flag}: {out}");
    }
    let help = ok(&hyena(&["bench", "layers", "--help"]));
    assert!(
        help.contains("--d-model") && !help.contains("--dim "),
        "{help}"
    );
}
