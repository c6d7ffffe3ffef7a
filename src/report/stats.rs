//! Paired statistics for comparing two runs on the same documents: the exact
//! McNemar test on per-sample correctness and a confidence interval for the
//! mean paired difference, and what counts as a right sample. The only
//! statistics of `compare` and of the variant lineage. Pure functions; no
//! I/O, no polars, no candle.

use crate::record::SampleRecord;

/// Two-sided exact McNemar p-value from the discordant counts: `b` documents
/// right in the baseline and wrong now, `c` wrong before and right now.
/// Under H0 the `b + c` discordant pairs split Binomial(b + c, 1/2).
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // P(X <= k) for X ~ Bin(n, 1/2), summed in log space to stay finite for large n.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut terms = Vec::with_capacity(k as usize + 1);
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        terms.push(ln_choose + ln_half_n);
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = max.exp() * terms.iter().map(|t| (t - max).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

/// The discordant pairs of per-document scores: documents right (> 0.5)
/// under `a` and wrong (< 0.5) under `b`, and the reverse.
pub fn discordant(a: &[f64], b: &[f64]) -> (u64, u64) {
    let count =
        |f: fn(f64, f64) -> bool| a.iter().zip(b).filter(|(x, y)| f(**x, **y)).count() as u64;
    (
        count(|x, y| x > 0.5 && y < 0.5),
        count(|x, y| x < 0.5 && y > 0.5),
    )
}

/// Mean of paired differences with its standard error and a two-sided 95%
/// normal interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PairedDiff {
    pub n: usize,
    pub mean: f64,
    /// `sd(d) / sqrt(n)`; 0 when every difference is equal.
    pub stderr: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// `current[i] - baseline[i]` summarized; `None` when the slices are empty or
/// of different lengths.
pub fn paired_diff(baseline: &[f64], current: &[f64]) -> Option<PairedDiff> {
    if baseline.is_empty() || baseline.len() != current.len() {
        return None;
    }
    let n = baseline.len();
    let d: Vec<f64> = current.iter().zip(baseline).map(|(c, b)| c - b).collect();
    let mean = d.iter().sum::<f64>() / n as f64;
    let stderr = if n > 1 {
        let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        (var / n as f64).sqrt()
    } else {
        0.0
    };
    Some(PairedDiff {
        n,
        mean,
        stderr,
        ci_low: mean - Z95 * stderr,
        ci_high: mean + Z95 * stderr,
    })
}

/// Difference of two independent means with their standard errors (used
/// when per-sample records are missing and pairing is impossible).
pub fn unpaired_diff(base: f64, base_se: f64, cur: f64, cur_se: f64, n: usize) -> PairedDiff {
    let se = (base_se.powi(2) + cur_se.powi(2)).sqrt();
    let mean = cur - base;
    PairedDiff {
        n,
        mean,
        stderr: se,
        ci_low: mean - Z95 * se,
        ci_high: mean + Z95 * se,
    }
}

/// Two-sided p-value of a z statistic (normal approximation).
pub fn z_test_p(mean: f64, se: f64) -> f64 {
    if se <= 0.0 {
        return if mean == 0.0 { 1.0 } else { 0.0 };
    }
    2.0 * normal_sf((mean / se).abs())
}

/// Upper tail of the standard normal, via the complementary error function
/// (Numerical Recipes' erfc approximation, relative error < 1.2e-7).
fn normal_sf(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x);
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    0.5 * t * poly.exp()
}

/// The standard normal quantile: the `z` with `P(Z > z) = q`, by bisection
/// on [`normal_sf`] (60 halvings of [-40, 40] reach f64 resolution; the
/// tail's own error, < 1.2e-7 relative, bounds the result). Only a handful
/// of quantiles are needed per report, so speed does not matter.
pub fn normal_upper_quantile(q: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if normal_sf(mid) > q {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-12 {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// Holm's step-down adjustment: adjusted p-values in the input's order
/// (`p_(i) * (m - i + 1)`, made monotone, capped at 1), as statsmodels'
/// `multipletests(method="holm")` returns them.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut out = vec![0.0; m];
    let mut running = 0.0f64;
    for (rank, &i) in order.iter().enumerate() {
        let adj = (p[i] * (m - rank) as f64).min(1.0);
        running = running.max(adj);
        out[i] = running;
    }
    out
}

/// Power for [`mde_paired`]: 80%, the usual planning value.
pub const POWER: f64 = 0.80;

/// The minimum detectable drop of a paired binary comparison (McNemar) of
/// `n` documents at two-sided level `alpha` and power [`POWER`], given the
/// discordance `psi` (the share of documents whose correctness differs
/// between the two runs). Connor's (1987) normal approximation,
/// `delta * sqrt(n) = z_a * sqrt(psi) + z_b * sqrt(psi - delta^2)`,
/// solved for `delta`, with `psi` raised to at least `delta` (a drop of
/// `delta` moves at least that share of documents). Returned as a
/// proportion (0.05 = 5 points); 1.0 when no drop of at most 1 is
/// detectable.
pub fn mde_paired(n: usize, psi: f64, alpha: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let za = normal_upper_quantile(alpha / 2.0);
    let zb = normal_upper_quantile(1.0 - POWER);
    let nf = n as f64;
    // The smallest drop detectable at discordance `p` (closed form of the
    // quadratic in delta), then the fixed point with p = max(psi, delta).
    let solve = |p: f64| -> f64 {
        let a = za * p.sqrt();
        let disc = zb * zb * (nf * p - a * a + zb * zb * p);
        ((a * nf.sqrt() + disc.max(0.0).sqrt()) / (nf + zb * zb)).min(1.0)
    };
    // From delta = 1 down: `solve` grows with its argument, so the
    // iteration falls to the largest fixed point (0 is a spurious one when
    // no document is discordant).
    let mut delta = 1.0f64;
    for _ in 0..200 {
        let next = solve(psi.clamp(0.0, 1.0).max(delta));
        if (next - delta).abs() < 1e-12 {
            delta = next;
            break;
        }
        delta = next;
    }
    delta
}

/// Documents a paired comparison needs to detect a drop of `delta` at
/// two-sided `alpha` and [`POWER`], at discordance `psi` (raised to at
/// least `delta`): Connor's `n = (z_a sqrt(psi) + z_b sqrt(psi - delta^2))^2
/// / delta^2`, rounded up.
pub fn documents_needed(delta: f64, psi: f64, alpha: f64) -> u64 {
    if delta.is_nan() || delta <= 0.0 {
        return u64::MAX;
    }
    let za = normal_upper_quantile(alpha / 2.0);
    let zb = normal_upper_quantile(1.0 - POWER);
    let p = psi.clamp(0.0, 1.0).max(delta);
    let n = (za * p.sqrt() + zb * (p - delta * delta).max(0.0).sqrt()).powi(2) / (delta * delta);
    n.ceil() as u64
}

/// KL divergence `KL(p ‖ q)` in nats between two models' distributions
/// over the same choices, each the softmax of its choice log-likelihoods
/// (`p` the reference's). `None` when the choice counts differ or are
/// empty.
pub fn choice_kl(reference_ll: &[f64], model_ll: &[f64]) -> Option<f64> {
    if reference_ll.is_empty() || reference_ll.len() != model_ll.len() {
        return None;
    }
    let log_softmax = |xs: &[f64]| -> Vec<f64> {
        let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        xs.iter().map(|x| x - lse).collect()
    };
    let (lp, lq) = (log_softmax(reference_ll), log_softmax(model_ll));
    let kl = lp
        .iter()
        .zip(&lq)
        .map(|(a, b)| {
            if a.is_finite() {
                a.exp() * (a - b)
            } else {
                0.0
            }
        })
        .sum::<f64>();
    kl.is_finite().then_some(kl.max(0.0))
}

/// Retention `mean(model) / mean(reference)` over paired per-document
/// scores, with a 95% interval by the delta method on the paired data:
/// `var(r) ≈ (var(m) + r² var(f) − 2 r cov(m, f)) / (n mean(f)²)`.
/// `None` when the reference's mean is 0 or there are fewer than 2 pairs.
pub fn retention(reference: &[f64], model: &[f64]) -> Option<(f64, f64, f64)> {
    let n = reference.len();
    if n < 2 || n != model.len() {
        return None;
    }
    let nf = n as f64;
    let mf = reference.iter().sum::<f64>() / nf;
    let mm = model.iter().sum::<f64>() / nf;
    if mf <= 0.0 {
        return None;
    }
    let r = mm / mf;
    let (mut vf, mut vm, mut cov) = (0.0, 0.0, 0.0);
    for (f, m) in reference.iter().zip(model) {
        vf += (f - mf).powi(2);
        vm += (m - mm).powi(2);
        cov += (f - mf) * (m - mm);
    }
    let (vf, vm, cov) = (vf / (nf - 1.0), vm / (nf - 1.0), cov / (nf - 1.0));
    let var = ((vm + r * r * vf - 2.0 * r * cov) / (nf * mf * mf)).max(0.0);
    let h = Z95 * var.sqrt();
    Some((r, r - h, r + h))
}

/// How closely a model follows a reference on the same documents (a
/// student its teacher, a variant its parent): see [`fidelity`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Fidelity {
    /// Documents both scored.
    pub n: usize,
    /// Share of them where both pick the same choice (`None` without
    /// choice log-likelihoods, as in generation tasks).
    pub agreement: Option<f64>,
    /// Mean KL(reference ‖ model) over the choice distributions, nats.
    pub mean_kl: Option<f64>,
    /// Model score / reference score, with its paired 95% interval.
    pub retention: Option<(f64, f64, f64)>,
}

/// Pairs `model`'s samples with `reference`'s on `doc_id` and measures the
/// agreement of their picks under `metric` (`pred_norm` for acc_norm),
/// the mean [`choice_kl`] and the [`retention`] of `metric`.
pub fn fidelity(reference: &[SampleRecord], model: &[SampleRecord], metric: &str) -> Fidelity {
    let by_doc: std::collections::BTreeMap<usize, &SampleRecord> =
        reference.iter().map(|s| (s.doc_id, s)).collect();
    let pick = |x: &SampleRecord| {
        if metric == "acc_norm" {
            x.pred_norm
        } else {
            x.pred
        }
    };
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    let (mut same, mut choices, mut kls) = (0usize, 0usize, Vec::new());
    for s in model {
        let Some(t) = by_doc.get(&s.doc_id) else {
            continue;
        };
        let (Some(x), Some(y)) = (sample_correct(s, metric), sample_correct(t, metric)) else {
            continue;
        };
        xs.push(x);
        ys.push(y);
        if !s.loglikelihoods.is_empty() && !t.loglikelihoods.is_empty() {
            choices += 1;
            same += usize::from(pick(s) == pick(t));
            kls.extend(choice_kl(&t.loglikelihoods, &s.loglikelihoods));
        }
    }
    Fidelity {
        n: xs.len(),
        agreement: (choices > 0).then(|| same as f64 / choices as f64),
        mean_kl: (!kls.is_empty()).then(|| kls.iter().sum::<f64>() / kls.len() as f64),
        retention: retention(&ys, &xs),
    }
}

/// The points not dominated by any other: lower `x` is better, higher `y`
/// is better. Returned sorted by `x`; ties in both keep the first.
pub fn pareto_frontier(points: &[(f64, f64)]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].0.is_finite() && points[i].1.is_finite())
        .collect();
    idx.sort_by(|&a, &b| {
        points[a]
            .0
            .total_cmp(&points[b].0)
            .then(points[b].1.total_cmp(&points[a].1))
    });
    let mut out = Vec::new();
    let mut best_y = f64::NEG_INFINITY;
    for i in idx {
        if points[i].1 > best_y {
            best_y = points[i].1;
            out.push(i);
        }
    }
    out
}

/// A sample's correctness under `metric` (1 right, 0 wrong, or the
/// sample's own score for that metric); `None` for corpus-level metrics
/// (f1, mcc), which have no per-document correctness to pair.
pub fn sample_correct(s: &SampleRecord, metric: &str) -> Option<f64> {
    if let Some(v) = s.metrics.get(metric).and_then(|v| v.as_f64()) {
        return Some(v);
    }
    match metric {
        "acc_norm" => Some(f64::from(u8::from(s.pred_norm == s.gold))),
        "f1" | "mcc" => None,
        _ => Some(f64::from(u8::from(s.pred == s.gold))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_binomial_tables() {
        // b=0, c=0: no evidence.
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // b=10, c=0: 2 * 0.5^10.
        assert!((mcnemar_exact(10, 0) - 2.0 * 0.5f64.powi(10)).abs() < 1e-15);
        // b=2, c=8: 2 * P(X<=2), X~Bin(10,.5) = 2 * 56/1024 (scipy: 0.109375).
        assert!((mcnemar_exact(2, 8) - 0.109375).abs() < 1e-12);
        // Symmetric and capped at 1.
        assert_eq!(mcnemar_exact(8, 2), mcnemar_exact(2, 8));
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        // Large n stays finite: b=400, c=600 is highly significant.
        let p = mcnemar_exact(400, 600);
        assert!(p > 0.0 && p < 1e-9, "{p}");
    }

    #[test]
    fn paired_diff_of_known_vectors() {
        let base = [1.0, 1.0, 0.0, 0.0];
        let cur = [1.0, 0.0, 0.0, 1.0];
        let d = paired_diff(&base, &cur).expect("diff");
        assert_eq!(d.mean, 0.0);
        // d = [0,-1,0,1]: var = 2/3, se = sqrt(2/3/4).
        assert!((d.stderr - (2.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-15);
        assert!((d.ci_high + d.ci_low).abs() < 1e-15);
        assert!(paired_diff(&base, &cur[..3]).is_none());
        assert!(paired_diff(&[], &[]).is_none());
    }

    #[test]
    fn normal_tail_matches_known_values() {
        assert!((z_test_p(1.959_963_984_540_054, 1.0) - 0.05).abs() < 1e-6);
        assert!((z_test_p(0.0, 1.0) - 1.0).abs() < 1e-6);
        assert_eq!(z_test_p(0.0, 0.0), 1.0);
    }

    #[test]
    fn frontier_keeps_undominated_points() {
        let pts = [(1.0, 0.5), (2.0, 0.4), (3.0, 0.7), (0.5, 0.3), (4.0, 0.7)];
        assert_eq!(pareto_frontier(&pts), vec![3, 0, 2]);
    }

    #[test]
    fn normal_quantiles_match_tables() {
        assert!((normal_upper_quantile(0.025) - 1.959_964).abs() < 1e-5);
        assert!((normal_upper_quantile(0.2) - 0.841_621).abs() < 1e-5);
        assert!((normal_upper_quantile(0.5)).abs() < 1e-6);
    }

    #[test]
    fn holm_matches_statsmodels() {
        // statsmodels.stats.multitest.multipletests([0.01, 0.04, 0.03, 0.005],
        // method="holm")[1] = [0.03, 0.06, 0.06, 0.02].
        let adj = holm(&[0.01, 0.04, 0.03, 0.005]);
        for (a, want) in adj.iter().zip([0.03, 0.06, 0.06, 0.02]) {
            assert!((a - want).abs() < 1e-12, "{adj:?}");
        }
        assert!(holm(&[]).is_empty());
        assert_eq!(holm(&[0.7, 0.9]), vec![1.0, 1.0]);
    }

    #[test]
    fn mde_and_sample_size_are_inverse() {
        // n = 1000 documents with 10% discordance, alpha 0.05: Connor's
        // formula by hand: (1.96 * 0.3162 + 0.8416 * sqrt(0.1 - d^2)) / 31.62.
        let d = mde_paired(1000, 0.10, 0.05);
        let by_hand =
            (1.959_964 * 0.1f64.sqrt() + 0.841_621 * (0.1 - d * d).sqrt()) / 1000f64.sqrt();
        assert!((d - by_hand).abs() < 1e-6, "{d} vs {by_hand}");
        assert!(d > 0.027 && d < 0.028, "{d}");
        let n = documents_needed(d, 0.10, 0.05);
        assert!((999..=1001).contains(&n), "{n}");
        // The same equation solved by scipy (norm.ppf, brentq) in the
        // max(psi, delta) form: 0.241714 (n 30, psi 0) and 0.023412 (n 1000,
        // psi 0.07).
        assert!((mde_paired(30, 0.0, 0.05) - 0.241_714).abs() < 1e-5);
        assert!((mde_paired(1000, 0.07, 0.05) - 0.023_412).abs() < 1e-5);
        // 30 documents cannot see a 1-point drop; the MDE is large.
        let small = mde_paired(30, 0.0, 0.05);
        assert!(small > 0.2 && small < 0.4, "{small}");
        assert!(documents_needed(0.01, 0.0, 0.05) > 30);
    }

    #[test]
    fn choice_kl_of_known_distributions() {
        // p = (0.5, 0.5), q = (0.25, 0.75): KL = 0.5 ln 2 + 0.5 ln(2/3).
        let p = [0.5f64.ln(), 0.5f64.ln()];
        let q = [0.25f64.ln() - 3.0, 0.75f64.ln() - 3.0];
        let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((choice_kl(&p, &q).expect("kl") - want).abs() < 1e-12);
        assert_eq!(choice_kl(&p, &p), Some(0.0));
        assert_eq!(choice_kl(&p, &q[..1]), None);
    }

    #[test]
    fn retention_of_known_vectors() {
        // reference right on 4 of 4, model on 3 of 4: r = 0.75; var(f) = 0,
        // var(m) = 0.25, so se = sqrt(0.25 / 4) = 0.25.
        let (r, lo, hi) = retention(&[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 0.0]).expect("r");
        assert_eq!(r, 0.75);
        assert!((hi - r - Z95 * 0.25).abs() < 1e-12 && (r - lo - Z95 * 0.25).abs() < 1e-12);
        // Identical scores retain 1 with no width.
        assert_eq!(
            retention(&[1.0, 0.0, 1.0], &[1.0, 0.0, 1.0]),
            Some((1.0, 1.0, 1.0))
        );
        assert_eq!(retention(&[0.0, 0.0], &[1.0, 0.0]), None);
    }
}
