//! slmbench: evaluate and benchmark small and large language models and their
//! compressed variants on lm-eval-compatible task suites.
//!
//! Data flow: `models`/`task` (specs) → `run` (plan) → `eval` (cells through a
//! `backend`) → `record` (files). See ARCHITECTURE.md.

pub mod backend;
pub mod bench;
pub mod cli;
pub mod energy;
pub mod environment;
pub mod eval;
pub mod fetch;
pub mod gguf;
pub mod gpu_energy;
pub mod measure;
pub mod metrics;
pub mod models;
pub mod parquet;
pub mod record;
pub mod report;
pub mod run;
pub mod safetensors;
pub mod smoke;
pub mod task;
pub mod tokenizer;
pub mod variant;
