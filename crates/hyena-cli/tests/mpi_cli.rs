//! Data-parallel `hyena train` under `mpirun` (built with `--features mpi`; `.ci/run` runs
//! these with Open MPI): two ranks × one thread give the loss curve and weights of one process
//! with two threads bit for bit (the ranks take the rows the thread shards take, and the ring
//! all-reduce adds the two gradients as the process adds its two shards); a killed run resumes
//! on the same curve, with two ranks or with one process; an error on one rank stops every
//! rank with that rank's message.
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::tmpdir;

/// A slice of the shipped E. coli genome as a plain FASTA (a few hundred kb: quick baselines).
fn genome(dir: &Path) -> PathBuf {
    use std::io::Read;
    let gz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/ecoli/MG1655-K12.fasta.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(gz).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let lines: Vec<&str> = text.lines().take(3000).collect();
    let p = dir.join("g.fa");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

fn train_args(fa: &Path, out: &Path, steps: u32) -> Vec<String> {
    sized_args(fa, out, steps, 256, 64)
}

fn sized_args(fa: &Path, out: &Path, steps: u32, seq_len: u32, d_model: u32) -> Vec<String> {
    [
        "train",
        "--fasta",
        fa.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        &steps.to_string(),
        "--seq-len",
        &seq_len.to_string(),
        "--batch",
        "4",
        "--d-model",
        &d_model.to_string(),
        "--eval-every",
        "10",
        "--save-every",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `mpirun -np N hyena ARGS` with one worker thread per rank.
fn mpirun(n: usize, args: &[String]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-np", &n.to_string(), "--oversubscribe"])
        .args(["-x", "RAYON_NUM_THREADS=1"])
        .arg(env!("CARGO_BIN_EXE_hyena"))
        .args(args)
        // CI machines run as root; Open MPI refuses that without these.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

/// One process with `threads` workers.
fn single(threads: usize, args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyena"))
        .args(args)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .output()
        .unwrap()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The same run logged twice: training lines (loss, gradient norm, learning rate) equal bit
/// for bit; evaluation lines within 1e-8 relative (rank 0 evaluates alone, on its own thread
/// count, so its validation sums are added in another order than the two-thread process's).
fn same_curve(a: &[serde_json::Value], b: &[serde_json::Value], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?}\n{b:?}");
    for (x, y) in a.iter().zip(b) {
        if x["kind"] == "train" {
            assert_eq!(x, y, "{what}");
        } else {
            for k in ["loss", "bits_per_token", "accuracy", "perplexity"] {
                let (u, v) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
                assert!(
                    (u - v).abs() <= 1e-8 * u.abs().max(1.0),
                    "{what}: {k} {u} vs {v}"
                );
            }
            assert_eq!(x["step"], y["step"], "{what}");
        }
    }
}

#[test]
fn two_ranks_equal_one_process_with_two_threads() {
    let t = tmpdir("mpi-equal");
    let fa = genome(&t);
    let (one, two) = (t.join("one"), t.join("two"));
    ok(&single(2, &train_args(&fa, &one, 20)));
    let o = mpirun(2, &train_args(&fa, &two, 20)).output().unwrap();
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("data-parallel over MPI, 2 ranks"), "{err}");
    // Only rank 0 prints the run.
    assert_eq!(err.matches("config: ").count(), 1, "{err}");
    let (a, b) = (metrics(&one), metrics(&two));
    assert_eq!(a.iter().filter(|m| m["kind"] == "train").count(), 20);
    same_curve(&a, &b, "two ranks against one process");
    assert_eq!(
        std::fs::read(one.join("model.safetensors")).unwrap(),
        std::fs::read(two.join("model.safetensors")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&t);
}

/// Start `cmd`, kill it (the whole launcher) once its run has logged step `at`.
fn kill_at(mut cmd: Command, run: &Path, at: u64) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let done = std::fs::read_to_string(run.join("metrics.jsonl"))
            .map(|s| {
                s.contains(&format!("\"step\":{at},")) || s.contains(&format!("\"step\":{at}}}"))
            })
            .unwrap_or(false);
        if done || t0.elapsed().as_secs() > 120 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SIGTERM: mpirun passes it to its ranks and waits for them (SIGKILL would orphan them).
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
}

#[test]
fn a_killed_run_resumes_on_the_same_curve_with_any_rank_count() {
    let t = tmpdir("mpi-resume");
    let fa = genome(&t);
    let reference = t.join("ref");
    // Steps slow enough (a few per second) for the kill to land mid-run.
    let args = |out: &Path| sized_args(&fa, out, 30, 1024, 128);
    ok(&single(2, &args(&reference)));
    let want = metrics(&reference);
    for (tag, resume_ranks) in [("mpi", 2usize), ("single", 1)] {
        let run = t.join(tag);
        kill_at(mpirun(2, &args(&run)), &run, 8);
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap())
                .unwrap();
        let at = state["step"].as_u64().unwrap();
        assert!(at < 30, "the run was not killed before its end (step {at})");
        let resume: Vec<String> = ["train", "--resume", run.to_str().unwrap(), "--steps", "30"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if resume_ranks == 2 {
            ok(&mpirun(2, &resume).output().unwrap());
        } else {
            // Another rank count, the same global batch: one process, two threads.
            ok(&single(2, &resume));
        }
        same_curve(
            &metrics(&run),
            &want,
            &format!("{tag}: resumed at step {at}"),
        );
        assert_eq!(
            std::fs::read(run.join("model.safetensors")).unwrap(),
            std::fs::read(reference.join("model.safetensors")).unwrap(),
            "{tag}"
        );
    }
    let _ = std::fs::remove_dir_all(&t);
}

#[test]
fn an_error_on_one_rank_stops_every_rank_with_its_message() {
    let t = tmpdir("mpi-error");
    let good = genome(&t);
    let bad = t.join("bad.fa");
    std::fs::write(&bad, "no header here\nACGT\n").unwrap();
    let out = t.join("run");
    // MPMD launch: rank 1 reads a malformed file, rank 0 a good one.
    let mut c = Command::new("mpirun");
    c.args(["-np", "1", env!("CARGO_BIN_EXE_hyena")])
        .args(train_args(&good, &out, 5))
        .args([":", "-np", "1", env!("CARGO_BIN_EXE_hyena")])
        .args(train_args(&bad, &out, 5))
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    let t0 = std::time::Instant::now();
    let o = c.output().unwrap();
    assert!(!o.status.success());
    assert!(t0.elapsed().as_secs() < 120, "the ranks hung");
    let err = String::from_utf8_lossy(&o.stderr);
    // Both ranks stop with rank 1's message.
    // (The two ranks' lines may interleave on the shared stderr.)
    assert_eq!(err.matches("rank 1 of 2: ").count(), 2, "{err}");
    assert!(err.contains("neither FASTA nor FASTQ"), "{err}");
    assert!(!out.exists(), "a failed new run leaves no directory");
    // Divergence: every rank sees the same summed gradient, so all stop at the same step.
    let mut a = train_args(&good, &t.join("nan"), 5);
    a.extend(["--lr".into(), "1e30".into()]);
    let o = mpirun(2, &a).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("training diverged at step").count(), 2, "{err}");
    let _ = std::fs::remove_dir_all(&t);
}

#[test]
fn finetune_over_two_ranks_equals_one_process() {
    let t = tmpdir("mpi-finetune");
    // Two classes of different GC content, a `split` column: 48 training and 16 test rows.
    let mut x: u64 = 3;
    let mut csv = String::from("sequence,label,split\n");
    for i in 0..64 {
        let label = i % 2;
        let seq: String = (0..120)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (x >> 33) % 10;
                match (label, r) {
                    (0, 0..=6) | (1, 0..=2) => ['A', 'T'][(r % 2) as usize],
                    _ => ['C', 'G'][(r % 2) as usize],
                }
            })
            .collect();
        let split = if i < 48 { "train" } else { "test" };
        csv += &format!("{seq},{label},{split}\n");
    }
    let data = t.join("gc.csv");
    std::fs::write(&data, csv).unwrap();
    let args = |out: &Path| -> Vec<String> {
        [
            "finetune",
            "--data",
            data.to_str().unwrap(),
            "--preset",
            "hyenadna-tiny",
            "--epochs",
            "2",
            "--batch",
            "8",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (one, two) = (t.join("one"), t.join("two"));
    ok(&single(2, &args(&one)));
    let o = mpirun(2, &args(&two)).output().unwrap();
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("data-parallel over MPI, 2 ranks"));
    // Training lines bit for bit, the weights too (evaluation: same_curve's tolerance).
    let (a, b) = (metrics(&one), metrics(&two));
    assert_eq!(a.iter().filter(|m| m["kind"] == "train").count(), 12);
    for (x, y) in a.iter().zip(&b).filter(|(x, _)| x["kind"] == "train") {
        assert_eq!(x, y);
    }
    assert_eq!(a.len(), b.len());
    assert_eq!(
        std::fs::read(one.join("model.safetensors")).unwrap(),
        std::fs::read(two.join("model.safetensors")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&t);
}
