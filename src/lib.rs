//! slmbench: evaluate and benchmark small and large language models and their
//! compressed variants on lm-eval-compatible task suites.
//!
//! The modules in pipeline order: `spec` (inputs) → `plan` (a run resolved)
//! → `eval` (cells through a `backend`, with `measure` probes) → `record`
//! (files) → `report` (tables, charts, HTML, verdicts). `cli` is the only
//! layer that prints. See ARCHITECTURE.md.

pub mod backend;
pub mod bench;
pub mod cli;
pub mod eval;
pub mod measure;
pub mod metrics;
pub mod model;
pub mod obtain;
pub mod plan;
pub mod pyrandom;
pub mod record;
pub mod report;
pub mod spec;
pub mod task;
pub mod text_table;
pub mod variant;
