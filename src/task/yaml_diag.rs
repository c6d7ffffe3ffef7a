//! One-line diagnostics for suite files: YAML parser errors rewritten as
//! `<file> line L column C: <key>: <problem> — <fix>`, and the rejection of
//! lm-eval's `!function` (Python) values, which the YAML parser would
//! otherwise read as plain strings.

use super::error::{one_line, TaskError};

/// The fix given for Python callables in lm-eval task files.
pub(crate) const PY_FUNC_FIX: &str =
    "Python functions are not supported; express it as a Jinja template (doc_to_text, doc_to_choice, doc_to_target)";

/// lm-eval marks Python callables with the `!function` YAML tag; the YAML
/// parser would silently read `!function utils.x` as the string `utils.x`,
/// so such values are rejected before parsing.
pub(crate) fn reject_python_tags(file: &str, text: &str) -> Result<(), TaskError> {
    for (i, line) in text.lines().enumerate() {
        let Some(pos) = line.find("!function") else {
            continue;
        };
        let before = &line[..pos];
        if before.contains('#') || before.contains('"') || before.contains('\'') {
            continue; // inside a comment or a quoted string
        }
        let key = before
            .trim()
            .trim_start_matches("- ")
            .trim_end_matches(':')
            .trim();
        return Err(TaskError::Yaml {
            file: file.to_string(),
            line: (i + 1) as u64,
            column: (pos + 1) as u64,
            message: format!(
                "{}`!function` (a Python function) is not supported",
                if key.is_empty() {
                    String::new()
                } else {
                    format!("{key}: ")
                }
            ),
            fix: PY_FUNC_FIX.to_string(),
        });
    }
    Ok(())
}

pub(crate) fn yaml_error(file: &str, text: &str, e: &serde_saphyr::Error) -> TaskError {
    let mut message = e.without_snippet().to_string();
    // Drop the location the parser appends or prefixes: we print our own.
    if let Some(p) = message.find(" at line ") {
        message.truncate(p);
    }
    if let Some(rest) = message.strip_prefix("error: ") {
        message = rest.to_string();
    }
    if message.starts_with("line ") {
        if let Some(p) = message.find(": ") {
            message = message[p + 2..].to_string();
        }
    }
    if message.contains("did not match any variant") {
        message = "value of the wrong type".to_string();
    }
    let message = one_line(&message);
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let key = key_on_line(text, line);
    let fix = if message.starts_with("unknown field `include`") {
        "`include` is not supported: copy the included file's keys into this file".to_string()
    } else if message.starts_with("unknown field") {
        "remove the key or correct its spelling (lm-eval's task keys are accepted)".to_string()
    } else if let Some(help) = key.as_deref().and_then(key_shape) {
        format!("`{}` takes {help}", key.as_deref().unwrap_or_default())
    } else {
        "fix the YAML at that position".to_string()
    };
    let message = match key {
        Some(k) if !message.starts_with("unknown field") => format!("{k}: {message}"),
        _ => message,
    };
    TaskError::Yaml {
        file: file.to_string(),
        line,
        column,
        message,
        fix,
    }
}

/// The mapping key written on a 1-based line, if any.
fn key_on_line(text: &str, line: u64) -> Option<String> {
    let l = text
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let l = l.trim_start().trim_start_matches("- ");
    let (key, _) = l.split_once(':')?;
    let key = key.trim();
    (!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then(|| key.to_string())
}

fn key_shape(key: &str) -> Option<&'static str> {
    Some(match key {
        "task" => "a task name (in a group file: a list of task names)",
        "tag" | "group" => "a name or a list of names",
        "doc_to_choice" => "a list of strings or a Jinja template string",
        "doc_to_target" => "a field name, a Jinja template string or an integer",
        "doc_to_text" | "description" | "target_delimiter" | "fewshot_delimiter" => "a string",
        "num_fewshot" => "a non-negative integer",
        "metric_list" => {
            "a list of `{metric: ..., aggregation: ..., higher_is_better: ...}` entries"
        }
        "fewshot_config" => "a mapping with `sampler: default|first_n`",
        "should_decontaminate" | "higher_is_better" => "true or false",
        "dataset_path" | "dataset_name" | "training_split" | "validation_split" | "test_split"
        | "fewshot_split" | "output_type" | "metric" | "aggregation" => "a string",
        _ => return None,
    })
}
