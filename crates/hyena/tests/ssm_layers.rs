//! Tests of the zoo's plain SSM mixers: the RTF layer (arXiv 2405.06147, `ruke1ire/RTF` `rtf.py`)
//! and the diagonal modal SSM (S4D, arXiv 2206.11893).
//!
//! Slow references from the definitions: the RTF kernel by running the IIR recurrence for the
//! impulse response and aliasing it with period `M` (cross-checked against `layers::rtf`), the
//! modal kernel by direct complex powers `exp(t·ΔA)`, both convolved by an O(L²) direct sum.

use hyena::layers::layer::{Layer, Slot};
use hyena::layers::rtf::{RtfConfig, RtfInit, RtfLayer};
use hyena::layers::ssm::{ModalConfig, ModalSsm};
use hyena::ops::linear::reference::linear_forward;
use hyena::params::{split_handles_mut, ParamStore, P};
use hyena::testing::{built, check_causal, check_layer_grads, init_params, rand_vec, tensors};
use realfft::num_complex::Complex64;

const LENS: [usize; 5] = [1, 7, 64, 100, 257];

fn jittered(layer: &dyn Layer, store: &ParamStore, seed: u64, jitter: f32) -> Vec<f32> {
    let mut p = init_params(layer, store, seed);
    let r = rand_vec(p.len(), seed + 100, jitter);
    for (v, r) in p.iter_mut().zip(r) {
        *v += r;
    }
    p
}

/// `y = out_proj(k * u + skip ⊙ u)`, `u = in_proj(x)`, everything direct, in f64 where it counts.
#[allow(clippy::too_many_arguments)]
fn mixer_reference(
    x: &[f32],
    (b, l, d): (usize, usize, usize),
    w_in: &[f32],
    b_in: &[f32],
    k: &[f64],
    skip: &[f64],
    w_out: &[f32],
    b_out: &[f32],
) -> Vec<f32> {
    let u = linear_forward(x, w_in, Some(b_in), b * l, d, d);
    let mut v = vec![0.0f32; b * l * d];
    for bi in 0..b {
        for c in 0..d {
            for t in 0..l {
                let mut acc = skip[c] * u[(bi * l + t) * d + c] as f64;
                for j in 0..=t {
                    acc += k[c * l + t - j] * u[(bi * l + j) * d + c] as f64;
                }
                v[(bi * l + t) * d + c] = acc as f32;
            }
        }
    }
    linear_forward(&v, w_out, Some(b_out), b * l, d, d)
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn forward(layer: &dyn Layer, p: &[f32], x: &[f32], b: usize, l: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    layer
        .forward(p, x, b, l, &mut y, &mut Slot::default())
        .expect("forward");
    y
}

// ------------------------------------------------------------------------------------------
// Modal SSM
// ------------------------------------------------------------------------------------------

/// The handles of a layer's tensors, in order (to split a buffer mutably by tensor).
fn handles(store: &ParamStore) -> Vec<P> {
    store.specs().iter().map(|s| s.handle).collect()
}

fn modal(d: usize, n: usize) -> (ModalSsm, ParamStore) {
    built(|vb| {
        ModalSsm::new(
            ModalConfig {
                state_size: n,
                ..ModalConfig::new(d)
            },
            vb,
        )
    })
    .expect("valid config")
}

/// `k[c, t] = 2 Re Σ_n C E exp(t ΔA)` with the power taken directly, not by running products.
fn modal_kernel_ref(layer: &ModalSsm, store: &ParamStore, p: &[f32], l: usize) -> Vec<f64> {
    let ps = tensors(store, p);
    let (d, h) = (layer.d_model(), layer.modes());
    let mut k = vec![0.0f64; d * l];
    for c in 0..d {
        let dt = (ps[2][c] as f64).exp();
        for n in 0..h {
            let i = c * h + n;
            let a = Complex64::new(-(ps[3][i] as f64).exp(), ps[4][i] as f64);
            let cc = Complex64::new(ps[5][2 * i] as f64, ps[5][2 * i + 1] as f64);
            let e = ((a * dt).exp() - 1.0) / a;
            for t in 0..l {
                k[c * l + t] += 2.0 * (cc * e * (a * (dt * t as f64)).exp()).re;
            }
        }
    }
    k
}

#[test]
fn modal_forward_matches_reference() {
    let (b, d) = (2, 5);
    let (layer, store) = modal(d, 8);
    for (s, &l) in LENS.iter().enumerate() {
        let p = jittered(&layer, &store, 10 + s as u64, 0.1);
        let x = rand_vec(b * l * d, 77 + s as u64, 1.0);
        let k_ref = modal_kernel_ref(&layer, &store, &p, l);
        let k = layer.kernel(&p, l).expect("kernel");
        let kf: Vec<f32> = k_ref.iter().map(|&v| v as f32).collect();
        assert!(
            max_err(&k, &kf) <= 1e-5,
            "modal kernel at L={l}: {}",
            max_err(&k, &kf)
        );
        let ps = tensors(&store, &p);
        let skip: Vec<f64> = ps[6].iter().map(|&v| v as f64).collect();
        let y_ref = mixer_reference(&x, (b, l, d), ps[0], ps[1], &k_ref, &skip, ps[7], ps[8]);
        let y = forward(&layer, &p, &x, b, l);
        let e = max_err(&y, &y_ref);
        assert!(e <= 1e-4, "modal forward at L={l}: max err {e}");
    }
}

#[test]
fn modal_recurrence_matches_forward() {
    let (b, d, l) = (2, 6, 53);
    let (layer, store) = modal(d, 8);
    let p = jittered(&layer, &store, 3, 0.2);
    // Larger steps so that the state really carries information over the sequence.
    let mut p = p;
    split_handles_mut(&mut p, &handles(&store))[2].fill((0.3f32).ln());
    let x = rand_vec(b * l * d, 4, 1.0);
    let y = forward(&layer, &p, &x, b, l);
    let rec = layer.recurrence(&p).expect("recurrence");
    let mut ys = vec![0.0f32; b * l * d];
    for bi in 0..b {
        let mut st = rec.empty_state();
        for t in 0..l {
            let o = (bi * l + t) * d;
            rec.step(&mut st, &x[o..o + d], &mut ys[o..o + d])
                .expect("step");
        }
    }
    let e = max_err(&y, &ys);
    assert!(e <= 1e-4, "modal recurrent vs conv forward: max err {e}");
}

#[test]
fn modal_gradients() {
    // Steps Δ in [0.1, 0.5] rather than the default [1e-3, 0.1]: with tiny steps the gradients
    // of `log_a_real` are ~1e-5, below what f32 central differences resolve.
    let (layer, store) = built(|vb| {
        ModalSsm::new(
            ModalConfig {
                state_size: 6,
                dt_min: 0.1,
                dt_max: 0.5,
                ..ModalConfig::new(4)
            },
            vb,
        )
    })
    .expect("valid config");
    for (b, l, seed) in [(2, 7, 1), (1, 33, 2), (3, 16, 3)] {
        let w = check_layer_grads(&layer, &store, b, l, seed, 0.1, 2e-2)
            .unwrap_or_else(|e| panic!("modal grads at (B, L) = ({b}, {l}): {e}"));
        assert!(w.is_finite());
    }
}

#[test]
fn modal_is_causal() {
    let (layer, store) = modal(4, 8);
    check_causal(&layer, &store, 2, 29, 5, 1e-6).expect("causal");
}

#[test]
fn modal_init_distributions() {
    let (d, n) = (64, 16);
    let (layer, store) = modal(d, n);
    let p = init_params(&layer, &store, 9);
    let ps = tensors(&store, &p);
    for &v in ps[2] {
        let dt = v.exp();
        assert!(
            (0.999e-3..=1.001e-1).contains(&dt),
            "dt = {dt} out of range"
        );
    }
    let (lo, hi) = ps[2]
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(
        hi - lo > 0.5 * (100.0f32).ln(),
        "log_dt not spread: [{lo}, {hi}]"
    );
    assert!(
        ps[3].iter().all(|&v| (v.exp() - 0.5).abs() < 1e-6),
        "a_real != 0.5"
    );
    for (i, &v) in ps[4].iter().enumerate() {
        let want = std::f32::consts::PI * (i % (n / 2)) as f32;
        assert!((v - want).abs() < 1e-5, "a_imag[{i}] = {v}, want {want}");
    }
    let e_abs2 = ps[5].iter().map(|v| (v * v) as f64).sum::<f64>() / (d * n / 2) as f64;
    assert!((e_abs2 - 1.0).abs() < 0.2, "E|C|^2 = {e_abs2}, want 1");
    assert!(
        ps[1].iter().chain(ps[8]).all(|&v| v == 0.0),
        "projection biases start at zero"
    );
    let bound = 1.0 / (d as f32).sqrt();
    assert!(ps[0].iter().chain(ps[7]).all(|v| v.abs() <= bound));
}

// ------------------------------------------------------------------------------------------
// RTF
// ------------------------------------------------------------------------------------------

fn rtf(d: usize, n: usize, init: RtfInit) -> (RtfLayer, ParamStore) {
    built(|vb| {
        RtfLayer::new(
            RtfConfig {
                d_model: d,
                state_size: n,
                init,
            },
            vb,
        )
    })
    .expect("valid config")
}

/// The aliased impulse response by the IIR recurrence: `h[t] = b_t − Σ_i a_i h[t−i]`,
/// `k[n] = h0 δ[n] + Σ_m h[n + mM]`, with `h` run until it has long decayed.
fn rtf_kernel_ref(layer: &RtfLayer, p: &[f32], l: usize) -> Vec<f64> {
    let r = layer.to_rtf(p).expect("to_rtf");
    let (d, n) = (r.d, r.n);
    let m = l + l % 2;
    let steps = (l + 40_000).div_ceil(m) * m;
    let mut k = vec![0.0f64; d * l];
    for c in 0..d {
        let a = &r.a[c * n..(c + 1) * n];
        let bb = &r.b[c * n..(c + 1) * n];
        let mut h = vec![0.0f64; steps];
        for t in 1..steps {
            let mut v = if t <= n { bb[t - 1] } else { 0.0 };
            for i in 1..=n.min(t) {
                v -= a[i - 1] * h[t - i];
            }
            h[t] = v;
        }
        for (t, hv) in h.iter().enumerate() {
            if t % m < l {
                k[c * l + t % m] += hv;
            }
        }
        k[c * l] += r.h0[c];
    }
    k
}

#[test]
fn rtf_forward_matches_reference() {
    let (b, d) = (2, 5);
    for init in [RtfInit::Xavier, RtfInit::Montel] {
        let (layer, store) = rtf(d, 16, init);
        for (s, &l) in LENS.iter().enumerate() {
            let p = jittered(&layer, &store, 20 + s as u64, 0.1);
            let x = rand_vec(b * l * d, 88 + s as u64, 1.0);
            let k_ref = rtf_kernel_ref(&layer, &p, l);
            let k = layer.kernel(&p, l).expect("kernel");
            let kf: Vec<f32> = k_ref.iter().map(|&v| v as f32).collect();
            assert!(
                max_err(&k, &kf) <= 1e-5,
                "rtf kernel at L={l}: {}",
                max_err(&k, &kf)
            );
            // Cross-check against the inference module where it applies (N + 1 <= M).
            if 16 < l + l % 2 {
                let k_inf = layer
                    .to_rtf(&p)
                    .and_then(|r| r.kernel(l))
                    .expect("Rtf::kernel");
                let ki: Vec<f32> = k_inf.iter().map(|&v| v as f32).collect();
                assert!(max_err(&k, &ki) <= 1e-5, "rtf vs layers::rtf at L={l}");
            }
            let ps = tensors(&store, &p);
            let y_ref =
                mixer_reference(&x, (b, l, d), ps[0], ps[1], &k_ref, &[0.0; 5], ps[5], ps[6]);
            let y = forward(&layer, &p, &x, b, l);
            let e = max_err(&y, &y_ref);
            assert!(e <= 1e-4, "rtf forward at L={l} ({init:?}): max err {e}");
        }
    }
}

#[test]
fn rtf_companion_recurrence_reproduces_kernel() {
    // Including L = 7 (M = 8 < N + 1 = 17), where the coefficients are folded.
    let (layer, store) = rtf(3, 16, RtfInit::Xavier);
    for l in [7, 64] {
        let p = jittered(&layer, &store, 31, 0.1);
        let k = layer.kernel(&p, l).expect("kernel");
        let rec = layer
            .to_rtf(&p)
            .and_then(|r| r.recurrence(l))
            .expect("recurrence");
        let mut st = rec.empty_state();
        let mut y = vec![0.0f64; 3];
        for t in 0..l {
            let u = if t == 0 { [1.0; 3] } else { [0.0; 3] };
            rec.step(&mut st, &u, &mut y).expect("step");
            for c in 0..3 {
                let e = (y[c] - k[c * l + t] as f64).abs();
                assert!(
                    e <= 1e-5,
                    "recurrence vs kernel at L={l}, t={t}, c={c}: {e}"
                );
            }
        }
    }
}

/// A seed whose jittered parameters (as `check_layer_grads` builds them: init at `seed`, plus
/// `rand_vec(.., seed + 1, jitter)`) keep every `a_raw` and `s` at least `2·eps` away from 0:
/// `|·|` in l1_montel has a kink there, where a central difference straddling it measures the
/// mean of the two one-sided slopes rather than the (sub)gradient.
fn kink_free_seed(layer: &RtfLayer, store: &ParamStore, start: u64, jitter: f32) -> u64 {
    let dn = layer.d_model() * layer.config().state_size;
    (start..start + 1_000_000)
        .find(|&seed| {
            let mut p = init_params(layer, store, seed);
            let r = rand_vec(p.len(), seed + 1, jitter);
            for (v, r) in p.iter_mut().zip(r) {
                *v += r;
            }
            let ps = tensors(store, &p);
            ps[2][..dn].iter().chain(ps[4]).all(|v| v.abs() > 0.02)
        })
        .expect("some seed avoids the kinks")
}

#[test]
fn rtf_gradients() {
    // (D, N) = (2, 5): every entry of `ab` is sampled; (1, 16) at L = 7 folds the coefficients
    // (N + 1 > M = 8).
    for (d, n, init) in [
        (4, 5, RtfInit::Xavier),
        (4, 5, RtfInit::Zeros),
        (2, 5, RtfInit::Montel),
        (1, 16, RtfInit::Xavier),
    ] {
        let (layer, store) = rtf(d, n, init);
        for (b, l, start) in [(2, 7, 1), (1, 33, 20), (3, 16, 40), (1, 3, 60)] {
            let seed = kink_free_seed(&layer, &store, start, 0.1);
            let w = check_layer_grads(&layer, &store, b, l, seed, 0.1, 2e-2)
                .unwrap_or_else(|e| panic!("rtf grads at (B, L) = ({b}, {l}), {init:?}: {e}"));
            assert!(w.is_finite());
        }
    }
}

#[test]
fn rtf_is_causal() {
    let (layer, store) = rtf(4, 8, RtfInit::Xavier);
    check_causal(&layer, &store, 2, 29, 5, 1e-6).expect("causal");
}

#[test]
fn rtf_zeros_init_is_h0_delta() {
    let (layer, store) = rtf(6, 16, RtfInit::Zeros);
    let p = init_params(&layer, &store, 2);
    let l = 37;
    let k = layer.kernel(&p, l).expect("kernel");
    let h0 = tensors(&store, &p)[3].to_vec();
    for c in 0..6 {
        assert!((k[c * l] - h0[c]).abs() <= 1e-6, "k[0] != h0");
        assert!(
            k[c * l + 1..(c + 1) * l].iter().all(|v| v.abs() <= 1e-6),
            "not a delta"
        );
    }
}

#[test]
fn rtf_l1_montel_keeps_poles_inside() {
    let (d, n, l) = (4, 16, 4096);
    let (layer, store) = rtf(d, n, RtfInit::Xavier);
    let specs = handles(&store);
    let mut p = init_params(&layer, &store, 5);
    {
        let mut ps = split_handles_mut(&mut p, &specs);
        let big = rand_vec(d * n, 6, 100.0);
        ps[2][..d * n].copy_from_slice(&big);
        ps[4].copy_from_slice(&rand_vec(d, 7, 1e-3));
    }
    let r = layer.to_rtf(&p).expect("to_rtf");
    let k = layer.kernel(&p, l).expect("kernel");
    assert!(k.iter().all(|v| v.is_finite()), "kernel not finite");
    for c in 0..d {
        let sa: f64 = r.a[c * n..(c + 1) * n].iter().map(|v| v.abs()).sum();
        assert!(sa < 1.0, "channel {c}: Σ|a| = {sa} >= 1");
        // |k[t]| <= max |K| <= |h0| + Σ|b| / (1 − Σ|a|)  (Montel bound on the unit circle).
        let sb: f64 = r.b[c * n..(c + 1) * n].iter().map(|v| v.abs()).sum();
        let bound = r.h0[c].abs() + sb / (1.0 - sa);
        let kmax = k[c * l..(c + 1) * l]
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs() as f64));
        assert!(
            kmax <= bound * 1.001,
            "channel {c}: max|k| = {kmax} > bound {bound}"
        );
    }
    // At the init, the kernel decays: the last quarter is far below the first.
    let p = init_params(&layer, &store, 8);
    let k = layer.kernel(&p, l).expect("kernel");
    for c in 0..d {
        let row = &k[c * l..(c + 1) * l];
        let head = row[1..l / 4].iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let tail = row[3 * l / 4..].iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            tail <= 1e-3 * head,
            "channel {c}: tail {tail} vs head {head}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------

#[test]
fn bad_configs_are_errors() {
    let new_modal = |c: ModalConfig| built(|vb| ModalSsm::new(c, vb));
    let new_rtf = |c: RtfConfig| built(|vb| RtfLayer::new(c, vb));
    let e = |r: hyena::Result<(ModalSsm, ParamStore)>| {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    };
    let msg = e(new_modal(ModalConfig {
        state_size: 0,
        ..ModalConfig::new(4)
    }));
    assert!(msg.contains("state_size"), "{msg}");
    let msg = e(new_modal(ModalConfig {
        state_size: 5,
        ..ModalConfig::new(4)
    }));
    assert!(msg.contains("even"), "{msg}");
    assert!(new_modal(ModalConfig::new(0)).is_err());
    assert!(new_modal(ModalConfig {
        dt_min: 0.0,
        ..ModalConfig::new(4)
    })
    .is_err());
    let msg = new_rtf(RtfConfig {
        state_size: 0,
        ..RtfConfig::new(4)
    })
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(msg.contains("state_size"), "{msg}");
    assert!(new_rtf(RtfConfig::new(0)).is_err());
    assert!("bogus".parse::<RtfInit>().is_err());
    assert_eq!("montel".parse::<RtfInit>().ok(), Some(RtfInit::Montel));

    // Bad shapes and a backward without a forward are errors, not panics.
    let (layer, store) = rtf(4, 4, RtfInit::Xavier);
    let p = init_params(&layer, &store, 1);
    let mut y = vec![0.0; 4 * 3];
    let x = vec![0.0; 4 * 3];
    assert!(layer
        .forward(&p, &x[..5], 1, 3, &mut y, &mut Slot::default())
        .is_err());
    assert!(layer
        .forward(&p[1..], &x, 1, 3, &mut y, &mut Slot::default())
        .is_err());
    assert!(layer
        .forward(&p, &[], 1, 0, &mut [], &mut Slot::default())
        .is_err());
    let mut g = vec![0.0; p.len()];
    let mut dx = vec![0.0; 12];
    assert!(layer
        .backward(&p, &x, &y, 1, 3, &mut Slot::default(), &mut dx, &mut g)
        .is_err());
    let (m, m_store) = modal(4, 4);
    let pm = init_params(&m, &m_store, 1);
    let mut cache = Slot::default();
    m.forward(&pm, &x, 1, 3, &mut y, &mut cache)
        .expect("forward");
    let mut gm = vec![0.0; pm.len()];
    // Backward at another shape than the cached forward.
    let x2 = vec![0.0; 4 * 2];
    let mut dx2 = vec![0.0; 8];
    assert!(m
        .backward(&pm, &x2, &x2, 2, 1, &mut cache, &mut dx2, &mut gm)
        .is_err());
}
