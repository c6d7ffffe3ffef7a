//! Few-row products `x [m, k] · Wᵀ` read straight from the GGML blocks of a
//! quantized `W [n, k]`, for decoding and other forwards of fewer than
//! [`super::streamed::STREAM_MIN_ROWS`] rows.
//!
//! With the AVX2 kernel set ([`super::simd`], chosen at run time), the
//! activations are quantized to 8 bits per block of 32 and multiplied with
//! the weights' blocks (Q4_1, Q5_0, Q8_0, Q4_K, Q6_K) by AVX2 integer
//! instructions ([`super::simd::avx2`]), as llama.cpp does; a dot product
//! moves by at most half a quantization step of the activations (the tests
//! assert that bound). For Q4_K and Q6_K the activations' steps are powers
//! of two apart within each superblock of 256
//! ([`quantize_activations_k`]), so a superblock sums in i32 with integer
//! scales and converts to f32 once, as llama.cpp's `Q8_K` kernels do. What
//! this buys is measured in PERFORMANCE.md.
//!
//! With the scalar set, portable loops with f32 activations (equal to
//! dequantize-then-matmul up to summation order) serve Q4_1 and Q5_0, and
//! candle's kernels the rest.
//!
//! Scoring rarely comes here: its packed forwards have hundreds of rows and
//! take the dequantize-then-GEMM path; the head is always dequantized.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::simd::{f16_at, Act, Kernels, RowDot, QK};

/// Output rows per rayon task.
const ROWS_PER_TASK: usize = 32;

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

/// The block layout of a supported type under `set`: weights and bytes per
/// block, its [`RowDot`], and whether that reads 8-bit activations
/// ([`Act::q`]; else only `x` and `sums`).
fn kernel(set: Kernels, dtype: GgmlDType) -> Option<(usize, usize, RowDot, bool)> {
    if let Some((w, b, dot)) = super::simd::avx2::row_dot(set, dtype) {
        return Some((w, b, dot, true));
    }
    match dtype {
        GgmlDType::Q4_1 => Some((QK, 20, portable::dot_q4_1, false)),
        GgmlDType::Q5_0 => Some((QK, 22, portable::dot_q5_0, false)),
        _ => None,
    }
}

/// `x · Wᵀ` as `[m, n]`, or `None` when `W`'s type has no kernel here.
pub fn matmul(x: &Tensor, q: &QTensor) -> Result<Option<Tensor>> {
    matmul_with(super::simd::active(), x, q)
}

/// [`matmul`] with the kernel set `set` (tests compare the sets).
pub fn matmul_with(set: Kernels, x: &Tensor, q: &QTensor) -> Result<Option<Tensor>> {
    let Some((block_weights, block_bytes, dot, quantized)) = kernel(set, q.dtype()) else {
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
    let (xq, xd, xm, xs_d) = if quantized && kquant {
        quantize_activations_k(&xs)
    } else if quantized {
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

/// The block loops of the scalar set: f32 activations, 16 independent
/// lanes per block in fixed-size arrays for the auto-vectorizer. Plain
/// multiplies and adds, not `mul_add`: on the baseline target (no FMA)
/// that is a call into the C library per term.
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
                p[j] = f32::from(qs[j] & 15) * lo[j] + f32::from(qs[j] >> 4) * hi[j];
            }
            for j in 0..16 {
                acc[j] += d * p[j];
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
                p[j] = q0 as f32 * lo[j] + q1 as f32 * hi[j];
            }
            // Σ (q - 16) x = Σ q x - 16 Σ x: -Σ x in each of the 16 lanes.
            let shift = -s;
            for j in 0..16 {
                acc[j] += d * (p[j] + shift);
            }
        }
        acc.iter().sum::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How far a row dot may be from `Σ w x` in f32: with 8-bit
    /// activations each `x_j` is replaced by `d·round(x_j / d)`, at most
    /// `d/2` away (`d` its block's scale), so the dot moves by at most
    /// `Σ_blocks d/2 · Σ_j |w_j|`; plus f32 rounding, `1e-5 · Σ |w x|`.
    fn allowed(w: &[f32], x: &[f32], superblocks: bool, quantized: bool) -> f32 {
        let f32_slack = 1e-5 * w.iter().zip(x).map(|(a, b)| (a * b).abs()).sum::<f32>() + 1e-6;
        if !quantized {
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

    /// Every kernel set this CPU supports, against dequantize-then-matmul:
    /// within f32 rounding for f32 activations, plus half an activation
    /// step per block for 8-bit ones.
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
        for set in Kernels::supported() {
            for (dtype, k) in cases {
                let Some((block_weights, _, _, quantized)) = kernel(set, dtype) else {
                    // Only these go without AVX2: candle's kernel.
                    assert!(
                        set == Kernels::Scalar
                            && matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K | GgmlDType::Q8_0),
                        "{set:?} {dtype:?}"
                    );
                    continue;
                };
                assert_eq!(quantized, set.has_avx2());
                assert_eq!(k % block_weights, 0);
                let w: Vec<f32> = (0..n * k)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 37.0 * (1.0 + (i / k % 7) as f32))
                    .collect();
                let w = Tensor::from_vec(w, (n, k), &Device::Cpu).expect("w");
                let q = QTensor::quantize(&w, dtype).expect("quantize");
                let dq = q.dequantize(&Device::Cpu).expect("dq");
                let dq_rows = dq.to_vec2::<f32>().expect("rows");
                for m in [1usize, 3, 15] {
                    // Blocks of 32 at magnitudes 1 to 1/256, so that the
                    // k-quant activations' steps take every power of two,
                    // and the cap.
                    let x: Vec<f32> = (0..m * k)
                        .map(|i| {
                            ((i * 13 % 29) as f32 - 14.0) / 7.0
                                * (1.0 + (i % 5) as f32)
                                * 0.5f32.powi((i / QK % 9) as i32)
                        })
                        .collect();
                    let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).expect("x");
                    let want = xt.matmul(&dq.t().expect("t")).expect("mm");
                    let got = matmul_with(set, &xt, &q).expect("gemv").expect("supported");
                    assert_eq!(got.dims(), want.dims());
                    let (got, want) = (
                        got.to_vec2::<f32>().expect("v"),
                        want.to_vec2::<f32>().expect("v"),
                    );
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let xi = &x[i * k..(i + 1) * k];
                        for (j, (a, b)) in g.iter().zip(w).enumerate() {
                            let tol = allowed(&dq_rows[j], xi, block_weights == 256, quantized);
                            assert!(
                                (a - b).abs() <= tol,
                                "{set:?} {dtype:?} m={m}: {a} vs {b} (±{tol})"
                            );
                        }
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

    /// Edge blocks on every set against the scalar loops (f32
    /// activations): all-zero blocks, extreme scales (weights near f16's
    /// largest and smallest normal steps), activations of one huge value
    /// among tiny ones, and an odd number of blocks (the AVX2 loops take
    /// two at a time).
    #[test]
    fn edge_blocks_agree_with_the_scalar_loops_on_every_set() {
        let k = 96usize; // three blocks: one left over after the pairs
        let rows: Vec<Vec<f32>> = vec![
            vec![0.0; k],
            (0..k)
                .map(|i| if i % 2 == 0 { 6.0e4 } else { -6.0e4 })
                .collect(),
            (0..k).map(|i| ((i % 7) as f32 - 3.0) * 1e-3).collect(),
            (0..k)
                .map(|i| if i < QK { 0.0 } else { (i % 5) as f32 - 2.0 })
                .collect(),
        ];
        let xs: Vec<Vec<f32>> = vec![
            vec![0.0; k],
            (0..k)
                .map(|i| if i == 40 { 1e4 } else { 1e-4 * (i % 3) as f32 })
                .collect(),
            (0..k).map(|i| ((i * 11 % 17) as f32 - 8.0) / 3.0).collect(),
        ];
        let flat: Vec<f32> = rows.concat();
        let wt = Tensor::from_vec(flat, (rows.len(), k), &Device::Cpu).expect("w");
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0] {
            let qt = QTensor::quantize(&wt, dtype).expect("quantize");
            let dq = qt
                .dequantize(&Device::Cpu)
                .expect("dq")
                .to_vec2::<f32>()
                .expect("rows");
            let (_, block_bytes, slow, _) = kernel(Kernels::Scalar, dtype).expect("scalar loop");
            let data = qt.data().expect("data");
            for set in Kernels::supported() {
                let (_, _, fast, quantized) = kernel(set, dtype).expect("supported");
                for x in &xs {
                    let sums: Vec<f32> = x.chunks_exact(QK).map(|b| b.iter().sum()).collect();
                    let (q, d) = quantize_activations(x);
                    let act = Act {
                        x,
                        sums: &sums,
                        q: &q,
                        d: &d,
                        mult: &[],
                        sbd: &[],
                    };
                    for (row, wr) in data.chunks_exact(k / QK * block_bytes).zip(&dq) {
                        let (a, b) = (fast(row, &act), slow(row, &act));
                        let tol = allowed(wr, x, false, quantized);
                        assert!(
                            a.is_finite() && (a - b).abs() <= tol,
                            "{set:?} {dtype:?}: {a} vs {b} (±{tol})"
                        );
                        if x.iter().all(|&v| v == 0.0) || wr.iter().all(|&v| v == 0.0) {
                            assert_eq!(a, 0.0, "{set:?} {dtype:?}: a zero row or input");
                        }
                    }
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
