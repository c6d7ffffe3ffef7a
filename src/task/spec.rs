//! The validated form of lm-eval task and group files: [`TaskSpec`],
//! [`GroupSpec`] and the shapes their keys take. Plain data: parsing lives in
//! `parse`, file access in `registry`.

use serde_json::Value as Json;

use crate::metrics::Metric;

/// How `doc_to_choice` is given.
#[derive(Debug, Clone, PartialEq)]
pub enum ChoiceSpec {
    /// A YAML list; each item is a Jinja template (plain strings render as themselves).
    List(Vec<String>),
    /// A field name of the document, or a Jinja template producing a list.
    Template(String),
}

/// How `doc_to_target` is given.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetSpec {
    /// A constant gold index.
    Index(usize),
    /// A field name of the document, or a Jinja template producing an index or a choice.
    Template(String),
}

/// Few-shot sampler (`fewshot_config.sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SamplerKind {
    /// lm-eval's `default`: seeded random sample.
    #[default]
    Random,
    /// lm-eval's `first_n`: the first n documents of the few-shot split.
    FirstN,
}

/// One validated `multiple_choice` task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// `task`.
    pub name: String,
    /// Where the spec came from (`suites/copa.yaml` for built-ins), for messages.
    pub source: String,
    /// Names from `tag` and `group` (a task file's `group` acts as a tag).
    pub tags: Vec<String>,
    /// `dataset_path` (e.g. `aps/super_glue`).
    pub dataset_path: String,
    /// `dataset_name` (e.g. `copa`).
    pub dataset_name: Option<String>,
    /// `training_split`.
    pub training_split: Option<String>,
    /// `validation_split`.
    pub validation_split: Option<String>,
    /// `test_split`.
    pub test_split: Option<String>,
    /// `fewshot_split`.
    pub fewshot_split: Option<String>,
    /// `doc_to_text`: a field name or a Jinja template.
    pub doc_to_text: String,
    /// `doc_to_choice`.
    pub doc_to_choice: ChoiceSpec,
    /// `doc_to_target`.
    pub doc_to_target: TargetSpec,
    /// `target_delimiter` (default `" "`).
    pub target_delimiter: String,
    /// `fewshot_delimiter` (default `"\n\n"`).
    pub fewshot_delimiter: String,
    /// `description` (a Jinja template rendered against the evaluated document; default empty).
    pub description: String,
    /// `num_fewshot` (default 0).
    pub num_fewshot: usize,
    /// `fewshot_config.sampler`.
    pub sampler: SamplerKind,
    /// `metric_list` (default acc, acc_norm as lm-eval does for multiple_choice).
    pub metrics: Vec<Metric>,
    /// `metadata` as written (JSON null when absent).
    pub metadata: Json,
}

impl TaskSpec {
    /// The split that is evaluated: `test_split` if set, else `validation_split` (lm-eval's rule).
    pub fn eval_split(&self) -> &str {
        self.test_split
            .as_deref()
            .or(self.validation_split.as_deref())
            .unwrap_or("validation")
    }

    /// The split few-shot examples come from: `fewshot_split`, else `training_split`,
    /// else `validation_split`, else `test_split` (lm-eval's rule).
    pub fn fewshot_source_split(&self) -> &str {
        self.fewshot_split
            .as_deref()
            .or(self.training_split.as_deref())
            .or(self.validation_split.as_deref())
            .or(self.test_split.as_deref())
            .unwrap_or_else(|| self.eval_split())
    }

    /// `metadata.version` rendered as text (`"1.0"`), if present.
    pub fn version(&self) -> Option<String> {
        match self.metadata.get("version")? {
            Json::String(s) => Some(s.clone()),
            Json::Number(n) => Some(match n.as_f64() {
                Some(f) if n.is_f64() && f.fract() == 0.0 => format!("{f:.1}"),
                _ => n.to_string(),
            }),
            other => Some(other.to_string()),
        }
    }
}

/// A group file: `group: glue` with `task: [sst2, rte, ...]`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    /// `group`.
    pub name: String,
    /// Member task (or group) names, in order.
    pub tasks: Vec<String>,
    /// Where the spec came from.
    pub source: String,
    /// `aggregate_metric_list` as written (not interpreted yet).
    pub aggregate_metric_list: Option<Json>,
}

/// What one suite file defines.
#[derive(Debug, Clone, PartialEq)]
pub enum SuiteFile {
    /// A task file.
    Task(Box<TaskSpec>),
    /// A group file.
    Group(GroupSpec),
}
