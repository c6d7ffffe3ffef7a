//! Tasks as data, the lm-evaluation-harness way: task YAML files (lm-eval's
//! keys), the registry of shipped and user suites, the Jinja templates that
//! turn a document into a prompt, choices and gold label, the data files the
//! documents come from, and the multiple-choice requests ([`Instance`]s)
//! built from them exactly as lm-eval 0.4.13 builds its contexts.
//!
//! Flow: [`builtin_registry`] (optionally plus [`TaskRegistry::add_dir`]) →
//! [`TaskRegistry::resolve`] → [`TaskDocs::load`] → [`build_instances`].
//!
//! Invariant: knows nothing about models, tokenizers or scores; metrics live
//! in `crate::metrics`.

mod chat;
mod data;
mod error;
mod fewshot;
pub mod filter;
mod include;
mod instances;
pub mod parquet;
mod parse;
mod parse_gen;
mod pyjinja;
mod registry;
pub mod smoke;
mod spec;
mod template;
mod yaml_diag;

pub use chat::{ChatOptions, Message};
pub use data::{DataDir, ParquetReader, SplitDocs, TaskDocs};
pub(crate) use error::escaped;
pub use error::{DocLocation, TaskError};
pub use instances::{
    answered_examples, build_instances, BuildOptions, Instance, DEFAULT_FEWSHOT_SEED,
};
pub use parse::{parse_suite_file, parse_suite_yaml};
pub use parse_gen::DEFAULT_MAX_GEN_TOKS;
pub use registry::{builtin_registry, load_suite_dir, load_task_file, TaskRegistry};
pub use spec::{
    ChoiceSpec, ExactMatchSpec, FilterPipeline, FilterStep, GenerationSpec, GroupSpec, SamplerKind,
    SuiteFile, TargetSpec, TaskSpec,
};
