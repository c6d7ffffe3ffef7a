//! Weight loading: each tensor of the model file held as its [`WeightMode`]
//! asks (quantized blocks, streamed, or dequantized f32), with the
//! statistics of what was held.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Tensor};

use super::embedding::Embedding;
use super::linear::Linear;
use crate::model::gguf::{GgufError, GgufFile};

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
