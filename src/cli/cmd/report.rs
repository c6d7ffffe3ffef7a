//! `slmbench report`: merge run directories into tables, charts and the
//! HTML page, and print the files written.

use anyhow::Result;

use crate::cli::args::ReportArgs;

/// `report`: merge runs, write every table, chart and the HTML page.
pub fn report(a: &ReportArgs) -> Result<i32> {
    let runs = a
        .runs
        .iter()
        .map(|d| crate::report::Run::load(d))
        .collect::<Result<Vec<_>, _>>()?;
    let files = crate::report::write_report(&runs, &a.out)?;
    for f in &files.files {
        println!("{}", f.display());
    }
    Ok(0)
}
