//! Tables: the long table as a polars `DataFrame` written as CSV, JSON and
//! Parquet, and the Markdown summary (models as rows, tasks as columns).
//! Writers return bytes so they can be snapshot-tested.

use std::collections::{BTreeMap, BTreeSet};

use polars::prelude::*;

use super::{ModelPoint, ReportError, Row};

fn polars_err(e: PolarsError) -> ReportError {
    ReportError::Input(format!("table: {e}"))
}

/// The long table as a DataFrame, one column per `Row` field.
pub fn dataframe(rows: &[Row]) -> Result<DataFrame, ReportError> {
    fn col<T, F>(rows: &[Row], name: &str, f: F) -> Column
    where
        F: Fn(&Row) -> T,
        Series: NamedFrom<Vec<T>, [T]>,
    {
        Column::new(name.into(), rows.iter().map(f).collect::<Vec<T>>())
    }
    let cols = vec![
        col(rows, "run_id", |r| r.run_id.clone()),
        col(rows, "model", |r| r.model.clone()),
        col(rows, "variant", |r| r.variant.clone()),
        col(rows, "task", |r| r.task.clone()),
        col(rows, "metric", |r| r.metric.clone()),
        col(rows, "value", |r| r.value),
        col(rows, "stderr", |r| r.stderr),
        col(rows, "n", |r| r.n as u64),
        col(rows, "num_fewshot", |r| r.num_fewshot as u64),
        col(rows, "status", |r| r.status.clone()),
        col(rows, "wall_time_s", |r| r.wall_time_s),
        col(rows, "tokens_per_s", |r| r.tokens_per_s),
        col(rows, "latency_p50_ms", |r| r.latency_p50_ms),
        col(rows, "latency_p90_ms", |r| r.latency_p90_ms),
        col(rows, "latency_mean_ms", |r| r.latency_mean_ms),
        col(rows, "peak_rss_bytes", |r| r.peak_rss_bytes),
        col(rows, "energy_j", |r| r.energy_j),
        col(rows, "energy_per_doc_j", |r| r.energy_per_doc_j),
        col(rows, "energy_per_1k_prompt_tokens_j", |r| {
            r.energy_per_1k_prompt_tokens_j
        }),
        col(rows, "energy_per_1k_generated_tokens_j", |r| {
            r.energy_per_1k_generated_tokens_j
        }),
        col(rows, "score_per_kj", |r| r.score_per_kj),
        col(rows, "energy_method", |r| r.energy_method.clone()),
        col(rows, "file_bytes", |r| r.file_bytes),
        col(rows, "n_params", |r| r.n_params),
        col(rows, "requests", |r| r.requests),
        col(rows, "prompt_tokens", |r| r.prompt_tokens),
        col(rows, "completion_tokens", |r| r.completion_tokens),
        col(rows, "requests_per_s", |r| r.requests_per_s),
        col(rows, "request_p50_ms", |r| r.request_p50_ms),
        col(rows, "ttfb_p50_ms", |r| r.ttfb_p50_ms),
        col(rows, "cost", |r| r.cost),
        col(rows, "cost_per_1k_docs", |r| r.cost_per_1k_docs),
        col(rows, "currency", |r| r.currency.clone()),
        col(rows, "harness_cpu_share", |r| r.harness_cpu_share),
    ];
    DataFrame::new(rows.len(), cols).map_err(polars_err)
}

pub fn csv_bytes(df: &mut DataFrame) -> Result<Vec<u8>, ReportError> {
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf)
        .include_header(true)
        .finish(df)
        .map_err(polars_err)?;
    Ok(buf)
}

/// A JSON array of row objects (missing values are `null`).
pub fn json_bytes(df: &mut DataFrame) -> Result<Vec<u8>, ReportError> {
    let mut buf = Vec::new();
    JsonWriter::new(&mut buf)
        .with_json_format(JsonFormat::Json)
        .finish(df)
        .map_err(polars_err)?;
    Ok(buf)
}

pub fn parquet_bytes(df: &mut DataFrame) -> Result<Vec<u8>, ReportError> {
    let mut buf = Vec::new();
    ParquetWriter::new(&mut buf)
        .finish(df)
        .map_err(polars_err)?;
    Ok(buf)
}

/// `0.712 ± 0.045`, or `0.712 ± n/a` without a standard error.
pub fn value_pm(value: f64, stderr: Option<f64>) -> String {
    match stderr {
        Some(e) => format!("{value:.3} ± {e:.3}"),
        None => format!("{value:.3} ± n/a"),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1024.0 * 1024.0))
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "n/a".to_string(), f)
}

/// Escapes a Markdown table cell.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Models as rows, tasks as columns (primary metric ± stderr), then the
/// mean score and the cost columns. Failed cells show `FAILED`.
pub fn markdown_summary(rows: &[Row], points: &[ModelPoint]) -> String {
    let tasks: BTreeSet<&str> = rows.iter().map(|r| r.task.as_str()).collect();
    let models: BTreeSet<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    // (model, task) -> the primary metric's row, chosen like `primary_metric`.
    let mut cell: BTreeMap<(&str, &str), &Row> = BTreeMap::new();
    for r in rows {
        let key = (r.model.as_str(), r.task.as_str());
        match cell.get(&key) {
            // Rows come sorted by metric name: the first one stays, unless
            // `acc` comes later.
            Some(prev) if prev.metric == "acc" || r.metric != "acc" => {}
            _ => {
                cell.insert(key, r);
            }
        }
    }
    let point: BTreeMap<&str, &ModelPoint> = points.iter().map(|p| (p.label.as_str(), p)).collect();
    let mut s = String::new();
    s.push_str("| model |");
    for t in &tasks {
        s.push_str(&format!(" {} |", md_cell(t)));
    }
    // The cost column only when some model has a price (served models).
    let priced = points.iter().any(|p| p.cost_per_1k_docs.is_some());
    let generated = points
        .iter()
        .any(|p| p.energy_per_1k_generated_tokens_j.is_some());
    s.push_str(
        " mean | latency ms/doc | peak RSS MiB | energy J/doc | energy J/1k prompt tokens |",
    );
    if generated {
        s.push_str(" energy J/1k generated tokens |");
    }
    s.push_str(" score per kJ |");
    if priced {
        s.push_str(" cost /1k docs |");
    }
    let extra = 6 + usize::from(generated) + usize::from(priced);
    s.push_str("\n|---|");
    for _ in 0..tasks.len() + extra {
        s.push_str("---|");
    }
    s.push('\n');
    for m in &models {
        s.push_str(&format!("| {} |", md_cell(m)));
        for t in &tasks {
            let text = match cell.get(&(*m, *t)) {
                None => "".to_string(),
                Some(r) if r.status != "ok" => "FAILED".to_string(),
                Some(r) => match r.value {
                    Some(v) => {
                        let name = if r.metric == "acc" {
                            String::new()
                        } else {
                            format!(" ({})", r.metric)
                        };
                        format!("{}{name}", value_pm(v, r.stderr))
                    }
                    None => "n/a".into(),
                },
            };
            s.push_str(&format!(" {text} |"));
        }
        match point.get(m) {
            Some(p) => {
                s.push_str(&format!(
                    " {} | {} | {} | {} | {} |",
                    value_pm(p.score, p.score_se),
                    opt(p.latency_ms, |v| format!("{v:.1}")),
                    opt(p.peak_rss_bytes, mib),
                    opt(p.energy_per_doc_j, |v| format!("{v:.3}")),
                    opt(p.energy_per_1k_prompt_tokens_j, |v| format!("{v:.2}")),
                ));
                if generated {
                    s.push_str(&format!(
                        " {} |",
                        opt(p.energy_per_1k_generated_tokens_j, |v| format!("{v:.2}"))
                    ));
                }
                s.push_str(&format!(
                    " {} |",
                    opt(p.score_per_kj, |v| format!("{v:.0}"))
                ));
                if priced {
                    let cur = p.currency.as_deref().unwrap_or("");
                    s.push_str(&format!(
                        " {} |",
                        opt(p.cost_per_1k_docs, |v| format!("{v:.4} {cur}"))
                    ));
                }
                s.push('\n');
            }
            None => {
                for _ in 0..extra - 1 {
                    s.push_str(" n/a |");
                }
                s.push('\n');
            }
        }
    }
    let methods: BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r.energy_method.as_deref())
        .collect();
    s.push_str(&format!(
        "\nValues: primary metric (acc unless named) ± standard error; mean: over tasks, ± sqrt(Σ se²)/k. \
         Latency: mean per document, warm-up excluded. Peak RSS: kernel high-water mark (VmHWM). \
         Energy: J per document, J per 1k prompt tokens (a generation cell's energy split between prefill and decode by their time, \
         giving J per 1k generated tokens too), score per kJ = mean score / J per document × 1000; method: {}.{}\n",
        if methods.is_empty() {
            "n/a".to_string()
        } else {
            methods.into_iter().collect::<Vec<_>>().join(", ")
        },
        if priced {
            " Cost: the prompt and completion tokens of every request (the server's `usage` where it \
             reports it, else counted from its reply) at the model's `price`, per 1,000 documents scored. \
             A served model's peak RSS and energy are n/a: they are the server's, not this process's."
        } else {
            ""
        }
    ));
    s
}
