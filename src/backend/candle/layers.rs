//! Building blocks shared by the model files: weight loading with a
//! swappable matmul strategy, RMS norm, RoPE tables, KV cache, attention.
//!
//! Invariant: nothing here knows a model family; the model files compose it.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};

use crate::gguf::{GgufError, GgufFile};

/// How weight matrices are held and multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightMode {
    /// Keep the GGUF's quantized blocks; activations are quantized inside the matmul.
    Quantized,
    /// Dequantize every tensor to f32 at load (the fidelity reference path).
    F32,
    /// Keep the quantized blocks in memory; a matmul over many rows
    /// dequantizes the weight (in parallel, a slab of output rows at a time)
    /// and runs the f32 GEMM, a matmul over a few rows uses candle's
    /// quantized kernel. Memory stays near the file size; prefill runs at
    /// f32-GEMM speed.
    Auto,
}

/// Rows of activations from which [`WeightMode::Auto`] dequantizes the
/// weight for the f32 GEMM rather than running the quantized kernel: the
/// dequantization is paid once per matmul, the GEMM is ~1.5-5x faster per
/// row than candle's quantized dot products.
pub const STREAM_MIN_ROWS: usize = 16;

/// f32 elements of the dequantized slab (4 MiB; one buffer, kept by the
/// thread that runs the forwards): bounds the memory of a streamed matmul.
/// 4 MiB rather than 16 ran the suite workload 4% (SmolLM2) to 7% (Gemma 3)
/// faster, the slab still in cache when the GEMM packs it; 1 MiB was no
/// faster.
const STREAM_SLAB_ELEMS: usize = 1 << 20;

/// What loading a model held: weights, bytes in memory, non-zero weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightStats {
    /// Elements of all distinct tensors loaded.
    pub params: u64,
    /// Bytes of the weights as held (quantized blocks, or 4 bytes per
    /// dequantized element; a tensor used twice, e.g. a tied embedding and
    /// head, counts once if both share its quantized form, twice if one of
    /// them holds a dequantized copy).
    pub held_bytes: u64,
    /// Non-zero elements; `None` once a tensor is kept quantized (its values
    /// are not at hand to count).
    pub nonzero: Option<u64>,
}

impl Default for WeightStats {
    fn default() -> Self {
        Self {
            params: 0,
            held_bytes: 0,
            nonzero: Some(0),
        }
    }
}

/// Loads named tensors from a GGUF in the chosen [`WeightMode`].
pub struct Loader<'a> {
    pub gguf: &'a mut GgufFile,
    pub mode: WeightMode,
    pub stats: WeightStats,
    seen: std::collections::HashSet<String>,
    /// Names whose loaded `QTensor` (shared through `Arc`) was counted.
    shared: std::collections::HashSet<String>,
}

/// How a loaded tensor occupies memory.
enum Held {
    /// A tensor of its own (e.g. dequantized), `bytes` each time.
    Copy(usize),
    /// The file's `QTensor`, shared by every user of the same name.
    Shared(usize),
}

impl<'a> Loader<'a> {
    pub fn new(gguf: &'a mut GgufFile, mode: WeightMode) -> Self {
        Self {
            gguf,
            mode,
            stats: WeightStats::default(),
            seen: Default::default(),
            shared: Default::default(),
        }
    }
}

impl Loader<'_> {
    pub fn qtensor(&mut self, name: &str) -> std::result::Result<Arc<QTensor>, GgufError> {
        Ok(Arc::new(self.gguf.tensor(name)?))
    }

    fn tensor_err(&self, name: &str, e: candle_core::Error) -> GgufError {
        GgufError::Tensor {
            path: self.gguf.path.clone(),
            name: name.to_string(),
            reason: e.to_string(),
        }
    }

    /// Records a tensor held as `held`; `dense` are its values when at hand
    /// (to count non-zeros).
    fn note(
        &mut self,
        name: &str,
        elems: usize,
        held: Held,
        dense: Option<&Tensor>,
    ) -> std::result::Result<(), GgufError> {
        match held {
            Held::Copy(b) => self.stats.held_bytes += b as u64,
            Held::Shared(b) => {
                if self.shared.insert(name.to_string()) {
                    self.stats.held_bytes += b as u64;
                }
            }
        }
        if !self.seen.insert(name.to_string()) {
            return Ok(());
        }
        self.stats.params += elems as u64;
        self.stats.nonzero = match (self.stats.nonzero, dense) {
            (Some(n), Some(t)) => {
                let v = t
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| self.tensor_err(name, e))?;
                Some(n + v.iter().filter(|x| **x != 0.0).count() as u64)
            }
            _ => None,
        };
        Ok(())
    }

    fn dense(&mut self, name: &str) -> std::result::Result<Tensor, GgufError> {
        let q = self.gguf.tensor(name)?;
        self.dense_copy(name, &q)
    }

    /// `q` dequantized to an f32 tensor of its own, recorded as such.
    fn dense_copy(&mut self, name: &str, q: &QTensor) -> std::result::Result<Tensor, GgufError> {
        let t = q
            .dequantize(&Device::Cpu)
            .map_err(|e| self.tensor_err(name, e))?;
        self.note(
            name,
            t.elem_count(),
            Held::Copy(t.elem_count() * 4),
            Some(&t),
        )?;
        Ok(t)
    }

    /// A 1-D f32 vector (norm weights, biases).
    pub fn vector(&mut self, name: &str) -> std::result::Result<Tensor, GgufError> {
        self.dense(name)
    }

    /// `name` as a [`Linear`] (with `name.replace(".weight", ".bias")` when
    /// present). A low-rank pair `name.lr_a` (`[r, in]`) and `name.lr_b`
    /// (`[out, r]`) stands for a missing `name` and runs as two matmuls.
    pub fn linear(&mut self, name: &str) -> std::result::Result<Linear, GgufError> {
        let bias_name = name.replace(".weight", ".bias");
        let bias = if bias_name != name && self.gguf.has_tensor(&bias_name) {
            Some(self.vector(&bias_name)?)
        } else {
            None
        };
        let (a_name, b_name) = (format!("{name}.lr_a"), format!("{name}.lr_b"));
        if !self.gguf.has_tensor(name) && self.gguf.has_tensor(&a_name) {
            let a = self.matrix(&a_name)?;
            let b = self.matrix(&b_name)?;
            let streamed = self.mode == WeightMode::Auto;
            Linear::low_rank(a, b, bias, streamed).map_err(|e| self.tensor_err(name, e))
        } else {
            let q = self.qtensor(name)?;
            self.linear_from(name, q, bias)
        }
    }

    /// A linear layer over an already loaded tensor (e.g. a tied embedding).
    pub fn linear_from(
        &mut self,
        name: &str,
        q: Arc<QTensor>,
        bias: Option<Tensor>,
    ) -> std::result::Result<Linear, GgufError> {
        let weight = self.matrix_from(name, q)?;
        let streamed = self.mode == WeightMode::Auto;
        Linear::new_with(weight, bias, streamed).map_err(|e| self.tensor_err(name, e))
    }

    pub fn matrix(&mut self, name: &str) -> std::result::Result<QMatMul, GgufError> {
        let q = self.qtensor(name)?;
        self.matrix_from(name, q)
    }

    pub fn matrix_from(
        &mut self,
        name: &str,
        q: Arc<QTensor>,
    ) -> std::result::Result<QMatMul, GgufError> {
        let dense = self.mode == WeightMode::F32;
        let full = matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        if dense || full {
            Ok(QMatMul::Tensor(self.dense_copy(name, &q)?))
        } else {
            self.note(
                name,
                q.shape().elem_count(),
                Held::Shared(q.storage_size_in_bytes()),
                None,
            )?;
            QMatMul::from_arc(q).map_err(|e| self.tensor_err(name, e))
        }
    }

    pub fn embedding(
        &mut self,
        q: Arc<QTensor>,
        name: &str,
    ) -> std::result::Result<Embedding, GgufError> {
        match self.mode {
            WeightMode::F32 => Ok(Embedding::Dense(self.dense_copy(name, &q)?)),
            WeightMode::Quantized | WeightMode::Auto => {
                let (n, b) = (q.shape().elem_count(), q.storage_size_in_bytes());
                let dense = matches!(q.dtype(), GgmlDType::F32);
                let values = if dense {
                    Some(
                        q.dequantize(&Device::Cpu)
                            .map_err(|e| self.tensor_err(name, e))?,
                    )
                } else {
                    None
                };
                self.note(name, n, Held::Shared(b), values.as_ref())?;
                Ok(Embedding::Quantized(q))
            }
        }
    }
}

/// `y = x Wᵀ (+ b)` with the weight quantized or dense. Dense weights are
/// stored transposed (`[in, out]`, contiguous) so the GEMM reads them
/// without repacking on every call.
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

enum Weight {
    Quantized(QMatMul),
    DenseT(Tensor),
    /// Quantized in memory, dequantized per matmul over many rows.
    Streamed(Arc<QTensor>, QMatMul),
    /// `x ↦ (x Aᵀ) Bᵀ`: a low-rank factorization, two thinner matmuls.
    LowRank(Box<Weight>, Box<Weight>),
}

impl Weight {
    /// `streamed`: keep a quantized weight quantized and dequantize it per
    /// matmul over [`STREAM_MIN_ROWS`] rows or more.
    fn new(weight: QMatMul, streamed: bool) -> Result<Self> {
        Ok(match weight {
            QMatMul::Tensor(w) => Weight::DenseT(w.t()?.contiguous()?),
            QMatMul::TensorF16(w) => Weight::DenseT(w.to_dtype(DType::F32)?.t()?.contiguous()?),
            QMatMul::QTensor(q) if streamed => Weight::Streamed(q.clone(), QMatMul::QTensor(q)),
            q @ QMatMul::QTensor(_) => Weight::Quantized(q),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = dims[dims.len() - 1];
        let rows = x.elem_count() / k;
        let with_last = |y: Tensor, n: usize| {
            let mut out = dims.clone();
            let last = out.len() - 1;
            out[last] = n;
            y.reshape(out)
        };
        Ok(match self {
            Weight::Quantized(q) => q.forward(x)?,
            Weight::Streamed(q, mm) if rows < STREAM_MIN_ROWS => {
                match super::gemv::matmul(&x.reshape((rows, k))?, q)? {
                    Some(y) => with_last(y, q.shape().dims2()?.0)?,
                    None => mm.forward(x)?,
                }
            }
            Weight::Streamed(q, _) => {
                let y = streamed_matmul(&x.reshape((rows, k))?, q)?;
                let n = y.dim(1)?;
                with_last(y, n)?
            }
            Weight::DenseT(wt) => with_last(x.reshape((rows, k))?.matmul(wt)?, wt.dim(1)?)?,
            Weight::LowRank(a, b) => b.forward(&a.forward(x)?)?,
        })
    }
}

impl Linear {
    pub fn new(weight: QMatMul, bias: Option<Tensor>) -> Result<Self> {
        Self::new_with(weight, bias, false)
    }

    /// See [`Weight::new`] for `streamed`.
    pub fn new_with(weight: QMatMul, bias: Option<Tensor>, streamed: bool) -> Result<Self> {
        Ok(Self {
            weight: Weight::new(weight, streamed)?,
            bias,
        })
    }

    /// `W ≈ B·A` with `a` = `A` (`[r, in]`) and `b` = `B` (`[out, r]`).
    pub fn low_rank(a: QMatMul, b: QMatMul, bias: Option<Tensor>, streamed: bool) -> Result<Self> {
        Ok(Self {
            weight: Weight::LowRank(
                Box::new(Weight::new(a, streamed)?),
                Box::new(Weight::new(b, streamed)?),
            ),
            bias,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// For an output head: the log-probability of `targets[i]` under the
    /// logits `x[i] · Wᵀ (+ b)`, without holding the logits of all rows at
    /// once. A streamed weight is dequantized slab by slab, as in
    /// [`Self::forward`], and each slab's logits are folded into a running
    /// log-sum-exp, argmax and target logit per row, then dropped. Unlike
    /// `forward`, this holds for any number of rows: scores stay those of
    /// the dequantized head (what lm-eval computes) even when a forward has
    /// only a few targets, where the quantized kernels would round the
    /// activations to 8 bits (up to 0.16 nats on SmolLM2's RTE).
    pub fn token_scores(&self, x: &Tensor, targets: &[u32]) -> Result<Vec<TokenScore>> {
        let m = x.dim(0)?;
        if m != targets.len() {
            candle_core::bail!("{m} rows of hidden states for {} targets", targets.len());
        }
        let rows: Vec<u32> = (0..m as u32).collect();
        self.token_scores_slabs(x, &rows, targets, STREAM_SLAB_ELEMS)
    }

    /// As [`Self::token_scores`], with `targets[i]` scored under row
    /// `rows[i]` of `x`: a row that predicts several targets (the shared
    /// node of a [`DocTree`]) costs one row of logits.
    pub fn token_scores_at(
        &self,
        x: &Tensor,
        rows: &[u32],
        targets: &[u32],
    ) -> Result<Vec<TokenScore>> {
        self.token_scores_slabs(x, rows, targets, STREAM_SLAB_ELEMS)
    }

    fn token_scores_slabs(
        &self,
        x: &Tensor,
        rows: &[u32],
        targets: &[u32],
        slab_elems: usize,
    ) -> Result<Vec<TokenScore>> {
        let (m, k) = x.dims2()?;
        if rows.len() != targets.len() {
            candle_core::bail!("{} rows for {} targets", rows.len(), targets.len());
        }
        if let Some(r) = rows.iter().find(|&&r| r as usize >= m) {
            candle_core::bail!("row {r} of {m} rows of hidden states");
        }
        let mut folds = vec![RowFold::EMPTY; m];
        let mut logits = vec![f32::NAN; targets.len()];
        let mut fold = |y: &[f32], cols: usize, c0: usize| {
            fold_slab(&mut folds, y, cols, c0);
            for ((l, &r), &t) in logits.iter_mut().zip(rows).zip(targets) {
                if let Some(c) = (t as usize).checked_sub(c0).filter(|&c| c < cols) {
                    *l = y[r as usize * cols + c];
                }
            }
        };
        match &self.weight {
            Weight::Streamed(q, _) => {
                let n = q.shape().dims2()?.0;
                let slab = (slab_elems / k).clamp(1, n);
                let bias = match &self.bias {
                    Some(b) => Some(b.to_vec1::<f32>()?),
                    None => None,
                };
                let mut y = vec![0f32; m * slab];
                each_slab(x, q, slab, |r0, w, xs| {
                    let cols = w.len() / k;
                    let y = &mut y[..m * cols];
                    let dst = faer::MatMut::from_column_major_slice_mut(&mut *y, cols, m);
                    gemm_t(dst, xs, k, w, faer::Par::rayon(0));
                    if let Some(b) = &bias {
                        for row in y.chunks_exact_mut(cols) {
                            for (v, b) in row.iter_mut().zip(&b[r0..r0 + cols]) {
                                *v += b;
                            }
                        }
                    }
                    fold(y, cols, r0);
                })?;
            }
            _ => {
                let y = self.forward(x)?;
                let n = y.dim(1)?;
                fold(&y.flatten_all()?.to_vec1::<f32>()?, n, 0);
            }
        }
        Ok(rows
            .iter()
            .zip(targets)
            .zip(&logits)
            .map(|((&r, &t), &l)| folds[r as usize].finish(l, t as usize))
            .collect())
    }
}

/// `x [rows, k] · Wᵀ` for a quantized `W [n, k]`: slabs of output rows are
/// dequantized and multiplied with the f32 GEMM, so no f32 copy exceeds
/// [`STREAM_SLAB_ELEMS`] elements. The slabs are rayon's tasks, each
/// dequantized and multiplied on one thread into its own rows of `outᵀ`
/// (a buffer per thread), in a count that is a multiple of the threads
/// and of near-equal size. One parallel GEMM per slab (both threads sharing
/// its packing, waiting at its end) scaled Qwen's prefill 1.6× on two
/// threads of a Zen 4; this way its pp512 went 57.0 / 57.7 → 62.9 / 64.3
/// tokens/s there (two pairs), the other models' workloads unchanged.
fn streamed_matmul(x: &Tensor, q: &QTensor) -> Result<Tensor> {
    streamed_matmul_slabs(x, q, STREAM_SLAB_ELEMS)
}

fn streamed_matmul_slabs(x: &Tensor, q: &QTensor, slab_elems: usize) -> Result<Tensor> {
    use rayon::prelude::*;
    let (n, k) = q.shape().dims2()?;
    let m = x.dim(0)?;
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
fn each_slab(
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
fn with_slab<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    SLAB.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut Vec::new()),
    })
}

/// Runs `f` on the values of a contiguous f32 CPU tensor, in place.
pub(super) fn with_rows<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("expected a CPU tensor");
    };
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("expected a contiguous tensor");
    };
    f(&cpu.as_slice::<f32>()?[a..b])
}

/// Rows `r0..r0 + rows` of `q` as f32 in `buf` (grown as needed; the
/// returned slice is exactly `rows · k`): [`super::dequant`]'s routines
/// (on rayon's threads when `parallel`, else on this one), or candle's for
/// other types.
fn dequantize_slab<'b>(
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
fn gemm_t(dst: faer::MatMut<'_, f32>, x: &[f32], k: usize, w: &[f32], par: faer::Par) {
    use faer::{linalg::matmul::matmul, Accum, MatRef};
    let (m, rows) = (x.len() / k, w.len() / k);
    let lhs = MatRef::from_row_major_slice(w, rows, k);
    let rhs = MatRef::from_row_major_slice(x, m, k).transpose();
    matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, par);
}

/// Rows `r0..r0 + rows` of a quantized `[n, k]` matrix as f32; each thread
/// (rayon) dequantizes a contiguous run of them.
fn dequantize_rows(q: &QTensor, r0: usize, rows: usize) -> Result<Tensor> {
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

/// Log-probability of one target token under one row of logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenScore {
    /// `log softmax(logits)[target]` (nats).
    pub logprob: f64,
    /// The target is the row's argmax (the first one on ties).
    pub greedy: bool,
}

/// Running log-sum-exp and argmax of one row of logits seen slab by slab
/// (columns in order).
#[derive(Debug, Clone, Copy)]
struct RowFold {
    max: f32,
    argmax: usize,
    /// `Σ exp(v - max)` over the columns seen.
    sum: f64,
}

impl RowFold {
    const EMPTY: Self = Self {
        max: f32::NEG_INFINITY,
        argmax: 0,
        sum: 0.0,
    };

    /// Folds in columns `c0..c0 + row.len()`.
    fn add(&mut self, c0: usize, row: &[f32]) {
        use super::vmath;
        let best = vmath::max(row);
        if best > self.max {
            self.sum *= ((self.max - best) as f64).exp();
            self.max = best;
            // The first column holding the maximum (NaNs are never it).
            self.argmax = c0 + row.iter().position(|&v| v == best).unwrap_or(0);
        }
        let m = self.max;
        // Each term by `vmath::exp` (≤ 1.5e-7 relative error, 8 lanes at a
        // time), summed in f32 over runs of 64 columns (≤ 8 terms a lane,
        // each ≤ 1), the runs summed in f64 over the vocabulary.
        let mut terms = [0f32; 64];
        for run in row.chunks(64) {
            let terms = &mut terms[..run.len()];
            for (t, &v) in terms.iter_mut().zip(run) {
                *t = vmath::exp(v - m);
            }
            self.sum += f64::from(vmath::sum(terms));
        }
    }

    /// The score of `target`, whose logit is `logit`.
    fn finish(&self, logit: f32, target: usize) -> TokenScore {
        TokenScore {
            logprob: logit as f64 - (self.max as f64 + self.sum.ln()),
            greedy: self.argmax == target,
        }
    }
}

/// Folds one slab of logits `y` (`[m, cols]`, columns `c0..`) into
/// `folds`, rows in parallel.
fn fold_slab(folds: &mut [RowFold], y: &[f32], cols: usize, c0: usize) {
    use rayon::prelude::*;
    folds
        .par_iter_mut()
        .zip(y.par_chunks_exact(cols))
        .for_each(|(f, row)| f.add(c0, row));
}

/// Activation of a gated MLP.
#[derive(Debug, Clone, Copy)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// `down(act(gate(x)) * up(x))`, the MLP of llama-family and Gemma blocks.
pub struct GatedMlp {
    gate: Linear,
    up: Linear,
    down: Linear,
    act: Activation,
}

impl GatedMlp {
    /// Loads `blk.{layer}.ffn_{gate,up,down}.weight`.
    pub fn load(
        loader: &mut Loader<'_>,
        layer: usize,
        act: Activation,
    ) -> std::result::Result<Self, GgufError> {
        let mut l = |s: &str| loader.linear(&format!("blk.{layer}.{s}.weight"));
        Ok(Self {
            gate: l("ffn_gate")?,
            up: l("ffn_up")?,
            down: l("ffn_down")?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.gate.forward(x)?;
        let u = self.up.forward(x)?;
        self.down.forward(&gated(&g, &u, self.act)?)
    }
}

/// `act(g) * u` elementwise, in parallel (candle's unary and binary ops
/// run on one thread), both activations through [`super::vmath::exp`], so
/// they vectorise.
fn gated(g: &Tensor, u: &Tensor, act: Activation) -> Result<Tensor> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    if g.dims() != u.dims() {
        candle_core::bail!(
            "gated MLP: gate {:?} and up {:?} differ",
            g.dims(),
            u.dims()
        );
    }
    fn each(out: &mut [f32], g: &[f32], u: &[f32], f: impl Fn(f32) -> f32 + Sync) {
        let chunk = |(o, (g, u)): (&mut [f32], (&[f32], &[f32]))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = f(g) * u;
            }
        };
        if out.len() <= CHUNK {
            // One chunk (decoding): no need to wake the pool.
            chunk((out, (g, u)));
        } else {
            out.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
                .for_each(chunk);
        }
    }
    let mut out = vec![0f32; g.elem_count()];
    with_rows(g, |g| {
        with_rows(u, |u| {
            match act {
                Activation::Silu => each(&mut out, g, u, |v| v / (1.0 + super::vmath::exp(-v))),
                // `0.5·v·(1 + tanh(y)) = v / (1 + e^(-2y))`: one `exp`
                // instead of the C library's `tanhf` (a call per element,
                // 10% of a Gemma 3 workload), and no cancellation where
                // `tanh(y)` nears -1.
                Activation::GeluTanh => each(&mut out, g, u, |v| {
                    let y = SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v);
                    v / (1.0 + super::vmath::exp(-2.0 * y))
                }),
            }
            Ok(())
        })
    })?;
    Tensor::from_vec(out, g.shape(), &Device::Cpu)
}

/// sqrt(2/pi) as candle writes it for its tanh-approximated GELU.
#[allow(clippy::excessive_precision)]
const SQRT_TWO_OVER_PI: f32 = 0.79788456080286535587989211986876373;

/// Token embedding table; rows are dequantized on lookup when quantized.
pub enum Embedding {
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Embedding {
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor> {
        let ids_t = Tensor::new(ids, &Device::Cpu)?;
        let x = match self {
            Embedding::Quantized(q) => q.embedding(&ids_t)?,
            Embedding::Dense(t) => t.embedding(&ids_t)?,
        };
        x.unsqueeze(0)
    }
}

/// Root-mean-square layer norm `x / rms(x) * w`.
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f32) -> Self {
        Self { weight, eps }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }
}

/// Cos/sin tables for rotary position embeddings, grown on demand and
/// shared by all layers that use the same base.
pub struct Rope {
    theta: f64,
    half_dim: usize,
    interleaved: bool,
    cos: Tensor,
    sin: Tensor,
    len: usize,
}

impl Rope {
    pub fn new(theta: f64, head_dim: usize, interleaved: bool) -> Result<Self> {
        let mut r = Self {
            theta,
            half_dim: head_dim / 2,
            interleaved,
            cos: Tensor::zeros((0, head_dim / 2), DType::F32, &Device::Cpu)?,
            sin: Tensor::zeros((0, head_dim / 2), DType::F32, &Device::Cpu)?,
            len: 0,
        };
        r.ensure(256)?;
        Ok(r)
    }

    fn ensure(&mut self, len: usize) -> Result<()> {
        if len <= self.len {
            return Ok(());
        }
        let len = len.next_power_of_two();
        let d = (self.half_dim * 2) as f32;
        // As transformers: inverse frequencies and angles in f32.
        let inv: Vec<f32> = (0..self.half_dim)
            .map(|i| 1.0 / (self.theta as f32).powf((2 * i) as f32 / d))
            .collect();
        let mut cos = Vec::with_capacity(len * self.half_dim);
        let mut sin = Vec::with_capacity(len * self.half_dim);
        for p in 0..len {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        self.cos = Tensor::from_vec(cos, (len, self.half_dim), &Device::Cpu)?;
        self.sin = Tensor::from_vec(sin, (len, self.half_dim), &Device::Cpu)?;
        self.len = len;
        Ok(())
    }

    /// Rotates `x` of shape `[b, heads, t, head_dim]` at the span's positions.
    pub fn apply(&mut self, x: &Tensor, span: &Span) -> Result<Tensor> {
        let t = x.dim(2)?;
        self.ensure(span.max_position() + 1)?;
        let (cos, sin) = match &span.gather {
            None => (
                self.cos.narrow(0, span.past, t)?,
                self.sin.narrow(0, span.past, t)?,
            ),
            Some(ids) => (
                self.cos.index_select(ids, 0)?,
                self.sin.index_select(ids, 0)?,
            ),
        };
        let x = x.contiguous()?;
        if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x, &cos, &sin)
        } else {
            candle_nn::rotary_emb::rope(&x, &cos, &sin)
        }
    }
}

/// Keys and values of the positions seen so far, `[1, kv_heads, len, head_dim]`.
#[derive(Default, Clone)]
pub struct KvCache {
    kv: Option<(Tensor, Tensor)>,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.kv
            .as_ref()
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let kv = match self.kv.take() {
            None => (k.contiguous()?, v.contiguous()?),
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
        };
        self.kv = Some(kv.clone());
        Ok(kv)
    }

    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len == 0 {
            self.kv = None;
        } else if let Some((k, v)) = self.kv.take() {
            let n = len.min(k.dim(2)?);
            self.kv = Some((k.narrow(2, 0, n)?, v.narrow(2, 0, n)?));
        }
        Ok(())
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        self.kv
            .as_ref()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * 4)
            .unwrap_or(0)
    }
}

/// Parent of a token that follows the cached positions directly.
const ROOT: u32 = u32::MAX;

/// Where the tokens of one forward sit: after `past` cached positions, as a
/// forest of token trees. Each token sees the cache and its ancestors (and
/// itself): one chain for a causal run; one chain per branch for several
/// continuations of the cache; the documents' prefix trees, merged where
/// they begin alike, for packed documents (which see only their own
/// prefixes).
///
/// Visibility: key j is visible to query i when j is i or an ancestor of i
/// (a cached key is visible to every query), within the sliding window if
/// there is one.
pub struct Span {
    pub past: usize,
    positions: Vec<usize>,
    /// Index of each token's parent in the span, or [`ROOT`].
    parent: Vec<u32>,
    /// Position ids for the RoPE tables when they are not one contiguous run.
    gather: Option<Tensor>,
    /// Rows whose logits are wanted, when not simply the last ones.
    outputs: Option<Tensor>,
}

/// The choices of one document as a prefix tree of tokens: every distinct
/// prefix of the sequences `context ++ continuation` (without their last
/// token, whose output nobody needs) is one node, forwarded once. The
/// context is shared by all choices, and so are the first tokens two
/// continuations have in common; the node of the context's last token
/// predicts every choice's first token. Nodes are in insertion order, so a
/// parent comes before its children.
#[derive(Debug, Clone)]
pub struct DocTree {
    tokens: Vec<u32>,
    /// Parent node, or [`ROOT`] for the first token.
    parent: Vec<u32>,
    depth: Vec<usize>,
    /// Every continuation's tokens, choices in order: the scored targets.
    targets: Vec<u32>,
    /// For each target, the node whose output predicts it.
    predictors: Vec<u32>,
}

impl DocTree {
    /// The tree of `(context, continuation)` token pairs, one per choice;
    /// `None` when a choice has an empty context (nothing predicts its first
    /// token).
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a [u32], &'a [u32])>) -> Option<Self> {
        let mut tree = Self {
            tokens: Vec::new(),
            parent: Vec::new(),
            depth: Vec::new(),
            targets: Vec::new(),
            predictors: Vec::new(),
        };
        let mut children = std::collections::HashMap::new();
        let mut path = Vec::new();
        for (ctx, cont) in pairs {
            if ctx.is_empty() {
                return None;
            }
            path.clear();
            let mut at = ROOT;
            let inputs = ctx.len() + cont.len() - 1;
            for (d, &tok) in ctx.iter().chain(cont).take(inputs).enumerate() {
                at = *children.entry((at, tok)).or_insert_with(|| {
                    tree.tokens.push(tok);
                    tree.parent.push(at);
                    tree.depth.push(d);
                    tree.tokens.len() as u32 - 1
                });
                path.push(at);
            }
            tree.targets.extend_from_slice(cont);
            tree.predictors
                .extend((0..cont.len()).map(|j| path[ctx.len() - 1 + j]));
        }
        Some(tree)
    }

    /// Tokens to forward.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The scored tokens: every continuation's, choices in order.
    pub fn targets(&self) -> &[u32] {
        &self.targets
    }
}

/// Several documents' trees laid out for one forward with nothing cached.
pub struct Packed {
    pub span: Span,
    pub tokens: Vec<u32>,
    /// Documents' targets in order.
    pub targets: Vec<u32>,
    /// For each target, its row among the span's output rows.
    pub rows: Vec<u32>,
    /// Tokens each document added to the forward (its tree's nodes less
    /// those an earlier document of the pack brought).
    pub doc_tokens: Vec<usize>,
}

impl Span {
    /// `t` tokens right after `past` cached positions.
    pub fn causal(past: usize, t: usize) -> Self {
        Self {
            past,
            positions: (past..past + t).collect(),
            parent: (0..t as u32)
                .map(|i| i.checked_sub(1).unwrap_or(ROOT))
                .collect(),
            gather: None,
            outputs: None,
        }
    }

    /// Branches of the given lengths, each starting at position `past`.
    pub fn branches(past: usize, lens: &[usize]) -> Result<Self> {
        let mut positions = Vec::new();
        let mut parent = Vec::new();
        for &n in lens {
            let first = parent.len() as u32;
            positions.extend(past..past + n);
            parent.extend((0..n as u32).map(|i| if i == 0 { ROOT } else { first + i - 1 }));
        }
        let ids: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let n = ids.len();
        Ok(Self {
            past,
            positions,
            parent,
            gather: Some(Tensor::from_vec(ids, n, &Device::Cpu)?),
            outputs: None,
        })
    }

    /// Documents' trees laid out for one forward with nothing cached, each
    /// node at its depth's position, merged into one forest: a node whose
    /// parent and token another document's tree already brought (the BOS
    /// token, `Question:`, a repeated context) is forwarded once. Its
    /// hidden state is the same either way — it sees only its ancestors —
    /// so documents still never see anything but their own prefixes. The
    /// output rows are the nodes that predict a target, each once however
    /// many targets (of however many documents) it predicts.
    pub fn packed(docs: &[&DocTree]) -> Result<Packed> {
        let (mut positions, mut parent, mut tokens) = (Vec::new(), Vec::new(), Vec::new());
        let (mut predictors, mut targets, mut doc_tokens) = (Vec::new(), Vec::new(), Vec::new());
        let mut node_of = std::collections::HashMap::new();
        let mut here = Vec::new();
        for tree in docs {
            let before = tokens.len();
            here.clear();
            for ((&tok, &p), &depth) in tree.tokens.iter().zip(&tree.parent).zip(&tree.depth) {
                // Parents come first, so `here` already maps `p`.
                let up = if p == ROOT { ROOT } else { here[p as usize] };
                let node = *node_of.entry((up, tok)).or_insert_with(|| {
                    tokens.push(tok);
                    positions.push(depth);
                    parent.push(up);
                    tokens.len() as u32 - 1
                });
                here.push(node);
            }
            predictors.extend(tree.predictors.iter().map(|&p| here[p as usize]));
            targets.extend_from_slice(&tree.targets);
            doc_tokens.push(tokens.len() - before);
        }
        let n = tokens.len();
        let mut row_of = vec![ROOT; n];
        for &p in &predictors {
            row_of[p as usize] = 0;
        }
        let mut outputs = Vec::new();
        for (i, r) in row_of.iter_mut().enumerate() {
            if *r == 0 {
                *r = outputs.len() as u32;
                outputs.push(i as u32);
            }
        }
        let rows = predictors.iter().map(|&p| row_of[p as usize]).collect();
        let ids: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let n_out = outputs.len();
        Ok(Packed {
            span: Self {
                past: 0,
                positions,
                parent,
                gather: Some(Tensor::from_vec(ids, n, &Device::Cpu)?),
                outputs: Some(Tensor::from_vec(outputs, n_out, &Device::Cpu)?),
            },
            tokens,
            targets,
            rows,
            doc_tokens,
        })
    }

    /// [`Span::finish`] for a model of `layers` layers (`None` without
    /// any), with the index of the last layer, which applies it.
    pub fn finish_last(&self, layers: usize, n_out: usize) -> Result<(Option<Finish>, usize)> {
        let finish = if layers == 0 {
            None
        } else {
            self.finish(n_out)?
        };
        Ok((finish, layers.wrapping_sub(1)))
    }

    /// The rows the last layer has to finish (see [`Finish`]), or `None`
    /// when that is every row, or when so few rows (under
    /// [`STREAM_MIN_ROWS`], of a span of more) would move the layer's
    /// matmuls onto the quantized kernels, which round activations to 8
    /// bits where the full-width layer runs the f32 GEMM. Spans of two or
    /// more tokens always have a mask, whose rows the queries take; a
    /// single token is all or none of the rows.
    pub fn finish(&self, n_out: usize) -> Result<Option<Finish>> {
        let t = self.len();
        let rows: Vec<u32> = match &self.outputs {
            Some(o) => o.to_vec1()?,
            None => (t.saturating_sub(n_out) as u32..t as u32).collect(),
        };
        let n = rows.len();
        if n == t || (n > 0 && n < STREAM_MIN_ROWS && t >= STREAM_MIN_ROWS) {
            return Ok(None);
        }
        let positions: Vec<usize> = rows.iter().map(|&r| self.positions[r as usize]).collect();
        let ids: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        Ok(Some(Finish {
            rows: Tensor::from_vec(rows, n, &Device::Cpu)?,
            n,
            queries: Span {
                past: self.past,
                positions,
                parent: vec![ROOT; n],
                gather: Some(Tensor::from_vec(ids, n, &Device::Cpu)?),
                outputs: None,
            },
        }))
    }

    /// Number of output rows when they are selected (packed spans).
    pub fn n_outputs(&self) -> Option<usize> {
        self.outputs.as_ref().map(|o| o.elem_count())
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    fn max_position(&self) -> usize {
        self.positions.iter().copied().max().unwrap_or(self.past)
    }

    /// Additive mask `[t, past+t]`: each token sees the cache and its
    /// ancestors (see [`Span`]), optionally limited to a sliding window of `window`
    /// positions (a query at `q` sees keys at `q - window < k <= q`).
    pub fn mask(&self, window: Option<usize>) -> Result<Option<Tensor>> {
        let t = self.len();
        let total = self.past + t;
        let single = self.gather.is_none();
        let needs_window = window.is_some_and(|w| self.max_position() + 1 > w);
        if t == 1 && single && !needs_window {
            return Ok(None);
        }
        let far = |q: usize, k: usize| window.is_some_and(|w| q >= w + k);
        let mut m = vec![f32::NEG_INFINITY; t * total];
        for i in 0..t {
            let q = self.positions[i];
            let row = &mut m[i * total..(i + 1) * total];
            for (k, cell) in row.iter_mut().enumerate().take(self.past) {
                if !far(q, k) {
                    *cell = 0.0;
                }
            }
            // Up the tree: positions only fall, so the first far key ends it.
            let mut j = i as u32;
            while j != ROOT && !far(q, self.positions[j as usize]) {
                row[self.past + j as usize] = 0.0;
                j = self.parent[j as usize];
            }
        }
        Tensor::from_vec(m, (t, total), &Device::Cpu).map(Some)
    }
}

/// RoPE on the span's keys `k` (`[1, kv_heads, t, d]`), then `k`/`v`
/// appended to the cache: returns every cached key and value.
pub fn rope_cache(
    k: &Tensor,
    v: &Tensor,
    rope: &mut Rope,
    cache: &mut KvCache,
    span: &Span,
) -> Result<(Tensor, Tensor)> {
    let k = rope.apply(k, span)?;
    cache.append(k, v.contiguous()?)
}

/// RoPE on the queries `q` (`[1, heads, n, d]`, at the positions of
/// `queries`), then attention over the cached keys and values with `mask`
/// (`[n, keys]`) and `1/sqrt(d)` scaling: `[1, n, heads*d]`.
pub fn rope_attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rope: &mut Rope,
    queries: &Span,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(3)? as f64).sqrt();
    let q = rope.apply(q, queries)?;
    // Packed documents need no split: each block of queries attends only
    // over the keys its mask lets it see.
    super::attend::attention(&q, k, v, mask, scale)
}

/// A layer's query input: rows, their span, their mask rows.
pub type Queries<'a> = (Tensor, &'a Span, Option<Tensor>);

/// The rows of a forward that its last layer finishes. Every row of the
/// last layer needs its keys and values (later rows attend to them, the
/// cache keeps them); only the rows whose hidden states leave the model
/// (the span's output rows, or its last `n_out`) need its queries,
/// attention, output projection and MLP. On the packed suite workload that
/// is about half the rows; with no output rows (a context forwarded for the
/// cache) the last layer computes only keys and values.
pub struct Finish {
    /// Indices of the rows in the span, in output order.
    rows: Tensor,
    n: usize,
    /// The rows as a span of queries: their positions, for RoPE.
    queries: Span,
}

impl Finish {
    /// The finishing rows of `x` (`[1, t, h]` → `[1, n, h]`).
    pub fn select(&self, x: &Tensor) -> Result<Tensor> {
        x.index_select(&self.rows, 1)
    }

    /// No row leaves the model: the last layer needs only keys and values.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The rows as queries (for [`rope_attend`]).
    pub fn queries(&self) -> &Span {
        &self.queries
    }

    /// The rows of an attention mask (`[t, keys]` → `[n, keys]`).
    pub fn mask(&self, mask: Option<&Tensor>) -> Result<Option<Tensor>> {
        mask.map(|m| m.index_select(&self.rows, 0)).transpose()
    }

    /// What a layer's queries come from: the input rows `x`, the span
    /// they sit at and their mask rows — all of them without `finish`,
    /// the finishing rows with it, `None` when no row is to finish.
    pub fn queries_of<'a>(
        finish: Option<&'a Self>,
        x: &Tensor,
        span: &'a Span,
        mask: Option<&Tensor>,
    ) -> Result<Option<Queries<'a>>> {
        Ok(match finish {
            None => Some((x.clone(), span, mask.cloned())),
            Some(f) if f.is_empty() => None,
            Some(f) => Some((f.select(x)?, f.queries(), f.mask(mask)?)),
        })
    }
}

/// The token embedding and the output head (tied to the embedding when the
/// file has no `output.weight`), plus the vocabulary size.
pub fn embedding_and_head(
    loader: &mut Loader<'_>,
) -> std::result::Result<(Embedding, Linear, usize), GgufError> {
    let embd = loader.qtensor("token_embd.weight")?;
    let vocab = embd.shape().dims()[0];
    let head = if loader.gguf.has_tensor("output.weight") {
        loader.linear("output.weight")?
    } else {
        loader.linear_from("token_embd.weight", embd.clone(), None)?
    };
    Ok((loader.embedding(embd, "token_embd.weight")?, head, vocab))
}

/// The final-normed hidden states `[n, hidden]` of the span's output rows
/// of `x`, or else of its last `n_out` positions (`None` for none): what
/// the output head turns into logits. After a last layer that `finished`
/// only those rows, `x` is them.
pub fn output_rows(
    x: &Tensor,
    span: &Span,
    n_out: usize,
    norm: &RmsNorm,
    finished: Option<&Finish>,
) -> Result<Option<Tensor>> {
    let rows = match &span.outputs {
        // The last layer ran on the output rows alone, in order.
        _ if finished.is_some() => x.squeeze(0)?,
        Some(rows) if rows.elem_count() > 0 => x.squeeze(0)?.index_select(rows, 0)?,
        Some(_) => return Ok(None),
        None if n_out == 0 => return Ok(None),
        None => last_positions(x, n_out)?,
    };
    norm.forward(&rows).map(Some)
}

/// Selects the last `n` positions of `[1, t, h]` as `[n, h]`.
pub fn last_positions(x: &Tensor, n: usize) -> Result<Tensor> {
    let t = x.dim(1)?;
    x.narrow(1, t - n, n)?.squeeze(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`rope_cache`] then [`rope_attend`] over the same span, as a layer
    /// without [`Finish`] runs them: `[1, t, heads*d]`.
    fn rope_cache_attend(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rope: &mut Rope,
        cache: &mut KvCache,
        span: &Span,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (k, v) = rope_cache(k, v, rope, cache, span)?;
        rope_attend(q, &k, &v, rope, span, mask)
    }

    fn visible(m: &Tensor) -> Vec<Vec<bool>> {
        m.to_vec2::<f32>()
            .expect("mask")
            .into_iter()
            .map(|r| r.into_iter().map(|x| x == 0.0).collect())
            .collect()
    }

    #[test]
    fn causal_mask_and_single_token_shortcut() {
        assert!(Span::causal(5, 1).mask(None).expect("mask").is_none());
        let m = Span::causal(1, 2).mask(None).expect("mask").expect("some");
        assert_eq!(
            visible(&m),
            vec![vec![true, true, false], vec![true, true, true]]
        );
    }

    #[test]
    fn branches_see_the_prefix_and_only_themselves() {
        // Prefix of 2, branches of 2 and 1 tokens, both starting at position 2.
        let span = Span::branches(2, &[2, 1]).expect("span");
        let m = span.mask(None).expect("mask").expect("some");
        assert_eq!(
            visible(&m),
            vec![
                vec![true, true, true, false, false],
                vec![true, true, true, true, false],
                vec![true, true, false, false, true],
            ]
        );
        assert_eq!(span.positions, vec![2, 3, 2]);
    }

    #[test]
    fn streamed_matmul_equals_dequantized_matmul_in_any_slab_size() {
        let (n, k, m) = (300usize, 64usize, 5usize);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).expect("w");
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).expect("q8_0");
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let x = Tensor::from_vec(x, (m, k), &Device::Cpu).expect("x");
        let want = x
            .matmul(&q.dequantize(&Device::Cpu).expect("dq").t().expect("t"))
            .expect("mm")
            .to_vec2::<f32>()
            .expect("v");
        // One slab, several slabs, a slab of one row.
        for slab in [1 << 20, 50 * k, k] {
            let got = streamed_matmul_slabs(&x, &q, slab)
                .expect("streamed")
                .to_vec2::<f32>()
                .expect("v");
            for (a, b) in got.iter().flatten().zip(want.iter().flatten()) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "slab {slab}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn token_scores_equal_log_softmax_of_the_full_logits_in_any_slab_size() {
        let (n, k, m) = (300usize, 64usize, STREAM_MIN_ROWS + 4);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).expect("w");
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).expect("q8_0"));
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let x = Tensor::from_vec(x, (m, k), &Device::Cpu).expect("x");
        let bias: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.25).collect();
        let bias = Tensor::from_vec(bias, n, &Device::Cpu).expect("bias");
        let head =
            Linear::new_with(QMatMul::QTensor(q.clone()), Some(bias.clone()), true).expect("head");
        let argmax = |r: &[f32]| (0..n).fold(0, |b, i| if r[i] > r[b] { i } else { b });
        // Even rows score their argmax, odd rows a token that is not.
        let pick = |i: usize, r: &[f32]| {
            let a = argmax(r);
            (if i % 2 == 0 { a } else { (a + 1 + i) % n }) as u32
        };
        let reference = |logits: &[Vec<f32>], targets: &[u32]| -> Vec<(f64, bool)> {
            logits
                .iter()
                .zip(targets)
                .map(|(r, &t)| {
                    let lse = r.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
                    (r[t as usize] as f64 - lse, argmax(r) == t as usize)
                })
                .collect()
        };
        // The dequantized weight's logits, for many rows and for fewer than
        // `forward` streams (where it would use the quantized kernel).
        let dense = x
            .matmul(&q.dequantize(&Device::Cpu).expect("dq").t().expect("t"))
            .and_then(|y| y.broadcast_add(&bias))
            .and_then(|y| y.to_vec2::<f32>())
            .expect("logits");
        let few = STREAM_MIN_ROWS - 1;
        let x_few = x.narrow(0, 0, few).expect("rows");
        let dense_few = dense[..few].to_vec();
        for (x, logits) in [(&x, dense), (&x_few, dense_few)] {
            let targets: Vec<u32> = logits.iter().enumerate().map(|(i, r)| pick(i, r)).collect();
            let want = reference(&logits, &targets);
            // One slab, several uneven slabs, a slab of one row.
            for slab in [1 << 20, 70 * k, k] {
                let rows: Vec<u32> = (0..targets.len() as u32).collect();
                let got = head
                    .token_scores_slabs(x, &rows, &targets, slab)
                    .expect("scores");
                assert_eq!(got.len(), want.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let what = format!("{} rows, slab {slab}, row {i}", want.len());
                    assert!((g.logprob - w.0).abs() <= 1e-5, "{what}: {g:?} vs {w:?}");
                    assert_eq!(g.greedy, w.1, "{what}");
                }
            }
            assert!(
                head.token_scores(x, &targets[1..]).is_err(),
                "a target per row is required"
            );
            // Rows shared by several targets, in any order.
            let rows = [2u32, 0, 2, 1, 2];
            let picked: Vec<Vec<f32>> = rows.iter().map(|&r| logits[r as usize].clone()).collect();
            let targets: Vec<u32> = picked.iter().enumerate().map(|(i, r)| pick(i, r)).collect();
            let want = reference(&picked, &targets);
            for slab in [1 << 20, 70 * k, k] {
                let got = head
                    .token_scores_slabs(x, &rows, &targets, slab)
                    .expect("scores");
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g.logprob - w.0).abs() <= 1e-5,
                        "shared rows, slab {slab}, {i}"
                    );
                    assert_eq!(g.greedy, w.1, "shared rows, slab {slab}, {i}");
                }
            }
            let m = x.dim(0).expect("rows") as u32;
            assert!(
                head.token_scores_at(x, &[m], &[0]).is_err(),
                "row out of range"
            );
            assert!(
                head.token_scores_at(x, &[0, 1], &[0]).is_err(),
                "a row per target"
            );
        }
    }

    #[test]
    fn packed_attention_equals_each_document_attended_alone() {
        let tree = |pairs: &[(&[u32], &[u32])]| DocTree::new(pairs.iter().copied()).expect("tree");
        // Forwarded: [1 2 3 4 5 6], [7 8 9], [10 11 12].
        let docs = [
            tree(&[(&[1, 2, 3], &[4, 9]), (&[1, 2, 3], &[5, 6, 7])]),
            tree(&[(&[7], &[8, 9, 1])]),
            tree(&[(&[10, 11], &[12, 2])]),
        ];
        let starts = [(0usize, 6usize), (6, 3), (9, 3)];
        let all: Vec<&DocTree> = docs.iter().collect();
        let Packed { span, tokens, .. } = Span::packed(&all).expect("span");
        let t = tokens.len();
        let (heads, kv_heads, d) = (4usize, 2usize, 8usize);
        let val = |n: usize, salt: usize| -> Tensor {
            let v: Vec<f32> = (0..n)
                .map(|i| (((i * 31 + salt) % 17) as f32 - 8.0) / 5.0)
                .collect();
            Tensor::from_vec(v, n, &Device::Cpu).expect("v")
        };
        let q = val(heads * t * d, 1).reshape((1, heads, t, d)).expect("q");
        let k = val(kv_heads * t * d, 2)
            .reshape((1, kv_heads, t, d))
            .expect("k");
        let v = val(kv_heads * t * d, 3)
            .reshape((1, kv_heads, t, d))
            .expect("v");
        let mut rope = Rope::new(10_000.0, d, false).expect("rope");
        for window in [None, Some(2)] {
            let mask = span.mask(window).expect("mask");
            let packed = rope_cache_attend(
                &q,
                &k,
                &v,
                &mut rope,
                &mut KvCache::default(),
                &span,
                mask.as_ref(),
            )
            .expect("packed");
            for (doc, &(a, n)) in starts.iter().enumerate() {
                let alone = Span::packed(&all[doc..doc + 1]).expect("span").span;
                let part = |x: &Tensor| x.narrow(2, a, n).expect("narrow");
                let want = rope_cache_attend(
                    &part(&q),
                    &part(&k),
                    &part(&v),
                    &mut rope,
                    &mut KvCache::default(),
                    &alone,
                    alone.mask(window).expect("mask").as_ref(),
                )
                .expect("alone");
                let diff = max_diff(&packed.narrow(1, a, n).expect("rows"), &want);
                assert!(diff < 1e-5, "window {window:?}, doc {doc}: max diff {diff}");
            }
            // A last layer's way: the output rows alone as queries, over
            // every row's keys.
            let f = span.finish(0).expect("finish").expect("9 of 12 rows");
            assert_eq!(f.n, 9);
            let (ck, cv) =
                rope_cache(&k, &v, &mut rope, &mut KvCache::default(), &span).expect("cache");
            let q_rows = q.index_select(&f.rows, 2).expect("q rows");
            let f_mask = f.mask(mask.as_ref()).expect("mask rows");
            let got = rope_attend(&q_rows, &ck, &cv, &mut rope, f.queries(), f_mask.as_ref())
                .expect("finish");
            let diff = max_diff(&got, &f.select(&packed).expect("rows"));
            assert!(
                diff < 1e-6,
                "window {window:?}, output rows: max diff {diff}"
            );
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|x| x.abs())
            .and_then(|x| x.flatten_all())
            .and_then(|x| x.max(0))
            .and_then(|x| x.to_scalar::<f32>())
            .expect("diff")
    }

    #[test]
    fn the_last_layer_finishes_only_rows_that_leave_the_model() {
        let rows = |s: &Span, n_out: usize| {
            s.finish(n_out)
                .expect("finish")
                .map(|f| f.rows.to_vec1::<u32>().expect("rows"))
        };
        let long = Span::causal(3, 40);
        assert_eq!(rows(&long, 40), None, "every row");
        assert_eq!(rows(&long, 60), None, "more than every row");
        assert_eq!(rows(&long, 16), Some((24..40).collect()));
        // Four rows would take the matmuls onto the 8-bit kernels.
        assert_eq!(rows(&long, 4), None);
        assert_eq!(rows(&long, 0), Some(vec![]), "keys and values only");
        let short = Span::causal(0, 6);
        assert_eq!(
            rows(&short, 2),
            Some(vec![4, 5]),
            "a short span stays on one path"
        );
        let one = Span::causal(5, 1);
        assert_eq!(rows(&one, 1), None);
        assert_eq!(rows(&one, 0), Some(vec![]));
        let f = long.finish(16).expect("finish").expect("rows");
        assert_eq!(f.queries().positions, (27..43).collect::<Vec<_>>());
        assert!(!f.is_empty() && long.finish(0).expect("f").expect("e").is_empty());
    }

    #[test]
    fn gated_activation_equals_the_formulas() {
        let n = 3 * (1 << 14) + 5;
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 2001) as f32 / 20.0 - 50.0)
            .collect();
        let u: Vec<f32> = (0..n)
            .map(|i| ((i * 104_729) % 997) as f32 / 50.0 - 9.0)
            .collect();
        let g = Tensor::from_vec(g, (1, n), &Device::Cpu).expect("g");
        let u = Tensor::from_vec(u, (1, n), &Device::Cpu).expect("u");
        // Against the formulas in f64: `exp`'s error (≤ 1.5e-7 relative,
        // vmath) plus a few roundings of the argument, which grow with it —
        // relative to the result, or to the input where the result is tiny
        // (a far negative tail: under 1e-10 of |g·u|).
        let silu = |v: f64| v / (1.0 + (-v).exp());
        let gelu = |v: f64| {
            0.5 * v * (1.0 + (0.797_884_560_802_865_4 * v * (1.0 + 0.044715 * v * v)).tanh())
        };
        let (gs, us) = (
            g.flatten_all().and_then(|x| x.to_vec1::<f32>()).expect("g"),
            u.flatten_all().and_then(|x| x.to_vec1::<f32>()).expect("u"),
        );
        for (act, f) in [
            (Activation::Silu, &silu as &dyn Fn(f64) -> f64),
            (Activation::GeluTanh, &gelu),
        ] {
            let got: Vec<f32> = gated(&g, &u, act)
                .and_then(|x| x.flatten_all())
                .and_then(|x| x.to_vec1())
                .expect("got");
            for ((&a, &v), &w) in got.iter().zip(&gs).zip(&us) {
                let want = f(v as f64) * w as f64;
                let tol = 1e-6 * want.abs() + 1e-10 * (v as f64 * w as f64).abs();
                assert!(
                    (a as f64 - want).abs() <= tol,
                    "{act:?}({v}) * {w}: {a} vs {want}"
                );
            }
        }
        assert!(gated(&g, &u.narrow(1, 0, 5).expect("narrow"), Activation::Silu).is_err());
        let one = |x: f32| Tensor::from_vec(vec![x], (1, 1), &Device::Cpu).expect("one");
        let y = gated(&one(3.0), &one(2.0), Activation::Silu)
            .and_then(|y| y.flatten_all())
            .and_then(|y| y.to_vec1::<f32>())
            .expect("y");
        assert!(
            (y[0] - 2.0 * 3.0 / (1.0 + (-3f32).exp())).abs() < 1e-6,
            "one chunk, on this thread: {}",
            y[0]
        );
    }

    #[test]
    fn packed_documents_never_see_each_other() {
        // Doc 0: context [1 2]; choices [3 4], [3 5], [6], [7 8 9] — the
        // node of 2 predicts 3, 3, 6 and 7; the node of 3 predicts 4 and 5.
        // Doc 1: context [10]; choices [11], [12 13].
        let doc0 = DocTree::new([
            (&[1u32, 2][..], &[3u32, 4][..]),
            (&[1, 2], &[3, 5]),
            (&[1, 2], &[6]),
            (&[1, 2], &[7, 8, 9]),
        ])
        .expect("tree");
        let doc1 = DocTree::new([(&[10u32][..], &[11u32][..]), (&[10], &[12, 13])]).expect("tree");
        assert_eq!(doc0.len(), 5, "1 2 3 7 8");
        assert_eq!(doc0.targets(), &[3, 4, 3, 5, 6, 7, 8, 9]);
        let p = Span::packed(&[&doc0, &doc1]).expect("span");
        assert_eq!(p.tokens, vec![1, 2, 3, 7, 8, 10, 12]);
        assert_eq!(p.span.positions, vec![0, 1, 2, 2, 3, 0, 1]);
        assert_eq!(p.targets, vec![3, 4, 3, 5, 6, 7, 8, 9, 11, 12, 13]);
        // Output rows are the nodes 2 3 7 8 | 10 12, each once.
        assert_eq!(p.span.n_outputs(), Some(6));
        assert_eq!(p.rows, vec![0, 1, 0, 1, 0, 0, 2, 3, 4, 4, 5]);
        let m = p.span.mask(None).expect("mask").expect("some");
        let t = true;
        let f = false;
        assert_eq!(
            visible(&m),
            vec![
                vec![t, f, f, f, f, f, f],
                vec![t, t, f, f, f, f, f],
                vec![t, t, t, f, f, f, f],
                vec![t, t, f, t, f, f, f],
                vec![t, t, f, t, t, f, f],
                vec![f, f, f, f, f, t, f],
                vec![f, f, f, f, f, t, t],
            ]
        );
        // Nothing predicts the first token after an empty context.
        assert!(DocTree::new([(&[][..], &[1u32][..])]).is_none());
    }

    #[test]
    fn packed_documents_share_the_nodes_they_begin_with() {
        // Doc 0: context [1 2]; choices [3 4], [3 5] (nodes 1 2 3).
        // Doc 1: context [1 2 3]; choice [9]: all its nodes are doc 0's,
        // its target predicted by doc 0's node 3.
        // Doc 2: context [1 6]; choice [7]: shares node 1 only.
        let doc0 =
            DocTree::new([(&[1u32, 2][..], &[3u32, 4][..]), (&[1, 2], &[3, 5])]).expect("tree");
        let doc1 = DocTree::new([(&[1u32, 2, 3][..], &[9u32][..])]).expect("tree");
        let doc2 = DocTree::new([(&[1u32, 6][..], &[7u32][..])]).expect("tree");
        let p = Span::packed(&[&doc0, &doc1, &doc2]).expect("span");
        assert_eq!(p.tokens, vec![1, 2, 3, 6]);
        assert_eq!(p.span.positions, vec![0, 1, 2, 1]);
        assert_eq!(p.doc_tokens, vec![3, 0, 1]);
        assert_eq!(p.targets, vec![3, 4, 3, 5, 9, 7]);
        // Output rows: nodes 2, 3 (shared by docs 0 and 1), 6.
        assert_eq!(p.span.n_outputs(), Some(3));
        assert_eq!(p.rows, vec![0, 1, 0, 1, 1, 2]);
        let m = p.span.mask(None).expect("mask").expect("some");
        let (t, f) = (true, false);
        assert_eq!(
            visible(&m),
            vec![
                vec![t, f, f, f],
                vec![t, t, f, f],
                vec![t, t, t, f],
                vec![t, f, f, t],
            ]
        );
    }

    #[test]
    fn sliding_window_hides_far_keys() {
        // Window 2: position 3 sees positions 2 and 3 only.
        let m = Span::causal(3, 1)
            .mask(Some(2))
            .expect("mask")
            .expect("some");
        assert_eq!(visible(&m), vec![vec![false, false, true, true]]);
    }
}
