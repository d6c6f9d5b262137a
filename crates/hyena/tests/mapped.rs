//! Memory-mapped safetensors: the streaming writer's files read back exactly (bf16 bits in
//! place, f32 values), a store built in place shares the file's words, and damaged files are
//! errors naming the tensor, never out-of-bounds reads.

use std::collections::BTreeMap;

use hyena::io::mapped::{write_streaming, MapDtype, MappedSafetensors, OutData, OutTensor};
use hyena::params::{InPlaceSource, ParamStore, TensorSource};

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("hyena-mapped-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn streamed_file_maps_back_exactly() {
    let path = tmp("a.safetensors");
    let bits: Vec<u16> = (0..15u16).map(|i| 0x3f80 + i).collect();
    let f: Vec<f32> = vec![1.5, -2.25, 3.0];
    let t = [
        OutTensor {
            name: "w".into(),
            dtype: MapDtype::Bf16,
            shape: vec![3, 5],
            data: OutData::Bf16(&bits),
        },
        OutTensor {
            name: "p".into(),
            dtype: MapDtype::F32,
            shape: vec![3],
            data: OutData::F32(&f),
        },
    ];
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "test".to_string());
    write_streaming(&path, &t, &meta).unwrap();
    let m = std::sync::Arc::new(MappedSafetensors::open(&path).unwrap());
    assert_eq!(m.metadata.get("format").map(String::as_str), Some("test"));
    let mut b = vec![0u16; 15];
    m.read_bf16("w", &mut b).unwrap();
    assert_eq!(b, bits);
    let mut g = vec![0.0f32; 3];
    m.read_f32("p", &mut g).unwrap();
    assert_eq!(g, f);
    // In place: the store's words are the file's.
    let off = m.bf16_offset("w").unwrap();
    assert_eq!(&m.region()[off..off + 15], &bits[..]);
    assert!(m.bf16_offset("p").is_none());
    let src: std::sync::Arc<dyn InPlaceSource> = m.clone();
    let (h, store) = ParamStore::build_mapped(src, |vb| vb.get(&[3, 5], "w")).unwrap();
    assert_eq!(&store.bf16().unwrap()[h.range()], &bits[..]);
    // A wrong shape and an f32 tensor are refused by name.
    let src: std::sync::Arc<dyn InPlaceSource> = m.clone();
    let e = ParamStore::build_mapped(src, |vb| vb.get(&[5, 3], "w")).unwrap_err();
    assert!(e.to_string().contains("`w`"), "{e}");
    let src: std::sync::Arc<dyn InPlaceSource> = m.clone();
    let e = ParamStore::build_mapped(src, |vb| vb.get(&[3], "p")).unwrap_err();
    assert!(e.to_string().contains("not stored as bf16"), "{e}");
}

#[test]
fn damaged_files_are_errors() {
    let path = tmp("b.safetensors");
    let bits = vec![0u16; 64];
    let t = [OutTensor {
        name: "w".into(),
        dtype: MapDtype::Bf16,
        shape: vec![8, 8],
        data: OutData::Bf16(&bits),
    }];
    write_streaming(&path, &t, &BTreeMap::new()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // Truncated data: the tensor no longer fits.
    let cut = tmp("c.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let e = MappedSafetensors::open(&cut).unwrap_err().to_string();
    assert!(e.contains("`w`") && e.contains("truncated"), "{e}");
    // Truncated header, and not safetensors at all.
    std::fs::write(&cut, &bytes[..12]).unwrap();
    assert!(MappedSafetensors::open(&cut).is_err());
    std::fs::write(&cut, b"hello").unwrap();
    assert!(MappedSafetensors::open(&cut).is_err());
    let _ = std::fs::remove_file(&cut);
}
