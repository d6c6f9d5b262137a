//! `hyena train | eval | generate` end to end on a small FASTA file: the run directory, and
//! bad input (missing or empty data, a window longer than the data, an existing run, a resume
//! with other settings, a truncated checkpoint) failing with a clear message, a non-zero exit
//! and every file already on disk left as it was.

mod common;
use common::{fails_with, hyena, snapshot, tmpdir, toy_fasta};

const SMALL: [&str; 12] = [
    "--steps",
    "2",
    "--seq-len",
    "64",
    "--batch",
    "2",
    "--d-model",
    "16",
    "--n-layer",
    "1",
    "--eval-every",
    "1",
];

#[test]
fn train_eval_generate_and_bad_input() {
    let dir = tmpdir("train");
    let fa = dir.join("toy.fa");
    toy_fasta(&fa, "chr test", 4000, 7, Some(70));
    let fa = fa.to_str().unwrap();
    let run = dir.join("run");
    let run_s = run.to_str().unwrap();

    let mut args = vec!["train", "--fasta", fa, "--out", run_s];
    args.extend(SMALL);
    let out = hyena(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("final: validation"), "{stdout}");
    for f in [
        "model.safetensors",
        "config.json",
        "metrics.jsonl",
        "loss.png",
    ] {
        assert!(run.join(f).exists(), "{f}");
    }
    let before = snapshot(&dir);

    // Eval: the run's own validation split, as text and as JSON.
    let out = hyena(&["eval", "--model", run_s]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("bits/token") && stdout.contains("unigram"),
        "{stdout}"
    );
    let out = hyena(&["eval", "--model", run_s, "--fasta", fa, "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bits = v["bits_per_token"].as_f64().unwrap();
    assert!(bits > 1.0 && bits < 4.0, "{v}");
    assert_eq!(v["tokens"].as_u64().unwrap() % 64, 0);

    // A batch of windows whose activations exceed the memory is refused before the forward,
    // naming the flag; a small one under the same limit runs.
    let eval_limited = |batch: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hyena"))
            .args(["eval", "--model", run_s, "--fasta", fa, "--batch", batch])
            .env("HYENA_MEMORY_LIMIT", "4M")
            .output()
            .unwrap()
    };
    fails_with(
        &eval_limited("1000"),
        &["62 windows", "--batch", "4.000 MiB"],
    );
    common::ok(&eval_limited("2"));

    // Generate: reproducible with a seed, only DNA letters after the prompt.
    let gen = |seed: &str| {
        let o = hyena(&[
            "generate", "--model", run_s, "--prompt", "ACGT", "--tokens", "20", "--seed", seed,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let g = gen("3");
    assert_eq!(g, gen("3"));
    assert_eq!(g.len(), 24, "{g}");
    assert!(g.starts_with("ACGT"));

    // Bad input. None of these may touch what is on disk.
    let mut args = vec!["train", "--fasta", fa, "--out", run_s];
    args.extend(SMALL);
    fails_with(&hyena(&args), &["--resume"]);
    fails_with(
        &hyena(&["train", "--resume", run_s, "--d-model", "32"]),
        &["--d-model 32", "the run has 16"],
    );
    let missing = dir.join("missing.fa");
    let mut args = vec!["train", "--fasta", missing.to_str().unwrap()];
    let other = dir.join("other");
    args.extend(["--out", other.to_str().unwrap()]);
    fails_with(&hyena(&args), &["missing.fa"]);
    let empty = dir.join("empty.fa");
    std::fs::write(&empty, "").unwrap();
    let mut args = vec!["train", "--fasta", empty.to_str().unwrap()];
    args.extend(["--out", other.to_str().unwrap()]);
    fails_with(&hyena(&args), &["empty.fa", "empty"]);
    let mut args = vec!["train", "--fasta", fa, "--out", other.to_str().unwrap()];
    args.extend(["--seq-len", "8192", "--steps", "1"]);
    fails_with(&hyena(&args), &["tokens", "--seq-len"]);
    assert!(!other.join("model.safetensors").exists());
    std::fs::remove_file(&empty).unwrap();
    let _ = std::fs::remove_dir_all(&other);
    assert_eq!(snapshot(&dir), before, "a failed command changed files");

    // A truncated checkpoint: generate, eval and resume refuse it and leave it as it is.
    let model = run.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() - 100]).unwrap();
    let truncated = snapshot(&dir);
    fails_with(
        &hyena(&[
            "generate", "--model", run_s, "--prompt", "ACGT", "--tokens", "5",
        ]),
        &["model.safetensors"],
    );
    fails_with(&hyena(&["eval", "--model", run_s]), &["model.safetensors"]);
    fails_with(
        &hyena(&["train", "--resume", run_s, "--steps", "4"]),
        &["model.safetensors"],
    );
    assert_eq!(snapshot(&dir), truncated, "a failed command changed files");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run that diverges, flags out of range, a resume into another directory or below the
/// saved step, and a checkpoint with a foreign optimizer file: each fails with exit 1 and a
/// message naming the flag or file, and every file already on disk stays byte-identical.
#[test]
fn divergence_bad_numbers_and_mixed_checkpoints_lose_nothing() {
    let dir = tmpdir("guard");
    let fa = dir.join("toy.fa");
    toy_fasta(&fa, "chr test", 4000, 5, None);
    let fa = fa.to_str().unwrap();
    let run = dir.join("run");
    let run_s = run.to_str().unwrap();
    // SMALL without its `--steps 2` when `extra` sets the steps.
    let train = |out: &str, extra: &[&str]| {
        let mut a = vec!["train", "--fasta", fa, "--out", out];
        let skip = if extra.contains(&"--steps") { 2 } else { 0 };
        a.extend(&SMALL[skip..]);
        a.extend(extra);
        hyena(&a)
    };
    common::ok(&train(run_s, &[]));
    let good = snapshot(&dir);

    // Divergence: --lr 1e3 gives a NaN loss within a few steps. Over the good run (--force,
    // checkpoints every 50 steps), the run stops at that step and the good checkpoint stays
    // current.
    fails_with(
        &train(
            run_s,
            &[
                "--force",
                "--lr",
                "1000",
                "--steps",
                "20",
                "--save-every",
                "50",
            ],
        ),
        &["diverged at step", "--lr", "--skip-nonfinite"],
    );
    let after = snapshot(&dir);
    for (p, bytes) in &good {
        if !p.ends_with("metrics.jsonl") {
            assert_eq!(after.get(p), Some(bytes), "{} changed", p.display());
        }
    }
    // metrics.jsonl was the replaced run's; put the good one back for the checks below.
    std::fs::write(run.join("metrics.jsonl"), &good[&run.join("metrics.jsonl")]).unwrap();
    assert_eq!(snapshot(&dir), good);

    // Numbers out of range, named by flag or key; no directory is created.
    let fresh = dir.join("fresh");
    let fresh_s = fresh.to_str().unwrap();
    for (lr, shown) in [
        ("nan", "NaN"),
        ("inf", "inf"),
        ("-0.01", "-0.01"),
        ("0", "= 0"),
    ] {
        fails_with(&train(fresh_s, &["--lr", lr]), &["--lr", shown]);
        assert!(!fresh.exists(), "--lr {lr} created {fresh_s}");
    }
    fails_with(
        &train(fresh_s, &["--steps", "0"]),
        &["train.steps", "at least 1"],
    );
    assert!(!fresh.exists());

    // --resume into another --out, --steps below the saved step.
    fails_with(
        &hyena(&["train", "--resume", run_s, "--out", fresh_s]),
        &["--resume", "--out", "different directories"],
    );
    fails_with(
        &hyena(&["train", "--resume", run_s, "--steps", "1"]),
        &["already at step 2", "--steps"],
    );
    // A plain directory that is not a run is not written into.
    let other = dir.join("notes");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("readme.txt"), "mine").unwrap();
    fails_with(
        &train(other.to_str().unwrap(), &[]),
        &["not a run directory", "readme.txt"],
    );
    std::fs::remove_dir_all(&other).unwrap();
    assert_eq!(snapshot(&dir), good, "a failed command changed files");

    // Another run's optimizer file copied over this run's: resume and eval refuse it.
    let run2 = dir.join("run2");
    common::ok(&train(run2.to_str().unwrap(), &["--seed", "9"]));
    std::fs::copy(
        run2.join("optimizer.safetensors"),
        run.join("optimizer.safetensors"),
    )
    .unwrap();
    let mixed = snapshot(&dir);
    fails_with(
        &hyena(&["train", "--resume", run_s, "--steps", "4"]),
        &[
            "optimizer.safetensors",
            "does not belong to this checkpoint",
        ],
    );
    fails_with(
        &hyena(&["eval", "--model", run_s]),
        &["optimizer.safetensors", "does not belong"],
    );
    assert_eq!(snapshot(&dir), mixed, "a failed command changed files");
    let _ = std::fs::remove_dir_all(&dir);
}
