//! `compare`'s outputs: the Markdown summary (a CI job summary) and JUnit
//! XML (one test case per model × task × check).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{p_text, CellComparison, Check, Comparison, Verdict};
use crate::report::html::esc;

fn limit_text(what: &str, r: Option<f64>) -> String {
    match r {
        Some(r) => format!("{what} ratio > {r:.2}"),
        None => format!("{what} not checked"),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |x| format!("{:.1}", x * 100.0))
}

fn ratio_text(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |x| format!("{x:.2}×"))
}

fn model_pair(c: &CellComparison) -> String {
    if c.baseline_model == c.current_model {
        c.current_model.clone()
    } else {
        format!("{} → {}", c.baseline_model, c.current_model)
    }
}

/// The Markdown summary (for a CI job summary).
pub fn markdown(cmp: &Comparison) -> String {
    let regs = cmp.regressions();
    let weak: Vec<&CellComparison> = cmp.cells.iter().filter(|c| c.underpowered()).collect();
    let mut s = format!(
        "## slmbench compare: {}{}\n\nBaseline `{}`, current `{}`. Policy: a score drop > {} points with p < {}{}; {}; {}; {}.\n\n",
        if regs.is_empty() {
            "no regression".to_string()
        } else {
            format!("{} regressed cell(s)", regs.len())
        },
        match weak.len() {
            0 => String::new(),
            n => format!(", {n} underpowered cell(s)"),
        },
        cmp.baseline_run,
        cmp.current_run,
        cmp.policy.max_score_drop_points,
        cmp.policy.alpha,
        if cmp.policy.holm {
            " (Holm-adjusted across the cells)"
        } else {
            ""
        },
        limit_text("p50 latency", cmp.policy.max_latency_ratio),
        limit_text("peak memory", cmp.policy.max_memory_ratio),
        limit_text("energy per document", cmp.policy.max_energy_ratio),
    );
    s.push_str("| model | task | metric | baseline | current | Δ points (95% CI) | flips −/+ | p | MDE points | latency | memory | energy | verdict |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for c in &cmp.cells {
        let delta = c.diff.map_or_else(
            || "n/a".into(),
            |d| {
                format!(
                    "{:+.1} ({:+.1} to {:+.1})",
                    d.mean * 100.0,
                    d.ci_low * 100.0,
                    d.ci_high * 100.0
                )
            },
        );
        let failed: Vec<&str> = c
            .checks
            .iter()
            .filter(|k| k.verdict == Verdict::Fail)
            .map(|k| k.name.as_str())
            .collect();
        let p = match (c.p_value, c.p_adjusted) {
            (Some(p), Some(a)) if cmp.policy.holm => format!("{} (Holm {})", p_text(p), p_text(a)),
            (Some(p), _) => p_text(p),
            _ => "n/a".into(),
        };
        let mut verdict = if failed.is_empty() {
            "ok".to_string()
        } else {
            format!("**REGRESSED** ({})", failed.join(", "))
        };
        if c.underpowered() && !failed.contains(&"power") {
            verdict.push_str(", underpowered");
        }
        if c.checks.iter().any(|k| k.name == "jump") {
            verdict.push_str(", jump ↑");
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            model_pair(c),
            c.task,
            c.metric,
            pct(c.baseline_value),
            pct(c.current_value),
            delta,
            c.discordant
                .map_or_else(|| "n/a".into(), |(w, b)| format!("{w} / {b}")),
            p,
            pct(c.mde),
            ratio_text(c.latency_ratio),
            ratio_text(c.memory_ratio),
            ratio_text(c.energy_ratio),
            verdict
        );
    }
    let pairs: Vec<&CellComparison> = cmp
        .cells
        .iter()
        .filter(|c| c.baseline_model != c.current_model && c.fidelity.is_some())
        .collect();
    if !pairs.is_empty() {
        s.push_str("\nFidelity of the current model to the baseline's (paired documents):\n\n| models | task | n | agreement | flips −/+ | mean KL nats | retention [95% CI] | ≥99% / ≥99.9% |\n|---|---|---|---|---|---|---|---|\n");
        for c in pairs {
            let Some(f) = c.fidelity else { continue };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                model_pair(c),
                c.task,
                f.n,
                f.agreement
                    .map_or("n/a".into(), |a| format!("{:.1}%", a * 100.0)),
                c.discordant
                    .map_or_else(|| "n/a".into(), |(w, b)| format!("{w} / {b}")),
                f.mean_kl.map_or("n/a".into(), |k| format!("{k:.4}")),
                f.retention.map_or("n/a".into(), |(r, lo, hi)| format!(
                    "{r:.3} [{lo:.3}, {hi:.3}]"
                )),
                crate::report::lineage::pass_marks(f.retention.map(|r| r.0)),
            );
        }
        s.push_str("\nAgreement: documents where both pick the same choice. Mean KL: KL(baseline ‖ current) between the softmax distributions over the choices' log-likelihoods. Retention: current score / baseline score, interval by the delta method on the paired documents; ≥99% / ≥99.9%: MLPerf's quality marks on the point estimate.\n");
    }
    if !cmp.new_cells.is_empty() {
        let names: Vec<String> = cmp
            .new_cells
            .iter()
            .map(|(m, t)| format!("{m}/{t}"))
            .collect();
        let _ = writeln!(
            s,
            "\nOnly in the current run (not judged): {}.",
            names.join(", ")
        );
    }
    let notes: Vec<String> = cmp
        .cells
        .iter()
        .flat_map(|c| {
            c.checks
                .iter()
                .filter(|k| {
                    matches!(k.verdict, Verdict::Underpowered | Verdict::Warn)
                        || (k.name == "power" && k.verdict == Verdict::Fail)
                })
                .map(move |k| format!("- {} / {}: {}", model_pair(c), c.task, k.detail))
        })
        .collect();
    if !notes.is_empty() {
        s.push_str("\nWarnings:\n\n");
        for n in notes {
            s.push_str(&n);
            s.push('\n');
        }
    }
    s.push_str("\nScores in points (%). Flips: documents right in the baseline and wrong now / wrong before and right now. p: exact McNemar test on per-document correctness (paired on doc_id); z test on the standard errors when samples are missing");
    if cmp.policy.holm {
        s.push_str(
            "; Holm's step-down correction across the cells tested (turn off with --no-holm)",
        );
    }
    s.push_str(". MDE: the minimum detectable drop at 80% power, by Connor's (1987) formula δ√n = z₁₋ₗ/₂√ψ + z₀.₈√(ψ − δ²), ψ the observed discordance (at least δ), at level l = α/m under Holm (m cells tested), else α; (z₁₋ₗ/₂ + z₀.₈)·se for unpaired cells. A cell whose MDE exceeds the allowed drop is underpowered: it could not fail on a regression of the policy's size.\n");
    s
}

/// JUnit XML: one testsuite per current model, one testcase per model ×
/// task × check.
pub fn junit(cmp: &Comparison) -> String {
    let mut suites: BTreeMap<String, Vec<(&CellComparison, &Check)>> = BTreeMap::new();
    for c in &cmp.cells {
        for k in &c.checks {
            suites.entry(model_pair(c)).or_default().push((c, k));
        }
    }
    let count = |v: &[(&CellComparison, &Check)], want: Verdict| {
        v.iter().filter(|(_, k)| k.verdict == want).count()
    };
    let all: Vec<(&CellComparison, &Check)> = suites.values().flatten().copied().collect();
    let skipped =
        |v: &[(&CellComparison, &Check)]| count(v, Verdict::Skip) + count(v, Verdict::Underpowered);
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"slmbench compare\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">\n",
        all.len(),
        count(&all, Verdict::Fail),
        skipped(&all)
    );
    for (model, cases) in &suites {
        let _ = writeln!(
            s,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
            esc(model),
            cases.len(),
            count(cases, Verdict::Fail),
            skipped(cases)
        );
        for (c, k) in cases {
            let _ = write!(
                s,
                "    <testcase classname=\"slmbench.{}\" name=\"{} {}\"",
                esc(&c.current_model),
                esc(&c.task),
                esc(&k.name)
            );
            match k.verdict {
                Verdict::Pass => {
                    let _ = writeln!(s, "><system-out>{}</system-out></testcase>", esc(&k.detail));
                }
                Verdict::Skip => {
                    let _ = writeln!(s, "><skipped message=\"{}\"/></testcase>", esc(&k.detail));
                }
                Verdict::Underpowered => {
                    let _ = writeln!(
                        s,
                        "><skipped type=\"underpowered\" message=\"{}\"/></testcase>",
                        esc(&k.detail)
                    );
                }
                Verdict::Warn => {
                    let _ = writeln!(
                        s,
                        "><system-out>{}</system-out><system-err>warning: {}</system-err></testcase>",
                        esc(&k.detail),
                        esc(&k.detail)
                    );
                }
                Verdict::Fail => {
                    let _ = writeln!(
                        s,
                        "><failure message=\"{}\" type=\"regression\">{}</failure></testcase>",
                        esc(&k.detail),
                        esc(&format!(
                            "{} {} {}: {}",
                            model_pair(c),
                            c.task,
                            k.name,
                            k.detail
                        ))
                    );
                }
            }
        }
        s.push_str("  </testsuite>\n");
    }
    s.push_str("</testsuites>\n");
    s
}
