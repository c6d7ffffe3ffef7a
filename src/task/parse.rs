//! Parsing of one suite file: the serde schema of lm-eval's task keys
//! (unknown keys rejected) and its validation into a [`TaskSpec`] or
//! [`GroupSpec`]. No file I/O.

use serde::Deserialize;
use serde_json::Value as Json;

use super::error::{shown, TaskError};
use super::parse_gen::{generation_spec, RawFilterPipeline, RawGenKwargs, RawMatchKwargs};
use super::spec::{ChoiceSpec, GroupSpec, SamplerKind, SuiteFile, TargetSpec, TaskSpec};
use super::template;
use super::yaml_diag::{reject_python_tags, yaml_error, PY_FUNC_FIX};
use crate::metrics::Metric;

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawChoice {
    List(Vec<String>),
    Template(String),
    Map(serde_json::Map<String, Json>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawTarget {
    Index(u64),
    Template(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFewshot {
    sampler: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    metric: String,
    aggregation: Option<String>,
    higher_is_better: Option<bool>,
    ignore_case: Option<bool>,
    ignore_punctuation: Option<bool>,
    ignore_numbers: Option<bool>,
    regexes_to_ignore: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    task: Option<OneOrMany>,
    group: Option<OneOrMany>,
    tag: Option<OneOrMany>,
    dataset_path: Option<String>,
    dataset_name: Option<String>,
    training_split: Option<String>,
    validation_split: Option<String>,
    test_split: Option<String>,
    fewshot_split: Option<String>,
    output_type: Option<String>,
    doc_to_text: Option<String>,
    doc_to_choice: Option<RawChoice>,
    doc_to_target: Option<RawTarget>,
    target_delimiter: Option<String>,
    fewshot_delimiter: Option<String>,
    description: Option<String>,
    num_fewshot: Option<u64>,
    fewshot_config: Option<RawFewshot>,
    metric_list: Option<Vec<RawMetric>>,
    metadata: Option<Json>,
    should_decontaminate: Option<bool>,
    doc_to_decontamination_query: Option<String>,
    process_docs: Option<serde::de::IgnoredAny>,
    aggregate_metric_list: Option<Json>,
    generation_kwargs: Option<RawGenKwargs>,
    filter_list: Option<Vec<RawFilterPipeline>>,
    repeats: Option<u64>,
}

fn spec_err(
    file: &str,
    key: &str,
    message: impl Into<String>,
    fix: impl Into<String>,
) -> TaskError {
    TaskError::Spec {
        file: file.to_string(),
        key: key.to_string(),
        message: message.into(),
        fix: fix.into(),
    }
}

/// Parses and validates the text of one suite file (a task or a group).
/// `file` names it in error messages.
pub fn parse_suite_yaml(file: &str, text: &str) -> Result<SuiteFile, TaskError> {
    reject_python_tags(file, text)?;
    if super::include::has_include(text) {
        return Err(spec_err(
            file,
            "include",
            "this file was given as text, so there is nothing to include relative to",
            "load it from its folder (--suite FILE or DIR)",
        ));
    }
    let raw: RawFile = serde_saphyr::from_str(text).map_err(|e| yaml_error(file, text, &e))?;
    from_raw(file, raw)
}

/// Parses one suite file read from `path`, merging its `include:`s
/// (paths relative to it) as lm-eval does.
pub fn parse_suite_file(path: &std::path::Path, text: &str) -> Result<SuiteFile, TaskError> {
    let file = path.display().to_string();
    if !super::include::has_include(text) {
        return parse_suite_yaml(&file, text);
    }
    let merged = super::include::merged(path, text)?;
    let raw: RawFile = serde_json::from_value(Json::Object(merged)).map_err(|e| {
        spec_err(
            &file,
            "include",
            format!("with its includes merged: {e}"),
            "fix the key in this file or the included one",
        )
    })?;
    from_raw(&file, raw)
}

fn from_raw(file: &str, mut raw: RawFile) -> Result<SuiteFile, TaskError> {
    if raw.process_docs.is_some() {
        return Err(spec_err(file, "process_docs", "not supported", PY_FUNC_FIX));
    }
    match raw.task.take() {
        Some(OneOrMany::Many(tasks)) => {
            let group = raw.group.take();
            group_from_raw(file, group, tasks, &raw)
        }
        Some(OneOrMany::One(name)) => {
            task_from_raw(file, name, raw).map(|t| SuiteFile::Task(Box::new(t)))
        }
        None => Err(spec_err(
            file,
            "task",
            "missing",
            "add `task: <name>` (or, in a group file, `group: <name>` and `task: [<names>]`)",
        )),
    }
}

fn group_from_raw(
    file: &str,
    group: Option<OneOrMany>,
    tasks: Vec<String>,
    raw: &RawFile,
) -> Result<SuiteFile, TaskError> {
    let name = match group {
        Some(OneOrMany::One(name)) => name,
        Some(OneOrMany::Many(_)) => {
            return Err(spec_err(
                file,
                "group",
                "a group file names one group",
                "write `group: <name>`",
            ))
        }
        None => {
            return Err(spec_err(
                file,
                "group",
                "missing: `task` is a list, so this is a group file",
                "add `group: <name>`, or make `task` a single name",
            ))
        }
    };
    let task_keys = [
        ("dataset_path", raw.dataset_path.is_some()),
        ("dataset_name", raw.dataset_name.is_some()),
        ("doc_to_text", raw.doc_to_text.is_some()),
        ("doc_to_choice", raw.doc_to_choice.is_some()),
        ("doc_to_target", raw.doc_to_target.is_some()),
        ("output_type", raw.output_type.is_some()),
        ("metric_list", raw.metric_list.is_some()),
        ("tag", raw.tag.is_some()),
    ];
    if let Some((key, _)) = task_keys.iter().find(|(_, present)| *present) {
        return Err(spec_err(
            file,
            key,
            "not allowed in a group file",
            "move it into one of the member task files",
        ));
    }
    if tasks.is_empty() {
        return Err(spec_err(
            file,
            "task",
            "the group lists no tasks",
            "list its member tasks",
        ));
    }
    Ok(SuiteFile::Group(GroupSpec {
        name,
        tasks,
        source: file.to_string(),
        aggregate_metric_list: raw.aggregate_metric_list.clone(),
    }))
}

fn task_from_raw(file: &str, name: String, raw: RawFile) -> Result<TaskSpec, TaskError> {
    if name.trim().is_empty() {
        return Err(spec_err(file, "task", "empty name", "give the task a name"));
    }
    // The name becomes a file name of the run directory.
    if name.starts_with('.')
        || name
            .chars()
            .any(|c| matches!(c, '/' | '\\' | ':' | '\0') || c.is_control())
    {
        return Err(spec_err(
            file,
            "task",
            format!(
                "`{}` cannot be a file name (it names the task's samples file)",
                shown(&name)
            ),
            "use letters, digits, `_`, `-` and `.` (not first)",
        ));
    }
    if raw.aggregate_metric_list.is_some() {
        return Err(spec_err(
            file,
            "aggregate_metric_list",
            "only allowed in a group file",
            "remove it, or make this a group file",
        ));
    }
    // lm-eval's default output type is generate_until.
    let generate = match raw.output_type.as_deref() {
        Some("multiple_choice") => false,
        Some("generate_until") | None => true,
        Some(other) => {
            return Err(spec_err(
                file,
                "output_type",
                format!("`{}` is not supported", shown(other)),
                "use `output_type: multiple_choice` or `generate_until`",
            ))
        }
    };
    if let Some(r) = raw.repeats.filter(|&r| r != 1) {
        return Err(spec_err(
            file,
            "repeats",
            format!("{r} repeats are not supported (generation is greedy)"),
            "use `repeats: 1` or leave it out",
        ));
    }
    if !generate {
        for (key, present) in [
            ("generation_kwargs", raw.generation_kwargs.is_some()),
            ("filter_list", raw.filter_list.is_some()),
        ] {
            if present {
                return Err(spec_err(
                    file,
                    key,
                    "only a generate_until task takes it",
                    "remove it, or set `output_type: generate_until`",
                ));
            }
        }
    }
    let dataset_path = raw.dataset_path.ok_or_else(|| {
        spec_err(
            file,
            "dataset_path",
            "missing",
            "add `dataset_path: <owner>/<name>`",
        )
    })?;
    if raw.test_split.is_none() && raw.validation_split.is_none() {
        return Err(spec_err(
            file,
            "test_split",
            "neither test_split nor validation_split is set, so there is nothing to evaluate",
            "set `validation_split` or `test_split`",
        ));
    }
    let doc_to_text = raw.doc_to_text.ok_or_else(|| {
        spec_err(
            file,
            "doc_to_text",
            "missing",
            "add a Jinja template for the prompt",
        )
    })?;
    let doc_to_choice = match raw.doc_to_choice {
        // A generation task's choices are not scored (lm-eval ignores them).
        _ if generate => None,
        Some(RawChoice::List(items)) => Some(ChoiceSpec::List(items)),
        Some(RawChoice::Template(t)) => Some(ChoiceSpec::Template(t)),
        Some(RawChoice::Map(map)) => {
            // lm-eval takes a mapping's values as the choice list.
            let mut items = Vec::with_capacity(map.len());
            for (k, v) in map {
                match v {
                    Json::String(s) => items.push(s),
                    _ => {
                        return Err(spec_err(
                            file,
                            "doc_to_choice",
                            format!("value of `{k}` is not a string"),
                            "give every choice as a string",
                        ))
                    }
                }
            }
            Some(ChoiceSpec::List(items))
        }
        None => {
            return Err(spec_err(
                file,
                "doc_to_choice",
                "missing (required for multiple_choice)",
                "add a list of choices or a template producing one",
            ))
        }
    };
    let doc_to_target = match raw.doc_to_target {
        Some(RawTarget::Index(i)) => TargetSpec::Index(usize::try_from(i).map_err(|_| {
            spec_err(
                file,
                "doc_to_target",
                "index too large",
                "use a valid choice index",
            )
        })?),
        Some(RawTarget::Template(t)) => TargetSpec::Template(t),
        None => {
            return Err(spec_err(
                file,
                "doc_to_target",
                "missing",
                "add a field name or template giving the gold index or choice",
            ))
        }
    };
    let sampler = match raw.fewshot_config.and_then(|f| f.sampler).as_deref() {
        None | Some("default") => SamplerKind::Random,
        Some("first_n") => SamplerKind::FirstN,
        Some(other) => {
            return Err(spec_err(
                file,
                "fewshot_config.sampler",
                format!("unknown sampler `{}`", shown(other)),
                "use `default` or `first_n`",
            ))
        }
    };
    let fewshot_delimiter = raw.fewshot_delimiter.unwrap_or_else(|| "\n\n".to_string());
    let (metrics, generation) = if generate {
        let kwargs = generation_metric(file, raw.metric_list)?;
        let g = generation_spec(
            file,
            raw.generation_kwargs,
            raw.filter_list,
            kwargs,
            &fewshot_delimiter,
        )?;
        (Vec::new(), Some(g))
    } else {
        (parse_metrics(file, raw.metric_list)?, None)
    };
    let mut tags = Vec::new();
    for t in raw
        .tag
        .into_iter()
        .chain(raw.group)
        .flat_map(OneOrMany::into_vec)
    {
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    // `should_decontaminate` and `doc_to_decontamination_query` are accepted and ignored.
    let _ = (raw.should_decontaminate, raw.doc_to_decontamination_query);
    let spec = TaskSpec {
        name,
        source: file.to_string(),
        tags,
        dataset_path,
        dataset_name: raw.dataset_name,
        training_split: raw.training_split,
        validation_split: raw.validation_split,
        test_split: raw.test_split,
        fewshot_split: raw.fewshot_split,
        doc_to_text,
        doc_to_choice,
        doc_to_target,
        target_delimiter: raw.target_delimiter.unwrap_or_else(|| " ".to_string()),
        fewshot_delimiter,
        description: raw.description.unwrap_or_default(),
        num_fewshot: usize::try_from(raw.num_fewshot.unwrap_or(0))
            .map_err(|_| spec_err(file, "num_fewshot", "too large", "use a small integer"))?,
        sampler,
        metrics,
        generation,
        metadata: raw.metadata.unwrap_or(Json::Null),
    };
    template::check_spec_templates(&spec)?;
    Ok(spec)
}

/// The `metric_list` of a `generate_until` task: `exact_match` (lm-eval's
/// default when the list is absent) and its keyword arguments.
fn generation_metric(
    file: &str,
    list: Option<Vec<RawMetric>>,
) -> Result<RawMatchKwargs, TaskError> {
    let Some(list) = list else {
        return Ok(RawMatchKwargs::default());
    };
    let mut found = None;
    for m in list {
        if m.metric != "exact_match" {
            return Err(spec_err(
                file,
                "metric_list.metric",
                format!("`{}` is not supported for generate_until", shown(&m.metric)),
                "use `metric: exact_match`",
            ));
        }
        if m.aggregation.as_deref().is_some_and(|a| a != "mean") {
            return Err(spec_err(
                file,
                "metric_list.aggregation",
                "exact_match aggregates by `mean`",
                "use `aggregation: mean` or leave it out",
            ));
        }
        if m.higher_is_better == Some(false) {
            return Err(spec_err(
                file,
                "metric_list.higher_is_better",
                "exact_match is higher-is-better",
                "use `higher_is_better: true` or leave it out",
            ));
        }
        if found.is_some() {
            return Err(spec_err(
                file,
                "metric_list.metric",
                "exact_match is listed twice",
                "list each metric once",
            ));
        }
        found = Some(RawMatchKwargs {
            ignore_case: m.ignore_case,
            ignore_punctuation: m.ignore_punctuation,
            ignore_numbers: m.ignore_numbers,
            regexes_to_ignore: m.regexes_to_ignore,
        });
    }
    found.ok_or_else(|| {
        spec_err(
            file,
            "metric_list",
            "empty",
            "list `- metric: exact_match`, or leave `metric_list` out",
        )
    })
}

fn parse_metrics(file: &str, list: Option<Vec<RawMetric>>) -> Result<Vec<Metric>, TaskError> {
    let Some(list) = list else {
        // lm-eval's default metric list for multiple_choice.
        return Ok(vec![Metric::Acc, Metric::AccNorm]);
    };
    if list.is_empty() {
        return Err(spec_err(
            file,
            "metric_list",
            "empty",
            "list at least one metric, e.g. `- metric: acc`",
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for m in list {
        let kwargs = RawMatchKwargs {
            ignore_case: m.ignore_case,
            ignore_punctuation: m.ignore_punctuation,
            ignore_numbers: m.ignore_numbers,
            regexes_to_ignore: m.regexes_to_ignore.clone(),
        };
        if kwargs.any() {
            return Err(spec_err(
                file,
                "metric_list",
                format!(
                    "`{}` takes no ignore_* or regexes_to_ignore",
                    shown(&m.metric)
                ),
                "remove them (they belong to exact_match)",
            ));
        }
        let metric: Metric = m.metric.parse().map_err(|e: crate::metrics::MetricError| {
            spec_err(
                file,
                "metric_list.metric",
                e.to_string(),
                "use one of acc, acc_norm, f1, mcc",
            )
        })?;
        if let Some(agg) = m.aggregation.as_deref() {
            if agg != metric.aggregation_name() {
                return Err(spec_err(
                    file,
                    "metric_list.aggregation",
                    format!("`{}` is not supported for {}", shown(agg), metric.name()),
                    format!(
                        "use `aggregation: {}` or leave it out",
                        metric.aggregation_name()
                    ),
                ));
            }
        }
        if m.higher_is_better == Some(false) {
            return Err(spec_err(
                file,
                "metric_list.higher_is_better",
                format!("{} is higher-is-better", metric.name()),
                "use `higher_is_better: true` or leave it out",
            ));
        }
        if out.contains(&metric) {
            return Err(spec_err(
                file,
                "metric_list.metric",
                format!("{} is listed twice", metric.name()),
                "list each metric once",
            ));
        }
        out.push(metric);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "task: t\ndataset_path: a/b\noutput_type: multiple_choice\nvalidation_split: validation\ndoc_to_text: \"{{q}}\"\ndoc_to_choice: [\"no\", \"yes\"]\ndoc_to_target: label\n";

    #[test]
    fn minimal_task_defaults() {
        let SuiteFile::Task(t) = parse_suite_yaml("t.yaml", MINIMAL).expect("parses") else {
            panic!("not a task")
        };
        assert_eq!(t.target_delimiter, " ");
        assert_eq!(t.fewshot_delimiter, "\n\n");
        assert_eq!(t.metrics, vec![Metric::Acc, Metric::AccNorm]);
        assert_eq!(t.eval_split(), "validation");
        assert_eq!(t.fewshot_source_split(), "validation");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = format!("{MINIMAL}bogus_key: 1\n");
        let err = parse_suite_yaml("suites/x.yaml", &text)
            .expect_err("must fail")
            .to_string();
        assert!(
            err.starts_with("suites/x.yaml line 8 column 1: unknown field `bogus_key`"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    /// Found by the `task_yaml` fuzz target: a YAML block scalar put a
    /// paragraph with newlines into a regex that does not compile, and the
    /// error quoted it verbatim over thirty lines.
    #[test]
    fn a_bad_value_with_newlines_is_quoted_on_one_line() {
        let long = "x".repeat(200);
        let gen = "task: t\ndataset_path: a/b\noutput_type: generate_until\ntest_split: test\ndoc_to_text: \"{{q}}\"\ndoc_to_target: a\n";
        let cases = [
            (
                "filter_list",
                format!("{gen}filter_list:\n  - name: s\n    filter:\n      - function: regex\n        regex_pattern: |\n          a{{\n\n          {long}\n"),
            ),
            // Further crashes of that target: the metric name and the task name.
            (
                "metric_list.metric",
                "task: t\ndataset_path: a/b\ntest_split: test\ndoc_to_text: q\ndoc_to_target: a\nmetric_list:\n  - metric: \"exact_match\\n- x\"\n".to_string(),
            ),
            ("task", MINIMAL.replace("task: t", "task: \"gsm8k\\n- \\\",\\\"\"")),
            (
                "output_type",
                MINIMAL.replace("output_type: multiple_choice", "output_type: \"multiple\\nchoice\""),
            ),
            (
                "fewshot_config.sampler",
                format!("{MINIMAL}fewshot_config:\n  sampler: \"first\\tn\\n\"\n"),
            ),
        ];
        for (key, text) in cases {
            let err = parse_suite_yaml("t.yaml", &text)
                .expect_err("must fail")
                .to_string();
            assert!(!err.contains('\n') && !err.contains('\t'), "{key}: {err}");
            assert!(
                err.starts_with("t.yaml: ") && err.contains(key),
                "{key}: {err}"
            );
            assert!(err.len() < 400, "{key}: {} chars: {err}", err.len());
        }
    }

    #[test]
    fn python_functions_rejected() {
        let text = MINIMAL.replace(
            "doc_to_text: \"{{q}}\"",
            "doc_to_text: !function utils.doc_to_text",
        );
        let err = parse_suite_yaml("x.yaml", &text)
            .expect_err("must fail")
            .to_string();
        assert!(
            err.contains("x.yaml line 5") && err.contains("doc_to_text") && err.contains("Jinja"),
            "{err}"
        );
        let text = format!("{MINIMAL}process_docs: !function utils.process_docs\n");
        let err = parse_suite_yaml("x.yaml", &text)
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("Python functions are not supported"), "{err}");
    }

    #[test]
    fn other_output_types_rejected() {
        let text = MINIMAL.replace("multiple_choice", "loglikelihood_rolling");
        let err = parse_suite_yaml("x.yaml", &text)
            .expect_err("must fail")
            .to_string();
        assert!(
            err.contains("output_type") && err.contains("loglikelihood_rolling"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_has_line() {
        let err =
            parse_suite_yaml("x.yaml", "task: t\ndoc_to_text: \"abc\n").expect_err("must fail");
        assert!(err.to_string().starts_with("x.yaml line 2 column"), "{err}");
    }

    #[test]
    fn group_file() {
        let g = parse_suite_yaml("g.yaml", "group: glue\ntask: [sst2, rte]\n").expect("parses");
        assert!(
            matches!(g, SuiteFile::Group(GroupSpec { ref name, ref tasks, .. }) if name == "glue" && tasks.len() == 2)
        );
        let err = parse_suite_yaml("g.yaml", "task: [sst2, rte]\n").expect_err("no group name");
        assert!(err.to_string().contains("group"), "{err}");
    }

    #[test]
    fn bad_metric_and_template() {
        let text = format!("{MINIMAL}metric_list:\n  - metric: bleu\n");
        let err = parse_suite_yaml("x.yaml", &text)
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("bleu"), "{err}");
        let text = MINIMAL.replace("{{q}}", "{{q");
        let err = parse_suite_yaml("x.yaml", &text)
            .expect_err("must fail")
            .to_string();
        assert!(
            err.starts_with("x.yaml: doc_to_text: invalid template: syntax error"),
            "{err}"
        );
    }
}
