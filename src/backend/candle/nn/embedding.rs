//! Token embedding lookup, from quantized or f32 rows.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Device, Result, Tensor};

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
