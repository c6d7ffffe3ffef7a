//! The self-contained HTML report: one file with inline CSS, SVG charts,
//! the run's per-document records as JSON and one inline script
//! (`report.js`: sortable tables, the model-vs-model diff and the sample
//! explorer). No network access. Every piece of dataset or model text goes
//! through [`esc`] in markup, through [`json_for_script`] in the data
//! block, and through `textContent` in the script — never `innerHTML`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value;

use super::charts::Chart;
use super::explorer::{explorer_data, json_for_script, DIFF_HTML, EXPLORER_HTML};
use super::significance::PairTest;
use super::stats::Z95;
use super::table::value_pm;
use super::{ModelPoint, ReportError, Row, Run};

/// The page's script, inlined.
const SCRIPT: &str = include_str!("report.js");

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

const STYLE: &str = "body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:1.5rem auto;max-width:1280px;color:#222;padding:0 1rem;line-height:1.35}\
h2{margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:0.2rem}\
table{border-collapse:collapse;margin:0.5rem 0 1.2rem;font-size:0.86rem}\
th,td{border:1px solid #d6d6d6;padding:0.2rem 0.45rem;text-align:left;vertical-align:top}\
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}\
table.sortable th{cursor:pointer;user-select:none}table.sortable th[aria-sort=ascending]::after{content:' \\25B2'}table.sortable th[aria-sort=descending]::after{content:' \\25BC'}\
td.best{font-weight:600;background:#eef6ee}td.tie{background:#f6faf6}td.tie::before{content:'\\2248 ';color:#6a6}\
td.sig{font-weight:600}td.sig.up{background:#eaf5ea}td.sig.down{background:#fbeaea}td.self{background:#fafafa}\
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:0.8rem}\
.chart{margin:0;border:1px solid #eee}.chart svg{width:100%;height:auto;display:block}\
pre{white-space:pre-wrap;background:#f8f8f8;padding:0.4rem;margin:0;font-size:0.8rem;max-width:760px}\
.controls{display:flex;flex-wrap:wrap;gap:0.6rem;align-items:center;margin:0.4rem 0}\
.controls label{font-size:0.9rem}#ex-table{width:100%}tr.doc-row{cursor:pointer}tr.doc-row:hover{background:#f4f8ff}\
td.right{color:#176317}td.wrong{color:#a11}tr.gold td:first-child{background:#eef6ee}td.picked{outline:2px solid #88a}\
.tag{font-size:0.7rem;background:#eee;border-radius:3px;padding:0 0.3rem;margin-left:0.3rem;color:#444}\
#ex-doc{border:1px solid #ccd;padding:0.6rem;margin:0.6rem 0;background:#fcfcff}\
button.link{border:none;background:none;color:#1a55a8;text-decoration:underline;cursor:pointer;padding:0;font:inherit}\
#prov-models code,#prov-tasks code{word-break:break-all;font-size:0.75rem}details{margin:0.5rem 0}.note{color:#555;font-size:0.88rem}code{font-size:0.85rem}";

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

/// The primary row of each (model, task): `acc` when present, else the
/// first metric by name (rows come sorted by metric), as `primary_metric`.
fn primary_rows(rows: &[Row]) -> BTreeMap<(&str, &str), &Row> {
    let mut by: BTreeMap<(&str, &str), &Row> = BTreeMap::new();
    for r in rows {
        let key = (r.model.as_str(), r.task.as_str());
        match by.get(&key) {
            Some(prev) if prev.metric == "acc" || r.metric != "acc" => {}
            _ => {
                by.insert(key, r);
            }
        }
    }
    by
}

/// `data-sort` attribute text for a number (empty when missing: sorts last).
fn sort_attr(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map_or_else(String::new, |x| format!("{x}"))
}

fn num_td(v: Option<f64>, text: &str, class: &str) -> String {
    format!(
        "<td class=\"num{}{class}\" data-sort=\"{}\">{}</td>",
        if class.is_empty() { "" } else { " " },
        sort_attr(v),
        esc(text)
    )
}

/// [`num_td`] for an optional number: its text by `f`, or n/a.
fn opt_num_td(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    num_td(v, &opt_cell(v, f), "")
}

/// The leaderboard: models × tasks with 95% intervals, the best score per
/// task and the scores whose interval overlaps the best one's marked, and
/// the cost columns. Sortable by any column (the page's script).
fn leaderboard(rows: &[Row], points: &[ModelPoint], out: &mut String) {
    let tasks: BTreeSet<&str> = rows.iter().map(|r| r.task.as_str()).collect();
    let models: BTreeSet<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    let point: BTreeMap<&str, &ModelPoint> = points.iter().map(|p| (p.label.as_str(), p)).collect();
    let by = primary_rows(rows);
    let variant: BTreeMap<&str, &str> = rows
        .iter()
        .map(|r| (r.model.as_str(), r.variant.as_str()))
        .collect();
    // Per task: the best score's lower bound; a score whose upper bound
    // reaches it is a tie (the intervals overlap).
    let interval = |r: &Row| {
        let h = Z95 * r.stderr.unwrap_or(0.0);
        r.value.map(|v| (v - h, v, v + h))
    };
    let mut best: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for ((_, t), r) in &by {
        if r.status != "ok" {
            continue;
        }
        if let Some((lo, v, _)) = interval(r) {
            if best.get(t).is_none_or(|b| v > b.1) {
                best.insert(t, (lo, v));
            }
        }
    }
    let priced = points.iter().any(|p| p.cost_per_1k_docs.is_some());
    out.push_str(
        "<table id=\"leaderboard\" class=\"sortable\"><thead><tr><th>model</th><th>weights</th>",
    );
    for t in &tasks {
        let metric = by
            .iter()
            .find(|((_, tt), _)| tt == t)
            .map_or("", |(_, r)| r.metric.as_str());
        let _ = write!(
            out,
            "<th>{} <span class=\"note\">{}</span></th>",
            esc(t),
            esc(metric)
        );
    }
    let generated = points
        .iter()
        .any(|p| p.energy_per_1k_generated_tokens_j.is_some());
    out.push_str("<th>mean</th><th>latency ms/doc</th><th>peak RSS MiB</th><th>energy J/doc</th><th>energy J/1k prompt tokens</th>");
    if generated {
        out.push_str("<th>energy J/1k generated tokens</th>");
    }
    out.push_str("<th>score per kJ</th><th>parameters</th>");
    if priced {
        out.push_str("<th>cost /1k docs</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for m in &models {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td>",
            esc(m),
            esc(variant.get(m).copied().unwrap_or(""))
        );
        for t in &tasks {
            match by.get(&(*m, *t)) {
                None => out.push_str("<td class=\"num\" data-sort=\"\"></td>"),
                Some(r) if r.status != "ok" => {
                    out.push_str("<td class=\"num\" data-sort=\"\">FAILED</td>")
                }
                Some(r) => {
                    let iv = interval(r);
                    let class = match (iv, best.get(t)) {
                        (Some((_, v, _)), Some(b)) if v == b.1 => "best",
                        (Some((_, _, hi)), Some(b)) if hi >= b.0 => "tie",
                        _ => "",
                    };
                    let text = match (r.value, r.stderr) {
                        (Some(v), Some(se)) => format!("{v:.3} ± {:.3}", Z95 * se),
                        (Some(v), None) => format!("{v:.3}"),
                        _ => "n/a".into(),
                    };
                    out.push_str(&num_td(r.value, &text, class));
                }
            }
        }
        match point.get(m) {
            Some(p) => {
                let mean = match p.score_se {
                    Some(se) => format!("{:.3} ± {:.3}", p.score, Z95 * se),
                    None => format!("{:.3}", p.score),
                };
                out.push_str(&num_td(Some(p.score), &mean, ""));
                out.push_str(&opt_num_td(p.latency_ms, |v| format!("{v:.1}")));
                let rss = p.peak_rss_bytes.map(|b| b as f64 / 1048576.0);
                out.push_str(&opt_num_td(rss, |v| format!("{v:.0}")));
                out.push_str(&opt_num_td(p.energy_per_doc_j, |v| format!("{v:.3}")));
                out.push_str(&opt_num_td(p.energy_per_1k_prompt_tokens_j, |v| {
                    format!("{v:.2}")
                }));
                if generated {
                    out.push_str(&opt_num_td(p.energy_per_1k_generated_tokens_j, |v| {
                        format!("{v:.2}")
                    }));
                }
                out.push_str(&opt_num_td(p.score_per_kj, |v| format!("{v:.0}")));
                let params = p.n_params.map(|n| n as f64);
                out.push_str(&opt_num_td(params, |v| format!("{:.1}M", v / 1e6)));
                if priced {
                    let cur = p.currency.as_deref().unwrap_or("");
                    out.push_str(&opt_num_td(p.cost_per_1k_docs, |v| format!("{v:.4} {cur}")));
                }
            }
            None => {
                for _ in 0..(7 + usize::from(priced) + usize::from(generated)) {
                    out.push_str("<td class=\"num\" data-sort=\"\">n/a</td>");
                }
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table><p class=\"note\">Scores: the task's primary metric (acc, else its first metric) ± the half-width of its 95% interval (1.96 se). <b>Bold</b>: the best score of the task; ≈: a score whose interval overlaps the best one's (not distinguishable from it at this n). Click a header to sort. Energy per 1k prompt tokens is all of a log-likelihood cell's energy over its prompt tokens; a generation cell's energy is split between prefill and decode by their time (time to first token vs the rest), giving J per 1k prompt and J per 1k generated tokens. Score per kJ is the mean score over the energy of one document, × 1000 (for accuracy: right answers per kJ). The energy method is in the provenance notes.</p>");
}

/// One matrix per task: row model minus column model, in points, with the
/// 95% interval, McNemar p and Holm-adjusted p (across the task's pairs).
fn significance_tables(pairs: &[PairTest], out: &mut String) {
    let tasks: BTreeSet<&str> = pairs.iter().map(|p| p.task.as_str()).collect();
    if tasks.is_empty() {
        out.push_str(
            "<p class=\"note\">No task has two models with per-document correctness to pair.</p>",
        );
        return;
    }
    for t in tasks {
        let here: Vec<&PairTest> = pairs.iter().filter(|p| p.task == t).collect();
        let mut models: BTreeSet<&str> = BTreeSet::new();
        for p in &here {
            models.insert(&p.model_a);
            models.insert(&p.model_b);
        }
        let _ = write!(
            out,
            "<h3>{} <span class=\"note\">({}, {} pairs)</span></h3><table class=\"significance\" data-task=\"{}\"><thead><tr><th>row − column</th>",
            esc(t),
            esc(&here[0].metric),
            here.len(),
            esc(t)
        );
        for m in &models {
            let _ = write!(out, "<th>{}</th>", esc(m));
        }
        out.push_str("</tr></thead><tbody>");
        for r in &models {
            let _ = write!(out, "<tr><th>{}</th>", esc(r));
            for c in &models {
                if r == c {
                    out.push_str("<td class=\"self\"></td>");
                    continue;
                }
                // A pair is stored once as (a, b) with diff = b − a.
                let found = here.iter().find_map(|p| {
                    if p.model_a == *c && p.model_b == *r {
                        Some((p, 1.0))
                    } else if p.model_a == *r && p.model_b == *c {
                        Some((p, -1.0))
                    } else {
                        None
                    }
                });
                match found {
                    None => out.push_str("<td>n/a</td>"),
                    Some((p, sign)) => {
                        let (lo, hi) = if sign > 0.0 {
                            (p.ci_low, p.ci_high)
                        } else {
                            (-p.ci_high, -p.ci_low)
                        };
                        let _ = write!(
                            out,
                            "<td class=\"num{}\" data-p=\"{}\" data-p-holm=\"{}\" title=\"n = {}; discordant {} / {}\">{:+.1} [{:+.1}, {:+.1}]<br>p {} · Holm {}</td>",
                            match (p.p_holm < 0.05, sign * p.diff > 0.0) {
                                (false, _) => "",
                                (true, true) => " sig up",
                                (true, false) => " sig down",
                            },
                            p.p,
                            p.p_holm,
                            p.n,
                            p.a_only,
                            p.b_only,
                            // `+ 0.0` turns a negative zero into zero.
                            sign * p.diff * 100.0 + 0.0,
                            lo * 100.0 + 0.0,
                            hi * 100.0 + 0.0,
                            p_short(p.p),
                            p_short(p.p_holm),
                        );
                    }
                }
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("<p class=\"note\">Each cell: how many points the row model scores above the column model on the documents both answered, with its 95% interval, the exact McNemar p-value on the discordant documents, and that p-value Holm-adjusted across the pairs of the task. Shaded: Holm-adjusted p &lt; 0.05 (green: the row model is better, red: worse). The same numbers are in <code>significance.csv</code>.</p>");
}

fn p_short(p: f64) -> String {
    if p < 1e-3 {
        format!("{p:.0e}")
    } else {
        format!("{p:.3}")
    }
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

/// Each variant against its parent and each student against its teacher,
/// when both are in a run: the paired delta, flips, agreement, choice KL,
/// retention and MLPerf's quality marks (`report::lineage`).
fn fidelity_section(runs: &[Run], out: &mut String) -> Result<(), ReportError> {
    let mut rows = Vec::new();
    let mut training = Vec::new();
    for run in runs {
        let c = super::lineage::comparison(&run.dir)?;
        rows.extend(c.tasks);
        training.extend(c.training);
    }
    // Several runs of the same variant carry the same bill: list it once.
    let mut seen = Vec::new();
    training.retain(|t| {
        let new = !seen.contains(t);
        if new {
            seen.push(t.clone());
        }
        new
    });
    if rows.is_empty() {
        out.push_str("<p class=\"note\">No run holds a variant with its parent or a student with its teacher.</p>");
        return Ok(());
    }
    out.push_str("<table id=\"fidelity\" class=\"sortable\"><thead><tr><th>model</th><th>reference</th><th>task</th><th>metric</th><th>n</th><th>Δ [95% CI]</th><th>flips +/−</th><th>McNemar p</th><th>agreement</th><th>mean KL nats</th><th>retention [95% CI]</th><th>≥99% / ≥99.9%</th></tr></thead><tbody>");
    for t in &rows {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>{}<td class=\"num\">{} / {}</td>{}{}{}{}<td>{}</td></tr>",
            esc(&t.model),
            esc(&t.reference),
            esc(&t.task),
            esc(&t.metric),
            t.n,
            num_td(
                Some(t.delta),
                &format!("{:+.3} [{:+.3}, {:+.3}]", t.delta, t.ci_low, t.ci_high),
                ""
            ),
            t.only_model,
            t.only_reference,
            num_td(Some(t.mcnemar_p), &p_short(t.mcnemar_p), ""),
            opt_num_td(t.agreement, |a| format!("{:.1}%", a * 100.0)),
            opt_num_td(t.mean_kl, |k| format!("{k:.4}")),
            num_td(t.retention, &super::lineage::retention_text(t), ""),
            esc(&super::lineage::pass_marks(t.retention)),
        );
    }
    out.push_str("</tbody></table>");
    if !training.is_empty() {
        out.push_str("<h3>What distillation cost</h3><table id=\"training\"><thead><tr>");
        let rows = super::lineage::training_rows(&training);
        for h in &rows[0] {
            let _ = write!(out, "<th>{}</th>", esc(h));
        }
        out.push_str("</tr></thead><tbody>");
        for r in &rows[1..] {
            out.push_str("<tr>");
            for c in r {
                let _ = write!(out, "<td>{}</td>", esc(c));
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("<p class=\"note\">Flips: documents right only for the model / only for its reference. Agreement: documents where both pick the same choice. Mean KL: KL(reference ‖ model) between the softmax distributions over the choices' log-likelihoods, averaged over the documents. Retention: model score / reference score with its paired 95% interval (delta method). ≥99% / ≥99.9%: MLPerf's quality marks on the point estimate.</p>");
    Ok(())
}

/// Where every number came from: model files and hashes, data files and
/// hashes, task versions, the invocation's seeds and limits.
fn provenance(runs: &[Run], out: &mut String) {
    out.push_str("<h3>Models</h3><table id=\"prov-models\"><thead><tr><th>run</th><th>model</th><th>backend</th><th>file</th><th>sha256</th><th>weights</th><th>parameters</th><th>made from</th></tr></thead><tbody>");
    for run in runs {
        for (name, m) in &run.record.models {
            let made = match (&m.lineage, &m.endpoint) {
                (Some(l), _) => format!("{} {} ({})", l.relation, l.parent, l.steps),
                (None, Some(e)) => format!("{} at {}", e.api, e.base_url),
                _ => String::new(),
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                esc(&run.record.run_id),
                esc(name),
                esc(&m.backend),
                // The file's name only: a published page should not carry
                // the machine's directories; the sha256 identifies the file.
                esc(m
                    .file
                    .as_deref()
                    .map(|f| {
                        std::path::Path::new(f)
                            .file_name()
                            .map_or(f.to_string(), |n| n.to_string_lossy().into_owned())
                    })
                    .as_deref()
                    .unwrap_or("")),
                esc(m.sha256.as_deref().unwrap_or("n/a")),
                esc(&m.dtype),
                esc(&m.quant_type.as_ref().map_or(String::new(), |q| format!(" ({q})"))),
                opt_cell(m.params, |v| format!("{:.1}M", v as f64 / 1e6)),
                esc(&made),
            );
        }
    }
    out.push_str("</tbody></table><h3>Tasks and data</h3><table id=\"prov-tasks\"><thead><tr><th>run</th><th>task</th><th>version</th><th>few-shot</th><th>split</th><th>file</th><th>documents</th><th>sha256</th></tr></thead><tbody>");
    for run in runs {
        let fewshot: BTreeMap<&str, usize> = run
            .record
            .cells
            .iter()
            .map(|c| (c.task.as_str(), c.num_fewshot))
            .collect();
        for (task, version) in &run.record.versions {
            let files = run.record.datasets.get(task).cloned().unwrap_or_default();
            let first = |f: Option<&crate::record::DataFile>| match f {
                Some(f) => format!(
                    "<td>{}</td><td>{}</td><td class=\"num\">{}</td><td><code>{}</code></td>",
                    esc(&f.split),
                    esc(&f.file),
                    f.docs,
                    esc(f.sha256.as_deref().unwrap_or("n/a"))
                ),
                None => "<td colspan=\"4\">not recorded</td>".into(),
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>{}</tr>",
                esc(&run.record.run_id),
                esc(task),
                esc(version.as_deref().unwrap_or("n/a")),
                fewshot
                    .get(task.as_str())
                    .map_or(String::new(), |k| k.to_string()),
                first(files.first())
            );
            for f in files.iter().skip(1) {
                let _ = write!(
                    out,
                    "<tr><td></td><td></td><td></td><td></td>{}</tr>",
                    first(Some(f))
                );
            }
        }
    }
    out.push_str("</tbody></table><h3>Runs</h3>");
    fingerprints(runs, out);
    out.push_str("<table id=\"prov-config\"><thead><tr><th>run</th><th>started</th><th>finished</th><th>invocation</th></tr></thead><tbody>");
    for run in runs {
        let r = &run.record;
        let cfg = match &r.config {
            Value::Object(m) => m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            v => v.to_string(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&r.run_id),
            esc(&r.started_at),
            esc(r.finished_at.as_deref().unwrap_or("unfinished")),
            esc(&cfg)
        );
    }
    out.push_str("</tbody></table>");
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
    pairs: &[PairTest],
) -> Result<String, ReportError> {
    let data = explorer_data(runs)?;
    let mut out = String::new();
    let ids: Vec<String> = runs.iter().map(|r| r.record.run_id.clone()).collect();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>slmbench report: {}</title><style>{STYLE}</style></head><body>",
        esc(&ids.join(", "))
    );
    let _ = write!(
        out,
        "<h1>slmbench report</h1><p class=\"note\">Runs: {}. Generated by slmbench {}. Sections: <a href=\"#s-leaderboard\">leaderboard</a> · <a href=\"#s-charts\">charts</a> · <a href=\"#s-significance\">significance</a> · <a href=\"#s-fidelity\">variants</a> · <a href=\"#s-diff\">diff</a> · <a href=\"#s-explorer\">samples</a> · <a href=\"#s-tasks\">per task</a> · <a href=\"#s-provenance\">provenance</a>.</p>",
        esc(&ids.join(", ")),
        esc(env!("CARGO_PKG_VERSION"))
    );
    out.push_str("<h2 id=\"s-leaderboard\">Leaderboard</h2>");
    leaderboard(rows, points, &mut out);
    out.push_str("<h2 id=\"s-charts\">Charts</h2><div class=\"charts\">");
    for c in charts {
        let _ = write!(
            out,
            "<figure class=\"chart\" id=\"chart-{}\" aria-label=\"{}\">{}</figure>",
            esc(&c.name),
            esc(&c.title),
            inline_svg(&c.svg)
        );
    }
    out.push_str(
        "</div><p class=\"note\">The same charts are beside this page as PNG and SVG files.</p>",
    );
    out.push_str("<h2 id=\"s-significance\">Significance between models</h2>");
    significance_tables(pairs, &mut out);
    out.push_str("<h2 id=\"s-fidelity\">Variants and students against their references</h2>");
    fidelity_section(runs, &mut out)?;
    out.push_str("<h2 id=\"s-diff\">Diff of two models</h2>");
    out.push_str(DIFF_HTML);
    out.push_str("<h2 id=\"s-explorer\">Samples</h2>");
    out.push_str(EXPLORER_HTML);
    out.push_str("<h2 id=\"s-tasks\">Per task</h2>");
    task_tables(rows, &mut out);
    out.push_str("<h2 id=\"s-provenance\">Provenance and method</h2>");
    provenance(runs, &mut out);
    method_notes(runs, &mut out);
    let _ = writeln!(
        out,
        "<script type=\"application/json\" id=\"slm-data\">{}</script><script>{}</script></body></html>",
        json_for_script(&data),
        SCRIPT
    );
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
}
