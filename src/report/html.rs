//! The self-contained HTML report: one file with inline CSS and SVG charts,
//! no network access and no external scripts. Every piece of dataset or
//! model text goes through [`esc`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::charts::Chart;
use super::stats::sample_correct;
use super::table::value_pm;
use super::{label_of, model_labels, ok_cells, primary_metric, ModelPoint, ReportError, Row, Run};

/// Failing samples shown per model × task.
pub const FAILING_SAMPLES: usize = 3;
/// Longest context shown for a sample, in characters (the tail is kept).
const CONTEXT_CHARS: usize = 600;

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}\
table{border-collapse:collapse;margin:0.5rem 0 1.5rem;font-size:0.9rem}\
th,td{border:1px solid #ccc;padding:0.25rem 0.5rem;text-align:left;vertical-align:top}\
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.chart svg{max-width:100%;height:auto}.chart{margin:1rem 0}\
pre{white-space:pre-wrap;background:#f8f8f8;padding:0.5rem;margin:0;font-size:0.8rem;max-width:700px}\
details{margin:0.5rem 0}.note{color:#555;font-size:0.9rem}";

/// Drops an XML prolog so the SVG can sit inline in HTML.
fn inline_svg(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / 1048576.0)
}

fn opt_cell<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "n/a".into(), f)
}

fn summary_table(rows: &[Row], points: &[ModelPoint], out: &mut String) {
    let tasks: BTreeSet<&str> = rows.iter().map(|r| r.task.as_str()).collect();
    let point: BTreeMap<&str, &ModelPoint> = points.iter().map(|p| (p.label.as_str(), p)).collect();
    let mut by: BTreeMap<(&str, &str), &Row> = BTreeMap::new();
    for r in rows {
        let key = (r.model.as_str(), r.task.as_str());
        if by
            .get(&key)
            .is_none_or(|p| p.metric != "acc" && r.metric == "acc")
        {
            by.insert(key, r);
        }
    }
    let models: BTreeSet<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    out.push_str("<table id=\"summary\"><thead><tr><th>model</th>");
    for t in &tasks {
        let _ = write!(out, "<th>{}</th>", esc(t));
    }
    let priced = points.iter().any(|p| p.cost_per_1k_docs.is_some());
    out.push_str("<th>mean</th><th>latency ms/doc</th><th>peak RSS</th><th>energy J/doc</th><th>parameters</th>");
    if priced {
        out.push_str("<th>cost /1k docs</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for m in &models {
        let _ = write!(out, "<tr><td>{}</td>", esc(m));
        for t in &tasks {
            let text = match by.get(&(*m, *t)) {
                None => String::new(),
                Some(r) if r.status != "ok" => "FAILED".into(),
                Some(r) => match r.value {
                    Some(v) if r.metric == "acc" => value_pm(v, r.stderr),
                    Some(v) => format!("{} ({})", value_pm(v, r.stderr), r.metric),
                    None => "n/a".into(),
                },
            };
            let _ = write!(out, "<td class=\"num\">{}</td>", esc(&text));
        }
        match point.get(m) {
            Some(p) => {
                let _ = write!(
                    out,
                    "<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
                    esc(&value_pm(p.score, p.score_se)),
                    opt_cell(p.latency_ms, |v| format!("{v:.1}")),
                    opt_cell(p.peak_rss_bytes, mib),
                    opt_cell(p.energy_per_doc_j, |v| format!("{v:.3}")),
                    opt_cell(p.n_params, |v| format!("{:.1}M", v as f64 / 1e6)),
                );
                if priced {
                    let cur = p.currency.as_deref().unwrap_or("");
                    let _ = write!(
                        out,
                        "<td class=\"num\">{}</td>",
                        esc(&opt_cell(p.cost_per_1k_docs, |v| format!("{v:.4} {cur}")))
                    );
                }
            }
            None => {
                out.push_str("<td>n/a</td><td>n/a</td><td>n/a</td><td>n/a</td><td>n/a</td>");
                if priced {
                    out.push_str("<td>n/a</td>");
                }
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

fn task_tables(rows: &[Row], out: &mut String) {
    let tasks: BTreeSet<&str> = rows.iter().map(|r| r.task.as_str()).collect();
    for t in tasks {
        // Served models' requests, throughput and cost, when the task has one.
        let served = rows.iter().any(|r| r.task == t && r.requests.is_some());
        let _ = write!(
            out,
            "<h3>{}</h3><table class=\"task\"><thead><tr><th>model</th><th>metric</th><th>value ± se</th><th>n</th><th>p50 ms</th><th>p90 ms</th><th>tokens/s</th><th>peak RSS</th><th>energy J</th>{}<th>status</th></tr></thead><tbody>",
            esc(t),
            if served { "<th>requests</th><th>req/s</th><th>tokens in/out</th><th>cost</th><th>harness CPU</th>" } else { "" }
        );
        for r in rows.iter().filter(|r| r.task == t) {
            let served_cells = if served {
                format!(
                    "<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
                    opt_cell(r.requests, |v| v.to_string()),
                    opt_cell(r.requests_per_s, |v| format!("{v:.1}")),
                    match (r.prompt_tokens, r.completion_tokens) {
                        (Some(i), Some(o)) => format!("{i} / {o}"),
                        _ => "n/a".into(),
                    },
                    esc(&opt_cell(r.cost, |v| format!(
                        "{v:.4} {}",
                        r.currency.as_deref().unwrap_or("")
                    ))),
                    opt_cell(r.harness_cpu_share, |v| format!("{:.1}%", v * 100.0)),
                )
            } else {
                String::new()
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>{}<td>{}</td></tr>",
                esc(&r.model),
                esc(&r.metric),
                esc(&opt_cell(r.value, |v| value_pm(v, r.stderr))),
                r.n,
                opt_cell(r.latency_p50_ms, |v| format!("{v:.1}")),
                opt_cell(r.latency_p90_ms, |v| format!("{v:.1}")),
                opt_cell(r.tokens_per_s, |v| format!("{v:.0}")),
                opt_cell(r.peak_rss_bytes, mib),
                esc(&opt_cell(r.energy_j, |v| format!(
                    "{v:.1} ({})",
                    r.energy_method.as_deref().unwrap_or("n/a")
                ))),
                served_cells,
                esc(&r.status),
            );
        }
        out.push_str("</tbody></table>");
    }
}

fn tail_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    if count <= n {
        s.to_string()
    } else {
        format!("…{}", s.chars().skip(count - n).collect::<String>())
    }
}

fn failing_samples(runs: &[Run], out: &mut String) -> Result<(), ReportError> {
    let labels = model_labels(runs);
    for (i, c) in ok_cells(runs) {
        let Some(metric) = primary_metric(c) else {
            continue;
        };
        let samples = runs[i].samples(&c.model, &c.task)?;
        let wrong: Vec<_> = samples
            .iter()
            .filter(|s| sample_correct(s, &metric.name).map_or(s.pred != s.gold, |v| v < 0.5))
            .take(FAILING_SAMPLES)
            .collect();
        if wrong.is_empty() {
            continue;
        }
        let label = label_of(&labels, i, &c.model);
        if wrong[0]
            .metrics
            .get("generation")
            .is_some_and(|g| g.is_string())
        {
            failing_generations(out, &label, c, &metric.name, &wrong, samples.len());
            continue;
        }
        let _ = write!(
            out,
            "<details class=\"failing\"><summary>{} / {}: first {} wrong of {} documents</summary><table><thead><tr><th>doc</th><th>context</th><th>gold</th><th>predicted</th><th>log-likelihoods</th></tr></thead><tbody>",
            esc(&label),
            esc(&c.task),
            wrong.len(),
            samples.len()
        );
        for s in wrong {
            let choice = |k: usize| s.continuations.get(k).cloned().unwrap_or_default();
            let lls: Vec<String> = s.loglikelihoods.iter().map(|x| format!("{x:.2}")).collect();
            let _ = write!(
                out,
                "<tr><td class=\"num\">{}</td><td><pre>{}</pre></td><td><pre>{}</pre></td><td><pre>{}</pre></td><td>{}</td></tr>",
                s.doc_id,
                esc(&tail_chars(&s.context, CONTEXT_CHARS)),
                esc(&choice(s.gold)),
                esc(&choice(s.pred)),
                esc(&lls.join(", "))
            );
        }
        out.push_str("</tbody></table></details>");
    }
    Ok(())
}

/// A generation cell's first wrong documents: the prompt's tail, the
/// generation, the answer the metric's filter extracted, and the target.
fn failing_generations(
    out: &mut String,
    label: &str,
    c: &crate::record::CellResult,
    metric: &str,
    wrong: &[&crate::record::SampleRecord],
    total: usize,
) {
    let filter = metric.split_once(',').map_or("none", |(_, f)| f);
    let text = |s: &crate::record::SampleRecord, key: &str| {
        s.metrics
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let _ = write!(
        out,
        "<details class=\"failing\"><summary>{} / {}: first {} wrong of {} documents ({})</summary><table><thead><tr><th>doc</th><th>prompt (end)</th><th>generation</th><th>extracted</th><th>target</th></tr></thead><tbody>",
        esc(label),
        esc(&c.task),
        wrong.len(),
        total,
        esc(metric)
    );
    for s in wrong {
        let extracted = s
            .metrics
            .get("filtered")
            .and_then(|f| f.get(filter))
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let _ = write!(
            out,
            "<tr><td class=\"num\">{}</td><td><pre>{}</pre></td><td><pre>{}</pre></td><td><pre>{}</pre></td><td><pre>{}</pre></td></tr>",
            s.doc_id,
            esc(&tail_chars(&text(s, "prompt"), CONTEXT_CHARS)),
            esc(&text(s, "generation")),
            esc(extracted),
            esc(&text(s, "target")),
        );
    }
    out.push_str("</tbody></table></details>");
}

fn fingerprints(runs: &[Run], out: &mut String) {
    out.push_str("<table id=\"fingerprint\"><thead><tr><th>run</th><th>CPU</th><th>threads</th><th>ISA</th><th>RAM</th><th>OS</th><th>build</th><th>versions</th></tr></thead><tbody>");
    for run in runs {
        let e = &run.record.environment;
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{} of {}</td><td>{}</td><td>{}</td><td>{}</td><td>slmbench {} ({}, {}){}</td><td>{}; {}</td></tr>",
            esc(&run.record.run_id),
            esc(&e.cpu),
            e.threads,
            e.cores_logical,
            esc(&if e.kernels.is_empty() {
                e.isa_flags.join(" ")
            } else {
                format!("{}; kernels {}", e.isa_flags.join(" "), e.kernels)
            }),
            esc(&opt_cell(e.total_memory_bytes, |b| format!("{:.1} GiB", b as f64 / 1073741824.0))),
            esc(&e.os),
            esc(&e.slmbench_version),
            esc(&e.git_hash),
            esc(&e.build_profile),
            e.measurement_warning
                .as_ref()
                .map_or(String::new(), |w| format!(" <b>{}</b>", esc(w))),
            esc(&e.rustc),
            esc(&e.crate_versions),
        );
    }
    out.push_str("</tbody></table>");
}

fn method_notes(runs: &[Run], out: &mut String) {
    let energy: BTreeSet<String> = runs
        .iter()
        .flat_map(|r| r.record.cells.iter())
        .filter_map(|c| c.energy.as_ref().map(|e| e.note.clone()))
        .collect();
    out.push_str("<ul class=\"note\">\
<li>Scores: lm-eval's definitions (acc, acc_norm, f1, mcc) on the same prompts; standard errors as lm-eval computes them (sample sd/√n; bootstrap for f1/mcc). The per-model mean is the unweighted mean over tasks of the primary metric (acc, else the task's first metric) with se = √(Σ se²)/k. Error bars span ±1.96 se.</li>\
<li>Latency: wall time to score one document (all its choices), the first document of each cell excluded as warm-up; tokens/s counts the tokens forwarded.</li>\
<li>Memory: peak resident set size of the process while the cell ran (the kernel's VmHWM, reset per cell).</li>\
<li>Pareto frontier: the models no other model beats on both axes (lower cost, higher score).</li>");
    for n in energy {
        let _ = write!(out, "<li>Energy: {}</li>", esc(&n));
    }
    out.push_str("</ul>");
}

/// The whole page.
pub fn render(
    runs: &[Run],
    rows: &[Row],
    points: &[ModelPoint],
    charts: &[Chart],
) -> Result<String, ReportError> {
    let mut out = String::new();
    let ids: Vec<String> = runs.iter().map(|r| r.record.run_id.clone()).collect();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>slmbench report: {}</title><style>{STYLE}</style></head><body>",
        esc(&ids.join(", "))
    );
    let _ = write!(
        out,
        "<h1>slmbench report</h1><p class=\"note\">Runs: {}. Generated by slmbench {}.</p>",
        esc(&ids.join(", ")),
        esc(env!("CARGO_PKG_VERSION"))
    );
    out.push_str("<h2>Summary</h2>");
    summary_table(rows, points, &mut out);
    out.push_str("<h2>Charts</h2>");
    for c in charts {
        let _ = write!(
            out,
            "<figure class=\"chart\" id=\"chart-{}\" aria-label=\"{}\">{}</figure>",
            esc(&c.name),
            esc(&c.title),
            inline_svg(&c.svg)
        );
    }
    out.push_str("<h2>Per task</h2>");
    task_tables(rows, &mut out);
    out.push_str("<h2>Failing samples</h2><p class=\"note\">The first documents each model got wrong (by the primary metric), with the gold and predicted continuations.</p>");
    failing_samples(runs, &mut out)?;
    out.push_str("<h2>System and method</h2>");
    fingerprints(runs, &mut out);
    method_notes(runs, &mut out);
    // The only script: marks the page as rendered with its chart count, so a
    // headless browser check can tell the page ran without errors.
    out.push_str("<script>document.documentElement.dataset.rendered=String(document.querySelectorAll('figure.chart svg').length);</script></body></html>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<script>alert(\"x\")</script> & 'y'"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn long_context_keeps_tail() {
        assert_eq!(tail_chars("abcdef", 3), "…def");
        assert_eq!(tail_chars("ab", 3), "ab");
    }
}
