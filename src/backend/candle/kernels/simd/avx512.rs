//! The 16-bit integer matmul tile in AVX-512 VNNI: one panel of 16 weight
//! rows (a 512-bit register of i16 pairs per pair of columns) against up
//! to 8 tokens, whose pairs of activations are broadcast; `vpdpwssd`
//! multiplies the pairs and adds both products to each row's i32 sum, 32
//! multiply-adds an instruction. Per scale block the sums become f32 as
//! `super::super::int16` describes, in the same order as its scalar twin
//! (`tile_scalar`), so both give the same bits.

use super::tile::{Tile, PANEL};
use super::Kernels;

/// Runs the panel on AVX-512 VNNI when `set` is [`Kernels::Avx512`] and
/// this CPU has it, writing `out[t · stride + col + r]`; `false` (nothing
/// written) otherwise, or when the tile's slices or `out` do not have the
/// lengths the kernel reads and writes.
pub fn tile(set: Kernels, t: &Tile, out: &mut [f32]) -> bool {
    if set != Kernels::Avx512 || !Kernels::Avx512.available() || !t.valid(out.len()) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        imp::tile(t, out);
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = out;
        false
    }
}

/// [`super::super::int16::transpose_pairs`] on AVX-512 (16 × 16 blocks of
/// column pairs transposed in registers) when `set` is [`Kernels::Avx512`]
/// and this CPU has it; `false` (nothing written) otherwise, or when the
/// lengths do not fit (`rows` 16 · k values, `ints` as many, k a multiple
/// of 32).
pub fn transpose_pairs(set: Kernels, rows: &[i16], ints: &mut [i16]) -> bool {
    let k = rows.len() / PANEL;
    if set != Kernels::Avx512
        || !Kernels::Avx512.available()
        || k == 0
        || !k.is_multiple_of(32)
        || rows.len() != k * PANEL
        || ints.len() != rows.len()
    {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: AVX-512F was detected just above; the lengths
        // `transpose` reads and writes were checked just above.
        unsafe { imp::transpose(rows, ints, k) };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::super::tile::{Tile, ACT_BLOCK, PANEL, TILE};
    use std::arch::x86_64::*;

    /// `rows` (`[16][k]` i16, i.e. `[16][k/2]` u32 pairs) to `ints`
    /// (`[k/2][16]` pairs), 16 columns of pairs at a time: 32-bit then
    /// 64-bit interleaves within 128-bit lanes, then two shuffles of lanes.
    /// Requires `rows.len() == ints.len() == 16·k`, k a multiple of 32.
    #[target_feature(enable = "avx512f")]
    pub(super) fn transpose(rows: &[i16], ints: &mut [i16], k: usize) {
        let pairs = k / 2;
        let (src, dst) = (rows.as_ptr().cast::<i32>(), ints.as_mut_ptr().cast::<i32>());
        for g0 in (0..pairs).step_by(16) {
            // SAFETY: row r's pairs g0..g0 + 16 lie within `rows`
            // (r < 16, g0 + 16 ≤ k/2: k is a multiple of 32).
            let r: [__m512i; 16] = std::array::from_fn(|i| unsafe {
                _mm512_loadu_si512(src.add(i * pairs + g0).cast())
            });
            let a: [__m512i; 16] = std::array::from_fn(|i| {
                let (x, y) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    _mm512_unpacklo_epi32(x, y)
                } else {
                    _mm512_unpackhi_epi32(x, y)
                }
            });
            // b[4i + c], lane L: rows 4i..4i+3 of column 4L + c.
            let b: [__m512i; 16] = std::array::from_fn(|j| {
                let (i, c) = (j / 4, j % 4);
                let (x, y) = (a[4 * i + c / 2], a[4 * i + c / 2 + 2]);
                if c % 2 == 0 {
                    _mm512_unpacklo_epi64(x, y)
                } else {
                    _mm512_unpackhi_epi64(x, y)
                }
            });
            for c in 0..4 {
                let (b0, b1, b2, b3) = (b[c], b[4 + c], b[8 + c], b[12 + c]);
                let t0 = _mm512_shuffle_i32x4::<0x44>(b0, b1);
                let t1 = _mm512_shuffle_i32x4::<0xEE>(b0, b1);
                let t2 = _mm512_shuffle_i32x4::<0x44>(b2, b3);
                let t3 = _mm512_shuffle_i32x4::<0xEE>(b2, b3);
                let out = [
                    _mm512_shuffle_i32x4::<0x88>(t0, t2),
                    _mm512_shuffle_i32x4::<0xDD>(t0, t2),
                    _mm512_shuffle_i32x4::<0x88>(t1, t3),
                    _mm512_shuffle_i32x4::<0xDD>(t1, t3),
                ];
                for (l, v) in out.into_iter().enumerate() {
                    // SAFETY: column g0 + 4l + c < k/2; its 16 pairs lie
                    // within `ints` (k/2 · 16 pairs).
                    unsafe { _mm512_storeu_si512(dst.add((g0 + 4 * l + c) * PANEL).cast(), v) };
                }
            }
        }
    }

    /// Dispatches on the weight type's shape; tiles of [`TILE`] tokens, the
    /// last one shorter.
    pub(super) fn tile(t: &Tile, out: &mut [f32]) {
        assert!(t.valid(out.len()));
        let mut t0 = 0;
        while t0 < t.tokens {
            let n = TILE.min(t.tokens - t0);
            macro_rules! by_tokens {
                ($unit:literal, $min:literal) => {
                    match n {
                        1 => body::<1, $unit, $min>(t, t0, out),
                        2 => body::<2, $unit, $min>(t, t0, out),
                        3 => body::<3, $unit, $min>(t, t0, out),
                        4 => body::<4, $unit, $min>(t, t0, out),
                        5 => body::<5, $unit, $min>(t, t0, out),
                        6 => body::<6, $unit, $min>(t, t0, out),
                        7 => body::<7, $unit, $min>(t, t0, out),
                        8 => body::<8, $unit, $min>(t, t0, out),
                        9 => body::<9, $unit, $min>(t, t0, out),
                        10 => body::<10, $unit, $min>(t, t0, out),
                        11 => body::<11, $unit, $min>(t, t0, out),
                        _ => body::<12, $unit, $min>(t, t0, out),
                    }
                };
            }
            match (t.unit, t.m.is_empty()) {
                (32, false) => by_tokens!(32, true),
                (32, true) => by_tokens!(32, false),
                _ => by_tokens!(16, false),
            }
            t0 += n;
        }
    }

    #[inline(always)]
    fn body<const T: usize, const UNIT: usize, const MIN: bool>(
        t: &Tile,
        t0: usize,
        out: &mut [f32],
    ) {
        // `tile` asserted `t.valid(out.len())`; the tokens of this call:
        assert!(t0 + T <= t.tokens && t.unit == UNIT && MIN != t.m.is_empty());
        // SAFETY: `super::tile` hands out this path only after detecting
        // AVX-512F/BW/VNNI, AVX2 and FMA on this CPU; the lengths `kernel`
        // reads and writes were asserted in `tile` and just above.
        unsafe { kernel::<T, UNIT, MIN>(t, t0, out) }
    }

    /// Tokens `t0..t0 + T`. Reads `ints[0..k·16]` (a 512-bit load per pair
    /// of columns `g < k/2`, at `g·32`), `xi[(t0 + tt)·k + 2g..+2]`,
    /// `d`/`m[b·16..+16]` for `b < k/UNIT`, `sx`/`ss[(t0 + tt)·k/32 + a]`;
    /// writes `out[(t0 + tt)·stride + col..+valid]`: all inside the
    /// lengths [`Tile::valid`] checks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    fn kernel<const T: usize, const UNIT: usize, const MIN: bool>(
        t: &Tile,
        t0: usize,
        out: &mut [f32],
    ) {
        let k = t.k;
        let acts = k / ACT_BLOCK;
        let wp = t.ints.as_ptr();
        // SAFETY: t0 is a multiple of TILE below `tokens`, so its tile
        // (TILE · k values) lies within `xi`.
        let xp = unsafe { t.xi.as_ptr().add(t0 * k) };
        // Every loop over the tile's tokens is unrolled by `each_token!`
        // (constant indices, the tokens past T cut at compile time), so
        // the accumulators stay in registers: a rolled loop over an array
        // of them kept them on the stack.
        macro_rules! each_token {
            (|$tt:ident| $body:block) => {
                each_token!(@ $tt $body 0 1 2 3 4 5 6 7 8 9 10 11)
            };
            (@ $tt:ident $body:block $($i:literal)*) => {
                $(
                    if $i < T {
                        #[allow(dead_code)]
                        const TT: usize = $i;
                        let $tt: usize = $i;
                        $body
                    }
                )*
            };
        }
        const { assert!(T <= TILE && TILE == 12) };
        let mut accf = [_mm512_setzero_ps(); TILE];
        for b in 0..k / UNIT {
            let mut acci = [_mm512_setzero_si512(); TILE];
            for j in 0..UNIT / 2 {
                let g = b * UNIT / 2 + j;
                // SAFETY: g < k/2, so the 32 i16 at g·32 lie within
                // `ints` (k·16 values).
                let w = unsafe { _mm512_loadu_si512(wp.add(g * 2 * PANEL).cast()) };
                // SAFETY: g < k/2: the tile's pairs for `g` (TILE of them)
                // lie within it.
                let xg = unsafe { xp.add(g * TILE * 2) };
                each_token!(|tt| {
                    // `acc + Σ pairs (w · x)` with token tt's pair for `g`
                    // broadcast: one `vpdpwssd` with a broadcast memory
                    // operand at a constant offset. Inline assembly because
                    // LLVM's machine combiner otherwise splits the intrinsic
                    // into `vpmaddwd` + `vpaddd` to shorten the accumulator's
                    // dependency chain: half the multiply-adds per
                    // instruction (measured: pp512 ~750 → ~900 t/s on
                    // SmolLM2 at one thread once it stopped).
                    // SAFETY: reads the 4 bytes of token tt's pair at
                    // `xg + 4·tt`, inside the tile (tt < TILE); AVX-512F and
                    // VNNI were detected before this function is reached.
                    unsafe {
                        std::arch::asm!(
                            "vpdpwssd {acc}, {w}, dword ptr [{x} + {off}]{{1to16}}",
                            acc = inout(zmm_reg) acci[tt],
                            w = in(zmm_reg) w,
                            x = in(reg) xg,
                            off = const TT * 4,
                            options(pure, readonly, nostack, preserves_flags),
                        );
                    }
                });
            }
            // SAFETY: b < k/UNIT, so the 16 f32 at b·16 lie within `d`
            // (k/UNIT·16 values), and within `m` (the same length) when MIN.
            let dv = unsafe { _mm512_loadu_ps(t.d.as_ptr().add(b * PANEL)) };
            let mv = if MIN {
                // SAFETY: as just above.
                unsafe { _mm512_loadu_ps(t.m.as_ptr().add(b * PANEL)) }
            } else {
                _mm512_setzero_ps()
            };
            let a = b * UNIT / ACT_BLOCK;
            each_token!(|tt| {
                let at = (t0 + tt) * acts + a;
                let f = _mm512_mul_ps(_mm512_cvtepi32_ps(acci[tt]), dv);
                accf[tt] = _mm512_fmadd_ps(f, _mm512_set1_ps(t.sx[at]), accf[tt]);
                if MIN {
                    accf[tt] = _mm512_fmadd_ps(mv, _mm512_set1_ps(t.ss[at]), accf[tt]);
                }
            });
        }
        let mask: __mmask16 = if t.valid == PANEL {
            !0
        } else {
            (1 << t.valid) - 1
        };
        each_token!(|tt| {
            // SAFETY: (t0 + tt)·stride + col + valid ≤ out.len() (checked
            // by `Tile::valid`); the lanes past `valid` are masked off, so
            // nothing past it is written.
            unsafe {
                let dst = out.as_mut_ptr().add((t0 + tt) * t.stride + t.col);
                _mm512_mask_storeu_ps(dst, mask, accf[tt]);
            }
        });
    }
}
