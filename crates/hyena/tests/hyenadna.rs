//! Parity with a PyTorch HyenaDNA (fixtures made by
//! `tests/fixtures/hyenadna/make_hyenadna_fixtures.py`): the released checkpoint layouts load,
//! the tokenizer gives the reference ids, and hidden states and logits match to 1e-4.
//! Also the loader's errors: a missing config key, shapes that disagree with the config.

mod common;

use std::path::{Path, PathBuf};

use common::{max_abs_diff, TempDir};
use hyena::checkpoint::{load_model, read_json, RunDir};
use hyena::io::safetensors::TensorFile;
use hyena::io::tokenizer::{NucleotideTokenizer, SEP_ID};
use hyena::layers::lean::InferWorkspace;
use hyena::models::hyenadna::hf::{load_reference, CheckpointKind};
use hyena::models::hyenadna::{HyenaLm, LmCache};
use hyena::models::Model;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hyenadna")
}

/// Load `name`, check every output of `expected-{name}.safetensors` to 1e-4.
fn check_parity(name: &str, kind: CheckpointKind, tied: bool) {
    let dir = fixtures().join(name);
    let run = RunDir::open(&dir).unwrap();
    let (m, report) = load_reference(&run.config, &run.weights, &dir).unwrap();
    let (lm, p) = (&m.net, m.p());
    assert_eq!(report.kind, kind);
    assert_eq!(report.tied_head, tied);
    let exp = TensorFile::read(fixtures().join(format!("expected-{name}.safetensors"))).unwrap();
    // The tokenizer: case-sensitive ids plus the [SEP] the HF tokenizer appends.
    let seq = exp.metadata["sequence"].as_bytes();
    let mut ids = NucleotideTokenizer::new(false).encode(seq);
    ids.push(SEP_ID);
    let want_ids: Vec<u32> = exp.tensors["input_ids"]
        .data
        .iter()
        .map(|&v| v as u32)
        .collect();
    assert_eq!(ids, want_ids, "{name}: tokenizer ids");
    if name == "tiny-hf" {
        assert!(ids.contains(&6), "the fixture has a lower-case base: [UNK]");
    }
    let (l, d) = (ids.len(), lm.cfg.d_model());

    let mut ws = InferWorkspace::new(64);
    let h = lm
        .hidden_states(p, &ids, lm.cfg.n_layer, &mut ws)
        .unwrap()
        .to_vec();
    let err = max_abs_diff(&h, &exp.tensors["hidden.final"].data);
    assert!(
        err <= 1e-4,
        "{name}: final hidden states, max abs err {err}"
    );
    let h1 = lm.hidden_states(p, &ids, 1, &mut ws).unwrap().to_vec();
    // The residual stream before ln_f is large (~100 here): compare relative to its size.
    let want1 = &exp.tensors["hidden.layer1"].data;
    let scale = want1.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let err1 = max_abs_diff(&h1, want1);
    assert!(
        err1 <= 2e-6 * scale,
        "{name}: layer-1 states, max abs err {err1} (max {scale})"
    );
    assert_eq!(h.len(), l * d);

    // Logits by the training forward.
    let mut cache = LmCache::default();
    lm.forward(p, &ids, 1, l, &mut cache).unwrap();
    let err_l = max_abs_diff(&cache.logits, &exp.tensors["logits"].data);
    assert!(err_l <= 1e-4, "{name}: logits, max abs err {err_l}");
    eprintln!(
        "{name}: L={l}, D={d}: max abs err: final hidden {err:.2e}, logits {err_l:.2e}, \
         layer-1 residual {err1:.2e} of {scale:.0}"
    );
}

#[test]
fn hf_safetensors_checkpoint_matches_pytorch() {
    check_parity("tiny-hf", CheckpointKind::Hf, false);
    // `load_model` (what every subcommand uses) recognises the layout too.
    let loaded = load_model(&fixtures().join("tiny-hf")).unwrap();
    let lm = &loaded.downcast::<Model<HyenaLm>>("this test").unwrap().net;
    assert_eq!(lm.cfg.operator.filter.shift, 0.05);
    // The blocks' equal positional grids are held once.
    let (b0, b1) = (
        &lm.operator(0).filter.buffers,
        &lm.operator(1).filter.buffers,
    );
    assert!(std::sync::Arc::ptr_eq(&b0.z, &b1.z) && std::sync::Arc::ptr_eq(&b0.t, &b1.t));
}

#[test]
fn hf_pytorch_bin_checkpoint_matches_pytorch() {
    // pytorch_model.bin: the shared Sin frequency under three keys, and a classifier weight
    // that the LM does not use (reported, not an error).
    check_parity("tiny-bin", CheckpointKind::Hf, false);
    let dir = fixtures().join("tiny-bin");
    let run = RunDir::open(&dir).unwrap();
    let (_, rep) = load_reference(&run.config, &run.weights, &dir).unwrap();
    assert_eq!(rep.unused, vec!["score.weight".to_string()]);
}

#[test]
fn lightning_checkpoint_matches_pytorch() {
    // weights.ckpt: `model.backbone.*` keys with the `.mixer.layer.` variant, no lm_head
    // (tied), hyper-parameters held by a non-tensor object that must be left alone.
    check_parity("tiny-ckpt", CheckpointKind::Lightning, true);
}

/// A copy of fixture `name` in a fresh temp dir, for tests that damage it.
fn temp_copy(name: &str, tag: &str) -> TempDir {
    let dst = TempDir::new(tag);
    for e in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.0.join(e.file_name())).unwrap();
    }
    dst
}

#[test]
fn missing_config_key_and_shape_mismatch_are_clear_errors() {
    let tmp = temp_copy("tiny-hf", "cfg");
    let dir = tmp.0.clone();
    let cfg_path = dir.join("config.json");
    let mut cfg = read_json(&cfg_path).unwrap();
    cfg.as_object_mut().unwrap().remove("n_layer");
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let e = load_model(&dir).err().unwrap().to_string();
    assert!(e.contains("config.json") && e.contains("`n_layer`"), "{e}");

    // d_inner disagrees with the weights: the error names the tensor and both shapes.
    cfg["n_layer"] = 2.into();
    cfg["d_inner"] = 300.into();
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let e = load_model(&dir).err().unwrap().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("fc1.weight") && e.contains("[256, 64]"),
        "{e}"
    );
    // max_seq_len disagrees with the stored filter buffers.
    cfg["d_inner"] = 256.into();
    cfg["max_seq_len"] = 2000.into();
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let e = load_model(&dir).err().unwrap().to_string();
    assert!(e.contains("pos_emb") && e.contains("max_seq_len"), "{e}");
    // No weights at all.
    cfg["max_seq_len"] = 1026.into();
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = load_model(&dir).err().unwrap().to_string();
    assert!(e.contains("pytorch_model.bin"), "{e}");
}

/// The `--preset` shapes are the released checkpoints': parameter counts derived from the
/// shapes in the `LongSafari/hyenadna-*-hf` `config.json` files (backbone with a tied head,
/// buffers excluded) and l_max = window + 2.
#[test]
fn presets_have_the_released_shapes() {
    for (name, params, l_max) in [
        ("hyenadna-tiny", 436_096, 1026),
        ("hyenadna-tiny-d256", 1_641_088, 1026),
        ("hyenadna-small", 3_277_568, 32770),
    ] {
        let cfg = hyena::train::run::preset(name).unwrap();
        assert_eq!(cfg.model.operator.l_max, l_max, "{name}");
        assert_eq!(cfg.train.seq_len + 2, l_max, "{name}");
        let mut m = cfg.model.clone();
        m.tie_embeddings = true;
        let (_, store) = HyenaLm::fresh(&m, 0).unwrap();
        assert_eq!(store.len(), params, "{name}");
    }
    let e = hyena::train::run::preset("hyenadna-huge")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hyenadna-tiny") && e.contains("hyenadna-small"),
        "{e}"
    );
}
