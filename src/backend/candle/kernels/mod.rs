//! CPU kernels: the streamed dequantize-and-GEMM matmul and its 16-bit
//! integer twin, quantized matrix-vector products for decoding,
//! dequantization, attention and vector math.
//!
//! Invariant: kernels import only each other (and candle's tensor type).
//! `simd` is the one module of the crate allowed `unsafe` (runtime-detected
//! instruction sets); everything else denies it.

pub mod attend;
pub mod cpu;
pub mod dequant;
pub mod gemv;
pub mod int16;
#[allow(unsafe_code)]
pub mod simd;
pub mod streamed;
pub mod vmath;
