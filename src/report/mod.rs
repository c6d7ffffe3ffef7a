//! Reports: what people look at after a run. Reads run directories
//! (`results.json` + `samples/`) and renders tables (CSV, Parquet, JSON,
//! Markdown), charts (PNG, SVG), a self-contained HTML page, and
//! regression verdicts (`compare`).
//!
//! Invariant: this module renders records only; it never sees a model, a
//! tensor or a tokenizer.

pub mod charts;
pub mod compare;
pub mod explorer;
pub mod html;
pub mod lineage;
pub mod significance;
pub mod stats;
pub mod table;
pub mod text;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::record::{read_samples, samples_path, CellResult, CellStatus, RunRecord, SampleRecord};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    #[error("{path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{0}")]
    Input(String),
}

pub(crate) fn write_err(path: &Path) -> impl Fn(String) -> ReportError + '_ {
    move |message| ReportError::Write {
        path: path.to_path_buf(),
        message,
    }
}

/// A run directory read back.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    pub record: RunRecord,
}

impl Run {
    pub fn load(dir: &Path) -> Result<Self, ReportError> {
        if !dir.join("results.json").is_file() {
            return Err(ReportError::Input(format!(
                "{}: no results.json here; pass a run directory written by `slmbench run`",
                dir.display()
            )));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            record: RunRecord::read(dir)?,
        })
    }

    /// Per-sample records of a cell (empty when the run kept none).
    pub fn samples(&self, model: &str, task: &str) -> Result<Vec<SampleRecord>, ReportError> {
        Ok(read_samples(&samples_path(&self.dir, model, task))?)
    }
}

/// The metric a cell is judged and charted by: `acc` when the task has it,
/// else the first of its metrics by name (`mcc` for CoLA,
/// `exact_match,flexible-extract` for GSM8K) — a rule the long table's
/// rows, sorted by name, give the same answer to.
pub fn primary_metric(cell: &CellResult) -> Option<&crate::record::MetricValue> {
    cell.metrics
        .iter()
        .find(|m| m.name == "acc")
        .or_else(|| cell.metrics.iter().min_by(|a, b| a.name.cmp(&b.name)))
}

/// One row of the long table: a run × model × task × metric.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    pub run_id: String,
    /// Display name of the model: its name, or `name [run_id]` when two
    /// runs hold the same model × task.
    pub model: String,
    /// The weights: `dtype`, plus `of PARENT` for a compression variant or
    /// `student of TEACHER` for a distilled model.
    pub variant: String,
    pub task: String,
    pub metric: String,
    pub value: Option<f64>,
    pub stderr: Option<f64>,
    pub n: usize,
    pub num_fewshot: usize,
    pub status: String,
    pub wall_time_s: f64,
    pub tokens_per_s: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p90_ms: Option<f64>,
    pub latency_mean_ms: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    pub energy_j: Option<f64>,
    pub energy_per_doc_j: Option<f64>,
    /// Energy per 1,000 prompt tokens (all of a log-likelihood cell's; the
    /// prefill's share of a generation cell's).
    pub energy_per_1k_prompt_tokens_j: Option<f64>,
    /// Energy per 1,000 generated tokens (the decode's share).
    pub energy_per_1k_generated_tokens_j: Option<f64>,
    /// The metric's value per kJ of one document's energy (`value /
    /// energy_per_doc_j × 1000`: for accuracy, right answers per kJ).
    pub score_per_kj: Option<f64>,
    pub energy_method: Option<String>,
    pub file_bytes: Option<u64>,
    pub n_params: Option<u64>,
    /// A served model's requests, tokens billed, throughput and cost
    /// (empty for a local model).
    pub requests: Option<u64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub requests_per_s: Option<f64>,
    pub request_p50_ms: Option<f64>,
    pub ttfb_p50_ms: Option<f64>,
    pub cost: Option<f64>,
    pub cost_per_1k_docs: Option<f64>,
    pub currency: Option<String>,
    /// The harness's own CPU time over the cell's wall time.
    pub harness_cpu_share: Option<f64>,
}

/// Labels per (run index, model): the plain name unless the same model ×
/// task appears in more than one run (then `name [run_id]`). Shards of one
/// sweep hold disjoint cells and so merge under the plain name.
pub fn model_labels(runs: &[Run]) -> BTreeMap<(usize, String), String> {
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for run in runs {
        for c in &run.record.cells {
            *seen.entry((c.model.clone(), c.task.clone())).or_default() += 1;
        }
    }
    let clash: std::collections::BTreeSet<&String> = seen
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|((m, _), _)| m)
        .collect();
    let mut out = BTreeMap::new();
    for (i, run) in runs.iter().enumerate() {
        for c in &run.record.cells {
            let label = if clash.contains(&c.model) {
                format!("{} [{}]", c.model, run.record.run_id)
            } else {
                c.model.clone()
            };
            out.insert((i, c.model.clone()), label);
        }
    }
    out
}

/// The cells that completed, of every run, with the run's index.
pub fn ok_cells(runs: &[Run]) -> impl Iterator<Item = (usize, &CellResult)> {
    runs.iter().enumerate().flat_map(|(i, run)| {
        run.record
            .cells
            .iter()
            .filter(|c| c.status == CellStatus::Ok)
            .map(move |c| (i, c))
    })
}

/// The label of run `i`'s `model` (see [`model_labels`]).
pub fn label_of(labels: &BTreeMap<(usize, String), String>, i: usize, model: &str) -> String {
    labels
        .get(&(i, model.to_string()))
        .cloned()
        .unwrap_or_else(|| model.to_string())
}

fn variant_label(m: &crate::record::ModelRecord) -> String {
    match &m.lineage {
        Some(l) if l.relation == "distilled_from" => format!("{} student of {}", m.dtype, l.parent),
        Some(l) => format!("{} of {}", m.dtype, l.parent),
        None => m.dtype.clone(),
    }
}

fn status_name(s: CellStatus) -> String {
    match s {
        CellStatus::Ok => "ok",
        CellStatus::Failed => "failed",
    }
    .into()
}

/// The long table of one or more runs, sorted by model, task, metric.
pub fn long_rows(runs: &[Run]) -> Vec<Row> {
    let labels = model_labels(runs);
    let mut rows = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let rec = &run.record;
        for c in &rec.cells {
            let model_rec = rec.models.get(&c.model);
            let served = c.served.as_ref();
            let base = Row {
                run_id: rec.run_id.clone(),
                model: label_of(&labels, i, &c.model),
                variant: model_rec.map(variant_label).unwrap_or_default(),
                task: c.task.clone(),
                metric: String::new(),
                value: None,
                stderr: None,
                n: c.n,
                num_fewshot: c.num_fewshot,
                status: status_name(c.status),
                wall_time_s: c.wall_time_s,
                tokens_per_s: c.tokens_per_s,
                latency_p50_ms: c.latency.as_ref().map(|l| l.p50_ms),
                latency_p90_ms: c.latency.as_ref().map(|l| l.p90_ms),
                latency_mean_ms: c.latency.as_ref().map(|l| l.mean_ms),
                peak_rss_bytes: c.peak_rss.map(|p| p.bytes),
                energy_j: c.energy.as_ref().map(|e| e.energy_j),
                energy_per_doc_j: c.energy.as_ref().and_then(|e| e.energy_per_doc_j),
                energy_per_1k_prompt_tokens_j: c.energy.as_ref().and_then(|e| prompt_energy(c, e)),
                energy_per_1k_generated_tokens_j: c
                    .energy
                    .as_ref()
                    .and_then(|e| e.energy_per_1k_generated_tokens_j),
                score_per_kj: None,
                energy_method: c
                    .energy
                    .as_ref()
                    .and_then(|e| serde_json::to_value(e.method).ok())
                    .and_then(|v| v.as_str().map(String::from)),
                file_bytes: model_rec.and_then(|m| m.file_bytes),
                n_params: model_rec.and_then(|m| m.params),
                requests: served.map(|s| s.requests as u64),
                prompt_tokens: served.map(|s| s.prompt_tokens),
                completion_tokens: served.map(|s| s.completion_tokens),
                requests_per_s: served.and_then(|s| s.requests_per_s),
                request_p50_ms: served.and_then(|s| s.request_latency.as_ref().map(|l| l.p50_ms)),
                ttfb_p50_ms: served.and_then(|s| s.ttfb_p50_ms),
                cost: served.and_then(|s| s.cost),
                cost_per_1k_docs: served.and_then(|s| s.cost_per_1k_docs),
                currency: served.and_then(|s| s.currency.clone()),
                harness_cpu_share: served.and_then(|s| s.harness_cpu_share),
            };
            if c.metrics.is_empty() {
                rows.push(base);
                continue;
            }
            for m in &c.metrics {
                rows.push(Row {
                    metric: m.name.clone(),
                    value: Some(m.value),
                    stderr: m.stderr,
                    score_per_kj: base
                        .energy_per_doc_j
                        .filter(|e| *e > 0.0)
                        .map(|e| m.value / e * 1000.0),
                    ..base.clone()
                });
            }
        }
    }
    rows.sort_by(|a, b| {
        (&a.model, &a.task, &a.metric, &a.run_id).cmp(&(&b.model, &b.task, &b.metric, &b.run_id))
    });
    rows
}

/// J per 1k prompt tokens of a cell; for a log-likelihood cell written
/// before that field existed, its J per 1k tokens (all of them prompt).
fn prompt_energy(c: &CellResult, e: &crate::record::CellEnergy) -> Option<f64> {
    e.energy_per_1k_prompt_tokens_j
        .or(if c.generation.is_none() {
            e.energy_per_1k_tokens_j
        } else {
            None
        })
}

/// One model (or variant) summarized over its tasks, for charts and the
/// summary table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelPoint {
    pub label: String,
    /// Mean over tasks of the primary metric.
    pub score: f64,
    /// `sqrt(sum se_i^2) / k`: the tasks are independent samples.
    pub score_se: Option<f64>,
    pub tasks: usize,
    /// Document-weighted mean of the per-document latency (ms).
    pub latency_ms: Option<f64>,
    /// Largest peak RSS over the model's cells.
    pub peak_rss_bytes: Option<u64>,
    /// Energy per document over all cells (J).
    pub energy_per_doc_j: Option<f64>,
    /// Energy per 1,000 prompt tokens over all cells (J).
    pub energy_per_1k_prompt_tokens_j: Option<f64>,
    /// Energy per 1,000 generated tokens over the generation cells (J).
    pub energy_per_1k_generated_tokens_j: Option<f64>,
    /// Mean score per kJ of one document's energy.
    pub score_per_kj: Option<f64>,
    pub energy_method: Option<String>,
    pub file_bytes: Option<u64>,
    pub n_params: Option<u64>,
    /// A served model's cost per 1,000 documents, from its `price`.
    pub cost_per_1k_docs: Option<f64>,
    pub currency: Option<String>,
}

/// Per-model points over the successful cells of `runs`.
pub fn model_points(runs: &[Run]) -> Vec<ModelPoint> {
    let labels = model_labels(runs);
    #[derive(Default)]
    struct Acc {
        scores: Vec<(f64, Option<f64>)>,
        lat_sum: f64,
        lat_n: usize,
        peak: Option<u64>,
        energy: f64,
        energy_docs: usize,
        prompt_energy: f64,
        prompt_tokens: f64,
        gen_energy: f64,
        gen_tokens: f64,
        energy_method: Option<String>,
        file_bytes: Option<u64>,
        n_params: Option<u64>,
        cost: f64,
        cost_docs: usize,
        currency: Option<String>,
    }
    let mut by: BTreeMap<String, Acc> = BTreeMap::new();
    for (i, c) in ok_cells(runs) {
        let a = by.entry(label_of(&labels, i, &c.model)).or_default();
        if let Some(m) = primary_metric(c) {
            a.scores.push((m.value, m.stderr));
        }
        if let Some(l) = &c.latency {
            a.lat_sum += l.mean_ms * l.n as f64;
            a.lat_n += l.n;
        }
        if let Some(p) = c.peak_rss {
            a.peak = Some(a.peak.map_or(p.bytes, |x| x.max(p.bytes)));
        }
        if let Some(e) = &c.energy {
            a.energy += e.energy_j;
            a.energy_docs += c.n.saturating_sub(c.resumed_samples);
            let generated = c.generation.as_ref().map_or(0, |g| g.generated_tokens) as f64;
            let prompt = (c.tokens_forwarded as f64 - generated).max(0.0);
            if let Some(j) = prompt_energy(c, e) {
                a.prompt_energy += j * prompt / 1000.0;
                a.prompt_tokens += prompt;
            }
            if let Some(j) = e.energy_per_1k_generated_tokens_j {
                a.gen_energy += j * generated / 1000.0;
                a.gen_tokens += generated;
            }
            a.energy_method = serde_json::to_value(e.method)
                .ok()
                .and_then(|v| v.as_str().map(String::from));
        }
        if let Some((cost, s)) = c.served.as_ref().and_then(|s| Some((s.cost?, s))) {
            a.cost += cost;
            a.cost_docs += c.n.saturating_sub(c.resumed_samples);
            a.currency.clone_from(&s.currency);
        }
        if let Some(m) = runs[i].record.models.get(&c.model) {
            a.file_bytes = m.file_bytes;
            a.n_params = m.params;
        }
    }
    by.into_iter()
        .filter(|(_, a)| !a.scores.is_empty())
        .map(|(label, a)| {
            let k = a.scores.len();
            let score = a.scores.iter().map(|s| s.0).sum::<f64>() / k as f64;
            let score_se = a
                .scores
                .iter()
                .map(|s| s.1.map(|e| e * e))
                .sum::<Option<f64>>()
                .map(|v| v.sqrt() / k as f64);
            let energy_per_doc_j = (a.energy_docs > 0).then(|| a.energy / a.energy_docs as f64);
            ModelPoint {
                label,
                score,
                score_se,
                tasks: k,
                latency_ms: (a.lat_n > 0).then(|| a.lat_sum / a.lat_n as f64),
                peak_rss_bytes: a.peak,
                energy_per_doc_j,
                energy_per_1k_prompt_tokens_j: (a.prompt_tokens > 0.0)
                    .then(|| a.prompt_energy * 1000.0 / a.prompt_tokens),
                energy_per_1k_generated_tokens_j: (a.gen_tokens > 0.0)
                    .then(|| a.gen_energy * 1000.0 / a.gen_tokens),
                score_per_kj: energy_per_doc_j
                    .filter(|e| *e > 0.0)
                    .map(|e| score / e * 1000.0),
                energy_method: a.energy_method,
                file_bytes: a.file_bytes,
                n_params: a.n_params,
                cost_per_1k_docs: (a.cost_docs > 0).then(|| a.cost * 1000.0 / a.cost_docs as f64),
                currency: a.currency,
            }
        })
        .collect()
}

/// What `slmbench report` writes.
#[derive(Debug, Clone, Default)]
pub struct ReportFiles {
    pub files: Vec<PathBuf>,
}

/// Merges `runs` and writes every table, chart and the HTML page into `out`.
pub fn write_report(runs: &[Run], out: &Path) -> Result<ReportFiles, ReportError> {
    std::fs::create_dir_all(out).map_err(|e| write_err(out)(e.to_string()))?;
    let rows = long_rows(runs);
    let points = model_points(runs);
    let mut files = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<(), ReportError> {
        let p = out.join(name);
        crate::record::write_atomic(&p, bytes)?;
        files.push(p);
        Ok(())
    };
    let mut df = table::dataframe(&rows)?;
    put("results_long.csv", &table::csv_bytes(&mut df)?)?;
    put("results_long.json", &table::json_bytes(&mut df)?)?;
    put("results_long.parquet", &table::parquet_bytes(&mut df)?)?;
    put(
        "summary.md",
        table::markdown_summary(&rows, &points).as_bytes(),
    )?;
    let pairs = significance::pair_tests(&significance::correctness(runs)?);
    put("significance.csv", significance::csv(&pairs).as_bytes())?;
    let charts = charts::all_charts(runs, &points)?;
    for c in &charts {
        put(&format!("{}.svg", c.name), c.svg.as_bytes())?;
        put(&format!("{}.png", c.name), &c.png)?;
    }
    put(
        "report.html",
        html::render(runs, &rows, &points, &charts, &pairs)?.as_bytes(),
    )?;
    Ok(ReportFiles { files })
}
