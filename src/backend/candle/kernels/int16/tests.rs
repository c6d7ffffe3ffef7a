use super::*;
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use super::super::dequant::OWN_TYPES as TYPES;

/// Deterministic weights with a spread of magnitudes, signs and, per row,
/// scales from 1e-3 to 1e3 (extreme f16 steps).
fn weights(n: usize, k: usize) -> Vec<f32> {
    (0..n * k)
        .map(|i| {
            let row = i / k;
            let v = ((i * 7919 % 1013) as f32 - 506.0) / 97.0;
            v * 10f32.powi(row as i32 % 7 - 3)
        })
        .collect()
}

fn quantized(n: usize, k: usize, dtype: GgmlDType) -> QTensor {
    let w = Tensor::from_vec(weights(n, k), (n, k), &Device::Cpu).expect("w");
    QTensor::quantize(&w, dtype).expect("quantize")
}

/// Activations: smooth values, one outlier, an all-zero block and tiny ones.
fn activations(m: usize, k: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 31 % 97) as f32 - 48.0) / 13.0)
        .collect();
    if m * k > 3 * 32 {
        x[5] = 3.0e4; // an outlier in the first block
        x[32..64].fill(0.0); // an all-zero block
        for v in &mut x[64..96] {
            *v *= 1e-6; // a block of tiny values
        }
    }
    x
}

#[test]
fn panels_hold_the_weights_exactly() {
    for dtype in TYPES {
        let k = if matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K) {
            512
        } else {
            96
        };
        let n = 21; // one full panel and a padded one
        let q = quantized(n, k, dtype);
        let mut want = vec![0f32; n * k];
        assert!(super::super::dequant::rows_into(
            dtype,
            &q.data().expect("b"),
            k,
            &mut want,
            false
        ));
        let fmt = Format::of(dtype).expect("format");
        let mut p = Panels::default();
        p.decode(fmt, &q.data().expect("bytes"), k, false);
        assert_eq!(p.count, 2);
        for r in 0..n {
            let (ints, d, m) = p.panel(r / PANEL);
            let lane = r % PANEL;
            for c in 0..k {
                let qv = ints[(c / 2) * 2 * PANEL + 2 * lane + c % 2];
                let s = (c / fmt.unit) * PANEL + lane;
                let mut w = f32::from(qv) * d[s];
                if fmt.min {
                    w += m[s];
                }
                assert_eq!(
                    w.to_bits(),
                    want[r * k + c].to_bits(),
                    "{dtype:?} row {r} col {c}"
                );
            }
        }
        // The padding rows are zero weights with zero scales.
        let (ints, d, _) = p.panel(1);
        for r in n % PANEL..PANEL {
            assert!((0..k).all(|c| ints[(c / 2) * 2 * PANEL + 2 * r + c % 2] == 0));
            assert!((0..k / fmt.unit).all(|b| d[b * PANEL + r] == 0.0));
        }
    }
}

#[test]
fn activations_round_to_16_bits_per_block() {
    let k = 64;
    let mut x = activations(2, k);
    x[100] = f32::NAN;
    let a = Acts16::quantize(&x, k);
    assert_eq!((a.m, a.k, a.sx.len()), (2, k, 4));
    let rows: Vec<i16> = (0..2)
        .flat_map(|t| {
            let a = &a;
            (0..k / 2).flat_map(move |g| a.pair(t, g))
        })
        .collect();
    for (blk, ((q, x), (&s, &ss))) in rows
        .chunks(32)
        .zip(x.chunks(32))
        .zip(a.sx.iter().zip(&a.ss))
        .enumerate()
    {
        if blk == 3 {
            assert!(s.is_nan() && ss.is_nan(), "a NaN poisons its block");
            continue;
        }
        if blk == 1 {
            assert_eq!((s, ss), (0.0, 0.0), "an all-zero block");
        }
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(q.iter().any(|v| v.unsigned_abs() == 32767) || amax == 0.0);
        for (&q, &v) in q.iter().zip(x) {
            assert!((f32::from(q) * s - v).abs() <= 0.5001 * s, "{q} {s} {v}");
        }
        let sum: i32 = q.iter().map(|&v| i32::from(v)).sum();
        assert_eq!(ss.to_bits(), (s * sum as f32).to_bits());
    }
    // Two tokens of one tile: the rest of it is zero padding.
    assert_eq!(a.xi.len(), TILE * k);
    assert!(a
        .xi
        .chunks(2 * TILE)
        .all(|g| g[4..].iter().all(|&v| v == 0)));
}

/// Buffers reused for fewer tokens hold exactly what fresh ones would
/// (the last tile's padding zeroed again).
#[test]
fn reused_buffers_round_like_fresh_ones() {
    let k = 64;
    let mut acts = Acts16::quantize(&activations(13, k), k);
    acts.quantize_into(&activations(2, k), k);
    let fresh = Acts16::quantize(&activations(2, k), k);
    assert_eq!((acts.m, acts.k), (fresh.m, fresh.k));
    assert_eq!(acts.xi, fresh.xi);
    assert_eq!(acts.sx, fresh.sx);
    assert_eq!(acts.ss, fresh.ss);
}

/// Every SIMD tile this CPU can run equals the scalar twin bit for bit:
/// every type, every token count from 1 to 8, edge-case activations.
#[test]
fn the_simd_tile_equals_the_scalar_twin_bit_for_bit() {
    if !Kernels::Avx512.available() {
        eprintln!("no AVX-512 VNNI on this CPU: only the scalar tile runs");
        return;
    }
    for dtype in TYPES {
        let fmt = Format::of(dtype).expect("format");
        for k in [256usize, 768] {
            let q = quantized(16, k, dtype);
            let mut p = Panels::default();
            p.decode(fmt, &q.data().expect("bytes"), k, false);
            let (ints, d, m) = p.panel(0);
            // 19 tokens: two full tiles and one of 3; a padded panel too.
            let tokens = 19;
            let acts = Acts16::quantize(&activations(tokens, k), k);
            for (valid, stride, col) in [(PANEL, 16, 0), (PANEL, 40, 7), (5, 21, 16)] {
                let tile = Tile {
                    k,
                    unit: fmt.unit,
                    ints,
                    d,
                    m,
                    xi: &acts.xi,
                    sx: &acts.sx,
                    ss: &acts.ss,
                    tokens,
                    stride,
                    col,
                    valid,
                };
                let len = (tokens - 1) * stride + col + valid;
                let (mut want, mut got) = (vec![f32::NAN; len + 3], vec![f32::NAN; len + 3]);
                tile_scalar(&tile, &mut want);
                assert!(simd::avx512::tile(Kernels::Avx512, &tile, &mut got));
                for i in 0..len + 3 {
                    assert_eq!(
                        got[i].to_bits(),
                        want[i].to_bits(),
                        "{dtype:?} k {k} valid {valid} at {i}"
                    );
                }
                // Too short an output is refused.
                assert!(!simd::avx512::tile(
                    Kernels::Avx512,
                    &tile,
                    &mut got[..len - 1]
                ));
            }
        }
    }
}

/// A tile whose slices are short is refused, not read past.
#[test]
fn a_tile_with_short_slices_is_refused() {
    let k = 64;
    let ints = vec![0i16; k * PANEL];
    let d = vec![0f32; 2 * PANEL];
    let xi = vec![0i16; 2 * k - 1];
    let s = vec![0f32; 4];
    let tile = Tile {
        k,
        unit: 32,
        ints: &ints,
        d: &d,
        m: &[],
        xi: &xi,
        sx: &s,
        ss: &s,
        tokens: 2,
        stride: 16,
        col: 0,
        valid: 16,
    };
    assert!(!tile.valid(32));
    let mut out = [0f32; 32];
    assert!(!simd::avx512::tile(Kernels::Avx512, &tile, &mut out));
}

/// The integer matmul against the f32 product of the dequantized weights
/// and the unrounded activations: within the rounding's own bound,
/// `Σ_blocks (step/2)·Σ|w|`, plus f32 summation slack; and each token's row
/// is the same bits whether it is multiplied alone or with 12 others.
#[test]
fn the_integer_matmul_is_within_the_rounding_bound_and_batch_invariant() {
    let set = *Kernels::supported().last().expect("a set");
    for dtype in TYPES {
        let k = if matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K) {
            512
        } else {
            160
        };
        let (n, m) = (37usize, 13usize);
        let q = quantized(n, k, dtype);
        let bytes = q.data().expect("bytes");
        let mut w = vec![0f32; n * k];
        assert!(super::super::dequant::rows_into(
            dtype, &bytes, k, &mut w, false
        ));
        let x = activations(m, k);
        let acts = Acts16::quantize(&x, k);
        // Small slabs: several tasks, panels split across them.
        let got = matmul(set, &acts, dtype, &bytes, 2 * PANEL * k).expect("decoder");
        for t in 0..m {
            for r in 0..n {
                let (mut exact, mut bound, mut mag) = (0f64, 0f64, 0f64);
                for c in 0..k {
                    let wv = f64::from(w[r * k + c]);
                    exact += wv * f64::from(x[t * k + c]);
                    mag += (wv * f64::from(x[t * k + c])).abs();
                    bound += wv.abs() * f64::from(acts.sx[(t * k + c) / 32]) / 2.0;
                }
                let err = (f64::from(got[t * n + r]) - exact).abs();
                assert!(
                    err <= bound * 1.0001 + mag * 1e-5,
                    "{dtype:?} t {t} r {r}: {err} > {bound}"
                );
            }
            let alone = Acts16::quantize(&x[t * k..(t + 1) * k], k);
            let one = matmul(set, &alone, dtype, &bytes, 1 << 20).expect("decoder");
            assert!(
                one.iter()
                    .zip(&got[t * n..(t + 1) * n])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{dtype:?} token {t}"
            );
        }
    }
}

#[test]
fn the_simd_transpose_equals_the_scalar_twin() {
    for k in [32usize, 96, 576] {
        let rows: Vec<i16> = (0..PANEL * k)
            .map(|i| (i as i16).wrapping_mul(31))
            .collect();
        let mut want = vec![0i16; rows.len()];
        transpose_pairs(&rows, &mut want);
        // The layout: pair g of row r at (g·16 + r)·2.
        assert_eq!(
            want[(3 * PANEL + 5) * 2..(3 * PANEL + 5) * 2 + 2],
            rows[5 * k + 6..5 * k + 8]
        );
        if Kernels::Avx512.available() {
            let mut got = vec![0i16; rows.len()];
            assert!(simd::avx512::transpose_pairs(
                Kernels::Avx512,
                &rows,
                &mut got
            ));
            assert_eq!(got, want, "k {k}");
            assert!(!simd::avx512::transpose_pairs(
                Kernels::Avx512,
                &rows[..rows.len() - 32],
                &mut got
            ));
        }
    }
}

#[test]
fn the_magic_number_rounds_as_round_ties_even() {
    let want = |v: f32| v.round_ties_even() as i32 as i16;
    // Every quarter from -32767.5 to 32767.5 (ties at every half), the
    // floats on either side of each, and a few small and signed zeros.
    let mut n = 0;
    for i in -131_070i32..=131_070 {
        let v = i as f32 / 4.0;
        for v in [v, v.next_down(), v.next_up()] {
            if v.abs() <= 32767.5 {
                assert_eq!(round_to_i16(v), want(v), "{v:?}");
                n += 1;
            }
        }
    }
    for v in [0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5] {
        assert_eq!(round_to_i16(v), want(v), "{v:?}");
    }
    assert!(n > 780_000);
}
