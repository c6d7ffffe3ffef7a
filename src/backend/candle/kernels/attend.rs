//! Scaled dot-product attention on the CPU in one pass per block of
//! queries: scores, scale, mask, softmax and the weighted sum of values are
//! computed together, in parallel over (head, block of queries), and only
//! over the keys some query of the block can see.
//!
//! Candle's ops do the same in separate single-threaded passes over the whole
//! `[heads, t, s]` score tensor (scale, broadcast mask add, copies), which
//! cost more than the scores' GEMM and kept two threads from scaling. The
//! arithmetic here is the same per element —
//! `q·k` (f32 GEMM, faer), `* scale`, `+ mask`, `exp(x - max)`, `/ sum` — so
//! results differ from candle's only in summation order and in `exp`
//! ([`vmath::exp`], within an ulp or so of the C library's).

use std::cell::RefCell;

use candle_core::{Device, Result, Tensor};
use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::cpu::{with_heads, with_rows};
use super::{simd, vmath};

/// Query rows per work item: small enough to spread over the threads and to
/// keep a block's visible keys tight along a causal diagonal, large enough
/// that each GEMM amortises its packing.
const QUERY_BLOCK: usize = 32;

/// Multiply-adds of the scores below which attention stays on one thread.
/// Decoding one token at ~1,000 tokens of context (GSM8K's 5-shot prompts,
/// 9 heads of 64 on SmolLM2) is ~576K: at 1 << 20 it ran on one thread;
/// spread over the heads, GSM8K's decode p50 went from 106 to 128–133
/// tokens/s (10 documents, alternated runs, the same generations), and
/// tg128 at short context did not move.
const PARALLEL_MIN_MACS: usize = 1 << 16;

thread_local! {
    /// A block's scores (then probabilities), `[rows, keys]`, per rayon worker.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Attention with grouped KV heads (heads `g·rep .. (g+1)·rep` share KV head
/// `g`): `q: [1, heads, t, d]`, `k, v: [1, kv_heads, s, d]`, `mask` additive
/// `[t, s]` (`-inf` hides a key). Returns `[1, t, heads·d]`. A query row that
/// sees no key at all gets zeros.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (_, heads, t, d) = q.dims4()?;
    let (_, kv_heads, s, dk) = k.dims4()?;
    if dk != d || v.dims4()? != (1, kv_heads, s, d) || kv_heads == 0 || heads % kv_heads != 0 {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if let Some(m) = mask {
        if m.dims2()? != (t, s) {
            candle_core::bail!("attention: mask {:?}, want [{t}, {s}]", m.dims());
        }
    }
    if t == 0 || s == 0 || d == 0 {
        // Nothing to attend with or over (chunking by zero would panic).
        return Tensor::zeros((1, t, heads * d), candle_core::DType::F32, &Device::Cpu);
    }
    let rep = heads / kv_heads;
    let scale = scale as f32;
    let q = q.contiguous()?;
    let mask = mask.map(|m| m.contiguous()).transpose()?;
    // Short contexts' few rows run on the calling thread: waking the pool
    // would cost more than the work.
    let parallel = heads * t * s * d >= PARALLEL_MIN_MACS;
    let set = simd::active();
    let mut by_head = vec![0f32; heads * t * d];
    with_rows(&q, |q| {
        // Keys and values in place: head g's rows start at g · hs.
        with_heads(k, |k, hs| {
            with_heads(v, |v, vs| {
                if vs != hs {
                    candle_core::bail!("attention: keys and values laid out differently");
                }
                let mut attend_all = |m: Option<&[f32]>| {
                    let ranges: Vec<(usize, usize)> = match m {
                        None => vec![(0, s); t],
                        Some(m) => m.chunks_exact(s).map(visible_range).collect(),
                    };
                    // Per block of queries, when gathering its visible keys
                    // pays: their mask cells (the same for every head) and,
                    // per KV group, their keys and values, gathered once.
                    let blocks = t.div_ceil(QUERY_BLOCK);
                    let gathers: Vec<Option<Gathered>> = match m {
                        None => (0..blocks).map(|_| None).collect(),
                        Some(m) => m
                            .chunks(QUERY_BLOCK * s)
                            .zip(ranges.chunks(QUERY_BLOCK))
                            .map(|(m, r)| {
                                sparse_keys(m, s, r)
                                    .map(|keys| Gathered::new(&keys, m, (k, v, hs), kv_heads, s, d))
                            })
                            .collect(),
                    };
                    // Work items: (head, block of queries, its output rows).
                    let items: Vec<(usize, usize, &mut [f32])> = by_head
                        .chunks_mut(t * d)
                        .enumerate()
                        .flat_map(|(h, out)| {
                            out.chunks_mut(QUERY_BLOCK * d)
                                .enumerate()
                                .map(move |(b, out)| (h, b * QUERY_BLOCK, out))
                        })
                        .collect();
                    let attend = |(h, i0, out): (usize, usize, &mut [f32])| {
                        let (g, n) = (h / rep, out.len() / d);
                        let block = Block {
                            q: &q[(h * t + i0) * d..][..n * d],
                            k: &k[g * hs..][..s * d],
                            v: &v[g * hs..][..s * d],
                            mask: m.map(|m| &m[i0 * s..][..n * s]),
                            ranges: &ranges[i0..i0 + n],
                            gather: gathers[i0 / QUERY_BLOCK].as_ref().map(|b| b.group(g)),
                            d,
                            scale,
                        };
                        // The block's loops compiled for the kernel set's CPU.
                        simd::vectorized(
                            set,
                            #[inline(always)]
                            || block.attend(out),
                        );
                    };
                    if parallel {
                        items.into_par_iter().for_each(attend);
                    } else {
                        items.into_iter().for_each(attend);
                    }
                    Ok(())
                };
                match &mask {
                    None => attend_all(None),
                    Some(m) => with_rows(m, |m| attend_all(Some(m))),
                }
            })
        })
    })?;
    // [heads, t, d] -> [t, heads·d]
    let mut out = vec![0f32; t * heads * d];
    for (i, row) in out.chunks_exact_mut(heads * d).enumerate() {
        for (h, dst) in row.chunks_exact_mut(d).enumerate() {
            dst.copy_from_slice(&by_head[(h * t + i) * d..][..d]);
        }
    }
    Tensor::from_vec(out, (1, t, heads * d), &Device::Cpu)
}

/// First and one-past-last visible key of a mask row (`(0, 0)` if none).
fn visible_range(row: &[f32]) -> (usize, usize) {
    let seen = |x: &f32| *x != f32::NEG_INFINITY;
    match row.iter().position(seen) {
        None => (0, 0),
        Some(lo) => (lo, row.iter().rposition(seen).map_or(lo, |j| j + 1)),
    }
}

/// The keys a block of query rows (`m`: their mask rows, `ranges`: their
/// visible ranges) sees, when they are under three quarters of the span
/// from the first to the last of them: packed documents that begin alike
/// share their first nodes, which sit at the start of the pack, far before
/// the rest of a later document's keys.
fn sparse_keys(m: &[f32], s: usize, ranges: &[(usize, usize)]) -> Option<Vec<usize>> {
    let lo = ranges.iter().map(|r| r.0).min()?;
    let hi = ranges.iter().map(|r| r.1).max()?;
    if hi <= lo {
        return None;
    }
    let mut seen = vec![false; hi - lo];
    for row in m.chunks_exact(s) {
        for (u, &x) in seen.iter_mut().zip(&row[lo..hi]) {
            *u |= x != f32::NEG_INFINITY;
        }
    }
    let keys: Vec<usize> = (lo..hi).filter(|&j| seen[j - lo]).collect();
    (keys.len() * 4 < (hi - lo) * 3).then_some(keys)
}

/// Mask rows as a block reads them: row `r`'s cells for the block's keys
/// start at `r · stride + offset`.
#[derive(Clone, Copy)]
struct MaskRows<'a> {
    m: &'a [f32],
    stride: usize,
    offset: usize,
}

impl<'a> MaskRows<'a> {
    fn row(&self, r: usize, w: usize) -> &'a [f32] {
        &self.m[r * self.stride + self.offset..][..w]
    }
}

/// A block of queries' visible keys gathered: its mask cells `[n, w]`, and
/// for every KV group the keys and values `[w, d]`.
struct Gathered {
    mask: Vec<f32>,
    /// `[kv_heads, w, d]` each.
    k: Vec<f32>,
    v: Vec<f32>,
    groups: usize,
}

impl Gathered {
    /// Gathers `keys` from the block's mask rows `m` (`[n, s]`) and from
    /// every KV group of `k`, `v` (`[groups, s, d]` rows, group g's from
    /// `g · hs`).
    fn new(
        keys: &[usize],
        m: &[f32],
        (k, v, hs): (&[f32], &[f32], usize),
        groups: usize,
        s: usize,
        d: usize,
    ) -> Self {
        let mask = m
            .chunks_exact(s)
            .flat_map(|row| keys.iter().map(move |&j| row[j]))
            .collect();
        // A copy per key row (an element-wise `flat_map` was 1.7% of
        // SmolLM2's scoring).
        let gather = |x: &[f32]| -> Vec<f32> {
            let mut out = Vec::with_capacity(groups * keys.len() * d);
            for g in 0..groups {
                let group = &x[g * hs..][..s * d];
                for &j in keys {
                    out.extend_from_slice(&group[j * d..][..d]);
                }
            }
            out
        };
        Self {
            mask,
            k: gather(k),
            v: gather(v),
            groups,
        }
    }

    /// KV group `g`'s view: (keys, values, mask rows).
    fn group(&self, g: usize) -> (&[f32], &[f32], &[f32]) {
        let size = self.k.len() / self.groups;
        (
            &self.k[g * size..][..size],
            &self.v[g * size..][..size],
            &self.mask,
        )
    }
}

/// One head's block of query rows and what it attends over.
struct Block<'a> {
    /// `[n, d]` queries.
    q: &'a [f32],
    /// `[s, d]` keys and values of the head's KV group.
    k: &'a [f32],
    v: &'a [f32],
    /// `[n, s]` additive mask rows, if any.
    mask: Option<&'a [f32]>,
    /// Each row's visible key range.
    ranges: &'a [(usize, usize)],
    /// The block's visible keys, values and mask cells, when they are
    /// gathered (see [`sparse_keys`]).
    gather: Option<(&'a [f32], &'a [f32], &'a [f32])>,
    d: usize,
    scale: f32,
}

impl Block<'_> {
    /// Writes the block's `[n, d]` outputs into `out`.
    #[inline(always)]
    fn attend(&self, out: &mut [f32]) {
        let d = self.d;
        let lo = self.ranges.iter().map(|r| r.0).min().unwrap_or(0);
        let hi = self.ranges.iter().map(|r| r.1).max().unwrap_or(0);
        if hi <= lo {
            out.fill(0.0);
            return;
        }
        let s = self.k.len() / d;
        match self.gather {
            Some((keys, values, m)) => {
                let w = keys.len() / d;
                let mask = MaskRows {
                    m,
                    stride: w,
                    offset: 0,
                };
                self.attend_over(keys, values, Some(mask), out);
            }
            None => {
                let mask = self.mask.map(|m| MaskRows {
                    m,
                    stride: s,
                    offset: lo,
                });
                self.attend_over(&self.k[lo * d..hi * d], &self.v[lo * d..hi * d], mask, out);
            }
        }
    }

    /// Attention of the block's queries over `keys`/`values` (`[w, d]`)
    /// with `mask`'s rows over the same keys.
    #[inline(always)]
    fn attend_over(&self, keys: &[f32], values: &[f32], mask: Option<MaskRows>, out: &mut [f32]) {
        let (n, d) = (self.ranges.len(), self.d);
        let w = keys.len() / d;
        // Inside `with`'s closure too: `LocalKey::with` is not inlined, so
        // the closure would be compiled only for the baseline CPU.
        SCORES.with(|cell| {
            simd::vectorized(
                simd::active(),
                #[inline(always)]
                || {
                    let mut buf = cell.borrow_mut();
                    if buf.len() < n * w {
                        buf.resize(n * w, 0.0);
                    }
                    let p = &mut buf[..n * w];
                    if n <= DIRECT_ROWS {
                        return self.attend_direct(keys, values, mask, p, out);
                    }
                    // Scores [n, w] row-major, computed as their transpose K·Qᵀ into a
                    // column-major view (faer's row-major destinations are unsafe to
                    // use, see `streamed::gemm_t`).
                    matmul(
                        MatMut::from_column_major_slice_mut(p, w, n),
                        Accum::Replace,
                        MatRef::from_row_major_slice(keys, w, d),
                        MatRef::from_row_major_slice(self.q, n, d).transpose(),
                        1.0f32,
                        Par::Seq,
                    );
                    for (r, row) in p.chunks_exact_mut(w).enumerate() {
                        softmax_row(row, mask.map(|m| m.row(r, w)), self.scale);
                    }
                    // Outputs [n, d] = P·V, as Vᵀ·Pᵀ into a column-major view.
                    matmul(
                        MatMut::from_column_major_slice_mut(out, d, n),
                        Accum::Replace,
                        MatRef::from_row_major_slice(values, w, d).transpose(),
                        MatRef::from_row_major_slice(p, n, w).transpose(),
                        1.0f32,
                        Par::Seq,
                    );
                },
            )
        });
    }

    /// The same arithmetic as [`Block::attend_over`] in plain loops, for
    /// blocks of a few rows (decoding, short branches), where a GEMM call
    /// costs more in set-up than the work: per row, dot products with the
    /// keys, the softmax, then the probabilities' weighted sum of values.
    #[inline(always)]
    fn attend_direct(
        &self,
        keys: &[f32],
        values: &[f32],
        mask: Option<MaskRows>,
        p: &mut [f32],
        out: &mut [f32],
    ) {
        let d = self.d;
        let w = keys.len() / d;
        for (r, (row, o)) in p
            .chunks_exact_mut(w)
            .zip(out.chunks_exact_mut(d))
            .enumerate()
        {
            let qr = &self.q[r * d..][..d];
            for (x, key) in row.iter_mut().zip(keys.chunks_exact(d)) {
                *x = dot(qr, key);
            }
            softmax_row(row, mask.map(|m| m.row(r, w)), self.scale);
            o.fill(0.0);
            for (&pj, value) in row.iter().zip(values.chunks_exact(d)) {
                if pj != 0.0 {
                    for (o, &v) in o.iter_mut().zip(value) {
                        *o += pj * v;
                    }
                }
            }
        }
    }
}

/// Query rows at or below which a block skips the GEMMs.
const DIRECT_ROWS: usize = 4;

/// `a·b` with eight partial sums (the compiler keeps them in one vector).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `row = softmax(row · scale + mask)` in place, as candle's ops compute it;
/// a row with every key hidden becomes zeros.
#[inline(always)]
fn softmax_row(row: &mut [f32], mask: Option<&[f32]>, scale: f32) {
    match mask {
        Some(m) => row
            .iter_mut()
            .zip(m)
            .for_each(|(x, &m)| *x = *x * scale + m),
        None => row.iter_mut().for_each(|x| *x *= scale),
    }
    let max = vmath::max(row);
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    for x in row.iter_mut() {
        let e = vmath::exp(*x - max);
        *x = if *x == f32::NEG_INFINITY { 0.0 } else { e };
    }
    let sum = vmath::sum(row);
    for x in row.iter_mut() {
        *x /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    /// Candle's ops, as the forward used them before this module.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64) -> Tensor {
        let (_, heads, t, d) = q.dims4().expect("test tensor");
        let (kv_heads, s) = (
            k.dim(1).expect("test tensor"),
            k.dim(2).expect("test tensor"),
        );
        let rep = heads / kv_heads;
        let q = q.reshape((kv_heads, rep * t, d)).expect("test tensor");
        let k = k.reshape((kv_heads, s, d)).expect("test tensor");
        let v = v.reshape((kv_heads, s, d)).expect("test tensor");
        let att = (q.matmul(&k.t().expect("test tensor")).expect("test tensor") * scale)
            .expect("test tensor");
        let att = match mask {
            Some(m) => att
                .reshape((kv_heads, rep, t, s))
                .expect("test tensor")
                .broadcast_add(m)
                .expect("test tensor")
                .reshape((kv_heads, rep * t, s))
                .expect("test tensor"),
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att).expect("test tensor");
        att.matmul(&v)
            .expect("test tensor")
            .reshape((heads, t, d))
            .expect("test tensor")
            .transpose(0, 1)
            .expect("test tensor")
            .reshape((1, t, heads * d))
            .expect("test tensor")
    }

    fn values(dims: (usize, usize, usize, usize), salt: usize) -> Tensor {
        let n = dims.0 * dims.1 * dims.2 * dims.3;
        let v: Vec<f32> = (0..n)
            .map(|i| (((i * 37 + salt * 11) % 23) as f32 - 11.0) / 7.0)
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).expect("test tensor")
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .expect("test tensor")
            .abs()
            .expect("test tensor")
            .flatten_all()
            .expect("test tensor")
            .max(0)
            .expect("test tensor")
            .to_scalar::<f32>()
            .expect("test tensor")
    }

    #[test]
    fn equals_candles_ops_with_and_without_masks() {
        use crate::backend::candle::span::Span;
        // t query rows after `past` cached keys; 6 heads over 2 or 3 KV
        // groups; more rows than a block so several blocks per head, and
        // last blocks of 6 rows (GEMMs) and 3 rows (plain loops); the first
        // case is large enough to run on the thread pool.
        for (past, t, kv_heads) in [(0, 300, 2), (0, 70, 2), (5, 35, 3), (9, 1, 1), (0, 1, 2)] {
            let (heads, d, s) = (6, 16, past + t);
            let q = values((1, heads, t, d), 1);
            let k = values((1, kv_heads, s, d), 2);
            let v = values((1, kv_heads, s, d), 3);
            let span = Span::causal(past, t);
            for mask in [
                span.mask(None).expect("test tensor"),
                span.mask(Some(7)).expect("test tensor"),
                None,
            ] {
                let got = attention(&q, &k, &v, mask.as_ref(), 0.25).expect("test tensor");
                let want = reference(&q, &k, &v, mask.as_ref(), 0.25);
                assert_eq!(got.dims(), want.dims());
                let diff = max_diff(&got, &want);
                assert!(diff < 1e-5, "past {past} t {t}: max diff {diff}");
            }
        }
    }

    #[test]
    fn blocks_that_see_a_shared_start_and_their_own_keys_gather_them() {
        use crate::backend::candle::{pack::DocTree, span::Span};
        // Packed documents that begin with the same two tokens: the later
        // blocks see keys 0-1 and their own document's, far apart, and are
        // gathered (plain loops for the last block of 4 rows, GEMMs else).
        let doc = |first: u32, n: u32| {
            let ctx: Vec<u32> = [1, 2].into_iter().chain(first..first + n).collect();
            DocTree::new([(ctx, vec![7u32])].iter().map(|(c, k)| (&c[..], &k[..]))).expect("tree")
        };
        let docs = [doc(10, 40), doc(100, 30), doc(200, 28)];
        let packed = Span::packed(&docs.iter().collect::<Vec<_>>()).expect("span");
        let t = packed.tokens.len();
        assert_eq!(t, 2 + 40 + 30 + 28);
        let mask = packed.span.mask(None).expect("mask").expect("some");
        let m: Vec<f32> = mask.flatten_all().and_then(|m| m.to_vec1()).expect("mask");
        let ranges: Vec<(usize, usize)> = m.chunks_exact(t).map(visible_range).collect();
        let block = |b: usize| {
            let rows = b * QUERY_BLOCK..((b + 1) * QUERY_BLOCK).min(t);
            sparse_keys(&m[rows.start * t..rows.end * t], t, &ranges[rows])
        };
        assert_eq!(block(0), None, "the first block's keys are one run");
        let last = block(3).expect("gathered");
        assert_eq!(&last[..2], &[0, 1]);
        assert_eq!(
            last.len(),
            2 + 28,
            "the shared start and the third document"
        );
        for (heads, kv_heads) in [(6, 2), (2, 1)] {
            let d = 16;
            let q = values((1, heads, t, d), 1);
            let k = values((1, kv_heads, t, d), 2);
            let v = values((1, kv_heads, t, d), 3);
            let got = attention(&q, &k, &v, Some(&mask), 0.25).expect("test tensor");
            let want = reference(&q, &k, &v, Some(&mask), 0.25);
            let diff = max_diff(&got, &want);
            assert!(diff < 1e-5, "max diff {diff}");
        }
    }

    #[test]
    fn hidden_keys_have_no_influence() {
        // Changing a hidden key's value must not change the output.
        let (t, d) = (40, 8);
        let q = values((1, 2, t, d), 4);
        let k = values((1, 1, t, d), 5);
        let v = values((1, 1, t, d), 6);
        let mut m = vec![0f32; t * t];
        for i in 0..t {
            for j in i + 1..t {
                m[i * t + j] = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::from_vec(m, (t, t), &Device::Cpu).expect("test tensor");
        let a = attention(&q, &k, &v, Some(&mask), 0.3).expect("test tensor");
        let v2 = v
            .narrow(2, 0, t - 1)
            .and_then(|x| Tensor::cat(&[x, Tensor::full(1e6f32, (1, 1, 1, d), &Device::Cpu)?], 2))
            .expect("test tensor");
        let b = attention(&q, &k, &v2, Some(&mask), 0.3).expect("test tensor");
        let last_row = |x: &Tensor| x.narrow(1, 0, t - 1).expect("test tensor");
        assert_eq!(max_diff(&last_row(&a), &last_row(&b)), 0.0);
        assert!(max_diff(&a, &b) > 1.0, "the last query sees the last key");
        assert_eq!(a.dtype(), DType::F32);
    }

    #[test]
    fn fully_hidden_rows_are_zero_and_bad_shapes_are_errors() {
        let q = values((1, 2, 3, 4), 1);
        let k = values((1, 2, 3, 4), 2);
        let mask = Tensor::full(f32::NEG_INFINITY, (3, 3), &Device::Cpu).expect("test tensor");
        let y = attention(&q, &k, &k, Some(&mask), 1.0).expect("test tensor");
        assert_eq!(
            y.abs()
                .expect("test tensor")
                .sum_all()
                .expect("test tensor")
                .to_scalar::<f32>()
                .expect("test tensor"),
            0.0
        );
        let k3 = values((1, 3, 3, 4), 2);
        assert!(
            attention(&q, &k3, &k3, None, 1.0).is_err(),
            "2 heads over 3 KV groups"
        );
        let empty = values((1, 2, 0, 4), 1);
        let y = attention(&empty, &k, &k, None, 1.0).expect("no queries");
        assert_eq!(y.dims(), &[1, 0, 8]);
        let none = values((1, 2, 0, 4), 2);
        let y = attention(&q, &none, &none, None, 1.0).expect("no keys");
        assert_eq!(y.dims(), &[1, 3, 8]);
        let wrong = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).expect("test tensor");
        assert!(attention(&q, &k, &k, Some(&wrong), 1.0).is_err());
    }
}
