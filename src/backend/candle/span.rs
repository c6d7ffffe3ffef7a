//! Where the tokens of one forward sit ([`Span`]): positions, the tree of
//! parents that says which keys each query sees, the attention mask, and
//! which rows leave the model ([`Finish`]).

use candle_core::{Device, Result, Tensor};

use crate::backend::candle::kernels::streamed::STREAM_MIN_ROWS;

/// Parent of a token that follows the cached positions directly.
pub(crate) const ROOT: u32 = u32::MAX;

/// Where the tokens of one forward sit: after `past` cached positions, as a
/// forest of token trees. Each token sees the cache and its ancestors (and
/// itself): one chain for a causal run; one chain per branch for several
/// continuations of the cache; the documents' prefix trees, merged where
/// they begin alike, for packed documents (which see only their own
/// prefixes).
///
/// Visibility: key j is visible to query i when j is i or an ancestor of i
/// (a cached key is visible to every query), within the sliding window if
/// there is one.
pub struct Span {
    pub past: usize,
    pub(crate) positions: Vec<usize>,
    /// Index of each token's parent in the span, or [`ROOT`].
    pub(crate) parent: Vec<u32>,
    /// Position ids for the RoPE tables when they are not one contiguous run.
    pub(crate) gather: Option<Tensor>,
    /// Rows whose logits are wanted, when not simply the last ones.
    pub(crate) outputs: Option<Tensor>,
}

impl Span {
    /// `t` tokens right after `past` cached positions.
    pub fn causal(past: usize, t: usize) -> Self {
        Self {
            past,
            positions: (past..past + t).collect(),
            parent: (0..t as u32)
                .map(|i| i.checked_sub(1).unwrap_or(ROOT))
                .collect(),
            gather: None,
            outputs: None,
        }
    }

    /// Branches of the given lengths, each starting at position `past`.
    pub fn branches(past: usize, lens: &[usize]) -> Result<Self> {
        let mut positions = Vec::new();
        let mut parent = Vec::new();
        for &n in lens {
            let first = parent.len() as u32;
            positions.extend(past..past + n);
            parent.extend((0..n as u32).map(|i| if i == 0 { ROOT } else { first + i - 1 }));
        }
        let ids: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let n = ids.len();
        Ok(Self {
            past,
            positions,
            parent,
            gather: Some(Tensor::from_vec(ids, n, &Device::Cpu)?),
            outputs: None,
        })
    }

    /// [`Span::finish`] for a model of `layers` layers (`None` without
    /// any), with the index of the last layer, which applies it.
    pub fn finish_last(&self, layers: usize, n_out: usize) -> Result<(Option<Finish>, usize)> {
        let finish = if layers == 0 {
            None
        } else {
            self.finish(n_out)?
        };
        Ok((finish, layers.wrapping_sub(1)))
    }

    /// The rows the last layer has to finish (see [`Finish`]), or `None`
    /// when that is every row, or when so few rows (under
    /// [`STREAM_MIN_ROWS`], of a span of more) would move the layer's
    /// matmuls onto the quantized kernels, which round activations to 8
    /// bits where the full-width layer runs the f32 GEMM. Spans of two or
    /// more tokens always have a mask, whose rows the queries take; a
    /// single token is all or none of the rows.
    pub fn finish(&self, n_out: usize) -> Result<Option<Finish>> {
        let t = self.len();
        let rows: Vec<u32> = match &self.outputs {
            Some(o) => o.to_vec1()?,
            None => (t.saturating_sub(n_out) as u32..t as u32).collect(),
        };
        let n = rows.len();
        if n == t || (n > 0 && n < STREAM_MIN_ROWS && t >= STREAM_MIN_ROWS) {
            return Ok(None);
        }
        let positions: Vec<usize> = rows.iter().map(|&r| self.positions[r as usize]).collect();
        let ids: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        Ok(Some(Finish {
            rows: Tensor::from_vec(rows, n, &Device::Cpu)?,
            n,
            queries: Span {
                past: self.past,
                positions,
                parent: vec![ROOT; n],
                gather: Some(Tensor::from_vec(ids, n, &Device::Cpu)?),
                outputs: None,
            },
        }))
    }

    /// Number of output rows when they are selected (packed spans).
    pub fn n_outputs(&self) -> Option<usize> {
        self.outputs.as_ref().map(|o| o.elem_count())
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    pub(crate) fn max_position(&self) -> usize {
        self.positions.iter().copied().max().unwrap_or(self.past)
    }

    /// Additive mask `[t, past+t]`: each token sees the cache and its
    /// ancestors (see [`Span`]), optionally limited to a sliding window of `window`
    /// positions (a query at `q` sees keys at `q - window < k <= q`).
    pub fn mask(&self, window: Option<usize>) -> Result<Option<Tensor>> {
        let t = self.len();
        let total = self.past + t;
        let single = self.gather.is_none();
        let needs_window = window.is_some_and(|w| self.max_position() + 1 > w);
        if t == 1 && single && !needs_window {
            return Ok(None);
        }
        let far = |q: usize, k: usize| window.is_some_and(|w| q >= w + k);
        let mut m = vec![f32::NEG_INFINITY; t * total];
        for i in 0..t {
            let q = self.positions[i];
            let row = &mut m[i * total..(i + 1) * total];
            for (k, cell) in row.iter_mut().enumerate().take(self.past) {
                if !far(q, k) {
                    *cell = 0.0;
                }
            }
            // Up the tree: positions only fall, so the first far key ends it.
            let mut j = i as u32;
            while j != ROOT && !far(q, self.positions[j as usize]) {
                row[self.past + j as usize] = 0.0;
                j = self.parent[j as usize];
            }
        }
        Tensor::from_vec(m, (t, total), &Device::Cpu).map(Some)
    }
}

/// A layer's query input: rows, their span, their mask rows.
pub type Queries<'a> = (Tensor, &'a Span, Option<Tensor>);

/// The rows of a forward that its last layer finishes. Every row of the
/// last layer needs its keys and values (later rows attend to them, the
/// cache keeps them); only the rows whose hidden states leave the model
/// (the span's output rows, or its last `n_out`) need its queries,
/// attention, output projection and MLP. On the packed suite workload that
/// is about half the rows; with no output rows (a context forwarded for the
/// cache) the last layer computes only keys and values.
pub struct Finish {
    /// Indices of the rows in the span, in output order.
    pub(crate) rows: Tensor,
    pub(crate) n: usize,
    /// The rows as a span of queries: their positions, for RoPE.
    pub(crate) queries: Span,
}

impl Finish {
    /// The finishing rows of `x` (`[1, t, h]` → `[1, n, h]`).
    pub fn select(&self, x: &Tensor) -> Result<Tensor> {
        x.index_select(&self.rows, 1)
    }

    /// No row leaves the model: the last layer needs only keys and values.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The rows as queries (for [`rope_attend`]).
    pub fn queries(&self) -> &Span {
        &self.queries
    }

    /// The rows of an attention mask (`[t, keys]` → `[n, keys]`).
    pub fn mask(&self, mask: Option<&Tensor>) -> Result<Option<Tensor>> {
        mask.map(|m| m.index_select(&self.rows, 0)).transpose()
    }

    /// What a layer's queries come from: the input rows `x`, the span
    /// they sit at and their mask rows — all of them without `finish`,
    /// the finishing rows with it, `None` when no row is to finish.
    pub fn queries_of<'a>(
        finish: Option<&'a Self>,
        x: &Tensor,
        span: &'a Span,
        mask: Option<&Tensor>,
    ) -> Result<Option<Queries<'a>>> {
        Ok(match finish {
            None => Some((x.clone(), span, mask.cloned())),
            Some(f) if f.is_empty() => None,
            Some(f) => Some((f.select(x)?, f.queries(), f.mask(mask)?)),
        })
    }
}
