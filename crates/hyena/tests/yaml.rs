//! The minimal YAML reader of flat model configs (`hyena::io::yaml`): a config written in the
//! style of the vortex / Evo 2 files (`tests/fixtures/yaml/vortex_like.yml`), every scalar
//! form, and the errors (file, line, what is unsupported) for what it does not read.

use std::path::{Path, PathBuf};

use hyena::io::yaml::parse;
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/yaml")
        .join(name)
}

fn p(text: &str) -> Value {
    parse(text, Path::new("cfg.yml")).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn err(text: &str) -> String {
    match parse(text, Path::new("cfg.yml")) {
        Ok(v) => panic!("{text:?} parsed as {v}"),
        Err(e) => {
            let m = e.to_string();
            assert!(m.starts_with("cfg.yml: line "), "{m}");
            m
        }
    }
}

#[test]
fn vortex_like_config_reads_every_key() {
    let path = fixture("vortex_like.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let v = parse(&text, &path).unwrap();
    let want = json!({
        "model_name": "tiny-striped-test",
        "vocab_size": 16,
        "hidden_size": 8,
        "num_filters": 8,
        "hcl_layer_idxs": [2],
        "hcm_layer_idxs": [1],
        "hcs_layer_idxs": [0, 4],
        "attn_layer_idxs": [3],
        "hcm_filter_length": 4,
        "hcs_filter_length": 3,
        "num_layers": 5,
        "short_filter_length": 3,
        "short_filter_bias": false,
        "mlp_init_method": "torch.nn.init.zeros_",
        "eps": 0.000001,
        "eps_exp": 1e-6,
        "rotary_emb_base": 10000,
        "inner_size_multiple_of": 16,
        "log_intermediate_values": false,
        "column_split": true,
        "interleave": true,
        "max_seqlen": 1048576,
        "tokenizer_type": "CharLevelTokenizer",
        "quoted": "a # not a comment",
        "single": "it's",
        "nothing": null,
        "tilde": null,
        "empty_list": [],
        "block_list": [3, 10, 17],
        "negative": -2,
    });
    assert_eq!(v, want);
    // Integers stay integers (a config reader asks for u64), floats are floats.
    assert!(v["vocab_size"].is_u64());
    assert!(v["eps"].is_f64());

    // The same file with CRLF line ends reads the same.
    let crlf = text.replace('\n', "\r\n");
    assert_eq!(parse(&crlf, &path).unwrap(), want);
}

#[test]
fn scalars() {
    let v = p(
        "a: 1.5\nb: .5\nc: -3e2\nd: +7\ne: 1E+3\nf: 5.\ng: TRUE\nh: NULL\n\
               i: 0x10\nj: yes\nk: 1_000\nl: \"x\\ty\\u00e9\\\"\"\nm: 'a # b'\nn: a#b\n\
               o: 18446744073709551615\np: 'x: y'\nq: \"\"\n",
    );
    assert_eq!(v["a"], json!(1.5));
    assert_eq!(v["b"], json!(0.5));
    assert_eq!(v["c"], json!(-300.0));
    assert_eq!(v["d"], json!(7));
    assert_eq!(v["e"], json!(1000.0));
    assert_eq!(v["f"], json!(5.0));
    assert_eq!(v["g"], json!(true));
    assert_eq!(v["h"], Value::Null);
    // YAML 1.2: hex, `yes` and underscores are strings here.
    assert_eq!(v["i"], json!("0x10"));
    assert_eq!(v["j"], json!("yes"));
    assert_eq!(v["k"], json!("1_000"));
    assert_eq!(v["l"], json!("x\ty\u{e9}\""));
    assert_eq!(v["m"], json!("a # b"));
    assert_eq!(v["n"], json!("a#b"));
    assert_eq!(v["o"], json!(u64::MAX));
    assert_eq!(v["p"], json!("x: y"));
    assert_eq!(v["q"], json!(""));
    // Lists: quoted items with commas and brackets, a trailing comma, an unindented block.
    let v = p("a: ['x, y', \"]\", 2, true, ~,]\nb:\n- 1\n- two # c\n\nc: 3\n");
    assert_eq!(v["a"], json!(["x, y", "]", 2, true, null]));
    assert_eq!(v["b"], json!([1, "two"]));
    assert_eq!(v["c"], json!(3));
    // `key:` with nothing below is null; an empty or comment-only file is an empty mapping.
    assert_eq!(p("a:\nb: 1"), json!({"a": null, "b": 1}));
    assert_eq!(p("a:"), json!({"a": null}));
    assert_eq!(p(""), json!({}));
    assert_eq!(p("\u{feff}# only a comment\n\n   \n"), json!({}));
}

#[test]
fn unsupported_yaml_is_an_error_with_its_line() {
    for (text, line, what) in [
        ("a: 1\nb:\n  c: 2\n", 3, "a nested mapping under `b`"),
        ("a: 1\nb: &x 3\n", 2, "an anchor"),
        ("a: *x\n", 1, "an alias"),
        ("a: !!int 3\n", 1, "a tag"),
        ("a: |\n  text\n", 1, "a block scalar"),
        ("a: {b: 1}\n", 1, "a flow mapping"),
        ("a: [1, [2]]\n", 1, "nested lists"),
        ("a: [1,\n  2]\n", 1, "same line"),
        ("a: 1\n---\nb: 2\n", 2, "document marker"),
        ("%YAML 1.2\na: 1\n", 1, "directive"),
        ("a: 1\n\tb: 2\n", 2, "a tab in the indentation"),
        ("a:\n  - 1\n    - 2\n", 3, "indented by 4 spaces"),
        ("a:\n  - 1\n  b: 2\n", 3, "under `a`"),
        ("a:\n  - [1]\n", 2, "a nested list"),
        ("a:\n  -\n", 2, "an empty list item"),
        (
            "a: 1\nb: 2\na: 3\n",
            3,
            "duplicate key `a` (first on line 1)",
        ),
        ("a: 1\n  b: 2\n", 2, "an indented line"),
        ("- 1\n", 1, "without a key"),
        ("just text\n", 1, "not a `key: value` line"),
        ("\"a\": 1\n", 1, "a quoted key"),
        ("a: b: c\n", 1, "a nested mapping"),
        ("a: 'open\n", 1, "unterminated"),
        ("a: \"x\" y\n", 1, "after a closing quote"),
        ("a: \"\\q\"\n", 1, "unsupported escape"),
        ("a: 1e999\n", 1, "not a finite number"),
        ("a: .inf\n", 1, "infinite or NaN"),
        ("a: 99999999999999999999\n", 1, "integer out of range"),
        ("a: [1,,2]\n", 1, "an empty item"),
        ("a: - 1\n", 1, "a block list on the key's line"),
        ("a: 2\nb: -\n", 2, "a block list on the key's line"),
        ("? a\n", 1, "a complex key"),
    ] {
        let m = err(text);
        assert!(m.contains(&format!("line {line}:")), "{text:?}: {m}");
        assert!(m.contains(what), "{text:?}: {m}");
    }
    // CRLF does not shift line numbers.
    let m = err("a: 1\r\nb: 2\r\nb: 3\r\n");
    assert!(m.contains("line 3:"), "{m}");
}

/// The configs shipped in the `evo2` package (`evo2/configs/*.yml`), when a directory holding
/// them is named by `HYENA_EVO2_CONFIGS` (they are not copied into this repository): every one
/// reads, with the keys a StripedHyena 2 model needs and their types.
#[test]
#[ignore = "needs the evo2 package's configs: HYENA_EVO2_CONFIGS=DIR cargo test -- --ignored"]
fn evo2_package_configs_when_available() {
    let dir = std::env::var_os("HYENA_EVO2_CONFIGS")
        .expect("set HYENA_EVO2_CONFIGS to the evo2 package's configs/ directory");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yml") {
            continue;
        }
        let v = parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
        for key in ["vocab_size", "hidden_size", "num_layers", "max_seqlen"] {
            assert!(v[key].is_u64(), "{}: {key} = {}", path.display(), v[key]);
        }
        for key in [
            "hcl_layer_idxs",
            "hcm_layer_idxs",
            "hcs_layer_idxs",
            "attn_layer_idxs",
        ] {
            assert!(
                v[key]
                    .as_array()
                    .is_some_and(|a| a.iter().all(Value::is_u64)),
                "{key}"
            );
        }
        assert!(v["eps"].is_f64());
        assert!(v["column_split"].is_boolean());
        n += 1;
    }
    assert!(n > 0, "no .yml files in {dir:?}");
}
