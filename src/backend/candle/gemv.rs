//! Few-row products `x [m, k] · Wᵀ` read straight from the GGML blocks of a
//! quantized `W [n, k]`, for decoding and other forwards of fewer than
//! [`super::layers::STREAM_MIN_ROWS`] rows.
//!
//! candle's own kernels for Q4_1 and Q5_0 (most of SmolLM2 and Gemma 3) are
//! scalar; these loops are written so that the compiler vectorizes them
//! (16 independent lanes per block, fixed-size arrays, no branches): with
//! AVX2 (see `.cargo/config.toml`) each block of 32 weights is unpacked and
//! multiplied in a few vector instructions. Activations stay f32, so the
//! result equals dequantize-then-matmul up to f32 summation order (candle's
//! kernels quantize the activations to 8 bits first).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};
use half::f16;
use rayon::prelude::*;

/// Weights in a block of every supported type.
const QK: usize = 32;
/// Output rows per rayon task.
const ROWS_PER_TASK: usize = 32;

/// The dot product of one row of blocks with `x`, given `x`'s per-block sums.
type RowDot = fn(&[u8], &[f32], &[f32]) -> f32;

/// The block layout of a supported type: bytes per block and its [`RowDot`].
fn kernel(dtype: GgmlDType) -> Option<(usize, RowDot)> {
    match dtype {
        GgmlDType::Q4_1 => Some((20, dot_q4_1)),
        GgmlDType::Q5_0 => Some((22, dot_q5_0)),
        _ => None,
    }
}

/// `x · Wᵀ` as `[m, n]`, or `None` when `W`'s type has no kernel here.
pub fn matmul(x: &Tensor, q: &QTensor) -> Result<Option<Tensor>> {
    let Some((block_bytes, dot)) = kernel(q.dtype()) else {
        return Ok(None);
    };
    let (n, k) = q.shape().dims2()?;
    let (m, kx) = x.dims2()?;
    if kx != k || k % QK != 0 {
        candle_core::bail!("gemv: x is [{m}, {kx}] for a [{n}, {k}] weight");
    }
    let data = q.data()?;
    let row_bytes = k / QK * block_bytes;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let sums: Vec<f32> = xs.chunks_exact(QK).map(|b| b.iter().sum::<f32>()).collect();
    let blocks = k / QK;
    // Output transposed ([n, m]) so that each task owns a contiguous run.
    let mut out_t = vec![0f32; n * m];
    out_t
        .par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (j, out) in chunk.chunks_exact_mut(m).enumerate() {
                let r = task * ROWS_PER_TASK + j;
                let row = &data[r * row_bytes..(r + 1) * row_bytes];
                for (i, o) in out.iter_mut().enumerate() {
                    *o = dot(
                        row,
                        &xs[i * k..(i + 1) * k],
                        &sums[i * blocks..(i + 1) * blocks],
                    );
                }
            }
        });
    let out = if m == 1 {
        out_t
    } else {
        let mut out = vec![0f32; m * n];
        for (r, row) in out_t.chunks_exact(m).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                out[i * n + r] = v;
            }
        }
        out
    };
    Tensor::from_vec(out, (m, n), &Device::Cpu).map(Some)
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_1: `d`, `m` (f16), 16 bytes of nibbles; weight `j` is `d·q_j + m`,
/// low nibbles first. `Σ_j (d q_j + m) x_j = d Σ q_j x_j + m Σ x_j`.
fn dot_q4_1(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut acc_m = 0f32;
    for ((b, xb), &s) in row.chunks_exact(20).zip(x.chunks_exact(QK)).zip(sums) {
        let (d, mn) = (f16_at(b, 0), f16_at(b, 2));
        let qs = &b[4..20];
        let (lo, hi) = xb.split_at(16);
        let mut p = [0f32; 16];
        for j in 0..16 {
            p[j] = f32::from(qs[j] & 15).mul_add(lo[j], f32::from(qs[j] >> 4) * hi[j]);
        }
        for j in 0..16 {
            acc[j] = d.mul_add(p[j], acc[j]);
        }
        acc_m += mn * s;
    }
    acc.iter().sum::<f32>() + acc_m
}

/// Q5_0: `d` (f16), 32 high bits, 16 bytes of low nibbles; weight `j` is
/// `d·(q_j - 16)` with the fifth bit of `q_j` in bit `j` of the high bits.
fn dot_q5_0(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for ((b, xb), &s) in row.chunks_exact(22).zip(x.chunks_exact(QK)).zip(sums) {
        let d = f16_at(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        let (lo, hi) = xb.split_at(16);
        let mut p = [0f32; 16];
        for j in 0..16 {
            let q0 = u32::from(qs[j] & 15) | ((qh >> j) << 4 & 0x10);
            let q1 = u32::from(qs[j] >> 4) | ((qh >> (j + 12)) & 0x10);
            p[j] = (q0 as f32).mul_add(lo[j], q1 as f32 * hi[j]);
        }
        // Σ (q - 16) x = Σ q x - 16 Σ x: -Σ x in each of the 16 lanes.
        let shift = -s;
        for j in 0..16 {
            acc[j] = d.mul_add(p[j] + shift, acc[j]);
        }
    }
    acc.iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_dequantized_matmul_for_each_type_and_row_count() {
        let (n, k) = (70usize, 96usize);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 37.0)
            .collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).expect("w");
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0] {
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            let dq = q.dequantize(&Device::Cpu).expect("dq");
            for m in [1usize, 3, 15] {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                    .collect();
                let x = Tensor::from_vec(x, (m, k), &Device::Cpu).expect("x");
                let want = x.matmul(&dq.t().expect("t")).expect("mm");
                let got = matmul(&x, &q).expect("gemv").expect("supported");
                assert_eq!(got.dims(), want.dims());
                let (got, want) = (
                    got.to_vec2::<f32>().expect("v"),
                    want.to_vec2::<f32>().expect("v"),
                );
                for (a, b) in got.iter().flatten().zip(want.iter().flatten()) {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{dtype:?} m={m}: {a} vs {b}"
                    );
                }
            }
        }
        let q8 = QTensor::quantize(&w, GgmlDType::Q8_0).expect("q8_0");
        let x = Tensor::zeros((1, k), candle_core::DType::F32, &Device::Cpu).expect("x");
        assert!(matmul(&x, &q8).expect("call").is_none(), "Q8_0 is candle's");
    }
}
