//! Helpers shared by the CLI tests: run the binary, check a success or a failure, snapshot a
//! directory.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Run `hyena ARGS`.
pub fn hyena(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyena"))
        .args(args)
        .output()
        .expect("run hyena")
}

/// Every file under `dir` with its bytes.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            m.extend(snapshot(&p));
        } else {
            m.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    m
}

/// A successful run's stdout (the stderr in the message when it failed).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A non-zero exit whose stderr names every needle, without a panic.
pub fn fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a failure, got: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// A fresh, empty temp directory for test `tag` of this process.
pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hyena-cli-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Write a FASTA file of one record `>name` holding `n` pseudo-random bases drawn by a linear
/// congruential generator seeded with `seed` (lines of `wrap` bases; `None`: one line).
pub fn toy_fasta(path: &Path, name: &str, n: usize, seed: u64, wrap: Option<usize>) {
    let mut s = format!(">{name}\n");
    let mut x = seed;
    for i in 0..n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.push(b"ACGT"[(x >> 62) as usize] as char);
        if wrap.is_some_and(|w| i % w == w - 1) {
            s.push('\n');
        }
    }
    std::fs::write(path, s).unwrap();
}
