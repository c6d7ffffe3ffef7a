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
//!
//! On x86-64 with AVX2 and FMA enabled at compile time (the default build,
//! see `.cargo/config.toml`) the block loops are written out in `safe_arch`'s
//! safe wrappers of the AVX2 intrinsics ([`avx2`]): the auto-vectorized loops
//! spent most of their time shuffling lanes. Other targets use the portable
//! loops; tests check both against dequantize-then-matmul.

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
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    use avx2::{dot_q4_1, dot_q5_0};
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
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
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
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
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

/// The same block loops in AVX2 + FMA, eight f32 lanes at a time.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2 {
    use super::{f16_at, QK};
    use safe_arch::*;

    /// Eight consecutive `x` values starting at `i`.
    #[inline(always)]
    fn x8(x: &[f32; QK], i: usize) -> m256 {
        let lanes: &[f32; 8] = x[i..]
            .first_chunk()
            .expect("a block of 32 holds eight values from 0, 8, 16 and 24");
        load_unaligned_m256(lanes)
    }

    /// The low eight bytes of `b` as eight f32 lanes.
    #[inline(always)]
    fn widen_lo(b: m128i) -> m256 {
        convert_to_m256_from_i32_m256i(convert_to_i16_m256i_from_lower8_u8_m128i(b))
    }

    /// The high eight bytes of `b` as eight f32 lanes.
    #[inline(always)]
    fn widen_hi(b: m128i) -> m256 {
        widen_lo(byte_shr_imm_u128_m128i::<8>(b))
    }

    /// The 16 bytes of nibbles as (low nibbles, high nibbles).
    #[inline(always)]
    fn nibbles(qs: &[u8]) -> (m128i, m128i) {
        let qs: &[u8; 16] = qs.first_chunk().expect("16 bytes of nibbles");
        let q = load_unaligned_m128i(qs);
        let mask = set_splat_i8_m128i(15);
        (
            bitand_m128i(q, mask),
            bitand_m128i(shr_imm_u16_m128i::<4>(q), mask),
        )
    }

    /// The f32 lanes of `v` summed.
    fn hsum(v: m256) -> f32 {
        let lanes: [f32; 8] = v.into();
        lanes.iter().sum()
    }

    /// A block of 32 `x` values.
    #[inline(always)]
    fn block(x: &[f32]) -> &[f32; QK] {
        x.first_chunk().expect("x is split into blocks of 32")
    }

    /// `Σ` of `one` over the blocks of a row, two blocks per step into two
    /// accumulators so that consecutive blocks do not wait on each other's
    /// fused multiply-adds.
    /// `one` adds a block's contribution: `acc += d·Σ q x` in eight lanes
    /// and, for types with a per-block offset, `acc_m += m·Σ x`. (Generic,
    /// not a function pointer, so that it is inlined.)
    fn row_dot<F>(row: &[u8], x: &[f32], sums: &[f32], bytes: usize, one: F) -> f32
    where
        F: Fn(&[u8], &[f32; QK], f32, &mut m256, &mut f32),
    {
        let (mut a0, mut a1, mut m0, mut m1) = (zeroed_m256(), zeroed_m256(), 0f32, 0f32);
        let pairs = row
            .chunks_exact(2 * bytes)
            .zip(x.chunks_exact(2 * QK))
            .zip(sums.chunks_exact(2));
        for ((b, xb), s) in pairs {
            one(&b[..bytes], block(xb), s[0], &mut a0, &mut m0);
            one(&b[bytes..], block(&xb[QK..]), s[1], &mut a1, &mut m1);
        }
        let blocks = sums.len();
        if blocks % 2 == 1 {
            let last = blocks - 1;
            one(
                &row[last * bytes..],
                block(&x[last * QK..]),
                sums[last],
                &mut a0,
                &mut m0,
            );
        }
        hsum(a0 + a1) + m0 + m1
    }

    /// `Σ q x` for the 32 weights `q` of a block held as 32 bytes in two
    /// 16-byte halves (`lo`: weights 0-15, `hi`: weights 16-31).
    #[inline(always)]
    fn dot32(lo: m128i, hi: m128i, xb: &[f32; QK]) -> m256 {
        let p = widen_lo(lo) * x8(xb, 0);
        let p = fused_mul_add_m256(widen_hi(lo), x8(xb, 8), p);
        let p = fused_mul_add_m256(widen_lo(hi), x8(xb, 16), p);
        fused_mul_add_m256(widen_hi(hi), x8(xb, 24), p)
    }

    #[inline(always)]
    fn q4_1_block(b: &[u8], xb: &[f32; QK], s: f32, acc: &mut m256, acc_m: &mut f32) {
        let (d, mn) = (f16_at(b, 0), f16_at(b, 2));
        let (lo, hi) = nibbles(&b[4..20]);
        *acc = fused_mul_add_m256(set_splat_m256(d), dot32(lo, hi, xb), *acc);
        *acc_m = mn.mul_add(s, *acc_m);
    }

    /// The fifth bits: byte `j` of the result is 16 if bit `j` of `qh` is
    /// set, else 0. Each byte gets the byte of `qh` holding its bit, is
    /// OR-ed with every other bit set, and compares equal to all ones only
    /// if its own bit was set.
    #[inline(always)]
    fn fifth_bits(qh: u32) -> m256i {
        let spread = shuffle_av_i8z_half_m256i(
            set_splat_i32_m256i(qh as i32),
            m256i::from([
                0u8, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
            ]),
        );
        let others = set_splat_i64_m256i(0x7fbf_dfef_f7fb_fdfe);
        let set = cmp_eq_mask_i8_m256i(spread | others, set_splat_i8_m256i(-1));
        bitand_m256i(set, set_splat_i8_m256i(16))
    }

    #[inline(always)]
    fn q5_0_block(b: &[u8], xb: &[f32; QK], s: f32, acc: &mut m256, _: &mut f32) {
        let d = f16_at(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let (lo, hi) = nibbles(&b[6..22]);
        let nib = insert_m128i_to_m256i::<1>(zero_extend_m128i(lo), hi);
        let q = nib | fifth_bits(qh);
        let p = dot32(cast_to_m128i_from_m256i(q), extract_m128i_m256i::<1>(q), xb);
        // Σ (q - 16) x = Σ q x - 16 Σ x, the last term spread over 8 lanes.
        let p = p - set_splat_m256(2.0 * s);
        *acc = fused_mul_add_m256(set_splat_m256(d), p, *acc);
    }

    pub(super) fn dot_q4_1(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
        row_dot(row, x, sums, 20, q4_1_block)
    }

    pub(super) fn dot_q5_0(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
        row_dot(row, x, sums, 22, q5_0_block)
    }
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

    /// The portable loops (the only ones off x86-64-v3) against the kernel
    /// this build uses, for an even and an odd number of blocks.
    #[test]
    fn portable_loops_equal_the_built_kernel() {
        for k in [96usize, 128] {
            let w: Vec<f32> = (0..4 * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 23.0)
                .collect();
            let w = Tensor::from_vec(w, (4, k), &Device::Cpu).expect("w");
            let x: Vec<f32> = (0..k)
                .map(|i| ((i * 17 % 31) as f32 - 15.0) / 9.0)
                .collect();
            let sums: Vec<f32> = x.chunks_exact(QK).map(|b| b.iter().sum()).collect();
            let portable: [(GgmlDType, RowDot); 2] =
                [(GgmlDType::Q4_1, dot_q4_1), (GgmlDType::Q5_0, dot_q5_0)];
            for (dtype, slow) in portable {
                let q = QTensor::quantize(&w, dtype).expect("quantize");
                let data = q.data().expect("data");
                let (block_bytes, fast) = kernel(dtype).expect("supported");
                for row in data.chunks_exact(k / QK * block_bytes) {
                    let (a, b) = (fast(row, &x, &sums), slow(row, &x, &sums));
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{dtype:?} k={k}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
