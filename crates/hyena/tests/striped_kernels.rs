//! The StripedHyena 2 inference kernels against their slow references, at several lengths
//! including non-powers of two and lengths shorter than the filters: grouped FIRs in both tap
//! orders, the modal (LI) recurrence, rotary embeddings, blocked causal attention, the
//! eps-on-the-RMS RMSNorm, the erf GELU and products with bf16 weights.

use hyena::ops::act::{gelu_erf_inplace, reference as act_ref};
use hyena::ops::attention::{
    causal_attention, exp_nonpositive, reference as att_ref, rotary_inplace, QBLOCK,
};
use hyena::ops::fir::{expand_taps, fir_forward, reference as fir_ref, FirOrder, FirShape};
use hyena::ops::linear::{linear_weight, reference as lin_ref, Weight};
use hyena::ops::modal::{modal_complex_forward, modal_forward, reference as modal_ref};
use hyena::ops::norm::{reference as norm_ref, rmsnorm_rms_eps_forward};
use hyena::params::{bf16_to_f32, f32_to_bf16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn randn(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn grouped_fir_matches_reference_in_both_orders() {
    let mut rng = StdRng::seed_from_u64(1);
    for &(l, c, g, k) in &[
        (1, 8, 2, 7),
        (5, 8, 2, 7),
        (37, 12, 3, 7),
        (100, 16, 4, 128),
        (200, 16, 16, 3),
        (129, 8, 1, 128),
    ] {
        let u = randn(&mut rng, l * c, 1.0);
        let h = randn(&mut rng, g * k, 0.5);
        let shape = FirShape {
            channels: c,
            groups: g,
            taps: k,
        };
        for order in [FirOrder::Correlation, FirOrder::Convolution] {
            let w = expand_taps(&h, shape, order).unwrap();
            let mut y = vec![f32::NAN; l * c];
            fir_forward(&u, &w, c, &mut y).unwrap();
            let r = fir_ref::fir(&u, &h, shape, order);
            assert!(max_diff(&y, &r) < 1e-5, "L {l} C {c} G {g} K {k} {order:?}");
        }
    }
    // The two orders differ (a non-symmetric filter): the tap order is really applied.
    let shape = FirShape {
        channels: 1,
        groups: 1,
        taps: 3,
    };
    let u = [1.0, 0.0, 0.0, 0.0];
    let h = [1.0, 2.0, 3.0];
    let mut y = [0.0; 4];
    fir_forward(
        &u,
        &expand_taps(&h, shape, FirOrder::Convolution).unwrap(),
        1,
        &mut y,
    )
    .unwrap();
    assert_eq!(y, [1.0, 2.0, 3.0, 0.0]);
    fir_forward(
        &u,
        &expand_taps(&h, shape, FirOrder::Correlation).unwrap(),
        1,
        &mut y,
    )
    .unwrap();
    assert_eq!(y, [3.0, 2.0, 1.0, 0.0]);
    // Groups must divide the channels.
    let bad = FirShape {
        channels: 10,
        groups: 3,
        taps: 2,
    };
    assert!(expand_taps(&[0.0; 6], bad, FirOrder::Convolution).is_err());
}

#[test]
fn modal_recurrence_equals_the_explicit_convolution() {
    let mut rng = StdRng::seed_from_u64(2);
    for &(l, c, n) in &[(1, 3, 16), (17, 5, 16), (100, 20, 4), (300, 33, 16)] {
        let u = randn(&mut rng, l * c, 1.0);
        // log-poles in (−2, −0.001): decays from fast to very slow.
        let lp: Vec<f32> = (0..c * n)
            .map(|_| -(10f32).powf(rng.random::<f32>() * 3.3 - 3.0))
            .collect();
        let res = randn(&mut rng, c * n, 0.3);
        let d = randn(&mut rng, c, 1.0);
        let mut state = vec![0.0; c * n];
        let mut y = vec![f32::NAN; l * c];
        modal_forward(&u, &lp, &res, Some(&d), c, &mut state, &mut y).unwrap();
        let r = modal_ref::modal(&u, &lp, &res, Some(&d), c);
        let scale = r.iter().fold(1.0f32, |a, b| a.max(b.abs()));
        assert!(max_diff(&y, &r) / scale < 2e-5, "L {l} C {c} N {n}");
        // Two halves carrying the state equal the whole.
        if l > 2 {
            let h = l / 2;
            let mut st = vec![0.0; c * n];
            let mut y2 = vec![0.0; l * c];
            let (ya, yb) = y2.split_at_mut(h * c);
            modal_forward(&u[..h * c], &lp, &res, Some(&d), c, &mut st, ya).unwrap();
            modal_forward(&u[h * c..], &lp, &res, Some(&d), c, &mut st, yb).unwrap();
            assert!(max_diff(&y, &y2) < 1e-6);
            assert_eq!(st, state);
        }
    }
}

#[test]
fn complex_modal_recurrence_equals_the_explicit_convolution() {
    let mut rng = StdRng::seed_from_u64(12);
    for &(l, c, n) in &[(1, 3, 2), (19, 5, 8), (100, 20, 2), (257, 33, 8)] {
        let u = randn(&mut rng, l * c, 1.0);
        // Poles inside the unit disc at every angle, from fast to very slow decay (magnitude
        // 0.3 … 0.999), and a few tiny ones as the reference's init draws them.
        let poles: Vec<f32> = (0..c * n)
            .flat_map(|i| {
                let r = if i % 5 == 0 {
                    0.01
                } else {
                    1.0 - (10f32).powf(rng.random::<f32>() * 2.5 - 3.0)
                };
                let a = (rng.random::<f32>() * 2.0 - 1.0) * std::f32::consts::PI;
                [r * a.cos(), r * a.sin()]
            })
            .collect();
        let res = randn(&mut rng, 2 * c * n, 0.3);
        let d = randn(&mut rng, c, 1.0);
        let mut state = vec![0.0; 2 * c * n];
        let mut y = vec![f32::NAN; l * c];
        modal_complex_forward(&u, &poles, &res, Some(&d), c, &mut state, &mut y).unwrap();
        let r = modal_ref::modal_complex(&u, &poles, &res, Some(&d), c);
        let scale = r.iter().fold(1.0f32, |a, b| a.max(b.abs()));
        assert!(max_diff(&y, &r) / scale < 2e-5, "L {l} C {c} N {n}");
        if l > 2 {
            let h = l / 3 + 1;
            let mut st = vec![0.0; 2 * c * n];
            let mut y2 = vec![0.0; l * c];
            let (ya, yb) = y2.split_at_mut(h * c);
            modal_complex_forward(&u[..h * c], &poles, &res, Some(&d), c, &mut st, ya).unwrap();
            modal_complex_forward(&u[h * c..], &poles, &res, Some(&d), c, &mut st, yb).unwrap();
            assert!(max_diff(&y, &y2) < 1e-6);
            assert_eq!(st, state);
        }
    }
    // An odd last axis is refused, not read out of bounds.
    let mut st = vec![0.0; 3];
    let mut y = vec![0.0; 2];
    assert!(
        modal_complex_forward(&[1.0; 2], &[0.5; 3], &[1.0; 3], None, 1, &mut st, &mut y).is_err()
    );
}

#[test]
fn softmax_exp_is_within_two_ulp() {
    // Every 1/4096 from -87 to 0, plus the edges: relative error against the f64 exp.
    let mut worst = 0.0f64;
    for i in 0..=(87 * 4096) {
        let x = -(i as f32) / 4096.0;
        let got = exp_nonpositive(x) as f64;
        let want = (x as f64).exp();
        worst = worst.max(((got - want) / want).abs());
    }
    assert!(
        worst < 2.0 * f32::EPSILON as f64,
        "relative error {worst:e}"
    );
    assert_eq!(exp_nonpositive(0.0), 1.0);
    assert_eq!(exp_nonpositive(-88.0), 0.0);
    assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
    assert!(exp_nonpositive(f32::NAN).is_nan());
}

#[test]
fn rotary_and_blocked_attention_match_references() {
    let mut rng = StdRng::seed_from_u64(3);
    for &(l, h, hd) in &[(1, 2, 8), (7, 3, 4), (QBLOCK + 5, 2, 16), (150, 4, 8)] {
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
            .collect();
        for &(scale, pos0) in &[(1.0f32, 0usize), (4.0, 0), (1.0, 1000)] {
            let x = randn(&mut rng, h * l * hd, 1.0);
            let mut y = x.clone();
            rotary_inplace(&mut y, h, hd, &inv, scale, pos0).unwrap();
            let r = att_ref::rotary(&x, h, hd, &inv, scale, pos0);
            assert!(max_diff(&y, &r) < 1e-5, "rotary L {l} scale {scale}");
        }
        let q = randn(&mut rng, h * l * hd, 1.5);
        let k = randn(&mut rng, h * l * hd, 1.5);
        let v = randn(&mut rng, h * l * hd, 1.0);
        let mut out = vec![f32::NAN; l * h * hd];
        causal_attention(&q, &k, &v, h, hd, &mut out).unwrap();
        let r = att_ref::causal_attention(&q, &k, &v, h, hd);
        assert!(max_diff(&out, &r) < 2e-5, "attention L {l} H {h} hd {hd}");
    }
}

#[test]
fn rmsnorm_with_eps_on_the_rms() {
    let mut rng = StdRng::seed_from_u64(4);
    for &(m, d) in &[(1, 5), (33, 64), (70, 1920)] {
        let x = randn(&mut rng, m * d, 2.0);
        let w = randn(&mut rng, d, 1.0);
        let mut y = vec![0.0; m * d];
        rmsnorm_rms_eps_forward(&x, &w, d, 1e-6, &mut y).unwrap();
        let r = norm_ref::rmsnorm_rms_eps_forward(&x, &w, d, 1e-6);
        assert!(max_diff(&y, &r) < 1e-5, "M {m} D {d}");
    }
    // eps on the RMS, not under the square root: a tiny row shows the difference.
    let x = [1e-3f32, -1e-3];
    let mut y = [0.0; 2];
    rmsnorm_rms_eps_forward(&x, &[1.0, 1.0], 2, 1e-3, &mut y).unwrap();
    assert!((y[0] - 0.5).abs() < 1e-6, "{y:?}");
}

#[test]
fn erf_gelu_and_bf16_weights() {
    let mut xs: Vec<f32> = (-60..=60).map(|i| i as f32 / 10.0).collect();
    let want: Vec<f32> = xs.iter().map(|&x| act_ref::gelu_erf(x)).collect();
    gelu_erf_inplace(&mut xs);
    assert!(max_diff(&xs, &want) < 1e-6);
    // The erf form, not the tanh approximation (they differ by ~1e-3 near x = −3).
    assert!((act_ref::gelu_erf(-3.0) - act_ref::gelu(-3.0)).abs() > 2e-4);

    let mut rng = StdRng::seed_from_u64(5);
    let (m, k, n) = (13, 37, 29);
    let x = randn(&mut rng, m * k, 1.0);
    let wf = randn(&mut rng, n * k, 1.0);
    let bits: Vec<u16> = wf.iter().map(|&v| f32_to_bf16(v)).collect();
    let wr: Vec<f32> = bits.iter().map(|&b| bf16_to_f32(b)).collect();
    let b = randn(&mut rng, n, 1.0);
    let mut y = vec![0.0; m * n];
    let mut scratch = Vec::new();
    linear_weight(
        &x,
        Weight::Bf16(&bits),
        Some(&b),
        m,
        k,
        n,
        &mut y,
        &mut scratch,
    )
    .unwrap();
    let r = lin_ref::linear_forward(&x, &wr, Some(&b), m, k, n);
    assert!(max_diff(&y, &r) < 1e-4);
    let mut y2 = vec![0.0; m * n];
    linear_weight(
        &x,
        Weight::F32(&wr),
        Some(&b),
        m,
        k,
        n,
        &mut y2,
        &mut scratch,
    )
    .unwrap();
    assert_eq!(y, y2);
    assert!(linear_weight(
        &x,
        Weight::Bf16(&bits[1..]),
        None,
        m,
        k,
        n,
        &mut y,
        &mut scratch
    )
    .is_err());
}

#[test]
fn bf16_products_match_the_rounded_reference() {
    use hyena::ops::bf16::{linear_bf16, linear_bf16_strided, reference as bf_ref, Bf16Scratch};
    let mut rng = StdRng::seed_from_u64(6);
    let mut s = Bf16Scratch::default();
    // Edges in every direction: rows not a multiple of 12 or 96, columns not of 16 or 128, odd K,
    // K across several 256-pair blocks.
    for &(m, k, n) in &[
        (1, 1, 1),
        (5, 7, 3),
        (13, 33, 17),
        (97, 130, 129),
        (30, 1100, 40),
        (12, 64, 32),
    ] {
        let x = randn(&mut rng, m * k, 1.0);
        let w = randn(&mut rng, n * k, 1.0);
        let b = randn(&mut rng, n, 1.0);
        let bits: Vec<u16> = w.iter().map(|&v| f32_to_bf16(v)).collect();
        let want = bf_ref::linear_bf16(&x, &w, Some(&b), m, k, n);
        for wt in [Weight::Bf16(&bits), Weight::F32(&w)] {
            let mut y = vec![f32::NAN; m * n];
            linear_bf16(&x, wt, Some(&b), m, k, n, &mut y, &mut s).unwrap();
            let tol = 1e-5 * (k as f32).sqrt().max(1.0) * 4.0;
            assert!(
                max_diff(&y, &want) < tol,
                "M {m} K {k} N {n}: {}",
                max_diff(&y, &want)
            );
        }
        // Without the bias.
        let want = bf_ref::linear_bf16(&x, &w, None, m, k, n);
        let mut y = vec![f32::NAN; m * n];
        linear_bf16(&x, Weight::Bf16(&bits), None, m, k, n, &mut y, &mut s).unwrap();
        assert!(max_diff(&y, &want) < 1e-4, "no bias M {m} K {k} N {n}");
        // The same weights as the first K of rows `ldw` apart (garbage past K must be ignored).
        let ldw = k + 5;
        let mut strided = vec![f32_to_bf16(f32::NAN); (n - 1) * ldw + k];
        for j in 0..n {
            strided[j * ldw..j * ldw + k].copy_from_slice(&bits[j * k..(j + 1) * k]);
        }
        let mut y = vec![f32::NAN; m * n];
        linear_bf16_strided(&x, &strided, ldw, m, k, n, &mut y, &mut s).unwrap();
        assert!(max_diff(&y, &want) < 1e-4, "strided M {m} K {k} N {n}");
    }
    // A stride shorter than a row, or too few weights: errors, not reads out of bounds.
    let mut y = vec![0.0; 4];
    assert!(linear_bf16_strided(&[1.0; 6], &[0; 12], 2, 2, 3, 2, &mut y, &mut s).is_err());
    assert!(linear_bf16_strided(&[1.0; 6], &[0; 5], 3, 2, 3, 2, &mut y, &mut s).is_err());
}

#[test]
fn bf16_attention_matches_the_rounded_reference() {
    use hyena::ops::attention::causal_attention_bf16_at;
    let mut rng = StdRng::seed_from_u64(13);
    for &(l, h, hd) in &[(1, 1, 4), (9, 2, 8), (QBLOCK + 7, 3, 16), (150, 2, 32)] {
        let q = randn(&mut rng, h * l * hd, 1.0);
        let k = randn(&mut rng, h * l * hd, 1.0);
        let v = randn(&mut rng, h * l * hd, 1.0);
        let kb: Vec<u16> = k.iter().map(|&x| f32_to_bf16(x)).collect();
        // Values transposed: [H, hd, L].
        let mut vt = vec![0u16; h * hd * l];
        for hh in 0..h {
            for t in 0..l {
                for i in 0..hd {
                    vt[(hh * hd + i) * l + t] = f32_to_bf16(v[(hh * l + t) * hd + i]);
                }
            }
        }
        let want = att_ref::causal_attention_bf16(&q, &k, &v, h, hd);
        let exact = att_ref::causal_attention(&q, &k, &v, h, hd);
        // All queries at once, and the last third as a chunk at its offset.
        let mut out = vec![f32::NAN; l * h * hd];
        causal_attention_bf16_at(&q, &kb, &vt, h, hd, 0, l, &mut out).unwrap();
        // A probability may round to the other bf16 neighbour (f32 vs f64 softmax): 1 ulp.
        assert!(
            max_diff(&out, &want) < 2e-2,
            "L {l} H {h} hd {hd}: {}",
            max_diff(&out, &want)
        );
        assert!(
            max_diff(&out, &exact) < 6e-2,
            "L {l}: {}",
            max_diff(&out, &exact)
        );
        let t0 = l - l / 3 - 1;
        let m = l - t0;
        let mut qc = vec![0.0; h * m * hd];
        for hh in 0..h {
            qc[hh * m * hd..(hh + 1) * m * hd]
                .copy_from_slice(&q[(hh * l + t0) * hd..(hh * l + l) * hd]);
        }
        let mut oc = vec![f32::NAN; m * h * hd];
        causal_attention_bf16_at(&qc, &kb, &vt, h, hd, t0, l, &mut oc).unwrap();
        assert!(max_diff(&oc, &out[t0 * h * hd..]) < 1e-6, "chunk at {t0}");
    }
}

#[test]
fn few_row_products_match_the_reference_for_both_weight_kinds() {
    // Decoding's product: 1 to 4 rows, lengths that are not multiples of the 64 lanes (and
    // shorter than one block), bf16 weights widened on the fly equal to the same values in f32.
    use hyena::ops::linear::linear_few_rows;
    let mut rng = StdRng::seed_from_u64(9);
    for (m, k, n) in [
        (1, 1, 1),
        (1, 37, 29),
        (2, 64, 65),
        (3, 200, 130),
        (4, 1931, 70),
    ] {
        let x = randn(&mut rng, m * k, 1.0);
        let bits: Vec<u16> = randn(&mut rng, n * k, 1.0)
            .iter()
            .map(|&v| f32_to_bf16(v))
            .collect();
        let wr: Vec<f32> = bits.iter().map(|&b| bf16_to_f32(b)).collect();
        let b = randn(&mut rng, n, 1.0);
        let want = lin_ref::linear_forward(&x, &wr, Some(&b), m, k, n);
        let mut y = vec![0.0; m * n];
        linear_few_rows(&x, Weight::Bf16(&bits), Some(&b), m, k, n, &mut y).unwrap();
        let tol = 1e-5 * (k as f32).sqrt() * 4.0;
        assert!(
            max_diff(&y, &want) < tol,
            "{m}x{k}x{n}: {}",
            max_diff(&y, &want)
        );
        let mut y2 = vec![0.0; m * n];
        linear_few_rows(&x, Weight::F32(&wr), Some(&b), m, k, n, &mut y2).unwrap();
        assert_eq!(y, y2, "{m}x{k}x{n}");
        let mut y3 = vec![0.0; m * n];
        linear_few_rows(&x, Weight::F32(&wr), None, m, k, n, &mut y3).unwrap();
        for (j, (a, c)) in y2.iter().zip(&y3).enumerate() {
            assert!((a - c - b[j % n]).abs() < 1e-5, "bias at {j}");
        }
        assert!(linear_few_rows(&x, Weight::F32(&wr[1..]), None, m, k, n, &mut y).is_err());
    }
}
