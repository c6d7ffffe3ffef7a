//! Attention of a layer: RoPE on the queries, then the attention kernel over
//! the cached and new keys as the span lets each query see them.

use candle_core::{Result, Tensor};

use super::rope::Rope;
use crate::backend::candle::kernels::attend;
use crate::backend::candle::span::Span;

/// RoPE on the queries `q` (`[1, heads, n, d]`, at the positions of
/// `queries`), then attention over the cached keys and values with `mask`
/// (`[n, keys]`) and `1/sqrt(d)` scaling: `[1, n, heads*d]`.
pub fn rope_attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rope: &mut Rope,
    queries: &Span,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(3)? as f64).sqrt();
    let q = rope.apply(q, queries)?;
    // Packed documents need no split: each block of queries attends only
    // over the keys its mask lets it see.
    attend::attention(&q, k, v, mask, scale)
}
