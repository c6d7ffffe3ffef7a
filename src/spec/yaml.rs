//! Errors in YAML inputs, reduced to one line that names the file.

/// First line of a YAML error, prefixed by the file: `file: line L column C: message`.
pub fn yaml_error_line(file: &str, err: &dyn std::fmt::Display) -> String {
    let text = err.to_string();
    let first = text.lines().next().unwrap_or("invalid YAML");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("{first} — fix the YAML in {file}")
}
