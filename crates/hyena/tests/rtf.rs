//! RTF (arXiv 2405.06147; `ruke1ire/RTF` `rtf.py`): the state-free FFT kernel against the aliased
//! impulse response of a direct recurrence, and the corrected companion-form step against the
//! parallel forward.

use hyena::layers::rtf::{fft_len, Rtf};
use hyena::testing::rand_vec;

/// Random stable RTF: Σ|a| = `mass` < 1 per channel keeps every pole inside the unit circle.
fn rtf(d: usize, n: usize, mass: f64, seed: u64) -> Rtf {
    let a: Vec<f64> = rand_vec(d * n, seed, 1.0)
        .iter()
        .map(|&v| v as f64)
        .collect();
    let mut a2 = a.clone();
    for ch in 0..d {
        let s: f64 = a[ch * n..(ch + 1) * n].iter().map(|v| v.abs()).sum();
        for v in &mut a2[ch * n..(ch + 1) * n] {
            *v *= mass / s;
        }
    }
    Rtf {
        d,
        n,
        a: a2,
        b: rand_vec(d * n, seed + 1, 1.0)
            .iter()
            .map(|&v| v as f64)
            .collect(),
        h0: rand_vec(d, seed + 2, 1.0)
            .iter()
            .map(|&v| v as f64)
            .collect(),
    }
}

/// True impulse response by the plain recurrence `w_t = δ_t − Σ a_k w_{t−k}`,
/// `h_t = h0 δ_t + Σ b_k w_{t−k}`.
fn impulse(r: &Rtf, ch: usize, len: usize) -> Vec<f64> {
    let n = r.n;
    let (a, b) = (&r.a[ch * n..(ch + 1) * n], &r.b[ch * n..(ch + 1) * n]);
    let mut w = vec![0.0; len];
    let mut h = vec![0.0; len];
    for t in 0..len {
        let past = |k: usize, v: &[f64]| if t >= k { v[t - k] } else { 0.0 };
        w[t] = f64::from(t == 0) - (1..=n).map(|k| a[k - 1] * past(k, &w)).sum::<f64>();
        h[t] = if t == 0 { r.h0[ch] } else { 0.0 }
            + (1..=n).map(|k| b[k - 1] * past(k, &w)).sum::<f64>();
    }
    h
}

#[test]
fn fft_kernel_is_the_aliased_impulse_response() {
    for &l in &[7usize, 64, 100, 257] {
        let r = rtf(3, 4, 0.9, l as u64);
        let k = r.kernel(l).unwrap();
        let m = fft_len(l);
        for ch in 0..3 {
            let h = impulse(&r, ch, l + 60 * m);
            for t in 0..l {
                let want: f64 = (0..60).map(|j| h[t + j * m]).sum();
                let got = k[ch * l + t];
                assert!(
                    (got - want).abs() < 1e-9,
                    "L={l} ch {ch} t {t}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn companion_step_equals_the_parallel_forward() {
    for &(l, mass) in &[(63usize, 0.9), (100, 0.99), (256, 0.5), (16, 0.99)] {
        let (d, n) = (4, 6);
        let r = rtf(d, n, mass, 7 + l as u64);
        let u: Vec<f64> = rand_vec(l * d, 3, 1.0).iter().map(|&v| v as f64).collect();
        let y = r.forward(&u, l).unwrap();
        let rec = r.recurrence(l).unwrap();
        let mut st = rec.empty_state();
        let mut yt = vec![0.0; d];
        let mut worst = 0.0f64;
        for t in 0..l {
            rec.step(&mut st, &u[t * d..(t + 1) * d], &mut yt).unwrap();
            for ch in 0..d {
                worst = worst.max((yt[ch] - y[t * d + ch]).abs());
            }
        }
        assert!(worst < 1e-9, "L={l} Σ|a|={mass}: max abs {worst:e}");

        // Without the truncation correction (c = b, d = h0) the step runs the true impulse
        // response, which differs from the aliased kernel when poles are near the circle and
        // L is short.
        if l == 16 {
            let mut plain = rec.clone();
            plain.c = r.b.clone();
            plain.dd = r.h0.clone();
            let mut st = plain.empty_state();
            let mut worst = 0.0f64;
            for t in 0..l {
                plain
                    .step(&mut st, &u[t * d..(t + 1) * d], &mut yt)
                    .unwrap();
                for ch in 0..d {
                    worst = worst.max((yt[ch] - y[t * d + ch]).abs());
                }
            }
            assert!(worst > 1e-3, "the correction must matter here ({worst:e})");
        }
    }
}

#[test]
fn too_short_sequences_are_a_clear_error() {
    let r = rtf(2, 8, 0.5, 1);
    let e = r.kernel(4).unwrap_err().to_string();
    assert!(e.contains("8") && e.contains("L = 4"), "{e}");
}
