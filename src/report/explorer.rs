//! The data behind the HTML page's script: every document of every
//! successful cell as compact JSON (rendered on demand by `report.js`), the
//! escaping that keeps it inert inside a `<script>` element, and the markup
//! skeletons the script fills (diff view, sample explorer).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::stats::sample_correct;
use super::{label_of, model_labels, ok_cells, primary_metric, ReportError, Run};

/// JSON safe to embed in a `<script type="application/json">` element:
/// `<`, `>` and `&` are written as `\u` escapes (JSON allows them only
/// inside strings, where the escape means the same character), so no data
/// text can close the element or open another.
pub fn json_for_script(v: &Value) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + 64);
    for ch in s.chars() {
        match ch {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

fn round3(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// Every document of every successful cell, compactly: per task the
/// documents (id, prompt, choices or target, gold), per cell the arrays of
/// correctness, prediction and log-likelihoods (or generation and
/// extracted answer) aligned with its task's documents.
pub fn explorer_data(runs: &[Run]) -> Result<Value, ReportError> {
    let labels = model_labels(runs);
    let mut models: BTreeSet<String> = BTreeSet::new();
    struct CellDocs {
        model: String,
        task: String,
        metric: String,
        samples: Vec<crate::record::SampleRecord>,
    }
    let mut cells = Vec::new();
    for (i, c) in ok_cells(runs) {
        let Some(metric) = primary_metric(c) else {
            continue;
        };
        let label = label_of(&labels, i, &c.model);
        models.insert(label.clone());
        cells.push(CellDocs {
            model: label,
            task: c.task.clone(),
            metric: metric.name.clone(),
            samples: runs[i].samples(&c.model, &c.task)?,
        });
    }
    let models: Vec<String> = models.into_iter().collect();
    let model_index: BTreeMap<&str, usize> = models
        .iter()
        .enumerate()
        .map(|(k, m)| (m.as_str(), k))
        .collect();
    let text = |s: &crate::record::SampleRecord, key: &str| -> String {
        s.metrics
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let is_gen =
        |s: &crate::record::SampleRecord| s.metrics.get("generation").is_some_and(Value::is_string);
    // Tasks: the union of document ids over the task's cells.
    let mut task_docs: BTreeMap<&str, BTreeMap<usize, &crate::record::SampleRecord>> =
        BTreeMap::new();
    for c in &cells {
        let docs = task_docs.entry(c.task.as_str()).or_default();
        for s in &c.samples {
            docs.entry(s.doc_id).or_insert(s);
        }
    }
    let task_names: Vec<&str> = task_docs.keys().copied().collect();
    let mut tasks_json = Vec::new();
    let mut position: BTreeMap<&str, BTreeMap<usize, usize>> = BTreeMap::new();
    for t in &task_names {
        let docs = &task_docs[t];
        let gen = docs.values().next().is_some_and(|s| is_gen(s));
        let metric = cells
            .iter()
            .find(|c| c.task == *t)
            .map_or("", |c| c.metric.as_str());
        position.insert(t, docs.keys().enumerate().map(|(k, id)| (*id, k)).collect());
        let ids: Vec<usize> = docs.keys().copied().collect();
        let ctx: Vec<String> = docs
            .values()
            .map(|s| {
                if gen {
                    text(s, "prompt")
                } else {
                    s.context.clone()
                }
            })
            .collect();
        let gold: Vec<Value> = docs
            .values()
            .map(|s| {
                if gen {
                    json!(text(s, "target"))
                } else {
                    json!(s.gold)
                }
            })
            .collect();
        let ch: Value = if gen {
            Value::Null
        } else {
            Value::from(
                docs.values()
                    .map(|s| json!(s.continuations))
                    .collect::<Vec<_>>(),
            )
        };
        tasks_json.push(json!({"name": t, "metric": metric, "gen": gen, "ids": ids, "ctx": ctx, "gold": gold, "ch": ch}));
    }
    let mut cells_json = Vec::new();
    for c in &cells {
        let Some(t) = task_names.iter().position(|t| *t == c.task) else {
            continue;
        };
        let pos = &position[c.task.as_str()];
        let n = pos.len();
        let mut ok = vec![Value::Null; n];
        let mut pred = vec![Value::Null; n];
        let mut ll = vec![Value::Null; n];
        let mut gen = vec![Value::Null; n];
        let mut ext = vec![Value::Null; n];
        let filter = c
            .metric
            .split_once(',')
            .map_or("none", |(_, f)| f)
            .to_string();
        let generation = tasks_json[t]["gen"].as_bool().unwrap_or(false);
        for s in &c.samples {
            let Some(&k) = pos.get(&s.doc_id) else {
                continue;
            };
            let right =
                sample_correct(s, &c.metric).unwrap_or(f64::from(u8::from(s.pred == s.gold)));
            ok[k] = json!(if right > 0.5 { 1 } else { 0 });
            if generation {
                gen[k] = json!(text(s, "generation"));
                ext[k] = json!(s
                    .metrics
                    .get("filtered")
                    .and_then(|f| f.get(&filter))
                    .and_then(|v| v.as_str())
                    .unwrap_or_default());
            } else {
                pred[k] = json!(if c.metric == "acc_norm" {
                    s.pred_norm
                } else {
                    s.pred
                });
                ll[k] = Value::from(
                    s.loglikelihoods
                        .iter()
                        .map(|x| round3(*x))
                        .collect::<Vec<_>>(),
                );
            }
        }
        let mut obj =
            json!({"m": model_index[c.model.as_str()], "t": t, "metric": c.metric, "ok": ok});
        if generation {
            obj["gen"] = Value::from(gen);
            obj["ext"] = Value::from(ext);
        } else {
            obj["pred"] = Value::from(pred);
            obj["ll"] = Value::from(ll);
        }
        cells_json.push(obj);
    }
    Ok(json!({"models": models, "tasks": tasks_json, "cells": cells_json}))
}

pub const DIFF_HTML: &str = "<div class=\"controls\"><label>model A <select id=\"diff-a\"></select></label><label>model B <select id=\"diff-b\"></select></label></div>\
<table id=\"diff\"><thead><tr><th>task</th><th>documents</th><th colspan=\"2\" id=\"diff-head-a\">A right, B wrong</th><th colspan=\"2\" id=\"diff-head-b\">A wrong, B right</th></tr></thead><tbody id=\"diff-rows\"></tbody></table>\
<p class=\"note\">Two models, or the same model in two runs (<code>report BASELINE CURRENT</code> labels them <code>name [run]</code>): per task the documents that flipped each way. Click a document to open it.</p>";

pub const EXPLORER_HTML: &str = "<div class=\"controls\"><label>task <select id=\"ex-task\"></select></label><label>model <select id=\"ex-model\"></select></label>\
<label>show <select id=\"ex-outcome\"><option value=\"all\">all</option><option value=\"right\">right</option><option value=\"wrong\">wrong</option><option value=\"flipped\">flipped between A and B</option></select></label>\
<label>A <select id=\"ex-a\"></select></label><label>B <select id=\"ex-b\"></select></label><label>prompt contains <input id=\"ex-search\" type=\"search\" size=\"18\"></label></div>\
<p class=\"note\"><b id=\"ex-count\">0</b> matching rows, <span id=\"ex-shown\">0</span> shown. Click a row to open the document with every model's answer.</p>\
<div id=\"ex-doc\" hidden></div>\
<table id=\"ex-table\"><thead><tr><th>task</th><th>doc</th><th>model</th><th>gold</th><th>predicted</th><th>result</th></tr></thead><tbody id=\"ex-rows\"></tbody></table>\
<button type=\"button\" id=\"ex-more\" hidden>show 100 more</button>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_data_cannot_close_its_element() {
        let v = json!({"t": "</script><img src=x onerror=alert(1)>&amp;\u{2028}"});
        let s = json_for_script(&v);
        assert!(
            !s.contains('<') && !s.contains('>') && !s.contains('&'),
            "{s}"
        );
        let back: Value = serde_json::from_str(&s).expect("still JSON");
        assert_eq!(back, v);
    }
}
