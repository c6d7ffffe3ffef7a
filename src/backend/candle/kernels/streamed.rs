//! The streamed matmul: a quantized weight dequantized a slab of output rows
//! at a time into a per-thread buffer and multiplied with faer's f32 GEMM,
//! the slabs spread over rayon's threads — or, under the `avx512` kernel
//! set, decoded to integers and multiplied by [`super::int16`].

use candle_core::quantized::QTensor;
use candle_core::{Device, Result, Tensor};

use super::cpu::with_rows;

/// Rows of activations from which `WeightMode::Auto` dequantizes the
/// weight for the f32 GEMM rather than running the quantized kernel: the
/// dequantization is paid once per matmul, and the GEMM is faster per row
/// than quantized dot products.
pub const STREAM_MIN_ROWS: usize = 16;

thread_local! {
    static F32_ACTIVATIONS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While alive, every matmul on this thread over a quantized weight in
/// `WeightMode::Auto` takes the many-row path, whatever its row count:
/// f32 activations (dequantize, then the f32 GEMM), or under the `avx512`
/// kernel set 16-bit activations rounded per token ([`super::int16`]).
/// Scoring holds one, so a document's scores do not depend on how many
/// rows its forward had (a short forward would otherwise take the
/// 8-bit-activation kernels). Decoding holds none.
pub struct F32Activations {
    before: bool,
}

impl F32Activations {
    pub fn hold() -> Self {
        Self {
            before: F32_ACTIVATIONS.with(|c| c.replace(true)),
        }
    }

    /// Whether a guard is alive on this thread.
    pub fn held() -> bool {
        F32_ACTIVATIONS.with(std::cell::Cell::get)
    }
}

impl Drop for F32Activations {
    fn drop(&mut self) {
        F32_ACTIVATIONS.with(|c| c.set(self.before));
    }
}

/// f32 elements of the dequantized slab (4 MiB; one buffer per thread):
/// bounds the memory of a streamed matmul, and is small enough that the
/// slab is still in cache when the GEMM packs it.
pub(crate) const STREAM_SLAB_ELEMS: usize = 1 << 20;

/// `x [rows, k] · Wᵀ` for a quantized `W [n, k]`: slabs of output rows are
/// dequantized and multiplied with the f32 GEMM, so no f32 copy exceeds
/// [`STREAM_SLAB_ELEMS`] elements. The slabs are rayon's tasks, each
/// dequantized and multiplied on one thread into its own rows of `outᵀ`
/// (a buffer per thread), in a count that is a multiple of the threads
/// and of near-equal size: no thread waits at the end of each slab's GEMM,
/// as it would with one parallel GEMM per slab.
pub(crate) fn streamed_matmul(x: &Tensor, q: &QTensor) -> Result<Tensor> {
    streamed_matmul_slabs(x, q, STREAM_SLAB_ELEMS)
}

pub(crate) fn streamed_matmul_slabs(x: &Tensor, q: &QTensor, slab_elems: usize) -> Result<Tensor> {
    use rayon::prelude::*;
    let (n, k) = q.shape().dims2()?;
    let m = x.dim(0)?;
    let set = super::simd::active();
    if super::int16::applies(set, q.dtype()) {
        let data = q.data()?;
        let out = with_rows(x, |xs| {
            Ok(super::int16::Acts16::with(xs, k, |acts| {
                super::int16::matmul(set, acts, q.dtype(), &data, slab_elems)
            }))
        })?;
        if let Some(out) = out {
            return Tensor::from_vec(out, (m, n), &Device::Cpu);
        }
    }
    let threads = rayon::current_num_threads().max(1);
    let most = (slab_elems / k).clamp(1, n);
    let count = n.div_ceil(most).div_ceil(threads) * threads;
    let slab = n.div_ceil(count.min(n));
    let mut out = vec![0f32; m * n];
    with_rows(x, |xs| {
        // `out` row-major [m, n] is `outᵀ` column-major [n, m]; its row
        // ranges are the slabs' disjoint destinations.
        let mut parts = Vec::with_capacity(count);
        let mut rest = faer::MatMut::from_column_major_slice_mut(&mut out, n, m);
        for r0 in (0..n).step_by(slab) {
            let rows = slab.min(n - r0);
            let (part, tail) = rest.split_at_row_mut(rows);
            parts.push((r0, part));
            rest = tail;
        }
        parts.into_par_iter().try_for_each(|(r0, dst)| {
            with_slab(|buf| {
                let w = dequantize_slab(q, r0, dst.nrows(), buf, false)?;
                gemm_t(dst, xs, k, w, faer::Par::Seq);
                Ok(())
            })
        })
    })?;
    Tensor::from_vec(out, (m, n), &Device::Cpu)
}

/// Calls `f(r0, w, xs)` for each slab of `slab` rows of `q` (from row
/// `r0`; `w` its rows dequantized, `[rows, k]`) with `xs` the values of `x`.
pub(crate) fn each_slab(
    x: &Tensor,
    q: &QTensor,
    slab: usize,
    mut f: impl FnMut(usize, &[f32], &[f32]),
) -> Result<()> {
    let n = q.shape().dims2()?.0;
    with_slab(|buf| {
        with_rows(x, |xs| {
            for r0 in (0..n).step_by(slab) {
                let w = dequantize_slab(q, r0, slab.min(n - r0), buf, true)?;
                f(r0, w, xs);
            }
            Ok(())
        })
    })
}

thread_local! {
    /// The dequantized slab of [`streamed_matmul`] and the head's scores,
    /// kept by the thread that runs the forward: its pages are faulted in
    /// once, not per matmul.
    static SLAB: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's slab buffer (a fresh one if it is in use).
pub(crate) fn with_slab<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    SLAB.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut Vec::new()),
    })
}

/// Rows `r0..r0 + rows` of `q` as f32 in `buf` (grown as needed; the
/// returned slice is exactly `rows · k`): [`super::dequant`]'s routines
/// (on rayon's threads when `parallel`, else on this one), or candle's for
/// other types.
pub(crate) fn dequantize_slab<'b>(
    q: &QTensor,
    r0: usize,
    rows: usize,
    buf: &'b mut Vec<f32>,
    parallel: bool,
) -> Result<&'b [f32]> {
    let (_, k) = q.shape().dims2()?;
    let dtype = q.dtype();
    let row_bytes = k / dtype.block_size() * dtype.type_size();
    if buf.len() < rows * k {
        buf.resize(rows * k, 0.0);
    }
    let w = &mut buf[..rows * k];
    let data = q.data()?;
    let bytes = &data[r0 * row_bytes..(r0 + rows) * row_bytes];
    if !super::dequant::rows_into(dtype, bytes, k, w, parallel) {
        w.copy_from_slice(
            &dequantize_rows(q, r0, rows)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
    }
    Ok(w)
}

/// `dst = w · xᵀ` for `x [m, k]`, `w [rows, k]` and `dst [rows, m]` a
/// column-major view of a row-major `[m, ·]` output (`outᵀ`), so that
/// `out = x · wᵀ` (f32 GEMM, faer, `par` its threads). Written this way
/// because faer 0.24.4's matmul into a row-major strided view gave wrong
/// values or crashed on this project's machine (AVX2); the column-major
/// form is right for every shape tried.
pub(crate) fn gemm_t(dst: faer::MatMut<'_, f32>, x: &[f32], k: usize, w: &[f32], par: faer::Par) {
    use faer::{linalg::matmul::matmul, Accum, MatRef};
    let (m, rows) = (x.len() / k, w.len() / k);
    let lhs = MatRef::from_row_major_slice(w, rows, k);
    let rhs = MatRef::from_row_major_slice(x, m, k).transpose();
    matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, par);
}

/// Rows `r0..r0 + rows` of a quantized `[n, k]` matrix as f32; each thread
/// (rayon) dequantizes a contiguous run of them.
pub(crate) fn dequantize_rows(q: &QTensor, r0: usize, rows: usize) -> Result<Tensor> {
    use rayon::prelude::*;
    let (_, k) = q.shape().dims2()?;
    let dtype = q.dtype();
    let row_bytes = k / dtype.block_size() * dtype.type_size();
    let data = q.data()?;
    let per = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let parts: Vec<Result<Tensor>> = (0..rows.div_ceil(per))
        .into_par_iter()
        .map(|p| {
            let a = r0 + p * per;
            let b = (a + per).min(r0 + rows);
            let qt = candle_core::quantized::ggml_file::qtensor_from_ggml(
                dtype,
                &data[a * row_bytes..b * row_bytes],
                vec![b - a, k],
                &Device::Cpu,
            )?;
            qt.dequantize(&Device::Cpu)
        })
        .collect();
    Tensor::cat(&parts.into_iter().collect::<Result<Vec<_>>>()?, 0)
}
