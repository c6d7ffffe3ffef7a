//! Quantized row dots in AVX2: weights unpacked to bytes, multiplied with
//! the 8-bit activations by `vpmaddubsw` (unsigned weight bytes × signed
//! activation bytes, pairs summed to i16) and `vpmaddwd` (pairs to i32),
//! then scaled in f32. Per block of 32 weights that is a handful of
//! instructions, where converting every weight to f32 took about twenty.
//!
//! [`row_dot`] hands out these kernels only when AVX2 and FMA were
//! detected; each entry point is a safe function that calls its
//! `#[target_feature]` body, which is sound because nothing else can reach
//! it. Inside the bodies the value intrinsics are safe calls; loads take a
//! reference to a fixed-size array whose bounds were checked by the type.

use super::{Kernels, RowDot};
use candle_core::quantized::GgmlDType;

/// The AVX2 row dot of `dtype` with its block layout (weights and bytes
/// per block), when `set` is AVX2 and this CPU has it.
pub fn row_dot(set: Kernels, dtype: GgmlDType) -> Option<(usize, usize, RowDot)> {
    if !set.has_avx2() || !Kernels::Avx2.available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let entry: (usize, usize, RowDot) = match dtype {
            GgmlDType::Q4_1 => (32, 20, imp::dot_q4_1),
            GgmlDType::Q5_0 => (32, 22, imp::dot_q5_0),
            GgmlDType::Q8_0 => (32, 34, imp::dot_q8_0),
            GgmlDType::Q4K => (256, 144, imp::dot_q4k),
            GgmlDType::Q6K => (256, 210, imp::dot_q6k),
            _ => return None,
        };
        Some(entry)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dtype;
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::super::{Act, QK};
    use std::arch::x86_64::*;

    /// Safe entry points: reachable only through [`super::row_dot`], which
    /// checked that this CPU has AVX2 and FMA.
    macro_rules! entry {
        ($($name:ident => $body:ident),*) => {$(
            pub(super) fn $name(row: &[u8], a: &Act) -> f32 {
                // SAFETY: only `row_dot` hands this function out, and only
                // after detecting AVX2 and FMA on this CPU.
                unsafe { $body(row, a) }
            }
        )*};
    }
    entry!(
        dot_q4_1 => q4_1,
        dot_q5_0 => q5_0,
        dot_q8_0 => q8_0,
        dot_q4k => q4k,
        dot_q6k => q6k
    );

    /// The f16 at byte `i` of `b`, as f32, by F16C (the `half` crate
    /// checks for F16C on every call unless the whole build targets it).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16_at(b: &[u8], i: usize) -> f32 {
        let bits = u16::from_le_bytes([b[i], b[i + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load128(v: &[u8; 16]) -> __m128i {
        // SAFETY: `v` is 16 readable bytes; the load is unaligned.
        unsafe { _mm_loadu_si128(v.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load256(v: &[u8; 32]) -> __m256i {
        // SAFETY: `v` is 32 readable bytes; the load is unaligned.
        unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load256_i8(v: &[i8; 32]) -> __m256i {
        // SAFETY: `v` is 32 readable bytes; the load is unaligned.
        unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load_f32x8(v: &[f32; 8]) -> __m256 {
        // SAFETY: `v` is 8 readable f32; the load is unaligned.
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
    }

    /// The eight lanes summed in order (lane 0 first), as the safe
    /// wrappers' `[f32; 8]` sum did.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn lanes_sum(v: __m256) -> f32 {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` is 8 writable f32; the store is unaligned.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes.iter().sum()
    }

    /// The 16 bytes of nibbles as 32 bytes: low nibbles (weights 0-15),
    /// then high nibbles (weights 16-31).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn nibbles(qs: &[u8]) -> __m256i {
        let q = load128(qs.first_chunk().expect("16 bytes of nibbles"));
        let mask = _mm_set1_epi8(15);
        let lo = _mm_and_si128(q, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
        _mm256_set_m128i(hi, lo)
    }

    /// `Σ w_j q_j` for 32 weight bytes `w` (each ≤ 31, so no i16 pair
    /// saturates) and 32 activation bytes, in eight f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn int_dot(w: __m256i, q: &[i8]) -> __m256 {
        products(
            w,
            load256_i8(q.first_chunk().expect("activations in blocks of 32")),
        )
    }

    /// `Σ w_j q_j` for unsigned bytes `w` and signed bytes `q` whose pair
    /// sums fit in i16, in eight f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn products(w: __m256i, q: __m256i) -> __m256 {
        let pairs = _mm256_maddubs_epi16(w, q);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// The fifth bits of Q5_0: byte `j` of the result is 16 if bit `j` of
    /// `qh` is set, else 0. Each byte gets the byte of `qh` holding its
    /// bit, is OR-ed with every other bit set, and compares equal to all
    /// ones only if its own bit was set.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn fifth_bits(qh: u32) -> __m256i {
        const SPREAD: [u8; 32] = [
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        ];
        let spread = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), load256(&SPREAD));
        let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
        let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1));
        _mm256_and_si256(set, _mm256_set1_epi8(16))
    }

    /// A row dot of a 32-weight type: `Σ` over the row's blocks of
    /// `$body`, which adds one block (`$b` its bytes, `$q` its activations,
    /// `$dx` their step, `$s` their sum) as `acc += d·d_x·Σ q q_x` in eight
    /// lanes and any per-block offset times `Σ x` to `acc_m`. Two blocks per
    /// step into two accumulators, so that consecutive blocks do not wait on
    /// each other's fused multiply-adds. A macro, so that the block's code
    /// is written out in the loop: as a function it was not inlined, and
    /// decoding SmolLM2 ran a quarter slower.
    macro_rules! row32 {
        ($name:ident, $bytes:expr, |$b:ident, $q:ident, $dx:ident, $s:ident, $acc:ident, $acc_m:ident| $body:block) => {
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            fn $name(row: &[u8], a: &Act) -> f32 {
                const BYTES: usize = $bytes;
                let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                let (mut m0, mut m1) = (0f32, 0f32);
                let pairs = row
                    .chunks_exact(2 * BYTES)
                    .zip(a.q.chunks_exact(2 * QK))
                    .zip(a.d.chunks_exact(2).zip(a.sums.chunks_exact(2)));
                for ((b, q), (d, s)) in pairs {
                    {
                        let ($b, $q, $dx, $s) = (&b[..BYTES], &q[..QK], d[0], s[0]);
                        let ($acc, $acc_m) = (&mut a0, &mut m0);
                        $body
                    }
                    {
                        let ($b, $q, $dx, $s) = (&b[BYTES..], &q[QK..], d[1], s[1]);
                        let ($acc, $acc_m) = (&mut a1, &mut m1);
                        $body
                    }
                }
                let blocks = a.sums.len();
                if blocks % 2 == 1 {
                    let l = blocks - 1;
                    let ($b, $q, $dx, $s) = (&row[l * BYTES..], &a.q[l * QK..], a.d[l], a.sums[l]);
                    let ($acc, $acc_m) = (&mut a0, &mut m0);
                    $body
                }
                lanes_sum(_mm256_add_ps(a0, a1)) + m0 + m1
            }
        };
    }

    // Q4_1: Σ (d q + m) x = d·d_x·Σ q q_x + m·Σ x.
    row32!(q4_1, 20, |b, q, dx, s, acc, acc_m| {
        let (d, mn) = (f16_at(b, 0), f16_at(b, 2));
        let p = int_dot(nibbles(&b[4..20]), q);
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), p, *acc);
        *acc_m = mn.mul_add(s, *acc_m);
    });

    // Q5_0: Σ d (q - 16) x = d·d_x·Σ q q_x - 16 d·Σ x.
    row32!(q5_0, 22, |b, q, dx, s, acc, acc_m| {
        let d = f16_at(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let p = int_dot(_mm256_or_si256(nibbles(&b[6..22]), fifth_bits(qh)), q);
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), p, *acc);
        *acc_m = (-16.0 * d).mul_add(s, *acc_m);
    });

    // Q8_0: `d` (f16), 32 signed bytes; weight `d·q`, so a block adds
    // `d·d_x·Σ q q_x`. `vpmaddubsw` wants one unsigned operand: `|q|` times
    // `q_x` with `q`'s sign (a pair is at most 2·128·127 < 2¹⁵).
    row32!(q8_0, 34, |b, q, dx, _s, acc, _acc_m| {
        let w = load256(b[2..].first_chunk().expect("32 bytes of quants"));
        let qx = load256_i8(q.first_chunk().expect("activations in blocks of 32"));
        let p = products(_mm256_abs_epi8(w), _mm256_sign_epi8(qx, w));
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b, 0) * dx), p, *acc);
    });

    /// 32 bytes starting at `i`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn bytes32(b: &[u8], i: usize) -> __m256i {
        load256(b[i..].first_chunk().expect("32 bytes of quants"))
    }

    /// Byte-shuffle controls for `vpshufb` over eight i16 scales per
    /// 128-bit half: control `j` gives every i16 lane of the low half scale
    /// `stride·j`, of the high half scale `stride·j + high`.
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

    /// Q4_K, superblocks of 256: `d`, `dmin` (f16), 12 bytes of 6-bit scales
    /// and mins for eight sub-blocks of 32, 128 bytes of nibbles (each 32
    /// bytes: low nibbles are one sub-block, high nibbles the next). Weight
    /// `d·sc·q - dmin·m`, so a sub-block adds `d·sc·d_x·Σ q q_x - dmin·m·Σ x`
    /// with `d_x = (D/128)·mult` (see `gemv::quantize_activations_k`): the
    /// pairs of `q q_x` (|·| ≤ 2·15·127) times `sc·mult` (≤ 63·128) summed
    /// in i32 (≤ 8 blocks · 2·3810·8064 < 2³¹), then `d·D/128` once. The
    /// scales are unpacked with 32-bit masks; `PICK` spreads one to every
    /// lane.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4k(row: &[u8], a: &Act) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mask = _mm256_set1_epi8(15);
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
            let sums: &[f32; 8] = sums.try_into().expect("eight blocks");
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            let (w0, w1, w2) = (word(4), word(8), word(12));
            let sc = u64::from(w0 & 0x3f3f_3f3f)
                | u64::from((w2 & 0x0f0f_0f0f) | ((w0 >> 2) & 0x3030_3030)) << 32;
            let mn = u64::from(w1 & 0x3f3f_3f3f)
                | u64::from(((w2 >> 4) & 0x0f0f_0f0f) | ((w1 >> 2) & 0x3030_3030)) << 32;
            let m = load_i16x8(mult);
            let scm = _mm256_mullo_epi16(
                _mm256_cvtepu8_epi16(_mm_set_epi64x(sc as i64, sc as i64)),
                _mm256_set_m128i(m, m),
            );
            let mut iacc = [_mm256_setzero_si256(); 2];
            for pair in 0..4 {
                let qs = bytes32(b, 16 + 32 * pair);
                let halves = [
                    _mm256_and_si256(qs, mask),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(qs), mask),
                ];
                for (h, w) in halves.into_iter().enumerate() {
                    let j = 2 * pair + h;
                    let qx: &[i8; QK] = q[j * QK..].first_chunk().expect("32");
                    let pairs = _mm256_maddubs_epi16(w, load256_i8(qx));
                    let scale = _mm256_shuffle_epi8(scm, load256(&PICK[j]));
                    iacc[h] = _mm256_add_epi32(iacc[h], _mm256_madd_epi16(pairs, scale));
                }
            }
            let p = _mm256_cvtepi32_ps(_mm256_add_epi32(iacc[0], iacc[1]));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sbd), p, acc);
            let mins = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_set_epi64x(0, mn as i64)));
            acc = _mm256_fnmadd_ps(
                _mm256_mul_ps(mins, _mm256_set1_ps(dmin)),
                load_f32x8(sums),
                acc,
            );
        }
        lanes_sum(acc)
    }

    /// Eight i16 as one 128-bit vector.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load_i16x8(v: &[i16; 8]) -> __m128i {
        // SAFETY: `v` is 16 readable bytes; the load is unaligned.
        unsafe { _mm_loadu_si128(v.as_ptr().cast()) }
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
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q6k(row: &[u8], a: &Act) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let (low4, top2) = (_mm256_set1_epi8(15), _mm256_set1_epi8(0x30));
        let thirty_two = _mm256_set1_epi8(32);
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
            let m = load_i16x8(mult);
            let eight = |i: usize| i64::from_le_bytes(b[i..i + 8].try_into().expect("8 scales"));
            // Per half of the superblock: its eight scales (one per 16
            // weights) times their blocks' multipliers, in both halves.
            let halves = [
                (eight(192), _mm_unpacklo_epi16(m, m)),
                (eight(200), _mm_unpackhi_epi16(m, m)),
            ];
            let mut iacc = [_mm256_setzero_si256(); 2];
            for (half, (sc, mm)) in halves.into_iter().enumerate() {
                let scm = _mm256_mullo_epi16(
                    _mm256_cvtepi8_epi16(_mm_set_epi64x(sc, sc)),
                    _mm256_set_m128i(mm, mm),
                );
                let (ql, qh) = (64 * half, 128 + 32 * half);
                let (lo_a, lo_b, hi) = (bytes32(b, ql), bytes32(b, ql + 32), bytes32(b, qh));
                let or_and = |x: __m256i, y: __m256i| {
                    _mm256_or_si256(_mm256_and_si256(x, low4), _mm256_and_si256(y, top2))
                };
                let groups = [
                    or_and(lo_a, _mm256_slli_epi16::<4>(hi)),
                    or_and(lo_b, _mm256_slli_epi16::<2>(hi)),
                    or_and(_mm256_srli_epi16::<4>(lo_a), hi),
                    or_and(_mm256_srli_epi16::<4>(lo_b), _mm256_srli_epi16::<2>(hi)),
                ];
                for (g, w) in groups.into_iter().enumerate() {
                    let blk = half * 4 + g;
                    let qx: &[i8; QK] = q[blk * QK..]
                        .first_chunk()
                        .expect("activations in blocks of 32");
                    let qx = load256_i8(qx);
                    let pairs = _mm256_sub_epi16(
                        _mm256_maddubs_epi16(w, qx),
                        _mm256_maddubs_epi16(thirty_two, qx),
                    );
                    let scale = _mm256_shuffle_epi8(scm, load256(&PICK[g]));
                    iacc[g % 2] = _mm256_add_epi32(iacc[g % 2], _mm256_madd_epi16(pairs, scale));
                }
            }
            let p = _mm256_add_ps(_mm256_cvtepi32_ps(iacc[0]), _mm256_cvtepi32_ps(iacc[1]));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sbd), p, acc);
        }
        lanes_sum(acc)
    }
}
