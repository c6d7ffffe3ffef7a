//! The `low_rank` step: each target matrix `W` (`[out, in]`) replaced by
//! the truncated SVD `W ≈ B·A` with `A = √S_r·V_rᵀ` (`[r, in]`, stored as
//! `<name>.lr_a`) and `B = U_r·√S_r` (`[out, r]`, `<name>.lr_b`); the model
//! then runs two thinner matmuls (`backend::candle::nn::linear::Linear`). The SVD is faer's, in
//! f64. The relative Frobenius error of a rank-`r` truncation is
//! `sqrt(Σ_{i≥r} s_i² / Σ s_i²)` (Eckart–Young), which the report shows.

use candle_core::{Device, Tensor};
use faer::Mat;

use super::tensors::{matrix_name, rel_error, WTensor, Working};
use super::{TensorRow, VariantError};
use crate::spec::steps::RankRule;

/// A truncated factorization of one matrix.
pub struct Factors {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    pub rank: usize,
    pub full_rank: usize,
    /// All singular values, largest first.
    pub singular_values: Vec<f64>,
    /// `sqrt(Σ_{i≥rank} s_i² / Σ s_i²)`.
    pub discarded_energy_rel: f64,
}

/// The rank a rule keeps given the singular values (largest first).
pub fn choose_rank(rule: RankRule, s: &[f64]) -> usize {
    let full = s.len();
    match rule {
        RankRule::RankRatio(r) => ((r * full as f64).round() as usize).clamp(1, full.max(1)),
        RankRule::Energy(e) => {
            let total: f64 = s.iter().map(|x| x * x).sum();
            let mut acc = 0.0;
            for (i, x) in s.iter().enumerate() {
                acc += x * x;
                if acc >= e * total * (1.0 - 1e-12) {
                    return i + 1;
                }
            }
            full.max(1)
        }
    }
}

/// Factorizes `w` (`[out, in]`, f32) keeping the rank `rule` chooses.
pub fn factorize(w: &Tensor, rule: RankRule) -> Result<Factors, String> {
    let (out, inp) = w.dims2().map_err(|e| e.to_string())?;
    let v = w
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| e.to_string())?;
    let m = Mat::<f64>::from_fn(out, inp, |i, j| v[i * inp + j] as f64);
    let svd = m
        .thin_svd()
        .map_err(|e| format!("SVD did not converge: {e:?}"))?;
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let r = choose_rank(rule, &s);
    let root: Vec<f64> = s.iter().map(|x| x.max(0.0).sqrt()).collect();
    let (u, vm) = (svd.U(), svd.V());
    let mut a = Vec::with_capacity(r * inp);
    for k in 0..r {
        for j in 0..inp {
            a.push((root[k] * vm[(j, k)]) as f32);
        }
    }
    let mut b = Vec::with_capacity(out * r);
    for i in 0..out {
        for k in 0..r {
            b.push((u[(i, k)] * root[k]) as f32);
        }
    }
    let total: f64 = s.iter().map(|x| x * x).sum();
    let dropped: f64 = s[r..].iter().map(|x| x * x).sum();
    Ok(Factors {
        a: Tensor::from_vec(a, (r, inp), &Device::Cpu).map_err(|e| e.to_string())?,
        b: Tensor::from_vec(b, (out, r), &Device::Cpu).map_err(|e| e.to_string())?,
        rank: r,
        full_rank: s.len(),
        singular_values: s,
        discarded_energy_rel: if total > 0.0 {
            (dropped / total).sqrt()
        } else {
            0.0
        },
    })
}

/// Applies a `low_rank` step to the target matrices (factors of an earlier
/// step are left alone).
pub fn apply(
    w: &mut Working,
    step: usize,
    rule: RankRule,
    targets: &[String],
) -> Result<Vec<TensorRow>, VariantError> {
    let mut rows = Vec::new();
    let names: Vec<String> = w
        .matrices(targets)
        .into_iter()
        .filter(|n| matrix_name(n).is_some_and(|m| m.suffix.is_empty()))
        .collect();
    for name in names {
        let Some(t) = w.tensors.remove(&name) else {
            continue;
        };
        let f = factorize(&t.values, rule).map_err(|e| VariantError::tensor(&name, e))?;
        let approx =
            f.b.matmul(&f.a)
                .map_err(|e| VariantError::tensor(&name, e))?;
        let err = rel_error(&t.values, &approx).map_err(|e| VariantError::tensor(&name, e))?;
        let before = t.values.elem_count() as u64;
        let after = (f.a.elem_count() + f.b.elem_count()) as u64;
        rows.push(TensorRow {
            step,
            op: "low_rank".into(),
            tensor: name.clone(),
            shape: t.values.dims().to_vec(),
            rank: Some((f.rank, f.full_rank)),
            rel_error: Some(err),
            params: Some((before, after)),
            ..TensorRow::default()
        });
        w.tensors
            .insert(format!("{name}.lr_a"), WTensor::dense(f.a));
        w.tensors
            .insert(format!("{name}.lr_b"), WTensor::dense(f.b));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::variant::quantize::tests::weights;

    #[test]
    fn error_falls_with_rank_and_equals_discarded_energy() {
        let w = weights(48, 32, 21);
        let mut last = f64::INFINITY;
        for ratio in [0.125, 0.25, 0.5, 0.75, 1.0] {
            let f = factorize(&w, RankRule::RankRatio(ratio)).expect("svd");
            assert_eq!(f.rank, (ratio * 32.0_f64).round() as usize);
            assert_eq!(
                (f.a.dims(), f.b.dims()),
                (&[f.rank, 32][..], &[48, f.rank][..])
            );
            let approx = f.b.matmul(&f.a).expect("matmul");
            let e = rel_error(&w, &approx).expect("err");
            assert!(
                (e - f.discarded_energy_rel).abs() < 1e-4,
                "rank {}: measured {e} vs discarded energy {}",
                f.rank,
                f.discarded_energy_rel
            );
            assert!(e < last, "rank {}: {e} ≥ {last}", f.rank);
            last = e;
        }
        assert!(last < 1e-5, "full rank reconstructs: {last}");
    }

    #[test]
    fn energy_rule_keeps_the_smallest_sufficient_rank() {
        let s = [4.0, 2.0, 1.0, 1.0];
        // Energies: 16, 4, 1, 1 of 22.
        assert_eq!(choose_rank(RankRule::Energy(0.7), &s), 1);
        assert_eq!(choose_rank(RankRule::Energy(0.9), &s), 2);
        assert_eq!(choose_rank(RankRule::Energy(1.0), &s), 4);
        assert_eq!(choose_rank(RankRule::RankRatio(0.01), &s), 1);
        let w = weights(20, 20, 4);
        let f = factorize(&w, RankRule::Energy(0.9)).expect("svd");
        let kept: f64 = f.singular_values[..f.rank].iter().map(|x| x * x).sum();
        let total: f64 = f.singular_values.iter().map(|x| x * x).sum();
        assert!(kept / total >= 0.9);
        let less: f64 = f.singular_values[..f.rank - 1].iter().map(|x| x * x).sum();
        assert!(less / total < 0.9);
    }
}
