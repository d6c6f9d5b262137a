//! Kernels: the backend boundary of the engine.
//!
//! Everything above this module (`layers/`, and later `models/`, `train/`) touches numbers only
//! through the functions here, on contiguous `f32` slices with explicit shapes. Each kernel has a
//! forward, a backward and a slow reference beside it; a GPU backend would re-implement this
//! module's functions and nothing else.

pub mod act;
pub mod fftconv;
pub mod linear;
pub mod norm;
pub mod short_conv;

#[doc(hidden)]
pub mod gradcheck;

/// Define `fn name(args)` twice, for AVX2 (chosen at run time when the CPU has it) and for the
/// baseline target, from one body: the hot elementwise loops (GELU, short convolution, spectra
/// products) vectorise 8-wide instead of 4-wide. Only the vector width changes; no FMA
/// contraction is enabled, so both paths give bit-identical results and runs stay reproducible
/// across machines. Helpers the body calls must be `#[inline(always)]` to get the same benefit.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn inner($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
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

/// Sum of 8 interleaved partial sums of `f(i)` over `0..n` (vectorises inside a `simd_fn!`;
/// a fixed order, so the result does not depend on the machine or the thread count).
#[inline(always)]
pub(crate) fn lanes8(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let full = n / 8 * 8;
    let mut i = 0;
    while i < full {
        for (k, a) in acc.iter_mut().enumerate() {
            *a += f(i + k);
        }
        i += 8;
    }
    let mut tail = 0.0f32;
    for j in full..n {
        tail += f(j);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
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
