//! Elementwise math the compiler can vectorise: a branch-free `exp` for the
//! softmax of attention and the SiLU of the MLP. The C library's `expf` is
//! a call per element, which at 512 tokens cost as much as the attention's
//! GEMMs.

/// `e^x` for f32, within 1.5e-7 relative error of the exact value (the
/// C library's `expf` is within 6e-8; both are about one unit in the last
/// place). Inputs are clamped to `[-87.34, 88.38]`, so the result is never
/// 0 or infinite: `exp(-inf)` is `~1.2e-38` — callers that need an exact
/// zero for hidden entries select it themselves.
///
/// Method (as in Cephes' `expf`): `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`,
/// `ln 2` split in two parts so `r` is exact; `e^r` by a degree-7
/// polynomial; `2^n` built in the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.336_54, 88.376_26);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = p * r * r + r + 1.0;
    // 2^n without a float-to-int conversion (Rust's saturating `as` does
    // not vectorise on AVX2): `n` is an integer in [-126, 127], so adding
    // 1.5·2^23 + 127 leaves `n + 127` in the low mantissa bits, which the
    // shift moves into the exponent field (the high bits fall off).
    const MAGIC: f32 = 12_583_039.0; // 1.5 * 2^23 + 127
    e_r * f32::from_bits((n + MAGIC).to_bits() << 23)
}

/// Sum of `xs` with eight partial sums (one vector register).
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Largest of `xs` (`-inf` if empty or all `-inf`), with eight lanes.
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    acc.iter().fold(tail, |a, &b| a.max(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_its_stated_error_over_the_whole_range() {
        let mut worst = 0f64;
        let mut x = -87.3f32;
        while x < 88.3 {
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
            x += 3.1e-4;
        }
        assert!(worst < 1.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        let tiny = exp(f32::NEG_INFINITY);
        assert!(tiny > 0.0 && tiny < 2e-38, "exp(-inf) = {tiny:e}");
        assert!(exp(f32::INFINITY).is_finite());
        // The clamp's ends stay normal numbers (2^n for n in [-126, 127]).
        assert!(exp(88.376_26).is_normal() && exp(-87.336_54).is_normal());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn sum_and_max_see_every_element_including_the_tail() {
        let xs: Vec<f32> = (1..=19).map(|i| i as f32).collect();
        assert_eq!(sum(&xs), 190.0);
        assert_eq!(sum(&[]), 0.0);
        let mut ys: Vec<f32> = (0..19).map(|i| -(i as f32)).collect();
        assert_eq!(max(&ys), 0.0);
        ys[18] = 7.0;
        assert_eq!(max(&ys), 7.0, "the tail counts");
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }
}
