//! `hyena train`'s library path end to end on a small FASTA file: the run directory, the
//! metrics, refusing to overwrite a run, resuming, and data errors.

mod common;

use common::small_lm;

use std::path::PathBuf;

use hyena::data::tokens::DataConfig;
use hyena::io::tokenizer::Tokenizer;
use hyena::train::lm::TrainConfig;
use hyena::train::run::{evaluate_run, run, EvalOptions, Event, RunConfig, Start};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hyena-run-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn small_run(fasta: PathBuf, steps: u64) -> RunConfig {
    let mut cfg = RunConfig {
        model: small_lm(1, 16, 32, 64, 8),
        ..RunConfig::default()
    };
    cfg.model.operator.filter.w = 10.0;
    cfg.model.operator.filter.shift = 0.05;
    cfg.train = TrainConfig {
        batch_size: 4,
        seq_len: 64,
        steps,
        eval_every: 2,
        eval_windows: 4,
        warmup: 1,
        ..TrainConfig::default()
    };
    cfg.data = DataConfig {
        fasta: vec![fasta],
        tokenizer: Tokenizer::Nucleotide { uppercase: true },
        markov_order: 3,
        ..DataConfig::default()
    };
    cfg
}

fn write_fasta(dir: &std::path::Path) -> PathBuf {
    let mut s = String::new();
    let mut x = 1u64;
    for r in 0..3 {
        s.push_str(&format!(">rec{r} test\n"));
        for _ in 0..40 {
            for _ in 0..60 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.push(b"ACGTacgt"[(x >> 61) as usize] as char);
            }
            s.push('\n');
        }
    }
    let p = dir.join("toy.fa");
    std::fs::write(&p, s).unwrap();
    p
}

#[test]
fn a_run_writes_its_directory_and_resumes() {
    let dir = tmpdir("ok");
    let fasta = write_fasta(&dir);
    let out = dir.join("run");
    let mut events = Vec::new();
    let cfg = small_run(fasta.clone(), 4);
    let sum = run(&cfg, &out, Start::New, &mut |e| {
        events.push(format!("{e:?}"))
    })
    .unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
        "metrics.jsonl",
        "loss.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"train\"")).count(),
        4
    );
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"eval\"")).count(),
        2
    );
    let last = sum.last_eval.clone().unwrap();
    assert!(last.bits_per_token.is_finite());
    // `hyena eval` on the run's own split with the run's window count reproduces the run's
    // last evaluation exactly, and its baselines are the run's.
    let opts = EvalOptions {
        max_windows: Some(cfg.train.eval_windows),
        ..EvalOptions::default()
    };
    let mut calls = 0;
    let rep = evaluate_run(&out, &opts, &mut |_, _| calls += 1).unwrap();
    assert_eq!(rep.stats.loss, last.loss);
    assert_eq!(rep.stats.accuracy, last.accuracy);
    assert_eq!(rep.stats.tokens, last.tokens);
    assert_eq!(rep.baselines.len(), sum.baselines.len());
    assert!(calls >= 1);
    // On explicit data, every window of it is scored.
    let opts = EvalOptions {
        data: Some(DataConfig {
            fasta: vec![fasta.clone()],
            ..DataConfig::default()
        }),
        ..EvalOptions::default()
    };
    let rep = evaluate_run(&out, &opts, &mut |_, _| {}).unwrap();
    assert_eq!(rep.stats.tokens, (3 * 2400 + 2 - 1) / 64 * 64);
    assert!(evaluate_run(&dir.join("nope"), &opts, &mut |_, _| {})
        .unwrap_err()
        .to_string()
        .contains("nope"));
    assert_eq!(sum.baselines.len(), 4, "unigram + orders 1..=3");
    assert!(events.iter().any(|e| e.contains("baselines")));
    // Lowercase input with uppercase=true: nothing unknown.
    assert!(!events.iter().any(|e| e.contains("outside the alphabet")));

    // A second run into the same directory is refused, and leaves the run intact.
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let err = run(&cfg, &out, Start::New, &mut |_: &Event| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("--resume"), "{err}");
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );

    // Resume to 6 steps: two more train lines, one more eval.
    let cfg6 = small_run(fasta, 6);
    run(&cfg6, &out, Start::Resume, &mut |_: &Event| {}).unwrap();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"train\"")).count(),
        6
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn data_problems_are_clear_errors() {
    let dir = tmpdir("bad");
    let out = dir.join("run");
    // Missing file.
    let err = run(
        &small_run(dir.join("nope.fa"), 2),
        &out,
        Start::New,
        &mut |_: &Event| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("nope.fa"), "{err}");
    // Empty file.
    std::fs::write(dir.join("empty.fa"), "").unwrap();
    let err = run(
        &small_run(dir.join("empty.fa"), 2),
        &out,
        Start::New,
        &mut |_: &Event| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("empty.fa"), "{err}");
    // Shorter than the window.
    std::fs::write(dir.join("short.fa"), ">s\nACGTACGTAC\n").unwrap();
    let err = run(
        &small_run(dir.join("short.fa"), 2),
        &out,
        Start::New,
        &mut |_: &Event| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("tokens"), "{err}");
    // Unknown characters are counted and reported.
    let mut s = String::from(">x\n");
    for i in 0..3000 {
        s.push(if i % 100 == 0 {
            'X'
        } else {
            b"ACGT"[i % 4] as char
        });
    }
    std::fs::write(dir.join("x.fa"), s).unwrap();
    let mut msgs = Vec::new();
    run(
        &small_run(dir.join("x.fa"), 1),
        &out,
        Start::New,
        &mut |e| msgs.push(format!("{e:?}")),
    )
    .unwrap();
    assert!(
        msgs.iter()
            .any(|m| m.contains("30 characters outside the alphabet")),
        "{msgs:?}"
    );
    assert!(!out.join("nothing").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The quick-start run (`hyena train` with no flags) is pinned: its config serialises to the
/// JSON text that the CLI's own default run wrote before it moved into the library (plus the
/// checkpoint-interval and non-finite-skip keys added since), byte for
/// byte (the start of `config.json`, and the `config:` line `hyena train` prints).
#[test]
fn quickstart_is_the_pinned_default_run() {
    let want = concat!(
        r#"{"model":{"vocab_size":12,"pad_vocab_size_multiple":8,"n_layer":2,"d_inner":512,"#,
        r#""layer_norm_epsilon":0.00001,"tie_embeddings":false,"operator":{"d_model":128,"#,
        r#""l_max":1024,"order":2,"short_filter_order":3,"filter":{"emb_dim":5,"filter_order":64,"#,
        r#""num_inner_mlps":2,"w":10.0,"modulate":true,"fast_decay_pct":0.3,"slow_decay_pct":1.5,"#,
        r#""target":0.01,"shift":0.05,"layout":"interleaved","learn_pos_emb":false}}},"#,
        r#""train":{"batch_size":8,"grad_accum":1,"seq_len":1024,"steps":1000,"eval_every":200,"#,
        r#""save_every":0,"skip_nonfinite":0,"eval_windows":512,"clip":1.0,"seed":0,"optim":{"lr":0.002,"beta1":0.9,"beta2":0.999,"#,
        r#""eps":1e-8,"weight_decay":0.1},"warmup":50,"min_lr_ratio":0.1},"#,
        r#""data":{"fasta":[],"text":[],"tokenizer":{"kind":"nucleotide","uppercase":true},"#,
        r#""val_fraction":0.05,"markov_order":8}}"#
    );
    let q = RunConfig::quickstart();
    assert_eq!(serde_json::to_string(&q).unwrap(), want);
    // And back, as a resumed run reads its `config.json`.
    let back: RunConfig = serde_json::from_str(want).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), want);
    // A run saved before `save_every` and `skip_nonfinite` existed reads as the same run.
    let old = want.replace(r#""save_every":0,"skip_nonfinite":0,"#, "");
    assert_ne!(old, want);
    assert_eq!(serde_json::from_str::<RunConfig>(&old).unwrap(), q);
}

/// The setters that `hyena train`'s flags use keep the quick start's proportions.
#[test]
fn run_config_setters_keep_the_proportions() {
    let mut c = RunConfig::quickstart();
    c.set_d_model(64);
    assert_eq!((c.model.operator.d_model, c.model.d_inner), (64, 256));
    c.set_seq_len(512);
    assert_eq!((c.train.seq_len, c.model.operator.l_max), (512, 512));
    c.set_steps(200);
    assert_eq!((c.train.steps, c.train.warmup), (200, 10));
    c.set_tokenizer(Tokenizer::Bytes);
    assert_eq!(c.model.vocab_size, Tokenizer::Bytes.vocab_size());

    let mut p = hyena::train::run::preset("hyenadna-tiny").unwrap();
    let margin = p.model.operator.l_max - p.train.seq_len;
    p.set_seq_len(4096);
    assert_eq!(p.model.operator.l_max, 4096 + margin);
}

/// A hand-written `--config` file: keys it leaves out take the quick-start run's values (the
/// learning rate among them), keys it sets win, and a key the config does not know is refused.
#[test]
fn config_files_fill_missing_keys_from_the_quick_start() {
    let dir = tmpdir("cfgfile");
    let p = dir.join("run.json");
    std::fs::write(
        &p,
        r#"{"train": {"steps": 7, "optim": {"weight_decay": 0.0}}}"#,
    )
    .unwrap();
    let c = RunConfig::read(&p).unwrap();
    let q = RunConfig::quickstart();
    assert_eq!(c.train.steps, 7);
    assert_eq!(c.train.optim.weight_decay, 0.0);
    assert_eq!(c.train.optim.lr, q.train.optim.lr);
    assert_eq!(c.train.optim.beta2, q.train.optim.beta2);
    assert_eq!(c.model, q.model);
    std::fs::write(&p, r#"{"train": {"stepz": 7}}"#).unwrap();
    let err = RunConfig::read(&p).unwrap_err().to_string();
    assert!(err.contains("stepz") && err.contains("run.json"), "{err}");
    std::fs::write(&p, "[1, 2]").unwrap();
    let err = RunConfig::read(&p).unwrap_err().to_string();
    assert!(err.contains("JSON object"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
