//! Crash safety of `hyena train`'s run directory: a short run is killed with SIGKILL at 50
//! instants — 30 chosen inside checkpoint writes (the writer's crash points, `HYENA_CRASH_AT`:
//! every step of the first checkpoint, then spread over the later ones) and 20 at random wall
//! times — and some of the resumed runs are killed again. After every kill the directory must
//! load (`hyena eval`) when it holds a checkpoint, or else accept the same command again;
//! `--resume` must finish the run; and the final weights, optimizer state and metrics must
//! equal an uninterrupted run's byte for byte, with no temporary file left behind.

#![cfg(unix)]

mod common;
use common::{hyena, ok, tmpdir, toy_fasta};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const STEPS: u64 = 12;
/// Crash points per checkpoint commit (three files, the flushed folder, its rename, the
/// pointer, the links).
const POINTS_PER_COMMIT: u64 = 7;

fn train_args(fa: &Path, out: &Path) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--fasta"].map(String::from).to_vec();
    a.push(fa.display().to_string());
    a.push("--out".into());
    a.push(out.display().to_string());
    let small = [
        "--steps",
        "12",
        "--seq-len",
        "64",
        "--batch",
        "2",
        "--d-model",
        "16",
        "--n-layer",
        "1",
        "--eval-every",
        "4",
        "--save-every",
        "1",
    ];
    a.extend(small.map(String::from));
    a
}

fn resume_args(out: &Path) -> Vec<String> {
    vec![
        "train".into(),
        "--resume".into(),
        out.display().to_string(),
        "--steps".into(),
        STEPS.to_string(),
    ]
}

fn command(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hyena"));
    c.args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    c
}

/// How a run is stopped.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// At the N-th crash point of the checkpoint writer.
    At(u64),
    /// With SIGKILL after this long.
    After(Duration),
}

/// Run `args` and kill it as `kill` says. Returns whether it was killed (a run may finish
/// before a timed kill).
fn run_killed(args: &[String], kill: Kill) -> bool {
    let (status, stderr) = match kill {
        Kill::At(n) => {
            let o = command(args)
                .env("HYENA_CRASH_AT", n.to_string())
                .output()
                .unwrap();
            (o.status, String::from_utf8_lossy(&o.stderr).into_owned())
        }
        Kill::After(d) => {
            let mut child = command(args)
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let t0 = Instant::now();
            loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break (s, String::new());
                }
                if t0.elapsed() >= d {
                    let _ = child.kill();
                    break (child.wait().unwrap(), String::new());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    if status.signal() == Some(9) {
        return true;
    }
    assert!(
        status.success(),
        "the run failed instead of being killed ({status}): {stderr}"
    );
    false
}

/// Every path under `dir` whose name marks a temporary file.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().into_owned();
        if n.contains(".tmp") {
            v.push(e.path());
        }
        if e.file_type().unwrap().is_dir() {
            v.extend(temp_files(&e.path()));
        }
    }
    v
}

/// A small deterministic random number generator (the test's choices are reproducible; the
/// timed kills still land where the scheduler puts them).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn killed_runs_resume_to_the_same_bytes() {
    let dir = tmpdir("crash");
    let fa = dir.join("toy.fa");
    toy_fasta(&fa, "chr test", 6000, 3, Some(70));
    let mut rng = Lcg(11);

    // The uninterrupted run.
    let reference = dir.join("reference");
    let t0 = Instant::now();
    let out = command(&train_args(&fa, &reference)).output().unwrap();
    ok(&out);
    let span = t0.elapsed();
    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    let want: Vec<Vec<u8>> = [
        "model.safetensors",
        "optimizer.safetensors",
        "metrics.jsonl",
    ]
    .iter()
    .map(|f| read(&reference, f))
    .collect();

    let total_points = POINTS_PER_COMMIT * STEPS;
    let mut kills = Vec::new();
    // Every crash point of the first checkpoint, then spread over the later ones.
    for k in 1..=POINTS_PER_COMMIT {
        kills.push(Kill::At(k));
    }
    for i in 0..23u64 {
        kills.push(Kill::At(
            POINTS_PER_COMMIT + 1 + i * (total_points - POINTS_PER_COMMIT - 1) / 22,
        ));
    }
    for _ in 0..20 {
        let ms = rng.next() % (span.as_millis() as u64 + 1);
        kills.push(Kill::After(Duration::from_millis(ms)));
    }
    assert_eq!(kills.len(), 50);

    let (mut killed, mut restarted, mut resumed) = (0, 0, 0);
    for (i, kill) in kills.iter().enumerate() {
        let run = dir.join(format!("run{i}"));
        killed += run_killed(&train_args(&fa, &run), *kill) as usize;
        // Go on until the run is complete, killing some of the continuations again.
        for attempt in 0.. {
            assert!(attempt < 10, "run {i} ({kill:?}) never finished");
            let committed = run.join("checkpoint").is_dir();
            let args = if committed {
                // What is on disk is a complete checkpoint: it loads.
                ok(&hyena(&[
                    "eval",
                    "--model",
                    run.to_str().unwrap(),
                    "--json",
                ]));
                resumed += 1;
                resume_args(&run)
            } else {
                restarted += 1;
                train_args(&fa, &run)
            };
            let again = rng.next().is_multiple_of(3) && attempt < 3;
            let k = Kill::At(1 + rng.next() % total_points);
            if again && run_killed(&args, k) {
                killed += 1;
                continue;
            }
            ok(&command(&args).output().unwrap());
            break;
        }
        for (f, w) in [
            "model.safetensors",
            "optimizer.safetensors",
            "metrics.jsonl",
        ]
        .iter()
        .zip(&want)
        {
            assert!(
                &read(&run, f) == w,
                "run {i} ({kill:?}): {f} differs from the uninterrupted run's"
            );
        }
        assert_eq!(
            temp_files(&run),
            Vec::<PathBuf>::new(),
            "run {i} ({kill:?})"
        );
        let steps: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(steps, vec![std::ffi::OsString::from("step-000012")]);
        let _ = std::fs::remove_dir_all(&run);
    }
    // The timed kills may land after a run finished; the crash points always kill.
    assert!(killed >= 30, "only {killed} kills");
    assert!(restarted > 0 && resumed > 0, "{restarted} {resumed}");
    let _ = std::fs::remove_dir_all(&dir);
}
