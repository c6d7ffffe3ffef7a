//! Few-row products `x [m, k] · Wᵀ` read straight from the GGML blocks of a
//! quantized `W [n, k]`, for decoding and other forwards of fewer than
//! [`super::streamed::STREAM_MIN_ROWS`] rows.
//!
//! On x86-64 with AVX2 and FMA enabled at compile time (the default build,
//! see `.cargo/config.toml`), the activations are quantized to 8 bits per
//! block of 32 and multiplied with the weights' blocks (Q4_0, Q4_1, Q5_0,
//! Q8_0, Q4_K, Q6_K) by AVX2 integer instructions ([`avx2`], in
//! `safe_arch`'s safe wrappers, so the crate stays free of `unsafe`), as
//! llama.cpp does; a dot product moves by at most half a quantization step
//! of the activations (the tests assert that bound). For Q4_K and Q6_K the
//! activations' steps are powers of two apart within each superblock of 256
//! ([`quantize_activations_k`]), so a superblock sums in i32 with integer
//! scales and converts to f32 once, as llama.cpp's `Q8_K` kernels do. What
//! this buys is measured in PERFORMANCE.md.
//!
//! Other targets use portable loops the compiler vectorizes, with f32
//! activations (equal to dequantize-then-matmul up to summation order), for
//! Q4_1 and Q5_0, and candle's kernels for the rest.
//!
//! Scoring rarely comes here: its packed forwards have hundreds of rows and
//! take the dequantize-then-GEMM path; the head is always dequantized.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};
use half::f16;
use rayon::prelude::*;

/// Weights in a block of every supported type.
const QK: usize = 32;
/// Output rows per rayon task.
const ROWS_PER_TASK: usize = 32;

/// One row of activations as the kernels read it: the f32 values, their
/// per-block sums and, for the AVX2 kernels, the values quantized to 8 bits
/// per block of 32 (`q[j] ≈ x[j] / d[block]`).
struct Act<'a> {
    x: &'a [f32],
    sums: &'a [f32],
    #[allow(dead_code)] // read by the AVX2 kernels only
    q: &'a [i8],
    #[allow(dead_code)] // read by the AVX2 kernels only
    d: &'a [f32],
    /// For the k-quant kernels: block `j`'s step `d[j]` is `sbd[j / 8] ·
    /// mult[j]`, `mult[j]` a power of two from 1 to 128 (see
    /// [`quantize_activations_k`]). Empty for the other types.
    #[allow(dead_code)] // read by the AVX2 kernels only
    mult: &'a [i16],
    #[allow(dead_code)] // read by the AVX2 kernels only
    sbd: &'a [f32],
}

/// The dot product of one row of blocks with the activations.
type RowDot = fn(&[u8], &Act) -> f32;

/// Whether [`kernel`]'s row dots read [`Act::q`] (else only `x` and `sums`).
const QUANTIZED_ACTIVATIONS: bool = cfg!(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
));

/// `x` quantized to signed 8 bits per block of 32 with a scale per block
/// (`d = max|x| / 127`, round to nearest), as llama.cpp's `Q8_0`/`Q8_1` do
/// to activations before an integer dot product (candle's `Q8_K` uses
/// blocks of 256, which proved too coarse for Qwen; see PERFORMANCE.md).
fn quantize_activations(x: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(x.len());
    let mut d = Vec::with_capacity(x.len() / QK);
    for b in x.chunks_exact(QK) {
        let scale = amax(b) / 127.0;
        round_block(b, scale, &mut q);
        d.push(scale);
    }
    (q, d)
}

/// The largest magnitude of `b`.
fn amax(b: &[f32]) -> f32 {
    b.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// `b / step` rounded to 8 bits, onto `q` (zeros for a zero step).
fn round_block(b: &[f32], step: f32, q: &mut Vec<i8>) {
    let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
    q.extend(
        b.iter()
            .map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8),
    );
}

/// Activations quantized per superblock of 256 for the k-quant kernels:
/// `D = max|x| / 127` over the superblock, and each block of 32 the finest
/// step `D / 2^e` (`e` ≤ 7) its own largest value fits in 8 bits with:
/// within a factor of two of its own `max|x_block| / 127` (or below
/// `D / 128`), where one step per superblock (candle's `Q8_K`) rounds a
/// block of small values to a few levels and proved too coarse for Qwen.
/// The kernels sum a superblock in i32 with block scales `sc · 2^(7 - e)`
/// and scale it once by `d · D / 128`. Returns `q`, each block's step,
/// `2^(7 - e)` per block and `D / 128` per superblock.
fn quantize_activations_k(x: &[f32]) -> (Vec<i8>, Vec<f32>, Vec<i16>, Vec<f32>) {
    let mut q = Vec::with_capacity(x.len());
    let mut d = Vec::with_capacity(x.len() / QK);
    let mut mult = Vec::with_capacity(x.len() / QK);
    let mut sbd = Vec::with_capacity(x.len() / 256);
    for sb in x.chunks_exact(256) {
        let maxima: Vec<f32> = sb.chunks_exact(QK).map(amax).collect();
        let top = maxima.iter().fold(0f32, |m, &v| m.max(v)) / 127.0;
        sbd.push(top / 128.0);
        for (b, &block_max) in sb.chunks_exact(QK).zip(&maxima) {
            let mut e = 0;
            while e < 7 && block_max <= top / (1 << (e + 1)) as f32 * 127.0 {
                e += 1;
            }
            let step = top / (1 << e) as f32;
            round_block(b, step, &mut q);
            d.push(step);
            mult.push(1 << (7 - e));
        }
    }
    (q, d, mult, sbd)
}

/// The block layout of a supported type: weights and bytes per block, and
/// its [`RowDot`].
fn kernel(dtype: GgmlDType) -> Option<(usize, usize, RowDot)> {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        use avx2::{dot_q4_1, dot_q4k, dot_q5_0, dot_q6k, dot_q8_0};
        match dtype {
            GgmlDType::Q4_1 => Some((QK, 20, dot_q4_1)),
            GgmlDType::Q5_0 => Some((QK, 22, dot_q5_0)),
            GgmlDType::Q8_0 => Some((QK, 34, dot_q8_0)),
            GgmlDType::Q4K => Some((256, 144, dot_q4k)),
            GgmlDType::Q6K => Some((256, 210, dot_q6k)),
            _ => None,
        }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    match dtype {
        GgmlDType::Q4_1 => Some((QK, 20, portable::dot_q4_1)),
        GgmlDType::Q5_0 => Some((QK, 22, portable::dot_q5_0)),
        _ => None,
    }
}

/// `x · Wᵀ` as `[m, n]`, or `None` when `W`'s type has no kernel here.
pub fn matmul(x: &Tensor, q: &QTensor) -> Result<Option<Tensor>> {
    let Some((block_weights, block_bytes, dot)) = kernel(q.dtype()) else {
        return Ok(None);
    };
    let (n, k) = q.shape().dims2()?;
    let (m, kx) = x.dims2()?;
    if kx != k || k % block_weights != 0 {
        candle_core::bail!("gemv: x is [{m}, {kx}] for a [{n}, {k}] weight");
    }
    let data = q.data()?;
    let row_bytes = k / block_weights * block_bytes;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let sums: Vec<f32> = xs.chunks_exact(QK).map(|b| b.iter().sum::<f32>()).collect();
    let kquant = block_weights == 256;
    let (xq, xd, xm, xs_d) = if QUANTIZED_ACTIVATIONS && kquant {
        quantize_activations_k(&xs)
    } else if QUANTIZED_ACTIVATIONS {
        let (q, d) = quantize_activations(&xs);
        (q, d, Vec::new(), Vec::new())
    } else {
        (Vec::new(), Vec::new(), Vec::new(), Vec::new())
    };
    let blocks = k / QK;
    let acts: Vec<Act> = (0..m)
        .map(|i| Act {
            x: &xs[i * k..(i + 1) * k],
            sums: &sums[i * blocks..(i + 1) * blocks],
            q: xq.get(i * k..(i + 1) * k).unwrap_or_default(),
            d: xd.get(i * blocks..(i + 1) * blocks).unwrap_or_default(),
            mult: xm.get(i * blocks..(i + 1) * blocks).unwrap_or_default(),
            sbd: xs_d.get(i * k / 256..(i + 1) * k / 256).unwrap_or_default(),
        })
        .collect();
    // Output transposed ([n, m]) so that each task owns a contiguous run.
    let mut out_t = vec![0f32; n * m];
    out_t
        .par_chunks_mut(ROWS_PER_TASK * m)
        .zip(data.par_chunks(ROWS_PER_TASK * row_bytes))
        .for_each(|(chunk, rows)| {
            for (out, row) in chunk.chunks_exact_mut(m).zip(rows.chunks_exact(row_bytes)) {
                for (o, a) in out.iter_mut().zip(&acts) {
                    *o = dot(row, a);
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

/// The block loops for targets without AVX2: f32 activations, 16
/// independent lanes per block in fixed-size arrays for the
/// auto-vectorizer. With AVX2 only the tests call them.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
mod portable {
    use super::{f16_at, Act, QK};

    /// Q4_1: `d`, `m` (f16), 16 bytes of nibbles; weight `j` is `d·q_j + m`,
    /// low nibbles first. `Σ_j (d q_j + m) x_j = d Σ q_j x_j + m Σ x_j`.
    pub(super) fn dot_q4_1(row: &[u8], a: &Act) -> f32 {
        let (x, sums) = (a.x, a.sums);
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
    pub(super) fn dot_q5_0(row: &[u8], a: &Act) -> f32 {
        let (x, sums) = (a.x, a.sums);
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
}

/// The block loops in AVX2: weights unpacked to bytes, multiplied with the
/// 8-bit activations by `vpmaddubsw` (unsigned weight bytes × signed
/// activation bytes, pairs summed to i16) and `vpmaddwd` (pairs to i32),
/// then scaled in f32. Per block of 32 weights that is a handful of
/// instructions, where converting every weight to f32 took about twenty.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2 {
    use super::{f16_at, Act, QK};
    use safe_arch::*;

    /// The 16 bytes of nibbles as 32 bytes: low nibbles (weights 0-15),
    /// then high nibbles (weights 16-31).
    #[inline(always)]
    fn nibbles(qs: &[u8]) -> m256i {
        let qs: &[u8; 16] = qs.first_chunk().expect("16 bytes of nibbles");
        let q = load_unaligned_m128i(qs);
        let mask = set_splat_i8_m128i(15);
        let lo = bitand_m128i(q, mask);
        let hi = bitand_m128i(shr_imm_u16_m128i::<4>(q), mask);
        insert_m128i_to_m256i::<1>(zero_extend_m128i(lo), hi)
    }

    /// `Σ w_j q_j` for 32 weight bytes `w` (each ≤ 31, so no i16 pair
    /// saturates) and 32 activation bytes, in eight f32 lanes.
    #[inline(always)]
    fn int_dot(w: m256i, q: &[i8]) -> m256 {
        let q: &[i8; QK] = q.first_chunk().expect("activations in blocks of 32");
        products(w, load_unaligned_m256i(q))
    }

    /// `Σ w_j q_j` for unsigned bytes `w` and signed bytes `q` whose pair
    /// sums fit in i16, in eight f32 lanes.
    #[inline(always)]
    fn products(w: m256i, q: m256i) -> m256 {
        let pairs = mul_u8i8_add_horizontal_saturating_m256i(w, q);
        convert_to_m256_from_i32_m256i(mul_i16_horizontal_add_m256i(pairs, set_splat_i16_m256i(1)))
    }

    /// The fifth bits of Q5_0: byte `j` of the result is 16 if bit `j` of
    /// `qh` is set, else 0. Each byte gets the byte of `qh` holding its
    /// bit, is OR-ed with every other bit set, and compares equal to all
    /// ones only if its own bit was set.
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

    /// `Σ` of `one` over the blocks of a row, two blocks per step into two
    /// accumulators so that consecutive blocks do not wait on each other's
    /// fused multiply-adds. `one(block, activations, scale, sum, acc,
    /// acc_m)` adds a block: `acc += d·d_x·Σ q q_x` in eight lanes and any
    /// per-block offset times `Σ x` to `acc_m`. (Generic, not a function
    /// pointer, so that it is inlined.)
    #[inline(always)]
    fn row_dot<F>(row: &[u8], a: &Act, bytes: usize, one: F) -> f32
    where
        F: Fn(&[u8], &[i8], f32, f32, &mut m256, &mut f32),
    {
        let (mut a0, mut a1, mut m0, mut m1) = (zeroed_m256(), zeroed_m256(), 0f32, 0f32);
        let pairs = row
            .chunks_exact(2 * bytes)
            .zip(a.q.chunks_exact(2 * QK))
            .zip(a.d.chunks_exact(2).zip(a.sums.chunks_exact(2)));
        for ((b, q), (d, s)) in pairs {
            one(&b[..bytes], &q[..QK], d[0], s[0], &mut a0, &mut m0);
            one(&b[bytes..], &q[QK..], d[1], s[1], &mut a1, &mut m1);
        }
        let blocks = a.sums.len();
        if blocks % 2 == 1 {
            let l = blocks - 1;
            let (b, q) = (&row[l * bytes..], &a.q[l * QK..]);
            one(b, q, a.d[l], a.sums[l], &mut a0, &mut m0);
        }
        let lanes: [f32; 8] = (a0 + a1).into();
        lanes.iter().sum::<f32>() + m0 + m1
    }

    /// Q4_1: `Σ (d q + m) x = d·d_x·Σ q q_x + m·Σ x`.
    pub(super) fn dot_q4_1(row: &[u8], a: &Act) -> f32 {
        row_dot(row, a, 20, |b, q, dx, s, acc, acc_m| {
            let (d, mn) = (f16_at(b, 0), f16_at(b, 2));
            let p = int_dot(nibbles(&b[4..20]), q);
            *acc = fused_mul_add_m256(set_splat_m256(d * dx), p, *acc);
            *acc_m = mn.mul_add(s, *acc_m);
        })
    }

    /// Q5_0: `Σ d (q - 16) x = d·d_x·Σ q q_x - 16 d·Σ x`.
    pub(super) fn dot_q5_0(row: &[u8], a: &Act) -> f32 {
        row_dot(row, a, 22, |b, q, dx, s, acc, acc_m| {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let p = int_dot(nibbles(&b[6..22]) | fifth_bits(qh), q);
            *acc = fused_mul_add_m256(set_splat_m256(d * dx), p, *acc);
            *acc_m = (-16.0 * d).mul_add(s, *acc_m);
        })
    }

    /// Q8_0: `d` (f16), 32 signed bytes; weight `d·q`, so a block adds
    /// `d·d_x·Σ q q_x`. `vpmaddubsw` wants one unsigned operand: `|q|`
    /// times `q_x` with `q`'s sign (a pair is at most 2·128·127 < 2¹⁵).
    pub(super) fn dot_q8_0(row: &[u8], a: &Act) -> f32 {
        row_dot(row, a, 34, |b, q, dx, _, acc, _| {
            let w = bytes32(b, 2);
            let q: &[i8; QK] = q.first_chunk().expect("activations in blocks of 32");
            let p = products(
                abs_i8_m256i(w),
                sign_apply_i8_m256i(load_unaligned_m256i(q), w),
            );
            *acc = fused_mul_add_m256(set_splat_m256(f16_at(b, 0) * dx), p, *acc);
        })
    }

    /// 32 bytes starting at `i`.
    #[inline(always)]
    fn bytes32(b: &[u8], i: usize) -> m256i {
        let v: &[u8; 32] = b[i..].first_chunk().expect("32 bytes of quants");
        m256i::from(*v)
    }

    /// Byte-shuffle controls for `shuffle_av_i8z_half_m256i` over eight
    /// i16 scales per 128-bit half: control `j` gives every i16 lane of the
    /// low half scale `stride·j`, of the high half scale `stride·j + high`.
    const fn scale_picks<const N: usize>(stride: u8, high: u8) -> [[u8; 32]; N] {
        let mut t = [[0u8; 32]; N];
        let mut j = 0;
        while j < N {
            let mut l = 0;
            while l < 32 {
                let scale = stride * j as u8 + if l >= 16 { high } else { 0 };
                t[j][l] = 2 * scale + (l % 2) as u8;
                l += 1;
            }
            j += 1;
        }
        t
    }

    /// Eight consecutive values of `v` from `i`.
    #[inline(always)]
    fn f32x8(v: &[f32], i: usize) -> m256 {
        load_unaligned_m256(v[i..].first_chunk().expect("eight blocks per superblock"))
    }

    /// Q4_K, superblocks of 256: `d`, `dmin` (f16), 12 bytes of 6-bit scales
    /// and mins for eight sub-blocks of 32, 128 bytes of nibbles (each 32
    /// bytes: low nibbles are one sub-block, high nibbles the next). Weight
    /// `d·sc·q - dmin·m`, so a sub-block adds `d·sc·d_x·Σ q q_x - dmin·m·Σ x`
    /// with `d_x = (D/128)·mult` ([`super::quantize_activations_k`]): the
    /// pairs of `q q_x` (|·| ≤ 2·15·127) times `sc·mult` (≤ 63·128) summed
    /// in i32 (≤ 8 blocks · 2·3810·8064 < 2³¹), then `d·D/128` once. The
    /// scales are unpacked with 32-bit masks; `PICK` spreads one to every
    /// lane.
    pub(super) fn dot_q4k(row: &[u8], a: &Act) -> f32 {
        let mut acc = zeroed_m256();
        let mask = set_splat_i8_m256i(15);
        // `PICK[j]`: every i16 lane gets scale j of the eight in each half.
        const PICK: [[u8; 32]; 8] = scale_picks(1, 0);
        let superblocks = row
            .chunks_exact(144)
            .zip(a.q.chunks_exact(256))
            .zip(a.mult.chunks_exact(8).zip(a.sums.chunks_exact(8)))
            .zip(a.sbd);
        for (((b, q), (mult, sums)), &sbd) in superblocks {
            let b: &[u8; 144] = b.try_into().expect("superblocks of 144 bytes");
            let q: &[i8; 256] = q.try_into().expect("activations in superblocks");
            let mult: &[i16; 8] = mult.try_into().expect("eight blocks");
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            let (w0, w1, w2) = (word(4), word(8), word(12));
            let sc = u64::from(w0 & 0x3f3f_3f3f)
                | u64::from((w2 & 0x0f0f_0f0f) | ((w0 >> 2) & 0x3030_3030)) << 32;
            let mn = u64::from(w1 & 0x3f3f_3f3f)
                | u64::from(((w2 >> 4) & 0x0f0f_0f0f) | ((w1 >> 2) & 0x3030_3030)) << 32;
            let m = m128i::from(*mult);
            let scm = mul_i16_keep_low_m256i(
                convert_to_i16_m256i_from_u8_m128i(set_i64_m128i(sc as i64, sc as i64)),
                set_m128i_m256i(m, m),
            );
            let mut iacc = [zeroed_m256i(); 2];
            for pair in 0..4 {
                let qs = bytes32(b, 16 + 32 * pair);
                let halves = [
                    bitand_m256i(qs, mask),
                    bitand_m256i(shr_imm_u16_m256i::<4>(qs), mask),
                ];
                for (h, w) in halves.into_iter().enumerate() {
                    let j = 2 * pair + h;
                    let qx: &[i8; QK] = q[j * QK..].first_chunk().expect("32");
                    let pairs =
                        mul_u8i8_add_horizontal_saturating_m256i(w, load_unaligned_m256i(qx));
                    let scale = shuffle_av_i8z_half_m256i(scm, m256i::from(PICK[j]));
                    iacc[h] = add_i32_m256i(iacc[h], mul_i16_horizontal_add_m256i(pairs, scale));
                }
            }
            let p = convert_to_m256_from_i32_m256i(add_i32_m256i(iacc[0], iacc[1]));
            acc = fused_mul_add_m256(set_splat_m256(d * sbd), p, acc);
            let mins = convert_to_m256_from_i32_m256i(convert_to_i32_m256i_from_lower8_i8_m128i(
                set_i64_m128i(0, mn as i64),
            ));
            acc = fused_mul_neg_add_m256(mins * set_splat_m256(dmin), f32x8(sums, 0), acc);
        }
        let lanes: [f32; 8] = acc.into();
        lanes.iter().sum::<f32>()
    }

    /// Q6_K, superblocks of 256: 128 bytes of low nibbles, 64 bytes of high
    /// bit pairs, 16 signed 8-bit scales (one per 16 weights), `d` (f16).
    /// Weight `d·sc·(q - 32)`. In each half of 128 weights, group `g` of 32
    /// takes its low four bits from the low (g = 0, 1) or high (g = 2, 3)
    /// nibbles of bytes 0-31 (g even) or 32-63 (g odd) and its top two bits
    /// from bits `2g, 2g+1` of the 32 high-bit bytes. `(q - 32)·q_x` is
    /// summed in i16 pairs (|·| ≤ 2·32·127), then to i32 times `sc·mult`
    /// (|·| ≤ 128·128), each half of the lanes with its own `sc`; each of
    /// the two i32 accumulators takes four blocks (≤ 4·2·8128·16384 < 2³¹)
    /// and both are scaled once per superblock by `d·D/128`.
    pub(super) fn dot_q6k(row: &[u8], a: &Act) -> f32 {
        let mut acc = zeroed_m256();
        let (low4, top2) = (set_splat_i8_m256i(15), set_splat_i8_m256i(0x30));
        let thirty_two = set_splat_i8_m256i(32);
        // `PICK[g]`: the low half's i16 lanes get scale 2g of the eight in
        // that half, the high half's scale 2g + 1.
        const PICK: [[u8; 32]; 4] = scale_picks(2, 1);
        let superblocks = row
            .chunks_exact(210)
            .zip(a.q.chunks_exact(256))
            .zip(a.mult.chunks_exact(8))
            .zip(a.sbd);
        for (((b, q), mult), &sbd) in superblocks {
            let b: &[u8; 210] = b.try_into().expect("superblocks of 210 bytes");
            let q: &[i8; 256] = q.try_into().expect("activations in superblocks");
            let mult: &[i16; 8] = mult.try_into().expect("eight blocks");
            let d = f16_at(b, 208);
            let m = m128i::from(*mult);
            let eight = |i: usize| i64::from_le_bytes(b[i..i + 8].try_into().expect("8 scales"));
            // Per half of the superblock: its eight scales (one per 16
            // weights) times their blocks' multipliers, in both halves.
            let scm = [
                (eight(192), unpack_low_i16_m128i(m, m)),
                (eight(200), unpack_high_i16_m128i(m, m)),
            ]
            .map(|(sc, mm)| {
                mul_i16_keep_low_m256i(
                    convert_to_i16_m256i_from_i8_m128i(set_i64_m128i(sc, sc)),
                    set_m128i_m256i(mm, mm),
                )
            });
            let mut iacc = [zeroed_m256i(); 2];
            for (half, &scm) in scm.iter().enumerate() {
                let (ql, qh) = (64 * half, 128 + 32 * half);
                let (lo_a, lo_b, hi) = (bytes32(b, ql), bytes32(b, ql + 32), bytes32(b, qh));
                let groups = [
                    bitand_m256i(lo_a, low4) | bitand_m256i(shl_imm_u16_m256i::<4>(hi), top2),
                    bitand_m256i(lo_b, low4) | bitand_m256i(shl_imm_u16_m256i::<2>(hi), top2),
                    bitand_m256i(shr_imm_u16_m256i::<4>(lo_a), low4) | bitand_m256i(hi, top2),
                    bitand_m256i(shr_imm_u16_m256i::<4>(lo_b), low4)
                        | bitand_m256i(shr_imm_u16_m256i::<2>(hi), top2),
                ];
                for (g, w) in groups.into_iter().enumerate() {
                    let blk = half * 4 + g;
                    let qx: &[i8; QK] = q[blk * QK..]
                        .first_chunk()
                        .expect("activations in blocks of 32");
                    let qx = load_unaligned_m256i(qx);
                    let pairs = sub_i16_m256i(
                        mul_u8i8_add_horizontal_saturating_m256i(w, qx),
                        mul_u8i8_add_horizontal_saturating_m256i(thirty_two, qx),
                    );
                    let scale = shuffle_av_i8z_half_m256i(scm, m256i::from(PICK[g]));
                    iacc[g % 2] =
                        add_i32_m256i(iacc[g % 2], mul_i16_horizontal_add_m256i(pairs, scale));
                }
            }
            let p =
                convert_to_m256_from_i32_m256i(iacc[0]) + convert_to_m256_from_i32_m256i(iacc[1]);
            acc = fused_mul_add_m256(set_splat_m256(d * sbd), p, acc);
        }
        let lanes: [f32; 8] = acc.into();
        lanes.iter().sum::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How far a row dot may be from `Σ w x` in f32: with 8-bit
    /// activations each `x_j` is replaced by `d·round(x_j / d)`, at most
    /// `d/2` away (`d` its block's scale), so the dot moves by at most
    /// `Σ_blocks d/2 · Σ_j |w_j|`; plus f32 rounding, `1e-5 · Σ |w x|`.
    fn allowed(w: &[f32], x: &[f32], superblocks: bool) -> f32 {
        let f32_slack = 1e-5 * w.iter().zip(x).map(|(a, b)| (a * b).abs()).sum::<f32>() + 1e-6;
        if !QUANTIZED_ACTIVATIONS {
            return f32_slack;
        }
        let d = if superblocks {
            quantize_activations_k(x).1
        } else {
            quantize_activations(x).1
        };
        let rounding: f32 = w
            .chunks_exact(QK)
            .zip(d)
            .map(|(wb, d)| d / 2.0 * wb.iter().map(|v| v.abs()).sum::<f32>())
            .sum();
        rounding + f32_slack
    }

    #[test]
    fn equals_dequantized_matmul_within_the_activation_rounding() {
        let cases = [
            (GgmlDType::Q4_1, 96usize),
            (GgmlDType::Q5_0, 96),
            (GgmlDType::Q8_0, 96),
            (GgmlDType::Q4K, 512),
            (GgmlDType::Q6K, 512),
        ];
        let n = 70usize;
        for (dtype, k) in cases {
            let Some((block_weights, _, _)) = kernel(dtype) else {
                // Only these go without (they need AVX2): candle's kernel.
                assert!(
                    matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K | GgmlDType::Q8_0),
                    "{dtype:?}"
                );
                continue;
            };
            assert_eq!(k % block_weights, 0);
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 37.0 * (1.0 + (i / k % 7) as f32))
                .collect();
            let w = Tensor::from_vec(w, (n, k), &Device::Cpu).expect("w");
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            let dq = q.dequantize(&Device::Cpu).expect("dq");
            let dq_rows = dq.to_vec2::<f32>().expect("rows");
            for m in [1usize, 3, 15] {
                // Blocks of 32 at magnitudes 1 to 1/256, so that the k-quant
                // activations' steps take every power of two, and the cap.
                let x: Vec<f32> = (0..m * k)
                    .map(|i| {
                        ((i * 13 % 29) as f32 - 14.0) / 7.0
                            * (1.0 + (i % 5) as f32)
                            * 0.5f32.powi((i / QK % 9) as i32)
                    })
                    .collect();
                let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).expect("x");
                let want = xt.matmul(&dq.t().expect("t")).expect("mm");
                let got = matmul(&xt, &q).expect("gemv").expect("supported");
                assert_eq!(got.dims(), want.dims());
                let (got, want) = (
                    got.to_vec2::<f32>().expect("v"),
                    want.to_vec2::<f32>().expect("v"),
                );
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let xi = &x[i * k..(i + 1) * k];
                    for (j, (a, b)) in g.iter().zip(w).enumerate() {
                        let tol = allowed(&dq_rows[j], xi, block_weights == 256);
                        assert!((a - b).abs() <= tol, "{dtype:?} m={m}: {a} vs {b} (±{tol})");
                    }
                }
            }
        }
        let q5_1 = QTensor::quantize(
            &Tensor::zeros((32, 64), candle_core::DType::F32, &Device::Cpu).expect("w"),
            GgmlDType::Q5_1,
        )
        .expect("q5_1");
        let x = Tensor::zeros((1, 64), candle_core::DType::F32, &Device::Cpu).expect("x");
        assert!(
            matmul(&x, &q5_1).expect("call").is_none(),
            "Q5_1 is candle's"
        );
    }

    /// The portable loops (the only ones off x86-64-v3) against the kernel
    /// this build uses, for an even and an odd number of blocks.
    #[test]
    fn portable_loops_agree_with_the_built_kernel() {
        for k in [96usize, 128] {
            let w: Vec<f32> = (0..4 * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 23.0)
                .collect();
            let wt = Tensor::from_vec(w, (4, k), &Device::Cpu).expect("w");
            let x: Vec<f32> = (0..k)
                .map(|i| ((i * 17 % 31) as f32 - 15.0) / 9.0)
                .collect();
            let sums: Vec<f32> = x.chunks_exact(QK).map(|b| b.iter().sum()).collect();
            let (q, d) = quantize_activations(&x);
            let act = Act {
                x: &x,
                sums: &sums,
                q: &q,
                d: &d,
                mult: &[],
                sbd: &[],
            };
            let portable: [(GgmlDType, RowDot); 2] = [
                (GgmlDType::Q4_1, portable::dot_q4_1),
                (GgmlDType::Q5_0, portable::dot_q5_0),
            ];
            for (dtype, slow) in portable {
                let qt = QTensor::quantize(&wt, dtype).expect("quantize");
                let dq = qt
                    .dequantize(&Device::Cpu)
                    .expect("dq")
                    .to_vec2::<f32>()
                    .expect("rows");
                let data = qt.data().expect("data");
                let (_, block_bytes, fast) = kernel(dtype).expect("supported");
                for (row, wr) in data.chunks_exact(k / QK * block_bytes).zip(&dq) {
                    let (a, b) = (fast(row, &act), slow(row, &act));
                    let tol = allowed(wr, &x, false);
                    assert!((a - b).abs() <= tol, "{dtype:?} k={k}: {a} vs {b} (±{tol})");
                }
            }
        }
    }

    /// Each block's step is the finest power of two below the
    /// superblock's `D` that holds its values in 8 bits (or `D / 128`), and
    /// the kernels' integer multipliers reproduce it exactly.
    #[test]
    fn superblock_activations_keep_each_blocks_step_within_twice_its_own() {
        let mags = [1.0f32, 0.3, 0.5, 0.26, 1e-3, 0.0, 0.126, 2e-5];
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 11.0 * mags[i / QK % 8] * (1 + i / 256) as f32)
            .collect();
        let (q, d, mult, sbd) = quantize_activations_k(&x);
        assert_eq!((q.len(), d.len(), mult.len(), sbd.len()), (512, 16, 16, 2));
        let mut seen = std::collections::BTreeSet::new();
        for (j, b) in x.chunks_exact(QK).enumerate() {
            let step = d[j];
            assert!(mult[j].count_ones() == 1 && (1..=128).contains(&mult[j]));
            assert_eq!(step, sbd[j / 8] * f32::from(mult[j]), "block {j}");
            let amax = amax(b);
            for (&v, &qv) in b.iter().zip(&q[j * QK..]) {
                assert!((v - step * f32::from(qv)).abs() <= step / 2.0 * (1.0 + 1e-6));
            }
            assert!(amax <= 127.0 * step * (1.0 + 1e-6), "block {j} fits");
            assert!(
                mult[j] == 1 || amax > 127.0 * step / 2.0,
                "block {j}: finest step"
            );
            seen.insert(mult[j]);
        }
        assert!(
            seen.contains(&128) && seen.contains(&1) && seen.len() >= 4,
            "{seen:?}"
        );
    }

    #[test]
    fn activations_round_to_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 3.0)
            .collect();
        let (q, d) = quantize_activations(&x);
        for (j, (&v, &qv)) in x.iter().zip(&q).enumerate() {
            let step = d[j / QK];
            assert!((v - step * f32::from(qv)).abs() <= step / 2.0 * (1.0 + 1e-6));
        }
        assert_eq!(q.iter().map(|v| v.unsigned_abs()).max(), Some(127));
        let (zq, zd) = quantize_activations(&[0.0; QK]);
        assert!(zq.iter().all(|&v| v == 0) && zd == [0.0]);
    }
}
