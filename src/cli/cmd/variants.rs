//! `slmbench variants`: per variant, what each step did to each tensor; or,
//! with `--run DIR`, each variant of that run against its parent.

use anyhow::{bail, Context, Result};

use crate::cli::args::RegistryArgs;
use crate::model::fetch::FetchOptions;

/// `variants`: per variant, what each step did; or a run's comparison.
pub fn variants(
    names: &[String],
    registry: &RegistryArgs,
    run: Option<&std::path::Path>,
    summary: bool,
) -> Result<i32> {
    if let Some(dir) = run {
        let c = crate::report::lineage::comparison(dir)?;
        if c.models.is_empty() {
            println!(
                "{}: no model of this run has its parent (or teacher) in the run",
                dir.display()
            );
        } else {
            print!("{}", crate::report::lineage::render(&c));
        }
        return Ok(0);
    }
    let reg = registry.load()?;
    let names: Vec<String> = if names.is_empty() {
        reg.models
            .iter()
            .filter(|(_, m)| m.is_variant())
            .map(|(n, _)| n.clone())
            .collect()
    } else {
        names.to_vec()
    };
    if names.is_empty() {
        println!(
            "# {}: no variants (a model with `parent:` and `steps:`)",
            reg.origin
        );
    }
    let home = crate::model::fetch::default_home();
    let opts = FetchOptions::from_env();
    for n in &names {
        if !reg.get(n)?.is_variant() {
            bail!(
                "{n} is not a variant in {} (it has no `parent`)",
                reg.origin
            );
        }
        let got = crate::obtain::obtain(&reg, n, &home, &opts)?;
        let report = got.report.context("a materialized variant has a report")?;
        print!(
            "{}",
            crate::variant::materialize::render_report(&report, &got.path, summary)
        );
        println!();
    }
    Ok(0)
}
