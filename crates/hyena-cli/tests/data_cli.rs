//! `hyena data species` and `hyena data baseline` end to end on small synthetic genomes laid
//! out like the Debian packages, and their errors (clear message, non-zero exit, nothing on
//! disk changed).

mod common;
use common::{fails_with, hyena, ok, snapshot};
use std::path::{Path, PathBuf};

use hyena::data::species::SPECIES;

/// One random chromosome (and a small plasmid) per strain at its package path under `root`;
/// each species has its own GC content, so the task is learnable from base statistics.
fn write_genomes(root: &Path) {
    let mut x = 0x853c_49e6_748f_ea9bu64;
    let mut unif = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    for (i, sp) in SPECIES.iter().enumerate() {
        let gc = 0.2 + 0.15 * i as f64;
        for s in sp.strains {
            let mut base = |_| {
                let half = unif() < 0.5;
                match (unif() < gc, half) {
                    (true, true) => 'G',
                    (true, false) => 'C',
                    (false, true) => 'A',
                    (false, false) => 'T',
                }
            };
            let chrom: String = (0..5000).map(&mut base).collect();
            let plasmid: String = (0..300).map(&mut base).collect();
            let p = root.join(s.path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            // Plain text under a `.gz`/`.xz` name: compression is detected from the bytes.
            std::fs::write(&p, format!(">chr\n{chrom}\n>plasmid\n{plasmid}\n")).unwrap();
        }
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hyena-data-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn species_task_then_baseline() {
    let dir = tmpdir("ok");
    let genomes = dir.join("genomes");
    write_genomes(&genomes);
    let task = dir.join("task");
    let (g, t) = (genomes.to_str().unwrap(), task.to_str().unwrap());
    let species = [
        "data",
        "species",
        "--genomes",
        g,
        "--out",
        t,
        "--length",
        "400",
        "--train-per-class",
        "60",
        "--test-per-class",
        "30",
        "--seed",
        "3",
        "--min-record-len",
        "1000",
    ];
    let out = ok(&hyena(&species));
    assert!(
        out.contains("| e_coli | Escherichia coli | MG1655-K12 | 60 | DH1 | 30 |"),
        "{out}"
    );
    assert!(
        out.contains("| s_aureus | Staphylococcus aureus | COL, JKD6008, N315, RF122 | 60 | USA300_FPR3757 | 30 |"),
        "{out}"
    );
    assert!(out.contains("wrote") && out.contains(t), "{out}");
    assert!(task.join("dataset.json").is_file());
    assert!(task.join("test/k_pneumoniae/00029.txt").is_file());

    // k chosen on held-out train data: the table, then the test scores.
    let out = ok(&hyena(&["data", "baseline", "--data", t, "--max-k", "3"]));
    for needle in [
        "5 classes, 300 train / 150 test sequences, lengths 400..=400",
        "| k | held-out accuracy |",
        "270 fitted, 30 held out",
        "test accuracy:",
        "| class | test n | accuracy |",
        "| v_cholerae | 30 |",
        "confusion matrix",
        "| true \\ predicted | e_coli | h_pylori | k_pneumoniae | s_aureus | v_cholerae |",
    ] {
        assert!(out.contains(needle), "`{needle}` not in: {out}");
    }
    let acc: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("test accuracy: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in: {out}"));
    assert!(
        acc > 0.9,
        "accuracy {acc} on well-separated GC contents: {out}"
    );

    // A fixed k: no selection table.
    let out = ok(&hyena(&["data", "baseline", "--data", t, "--k", "2"]));
    assert!(
        out.contains("k = 2") && !out.contains("held-out accuracy"),
        "{out}"
    );

    // Fine-tuning a fresh HyenaDNA-tiny backbone on the same task, with the baseline beside.
    let ft = dir.join("ft");
    let f = ft.to_str().unwrap();
    let finetune = [
        "finetune",
        "--data",
        t,
        "--preset",
        "hyenadna-tiny",
        "--epochs",
        "2",
        "--batch",
        "16",
        "--lr",
        "3e-3",
        "--baseline",
        "--out",
        f,
    ];
    let out = ok(&hyena(&finetune));
    for needle in [
        "fine-tuned 38 steps",
        "| class | test n | accuracy |",
        "confusion matrix",
        "Markov baseline (k = ",
    ] {
        assert!(out.contains(needle), "`{needle}` not in: {out}");
    }
    let acc: f64 = out
        .lines()
        .find_map(|l| l.split("test accuracy ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in: {out}"));
    assert!(acc > 0.6, "accuracy {acc} (chance 0.2): {out}");
    for file in [
        "model.safetensors",
        "config.json",
        "eval.json",
        "accuracy.png",
    ] {
        assert!(ft.join(file).is_file(), "{file}");
    }
    let before = snapshot(&ft);
    fails_with(&hyena(&finetune), &[f, "already exists", "--force"]);
    assert_eq!(snapshot(&ft), before);
    fails_with(
        &hyena(&["finetune", "--data", t, "--out", f]),
        &["--model", "--preset"],
    );
    fails_with(
        &hyena(&[
            "finetune",
            "--data",
            t,
            "--model",
            g,
            "--out",
            &format!("{f}2"),
        ]),
        &["config.json"],
    );

    // Errors: the same output again (not empty), nothing changed.
    let before = snapshot(&task);
    fails_with(&hyena(&species), &["task", "not empty"]);
    assert_eq!(snapshot(&task), before);
    fails_with(
        &hyena(&["data", "baseline", "--data", t, "--k", "11"]),
        &["--k 11", "at most"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn data_errors_are_clear() {
    let dir = tmpdir("err");
    // Genomes missing: names the files and the packages; writes nothing.
    let out_dir = dir.join("task");
    let o = out_dir.to_str().unwrap();
    fails_with(
        &hyena(&[
            "data",
            "species",
            "--genomes",
            dir.to_str().unwrap(),
            "--out",
            o,
        ]),
        &[
            "20 of the 20 genome files not found",
            "ragout/examples/E.Coli/references/DH1.fasta.gz",
            "kleborate-examples ragout-examples",
        ],
    );
    assert!(!out_dir.exists());
    // A dataset without its test split.
    let d = dir.join("half");
    std::fs::create_dir_all(d.join("train/a")).unwrap();
    std::fs::write(d.join("train/a/1.txt"), "ACGT").unwrap();
    fails_with(
        &hyena(&["data", "baseline", "--data", d.to_str().unwrap()]),
        &["half", "no `test` directory"],
    );
    // A CSV with a bad line.
    let csv = dir.join("one.csv");
    std::fs::write(&csv, "sequence,label,split\nACGT,a,train\nACGT,a\n").unwrap();
    fails_with(
        &hyena(&["data", "baseline", "--data", csv.to_str().unwrap()]),
        &["one.csv", "line 3", "2 fields"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}
