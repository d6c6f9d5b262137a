//! Distillation analyses: Hankel spectra and ESS of filters with a known rank, exact recovery
//! of low-order systems by the modal fit, the pole gradient against finite differences, the
//! refinement, and clear errors.

mod common;

use faer::c64;
use hyena::distill::hankel::{entropy_rank, hankel_singular_values, tolerance_rank};
use hyena::distill::modal::{
    fit_filter, fit_residues, max_order, pole_gradient, refine, FitOptions, OrderChoice,
};
use hyena::layers::hyena::modal::{ModalFilter, Mode};

/// A real pole (1 state) and two conjugate pairs (2 each): real order 5.
fn known_modes() -> Vec<Mode> {
    vec![
        Mode {
            pole: c64::new(0.9, 0.0),
            residue: c64::new(0.5, 0.0),
        },
        Mode {
            pole: c64::from_polar(0.95, 0.3),
            residue: c64::new(0.2, -0.1),
        },
        Mode {
            pole: c64::from_polar(0.7, 1.2),
            residue: c64::new(1.0, 0.5),
        },
    ]
}

fn known(l: usize) -> (ModalFilter, Vec<f32>) {
    let f = ModalFilter {
        h0: 0.3,
        modes: known_modes(),
    };
    let h = f.impulse(l).iter().map(|&v| v as f32).collect();
    (f, h)
}

fn sorted_poles(modes: &[Mode]) -> Vec<(f64, f64)> {
    let mut p: Vec<(f64, f64)> = modes.iter().map(|m| (m.pole.re, m.pole.im)).collect();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    p
}

#[test]
fn hankel_rank_and_ess_of_rank_r_filters() {
    // Well-separated modes: r = 1 (a real pole), 2 (a conjugate pair), 3, 6 (three pairs).
    let mode = |k: usize| match k {
        0 => (0.8f64, 0.0f64),
        1 => (0.9, 0.5),
        2 => (0.85, 1.3),
        _ => (0.75, 2.2),
    };
    for &l in &[64usize, 301, 1000] {
        for (r, ks) in [
            (1usize, vec![0]),
            (2, vec![1]),
            (3, vec![0, 1]),
            (6, vec![1, 2, 3]),
        ] {
            let h: Vec<f32> = (0..l)
                .map(|t| {
                    ks.iter()
                        .map(|&k| {
                            let (rho, w) = mode(k);
                            rho.powi(t as i32) * (w * t as f64 + 0.3).cos()
                        })
                        .sum::<f64>() as f32
                })
                .collect();
            let sv = hankel_singular_values(&h, 512).unwrap();
            assert_eq!(sv.len(), (l / 2).min(512));
            assert!(sv.windows(2).all(|w| w[0] >= w[1]), "sorted, largest first");
            assert_eq!(
                tolerance_rank(&sv, 1e-4),
                r,
                "L={l}, r={r}: {:?}",
                &sv[..r + 1]
            );
            let e = entropy_rank(&sv);
            assert!(
                e >= 1.0 - 1e-9 && e <= r as f64 + 1e-6,
                "entropy ESS {e} for rank {r}"
            );
        }
    }
    // The entropy ESS of r equal singular values is r; of one is 1; of none is 0.
    assert!((entropy_rank(&[2.0; 7]) - 7.0).abs() < 1e-12);
    assert!((entropy_rank(&[3.0, 0.0, 0.0]) - 1.0).abs() < 1e-12);
    assert_eq!(entropy_rank(&[0.0, 0.0]), 0.0);
    assert_eq!(tolerance_rank(&[0.0, 0.0], 1e-3), 0);
    // A delta (only h_0) has no memory: rank 0.
    let delta: Vec<f32> = (0..50).map(|t| if t == 0 { 1.0 } else { 0.0 }).collect();
    assert_eq!(
        tolerance_rank(&hankel_singular_values(&delta, 512).unwrap(), 1e-6),
        0
    );
}

#[test]
fn known_low_order_system_is_recovered_exactly() {
    for &l in &[120usize, 333, 1024] {
        let (f, h) = known(l);
        for order in [OrderChoice::Tolerance(1e-6), OrderChoice::Fixed(5)] {
            let rep = fit_filter(
                &h,
                order,
                &FitOptions {
                    refine_steps: 0,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(rep.filter.order(), 5, "L={l} {order:?}");
            assert_eq!(rep.filter.h0, f.h0 as f32 as f64);
            let (got, want) = (sorted_poles(&rep.filter.modes), sorted_poles(&f.modes));
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g.0 - w.0).abs() < 1e-5 && (g.1 - w.1).abs() < 1e-5,
                    "{got:?} vs {want:?}"
                );
            }
            // The taps are f32, so "exact" means to f32 rounding.
            assert!(
                rep.rel_err < 1e-6,
                "L={l} {order:?}: rel err {}",
                rep.rel_err
            );
        }
    }
}

#[test]
fn pole_gradient_matches_finite_differences() {
    let l = 200;
    let (_, h) = known(l);
    let h: Vec<f64> = h.iter().map(|&v| v as f64).collect();
    // Away from the optimum, so that the gradient is not ~0.
    let mut modes = known_modes();
    modes[0].pole = c64::new(0.85, 0.0);
    modes[1].pole = c64::from_polar(0.93, 0.33);
    modes[2].residue = c64::new(0.8, 0.7);
    let (_, g) = pole_gradient(&h, &modes);
    let eps = 1e-6;
    for i in 0..modes.len() {
        for comp in 0..2 {
            if comp == 1 && modes[i].is_real() {
                assert_eq!(g[i].1, 0.0, "real poles stay real");
                continue;
            }
            let shifted = |s: f64| {
                let mut m = modes.clone();
                if comp == 0 {
                    m[i].pole.re += s;
                } else {
                    m[i].pole.im += s;
                }
                pole_gradient(&h, &m).0
            };
            let fd = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
            let an = if comp == 0 { g[i].0 } else { g[i].1 };
            assert!(
                (fd - an).abs() <= 1e-5 * fd.abs().max(1.0),
                "mode {i} comp {comp}: analytic {an} vs finite difference {fd}"
            );
        }
    }
}

#[test]
fn refinement_recovers_perturbed_poles() {
    let l = 400;
    let (f, h) = known(l);
    let h: Vec<f64> = h.iter().map(|&v| v as f64).collect();
    let poles: Vec<c64> = f
        .modes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let d = if m.is_real() {
                c64::new(0.01, 0.0)
            } else {
                c64::new(-0.01, 0.01 * i as f64)
            };
            m.pole + d
        })
        .collect();
    let (start, e0) = fit_residues(&h, &poles);
    let (_, e1) = refine(&h, start, 400, 3e-3);
    assert!(
        e1 < 1e-4 * e0,
        "refinement: squared error {e0:.3e} → {e1:.3e}"
    );
}

#[test]
fn distilling_a_smooth_decaying_filter_improves_with_order() {
    // Not a finite-order system: a Gaussian-windowed chirp, like trained implicit filters.
    let l = 512;
    let h: Vec<f32> = (0..l)
        .map(|t| {
            let t = t as f64;
            ((-t / 60.0).exp() * (0.05 * t + 0.0004 * t * t).cos()) as f32
        })
        .collect();
    let opts = FitOptions::default();
    let mut last = f64::INFINITY;
    for order in [2, 6, 12, 24] {
        let rep = fit_filter(&h, OrderChoice::Fixed(order), &opts).unwrap();
        assert!(rep.filter.order() <= order);
        assert!(
            rep.rel_err <= rep.rel_err_initial,
            "refinement keeps the best fit"
        );
        assert!(
            rep.rel_err < last,
            "order {order}: {} !< {last}",
            rep.rel_err
        );
        assert!(
            rep.filter
                .modes
                .iter()
                .all(|m| m.pole.norm() <= 1.0 + 1e-12),
            "stable"
        );
        last = rep.rel_err;
    }
    assert!(last < 1e-2, "order 24 rel err {last}");
}

/// Trained HyenaDNA filters keep a non-decaying part (window `exp(−t|δ|) + shift`): ERA then
/// finds poles on or past the unit circle, which are clipped to it; the clipped duplicates must
/// not break the least-squares residues (this one is order 3: a double pole at 1 and 0.9).
#[test]
fn non_decaying_filters_fit_with_poles_on_the_unit_circle() {
    for &l in &[200usize, 1024] {
        let h: Vec<f32> = (0..l)
            .map(|t| (0.05 - 1e-4 * t as f64 + 0.5 * 0.9f64.powi(t as i32)) as f32)
            .collect();
        for order in [3, 4, 8] {
            let rep = fit_filter(&h, OrderChoice::Fixed(order), &FitOptions::default()).unwrap();
            assert!(rep
                .filter
                .modes
                .iter()
                .all(|m| m.pole.norm() <= 1.0 + 1e-12));
            assert!(rep.filter.modes.iter().all(|m| m.residue.re.is_finite()));
            assert!(
                rep.rel_err < 1e-3,
                "L={l} order {order}: rel err {}",
                rep.rel_err
            );
        }
    }
}

#[test]
fn bad_filters_and_orders_are_clear_errors() {
    let (_, mut h) = known(64);
    let e = fit_filter(&h, OrderChoice::Fixed(40), &FitOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("40") && e.contains(&max_order(64).to_string()) && e.contains("64"),
        "{e}"
    );
    let e = fit_filter(&h, OrderChoice::Tolerance(-1.0), &FitOptions::default()).unwrap_err();
    assert!(e.to_string().contains("tol"), "{e}");
    h[17] = f32::NAN;
    let e = fit_filter(&h, OrderChoice::Fixed(4), &FitOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("h[17]"), "{e}");
    assert!(hankel_singular_values(&h, 512).is_err());
    assert!(fit_filter(&[], OrderChoice::Fixed(1), &FitOptions::default()).is_err());
}

mod model {
    use super::common::small_lm;
    use hyena::checkpoint::{load_model, save_model};
    use hyena::distill::model::{distill_lm, save_distilled, DistillConfig};
    use hyena::models::generate::DecodeMode;
    use hyena::models::hyenadna::{HyenaLm, LmCache};
    use hyena::models::{LanguageModel, Model};

    fn lm() -> Model<HyenaLm> {
        let cfg = small_lm(2, 8, 16, 96, 8);
        let (net, params) = HyenaLm::fresh(&cfg, 4).unwrap();
        Model { net, params }
    }

    fn logits(m: &Model<HyenaLm>, toks: &[u32]) -> Vec<f32> {
        let mut c = LmCache::default();
        m.net.forward(m.p(), toks, 1, toks.len(), &mut c).unwrap();
        c.logits
    }

    /// The model `dir` holds, as a HyenaDNA LM.
    fn load_lm(dir: &std::path::Path) -> Model<HyenaLm> {
        load_model(dir)
            .unwrap()
            .downcast::<Model<HyenaLm>>("this test")
            .unwrap()
            .clone()
    }

    #[test]
    fn distilled_model_round_trips_and_tracks_the_original() {
        let lm = lm();
        let toks: Vec<u32> = (0..96).map(|t| (t * 7 % 11) as u32).collect();
        let cfg = DistillConfig {
            order: Some(16),
            tol: None,
            refine_steps: 50,
            ..Default::default()
        };
        let count = std::sync::atomic::AtomicUsize::new(0);
        let (rlm, fits) = distill_lm(&lm, &cfg, &|_, _| {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(fits.len(), 2 * 8);
        assert_eq!(count.into_inner(), 16, "progress once per filter");
        assert!(fits.iter().all(|f| f.order <= 16 && f.rel_err.is_finite()));
        // Close to the original at order 16.
        let (a, b) = (logits(&lm, &toks), logits(&rlm, &toks));
        let worst = a
            .iter()
            .zip(&b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        let worst_fit = fits.iter().fold(0.0f64, |m, f| m.max(f.rel_err));
        assert!(
            worst < 1e-2,
            "logits moved by {worst} (worst filter rel err {worst_fit})"
        );

        let dir = std::env::temp_dir().join(format!("hyena-distill-{}", std::process::id()));
        save_distilled(&rlm, &cfg, &serde_json::json!({"note": "kept"}), &dir).unwrap();
        let back = load_lm(&dir);
        assert!(back.net.is_recurrent());
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(v["note"], "kept");
        assert_eq!(v["distill"]["order"], 16);
        // The checkpoint stores f32 modes: the reloaded model equals the saved one up to that.
        let c = logits(&back, &toks);
        let plain_load = load_lm(&dir);
        assert_eq!(
            logits(&plain_load, &toks),
            c,
            "load_model also uses the modal filters"
        );
        let worst = b
            .iter()
            .zip(&c)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(worst < 1e-4, "reload moved logits by {worst}");
        // ...and its recurrence equals its own forward.
        let mut st = back.net.empty_state().unwrap();
        let vp = back.net.cfg.padded_vocab();
        for (t, &tok) in toks.iter().enumerate() {
            back.net.step(back.p(), tok, &mut st).unwrap();
            for (x, y) in st.logits.iter().zip(&c[t * vp..(t + 1) * vp]) {
                assert!((x - y).abs() <= 1e-4, "t={t}: {x} vs {y}");
            }
        }
        // Saving again over it, then loading the plain original as distilled, is refused.
        let plain = dir.join("plain");
        save_model(
            &{
                std::fs::create_dir_all(&plain).unwrap();
                plain.clone()
            },
            &lm,
        )
        .unwrap();
        let plain_back = load_lm(&plain);
        assert!(!plain_back.net.is_recurrent());
        let e = plain_back
            .decoder(DecodeMode::Recurrent)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a distilled model"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_distill_settings_are_clear_errors() {
        let lm = lm();
        let both = DistillConfig {
            order: Some(4),
            tol: Some(1e-3),
            ..Default::default()
        };
        let e = distill_lm(&lm, &both, &|_, _| {}).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        let big = DistillConfig {
            order: Some(200),
            tol: None,
            ..Default::default()
        };
        let e = distill_lm(&lm, &big, &|_, _| {}).unwrap_err().to_string();
        assert!(
            e.contains("layer 0") && e.contains("200") && e.contains("96"),
            "{e}"
        );
    }
}

mod ess {
    use super::common::small_lm;
    use hyena::distill::ess::{filter_ess, operator_ess};
    use hyena::models::hyenadna::HyenaLm;
    use hyena::models::Model;

    /// Filters of known Hankel rank: channel c is a sum of `1 + c % 3` damped cosines (rank
    /// 2 each) → rank 2, 4 or 6.
    fn known_rank_lm(l: usize) -> (Model<HyenaLm>, Vec<usize>) {
        let d = 6;
        let cfg = small_lm(2, d, 12, l, 8);
        let (mut lm, params) = HyenaLm::fresh(&cfg, 2).unwrap();
        let ranks: Vec<usize> = (0..d).map(|c| 2 * (1 + c % 3)).collect();
        let mut k = vec![0.0f32; d * l];
        for c in 0..d {
            for t in 0..l {
                k[c * l + t] = (0..ranks[c] / 2)
                    .map(|j| {
                        let (rho, w) = (0.97 - 0.05 * j as f64, 0.3 + 0.7 * j as f64);
                        rho.powi(t as i32) * (w * t as f64).cos()
                    })
                    .sum::<f64>() as f32;
            }
        }
        for i in 0..2 {
            lm.operator_mut(i)
                .set_explicit_filters(Some(k.clone()))
                .unwrap();
        }
        (Model { net: lm, params }, ranks)
    }

    #[test]
    fn ess_of_known_rank_filters_is_their_rank() {
        let l = 128;
        let (lm, ranks) = known_rank_lm(l);
        let f = filter_ess(&lm, 1e-4, 512, &mut |_, _| {}).unwrap();
        assert_eq!(f.len(), 2);
        for layer in &f {
            let tol: Vec<usize> = layer.channels.iter().map(|c| c.0 as usize).collect();
            assert_eq!(tol, ranks, "filter tolerance-ESS");
            assert_eq!(layer.tolerance_total as usize, ranks.iter().sum::<usize>());
            for (c, &(_, e)) in layer.channels.iter().enumerate() {
                assert!(e >= 1.0 && e <= ranks[c] as f64 + 1e-9, "entropy-ESS {e}");
            }
        }
        // Gating by non-zero diagonal factors keeps the rank: the operator ESS on an input
        // equals the filter's rank (gates from a random input are almost surely non-zero).
        let toks: Vec<u32> = (0..l).map(|t| (7 + (t * 5 + t / 3) % 4) as u32).collect();
        let o = operator_ess(&lm, &toks, 1e-6, &mut |_, _| {}).unwrap();
        for layer in &o {
            let tol: Vec<usize> = layer.channels.iter().map(|c| c.0 as usize).collect();
            assert_eq!(tol, ranks, "operator tolerance-ESS, layer {}", layer.layer);
        }
        assert!(operator_ess(&lm, &toks[..4], 1e-3, &mut |_, _| {}).is_err());
        assert!(filter_ess(&lm, 0.0, 512, &mut |_, _| {})
            .unwrap_err()
            .to_string()
            .contains("tol"));
    }
}
