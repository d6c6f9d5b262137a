//! The memory-lean inference path (`models::hyenadna::lean`, on `layers::lean`) and its two kernels: the single-row FFT
//! convolution and the chunked short filter, each against a slow reference, and the whole lean
//! forward against the training forward at several lengths and chunk sizes.

mod common;

use common::max_abs_diff;
use hyena::layers::lean::{InferWorkspace, ResidualStore};
use hyena::models::hyenadna::{HyenaLm, LmCache, LmConfig};
use hyena::models::Model;
use hyena::ops::fftconv::{reference, GatedConv, RowConv, RowLayout};
use hyena::ops::short_conv::{self, forward_rows_carry};
use hyena::testing::rand_vec;

#[test]
fn row_conv_matches_direct_convolution() {
    for l in [1usize, 2, 7, 64, 100, 257, 1000] {
        let conv = RowConv::new(l).unwrap();
        let mut s = conv.scratch();
        let w = rand_vec(l, l as u64, 1.0);
        let k = rand_vec(l, 7 + l as u64, 0.5);
        let d = [0.37f32];
        let (want, _) = reference::gated_forward(&GatedConv {
            layout: RowLayout::bcl(1, 1, l),
            u: &w,
            pre: None,
            post: None,
            k: &k,
            d: &d,
        });
        let mut got = w.clone();
        conv.conv_inplace(&mut got, &k, d[0], &mut s).unwrap();
        let err = max_abs_diff(&got, &want);
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        assert!(
            err <= 2e-6 * scale,
            "L={l}: max abs err {err} (scale {scale})"
        );
        // Reusing the scratch gives the same result.
        let mut again = w.clone();
        conv.conv_inplace(&mut again, &k, d[0], &mut s).unwrap();
        assert_eq!(again, got);
    }
    let conv = RowConv::new(10).unwrap();
    let mut s = conv.scratch();
    assert!(conv
        .conv_inplace(&mut [0.0; 9], &[0.0; 10], 0.0, &mut s)
        .is_err());
    assert!(RowConv::new(0).is_err());
}

#[test]
fn chunked_short_filter_equals_whole_sequence() {
    let (c, k) = (5usize, 3usize);
    let w = rand_vec(c * k, 1, 0.7);
    let b = rand_vec(c, 2, 0.3);
    for l in [1usize, 2, 5, 64, 101] {
        let x_rows = rand_vec(l * c, 3 + l as u64, 1.0); // [L, C]
                                                         // Reference on channel-major rows [C, L].
        let mut x_cl = vec![0.0f32; c * l];
        for t in 0..l {
            for ch in 0..c {
                x_cl[ch * l + t] = x_rows[t * c + ch];
            }
        }
        let want_cl = short_conv::reference::forward(&x_cl, &w, &b, k, RowLayout::bcl(1, c, l));
        for chunk in [1usize, 2, 3, 7, 64, 1000] {
            let mut carry = vec![0.0f32; (k - 1) * c];
            let mut got = vec![0.0f32; l * c];
            for t0 in (0..l).step_by(chunk) {
                let t1 = (t0 + chunk).min(l);
                forward_rows_carry(
                    &x_rows[t0 * c..t1 * c],
                    &w,
                    &b,
                    k,
                    c,
                    &mut carry,
                    &mut got[t0 * c..t1 * c],
                )
                .unwrap();
            }
            let mut err = 0.0f32;
            for t in 0..l {
                for ch in 0..c {
                    err = err.max((got[t * c + ch] - want_cl[ch * l + t]).abs());
                }
            }
            assert!(err < 1e-6, "L={l} chunk={chunk}: {err}");
        }
    }
}

/// `filter_order` 16 < d_model exercises the lean forward's channel split (the filter MLP's
/// output kept inside `Y`); 32 > d_model, the separate `hidden` buffer.
fn model_with(l_max: usize, tie: bool, seed: u64, filter_order: usize) -> Model<HyenaLm> {
    // Width 20: not a multiple of the 16-channel filter group.
    let mut cfg = LmConfig::hyenadna(20, 2, l_max);
    cfg.d_inner = 48;
    cfg.tie_embeddings = tie;
    cfg.operator.filter.filter_order = filter_order;
    let (net, mut params) = HyenaLm::fresh(&cfg, seed).unwrap();
    // Move every parameter well away from its init so that each one matters.
    let mut i = 0u64;
    let specs = params.specs().to_vec();
    for s in &specs {
        let d = s.handle.of_mut(params.data_mut());
        i += 1;
        let r = rand_vec(d.len(), 50 + i, 0.3);
        for (x, n) in d.iter_mut().zip(r) {
            *x += n;
        }
    }
    Model { net, params }
}

fn model(l_max: usize, tie: bool, seed: u64) -> Model<HyenaLm> {
    model_with(l_max, tie, seed, 16)
}

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    rand_vec(n, seed, 1.0)
        .iter()
        .map(|v| 7 + ((v + 1.0) * 2.499) as u32)
        .collect()
}

#[test]
fn lean_forward_equals_training_forward() {
    let l_max = 300;
    for (tie, seed, order) in [(false, 1u64, 16), (true, 2, 16), (false, 3, 32)] {
        let m = model_with(l_max, tie, seed, order);
        let (lm, p) = (&m.net, m.p());
        let (d, vp) = (lm.cfg.d_model(), lm.cfg.padded_vocab());
        for l in [1usize, 7, 100, 257, 300] {
            let toks = tokens(l, 10 + l as u64);
            let mut cache = LmCache::default();
            lm.forward(p, &toks, 1, l, &mut cache).unwrap();
            let logits = &cache.logits;
            // Log-likelihoods from the training forward's logits.
            let want: Vec<f32> = (0..l.saturating_sub(1))
                .map(|t| {
                    let row = &logits[t * vp..(t + 1) * vp];
                    let mx = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
                    let lse = mx + row.iter().map(|&v| (v as f64 - mx).exp()).sum::<f64>().ln();
                    (row[toks[t + 1] as usize] as f64 - lse) as f32
                })
                .collect();
            for chunk in [3usize, 64, 2048] {
                let mut ws = InferWorkspace::new(chunk);
                let mut lp = Vec::new();
                let total = lm.log_likelihood(p, &toks, &mut ws, &mut lp).unwrap();
                assert_eq!(lp.len(), l - 1);
                let err = max_abs_diff(&lp, &want);
                assert!(err < 1e-4, "L={l} chunk={chunk} tie={tie}: {err}");
                let sum: f64 = want.iter().map(|&v| v as f64).sum();
                assert!((total - sum).abs() < 1e-4 * (l as f64), "{total} vs {sum}");
                // Final hidden states · headᵀ are the logits.
                let h = lm.hidden_states(p, &toks, 2, &mut ws).unwrap().to_vec();
                let head = lm.lm_head().of(p);
                let mut lg = vec![0.0f32; l * vp];
                for t in 0..l {
                    for v in 0..vp {
                        lg[t * vp + v] = (0..d).map(|j| h[t * d + j] * head[v * d + j]).sum();
                    }
                }
                let err = max_abs_diff(&lg, logits);
                assert!(err < 2e-4, "L={l} chunk={chunk}: logits {err}");
            }
        }
    }
}

#[test]
fn lean_forward_is_causal_and_reuses_its_workspace() {
    let m = model(200, false, 3);
    let (lm, p) = (&m.net, m.p());
    let toks = tokens(150, 4);
    let mut ws = InferWorkspace::new(32);
    let a = lm.hidden_states(p, &toks, 1, &mut ws).unwrap().to_vec();
    // A longer sequence with the same prefix: the prefix's states do not change.
    let mut longer = toks.clone();
    longer.extend(tokens(50, 5));
    let b = lm.hidden_states(p, &longer, 1, &mut ws).unwrap().to_vec();
    assert!(max_abs_diff(&a, &b[..a.len()]) < 1e-5);
    // Back to the short one in the grown workspace: the same numbers.
    let c = lm.hidden_states(p, &toks, 1, &mut ws).unwrap().to_vec();
    assert!(max_abs_diff(&a, &c) < 1e-6);
    // Layer 0 is the embedding rows.
    let e = lm
        .hidden_states(p, &toks[..3], 0, &mut ws)
        .unwrap()
        .to_vec();
    let d = lm.cfg.d_model();
    let t0 = toks[0] as usize;
    assert_eq!(&e[..d], &lm.wte.of(p)[t0 * d..(t0 + 1) * d]);
    // Errors: too long, a bad layer, a bad token, empty.
    assert!(lm.hidden_states(p, &tokens(201, 6), 2, &mut ws).is_err());
    assert!(lm.hidden_states(p, &toks, 3, &mut ws).is_err());
    assert!(lm.hidden_states(p, &[99], 2, &mut ws).is_err());
    assert!(lm.hidden_states(p, &[], 2, &mut ws).is_err());
}

#[test]
fn packed_residual_stays_within_its_rounding() {
    let m = model(300, false, 7);
    let (lm, p) = (&m.net, m.p());
    for l in [1usize, 100, 257, 300] {
        let toks = tokens(l, 20 + l as u64);
        for chunk in [3usize, 64] {
            let mut exact = InferWorkspace::new(chunk).with_residual(ResidualStore::F32);
            let want = lm.hidden_states(p, &toks, 2, &mut exact).unwrap().to_vec();
            assert!(!exact.residual_packed());
            let mut ws = InferWorkspace::new(chunk).with_residual(ResidualStore::Packed24);
            let got = lm.hidden_states(p, &toks, 2, &mut ws).unwrap().to_vec();
            assert!(ws.residual_packed());
            // 2 stores per block of relative error <= 2^-16, through 2 blocks and ln_f (which
            // divides by the row's std, about 1 here).
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = max_abs_diff(&got, &want);
            assert!(
                err <= 2e-4 * scale,
                "L={l} chunk={chunk}: {err} (scale {scale})"
            );
            assert!(err > 0.0, "the packed run rounded nothing");
            let mut lp_exact = Vec::new();
            let mut lp = Vec::new();
            let a = lm
                .log_likelihood(p, &toks, &mut exact, &mut lp_exact)
                .unwrap();
            let b = lm.log_likelihood(p, &toks, &mut ws, &mut lp).unwrap();
            assert!(max_abs_diff(&lp, &lp_exact) < 1e-3, "L={l}");
            assert!((a - b).abs() < 1e-3 * l as f64);
            // The packed workspace gives the same numbers when reused.
            let again = lm.hidden_states(p, &toks, 2, &mut ws).unwrap().to_vec();
            assert_eq!(again, got);
        }
    }
    // Auto packs only long sequences.
    let mut ws = InferWorkspace::new(64);
    lm.hidden_states(p, &tokens(50, 1), 1, &mut ws).unwrap();
    assert!(!ws.residual_packed());
}

/// The packed residual on the HyenaDNA-large shape (random weights) at 64K bases, against f32:
/// `cargo test --release --test infer -- --ignored --nocapture`.
#[test]
#[ignore]
fn packed_residual_error_on_the_large_shape() {
    let l = 65_536;
    let (lm, params) = HyenaLm::fresh(&LmConfig::hyenadna(256, 8, l + 2), 0).unwrap();
    let p = params.data();
    let toks = tokens(l, 5);
    let mut exact = InferWorkspace::new(2048).with_residual(ResidualStore::F32);
    let want = lm.hidden_states(p, &toks, 8, &mut exact).unwrap().to_vec();
    let mut ws = InferWorkspace::new(2048).with_residual(ResidualStore::Packed24);
    let got = lm.hidden_states(p, &toks, 8, &mut ws).unwrap().to_vec();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = max_abs_diff(&got, &want);
    let mean_err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs() as f64)
        .sum::<f64>()
        / got.len() as f64;
    eprintln!("L={l}: max abs diff {err:.3e}, mean {mean_err:.3e}, max |h| {scale:.3}");
    assert!(err <= 1e-3 * scale);
}

/// `hidden_states_owned` moves the rows out of the workspace: the same bits as
/// `hidden_states`, for every layer, with the residual stream in f32 and packed, and the
/// workspace it emptied gives the same numbers on its next runs (longer and shorter).
#[test]
fn owned_hidden_states_equal_the_borrowed_ones_and_leave_a_working_workspace() {
    use hyena::models::LanguageModel;
    let m = model(300, false, 7);
    for store in [ResidualStore::F32, ResidualStore::Packed24] {
        let mut ws = InferWorkspace::new(48).with_residual(store);
        let mut fresh = InferWorkspace::new(48).with_residual(store);
        for (len, layer) in [(200, 2), (77, 1), (299, 2), (5, 0), (120, 2)] {
            let toks = tokens(len, 10 + len as u64);
            let owned = m.hidden_states_owned(&toks, layer, &mut ws).unwrap();
            let want = m.hidden_states(&toks, layer, &mut fresh).unwrap();
            assert_eq!(owned.len(), len * m.net.cfg.d_model(), "{store:?} {len}");
            assert_eq!(owned, want, "{store:?} len {len} layer {layer}");
        }
    }
}
