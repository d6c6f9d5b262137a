//! The six MAD synthetic task generators (arXiv 2403.17844; reference code athms/mad-lab):
//! names, baselines and sweeps (`configs/tasks/*.yml`), each task's generation rules
//! (`mad/data/instances.py`) re-checked independently of the generator, determinism,
//! train/test overlap, invalid settings, and accuracy (torchmetrics' averages, as `train.py`).

use std::collections::HashMap;

use hyena::data::mad::{
    accuracy, baseline, generate, memorization_map, overlap, sweep, AccuracyCounter, Average,
    Example, MadTask, TaskData, TaskSetting, IGNORE, NUM_TEST,
};
use hyena::Error;

/// `s` with fewer examples (large-L settings stay fast).
fn reduced(mut s: TaskSetting, train: usize, test: usize) -> TaskSetting {
    s.num_train = train;
    s.num_test = test;
    s
}

/// The sweep setting of `task` with this label.
fn setting(task: MadTask, label: &str) -> TaskSetting {
    sweep(task)
        .into_iter()
        .find(|s| s.label() == label)
        .unwrap_or_else(|| panic!("{task}: no sweep setting {label}"))
}

fn gen(s: &TaskSetting) -> TaskData {
    generate(s).unwrap_or_else(|e| panic!("{}: {e}", s.label()))
}

/// Shapes and token ranges shared by all tasks.
fn check_common(s: &TaskSetting, d: &TaskData, t: usize) {
    assert_eq!(d.train.len(), s.num_train);
    assert_eq!(d.test.len(), s.num_test);
    assert_eq!(d.vocab_size, s.vocab_size);
    assert_eq!(d.seq_len, t, "{}", s.label());
    assert_eq!(d.encoder_decoder, s.task == MadTask::Compression);
    for e in d.train.iter().chain(&d.test) {
        assert_eq!(e.inputs.len(), t);
        assert_eq!(e.targets.len(), t);
        assert!(e.inputs.iter().all(|&x| (x as usize) < s.vocab_size));
        assert!(e
            .targets
            .iter()
            .all(|&y| y == IGNORE || (0..s.vocab_size as i32).contains(&y)));
    }
}

/// Train instances of the shifted tasks are plain next-token LM: `targets[j] = inputs[j+1]`.
fn check_lm_shift(e: &Example) {
    let t = e.inputs.len();
    for j in 0..t - 1 {
        assert_eq!(e.targets[j], e.inputs[j + 1] as i32, "train shift at {j}");
    }
    assert!(e.targets[t - 1] >= 0);
}

// === names, baselines, sweeps ===

#[test]
fn task_names_round_trip_and_unknown_name_lists_valid_ones() {
    let names: Vec<&str> = MadTask::all().iter().map(|t| t.name()).collect();
    assert_eq!(
        names,
        [
            "in-context-recall",
            "fuzzy-in-context-recall",
            "noisy-in-context-recall",
            "selective-copying",
            "compression",
            "memorization"
        ]
    );
    for t in MadTask::all() {
        assert_eq!(MadTask::from_name(t.name()).unwrap(), t);
        // serde uses the same kebab-case names
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            format!("\"{}\"", t.name())
        );
    }
    let err = MadTask::from_name("recall").unwrap_err().to_string();
    for n in names {
        assert!(err.contains(n), "{err}");
    }
}

#[test]
fn baselines_match_the_spec_table() {
    let b = baseline(MadTask::InContextRecall);
    assert_eq!(
        (b.vocab_size, b.seq_len, b.num_train, b.num_test),
        (16, 128, 12800, 1280)
    );
    assert!(b.multi_query && b.frac_noise == 0.0 && b.seed == 12345);
    let f = baseline(MadTask::FuzzyInContextRecall);
    assert_eq!(
        (f.vocab_size, f.seq_len, f.k_motif_size, f.v_motif_size),
        (16, 128, 3, 3)
    );
    let n = baseline(MadTask::NoisyInContextRecall);
    assert_eq!(
        (n.vocab_size, n.noise_vocab_size, n.frac_noise),
        (32, 16, 0.2)
    );
    let c = baseline(MadTask::SelectiveCopying);
    assert_eq!(
        (c.vocab_size, c.seq_len, c.n_copy, c.num_train),
        (16, 256, 16, 12800)
    );
    let z = baseline(MadTask::Compression);
    assert_eq!((z.vocab_size, z.seq_len, z.num_train), (16, 32, 12800));
    let m = baseline(MadTask::Memorization);
    assert_eq!((m.vocab_size, m.seq_len, m.num_train), (256, 32, 256));
    for t in MadTask::all() {
        assert_eq!(baseline(t).num_test, NUM_TEST);
        assert_eq!(baseline(t).label(), "baseline");
        baseline(t).validate().unwrap();
    }
}

#[test]
fn sweeps_are_baseline_plus_single_changes_of_the_spec_table() {
    let expect: [(MadTask, &[&str]); 6] = [
        (
            MadTask::InContextRecall,
            &[
                "vocab=32",
                "vocab=64",
                "vocab=128",
                "seq_len=256",
                "seq_len=512",
                "seq_len=1024",
                "train=6400",
                "train=3200",
                "train=1600",
                "train=800",
            ],
        ),
        (
            MadTask::FuzzyInContextRecall,
            &[
                "vocab=32",
                "vocab=64",
                "vocab=128",
                "seq_len=256",
                "seq_len=512",
                "seq_len=1024",
                "train=6400",
                "train=3200",
                "train=1600",
                "train=800",
            ],
        ),
        (
            MadTask::NoisyInContextRecall,
            &[
                "vocab=48",
                "vocab=80",
                "vocab=144",
                "seq_len=256",
                "seq_len=512",
                "seq_len=1024",
                "train=6400",
                "train=3200",
                "train=1600",
                "train=800",
                "frac_noise=0.4",
                "frac_noise=0.6",
                "frac_noise=0.8",
            ],
        ),
        (
            MadTask::SelectiveCopying,
            &[
                "vocab=32",
                "vocab=64",
                "vocab=128",
                "seq_len=512",
                "seq_len=1024",
                "train=6400",
                "train=3200",
                "train=1600",
                "train=800",
                "n_copy=32",
                "n_copy=64",
                "n_copy=96",
            ],
        ),
        (
            MadTask::Compression,
            &[
                "vocab=32",
                "vocab=64",
                "vocab=128",
                "seq_len=64",
                "seq_len=128",
                "seq_len=256",
                "train=6400",
                "train=3200",
                "train=1600",
                "train=800",
            ],
        ),
        (
            MadTask::Memorization,
            &[
                "vocab=512",
                "vocab=1024",
                "vocab=2048",
                "vocab=4096",
                "vocab=8192",
            ],
        ),
    ];
    let counts: Vec<usize> = MadTask::all().iter().map(|&t| sweep(t).len()).collect();
    assert_eq!(counts, [11, 11, 14, 13, 11, 6]);
    for (task, labels) in expect {
        let sw = sweep(task);
        assert_eq!(sw[0], baseline(task));
        let got: Vec<String> = sw[1..].iter().map(|s| s.label()).collect();
        assert_eq!(got, labels, "{task}");
        for s in &sw {
            assert_eq!(s.task, task);
            assert_eq!(s.num_test, 1280);
            s.validate()
                .unwrap_or_else(|e| panic!("{task} {}: {e}", s.label()));
        }
    }
}

// === in-context recall and noisy recall ===

/// Re-derive the scored positions of a multi-query recall test example from its inputs alone:
/// position j (shifted) is scored iff j is even (the original value slot), `x[j]` is a key, and
/// that key occurred at an earlier even position; the target is the value that followed it.
fn check_recall(s: &TaskSetting, d: &TaskData) {
    let t = s.seq_len - 1;
    check_common(s, d, t);
    let ns = s.vocab_size - s.noise_vocab_size;
    let nk = ns / 2;
    for e in &d.train {
        check_lm_shift(e);
    }
    let (mut noise_pairs, mut pairs) = (0usize, 0usize);
    for e in &d.test {
        let x = &e.inputs;
        let mut value_of: HashMap<u32, u32> = HashMap::new();
        for j in 0..t {
            let y = e.targets[j];
            if j % 2 == 1 {
                assert_eq!(y, IGNORE, "odd (key-target) position {j} scored");
                continue;
            }
            let k = x[j];
            if (k as usize) >= ns {
                // noise pair: both tokens noise, not scored
                noise_pairs += 1;
                assert!(j + 1 >= t || x[j + 1] as usize >= ns);
                assert_eq!(y, IGNORE);
                continue;
            }
            pairs += 1;
            assert!((k as usize) < nk, "key slot holds non-key {k}");
            let expect = value_of.get(&k).copied();
            match expect {
                Some(v) => {
                    assert_eq!(y, v as i32, "value of a seen key must be scored");
                    assert!((nk..ns).contains(&(v as usize)));
                }
                None => assert_eq!(y, IGNORE, "first occurrence of a key is not scored"),
            }
            if j + 1 < t {
                let v = x[j + 1];
                assert!((nk..ns).contains(&(v as usize)), "value slot holds {v}");
                if let Some(old) = value_of.insert(k, v) {
                    assert_eq!(old, v, "the kv map is consistent within a sequence");
                }
                if y != IGNORE {
                    assert_eq!(y, v as i32);
                }
            }
        }
        assert!(
            e.targets[t - 1] != IGNORE,
            "the final probe is always scored"
        );
    }
    if s.frac_noise > 0.0 {
        // Each of the P−1 slots but one is noise with probability frac_noise.
        let p = s.seq_len / 2;
        let want = s.frac_noise * (p - 2) as f64 / (p - 1) as f64;
        // the final probe slot is never noise: exclude it from the denominator
        let got = noise_pairs as f64 / (noise_pairs + pairs - d.test.len()) as f64;
        assert!((got - want).abs() < 0.02, "noise fraction {got} vs {want}");
    } else {
        assert_eq!(noise_pairs, 0);
    }
}

#[test]
fn in_context_recall_follows_the_rules() {
    follows_the_rules(
        MadTask::InContextRecall,
        ["vocab=128", "seq_len=1024", "train=800"],
        64,
        check_recall,
    );
}

/// `check` holds on the baseline setting (whose train and test sets do not overlap) and on
/// three of the task's sweep settings, cut to 64 training and `n_test` test examples.
fn follows_the_rules(
    task: MadTask,
    labels: [&str; 3],
    n_test: usize,
    check: impl Fn(&TaskSetting, &TaskData),
) -> TaskData {
    let s = baseline(task);
    let d = gen(&s);
    check(&s, &d);
    assert_eq!(overlap(&d.train, &d.test), 0, "{task:?}");
    for label in labels {
        let s = reduced(setting(task, label), 64, n_test);
        check(&s, &gen(&s));
    }
    d
}

#[test]
fn noisy_in_context_recall_follows_the_rules() {
    follows_the_rules(
        MadTask::NoisyInContextRecall,
        ["frac_noise=0.8", "vocab=144", "seq_len=512"],
        400,
        check_recall,
    );
}

// === fuzzy recall ===

fn check_fuzzy(s: &TaskSetting, d: &TaskData) {
    let t = s.seq_len;
    check_common(s, d, t);
    let pad = (s.vocab_size - 1) as u32;
    let ns = s.vocab_size - 1;
    let nk = ns / 2;
    let (kmax, vmax) = (s.k_motif_size, s.v_motif_size);
    for e in d.train.iter().chain(&d.test) {
        // at least two pad tokens on the left, and pads only there
        let n_pad = e.inputs.iter().take_while(|&&x| x == pad).count();
        assert!(n_pad >= 2, "content longer than seq_len − 1");
        assert!(e.inputs[n_pad..].iter().all(|&x| x != pad));
    }
    for e in &d.train {
        check_lm_shift(e);
    }
    for e in &d.test {
        let x = &e.inputs;
        for j in 0..t - 1 {
            if e.targets[j] != IGNORE {
                assert_eq!(e.targets[j], x[j + 1] as i32);
            }
        }
        // scored runs = value motifs of already-presented keys; the last run is the probe
        let mut runs = Vec::new();
        let mut j = 0;
        while j < t {
            if e.targets[j] == IGNORE {
                j += 1;
                continue;
            }
            let start = j;
            while j < t && e.targets[j] != IGNORE {
                j += 1;
            }
            runs.push((start, j));
        }
        let &(ls, le) = runs.last().expect("the probe value is always scored");
        assert_eq!(le, t, "the last position is always scored");
        assert!((1..=vmax).contains(&(le - ls)));
        for &(a, b) in &runs {
            let vals: Vec<u32> = e.targets[a..b].iter().map(|&y| y as u32).collect();
            assert!(vals.iter().all(|&v| (nk..ns).contains(&(v as usize))));
            assert!(b - a <= vmax, "value motif longer than v_motif_size");
            // test keys have the maximum size: x[a+1−k ..= a] are key tokens
            assert!(a + 1 >= kmax);
            let key = &x[a + 1 - kmax..=a];
            assert!(key.iter().all(|&k| (k as usize) < nk), "key {key:?}");
            if b < t {
                // key ++ value appeared verbatim earlier in the sequence
                let pattern: Vec<u32> = key.iter().copied().chain(vals).collect();
                let found = (0..a + 1 - kmax).any(|p| x[p..].starts_with(&pattern));
                assert!(found, "scored value of a key never presented before");
            }
        }
    }
}

#[test]
fn fuzzy_in_context_recall_follows_the_rules() {
    let d = follows_the_rules(
        MadTask::FuzzyInContextRecall,
        ["vocab=64", "seq_len=512", "train=800"],
        64,
        check_fuzzy,
    );
    // train keys have variable sizes: at least some key-token runs shorter than 3 appear
    let short_key = d.train.iter().any(|e| {
        e.inputs
            .windows(3)
            .any(|w| (w[0] as usize) >= 7 && (w[1] as usize) < 7 && (w[2] as usize) >= 7)
    });
    assert!(short_key, "train keys of size 1 expected");
}

// === selective copying ===

fn check_selective(s: &TaskSetting, d: &TaskData) {
    let (l, n) = (s.seq_len, s.n_copy);
    check_common(s, d, l);
    let copy = (s.vocab_size - 1) as u32;
    let blank = (s.vocab_size - 2) as u32;
    let num_blank = l - 2 * n - 1;
    for e in d.train.iter().chain(&d.test) {
        let x = &e.inputs;
        assert_eq!(x[l - n - 1], copy);
        assert!(x[l - n..].iter().all(|&t| t == blank));
        let head = &x[..l - n - 1];
        assert!(head.iter().all(|&t| t != copy));
        assert_eq!(head.iter().filter(|&&t| t == blank).count(), num_blank);
        assert_ne!(
            head[head.len() - 1],
            blank,
            "blanks are inserted before content tokens"
        );
        let content: Vec<i32> = head
            .iter()
            .filter(|&&t| t != blank)
            .map(|&t| t as i32)
            .collect();
        // exactly the last n positions are scored, with the content tokens in order
        assert!(e.targets[..l - n].iter().all(|&y| y == IGNORE));
        assert_eq!(&e.targets[l - n..], content.as_slice());
        assert!(content
            .iter()
            .all(|&c| (0..s.vocab_size as i32 - 2).contains(&c)));
    }
}

#[test]
fn selective_copying_follows_the_rules() {
    follows_the_rules(
        MadTask::SelectiveCopying,
        ["n_copy=96", "seq_len=1024", "vocab=128"],
        64,
        check_selective,
    );
}

// === compression ===

fn check_compression(s: &TaskSetting, d: &TaskData) {
    let l = s.seq_len;
    check_common(s, d, l);
    assert!(d.encoder_decoder);
    let ct = (s.vocab_size - 1) as u32;
    for e in d.train.iter().chain(&d.test) {
        assert_eq!(e.inputs[l - 1], ct);
        assert!(e.inputs[..l - 1].iter().all(|&x| x < ct));
        let as_i32: Vec<i32> = e.inputs.iter().map(|&x| x as i32).collect();
        assert_eq!(e.targets, as_i32, "all positions scored, targets = inputs");
    }
}

#[test]
fn compression_follows_the_rules() {
    // 15^31 possible sequences: a train/test collision is astronomically unlikely (but allowed
    // by the rules)
    follows_the_rules(
        MadTask::Compression,
        ["vocab=128", "seq_len=256", "train=800"],
        64,
        check_compression,
    );
}

// === memorization ===

fn check_memorization(s: &TaskSetting, d: &TaskData) -> HashMap<u32, u32> {
    let l = s.seq_len;
    check_common(s, d, l);
    let insert = (s.vocab_size - 1) as u32;
    let ns = s.vocab_size - 1;
    let nk = ns / 2;
    let map: HashMap<u32, u32> = memorization_map(ns, s.seed).into_iter().collect();
    assert_eq!(map.len(), nk.min(ns - nk));
    for e in d.train.iter().chain(&d.test) {
        for p in 0..l / 2 {
            let (k, ins) = (e.inputs[2 * p], e.inputs[2 * p + 1]);
            assert_eq!(ins, insert);
            assert!((k as usize) < nk);
            assert_eq!(e.targets[2 * p], IGNORE);
            // not shifted: the value is the target at the insert position
            assert_eq!(e.targets[2 * p + 1], map[&k] as i32);
            assert!((nk..ns).contains(&(map[&k] as usize)));
        }
    }
    map
}

#[test]
fn memorization_follows_the_rules() {
    let s = baseline(MadTask::Memorization);
    let d = gen(&s);
    let map = check_memorization(&s, &d);
    // the map is a bijection between keys and values
    let mut values: Vec<u32> = map.values().copied().collect();
    values.sort_unstable();
    values.dedup();
    assert_eq!(values.len(), map.len());
    // fixed by the config seed, not by the data stream
    assert_eq!(
        memorization_map(255, 12345),
        memorization_map(255, 12345),
        "map must be reproducible"
    );
    assert_ne!(memorization_map(255, 12345), memorization_map(255, 1));
    // Test sequences are fresh draws (verbatim overlap ~0), but every test fact is taught by
    // the train set: the same map, and with 256·16 draws of 127 keys every key is trained.
    assert_eq!(overlap(&d.train, &d.test), 0);
    let mut trained = std::collections::HashSet::new();
    for e in &d.train {
        for p in 0..s.seq_len / 2 {
            trained.insert((e.inputs[2 * p], e.targets[2 * p + 1]));
        }
    }
    for e in &d.test {
        for p in 0..s.seq_len / 2 {
            assert!(trained.contains(&(e.inputs[2 * p], e.targets[2 * p + 1])));
        }
    }
    let s = reduced(setting(MadTask::Memorization, "vocab=8192"), 64, 64);
    check_memorization(&s, &gen(&s));
}

// === determinism, seeds, sizes ===

#[test]
fn generation_is_deterministic_and_seed_dependent() {
    for task in MadTask::all() {
        let s = reduced(baseline(task), 32, 16);
        let (a, b) = (gen(&s), gen(&s));
        assert_eq!(a.train, b.train, "{task}");
        assert_eq!(a.test, b.test, "{task}");
        let other = gen(&TaskSetting {
            seed: 7,
            ..s.clone()
        });
        assert_ne!(
            a.train, other.train,
            "{task}: another seed must change the data"
        );
        // the train set is generated first: a bigger test set does not change it
        let more = gen(&TaskSetting {
            num_test: 40,
            ..s.clone()
        });
        assert_eq!(a.train, more.train, "{task}");
        assert_eq!(a.test[..], more.test[..16], "{task}");
    }
}

#[test]
fn full_baselines_have_mad_sizes() {
    for task in MadTask::all() {
        let s = baseline(task);
        let d = gen(&s);
        assert_eq!(d.train.len(), s.num_train);
        assert_eq!(d.test.len(), 1280);
        let t = match task {
            MadTask::InContextRecall | MadTask::NoisyInContextRecall => s.seq_len - 1,
            _ => s.seq_len,
        };
        assert_eq!(d.seq_len, t);
        assert_eq!(s.model_seq_len(), t);
    }
}

// === invalid settings ===

#[test]
fn invalid_settings_give_config_errors_not_panics() {
    let cases: Vec<(TaskSetting, &str)> = vec![
        (
            TaskSetting {
                n_copy: 128,
                ..baseline(MadTask::SelectiveCopying)
            },
            "seq_len",
        ),
        (
            TaskSetting {
                n_copy: 0,
                ..baseline(MadTask::SelectiveCopying)
            },
            "n_copy",
        ),
        (
            TaskSetting {
                vocab_size: 2,
                ..baseline(MadTask::SelectiveCopying)
            },
            "vocab_size",
        ),
        (
            TaskSetting {
                seq_len: 127,
                ..baseline(MadTask::InContextRecall)
            },
            "seq_len",
        ),
        (
            TaskSetting {
                seq_len: 2,
                ..baseline(MadTask::InContextRecall)
            },
            "seq_len",
        ),
        (
            TaskSetting {
                vocab_size: 1,
                ..baseline(MadTask::InContextRecall)
            },
            "vocab_size",
        ),
        (
            TaskSetting {
                vocab_size: 16,
                ..baseline(MadTask::NoisyInContextRecall)
            },
            "vocab_size",
        ),
        (
            TaskSetting {
                frac_noise: 1.0,
                ..baseline(MadTask::NoisyInContextRecall)
            },
            "frac_noise",
        ),
        (
            TaskSetting {
                frac_noise: f64::NAN,
                ..baseline(MadTask::InContextRecall)
            },
            "frac_noise",
        ),
        (
            TaskSetting {
                frac_noise: 0.3,
                ..baseline(MadTask::InContextRecall)
            },
            "noise_vocab_size",
        ),
        (
            TaskSetting {
                vocab_size: 6,
                ..baseline(MadTask::FuzzyInContextRecall)
            },
            "vocab_size",
        ),
        (
            TaskSetting {
                seq_len: 12,
                ..baseline(MadTask::FuzzyInContextRecall)
            },
            "seq_len",
        ),
        (
            TaskSetting {
                k_motif_size: 0,
                ..baseline(MadTask::FuzzyInContextRecall)
            },
            "motif",
        ),
        (
            TaskSetting {
                seq_len: 31,
                ..baseline(MadTask::Memorization)
            },
            "seq_len",
        ),
        (
            TaskSetting {
                vocab_size: 2,
                ..baseline(MadTask::Memorization)
            },
            "vocab_size",
        ),
        (
            TaskSetting {
                vocab_size: 1,
                ..baseline(MadTask::Compression)
            },
            "vocab_size",
        ),
        (
            TaskSetting {
                seq_len: 1,
                ..baseline(MadTask::Compression)
            },
            "seq_len",
        ),
        (
            TaskSetting {
                num_train: 0,
                ..baseline(MadTask::Compression)
            },
            "num_train",
        ),
        (
            TaskSetting {
                num_test: 0,
                ..baseline(MadTask::Compression)
            },
            "num_test",
        ),
    ];
    for (s, field) in cases {
        match generate(&s) {
            Err(e @ Error::Config { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(field),
                    "{}: `{msg}` should name {field}",
                    s.task
                );
            }
            Err(e) => panic!("{}: wrong error kind {e}", s.task),
            Ok(_) => panic!("{} {}: invalid setting accepted", s.task, s.label()),
        }
    }
}

// === accuracy ===

#[test]
fn accuracy_macro_and_micro_on_a_hand_checked_case() {
    // vocab 4. Scored positions (target, pred): (0,0) ✓ (0,0) ✓ (0,1) ✗ (1,1) ✓ (2,3) ✗;
    // position 4 is ignored (its prediction 3 counts nowhere).
    let targets = [0, 0, 0, 1, IGNORE, 2];
    let preds = [0, 0, 1, 1, 3, 3];
    // micro: 3 correct of 5 scored
    assert!((accuracy(&preds, &targets, 4, Average::Micro) - 0.6).abs() < 1e-12);
    // macro over classes with target support {0, 1, 2}: (2/3 + 1 + 0) / 3 = 5/9
    let m = accuracy(&preds, &targets, 4, Average::Macro);
    assert!((m - 5.0 / 9.0).abs() < 1e-12, "{m}");
    // torchmetrics also counts class 3 (predicted at a scored position, tp+fp+fn > 0) with
    // recall 0: (2/3 + 1 + 0 + 0) / 4 = 5/12
    let tm = accuracy(&preds, &targets, 4, Average::MacroTorchmetrics);
    assert!((tm - 5.0 / 12.0).abs() < 1e-12, "{tm}");

    // streaming over two batches equals one call
    let mut c = AccuracyCounter::new(4);
    c.add(&preds[..3], &targets[..3]);
    c.add(&preds[3..], &targets[3..]);
    assert_eq!(c.scored(), 5);
    assert!((c.micro() - 0.6).abs() < 1e-12);
    assert!((c.macro_() - 5.0 / 9.0).abs() < 1e-12);
    // and so does merging counters of the two batches (how threads' counts are combined),
    // in all three averages
    let (mut a, mut b) = (AccuracyCounter::new(4), AccuracyCounter::new(4));
    a.add(&preds[3..], &targets[3..]);
    b.add(&preds[..3], &targets[..3]);
    a.merge(&b);
    assert_eq!(a.scored(), 5);
    for avg in [Average::Micro, Average::Macro, Average::MacroTorchmetrics] {
        assert!((a.get(avg) - accuracy(&preds, &targets, 4, avg)).abs() < 1e-12);
    }

    // macro weights rare classes up: 9 of class 0 right, the 1 of class 1 wrong
    let t2 = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let p2 = [0u32; 10];
    assert!((accuracy(&p2, &t2, 2, Average::Micro) - 0.9).abs() < 1e-12);
    assert!((accuracy(&p2, &t2, 2, Average::Macro) - 0.5).abs() < 1e-12);

    // nothing scored → 0
    assert_eq!(accuracy(&[1, 2], &[IGNORE, IGNORE], 4, Average::Macro), 0.0);
    assert_eq!(AccuracyCounter::new(4).micro(), 0.0);
}

#[test]
fn perfect_predictions_score_one_on_generated_test_sets() {
    for task in MadTask::all() {
        let d = gen(&reduced(baseline(task), 8, 32));
        let mut c = AccuracyCounter::new(d.vocab_size);
        for e in &d.test {
            let preds: Vec<u32> = e.targets.iter().map(|&y| y.max(0) as u32).collect();
            c.add(&preds, &e.targets);
        }
        assert!(c.scored() > 0, "{task}");
        assert_eq!(c.micro(), 1.0, "{task}");
        assert_eq!(c.macro_(), 1.0, "{task}");
    }
}
