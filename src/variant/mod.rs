//! Compression variants: models declared in `models.yaml` as a `parent` plus
//! ordered `steps` (quantize, prune, low-rank, distill), materialized on demand into
//! a cached GGUF, and compared with their parent (or a student with its
//! `distilled_from` teacher).
//!
//! - `spec`: the steps as closed enums, parsed with errors naming the field.
//! - `tensors`: the working set (parent tensors dequantized to f32) and GGUF writing.
//! - `quantize`, `prune`, `low_rank`: one file per method, each a pure
//!   transformation of the working set that returns per-tensor report rows.
//! - `materialize`: cache key, step application, the sidecar report, export.
//! - `compare`: variant vs parent from run records only (no tensors).
//!
//! Invariant: nothing here knows a model family; tensors are addressed by
//! llama.cpp names (`blk.N.attn_q.weight`). Only `compare` is used by
//! reporting, and it reads records, never tensors.

pub mod distill;
pub mod low_rank;
pub mod materialize;
pub mod prune;
pub mod quantize;
pub mod tensors;

use serde::{Deserialize, Serialize};

/// Errors of materializing a variant; each is one line naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum VariantError {
    /// A step that cannot apply to this parent (found only with its tensors).
    #[error("{file}: model `{model}`: field `{field}`: {message}")]
    Spec {
        file: String,
        model: String,
        field: String,
        message: String,
    },
    #[error(transparent)]
    Models(#[from] crate::spec::models::ModelsError),
    #[error(transparent)]
    Fetch(#[from] crate::model::fetch::FetchError),
    #[error(transparent)]
    Gguf(#[from] crate::model::gguf::GgufError),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("tensor `{tensor}`: {message}")]
    Tensor { tensor: String, message: String },
}

impl VariantError {
    pub(crate) fn tensor(tensor: &str, e: impl std::fmt::Display) -> Self {
        VariantError::Tensor {
            tensor: tensor.to_string(),
            message: first_line(&e.to_string()),
        }
    }
}

pub(crate) fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// What one step did to one tensor (a row of `slmbench variants`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TensorRow {
    /// Index of the step in `steps`.
    pub step: usize,
    /// `quantize`, `prune magnitude`, `prune n:m`, `drop layer`, `low_rank`.
    pub op: String,
    pub tensor: String,
    pub shape: Vec<usize>,
    /// GGML type written (quantize).
    #[serde(default)]
    pub qtype: Option<String>,
    /// Why another type than requested was used.
    #[serde(default)]
    pub fallback: Option<String>,
    /// Share of zeros in the tensor after the step (prune).
    #[serde(default)]
    pub sparsity: Option<f64>,
    /// (rank kept, full rank) (low_rank).
    #[serde(default)]
    pub rank: Option<(usize, usize)>,
    /// ‖W − Ŵ‖_F / ‖W‖_F of this step.
    #[serde(default)]
    pub rel_error: Option<f64>,
    /// Parameters before and after the step (low_rank, drop layer).
    #[serde(default)]
    pub params: Option<(u64, u64)>,
}

/// Totals over the tensors of a model file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct Totals {
    pub tensors: usize,
    pub params: u64,
    pub nonzero_params: u64,
    /// Tensor data bytes as stored in the file.
    pub weight_bytes: u64,
}

impl Totals {
    pub fn bits_per_weight(&self) -> f64 {
        if self.params == 0 {
            0.0
        } else {
            self.weight_bytes as f64 * 8.0 / self.params as f64
        }
    }
}

/// The sidecar written next to a materialized variant (`<file>.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VariantReport {
    pub name: String,
    pub parent: String,
    pub cache_key: String,
    pub algorithm_version: u32,
    /// Where the starting weights came from, e.g. "requantized: parent
    /// tensors dequantized from Q4_1 (210), Q8_0 (1)".
    pub source: String,
    pub steps: serde_json::Value,
    pub rows: Vec<TensorRow>,
    pub notes: Vec<String>,
    /// The parent as loaded (dequantized to f32).
    pub parent_totals: Totals,
    pub totals: Totals,
    pub materialize_s: f64,
    /// What each `distill` step did (loss curve, tokens, time, energy).
    #[serde(default)]
    pub training: Vec<distill::TrainingReport>,
}
