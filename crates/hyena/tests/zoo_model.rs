//! Zoo language models: gradients of the whole model (embedding, norms, layers, unembedding)
//! by finite differences, ignored targets, causality and architecture-string errors.

use hyena::models::zoo::{parse_layers, ArchConfig, NormKind, ZooCache, ZooModel};
use hyena::testing::{check_with_floor, rand_vec};

fn arch(layers: &str, norm: NormKind) -> ArchConfig {
    ArchConfig {
        layers: parse_layers(layers).unwrap(),
        d_model: 8,
        n_heads: 2,
        state_size: 4,
        norm,
        vocab_size: 7,
        max_len: 16,
        decoder: false,
    }
}

fn data(b: usize, l: usize, v: usize) -> (Vec<u32>, Vec<i32>) {
    let toks: Vec<u32> = rand_vec(b * l, 3, 1.0)
        .iter()
        .map(|x| ((x + 1.0) * 0.5 * v as f32).min(v as f32 - 1.0) as u32)
        .collect();
    // Every third target ignored.
    let tg: Vec<i32> = toks
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            if i % 3 == 0 {
                -100
            } else {
                ((t + 1) % v as u32) as i32
            }
        })
        .collect();
    (toks, tg)
}

fn loss_of(m: &ZooModel, p: &[f32], toks: &[u32], tg: &[i32], b: usize, l: usize) -> f64 {
    let mut c = ZooCache::default();
    m.forward(p, toks, b, l, &mut c).unwrap();
    let mut dl = Vec::new();
    let s = m.loss(&c, tg, None, &mut dl).unwrap();
    s.loss_sum / s.count as f64
}

#[test]
fn whole_model_gradients() {
    for (layers, norm, decoder) in [
        ("hyena,swiglu", NormKind::Rms, false),
        ("mlp,hyena", NormKind::Layer, false),
        ("attn,mh-attn,swa,swiglu", NormKind::Rms, false),
        ("rtf,ssm,mlp", NormKind::Layer, false),
        // (LI's pole gradients are ~1e-8 here, below what the model's f32 loss resolves by
        // finite differences; its own layer test checks them at a workable scale.)
        ("mh-hyena,se,mr", NormKind::Rms, false),
        // MAD's AutoEncoder head (compression).
        ("hyena,mlp", NormKind::Rms, true),
    ] {
        let a = ArchConfig {
            decoder,
            ..arch(layers, norm)
        };
        let (m, mut params) = ZooModel::fresh(&a, 1).unwrap();
        let jit = rand_vec(params.len(), 2, 0.05);
        for (p, r) in params.data_mut().iter_mut().zip(jit) {
            *p += r;
        }
        let (b, l) = (2, 11);
        let (toks, tg) = data(b, l, 7);
        let mut c = ZooCache::default();
        m.forward(params.data(), &toks, b, l, &mut c).unwrap();
        let mut dl = Vec::new();
        let s = m.loss(&c, &tg, None, &mut dl).unwrap();
        assert_eq!(s.count, tg.iter().filter(|&&t| t >= 0).count());
        let mut g = vec![0.0; params.len()];
        m.backward(params.data(), &dl, &mut c, &mut g).unwrap();
        let p0 = params.data().to_vec();
        let l0 = s.loss_sum / s.count as f64; // the loss `loss_of` computes
        let (mm, mut mm_params) = ZooModel::fresh(&a, 1).unwrap();
        // Each named tensor on its own.
        let mut off = 0;
        for spec in params.specs().to_vec() {
            let n = spec.handle.len();
            // Embeddings are ~0.05 in size and LayerNorm divides by their spread: a smaller
            // step keeps their difference quotient accurate. Elsewhere the larger step keeps
            // f32 rounding of the loss below most gradients; the ones below the central
            // difference's resolution, about ε·|loss|/h (some SSM decay rates get ~5e-6),
            // cannot be judged and are accepted within it.
            let h = if spec.name == "embedding.weight" {
                2e-3
            } else {
                1e-2
            };
            let atol = 4.0 * f32::EPSILON as f64 * l0.abs() / (2.0 * h as f64);
            check_with_floor(
                &format!("{layers} {}", spec.name),
                &p0[off..off + n],
                &g[off..off + n],
                |pt| {
                    mm_params.data_mut().copy_from_slice(&p0);
                    mm_params.data_mut()[off..off + n].copy_from_slice(pt);
                    loss_of(&mm, mm_params.data(), &toks, &tg, b, l)
                },
                12,
                h,
                3e-2,
                atol,
            )
            .unwrap();
            off += n;
        }
        // Targets set to -100 do not change the loss.
        let mut tg2 = tg.clone();
        tg2[0] = 3;
        assert_ne!(
            loss_of(&m, params.data(), &toks, &tg2, b, l),
            loss_of(&m, params.data(), &toks, &tg, b, l)
        );
    }
}

#[test]
fn zoo_model_is_causal() {
    let (m, params) =
        ZooModel::fresh(&arch("hyena,swiglu,mh-attn,li,mlp", NormKind::Rms), 4).unwrap();
    let p = params.data();
    let (b, l, v) = (1, 12, 7);
    let (toks, _) = data(b, l, v);
    let mut c0 = ZooCache::default();
    m.forward(p, &toks, b, l, &mut c0).unwrap();
    let mut t2 = toks.clone();
    t2[6] = (t2[6] + 1) % v as u32;
    let mut c1 = ZooCache::default();
    m.forward(p, &t2, b, l, &mut c1).unwrap();
    // FFT convolutions round differently when any input changes: compare with a tolerance.
    for t in 0..l {
        let diff = c0.logits[t * v..(t + 1) * v]
            .iter()
            .zip(&c1.logits[t * v..(t + 1) * v])
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert_eq!(diff < 1e-5, t < 6, "position {t}: {diff}");
    }
}

#[test]
fn architecture_errors_are_clear() {
    let e = parse_layers("hyena,bogus").unwrap_err().to_string();
    assert!(e.contains("bogus") && e.contains("swiglu"), "{e}");
    assert!(parse_layers(" ,").is_err());
    assert_eq!(
        parse_layers("Hyena SwiGLU").unwrap(),
        vec!["hyena", "swiglu"]
    );
    let mut a = arch("hyena", NormKind::Rms);
    a.d_model = 0;
    assert!(ZooModel::fresh(&a, 0).is_err());
    let (m, params) = ZooModel::fresh(&arch("mlp", NormKind::Rms), 0).unwrap();
    let p = params.data();
    let mut c = ZooCache::default();
    assert!(
        m.forward(p, &[9, 1], 1, 2, &mut c).is_err(),
        "token >= vocab"
    );
    assert!(
        m.forward(p, &[1; 17], 1, 17, &mut c).is_err(),
        "longer than max_len"
    );
}

#[test]
fn decoder_head_sees_only_the_last_position() {
    // The AutoEncoder decodes from the encoder's last position: every logit depends on it,
    // and on nothing else once the encoder is per-position (an MLP only).
    let a = ArchConfig {
        decoder: true,
        ..arch("mlp", NormKind::Rms)
    };
    let (m, params) = ZooModel::fresh(&a, 2).unwrap();
    let p = params.data();
    let (b, l, v) = (1, 9, 7);
    let (toks, _) = data(b, l, v);
    let mut c0 = ZooCache::default();
    m.forward(p, &toks, b, l, &mut c0).unwrap();
    let mut t2 = toks.clone();
    t2[3] = (t2[3] + 1) % v as u32;
    let mut c1 = ZooCache::default();
    m.forward(p, &t2, b, l, &mut c1).unwrap();
    assert_eq!(
        c0.logits, c1.logits,
        "a non-final token changed the decoding"
    );
    t2[l - 1] = (t2[l - 1] + 1) % v as u32;
    m.forward(p, &t2, b, l, &mut c1).unwrap();
    for t in 0..l {
        assert_ne!(c0.logits[t * v..(t + 1) * v], c1.logits[t * v..(t + 1) * v]);
    }
    assert!(params.specs().iter().any(|s| s.name == "decoder.l2.weight"));
}

/// The head on scored rows only (`forward_scored`, what MAD training and evaluation use) gives
/// the same loss, the same gradients and the same predictions at the scored positions as the
/// head on every row; with the decoder head too, and with the cache reused in both orders.
#[test]
fn scored_rows_head_matches_the_full_head() {
    for (layers, decoder) in [
        ("hyena,swiglu", false),
        ("mh-attn,mlp", false),
        ("hyena,mlp", true),
    ] {
        let a = ArchConfig {
            decoder,
            ..arch(layers, NormKind::Rms)
        };
        let (m, params) = ZooModel::fresh(&a, 3).unwrap();
        let p = params.data();
        let (b, l) = (3, 10);
        let (toks, tg) = data(b, l, 7);
        let scored: Vec<usize> = (0..b * l).filter(|&i| tg[i] >= 0).collect();
        assert!(scored.len() < b * l);
        let mut c = ZooCache::default();
        let run = |c: &mut ZooCache, rows: bool| {
            if rows {
                m.forward_scored(p, &toks, &tg, b, l, c).unwrap();
            } else {
                m.forward(p, &toks, b, l, c).unwrap();
            }
            let mut dl = Vec::new();
            let s = m.loss(c, &tg, None, &mut dl).unwrap();
            let mut g = vec![0.0; params.len()];
            m.backward(p, &dl, c, &mut g).unwrap();
            (s, g, c.logits.clone())
        };
        let (s_all, g_all, lg_all) = run(&mut c, false);
        let (s_rows, g_rows, lg_rows) = run(&mut c, true);
        assert_eq!(c.rows(), Some(&scored[..]));
        assert_eq!((s_rows.count, s_rows.correct), (s_all.count, s_all.correct));
        assert!(
            (s_rows.loss_sum - s_all.loss_sum).abs() < 1e-9 * s_all.loss_sum.abs().max(1.0) + 1e-5
        );
        let v = a.vocab_size;
        assert_eq!(lg_rows.len(), scored.len() * v);
        for (k, &i) in scored.iter().enumerate() {
            for j in 0..v {
                let (x, y) = (lg_rows[k * v + j], lg_all[i * v + j]);
                assert!(
                    (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                    "{layers}: logit {i},{j}: {x} vs {y}"
                );
            }
        }
        for (i, (x, y)) in g_rows.iter().zip(&g_all).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "{layers}: grad {i}: {x} vs {y}"
            );
        }
        // Back to every row on the same cache.
        let (s_again, _, lg_again) = run(&mut c, false);
        assert!(c.rows().is_none());
        assert_eq!(lg_again, lg_all);
        assert_eq!(s_again.count, s_all.count);
    }
}
