//! The `prune` step: unstructured magnitude pruning (per matrix or one
//! global threshold), semi-structured n:m pruning (in every group of `m`
//! consecutive weights of a row only the `n` largest in magnitude stay),
//! and structured layer dropping (blocks removed, the rest renumbered).
//!
//! Magnitude pruning zeroes exactly `round(sparsity · n)` weights (ties
//! broken by position), so the requested sparsity is met exactly (weights
//! already zero are the smallest and count among them).

use candle_core::quantized::gguf_file::Value;
use candle_core::Tensor;

use super::tensors::{WTensor, Working};
use super::{TensorRow, VariantError};
use crate::spec::steps::Scope;

/// Zeroes exactly `k` of the smallest-magnitude entries of `v` (ties: lower index first).
pub fn magnitude_prune(v: &mut [f32], k: usize) {
    let k = k.min(v.len());
    if k == 0 {
        return;
    }
    let mut idx: Vec<u32> = (0..v.len() as u32).collect();
    let key = |i: &u32| (v[*i as usize].abs(), *i);
    idx.select_nth_unstable_by(k - 1, |a, b| {
        let (ka, kb) = (key(a), key(b));
        ka.0.total_cmp(&kb.0).then(ka.1.cmp(&kb.1))
    });
    for &i in &idx[..k] {
        v[i as usize] = 0.0;
    }
}

/// Keeps the `n` largest-magnitude entries of every group of `m` (ties:
/// lower index kept). `v.len()` must be a multiple of `m`.
pub fn n_m_prune(v: &mut [f32], n: usize, m: usize) {
    let mut order: Vec<usize> = Vec::with_capacity(m);
    for g in v.chunks_mut(m) {
        order.clear();
        order.extend(0..g.len());
        order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()).then(a.cmp(&b)));
        for &i in &order[n.min(g.len())..] {
            g[i] = 0.0;
        }
    }
}

fn values(name: &str, t: &Tensor) -> Result<Vec<f32>, VariantError> {
    t.flatten_all()
        .and_then(|x| x.to_vec1::<f32>())
        .map_err(|e| VariantError::tensor(name, e))
}

fn put(w: &mut WTensor, name: &str, v: Vec<f32>) -> Result<(), VariantError> {
    let shape = w.values.shape().clone();
    w.values = Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
        .map_err(|e| VariantError::tensor(name, e))?;
    w.stored = None;
    Ok(())
}

fn sparsity(v: &[f32]) -> f64 {
    v.iter().filter(|x| **x == 0.0).count() as f64 / v.len().max(1) as f64
}

fn row(
    step: usize,
    op: &str,
    name: &str,
    shape: &[usize],
    before: &[f32],
    after: &[f32],
) -> TensorRow {
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in before.iter().zip(after) {
        num += ((*a - *b) as f64).powi(2);
        den += (*a as f64).powi(2);
    }
    TensorRow {
        step,
        op: op.into(),
        tensor: name.into(),
        shape: shape.to_vec(),
        sparsity: Some(sparsity(after)),
        rel_error: Some(if den > 0.0 { (num / den).sqrt() } else { 0.0 }),
        ..TensorRow::default()
    }
}

/// Magnitude pruning of the target matrices.
pub fn magnitude(
    w: &mut Working,
    step: usize,
    target_sparsity: f64,
    scope: Scope,
    targets: &[String],
) -> Result<Vec<TensorRow>, VariantError> {
    let names = w.matrices(targets);
    // Global: one threshold over all target matrices; the exact count is
    // met by zeroing the entries equal to the threshold in name/position order.
    let global = if scope == Scope::Global {
        let mut all: Vec<f32> = Vec::new();
        for n in &names {
            all.extend(values(n, &w.tensors[n].values)?.iter().map(|x| x.abs()));
        }
        let k = (target_sparsity * all.len() as f64).round() as usize;
        if k == 0 {
            None
        } else {
            let (_, th, _) = all.select_nth_unstable_by(k - 1, f32::total_cmp);
            let th = *th;
            let below = all.iter().filter(|x| **x < th).count();
            Some((th, k - below))
        }
    } else {
        None
    };
    let mut ties_left = global.map_or(0, |g| g.1);
    let mut rows = Vec::new();
    for n in &names {
        let Some(t) = w.tensors.get_mut(n) else {
            continue;
        };
        let before = values(n, &t.values)?;
        let mut v = before.clone();
        match (scope, global) {
            (Scope::PerMatrix, _) => {
                let k = (target_sparsity * v.len() as f64).round() as usize;
                magnitude_prune(&mut v, k);
            }
            (Scope::Global, Some((th, _))) => {
                for x in v.iter_mut() {
                    if x.abs() < th {
                        *x = 0.0;
                    } else if x.abs() == th && ties_left > 0 {
                        *x = 0.0;
                        ties_left -= 1;
                    }
                }
            }
            (Scope::Global, None) => {}
        }
        let shape = t.values.dims().to_vec();
        rows.push(row(step, "prune magnitude", n, &shape, &before, &v));
        put(t, n, v)?;
    }
    Ok(rows)
}

/// n:m pruning along the rows of the target matrices; an error is (spec field, message).
pub fn n_m(
    w: &mut Working,
    step: usize,
    n: usize,
    m: usize,
    targets: &[String],
) -> Result<Vec<TensorRow>, (String, String)> {
    let mut rows = Vec::new();
    for name in w.matrices(targets) {
        let Some(t) = w.tensors.get_mut(&name) else {
            continue;
        };
        let shape = t.values.dims().to_vec();
        let cols = shape.last().copied().unwrap_or(0);
        if cols % m != 0 {
            return Err((
                "m".into(),
                format!("{m} does not divide the row length {cols} of `{name}` (pick an m that divides every row, e.g. 4)"),
            ));
        }
        let before = values(&name, &t.values).map_err(|e| ("m".into(), e.to_string()))?;
        let mut v = before.clone();
        n_m_prune(&mut v, n, m);
        rows.push(row(step, "prune n:m", &name, &shape, &before, &v));
        put(t, &name, v).map_err(|e| ("m".into(), e.to_string()))?;
    }
    Ok(rows)
}

pub use crate::model::gguf::LAYER_ORIGIN_KEY;

/// Removes decoder blocks `drop` (sorted, unique), renumbers the rest and
/// updates `<arch>.block_count`. Errors name the offending index.
pub fn drop_layers(w: &mut Working, step: usize, drop: &[usize]) -> Result<Vec<TensorRow>, String> {
    let depth = w
        .block_count()
        .ok_or_else(|| format!("the model has no `{}.block_count`", w.arch))?;
    if let Some(&bad) = drop.iter().find(|&&i| i >= depth) {
        return Err(format!(
            "block {bad} is past the model's depth ({depth} blocks: 0–{})",
            depth.saturating_sub(1)
        ));
    }
    if drop.len() >= depth {
        return Err(format!("dropping all {depth} blocks leaves no model"));
    }
    let origin: Vec<usize> = match w
        .metadata
        .get(LAYER_ORIGIN_KEY)
        .and_then(|v| v.to_vec().ok())
    {
        Some(list) => list
            .iter()
            .map(|v| v.to_u32().map(|x| x as usize).unwrap_or(0))
            .collect(),
        None => (0..depth).collect(),
    };
    let kept: Vec<usize> = (0..depth).filter(|i| !drop.contains(i)).collect();
    let new_index = |old: usize| kept.iter().position(|&k| k == old);
    let mut rows: Vec<TensorRow> = drop
        .iter()
        .map(|i| TensorRow {
            step,
            op: "drop layer".into(),
            tensor: format!("blk.{i}.*"),
            sparsity: Some(1.0),
            rel_error: Some(1.0),
            ..TensorRow::default()
        })
        .collect();
    let old = std::mem::take(&mut w.tensors);
    for (name, t) in old {
        let Some(rest) = name.strip_prefix("blk.") else {
            w.tensors.insert(name, t);
            continue;
        };
        let Some((i, tail)) = rest.split_once('.') else {
            w.tensors.insert(name, t);
            continue;
        };
        let Ok(i) = i.parse::<usize>() else {
            w.tensors.insert(name, t);
            continue;
        };
        if let Some(r) = rows.iter_mut().find(|r| r.tensor == format!("blk.{i}.*")) {
            let p = r.params.get_or_insert((0, 0));
            p.0 += t.values.elem_count() as u64;
        }
        if let Some(j) = new_index(i) {
            w.tensors.insert(format!("blk.{j}.{tail}"), t);
        }
    }
    w.metadata.insert(
        format!("{}.block_count", w.arch),
        Value::U32(kept.len() as u32),
    );
    w.metadata.insert(
        LAYER_ORIGIN_KEY.into(),
        Value::Array(
            kept.iter()
                .map(|&k| Value::U32(origin.get(k).copied().unwrap_or(k) as u32))
                .collect(),
        ),
    );
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::variant::quantize::tests::weights;

    #[test]
    fn magnitude_hits_the_exact_sparsity() {
        let w = weights(48, 96, 11);
        let mut v = w.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("v");
        let orig = v.clone();
        for s in [0.1f64, 0.5, 0.9] {
            v.clone_from(&orig);
            let k = (s * v.len() as f64).round() as usize;
            magnitude_prune(&mut v, k);
            assert_eq!(v.iter().filter(|x| **x == 0.0).count(), k, "sparsity {s}");
            // Every kept weight is at least as large as every pruned one.
            let max_pruned = orig
                .iter()
                .zip(&v)
                .filter(|(_, p)| **p == 0.0)
                .fold(0f32, |m, (o, _)| m.max(o.abs()));
            let min_kept = v
                .iter()
                .filter(|x| **x != 0.0)
                .fold(f32::MAX, |m, x| m.min(x.abs()));
            assert!(max_pruned <= min_kept);
        }
        // Ties are broken by position, still exact.
        let mut flat = vec![1.0f32; 10];
        magnitude_prune(&mut flat, 3);
        assert_eq!(flat, [0., 0., 0., 1., 1., 1., 1., 1., 1., 1.]);
    }

    #[test]
    fn n_m_leaves_a_valid_2_of_4_pattern() {
        let w = weights(16, 64, 5);
        let orig = w.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("v");
        let mut v = orig.clone();
        n_m_prune(&mut v, 2, 4);
        for (g, o) in v.chunks(4).zip(orig.chunks(4)) {
            assert_eq!(g.iter().filter(|x| **x != 0.0).count(), 2, "{g:?}");
            let kept_min = g
                .iter()
                .filter(|x| **x != 0.0)
                .fold(f32::MAX, |m, x| m.min(x.abs()));
            let dropped_max = g
                .iter()
                .zip(o)
                .filter(|(x, _)| **x == 0.0)
                .fold(0f32, |m, (_, o)| m.max(o.abs()));
            assert!(dropped_max <= kept_min);
        }
        assert_eq!(sparsity(&v), 0.5);
    }

    fn tiny(depth: usize) -> Working {
        let mut tensors = std::collections::BTreeMap::new();
        for i in 0..depth {
            tensors.insert(
                format!("blk.{i}.attn_q.weight"),
                WTensor::dense(weights(4, 8, i as u64)),
            );
        }
        tensors.insert(
            "token_embd.weight".into(),
            WTensor::dense(weights(4, 8, 99)),
        );
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("llama.block_count".into(), Value::U32(depth as u32));
        Working {
            arch: "llama".into(),
            metadata,
            tensors,
        }
    }

    #[test]
    fn dropping_layers_renumbers_and_counts() {
        let mut w = tiny(5);
        let q3 = w.tensors["blk.3.attn_q.weight"]
            .values
            .to_vec2::<f32>()
            .expect("v");
        drop_layers(&mut w, 0, &[1, 2]).expect("drop");
        assert_eq!(w.block_count(), Some(3));
        assert_eq!(
            w.tensors["blk.1.attn_q.weight"]
                .values
                .to_vec2::<f32>()
                .expect("v"),
            q3
        );
        assert!(!w.tensors.contains_key("blk.3.attn_q.weight"));
        let origin: Vec<u32> = w.metadata[LAYER_ORIGIN_KEY]
            .to_vec()
            .expect("array")
            .iter()
            .map(|v| v.to_u32().expect("u32"))
            .collect();
        assert_eq!(origin, [0, 3, 4]);
        // A second drop composes with the first.
        drop_layers(&mut w, 1, &[0]).expect("drop");
        let origin: Vec<u32> = w.metadata[LAYER_ORIGIN_KEY]
            .to_vec()
            .expect("array")
            .iter()
            .map(|v| v.to_u32().expect("u32"))
            .collect();
        assert_eq!(origin, [3, 4]);
        let e = drop_layers(&mut tiny(4), 0, &[4]).expect_err("past depth");
        assert!(e.contains("block 4") && e.contains("4 blocks"), "{e}");
    }

    #[test]
    fn global_threshold_is_exact_over_all_matrices() {
        let mut w = tiny(3);
        let targets = vec!["attn_q".to_string()];
        magnitude(&mut w, 0, 0.5, Scope::Global, &targets).expect("prune");
        let zeros: usize = (0..3)
            .map(|i| {
                w.tensors[&format!("blk.{i}.attn_q.weight")]
                    .values
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .expect("v")
                    .iter()
                    .filter(|x| **x == 0.0)
                    .count()
            })
            .sum();
        assert_eq!(zeros, 48);
        // The embedding is not a target.
        let e = &w.tensors["token_embd.weight"].values;
        assert_eq!(crate::variant::tensors::nonzero(e).expect("nz"), 32);
    }
}
