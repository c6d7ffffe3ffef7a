//! The gated MLP (`down(act(gate(x)) · up(x))`) with SiLU or GELU (tanh).

use candle_core::{Device, Result, Tensor};

use super::linear::Linear;
use super::loader::Loader;
use crate::backend::candle::kernels::cpu::with_rows;
use crate::model::gguf::GgufError;

/// Activation of a gated MLP.
#[derive(Debug, Clone, Copy)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// `down(act(gate(x)) * up(x))`, the MLP of llama-family and Gemma blocks.
pub struct GatedMlp {
    gate: Linear,
    up: Linear,
    down: Linear,
    act: Activation,
}

impl GatedMlp {
    /// Loads `blk.{layer}.ffn_{gate,up,down}.weight`.
    pub fn load(
        loader: &mut Loader<'_>,
        layer: usize,
        act: Activation,
    ) -> std::result::Result<Self, GgufError> {
        let mut l = |s: &str| loader.linear(&format!("blk.{layer}.{s}.weight"));
        Ok(Self {
            gate: l("ffn_gate")?,
            up: l("ffn_up")?,
            down: l("ffn_down")?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.gate.forward(x)?;
        let u = self.up.forward(x)?;
        self.down.forward(&gated(&g, &u, self.act)?)
    }
}

/// `act(g) * u` elementwise, in parallel (candle's unary and binary ops
/// run on one thread), both activations through [`crate::backend::candle::kernels::vmath::exp`], so
/// they vectorise.
pub(crate) fn gated(g: &Tensor, u: &Tensor, act: Activation) -> Result<Tensor> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    if g.dims() != u.dims() {
        candle_core::bail!(
            "gated MLP: gate {:?} and up {:?} differ",
            g.dims(),
            u.dims()
        );
    }
    fn each(out: &mut [f32], g: &[f32], u: &[f32], f: impl Fn(f32) -> f32 + Sync) {
        let set = crate::backend::candle::kernels::simd::active();
        let chunk = |(o, (g, u)): (&mut [f32], (&[f32], &[f32]))| {
            crate::backend::candle::kernels::simd::vectorized(
                set,
                #[inline(always)]
                || {
                    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                        *o = f(g) * u;
                    }
                },
            )
        };
        if out.len() <= CHUNK {
            // One chunk (decoding): no need to wake the pool.
            chunk((out, (g, u)));
        } else {
            out.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
                .for_each(chunk);
        }
    }
    let mut out = vec![0f32; g.elem_count()];
    with_rows(g, |g| {
        with_rows(u, |u| {
            match act {
                Activation::Silu => each(&mut out, g, u, |v| {
                    v / (1.0 + crate::backend::candle::kernels::vmath::exp(-v))
                }),
                // `0.5·v·(1 + tanh(y)) = v / (1 + e^(-2y))`: one `exp`
                // instead of the C library's `tanhf` (a call per element,
                // 10% of a Gemma 3 workload), and no cancellation where
                // `tanh(y)` nears -1.
                Activation::GeluTanh => each(&mut out, g, u, |v| {
                    let y = SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v);
                    v / (1.0 + crate::backend::candle::kernels::vmath::exp(-2.0 * y))
                }),
            }
            Ok(())
        })
    })?;
    Tensor::from_vec(out, g.shape(), &Device::Cpu)
}

/// sqrt(2/pi) as candle writes it for its tanh-approximated GELU.
#[allow(clippy::excessive_precision)]
const SQRT_TWO_OVER_PI: f32 = 0.79788456080286535587989211986876373;
