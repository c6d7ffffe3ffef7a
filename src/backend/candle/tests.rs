//! Tests of the shared blocks together: masks and spans, packing, the
//! streamed matmul, the head's folded scores, attention and the MLP.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Result, Tensor};

use super::kernels::streamed::streamed_matmul_slabs;
use super::kernels::streamed::STREAM_MIN_ROWS;
use super::nn::attention::rope_attend;
use super::nn::kv_cache::KvCache;
use super::nn::linear::Linear;
use super::nn::mlp::{gated, Activation};
use super::nn::rope::{rope_cache, Rope};
use super::pack::{DocTree, Packed};
use super::span::Span;

/// [`rope_cache`] then [`rope_attend`] over the same span, as a layer
/// without [`Finish`] runs them: `[1, t, heads*d]`.
fn rope_cache_attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rope: &mut Rope,
    cache: &mut KvCache,
    span: &Span,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (k, v) = rope_cache(k, v, rope, cache, span)?;
    rope_attend(q, &k, &v, rope, span, mask)
}

fn visible(m: &Tensor) -> Vec<Vec<bool>> {
    m.to_vec2::<f32>()
        .expect("mask")
        .into_iter()
        .map(|r| r.into_iter().map(|x| x == 0.0).collect())
        .collect()
}

#[test]
fn causal_mask_and_single_token_shortcut() {
    assert!(Span::causal(5, 1).mask(None).expect("mask").is_none());
    let m = Span::causal(1, 2).mask(None).expect("mask").expect("some");
    assert_eq!(
        visible(&m),
        vec![vec![true, true, false], vec![true, true, true]]
    );
}

#[test]
fn branches_see_the_prefix_and_only_themselves() {
    // Prefix of 2, branches of 2 and 1 tokens, both starting at position 2.
    let span = Span::branches(2, &[2, 1]).expect("span");
    let m = span.mask(None).expect("mask").expect("some");
    assert_eq!(
        visible(&m),
        vec![
            vec![true, true, true, false, false],
            vec![true, true, true, true, false],
            vec![true, true, false, false, true],
        ]
    );
    assert_eq!(span.positions, vec![2, 3, 2]);
}

/// `f32`'s tolerance, or under the `avx512` set (16-bit activations, 64
/// weights |w| ≤ 1 a row, activations |x| ≤ 2: each rounded by at most
/// 2 / 32767 / 2) that rounding's bound, 64 · 3.1e-5 ≈ 2e-3, doubled for
/// a log-softmax (the logit and the log-sum-exp each move by as much).
fn tolerance(dtype: GgmlDType, f32_bound: f32) -> f32 {
    use super::kernels::{int16, simd};
    if int16::applies(simd::active(), dtype) {
        4e-3
    } else {
        f32_bound
    }
}

#[test]
fn streamed_matmul_equals_dequantized_matmul_in_any_slab_size() {
    let (n, k, m) = (300usize, 64usize, 5usize);
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let w = Tensor::from_vec(w, (n, k), &Device::Cpu).expect("w");
    let q = QTensor::quantize(&w, GgmlDType::Q8_0).expect("q8_0");
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
        .collect();
    let x = Tensor::from_vec(x, (m, k), &Device::Cpu).expect("x");
    let want = x
        .matmul(&q.dequantize(&Device::Cpu).expect("dq").t().expect("t"))
        .expect("mm")
        .to_vec2::<f32>()
        .expect("v");
    // One slab, several slabs, a slab of one row.
    for slab in [1 << 20, 50 * k, k] {
        let got = streamed_matmul_slabs(&x, &q, slab)
            .expect("streamed")
            .to_vec2::<f32>()
            .expect("v");
        for (a, b) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!(
                (a - b).abs() <= tolerance(GgmlDType::Q8_0, 1e-4 * (1.0 + b.abs())),
                "slab {slab}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn token_scores_equal_log_softmax_of_the_full_logits_in_any_slab_size() {
    let (n, k, m) = (300usize, 64usize, STREAM_MIN_ROWS + 4);
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let w = Tensor::from_vec(w, (n, k), &Device::Cpu).expect("w");
    let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).expect("q8_0"));
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
        .collect();
    let x = Tensor::from_vec(x, (m, k), &Device::Cpu).expect("x");
    let bias: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.25).collect();
    let bias = Tensor::from_vec(bias, n, &Device::Cpu).expect("bias");
    let head =
        Linear::new_with(QMatMul::QTensor(q.clone()), Some(bias.clone()), true).expect("head");
    let argmax = |r: &[f32]| (0..n).fold(0, |b, i| if r[i] > r[b] { i } else { b });
    // Even rows score their argmax, odd rows a token that is not.
    let pick = |i: usize, r: &[f32]| {
        let a = argmax(r);
        (if i.is_multiple_of(2) {
            a
        } else {
            (a + 1 + i) % n
        }) as u32
    };
    let reference = |logits: &[Vec<f32>], targets: &[u32]| -> Vec<(f64, bool)> {
        logits
            .iter()
            .zip(targets)
            .map(|(r, &t)| {
                let lse = r.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
                (r[t as usize] as f64 - lse, argmax(r) == t as usize)
            })
            .collect()
    };
    // The dequantized weight's logits, for many rows and for fewer than
    // `forward` streams (where it would use the quantized kernel).
    let dense = x
        .matmul(&q.dequantize(&Device::Cpu).expect("dq").t().expect("t"))
        .and_then(|y| y.broadcast_add(&bias))
        .and_then(|y| y.to_vec2::<f32>())
        .expect("logits");
    let few = STREAM_MIN_ROWS - 1;
    let x_few = x.narrow(0, 0, few).expect("rows");
    let dense_few = dense[..few].to_vec();
    for (x, logits) in [(&x, dense), (&x_few, dense_few)] {
        let targets: Vec<u32> = logits.iter().enumerate().map(|(i, r)| pick(i, r)).collect();
        let want = reference(&logits, &targets);
        // One slab, several uneven slabs, a slab of one row.
        for slab in [1 << 20, 70 * k, k] {
            let rows: Vec<u32> = (0..targets.len() as u32).collect();
            let got = head
                .token_scores_slabs(x, &rows, &targets, slab)
                .expect("scores");
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let what = format!("{} rows, slab {slab}, row {i}", want.len());
                let bound = tolerance(GgmlDType::Q8_0, 1e-5);
                assert!(
                    (g.logprob - w.0).abs() <= bound.into(),
                    "{what}: {g:?} vs {w:?}"
                );
                assert_eq!(g.greedy, w.1, "{what}");
            }
        }
        assert!(
            head.token_scores(x, &targets[1..]).is_err(),
            "a target per row is required"
        );
        // Rows shared by several targets, in any order.
        let rows = [2u32, 0, 2, 1, 2];
        let picked: Vec<Vec<f32>> = rows.iter().map(|&r| logits[r as usize].clone()).collect();
        let targets: Vec<u32> = picked.iter().enumerate().map(|(i, r)| pick(i, r)).collect();
        let want = reference(&picked, &targets);
        for slab in [1 << 20, 70 * k, k] {
            let got = head
                .token_scores_slabs(x, &rows, &targets, slab)
                .expect("scores");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g.logprob - w.0).abs() <= tolerance(GgmlDType::Q8_0, 1e-5).into(),
                    "shared rows, slab {slab}, {i}"
                );
                assert_eq!(g.greedy, w.1, "shared rows, slab {slab}, {i}");
            }
        }
        let m = x.dim(0).expect("rows") as u32;
        assert!(
            head.token_scores_at(x, &[m], &[0]).is_err(),
            "row out of range"
        );
        assert!(
            head.token_scores_at(x, &[0, 1], &[0]).is_err(),
            "a row per target"
        );
    }
}

#[test]
fn packed_attention_equals_each_document_attended_alone() {
    let tree = |pairs: &[(&[u32], &[u32])]| DocTree::new(pairs.iter().copied()).expect("tree");
    // Forwarded: [1 2 3 4 5 6], [7 8 9], [10 11 12].
    let docs = [
        tree(&[(&[1, 2, 3], &[4, 9]), (&[1, 2, 3], &[5, 6, 7])]),
        tree(&[(&[7], &[8, 9, 1])]),
        tree(&[(&[10, 11], &[12, 2])]),
    ];
    let starts = [(0usize, 6usize), (6, 3), (9, 3)];
    let all: Vec<&DocTree> = docs.iter().collect();
    let Packed { span, tokens, .. } = Span::packed(&all).expect("span");
    let t = tokens.len();
    let (heads, kv_heads, d) = (4usize, 2usize, 8usize);
    let val = |n: usize, salt: usize| -> Tensor {
        let v: Vec<f32> = (0..n)
            .map(|i| (((i * 31 + salt) % 17) as f32 - 8.0) / 5.0)
            .collect();
        Tensor::from_vec(v, n, &Device::Cpu).expect("v")
    };
    let q = val(heads * t * d, 1).reshape((1, heads, t, d)).expect("q");
    let k = val(kv_heads * t * d, 2)
        .reshape((1, kv_heads, t, d))
        .expect("k");
    let v = val(kv_heads * t * d, 3)
        .reshape((1, kv_heads, t, d))
        .expect("v");
    let mut rope = Rope::new(10_000.0, d, false).expect("rope");
    for window in [None, Some(2)] {
        let mask = span.mask(window).expect("mask");
        let packed = rope_cache_attend(
            &q,
            &k,
            &v,
            &mut rope,
            &mut KvCache::default(),
            &span,
            mask.as_ref(),
        )
        .expect("packed");
        for (doc, &(a, n)) in starts.iter().enumerate() {
            let alone = Span::packed(&all[doc..doc + 1]).expect("span").span;
            let part = |x: &Tensor| x.narrow(2, a, n).expect("narrow");
            let want = rope_cache_attend(
                &part(&q),
                &part(&k),
                &part(&v),
                &mut rope,
                &mut KvCache::default(),
                &alone,
                alone.mask(window).expect("mask").as_ref(),
            )
            .expect("alone");
            let diff = max_diff(&packed.narrow(1, a, n).expect("rows"), &want);
            assert!(diff < 1e-5, "window {window:?}, doc {doc}: max diff {diff}");
        }
        // A last layer's way: the output rows alone as queries, over
        // every row's keys.
        let f = span.finish(0).expect("finish").expect("9 of 12 rows");
        assert_eq!(f.n, 9);
        let (ck, cv) =
            rope_cache(&k, &v, &mut rope, &mut KvCache::default(), &span).expect("cache");
        let q_rows = q.index_select(&f.rows, 2).expect("q rows");
        let f_mask = f.mask(mask.as_ref()).expect("mask rows");
        let got = rope_attend(&q_rows, &ck, &cv, &mut rope, f.queries(), f_mask.as_ref())
            .expect("finish");
        let diff = max_diff(&got, &f.select(&packed).expect("rows"));
        assert!(
            diff < 1e-6,
            "window {window:?}, output rows: max diff {diff}"
        );
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|x| x.abs())
        .and_then(|x| x.flatten_all())
        .and_then(|x| x.max(0))
        .and_then(|x| x.to_scalar::<f32>())
        .expect("diff")
}

#[test]
fn the_last_layer_finishes_only_rows_that_leave_the_model() {
    let rows = |s: &Span, n_out: usize| {
        s.finish(n_out)
            .expect("finish")
            .map(|f| f.rows.to_vec1::<u32>().expect("rows"))
    };
    let long = Span::causal(3, 40);
    assert_eq!(rows(&long, 40), None, "every row");
    assert_eq!(rows(&long, 60), None, "more than every row");
    assert_eq!(rows(&long, 16), Some((24..40).collect()));
    // Four rows would take the matmuls onto the 8-bit kernels.
    assert_eq!(rows(&long, 4), None);
    assert_eq!(rows(&long, 0), Some(vec![]), "keys and values only");
    let short = Span::causal(0, 6);
    assert_eq!(
        rows(&short, 2),
        Some(vec![4, 5]),
        "a short span stays on one path"
    );
    let one = Span::causal(5, 1);
    assert_eq!(rows(&one, 1), None);
    assert_eq!(rows(&one, 0), Some(vec![]));
    let f = long.finish(16).expect("finish").expect("rows");
    assert_eq!(f.queries().positions, (27..43).collect::<Vec<_>>());
    assert!(!f.is_empty() && long.finish(0).expect("f").expect("e").is_empty());
}

#[test]
fn gated_activation_equals_the_formulas() {
    let n = 3 * (1 << 14) + 5;
    let g: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 2001) as f32 / 20.0 - 50.0)
        .collect();
    let u: Vec<f32> = (0..n)
        .map(|i| ((i * 104_729) % 997) as f32 / 50.0 - 9.0)
        .collect();
    let g = Tensor::from_vec(g, (1, n), &Device::Cpu).expect("g");
    let u = Tensor::from_vec(u, (1, n), &Device::Cpu).expect("u");
    // Against the formulas in f64: `exp`'s error (≤ 1.5e-7 relative,
    // vmath) plus a few roundings of the argument, which grow with it —
    // relative to the result, or to the input where the result is tiny
    // (a far negative tail: under 1e-10 of |g·u|).
    let silu = |v: f64| v / (1.0 + (-v).exp());
    let gelu =
        |v: f64| 0.5 * v * (1.0 + (0.797_884_560_802_865_4 * v * (1.0 + 0.044715 * v * v)).tanh());
    let (gs, us) = (
        g.flatten_all().and_then(|x| x.to_vec1::<f32>()).expect("g"),
        u.flatten_all().and_then(|x| x.to_vec1::<f32>()).expect("u"),
    );
    for (act, f) in [
        (Activation::Silu, &silu as &dyn Fn(f64) -> f64),
        (Activation::GeluTanh, &gelu),
    ] {
        let got: Vec<f32> = gated(&g, &u, act)
            .and_then(|x| x.flatten_all())
            .and_then(|x| x.to_vec1())
            .expect("got");
        for ((&a, &v), &w) in got.iter().zip(&gs).zip(&us) {
            let want = f(v as f64) * w as f64;
            let tol = 1e-6 * want.abs() + 1e-10 * (v as f64 * w as f64).abs();
            assert!(
                (a as f64 - want).abs() <= tol,
                "{act:?}({v}) * {w}: {a} vs {want}"
            );
        }
    }
    assert!(gated(&g, &u.narrow(1, 0, 5).expect("narrow"), Activation::Silu).is_err());
    let one = |x: f32| Tensor::from_vec(vec![x], (1, 1), &Device::Cpu).expect("one");
    let y = gated(&one(3.0), &one(2.0), Activation::Silu)
        .and_then(|y| y.flatten_all())
        .and_then(|y| y.to_vec1::<f32>())
        .expect("y");
    assert!(
        (y[0] - 2.0 * 3.0 / (1.0 + (-3f32).exp())).abs() < 1e-6,
        "one chunk, on this thread: {}",
        y[0]
    );
}

#[test]
fn packed_documents_never_see_each_other() {
    // Doc 0: context [1 2]; choices [3 4], [3 5], [6], [7 8 9] — the
    // node of 2 predicts 3, 3, 6 and 7; the node of 3 predicts 4 and 5.
    // Doc 1: context [10]; choices [11], [12 13].
    let doc0 = DocTree::new([
        (&[1u32, 2][..], &[3u32, 4][..]),
        (&[1, 2], &[3, 5]),
        (&[1, 2], &[6]),
        (&[1, 2], &[7, 8, 9]),
    ])
    .expect("tree");
    let doc1 = DocTree::new([(&[10u32][..], &[11u32][..]), (&[10], &[12, 13])]).expect("tree");
    assert_eq!(doc0.len(), 5, "1 2 3 7 8");
    assert_eq!(doc0.targets(), &[3, 4, 3, 5, 6, 7, 8, 9]);
    let p = Span::packed(&[&doc0, &doc1]).expect("span");
    assert_eq!(p.tokens, vec![1, 2, 3, 7, 8, 10, 12]);
    assert_eq!(p.span.positions, vec![0, 1, 2, 2, 3, 0, 1]);
    assert_eq!(p.targets, vec![3, 4, 3, 5, 6, 7, 8, 9, 11, 12, 13]);
    // Output rows are the nodes 2 3 7 8 | 10 12, each once.
    assert_eq!(p.span.n_outputs(), Some(6));
    assert_eq!(p.rows, vec![0, 1, 0, 1, 0, 0, 2, 3, 4, 4, 5]);
    let m = p.span.mask(None).expect("mask").expect("some");
    let t = true;
    let f = false;
    assert_eq!(
        visible(&m),
        vec![
            vec![t, f, f, f, f, f, f],
            vec![t, t, f, f, f, f, f],
            vec![t, t, t, f, f, f, f],
            vec![t, t, f, t, f, f, f],
            vec![t, t, f, t, t, f, f],
            vec![f, f, f, f, f, t, f],
            vec![f, f, f, f, f, t, t],
        ]
    );
    // Nothing predicts the first token after an empty context.
    assert!(DocTree::new([(&[][..], &[1u32][..])]).is_none());
}

#[test]
fn packed_documents_share_the_nodes_they_begin_with() {
    // Doc 0: context [1 2]; choices [3 4], [3 5] (nodes 1 2 3).
    // Doc 1: context [1 2 3]; choice [9]: all its nodes are doc 0's,
    // its target predicted by doc 0's node 3.
    // Doc 2: context [1 6]; choice [7]: shares node 1 only.
    let doc0 = DocTree::new([(&[1u32, 2][..], &[3u32, 4][..]), (&[1, 2], &[3, 5])]).expect("tree");
    let doc1 = DocTree::new([(&[1u32, 2, 3][..], &[9u32][..])]).expect("tree");
    let doc2 = DocTree::new([(&[1u32, 6][..], &[7u32][..])]).expect("tree");
    let p = Span::packed(&[&doc0, &doc1, &doc2]).expect("span");
    assert_eq!(p.tokens, vec![1, 2, 3, 6]);
    assert_eq!(p.span.positions, vec![0, 1, 2, 1]);
    assert_eq!(p.doc_tokens, vec![3, 0, 1]);
    assert_eq!(p.targets, vec![3, 4, 3, 5, 9, 7]);
    // Output rows: nodes 2, 3 (shared by docs 0 and 1), 6.
    assert_eq!(p.span.n_outputs(), Some(3));
    assert_eq!(p.rows, vec![0, 1, 0, 1, 1, 2]);
    let m = p.span.mask(None).expect("mask").expect("some");
    let (t, f) = (true, false);
    assert_eq!(
        visible(&m),
        vec![
            vec![t, f, f, f],
            vec![t, t, f, f],
            vec![t, t, t, f],
            vec![t, f, f, t],
        ]
    );
}

#[test]
fn sliding_window_hides_far_keys() {
    // Window 2: position 3 sees positions 2 and 3 only.
    let m = Span::causal(3, 1)
        .mask(Some(2))
        .expect("mask")
        .expect("some");
    assert_eq!(visible(&m), vec![vec![false, false, true, true]]);
}
