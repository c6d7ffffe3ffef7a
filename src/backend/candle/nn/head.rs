//! The output head as a scorer: each row's target log-probability, argmax
//! and log-sum-exp folded slab by slab, never holding a whole row of logits.

use candle_core::{Result, Tensor};

use super::linear::{Linear, Weight};
use super::norm::RmsNorm;
use crate::backend::candle::kernels::cpu::with_rows;
use crate::backend::candle::kernels::streamed::{each_slab, gemm_t, STREAM_SLAB_ELEMS};
use crate::backend::candle::kernels::{int16, simd};
use crate::backend::candle::span::{Finish, Span};

impl Linear {
    /// For an output head: the log-probability of `targets[i]` under the
    /// logits `x[i] · Wᵀ (+ b)`, without holding the logits of all rows at
    /// once. A streamed weight is dequantized slab by slab, as in
    /// [`Self::forward`], and each slab's logits are folded into a running
    /// log-sum-exp, argmax and target logit per row, then dropped. Unlike
    /// `forward`, this holds for any number of rows: scores stay those of
    /// the dequantized head (what lm-eval computes) even when a forward has
    /// only a few targets, where the quantized kernels would round the
    /// activations to 8 bits (up to 0.16 nats on SmolLM2's RTE).
    pub fn token_scores(&self, x: &Tensor, targets: &[u32]) -> Result<Vec<TokenScore>> {
        let m = x.dim(0)?;
        if m != targets.len() {
            candle_core::bail!("{m} rows of hidden states for {} targets", targets.len());
        }
        let rows: Vec<u32> = (0..m as u32).collect();
        self.token_scores_slabs(x, &rows, targets, STREAM_SLAB_ELEMS)
    }

    /// As [`Self::token_scores`], with `targets[i]` scored under row
    /// `rows[i]` of `x`: a row that predicts several targets (the shared
    /// node of a [`DocTree`]) costs one row of logits.
    pub fn token_scores_at(
        &self,
        x: &Tensor,
        rows: &[u32],
        targets: &[u32],
    ) -> Result<Vec<TokenScore>> {
        self.token_scores_slabs(x, rows, targets, STREAM_SLAB_ELEMS)
    }

    pub(crate) fn token_scores_slabs(
        &self,
        x: &Tensor,
        rows: &[u32],
        targets: &[u32],
        slab_elems: usize,
    ) -> Result<Vec<TokenScore>> {
        let (m, k) = x.dims2()?;
        if rows.len() != targets.len() {
            candle_core::bail!("{} rows for {} targets", rows.len(), targets.len());
        }
        if let Some(r) = rows.iter().find(|&&r| r as usize >= m) {
            candle_core::bail!("row {r} of {m} rows of hidden states");
        }
        let mut folds = vec![RowFold::EMPTY; m];
        let mut logits = vec![f32::NAN; targets.len()];
        let mut fold = |y: &[f32], cols: usize, c0: usize| {
            fold_slab(&mut folds, y, cols, c0);
            for ((l, &r), &t) in logits.iter_mut().zip(rows).zip(targets) {
                if let Some(c) = (t as usize).checked_sub(c0).filter(|&c| c < cols) {
                    *l = y[r as usize * cols + c];
                }
            }
        };
        match &self.weight {
            Weight::Streamed(q, _) => {
                let n = q.shape().dims2()?.0;
                let slab = (slab_elems / k).clamp(1, n);
                let bias = match &self.bias {
                    Some(b) => Some(b.to_vec1::<f32>()?),
                    None => None,
                };
                let set = simd::active();
                if int16::applies(set, q.dtype()) {
                    let data = q.data()?;
                    let row_bytes = data.len() / n;
                    let mut y = Vec::new();
                    with_rows(x, |xs| {
                        int16::Acts16::with(xs, k, |acts| {
                            for r0 in (0..n).step_by(slab) {
                                let cols = slab.min(n - r0);
                                let bytes = &data[r0 * row_bytes..(r0 + cols) * row_bytes];
                                if !int16::matmul_into(
                                    set,
                                    acts,
                                    q.dtype(),
                                    bytes,
                                    slab_elems,
                                    &mut y,
                                ) {
                                    candle_core::bail!("no integer decoder for {:?}", q.dtype());
                                }
                                add_bias(&mut y, cols, r0, bias.as_deref());
                                fold(&y, cols, r0);
                            }
                            Ok(())
                        })
                    })?;
                    return Ok(finish(rows, targets, &logits, &folds));
                }
                let mut y = vec![0f32; m * slab];
                each_slab(x, q, slab, |r0, w, xs| {
                    let cols = w.len() / k;
                    let y = &mut y[..m * cols];
                    let dst = faer::MatMut::from_column_major_slice_mut(&mut *y, cols, m);
                    gemm_t(dst, xs, k, w, faer::Par::rayon(0));
                    add_bias(y, cols, r0, bias.as_deref());
                    fold(y, cols, r0);
                })?;
            }
            _ => {
                let y = self.forward(x)?;
                let n = y.dim(1)?;
                fold(&y.flatten_all()?.to_vec1::<f32>()?, n, 0);
            }
        }
        Ok(finish(rows, targets, &logits, &folds))
    }
}

/// Adds the bias's columns `r0..` to each row of `y` (`cols` columns).
fn add_bias(y: &mut [f32], cols: usize, r0: usize, bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(cols) {
            for (v, b) in row.iter_mut().zip(&b[r0..r0 + cols]) {
                *v += b;
            }
        }
    }
}

fn finish(rows: &[u32], targets: &[u32], logits: &[f32], folds: &[RowFold]) -> Vec<TokenScore> {
    rows.iter()
        .zip(targets)
        .zip(logits)
        .map(|((&r, &t), &l)| folds[r as usize].finish(l, t as usize))
        .collect()
}

/// Log-probability of one target token under one row of logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenScore {
    /// `log softmax(logits)[target]` (nats).
    pub logprob: f64,
    /// The target is the row's argmax (the first one on ties).
    pub greedy: bool,
}

/// Running log-sum-exp and argmax of one row of logits seen slab by slab
/// (columns in order).
#[derive(Debug, Clone, Copy)]
struct RowFold {
    max: f32,
    argmax: usize,
    /// `Σ exp(v - max)` over the columns seen.
    sum: f64,
}

impl RowFold {
    const EMPTY: Self = Self {
        max: f32::NEG_INFINITY,
        argmax: 0,
        sum: 0.0,
    };

    /// Folds in columns `c0..c0 + row.len()`.
    fn add(&mut self, c0: usize, row: &[f32]) {
        use crate::backend::candle::kernels::vmath;
        let best = vmath::max(row);
        if best > self.max {
            self.sum *= ((self.max - best) as f64).exp();
            self.max = best;
            // The first column holding the maximum (NaNs are never it).
            self.argmax = c0 + row.iter().position(|&v| v == best).unwrap_or(0);
        }
        let m = self.max;
        // Each term by `vmath::exp` (≤ 1.5e-7 relative error, 8 lanes at a
        // time), summed in f32 over runs of 64 columns (≤ 8 terms a lane,
        // each ≤ 1), the runs summed in f64 over the vocabulary.
        let mut terms = [0f32; 64];
        let set = crate::backend::candle::kernels::simd::active();
        let sum = crate::backend::candle::kernels::simd::vectorized(
            set,
            #[inline(always)]
            || {
                let mut sum = self.sum;
                for run in row.chunks(64) {
                    let terms = &mut terms[..run.len()];
                    for (t, &v) in terms.iter_mut().zip(run) {
                        *t = vmath::exp(v - m);
                    }
                    sum += f64::from(vmath::sum(terms));
                }
                sum
            },
        );
        self.sum = sum;
    }

    /// The score of `target`, whose logit is `logit`.
    fn finish(&self, logit: f32, target: usize) -> TokenScore {
        TokenScore {
            logprob: logit as f64 - (self.max as f64 + self.sum.ln()),
            greedy: self.argmax == target,
        }
    }
}

/// Folds one slab of logits `y` (`[m, cols]`, columns `c0..`) into
/// `folds`, rows in parallel.
fn fold_slab(folds: &mut [RowFold], y: &[f32], cols: usize, c0: usize) {
    use rayon::prelude::*;
    folds
        .par_iter_mut()
        .zip(y.par_chunks_exact(cols))
        .for_each(|(f, row)| f.add(c0, row));
}

/// The final-normed hidden states `[n, hidden]` of the span's output rows
/// of `x`, or else of its last `n_out` positions (`None` for none): what
/// the output head turns into logits. After a last layer that `finished`
/// only those rows, `x` is them.
pub fn output_rows(
    x: &Tensor,
    span: &Span,
    n_out: usize,
    norm: &RmsNorm,
    finished: Option<&Finish>,
) -> Result<Option<Tensor>> {
    let rows = match &span.outputs {
        // The last layer ran on the output rows alone, in order.
        _ if finished.is_some() => x.squeeze(0)?,
        Some(rows) if rows.elem_count() > 0 => x.squeeze(0)?.index_select(rows, 0)?,
        Some(_) => return Ok(None),
        None if n_out == 0 => return Ok(None),
        None => last_positions(x, n_out)?,
    };
    norm.forward(&rows).map(Some)
}

/// Selects the last `n` positions of `[1, t, h]` as `[n, h]`.
pub fn last_positions(x: &Tensor, n: usize) -> Result<Tensor> {
    let t = x.dim(1)?;
    x.narrow(1, t - n, n)?.squeeze(0)
}
