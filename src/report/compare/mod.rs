//! `slmbench compare BASELINE CURRENT`: for each model × task, the change of
//! the primary metric with a paired test on per-sample correctness (exact
//! McNemar) and a 95% interval, and the latency, memory and energy ratios,
//! judged by a [`Policy`]. Renders a Markdown summary and JUnit XML.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::stats::{
    discordant, documents_needed, holm, mcnemar_exact, mde_paired, normal_upper_quantile,
    paired_diff, sample_correct, unpaired_diff, z_test_p, Fidelity, PairedDiff, POWER,
};
use super::{primary_metric, ReportError, Run};
use crate::record::{CellResult, CellStatus};

/// What counts as a regression. Ratios are current / baseline; `None`
/// switches a check off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// A score drop larger than this many points (1 point = 0.01) …
    #[serde(default = "default_drop")]
    pub max_score_drop_points: f64,
    /// … and significant at this level, is a regression.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// p50 latency per document.
    #[serde(default = "default_ratio")]
    pub max_latency_ratio: Option<f64>,
    /// Peak RSS.
    #[serde(default = "default_ratio")]
    pub max_memory_ratio: Option<f64>,
    /// Energy per document.
    #[serde(default)]
    pub max_energy_ratio: Option<f64>,
    /// Holm's correction of the score tests across the compared cells
    /// (on by default: a nightly gate over 15 cells at 0.05 each raises a
    /// false alarm on about half the nights without it).
    #[serde(default = "default_true")]
    pub holm: bool,
    /// What an underpowered cell (minimum detectable drop above
    /// `max_score_drop_points`) does to the verdict: `warn` (default) or `fail`.
    #[serde(default)]
    pub underpowered: UnderpoweredAction,
}

/// See [`Policy::underpowered`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderpoweredAction {
    #[default]
    Warn,
    Fail,
}

fn default_true() -> bool {
    true
}

fn default_drop() -> f64 {
    1.0
}
fn default_alpha() -> f64 {
    0.05
}
fn default_ratio() -> Option<f64> {
    Some(1.10)
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_score_drop_points: default_drop(),
            alpha: default_alpha(),
            max_latency_ratio: default_ratio(),
            max_memory_ratio: default_ratio(),
            max_energy_ratio: None,
            holm: true,
            underpowered: UnderpoweredAction::Warn,
        }
    }
}

impl Policy {
    pub fn load(path: &Path) -> Result<Self, ReportError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ReportError::Input(format!("{file}: cannot read: {e}")))?;
        let p: Policy = serde_saphyr::from_str(&text)
            .map_err(|e| ReportError::Input(crate::spec::yaml::yaml_error_line(&file, &e)))?;
        p.validate()
            .map_err(|m| ReportError::Input(format!("{file}: {m}")))?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_score_drop_points.is_nan() || self.max_score_drop_points < 0.0 {
            return Err(format!(
                "max_score_drop_points {}: give a number of points ≥ 0",
                self.max_score_drop_points
            ));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(format!(
                "alpha {}: give a level in (0, 1), e.g. 0.05",
                self.alpha
            ));
        }
        for (name, r) in [
            ("max_latency_ratio", self.max_latency_ratio),
            ("max_memory_ratio", self.max_memory_ratio),
            ("max_energy_ratio", self.max_energy_ratio),
        ] {
            if let Some(r) = r {
                if !(r > 0.0 && r.is_finite()) {
                    return Err(format!("{name} {r}: give a positive ratio, e.g. 1.10"));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
    /// Passed, with something a person should look at (a suspicious jump
    /// upward).
    Warn,
    /// The cell cannot detect a drop of the policy's size.
    Underpowered,
}

/// One judged check of one model × task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// `score`, `power`, `jump`, `latency`, `memory`, `energy` or `present`.
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
}

/// The comparison of one baseline cell with its current counterpart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellComparison {
    pub baseline_model: String,
    pub current_model: String,
    pub task: String,
    pub metric: String,
    pub baseline_value: Option<f64>,
    pub current_value: Option<f64>,
    /// current − baseline, with its 95% interval.
    pub diff: Option<PairedDiff>,
    /// Per-sample pairing on doc_id was possible.
    pub paired: bool,
    /// Documents right before and wrong now / wrong before and right now.
    pub discordant: Option<(u64, u64)>,
    pub p_value: Option<f64>,
    /// `p_value` after Holm's correction across the compared cells (equal
    /// to it with the correction off).
    pub p_adjusted: Option<f64>,
    /// Share of paired documents whose correctness differs.
    pub discordance: Option<f64>,
    /// Minimum detectable drop (proportion) at the level a lone regression
    /// must meet and 80% power; see [`super::stats::mde_paired`].
    pub mde: Option<f64>,
    /// Documents needed to detect a drop of the policy's size.
    pub docs_needed: Option<u64>,
    /// How closely the current model follows the baseline's on the same
    /// documents (agreement, choice KL, retention); shown for `--pair`s.
    pub fidelity: Option<Fidelity>,
    pub latency_ratio: Option<f64>,
    pub memory_ratio: Option<f64>,
    pub energy_ratio: Option<f64>,
    pub checks: Vec<Check>,
}

impl CellComparison {
    pub fn regressed(&self) -> bool {
        self.checks.iter().any(|c| c.verdict == Verdict::Fail)
    }

    pub fn underpowered(&self) -> bool {
        self.checks
            .iter()
            .any(|c| c.name == "power" && c.verdict != Verdict::Pass)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub baseline_run: String,
    pub current_run: String,
    pub policy: Policy,
    pub cells: Vec<CellComparison>,
    /// Cells present only in the current run (not judged).
    pub new_cells: Vec<(String, String)>,
}

impl Comparison {
    pub fn regressions(&self) -> Vec<&CellComparison> {
        self.cells.iter().filter(|c| c.regressed()).collect()
    }
}

fn ratio(cur: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (cur, base) {
        (Some(c), Some(b)) if b > 0.0 => Some(c / b),
        _ => None,
    }
}

fn ratio_check(name: &str, r: Option<f64>, max: Option<f64>) -> Check {
    let (verdict, detail) = match (r, max) {
        (_, None) => (Verdict::Skip, "check off".to_string()),
        (None, Some(_)) => (Verdict::Skip, "not measured in both runs".to_string()),
        (Some(r), Some(m)) if r > m => (Verdict::Fail, format!("ratio {r:.3} > {m:.3}")),
        (Some(r), Some(m)) => (Verdict::Pass, format!("ratio {r:.3} ≤ {m:.3}")),
    };
    Check {
        name: name.into(),
        verdict,
        detail,
    }
}

/// Per-sample correctness by doc_id.
fn correctness(
    run: &Run,
    cell: &CellResult,
    metric: &str,
) -> Result<BTreeMap<usize, f64>, ReportError> {
    Ok(run
        .samples(&cell.model, &cell.task)?
        .iter()
        .filter_map(|s| Some((s.doc_id, sample_correct(s, metric)?)))
        .collect())
}

fn compare_cell(
    base: &Run,
    b: &CellResult,
    cur: &Run,
    c: Option<&CellResult>,
    policy: &Policy,
) -> Result<CellComparison, ReportError> {
    let metric = primary_metric(b)
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let mut out = CellComparison {
        baseline_model: b.model.clone(),
        current_model: c.map_or_else(|| b.model.clone(), |c| c.model.clone()),
        task: b.task.clone(),
        metric: metric.clone(),
        baseline_value: primary_metric(b).map(|m| m.value),
        current_value: None,
        diff: None,
        paired: false,
        discordant: None,
        p_value: None,
        p_adjusted: None,
        discordance: None,
        mde: None,
        docs_needed: None,
        fidelity: None,
        latency_ratio: None,
        memory_ratio: None,
        energy_ratio: None,
        checks: Vec::new(),
    };
    let Some(c) = c.filter(|c| c.status == CellStatus::Ok) else {
        out.checks.push(Check {
            name: "present".into(),
            verdict: Verdict::Fail,
            detail: match c {
                None => "missing from the current run".into(),
                Some(c) => format!(
                    "failed in the current run: {}",
                    c.error.as_deref().unwrap_or("no error recorded")
                ),
            },
        });
        return Ok(out);
    };
    let cm = c.metrics.iter().find(|m| m.name == metric);
    out.current_value = cm.map(|m| m.value);
    let bm = primary_metric(b);
    let bs = correctness(base, b, &metric)?;
    let cs = correctness(cur, c, &metric)?;
    let common: Vec<usize> = bs.keys().filter(|k| cs.contains_key(k)).copied().collect();
    if !common.is_empty() {
        let bv: Vec<f64> = common.iter().map(|k| bs[k]).collect();
        let cv: Vec<f64> = common.iter().map(|k| cs[k]).collect();
        let (worse, better) = discordant(&bv, &cv);
        out.paired = true;
        out.diff = paired_diff(&bv, &cv);
        out.discordant = Some((worse, better));
        out.discordance = Some((worse + better) as f64 / common.len() as f64);
        out.p_value = Some(mcnemar_exact(worse, better));
        out.fidelity = Some(super::stats::fidelity(
            &base.samples(&b.model, &b.task)?,
            &cur.samples(&c.model, &c.task)?,
            &metric,
        ));
    } else if let (Some(bm), Some(cm)) = (bm, cm) {
        let d = unpaired_diff(
            bm.value,
            bm.stderr.unwrap_or(0.0),
            cm.value,
            cm.stderr.unwrap_or(0.0),
            c.n,
        );
        out.p_value = Some(z_test_p(d.mean, d.stderr));
        out.diff = Some(d);
    }
    out.latency_ratio = ratio(
        c.latency.as_ref().map(|l| l.p50_ms),
        b.latency.as_ref().map(|l| l.p50_ms),
    );
    out.memory_ratio = ratio(
        c.peak_rss.map(|p| p.bytes as f64),
        b.peak_rss.map(|p| p.bytes as f64),
    );
    out.energy_ratio = ratio(
        c.energy.as_ref().and_then(|e| e.energy_per_doc_j),
        b.energy.as_ref().and_then(|e| e.energy_per_doc_j),
    );
    out.checks.push(ratio_check(
        "latency",
        out.latency_ratio,
        policy.max_latency_ratio,
    ));
    out.checks.push(ratio_check(
        "memory",
        out.memory_ratio,
        policy.max_memory_ratio,
    ));
    out.checks.push(ratio_check(
        "energy",
        out.energy_ratio,
        policy.max_energy_ratio,
    ));
    Ok(out)
}

/// The score, power and jump checks of every cell, judged together:
/// Holm's correction runs over the cells with a test, and the minimum
/// detectable drop is computed at the level the most significant cell must
/// meet (`alpha / m` under Holm, else `alpha`).
fn judge_scores(cells: &mut [CellComparison], policy: &Policy) {
    let tested: Vec<usize> = (0..cells.len())
        .filter(|&i| cells[i].diff.is_some() && cells[i].p_value.is_some())
        .collect();
    let raw: Vec<f64> = tested.iter().filter_map(|&i| cells[i].p_value).collect();
    let adjusted = if policy.holm { holm(&raw) } else { raw.clone() };
    for (k, &i) in tested.iter().enumerate() {
        cells[i].p_adjusted = Some(adjusted[k]);
    }
    let m = tested.len().max(1);
    let level = if policy.holm {
        policy.alpha / m as f64
    } else {
        policy.alpha
    };
    let max_drop = policy.max_score_drop_points / 100.0;
    for c in cells.iter_mut() {
        if c.checks.iter().any(|k| k.name == "present") {
            continue;
        }
        let (Some(d), Some(p), Some(pa)) = (c.diff, c.p_value, c.p_adjusted) else {
            c.checks.insert(
                0,
                Check {
                    name: "score".into(),
                    verdict: Verdict::Skip,
                    detail: format!("no `{}` in the current cell", c.metric),
                },
            );
            continue;
        };
        let test = if c.paired { "McNemar" } else { "z, unpaired" };
        let adj = if policy.holm {
            format!(", Holm-adjusted p = {}", p_text(pa))
        } else {
            String::new()
        };
        let detail = format!(
            "{} {:+.2} points (95% CI {:+.2} to {:+.2}), p = {} ({test}){adj}, n = {}",
            c.metric,
            d.mean * 100.0,
            d.ci_low * 100.0,
            d.ci_high * 100.0,
            p_text(p),
            d.n
        );
        let fail = -d.mean > max_drop && pa < policy.alpha;
        let mut checks = vec![Check {
            name: "score".into(),
            verdict: if fail { Verdict::Fail } else { Verdict::Pass },
            detail,
        }];
        // Minimum detectable drop: Connor's formula for paired documents,
        // (z_{level/2} + z_{0.2}) * se for the unpaired z test.
        let (mde, needed) = match c.discordance {
            Some(psi) if c.paired => (
                mde_paired(d.n, psi, level),
                (max_drop > 0.0).then(|| documents_needed(max_drop, psi, level)),
            ),
            _ => {
                let z = normal_upper_quantile(level / 2.0) + normal_upper_quantile(1.0 - POWER);
                let per_doc_sd = d.stderr * (d.n.max(1) as f64).sqrt();
                let needed = (max_drop > 0.0 && per_doc_sd > 0.0)
                    .then(|| ((z * per_doc_sd / max_drop).powi(2)).ceil() as u64);
                ((z * d.stderr).min(1.0), needed)
            }
        };
        c.mde = Some(mde);
        c.docs_needed = needed;
        let power = if mde > max_drop {
            let verdict = match policy.underpowered {
                UnderpoweredAction::Warn => Verdict::Underpowered,
                UnderpoweredAction::Fail => Verdict::Fail,
            };
            let need = needed.map_or_else(String::new, |n| {
                format!(
                    "; about {n} documents would detect {} points",
                    policy.max_score_drop_points
                )
            });
            Check {
                name: "power".into(),
                verdict,
                detail: format!(
                    "underpowered: the minimum detectable drop is {:.2} points > {} (n = {}, level {}, 80% power){need}",
                    mde * 100.0,
                    policy.max_score_drop_points,
                    d.n,
                    p_text(level),
                ),
            }
        } else {
            Check {
                name: "power".into(),
                verdict: Verdict::Pass,
                detail: format!(
                    "minimum detectable drop {:.2} points ≤ {} (n = {}, level {}, 80% power)",
                    mde * 100.0,
                    policy.max_score_drop_points,
                    d.n,
                    p_text(level),
                ),
            }
        };
        checks.push(power);
        // A score that rises by more than the policy's drop, significantly,
        // is suspicious (a broken extractor or a leaked answer can do it).
        if d.mean > max_drop && pa < policy.alpha {
            checks.push(Check {
                name: "jump".into(),
                verdict: Verdict::Warn,
                detail: format!(
                    "the score rose {:+.2} points (p = {}): check that the answers are still extracted and scored as before",
                    d.mean * 100.0,
                    p_text(pa)
                ),
            });
        }
        for (k, check) in checks.into_iter().enumerate() {
            c.checks.insert(k, check);
        }
    }
}

/// Compares every successful baseline cell with the current run. Models are
/// matched by name, through `pairs` (baseline → current), or — when each run
/// holds exactly one model — with each other.
pub fn compare(
    base: &Run,
    cur: &Run,
    policy: &Policy,
    pairs: &[(String, String)],
) -> Result<Comparison, ReportError> {
    let model_names = |r: &Run| {
        r.record
            .cells
            .iter()
            .map(|c| c.model.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (bm, cm) = (model_names(base), model_names(cur));
    let mut map: BTreeMap<String, String> = pairs.iter().cloned().collect();
    for (b, c) in &map {
        if !bm.contains(b) {
            return Err(ReportError::Input(format!(
                "--pair {b}={c}: the baseline run has no model `{b}` (it has: {})",
                bm.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if !cm.contains(c) {
            return Err(ReportError::Input(format!(
                "--pair {b}={c}: the current run has no model `{c}` (it has: {})",
                cm.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    if map.is_empty() && bm.intersection(&cm).next().is_none() && bm.len() == 1 && cm.len() == 1 {
        if let (Some(b), Some(c)) = (bm.first(), cm.first()) {
            map.insert(b.clone(), c.clone());
        }
    }
    let target = |m: &str| map.get(m).cloned().unwrap_or_else(|| m.to_string());
    let mut cells = Vec::new();
    for b in base
        .record
        .cells
        .iter()
        .filter(|c| c.status == CellStatus::Ok)
    {
        let want = target(&b.model);
        let c = cur
            .record
            .cells
            .iter()
            .find(|c| c.model == want && c.task == b.task);
        cells.push(compare_cell(base, b, cur, c, policy)?);
    }
    let judged: std::collections::BTreeSet<(String, String)> = cells
        .iter()
        .map(|c| (c.current_model.clone(), c.task.clone()))
        .collect();
    let new_cells = cur
        .record
        .cells
        .iter()
        .map(|c| (c.model.clone(), c.task.clone()))
        .filter(|k| !judged.contains(k))
        .collect();
    if cells.is_empty() {
        return Err(ReportError::Input(format!(
            "{}: the baseline has no successful cells to compare",
            base.dir.display()
        )));
    }
    judge_scores(&mut cells, policy);
    Ok(Comparison {
        baseline_run: base.record.run_id.clone(),
        current_run: cur.record.run_id.clone(),
        policy: policy.clone(),
        cells,
        new_cells,
    })
}

/// `0.043`, or `6.3e-6` below 0.001.
pub(super) fn p_text(p: f64) -> String {
    if p < 1e-3 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

mod render;
pub use render::{junit, markdown};
