//! Errors of a run. A cell's error is recorded in its `CellResult` and the
//! run goes on; the others stop the run with what is on disk kept.

use std::path::Path;

use crate::backend::ScoreError;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Task(#[from] crate::task::TaskError),
    #[error(transparent)]
    Models(#[from] crate::spec::models::ModelsError),
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    #[error(transparent)]
    Variant(#[from] crate::variant::VariantError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{docs}: {source}")]
    Score { docs: String, source: ScoreError },
    #[error("{context}: {message}")]
    Metric { context: String, message: String },
    /// SIGINT (2) or SIGTERM (15) stopped the run; every reported document
    /// is on disk.
    #[error("interrupted by signal {0}")]
    Interrupted(i32),
    #[error("cannot serialize the run configuration: {0}")]
    Config(#[from] serde_json::Error),
}

impl EvalError {
    pub(crate) fn io(path: &Path, message: impl Into<String>) -> Self {
        EvalError::Io {
            path: path.display().to_string(),
            message: message.into(),
        }
    }
}
