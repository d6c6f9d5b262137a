//! Regression tests for the inputs the fuzz targets (`fuzz/` in the repository) found to crash
//! a reader: each must now be rejected with an error that names the file and says what is
//! wrong. See `fuzz/README.md` and `fuzz/RESULTS.md`.

use std::path::Path;

use hyena::io::npy::parse_f32;
use hyena::io::torch::pickle::parse;

/// A `.npy` file (format 1.0) whose header is `dict`, padded as NumPy pads it, then `body`.
fn npy(dict: &str, body: &[u8]) -> Vec<u8> {
    let mut h = dict.as_bytes().to_vec();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(b' ');
    }
    h.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((h.len() as u16).to_le_bytes());
    out.extend(h);
    out.extend(body);
    out
}

/// Found by `npy`: a shape whose size in bytes overflows `usize` made the size check
/// multiply with overflow: a panic where overflow is checked, and elsewhere a wrapped size
/// that could match the data, so that a shape of 2^62 + 2 values was "read" from 8 bytes.
/// Now the shape is rejected.
#[test]
fn npy_shape_whose_size_overflows() {
    // 4 · (2^62 + 2) and 4 · 2 · (2^63 + 1) both wrap to 8, the bytes there are.
    for shape in ["(4611686018427387906,)", "(2, 9223372036854775809)"] {
        let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        let err = parse_f32(&npy(&dict, &[0; 8]), Path::new("big.npy"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("big.npy") && err.contains("needs more data bytes, the file has 8"),
            "{err}"
        );
    }
    // A shape that fits is still read.
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
    let body = [1f32, 2.0].map(f32::to_le_bytes).concat();
    let (shape, data) = parse_f32(&npy(dict, &body), Path::new("ok.npy")).unwrap();
    assert_eq!((shape, data), (vec![2], vec![1.0, 2.0]));
}

/// Found by `pickle`: 439 bytes (`fixtures/fuzz/pickle-slow-expansion.pkl`: 30 `NEWOBJ_EX`
/// over `DUP`ed dicts and lists) that expand to over a million values when the shared objects
/// are copied into the tree. The node budget stopped it, but only after a million copies:
/// about a second in the sanitizer build, a hang by the fuzzing rules. The budget's floor is
/// now 2^17 nodes (and 4 per parsed node beyond it, was 16), so it stops eight times sooner.
#[test]
fn pickle_that_expands_to_a_million_values() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/pickle-slow-expansion.pkl");
    let bytes = std::fs::read(&path).unwrap();
    let err = parse(&bytes, Path::new("data.pkl"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data.pkl") && err.contains("expands to too many values"),
        "{err}"
    );
    // x0 = []; x_{i+1} = (x_i, x_i): 2^(k+1) - 1 values from 2k + 4 bytes. At k = 17 (262,143
    // values) the old floor of 2^20 let it through; the new one stops it.
    let doubled = |k: usize| {
        let mut b = b"\x80\x02]".to_vec();
        for _ in 0..k {
            b.extend_from_slice(b"2\x86");
        }
        b.push(b'.');
        parse(&b, Path::new("doubled.pkl"))
    };
    let err = doubled(17).unwrap_err().to_string();
    assert!(err.contains("expands to too many values"), "{err}");
    // 2^17 - 1 values are still read.
    assert!(doubled(16).is_ok());
}
