//! Training zoo architectures on MAD tasks: a small run must learn, and the protocol pieces
//! (schedule, early stop, both averages) behave as documented.

use hyena::models::zoo::{parse_layers, ArchConfig};
use hyena::tasks::mad::{baseline, generate, MadTask};
use hyena::train::mad::{cosine_lr, train_run, MadTrainConfig};

/// Throughput and learning-curve probe on the baseline in-context recall task:
/// `cargo test --release --test mad_train -- --ignored --nocapture`, with optional `MAD_ARCH`,
/// `MAD_EPOCHS`, `MAD_TRAIN` (examples), `MAD_BATCH` and `MAD_LR`.
#[test]
#[ignore]
fn recall_epoch_timing() {
    let layers = std::env::var("MAD_ARCH").unwrap_or("hyena,swiglu,hyena,swiglu".into());
    let epochs: usize = std::env::var("MAD_EPOCHS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let mut s = baseline(MadTask::InContextRecall);
    if let Some(n) = std::env::var("MAD_TRAIN").ok().and_then(|s| s.parse().ok()) {
        s.num_train = n;
    }
    let data = generate(&s).unwrap();
    let arch = ArchConfig {
        layers: parse_layers(&layers).unwrap(),
        ..ArchConfig::default()
    };
    let env = |k: &str| std::env::var(k).ok().and_then(|s| s.parse::<f64>().ok());
    let cfg = MadTrainConfig {
        epochs,
        batch: env("MAD_BATCH").map_or(128, |b| b as usize),
        ..MadTrainConfig::default()
    };
    let lr = env("MAD_LR").unwrap_or(1e-3) as f32;
    let r = train_run(&arch, &data, lr, 0.0, &cfg, &mut |e| {
        eprintln!(
            "epoch {} loss {:.4} macro {:.4} micro {:.4} lr {:.2e} {:.1}s",
            e.epoch, e.train_loss, e.test_macro, e.test_micro, e.lr, e.seconds
        )
    })
    .unwrap();
    eprintln!("{r:?}; tokens/s {:.0}", r.train_tokens as f64 / r.seconds);
}

#[test]
fn cosine_schedule_endpoints() {
    assert_eq!(cosine_lr(1e-3, 1e-6, 0, 10), 1e-3);
    assert!((cosine_lr(1e-3, 1e-6, 10, 10) - 1e-6).abs() < 1e-9);
    assert!((cosine_lr(1e-3, 1e-6, 5, 10) - (1e-3 + 1e-6) / 2.0).abs() < 1e-8);
}
