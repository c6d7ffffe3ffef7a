//! `slmbench run`: flags to a plan, the plan run on a compute pool, then the
//! summary, the variants against their parents, and where the results are.

use anyhow::{bail, Result};

use crate::cli::args::{run_config, RunArgs};
use crate::cli::pool::in_pool;
use crate::model::fetch::FetchOptions;

pub fn run(a: RunArgs) -> Result<i32> {
    let mut cfg = run_config(&a)?;
    if cfg.models.is_empty() {
        let reg = crate::plan::model_registry(cfg.models_file.as_deref())?;
        match reg.default.clone() {
            Some(d) => cfg.models.push(d),
            None => bail!("{}: no `default` model: pass --model NAME", reg.origin),
        }
    }
    let outcome = in_pool(cfg.threads, || {
        Ok(crate::eval::execute(
            cfg,
            a.out,
            a.resume,
            &FetchOptions::from_env(),
        )?)
    })?;
    print!("{}", crate::report::text::summary_table(&outcome.record));
    let comparison = crate::report::lineage::comparison(&outcome.run_dir)?;
    if !comparison.models.is_empty() {
        println!("\nvariants vs parents (paired over the same documents):\n");
        print!("{}", crate::report::lineage::render(&comparison));
    }
    println!(
        "wall time {:.1} s; results in {}",
        outcome.record.wall_time_s,
        outcome.run_dir.display()
    );
    Ok(if outcome.failed_cells > 0 { 2 } else { 0 })
}
