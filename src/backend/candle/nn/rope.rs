//! Rotary position embeddings: the cos/sin tables, applied to the keys
//! before they enter the cache (and to the queries in [`super::attention`]).

use candle_core::{DType, Device, Result, Tensor};

use super::kv_cache::KvCache;
use crate::backend::candle::span::Span;

/// Cos/sin tables for rotary position embeddings, grown on demand and
/// shared by all layers that use the same base.
pub struct Rope {
    theta: f64,
    half_dim: usize,
    interleaved: bool,
    cos: Tensor,
    sin: Tensor,
    len: usize,
}

impl Rope {
    pub fn new(theta: f64, head_dim: usize, interleaved: bool) -> Result<Self> {
        let mut r = Self {
            theta,
            half_dim: head_dim / 2,
            interleaved,
            cos: Tensor::zeros((0, head_dim / 2), DType::F32, &Device::Cpu)?,
            sin: Tensor::zeros((0, head_dim / 2), DType::F32, &Device::Cpu)?,
            len: 0,
        };
        r.ensure(256)?;
        Ok(r)
    }

    fn ensure(&mut self, len: usize) -> Result<()> {
        if len <= self.len {
            return Ok(());
        }
        let len = len.next_power_of_two();
        let d = (self.half_dim * 2) as f32;
        // As transformers: inverse frequencies and angles in f32.
        let inv: Vec<f32> = (0..self.half_dim)
            .map(|i| 1.0 / (self.theta as f32).powf((2 * i) as f32 / d))
            .collect();
        let mut cos = Vec::with_capacity(len * self.half_dim);
        let mut sin = Vec::with_capacity(len * self.half_dim);
        for p in 0..len {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        self.cos = Tensor::from_vec(cos, (len, self.half_dim), &Device::Cpu)?;
        self.sin = Tensor::from_vec(sin, (len, self.half_dim), &Device::Cpu)?;
        self.len = len;
        Ok(())
    }

    /// Rotates `x` of shape `[b, heads, t, head_dim]` at the span's positions.
    pub fn apply(&mut self, x: &Tensor, span: &Span) -> Result<Tensor> {
        let t = x.dim(2)?;
        self.ensure(span.max_position() + 1)?;
        let (cos, sin) = match &span.gather {
            None => (
                self.cos.narrow(0, span.past, t)?,
                self.sin.narrow(0, span.past, t)?,
            ),
            Some(ids) => (
                self.cos.index_select(ids, 0)?,
                self.sin.index_select(ids, 0)?,
            ),
        };
        let x = x.contiguous()?;
        if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x, &cos, &sin)
        } else {
            candle_nn::rotary_emb::rope(&x, &cos, &sin)
        }
    }
}

/// RoPE on the span's keys `k` (`[1, kv_heads, t, d]`), then `k`/`v`
/// appended to the cache: returns every cached key and value.
pub fn rope_cache(
    k: &Tensor,
    v: &Tensor,
    rope: &mut Rope,
    cache: &mut KvCache,
    span: &Span,
) -> Result<(Tensor, Tensor)> {
    let k = rope.apply(k, span)?;
    cache.append(k, v.contiguous()?)
}
