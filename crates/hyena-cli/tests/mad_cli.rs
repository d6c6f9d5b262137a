//! `hyena mad` and `hyena mad compare` end to end on small models and budgets: the table,
//! the results files and chart, `--json`, and clear errors.

mod common;
use common::{fails_with, hyena, ok};

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("hyena-mad-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn mad_quick_writes_table_json_csv_and_chart() {
    let out = tmp("one");
    let o = hyena(&[
        "mad",
        "--arch",
        "hyena,swiglu",
        "--task",
        "memorization,compression",
        "--quick",
        "--budget",
        "200000",
        "--d-model",
        "16",
        "--out",
        out.to_str().unwrap(),
    ]);
    let text = ok(&o);
    assert!(text.contains("| hyena,swiglu |"), "{text}");
    assert!(text.contains("memorization"), "{text}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("config:"), "{err}");
    assert!(text.contains("compression"), "{text}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let r = &json[0];
    let score = r["tasks"][0]["score"].as_f64().unwrap();
    // Memorization of a fixed 127-entry map is learnable at this budget: far above chance
    // (1/128) — a broken trainer or scorer stays near it.
    assert!(score > 0.3, "memorization score {score}");
    assert_eq!(r["tasks"][0]["settings"][0]["label"], "baseline");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    // Compression runs with the encoder-decoder head and scores every position.
    let c = r["tasks"][1]["score"].as_f64().unwrap();
    assert!(c > 0.0 && c <= 1.0, "compression score {c}");
    assert!(std::fs::metadata(out.join("mad.png")).unwrap().len() > 1000);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn mad_compare_json_and_errors() {
    let out = tmp("cmp");
    let o = hyena(&[
        "mad",
        "compare",
        "mlp",
        "attn,mlp",
        "--task",
        "memorization",
        "--quick",
        "--budget",
        "30000",
        "--d-model",
        "16",
        "--heads",
        "2",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    let specs: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["spec"].as_str().unwrap())
        .collect();
    assert_eq!(specs, ["mlp", "attn,mlp"]);
    for r in v.as_array().unwrap() {
        let run = &r["tasks"][0]["settings"][0]["runs"][0];
        assert!(run["best_macro"].as_f64().is_some() && run["best_micro"].as_f64().is_some());
    }
    let _ = std::fs::remove_dir_all(&out);

    fails_with(
        &hyena(&["mad", "--arch", "hyena,bogus", "--quick"]),
        &["bogus", "valid names", "swiglu"],
    );
    fails_with(&hyena(&["mad", "--quick"]), &["--arch"]);
    fails_with(
        &hyena(&["mad", "--arch", "mlp", "--task", "recal"]),
        &["recal", "in-context-recall"],
    );
    let list = ok(&hyena(&["mad", "--list-layers"]));
    assert!(["hyena", "mh-hyena", "rtf", "ssm", "swa", "se", "mr", "li"]
        .iter()
        .all(|k| list.contains(k)));
}

#[test]
fn mad_estimate_prints_projected_hours_and_trains_nothing() {
    let out = tmp("est");
    let o = hyena(&[
        "mad",
        "--arch",
        "hyena,swiglu",
        "--task",
        "memorization",
        "--d-model",
        "16",
        "--estimate",
        "--out",
        out.to_str().unwrap(),
    ]);
    let text = ok(&o);
    assert!(text.contains("projected hours"), "{text}");
    // The full protocol: memorization's 6 settings (baseline + 5 vocabularies), 6 runs each.
    assert!(
        text.contains("| hyena,swiglu | memorization | 6 | 6 | 200 |"),
        "{text}"
    );
    assert!(text.contains("| hyena,swiglu | **all** |"), "{text}");
    assert!(!out.exists(), "--estimate must not write results");
}

/// Every finished setting is appended to `progress.jsonl`; `--resume` after an interruption
/// (here: the file cut back to two settings and half a line) trains only the missing
/// settings and reports the whole protocol. A run without `--resume` keeps the old file aside.
#[test]
fn mad_resume_skips_recorded_settings() {
    let out = tmp("resume");
    let dir = out.to_str().unwrap();
    // The full protocol's memorization sweep (6 settings), one run of one epoch each.
    let args = [
        "mad",
        "--arch",
        "hyena,swiglu",
        "--task",
        "memorization",
        "--epochs",
        "1",
        "--lrs",
        "1e-3",
        "--wds",
        "0",
        "--d-model",
        "16",
        "--json",
        "--out",
        dir,
    ];
    let first: serde_json::Value = serde_json::from_str(&ok(&hyena(&args))).unwrap();
    let progress = out.join("progress.jsonl");
    let text = std::fs::read_to_string(&progress).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    // Interrupted during the third setting's record.
    let cut = format!(
        "{}\n{}\n{}",
        lines[0],
        lines[1],
        &lines[2][..lines[2].len() / 2]
    );
    std::fs::write(&progress, cut).unwrap();
    let mut resumed = args.to_vec();
    resumed.push("--resume");
    let o = hyena(&resumed);
    let second: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("resuming: 2 finished settings"), "{err}");
    assert!(err.contains("unfinished record"), "{err}");
    assert_eq!(err.matches("(resumed from").count(), 2, "{err}");
    assert_eq!(err.matches("-> best acc").count(), 4, "{err}");
    let settings = |v: &serde_json::Value| v[0]["tasks"][0]["settings"].as_array().unwrap().len();
    assert_eq!((settings(&first), settings(&second)), (6, 6));
    assert_eq!(
        first[0]["tasks"][0]["settings"][0],
        second[0]["tasks"][0]["settings"][0]
    );
    // The 2 kept records and 4 new ones, all whole (the cut line is dropped).
    let text = std::fs::read_to_string(&progress).unwrap();
    assert_eq!(text.lines().count(), 6, "{text}");
    for l in text.lines() {
        let r: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(r["task"], "memorization", "{l}");
    }
    // Without --resume (and with --force): the old progress is moved aside and all 6 settings
    // run again.
    let mut forced = args.to_vec();
    forced.push("--force");
    let o = hyena(&forced);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("progress.jsonl.prev"), "{err}");
    assert!(out.join("progress.jsonl.prev").exists());
    assert_eq!(err.matches("-> best acc").count(), 6, "{err}");
    let _ = std::fs::remove_dir_all(&out);
}
