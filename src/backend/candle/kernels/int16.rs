//! Matmuls over many rows in integers: activations rounded to 16 bits with
//! one scale per 32 values, weights decoded from their GGML blocks to the
//! small integers they store (with one f32 scale, and for some types one
//! f32 offset, per 16 or 32 weights), integer products summed exactly in
//! i32 per block, then scaled and summed in f32.
//!
//! Why 16 bits: the reference's bounds (`compare_ref.py`: 99.5 % of
//! predictions, 0.02 nats) pass with 16-bit activations per 32 values on all
//! three models, and fail with llama.cpp's 8 bits (390 of 400 predictions on
//! SmolLM2); see PERFORMANCE.md. What it buys: AVX-512 VNNI's `vpdpwssd`
//! does 32 multiply-adds per instruction where the f32 FMA does 16.
//!
//! Layout. A *panel* is 16 consecutive weight rows: `ints` holds, for each
//! pair of columns `(2g, 2g + 1)`, the 16 rows' two integers side by side
//! (`[k / 2][16][2]` i16), so one 512-bit load feeds one `vpdpwssd` with a
//! token's pair of activations broadcast. `d` and `m` hold the 16 rows'
//! scale and offset for each scale block (`[k / unit][16]`).
//!
//! Arithmetic, for row `r`, token `t` and scale block `b` (activation block
//! `a = b·unit / 32`): `acc += f32(Σ w·x) · d[b][r] · sx[t][a]` (a product,
//! then a fused multiply-add), then, for types with an offset,
//! `acc += m[b][r] · ss[t][a]` with `ss = sx · Σ x`. The integer sums are
//! exact (bounds in [`Format`]) and every f32 operation has one order, so the
//! scalar twin here and the SIMD kernel give the same bits, and a token's
//! result does not depend on which other tokens share its forward.

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

pub use super::simd::tile::{Tile, ACT_BLOCK, PANEL, TILE};
use super::simd::{self, Kernels};

/// Bytes of rounded activations per pass over a slab's panels.
const PASS_BYTES: usize = 256 << 10;

/// The largest rounded activation.
const ACT_MAX: f32 = 32767.0;

/// Activations rounded to 16 bits, one scale per [`ACT_BLOCK`] values.
pub struct Acts16 {
    pub m: usize,
    pub k: usize,
    /// `x ≈ xi · sx`, in tiles of [`TILE`] tokens: tile `i`, pair of
    /// columns `g`, token `t` of the tile at `((i · k/2 + g) · TILE + t) · 2`
    /// (`[m / TILE][k / 2][TILE][2]`, the last tile padded with zeros), so
    /// that a tile's tokens' pairs for one `g` are side by side.
    pub xi: Vec<i16>,
    /// `[m][k / 32]`: the scale (`max |x| / 32767`; NaN when a value is not finite).
    pub sx: Vec<f32>,
    /// `[m][k / 32]`: `sx · Σ xi`.
    pub ss: Vec<f32>,
}

impl Acts16 {
    /// Rounds `x` (`[m][k]` row-major, `k` a multiple of 32): per block,
    /// `sx = max |x| / 32767` and `xi = round(x · 32767 / max |x|)`.
    pub fn quantize(x: &[f32], k: usize) -> Self {
        let mut acts = Self::EMPTY;
        acts.quantize_into(x, k);
        acts
    }

    /// No tokens, no buffers.
    pub const EMPTY: Acts16 = Acts16 {
        m: 0,
        k: ACT_BLOCK,
        xi: Vec::new(),
        sx: Vec::new(),
        ss: Vec::new(),
    };

    /// [`Acts16::quantize`] into this value's buffers (grown as needed):
    /// a matmul's activations are megabytes, and fresh pages for them on
    /// every matmul cost more than the rounding.
    pub fn quantize_into(&mut self, x: &[f32], k: usize) {
        assert!(k > 0 && k.is_multiple_of(ACT_BLOCK), "k = {k}");
        let m = x.len() / k;
        let tiles = m.div_ceil(TILE);
        let a = k / ACT_BLOCK;
        (self.m, self.k) = (m, k);
        let (xi, sx, ss) = (&mut self.xi, &mut self.sx, &mut self.ss);
        // Every value is written below, the last tile's padding included.
        xi.resize(tiles * TILE * k, 0);
        sx.resize(m * a, 0.0);
        ss.resize(m * a, 0.0);
        if m < tiles * TILE {
            let last = &mut xi[(tiles - 1) * TILE * k..];
            for g in last.chunks_exact_mut(2 * TILE) {
                g[2 * (m % TILE)..].fill(0);
            }
        }
        let set = simd::active();
        // One task a thread.
        let per = tiles.div_ceil(rayon::current_num_threads().max(1)).max(1);
        xi.par_chunks_mut(per * TILE * k)
            .zip(x.par_chunks(per * TILE * k))
            .zip(
                sx.par_chunks_mut(per * TILE * a)
                    .zip(ss.par_chunks_mut(per * TILE * a)),
            )
            .for_each(|((xi, x), (sx, ss))| {
                simd::vectorized(
                    set,
                    #[inline(always)]
                    || {
                        let mut q = [0i16; ACT_BLOCK];
                        for (t, ((x, sx), ss)) in x
                            .chunks_exact(k)
                            .zip(sx.chunks_exact_mut(a))
                            .zip(ss.chunks_exact_mut(a))
                            .enumerate()
                        {
                            let tile = &mut xi[t / TILE * TILE * k..(t / TILE + 1) * TILE * k];
                            for (b, x) in x.chunks_exact(ACT_BLOCK).enumerate() {
                                (sx[b], ss[b]) = round_block(x, &mut q);
                                for (p, pair) in q.chunks_exact(2).enumerate() {
                                    let at = ((b * ACT_BLOCK / 2 + p) * TILE + t % TILE) * 2;
                                    tile[at..at + 2].copy_from_slice(pair);
                                }
                            }
                        }
                    },
                )
            });
    }

    /// Runs `f` with `x` rounded, in this thread's reused buffers.
    pub fn with<R>(x: &[f32], k: usize, f: impl FnOnce(&Acts16) -> R) -> R {
        ACTS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut acts) => {
                acts.quantize_into(x, k);
                f(&acts)
            }
            Err(_) => f(&Acts16::quantize(x, k)),
        })
    }

    /// The pair of rounded activations of token `t` at columns `2g, 2g + 1`.
    pub fn pair(&self, t: usize, g: usize) -> [i16; 2] {
        let at = ((t / TILE * self.k / 2 + g) * TILE + t % TILE) * 2;
        [self.xi[at], self.xi[at + 1]]
    }
}

/// One block of [`Acts16::quantize`]: writes `q`, returns `(sx, sx · Σ q)`;
/// `(0, 0)` for an all-zero block, NaN for a block with a value that is
/// not finite (NaN then propagates into every product of the block, as it
/// would through the f32 GEMM). Written lane-wise so that it vectorizes.
#[inline(always)]
fn round_block(x: &[f32], q: &mut [i16]) -> (f32, f32) {
    let (mut amax, mut poison) = ([0f32; 8], [0f32; 8]);
    for c in x.chunks_exact(8) {
        for l in 0..8 {
            // A compare and select, not `f32::max` (whose NaN rule kept
            // the loop scalar: 15% of a prefill); NaN is caught by `poison`.
            let a = c[l].abs();
            amax[l] = if a > amax[l] { a } else { amax[l] };
            poison[l] += c[l] * 0.0;
        }
    }
    let amax = amax.iter().fold(0f32, |a, &v| if v > a { v } else { a });
    if poison.iter().any(|v| v.is_nan()) {
        q.fill(0);
        return (f32::NAN, f32::NAN);
    }
    if amax == 0.0 {
        q.fill(0);
        return (0.0, 0.0);
    }
    let inv = ACT_MAX / amax;
    let mut sum = [0i32; 8];
    for (qc, c) in q.chunks_exact_mut(8).zip(x.chunks_exact(8)) {
        for l in 0..8 {
            qc[l] = round_to_i16(c[l] * inv);
            sum[l] += i32::from(qc[l]);
        }
    }
    let step = amax / ACT_MAX;
    (step, step * sum.iter().sum::<i32>() as f32)
}

/// `v.round_ties_even()` as an integer, for finite `|v| ≤ 32767.5`: adding
/// 1.5 · 2²³ leaves a float whose unit in the last place is 1, so the
/// addition itself rounds `v` to the nearest integer, ties to even, and the
/// integer is the low bits. The same value as `round_ties_even() as i32`,
/// whose saturating cast (NaN to 0, clamps) kept the loop scalar: 15% of a
/// one-thread prefill.
#[inline(always)]
fn round_to_i16(v: f32) -> i16 {
    const MAGIC: f32 = 12_582_912.0;
    ((v + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32) as i16
}

/// How a GGML type's blocks decode to panel integers.
#[derive(Clone, Copy)]
pub struct Format {
    /// Weights per scale (16 or 32).
    pub unit: usize,
    /// Whether the type has an offset per scale block (`w = d·q + m`).
    pub min: bool,
    /// Weights and bytes per GGML block.
    block: (usize, usize),
    dtype: GgmlDType,
}

impl Format {
    /// The types with a decoder. Integer bounds that keep the i32 sums
    /// exact: |w| ≤ 128, |x| ≤ 32767, 32 products: 1.3e8 < 2³¹.
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        let f = |unit, min, block| Format {
            unit,
            min,
            block,
            dtype,
        };
        Some(match dtype {
            GgmlDType::Q4_0 => f(32, false, (32, 18)),
            GgmlDType::Q4_1 => f(32, true, (32, 20)),
            GgmlDType::Q5_0 => f(32, false, (32, 22)),
            GgmlDType::Q8_0 => f(32, false, (32, 34)),
            GgmlDType::Q4K => f(32, true, (256, 144)),
            GgmlDType::Q6K => f(16, false, (256, 210)),
            _ => return None,
        })
    }

    fn row_bytes(&self, k: usize) -> usize {
        k / self.block.0 * self.block.1
    }
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    simd::f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// `N` bytes of a block from `at` (the block's length is its type's).
#[inline(always)]
fn bytes<const N: usize>(b: &[u8], at: usize) -> &[u8; N] {
    b[at..].first_chunk().expect("a whole block")
}

/// A block's `N` integers.
#[inline(always)]
fn ints<const N: usize>(q: &mut [i16]) -> &mut [i16; N] {
    q.first_chunk_mut().expect("a whole block")
}

// Decoders: one GGML block into its integers, and per scale block its
// scale `d` and offset `m` (left alone for types without one). Fixed-size
// arrays, so that the loops compile without bounds checks and vectorize.

#[inline(always)]
fn q4_0(b: &[u8], q: &mut [i16], d: &mut [f32], _: &mut [f32]) {
    d[0] = f16_at(b, 0);
    let (q, v) = (ints::<32>(q), bytes::<16>(b, 2));
    for j in 0..16 {
        q[j] = i16::from(v[j] & 15) - 8;
        q[j + 16] = i16::from(v[j] >> 4) - 8;
    }
}

#[inline(always)]
fn q4_1(b: &[u8], q: &mut [i16], d: &mut [f32], m: &mut [f32]) {
    (d[0], m[0]) = (f16_at(b, 0), f16_at(b, 2));
    let (q, v) = (ints::<32>(q), bytes::<16>(b, 4));
    for j in 0..16 {
        q[j] = i16::from(v[j] & 15);
        q[j + 16] = i16::from(v[j] >> 4);
    }
}

#[inline(always)]
fn q5_0(b: &[u8], q: &mut [i16], d: &mut [f32], _: &mut [f32]) {
    d[0] = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let (q, v) = (ints::<32>(q), bytes::<16>(b, 6));
    for j in 0..16 {
        let fifth = |bit: usize| ((qh >> bit & 1) << 4) as i16;
        q[j] = (i16::from(v[j] & 15) | fifth(j)) - 16;
        q[j + 16] = (i16::from(v[j] >> 4) | fifth(j + 16)) - 16;
    }
}

#[inline(always)]
fn q8_0(b: &[u8], q: &mut [i16], d: &mut [f32], _: &mut [f32]) {
    d[0] = f16_at(b, 0);
    let (q, v) = (ints::<32>(q), bytes::<32>(b, 2));
    for j in 0..32 {
        q[j] = i16::from(v[j] as i8);
    }
}

/// Q4_K: weight `(d·sc)·q − dmin·mn` per sub-block of 32 (see `dequant`).
#[inline(always)]
fn q4k(b: &[u8], q: &mut [i16], d: &mut [f32], m: &mut [f32]) {
    let (sd, smin) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..8 {
        let (s, mn) = super::dequant::q4k_scale_min(&b[4..16], j);
        d[j] = sd * f32::from(s);
        m[j] = -(smin * f32::from(mn));
    }
    let (q, v) = (ints::<256>(q), bytes::<128>(b, 16));
    for pair in 0..4 {
        for l in 0..32 {
            let x = v[32 * pair + l];
            q[64 * pair + l] = i16::from(x & 0xF);
            q[64 * pair + 32 + l] = i16::from(x >> 4);
        }
    }
}

/// Q6_K: weight `(d·sc)·(q − 32)` per sub-block of 16 (see `dequant`).
#[inline(always)]
fn q6k(b: &[u8], q: &mut [i16], d: &mut [f32], _: &mut [f32]) {
    let b = bytes::<210>(b, 0);
    let sd = f16_at(b, 208);
    for (i, d) in d.iter_mut().enumerate().take(16) {
        *d = sd * f32::from(b[192 + i] as i8);
    }
    let q = ints::<256>(q);
    for h in 0..2 {
        for g in 0..4 {
            for l in 0..32 {
                let low = b[64 * h + 32 * (g % 2) + l];
                let nib = if g < 2 { low & 0xF } else { low >> 4 };
                let top = (b[128 + 32 * h + l] >> (2 * g)) & 3;
                q[128 * h + 32 * g + l] = i16::from(nib | top << 4) - 32;
            }
        }
    }
}

/// Rows of a weight decoded into panels (the last one padded with zero
/// rows).
#[derive(Default)]
pub struct Panels {
    pub k: usize,
    pub count: usize,
    /// `[count][k / 2][16][2]`.
    pub ints: Vec<i16>,
    /// `[count][k / unit][16]`.
    pub d: Vec<f32>,
    /// Like `d`, or empty when the type has no offset.
    pub m: Vec<f32>,
}

impl Panels {
    /// Decodes `rows` rows of `fmt` from `data` (exactly those rows' bytes),
    /// the panels split across rayon's threads when `parallel`.
    pub fn decode(&mut self, fmt: Format, data: &[u8], k: usize, parallel: bool) {
        let row_bytes = fmt.row_bytes(k);
        let rows = data.len() / row_bytes;
        let scales = k / fmt.unit * PANEL;
        self.k = k;
        self.count = rows.div_ceil(PANEL);
        // Every value is written below (padding rows included), so a buffer
        // that is long enough is not cleared first (`resize` only writes
        // the values it adds).
        self.ints.resize(self.count * k * PANEL, 0);
        self.d.resize(self.count * scales, 0.0);
        let ml = if fmt.min { self.d.len() } else { 0 };
        self.m.resize(ml, 0.0);
        let set = simd::active();
        let job = |(part, data): (PanelsMut, &[u8])| {
            ROWS.with(|rows| {
                let mut fresh = Vec::new();
                let mut held = rows.try_borrow_mut();
                let rows = match held.as_deref_mut() {
                    Ok(r) => r,
                    Err(_) => &mut fresh,
                };
                simd::vectorized(
                    set,
                    #[inline(always)]
                    || decode_panels(set, fmt, data, k, part, rows),
                )
            })
        };
        let per = if parallel {
            self.count
                .div_ceil(rayon::current_num_threads().max(1))
                .max(1)
        } else {
            self.count.max(1)
        };
        let m_chunk = if fmt.min { per * scales } else { 0 };
        let ms: Vec<&mut [f32]> = if fmt.min {
            self.m.chunks_mut(m_chunk).collect()
        } else {
            (0..self.count.div_ceil(per)).map(|_| &mut [][..]).collect()
        };
        let parts: Vec<_> = self
            .ints
            .chunks_mut(per * k * PANEL)
            .zip(self.d.chunks_mut(per * scales))
            .zip(ms)
            .map(|((ints, d), m)| PanelsMut { ints, d, m })
            .zip(data.chunks(per * PANEL * row_bytes))
            .collect();
        if parallel && parts.len() > 1 {
            parts.into_par_iter().for_each(job);
        } else {
            parts.into_iter().for_each(job);
        }
    }

    /// Panel `p`'s parts, as [`Tile`] takes them.
    fn panel(&self, p: usize) -> (&[i16], &[f32], &[f32]) {
        let k = self.k;
        let ds = self.d.len() / self.count.max(1);
        let m = if self.m.is_empty() {
            &self.m[..]
        } else {
            &self.m[p * ds..(p + 1) * ds]
        };
        (
            &self.ints[p * k * PANEL..(p + 1) * k * PANEL],
            &self.d[p * ds..(p + 1) * ds],
            m,
        )
    }
}

/// The portable kernel, and the twin the SIMD kernel is tested against.
pub fn tile_scalar(t: &Tile, out: &mut [f32]) {
    assert!(t.valid(out.len()));
    let (k, unit) = (t.k, t.unit);
    let acts = k / ACT_BLOCK;
    for tt in 0..t.tokens {
        let xi = &t.xi[tt / TILE * TILE * k..(tt / TILE + 1) * TILE * k];
        let x = |g: usize, h: usize| i32::from(xi[(g * TILE + tt % TILE) * 2 + h]);
        let mut acc = [0f32; PANEL];
        for b in 0..k / unit {
            let a = b * unit / ACT_BLOCK;
            let (sx, ss) = (t.sx[tt * acts + a], t.ss[tt * acts + a]);
            for (r, acc) in acc.iter_mut().enumerate() {
                let mut sum = 0i32;
                for g in b * unit / 2..(b + 1) * unit / 2 {
                    let w = &t.ints[g * 2 * PANEL + 2 * r..];
                    sum += i32::from(w[0]) * x(g, 0) + i32::from(w[1]) * x(g, 1);
                }
                let f = sum as f32 * t.d[b * PANEL + r];
                *acc = f.mul_add(sx, *acc);
                if !t.m.is_empty() {
                    *acc = t.m[b * PANEL + r].mul_add(ss, *acc);
                }
            }
        }
        let at = tt * t.stride + t.col;
        out[at..at + t.valid].copy_from_slice(&acc[..t.valid]);
    }
}

/// Whether `set` multiplies many-row matmuls over `dtype` in integers.
pub fn applies(set: Kernels, dtype: GgmlDType) -> bool {
    set == Kernels::Avx512 && Format::of(dtype).is_some()
}

/// Some whole panels' parts, as [`Panels`] holds them.
struct PanelsMut<'a> {
    ints: &'a mut [i16],
    d: &'a mut [f32],
    m: &'a mut [f32],
}

/// One panel's scales and offsets.
struct Scales<'a> {
    d: &'a mut [f32],
    m: &'a mut [f32],
}

/// Decodes whole panels: `data` holds their rows (the last panel's may
/// be fewer than 16; its other rows are written as zeros). Each panel's
/// rows are decoded in row order into `rows` (`[16][k]`), then turned into
/// the pair layout by [`transpose_pairs`].
// The closures are not redundant: a function item passed as `impl Fn` is
// called through a shim that is not inlined (see `dequant::rows_into`).
#[allow(clippy::redundant_closure)]
#[inline(always)]
fn decode_panels(
    set: Kernels,
    fmt: Format,
    data: &[u8],
    k: usize,
    PanelsMut { ints, d, m }: PanelsMut,
    rows: &mut Vec<i16>,
) {
    let row_bytes = fmt.row_bytes(k);
    let scales = k / fmt.unit;
    rows.resize(PANEL * k, 0);
    for (p, ((ints, d), data)) in ints
        .chunks_exact_mut(k * PANEL)
        .zip(d.chunks_exact_mut(scales * PANEL))
        .zip(data.chunks(PANEL * row_bytes))
        .enumerate()
    {
        let m = if fmt.min {
            &mut m[p * scales * PANEL..(p + 1) * scales * PANEL]
        } else {
            &mut []
        };
        let args = (fmt, data, k, &mut rows[..], Scales { d, m });
        match fmt.dtype {
            GgmlDType::Q4_0 => rows_with(
                #[inline(always)]
                |b, q, d, m| q4_0(b, q, d, m),
                args,
            ),
            GgmlDType::Q4_1 => rows_with(
                #[inline(always)]
                |b, q, d, m| q4_1(b, q, d, m),
                args,
            ),
            GgmlDType::Q5_0 => rows_with(
                #[inline(always)]
                |b, q, d, m| q5_0(b, q, d, m),
                args,
            ),
            GgmlDType::Q8_0 => rows_with(
                #[inline(always)]
                |b, q, d, m| q8_0(b, q, d, m),
                args,
            ),
            GgmlDType::Q4K => rows_with(
                #[inline(always)]
                |b, q, d, m| q4k(b, q, d, m),
                args,
            ),
            _ => rows_with(
                #[inline(always)]
                |b, q, d, m| q6k(b, q, d, m),
                args,
            ),
        }
        if !simd::avx512::transpose_pairs(set, rows, ints) {
            transpose_pairs(rows, ints);
        }
    }
}

/// One panel's rows (fewer than 16 in `data`: the rest zero) into `rows`
/// (`[16][k]`), scales and offsets into `d`/`m` (`[k / unit][16]`).
#[inline(always)]
fn rows_with(
    block: impl Fn(&[u8], &mut [i16], &mut [f32], &mut [f32]),
    (fmt, data, k, rows, Scales { d, m }): (Format, &[u8], usize, &mut [i16], Scales),
) {
    let row_bytes = fmt.row_bytes(k);
    let (bw, bb) = fmt.block;
    let per_s = bw / fmt.unit;
    let (mut dq, mut mq) = ([0f32; 16], [0f32; 16]);
    for (lane, q) in rows.chunks_exact_mut(k).enumerate() {
        let Some(row) = data.get(lane * row_bytes..(lane + 1) * row_bytes) else {
            // A padding row: zero weights, zero scales.
            q.fill(0);
            d.iter_mut()
                .skip(lane)
                .step_by(PANEL)
                .for_each(|s| *s = 0.0);
            m.iter_mut()
                .skip(lane)
                .step_by(PANEL)
                .for_each(|s| *s = 0.0);
            continue;
        };
        for (i, (blk, q)) in row.chunks_exact(bb).zip(q.chunks_exact_mut(bw)).enumerate() {
            block(blk, q, &mut dq[..per_s], &mut mq[..per_s]);
            for s in 0..per_s {
                d[(i * per_s + s) * PANEL + lane] = dq[s];
                if fmt.min {
                    m[(i * per_s + s) * PANEL + lane] = mq[s];
                }
            }
        }
    }
}

/// `[16][k]` rows to the panel's pair layout `[k / 2][16][2]`: a transpose
/// of a 16 × k/2 matrix of column pairs. The portable twin of
/// `simd::avx512::transpose_pairs`.
pub fn transpose_pairs(rows: &[i16], ints: &mut [i16]) {
    let k = rows.len() / PANEL;
    for (g, dst) in ints.chunks_exact_mut(2 * PANEL).enumerate() {
        for (r, pair) in dst.chunks_exact_mut(2).enumerate() {
            pair.copy_from_slice(&rows[r * k + 2 * g..r * k + 2 * g + 2]);
        }
    }
}

thread_local! {
    /// [`Acts16::with`]'s buffers.
    static ACTS: std::cell::RefCell<Acts16> = const { std::cell::RefCell::new(Acts16::EMPTY) };
    /// A panel's rows in row order, before [`transpose_pairs`].
    static ROWS: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The decoded slab of [`matmul`], kept by the thread that runs the
    /// forward: its pages are faulted in once, not per matmul.
    static PANELS: std::cell::RefCell<Panels> = std::cell::RefCell::new(Panels::default());
}

/// `out = x · Wᵀ` (`[m][rows]`) for the `rows` rows of `dtype` in `data`
/// and the activations `acts` (`None`: no decoder for `dtype`). Slabs of
/// at most `slab_elems` weights are decoded (rayon's threads each take a
/// share of the panels), then multiplied (each thread takes a share of the
/// tokens, so each writes its own rows of `out`).
pub fn matmul(
    set: Kernels,
    acts: &Acts16,
    dtype: GgmlDType,
    data: &[u8],
    slab_elems: usize,
) -> Option<Vec<f32>> {
    let mut out = Vec::new();
    matmul_into(set, acts, dtype, data, slab_elems, &mut out).then_some(out)
}

/// [`matmul`] into `out` (resized to `m · rows`; every value written), so
/// that a caller multiplying slab after slab reuses one buffer. `false`
/// (nothing written): no decoder for `dtype`.
pub fn matmul_into(
    set: Kernels,
    acts: &Acts16,
    dtype: GgmlDType,
    data: &[u8],
    slab_elems: usize,
    out: &mut Vec<f32>,
) -> bool {
    let Some(fmt) = Format::of(dtype) else {
        return false;
    };
    let (m, k) = (acts.m, acts.k);
    let row_bytes = fmt.row_bytes(k);
    let n = data.len() / row_bytes;
    out.resize(m * n, 0.0);
    if m == 0 || n == 0 {
        return true;
    }
    let slab = (slab_elems / k / PANEL).max(1) * PANEL;
    // Each thread's tokens: whole tiles.
    let per = m
        .div_ceil(TILE)
        .div_ceil(rayon::current_num_threads().max(1))
        * TILE;
    let a = k / ACT_BLOCK;
    let mut go = |panels: &mut Panels| {
        for r0 in (0..n).step_by(slab) {
            let rows = slab.min(n - r0);
            panels.decode(fmt, &data[r0 * row_bytes..(r0 + rows) * row_bytes], k, true);
            let panels = &*panels;
            out.par_chunks_mut(per * n)
                .enumerate()
                .for_each(|(i, out)| {
                    let (t0, t1) = (i * per, (i * per + per).min(m));
                    // Tokens per pass over the panels: their activations
                    // (2 bytes a value) stay within ~256 KiB, in the core's
                    // second-level cache while the panels stream past.
                    let pass = ((PASS_BYTES / 2 / k) / TILE).max(1) * TILE;
                    for (c0, c1) in (t0..t1).step_by(pass).map(|c| (c, (c + pass).min(t1))) {
                        for p in 0..panels.count {
                            let (ints, d, mm) = panels.panel(p);
                            let tile = Tile {
                                k,
                                unit: fmt.unit,
                                ints,
                                d,
                                m: mm,
                                xi: &acts.xi[c0 * k..c1.div_ceil(TILE) * TILE * k],
                                sx: &acts.sx[c0 * a..c1 * a],
                                ss: &acts.ss[c0 * a..c1 * a],
                                tokens: c1 - c0,
                                stride: n,
                                col: r0 + p * PANEL,
                                valid: PANEL.min(rows - p * PANEL),
                            };
                            let out = &mut out[(c0 - t0) * n..];
                            if !simd::avx512::tile(set, &tile, out) {
                                tile_scalar(&tile, out);
                            }
                        }
                    }
                });
        }
    };
    PANELS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut p) => go(&mut p),
        Err(_) => go(&mut Panels::default()),
    });
    true
}

#[cfg(test)]
mod tests;
