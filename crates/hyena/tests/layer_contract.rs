//! The contract every layer an architecture string can name passes, run over the whole
//! registry (`hyena::models::zoo::LAYER_NAMES` built by `build_layer`): finite-difference
//! gradients of input and every tensor, causality (a sequence mixer's output never sees a later
//! input; a channel mixer's row sees only its own input), and, for layers with a recurrent
//! form, stepping token by token equals the parallel forward. A layer added to the registry is
//! tested here without a line of test code.

use hyena::layers::layer::Layer;
use hyena::models::zoo::{build_layer, ArchConfig, LAYER_NAMES};
use hyena::params::ParamStore;
use hyena::testing::{
    built, check_causal, check_layer_grads_floored, check_step, init_params, rand_vec,
};

/// A small architecture: width 8 (one head of 8 for the multi-head layers), 4 SSM states.
fn arch() -> ArchConfig {
    ArchConfig {
        d_model: 8,
        n_heads: 2,
        state_size: 4,
        vocab_size: 8,
        max_len: 32,
        ..ArchConfig::default()
    }
}

/// The seed of the gradient check. RTF's `l1_montel` normalises by `Σ|a_raw| + |s|`, which has
/// a kink wherever one of those is 0: a central difference straddling it measures the mean of
/// the two one-sided slopes, not the (sub)gradient. For `rtf` the seed is the first from 21 on
/// whose jittered parameters (as the check builds them) keep every `a_raw` and `s` at least
/// `2·eps` away from 0; every other layer is smooth and uses 21.
fn grad_seed(name: &str, layer: &dyn Layer, store: &ParamStore) -> u64 {
    if name != "rtf" {
        return 21;
    }
    let kinked: Vec<_> = store
        .specs()
        .iter()
        .filter(|s| s.name == "ab" || s.name == "s")
        .map(|s| (s.name.clone(), s.handle))
        .collect();
    (21..1_000_000)
        .find(|&seed| {
            let mut p = init_params(layer, store, seed);
            for (v, r) in p.iter_mut().zip(rand_vec(store.len(), seed + 1, 0.1)) {
                *v += r;
            }
            kinked.iter().all(|(name, h)| {
                let v = h.of(&p);
                // Only the denominators (the first half of `ab`) go through |·|.
                let v = if name == "ab" { &v[..v.len() / 2] } else { v };
                v.iter().all(|x| x.abs() > 0.02)
            })
        })
        .expect("some seed avoids the kinks")
}

#[test]
fn every_registered_layer_passes_the_contract() {
    let a = arch();
    let mut steppers = Vec::new();
    for (name, _) in LAYER_NAMES {
        let (layer, store) = built(|vb| build_layer(name, &a, vb))
            .unwrap_or_else(|e| panic!("{name}: cannot build: {e}"));
        assert_eq!(layer.kind(), layer.kind().to_lowercase(), "{name}");
        assert_eq!(layer.d_model(), a.d_model, "{name}");
        // Gradients at a length that is not a power of two, and at one position (relative
        // error 2e-2, or below the finite difference's f32 resolution).
        let seed = grad_seed(name, layer.as_ref(), &store);
        for (b, l) in [(2usize, 9usize), (1, 1)] {
            let worst = check_layer_grads_floored(layer.as_ref(), &store, b, l, seed, 0.1, 2e-2)
                .unwrap_or_else(|e| panic!("{name} gradients at B={b} L={l}: {e}"));
            assert!(worst.is_finite(), "{name}: worst relative error {worst}");
        }
        if layer.mixes_positions() {
            check_causal(layer.as_ref(), &store, 2, 13, 5, 1e-5)
                .unwrap_or_else(|e| panic!("{name} causality: {e}"));
        } else {
            // A channel mixer is causal too, exactly: each position sees only its own input.
            check_causal(layer.as_ref(), &store, 1, 7, 5, 0.0)
                .unwrap_or_else(|e| panic!("{name} causality: {e}"));
        }
        match check_step(layer.as_ref(), &store, 2, 17, 9, 1e-4) {
            Ok(Some(_)) => steppers.push(*name),
            Ok(None) => {}
            Err(e) => panic!("{name} step == forward: {e}"),
        }
    }
    // The layers with a recurrent form: the modal SSM and the StripedHyena 2 operators.
    assert_eq!(steppers, ["se", "mr", "li", "ssm"]);
}
