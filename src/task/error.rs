//! The error type of the `task` module. Every variant renders as one line that
//! names where the problem is (file, and line for data), what is wrong, and
//! how to fix it.

use std::fmt;

/// Errors from loading task files, reading data and building instances.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A file or directory could not be read.
    #[error("{path}: cannot read: {source} — check that it exists and is readable")]
    Io {
        /// The path tried.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The YAML of a task file is malformed or has a key/value of the wrong shape.
    #[error("{file} line {line} column {column}: {} — {fix}", escaped(.message))]
    Yaml {
        /// The task file.
        file: String,
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: u64,
        /// What the YAML parser or schema said.
        message: String,
        /// How to fix it.
        fix: String,
    },

    /// A task or group file is well-formed YAML but its content is not usable.
    #[error("{file}: {key}: {} — {fix}", escaped(.message))]
    Spec {
        /// The task file (or `suites/<name>.yaml` for a built-in suite).
        file: String,
        /// The offending key.
        key: String,
        /// What is wrong.
        message: String,
        /// How to fix it.
        fix: String,
    },

    /// A task or group name that no loaded file defines.
    #[error("unknown task or group `{}` — use one of: {known}", shown(.name))]
    UnknownName {
        /// The name asked for.
        name: String,
        /// Comma-separated list of the known names.
        known: String,
    },

    /// The data for a split could not be located.
    #[error("{task}: split `{split}` not found (tried {tried}) — {fix}")]
    MissingSplit {
        /// The task name.
        task: String,
        /// The split name.
        split: String,
        /// The paths tried.
        tried: String,
        /// How to fix it.
        fix: String,
    },

    /// A problem with one document (bad JSON line, template error, bad gold label).
    #[error("{location}: {field}: {} — {fix}", escaped(.message))]
    Doc {
        /// `<file> line <n>` (JSONL) or `<file> row <n>` (Parquet).
        location: DocLocation,
        /// The task key involved (`doc_to_text`, `doc_to_target`, ...), or `json`.
        field: String,
        /// What is wrong.
        message: String,
        /// How to fix it.
        fix: String,
    },

    /// A task-level problem found while building instances.
    #[error("{task}: {} — {fix}", escaped(.message))]
    Build {
        /// The task name.
        task: String,
        /// What is wrong.
        message: String,
        /// How to fix it.
        fix: String,
    },
}

/// Where a document came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocLocation {
    /// The data file, as given (relative to the data directory the user passed).
    pub file: String,
    /// 1-based line (JSON Lines) or row (Parquet) number.
    pub line: usize,
    /// `true` for JSON Lines files (`line N`), `false` for row-based sources (`row N`).
    pub is_line: bool,
}

impl fmt::Display for DocLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.is_line { "line" } else { "row" };
        write!(f, "{} {} {}", self.file, word, self.line)
    }
}

/// A value from a task file as an error quotes it: control characters
/// (newlines, tabs) escaped so the message stays on one line, and at most
/// 80 characters, so a pasted paragraph does not drown the fix.
pub(crate) fn shown(s: &str) -> String {
    shown_at_most(s, 80)
}

/// A message built around values from task files, documents or model
/// files, with any control character in them escaped: the last guard of
/// the one-line rule (the fuzz targets found values quoted verbatim more
/// than once).
pub(crate) fn escaped(message: &str) -> String {
    if message.chars().any(char::is_control) {
        shown_at_most(message, usize::MAX)
    } else {
        message.to_string()
    }
}

/// [`shown`] with a chosen length limit (`usize::MAX` for paths, which are
/// only escaped).
pub(crate) fn shown_at_most(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max.saturating_add(8)));
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// Collapses a message onto one line.
pub(crate) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, part) in s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(part);
    }
    out
}
