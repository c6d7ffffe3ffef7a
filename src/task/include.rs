//! lm-eval's `include:` in task files: the included files' keys (a path
//! relative to the including file, or a list of them) under the file's own.
//! The override order is lm-eval's `load_yaml_config`: the file's own keys
//! win; among a list, the first include wins over later ones; includes of
//! includes are merged the same way first. Only top-level keys merge.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use super::error::{shown, shown_at_most, TaskError};
use super::yaml_diag::{reject_python_tags, yaml_error};

/// Includes nested deeper than this are taken for a cycle.
const MAX_DEPTH: usize = 16;

fn err(file: &str, message: String, fix: &str) -> TaskError {
    TaskError::Spec {
        file: file.to_string(),
        key: "include".into(),
        message,
        fix: fix.to_string(),
    }
}

/// Whether `text` has a top-level `include:` key (a cheap look before the
/// merge is needed).
pub(crate) fn has_include(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("include:"))
}

/// The keys of `file` (text `text`) with its includes merged under them.
pub(crate) fn merged(file: &Path, text: &str) -> Result<Map<String, Json>, TaskError> {
    merge_at(file, text, 0)
}

fn merge_at(file: &Path, text: &str, depth: usize) -> Result<Map<String, Json>, TaskError> {
    let name = file.display().to_string();
    if depth > MAX_DEPTH {
        return Err(err(
            &name,
            format!("includes nest deeper than {MAX_DEPTH} files"),
            "break the include cycle",
        ));
    }
    reject_python_tags(&name, text)?;
    let value: Json = serde_saphyr::from_str(text).map_err(|e| yaml_error(&name, text, &e))?;
    let Json::Object(mut own) = value else {
        return Err(err(
            &name,
            "the file is not a mapping of keys".into(),
            "write the task's keys at the top level",
        ));
    };
    let includes = match own.remove("include") {
        None => Vec::new(),
        Some(Json::String(s)) => vec![s],
        Some(Json::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Json::String(s) => Ok(s),
                other => Err(err(
                    &name,
                    format!("`{other}` is not a file name"),
                    "give `include` as a path or a list of paths",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(err(
                &name,
                format!("`{other}` is not a file name"),
                "give `include` as a path or a list of paths",
            ))
        }
    };
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut out = Map::new();
    for inc in includes.iter().rev() {
        let path: PathBuf = dir.join(inc);
        let inc_text = std::fs::read_to_string(&path).map_err(|e| {
            err(
                &name,
                format!(
                    "cannot read `{}` ({}): {e}",
                    shown(inc),
                    shown_at_most(&path.display().to_string(), usize::MAX)
                ),
                "give a path relative to this file",
            )
        })?;
        for (k, v) in merge_at(&path, &inc_text, depth + 1)? {
            out.insert(k, v);
        }
    }
    for (k, v) in own {
        out.insert(k, v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::task::{parse_suite_file, SuiteFile};

    fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn include_merges_in_lm_eval_order() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = tmp.path();
        write(
            d,
            "_base_yaml",
            "dataset_path: a/b\noutput_type: generate_until\ntest_split: test\ndoc_to_text: \"base {{q}}\"\ndoc_to_target: a\ndescription: base\n",
        );
        write(d, "_one_yaml", "include: _base_yaml\ndescription: one\n");
        write(
            d,
            "_two_yaml",
            "description: two\nfewshot_delimiter: \"##\"\n",
        );
        let p = write(
            d,
            "t.yaml",
            "include: [_one_yaml, _two_yaml]\ntask: t\ndoc_to_text: \"own {{q}}\"\n",
        );
        let text = std::fs::read_to_string(&p).expect("read");
        let SuiteFile::Task(t) = parse_suite_file(&p, &text).expect("parses") else {
            panic!("not a task")
        };
        // Own keys win; the first include wins over the second; nested
        // includes sit under the file that includes them.
        assert_eq!(t.doc_to_text, "own {{q}}");
        assert_eq!(t.description, "one");
        assert_eq!(t.fewshot_delimiter, "##");
        assert_eq!(t.dataset_path, "a/b");
        assert!(t.generation.is_some());
    }

    #[test]
    fn a_missing_include_or_a_cycle_is_one_line() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = tmp.path();
        let p = write(d, "t.yaml", "include: nope_yaml\ntask: t\n");
        let text = std::fs::read_to_string(&p).expect("read");
        let e = parse_suite_file(&p, &text)
            .expect_err("missing")
            .to_string();
        assert!(
            e.contains("t.yaml") && e.contains("include") && e.contains("nope_yaml"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1);
        let p = write(d, "c.yaml", "include: c.yaml\ntask: c\n");
        let text = std::fs::read_to_string(&p).expect("read");
        let e = parse_suite_file(&p, &text).expect_err("cycle").to_string();
        assert!(e.contains("deeper than"), "{e}");
    }
}
