//! Every pair of models on every task: the paired difference of their
//! per-document correctness with a 95% interval, the exact McNemar p-value,
//! and Holm's correction across the pairs of a task (one family of tests
//! per task matrix). Documents are paired on `doc_id`; a task whose metric
//! has no per-document correctness (f1, mcc) gets no matrix.

use std::collections::BTreeMap;

use super::stats::{discordant, holm, mcnemar_exact, paired_diff, sample_correct};
use super::{label_of, model_labels, ok_cells, primary_metric, ReportError, Run};

/// One pair `a`, `b` on one task; the difference is `b − a`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PairTest {
    pub task: String,
    pub metric: String,
    pub model_a: String,
    pub model_b: String,
    /// Documents both models answered.
    pub n: usize,
    /// Right under `a`, wrong under `b`.
    pub a_only: u64,
    /// Wrong under `a`, right under `b`.
    pub b_only: u64,
    /// Mean of `b − a` per document, with its 95% normal interval.
    pub diff: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Exact two-sided McNemar p-value.
    pub p: f64,
    /// Holm-adjusted across the task's pairs.
    pub p_holm: f64,
}

/// Per-document correctness of every (model label, task) by doc_id, with
/// the metric it was judged by.
pub type Correctness = BTreeMap<(String, String), (String, BTreeMap<usize, f64>)>;

/// Reads every successful cell's samples once.
pub fn correctness(runs: &[Run]) -> Result<Correctness, ReportError> {
    let labels = model_labels(runs);
    let mut out = Correctness::new();
    for (i, c) in ok_cells(runs) {
        let Some(metric) = primary_metric(c) else {
            continue;
        };
        let by_doc: BTreeMap<usize, f64> = runs[i]
            .samples(&c.model, &c.task)?
            .iter()
            .filter_map(|s| Some((s.doc_id, sample_correct(s, &metric.name)?)))
            .collect();
        if by_doc.is_empty() {
            continue;
        }
        out.insert(
            (label_of(&labels, i, &c.model), c.task.clone()),
            (metric.name.clone(), by_doc),
        );
    }
    Ok(out)
}

/// Every pair of models per task (models in name order, `a` before `b`),
/// Holm-adjusted within each task. Pairs without a common document are
/// left out.
pub fn pair_tests(corr: &Correctness) -> Vec<PairTest> {
    /// (model, metric, correctness by doc_id)
    type Entry<'a> = (&'a str, &'a str, &'a BTreeMap<usize, f64>);
    let mut by_task: BTreeMap<&str, Vec<Entry>> = BTreeMap::new();
    for ((model, task), (metric, docs)) in corr {
        by_task
            .entry(task.as_str())
            .or_default()
            .push((model.as_str(), metric.as_str(), docs));
    }
    let mut out = Vec::new();
    for (task, models) in by_task {
        let mut tests = Vec::new();
        for (i, (ma, metric_a, da)) in models.iter().enumerate() {
            for (mb, metric_b, db) in &models[i + 1..] {
                if metric_a != metric_b {
                    continue;
                }
                let common: Vec<usize> =
                    da.keys().filter(|k| db.contains_key(k)).copied().collect();
                let av: Vec<f64> = common.iter().map(|k| da[k]).collect();
                let bv: Vec<f64> = common.iter().map(|k| db[k]).collect();
                let Some(d) = paired_diff(&av, &bv) else {
                    continue;
                };
                let (a_only, b_only) = discordant(&av, &bv);
                tests.push(PairTest {
                    task: task.to_string(),
                    metric: metric_a.to_string(),
                    model_a: ma.to_string(),
                    model_b: mb.to_string(),
                    n: d.n,
                    a_only,
                    b_only,
                    diff: d.mean,
                    ci_low: d.ci_low,
                    ci_high: d.ci_high,
                    p: mcnemar_exact(a_only, b_only),
                    p_holm: f64::NAN,
                });
            }
        }
        let adjusted = holm(&tests.iter().map(|t| t.p).collect::<Vec<_>>());
        for (t, p) in tests.iter_mut().zip(adjusted) {
            t.p_holm = p;
        }
        out.extend(tests);
    }
    out
}

/// The pair tests as CSV (one row per pair; the columns of [`PairTest`]).
pub fn csv(tests: &[PairTest]) -> String {
    let mut s =
        String::from("task,metric,model_a,model_b,n,a_only,b_only,diff,ci_low,ci_high,p,p_holm\n");
    let q = |t: &str| {
        if t.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", t.replace('"', "\"\""))
        } else {
            t.to_string()
        }
    };
    for t in tests {
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            q(&t.task),
            q(&t.metric),
            q(&t.model_a),
            q(&t.model_b),
            t.n,
            t.a_only,
            t.b_only,
            t.diff,
            t.ci_low,
            t.ci_high,
            t.p,
            t.p_holm
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(bits: &[u8]) -> BTreeMap<usize, f64> {
        bits.iter()
            .enumerate()
            .map(|(i, b)| (i, f64::from(*b)))
            .collect()
    }

    /// Hand-checked fixture: three models on one task of 12 documents.
    /// x vs y: x-only 4 (docs 0-3), y-only 0 → p = 2·0.5⁴ = 0.125.
    /// x vs z: x-only 5, z-only 1 → p = 2·(1+6)/64 = 0.21875.
    /// y vs z: y-only 1, z-only 1 → p = 1.
    /// Holm over (0.125, 0.21875, 1): 0.375, 0.4375, 1 (statsmodels'
    /// multipletests(method="holm") gives the same).
    #[test]
    fn matrix_matches_hand_computed_values() {
        let mut c = Correctness::new();
        c.insert(
            ("x".into(), "t".into()),
            ("acc".into(), docs(&[1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1])),
        );
        c.insert(
            ("y".into(), "t".into()),
            ("acc".into(), docs(&[0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1])),
        );
        c.insert(
            ("z".into(), "t".into()),
            ("acc".into(), docs(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1])),
        );
        let t = pair_tests(&c);
        let get = |a: &str, b: &str| {
            t.iter()
                .find(|p| p.model_a == a && p.model_b == b)
                .expect("pair")
        };
        let xy = get("x", "y");
        assert_eq!((xy.a_only, xy.b_only, xy.n), (4, 0, 12));
        assert!((xy.p - 0.125).abs() < 1e-12);
        assert!((xy.diff + 4.0 / 12.0).abs() < 1e-12);
        let xz = get("x", "z");
        assert_eq!((xz.a_only, xz.b_only), (5, 1));
        assert!((xz.p - 0.21875).abs() < 1e-12);
        let yz = get("y", "z");
        assert_eq!((yz.a_only, yz.b_only), (1, 1));
        assert_eq!(yz.p, 1.0);
        assert!((xy.p_holm - 0.375).abs() < 1e-12);
        assert!((xz.p_holm - 0.4375).abs() < 1e-12);
        assert_eq!(yz.p_holm, 1.0);
    }
}
