//! Kernels: the backend boundary of the engine.
//!
//! The layers and models above this module do their heavy arithmetic (FFT and short
//! convolutions, matrix products, norms, activations, the loss) through the functions here, on
//! contiguous `f32` slices with explicit shapes; what is left to them is glue (residual adds,
//! pooling, attention's masked softmax, kernels generated from a few SSM parameters). Each
//! kernel has a forward, a backward and a slow reference beside it ([`fftconv`],
//! [`short_conv`], [`linear`], [`norm`], [`act`]); the loss ([`loss`]) writes its gradient in
//! the same pass and is tested against a direct log-softmax.
//!
//! Hot loops are compiled for AVX-512F, AVX2 and the baseline target and chosen at run time,
//! with no FMA contraction and fixed reduction orders, so every path gives the same bits.

pub mod act;
pub mod attention;
pub mod bf16;
pub mod fftconv;
pub mod fir;
pub mod linear;
pub mod loss;
pub mod modal;
pub mod norm;
pub mod short_conv;

/// Define `fn name(args)` three times, for AVX-512F and AVX2 (the widest the CPU has is chosen
/// at run time) and for the baseline target, from one body: the hot elementwise loops (GELU,
/// short convolution, LayerNorm, spectra products) vectorise 16- or 8-wide instead of 4-wide.
/// Only the vector width changes; no FMA contraction is enabled and reductions have a fixed
/// order ([`lanes8`]), so every path gives bit-identical results and runs stay reproducible
/// across machines. Helpers the body calls must be `#[inline(always)]` to get the same benefit.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn inner($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) {
                    inner($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) {
                    inner($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// `Σ_i f(a[i], b[i], c[i])` over the common length, as 8 interleaved partial sums combined in
/// a fixed order (so the result does not depend on the machine or the thread count). Pass the
/// same slice more than once when `f` needs fewer inputs. The slices are walked in 8-element
/// arrays, so there are no bounds checks and the loop vectorises inside a `simd_fn!` (an
/// index-closure version compiled to scalar code).
#[inline(always)]
pub(crate) fn lanes8(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    lanes8_4(a, b, c, c, |x, y, z, _| f(x, y, z))
}

/// [`lanes8`] over four slices (the one implementation of both).
#[inline(always)]
pub(crate) fn lanes8_4(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    d: &[f32],
    f: impl Fn(f32, f32, f32, f32) -> f32,
) -> f32 {
    let n = a.len().min(b.len()).min(c.len()).min(d.len());
    let (a, b, c, d) = (&a[..n], &b[..n], &c[..n], &d[..n]);
    let mut acc = [0.0f32; 8];
    let (ca, cb, cc, cd) = (
        a.chunks_exact(8),
        b.chunks_exact(8),
        c.chunks_exact(8),
        d.chunks_exact(8),
    );
    let (ta, tb, tc, td) = (
        ca.remainder(),
        cb.remainder(),
        cc.remainder(),
        cd.remainder(),
    );
    for (((xa, xb), xc), xd) in ca.zip(cb).zip(cc).zip(cd) {
        let (xa, xb, xc, xd): (&[f32; 8], &[f32; 8], &[f32; 8], &[f32; 8]) =
            match (xa.try_into(), xb.try_into(), xc.try_into(), xd.try_into()) {
                (Ok(xa), Ok(xb), Ok(xc), Ok(xd)) => (xa, xb, xc, xd),
                _ => unreachable!("chunks_exact(8) yields 8 elements"),
            };
        for k in 0..8 {
            acc[k] += f(xa[k], xb[k], xc[k], xd[k]);
        }
    }
    let mut tail = 0.0f32;
    for (((&xa, &xb), &xc), &xd) in ta.iter().zip(tb).zip(tc).zip(td) {
        tail += f(xa, xb, xc, xd);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Resize `v` to exactly `n` values (a no-op when it has them: buffers kept across steps keep
/// their memory, and their stale contents are overwritten by the kernels that fill them).
pub(crate) fn set_len(v: &mut Vec<f32>, n: usize) {
    if v.len() != n {
        v.resize(n, 0.0);
    }
}

/// Make `v` hold at least `n` values (workspaces that only grow).
pub(crate) fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

thread_local! {
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with this thread's matrix products single-threaded. Data-parallel callers (one
/// batch shard per worker thread, e.g. [`crate::models::parallel`]) use it:
/// their workers are all busy already, and gemm's own fork/join at every product then only
/// costs synchronisation. Results do not change (gemm splits rows and columns, never the sum).
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    let prev = SERIAL.with(|s| s.replace(true));
    let r = f();
    SERIAL.with(|s| s.set(prev));
    r
}

/// Whether the current thread is inside [`serial`].
pub(crate) fn in_serial() -> bool {
    SERIAL.with(|s| s.get())
}

/// A raw pointer that may be shared across rayon tasks which write *disjoint* ranges.
///
/// The kernels partition their outputs by channel or row; the borrow checker cannot see that
/// partition through strided layouts, so each use site states why its ranges are disjoint.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(*mut f32, usize);

unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    pub(crate) fn new(s: &mut [f32]) -> Self {
        SyncPtr(s.as_mut_ptr(), s.len())
    }
    /// # Safety
    /// `[off, off + len)` must lie inside the buffer, the buffer must outlive the returned slice,
    /// and no other task may touch that range while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice<'a>(&self, off: usize, len: usize) -> &'a mut [f32] {
        assert!(off + len <= self.1, "SyncPtr range out of bounds");
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }
}
