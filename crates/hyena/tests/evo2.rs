//! Parity of the StripedHyena family with the reference implementations. StripedHyena 2
//! (Evo 2, vortex) on the fixtures of `tests/fixtures/evo2/make_evo2_fixtures.py`: tiny random
//! models saved as the released checkpoints are (bf16 `.pt` with `_extra_state` BytesIO entries
//! and leftover keys, f32 log-poles and residues; one split into byte shards), run by vortex in
//! f32 through its own loader. StripedHyena 1 (Evo 1, StripedHyena-Hessian; the `stripedhyena`
//! package) on those of `tests/fixtures/stripedhyena/make_stripedhyena_fixtures.py`: Hugging
//! Face directories (`config.json` plus `model.safetensors` or `pytorch_model.bin`, keys
//! `backbone.…`). With the f32 path: logits, per-token log-likelihoods and named intermediate
//! outputs within 1e-4. Plus the load-time errors (shape mismatch, wrong preset, unusable
//! directories).

use std::path::{Path, PathBuf};

use hyena::checkpoint::load_model;
use hyena::io::safetensors::TensorFile;
use hyena::models::striped::{preset, Evo2Lm, Taps, Workspace};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/evo2")
}

fn sh1_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/stripedhyena")
}

/// An integer tensor (I64 or I32) of a fixture file.
pub fn ints(path: &Path, name: &str) -> Vec<i64> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    match t.dtype() {
        safetensors::Dtype::I64 => t
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::I32 => t
            .data()
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        d => panic!("{name}: {d:?}"),
    }
}

/// The float tensors of a fixture file (the integer ones left out).
pub fn float_part(path: &Path) -> TensorFile {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = std::collections::BTreeMap::new();
    for (name, t) in st.tensors() {
        if t.dtype() == safetensors::Dtype::F32 {
            let data = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            tensors.insert(
                name,
                hyena::io::safetensors::Tensor {
                    shape: t.shape().to_vec(),
                    data,
                },
            );
        }
    }
    TensorFile {
        path: path.to_path_buf(),
        tensors,
        metadata: Default::default(),
    }
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// Load `dir`, run the fixture's input and compare everything the fixture recorded.
fn check_parity(dir: &str) {
    let loaded = load_model(&fixtures().join(dir)).unwrap();
    // The BytesIO entries were reported, not constructed; the leftovers listed.
    assert!(
        loaded.notes.iter().any(|n| n.contains("_extra_state")),
        "{:?}",
        loaded.notes
    );
    assert!(
        loaded
            .notes
            .iter()
            .any(|n| n.contains("mixer.mixer.filter.t")),
        "{:?}",
        loaded.notes
    );
    check_outputs(&fixtures(), dir, &loaded);
}

/// Run the fixture's input of `root/dir` through `loaded` and compare everything the fixture
/// recorded.
fn check_outputs(root: &Path, dir: &str, loaded: &hyena::checkpoint::Loaded) {
    let lm = loaded.model.as_any().downcast_ref::<Evo2Lm>().unwrap();
    // bf16 weights stayed bf16.
    assert!(lm.net.params.bf16().is_some());

    let path = root.join(format!("expected-{dir}.safetensors"));
    let ids: Vec<u32> = ints(&path, "input_ids").iter().map(|&v| v as u32).collect();
    let pos: Vec<usize> = ints(&path, "positions")
        .iter()
        .map(|&v| v as usize)
        .collect();
    let exp = float_part(&path);
    let (l, v) = (ids.len(), lm.net.cfg.vocab_size);
    if lm.net.cfg.generation == 2 {
        assert!(
            l > lm.net.cfg.hcm_filter_length,
            "the input is longer than the MR filter"
        );
    }

    let mut ws = Workspace::default();
    let mut names: Vec<String> = exp
        .tensors
        .keys()
        .filter(|k| {
            !matches!(
                k.as_str(),
                "input_ids" | "positions" | "logits" | "logits_bf16" | "loglik" | "loglik_bf16"
            )
        })
        .cloned()
        .collect();
    names.sort();
    assert!(names.len() > 15, "named outputs in the fixture: {names:?}");
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut taps = Taps::of(&refs);
    lm.net
        .forward(&ids, lm.net.n_layer(), true, &mut taps, &mut ws, None)
        .unwrap();

    // Logits at the recorded positions.
    let want = &exp.get("logits").unwrap().data;
    let mut worst = 0.0f32;
    for (r, &p) in pos.iter().enumerate() {
        for j in 0..v {
            worst = worst.max((ws.logits[p * v + j] - want[r * v + j]).abs());
        }
    }
    let scale = max_abs(want);
    eprintln!("{dir}: max |logits - reference| = {worst:.3e} (max |logit| {scale:.2})");
    assert!(
        worst < 1e-4 * scale.max(1.0),
        "{dir}: logits differ by {worst} (max |logit| {scale})"
    );

    // Named outputs.
    for name in &names {
        let (got, width) = taps
            .got
            .get(name)
            .unwrap_or_else(|| panic!("{dir}: no output {name}"));
        let want = &exp.get(name).unwrap().data;
        assert_eq!(want.len(), pos.len() * width, "{name}");
        let scale = max_abs(want).max(1.0);
        let mut worst = 0.0f32;
        for (r, &p) in pos.iter().enumerate() {
            for j in 0..*width {
                worst = worst.max((got[p * width + j] - want[r * width + j]).abs());
            }
        }
        assert!(
            worst < 1e-4 * scale,
            "{dir}: {name} differs by {worst} (scale {scale})"
        );
    }

    // Per-token log-likelihoods and their sum.
    let mut lp = Vec::new();
    let total = lm.net.log_likelihood(&ids, &mut ws, &mut lp).unwrap();
    let want = &exp.get("loglik").unwrap().data;
    assert_eq!(lp.len(), want.len());
    let d = lp
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        d < 1e-4 * 20.0,
        "{dir}: per-token log-likelihood differs by {d}"
    );
    let want_sum: f64 = want.iter().map(|&x| x as f64).sum();
    eprintln!(
        "{dir}: log-likelihood sum {total:.6} vs reference {want_sum:.6} (relative {:.2e}); max \
         per-token difference {d:.2e}",
        ((total - want_sum) / want_sum).abs()
    );
    assert!(
        ((total - want_sum) / want_sum).abs() < 1e-4,
        "{dir}: sum {total} vs {want_sum}"
    );
    // The reference's own bf16 run is much further from f32 than we are (what --precision f32
    // buys): recorded for the README's table.
    let bf = &exp.get("logits_bf16").unwrap().data;
    let ref_bf16 = bf
        .iter()
        .zip(&exp.get("logits").unwrap().data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        ref_bf16 > 100.0 * worst.max(1e-6),
        "{dir}: reference bf16 error {ref_bf16}"
    );
}

#[test]
fn evo2_matches_the_reference_in_f32() {
    check_parity("tiny");
}

#[test]
fn evo2_262k_layout_from_byte_shards_with_position_interpolation() {
    // tiny-262k: two attention blocks, rotary base 1e6 with linear interpolation (factor 4),
    // the checkpoint only as model.pt.part0..2 cut inside tensors.
    let dir = fixtures().join("tiny-262k");
    assert!(!dir.join("model.pt").exists() && dir.join("model.pt.part2").exists());
    check_parity("tiny-262k");
}

#[test]
fn evo1_matches_stripedhyena_in_f32() {
    // Tied embeddings, qkv and out_proj biases, GELU in every block, rotary interpolation
    // (factor 4), 8 complex modes; model.safetensors with the `backbone.` prefix.
    let loaded = load_model(&sh1_fixtures().join("tiny-evo1")).unwrap();
    let lm = loaded.model.as_any().downcast_ref::<Evo2Lm>().unwrap();
    assert_eq!(lm.net.cfg.generation, 1);
    assert!(lm.net.cfg.tie_embeddings && lm.net.cfg.use_interpolated_rotary_pos_emb);
    check_outputs(&sh1_fixtures(), "tiny-evo1", &loaded);
}

#[test]
fn stripedhyena_hessian_layout_matches_in_f32() {
    // Grouped-query attention (2 key/value heads for 4 query heads), no qkv / out_proj biases,
    // SiLU, untied `unembed.weight`, a torch.save'd pytorch_model.bin.
    let loaded = load_model(&sh1_fixtures().join("tiny-hessian")).unwrap();
    let lm = loaded.model.as_any().downcast_ref::<Evo2Lm>().unwrap();
    assert_eq!((lm.net.cfg.proj_groups, lm.net.cfg.kv_heads()), (2, 2));
    assert!(!lm.net.cfg.tie_embeddings);
    check_outputs(&sh1_fixtures(), "tiny-hessian", &loaded);
}

#[test]
fn stripedhyena_config_and_shard_errors() {
    let tmp = std::env::temp_dir().join(format!("hyena-sh1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let src = sh1_fixtures().join("tiny-evo1");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    let put = |name: &str, c: &serde_json::Value, weights: Option<&str>| {
        let d = tmp.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.json"), serde_json::to_vec(c).unwrap()).unwrap();
        if let Some(w) = weights {
            std::fs::copy(src.join("model.safetensors"), d.join(w)).unwrap();
        }
        d
    };
    let err = |d: &Path| match load_model(d) {
        Ok(_) => panic!("{} loaded", d.display()),
        Err(e) => e.to_string(),
    };
    // Settings the engine does not compute are refused by name.
    let mut c = cfg.clone();
    c["hyena_filter_groups"] = serde_json::json!(4);
    let e = err(&put("groups", &c, Some("model.safetensors")));
    assert!(e.contains("hyena_filter_groups"), "{e}");
    let mut c = cfg.clone();
    c["mystery_knob"] = serde_json::json!(true);
    let e = err(&put("unknown", &c, Some("model.safetensors")));
    assert!(e.contains("mystery_knob"), "{e}");
    // A width that disagrees with the weights: the tensor and both shapes.
    let mut c = cfg.clone();
    c["inner_mlp_size"] = serde_json::json!(64);
    let e = err(&put("shape", &c, Some("model.safetensors")));
    assert!(e.contains("mlp.l1.weight") && e.contains("48"), "{e}");
    // One of two shards missing: named.
    let e = err(&put(
        "shards",
        &cfg,
        Some("model-00001-of-00002.safetensors"),
    ));
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    // No weights at all.
    let e = err(&put("none", &cfg, None));
    assert!(e.contains("pytorch_model.bin"), "{e}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn named_outputs_and_hidden_states_agree() {
    let loaded = load_model(&fixtures().join("tiny")).unwrap();
    let lm = loaded.model.as_any().downcast_ref::<Evo2Lm>().unwrap();
    let ids: Vec<u32> = b"ACGTTGCAACGTAGGCTTACG".iter().map(|&b| b as u32).collect();
    let mut ws = Workspace::default();
    let (l3, w) = lm.named_output(&ids, "blocks.3.mlp.l3", &mut ws).unwrap();
    assert_eq!((l3.len(), w), (ids.len() * 32, 32));
    let (l1, w1) = lm.named_output(&ids, "blocks.0.mlp.l1", &mut ws).unwrap();
    assert_eq!(w1, lm.net.cfg.inner_mlp_size);
    assert_eq!(l1.len(), ids.len() * w1);
    // A block's output is the input of the next block's pre-norm's input: hidden_states(k)
    // equals the named output blocks.{k-1}.
    let mut iw = hyena::layers::lean::InferWorkspace::new(64);
    let h = loaded
        .model
        .hidden_states(&ids, 4, &mut iw)
        .unwrap()
        .to_vec();
    let (b3, _) = lm.named_output(&ids, "blocks.3", &mut ws).unwrap();
    assert_eq!(h, b3);
    // An unknown name says which names exist.
    let e = lm
        .named_output(&ids, "blocks.3.filter", &mut ws)
        .unwrap_err()
        .to_string();
    assert!(e.contains("inner_mha_cls"), "{e}");
    let e = lm
        .named_output(&ids, "blocks.99", &mut ws)
        .unwrap_err()
        .to_string();
    assert!(e.contains("blocks.6"), "{e}");
}

#[test]
fn load_errors_name_the_problem() {
    let tmp = std::env::temp_dir().join(format!("hyena-evo2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let yaml = std::fs::read_to_string(fixtures().join("tiny/config.yml")).unwrap();
    // A config whose width disagrees with the checkpoint: the tensor, both shapes.
    let d = tmp.join("shape");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("config.yml"),
        yaml.replace("hidden_size: 32", "hidden_size: 64")
            .replace("num_filters: 32", "num_filters: 64"),
    )
    .unwrap();
    std::fs::copy(fixtures().join("tiny/model.pt"), d.join("model.pt")).unwrap();
    let e = load_model(&d).err().unwrap().to_string();
    assert!(
        e.contains("embedding_layer.weight") && e.contains("[512, 32]") && e.contains("[512, 64]"),
        "{e}"
    );
    // Fewer blocks in the config than in the file: the unused tensors are named.
    std::fs::write(
        d.join("config.yml"),
        yaml.replace("num_layers: 7", "num_layers: 6")
            .replace("- 2\n- 6\nhcm", "- 2\nhcm"),
    )
    .unwrap();
    let e = load_model(&d).err().unwrap().to_string();
    assert!(e.contains("blocks.6"), "{e}");
    // No YAML and a file name that is no released model: the presets are listed.
    let d = tmp.join("noyaml");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(fixtures().join("tiny/model.pt"), d.join("evo2_7.pt")).unwrap();
    let e = load_model(&d).err().unwrap().to_string();
    assert!(e.contains("evo2_7b_262k") && e.contains("evo2_7"), "{e}");
    // A preset name with the wrong weights: the first mismatching tensor.
    std::fs::rename(d.join("evo2_7.pt"), d.join("evo2_1b_base.pt")).unwrap();
    let e = load_model(&d).err().unwrap().to_string();
    assert!(e.contains("[512, 1920]"), "{e}");
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(preset("evo2_40b").is_ok());
}

#[test]
fn chunked_forward_equals_one_shot_for_every_chunk_size() {
    // The fixture's 200 tokens through chunks smaller than the MR filter (128), not dividing
    // the length, and larger than it: logits, log-likelihoods and a named output agree.
    chunk_invariance(
        &fixtures(),
        "tiny-262k",
        &["blocks.5.filter", "blocks.3.inner_mha_cls"],
        &[1, 7, 50, 127, 128, 129, 199],
    );
}

#[test]
fn stripedhyena_chunked_forward_equals_one_shot() {
    // Complex modal states and grouped-query keys and values carried across chunks.
    chunk_invariance(
        &sh1_fixtures(),
        "tiny-hessian",
        &["blocks.2.filter", "blocks.3.inner_mha_cls"],
        &[1, 5, 32, 96],
    );
}

fn chunk_invariance(root: &Path, dir: &str, tap_names: &[&str], chunks: &[usize]) {
    let loaded = load_model(&root.join(dir)).unwrap();
    let lm = loaded.model.as_any().downcast_ref::<Evo2Lm>().unwrap();
    let path = root.join(format!("expected-{dir}.safetensors"));
    let ids: Vec<u32> = ints(&path, "input_ids").iter().map(|&v| v as u32).collect();
    let run = |chunk: usize| {
        let mut ws = Workspace::with_chunk(chunk);
        let mut taps = Taps::of(tap_names);
        lm.net
            .forward(&ids, lm.net.n_layer(), true, &mut taps, &mut ws, None)
            .unwrap();
        let v = lm.net.cfg.vocab_size;
        (ws.logits[..ids.len() * v].to_vec(), taps.got)
    };
    let (whole, taps_whole) = run(ids.len());
    assert_eq!(taps_whole.len(), tap_names.len());
    for &chunk in chunks {
        let (got, taps) = run(chunk);
        let d = got
            .iter()
            .zip(&whole)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-4, "chunk {chunk}: logits differ by {d}");
        for (name, (want, _)) in &taps_whole {
            let g = &taps[name].0;
            let d = g
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(d < 1e-4, "chunk {chunk}: {name} differs by {d}");
        }
    }
}

#[test]
fn bf16_path_error_is_below_the_references_own_bf16_error() {
    // --precision bf16 against the reference's f32 logits, beside the reference's own bf16 run
    // against its f32 run (same inputs): the table in the README.
    for (root, dir) in [
        (fixtures(), "tiny"),
        (fixtures(), "tiny-262k"),
        (sh1_fixtures(), "tiny-evo1"),
        (sh1_fixtures(), "tiny-hessian"),
    ] {
        let mut loaded = load_model(&root.join(dir)).unwrap();
        loaded
            .model
            .set_precision(hyena::models::Precision::Bf16)
            .unwrap();
        let lm = loaded.model.as_any().downcast_ref::<Evo2Lm>().unwrap();
        let path = root.join(format!("expected-{dir}.safetensors"));
        let ids: Vec<u32> = ints(&path, "input_ids").iter().map(|&v| v as u32).collect();
        let pos: Vec<usize> = ints(&path, "positions")
            .iter()
            .map(|&v| v as usize)
            .collect();
        let exp = float_part(&path);
        let mut ws = Workspace::default();
        let logits = lm.net.logits(&ids, &mut ws).unwrap();
        let v = lm.net.cfg.vocab_size;
        let want = &exp.get("logits").unwrap().data;
        let mut ours = 0.0f32;
        for (r, &p) in pos.iter().enumerate() {
            for j in 0..v {
                ours = ours.max((logits[p * v + j] - want[r * v + j]).abs());
            }
        }
        let theirs = exp
            .get("logits_bf16")
            .unwrap()
            .data
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!(
            "{dir}: bf16 path max |logits - f32 reference| {ours:.4}; reference bf16 {theirs:.4}"
        );
        // Different from f32 (the path is really taken), and closer than the reference's bf16.
        assert!(
            ours > 1e-4 && ours < theirs,
            "{dir}: ours {ours}, reference's {theirs}"
        );
    }
}

/// The presets restate the `evo2` package's YAML configs (`evo2/configs/*.yml`, mapped to model
/// names as `evo2/utils.py` does); run with the package's configs directory in
/// `HYENA_EVO2_CONFIGS` (they are not copied into this repository).
#[test]
#[ignore = "needs the evo2 package's configs: HYENA_EVO2_CONFIGS=DIR cargo test -- --ignored"]
fn presets_equal_the_evo2_package_configs() {
    use hyena::models::striped::Evo2Config;
    let dir = PathBuf::from(
        std::env::var_os("HYENA_EVO2_CONFIGS")
            .expect("set HYENA_EVO2_CONFIGS to the evo2 package's configs/ directory"),
    );
    for (name, file) in [
        ("evo2_1b_base", "evo2-1b-8k.yml"),
        ("evo2_7b_base", "evo2-7b-8k.yml"),
        ("evo2_7b_microviridae", "evo2-7b-8k.yml"),
        ("evo2_7b_262k", "evo2-7b-262k.yml"),
        ("evo2_7b", "evo2-7b-1m.yml"),
        ("evo2_20b", "evo2-20b-1m.yml"),
        ("evo2_40b_base", "evo2-40b-8k.yml"),
        ("evo2_40b", "evo2-40b-1m.yml"),
    ] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let v = hyena::io::yaml::parse(&text, &path).unwrap();
        let from_yaml = Evo2Config::from_vortex(&v, &path).unwrap();
        let mut p = preset(name).unwrap();
        p.model_name = from_yaml.model_name.clone();
        assert_eq!(p, from_yaml, "{name} vs {file}");
    }
}

/// `hidden_states_owned` hands over the buffer `hidden_states` shows (final states and an
/// inner block's output), the same bits, and the workspace keeps working after it.
#[test]
fn owned_hidden_states_equal_the_borrowed_ones() {
    use hyena::layers::lean::InferWorkspace;
    let loaded = load_model(&fixtures().join("tiny")).unwrap();
    let lm = loaded.model.as_ref();
    let mut ws = InferWorkspace::new(16);
    let mut fresh = InferWorkspace::new(16);
    for (len, layer) in [(40usize, lm.n_layer()), (25, 3), (60, lm.n_layer()), (9, 0)] {
        let toks: Vec<u32> = (0..len)
            .map(|i| b"ACGT"[(i * 7 + len) % 4] as u32)
            .collect();
        let owned = lm.hidden_states_owned(&toks, layer, &mut ws).unwrap();
        let want = lm.hidden_states(&toks, layer, &mut fresh).unwrap();
        assert_eq!(owned.len(), len * lm.d_model(), "len {len} layer {layer}");
        assert_eq!(owned, want, "len {len} layer {layer}");
    }
}
