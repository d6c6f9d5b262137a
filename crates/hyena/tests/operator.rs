//! The implicit filter and the Hyena operator: parity with a PyTorch implementation (fixtures in
//! `tests/fixtures`, made by `tests/fixtures/make_fixtures.py`), finite-difference gradient
//! checks, causality, and clear errors on bad shapes and configs.

mod common;

use std::path::PathBuf;

use common::max_abs_diff;
use hyena::io::safetensors::TensorFile;
use hyena::layers::{FilterCache, HyenaCache, HyenaGradWorkspace, HyenaOperator, OpInput};
use hyena::ops::fftconv::FftConv;
use hyena::params::{DType, Init, ParamStore};
use hyena::testing::{check, dot, rand_vec};
use hyena::{Error, FilterConfig, HyenaConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn fixture(name: &str) -> TensorFile {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    TensorFile::read(&p).unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh operator for `cfg` with its parameters, initialised from `seed`.
fn operator(cfg: &HyenaConfig, seed: u64) -> hyena::Result<(HyenaOperator, ParamStore)> {
    let (op, mut store) =
        ParamStore::build(Init::Zeros, DType::F32, |vb| HyenaOperator::new(cfg, vb))?;
    op.init(store.data_mut(), &mut StdRng::seed_from_u64(seed));
    Ok((op, store))
}

/// Build the operator described by a fixture's metadata and load its parameters and buffers.
fn operator_from_fixture(f: &TensorFile) -> (HyenaOperator, ParamStore, serde_json::Value) {
    let meta: serde_json::Value = serde_json::from_str(&f.metadata["config"]).unwrap();
    let g = |k: &str| meta[k].as_f64().unwrap();
    let cfg = HyenaConfig {
        d_model: g("d_model") as usize,
        l_max: g("l_max") as usize,
        order: g("order") as usize,
        short_filter_order: 3,
        filter: FilterConfig {
            emb_dim: g("emb_dim") as usize,
            filter_order: g("filter_order") as usize,
            num_inner_mlps: g("num_inner_mlps") as usize,
            w: g("w") as f32,
            modulate: meta["modulate"].as_bool().unwrap(),
            fast_decay_pct: g("fast_decay_pct") as f32,
            slow_decay_pct: g("slow_decay_pct") as f32,
            target: g("target") as f32,
            shift: g("shift") as f32,
            ..FilterConfig::default()
        },
    };
    let (mut op, store) =
        ParamStore::build(Init::From(f), DType::F32, |vb| HyenaOperator::new(&cfg, vb)).unwrap();
    op.filter.load_buffers(f, true, None).unwrap();
    (op, store, meta)
}

fn parity(name: &str) {
    let f = fixture(name);
    let (op, store, meta) = operator_from_fixture(&f);
    let p = store.data();
    let (b, l) = (
        meta["batch"].as_u64().unwrap() as usize,
        meta["seq_len"].as_u64().unwrap() as usize,
    );
    let u = &f.get("input.u").unwrap().data;
    let dy = &f.get("input.dy").unwrap().data;
    let mut y = vec![0.0; u.len()];
    let mut cache = HyenaCache::default();
    op.forward(p, u, b, l, &mut y, &mut cache).unwrap();
    let want = &f.get("output.y").unwrap().data;
    let err = max_abs_diff(&y, want);
    println!("{name}: output max abs diff {err:.2e}");
    assert!(
        err <= 1e-5,
        "{name}: output differs from PyTorch by {err:e}"
    );

    // The recomputed buffers agree with the fixture's to float rounding, too.
    let fresh = hyena::layers::FilterBuffers::new(op.filter.config());
    assert!(
        max_abs_diff(&fresh.z, &op.filter.buffers.z) < 1e-5,
        "pos_emb.z recomputation"
    );
    assert!(
        max_abs_diff(&fresh.t, &op.filter.buffers.t) < 1e-6,
        "pos_emb.t recomputation"
    );
    assert!(
        max_abs_diff(&fresh.deltas, &op.filter.buffers.deltas) < 1e-5,
        "deltas recomputation"
    );

    let mut fc = FilterCache::default();
    op.filter.forward(p, l, &mut fc).unwrap();
    let kerr = max_abs_diff(&fc.k, &f.get("intermediate.k").unwrap().data);
    assert!(kerr <= 1e-5, "{name}: implicit filter differs by {kerr:e}");

    let mut du = vec![0.0; u.len()];
    let mut grads = store.zeros();
    op.backward(
        p,
        dy,
        u,
        &cache,
        &mut du,
        &mut grads,
        &mut HyenaGradWorkspace::default(),
    )
    .unwrap();
    let mut checked = 0;
    let mut report = |pname: &str, got: &[f32]| {
        let want = &f.get(&format!("grad.{pname}")).unwrap().data;
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let err = max_abs_diff(got, want);
        println!("{name}: grad {pname:40} max abs diff {err:.2e} (max |ref| {scale:.2e})");
        assert!(
            err <= 1e-5 * scale,
            "{name}: grad {pname} differs from PyTorch by {err:e}"
        );
        checked += 1;
    };
    report("input.u", &du);
    for (pname, _, g) in store.split(&grads) {
        report(pname, g);
    }
    let in_fixture = f.tensors.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(checked, in_fixture, "every reference gradient was compared");
}

#[test]
fn operator_order2_matches_pytorch() {
    parity("operator_order2.safetensors");
}

#[test]
fn operator_order3_matches_pytorch() {
    parity("operator_order3.safetensors");
}

#[test]
fn fftconv_matches_pytorch() {
    let f = fixture("fftconv.safetensors");
    let u = &f.get("u").unwrap();
    let (b, c, l) = (u.shape[0], u.shape[1], u.shape[2]);
    let (k, d, dy) = (
        &f.get("k").unwrap().data,
        &f.get("D").unwrap().data,
        &f.get("dy").unwrap().data,
    );
    let eng = FftConv::new();
    let mut y = vec![0.0; u.data.len()];
    eng.forward(&u.data, k, d, (b, c, l), &mut y, None).unwrap();
    assert!(max_abs_diff(&y, &f.get("y").unwrap().data) <= 1e-5);
    let (mut du, mut dk, mut dd) = (vec![0.0; y.len()], vec![0.0; c * l], vec![0.0; c]);
    eng.backward(
        dy,
        &u.data,
        k,
        d,
        (b, c, l),
        None,
        &mut du,
        &mut dk,
        &mut dd,
    )
    .unwrap();
    assert!(max_abs_diff(&du, &f.get("grad.u").unwrap().data) <= 1e-5);
    assert!(max_abs_diff(&dk, &f.get("grad.k").unwrap().data) <= 1e-4);
    assert!(max_abs_diff(&dd, &f.get("grad.D").unwrap().data) <= 1e-4);
}

/// A tiny operator; order 3 also trains the positional embedding `z` (safari's default), so the
/// gradient checks cover that path too.
fn small_cfg(order: usize) -> HyenaConfig {
    HyenaConfig {
        d_model: 4,
        l_max: 16,
        order,
        short_filter_order: 3,
        filter: FilterConfig {
            emb_dim: 5,
            filter_order: 6,
            w: 1.5,
            shift: 0.05,
            learn_pos_emb: order == 3,
            ..FilterConfig::default()
        },
    }
}

/// Finite differences through the whole operator, for every parameter and the input.
fn operator_gradcheck(order: usize) {
    let cfg = small_cfg(order);
    let (op, mut store) = operator(&cfg, 42).unwrap();
    // Larger filter weights so that the long convolution matters in the loss.
    let w_out = op.filter.linears().last().unwrap().0;
    for v in w_out.of_mut(store.data_mut()).iter_mut() {
        *v *= 3.0;
    }
    let p = store.data();
    let (b, l) = (2, 12);
    let u = rand_vec(b * l * 4, 1, 1.0);
    let dy = rand_vec(b * l * 4, 2, 1.0);
    let mut y = vec![0.0; u.len()];
    let mut cache = HyenaCache::default();
    op.forward(p, &u, b, l, &mut y, &mut cache).unwrap();
    let mut du = vec![0.0; u.len()];
    let mut grads = store.zeros();
    op.backward(
        p,
        &dy,
        &u,
        &cache,
        &mut du,
        &mut grads,
        &mut HyenaGradWorkspace::default(),
    )
    .unwrap();

    let loss = |p: &[f32], u: &[f32]| {
        let mut y = vec![0.0; u.len()];
        op.forward(p, u, b, l, &mut y, &mut HyenaCache::default())
            .unwrap();
        dot(&dy, &y)
    };
    check("du", &u, &du, |x| loss(p, x), 48, 1e-2, 2e-2).unwrap();
    let names: Vec<(String, Vec<f32>)> = store
        .split(&grads)
        .into_iter()
        .map(|(n, _, g)| (n.to_string(), g.to_vec()))
        .collect();
    let has_z = names.iter().any(|(n, _)| n == "filter_fn.pos_emb.z");
    assert_eq!(
        has_z, cfg.filter.learn_pos_emb,
        "pos_emb.z is trained iff configured"
    );
    for (name, g) in &names {
        let h = store.spec(name).unwrap().handle;
        let x0 = h.of(p).to_vec();
        let f = |x: &[f32]| {
            let mut q = p.to_vec();
            h.of_mut(&mut q).copy_from_slice(x);
            loss(&q, &u)
        };
        let worst =
            check(name, &x0, g, f, 24, 1e-2, 3e-2).unwrap_or_else(|e| panic!("order {order}: {e}"));
        println!("order {order}: {name:40} worst rel err {worst:.2e}");
    }
}

/// An input given as a table and row indices is the same function as the gathered rows: same
/// output, the same parameter gradients, and the table gradient is the per-row sum of the row
/// gradients (orders 2 and 3, a batch of 2 with repeated and unused table rows).
#[test]
fn table_input_equals_gathered_rows() {
    for order in [2, 3] {
        let cfg = small_cfg(order);
        let d = cfg.d_model;
        let (op, store) = operator(&cfg, 9).unwrap();
        let p = store.data();
        let (b, l, v) = (2, 13, 5);
        let table = rand_vec(v * d, 3, 1.0);
        // rows 0..4 only (row 4 unused), with runs of repeats
        let idx: Vec<u32> = (0..b * l).map(|t| ((t * 7 / 3) % 4) as u32).collect();
        let rows: Vec<f32> = idx
            .iter()
            .flat_map(|&i| table[i as usize * d..(i as usize + 1) * d].to_vec())
            .collect();
        let resid = rand_vec(b * l * d, 4, 1.0);
        let dy = rand_vec(b * l * d, 5, 1.0);
        let run = |input: OpInput<'_>, du_rows: usize| {
            let mut y = vec![0.0; b * l * d];
            let mut cache = HyenaCache::default();
            op.forward_input(p, input, Some(&resid), b, l, &mut y, &mut cache)
                .unwrap();
            let mut du = vec![0.0; du_rows * d];
            let mut g = store.zeros();
            let mut ws = HyenaGradWorkspace::default();
            op.backward_input(p, &dy, input, &cache, &mut du, &mut g, &mut ws)
                .unwrap();
            (y, du, g)
        };
        let (y_r, du_r, g_r) = run(OpInput::Rows(&rows), b * l);
        let (y_t, du_t, g_t) = run(
            OpInput::Table {
                table: &table,
                idx: &idx,
            },
            v,
        );
        let mut du_sum = vec![0.0f32; v * d];
        for (t, &i) in idx.iter().enumerate() {
            for j in 0..d {
                du_sum[i as usize * d + j] += du_r[t * d + j];
            }
        }
        let scale = |x: &[f32]| x.iter().fold(1e-3f32, |m, a| m.max(a.abs()));
        assert!(
            max_abs_diff(&y_r, &y_t) <= 1e-5 * scale(&y_r),
            "order {order}: y"
        );
        assert!(
            max_abs_diff(&du_sum, &du_t) <= 1e-5 * scale(&du_sum),
            "order {order}: du"
        );
        assert!(
            du_t[4 * d..].iter().all(|&x| x == 0.0),
            "unused row has no gradient"
        );
        assert!(
            max_abs_diff(&g_r, &g_t) <= 1e-5 * scale(&g_r),
            "order {order}: grads"
        );
    }
    // An index past the table is an error naming it.
    let (op, store) = operator(&small_cfg(2), 9).unwrap();
    let mut y = vec![0.0; 2 * 4];
    let e = op
        .forward_input(
            store.data(),
            OpInput::Table {
                table: &[0.0; 8],
                idx: &[0, 2],
            },
            None,
            1,
            2,
            &mut y,
            &mut HyenaCache::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("row index") && e.contains('2'), "{e}");
}

#[test]
fn operator_order2_gradients_match_finite_differences() {
    operator_gradcheck(2);
}

#[test]
fn operator_order3_gradients_match_finite_differences() {
    operator_gradcheck(3);
}

#[test]
fn filter_gradients_match_finite_differences() {
    for order in [2, 3] {
        let cfg = small_cfg(order);
        // The filter of an operator (its values as the operator's initialisation draws them);
        // only the filter's tensors (`filter_fn.*`) are checked.
        let (op, store) = operator(&cfg, 7).unwrap();
        let filt = op.filter.clone();
        let params = store.data();
        let l = 13;
        let cf = cfg.filter_channels();
        let gk = rand_vec(cf * l, 3, 1.0);
        let gb = rand_vec(cf, 4, 1.0);
        let mut cache = FilterCache::default();
        filt.forward(params, l, &mut cache).unwrap();
        let mut grads = store.zeros();
        filt.backward(params, &mut gk.clone(), &gb, &cache, &mut grads)
            .unwrap();
        let loss = |p: &[f32]| {
            let mut c = FilterCache::default();
            filt.forward(p, l, &mut c).unwrap();
            dot(&gk, &c.k) + dot(&gb, &c.bias)
        };
        let names: Vec<(String, Vec<f32>, hyena::params::P)> = store
            .specs()
            .iter()
            .filter_map(|s| {
                let name = s.name.strip_prefix("filter_fn.")?;
                Some((name.to_string(), s.handle.of(&grads).to_vec(), s.handle))
            })
            .collect();
        for (name, g, h) in &names {
            let x0 = h.of(params).to_vec();
            let f = |x: &[f32]| {
                let mut p = params.to_vec();
                h.of_mut(&mut p).copy_from_slice(x);
                loss(&p)
            };
            check(name, &x0, g, f, 30, 1e-2, 2e-2)
                .unwrap_or_else(|e| panic!("filter order {order}: {e}"));
        }
    }
}

#[test]
fn operator_is_causal() {
    for order in [2, 3] {
        let mut cfg = small_cfg(order);
        cfg.l_max = 100;
        cfg.d_model = 8;
        let (op, store) = operator(&cfg, 3).unwrap();
        let p = store.data();
        let (b, l, d) = (2, 100, 8);
        let u = rand_vec(b * l * d, 5, 1.0);
        let mut y0 = vec![0.0; u.len()];
        op.forward(p, &u, b, l, &mut y0, &mut HyenaCache::default())
            .unwrap();
        for &tp in &[0usize, 1, 37, 99] {
            let mut u1 = u.clone();
            for bb in 0..b {
                for c in 0..d {
                    u1[(bb * l + tp) * d + c] += 2.0;
                }
            }
            let mut y1 = vec![0.0; u.len()];
            op.forward(p, &u1, b, l, &mut y1, &mut HyenaCache::default())
                .unwrap();
            for bb in 0..b {
                let row = |y: &[f32], t0: usize, t1: usize| {
                    y[(bb * l + t0) * d..(bb * l + t1) * d].to_vec()
                };
                let before = max_abs_diff(&row(&y0, 0, tp), &row(&y1, 0, tp));
                let after = max_abs_diff(&row(&y0, tp, l), &row(&y1, tp, l));
                assert!(
                    before <= 1e-5,
                    "order {order} t'={tp}: earlier outputs changed by {before:e}"
                );
                assert!(
                    after > 1e-3,
                    "order {order} t'={tp}: later outputs did not change ({after:e})"
                );
            }
        }
    }
}

#[test]
fn shape_and_config_errors_are_clear() {
    let cfg = small_cfg(2);
    let (op, store) = operator(&cfg, 0).unwrap();
    let p = store.data();
    let mut cache = HyenaCache::default();
    // L > l_max
    let u = vec![0.0; 20 * 4];
    let mut y = vec![0.0; u.len()];
    match op.forward(p, &u, 1, 20, &mut y, &mut cache) {
        Err(Error::TooLong {
            len: 20, l_max: 16, ..
        }) => {}
        other => panic!("expected TooLong, got {other:?}"),
    }
    let msg = op
        .forward(p, &u, 1, 20, &mut y, &mut cache)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("L=20") && msg.contains("l_max=16"), "{msg}");
    // Channel mismatch: data for D=5 given to a D=4 operator.
    let u = vec![0.0; 8 * 5];
    let mut y = vec![0.0; u.len()];
    let msg = op
        .forward(p, &u, 1, 8, &mut y, &mut cache)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("[1, 8, 4]") && msg.contains("40 elements"),
        "{msg}"
    );
    // Wrong output size.
    let u = vec![0.0; 8 * 4];
    let mut y = vec![0.0; 3];
    assert!(matches!(
        op.forward(p, &u, 1, 8, &mut y, &mut cache),
        Err(Error::Shape { .. })
    ));
    // Invalid configs.
    for (cfg, field) in [
        (
            HyenaConfig {
                order: 1,
                ..small_cfg(2)
            },
            "order",
        ),
        (
            HyenaConfig {
                d_model: 0,
                ..small_cfg(2)
            },
            "d_model",
        ),
        (
            HyenaConfig {
                filter: FilterConfig {
                    emb_dim: 4,
                    ..FilterConfig::default()
                },
                ..small_cfg(2)
            },
            "emb_dim",
        ),
    ] {
        let msg = operator(&cfg, 0).unwrap_err().to_string();
        assert!(msg.contains(field), "{msg}");
    }
    // A filter longer than l_max.
    let mut fc = FilterCache::default();
    assert!(matches!(
        op.filter.forward(p, 17, &mut fc),
        Err(Error::TooLong { .. })
    ));
}

#[test]
fn config_round_trips_through_json_and_rejects_unknown_fields() {
    let cfg = small_cfg(3);
    let s = serde_json::to_string_pretty(&cfg).unwrap();
    let back: HyenaConfig = serde_json::from_str(&s).unwrap();
    assert_eq!(cfg, back);
    let err = serde_json::from_str::<HyenaConfig>(r#"{"d_model": 8, "ordr": 2}"#).unwrap_err();
    assert!(err.to_string().contains("ordr"), "{err}");
}

/// The `(o d)` blocked filter layout (HyenaDNA standalone) is the `(v o)` interleaved one
/// (safari) with the filter channels permuted: permuting `w_out` rows, `bias` and `deltas`
/// accordingly must give the same operator.
#[test]
fn blocked_filter_layout_is_a_channel_permutation() {
    let cfg_i = small_cfg(3);
    let mut cfg_b = cfg_i.clone();
    cfg_b.filter.layout = hyena::FilterLayout::Blocked;
    let (a, a_params) = operator(&cfg_i, 11).unwrap();
    let (mut b, _) = operator(&cfg_b, 11).unwrap();
    let (d, s, f) = (cfg_i.d_model, cfg_i.order - 1, cfg_i.filter.filter_order);
    let mut b_params = a_params.clone();
    let (pa, pb) = (a_params.data(), b_params.data_mut());
    let (a_wout, b_wout) = (
        a.filter.linears().last().unwrap().0,
        b.filter.linears().last().unwrap().0,
    );
    for o in 0..s {
        for dd in 0..d {
            let (ci, cb) = (dd * s + o, o * d + dd);
            b.filter.bias().of_mut(pb)[cb] = a.filter.bias().of(pa)[ci];
            b.filter.buffers.deltas[cb] = a.filter.buffers.deltas[ci];
            let row = a_wout.of(pa)[ci * f..(ci + 1) * f].to_vec();
            b_wout.of_mut(pb)[cb * f..(cb + 1) * f].copy_from_slice(&row);
        }
    }
    let (bs, l) = (2, 16);
    let u = rand_vec(bs * l * d, 8, 1.0);
    let (mut ya, mut yb) = (vec![0.0; u.len()], vec![0.0; u.len()]);
    a.forward(pa, &u, bs, l, &mut ya, &mut HyenaCache::default())
        .unwrap();
    b.forward(
        b_params.data(),
        &u,
        bs,
        l,
        &mut yb,
        &mut HyenaCache::default(),
    )
    .unwrap();
    assert!(max_abs_diff(&ya, &yb) <= 1e-6, "{}", max_abs_diff(&ya, &yb));
    // ...and without the permutation the two layouts really differ (order 3).
    let (c, _) = operator(&cfg_b, 11).unwrap();
    let c_params = a_params.clone();
    let mut yc = vec![0.0; u.len()];
    c.forward(
        c_params.data(),
        &u,
        bs,
        l,
        &mut yc,
        &mut HyenaCache::default(),
    )
    .unwrap();
    assert!(max_abs_diff(&ya, &yc) > 1e-4);
}
