//! The species-of-origin task: a real sequence-classification dataset built from bacterial
//! genomes (`hyena data species`), written in the GenomicBenchmarks layout that
//! [`crate::data::seqcls::load_dataset`] reads.
//!
//! Five classes, one per species ([`SPECIES`], in class-name order, the order
//! [`crate::data::seqcls::load_dir`] gives): `e_coli`, `h_pylori`, `k_pneumoniae`, `s_aureus`,
//! `v_cholerae`, from the complete genomes in the Debian packages `ragout-examples` and
//! `kleborate-examples`. For each species one **fixed strain is held out for test**; train
//! fragments come only from the other strains, test fragments only from the held-out one, so the
//! task measures generalisation to an unseen strain rather than memorisation of a genome:
//!
//! | class | train strains | test strain |
//! |---|---|---|
//! | `e_coli` | MG1655-K12 | DH1 |
//! | `h_pylori` | ELS37, G27, Gambia94_24, Puno120 | SJM180 |
//! | `k_pneumoniae` | Klebs_HS11286, Klebs_Kp1084, NTUH-K2044 | MGH78578 |
//! | `s_aureus` | COL, JKD6008, N315, RF122 | USA300_FPR3757 |
//! | `v_cholerae` | O1_Inaba, O1_biovar, O395 | H1 |
//!
//! (For S. aureus, H. pylori and V. cholerae the held-out strain is the one whose draft
//! assembly the ragout example scaffolds; for E. coli it is DH1 so that MG1655, the genome the
//! repository's language-model training uses, stays on the train side; for K. pneumoniae the
//! choice of MGH78578 is arbitrary but fixed. The `*_contigs` draft assemblies are never used.)
//!
//! - **Records**: only records of at least `min_record_len` bases (default 1 Mbp) are used. That
//!   keeps every chromosome (the smallest, V. cholerae chromosome 2, is 1.05 Mbp) and drops the
//!   plasmids (at most 0.23 Mbp here): plasmids move between species (K. pneumoniae and E. coli
//!   share many), so a plasmid fragment's label would say which host it was sequenced in, not
//!   which genome it evolved in.
//! - **Sampling**: each strain of a split gets an equal share of the fragments (strains weighted
//!   equally, whatever their size; the first strains in table order take the remainder); within
//!   a strain the start is uniform over every position where a whole fragment fits in a record
//!   (so records are weighted by length). A fragment with any non-ACGT character is rejected
//!   and drawn again; a kept fragment is reverse-complemented with probability ½ (sequencing
//!   reads come from either strand). Sequences are upper case. Each class's fragments are
//!   shuffled, so any prefix of the files is a fair sample.
//! - **Determinism**: one random stream per (class, split), seeded from `seed`; the same
//!   options and inputs give byte-identical outputs with this build.
//! - **Output**: `OUT/train/<class>/NNNNN.txt` and `OUT/test/<class>/NNNNN.txt` (one sequence per
//!   file, readable by [`crate::data::seqcls::load_dataset`]), `OUT/dataset.json` (the
//!   [`BuildReport`]: options, strains and records used per split, counts) and `OUT/fragments.tsv`
//!   (where every fragment comes from: strain, record, 0-based start on the forward strand,
//!   strand). Everything is written to a temporary directory beside `OUT` and renamed into place at
//!   the end, so an interrupted build leaves no half-written dataset; a non-empty `OUT` is refused.
//!
//! The genome files are found by their package-relative names (e.g.
//! `ragout/examples/E.Coli/references/MG1655-K12.fasta.gz`, [`SPECIES`]) anywhere under the
//! `genomes` directory: point it at `usr/share/doc` of an extracted package (`apt-get download
//! ragout-examples kleborate-examples`, `dpkg -x`), at `/usr/share/doc` after `apt-get install`,
//! at a folder inside those trees, or at a flat folder holding the files (decompressed copies,
//! without the `.gz`/`.xz` suffix, are accepted too).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::data::seqcls::reverse_complement;
use crate::error::{Error, Result};
use crate::io::fasta::open_records;

/// One strain's genome file, by its path inside the Debian package's `usr/share/doc`.
#[derive(Clone, Copy, Debug)]
pub struct StrainFile {
    pub strain: &'static str,
    pub path: &'static str,
}

/// One species (class) of the task.
#[derive(Clone, Copy, Debug)]
pub struct SpeciesDef {
    /// The class name.
    pub class: &'static str,
    /// The species' Latin name.
    pub species: &'static str,
    /// The Debian package holding the files.
    pub package: &'static str,
    /// The strain whose fragments make the test split.
    pub test_strain: &'static str,
    /// All strains; those other than `test_strain` make the train split.
    pub strains: &'static [StrainFile],
}

const fn sf(strain: &'static str, path: &'static str) -> StrainFile {
    StrainFile { strain, path }
}

/// The five species of the task, in class order, with their strains and held-out test strain.
pub const SPECIES: &[SpeciesDef] = &[
    SpeciesDef {
        class: "e_coli",
        species: "Escherichia coli",
        package: "ragout-examples",
        test_strain: "DH1",
        strains: &[
            sf(
                "MG1655-K12",
                "ragout/examples/E.Coli/references/MG1655-K12.fasta.gz",
            ),
            sf("DH1", "ragout/examples/E.Coli/references/DH1.fasta.gz"),
        ],
    },
    SpeciesDef {
        class: "h_pylori",
        species: "Helicobacter pylori",
        package: "ragout-examples",
        test_strain: "SJM180",
        strains: &[
            sf(
                "ELS37",
                "ragout/examples/H.Pylori/references/ELS37.fasta.gz",
            ),
            sf("G27", "ragout/examples/H.Pylori/references/G27.fasta.gz"),
            sf(
                "Gambia94_24",
                "ragout/examples/H.Pylori/references/Gambia94_24.fasta.gz",
            ),
            sf(
                "Puno120",
                "ragout/examples/H.Pylori/references/Puno120.fasta.gz",
            ),
            sf(
                "SJM180",
                "ragout/examples/H.Pylori/references/SJM180.fasta.gz",
            ),
        ],
    },
    SpeciesDef {
        class: "k_pneumoniae",
        species: "Klebsiella pneumoniae",
        package: "kleborate-examples",
        test_strain: "MGH78578",
        strains: &[
            sf(
                "Klebs_HS11286",
                "kleborate/examples/data/Klebs_HS11286.fna.xz",
            ),
            sf(
                "Klebs_Kp1084",
                "kleborate/examples/data/Klebs_Kp1084.fna.xz",
            ),
            sf("MGH78578", "kleborate/examples/data/MGH78578.fna.xz"),
            sf("NTUH-K2044", "kleborate/examples/data/NTUH-K2044.fna.xz"),
        ],
    },
    SpeciesDef {
        class: "s_aureus",
        species: "Staphylococcus aureus",
        package: "ragout-examples",
        test_strain: "USA300_FPR3757",
        strains: &[
            sf("COL", "ragout/examples/S.Aureus/references/COL.fasta.gz"),
            sf(
                "JKD6008",
                "ragout/examples/S.Aureus/references/JKD6008.fasta.gz",
            ),
            sf("N315", "ragout/examples/S.Aureus/references/N315.fasta.gz"),
            sf(
                "RF122",
                "ragout/examples/S.Aureus/references/RF122.fasta.gz",
            ),
            sf(
                "USA300_FPR3757",
                "ragout/examples/S.Aureus/references/USA300_FPR3757.fasta.gz",
            ),
        ],
    },
    SpeciesDef {
        class: "v_cholerae",
        species: "Vibrio cholerae",
        package: "ragout-examples",
        test_strain: "H1",
        strains: &[
            sf("H1", "ragout/examples/V.Cholerae/references/H1.fasta.gz"),
            sf(
                "O1_Inaba",
                "ragout/examples/V.Cholerae/references/O1_Inaba.fasta.gz",
            ),
            sf(
                "O1_biovar",
                "ragout/examples/V.Cholerae/references/O1_biovar.fasta.gz",
            ),
            sf(
                "O395",
                "ragout/examples/V.Cholerae/references/O395.fasta.gz",
            ),
        ],
    },
];

/// Default fragment length (bases).
pub const DEFAULT_LENGTH: usize = 500;
/// Default number of train fragments per class.
pub const DEFAULT_TRAIN_PER_CLASS: usize = 2000;
/// Default number of test fragments per class.
pub const DEFAULT_TEST_PER_CLASS: usize = 500;
/// Default seed.
pub const DEFAULT_SEED: u64 = 1;
/// Default smallest record used (bases): every chromosome, no plasmid (module docs).
pub const DEFAULT_MIN_RECORD_LEN: usize = 1_000_000;

/// Options of [`build_species_task`].
#[derive(Clone, Debug)]
pub struct SpeciesTaskOptions {
    /// Directory under which the genome files are searched (module docs).
    pub genomes: PathBuf,
    /// Output directory: must not exist, or be empty.
    pub out: PathBuf,
    /// Fragment length in bases.
    pub length: usize,
    pub train_per_class: usize,
    pub test_per_class: usize,
    pub seed: u64,
    /// Records shorter than this are not sampled (drops plasmids at the default).
    pub min_record_len: usize,
}

impl SpeciesTaskOptions {
    /// The options with every default ([`DEFAULT_LENGTH`] ...).
    pub fn new(genomes: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        SpeciesTaskOptions {
            genomes: genomes.into(),
            out: out.into(),
            length: DEFAULT_LENGTH,
            train_per_class: DEFAULT_TRAIN_PER_CLASS,
            test_per_class: DEFAULT_TEST_PER_CLASS,
            seed: DEFAULT_SEED,
            min_record_len: DEFAULT_MIN_RECORD_LEN,
        }
    }
}

/// One record of a genome file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordReport {
    pub id: String,
    pub length: usize,
    /// Whether fragments were drawn from it (length ≥ `min_record_len` and ≥ `length`).
    pub used: bool,
}

/// One strain as used in one split.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StrainReport {
    pub strain: String,
    /// The package-relative file name (not where it was found on this machine).
    pub file: String,
    pub records: Vec<RecordReport>,
    /// Bases in the used records.
    pub used_bases: usize,
    /// Fragments drawn from this strain.
    pub fragments: usize,
    /// Fragments drawn and rejected for a non-ACGT character.
    pub rejected_non_acgt: usize,
}

/// One class of the built task.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SpeciesReport {
    pub class: String,
    pub species: String,
    pub train: Vec<StrainReport>,
    pub test: Vec<StrainReport>,
    pub train_fragments: usize,
    pub test_fragments: usize,
}

/// What [`build_species_task`] built; also written as `dataset.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BuildReport {
    /// Where the dataset was written (not stored in `dataset.json`: the folder may move).
    #[serde(skip)]
    pub out: PathBuf,
    pub task: String,
    pub layout: String,
    pub length: usize,
    pub seed: u64,
    pub train_per_class: usize,
    pub test_per_class: usize,
    pub min_record_len: usize,
    pub classes: Vec<String>,
    pub species: Vec<SpeciesReport>,
}

/// Where a fragment comes from.
struct Provenance {
    strain: usize,
    record: usize,
    start: usize,
    reverse: bool,
}

/// A loaded strain: its eligible records, upper case.
struct StrainGenome {
    report: StrainReport,
    /// (record index in the file, sequence) of the records long enough to sample.
    records: Vec<(usize, Vec<u8>)>,
    /// Record ids, by index in the file.
    ids: Vec<String>,
}

/// Build the five-species task (module docs) into `opts.out`.
pub fn build_species_task(opts: &SpeciesTaskOptions) -> Result<BuildReport> {
    for (field, v) in [
        ("length", opts.length),
        ("train_per_class", opts.train_per_class),
        ("test_per_class", opts.test_per_class),
        ("min_record_len", opts.min_record_len),
    ] {
        if v == 0 {
            return Err(Error::config(field, v, "must be at least 1"));
        }
    }
    check_out_dir(&opts.out)?;
    // Find every file before reading any, so a missing package fails at once.
    let files = locate_genomes(&opts.genomes)?;
    let tmp = TempOut::create(&opts.out)?;
    let mut species_reports = Vec::new();
    let mut tsv = String::from("file\tsplit\tclass\tstrain\trecord\tstart\tstrand\n");
    for (ci, sp) in SPECIES.iter().enumerate() {
        let mut report = SpeciesReport {
            class: sp.class.to_string(),
            species: sp.species.to_string(),
            train: Vec::new(),
            test: Vec::new(),
            train_fragments: 0,
            test_fragments: 0,
        };
        for (si, split) in ["train", "test"].into_iter().enumerate() {
            let n = if si == 0 {
                opts.train_per_class
            } else {
                opts.test_per_class
            };
            let strains: Vec<&StrainFile> = sp
                .strains
                .iter()
                .filter(|s| (s.strain == sp.test_strain) == (si == 1))
                .collect();
            let mut genomes = Vec::new();
            for s in &strains {
                let path = files.get(s.path).ok_or_else(|| {
                    Error::format(&opts.genomes, format!("{} was not located", s.path))
                })?;
                genomes.push(load_strain(s, path, opts)?);
            }
            let mut rng = StdRng::seed_from_u64(stream_seed(opts.seed, ci, si));
            let mut frags: Vec<(Vec<u8>, Provenance)> = Vec::with_capacity(n);
            let n_s = genomes.len();
            for (gi, g) in genomes.iter_mut().enumerate() {
                let quota = n / n_s + usize::from(gi < n % n_s);
                sample_fragments(g, gi, quota, opts.length, &mut rng, &mut frags)?;
            }
            frags.shuffle(&mut rng);
            let dir = tmp.path.join(split).join(sp.class);
            std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
            let width = n.saturating_sub(1).to_string().len().max(5);
            for (i, (seq, p)) in frags.iter().enumerate() {
                let name = format!("{i:0width$}.txt");
                let file = dir.join(&name);
                let mut text = seq.clone();
                text.push(b'\n');
                std::fs::write(&file, &text).map_err(Error::io(&file))?;
                let g = &genomes[p.strain];
                let _ = writeln!(
                    tsv,
                    "{split}/{}/{name}\t{split}\t{}\t{}\t{}\t{}\t{}",
                    sp.class,
                    sp.class,
                    g.report.strain,
                    g.ids[p.record],
                    p.start,
                    if p.reverse { '-' } else { '+' }
                );
            }
            let reports: Vec<StrainReport> = genomes.into_iter().map(|g| g.report).collect();
            if si == 0 {
                report.train_fragments = frags.len();
                report.train = reports;
            } else {
                report.test_fragments = frags.len();
                report.test = reports;
            }
        }
        species_reports.push(report);
    }
    let report = BuildReport {
        out: opts.out.clone(),
        task: "species of origin of a DNA fragment (5 bacterial species; test strains held out)"
            .to_string(),
        layout: "train/<class>/NNNNN.txt and test/<class>/NNNNN.txt, one sequence per file \
                 (GenomicBenchmarks); fragments.tsv: the source of every fragment"
            .to_string(),
        length: opts.length,
        seed: opts.seed,
        train_per_class: opts.train_per_class,
        test_per_class: opts.test_per_class,
        min_record_len: opts.min_record_len,
        classes: SPECIES.iter().map(|s| s.class.to_string()).collect(),
        species: species_reports,
    };
    let manifest = tmp.path.join("dataset.json");
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::format(&manifest, format!("cannot serialise the manifest: {e}")))?;
    std::fs::write(&manifest, json + "\n").map_err(Error::io(&manifest))?;
    let tsv_path = tmp.path.join("fragments.tsv");
    std::fs::write(&tsv_path, tsv).map_err(Error::io(&tsv_path))?;
    tmp.commit(&opts.out)?;
    Ok(report)
}

/// A distinct, reproducible random stream per (class, split).
fn stream_seed(seed: u64, class: usize, split: usize) -> u64 {
    // splitmix64 finaliser over the three values: nearby seeds give unrelated streams.
    let mut z = seed
        .wrapping_add(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(1 + 2 * class as u64 + split as u64));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Refuse an output that exists and is not an empty directory.
fn check_out_dir(out: &Path) -> Result<()> {
    match std::fs::metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(out)(e)),
        Ok(m) if !m.is_dir() => Err(Error::format(
            out,
            "exists and is not a directory: choose a new output directory",
        )),
        Ok(_) => {
            let mut it = std::fs::read_dir(out).map_err(Error::io(out))?;
            if it.next().is_some() {
                Err(Error::format(
                    out,
                    "output directory is not empty: choose a new one, or remove it first \
                     (nothing was written)",
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// A temporary directory beside the output, removed unless committed.
struct TempOut {
    path: PathBuf,
    committed: bool,
}

impl TempOut {
    fn create(out: &Path) -> Result<Self> {
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
        let name = out.file_name().map_or_else(
            || "dataset".to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let path = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if path.exists() {
            // Left by an earlier build with the same process id that was killed.
            std::fs::remove_dir_all(&path).map_err(Error::io(&path))?;
        }
        std::fs::create_dir(&path).map_err(Error::io(&path))?;
        Ok(TempOut {
            path,
            committed: false,
        })
    }

    fn commit(mut self, out: &Path) -> Result<()> {
        if out.is_dir() {
            // Checked empty at the start; `remove_dir` fails (and we report it) if it no
            // longer is.
            std::fs::remove_dir(out).map_err(Error::io(out))?;
        }
        std::fs::rename(&self.path, out).map_err(Error::io(out))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempOut {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Read one strain's file and keep its records of at least `min_record_len` bases.
fn load_strain(s: &StrainFile, path: &Path, opts: &SpeciesTaskOptions) -> Result<StrainGenome> {
    let mut records = Vec::new();
    let mut ids = Vec::new();
    let mut reports = Vec::new();
    for (i, r) in open_records(path)?.enumerate() {
        let r = r?;
        let used = r.seq.len() >= opts.min_record_len && r.seq.len() >= opts.length;
        reports.push(RecordReport {
            id: r.id.clone(),
            length: r.seq.len(),
            used,
        });
        ids.push(r.id);
        if used {
            records.push((i, r.seq.to_ascii_uppercase()));
        }
    }
    if records.is_empty() {
        let lens: Vec<String> = reports.iter().map(|r| r.length.to_string()).collect();
        return Err(Error::format(
            path,
            format!(
                "strain {}: no record of at least {} bases (min_record_len {}, fragment length \
                 {}); its records have {} bases: lower the minimum record length or the \
                 fragment length",
                s.strain,
                opts.min_record_len.max(opts.length),
                opts.min_record_len,
                opts.length,
                lens.join(", ")
            ),
        ));
    }
    Ok(StrainGenome {
        report: StrainReport {
            strain: s.strain.to_string(),
            file: s.path.to_string(),
            used_bases: records.iter().map(|(_, q)| q.len()).sum(),
            records: reports,
            fragments: 0,
            rejected_non_acgt: 0,
        },
        records,
        ids,
    })
}

/// Draw `n` ACGT-only fragments of `len` bases from `g` (module docs) into `out`.
fn sample_fragments(
    g: &mut StrainGenome,
    strain: usize,
    n: usize,
    len: usize,
    rng: &mut StdRng,
    out: &mut Vec<(Vec<u8>, Provenance)>,
) -> Result<()> {
    // Cumulative number of valid start positions, record by record.
    let mut cum = Vec::with_capacity(g.records.len());
    let mut total = 0u64;
    for (_, seq) in &g.records {
        total += (seq.len() - len + 1) as u64;
        cum.push(total);
    }
    // A genome that is mostly N would loop for ever; real genomes reject well under 1%.
    let max_rejects = 100 * n + 1000;
    let mut kept = 0;
    while kept < n {
        let u = rng.random_range(0..total);
        let r = cum.partition_point(|&c| c <= u);
        let start = (u - if r == 0 { 0 } else { cum[r - 1] }) as usize;
        let (rec_idx, seq) = &g.records[r];
        let frag = &seq[start..start + len];
        if !frag.iter().all(|b| matches!(b, b'A' | b'C' | b'G' | b'T')) {
            g.report.rejected_non_acgt += 1;
            if g.report.rejected_non_acgt > max_rejects {
                return Err(Error::format(
                    Path::new(g.report.file.as_str()),
                    format!(
                        "strain {}: {} fragments of {len} bases drawn had non-ACGT characters \
                         (only {kept} of {n} kept): the genome is mostly ambiguous bases; use \
                         shorter fragments",
                        g.report.strain, g.report.rejected_non_acgt
                    ),
                ));
            }
            continue;
        }
        let reverse = rng.random_bool(0.5);
        let frag = if reverse {
            reverse_complement(frag)
        } else {
            frag.to_vec()
        };
        out.push((
            frag,
            Provenance {
                strain,
                record: *rec_idx,
                start,
                reverse,
            },
        ));
        kept += 1;
    }
    g.report.fragments += n;
    Ok(())
}

/// The compression suffixes a genome file may have lost when decompressed by hand.
fn strip_compression(name: &str) -> &str {
    name.strip_suffix(".gz")
        .or_else(|| name.strip_suffix(".xz"))
        .unwrap_or(name)
}

/// Find every genome file of [`SPECIES`] under `root` (module docs): package path → file.
fn locate_genomes(root: &Path) -> Result<BTreeMap<&'static str, PathBuf>> {
    let meta = std::fs::metadata(root).map_err(Error::io(root))?;
    if !meta.is_dir() {
        return Err(Error::format(
            root,
            "the genomes location must be a directory (e.g. usr/share/doc of the extracted \
             packages)",
        ));
    }
    let wanted: Vec<&'static str> = SPECIES
        .iter()
        .flat_map(|s| s.strains.iter().map(|f| f.path))
        .collect();
    let names: BTreeSet<&str> = wanted
        .iter()
        .filter_map(|p| p.rsplit('/').next())
        .flat_map(|n| [n, strip_compression(n)])
        .collect();
    // Candidate files: the right name, as components relative to `root`.
    let mut found: Vec<(PathBuf, Vec<String>)> = Vec::new();
    walk(root, root, 0, &names, &mut found)?;
    let mut map = BTreeMap::new();
    let mut missing = Vec::new();
    for want in &wanted {
        let w: Vec<&str> = want.split('/').collect();
        let w_last = w[w.len() - 1];
        // Score = number of trailing components matched; the best unique match wins.
        let mut best: Vec<(&PathBuf, usize)> = Vec::new();
        for (path, comps) in &found {
            let Some(last) = comps.last() else { continue };
            if last != w_last && last != strip_compression(w_last) {
                continue;
            }
            let m = w.len().min(comps.len());
            let parents_match = (2..=m).all(|i| comps[comps.len() - i] == w[w.len() - i]);
            if parents_match {
                best.push((path, m));
            }
        }
        let top = best.iter().map(|b| b.1).max();
        let best: Vec<&PathBuf> = best
            .iter()
            .filter(|b| Some(b.1) == top)
            .map(|b| b.0)
            .collect();
        match best.as_slice() {
            [] => missing.push(*want),
            [one] => {
                map.insert(*want, (*one).clone());
            }
            many => {
                let list: Vec<String> = many.iter().map(|p| p.display().to_string()).collect();
                return Err(Error::format(
                    root,
                    format!(
                        "{want} is found {} times ({}): point the genomes directory at one copy",
                        many.len(),
                        list.join(", ")
                    ),
                ));
            }
        }
    }
    if !missing.is_empty() {
        let pkgs: BTreeSet<&str> = SPECIES
            .iter()
            .filter(|s| s.strains.iter().any(|f| missing.contains(&f.path)))
            .map(|s| s.package)
            .collect();
        let pkgs = pkgs.into_iter().collect::<Vec<_>>().join(" ");
        return Err(Error::format(
            root,
            format!(
                "{} of the {} genome files not found under this directory: {}. They come from \
                 the Debian packages {pkgs}: `apt-get install {pkgs}` and use /usr/share/doc, \
                 or `apt-get download {pkgs}`, `dpkg -x <package>.deb <dir>` and use \
                 <dir>/usr/share/doc",
                missing.len(),
                wanted.len(),
                missing.join(", ")
            ),
        ));
    }
    Ok(map)
}

/// Collect the files under `dir` named in `names` (directory symlinks are not followed, so a
/// link loop cannot trap the walk; unreadable sub-directories are skipped).
fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    names: &BTreeSet<&str>,
    found: &mut Vec<(PathBuf, Vec<String>)>,
) -> Result<()> {
    const MAX_DEPTH: usize = 12;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if depth == 0 => return Err(Error::io(dir)(e)),
        Err(_) => return Ok(()),
    };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(ft) = e.file_type() else { continue };
        let path = e.path();
        if ft.is_dir() {
            if depth < MAX_DEPTH {
                walk(root, &path, depth + 1, names, found)?;
            }
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if names.contains(name.as_str()) && path.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let comps = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            found.push((path, comps));
        }
    }
    Ok(())
}
