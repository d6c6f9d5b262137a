//! The safe PyTorch checkpoint reader against files written by `torch.save`
//! (`tests/fixtures/torch/`, made by `make_torch_fixtures.py` there): every value compared
//! bit-for-bit with a safetensors copy, Lightning checkpoints, zip variants, and the errors for
//! malicious, truncated, legacy and corrupted files (which must never panic or run anything).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::TempDir;
use hyena::io::safetensors::TensorFile;
use hyena::io::torch::pickle::Value;
use hyena::io::torch::{read_state_dict, read_torch_file, read_torch_pickle, TorchFile};
use hyena::Error;

/// What the fixtures' malicious payloads would create in the working directory if ever run.
const MARKER: &str = "hyena-torch-fixture-pwned.marker";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/torch")
        .join(name)
}

fn err_msg(r: hyena::Result<TorchFile>) -> String {
    match r {
        Ok(f) => panic!("expected an error, got {} tensors", f.tensors.len()),
        Err(e) => {
            assert!(
                matches!(e, Error::Format { .. }),
                "not a Format error: {e:?}"
            );
            e.to_string()
        }
    }
}

fn assert_no_payload_ran() {
    for dir in [
        std::env::current_dir().unwrap(),
        fixture(""),
        std::env::temp_dir(),
    ] {
        assert!(
            !dir.join(MARKER).exists(),
            "a payload ran in {}",
            dir.display()
        );
    }
}

/// Every float tensor of `got` equals `want`'s, bit for bit, and no other tensor is there.
fn assert_matches(got: &TorchFile, want: &TensorFile) {
    let got_names: Vec<_> = got.tensors.keys().collect();
    let want_names: Vec<_> = want.tensors.keys().collect();
    assert_eq!(got_names, want_names);
    for (name, w) in &want.tensors {
        let g = &got.tensors[name];
        assert_eq!(g.shape, w.shape, "{name}");
        let gb: Vec<u32> = g.data.iter().map(|v| v.to_bits()).collect();
        let wb: Vec<u32> = w.data.iter().map(|v| v.to_bits()).collect();
        assert_eq!(gb, wb, "{name}");
    }
}

#[test]
fn state_dict_values_match_torch_exactly() {
    let f = read_torch_file(&fixture("state_dict.bin")).unwrap();
    let want = TensorFile::read(fixture("state_dict_expected.safetensors")).unwrap();
    assert_eq!(f.state_dict_key, None);
    assert_matches(&f, &want);
    assert_eq!(f.tensors.len(), 11);

    // Spot checks that do not rely on the expected file.
    let t = |n: &str| f.get(n).unwrap();
    // Transposed view of a [4, 6] storage: element [i][j] is storage[j * 6 + i].
    assert_eq!(t("transposed").shape, vec![6, 4]);
    // Views of one 20-element storage: offset 5 and offset 2 with step 3.
    assert_eq!(t("offset_view").shape, vec![2, 3]);
    assert_eq!(t("strided_view").shape, vec![4]);
    assert_eq!(t("strided_view").data[1], t("offset_view").data[0]); // storage[5]
    assert_eq!(t("strided_view").data[2], t("offset_view").data[3]); // storage[8]
    assert_eq!(t("tied"), t("f32"));
    assert_eq!(t("scalar").shape, Vec::<usize>::new());
    assert_eq!(t("scalar").data, vec![2.5]);
    assert_eq!(t("empty").shape, vec![0, 3]);
    assert!(t("empty").data.is_empty());
    assert_eq!(t("param").shape, vec![2, 4]);
    assert_eq!(t("bf16").shape, vec![7]);
    // float16 specials: the smallest subnormal, -0.0, +inf.
    let h = &t("f16").data;
    assert_eq!(h[0], 2f32.powi(-24));
    assert_eq!(h[1].to_bits(), (-0.0f32).to_bits());
    assert_eq!(h[5], f32::INFINITY);
    // bfloat16 values are f32 values with 16 zero low bits.
    assert!(t("bf16").data.iter().all(|v| v.to_bits() & 0xffff == 0));

    // Non-float tensors are listed, not loaded, and asking for one says why.
    let skipped: Vec<(&str, &str)> = f
        .skipped
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(skipped, vec![("mask", "bool"), ("steps", "int64")]);
    let e = f.get("steps").unwrap_err().to_string();
    assert!(e.contains("`steps`") && e.contains("int64"), "{e}");
    assert!(matches!(
        f.get("nope"),
        Err(Error::MissingTensor { available: 11, .. })
    ));

    // The convenience wrapper returns the same tensors.
    let map = read_state_dict(&fixture("state_dict.bin")).unwrap();
    assert_eq!(map, f.tensors);
}

#[test]
fn zip_and_pickle_variants_read_the_same() {
    let want = TensorFile::read(fixture("state_dict_expected.safetensors")).unwrap();
    for name in [
        "state_dict_p4.bin", // pickle protocol 4: FRAME, MEMOIZE, SHORT_BINUNICODE, ...
        "state_dict_deflate.bin", // DEFLATE entries, Python's zip writer
        "state_dict_zip64.bin", // zip64 sizes, offsets and end records
    ] {
        let f = read_torch_file(&fixture(name)).unwrap();
        assert_matches(&f, &want);
        assert_eq!(f.skipped.len(), 2, "{name}");
    }
}

#[test]
fn lightning_checkpoint_loads_its_state_dict_and_ignores_the_rest() {
    let f = read_torch_file(&fixture("lightning.ckpt")).unwrap();
    assert_eq!(f.state_dict_key.as_deref(), Some("state_dict"));
    let want = TensorFile::read(fixture("lightning_expected.safetensors")).unwrap();
    assert_matches(&f, &want);
    let names: Vec<_> = f.tensors.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "backbone.0.bias",
            "backbone.0.weight",
            "backbone.1.bias",
            "backbone.1.weight",
            "head.weight"
        ]
    );
    assert_eq!(f.tensors["backbone.0.weight"].shape, vec![4, 3]);
    assert!(f.skipped.is_empty());

    // The rest of the checkpoint is available as an inert tree: the custom class (omegaconf's
    // stand-in) is only a recorded name, the epoch a plain int.
    let top = read_torch_pickle(&fixture("lightning.ckpt")).unwrap();
    let Value::Dict(items) = top else {
        panic!("top is not a dict: {top:?}")
    };
    let get = |k: &str| {
        items
            .iter()
            .find(|(key, _)| key.as_str() == Some(k))
            .map(|(_, v)| v)
            .unwrap()
    };
    assert_eq!(get("epoch"), &Value::Int(3));
    assert_eq!(get("pytorch-lightning_version").as_str(), Some("2.1.0"));
    let Value::Dict(hp) = get("hyper_parameters") else {
        panic!("hyper_parameters is not a dict")
    };
    let Value::Call(config) = &hp[0].1 else {
        panic!("config is not an object: {:?}", hp[0].1)
    };
    assert_eq!(
        config.func.as_global(),
        Some(("__main__", "FakeDictConfig"))
    );
    assert!(config.state.is_some());
    assert!(matches!(&hp[4].1, Value::BigInt(b) if b.len() == 9)); // 2**70
}

#[test]
fn state_dict_under_model_key() {
    let f = read_torch_file(&fixture("wrapped_model.pt")).unwrap();
    assert_eq!(f.state_dict_key.as_deref(), Some("model"));
    let want = TensorFile::read(fixture("state_dict_expected.safetensors")).unwrap();
    assert_matches(&f, &want);
}

#[test]
fn malicious_state_dict_value_is_rejected_and_not_run() {
    let path = fixture("evil_value.bin");
    let m = err_msg(read_torch_file(&path));
    assert!(m.contains("evil_value.bin"), "{m}");
    assert!(m.contains("`evil`"), "{m}");
    assert!(m.contains("`posix.system`"), "{m}");
    assert!(m.contains("only tensors"), "{m}");
    assert!(m.contains("nothing in it was executed"), "{m}");
    assert!(m.contains("may be malicious"), "{m}");
    // The inert tree records the call, with its argument, and nothing more.
    let Value::Dict(items) = read_torch_pickle(&path).unwrap() else {
        panic!("not a dict")
    };
    let Value::Call(c) = &items[1].1 else {
        panic!("not a call")
    };
    assert_eq!(c.func.as_global(), Some(("posix", "system")));
    assert_eq!(
        c.args,
        Value::Tuple(vec![Value::Str(format!("echo pwned > {MARKER}"))])
    );
    assert_no_payload_ran();
}

#[test]
fn malicious_top_level_object_is_rejected() {
    let m = err_msg(read_torch_file(&fixture("evil_top.bin")));
    assert!(m.contains("top-level object"), "{m}");
    assert!(m.contains("`posix.system`"), "{m}");
    assert!(m.contains("only tensors"), "{m}");
    assert_no_payload_ran();
}

#[test]
fn malicious_storage_inside_a_tensor_is_rejected() {
    let m = err_msg(read_torch_file(&fixture("evil_nested.bin")));
    assert!(m.contains("`bad`"), "{m}");
    assert!(m.contains("`posix.system`"), "{m}");
    assert_no_payload_ran();
}

#[test]
fn non_tensor_values_are_rejected_with_their_key() {
    let m = err_msg(read_torch_file(&fixture("custom_object.bin")));
    assert!(m.contains("`config`"), "{m}");
    assert!(m.contains("`__main__.FakeDictConfig`"), "{m}");
    assert!(m.contains("only tensors"), "{m}");

    let m = err_msg(read_torch_file(&fixture("string_value.bin")));
    assert!(m.contains("`note`"), "{m}");
    assert!(m.contains("a string (\"hello\")"), "{m}");
    assert!(m.contains("looked for at the top level"), "{m}");
    assert!(!m.contains("malicious"), "{m}");
}

#[test]
fn truncated_legacy_and_big_endian_files_are_clear_errors() {
    let m = err_msg(read_torch_file(&fixture("truncated.bin")));
    assert!(m.contains("truncated.bin"), "{m}");
    assert!(m.contains("truncated or corrupt"), "{m}");
    assert!(m.contains("re-download"), "{m}");

    let m = err_msg(read_torch_file(&fixture("legacy.bin")));
    assert!(m.contains("legacy (pre-1.6)"), "{m}");
    assert!(m.contains("re-save"), "{m}");
    assert!(m.contains("safetensors"), "{m}");

    let m = err_msg(read_torch_file(&fixture("big_endian.bin")));
    assert!(m.contains("\"big\"-endian"), "{m}");
    assert!(m.contains("little-endian"), "{m}");

    match read_torch_file(&fixture("does_not_exist.bin")) {
        Err(Error::Io { file, .. }) => assert!(file.ends_with("does_not_exist.bin")),
        other => panic!("expected an Io error, got {other:?}"),
    }
}

#[test]
fn other_bad_files_are_clear_errors() {
    let dir = TempDir::new("bad");
    let m = err_msg(read_torch_file(&dir.write("empty.bin", b"")));
    assert!(m.contains("empty"), "{m}");
    let m = err_msg(read_torch_file(&dir.write("text.bin", b"hello world")));
    assert!(m.contains("not a PyTorch checkpoint"), "{m}");
    let m = err_msg(read_torch_file(&dir.write("bare.pkl", b"\x80\x02}q\x00.")));
    assert!(m.contains("bare pickle"), "{m}");

    // A flipped byte inside a tensor's storage: caught by the zip CRC.
    let mut bytes = std::fs::read(fixture("state_dict.bin")).unwrap();
    // The first mention of the name is in its local header: 30 fixed bytes, the name, the
    // extra field (torch's alignment padding), then the data.
    let header = find(&bytes, b"state_dict/data/0").unwrap() - 30;
    let name_len = u16::from_le_bytes([bytes[header + 26], bytes[header + 27]]) as usize;
    let extra_len = u16::from_le_bytes([bytes[header + 28], bytes[header + 29]]) as usize;
    bytes[header + 30 + name_len + extra_len] ^= 0x40;
    let m = err_msg(read_torch_file(&dir.write("flipped.bin", &bytes)));
    assert!(m.contains("CRC"), "{m}");
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn every_truncation_and_byte_flip_is_an_error_or_a_result_never_a_panic() {
    // Only the outcome's existence matters here: no panic, no hang, no huge allocation.
    let dir = TempDir::new("fuzz");
    let whole = std::fs::read(fixture("lightning.ckpt")).unwrap();
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for cut in (0..whole.len()).step_by(7) {
        let p = dir.write("cut.bin", &whole[..cut]);
        assert!(read_torch_file(&p).is_err(), "a {cut}-byte prefix loaded");
    }
    for i in (0..whole.len()).step_by(3) {
        let mut b = whole.clone();
        b[i] ^= 0xff;
        let p = dir.write("flip.bin", &b);
        let k = match read_torch_file(&p) {
            Ok(_) => "ok",
            Err(_) => "err",
        };
        *outcomes.entry(k).or_default() += 1;
    }
    // Flips in padding or the zip's unused fields are harmless; most others are caught.
    assert!(
        outcomes.get("err").copied().unwrap_or(0) > whole.len() / 12,
        "{outcomes:?}"
    );
}
