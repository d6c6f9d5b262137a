//! The sequence classifier and fine-tuning: finite-difference gradients through head, pooling
//! and backbone (`HyenaLm::backward_hidden`); left padding; a fine-tuning run that must learn
//! a separable task; the checkpoint round trip; clear errors.

mod common;

use common::{max_abs_diff, small_lm, TempDir};
use hyena::checkpoint::{load_model, read_json, RunDir};
use hyena::data::seqcls::{Example, SeqClsDataset};
use hyena::io::tokenizer::PAD_ID;
use hyena::models::classifier::{ClsWorkspace, SeqClassifier};
use hyena::models::hyenadna::family::load_run;
use hyena::models::hyenadna::{HyenaLm, LmConfig};
use hyena::models::{Model, Pool};
use hyena::testing::{check, rand_vec};
use hyena::train::finetune::{encode_padded, finetune, FinetuneConfig, FinetuneRun};

fn tiny(l_max: usize) -> LmConfig {
    let mut c = small_lm(2, 8, 16, l_max, 8);
    c.operator.filter.shift = 0.05;
    c
}

/// Mean cross-entropy of the classifier on `toks [B, L]`, computed from `predict`'s logits with
/// an f64 log-softmax (a path independent of the training loss).
fn mean_ce(clf: &Model<SeqClassifier>, toks: &[u32], labels: &[usize], l: usize) -> f64 {
    let c = clf.net.head.n_classes();
    let logits = clf
        .net
        .predict(clf.p(), toks, labels.len(), l, &mut ClsWorkspace::default())
        .unwrap();
    let mut s = 0.0;
    for (row, &y) in logits.chunks_exact(c).zip(labels) {
        let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        s += lse - row[y] as f64;
    }
    s / labels.len() as f64
}

#[test]
fn classifier_gradients_match_finite_differences() {
    for pool in [Pool::Mean, Pool::Last] {
        let cfg = tiny(16);
        let (lm, mut params) = HyenaLm::fresh(&cfg, 3).unwrap();
        // Scale up the small init so every parameter visibly moves the loss.
        let mut k = 0u64;
        for s in params.specs().to_vec() {
            let d = s.handle.of_mut(params.data_mut());
            k += 1;
            if !s.name.contains("norm") && !s.name.contains("ln_f") {
                let r = rand_vec(d.len(), 50 + k, 0.4);
                for (x, n) in d.iter_mut().zip(r) {
                    *x += n;
                }
            }
        }
        let mut clf = SeqClassifier::from_backbone(Model { net: lm, params }, 3, pool, 1).unwrap();
        let head_w = clf.net.head.w;
        for (x, n) in head_w
            .of_mut(clf.params.data_mut())
            .iter_mut()
            .zip(rand_vec(24, 9, 1.0))
        {
            *x += n;
        }
        let (b, l) = (3, 11);
        let toks: Vec<u32> = rand_vec(b * l, 4, 1.0)
            .iter()
            .map(|v| 4 + ((v + 1.0) * 3.99) as u32)
            .collect();
        let labels = vec![2, 0, 1];
        let mut grads = clf.params.zeros();
        let st = clf
            .net
            .loss_and_grad(
                clf.p(),
                &toks,
                &labels,
                l,
                &mut ClsWorkspace::default(),
                &mut grads,
            )
            .unwrap();
        assert_eq!(st.count, 3);
        let loss0 = mean_ce(&clf, &toks, &labels, l);
        assert!((st.loss_sum / 3.0 - loss0).abs() < 1e-5 * loss0.abs().max(1.0));

        // The trainable tensors' gradients, by name, in the store's order.
        let named: Vec<(String, Vec<f32>)> = clf
            .params
            .specs()
            .iter()
            .filter(|s| s.trainable)
            .map(|s| (s.name.clone(), s.handle.of(&grads).to_vec()))
            .collect();
        assert!(named
            .iter()
            .any(|(n, _)| n == "head.output_transform.weight"));
        assert!(named.iter().any(|(n, _)| n == "head.output_transform.bias"));
        assert!(
            !named.iter().any(|(n, _)| n.contains("lm_head")),
            "the unused LM head is not trained"
        );
        for (name, g) in &named {
            let h = clf.params.spec(name).unwrap().handle;
            let x0 = h.of(clf.p()).to_vec();
            let f = |x: &[f32]| {
                let mut m = clf.clone();
                h.of_mut(m.params.data_mut()).copy_from_slice(x);
                mean_ce(&m, &toks, &labels, l)
            };
            check(name, &x0, g, f, 10, 1e-2, 5e-2).unwrap_or_else(|e| panic!("{pool}: {e}"));
        }
    }
}

#[test]
fn sequences_are_left_padded_and_truncated_on_the_right() {
    let mut out = Vec::new();
    assert!(!encode_padded(b"ACGTN", 8, &mut out));
    assert_eq!(out, vec![PAD_ID, PAD_ID, PAD_ID, 7, 8, 9, 10, 11]);
    out.clear();
    assert!(encode_padded(b"ACGTA", 3, &mut out));
    assert_eq!(out, vec![7, 8, 9], "keeps the first bases");
    out.clear();
    encode_padded(b"AcR", 3, &mut out);
    assert_eq!(
        out,
        vec![7, 6, 6],
        "case-sensitive; other letters are [UNK]"
    );
}

/// Class 0: A/T-rich sequences; class 1: G/C-rich; lengths vary (so padding is exercised).
fn gc_task(n: usize, seed: u64) -> Vec<Example> {
    let r = rand_vec(n * 40, seed, 1.0);
    (0..n)
        .map(|i| {
            let label = i % 2;
            let len = 20 + i % 13;
            let seq = (0..len)
                .map(|j| {
                    let u = (r[i * 40 + j] + 1.0) / 2.0;
                    let rich = u < 0.8;
                    let pick = (u * 1000.0) as usize % 2;
                    match (label, rich) {
                        (0, true) | (1, false) => b"AT"[pick],
                        _ => b"GC"[pick],
                    }
                })
                .collect();
            Example { seq, label }
        })
        .collect()
}

#[test]
fn finetuning_learns_a_separable_task_and_the_checkpoint_reloads() {
    let data = SeqClsDataset {
        classes: vec!["at".into(), "gc".into()],
        train: gc_task(256, 1),
        test: gc_task(64, 2),
    };
    let dir = TempDir::new("finetune");
    let run = FinetuneRun {
        data: dir.0.join("unused"),
        test_csv: None,
        init: None,
        model: tiny(64),
        finetune: FinetuneConfig {
            epochs: 4.0,
            batch_size: 16,
            optim: hyena::train::AdamWConfig {
                lr: 3e-3,
                ..FinetuneConfig::default().optim
            },
            eval_every: 20,
            ..FinetuneConfig::default()
        },
    };
    let out = dir.0.join("run");
    let mut evals = 0;
    let s = finetune(&run, &data, &out, &mut |e| {
        if let hyena::train::finetune::FinetuneEvent::Eval { .. } = e {
            evals += 1
        }
    })
    .unwrap();
    assert_eq!(s.steps, 64);
    assert_eq!(s.max_len, 32, "the longest training sequence");
    assert_eq!(evals, 4, "every 20 steps and at the end");
    assert!(
        s.test.accuracy >= 0.9,
        "accuracy {} on a separable task",
        s.test.accuracy
    );
    for f in [
        "config.json",
        "model.safetensors",
        "metrics.jsonl",
        "eval.json",
        "accuracy.png",
    ] {
        assert!(out.join(f).exists(), "{f} written");
    }
    // The saved classifier predicts what the trained one did.
    let loaded = load_model(&out).unwrap();
    let classes = loaded.section::<Vec<String>>("classes").unwrap().unwrap();
    let max_len = loaded
        .section::<FinetuneConfig>("finetune")
        .unwrap()
        .unwrap()
        .max_len
        .unwrap();
    let clf = loaded
        .downcast::<Model<SeqClassifier>>("this test")
        .unwrap();
    assert_eq!(classes, data.classes);
    assert_eq!(max_len, 32);
    let mut toks = Vec::new();
    for e in &data.test {
        encode_padded(&e.seq, 32, &mut toks);
    }
    let logits = clf
        .net
        .predict(
            clf.p(),
            &toks,
            data.test.len(),
            32,
            &mut ClsWorkspace::default(),
        )
        .unwrap();
    let correct = logits
        .chunks_exact(2)
        .zip(&data.test)
        .filter(|(r, e)| usize::from(r[1] > r[0]) == e.label)
        .count();
    assert_eq!(correct, s.test.correct);
    // The backbone still loads as a language model.
    let run_dir = RunDir::open(&out).unwrap();
    let lm = load_run(&run_dir.config, &run_dir.weights, &run_dir.dir).unwrap();
    assert_eq!(
        max_abs_diff(lm.net.wte.of(lm.p()), clf.net.lm.wte.of(clf.p())),
        0.0
    );
    // Fine-tuning again from the saved backbone (the pretrained-model path; with strand
    // augmentation, which keeps A/T- and G/C-richness): its config is the saved one, whatever
    // `model` says.
    let again = FinetuneRun {
        init: Some(out.clone()),
        model: tiny(8),
        finetune: FinetuneConfig {
            epochs: 0.25,
            rc_aug: true,
            ..run.finetune.clone()
        },
        ..run.clone()
    };
    let s2 = finetune(&again, &data, &dir.0.join("again"), &mut |_| {}).unwrap();
    assert_eq!(s2.steps, 4);
    assert!(s2.test.accuracy >= 0.9, "{}", s2.test.accuracy);
    let saved = read_json(&dir.0.join("again/config.json")).unwrap();
    assert_eq!(saved["model"]["operator"]["l_max"], 64);
    // A second run into the same directory is refused.
    let e = finetune(&run, &data, &out, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("already holds"), "{e}");
}

#[test]
fn finetuning_errors_are_clear() {
    let data = SeqClsDataset {
        classes: vec!["at".into(), "gc".into()],
        train: gc_task(8, 1),
        test: gc_task(4, 2),
    };
    let dir = TempDir::new("finetune-err");
    let mut run = FinetuneRun {
        data: dir.0.join("d"),
        test_csv: None,
        init: None,
        model: tiny(16),
        finetune: FinetuneConfig::default(),
    };
    // Sequences of up to 32 bases do not fit a model with l_max 16.
    let e = finetune(&run, &data, &dir.0.join("a"), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_len") && e.contains("l_max"), "{e}");
    run.finetune.max_len = Some(16);
    let one_class = SeqClsDataset {
        classes: vec!["at".into()],
        ..data.clone()
    };
    let e = finetune(&run, &one_class, &dir.0.join("b"), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 2 classes"), "{e}");
    let e = load_model(&dir.0).err().unwrap().to_string();
    assert!(e.contains("config.json"), "{e}");
}
