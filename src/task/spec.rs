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
    /// `doc_to_choice` (`None` for a `generate_until` task).
    pub doc_to_choice: Option<ChoiceSpec>,
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
    /// `metric_list` of a multiple-choice task (default acc, acc_norm as
    /// lm-eval does); empty for a `generate_until` task.
    pub metrics: Vec<Metric>,
    /// `output_type: generate_until`: how to generate, filter and score.
    pub generation: Option<GenerationSpec>,
    /// `metadata` as written (JSON null when absent).
    pub metadata: Json,
}

/// A `generate_until` task's generation, filters and metric.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSpec {
    /// `generation_kwargs.until`: the text is cut at the first of these
    /// (the model's EOS string is added at run time, as lm-eval does).
    pub until: Vec<String>,
    /// `generation_kwargs.max_gen_toks` (default 256).
    pub max_gen_toks: usize,
    /// `filter_list` (default: one pipeline `none` = `take_first`).
    pub filters: Vec<FilterPipeline>,
    /// The `exact_match` entry of `metric_list`.
    pub exact_match: ExactMatchSpec,
}

/// One named filter pipeline of `filter_list`.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterPipeline {
    /// `name` (results are keyed `metric,name`).
    pub name: String,
    pub steps: Vec<FilterStep>,
}

/// One step of a filter pipeline, as lm-eval's filter registry names them.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterStep {
    /// `regex`: Python `re.findall`, the `group_select`-th match (negative
    /// counts from the end), first non-empty group of a multi-group
    /// pattern, stripped; `fallback` when nothing matches.
    Regex {
        pattern: String,
        group_select: i64,
        fallback: String,
    },
    /// `take_first`: the first of the document's responses.
    TakeFirst,
    /// `lowercase`.
    Lowercase,
    /// `uppercase`.
    Uppercase,
    /// `remove_whitespace`: leading whitespace removed (Python `lstrip`).
    RemoveWhitespace,
    /// `strip`: Python `str.strip()`.
    Strip,
}

/// `exact_match`'s keyword arguments (lm-eval's HF-evaluate port), applied
/// to prediction and reference in this order: each of `regexes_to_ignore`
/// removed, lowercased, ASCII punctuation removed, digits removed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExactMatchSpec {
    pub ignore_case: bool,
    pub ignore_punctuation: bool,
    pub ignore_numbers: bool,
    pub regexes_to_ignore: Vec<String>,
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
