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
    crate::text_table::table(&rows)
}
