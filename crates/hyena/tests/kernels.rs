//! Every kernel against its slow reference (several lengths, incl. non-powers of two), plus a
//! finite-difference gradient check of every hand-written backward and a causality check.

mod common;

use common::max_abs_diff;
use hyena::ops::act;
use hyena::ops::fftconv::{reference, FftConv, GatedConv, GatedConvGrads, RowLayout, Spectra};
use hyena::ops::{linear, norm, short_conv};
use hyena::testing::{check, dot, rand_vec};

// Non-powers of two; 127 and 4097 also make `2L` a size with a large prime factor (254 = 2·127,
// 8194 = 2·17·241), which the FFT convolution pads further to a 7-smooth size.
const LENGTHS: [usize; 6] = [1, 7, 64, 127, 1000, 4097];

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// Relative max error, scaled by the reference's magnitude.
fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    let err = max_abs_diff(got, want);
    let scale = max_abs(want).max(1e-6);
    assert!(
        err <= rtol * scale,
        "{what}: max abs diff {err:.3e} > {rtol:.0e} × max|ref| ({scale:.3e})"
    );
}

struct ConvCase {
    lay: RowLayout,
    u: Vec<f32>,
    pre: Vec<f32>,
    post: Vec<f32>,
    k: Vec<f32>,
    d: Vec<f32>,
    dy: Vec<f32>,
}

impl ConvCase {
    fn new(lay: RowLayout, seed: u64) -> Self {
        let n = lay.numel();
        let (c, l) = (lay.chans, lay.len);
        // A decaying filter, like a trained Hyena filter, keeps the sums well conditioned.
        let mut k = rand_vec(c * l, seed + 1, 1.0);
        for ch in 0..c {
            for t in 0..l {
                k[ch * l + t] *= (-(t as f32) / (0.3 * l as f32 + 1.0)).exp();
            }
        }
        ConvCase {
            lay,
            u: rand_vec(n, seed + 2, 1.0),
            pre: rand_vec(n, seed + 3, 1.0),
            post: rand_vec(n, seed + 4, 1.0),
            k,
            d: rand_vec(c, seed + 5, 1.0),
            dy: rand_vec(n, seed + 6, 1.0),
        }
    }
    fn args(&self, gated: bool) -> GatedConv<'_> {
        GatedConv {
            layout: self.lay,
            u: &self.u,
            pre: gated.then_some(&self.pre[..]),
            post: gated.then_some(&self.post[..]),
            k: &self.k,
            d: &self.d,
        }
    }
}

#[test]
fn fftconv_matches_direct_reference_at_many_lengths() {
    let eng = FftConv::new();
    for &l in &LENGTHS {
        // B = 3 exercises a packed pair plus the odd row; B = 1 the odd row alone.
        for (li, lay) in [
            RowLayout::bcl(3, 2, l),
            RowLayout::cbl(3, 2, l),
            RowLayout::cbl(1, 2, l),
        ]
        .into_iter()
        .enumerate()
        {
            // Gated or plain; backward with spectra saved by the forward or recomputed.
            for (gated, save) in [(false, false), (false, true), (true, false), (true, true)] {
                let cs = ConvCase::new(lay, 10 * l as u64 + li as u64);
                let mut spectra = Spectra::default();
                let a = cs.args(gated);
                let (y_ref, co_ref) = reference::gated_forward(&a);
                let mut y = vec![0.0; lay.numel()];
                let mut co = vec![0.0; lay.numel()];
                eng.gated_forward(&a, &mut y, Some(&mut co), save.then_some(&mut spectra))
                    .unwrap();
                let tag = format!("L={l} layout={li} gated={gated} saved={save}");
                assert_close(&format!("forward y {tag}"), &y, &y_ref, 2e-5);
                assert_close(&format!("forward conv_out {tag}"), &co, &co_ref, 2e-5);

                let (du_r, dpre_r, dpost_r, dk_r, dd_r) = reference::gated_backward(&a, &cs.dy);
                let n = lay.numel();
                let (mut du, mut dpre, mut dpost) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
                let (mut dk, mut dd) = (vec![0.0; 2 * l], vec![0.0; 2]);
                let grads = GatedConvGrads {
                    du: &mut du,
                    dpre: gated.then_some(&mut dpre[..]),
                    dpost: gated.then_some(&mut dpost[..]),
                    dk: &mut dk,
                    dd: &mut dd,
                };
                let saved = save.then_some(&spectra);
                eng.gated_backward(&a, &cs.dy, gated.then_some(&co[..]), saved, grads)
                    .unwrap();
                assert_close(&format!("du {tag}"), &du, &du_r, 2e-5);
                assert_close(&format!("dk {tag}"), &dk, &dk_r, 2e-5);
                assert_close(&format!("dD {tag}"), &dd, &dd_r, 2e-5);
                if gated {
                    assert_close(&format!("dpre {tag}"), &dpre, &dpre_r, 2e-5);
                    assert_close(&format!("dpost {tag}"), &dpost, &dpost_r, 2e-5);
                }
            }
        }
    }
}

#[test]
fn fftconv_plain_api_matches_reference() {
    let eng = FftConv::new();
    for &l in &[5usize, 64, 1000] {
        let cs = ConvCase::new(RowLayout::bcl(3, 2, l), 77 + l as u64);
        let mut y = vec![0.0; cs.u.len()];
        let mut spectra = Spectra::default();
        eng.forward(&cs.u, &cs.k, &cs.d, (3, 2, l), &mut y, Some(&mut spectra))
            .unwrap();
        let (y_ref, _) = reference::gated_forward(&cs.args(false));
        assert_close("plain forward", &y, &y_ref, 2e-5);
        let (mut du, mut dk, mut dd) = (vec![0.0; cs.u.len()], vec![0.0; 2 * l], vec![0.0; 2]);
        eng.backward(
            &cs.dy,
            &cs.u,
            &cs.k,
            &cs.d,
            (3, 2, l),
            Some(&spectra),
            &mut du,
            &mut dk,
            &mut dd,
        )
        .unwrap();
        let (du_r, _, _, dk_r, dd_r) = reference::gated_backward(&cs.args(false), &cs.dy);
        assert_close("plain du", &du, &du_r, 2e-5);
        assert_close("plain dk", &dk, &dk_r, 2e-5);
        assert_close("plain dD", &dd, &dd_r, 2e-5);
    }
}

#[test]
fn fftconv_gradients_match_finite_differences() {
    let eng = FftConv::new();
    for &l in &[1usize, 7, 64] {
        let lay = RowLayout::cbl(3, 2, l);
        let cs = ConvCase::new(lay, 500 + l as u64);
        let n = lay.numel();
        let mut co = vec![0.0; n];
        let mut y = vec![0.0; n];
        let mut spectra = Spectra::default();
        eng.gated_forward(&cs.args(true), &mut y, Some(&mut co), Some(&mut spectra))
            .unwrap();
        let (mut du, mut dpre, mut dpost) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let (mut dk, mut dd) = (vec![0.0; 2 * l], vec![0.0; 2]);
        eng.gated_backward(
            &cs.args(true),
            &cs.dy,
            Some(&co),
            Some(&spectra),
            GatedConvGrads {
                du: &mut du,
                dpre: Some(&mut dpre),
                dpost: Some(&mut dpost),
                dk: &mut dk,
                dd: &mut dd,
            },
        )
        .unwrap();
        let loss = |u: &[f32], pre: &[f32], post: &[f32], k: &[f32], d: &[f32]| {
            let a = GatedConv {
                layout: lay,
                u,
                pre: Some(pre),
                post: Some(post),
                k,
                d,
            };
            let mut y = vec![0.0; n];
            eng.gated_forward(&a, &mut y, None, None).unwrap();
            dot(&cs.dy, &y)
        };
        let (eps, tol) = (1e-2, 2e-2);
        check(
            "du",
            &cs.u,
            &du,
            |x| loss(x, &cs.pre, &cs.post, &cs.k, &cs.d),
            40,
            eps,
            tol,
        )
        .unwrap();
        check(
            "dpre",
            &cs.pre,
            &dpre,
            |x| loss(&cs.u, x, &cs.post, &cs.k, &cs.d),
            40,
            eps,
            tol,
        )
        .unwrap();
        check(
            "dpost",
            &cs.post,
            &dpost,
            |x| loss(&cs.u, &cs.pre, x, &cs.k, &cs.d),
            40,
            eps,
            tol,
        )
        .unwrap();
        check(
            "dk",
            &cs.k,
            &dk,
            |x| loss(&cs.u, &cs.pre, &cs.post, x, &cs.d),
            40,
            eps,
            tol,
        )
        .unwrap();
        check(
            "dD",
            &cs.d,
            &dd,
            |x| loss(&cs.u, &cs.pre, &cs.post, &cs.k, x),
            40,
            eps,
            tol,
        )
        .unwrap();
    }
}

#[test]
fn fftconv_is_causal() {
    let eng = FftConv::new();
    let l = 257;
    let lay = RowLayout::bcl(1, 2, l);
    let cs = ConvCase::new(lay, 9);
    let mut y0 = vec![0.0; lay.numel()];
    eng.gated_forward(&cs.args(true), &mut y0, None, None)
        .unwrap();
    for &tp in &[0usize, 1, 100, 256] {
        let mut u = cs.u.clone();
        for c in 0..2 {
            u[c * l + tp] += 3.0;
        }
        let a = GatedConv {
            u: &u,
            ..cs.args(true)
        };
        let mut y1 = vec![0.0; lay.numel()];
        eng.gated_forward(&a, &mut y1, None, None).unwrap();
        for c in 0..2 {
            let before = max_abs_diff(&y0[c * l..c * l + tp], &y1[c * l..c * l + tp]);
            let after = max_abs_diff(&y0[c * l + tp..(c + 1) * l], &y1[c * l + tp..(c + 1) * l]);
            // FFT rounding may touch earlier outputs at the 1e-7 level, never more.
            assert!(
                before <= 1e-5,
                "t'={tp}: output before t' changed by {before:e}"
            );
            assert!(
                after > 1e-2,
                "t'={tp}: output at/after t' should change, changed by {after:e}"
            );
        }
    }
}

#[test]
fn fftconv_rejects_bad_shapes() {
    let eng = FftConv::new();
    let (u, k, d) = (vec![0.0; 2 * 3 * 8], vec![0.0; 3 * 7], vec![0.0; 3]);
    let mut y = vec![0.0; 2 * 3 * 8];
    let e = eng
        .forward(&u, &k, &d, (2, 3, 8), &mut y, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("filter k"), "{e}");
    let e = eng
        .forward(&u, &[0.0; 24], &d[..2], (2, 3, 8), &mut y, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("skip D"), "{e}");
    let e = eng
        .forward(&u[..10], &[0.0; 24], &d, (2, 3, 8), &mut y, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("u"), "{e}");
}

#[test]
fn short_conv_matches_reference_and_gradients() {
    let k = 3;
    for &l in &LENGTHS {
        let lay = RowLayout::cbl(2, 4, l);
        let x = rand_vec(lay.numel(), l as u64, 1.0);
        let w = rand_vec(4 * k, 3, 1.0);
        let b = rand_vec(4, 4, 1.0);
        let mut y = vec![0.0; lay.numel()];
        short_conv::forward(&x, &w, &b, k, lay, &mut y).unwrap();
        assert_close(
            &format!("short conv L={l}"),
            &y,
            &short_conv::reference::forward(&x, &w, &b, k, lay),
            1e-5,
        );
    }
    for &l in &[1usize, 2, 7, 64] {
        let lay = RowLayout::bcl(2, 3, l);
        let x = rand_vec(lay.numel(), 11, 1.0);
        let w = rand_vec(3 * k, 12, 1.0);
        let b = rand_vec(3, 13, 1.0);
        let dy = rand_vec(lay.numel(), 14, 1.0);
        let (mut dx, mut dw, mut db) = (vec![0.0; lay.numel()], vec![0.0; 3 * k], vec![0.0; 3]);
        short_conv::backward(&dy, &x, &w, k, lay, &mut dx, &mut dw, &mut db).unwrap();
        // The in-place variant gives the same numbers.
        let (mut g, mut dw2, mut db2) = (dy.clone(), vec![0.0; 3 * k], vec![0.0; 3]);
        short_conv::backward_inplace(&mut g, &x, &w, k, lay, &mut dw2, &mut db2).unwrap();
        assert_eq!((&g, &dw2, &db2), (&dx, &dw, &db));
        let f = |x: &[f32], w: &[f32], b: &[f32]| {
            dot(&dy, &short_conv::reference::forward(x, w, b, k, lay))
        };
        check("short dx", &x, &dx, |v| f(v, &w, &b), 50, 1e-2, 1e-2).unwrap();
        check("short dw", &w, &dw, |v| f(&x, v, &b), 50, 1e-2, 1e-2).unwrap();
        check("short db", &b, &db, |v| f(&x, &w, v), 50, 1e-2, 1e-2).unwrap();
    }
}

#[test]
fn linear_matches_reference_and_gradients() {
    // Forward at every test length L (rows = sequence positions, as in the projections).
    for &l in &LENGTHS {
        let (kk, n) = (24, 40);
        let x = rand_vec(l * kk, l as u64, 1.0);
        let w = rand_vec(n * kk, 2, 1.0);
        let b = rand_vec(n, 3, 1.0);
        let mut y = vec![0.0; l * n];
        linear::linear_forward(&x, &w, Some(&b), l, kk, n, &mut y).unwrap();
        let y_ref = linear::reference::linear_forward(&x, &w, Some(&b), l, kk, n);
        assert_close(&format!("linear L={l}"), &y, &y_ref, 1e-5);
        // In place onto a residual stream: y0 + x Wᵀ + b.
        let y0 = rand_vec(l * n, 4, 1.0);
        let mut acc = y0.clone();
        linear::linear_accumulate(&x, &w, &b, l, kk, n, &mut acc).unwrap();
        let want: Vec<f32> = y0.iter().zip(&y_ref).map(|(a, b)| a + b).collect();
        assert_close(&format!("linear accumulate L={l}"), &acc, &want, 1e-5);
    }
    for &(m, kk, n) in &[
        (1usize, 1usize, 1usize),
        (7, 5, 3),
        (64, 33, 17),
        (130, 64, 96),
    ] {
        let x = rand_vec(m * kk, 1, 1.0);
        let w = rand_vec(n * kk, 2, 1.0);
        let b = rand_vec(n, 3, 1.0);
        let mut y = vec![0.0; m * n];
        linear::linear_forward(&x, &w, Some(&b), m, kk, n, &mut y).unwrap();
        assert_close(
            "linear",
            &y,
            &linear::reference::linear_forward(&x, &w, Some(&b), m, kk, n),
            1e-5,
        );
        let dy = rand_vec(m * n, 4, 1.0);
        let (mut dx, mut dw, mut db) = (vec![0.0; m * kk], vec![0.0; n * kk], vec![0.0; n]);
        linear::linear_backward(
            &dy,
            &x,
            &w,
            (m, kk, n),
            Some(&mut dx),
            &mut dw,
            Some(&mut db),
        )
        .unwrap();
        let f = |x: &[f32], w: &[f32], b: &[f32]| {
            dot(
                &dy,
                &linear::reference::linear_forward(x, w, Some(b), m, kk, n),
            )
        };
        check("linear dx", &x, &dx, |v| f(v, &w, &b), 40, 1e-2, 1e-2).unwrap();
        check("linear dw", &w, &dw, |v| f(&x, v, &b), 40, 1e-2, 1e-2).unwrap();
        check("linear db", &b, &db, |v| f(&x, &w, v), 40, 1e-2, 1e-2).unwrap();
    }
    let mut y = vec![0.0; 6];
    let err = linear::linear_forward(&[0.0; 6], &[0.0; 5], None, 2, 3, 3, &mut y).unwrap_err();
    assert!(err.to_string().contains("weight [N, K]"), "{err}");
}

/// The channel-first output projection (`yg [D, M]` in, `y [M, D]` out) equals `nn.Linear` on
/// the transposed signal, with a residual, and its backward passes the gradient check; the
/// weight and bias gradients accumulate onto what is already there.
#[test]
fn out_proj_channel_first_matches_reference_and_gradients() {
    for &(m, d) in &[(1usize, 1usize), (7, 5), (127, 16), (130, 33)] {
        let yg = rand_vec(d * m, m as u64, 1.0);
        let w = rand_vec(d * d, 2, 1.0);
        let b = rand_vec(d, 3, 1.0);
        let res = rand_vec(m * d, 5, 1.0);
        // ygᵀ [M, D], row-major, for the reference.
        let t = |yg: &[f32]| -> Vec<f32> { (0..m * d).map(|i| yg[(i % d) * m + i / d]).collect() };
        let mut y = vec![f32::NAN; m * d];
        linear::out_proj_cf_forward(&yg, &w, &b, Some(&res), (m, d), &mut y).unwrap();
        let mut want = linear::reference::linear_forward(&t(&yg), &w, Some(&b), m, d, d);
        want.iter_mut().zip(&res).for_each(|(a, r)| *a += r);
        assert_close(&format!("out_proj cf M={m} D={d}"), &y, &want, 1e-5);

        let dy = rand_vec(m * d, 4, 1.0);
        let (mut dyg, mut dw, mut db) = (vec![f32::NAN; d * m], vec![0.5; d * d], vec![0.5; d]);
        let mut scratch = Vec::new();
        linear::out_proj_cf_backward(
            &dy,
            &yg,
            &w,
            (m, d),
            &mut dyg,
            &mut dw,
            &mut db,
            &mut scratch,
        )
        .unwrap();
        dw.iter_mut().for_each(|g| *g -= 0.5);
        db.iter_mut().for_each(|g| *g -= 0.5);
        let f = |yg: &[f32], w: &[f32], b: &[f32]| {
            dot(
                &dy,
                &linear::reference::linear_forward(&t(yg), w, Some(b), m, d, d),
            )
        };
        check("out_proj dyg", &yg, &dyg, |v| f(v, &w, &b), 40, 1e-2, 1e-2).unwrap();
        check("out_proj dw", &w, &dw, |v| f(&yg, v, &b), 40, 1e-2, 1e-2).unwrap();
        check("out_proj db", &b, &db, |v| f(&yg, &w, v), 40, 1e-2, 1e-2).unwrap();
    }
    let mut y = vec![0.0; 4];
    let err = linear::out_proj_cf_forward(&[0.0; 4], &[0.0; 3], &[0.0; 2], None, (2, 2), &mut y)
        .unwrap_err();
    assert!(err.to_string().contains("weight [D, D]"), "{err}");
}

#[test]
fn layernorm_matches_reference_and_gradients() {
    for &l in &LENGTHS {
        let d = 48;
        let x: Vec<f32> = rand_vec(l * d, l as u64, 2.0)
            .iter()
            .map(|v| v + 0.5)
            .collect();
        let (g, b) = (rand_vec(d, 6, 1.0), rand_vec(d, 7, 1.0));
        let (mut y, mut mu, mut rs) = (vec![0.0; l * d], vec![0.0; l], vec![0.0; l]);
        norm::layernorm_forward(&x, &g, &b, d, 1e-5, &mut y, &mut mu, &mut rs).unwrap();
        let y_ref = norm::reference::layernorm_forward(&x, &g, &b, d, 1e-5);
        assert_close(&format!("layernorm L={l}"), &y, &y_ref, 1e-5);
    }
    for &(m, d) in &[(1usize, 1usize), (3, 7), (64, 128)] {
        let x: Vec<f32> = rand_vec(m * d, 5, 2.0).iter().map(|v| v + 0.5).collect();
        let g = rand_vec(d, 6, 1.0);
        let b = rand_vec(d, 7, 1.0);
        let (mut y, mut mu, mut rs) = (vec![0.0; m * d], vec![0.0; m], vec![0.0; m]);
        norm::layernorm_forward(&x, &g, &b, d, 1e-5, &mut y, &mut mu, &mut rs).unwrap();
        assert_close(
            "layernorm",
            &y,
            &norm::reference::layernorm_forward(&x, &g, &b, d, 1e-5),
            1e-5,
        );
        if d == 1 {
            continue; // a single-element row has zero variance: output is beta, gradient ~0
        }
        let dy = rand_vec(m * d, 8, 1.0);
        let (mut dx, mut dg, mut db) = (vec![0.0; m * d], vec![0.0; d], vec![0.0; d]);
        norm::layernorm_backward(&dy, &x, &g, &mu, &rs, d, &mut dx, false, &mut dg, &mut db)
            .unwrap();
        let f = |x: &[f32], g: &[f32], b: &[f32]| {
            dot(&dy, &norm::reference::layernorm_forward(x, g, b, d, 1e-5))
        };
        check("ln dx", &x, &dx, |v| f(v, &g, &b), 40, 1e-2, 2e-2).unwrap();
        check("ln dgamma", &g, &dg, |v| f(&x, v, &b), 40, 1e-2, 2e-2).unwrap();
        check("ln dbeta", &b, &db, |v| f(&x, &g, v), 40, 1e-2, 2e-2).unwrap();
    }
}

#[test]
fn rmsnorm_matches_reference_and_gradients() {
    for &(m, d) in &[(1usize, 2usize), (7, 5), (65, 128), (130, 33)] {
        let x: Vec<f32> = rand_vec(m * d, 15, 2.0).iter().map(|v| v + 0.3).collect();
        let w = rand_vec(d, 16, 1.0);
        let (mut y, mut rs) = (vec![0.0; m * d], vec![0.0; m]);
        norm::rmsnorm_forward(&x, &w, d, 1e-5, &mut y, &mut rs).unwrap();
        let y_ref = norm::reference::rmsnorm_forward(&x, &w, d, 1e-5);
        assert_close(&format!("rmsnorm {m}x{d}"), &y, &y_ref, 1e-5);
        let dy = rand_vec(m * d, 17, 1.0);
        let (mut dx, mut dw) = (vec![0.0; m * d], vec![0.0; d]);
        norm::rmsnorm_backward(&dy, &x, &w, &rs, d, &mut dx, false, &mut dw).unwrap();
        let f = |x: &[f32], w: &[f32]| dot(&dy, &norm::reference::rmsnorm_forward(x, w, d, 1e-5));
        check("rms dx", &x, &dx, |v| f(v, &w), 40, 1e-2, 2e-2).unwrap();
        check("rms dw", &w, &dw, |v| f(&x, v), 40, 1e-2, 2e-2).unwrap();
        // The accumulating form adds onto dx.
        let mut dx2 = vec![1.0; m * d];
        norm::rmsnorm_backward(&dy, &x, &w, &rs, d, &mut dx2, true, &mut dw).unwrap();
        assert!(dx2.iter().zip(&dx).all(|(a, b)| (a - 1.0 - b).abs() < 1e-5));
    }
}

#[test]
fn activations_match_reference_and_gradients() {
    for &l in &LENGTHS {
        let x = rand_vec(l * 8, l as u64, 4.0);
        let mut y = vec![0.0; x.len()];
        act::gelu_forward(&x, &mut y).unwrap();
        let y_ref: Vec<f32> = x.iter().map(|v| act::reference::gelu(*v)).collect();
        assert_close(&format!("gelu L={l}"), &y, &y_ref, 1e-6);
    }
    let x = rand_vec(1000, 9, 4.0);
    let mut y = vec![0.0; 1000];
    act::gelu_forward(&x, &mut y).unwrap();
    let y_ref: Vec<f32> = x.iter().map(|v| act::reference::gelu(*v)).collect();
    assert_close("gelu", &y, &y_ref, 1e-6);
    let dy = rand_vec(1000, 10, 1.0);
    let mut dx = vec![0.0; 1000];
    act::gelu_backward(&dy, &x, &mut dx).unwrap();
    let f = |x: &[f32]| {
        dot(
            &dy,
            &x.iter()
                .map(|v| act::reference::gelu(*v))
                .collect::<Vec<_>>(),
        )
    };
    check("gelu dx", &x, &dx, f, 100, 1e-3, 1e-2).unwrap();
    let mut d_inplace = dy.clone();
    act::gelu_backward_inplace(&mut d_inplace, &x).unwrap();
    assert_eq!(
        d_inplace, dx,
        "in-place GELU backward must equal the two-buffer one"
    );

    // Sin with one shared frequency vector over rows [M, F].
    let (m, fdim) = (13, 6);
    let x = rand_vec(m * fdim, 11, 2.0);
    let freq: Vec<f32> = rand_vec(fdim, 12, 1.0).iter().map(|v| v + 1.5).collect();
    let dy = rand_vec(m * fdim, 13, 1.0);
    let sin_ref = |x: &[f32], fr: &[f32]| -> f64 {
        x.iter()
            .enumerate()
            .map(|(i, v)| dy[i] as f64 * ((fr[i % fdim] as f64) * *v as f64).sin())
            .sum()
    };
    let mut y = vec![0.0; m * fdim];
    act::sin_forward(&x, &freq, &mut y).unwrap();
    assert!((dot(&dy, &y) - sin_ref(&x, &freq)).abs() < 1e-4);
    let (mut dx, mut dfreq) = (vec![0.0; m * fdim], vec![0.0; fdim]);
    act::sin_backward(&dy, &x, &freq, &mut dx, &mut dfreq).unwrap();
    check("sin dx", &x, &dx, |v| sin_ref(v, &freq), 100, 1e-3, 1e-2).unwrap();
    check(
        "sin dfreq",
        &freq,
        &dfreq,
        |v| sin_ref(&x, v),
        100,
        1e-3,
        1e-2,
    )
    .unwrap();

    // Gate.
    let (a, b) = (rand_vec(50, 14, 1.0), rand_vec(50, 15, 1.0));
    let dy = rand_vec(50, 16, 1.0);
    let mut y = vec![0.0; 50];
    act::gate_forward(&a, &b, &mut y).unwrap();
    for i in 0..50 {
        assert_eq!(y[i], a[i] * b[i]);
    }
    let (mut da, mut db) = (vec![0.0; 50], vec![0.0; 50]);
    act::gate_backward(&dy, &a, &b, &mut da, &mut db).unwrap();
    let f = |a: &[f32], b: &[f32]| -> f64 {
        (0..50)
            .map(|i| dy[i] as f64 * a[i] as f64 * b[i] as f64)
            .sum()
    };
    check("gate da", &a, &da, |v| f(v, &b), 50, 1e-2, 1e-3).unwrap();
    check("gate db", &b, &db, |v| f(&a, v), 50, 1e-2, 1e-3).unwrap();
}

/// GELU runs on a branch-free exp (logistic form): value and derivative against f64 over a
/// dense sweep of [-30, 30] and at extreme inputs, where the exp argument is clamped. Errors
/// are relative to max(1, |x|): near |x| = 5 the derivative is a difference of terms ~ 30.
#[test]
fn fast_gelu_is_accurate_everywhere() {
    let mut xs: Vec<f32> = (0..=60_000).map(|i| -30.0 + i as f32 * 1.0e-3).collect();
    xs.extend([0.0f32, -0.0, 1e-30, -1e-8, 1e-4, 100.0, -100.0, 1e6, -1e6]);
    let mut y = vec![0.0; xs.len()];
    act::gelu_forward(&xs, &mut y).unwrap();
    let mut dx = vec![1.0; xs.len()];
    act::gelu_backward_inplace(&mut dx, &xs).unwrap();
    let (mut worst_y, mut worst_d) = (0.0f64, 0.0f64);
    for ((&x, &yv), &dv) in xs.iter().zip(&y).zip(&dx) {
        let v = x as f64;
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let th = (c * (v + 0.044715 * v * v * v)).tanh();
        let want_y = 0.5 * v * (1.0 + th);
        let want_d =
            0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * c * (1.0 + 3.0 * 0.044715 * v * v);
        worst_y = worst_y.max((yv as f64 - want_y).abs() / v.abs().max(1.0));
        worst_d = worst_d.max((dv as f64 - want_d).abs() / v.abs().max(1.0));
    }
    assert!(
        worst_y < 3e-7,
        "gelu max error (relative to max(1, |x|)) {worst_y:e}"
    );
    assert!(
        worst_d < 1e-6,
        "gelu' max error (relative to max(1, |x|)) {worst_d:e}"
    );
    assert_eq!(y[xs.len() - 9], 0.0); // gelu(0) = 0 exactly
}

/// The filter's `Sin` runs on a vectorised polynomial sin/cos (libm above |x| = 8192): both
/// against f64 over a dense sweep, negative arguments and the quadrant boundaries included, and
/// a row with one huge argument (the libm fallback).
#[test]
fn fast_sin_and_cos_are_accurate() {
    let freq = [1.0f32; 8];
    let mut xs: Vec<f32> = (0..400_000).map(|i| -200.0 + i as f32 * 1.0e-3).collect();
    xs.extend((0..4000).map(|i| -8190.0 + i as f32 * 4.095));
    for q in -8..=8 {
        let b = q as f32 * std::f32::consts::FRAC_PI_4;
        xs.extend([b, b + 1e-6, b - 1e-6]);
    }
    xs.extend([0.0, -0.0, 1e-30, 8192.0, -8192.0]);
    while !xs.len().is_multiple_of(8) {
        xs.push(0.5);
    }
    let mut rows_huge = vec![0.3f32; 8];
    rows_huge[5] = 1.0e6; // this row goes through libm
    xs.extend(&rows_huge);
    let mut y = vec![0.0; xs.len()];
    act::sin_forward(&xs, &freq, &mut y).unwrap();
    let (mut dx, mut dfreq) = (vec![0.0; xs.len()], vec![0.0; 8]);
    act::sin_backward(&vec![1.0; xs.len()], &xs, &freq, &mut dx, &mut dfreq).unwrap();
    let (mut worst_s, mut worst_c) = (0.0f64, 0.0f64);
    for ((&x, &s), &c) in xs.iter().zip(&y).zip(&dx) {
        worst_s = worst_s.max((s as f64 - (x as f64).sin()).abs());
        worst_c = worst_c.max((c as f64 - (x as f64).cos()).abs());
    }
    assert!(worst_s < 3e-7, "sin max abs error {worst_s:e}");
    assert!(worst_c < 3e-7, "cos max abs error {worst_c:e}");
}

/// The fused passes of the LM step equal their unfused definitions: bias + GELU, the residual
/// folded into a linear layer's bias pass, LayerNorm backward accumulating into `dx`, row sums,
/// and the short conv adding its input's bias in place.
#[test]
fn fused_passes_equal_their_unfused_form() {
    let (m, n, k) = (37, 24, 10);
    let x = rand_vec(m * n, 1, 2.0);
    let bias = rand_vec(n, 2, 1.0);
    let (mut xb, mut g) = (x.clone(), vec![0.0; m * n]);
    act::bias_gelu_forward(&mut xb, &bias, &mut g).unwrap();
    let want_xb: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + bias[i % n]).collect();
    assert_eq!(xb, want_xb);
    let mut want_g = vec![0.0; m * n];
    act::gelu_forward(&want_xb, &mut want_g).unwrap();
    assert_eq!(g, want_g);

    // GELU backward with the bias gradient summed in the same pass (300 rows: 3 blocks of
    // 128, the last one partial).
    let rows = 300;
    let (a, d0) = (rand_vec(rows * n, 21, 4.0), rand_vec(rows * n, 22, 1.0));
    let (mut dfused, mut dbias) = (d0.clone(), vec![0.5f32; n]);
    act::gelu_backward_bias(&mut dfused, &a, &mut dbias).unwrap();
    let mut dplain = d0.clone();
    act::gelu_backward_inplace(&mut dplain, &a).unwrap();
    assert_eq!(dfused, dplain);
    for (j, got) in dbias.iter().enumerate() {
        let want = 0.5 + (0..rows).map(|i| dplain[i * n + j] as f64).sum::<f64>();
        assert!(
            (*got as f64 - want).abs() < 1e-4,
            "dbias[{j}]: {got} vs {want}"
        );
    }

    let (xin, w, res) = (
        rand_vec(m * k, 3, 1.0),
        rand_vec(n * k, 4, 1.0),
        rand_vec(m * n, 5, 1.0),
    );
    let mut y = vec![0.0; m * n];
    linear::linear_forward_residual(&xin, &w, Some(&bias), Some(&res), m, k, n, &mut y).unwrap();
    let mut want = linear::reference::linear_forward(&xin, &w, Some(&bias), m, k, n);
    for (a, r) in want.iter_mut().zip(&res) {
        *a += r;
    }
    assert_close("linear + residual", &y, &want, 1e-5);

    let d = 24;
    let rows = m * n / d;
    let (gamma, beta) = (rand_vec(d, 6, 1.0), rand_vec(d, 7, 1.0));
    let (mut h, mut mu, mut rs) = (vec![0.0; m * n], vec![0.0; rows], vec![0.0; rows]);
    norm::layernorm_forward(&x, &gamma, &beta, d, 1e-5, &mut h, &mut mu, &mut rs).unwrap();
    let dy = rand_vec(m * n, 8, 1.0);
    let (mut dx, mut dg, mut db) = (vec![0.0; m * n], vec![0.0; d], vec![0.0; d]);
    norm::layernorm_backward(
        &dy, &x, &gamma, &mu, &rs, d, &mut dx, false, &mut dg, &mut db,
    )
    .unwrap();
    let base = rand_vec(m * n, 9, 1.0);
    let (mut acc, mut dg2, mut db2) = (base.clone(), vec![0.0; d], vec![0.0; d]);
    norm::layernorm_backward(
        &dy, &x, &gamma, &mu, &rs, d, &mut acc, true, &mut dg2, &mut db2,
    )
    .unwrap();
    let want: Vec<f32> = base.iter().zip(&dx).map(|(a, b)| a + b).collect();
    assert_eq!((acc, dg2, db2), (want, dg, db));

    let mut sums = vec![1.0f32; m];
    linear::row_sums_acc(&x, n, &mut sums);
    for (i, s) in sums.iter().enumerate() {
        let want = 1.0 + x[i * n..(i + 1) * n].iter().map(|v| *v as f64).sum::<f64>();
        assert!((*s as f64 - want).abs() < 1e-5, "row {i}: {s} vs {want}");
    }

    let kk = 3;
    for &l in &LENGTHS {
        let lay = RowLayout::cbl(2, 4, l);
        let z = rand_vec(lay.numel(), l as u64, 1.0);
        let (w, b, ib) = (
            rand_vec(4 * kk, 3, 1.0),
            rand_vec(4, 4, 1.0),
            rand_vec(4, 5, 1.0),
        );
        let mut zb = z.clone();
        let mut y = vec![0.0; lay.numel()];
        short_conv::forward_biased_input(&mut zb, &ib, &w, &b, kk, lay, &mut y).unwrap();
        let mut want_z = z.clone();
        for bb in 0..2 {
            for (c, &bias_c) in ib.iter().enumerate() {
                let off = bb * lay.batch_stride + c * lay.chan_stride;
                for v in &mut want_z[off..off + l] {
                    *v += bias_c;
                }
            }
        }
        assert_eq!(zb, want_z, "L={l}");
        let mut want_y = vec![0.0; lay.numel()];
        short_conv::forward(&want_z, &w, &b, kk, lay, &mut want_y).unwrap();
        assert_eq!(y, want_y, "L={l}");
    }
}

/// `ops::serial` (used by the data-parallel LM step) changes only who computes a product, not
/// its bits: gemm splits rows and columns between threads, never the inner sum.
#[test]
fn serial_matmul_equals_parallel_bit_for_bit() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    // (m, k, n): an activation product, a weight gradient (long inner sum), odd sizes.
    for &(m, kk, n) in &[
        (1000usize, 64usize, 96usize),
        (48, 3000, 40),
        (257, 129, 65),
    ] {
        let (x, w) = (rand_vec(m * kk, 1, 1.0), rand_vec(n * kk, 2, 1.0));
        let dy = rand_vec(m * n, 3, 1.0);
        let (y_par, dw_par, dx_par) = pool.install(|| {
            let mut y = vec![0.0; m * n];
            linear::linear_forward(&x, &w, None, m, kk, n, &mut y).unwrap();
            let (mut dw, mut dx) = (vec![0.0; n * kk], vec![0.0; m * kk]);
            linear::linear_backward(&dy, &x, &w, (m, kk, n), Some(&mut dx), &mut dw, None).unwrap();
            (y, dw, dx)
        });
        let (y_ser, dw_ser, dx_ser) = pool.install(|| {
            hyena::ops::serial(|| {
                let mut y = vec![0.0; m * n];
                linear::linear_forward(&x, &w, None, m, kk, n, &mut y).unwrap();
                let (mut dw, mut dx) = (vec![0.0; n * kk], vec![0.0; m * kk]);
                linear::linear_backward(&dy, &x, &w, (m, kk, n), Some(&mut dx), &mut dw, None)
                    .unwrap();
                (y, dw, dx)
            })
        });
        assert_eq!(y_par, y_ser, "forward {m}x{kk}x{n}");
        assert_eq!(dw_par, dw_ser, "dW {m}x{kk}x{n}");
        assert_eq!(dx_par, dx_ser, "dx {m}x{kk}x{n}");
    }
}
