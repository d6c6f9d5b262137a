//! Training zoo architectures on MAD tasks: a small run must learn, and the protocol pieces
//! (schedule, early stop, both averages) behave as documented.

use hyena::data::mad::{baseline, generate, MadTask};
use hyena::models::zoo::{parse_layers, ArchConfig};
use hyena::train::mad::{cosine_lr, train_run, MadTrainConfig};

#[test]
fn cosine_schedule_endpoints() {
    assert_eq!(cosine_lr(1e-3, 1e-6, 0, 10), 1e-3);
    assert!((cosine_lr(1e-3, 1e-6, 10, 10) - 1e-6).abs() < 1e-9);
    assert!((cosine_lr(1e-3, 1e-6, 5, 10) - (1e-3 + 1e-6) / 2.0).abs() < 1e-8);
}

/// `estimate_mad` multiplies out the protocol it is given: the settings of the sweep table,
/// every (lr, wd) run, the epochs a token budget allows, and steps of the batch size.
#[test]
fn estimate_multiplies_out_the_protocol() {
    use hyena::data::mad::sweep;
    use hyena::train::mad::{estimate_mad, MadProtocol};
    let arch = ArchConfig {
        layers: parse_layers("hyena,swiglu").unwrap(),
        d_model: 16,
        ..ArchConfig::default()
    };
    let task = MadTask::Memorization;
    // Quick: the baseline only, one run, epochs = ceil(budget / tokens per epoch).
    let mut quick = MadProtocol::quick();
    quick.token_budget = Some(100_000);
    let mut seen = 0;
    let q = estimate_mad(&arch, &[task], &quick, &mut |_| seen += 1).unwrap();
    assert_eq!((q.len(), seen), (1, 1));
    let e = &q[0];
    let per_epoch = 256 * 32; // 256 sequences of 32 tokens
    assert_eq!(e.label, "baseline");
    assert_eq!(e.runs, 1);
    assert_eq!(e.epochs, 100_000usize.div_ceil(per_epoch));
    assert_eq!(e.steps_per_epoch, 256 / quick.train.batch);
    assert!(e.step_seconds > 0.0, "{e:?}");
    let lower = (e.runs * e.epochs * e.steps_per_epoch) as f64 * e.step_seconds;
    // Plus evaluation on the 1,280 test sequences each epoch: forward only, less than a step
    // per batch.
    let eval_max =
        (e.runs * e.epochs * 1280usize.div_ceil(quick.train.batch)) as f64 * e.step_seconds;
    assert!(e.seconds > lower && e.seconds < lower + eval_max, "{e:?}");
    // Full: every setting of the sweep table, 3 lr × 2 wd, 200 epochs, batch 128.
    let mut full = MadProtocol::full();
    full.train.epochs = 200;
    let f = estimate_mad(&arch, &[task], &full, &mut |_| {}).unwrap();
    assert_eq!(f.len(), sweep(task).len());
    assert!(f
        .iter()
        .all(|e| e.runs == 6 && e.epochs == 200 && e.steps_per_epoch == 2));
    assert!(f
        .iter()
        .all(|e| e.step_seconds > 0.0 && e.seconds.is_finite()));
}

/// A protocol interrupted after some settings goes on from their records: those settings are
/// not trained again, the others are, and the report equals the uninterrupted one. Records of
/// another protocol are not reused.
#[test]
fn run_mad_resumes_from_setting_records() {
    use hyena::data::mad::sweep;
    use hyena::train::mad::{run_mad, MadEvent, MadProtocol, MadReport, SettingRecord};
    let arch = ArchConfig {
        layers: parse_layers("hyena,swiglu").unwrap(),
        d_model: 16,
        ..ArchConfig::default()
    };
    let task = MadTask::Memorization;
    let mut proto = MadProtocol::full();
    proto.train.epochs = 1;
    proto.lrs = vec![1e-3];
    proto.weight_decays = vec![0.0];
    let run = |p: &MadProtocol, done: &[SettingRecord]| {
        let (mut recs, mut started, mut resumed) = (Vec::new(), 0, 0);
        let r = run_mad("hyena,swiglu", &arch, &[task], p, done, &mut |e| match e {
            MadEvent::RunStart { .. } => started += 1,
            MadEvent::SettingEnd {
                record,
                resumed: true,
            } => {
                resumed += 1;
                assert!(done.contains(record));
            }
            MadEvent::SettingEnd { record, .. } => recs.push((**record).clone()),
            _ => {}
        })
        .unwrap();
        (r, recs, started, resumed)
    };
    let n = sweep(task).len();
    let (full, recs, started, resumed) = run(&proto, &[]);
    assert_eq!((recs.len(), started, resumed), (n, n, 0));
    assert!(recs.iter().all(|r| r.result.seconds > 0.0));
    // Interrupted after 2 settings: 2 resumed, the rest trained, the same scores.
    let (again, recs2, started2, resumed2) = run(&proto, &recs[..2]);
    assert_eq!((recs2.len(), started2, resumed2), (n - 2, n - 2, 2));
    let scores =
        |r: &MadReport| -> Vec<f64> { r.tasks[0].settings.iter().map(|s| s.best_acc).collect() };
    assert_eq!(scores(&again), scores(&full));
    assert_eq!(again.tasks[0].settings[..2], full.tasks[0].settings[..2]);
    assert_eq!(again.overall, full.overall);
    // Another protocol (another learning rate) reuses nothing.
    let mut other = proto.clone();
    other.lrs = vec![5e-4];
    let (_, recs3, started3, resumed3) = run(&other, &recs);
    assert_eq!((recs3.len(), started3, resumed3), (n, n, 0));
}

/// A small run on memorization learns: the shared training loop with MAD's objective
/// (shuffled epochs, cosine schedule, per-epoch test) takes a Hyena + SwiGLU model well above
/// chance and its training loss well below the uniform guess.
#[test]
fn small_memorization_run_learns() {
    let mut s = baseline(MadTask::Memorization);
    s.seq_len = 32;
    s.num_train = 1024;
    s.num_test = 128;
    let data = generate(&s).unwrap();
    let arch = ArchConfig {
        layers: parse_layers("hyena,swiglu").unwrap(),
        d_model: 32,
        ..ArchConfig::default()
    };
    let cfg = MadTrainConfig {
        epochs: 24,
        batch: 32,
        ..MadTrainConfig::default()
    };
    let mut losses = Vec::new();
    let r = train_run(&arch, &data, 3e-3, 0.0, &cfg, &mut |e| {
        losses.push(e.train_loss)
    })
    .unwrap();
    let uniform = (s.vocab_size as f64).ln();
    assert!(r.final_train_loss < 0.7 * uniform, "{losses:?}");
    assert!(r.best_acc > 0.5, "best test accuracy {}", r.best_acc);
}
