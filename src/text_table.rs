//! A plain-text table with aligned columns, used by the run summary, the
//! variant reports and the lineage comparison.

/// A Markdown table with padded columns; the first row is the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for (k, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        s.push_str(&format!("| {} |\n", line.join(" | ")));
        if k == 0 {
            let sep: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            s.push_str(&format!("|-{}-|\n", sep.join("-|-")));
        }
    }
    s
}
