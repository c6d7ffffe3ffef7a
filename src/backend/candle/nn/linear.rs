//! A linear layer over a weight held in one of several forms (quantized,
//! dequantized and transposed, streamed, or low-rank factors): the matmul
//! strategy lives in the weight, so one model file serves every variant.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};

use crate::backend::candle::kernels::streamed::{streamed_matmul, F32Activations, STREAM_MIN_ROWS};

/// `y = x Wᵀ (+ b)` with the weight quantized or dense. Dense weights are
/// stored transposed (`[in, out]`, contiguous) so the GEMM reads them
/// without repacking on every call.
pub struct Linear {
    pub(crate) weight: Weight,
    pub(crate) bias: Option<Tensor>,
}

pub(crate) enum Weight {
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
            Weight::Streamed(q, mm) if rows < STREAM_MIN_ROWS && !F32Activations::held() => {
                match crate::backend::candle::kernels::gemv::matmul(&x.reshape((rows, k))?, q)? {
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
}
