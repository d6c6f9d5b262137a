//! CLI: `--shard I/N` of `embed`, `score` and `vep`, and `hyena merge`: three shards merged
//! give the unsharded outputs byte for byte; a killed shard resumes; a rerun of a finished
//! shard does nothing; a shard whose inputs changed is refused, and so is a merge of shards
//! that are not one finished job.

mod common;

use std::path::{Path, PathBuf};

use common::{fails_with, hyena, ok, tmpdir};

fn hyenadna() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hyenadna/tiny-hf")
}

fn evo2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/evo2/tiny")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A FASTA of `n` records of pseudo-random lengths in 40..=1000 bases (the tiny model takes
/// at most 1026), wrapped at 60.
fn records(path: &Path, n: usize, seed: u64) {
    let mut x = seed;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    let mut text = String::new();
    for r in 0..n {
        let len = 40 + (next() % 961) as usize;
        text += &format!(">rec{r} some description\n");
        for i in 0..len {
            text.push(b"ACGT"[(next() % 4) as usize] as char);
            if i % 60 == 59 || i == len - 1 {
                text.push('\n');
            }
        }
    }
    std::fs::write(path, text).unwrap();
}

fn run(args: &[&str]) -> String {
    ok(&hyena(args))
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn three_shards_merge_to_the_unsharded_outputs() {
    let t = tmpdir("shard-merge");
    let fa = t.join("r.fa");
    records(&fa, 11, 5);
    let m = hyenadna();
    for pool in ["none", "mean"] {
        let whole = t.join(format!("whole-{pool}.npy"));
        run(&[
            "embed",
            "--model",
            s(&m),
            "--fasta",
            s(&fa),
            "--pool",
            pool,
            "--out",
            s(&whole),
        ]);
        let shards: Vec<PathBuf> = (1..=3)
            .map(|i| t.join(format!("e{i}-{pool}.npy")))
            .collect();
        for (i, o) in shards.iter().enumerate() {
            let out = run(&[
                "embed",
                "--model",
                s(&m),
                "--fasta",
                s(&fa),
                "--pool",
                pool,
                "--out",
                s(o),
                "--shard",
                &format!("{}/3", i + 1),
            ]);
            assert!(out.contains(&format!("shard {}/3", i + 1)), "{out}");
        }
        // Every shard has some records: the split is balanced.
        for o in &shards {
            let rows = std::fs::read_to_string(format!("{}.records.tsv", o.display())).unwrap();
            assert!(rows.lines().count() >= 3, "{rows}");
        }
        let merged = t.join(format!("merged-{pool}.npy"));
        // Any order of the shard files.
        run(&[
            "merge",
            s(&shards[2]),
            s(&shards[0]),
            s(&shards[1]),
            "--out",
            s(&merged),
        ]);
        assert_eq!(read(&merged), read(&whole), "pool {pool}");
        assert_eq!(
            read(&t.join(format!("merged-{pool}.npy.records.tsv"))),
            read(&t.join(format!("whole-{pool}.npy.records.tsv")))
        );
    }

    // score, with per-base log-probabilities and the reverse complement.
    let whole = t.join("whole.jsonl");
    let whole_pb = t.join("whole-pb.tsv");
    let common = [
        "score",
        "--model",
        s(&m),
        "--fasta",
        s(&fa),
        "--reverse-complement",
    ];
    let mut a = common.to_vec();
    a.extend(["--out", s(&whole), "--per-base", s(&whole_pb)]);
    run(&a);
    let mut outs = Vec::new();
    for i in 1..=3 {
        let (o, pb) = (t.join(format!("c{i}.jsonl")), t.join(format!("pb{i}.tsv")));
        let mut a = common.to_vec();
        let sh = format!("{i}/3");
        a.extend(["--out", s(&o), "--per-base", s(&pb), "--shard", &sh]);
        run(&a);
        outs.push(o);
    }
    let (mo, mpb) = (t.join("m.jsonl"), t.join("m-pb.tsv"));
    // The shards wrote per-base files: the merge asks where the merged one goes.
    fails_with(
        &hyena(&[
            "merge",
            s(&outs[0]),
            s(&outs[1]),
            s(&outs[2]),
            "--out",
            s(&mo),
        ]),
        &["--per-base"],
    );
    assert!(!mo.exists());
    run(&[
        "merge",
        s(&outs[0]),
        s(&outs[1]),
        s(&outs[2]),
        "--out",
        s(&mo),
        "--per-base",
        s(&mpb),
    ]);
    assert_eq!(read(&mo), read(&whole));
    assert_eq!(read(&mpb), read(&whole_pb));
    assert_eq!(String::from_utf8(read(&mo)).unwrap().lines().count(), 11);

    // Missing and doubled shards, and unrelated files, are refused; nothing is written.
    let bad = t.join("bad.jsonl");
    fails_with(
        &hyena(&["merge", s(&outs[0]), s(&outs[2]), "--out", s(&bad)]),
        &["shard(s) 2 of 3 missing"],
    );
    fails_with(
        &hyena(&[
            "merge",
            s(&outs[0]),
            s(&outs[0]),
            s(&outs[1]),
            s(&outs[2]),
            "--out",
            s(&bad),
        ]),
        &["given twice"],
    );
    fails_with(
        &hyena(&["merge", s(&fa), "--out", s(&bad)]),
        &["no shard manifest"],
    );
    assert!(!bad.exists());
    let _ = std::fs::remove_dir_all(&t);
}

#[test]
fn vep_shards_merge_to_the_unsharded_table() {
    let t = tmpdir("shard-vep");
    let fa = t.join("ref.fa");
    common::toy_fasta(&fa, "chr7", 3000, 11, Some(60));
    let seq: Vec<u8> = std::fs::read_to_string(&fa)
        .unwrap()
        .lines()
        .skip(1)
        .flat_map(|l| l.bytes().collect::<Vec<_>>())
        .collect();
    let mut vcf = String::from("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n");
    // Variants near the ends get shorter (cut) windows: the balance is by window bases.
    for p in (20..2990).step_by(97) {
        let r = seq[p - 1] as char;
        let alt = if r == 'A' { 'G' } else { 'A' };
        vcf += &format!("chr7\t{p}\tv{p}\t{r}\t{alt}\n");
    }
    let v = t.join("v.vcf");
    std::fs::write(&v, &vcf).unwrap();
    let m = evo2();
    let args = |out: &Path, shard: Option<&str>| -> Vec<String> {
        let mut a: Vec<String> = [
            "vep",
            "--model",
            s(&m),
            "--reference",
            s(&fa),
            "--variants",
            s(&v),
            "--window",
            "256",
            "--out",
            s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        if let Some(sh) = shard {
            a.extend(["--shard".to_string(), sh.to_string()]);
        }
        a
    };
    let call = |a: Vec<String>| hyena(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let whole = t.join("whole.tsv");
    ok(&call(args(&whole, None)));
    let outs: Vec<PathBuf> = (1..=3).map(|i| t.join(format!("v{i}.tsv"))).collect();
    for (i, o) in outs.iter().enumerate() {
        ok(&call(args(o, Some(&format!("{}/3", i + 1)))));
    }
    let merged = t.join("merged.tsv");
    run(&[
        "merge",
        s(&outs[1]),
        s(&outs[0]),
        s(&outs[2]),
        "--out",
        s(&merged),
    ]);
    assert_eq!(read(&merged), read(&whole));
    let n = std::fs::read_to_string(&whole).unwrap().lines().count() - 2;
    assert_eq!(n, 31);
    for o in &outs {
        let k = std::fs::read_to_string(o).unwrap().lines().count() - 2;
        assert!(
            (8..=13).contains(&k),
            "{k} of {n} variants in {}",
            o.display()
        );
    }
    let _ = std::fs::remove_dir_all(&t);
}

#[test]
fn a_killed_shard_resumes_and_a_finished_one_is_skipped() {
    let t = tmpdir("shard-resume");
    let fa = t.join("r.fa");
    records(&fa, 300, 9);
    let m = hyenadna();
    let embed = |out: &Path, shard: Option<&str>| -> Vec<String> {
        let mut a: Vec<String> = [
            "embed",
            "--model",
            s(&m),
            "--fasta",
            s(&fa),
            "--pool",
            "none",
            "--out",
            s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        if let Some(sh) = shard {
            a.extend(["--shard".to_string(), sh.to_string()]);
        }
        a
    };
    let call = |a: Vec<String>| hyena(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let whole = t.join("whole.npy");
    ok(&call(embed(&whole, None)));

    // Shard 1/2, killed once some records are on disk.
    let o1 = t.join("s1.npy");
    let table = t.join("s1.npy.records.tsv.partial");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hyena"))
        .args(embed(&o1, Some("1/2")))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&table).map_or(0, |x| x.lines().count()) < 20
        && t0.elapsed().as_secs() < 60
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = !o1.exists();
    eprintln!("shard killed before it finished: {killed}");
    if killed {
        // A torn row at the end of both partial files, as a kill in mid-write leaves them.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&table)
            .unwrap();
        f.write_all(b"9999\trec-torn\t12").unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(t.join("s1.npy.partial"))
            .unwrap();
        f.write_all(&[7u8; 100]).unwrap();
        let out = ok(&call(embed(&o1, Some("1/2"))));
        assert!(out.contains("shard 1/2: wrote"), "{out}");
        assert!(out.contains("resumed after"), "{out}");
    }
    assert!(!table.exists() && !t.join("s1.npy.partial").exists());
    let o2 = t.join("s2.npy");
    ok(&call(embed(&o2, Some("2/2"))));
    // A rerun of a finished shard touches nothing.
    let before = std::fs::metadata(&o2).unwrap().modified().unwrap();
    let again = ok(&call(embed(&o2, Some("2/2"))));
    assert!(again.contains("already finished"), "{again}");
    assert_eq!(std::fs::metadata(&o2).unwrap().modified().unwrap(), before);
    let merged = t.join("merged.npy");
    run(&["merge", s(&o1), s(&o2), "--out", s(&merged)]);
    assert_eq!(read(&merged), read(&whole), "killed: {killed}");
    assert_eq!(
        read(&t.join("merged.npy.records.tsv")),
        read(&t.join("whole.npy.records.tsv"))
    );

    // The FASTA changes: the shard's manifest no longer describes this job.
    let mut text = std::fs::read_to_string(&fa).unwrap();
    text += ">extra\nACGTACGT\n";
    std::fs::write(&fa, text).unwrap();
    fails_with(
        &call(embed(&o2, Some("2/2"))),
        &[
            "s2.npy.shard.json",
            "fasta input changed",
            "sha256",
            "--force",
        ],
    );
    // The refused run left the shard's outputs as they were.
    assert_eq!(std::fs::metadata(&o2).unwrap().modified().unwrap(), before);
    // Shards of two different jobs do not merge.
    let o3 = t.join("new2.npy");
    ok(&call(embed(&o3, Some("2/2"))));
    fails_with(
        &hyena(&["merge", s(&o1), s(&o3), "--out", s(&t.join("x.npy"))]),
        &["not of the same job", "fasta input changed"],
    );
    // --force starts the shard over for the new input.
    let mut forced = embed(&o2, Some("2/2"));
    forced.push("--force".into());
    let out = ok(&call(forced));
    assert!(out.contains("wrote"), "{out}");

    // An unfinished shard is not merged.
    let m1 = std::fs::read_to_string(t.join("s1.npy.shard.json")).unwrap();
    std::fs::write(
        t.join("s1.npy.shard.json"),
        m1.replace("\"finished\": true", "\"finished\": false"),
    )
    .unwrap();
    fails_with(
        &hyena(&["merge", s(&o1), s(&o2), "--out", s(&t.join("y.npy"))]),
        &["shard 1/2 is not finished", "resumes"],
    );
    let _ = std::fs::remove_dir_all(&t);
}

#[test]
fn shard_argument_errors() {
    let t = tmpdir("shard-args");
    let fa = t.join("r.fa");
    records(&fa, 3, 1);
    let m = hyenadna();
    for bad in ["0/3", "4/3", "2", "x/y"] {
        fails_with(
            &hyena(&[
                "embed",
                "--model",
                s(&m),
                "--fasta",
                s(&fa),
                "--out",
                s(&t.join("o.npy")),
                "--shard",
                bad,
            ]),
            &["not a shard", "I/N"],
        );
    }
    fails_with(
        &hyena(&[
            "score",
            "--model",
            s(&m),
            "--fasta",
            s(&fa),
            "--shard",
            "1/2",
        ]),
        &["--shard 1/2 needs --out"],
    );
    // A plain file (no manifest) in the way of a shard's output is protected.
    let o = t.join("taken.npy");
    std::fs::write(&o, b"precious").unwrap();
    fails_with(
        &hyena(&[
            "embed",
            "--model",
            s(&m),
            "--fasta",
            s(&fa),
            "--out",
            s(&o),
            "--shard",
            "1/2",
        ]),
        &["already exists"],
    );
    assert_eq!(read(&o), b"precious");
    let _ = std::fs::remove_dir_all(&t);
}

/// `results.json` without the wall times (which differ between any two runs).
fn without_seconds(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .filter(|(k, _)| k.as_str() != "seconds")
            .map(|(k, x)| (k.clone(), without_seconds(x)))
            .collect(),
        serde_json::Value::Array(a) => a.iter().map(without_seconds).collect(),
        x => x.clone(),
    }
}

#[test]
fn mad_shards_merge_to_the_unsharded_results() {
    let t = tmpdir("shard-mad");
    let args = |out: &Path, shard: Option<&str>| -> Vec<String> {
        let mut a: Vec<String> = [
            "mad",
            "--arch",
            "hyena,swiglu",
            "--quick",
            "--task",
            "in-context-recall,selective-copying,memorization",
            "--budget",
            "20000",
            "--d-model",
            "32",
            "--out",
            s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        if let Some(sh) = shard {
            a.extend(["--shard".to_string(), sh.to_string()]);
        }
        a
    };
    let call = |a: Vec<String>| hyena(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let whole = t.join("whole");
    ok(&call(args(&whole, None)));
    let (s1, s2) = (t.join("s1"), t.join("s2"));
    ok(&call(args(&s1, Some("1/2"))));
    // Only one shard: the merge names what is missing, and writes nothing.
    let merged = t.join("merged");
    fails_with(
        &hyena(&["merge", s(&s1), "--out", s(&merged)]),
        &["shard(s) 2 of 2 missing"],
    );
    ok(&call(args(&s2, Some("2/2"))));
    let again = ok(&call(args(&s2, Some("2/2"))));
    assert!(again.contains("already finished"), "{again}");
    // Each shard trained only its settings (split by estimated cost), together all three.
    let members = |d: &Path| -> Vec<u64> {
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{}.shard.json", d.display())).unwrap(),
        )
        .unwrap();
        m["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let (m1, m2) = (members(&s1), members(&s2));
    assert!(!m1.is_empty() && !m2.is_empty());
    let mut all = [m1, m2].concat();
    all.sort();
    assert_eq!(all, vec![0, 1, 2]);
    run(&["merge", s(&s2), s(&s1), "--out", s(&merged)]);
    let read_json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    assert_eq!(
        without_seconds(&read_json(merged.join("results.json"))),
        without_seconds(&read_json(whole.join("results.json")))
    );
    // The merged directory resumes like an unsharded run: nothing left to train.
    let mut resume = args(&merged, None);
    resume.push("--resume".into());
    let out = call(resume);
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("resuming: 3 finished settings"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&t);
}
