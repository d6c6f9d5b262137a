//! End-to-end checks of the `hyena` binary: the `bench --json` contract other tools rely on,
//! the table output, and clear errors on bad flags.

use std::process::Command;

fn hyena(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hyena"))
        .args(args)
        .output()
        .expect("run hyena")
}

/// Run `hyena args…`, require success, and parse each stdout line as a JSON record.
fn json_records(args: &[&str]) -> (Vec<serde_json::Value>, String) {
    let out = hyena(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let recs = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (recs, text)
}

#[test]
fn bench_json_prints_one_record_per_length() {
    for op in ["conv", "operator"] {
        let (recs, text) = json_records(&[
            "bench",
            op,
            "--lengths",
            "7,64",
            "--batch",
            "3",
            "--dim",
            "8",
            "--reps",
            "1",
            "--json",
        ]);
        assert_eq!(recs.len(), 2, "{text}");
        for (r, l) in recs.iter().zip([7, 64]) {
            assert_eq!(r["op"], op);
            assert_eq!(r["B"], 3);
            assert_eq!(r["D"], 8);
            assert_eq!(r["L"], l);
            for key in ["fwd_ms", "fwdbwd_ms", "fwd_gflops", "peak_mib"] {
                let v = r[key]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{key} missing in {r}"));
                assert!(v > 0.0, "{key} = {v}");
            }
        }
    }
}

#[test]
fn bench_table_has_a_row_per_length() {
    let out = hyena(&[
        "bench",
        "conv",
        "--lengths",
        "5,9,33",
        "--batch",
        "1",
        "--dim",
        "2",
        "--reps",
        "1",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for l in ["| 5 |", "| 9 |", "| 33 |"] {
        assert!(text.contains(l), "missing row {l} in\n{text}");
    }
}

/// `bench mad` trains the given architecture for `--steps` steps of `--batch` sequences (the
/// batch flag used to be ignored there: it always ran 128).
#[test]
fn bench_mad_honours_batch_and_steps() {
    let (recs, text) = json_records(&[
        "bench",
        "mad",
        "--arch",
        "hyena,swiglu",
        "--dim",
        "8",
        "--steps",
        "2",
        "--batch",
        "3",
        "--json",
    ]);
    assert_eq!(recs.len(), 1, "{text}");
    let r = &recs[0];
    assert_eq!(r["batch"], 3, "{text}");
    assert_eq!(r["steps"], 2, "{text}");
    assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0, "{text}");
}

/// `bench layers` times each named zoo layer at the given shape, one record per layer, and
/// names an unknown layer.
#[test]
fn bench_layers_times_each_named_layer() {
    let (recs, text) = json_records(&[
        "bench",
        "layers",
        "--layers",
        "hyena,swiglu",
        "--batch",
        "2",
        "--len",
        "16",
        "--dim",
        "8",
        "--reps",
        "2",
        "--json",
    ]);
    assert_eq!(recs.len(), 2, "{text}");
    for (r, name) in recs.iter().zip(["hyena", "swiglu"]) {
        assert_eq!(r["layer"], name, "{text}");
        assert_eq!(
            (r["B"].as_u64(), r["L"].as_u64(), r["D"].as_u64()),
            (Some(2), Some(16), Some(8))
        );
        assert!(r["params"].as_u64().unwrap() > 0, "{text}");
        assert!(r["fwd_ms"].as_f64().unwrap() > 0.0 && r["bwd_ms"].as_f64().unwrap() > 0.0);
    }
    let out = hyena(&["bench", "layers", "--layers", "nonsense"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonsense"));
}

#[test]
fn bad_flags_fail_with_a_message() {
    let out = hyena(&["bench", "conv", "--lengths", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--lengths"));
    let out = hyena(&[
        "bench",
        "operator",
        "--order",
        "1",
        "--lengths",
        "8",
        "--dim",
        "4",
        "--batch",
        "1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("order"), "{err}");
    let out = hyena(&["bench", "nonsense"]);
    assert!(!out.status.success());
    let out = hyena(&["bench", "train", "--shapes", "huge"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tiny") && err.contains("small"), "{err}");
}

/// `hyena bench` has one subcommand per kind, each with only its own flags and its defaults
/// in its help.
#[test]
fn bench_kinds_are_subcommands_with_their_own_flags() {
    for (kind, flags) in [
        ("conv", &["--lengths", "--batch", "--d-model", "--reps"][..]),
        (
            "operator",
            &["--lengths", "--batch", "--d-model", "--reps", "--order"],
        ),
        ("train", &["--shapes", "--reps"]),
        (
            "generate",
            &["--contexts", "--d-model", "--layers", "--modes", "--png"],
        ),
        (
            "embed",
            &["--lengths", "--d-model", "--layers", "--residual"],
        ),
        (
            "mad",
            &[
                "--arch",
                "--d-model",
                "--batch",
                "--task",
                "--steps",
                "--suite",
            ],
        ),
        (
            "layers",
            &["--layers", "--batch", "--len", "--d-model", "--reps"],
        ),
    ] {
        let out = hyena(&["bench", kind, "--help"]);
        assert!(out.status.success(), "bench {kind} --help");
        let help = String::from_utf8(out.stdout).unwrap();
        for f in flags.iter().chain(&["--threads", "--json"]) {
            assert!(help.contains(f), "bench {kind} --help lacks {f}:\n{help}");
        }
        assert!(
            help.contains("[default: "),
            "bench {kind} --help shows no default"
        );
    }
    // Another kind's flag is an error, not silently ignored.
    for args in [
        &["bench", "conv", "--order", "3"][..],
        &["bench", "train", "--lengths", "8"],
        &["bench", "generate", "--shapes", "tiny"],
        &["bench", "embed", "--steps", "2"],
    ] {
        let out = hyena(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unexpected argument"), "{args:?}: {err}");
    }
}

/// Every subcommand's help shows the defaults of its flags.
#[test]
fn help_shows_defaults() {
    for cmd in [
        &["train"][..],
        &["eval"],
        &["generate"],
        &["embed"],
        &["score"],
        &["finetune"],
        &["mad"],
        &["mad", "compare"],
        &["distill"],
        &["analyze", "ess"],
        &["data", "species"],
        &["data", "baseline"],
    ] {
        let out = hyena(&[cmd, &["--help"]].concat());
        assert!(out.status.success(), "{cmd:?} --help");
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(help.contains("[default: "), "{cmd:?} --help:\n{help}");
    }
    let out = hyena(&["--help"]);
    assert!(out.status.success());
}

/// One `--pool` for `embed` and `finetune`; a classifier cannot take `none`.
#[test]
fn finetune_pool_has_no_none() {
    let out = hyena(&["finetune", "--data", "x", "--pool", "none"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid value 'none'") && err.contains("mean") && err.contains("last"),
        "{err}"
    );
}
