//! `slmbench run`: flags to a plan, the plan run on a compute pool, then the
//! summary, the variants against their parents, and where the results are.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::cli::args::{run_config, RunArgs};
use crate::cli::pool::in_pool;
use crate::model::fetch::FetchOptions;

pub fn run(a: RunArgs) -> Result<i32> {
    let mut cfg = run_config(&a)?;
    if let (Some(out), None) = (&a.out, &a.resume) {
        claim_out_dir(out, a.force)?;
    }
    if cfg.models.is_empty() {
        let reg = crate::plan::model_registry(cfg.models_file.as_deref())?;
        match reg.default.clone() {
            Some(d) => cfg.models.push(d),
            None => bail!("{}: no `default` model: pass --model NAME", reg.origin),
        }
    }
    // A first SIGINT/SIGTERM stops after the document in flight is
    // written; a second exits at once.
    crate::eval::interrupt::install()?;
    // A `distill` variant built on the way reads its corpus where the tasks are.
    let mut fetch_opts = FetchOptions::from_env();
    if cfg.data_dir.is_some() {
        fetch_opts.data_dir.clone_from(&cfg.data_dir);
    }
    let outcome = in_pool(cfg.threads, || {
        Ok(crate::eval::execute(cfg, a.out, a.resume, &fetch_opts)?)
    })?;
    if let Some(sig) = outcome.interrupted {
        eprintln!(
            "interrupted — resume with `slmbench run --resume {}`",
            outcome.run_dir.display()
        );
        return Ok(128 + sig);
    }
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

/// A new run may not reuse a directory that already holds something: its
/// samples would be taken for this run's. `--force` starts over in it.
fn claim_out_dir(out: &Path, force: bool) -> Result<()> {
    let Ok(mut entries) = std::fs::read_dir(out) else {
        return Ok(());
    };
    if entries.next().is_none() {
        return Ok(());
    }
    if !force {
        bail!(
            "--out {}: the folder is not empty (a run directory?); pass --resume {} to complete that run, --force to start over in it, or another --out",
            out.display(),
            out.display()
        );
    }
    for name in ["samples", "results.json", "results.csv"] {
        let p = out.join(name);
        let gone = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        if let Err(e) = gone {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e).with_context(|| format!("--force: cannot remove {}", p.display()));
            }
        }
    }
    eprintln!(
        "--force: starting over in {} (its samples and results were removed)",
        out.display()
    );
    Ok(())
}
