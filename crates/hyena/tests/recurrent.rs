//! Recurrent generation of a language model with modal long filters: the step, token by token,
//! equals the parallel forward of the same model, from an empty context and after an FFT
//! prefill; bad inputs are clear errors.

mod common;

use common::small_lm;
use faer::c64;
use hyena::layers::hyena::modal::{ModalBank, ModalFilter, Mode};
use hyena::models::hyenadna::{HyenaLm, LmCache, LmConfig};
use hyena::params::ParamStore;
use hyena::testing::rand_vec;

fn cfg(order: usize, l_max: usize) -> LmConfig {
    let mut c = small_lm(2, 8, 32, l_max, 8);
    c.operator.order = order;
    c
}

/// Random stable modal filters: 3 modes each, some real, moduli in [0.5, 0.995].
fn banks(c: &LmConfig, seed: u64) -> Vec<ModalBank> {
    let (s, d) = (c.operator.order - 1, c.d_model());
    (0..c.n_layer)
        .map(|i| {
            let r = rand_vec(s * d * 9, seed + i as u64, 1.0);
            let filters: Vec<ModalFilter> = (0..s * d)
                .map(|f| {
                    let q = &r[f * 9..f * 9 + 9];
                    let modes = (0..3)
                        .map(|j| {
                            let rho = 0.75 + 0.245 * q[j] as f64;
                            let ang = if j == 0 { 0.0 } else { 1.5 * q[3 + j] as f64 };
                            let res = if j == 0 {
                                c64::new(0.3 * q[6] as f64, 0.0)
                            } else {
                                c64::new(0.3 * q[6 + j] as f64, 0.2 * q[j] as f64)
                            };
                            Mode {
                                pole: c64::from_polar(rho, ang),
                                residue: res,
                            }
                        })
                        .collect();
                    ModalFilter {
                        h0: 0.5 * q[3] as f64,
                        modes,
                    }
                })
                .collect();
            ModalBank::from_filters(s, d, &filters).unwrap()
        })
        .collect()
}

/// Scale up the 0.02-std init so that every part of the model matters.
fn loud(params: &mut ParamStore) {
    let mut k = 0u64;
    let specs = params.specs().to_vec();
    for s in &specs {
        k += 1;
        let name = &s.name;
        if name.contains("norm") || name.contains("ln_f") {
            continue;
        }
        let d = s.handle.of_mut(params.data_mut());
        let noise = rand_vec(d.len(), 300 + k, 0.3);
        for (x, n) in d.iter_mut().zip(noise) {
            *x += n;
        }
    }
}

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    rand_vec(n, seed, 1.0)
        .iter()
        .map(|v| ((v + 1.0) * 5.99) as u32)
        .collect()
}

#[test]
fn step_by_step_equals_the_parallel_forward() {
    for order in [2, 3] {
        let (l, prompt) = (1000, 600);
        let c = cfg(order, 1024);
        let (mut lm, mut params) = HyenaLm::fresh(&c, 3).unwrap();
        loud(&mut params);
        let p = params.data();
        lm.set_modal_banks(banks(&c, 40)).unwrap();
        let toks = tokens(l, 5);
        let v = c.padded_vocab();
        let mut cache = LmCache::default();
        lm.forward(p, &toks, 1, l, &mut cache).unwrap();
        let full = cache.logits.clone();
        let scale = full.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.5, "logits must not be trivially small ({scale})");

        // From an empty context, every one of the 1000 positions.
        let mut st = lm.empty_state().unwrap();
        let mut worst = 0.0f32;
        for (t, &tok) in toks.iter().enumerate() {
            lm.step(p, tok, &mut st).unwrap();
            for (a, b) in st.logits.iter().zip(&full[t * v..(t + 1) * v]) {
                worst = worst.max((a - b).abs());
            }
        }
        println!("order {order}: step worst {worst:e}, scale {scale}");
        assert!(
            worst <= 1e-4,
            "order {order}: step vs forward max abs {worst:e}"
        );
        assert_eq!(st.pos, l);

        // FFT prefill of the first 600 tokens, then steps.
        let mut st = lm
            .prefill(p, &toks[..prompt], &mut LmCache::default())
            .unwrap();
        let mut worst = 0.0f32;
        for (a, b) in st.logits.iter().zip(&full[(prompt - 1) * v..prompt * v]) {
            worst = worst.max((a - b).abs());
        }
        for (t, &tok) in toks.iter().enumerate().skip(prompt) {
            lm.step(p, tok, &mut st).unwrap();
            for (a, b) in st.logits.iter().zip(&full[t * v..(t + 1) * v]) {
                worst = worst.max((a - b).abs());
            }
        }
        assert!(
            worst <= 1e-4,
            "order {order}: prefill+step vs forward max abs {worst:e}"
        );
        // The state does not grow with the context.
        assert_eq!(st.bytes(), lm.empty_state().unwrap().bytes());
    }
}

#[test]
fn distilled_models_refuse_training_and_bad_banks() {
    let c = cfg(2, 64);
    let (lm, params) = HyenaLm::fresh(&c, 1).unwrap();
    let p = params.data();
    let mut b = banks(&c, 2);
    b.pop();
    let e = lm.clone().set_modal_banks(b).unwrap_err().to_string();
    assert!(e.contains("one per block"), "{e}");
    let mut lm = lm;
    lm.set_modal_banks(banks(&c, 2)).unwrap();
    let mut st = lm.empty_state().unwrap();
    assert!(lm
        .step(p, 12, &mut st)
        .unwrap_err()
        .to_string()
        .contains("vocab_size"));
    let toks = tokens(16, 1);
    let mut cache = LmCache::default();
    lm.forward(p, &toks, 1, 16, &mut cache).unwrap();
    let dl = vec![0.0; 16 * c.padded_vocab()];
    let e = lm
        .backward(p, &dl, &mut cache, &mut params.zeros())
        .unwrap_err();
    assert!(e.to_string().contains("inference"), "{e}");
}

#[test]
fn recurrent_generation_samples_what_conv_generation_samples() {
    use hyena::models::generate::{generate, DecodeMode, SampleConfig};
    use hyena::models::{LanguageModel, Model};
    let c = cfg(2, 256);
    let (mut lm, mut params) = HyenaLm::fresh(&c, 8).unwrap();
    loud(&mut params);
    lm.set_modal_banks(banks(&c, 9)).unwrap();
    let m = Model { net: lm, params };
    let prompt = tokens(40, 3);
    for seed in [0, 1, 2] {
        let sc = SampleConfig {
            seed,
            temperature: 1.0,
            ..Default::default()
        };
        let mut conv_dec = m.decoder(DecodeMode::Conv).unwrap();
        let conv = generate(conv_dec.as_mut(), &prompt, 100, &sc).unwrap();
        let mut rec_dec = m.decoder(DecodeMode::Recurrent).unwrap();
        let rec = generate(rec_dec.as_mut(), &prompt, 100, &sc).unwrap();
        assert_eq!(conv, rec, "seed {seed}");
        assert!(
            conv.iter().collect::<std::collections::BTreeSet<_>>().len() > 2,
            "not degenerate"
        );
    }
    let mut rec_dec = m.decoder(DecodeMode::Recurrent).unwrap();
    assert!(generate(rec_dec.as_mut(), &[], 5, &SampleConfig::default()).is_err());
}
