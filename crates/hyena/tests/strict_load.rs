//! Loading a model directory loses nothing and invents nothing: the config and the weights
//! must agree exactly (every tensor of the file used, every tensor of the model present), a
//! model's config states every key, and non-finite weights are refused, each with an error
//! naming the file, the key or tensor, and what to do.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{small_lm, TempDir};
use hyena::checkpoint::{load_model, read_json, save_model};
use hyena::io::safetensors::{write_atomic, TensorFile};
use hyena::models::hyenadna::HyenaLm;
use hyena::models::Model;

/// A saved 3-block HyenaDNA run directory in `dir/name`.
fn saved_run(dir: &TempDir, name: &str, n_layer: usize) -> PathBuf {
    let (net, params) = HyenaLm::fresh(&small_lm(n_layer, 8, 16, 16, 8), 1).unwrap();
    let out = dir.0.join(name);
    save_model(&out, &Model { net, params }).unwrap();
    out
}

fn set_config(run: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = run.join("config.json");
    let mut cfg = read_json(&p).unwrap();
    f(&mut cfg);
    std::fs::write(&p, serde_json::to_string(&cfg).unwrap()).unwrap();
}

fn load_err(run: &Path) -> String {
    match load_model(run) {
        Ok(_) => panic!("{} loaded", run.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_config_with_fewer_layers_than_the_weights_is_refused() {
    let dir = TempDir::new("strict-layers");
    let run = saved_run(&dir, "run", 3);
    assert!(load_model(&run).is_ok());
    set_config(&run, |c| c["model"]["n_layer"] = 2.into());
    let e = load_err(&run);
    assert!(
        e.contains("model.safetensors")
            && e.contains("`hyena.backbone.layers.2.")
            && e.contains("more")
            && e.contains("n_layer 2")
            && e.contains("layers 0..2"),
        "{e}"
    );
    // More layers than the weights: every missing tensor counted, the same hint.
    set_config(&run, |c| c["model"]["n_layer"] = 5.into());
    let e = load_err(&run);
    assert!(
        e.contains("not in the weights")
            && e.contains("`hyena.backbone.layers.3.")
            && e.contains("5 block(s) but the weights have layers 0..2"),
        "{e}"
    );
}

#[test]
fn a_tensor_the_model_does_not_use_is_refused() {
    let dir = TempDir::new("strict-extra");
    let run = saved_run(&dir, "run", 1);
    let w = run.join("model.safetensors");
    let mut f = TensorFile::read(&w).unwrap();
    let t = f.tensors["lm_head.weight"].clone();
    f.tensors.insert("stray.weight".into(), t);
    write_atomic(&w, &f.tensors, &f.metadata).unwrap();
    let e = load_err(&run);
    assert!(
        e.contains("`stray.weight`") && e.contains("not used"),
        "{e}"
    );
}

#[test]
fn a_missing_model_config_key_is_an_error_not_a_default() {
    let dir = TempDir::new("strict-key");
    let run = saved_run(&dir, "run", 1);
    set_config(&run, |c| {
        c["model"].as_object_mut().unwrap().remove("n_layer");
    });
    let e = load_err(&run);
    assert!(
        e.contains("config.json") && e.contains("`model.n_layer`"),
        "{e}"
    );
    set_config(&run, |c| {
        c["model"]["n_layer"] = 1.into();
        c["model"]["operator"]["filter"]
            .as_object_mut()
            .unwrap()
            .remove("shift");
    });
    let e = load_err(&run);
    assert!(e.contains("`model.operator.filter.shift`"), "{e}");
    // A key added after the first runs were written may be absent (documented default).
    set_config(&run, |c| {
        c["model"]["operator"]["filter"]["shift"] = 0.0.into();
        c["model"]["operator"]["filter"]
            .as_object_mut()
            .unwrap()
            .remove("learn_pos_emb");
    });
    load_model(&run).unwrap();
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let dir = TempDir::new("strict-nan");
    let run = saved_run(&dir, "run", 1);
    let w = run.join("model.safetensors");
    let mut f = TensorFile::read(&w).unwrap();
    let name = "hyena.backbone.layers.0.mlp.fc1.weight";
    f.tensors.get_mut(name).unwrap().data[5] = f32::NAN;
    write_atomic(&w, &f.tensors, &f.metadata).unwrap();
    let e = load_err(&run);
    assert!(
        e.contains("model.safetensors")
            && e.contains(&format!("`{name}`"))
            && e.contains("NaN at index 5"),
        "{e}"
    );
    // An infinity in a filter buffer (read outside the parameter store) too.
    let mut f = TensorFile::read(&w).unwrap();
    f.tensors.get_mut(name).unwrap().data[5] = 0.0;
    let buf = "hyena.backbone.layers.0.mixer.filter_fn.pos_emb.t";
    f.tensors.get_mut(buf).unwrap().data[2] = f32::INFINITY;
    write_atomic(&w, &f.tensors, &f.metadata).unwrap();
    let e = load_err(&run);
    assert!(
        e.contains(&format!("`{buf}`")) && e.contains("inf at index 2"),
        "{e}"
    );
}

#[test]
fn zoo_models_are_held_to_the_same_rules() {
    use hyena::models::zoo::{ArchConfig, ZooModel};
    let dir = TempDir::new("strict-zoo");
    let cfg = ArchConfig {
        layers: vec!["hyena".into(), "swiglu".into()],
        d_model: 8,
        n_heads: 2,
        state_size: 4,
        vocab_size: 8,
        max_len: 16,
        ..Default::default()
    };
    let (net, params) = ZooModel::fresh(&cfg, 0).unwrap();
    let run = dir.0.join("zoo");
    save_model(&run, &Model { net, params }).unwrap();
    assert!(load_model(&run).is_ok());
    set_config(&run, |c| {
        c["model"].as_object_mut().unwrap().remove("max_len");
    });
    let e = load_err(&run);
    assert!(
        e.contains("`model.max_len`") && e.contains("config.json"),
        "{e}"
    );
    set_config(&run, |c| {
        c["model"]["max_len"] = 16.into();
        c["model"]["layers"] = serde_json::json!(["hyena"]);
    });
    let e = load_err(&run);
    assert!(
        e.contains("`layers.1.") && e.contains("`layers` lists 1 layer(s)"),
        "{e}"
    );
}

#[test]
fn released_checkpoints_keep_only_the_documented_extras() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hyenadna/tiny-hf");
    let dir = TempDir::new("strict-hf");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.0.join(f)).unwrap();
    }
    let w = dir.0.join("model.safetensors");
    let orig = TensorFile::read(&w).unwrap();
    // A classifier head is a documented extra; the LM loads.
    let mut t = orig.tensors.clone();
    t.insert("score.weight".into(), t["lm_head.weight"].clone());
    write_atomic(&w, &t, &BTreeMap::new()).unwrap();
    load_model(&dir.0).unwrap();
    // An unknown key is not.
    let mut t = orig.tensors.clone();
    t.insert("optimizer.step".into(), t["lm_head.weight"].clone());
    write_atomic(&w, &t, &BTreeMap::new()).unwrap();
    let e = load_err(&dir.0);
    assert!(e.contains("`optimizer.step`"), "{e}");
    // Fewer layers in the config than in the weights: named as the file spells them.
    write_atomic(&w, &orig.tensors, &BTreeMap::new()).unwrap();
    let p = dir.0.join("config.json");
    let mut cfg = read_json(&p).unwrap();
    cfg["n_layer"] = 1.into();
    std::fs::write(&p, cfg.to_string()).unwrap();
    let e = load_err(&dir.0);
    assert!(
        e.contains("layers.1.") && e.contains("n_layer 1 but the weights have layers 0..1"),
        "{e}"
    );
    cfg.as_object_mut().unwrap().remove("vocab_size");
    cfg["n_layer"] = 2.into();
    std::fs::write(&p, cfg.to_string()).unwrap();
    let e = load_err(&dir.0);
    assert!(
        e.contains("`vocab_size`") && e.contains("config.json"),
        "{e}"
    );
}
