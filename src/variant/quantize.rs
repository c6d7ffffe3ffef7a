//! The `quantize` step: every projection matrix (and low-rank factor), and
//! the embeddings unless told otherwise, quantized with candle's GGML
//! quantizers. A tensor whose row length is not a multiple of the type's
//! block falls back, per tensor, to the type llama.cpp's quantizer would
//! use (k-quants' 256-element blocks vs SmolLM2's 576 columns), and the
//! row says so.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

use super::tensors::{is_embedding, matrix_name, rel_error, Working};
use super::{TensorRow, VariantError};
use crate::spec::steps::{Embeddings, QuantType};

/// llama.cpp's replacement for a type whose block does not divide the rows
/// (`llama_tensor_get_type`): Q2_K/Q3_K → IQ4_NL (not in candle; Q4_0 has
/// the same 4.5 bits per weight), Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0.
fn llama_cpp_fallback(t: GgmlDType) -> GgmlDType {
    match t {
        GgmlDType::Q2K | GgmlDType::Q3K => GgmlDType::Q4_0,
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        _ => GgmlDType::F16,
    }
}

/// The GGML type a variant step's quantization type names.
pub fn ggml_type(t: QuantType) -> GgmlDType {
    match t {
        QuantType::Q8_0 => GgmlDType::Q8_0,
        QuantType::Q6k => GgmlDType::Q6K,
        QuantType::Q5k => GgmlDType::Q5K,
        QuantType::Q4k => GgmlDType::Q4K,
        QuantType::Q4_0 => GgmlDType::Q4_0,
        QuantType::Q3k => GgmlDType::Q3K,
        QuantType::Q2k => GgmlDType::Q2K,
    }
}

/// The type used for rows of `row_len` when `requested` is asked for, and
/// why it differs (one line), if it does.
pub fn choose_type(requested: GgmlDType, row_len: usize) -> (GgmlDType, Option<String>) {
    let fits = |t: GgmlDType| row_len.is_multiple_of(t.block_size());
    if fits(requested) {
        return (requested, None);
    }
    let mut t = llama_cpp_fallback(requested);
    if !fits(t) {
        t = GgmlDType::F16;
    }
    let why = format!(
        "{requested:?} → {t:?}: row length {row_len} is not a multiple of {}",
        requested.block_size()
    );
    (t, Some(why))
}

/// Quantizes `values` (rows along the last dimension) as `t`; returns the
/// stored tensor and its dequantized values.
pub fn quantize(
    values: &candle_core::Tensor,
    t: GgmlDType,
) -> candle_core::Result<(QTensor, candle_core::Tensor)> {
    let q = QTensor::quantize(values, t)?;
    let back = q.dequantize(&Device::Cpu)?;
    Ok((q, back))
}

/// Applies a `quantize` step (step index `step`) to the working set.
pub fn apply(
    w: &mut Working,
    step: usize,
    qtype: QuantType,
    embeddings: Embeddings,
) -> Result<Vec<TensorRow>, VariantError> {
    let mut rows = Vec::new();
    for (name, t) in w.tensors.iter_mut() {
        let wanted = if matrix_name(name).is_some() {
            ggml_type(qtype)
        } else if is_embedding(name) {
            match embeddings {
                Embeddings::Same => ggml_type(qtype),
                Embeddings::Keep => continue,
                Embeddings::Type(e) => ggml_type(e),
            }
        } else {
            continue;
        };
        let dims = t.values.dims().to_vec();
        if dims.len() != 2 {
            continue;
        }
        let (chosen, fallback) = choose_type(wanted, dims[1]);
        let (q, back) = quantize(&t.values, chosen).map_err(|e| VariantError::tensor(name, e))?;
        let err = rel_error(&t.values, &back).map_err(|e| VariantError::tensor(name, e))?;
        t.values = back;
        t.stored = Some(q);
        rows.push(TensorRow {
            step,
            op: "quantize".into(),
            tensor: name.clone(),
            shape: dims,
            qtype: Some(format!("{chosen:?}")),
            fallback,
            rel_error: Some(err),
            ..TensorRow::default()
        });
    }
    Ok(rows)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Tensor;

    /// Deterministic, roughly Gaussian weights (sum of uniforms).
    pub(crate) fn weights(rows: usize, cols: usize, seed: u64) -> Tensor {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f64 / (1u64 << 31) as f64) as f32
        };
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| (0..4).map(|_| next()).sum::<f32>() - 2.0)
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).expect("tensor")
    }

    #[test]
    fn round_trip_error_within_format_bounds() {
        let w = weights(64, 512, 7);
        let mut last = 0.0;
        // Relative RMS error on ~Gaussian rows; bounds from each format's
        // step size (e.g. Q8_0: max|x|/127 per 32 → ≈ 0.5 %), with margin.
        // Ordered from most to least precise: errors must grow.
        for (t, bound) in [
            (QuantType::Q8_0, 0.01),
            (QuantType::Q6k, 0.03),
            (QuantType::Q5k, 0.06),
            (QuantType::Q4k, 0.12),
            (QuantType::Q4_0, 0.15),
            (QuantType::Q3k, 0.25),
            (QuantType::Q2k, 0.45),
        ] {
            let (q, back) = quantize(&w, ggml_type(t)).expect("quantize");
            assert_eq!(q.dtype(), ggml_type(t));
            let e = rel_error(&w, &back).expect("err");
            assert!(e < bound, "{}: rel error {e} ≥ {bound}", t.name());
            assert!(e > last * 0.8, "{}: {e} vs {last}", t.name());
            last = e;
        }
    }

    #[test]
    fn q8_0_error_per_element_is_half_a_step() {
        let w = weights(4, 256, 3);
        let (_, back) = quantize(&w, GgmlDType::Q8_0).expect("q");
        let a = w.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("v");
        let b = back
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("v");
        for (blk_a, blk_b) in a.chunks(32).zip(b.chunks(32)) {
            let amax = blk_a.iter().fold(0f32, |m, x| m.max(x.abs()));
            // Half a step d = max|x|/127, plus the scale's f16 rounding
            // (relative 2⁻¹¹) times the largest code 127.
            let d = amax / 127.0;
            let half_step = d * (0.5 + 127.0 / 2048.0) + 1e-7;
            for (x, y) in blk_a.iter().zip(blk_b) {
                assert!(
                    (x - y).abs() <= half_step,
                    "{x} vs {y} (step/2 {half_step})"
                );
            }
        }
    }

    #[test]
    fn k_quant_falls_back_on_576_columns() {
        let (t, why) = choose_type(GgmlDType::Q4K, 576);
        assert_eq!(t, GgmlDType::Q5_0);
        let why = why.expect("reason");
        assert!(why.contains("576") && why.contains("256"), "{why}");
        assert_eq!(choose_type(GgmlDType::Q2K, 576).0, GgmlDType::Q4_0);
        assert_eq!(choose_type(GgmlDType::Q6K, 576).0, GgmlDType::Q8_0);
        assert_eq!(choose_type(GgmlDType::Q4K, 1536), (GgmlDType::Q4K, None));
        assert_eq!(choose_type(GgmlDType::Q8_0, 48).0, GgmlDType::F16);
    }
}
