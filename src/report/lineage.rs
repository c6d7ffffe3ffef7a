//! Variant vs parent (or student vs teacher) from run records only: per
//! model the size facts, per model × task × metric the accuracy delta with
//! a paired 95 % interval and McNemar's exact test over the documents both
//! scored, and latency / memory / energy ratios.
//!
//! [`compare`] is pure: it takes a [`RunRecord`] and the per-sample records,
//! returns rows and renders tables; [`comparison`] reads them from a run
//! directory. The statistics are [`super::stats`]'s, as for `compare`.

use std::collections::BTreeMap;

use serde::Serialize;

use std::path::Path;

use super::stats::{fidelity, mcnemar_exact, paired_diff, sample_correct};
use crate::record::{
    CellResult, CellStatus, ModelRecord, RecordError, RunRecord, SampleRecord, TrainingCost,
};

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
    pub file_bytes: Option<u64>,
    pub reference_file_bytes: Option<u64>,
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
    /// `value − reference_value`, with the 95 % interval of
    /// [`paired_diff`] over the per-document differences.
    pub delta: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Documents right only for the model / only for the reference.
    pub only_model: usize,
    pub only_reference: usize,
    /// McNemar's exact two-sided p-value over the discordant pairs.
    pub mcnemar_p: f64,
    /// Share of the paired documents where both pick the same choice
    /// (`None` for generation tasks).
    pub agreement: Option<f64>,
    /// Mean over the paired documents of KL(reference ‖ model) between the
    /// softmax distributions over the choices' log-likelihoods (nats).
    pub mean_kl: Option<f64>,
    /// `value / reference_value` with its paired 95% interval
    /// ([`super::stats::retention`]).
    pub retention: Option<f64>,
    pub retention_low: Option<f64>,
    pub retention_high: Option<f64>,
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
    /// What producing each distilled variant cost: (model, its step).
    pub training: Vec<(String, TrainingCost)>,
}

/// `(model, task)` → that cell's sample records.
pub type Samples = BTreeMap<(String, String), Vec<SampleRecord>>;

/// Each model of the run in `dir` with a parent (or teacher) in the same
/// run, compared with it from `results.json` and the sample files.
pub fn comparison(dir: &Path) -> Result<Comparison, RecordError> {
    let rec = RunRecord::read(dir)?;
    let mut samples = Samples::new();
    let related: std::collections::BTreeSet<&str> = rec
        .models
        .iter()
        .filter_map(|(n, m)| {
            let p = &m.lineage.as_ref()?.parent;
            rec.models
                .contains_key(p)
                .then_some([n.as_str(), p.as_str()])
        })
        .flatten()
        .collect();
    for c in rec
        .cells
        .iter()
        .filter(|c| related.contains(c.model.as_str()))
    {
        let path = crate::record::samples_path(dir, &c.model, &c.task);
        samples.insert(
            (c.model.clone(), c.task.clone()),
            crate::record::read_samples(&path)?,
        );
    }
    Ok(compare(&rec, &samples))
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

fn model_row(name: &str, m: &ModelRecord, reference: &str, r: &ModelRecord) -> Option<ModelRow> {
    let lin = m.lineage.as_ref()?;
    let relation = if reference == lin.parent {
        lin.relation.clone()
    } else {
        "distilled from (teacher)".to_string()
    };
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
        reference: reference.to_string(),
        relation,
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
        // The parent, then each teacher a `distill` step learned from.
        let mut references = vec![lin.parent.as_str()];
        for t in &lin.training {
            out.training.push((name.clone(), t.clone()));
            if !references.contains(&t.teacher.as_str()) {
                references.push(&t.teacher);
            }
        }
        for reference in references {
            compare_with(rec, samples, name, m, reference, &mut out);
        }
    }
    out
}

/// The rows of `name` against one `reference` (its parent or a teacher).
fn compare_with(
    rec: &RunRecord,
    samples: &Samples,
    name: &str,
    m: &ModelRecord,
    reference: &str,
    out: &mut Comparison,
) {
    {
        let Some(r) = rec.models.get(reference) else {
            return;
        };
        if let Some(row) = model_row(name, m, reference, r) {
            out.models.push(row);
        }
        for c in rec
            .cells
            .iter()
            .filter(|c| c.model == name && c.status == CellStatus::Ok)
        {
            let Some(rc) = cell(rec, reference, &c.task) else {
                continue;
            };
            let key = |model: &str| (model.to_string(), c.task.clone());
            let (Some(ms), Some(rs)) = (samples.get(&key(name)), samples.get(&key(reference)))
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
                let (mut xs, mut ys) = (Vec::new(), Vec::new());
                let (mut sum_m, mut sum_r, mut b, mut cc) = (0.0, 0.0, 0, 0);

                for s in ms {
                    let Some(t) = by_doc.get(&s.doc_id) else {
                        continue;
                    };
                    let (Some(x), Some(y)) = (sample_correct(s, metric), sample_correct(t, metric))
                    else {
                        continue;
                    };
                    sum_m += x;
                    sum_r += y;
                    b += usize::from(x > y);
                    cc += usize::from(y > x);
                    xs.push(x);
                    ys.push(y);
                }
                let fid = fidelity(rs, ms, metric);
                let Some(diff) = paired_diff(&ys, &xs) else {
                    continue;
                };
                let n = diff.n;
                out.tasks.push(TaskRow {
                    model: name.to_string(),
                    reference: reference.to_string(),
                    task: c.task.clone(),
                    metric: metric.to_string(),
                    n,
                    value: sum_m / n as f64,
                    reference_value: sum_r / n as f64,
                    stderr: mv.stderr,
                    reference_stderr: ref_stderr,
                    delta: diff.mean,
                    ci_low: diff.ci_low,
                    ci_high: diff.ci_high,
                    only_model: b,
                    only_reference: cc,
                    mcnemar_p: mcnemar_exact(b as u64, cc as u64),
                    agreement: fid.agreement,
                    mean_kl: fid.mean_kl,
                    retention: fid.retention.map(|k| k.0),
                    retention_low: fid.retention.map(|k| k.1),
                    retention_high: fid.retention.map(|k| k.2),
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

/// `0.962 [0.921, 1.003]`, or n/a.
pub fn retention_text(t: &TaskRow) -> String {
    match (t.retention, t.retention_low, t.retention_high) {
        (Some(r), Some(lo), Some(hi)) => format!("{r:.3} [{lo:.3}, {hi:.3}]"),
        _ => "n/a".into(),
    }
}

/// MLPerf's quality marks on the point estimate: the model keeps at least
/// 99% (and 99.9%) of its reference's score.
pub fn pass_marks(retention: Option<f64>) -> String {
    match retention {
        Some(r) => format!(
            "{} / {}",
            if r >= 0.99 { "pass" } else { "fail" },
            if r >= 0.999 { "pass" } else { "fail" }
        ),
        None => "n/a".into(),
    }
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
            format!("{} vs {}", mb(m.file_bytes), mb(m.reference_file_bytes)),
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
    let mut s = crate::text_table::table(&rows);
    let mut rows = vec![vec![
        "model".to_string(),
        "task".into(),
        "metric".into(),
        "n".into(),
        "value ± se vs ref".into(),
        "Δ [95% paired CI]".into(),
        "+/− docs".into(),
        "McNemar p".into(),
        "agree".into(),
        "KL nats".into(),
        "retention [95% CI]".into(),
        "≥99% / ≥99.9%".into(),
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
            opt(t.agreement, 3),
            opt(t.mean_kl, 4),
            retention_text(t),
            pass_marks(t.retention),
            opt(t.latency_ratio, 2),
            opt(t.peak_rss_ratio, 2),
            opt(t.energy_ratio, 2),
        ]);
    }
    s.push('\n');
    s.push_str(&crate::text_table::table(&rows));
    if !c.training.is_empty() {
        s.push('\n');
        s.push_str(&crate::text_table::table(&training_rows(&c.training)));
    }
    s
}

/// The bill of each `distill` step: a header row, then one row per step.
pub fn training_rows(training: &[(String, TrainingCost)]) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "model".to_string(),
        "distilled from".into(),
        "steps".into(),
        "tokens".into(),
        "wall time".into(),
        "energy".into(),
        "held-out KL to teacher (nats)".into(),
    ]];
    for (model, t) in training {
        rows.push(vec![
            model.clone(),
            t.teacher.clone(),
            t.steps.to_string(),
            t.tokens_seen.to_string(),
            format!("{:.1} min", t.wall_time_s / 60.0),
            t.energy_j.map_or("n/a".into(), |e| {
                let how = match t.energy_note.as_deref() {
                    Some(n) if n.starts_with("estimated") => " (estimated)",
                    _ => "",
                };
                format!("{:.1} kJ{how}", e / 1000.0)
            }),
            match (t.held_out_kl_before, t.held_out_kl_after) {
                (Some(a), Some(b)) => format!("{a:.3} → {b:.3} ({:+.0}%)", (b / a - 1.0) * 100.0),
                _ => "n/a".into(),
            },
        ]);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Lineage, MetricValue};

    fn sample(doc_id: usize, pred: usize) -> SampleRecord {
        SampleRecord {
            doc_id,
            gold: 0,
            context: String::new(),
            continuations: vec![],
            // The picked choice one nat above the other.
            loglikelihoods: if pred == 0 {
                vec![-1.0, -2.0]
            } else {
                vec![-2.0, -1.0]
            },
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
            status: CellStatus::Ok,
            metrics: vec![MetricValue {
                name: "acc".into(),
                value: 0.0,
                stderr: None,
            }],
            n: 4,
            error: None,
            ..CellResult::failed(model, "t", 0, "")
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
            models,
            cells: vec![cell("p"), cell("v")],
            ..RunRecord::default()
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
        // Same choice on docs 0 and 3; on 1 and 2 the distributions are
        // mirrored: KL = σ(1) − σ(−1) each, so the mean is half of that.
        assert_eq!(t.agreement, Some(0.5));
        let mirrored = 1.0 / (1.0 + (-1.0f64).exp()) - 1.0 / (1.0 + 1.0f64.exp());
        assert!((t.mean_kl.expect("kl") - mirrored / 2.0).abs() < 1e-12);
        assert!((t.retention.expect("retention") - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(pass_marks(t.retention), "fail / fail");
        assert_eq!(pass_marks(Some(0.995)), "pass / fail");
    }

    /// A distilled variant is compared with its parent and with the teacher
    /// its `distill` step learned from, and its training bill is a table.
    #[test]
    fn a_distilled_variant_faces_its_parent_and_its_teacher() {
        let mut models = BTreeMap::new();
        for m in ["teacher", "pruned"] {
            models.insert(m.to_string(), ModelRecord::default());
        }
        models.insert(
            "healed".to_string(),
            ModelRecord {
                lineage: Some(Lineage {
                    relation: "variant".into(),
                    parent: "pruned".into(),
                    training: vec![TrainingCost {
                        teacher: "teacher".into(),
                        steps: 240,
                        tokens_seen: 31_000,
                        wall_time_s: 1500.0,
                        energy_j: Some(15_000.0),
                        energy_note: Some("estimated: CPU time".into()),
                        held_out_kl_before: Some(8.16),
                        held_out_kl_after: Some(1.02),
                        losses: vec![2.0, 1.0],
                    }],
                    ..Lineage::default()
                }),
                ..ModelRecord::default()
            },
        );
        let rec = RunRecord {
            models,
            cells: vec![cell("teacher"), cell("pruned"), cell("healed")],
            ..RunRecord::default()
        };
        let mut s = Samples::new();
        s.insert(
            ("teacher".into(), "t".into()),
            vec![sample(0, 0), sample(1, 0)],
        );
        s.insert(
            ("pruned".into(), "t".into()),
            vec![sample(0, 1), sample(1, 1)],
        );
        s.insert(
            ("healed".into(), "t".into()),
            vec![sample(0, 0), sample(1, 1)],
        );
        let c = compare(&rec, &s);
        let refs: Vec<(&str, f64)> = c
            .tasks
            .iter()
            .map(|t| (t.reference.as_str(), t.delta))
            .collect();
        assert_eq!(refs, vec![("pruned", 0.5), ("teacher", -0.5)]);
        assert_eq!(c.models[1].relation, "distilled from (teacher)");
        let text = render(&c);
        assert!(
            text.contains("| healed | teacher        | 240   | 31000  | 25.0 min  | 15.0 kJ (estimated) | 8.160 → 1.020 (-88%)"),
            "{text}"
        );
    }
}
