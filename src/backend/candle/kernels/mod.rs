//! CPU kernels: the streamed dequantize-and-GEMM matmul, quantized
//! matrix-vector products for decoding, dequantization, attention and
//! vector math.
//!
//! Invariant: kernels import only each other (and candle's tensor type).

pub mod attend;
pub mod cpu;
pub mod dequant;
pub mod gemv;
pub mod streamed;
pub mod vmath;
