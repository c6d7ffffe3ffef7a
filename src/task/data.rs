//! Locating and reading a task's documents from a data directory laid out as
//! `<dataset_path>/<dataset_name>/<split>.jsonl` (or `<dataset_path>/<split>.jsonl`
//! without a `dataset_name`). The Hugging Face Parquet layout
//! (`<split>-*.parquet` in the same directory) is read through the
//! [`ParquetReader`] hook, which this module does not implement.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value as Json;

use super::error::{one_line, DocLocation, TaskError};
use super::spec::TaskSpec;

/// Hook for reading Hugging Face Parquet shards; plugged in by the caller.
pub trait ParquetReader: Send + Sync {
    /// Reads every row of `files`, in the order given, as JSON objects
    /// (one per row, columns as keys). The error text is reported as is.
    fn read_rows(&self, files: &[PathBuf]) -> Result<Vec<Json>, String>;
}

/// The documents of one split, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitDocs {
    /// The split name (`validation`).
    pub split: String,
    /// The file read, as displayed in messages.
    pub file: String,
    /// The documents (JSON objects).
    pub docs: Vec<Json>,
    /// SHA-256 of the file's bytes (hex), for the report's provenance;
    /// `None` for Parquet shards and built-in documents.
    pub sha256: Option<String>,
    lines: Vec<usize>,
    is_line: bool,
}

impl SplitDocs {
    /// Parses JSON Lines text; `file` names it in messages. Blank lines are skipped.
    pub fn from_jsonl_str(file: &str, split: &str, text: &str) -> Result<Self, TaskError> {
        let mut docs = Vec::new();
        let mut lines = Vec::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let location = DocLocation {
                file: file.to_string(),
                line: i + 1,
                is_line: true,
            };
            let value: Json = serde_json::from_str(line).map_err(|e| TaskError::Doc {
                location: location.clone(),
                field: "json".into(),
                message: format!("not valid JSON: {}", one_line(&e.to_string())),
                fix: "fix or remove the line (one JSON object per line)".into(),
            })?;
            if !value.is_object() {
                return Err(TaskError::Doc {
                    location,
                    field: "json".into(),
                    message: "not a JSON object".into(),
                    fix: "write one JSON object (a document) per line".into(),
                });
            }
            docs.push(value);
            lines.push(i + 1);
        }
        Ok(SplitDocs {
            split: split.to_string(),
            file: file.to_string(),
            docs,
            sha256: None,
            lines,
            is_line: true,
        })
    }

    /// Wraps rows from a row-based source (Parquet); row numbers are 1-based.
    pub(crate) fn from_rows(file: &str, split: &str, docs: Vec<Json>) -> Self {
        let lines = (1..=docs.len()).collect();
        SplitDocs {
            split: split.to_string(),
            file: file.to_string(),
            docs,
            sha256: None,
            lines,
            is_line: false,
        }
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether there are no documents.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Where document `index` came from.
    pub fn location(&self, index: usize) -> DocLocation {
        DocLocation {
            file: self.file.clone(),
            line: self.lines.get(index).copied().unwrap_or(index + 1),
            is_line: self.is_line,
        }
    }
}

/// A directory of evaluation data (`--data-dir`).
#[derive(Clone)]
pub struct DataDir {
    root: PathBuf,
    parquet: Option<Arc<dyn ParquetReader>>,
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir")
            .field("root", &self.root)
            .field("parquet", &self.parquet.is_some())
            .finish()
    }
}

impl DataDir {
    /// A data directory without Parquet support.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir {
            root: root.into(),
            parquet: None,
        }
    }

    /// Adds a Parquet reader, used when a split has no `.jsonl` file.
    pub fn with_parquet_reader(mut self, reader: Arc<dyn ParquetReader>) -> Self {
        self.parquet = Some(reader);
        self
    }

    /// The directory holding the task's split files.
    pub fn dataset_dir(&self, spec: &TaskSpec) -> PathBuf {
        let mut dir = self.root.join(&spec.dataset_path);
        if let Some(name) = &spec.dataset_name {
            dir.push(name);
        }
        dir
    }

    /// Reads one split of the task's dataset: `<split>.jsonl`, else `<split>-*.parquet`.
    pub fn load_split(&self, spec: &TaskSpec, split: &str) -> Result<SplitDocs, TaskError> {
        let dir = self.dataset_dir(spec);
        let jsonl = dir.join(format!("{split}.jsonl"));
        if jsonl.is_file() {
            let file = jsonl.display().to_string();
            let text = std::fs::read_to_string(&jsonl).map_err(|source| TaskError::Io {
                path: file.clone(),
                source,
            })?;
            let mut docs = SplitDocs::from_jsonl_str(&file, split, &text)?;
            docs.sha256 = Some(crate::record::sha256_hex(text.as_bytes()));
            return Ok(docs);
        }
        let shards = parquet_shards(&dir, split);
        let pattern = dir.join(format!("{split}-*.parquet")).display().to_string();
        if !shards.is_empty() {
            let Some(reader) = &self.parquet else {
                return Err(TaskError::MissingSplit {
                    task: spec.name.clone(),
                    split: split.to_string(),
                    tried: format!(
                        "{} (found Parquet shards {pattern}, but this build reads only JSON Lines)",
                        jsonl.display()
                    ),
                    fix: format!("convert the shards to {}", jsonl.display()),
                });
            };
            let rows = reader.read_rows(&shards).map_err(|m| TaskError::Build {
                task: spec.name.clone(),
                message: format!("cannot read {pattern}: {}", one_line(&m)),
                fix: "check the Parquet files or convert them to JSON Lines".into(),
            })?;
            return Ok(SplitDocs::from_rows(&pattern, split, rows));
        }
        let hint = if dir.is_dir() {
            format!(
                "add {split}.jsonl to {}, or set the task's split keys to a split that exists there",
                dir.display()
            )
        } else {
            format!(
                "pass --data-dir pointing at the directory that holds {}/",
                Path::new(&spec.dataset_path)
                    .join(spec.dataset_name.as_deref().unwrap_or(""))
                    .display()
                    .to_string()
                    .trim_end_matches('/')
            )
        };
        Err(TaskError::MissingSplit {
            task: spec.name.clone(),
            split: split.to_string(),
            tried: format!("{} and {pattern}", jsonl.display()),
            fix: hint,
        })
    }
}

/// `<dir>/<split>-*.parquet`, sorted by name.
fn parquet_shards(dir: &Path, split: &str) -> Vec<PathBuf> {
    let prefix = format!("{split}-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut shards: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".parquet"))
        })
        .collect();
    shards.sort();
    shards
}

/// The documents a task needs: the evaluated split and, for few-shot runs, the
/// split few-shot examples are drawn from.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskDocs {
    /// The evaluated split ([`TaskSpec::eval_split`]).
    pub eval: SplitDocs,
    /// The few-shot pool ([`TaskSpec::fewshot_source_split`]); `None` when not needed.
    pub fewshot: Option<SplitDocs>,
}

impl TaskDocs {
    /// Reads the splits `spec` needs for `num_fewshot` examples per prompt.
    pub fn load(spec: &TaskSpec, data: &DataDir, num_fewshot: usize) -> Result<Self, TaskError> {
        let eval_split = spec.eval_split();
        let eval = data.load_split(spec, eval_split)?;
        let fewshot = if num_fewshot == 0 {
            None
        } else if spec.fewshot_source_split() == eval_split {
            Some(eval.clone())
        } else {
            Some(data.load_split(spec, spec.fewshot_source_split())?)
        };
        Ok(TaskDocs { eval, fewshot })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_lines_and_errors() {
        let docs =
            SplitDocs::from_jsonl_str("d/v.jsonl", "validation", "{\"a\":1}\n\n{\"a\":2}\r\n")
                .expect("ok");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs.location(1).to_string(), "d/v.jsonl line 3");
        let err = SplitDocs::from_jsonl_str("d/v.jsonl", "validation", "{\"a\":1}\n{oops\n")
            .expect_err("bad");
        assert!(
            err.to_string()
                .starts_with("d/v.jsonl line 2: json: not valid JSON"),
            "{err}"
        );
        let err = SplitDocs::from_jsonl_str("d/v.jsonl", "validation", "[1]\n").expect_err("bad");
        assert!(err.to_string().contains("not a JSON object"), "{err}");
    }
}
