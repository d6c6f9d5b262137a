//! The safe PyTorch checkpoint reader against files written by `torch.save`
//! (`tests/fixtures/torch/`, made by `make_torch_fixtures.py` there): every value compared
//! bit-for-bit with a safetensors copy, Lightning checkpoints, zip variants, and the errors for
//! malicious, truncated, legacy and corrupted files (which must never panic or run anything);
//! the lazy reader `TorchCheckpoint` on an Evo 2 like file (bf16 bits unchanged, Transformer
//! Engine objects skipped), byte-split part series and `find_checkpoint`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::TempDir;
use hyena::io::safetensors::TensorFile;
use hyena::io::torch::pickle::Value;
use hyena::io::torch::{
    find_checkpoint, read_state_dict, read_torch_file, read_torch_pickle, Skipped, TorchCheckpoint,
    TorchFile,
};
use hyena::params::{bf16_to_f32, f32_to_bf16, TensorSource};
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

// === The lazy reader, Evo 2 files ===

/// Float tensors of `evo2_like.pt`, sorted.
const EVO2_FLOAT: [&str; 11] = [
    "blocks.0.filter.log_poles",
    "blocks.0.filter.residues",
    "blocks.0.mixer.mixer.filter.t",
    "blocks.0.pre_norm.scale",
    "blocks.0.projections.weight",
    "blocks.1.attn.rotary_emb.inv_freq",
    "blocks.1.inner.offset_view",
    "blocks.1.inner.special_bits",
    "blocks.1.mlp.l3.weight",
    "embedding_layer.weight",
    "unembed.weight",
];

/// The bfloat16 bits of `blocks.1.inner.special_bits`: NaNs with payloads (a signalling one
/// that an f32 round trip would quieten), -0, the smallest subnormal, 1, -inf, inf, 0.
const SPECIAL_BITS: [u16; 8] = [
    0x7F81, 0xFFC1, 0x8000, 0x0001, 0x3F80, 0xFF80, 0x7F80, 0x0000,
];

fn read_f32_of(src: &dyn TensorSource, name: &str) -> Vec<f32> {
    let n: usize = src.shape_of(name).unwrap().iter().product();
    let mut v = vec![0f32; n];
    src.read_f32(name, &mut v).unwrap();
    v
}

fn read_bf16_of(src: &dyn TensorSource, name: &str) -> Vec<u16> {
    let n: usize = src.shape_of(name).unwrap().iter().product();
    let mut v = vec![0u16; n];
    src.read_bf16(name, &mut v).unwrap();
    v
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn skipped_lines(ck: &TorchCheckpoint) -> Vec<String> {
    ck.skipped()
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect()
}

#[test]
fn evo2_like_checkpoint_reads_lazily_with_bf16_bits_unchanged() {
    let ck = TorchCheckpoint::open(fixture("evo2_like.pt")).unwrap();
    assert_eq!(ck.names(), EVO2_FLOAT);
    assert_eq!(ck.state_dict_key(), None);
    assert_eq!(ck.dtype_name("embedding_layer.weight"), Some("bfloat16"));
    assert_eq!(ck.dtype_name("blocks.0.filter.log_poles"), Some("float32"));
    assert_eq!(
        ck.shape("blocks.0.filter.log_poles"),
        Some(&[6usize, 4, 1][..])
    );
    assert_eq!(ck.shape("blocks.1.mlp.l3.weight"), Some(&[4usize, 6][..]));
    assert_eq!(ck.dtype_name("blocks.0.projections._extra_state"), None);

    // Every float tensor against the contiguous copy torch wrote, bit for bit, through both
    // reads: f32 exact for every dtype; bf16 bits as stored.
    let want = TensorFile::read(fixture("evo2_like_expected.safetensors")).unwrap();
    assert_eq!(want.tensors.len(), EVO2_FLOAT.len());
    for (name, w) in &want.tensors {
        assert_eq!(ck.shape(name), Some(w.shape.as_slice()), "{name}");
        assert_eq!(bits(&read_f32_of(&ck, name)), bits(&w.data), "{name}");
        let b = read_bf16_of(&ck, name);
        if ck.dtype_name(name) == Some("bfloat16") {
            let wb: Vec<u16> = w.data.iter().map(|x| (x.to_bits() >> 16) as u16).collect();
            assert_eq!(b, wb, "{name}");
        } else {
            let wb: Vec<u16> = w.data.iter().map(|&x| f32_to_bf16(x)).collect();
            assert_eq!(b, wb, "{name}");
        }
    }
    // The special bit patterns come back unchanged, which a round trip through f32 would not
    // do (it quietens the signalling NaN).
    assert_eq!(
        read_bf16_of(&ck, "blocks.1.inner.special_bits"),
        SPECIAL_BITS
    );
    assert_ne!(f32_to_bf16(bf16_to_f32(0x7F81)), 0x7F81);
    // The views: a transposed bf16 weight and one at a storage offset.
    let t = read_f32_of(&ck, "blocks.1.mlp.l3.weight");
    assert_eq!(t.len(), 24);
    assert_eq!(ck.tensor("blocks.1.mlp.l3.weight").unwrap().data, t);

    // The BytesIO extra states and the uint8 one are skipped and listed; the leftover keys of
    // the released files are ordinary tensors.
    assert_eq!(
        skipped_lines(&ck),
        [
            "blocks.0.projections._extra_state: io.BytesIO (2145 bytes)",
            "blocks.1.mixer.attn._extra_state: uint8 tensor [3]",
            "blocks.1.projections._extra_state: io.BytesIO (0 bytes)",
        ]
    );
    assert_eq!(
        ck.skipped()["blocks.0.projections._extra_state"],
        Skipped::BytesIo { bytes: 2145 }
    );
    assert!(ck.shape("unembed.weight").is_some());
    assert!(ck.shape("blocks.0.mixer.mixer.filter.t").is_some());

    // Errors: a skipped entry, an unknown name, a destination of the wrong size.
    let mut dst = vec![0f32; 4];
    let e = ck
        .read_f32("blocks.0.projections._extra_state", &mut dst)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("io.BytesIO (2145 bytes)") && e.contains("skipped"),
        "{e}"
    );
    assert!(matches!(
        ck.read_f32("nope", &mut dst),
        Err(Error::MissingTensor { available: 11, .. })
    ));
    let e = ck.read_bf16("unembed.weight", &mut [0u16; 5]).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    assert!(e.to_string().contains("48 elements"), "{e}");

    // The eager reader gives the same tensors, and lists the same entries.
    let f = TorchFile::read(fixture("evo2_like.pt")).unwrap();
    for name in EVO2_FLOAT {
        assert_eq!(
            bits(&f.get(name).unwrap().data),
            bits(&read_f32_of(&ck, name))
        );
    }
    assert_eq!(f.skipped["blocks.1.mixer.attn._extra_state"], "uint8");
    assert_eq!(
        f.skipped["blocks.0.projections._extra_state"],
        "io.BytesIO (2145 bytes)"
    );
}

#[test]
fn lazy_reads_match_eager_reads_on_every_fixture() {
    for name in [
        "state_dict.bin",
        "state_dict_p4.bin",
        "state_dict_deflate.bin",
        "state_dict_zip64.bin",
        "lightning.ckpt",
        "wrapped_model.pt",
    ] {
        let eager = read_torch_file(&fixture(name)).unwrap();
        let ck = TorchCheckpoint::open(fixture(name)).unwrap();
        assert_eq!(
            ck.state_dict_key(),
            eager.state_dict_key.as_deref(),
            "{name}"
        );
        assert_eq!(
            ck.names(),
            eager.tensors.keys().cloned().collect::<Vec<_>>()
        );
        for (n, t) in &eager.tensors {
            let got = ck.tensor(n).unwrap();
            assert_eq!(got.shape, t.shape, "{name} {n}");
            assert_eq!(bits(&got.data), bits(&t.data), "{name} {n}");
        }
        let skipped: BTreeMap<String, String> = ck
            .skipped()
            .iter()
            .map(|(k, v)| match v {
                Skipped::NonFloat { dtype, .. } => (k.clone(), dtype.clone()),
                other => (k.clone(), other.to_string()),
            })
            .collect();
        assert_eq!(skipped, eager.skipped, "{name}");
    }
}

#[test]
fn a_tensor_read_touches_only_its_own_storage() {
    // Corrupt the storage of `f16` (entry data/1): opening and reading any other tensor still
    // works (their bytes are read alone), and reading `f16` fails its CRC check.
    let mut bytes = std::fs::read(fixture("state_dict.bin")).unwrap();
    let header = find(&bytes, b"state_dict/data/1").unwrap() - 30;
    let name_len = u16::from_le_bytes([bytes[header + 26], bytes[header + 27]]) as usize;
    let extra_len = u16::from_le_bytes([bytes[header + 28], bytes[header + 29]]) as usize;
    bytes[header + 30 + name_len + extra_len] ^= 0x40;
    let ck = TorchCheckpoint::from_bytes(bytes, Path::new("flipped.bin")).unwrap();
    let want = read_torch_file(&fixture("state_dict.bin")).unwrap();
    let mut failed = Vec::new();
    for n in ck.names() {
        match ck.tensor(&n) {
            Ok(t) => assert_eq!(bits(&t.data), bits(&want.tensors[&n].data), "{n}"),
            Err(e) => {
                let m = e.to_string();
                assert!(m.contains("CRC") && m.contains("flipped.bin"), "{m}");
                failed.push(n);
            }
        }
    }
    assert_eq!(failed, ["f16"]);
}

#[test]
fn byte_split_parts_read_as_the_single_file() {
    let dir = fixture("evo2_parts");
    let parts = find_checkpoint(&dir).unwrap().expect("a part series");
    let names: Vec<_> = parts
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "evo2_like.pt.part0",
            "evo2_like.pt.part1",
            "evo2_like.pt.part2"
        ]
    );
    let whole = TorchCheckpoint::open(fixture("evo2_like.pt")).unwrap();
    let split = TorchCheckpoint::open_parts(&parts).unwrap();
    assert!(
        split.path().ends_with("evo2_like.pt.part{0..2}"),
        "{}",
        split.path().display()
    );
    let check = |ck: &TorchCheckpoint| {
        assert_eq!(ck.names(), whole.names());
        assert_eq!(ck.skipped(), whole.skipped());
        for n in whole.names() {
            assert_eq!(read_bf16_of(ck, &n), read_bf16_of(&whole, &n), "{n}");
            assert_eq!(
                bits(&read_f32_of(ck, &n)),
                bits(&read_f32_of(&whole, &n)),
                "{n}"
            );
        }
    };
    check(&split);

    // The same bytes cut anywhere, into empty parts too, read the same.
    let bytes = std::fs::read(fixture("evo2_like.pt")).unwrap();
    let n = bytes.len();
    for cuts in [
        vec![0, n],
        vec![1, 2],
        vec![n / 2, n / 2],
        vec![n - 22, n - 1],
        vec![17, n - 300],
    ] {
        let mut parts = Vec::new();
        let mut prev = 0;
        for c in cuts.iter().copied().chain([n]) {
            parts.push(bytes[prev..c].to_vec());
            prev = c;
        }
        let ck = TorchCheckpoint::from_parts_bytes(parts, Path::new("mem.pt")).unwrap();
        check(&ck);
    }

    // A part left out: the archive no longer hangs together.
    let e = TorchCheckpoint::open_parts(&[parts[0].clone(), parts[2].clone()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated or corrupt"), "{e}");
    let e = TorchCheckpoint::open_parts(&[]).unwrap_err().to_string();
    assert!(e.contains("no checkpoint parts"), "{e}");
}

#[test]
fn find_checkpoint_picks_one_file_or_one_complete_series() {
    let d = TempDir::new("find");
    assert_eq!(find_checkpoint(&d.0).unwrap(), None);
    d.write("notes.txt", b"x");
    d.write("model.pt.tmp", b"x");
    d.write("sub.pt/inner", b"x"); // a directory named like a checkpoint
    assert_eq!(find_checkpoint(&d.0).unwrap(), None);
    let single = d.write("model.pt", b"x");
    assert_eq!(find_checkpoint(&d.0).unwrap(), Some(vec![single.clone()]));

    // Parts sort numerically: part10 after part9.
    let p = TempDir::new("find-parts");
    for i in (0..12).rev() {
        p.write(&format!("big.pt.part{i}"), b"x");
    }
    let got = find_checkpoint(&p.0).unwrap().unwrap();
    let want: Vec<_> = (0..12)
        .map(|i| p.0.join(format!("big.pt.part{i}")))
        .collect();
    assert_eq!(got, want);

    // A missing part.
    let m = TempDir::new("find-missing");
    for i in [0, 1, 3] {
        m.write(&format!("big.pt.part{i}"), b"x");
    }
    let e = find_checkpoint(&m.0).unwrap_err().to_string();
    assert!(e.contains("`big.pt.part2` is missing"), "{e}");
    assert!(e.contains("big.pt.part3"), "{e}");
    m.write("big.pt.part2", b"x");
    m.write("big.pt.part02", b"x");
    let e = find_checkpoint(&m.0).unwrap_err().to_string();
    assert!(e.contains("part 2 of `big.pt` is there twice"), "{e}");

    // Both a file and its parts; two checkpoints.
    d.write("model.pt.part0", b"x");
    let e = find_checkpoint(&d.0).unwrap_err().to_string();
    assert!(e.contains("both `model.pt` and its parts"), "{e}");
    assert!(e.contains("model.pt.part0"), "{e}");
    std::fs::remove_file(d.0.join("model.pt.part0")).unwrap();
    d.write("other.pt", b"x");
    let e = find_checkpoint(&d.0).unwrap_err().to_string();
    assert!(e.contains("several checkpoints"), "{e}");
    assert!(e.contains("model.pt`") && e.contains("other.pt`"), "{e}");
    std::fs::remove_file(&single).unwrap();
    p.write("other.pt", b"x");
    let e = find_checkpoint(&p.0).unwrap_err().to_string();
    assert!(
        e.contains("big.pt.part{0..11}") && e.contains("other.pt"),
        "{e}"
    );

    match find_checkpoint(&d.0.join("absent")) {
        Err(Error::Io { file, .. }) => assert!(file.ends_with("absent")),
        other => panic!("expected an Io error, got {other:?}"),
    }
}

#[test]
fn transformer_engine_recipe_objects_are_skipped() {
    let ck = TorchCheckpoint::open(fixture("te_recipe.pt")).unwrap();
    assert_eq!(ck.names(), ["weight"]);
    assert_eq!(read_f32_of(&ck, "weight"), [1.0, 1.0]);
    assert_eq!(
        skipped_lines(&ck),
        [
            "fp8_format: transformer_engine.common.recipe.Format object",
            "fp8_recipe: transformer_engine.common.recipe.DelayedScaling object",
        ]
    );
    let f = read_torch_file(&fixture("te_recipe.pt")).unwrap();
    assert_eq!(f.tensors.len(), 1);
    assert_eq!(f.skipped.len(), 2);
}

fn refused(name: &str) -> String {
    let path = fixture(name);
    let lazy = TorchCheckpoint::open(&path).unwrap_err();
    assert!(matches!(lazy, Error::Format { .. }), "{lazy:?}");
    let eager = err_msg(read_torch_file(&path));
    assert_eq!(lazy.to_string(), eager);
    eager
}

#[test]
fn calls_smuggled_inside_skipped_objects_are_refused() {
    let m = refused("extra_state_evil.pt");
    assert!(m.contains("extra_state_evil.pt"), "{m}");
    assert!(m.contains("`blocks.0.projections._extra_state`"), "{m}");
    assert!(m.contains("io.BytesIO"), "{m}");
    assert!(m.contains("`posix.system`"), "{m}");
    assert!(m.contains("may be malicious"), "{m}");

    let m = refused("te_recipe_evil.pt");
    assert!(m.contains("`fp8_recipe`"), "{m}");
    assert!(
        m.contains("recipe object holding the global `posix.system`"),
        "{m}"
    );
    assert!(m.contains("may be malicious"), "{m}");

    // The plain malicious files are refused by the lazy reader too.
    for name in ["evil_value.bin", "evil_nested.bin", "custom_object.bin"] {
        let m = refused(name);
        assert!(m.contains("only tensors"), "{m}");
    }
    assert_no_payload_ran();
}
