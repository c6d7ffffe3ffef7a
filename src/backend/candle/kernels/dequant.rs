//! Rows of GGML blocks dequantized into a caller's f32 buffer, for the
//! dequantize-then-GEMM path of many-row matmuls (prefill, scoring).
//!
//! candle dequantizes a whole `QTensor` into a new tensor; per slab of a
//! matmul that meant wrapping the slab's bytes in a new `QTensor`, a fresh
//! allocation per thread (its pages cleared by the kernel), then a copy to
//! join the threads' parts. Here each thread writes its rows straight into
//! one reused buffer. The arithmetic is candle's, operation for operation
//! (the tests compare bit for bit), so the dequantized weights — and the
//! fidelity figures — are unchanged. Types not listed fall back to candle.

use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

use super::simd;

/// Weights per block of the 32-weight types.
const QK: usize = 32;

/// The types with a routine here (and a decoder in `int16`), for the tests.
#[cfg(test)]
pub(super) const OWN_TYPES: [GgmlDType; 6] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q6K,
];

/// Dequantizes the rows in `data` (each `k` weights of `dtype`) into `out`
/// (`rows · k` values), rows split across rayon's threads when `parallel`
/// (else all on the calling thread, for callers that are already one of
/// several parallel tasks). `false` when `dtype` has no routine here
/// (nothing written).
// The closures are not redundant: a function item passed as `impl Fn` is
// called through a shim that is not inlined (measured: a fifth of prefill).
#[allow(clippy::redundant_closure)]
pub fn rows_into(dtype: GgmlDType, data: &[u8], k: usize, out: &mut [f32], parallel: bool) -> bool {
    // Each routine in an inlined closure (not a function pointer), so that
    // it is compiled into the loop `simd::vectorized` compiles for the CPU.
    let args = (data, k, out, parallel);
    match dtype {
        GgmlDType::Q4_0 => rows_with(
            QK,
            18,
            #[inline(always)]
            |b, y| q4_0(b, y),
            args,
        ),
        GgmlDType::Q4_1 => rows_with(
            QK,
            20,
            #[inline(always)]
            |b, y| q4_1(b, y),
            args,
        ),
        GgmlDType::Q5_0 => rows_with(
            QK,
            22,
            #[inline(always)]
            |b, y| q5_0(b, y),
            args,
        ),
        GgmlDType::Q8_0 => rows_with(
            QK,
            34,
            #[inline(always)]
            |b, y| q8_0(b, y),
            args,
        ),
        GgmlDType::Q4K => rows_with(
            256,
            144,
            #[inline(always)]
            |b, y| q4k(b, y),
            args,
        ),
        GgmlDType::Q6K => rows_with(
            256,
            210,
            #[inline(always)]
            |b, y| q6k(b, y),
            args,
        ),
        _ => return false,
    }
    true
}

/// [`rows_into`] for blocks of `weights` weights in `bytes` bytes, each
/// written by `block`.
#[inline(always)]
fn rows_with(
    weights: usize,
    bytes: usize,
    block: impl Fn(&[u8], &mut [f32]) + Sync,
    (data, k, out, parallel): (&[u8], usize, &mut [f32], bool),
) {
    let row_bytes = k / weights * bytes;
    let rows = data.len() / row_bytes;
    let out = &mut out[..rows * k];
    let set = simd::active();
    let blocks = |(y, b): (&mut [f32], &[u8])| {
        simd::vectorized(
            set,
            #[inline(always)]
            || {
                for (y, b) in y.chunks_exact_mut(weights).zip(b.chunks_exact(bytes)) {
                    block(b, y);
                }
            },
        )
    };
    if parallel {
        let per = rows
            .div_ceil(4 * rayon::current_num_threads().max(1))
            .max(1);
        out.par_chunks_mut(per * k)
            .zip(data.par_chunks(per * row_bytes))
            .for_each(blocks);
    } else {
        blocks((out, data));
    }
}

/// The f16 at byte `i` of `b`, as f32: one F16C instruction when the
/// build targets it, else plain integer code that inlines (`half`'s
/// `to_f32` would check for F16C at run time and call out on every
/// block). The conversion is exact either way.
#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    let h = f16::from_le_bytes([b[i], b[i + 1]]);
    if cfg!(target_feature = "f16c") {
        h.to_f32()
    } else {
        h.to_f32_const()
    }
}

/// Q4_0: `d` (f16), 16 bytes of nibbles (low nibbles are weights 0-15);
/// weight `(q - 8)·d`.
#[inline(always)]
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let (lo, hi) = y.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[2..18]) {
        *l = (i16::from(q & 15) - 8) as f32 * d;
        *h = (i16::from(q >> 4) - 8) as f32 * d;
    }
}

/// Q4_1: `d`, `m` (f16), 16 bytes of nibbles; weight `q·d + m`.
#[inline(always)]
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let (lo, hi) = y.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[4..20]) {
        *l = f32::from(q & 15) * d + m;
        *h = f32::from(q >> 4) * d + m;
    }
}

/// Q5_0: `d` (f16), 32 fifth bits, 16 bytes of low nibbles; weight
/// `(q - 16)·d`, the fifth bit of weight `j` in bit `j`.
#[inline(always)]
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let (lo, hi) = y.split_at_mut(16);
    for (j, ((l, h), &q)) in lo.iter_mut().zip(hi).zip(&b[6..22]).enumerate() {
        let fifth = |bit: usize| ((qh >> bit & 1) << 4) as i32;
        *l = ((i32::from(q & 15) | fifth(j)) - 16) as f32 * d;
        *h = ((i32::from(q >> 4) | fifth(j + 16)) - 16) as f32 * d;
    }
}

/// Q8_0: `d` (f16), 32 signed bytes; weight `q·d`.
#[inline(always)]
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = f32::from(q as i8) * d;
    }
}

/// Q4_K, superblocks of 256: `d`, `dmin` (f16), 12 bytes of 6-bit scales
/// and mins of eight sub-blocks, 128 bytes of nibbles (each 32 bytes: low
/// nibbles are one sub-block, high nibbles the next). Weight
/// `(d·sc)·q - dmin·m`.
#[inline(always)]
fn q4k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scale_min = |j: usize| q4k_scale_min(&b[4..16], j);
    for (pair, y) in y.chunks_exact_mut(2 * QK).enumerate() {
        let qs = &b[16 + 32 * pair..48 + 32 * pair];
        let ((s1, m1), (s2, m2)) = (scale_min(2 * pair), scale_min(2 * pair + 1));
        let (d1, m1) = (d * f32::from(s1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(s2), dmin * f32::from(m2));
        let (lo, hi) = y.split_at_mut(QK);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(qs) {
            *l = d1 * f32::from(q & 0xF) - m1;
            *h = d2 * f32::from(q >> 4) - m2;
        }
    }
}

/// Sub-block `j`'s 6-bit scale and min from a Q4_K superblock's 12 bytes
/// of them (`sm`: bytes 4..16 of the block).
#[inline(always)]
pub(super) fn q4k_scale_min(sm: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (sm[j] & 63, sm[j + 4] & 63)
    } else {
        (
            (sm[j + 4] & 0xF) | ((sm[j - 4] >> 6) << 4),
            (sm[j + 4] >> 4) | ((sm[j] >> 6) << 4),
        )
    }
}

/// Q6_K, superblocks of 256: 128 bytes of low nibbles, 64 bytes of top bit
/// pairs, 16 signed 8-bit scales (one per 16 weights), `d` (f16). Weight
/// `(d·sc)·(q - 32)`. In each half of 128 weights, weight `32g + l`
/// (`l < 32`) takes its low bits from byte `32(g % 2) + l` of the half's 64
/// (low nibble for g < 2, high otherwise) and its top bits from bits
/// `2g, 2g+1` of the half's byte `l` of 32.
#[inline(always)]
fn q6k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for (h, y) in y.chunks_exact_mut(128).enumerate() {
        let (ql, qh, sc) = (&b[64 * h..], &b[128 + 32 * h..], &b[192 + 8 * h..]);
        for (g, y) in y.chunks_exact_mut(QK).enumerate() {
            for (l, y) in y.iter_mut().enumerate() {
                let low = ql[32 * (g % 2) + l];
                let nib = if g < 2 { low & 0xF } else { low >> 4 };
                let q = (nib | ((qh[l] >> (2 * g)) & 3) << 4) as i8 - 32;
                *y = d * f32::from(sc[l / 16 + 2 * g] as i8) * f32::from(q);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    #[test]
    fn equals_candles_dequantization_bit_for_bit() {
        let dev = Device::Cpu;
        let (n, k) = (9usize, 512usize);
        // Deterministic values with a spread of magnitudes and signs.
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0 * (1.0 + (i % 13) as f32))
            .collect();
        let w = Tensor::from_vec(w, (n, k), &dev).expect("w");
        for dtype in OWN_TYPES {
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            let want = q.dequantize(&dev).expect("dequantize");
            let want = want
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("values");
            for parallel in [true, false] {
                let mut got = vec![f32::NAN; n * k];
                assert!(
                    rows_into(dtype, &q.data().expect("bytes"), k, &mut got, parallel),
                    "{dtype:?}"
                );
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{dtype:?} ({parallel}): {:?} vs {:?}",
                    &got[..8],
                    &want[..8]
                );
            }
        }
        assert!(!rows_into(GgmlDType::Q5K, &[], k, &mut [], true));
    }
}
