//! `slmbench compare BASELINE CURRENT`: the regression verdict, printed as
//! Markdown (and optionally written as Markdown and JUnit XML).

use anyhow::{bail, Result};

use crate::cli::args::CompareArgs;

/// `compare`: exit 0 = no regression, 1 = regression (2 = error, from main).
pub fn compare(a: &CompareArgs) -> Result<i32> {
    use crate::report::compare::{self as cmp, Policy};
    let mut policy = match &a.policy {
        Some(p) => Policy::load(p)?,
        None => Policy::default(),
    };
    let off = |r: f64| (r > 0.0).then_some(r);
    if let Some(d) = a.max_score_drop {
        policy.max_score_drop_points = d;
    }
    if let Some(x) = a.alpha {
        policy.alpha = x;
    }
    if let Some(r) = a.max_latency_ratio {
        policy.max_latency_ratio = off(r);
    }
    if let Some(r) = a.max_memory_ratio {
        policy.max_memory_ratio = off(r);
    }
    if let Some(r) = a.max_energy_ratio {
        policy.max_energy_ratio = off(r);
    }
    if a.no_holm {
        policy.holm = false;
    }
    match a.underpowered.as_deref() {
        Some("fail") => policy.underpowered = cmp::UnderpoweredAction::Fail,
        Some(_) => policy.underpowered = cmp::UnderpoweredAction::Warn,
        None => {}
    }
    policy
        .validate()
        .map_err(|m| anyhow::anyhow!("compare policy: {m}"))?;
    let pairs = a
        .pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((b, c)) if !b.is_empty() && !c.is_empty() => Ok((b.to_string(), c.to_string())),
            _ => bail!("--pair {p}: write BASELINE_MODEL=CURRENT_MODEL"),
        })
        .collect::<Result<Vec<_>>>()?;
    let base = crate::report::Run::load(&a.baseline)?;
    let cur = crate::report::Run::load(&a.current)?;
    let result = cmp::compare(&base, &cur, &policy, &pairs)?;
    let md = cmp::markdown(&result);
    print!("{md}");
    if let Some(p) = &a.markdown {
        crate::record::write_atomic(p, md.as_bytes())?;
    }
    if let Some(p) = &a.junit {
        crate::record::write_atomic(p, cmp::junit(&result).as_bytes())?;
    }
    for c in result.cells.iter().filter(|c| c.underpowered()) {
        if let Some(k) = c.checks.iter().find(|k| k.name == "power") {
            eprintln!("warning: {}/{}: {}", c.current_model, c.task, k.detail);
        }
    }
    let regs = result.regressions();
    for r in &regs {
        let failed: Vec<String> = r
            .checks
            .iter()
            .filter(|k| k.verdict == cmp::Verdict::Fail)
            .map(|k| format!("{}: {}", k.name, k.detail))
            .collect();
        eprintln!(
            "regressed: {}/{}: {}",
            r.current_model,
            r.task,
            failed.join("; ")
        );
    }
    Ok(if regs.is_empty() { 0 } else { 1 })
}
