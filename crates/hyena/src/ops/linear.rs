//! Dense projections through `gemm`, with bias fused into the product.
//!
//! [`matmul`] is a strided `dst (+)= lhs · rhs` on row/column strides, so callers can read and
//! write transposed views (the Hyena operator writes `in_proj` straight into its channel-first
//! `[C, B·L]` layout) without an explicit transpose pass. [`linear_forward`]/[`linear_backward`]
//! are PyTorch's `nn.Linear` on `[M, K]` rows with `W: [N, K]`. [`mod@reference`] holds a naive
//! triple loop.

use rayon::prelude::*;

use crate::error::{check_len, Result};

/// A read-only strided matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

/// A mutable strided matrix view.
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// Row-major `[rows, cols]`.
    pub fn rm(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major `[cols, rows]` buffer, seen as `[rows, cols]`.
    pub fn tr(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            rs: 1,
            cs: rows,
        }
    }
    fn max_index(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }
}

impl<'a> MatMut<'a> {
    /// Row-major `[rows, cols]`.
    pub fn rm(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        MatMut {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major `[cols, rows]` buffer, seen as `[rows, cols]`.
    pub fn tr(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        MatMut {
            data,
            rows,
            cols,
            rs: 1,
            cs: rows,
        }
    }
    fn max_index(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }
}

/// FLOPs (`2·m·k·n` per product) of every [`matmul`] since the process started: lets the
/// benchmarks report how close a model's training runs to the machine's sgemm rate. One
/// relaxed atomic add per product.
static MATMUL_FLOPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Total [`matmul`] FLOPs so far (counted by every call since the process started).
pub fn matmul_flops() -> u64 {
    MATMUL_FLOPS.load(std::sync::atomic::Ordering::Relaxed)
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` with `accumulate`). Shapes `[m, k] · [k, n] → [m, n]`.
pub fn matmul(dst: MatMut<'_>, lhs: MatRef<'_>, rhs: MatRef<'_>, accumulate: bool) -> Result<()> {
    const OP: &str = "matmul";
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    MATMUL_FLOPS.fetch_add(2 * (m * k * n) as u64, std::sync::atomic::Ordering::Relaxed);
    if rhs.rows != k || dst.rows != m || dst.cols != n {
        return Err(crate::Error::shape(
            OP,
            "operands",
            format!("[{m}, {k}] · [{k}, {n}] -> [{m}, {n}]"),
            format!(
                "[{}, {}] · [{}, {}] -> [{}, {}]",
                lhs.rows, lhs.cols, rhs.rows, rhs.cols, dst.rows, dst.cols
            ),
        ));
    }
    if lhs.max_index() > lhs.data.len()
        || rhs.max_index() > rhs.data.len()
        || dst.max_index() > dst.data.len()
    {
        return Err(crate::Error::shape(
            OP,
            "buffer",
            "view inside its buffer",
            "view past the end",
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[i * dst.rs + j * dst.cs] = 0.0;
                }
            }
        }
        return Ok(());
    }
    let par = if (m * n * k) < 32 * 32 * 32 || super::in_serial() {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    };
    // SAFETY: the views were bounds-checked above; `dst` does not alias the inputs (it is a
    // unique borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.cs as isize,
            dst.rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

/// `nn.Linear`: `y[M, N] = x[M, K] · Wᵀ + b`, with `W: [N, K]`, `b: [N]`.
/// The bias is written first and the product accumulated onto it (one pass over `y`).
pub fn linear_forward(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    y: &mut [f32],
) -> Result<()> {
    linear_forward_residual(x, w, b, None, m, k, n, y)
}

/// Rows at or below which a product goes through [`linear_few_rows`] (decoding a token).
pub const FEW_ROWS: usize = 4;

/// `y [M, N] = x [M, K] · Wᵀ + b` for a few rows (`M` ≤ [`FEW_ROWS`]: one decoding step),
/// reading each weight row once straight from its stored precision (bf16 widened exactly on
/// the fly). Generation is bound by reading the weights, so this avoids the widened or packed
/// copy a GEMM makes of them. Output rows (weight rows) are split over the threads; each dot
/// product runs in 16 f32 lanes summed in a fixed order.
#[allow(clippy::too_many_arguments)]
pub fn linear_few_rows(
    x: &[f32],
    w: Weight<'_>,
    b: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "linear (few rows)";
    check_len(OP, "x [M, K]", x.len(), m * k)?;
    check_len(OP, "W [N, K]", w.len(), n * k)?;
    check_len(OP, "y [M, N]", y.len(), m * n)?;
    if let Some(b) = b {
        check_len(OP, "b [N]", b.len(), n)?;
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    // Output transposed [N, M] so that each task owns whole weight rows.
    const ROWS: usize = 64;
    let mut yt = vec![0.0f32; n * m];
    yt.par_chunks_mut(ROWS * m)
        .enumerate()
        .for_each(|(blk, o)| {
            let j0 = blk * ROWS;
            let rows = o.len() / m;
            match w {
                Weight::F32(wf) => dots_f32(x, &wf[j0 * k..(j0 + rows) * k], k, m, o),
                Weight::Bf16(wb) => dots_bf16(x, &wb[j0 * k..(j0 + rows) * k], k, m, o),
            }
        });
    for r in 0..m {
        for j in 0..n {
            y[r * n + j] = yt[j * m + r] + b.map_or(0.0, |b| b[j]);
        }
    }
    Ok(())
}

/// `Σ_i a[i]·f(b[i])` in 64 lanes (four vectors of 16, so the adds of consecutive blocks do
/// not wait on each other), summed in a fixed order, for [`linear_few_rows`].
#[inline(always)]
fn dot16<T: Copy>(a: &[f32], b: &[T], f: impl Fn(T) -> f32) -> f32 {
    const W: usize = 64;
    let mut acc = [0.0f32; W];
    let (ac, bc) = (a.chunks_exact(W), b.chunks_exact(W));
    let (at, bt) = (ac.remainder(), bc.remainder());
    for (x, w) in ac.zip(bc) {
        let x: &[f32; W] = x.try_into().unwrap_or(&[0.0; W]);
        for i in 0..W {
            acc[i] += x[i] * f(w[i]);
        }
    }
    for (i, (&x, &w)) in at.iter().zip(bt).enumerate() {
        acc[i] += x * f(w);
    }
    let mut s16 = [0.0f32; 16];
    for (i, v) in s16.iter_mut().enumerate() {
        *v = (acc[i] + acc[i + 16]) + (acc[i + 32] + acc[i + 48]);
    }
    let mut s8 = [0.0f32; 8];
    for i in 0..8 {
        s8[i] = s16[i] + s16[i + 8];
    }
    ((s8[0] + s8[4]) + (s8[2] + s8[6])) + ((s8[1] + s8[5]) + (s8[3] + s8[7]))
}

super::simd_fn! {
    /// `o[j·M + r] = x[r] · w[j]` for the weight rows `w [rows, K]` (f32).
    fn dots_f32(x: &[f32], w: &[f32], k: usize, m: usize, o: &mut [f32]) {
        for (j, oj) in o.chunks_exact_mut(m).enumerate() {
            let wr = &w[j * k..(j + 1) * k];
            for (r, ov) in oj.iter_mut().enumerate() {
                *ov = dot16(&x[r * k..(r + 1) * k], wr, |v| v);
            }
        }
    }
}

super::simd_fn! {
    /// [`dots_f32`] for bf16 weight rows, widened exactly.
    fn dots_bf16(x: &[f32], w: &[u16], k: usize, m: usize, o: &mut [f32]) {
        for (j, oj) in o.chunks_exact_mut(m).enumerate() {
            let wr = &w[j * k..(j + 1) * k];
            for (r, ov) in oj.iter_mut().enumerate() {
                *ov = dot16(&x[r * k..(r + 1) * k], wr, |v| f32::from_bits((v as u32) << 16));
            }
        }
    }
}

/// A weight matrix as a model stores it: f32, or bf16 bits (released checkpoints of billions of
/// parameters are kept in bf16 and never widened as a whole).
#[derive(Clone, Copy, Debug)]
pub enum Weight<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

impl Weight<'_> {
    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            Weight::F32(w) => w.len(),
            Weight::Bf16(w) => w.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32: borrowed when stored so, else widened into `scratch` (exact: a bf16
    /// value is the top half of an f32).
    pub fn widen<'s>(&'s self, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        match *self {
            Weight::F32(w) => w,
            Weight::Bf16(w) => {
                super::grow(scratch, w.len());
                let dst = &mut scratch[..w.len()];
                dst.par_chunks_mut(1 << 14)
                    .zip(w.par_chunks(1 << 14))
                    .for_each(|(d, s)| {
                        for (d, &b) in d.iter_mut().zip(s) {
                            *d = f32::from_bits((b as u32) << 16);
                        }
                    });
                dst
            }
        }
    }
}

/// [`linear_forward`] with a stored weight: f32 weights directly; bf16 weights widened to f32
/// into `scratch` first (the f32 precision path: activations and products in f32, the weights'
/// values exactly those of the checkpoint). `scratch` is reused across calls, so a model pays
/// the widening pass (`N·K`, small beside the `M·N·K` product) but no fresh allocation.
#[allow(clippy::too_many_arguments)]
pub fn linear_weight(
    x: &[f32],
    w: Weight<'_>,
    b: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    y: &mut [f32],
    scratch: &mut Vec<f32>,
) -> Result<()> {
    check_len("linear (stored weight)", "W [N, K]", w.len(), n * k)?;
    let wf = w.widen(scratch);
    linear_forward(x, wf, b, m, k, n, y)
}

/// `y = residual + x Wᵀ + b`: [`linear_forward`] with a residual connection folded into the
/// pass that writes the bias (the GEMM then accumulates onto it), so the residual add costs no
/// separate pass over `[M, N]`.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward_residual(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    residual: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "linear forward";
    check_len(OP, "x [M, K]", x.len(), m * k)?;
    check_len(OP, "weight [N, K]", w.len(), n * k)?;
    check_len(OP, "y [M, N]", y.len(), m * n)?;
    if let Some(b) = b {
        check_len(OP, "bias [N]", b.len(), n)?;
    }
    if let Some(r) = residual {
        check_len(OP, "residual [M, N]", r.len(), m * n)?;
    }
    let accumulate = prefill_rows(y, n, b, residual);
    matmul(
        MatMut::rm(y, m, n),
        MatRef::rm(x, m, k),
        MatRef::tr(w, k, n),
        accumulate,
    )
}

/// `y += x Wᵀ + b` in place (`x: [M, K]`, `W: [N, K]`, `b: [N]`, `y: [M, N]`): a residual
/// connection whose stream is updated where it lies (the lean inference path).
#[allow(clippy::too_many_arguments)]
pub fn linear_accumulate(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "linear accumulate";
    check_len(OP, "x [M, K]", x.len(), m * k)?;
    check_len(OP, "weight [N, K]", w.len(), n * k)?;
    check_len(OP, "bias [N]", b.len(), n)?;
    check_len(OP, "y [M, N]", y.len(), m * n)?;
    add_rows_inplace(y, b);
    matmul(
        MatMut::rm(y, m, n),
        MatRef::rm(x, m, k),
        MatRef::tr(w, k, n),
        true,
    )
}

crate::ops::simd_fn! {
    fn add_rows_inplace(y: &mut [f32], b: &[f32]) {
        for r in y.chunks_exact_mut(b.len()) {
            for (v, &bv) in r.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }
}

/// Writes `y [M, N] = residual + bias` row by row (either may be absent) before a GEMM that
/// accumulates onto it; returns whether anything was written (i.e. whether to accumulate).
pub(crate) fn prefill_rows(
    y: &mut [f32],
    n: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> bool {
    match (bias, residual) {
        (None, None) => return false,
        (Some(b), None) => y.chunks_exact_mut(n).for_each(|row| row.copy_from_slice(b)),
        (None, Some(r)) => y.copy_from_slice(r),
        (Some(b), Some(r)) => add_bias_rows(y, r, b),
    }
    true
}

crate::ops::simd_fn! {
    fn add_bias_rows(y: &mut [f32], r: &[f32], b: &[f32]) {
        for (yr, rr) in y.chunks_exact_mut(b.len()).zip(r.chunks_exact(b.len())) {
            for ((yv, &rv), &bv) in yr.iter_mut().zip(rr).zip(b) {
                *yv = rv + bv;
            }
        }
    }
}

/// Backward of [`linear_forward`]. Writes `dx = dy · W` if asked, and *accumulates*
/// `dW += dyᵀ · x`, `db += Σ_rows dy` (so that shared parameters can sum their gradients).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) -> Result<()> {
    const OP: &str = "linear backward";
    check_len(OP, "dy [M, N]", dy.len(), m * n)?;
    check_len(OP, "x [M, K]", x.len(), m * k)?;
    check_len(OP, "weight [N, K]", w.len(), n * k)?;
    check_len(OP, "dW [N, K]", dw.len(), n * k)?;
    if let Some(dx) = dx {
        check_len(OP, "dx [M, K]", dx.len(), m * k)?;
        matmul(
            MatMut::rm(dx, m, k),
            MatRef::rm(dy, m, n),
            MatRef::rm(w, n, k),
            false,
        )?;
    }
    matmul(
        MatMut::rm(dw, n, k),
        MatRef::tr(dy, n, m),
        MatRef::rm(x, m, k),
        true,
    )?;
    if let Some(db) = db {
        check_len(OP, "db [N]", db.len(), n)?;
        col_sums_acc(dy, m, n, db);
    }
    Ok(())
}

/// Output projection of a channel-first signal, as the long-convolution operators end
/// (Hyena, MultiHyena, the striped operators): `y [M, D] = (residual +) ygᵀ · Woᵀ + bo`,
/// with `yg: [D, M]` (channel-first, `M = B·L`), `Wo: [D, D]`, `bo: [D]`.
pub fn out_proj_cf_forward(
    yg: &[f32],
    w: &[f32],
    b: &[f32],
    residual: Option<&[f32]>,
    (m, d): (usize, usize),
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "out_proj forward";
    check_len(OP, "yg [D, M]", yg.len(), d * m)?;
    check_len(OP, "weight [D, D]", w.len(), d * d)?;
    check_len(OP, "bias [D]", b.len(), d)?;
    check_len(OP, "y [M, D]", y.len(), m * d)?;
    if let Some(r) = residual {
        check_len(OP, "residual [M, D]", r.len(), m * d)?;
    }
    prefill_rows(y, d, Some(b), residual);
    matmul(
        MatMut::rm(y, m, d),
        MatRef::tr(yg, m, d),
        MatRef::tr(w, d, d),
        true,
    )
}

/// Backward of [`out_proj_cf_forward`]: writes `dyg [D, M] = Woᵀ · dyᵀ`, *accumulates*
/// `dWo += dyᵀ · ygᵀ` and `dbo += Σ_rows dy`.
///
/// `dWo` is formed transposed, `dWoᵀ = yg [D, M] · dy [M, D]` in `scratch`, because both
/// factors are then row-major: gemm ran the direct form (two column-major factors) at half
/// speed (2.6 vs 1.2 ms at D = 128, M = 4096).
#[allow(clippy::too_many_arguments)]
pub fn out_proj_cf_backward(
    dy: &[f32],
    yg: &[f32],
    w: &[f32],
    (m, d): (usize, usize),
    dyg: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    scratch: &mut Vec<f32>,
) -> Result<()> {
    const OP: &str = "out_proj backward";
    check_len(OP, "dy [M, D]", dy.len(), m * d)?;
    check_len(OP, "yg [D, M]", yg.len(), d * m)?;
    check_len(OP, "weight [D, D]", w.len(), d * d)?;
    check_len(OP, "dyg [D, M]", dyg.len(), d * m)?;
    check_len(OP, "dW [D, D]", dw.len(), d * d)?;
    check_len(OP, "db [D]", db.len(), d)?;
    scratch.clear();
    scratch.resize(d * d, 0.0);
    matmul(
        MatMut::rm(scratch, d, d),
        MatRef::rm(yg, d, m),
        MatRef::rm(dy, m, d),
        false,
    )?;
    for (i, row) in dw.chunks_exact_mut(d).enumerate() {
        for (j, g) in row.iter_mut().enumerate() {
            *g += scratch[j * d + i];
        }
    }
    col_sums_acc(dy, m, d, db);
    matmul(
        MatMut::rm(dyg, d, m),
        MatRef::tr(w, d, d),
        MatRef::tr(dy, d, m),
        false,
    )
}

/// `out[j] += Σ_i a[i, j]` for row-major `a: [m, n]`.
pub fn col_sums_acc(a: &[f32], m: usize, n: usize, out: &mut [f32]) {
    debug_assert_eq!(a.len(), m * n);
    col_sums_rows(a, n, out);
}

crate::ops::simd_fn! {
    fn col_sums_rows(a: &[f32], n: usize, out: &mut [f32]) {
        for row in a.chunks_exact(n) {
            for (o, v) in out.iter_mut().zip(row) {
                *o += v;
            }
        }
    }
}

/// `out[i] += Σ_j a[i, j]` for row-major `a: [m, n]` (one fixed-order lane-split sum per row,
/// so it vectorises and does not depend on the thread count).
pub fn row_sums_acc(a: &[f32], n: usize, out: &mut [f32]) {
    debug_assert_eq!(a.len(), out.len() * n);
    row_sums_rows(a, n, out);
}

crate::ops::simd_fn! {
    fn row_sums_rows(a: &[f32], n: usize, out: &mut [f32]) {
        for (row, o) in a.chunks_exact(n).zip(out.iter_mut()) {
            *o += crate::ops::lanes8(row, row, row, |x, _, _| x);
        }
    }
}

/// Naive references.
pub mod reference {
    /// `y = x Wᵀ + b` by three loops, accumulating in f64.
    pub fn linear_forward(
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<f32> {
        let mut y = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = b.map_or(0.0, |b| b[j] as f64);
                for p in 0..k {
                    acc += x[i * k + p] as f64 * w[j * k + p] as f64;
                }
                y[i * n + j] = acc as f32;
            }
        }
        y
    }
}
