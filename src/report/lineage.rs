//! Variant vs parent (or student vs teacher) from run records only: per
//! model the size facts, per model × task × metric the accuracy delta with
//! a paired 95 % interval and McNemar's exact test over the documents both
//! scored, and latency / memory / energy ratios.
//!
//! Pure: takes a [`RunRecord`] and the per-sample records, returns rows and
//! renders tables; reads no file and knows no tensor, so any report can
//! reuse it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::record::{CellResult, CellStatus, ModelRecord, RunRecord, SampleRecord};

/// Size facts of a model and its reference (parent or teacher).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRow {
    pub model: String,
    pub reference: String,
    /// `variant` or `distilled_from`.
    pub relation: String,
    pub steps: String,
    pub bits_per_weight: Option<f64>,
    pub reference_bits_per_weight: Option<f64>,
    /// Reference bits per weight / model bits per weight.
    pub compression_ratio: Option<f64>,
    pub file_bytes: u64,
    pub reference_file_bytes: u64,
    pub weight_bytes_memory: Option<u64>,
    pub reference_weight_bytes_memory: Option<u64>,
    pub params: Option<u64>,
    pub nonzero_params: Option<u64>,
    pub reference_params: Option<u64>,
    pub reference_nonzero_params: Option<u64>,
}

/// One metric of one task: the model against its reference, paired by document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRow {
    pub model: String,
    pub reference: String,
    pub task: String,
    pub metric: String,
    /// Documents scored by both.
    pub n: usize,
    /// Metric means over the paired documents.
    pub value: f64,
    pub reference_value: f64,
    /// The cells' standard errors (over all their documents).
    pub stderr: Option<f64>,
    pub reference_stderr: Option<f64>,
    /// `value − reference_value`, with `± 1.96 · sd(d) / √n` of the
    /// per-document differences `d`.
    pub delta: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Documents right only for the model / only for the reference.
    pub only_model: usize,
    pub only_reference: usize,
    /// McNemar's exact two-sided p-value over the discordant pairs.
    pub mcnemar_p: f64,
    /// Model p50 latency per document / reference's.
    pub latency_ratio: Option<f64>,
    /// Peak RSS of the cells, model / reference.
    pub peak_rss_ratio: Option<f64>,
    /// Energy per document, model / reference.
    pub energy_ratio: Option<f64>,
}

/// Everything [`compare`] finds in a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Comparison {
    pub models: Vec<ModelRow>,
    pub tasks: Vec<TaskRow>,
}

/// `(model, task)` → that cell's sample records.
pub type Samples = BTreeMap<(String, String), Vec<SampleRecord>>;

/// Two-sided exact McNemar p-value for `b` and `c` discordant pairs:
/// `min(1, 2 · P(X ≤ min(b, c)))` with `X ~ Binomial(b + c, 1/2)`.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // log C(n, i) − n·ln 2, summed in a numerically safe way.
    let ln2n = n as f64 * std::f64::consts::LN_2;
    let mut log_c = 0.0; // ln C(n, 0)
    let mut terms = Vec::with_capacity(k + 1);
    for i in 0..=k {
        if i > 0 {
            log_c += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        terms.push(log_c - ln2n);
    }
    let m = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = m.exp() * terms.iter().map(|t| (t - m).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

/// Mean and 95 % half-width (`1.96 · sd / √n`, sample sd) of `d`.
pub fn paired_interval(d: &[f64]) -> (f64, f64) {
    let n = d.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = d.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, f64::NAN);
    }
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, 1.96 * var.sqrt() / (n as f64).sqrt())
}

/// Whether a sample is right under `metric` (acc: `pred`, acc_norm: `pred_norm`).
fn correct(s: &SampleRecord, metric: &str) -> Option<bool> {
    match metric {
        "acc" => Some(s.pred == s.gold),
        "acc_norm" => Some(s.pred_norm == s.gold),
        _ => None,
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn cell<'a>(rec: &'a RunRecord, model: &str, task: &str) -> Option<&'a CellResult> {
    rec.cells
        .iter()
        .find(|c| c.model == model && c.task == task && c.status == CellStatus::Ok)
}

fn model_row(name: &str, m: &ModelRecord, r: &ModelRecord) -> Option<ModelRow> {
    let lin = m.lineage.as_ref()?;
    let steps = match &lin.steps {
        serde_json::Value::Array(a) => a
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(" → "),
        _ => String::new(),
    };
    Some(ModelRow {
        model: name.to_string(),
        reference: lin.parent.clone(),
        relation: lin.relation.clone(),
        steps,
        bits_per_weight: m.bits_per_weight,
        reference_bits_per_weight: r.bits_per_weight,
        compression_ratio: ratio(r.bits_per_weight, m.bits_per_weight),
        file_bytes: m.file_bytes,
        reference_file_bytes: r.file_bytes,
        weight_bytes_memory: m.weight_bytes_memory,
        reference_weight_bytes_memory: r.weight_bytes_memory,
        params: m.params,
        nonzero_params: m.nonzero_params,
        reference_params: r.params,
        reference_nonzero_params: r.nonzero_params,
    })
}

/// Compares every model of `rec` that has a lineage with its parent or
/// teacher, when both were scored in this run.
pub fn compare(rec: &RunRecord, samples: &Samples) -> Comparison {
    let mut out = Comparison::default();
    for (name, m) in &rec.models {
        let Some(lin) = &m.lineage else { continue };
        let Some(r) = rec.models.get(&lin.parent) else {
            continue;
        };
        if let Some(row) = model_row(name, m, r) {
            out.models.push(row);
        }
        for c in rec
            .cells
            .iter()
            .filter(|c| &c.model == name && c.status == CellStatus::Ok)
        {
            let Some(rc) = cell(rec, &lin.parent, &c.task) else {
                continue;
            };
            let key = |model: &str| (model.to_string(), c.task.clone());
            let (Some(ms), Some(rs)) = (samples.get(&key(name)), samples.get(&key(&lin.parent)))
            else {
                continue;
            };
            let by_doc: BTreeMap<usize, &SampleRecord> = rs.iter().map(|s| (s.doc_id, s)).collect();
            for mv in &c.metrics {
                let metric = mv.name.as_str();
                let ref_stderr = rc
                    .metrics
                    .iter()
                    .find(|x| x.name == mv.name)
                    .and_then(|x| x.stderr);
                let mut d = Vec::new();
                let (mut sum_m, mut sum_r, mut b, mut cc) = (0.0, 0.0, 0, 0);
                for s in ms {
                    let Some(t) = by_doc.get(&s.doc_id) else {
                        continue;
                    };
                    let (Some(x), Some(y)) = (correct(s, metric), correct(t, metric)) else {
                        continue;
                    };
                    let (x, y) = (f64::from(u8::from(x)), f64::from(u8::from(y)));
                    sum_m += x;
                    sum_r += y;
                    b += usize::from(x > y);
                    cc += usize::from(y > x);
                    d.push(x - y);
                }
                if d.is_empty() {
                    continue;
                }
                let n = d.len();
                let (delta, half) = paired_interval(&d);
                out.tasks.push(TaskRow {
                    model: name.clone(),
                    reference: lin.parent.clone(),
                    task: c.task.clone(),
                    metric: metric.to_string(),
                    n,
                    value: sum_m / n as f64,
                    reference_value: sum_r / n as f64,
                    stderr: mv.stderr,
                    reference_stderr: ref_stderr,
                    delta,
                    ci_low: delta - half,
                    ci_high: delta + half,
                    only_model: b,
                    only_reference: cc,
                    mcnemar_p: mcnemar_exact(b, cc),
                    latency_ratio: ratio(
                        c.latency.as_ref().map(|l| l.p50_ms),
                        rc.latency.as_ref().map(|l| l.p50_ms),
                    ),
                    peak_rss_ratio: ratio(
                        c.peak_rss.map(|p| p.bytes as f64),
                        rc.peak_rss.map(|p| p.bytes as f64),
                    ),
                    energy_ratio: ratio(
                        c.energy.as_ref().and_then(|e| e.energy_per_doc_j),
                        rc.energy.as_ref().and_then(|e| e.energy_per_doc_j),
                    ),
                });
            }
        }
    }
    out
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.digits$}"))
}

fn mb(v: Option<u64>) -> String {
    v.map_or("n/a".into(), |x| format!("{:.1}", x as f64 / 1e6))
}

fn millions(v: Option<u64>) -> String {
    v.map_or("n/a".into(), |x| format!("{:.2}", x as f64 / 1e6))
}

/// Markdown tables: size facts, then accuracy and cost per task × metric.
pub fn render(c: &Comparison) -> String {
    let mut rows = vec![vec![
        "model".to_string(),
        "vs".into(),
        "bits/weight".into(),
        "compression".into(),
        "file MB".into(),
        "weights in memory MB".into(),
        "params M (non-zero)".into(),
    ]];
    for m in &c.models {
        rows.push(vec![
            m.model.clone(),
            format!("{} ({})", m.reference, m.relation),
            format!(
                "{} vs {}",
                opt(m.bits_per_weight, 2),
                opt(m.reference_bits_per_weight, 2)
            ),
            opt(m.compression_ratio, 2).to_string() + "×",
            format!(
                "{} vs {}",
                mb(Some(m.file_bytes)),
                mb(Some(m.reference_file_bytes))
            ),
            format!(
                "{} vs {}",
                mb(m.weight_bytes_memory),
                mb(m.reference_weight_bytes_memory)
            ),
            format!(
                "{} ({}) vs {} ({})",
                millions(m.params),
                millions(m.nonzero_params),
                millions(m.reference_params),
                millions(m.reference_nonzero_params)
            ),
        ]);
    }
    let mut s = table(&rows);
    let mut rows = vec![vec![
        "model".to_string(),
        "task".into(),
        "metric".into(),
        "n".into(),
        "value ± se vs ref".into(),
        "Δ [95% paired CI]".into(),
        "+/− docs".into(),
        "McNemar p".into(),
        "latency ×".into(),
        "peak RSS ×".into(),
        "energy ×".into(),
    ]];
    for t in &c.tasks {
        rows.push(vec![
            t.model.clone(),
            t.task.clone(),
            t.metric.clone(),
            t.n.to_string(),
            format!(
                "{:.4} ± {} vs {:.4} ± {}",
                t.value,
                opt(t.stderr, 4),
                t.reference_value,
                opt(t.reference_stderr, 4)
            ),
            format!("{:+.4} [{:+.4}, {:+.4}]", t.delta, t.ci_low, t.ci_high),
            format!("{}/{}", t.only_model, t.only_reference),
            if t.mcnemar_p >= 0.001 {
                format!("{:.3}", t.mcnemar_p)
            } else {
                format!("{:.1e}", t.mcnemar_p)
            },
            opt(t.latency_ratio, 2),
            opt(t.peak_rss_ratio, 2),
            opt(t.energy_ratio, 2),
        ]);
    }
    s.push('\n');
    s.push_str(&table(&rows));
    s
}

/// A Markdown table with padded columns; the first row is the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for (k, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        s.push_str(&format!("| {} |\n", line.join(" | ")));
        if k == 0 {
            let sep: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            s.push_str(&format!("|-{}-|\n", sep.join("-|-")));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Lineage, MetricValue};

    #[test]
    fn mcnemar_matches_the_binomial_tail() {
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // b=0, c=5: 2 · 0.5⁵ = 0.0625.
        assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-12);
        // b=2, c=8: 2 · (1 + 10 + 45) / 1024 = 0.109375.
        assert!((mcnemar_exact(2, 8) - 0.109375).abs() < 1e-12);
        assert_eq!(mcnemar_exact(7, 7), 1.0);
        // Large counts stay finite.
        let p = mcnemar_exact(400, 600);
        assert!(p > 0.0 && p < 1e-9, "{p}");
    }

    #[test]
    fn paired_interval_is_mean_and_1_96_se() {
        let (m, h) = paired_interval(&[1.0, 0.0, -1.0, 0.0]);
        assert_eq!(m, 0.0);
        // sd = sqrt(2/3); half = 1.96 · sd / 2.
        assert!((h - 1.96 * (2.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-12);
    }

    fn sample(doc_id: usize, pred: usize) -> SampleRecord {
        SampleRecord {
            doc_id,
            gold: 0,
            context: String::new(),
            continuations: vec![],
            loglikelihoods: vec![],
            is_greedy: vec![],
            pred,
            metrics: Default::default(),
            pred_norm: pred,
            continuation_tokens: vec![],
            truncated: false,
            latency_ms: None,
        }
    }

    fn cell(model: &str) -> CellResult {
        CellResult {
            model: model.into(),
            task: "t".into(),
            status: CellStatus::Ok,
            metrics: vec![MetricValue {
                name: "acc".into(),
                value: 0.0,
                stderr: None,
            }],
            n: 4,
            num_fewshot: 0,
            truncated: 0,
            wall_time_s: 0.0,
            tokens_forwarded: 0,
            tokens_per_s: None,
            latency: None,
            peak_rss: None,
            kv_cache_peak_bytes: None,
            energy: None,
            resumed_samples: 0,
            error: None,
        }
    }

    #[test]
    fn compares_paired_documents_only() {
        let mut models = BTreeMap::new();
        models.insert(
            "p".to_string(),
            ModelRecord {
                bits_per_weight: Some(32.0),
                ..ModelRecord::default()
            },
        );
        models.insert(
            "v".to_string(),
            ModelRecord {
                bits_per_weight: Some(8.0),
                lineage: Some(Lineage {
                    relation: "variant".into(),
                    parent: "p".into(),
                    ..Lineage::default()
                }),
                ..ModelRecord::default()
            },
        );
        let rec = RunRecord {
            run_id: String::new(),
            status: String::new(),
            started_at: String::new(),
            finished_at: None,
            wall_time_s: 0.0,
            config: serde_json::Value::Null,
            environment: Default::default(),
            models,
            cells: vec![cell("p"), cell("v")],
            versions: Default::default(),
        };
        let mut s = Samples::new();
        // Parent right on 0, 1, 2; variant right on 0 only; doc 9 unpaired.
        s.insert(
            ("p".into(), "t".into()),
            vec![sample(0, 0), sample(1, 0), sample(2, 0), sample(3, 1)],
        );
        s.insert(
            ("v".into(), "t".into()),
            vec![
                sample(0, 0),
                sample(1, 1),
                sample(2, 1),
                sample(3, 1),
                sample(9, 0),
            ],
        );
        let c = compare(&rec, &s);
        assert_eq!(c.models.len(), 1);
        assert_eq!(c.models[0].compression_ratio, Some(4.0));
        let t = &c.tasks[0];
        assert_eq!((t.n, t.only_model, t.only_reference), (4, 0, 2));
        assert_eq!((t.value, t.reference_value, t.delta), (0.25, 0.75, -0.5));
        assert!((t.mcnemar_p - 0.5).abs() < 1e-12);
        assert!(t.ci_low < -0.5 && t.ci_high > -0.5);
        assert!(render(&c).contains("-0.5000"));
    }
}
