//! `slmbench report`: merge run directories into tables, charts and the
//! HTML page, and print the files written.

use anyhow::Result;

use crate::cli::args::ReportArgs;

/// `report`: merge runs, write every table, chart and the HTML page.
pub fn report(a: &ReportArgs) -> Result<i32> {
    // The same run directory named twice would count its rows twice (and
    // shrink every standard error): each is read once.
    let mut seen = std::collections::BTreeSet::new();
    let mut dirs = Vec::new();
    for d in &a.runs {
        let key = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        if seen.insert(key) {
            dirs.push(d);
        } else {
            eprintln!("note: {} is given more than once; read once", d.display());
        }
    }
    let runs = dirs
        .iter()
        .map(|d| crate::report::Run::load(d))
        .collect::<Result<Vec<_>, _>>()?;
    for run in &runs {
        // An unfinished run's table holds only its finished cells: say so.
        let status = run.record.status.as_str();
        if status != "complete" && status != "failed" {
            eprintln!(
                "warning: {} is {status} ({} cells finished); its tables hold only those — complete it with `slmbench run --resume {}`",
                run.dir.display(),
                run.record.cells.len(),
                run.dir.display()
            );
        }
    }
    let files = crate::report::write_report(&runs, &a.out)?;
    for f in &files.files {
        println!("{}", f.display());
    }
    Ok(0)
}
