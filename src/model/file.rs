//! The in-memory view shared by every model-file format: tensors held in
//! f32 under llama.cpp's names ([`TensorMap`]) and their GGML storage type.
//! GGUF files and safetensors folders both become a `gguf::GgufFile`.

use std::collections::HashMap;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Tensor};

/// Tensors under llama.cpp names, in f32.
pub struct TensorMap {
    pub tensors: HashMap<String, Tensor>,
    pub file_bytes: u64,
}

/// GGML storage type matching a tensor's dtype.
pub fn storage_type(t: &Tensor) -> GgmlDType {
    match t.dtype() {
        DType::F16 => GgmlDType::F16,
        DType::BF16 => GgmlDType::BF16,
        _ => GgmlDType::F32,
    }
}
