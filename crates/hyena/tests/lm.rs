//! The language model: finite-difference gradients through embedding, blocks, final norm, head
//! and cross-entropy; cross-entropy against a direct log-softmax; parameter names.

mod common;

use common::small_lm;
use hyena::models::hyenadna::{HyenaLm, LmCache, LmConfig};
use hyena::ops::loss::cross_entropy;
use hyena::params::ParamStore;
use hyena::testing::{check, rand_vec};

fn tiny(tie: bool) -> LmConfig {
    let mut c = small_lm(2, 8, 16, 16, 8);
    c.tie_embeddings = tie;
    c.operator.filter.shift = 0.05;
    c
}

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    rand_vec(n, seed, 1.0)
        .iter()
        .map(|v| ((v + 1.0) * 5.99) as u32)
        .collect()
}

/// Scale up the 0.02-std init so that every parameter visibly moves the loss.
fn loud(params: &mut ParamStore) {
    let mut k = 0u64;
    let specs = params.specs().to_vec();
    for s in &specs {
        k += 1;
        let name = &s.name;
        if name.ends_with("norm1.weight")
            || name.ends_with("norm2.weight")
            || name.ends_with("ln_f.weight")
        {
            continue;
        }
        let d = s.handle.of_mut(params.data_mut());
        let r = rand_vec(d.len(), 100 + k, 0.4);
        for (x, n) in d.iter_mut().zip(r) {
            *x += n;
        }
    }
}

#[test]
fn lm_gradients_match_finite_differences() {
    // Both ways of running the first block (per position, per vocabulary row).
    for (tie, table) in [(false, false), (true, false), (false, true), (true, true)] {
        let new_cache = || LmCache::with_token_table(table);
        let cfg = tiny(tie);
        let (lm, mut params) = HyenaLm::fresh(&cfg, 5).unwrap();
        loud(&mut params);
        let p = params.data();
        let (b, l) = (2, 10);
        let toks = tokens(b * l, 1);
        let targets = tokens(b * l, 2);
        let v = cfg.padded_vocab();
        let mut cache = new_cache();
        lm.forward(p, &toks, b, l, &mut cache).unwrap();
        let mut dlogits = vec![0.0; b * l * v];
        cross_entropy(&cache.logits, &targets, v, None, &mut dlogits).unwrap();
        let mut grads = params.zeros();
        lm.backward(p, &dlogits, &mut cache, &mut grads).unwrap();

        let loss = |p: &[f32]| {
            let mut c = new_cache();
            lm.forward(p, &toks, b, l, &mut c).unwrap();
            let mut d = vec![0.0; b * l * v];
            cross_entropy(&c.logits, &targets, v, None, &mut d)
                .unwrap()
                .0 as f64
        };
        let names: Vec<(String, Vec<f32>)> = params
            .split(&grads)
            .into_iter()
            .map(|(n, _, g)| (n.to_string(), g.to_vec()))
            .collect();
        assert!(
            names.iter().any(|(n, _)| n == "lm_head.weight") != tie,
            "tied head has no own weight"
        );
        for (name, g) in &names {
            let h = params.spec(name).unwrap().handle;
            let x0 = h.of(p).to_vec();
            let f = |x: &[f32]| {
                let mut m = p.to_vec();
                h.of_mut(&mut m).copy_from_slice(x);
                loss(&m)
            };
            check(name, &x0, g, f, 12, 1e-2, 5e-2)
                .unwrap_or_else(|e| panic!("tie={tie} table={table}: {e}"));
        }
    }
}

/// The first block on the token table (chosen by default once B·L ≥ 4·V_pad) equals the
/// per-position path: logits and every gradient to rounding.
#[test]
fn first_block_on_the_token_table_equals_per_position() {
    for tie in [false, true] {
        let cfg = tiny(tie);
        let (lm, mut params) = HyenaLm::fresh(&cfg, 11).unwrap();
        loud(&mut params);
        let p = params.data();
        let (b, l) = (4, 16); // B·L = 64 = 4·V_pad: the default folds
        let (x, y) = (tokens(b * l, 6), tokens(b * l, 7));
        let v = cfg.padded_vocab();
        let run = |mut cache: LmCache| {
            lm.forward(p, &x, b, l, &mut cache).unwrap();
            let mut d = vec![0.0; b * l * v];
            cross_entropy(&cache.logits, &y, v, None, &mut d).unwrap();
            let mut g = params.zeros();
            lm.backward(p, &d, &mut cache, &mut g).unwrap();
            (cache.logits.clone(), g)
        };
        let (z_rows, g_rows) = run(LmCache::with_token_table(false));
        let (z_tab, g_tab) = run(LmCache::with_token_table(true));
        let (z_auto, g_auto) = run(LmCache::default());
        assert_eq!(
            (&z_auto, &g_auto),
            (&z_tab, &g_tab),
            "the default folds here"
        );
        let close = |a: &[f32], r: &[f32], what: &str| {
            let scale = r.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (i, (p, q)) in a.iter().zip(r).enumerate() {
                assert!(
                    (p - q).abs() <= 2e-5 * scale,
                    "tie={tie} {what} {i}: {p} vs {q}"
                );
            }
        };
        close(&z_tab, &z_rows, "logit");
        close(&g_tab, &g_rows, "grad");
        assert_ne!(
            g_tab, g_rows,
            "the two paths must really differ in rounding"
        );
    }
}

#[test]
fn cross_entropy_matches_log_softmax_and_ignores_padding() {
    let (n, v) = (6, 5);
    let logits = rand_vec(n * v, 3, 3.0);
    let targets = vec![0u32, 4, 2, 4, 1, 3];
    let mut d = vec![0.0; n * v];
    let (loss, count, correct) = cross_entropy(&logits, &targets, v, Some(4), &mut d).unwrap();
    assert_eq!(count, 4);
    let mut want = 0.0f64;
    let mut hits = 0;
    for (i, &t) in targets.iter().enumerate() {
        if t == 4 {
            assert!(
                d[i * v..(i + 1) * v].iter().all(|&x| x == 0.0),
                "ignored rows get no gradient"
            );
            continue;
        }
        let row: Vec<f64> = logits[i * v..(i + 1) * v]
            .iter()
            .map(|&x| x as f64)
            .collect();
        let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
        want += lse - row[t as usize];
        let amax = (0..v).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        hits += usize::from(amax == t as usize);
        // Each kept row's gradient sums to zero (softmax minus one-hot).
        let s: f32 = d[i * v..(i + 1) * v].iter().sum();
        assert!(s.abs() < 1e-6);
    }
    assert!(
        (loss as f64 - want / 4.0).abs() < 1e-5,
        "{loss} vs {}",
        want / 4.0
    );
    assert_eq!(correct, hits);
    let err = cross_entropy(&logits, &[9, 0, 0, 0, 0, 0], v, None, &mut d).unwrap_err();
    assert!(err.to_string().contains("target id"), "{err}");
}

#[test]
fn parameter_names_follow_the_hf_checkpoint() {
    let (lm, params) = HyenaLm::fresh(&tiny(false), 0).unwrap();
    let names: Vec<(String, Vec<usize>)> = params
        .specs()
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone()))
        .collect();
    let has = |k: &str, s: &[usize]| names.iter().any(|(n, sh)| n == k && sh == s);
    assert!(has(
        "hyena.backbone.embeddings.word_embeddings.weight",
        &[16, 8]
    ));
    assert!(has(
        "hyena.backbone.layers.1.mixer.in_proj.weight",
        &[24, 8]
    ));
    assert!(has(
        "hyena.backbone.layers.0.mixer.filter_fn.implicit_filter.6.weight",
        &[8, 8]
    ));
    assert!(has("hyena.backbone.layers.0.mlp.fc1.weight", &[16, 8]));
    assert!(has("hyena.backbone.ln_f.bias", &[8]));
    assert!(has("lm_head.weight", &[16, 8]));
    let bad = lm
        .forward(params.data(), &[3, 12], 1, 2, &mut LmCache::default())
        .unwrap_err();
    assert!(bad.to_string().contains("token id"), "{bad}");
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// The data-parallel step (one batch shard per thread) equals forward → cross-entropy →
/// backward on the whole batch: bit for bit with one thread, to rounding with uneven shards,
/// and bit for bit between two runs on the same thread count.
#[test]
fn sharded_loss_and_grad_equals_whole_batch() {
    use hyena::models::hyenadna::LmWorkspace;
    use hyena::models::parallel::shards_for;
    let cfg = tiny(false);
    let (lm, mut params) = HyenaLm::fresh(&cfg, 7).unwrap();
    loud(&mut params);
    let p = params.data();
    let (b, l) = (5, 12);
    let (x, y) = (tokens(b * l, 3), tokens(b * l, 4));
    let v = cfg.padded_vocab();

    // The plain path.
    let mut cache = LmCache::default();
    lm.forward(p, &x, b, l, &mut cache).unwrap();
    let mut dlogits = vec![0.0; b * l * v];
    let (loss, count, correct) = cross_entropy(&cache.logits, &y, v, None, &mut dlogits).unwrap();
    let mut g_plain = params.zeros();
    lm.backward(p, &dlogits, &mut cache, &mut g_plain).unwrap();

    let run = |threads: usize, grads: &mut [f32]| {
        pool(threads).install(|| {
            assert_eq!(shards_for(b), threads.min(b));
            let mut ws = LmWorkspace::default();
            let st = lm
                .loss_and_grad(p, &x, &y, b, l, 1.0, &mut ws, grads)
                .unwrap();
            let ev = lm.loss(p, &x, &y, b, l, &mut ws).unwrap();
            assert_eq!(ev, st, "loss() must score like loss_and_grad()");
            st
        })
    };
    let mut g1 = params.zeros();
    let st1 = run(1, &mut g1);
    assert_eq!((st1.count, st1.correct), (count, correct));
    assert_eq!((st1.loss_sum / count as f64) as f32, loss);
    assert_eq!(g1, g_plain, "one shard must be the plain path, bit for bit");

    for threads in [2, 3] {
        let mut g = params.zeros();
        let st = run(threads, &mut g);
        assert_eq!((st.count, st.correct), (count, correct));
        assert!((st.loss_sum - st1.loss_sum).abs() < 1e-5 * st1.loss_sum.abs().max(1.0));
        let scale = g_plain.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (i, (a, r)) in g.iter().zip(&g_plain).enumerate() {
            assert!(
                (a - r).abs() <= 1e-5 * scale,
                "{threads} shards: grad {i}: {a} vs {r}"
            );
        }
        let mut again = params.zeros();
        run(threads, &mut again);
        assert_eq!(again, g, "same thread count must give the same bits");
    }

    // Gradients accumulate (gradient accumulation relies on it), also across shards.
    let mut twice = params.zeros();
    pool(2).install(|| {
        let mut ws = LmWorkspace::default();
        for _ in 0..2 {
            lm.loss_and_grad(p, &x, &y, b, l, 0.5, &mut ws, &mut twice)
                .unwrap();
        }
    });
    let mut once = params.zeros();
    run(2, &mut once);
    let scale = once.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (a, r) in twice.iter().zip(&once) {
        assert!((a - r).abs() <= 1e-5 * scale, "{a} vs {r}");
    }
}
