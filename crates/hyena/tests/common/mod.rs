//! Helpers shared by the library's integration tests: a temp directory removed on drop, and
//! the largest element-wise difference of two buffers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new, empty directory whose name carries `tag`, the process id and a counter.
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hyena-test-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Write `bytes` at `rel` (parent directories created); returns the path.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The small HyenaDNA configs of the tests: `n_layer` blocks of width `d`, MLP width `d_inner`,
/// long filters for `l_max` positions from a filter MLP of width `filter_order` on a
/// positional embedding of width 5; everything else the defaults (vocabulary 12 padded to 16,
/// LayerNorm eps 1e-5, untied head, order 2, safari's filter: w 1, shift 0, interleaved).
pub fn small_lm(
    n_layer: usize,
    d: usize,
    d_inner: usize,
    l_max: usize,
    filter_order: usize,
) -> hyena::models::hyenadna::LmConfig {
    let mut c = hyena::models::hyenadna::LmConfig {
        n_layer,
        d_inner,
        ..Default::default()
    };
    c.operator.d_model = d;
    c.operator.l_max = l_max;
    c.operator.filter.emb_dim = 5;
    c.operator.filter.filter_order = filter_order;
    c
}

/// `max_i |a_i − b_i|` (the lengths must agree).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}
