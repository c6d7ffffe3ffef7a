//! The built-in smoke suite: a few dozen COPA-, ARC- and SST-2-style items
//! written for slmbench and embedded in the binary, so `slmbench run` shows
//! real output with no data download. Same templates as the real tasks.

use crate::task::{SplitDocs, TaskDocs, TaskError, TaskRegistry, TaskSpec};

/// `dataset_path` of the embedded items.
pub const DATASET_PATH: &str = "slmbench/smoke";

const TASKS: &str = include_str!("smoke.yaml");

/// Adds the `smoke` group and its tasks to a registry.
pub fn register(reg: &mut TaskRegistry) -> Result<(), TaskError> {
    for doc in TASKS.split("\n---\n") {
        reg.add_yaml("<built-in smoke suite>", doc)?;
    }
    Ok(())
}

/// Whether a task reads the embedded items.
pub fn is_smoke(spec: &TaskSpec) -> bool {
    spec.dataset_path == DATASET_PATH
}

/// The embedded documents of a smoke task.
pub fn docs(spec: &TaskSpec) -> Result<TaskDocs, TaskError> {
    let (file, text) = match spec.dataset_name.as_deref() {
        Some("copa") => ("<built-in>/copa.jsonl", include_str!("copa.jsonl")),
        Some("arc") => ("<built-in>/arc.jsonl", include_str!("arc.jsonl")),
        _ => ("<built-in>/sst2.jsonl", include_str!("sst2.jsonl")),
    };
    Ok(TaskDocs {
        eval: SplitDocs::from_jsonl_str(file, "validation", text)?,
        fewshot: None,
    })
}
