//! The kernel set chosen at run time, and the only code in the crate
//! allowed `unsafe` (`#[allow(unsafe_code)]` in `kernels/mod.rs`; the rest
//! of the crate denies it).
//!
//! The binary is built for the x86-64 baseline, so it runs on any x86-64
//! CPU. Once per process the best set this CPU supports is picked with
//! `is_x86_feature_detected!` ([`active`]), or the set named by
//! `SLMBENCH_KERNELS` (`scalar`, `avx2`; for tests and bug reports):
//!
//! - **avx2**: AVX2 + FMA + F16C (x86-64-v3). The quantized row dots of [`avx2`] (8-bit
//!   activations, integer products, as llama.cpp does), and
//!   [`vectorized`] compiles the f32 loops handed to it (attention,
//!   softmax, SiLU, the head's log-sum-exp) with AVX2 and FMA.
//! - **avx512**: the avx2 set, plus AVX-512F/BW and VNNI for the matmuls
//!   over many rows (prefill, scoring, the head): [`avx512`]'s `vpdpwssd`
//!   kernel multiplies 16-bit activations (one scale per 32 values) with
//!   the weights' integers (`super::int16`), twice the products per
//!   instruction of the f32 FMA.
//! - **scalar**: what the baseline build gives (SSE2): portable loops and
//!   candle's own kernels.
//!
//! Rules for `unsafe` here: every block has a `// SAFETY:` line; a
//! `#[target_feature]` function is called only after its set was detected
//! on this CPU ([`Kernels::available`]); slices are bounds-checked
//! (`first_chunk`, `try_into`, `int16::Tile::valid`) before a pointer is
//! taken from them, never inside a block.

use std::sync::OnceLock;

pub(super) mod avx2;
pub(super) mod avx512;
pub mod tile;

/// Weights in a block of every supported GGML type.
pub const QK: usize = 32;

/// A kernel set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// Portable code only (the x86-64 baseline, or any other target).
    Scalar,
    /// AVX2, FMA and F16C (x86-64-v3: Intel Haswell, AMD Zen and later).
    Avx2,
    /// [`Kernels::Avx2`] plus AVX-512F, AVX-512BW and AVX-512 VNNI (Intel
    /// Ice Lake and later server parts, AMD Zen 4 and later).
    Avx512,
}

impl Kernels {
    /// The name used by `SLMBENCH_KERNELS` and in fingerprints.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Scalar => "scalar",
            Kernels::Avx2 => "avx2",
            Kernels::Avx512 => "avx512",
        }
    }

    /// Whether the set includes AVX2, FMA and F16C (every set but scalar).
    pub fn has_avx2(self) -> bool {
        self != Kernels::Scalar
    }

    /// Whether this CPU can run the set.
    pub fn available(self) -> bool {
        match self {
            Kernels::Scalar => true,
            Kernels::Avx2 => avx2_fma_detected(),
            Kernels::Avx512 => avx2_fma_detected() && avx512_vnni_detected(),
        }
    }

    /// The sets this CPU can run, best last.
    pub fn supported() -> Vec<Kernels> {
        [Kernels::Scalar, Kernels::Avx2, Kernels::Avx512]
            .into_iter()
            .filter(|k| k.available())
            .collect()
    }
}

fn avx2_fma_detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn avx512_vnni_detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The environment variable that forces a kernel set.
pub const ENV: &str = "SLMBENCH_KERNELS";

/// The set named by `value` (`SLMBENCH_KERNELS`'s value; `None` or empty:
/// the best this CPU supports), or a one-line reason it cannot be used.
pub fn choose(value: Option<&str>) -> Result<Kernels, String> {
    let best = *Kernels::supported().last().unwrap_or(&Kernels::Scalar);
    let wanted = match value.map(str::trim) {
        None | Some("") => return Ok(best),
        Some("scalar") => Kernels::Scalar,
        Some("avx2") => Kernels::Avx2,
        Some("avx512") => Kernels::Avx512,
        Some(other) => {
            return Err(format!(
                "{ENV}={other:?}: expected scalar, avx2 or avx512 (or unset it for the best this CPU has)"
            ))
        }
    };
    if wanted.available() {
        Ok(wanted)
    } else {
        Err(format!(
            "{ENV}={}: this CPU lacks it (it has: {}); unset it or pick one of those",
            wanted.name(),
            Kernels::supported()
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

static ACTIVE: OnceLock<Kernels> = OnceLock::new();

/// The set in use, fixed on the first call: `SLMBENCH_KERNELS` if it names
/// a usable set, else the best this CPU supports. (Front ends call
/// [`check_env`] first, so that a bad value is an error, not ignored.)
pub fn active() -> Kernels {
    *ACTIVE.get_or_init(|| {
        let value = std::env::var(ENV).ok();
        choose(value.as_deref()).unwrap_or_else(|_| choose(None).unwrap_or(Kernels::Scalar))
    })
}

/// `Err` with a one-line message when `SLMBENCH_KERNELS` is set to
/// something this build or CPU cannot use.
pub fn check_env() -> Result<Kernels, String> {
    let value = std::env::var(ENV).ok();
    choose(value.as_deref())
}

/// Runs `f`, compiled with AVX2 and FMA enabled when `set` includes them
/// ([`Kernels::has_avx2`], and this CPU has them), else as built. Only code
/// inlined into the AVX2 copy gets the instructions, so the closure must
/// be `#[inline(always)] || …` and the functions it calls in its loops
/// `#[inline(always)]` too (a call out, `LocalKey::with` included, runs
/// baseline code). The results are the same either way (no fused
/// operations appear unless the code asks for them), only the
/// instructions differ.
#[inline(always)]
pub fn vectorized<R>(set: Kernels, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if set.has_avx2() && avx2_fma_detected() {
        // SAFETY: AVX2 and FMA were detected on this CPU just above.
        return unsafe { with_avx2_fma(f) };
    }
    let _ = set;
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn with_avx2_fma<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// One row of activations as the row-dot kernels read it: the f32 values,
/// their per-block sums and, for the AVX2 kernels, the values quantized to
/// 8 bits per block of 32 (`q[j] ≈ x[j] / d[block]`).
pub struct Act<'a> {
    pub x: &'a [f32],
    pub sums: &'a [f32],
    pub q: &'a [i8],
    pub d: &'a [f32],
    /// For the k-quant kernels: block `j`'s step `d[j]` is `sbd[j / 8] ·
    /// mult[j]`, `mult[j]` a power of two from 1 to 128. Empty for the
    /// other types.
    pub mult: &'a [i16],
    pub sbd: &'a [f32],
}

/// The dot product of one row of GGML blocks with the activations.
pub type RowDot = fn(&[u8], &Act) -> f32;

/// The f16 at byte `i` of `b`, as f32.
pub fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The f16 with bits `h` as f32 (exactly): one F16C instruction on a CPU
/// that has it — inlined into code compiled for the avx2 set (see
/// [`vectorized`]) — else `half`'s integer code. (`half`'s `to_f32`
/// checks at run time too, but calls out of line on every value.)
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: F16C was detected on this CPU just above.
        return unsafe { f16c_to_f32(h) };
    }
    half::f16::from_bits(h).to_f32_const()
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "f16c")]
fn f16c_to_f32(h: u16) -> f32 {
    use std::arch::x86_64::{_mm_cvtph_ps, _mm_cvtsi32_si128, _mm_cvtss_f32};
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_or_unusable_kernel_name_is_a_one_line_error() {
        assert_eq!(choose(Some("scalar")), Ok(Kernels::Scalar));
        assert_eq!(
            choose(None),
            Ok(*Kernels::supported().last().expect("scalar at least"))
        );
        assert_eq!(choose(Some("")), choose(None));
        for bad in ["AVX512", "AVX3", "sse\n"] {
            let e = choose(Some(bad)).expect_err(bad);
            assert!(
                e.starts_with("SLMBENCH_KERNELS=") && !e.contains('\n'),
                "{e}"
            );
        }
        let avx2 = choose(Some("avx2"));
        assert_eq!(avx2.is_ok(), Kernels::Avx2.available(), "{avx2:?}");
        let avx512 = choose(Some("avx512"));
        assert_eq!(avx512.is_ok(), Kernels::Avx512.available(), "{avx512:?}");
        if let Err(e) = avx512 {
            assert!(e.contains("lacks it") && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn f16_to_f32_is_exact_for_every_bit_pattern() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32_const();
            let got = f16_to_f32(h);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#06x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn vectorized_code_gives_the_same_bits_on_every_path() {
        let xs: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let run = |set| {
            vectorized(
                set,
                #[inline(always)]
                || {
                    xs.iter()
                        .map(|&x| super::super::vmath::exp(x) * 0.5 + x)
                        .collect::<Vec<f32>>()
                },
            )
        };
        let want = run(Kernels::Scalar);
        for set in Kernels::supported() {
            let got = run(set);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{set:?}"
            );
        }
    }
}
