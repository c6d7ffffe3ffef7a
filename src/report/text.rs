//! The run summary printed after `slmbench run`: one row per model × task ×
//! metric, as plain text.

use crate::record::{CellStatus, RunRecord};

/// The printed summary: one row per model × task × metric.
pub fn summary_table(record: &RunRecord) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "model".into(),
        "task".into(),
        "metric".into(),
        "value ± stderr".into(),
        "n".into(),
        "time (s)".into(),
        "p50 ms/doc".into(),
    ]];
    for c in &record.cells {
        if c.status == CellStatus::Failed {
            rows.push([
                c.model.clone(),
                c.task.clone(),
                "FAILED".into(),
                c.error.clone().unwrap_or_default(),
                "0".into(),
                String::new(),
                String::new(),
            ]);
            continue;
        }
        for m in &c.metrics {
            let v = match m.stderr {
                Some(e) => format!("{:.4} ± {:.4}", m.value, e),
                None => format!("{:.4} ± n/a", m.value),
            };
            rows.push([
                c.model.clone(),
                c.task.clone(),
                m.name.clone(),
                v,
                c.n.to_string(),
                format!("{:.1}", c.wall_time_s),
                c.latency
                    .as_ref()
                    .map_or("n/a".into(), |l| format!("{:.0}", l.p50_ms)),
            ]);
        }
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    let mut out = crate::text_table::table(&rows);
    out.push_str(&served_lines(record));
    out
}

/// One line per served model's cell: requests, throughput, tokens, cost
/// and the harness's own share of the time (empty for local models).
fn served_lines(record: &RunRecord) -> String {
    let mut out = String::new();
    for c in &record.cells {
        let Some(s) = &c.served else { continue };
        if out.is_empty() {
            out.push_str("served:\n");
        }
        let mut parts = vec![format!("{} requests", s.requests)];
        if let Some(r) = s.requests_per_s {
            parts.push(format!("{r:.1} req/s"));
        }
        if let Some(l) = &s.request_latency {
            parts.push(format!("p50 {:.0} ms, p99 {:.0} ms", l.p50_ms, l.p99_ms));
        }
        parts.push(format!(
            "{} prompt + {} completion tokens",
            s.prompt_tokens, s.completion_tokens
        ));
        if let (Some(cost), Some(per_1k)) = (s.cost, s.cost_per_1k_docs) {
            let cur = s.currency.as_deref().unwrap_or("");
            parts.push(format!("cost {cost:.4} {cur} ({per_1k:.4} per 1k docs)"));
        }
        if let Some(h) = s.harness_cpu_share {
            parts.push(format!("harness CPU {:.1}% of the wall time", h * 100.0));
        }
        out.push_str(&format!("  {}/{}: {}\n", c.model, c.task, parts.join(", ")));
    }
    out
}
