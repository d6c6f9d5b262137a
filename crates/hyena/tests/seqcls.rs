//! Sequence classification: the dataset reader (GenomicBenchmarks directories and CSV, with
//! the errors a user meets), the species-of-origin builder on small synthetic genomes laid out
//! like the Debian packages, and the Markov-chain baseline classifier.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use common::TempDir;
use hyena::baselines::kmer::{
    fit_select, holdout_split, select_k, MarkovClassifier, MarkovOptions, MAX_K,
};
use hyena::data::seqcls::{load_csv, load_dataset, load_dir, reverse_complement, Example};
use hyena::data::species::{build_species_task, SpeciesTaskOptions, SPECIES};

fn err_msg<T: std::fmt::Debug>(r: hyena::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

/// xorshift64*: a tiny deterministic generator for synthetic sequences.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unif(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn base(&mut self) -> u8 {
        b"ACGT"[(self.next() >> 62) as usize]
    }
}

/// `n` i.i.d. bases with GC content `gc`.
fn iid(rng: &mut Rng, n: usize, gc: f64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            let u = rng.unif();
            let strong = rng.unif() < gc;
            match (strong, u < 0.5) {
                (true, true) => b'G',
                (true, false) => b'C',
                (false, true) => b'A',
                (false, false) => b'T',
            }
        })
        .collect()
}

/// A first-order chain: after `from`, emit `to` with probability `p`, else a uniform base.
fn biased_chain(rng: &mut Rng, n: usize, from: u8, to: u8, p: f64) -> Vec<u8> {
    let mut s = Vec::with_capacity(n);
    for i in 0..n {
        let b = if i > 0 && s[i - 1] == from && rng.unif() < p {
            to
        } else {
            rng.base()
        };
        s.push(b);
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Reading datasets.
// ---------------------------------------------------------------------------------------------

#[test]
fn loads_the_genomic_benchmarks_layout() {
    let t = TempDir::new("dir");
    t.write("d/train/b_cls/1.txt", b"acgtN\nACG\n");
    t.write("d/train/b_cls/2.txt", b"TTTT");
    t.write("d/train/a_cls/recs.fa", b">r1\nAAAA\nCC\n>r2 desc\nGGG\n");
    t.write("d/train/a_cls/.hidden", b"not a sequence, skipped");
    t.write("d/test/a_cls/0.txt", b"CA\n");
    t.write("d/test/b_cls/0.txt", b"  GT  \n");
    let ds = load_dataset(t.0.join("d")).unwrap();
    assert_eq!(ds.classes, ["a_cls", "b_cls"]);
    let tr: Vec<(&[u8], usize)> = ds.train.iter().map(|e| (&e.seq[..], e.label)).collect();
    assert_eq!(
        tr,
        [
            (&b"AAAACC"[..], 0),
            (&b"GGG"[..], 0),
            (&b"ACGTNACG"[..], 1),
            (&b"TTTT"[..], 1)
        ]
    );
    assert_eq!(ds.test.len(), 2);
    assert_eq!(ds.test[1].seq, b"GT");
    let s = ds.summary();
    assert_eq!((s.classes[0].train, s.classes[0].test), (2, 1));
    assert_eq!((s.train.n, s.train.min_len, s.train.max_len), (4, 3, 8));
    assert_eq!((s.test.min_len, s.test.max_len), (2, 2));
    let shown = s.to_string();
    assert!(shown.contains("| a_cls | 2 | 1 |"), "{shown}");
}

#[test]
fn directory_errors_name_the_file_and_the_problem() {
    // No test directory.
    let t = TempDir::new("direrr");
    t.write("d/train/a/1.txt", b"ACGT");
    let m = err_msg(load_dir(t.0.join("d")));
    assert!(
        m.contains("no `test` directory") && m.contains("train/<class>"),
        "{m}"
    );

    // A class missing from test.
    t.write("d/train/b/1.txt", b"ACGT");
    t.write("d/test/a/1.txt", b"ACGT");
    let m = err_msg(load_dir(t.0.join("d")));
    assert!(m.contains("missing from test/: b"), "{m}");

    // An extra class in test.
    t.write("d/test/b/1.txt", b"ACGT");
    t.write("d/test/c/1.txt", b"ACGT");
    let m = err_msg(load_dir(t.0.join("d")));
    assert!(m.contains("missing from train/: c"), "{m}");
    std::fs::remove_dir_all(t.0.join("d/test/c")).unwrap();
    assert!(load_dir(t.0.join("d")).is_ok());

    // An empty sequence file, and one with only whitespace.
    let empty = t.write("d/test/b/2.txt", b"");
    let m = err_msg(load_dir(t.0.join("d")));
    assert!(
        m.contains(&empty.display().to_string()) && m.contains("empty sequence"),
        "{m}"
    );
    t.write("d/test/b/2.txt", b"\n \n");
    let m = err_msg(load_dir(t.0.join("d")));
    assert!(m.contains("2.txt") && m.contains("only whitespace"), "{m}");

    // A character that is not a base.
    t.write("d/test/b/2.txt", b"ACGT\nAC-GT\n");
    let m = err_msg(load_dir(t.0.join("d")));
    assert!(
        m.contains("2.txt") && m.contains("line 2") && m.contains("'-'"),
        "{m}"
    );

    // An empty class directory.
    std::fs::remove_file(t.0.join("d/test/b/2.txt")).unwrap();
    std::fs::remove_file(t.0.join("d/test/b/1.txt")).unwrap();
    let m = err_msg(load_dir(t.0.join("d")));
    assert!(m.contains("no sequence files"), "{m}");

    // A missing path.
    let m = err_msg(load_dataset(t.0.join("nope")));
    assert!(m.contains("nope") && m.contains("not found"), "{m}");
}

#[test]
fn loads_csv_pairs_and_split_columns() {
    let t = TempDir::new("csv");
    let tr = t.write(
        "train.csv",
        b"id,Sequence,label\n1,acgt,dog\n2,\"GGCC\",cat\n\n3,TTT,dog\n",
    );
    let te = t.write("test.csv", b"sequence,label\nAAA,cat\r\nCCC,dog\r\n");
    let ds = load_csv(&tr, Some(&te)).unwrap();
    assert_eq!(ds.classes, ["cat", "dog"]);
    assert_eq!(ds.train.len(), 3);
    assert_eq!(
        ds.train[0],
        Example {
            seq: b"ACGT".to_vec(),
            label: 1
        }
    );
    assert_eq!(ds.test[0].label, 0);
    // The same pair found by load_dataset in a directory.
    assert_eq!(load_dataset(&t.0).unwrap(), ds);

    // One CSV with a split column; integer labels keep numeric order.
    let one = t.write(
        "one.csv",
        b"sequence,label,split\nAC,10,train\nGT,2,train\nTT,1,TRAIN\nCC,2,test\n",
    );
    let ds = load_dataset(&one).unwrap();
    assert_eq!(ds.classes, ["1", "2", "10"]);
    assert_eq!(
        ds.train.iter().map(|e| e.label).collect::<Vec<_>>(),
        [2, 1, 0]
    );
    assert_eq!(ds.test.len(), 1);
}

#[test]
fn csv_errors_name_the_file_and_the_line() {
    let t = TempDir::new("csverr");
    let ok_test = t.write("test.csv", b"sequence,label\nAAA,a\n");
    let check = |name: &str, text: &[u8], needles: &[&str]| {
        let p = t.write(name, text);
        let m = err_msg(load_csv(&p, Some(&ok_test)));
        assert!(m.contains(&p.display().to_string()), "{m}");
        for n in needles {
            assert!(m.contains(n), "`{n}` not in: {m}");
        }
    };
    check(
        "fields.csv",
        b"sequence,label\nAC,a\nGT,a,extra\n",
        &["line 3", "3 fields", "header has 2"],
    );
    check(
        "nolabel.csv",
        b"sequence,class\nAC,a\n",
        &["line 1", "`label`"],
    );
    check(
        "emptyseq.csv",
        b"sequence,label\n,a\n",
        &["line 2", "empty sequence"],
    );
    check(
        "emptylab.csv",
        b"sequence,label\nAC,\n",
        &["line 2", "empty label"],
    );
    check(
        "badchar.csv",
        b"sequence,label\nAC GT,a\n",
        &["line 2", "' '"],
    );
    check(
        "quote.csv",
        b"sequence,label\n\"AC,a\n",
        &["line 2", "not closed"],
    );
    check("header.csv", b"\n\n", &["no header line"]);

    // Unknown class in test: names the test file and its line.
    let tr = t.write("tr.csv", b"sequence,label\nAC,a\nGG,b\n");
    let te = t.write("te.csv", b"sequence,label\nAC,a\nGG,zebra\n");
    let m = err_msg(load_csv(&tr, Some(&te)));
    assert!(
        m.contains("te.csv") && m.contains("line 3") && m.contains("unknown class `zebra`"),
        "{m}"
    );

    // One CSV without a split column asks for a test CSV; bad split values are named.
    let m = err_msg(load_dataset(&tr));
    assert!(m.contains("tr.csv") && m.contains("test CSV"), "{m}");
    let bad = t.write("bad.csv", b"sequence,label,split\nAC,a,train\nGG,a,valid\n");
    let m = err_msg(load_dataset(&bad));
    assert!(m.contains("line 3") && m.contains("`valid`"), "{m}");
    let notest = t.write("notest.csv", b"sequence,label,split\nAC,a,train\n");
    let m = err_msg(load_dataset(&notest));
    assert!(m.contains("no test rows"), "{m}");
}

// ---------------------------------------------------------------------------------------------
// The species builder on synthetic genomes.
// ---------------------------------------------------------------------------------------------

/// Synthetic genomes, one per strain of [`SPECIES`], written at their package paths under
/// `root/usr/share/doc` (gzip for E. coli MG1655, xz for K. pneumoniae, plain text elsewhere:
/// the reader detects compression from the bytes). Returns strain → (chromosome upper case,
/// plasmid). Each chromosome is independent random sequence, so any 60-mer tells its strain.
fn write_genomes(root: &Path) -> BTreeMap<String, (Vec<u8>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for sp in SPECIES {
        for s in sp.strains {
            let mut chrom = iid(&mut rng, 6000, 0.5);
            // Soft-masked lower case (must come out upper case) and a run of N (rejected).
            chrom[100..400].make_ascii_lowercase();
            chrom[3000..3300].fill(b'N');
            let plasmid = iid(&mut rng, 500, 0.5);
            let fasta = format!(
                ">{}_chr description\n{}\n>{}_plasmid\n{}\n",
                s.strain,
                String::from_utf8_lossy(&chrom),
                s.strain,
                String::from_utf8_lossy(&plasmid)
            );
            let bytes = if s.strain == "MG1655-K12" {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(fasta.as_bytes()).unwrap();
                e.finish().unwrap()
            } else if sp.class == "k_pneumoniae" {
                let mut e =
                    lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1))
                        .unwrap();
                e.write_all(fasta.as_bytes()).unwrap();
                e.finish().unwrap()
            } else {
                fasta.into_bytes()
            };
            let p = root.join("usr/share/doc").join(s.path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            out.insert(s.strain.to_string(), (chrom.to_ascii_uppercase(), plasmid));
        }
    }
    // A draft assembly beside the references: never used.
    let contigs = root.join("usr/share/doc/ragout/examples/E.Coli/mg1655_contigs.fasta.gz");
    std::fs::write(contigs, b">c1\nACGTACGTACGTACGTACGT\n").unwrap();
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir` with its bytes, keyed by the path relative to `dir`.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn go(root: &Path, dir: &Path, m: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                go(root, &p, m);
            } else {
                m.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut m = BTreeMap::new();
    go(dir, dir, &mut m);
    m
}

fn small_opts(genomes: &Path, out: &Path) -> SpeciesTaskOptions {
    SpeciesTaskOptions {
        length: 100,
        train_per_class: 40,
        test_per_class: 15,
        seed: 7,
        min_record_len: 1000,
        ..SpeciesTaskOptions::new(genomes, out)
    }
}

#[test]
fn species_builder_holds_out_one_strain_per_species() {
    let t = TempDir::new("species");
    let genomes = write_genomes(&t.0);
    let out = t.0.join("task");
    let rep = build_species_task(&small_opts(&t.0, &out)).unwrap();
    assert_eq!(
        rep.classes,
        [
            "e_coli",
            "h_pylori",
            "k_pneumoniae",
            "s_aureus",
            "v_cholerae"
        ]
    );
    // Nothing left beside the output but the output.
    let beside: Vec<_> = std::fs::read_dir(&t.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!beside.iter().any(|n| n.contains("partial")), "{beside:?}");

    // Readable by the loader, with the manifest's class order, counts and lengths.
    let ds = load_dataset(&out).unwrap();
    assert_eq!(ds.classes, rep.classes);
    for c in ds.summary().classes {
        assert_eq!((c.train, c.test), (40, 15), "{}", c.name);
    }
    for e in ds.train.iter().chain(&ds.test) {
        assert_eq!(e.seq.len(), 100);
        assert!(e.seq.iter().all(|b| b"ACGT".contains(b)), "{:?}", e.seq);
    }

    // Each fragment comes from its split's strains only (held-out strain for test), from a
    // chromosome (never the plasmid below min_record_len), on either strand.
    let (mut fwd, mut rev) = (0, 0);
    for (split, exs) in [("train", &ds.train), ("test", &ds.test)] {
        for e in exs.iter() {
            let sp = &SPECIES[e.label];
            let rc = reverse_complement(&e.seq);
            let sources: Vec<&str> = sp
                .strains
                .iter()
                .map(|s| s.strain)
                .filter(|s| {
                    let chrom = &genomes[*s].0;
                    contains(chrom, &e.seq) || contains(chrom, &rc)
                })
                .collect();
            assert_eq!(sources.len(), 1, "{split} fragment of {}", sp.class);
            assert_eq!(
                sources[0] == sp.test_strain,
                split == "test",
                "{split} fragment from strain {} of {}",
                sources[0],
                sp.class
            );
            let chrom = &genomes[sources[0]].0;
            if contains(chrom, &e.seq) {
                fwd += 1;
            } else {
                rev += 1;
            }
            for (other, (c, p)) in &genomes {
                assert!(!contains(p, &e.seq) && !contains(p, &rc), "plasmid {other}");
                if other != sources[0] {
                    assert!(!contains(c, &e.seq) && !contains(c, &rc));
                }
            }
        }
    }
    assert!(
        fwd > 100 && rev > 100,
        "strands: {fwd} forward, {rev} reverse"
    );

    // fragments.tsv: every file's source, strains weighted equally within a split.
    let tsv = std::fs::read_to_string(out.join("fragments.tsv")).unwrap();
    let mut per_strain: BTreeMap<(String, String), usize> = BTreeMap::new();
    for line in tsv.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let (file, split, strain, record, start, strand) = (f[0], f[1], f[3], f[4], f[5], f[6]);
        let seq = std::fs::read(out.join(file)).unwrap();
        let seq = seq.trim_ascii_end();
        let start: usize = start.parse().unwrap();
        assert_eq!(record, format!("{strain}_chr"));
        let src = &genomes[strain].0[start..start + 100];
        let want = if strand == "-" {
            reverse_complement(src)
        } else {
            src.to_vec()
        };
        assert_eq!(seq, &want[..], "{line}");
        *per_strain.entry((split.into(), strain.into())).or_default() += 1;
    }
    assert_eq!(tsv.lines().count(), 1 + 5 * 55);
    // S. aureus: 4 train strains share 40 fragments equally; the held-out one has all 15.
    for s in ["COL", "JKD6008", "N315", "RF122"] {
        assert_eq!(per_strain[&("train".to_string(), s.to_string())], 10, "{s}");
    }
    assert_eq!(
        per_strain[&("test".to_string(), "USA300_FPR3757".to_string())],
        15
    );
    // V. cholerae: 3 train strains, 40 = 14 + 13 + 13.
    let vc: Vec<usize> = ["O1_Inaba", "O1_biovar", "O395"]
        .iter()
        .map(|s| per_strain[&("train".to_string(), s.to_string())])
        .collect();
    assert_eq!(vc, [14, 13, 13]);

    // The manifest.
    let man: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(man["length"], 100);
    assert_eq!(man["seed"], 7);
    assert_eq!(man["min_record_len"], 1000);
    assert_eq!(man["classes"][0], "e_coli");
    let ec = &man["species"][0];
    assert_eq!(ec["class"], "e_coli");
    assert_eq!(ec["train"][0]["strain"], "MG1655-K12");
    assert_eq!(
        ec["train"][0]["file"],
        "ragout/examples/E.Coli/references/MG1655-K12.fasta.gz"
    );
    assert_eq!(ec["test"][0]["strain"], "DH1");
    assert_eq!(ec["test"].as_array().unwrap().len(), 1);
    assert_eq!(ec["train_fragments"], 40);
    assert_eq!(ec["test_fragments"], 15);
    let recs = &ec["train"][0]["records"];
    assert_eq!(recs[0]["id"], "MG1655-K12_chr");
    assert_eq!(
        (recs[0]["length"].clone(), recs[0]["used"].clone()),
        (6000.into(), true.into())
    );
    assert_eq!(
        (recs[1]["length"].clone(), recs[1]["used"].clone()),
        (500.into(), false.into())
    );
    let rejected: u64 = man["species"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            let (tr, te) = (
                s["train"].as_array().unwrap(),
                s["test"].as_array().unwrap(),
            );
            tr.iter()
                .chain(te)
                .map(|x| x["rejected_non_acgt"].as_u64().unwrap())
        })
        .sum();
    assert!(
        rejected > 0,
        "the runs of N must have been met and rejected"
    );
    // No absolute path of this machine in the manifest.
    let text = std::fs::read_to_string(out.join("dataset.json")).unwrap();
    assert!(!text.contains(&t.0.display().to_string()));

    // Same seed, genomes found from a folder inside the package tree: identical dataset.
    let out2 = t.0.join("task2");
    build_species_task(&small_opts(&t.0.join("usr/share/doc"), &out2)).unwrap();
    assert_eq!(snapshot(&out), snapshot(&out2));
    // Another seed: other fragments.
    let out3 = t.0.join("task3");
    let mut o = small_opts(&t.0, &out3);
    o.seed = 8;
    build_species_task(&o).unwrap();
    assert_ne!(snapshot(&out), snapshot(&out3));
}

#[test]
fn species_builder_refuses_bad_outputs_and_missing_genomes() {
    let t = TempDir::new("species-err");
    write_genomes(&t.0);

    // A non-empty output directory is refused and left as it was.
    let out = t.0.join("busy");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"mine").unwrap();
    let m = err_msg(build_species_task(&small_opts(&t.0, &out)));
    assert!(m.contains("busy") && m.contains("not empty"), "{m}");
    assert_eq!(std::fs::read(out.join("keep.txt")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);

    // An existing empty directory is fine.
    let empty = t.0.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    build_species_task(&small_opts(&t.0, &empty)).unwrap();
    assert!(empty.join("dataset.json").is_file());

    // Bad options.
    let mut o = small_opts(&t.0, &t.0.join("o1"));
    o.length = 0;
    assert!(err_msg(build_species_task(&o)).contains("length"));
    // Fragments longer than every record.
    let mut o = small_opts(&t.0, &t.0.join("o2"));
    o.length = 7000;
    let m = err_msg(build_species_task(&o));
    assert!(m.contains("no record of at least 7000"), "{m}");
    assert!(!t.0.join("o2").exists());

    // A missing genome file: named, with the package to install; nothing written.
    std::fs::remove_file(t.0.join("usr/share/doc/kleborate/examples/data/MGH78578.fna.xz"))
        .unwrap();
    let out = t.0.join("o3");
    let m = err_msg(build_species_task(&small_opts(&t.0, &out)));
    assert!(
        m.contains("kleborate/examples/data/MGH78578.fna.xz")
            && m.contains("kleborate-examples")
            && m.contains("1 of the 20"),
        "{m}"
    );
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&t.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The real task: needs the Debian packages `ragout-examples` and `kleborate-examples`
/// (`apt-get download` them, `dpkg -x` into a folder, and set `HYENA_GENOMES` to its
/// `usr/share/doc`). Run with `cargo test --release -p hyena --test seqcls -- --ignored`.
#[test]
#[ignore = "needs the Debian packages ragout-examples and kleborate-examples; set HYENA_GENOMES"]
fn real_species_task_is_learnable() {
    let Some(genomes) = std::env::var_os("HYENA_GENOMES") else {
        panic!(
            "HYENA_GENOMES is not set: point it at usr/share/doc of the extracted Debian \
             packages ragout-examples and kleborate-examples"
        );
    };
    let t = TempDir::new("real");
    let out = t.0.join("task");
    let opts = SpeciesTaskOptions {
        train_per_class: 300,
        test_per_class: 100,
        ..SpeciesTaskOptions::new(PathBuf::from(genomes), &out)
    };
    build_species_task(&opts).unwrap();
    let ds = load_dataset(&out).unwrap();
    let m = MarkovClassifier::fit(&ds.train, ds.classes.len(), 4).unwrap();
    let acc = m.accuracy(&ds.test).unwrap();
    assert!(acc > 0.7, "test accuracy {acc}");
}

// ---------------------------------------------------------------------------------------------
// The Markov-chain classifier.
// ---------------------------------------------------------------------------------------------

fn examples(rng: &mut Rng, n: usize, len: usize, label: usize, gen: usize) -> Vec<Example> {
    (0..n)
        .map(|_| Example {
            seq: match gen {
                0 => iid(rng, len, 0.62),
                1 => iid(rng, len, 0.38),
                2 => biased_chain(rng, len, b'C', b'G', 0.5),
                3 => biased_chain(rng, len, b'A', b'C', 0.6),
                4 => biased_chain(rng, len, b'A', b'G', 0.6),
                _ => iid(rng, len, 0.5),
            },
            label,
        })
        .collect()
}

#[test]
fn markov_separates_different_statistics() {
    let mut rng = Rng(17);
    // Classes: GC-rich, AT-rich, and balanced composition with a CG dinucleotide excess (only
    // an order >= 1 model sees that one).
    let mut train = Vec::new();
    let mut test = Vec::new();
    for (label, gen) in [0, 1, 2].into_iter().enumerate() {
        train.extend(examples(&mut rng, 60, 300, label, gen));
        test.extend(examples(&mut rng, 100, 200, label, gen));
    }
    let m = MarkovClassifier::fit(&train, 3, 2).unwrap();
    let ev = m.evaluate(&test).unwrap();
    assert!(ev.accuracy > 0.95, "{ev:?}");
    assert_eq!(ev.n, 300);
    assert_eq!(ev.confusion.iter().flatten().sum::<usize>(), 300);
    for (c, s) in ev.per_class.iter().enumerate() {
        assert_eq!(s.n, 100);
        assert_eq!(s.correct, ev.confusion[c][c]);
        assert!(s.accuracy > 0.9, "class {c}: {s:?}");
    }
    // Order 0 (composition only) cannot see the CG excess: worse than order 2.
    let ev0 = MarkovClassifier::fit(&train, 3, 0)
        .unwrap()
        .evaluate(&test)
        .unwrap();
    assert!(
        ev0.accuracy < ev.accuracy - 0.05,
        "{} vs {}",
        ev0.accuracy,
        ev.accuracy
    );

    // select_k: scored on held-out train, a table entry per k, best is the max (smallest tie).
    let sel = select_k(&train, 3, 1..=4, 0.1, 3).unwrap();
    assert_eq!(
        sel.table.iter().map(|s| s.k).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!((sel.n_fit, sel.n_holdout), (162, 18));
    let best = sel
        .table
        .iter()
        .map(|s| s.holdout_accuracy)
        .fold(0.0, f64::max);
    let first_best = sel
        .table
        .iter()
        .find(|s| s.holdout_accuracy == best)
        .unwrap();
    assert_eq!(sel.best_k, first_best.k);
    let (m, sel2) = fit_select(&train, 3, 1..=4, 0.1, 3).unwrap();
    assert_eq!(sel2, sel);
    assert_eq!(m.k(), sel.best_k);
    assert!(m.accuracy(&test).unwrap() > 0.9);
}

#[test]
fn markov_is_at_chance_on_identical_distributions() {
    let mut rng = Rng(99);
    let mut train = Vec::new();
    let mut test = Vec::new();
    for label in 0..4 {
        train.extend(examples(&mut rng, 50, 300, label, 9));
        test.extend(examples(&mut rng, 150, 300, label, 9));
    }
    let acc = MarkovClassifier::fit(&train, 4, 2)
        .unwrap()
        .accuracy(&test)
        .unwrap();
    // Chance is 0.25; 600 examples give a standard error of about 0.018.
    assert!(
        (0.15..0.35).contains(&acc),
        "accuracy {acc} on identical classes"
    );
}

#[test]
fn counting_both_strands_makes_the_classifier_strand_invariant() {
    let mut rng = Rng(5);
    // Class 0: A→C excess (reverse strand: G→T); class 1: A→G excess (reverse: C→T).
    let mut train = Vec::new();
    let mut test = Vec::new();
    for (label, gen) in [3, 4].into_iter().enumerate() {
        train.extend(examples(&mut rng, 40, 400, label, gen));
        test.extend(examples(&mut rng, 150, 300, label, gen));
    }
    // Tested on the reverse strand of the test sequences.
    let rc_test: Vec<Example> = test
        .iter()
        .map(|e| Example {
            seq: reverse_complement(&e.seq),
            label: e.label,
        })
        .collect();
    let both = MarkovClassifier::fit(&train, 2, 1).unwrap();
    let fwd_only = MarkovClassifier::fit_with(
        &train,
        2,
        &MarkovOptions {
            both_strands: false,
            ..MarkovOptions::new(1)
        },
    )
    .unwrap();
    let (a_fwd, a_rc) = (
        both.accuracy(&test).unwrap(),
        both.accuracy(&rc_test).unwrap(),
    );
    assert!(a_fwd > 0.95 && a_rc > 0.95, "both strands: {a_fwd} {a_rc}");
    let (f_fwd, f_rc) = (
        fwd_only.accuracy(&test).unwrap(),
        fwd_only.accuracy(&rc_test).unwrap(),
    );
    assert!(f_fwd > 0.95, "forward only, forward test: {f_fwd}");
    assert!(f_rc < 0.8, "forward only, reverse test: {f_rc}");

    // Scores of a sequence and its reverse complement agree up to the edge terms (the first
    // context of one strand against the last of the other): well under 1% of the score.
    for k in [1, 3, 5] {
        let m = MarkovClassifier::fit(&train, 2, k).unwrap();
        let mut agree = 0;
        for e in &test {
            let rc = reverse_complement(&e.seq);
            let (a, b) = (m.log_likelihoods(&e.seq), m.log_likelihoods(&rc));
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 0.01 * x.abs(), "k={k}: {x} vs {y}");
            }
            agree += usize::from(m.predict(&e.seq) == m.predict(&rc));
        }
        assert!(
            agree >= test.len() * 98 / 100,
            "k={k}: {agree} of {}",
            test.len()
        );
    }
}

#[test]
fn markov_handles_ambiguous_bases_and_reports_errors() {
    let train = vec![
        Example {
            seq: b"GGGCCCNNGCGC".to_vec(),
            label: 0,
        },
        Example {
            seq: b"aattnaatat".to_vec(),
            label: 1,
        },
    ];
    let m = MarkovClassifier::fit(&train, 2, 2).unwrap();
    assert_eq!(m.predict(b"GCGCNGGCC"), 0);
    assert_eq!(m.predict(b"ttaatNNat"), 1);
    // A sequence without any full window: only the (equal) priors speak, lowest index wins.
    assert_eq!(m.log_likelihoods(b"NNNN"), [0.0, 0.0]);
    assert_eq!(m.predict(b"AC"), 0);

    let m = err_msg(MarkovClassifier::fit(&train, 2, MAX_K + 1));
    assert!(m.contains("`k`") && m.contains("at most"), "{m}");
    let m = err_msg(MarkovClassifier::fit(&train, 3, 1));
    assert!(
        m.contains("class 2") && m.contains("no training sequence"),
        "{m}"
    );
    let m = err_msg(MarkovClassifier::fit(&train, 1, 1));
    assert!(m.contains("label"), "{m}");
    let clf = MarkovClassifier::fit(&train, 2, 1).unwrap();
    assert!(err_msg(clf.evaluate(&[])).contains("no examples"));
    let bad = [Example {
        seq: b"ACGT".to_vec(),
        label: 5,
    }];
    assert!(err_msg(clf.evaluate(&bad)).contains("label"));
    assert!(err_msg(holdout_split(&train, 2, 0.1, 1)).contains("at least 2 examples"));
    assert!(err_msg(holdout_split(&train, 2, 1.5, 1)).contains("between 0 and 1"));
    let ks: Vec<usize> = Vec::new();
    let mut more = train.clone();
    more.extend(train.clone());
    assert!(err_msg(select_k(&more, 2, ks, 0.5, 1)).contains("at least one order"));
    let classes: BTreeSet<usize> = more.iter().map(|e| e.label).collect();
    assert_eq!(classes.len(), 2);
}
