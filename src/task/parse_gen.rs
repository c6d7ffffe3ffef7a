//! The `generate_until` keys of a task file: `generation_kwargs`,
//! `filter_list` and the `exact_match` entry of `metric_list`, validated
//! into a [`GenerationSpec`] with one-line errors naming the file and key.

use serde::Deserialize;
use serde_json::Value as Json;

use super::error::{shown, TaskError};
use super::spec::{ExactMatchSpec, FilterPipeline, FilterStep, GenerationSpec};

/// lm-eval's default `max_gen_toks`.
pub const DEFAULT_MAX_GEN_TOKS: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGenKwargs {
    until: Option<Json>,
    max_gen_toks: Option<Json>,
    do_sample: Option<bool>,
    temperature: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFilterPipeline {
    name: String,
    filter: Vec<RawFilterStep>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilterStep {
    function: String,
    regex_pattern: Option<String>,
    group_select: Option<i64>,
    fallback: Option<String>,
}

/// The keyword arguments a `metric_list` entry may carry for `exact_match`.
#[derive(Deserialize, Default)]
pub(super) struct RawMatchKwargs {
    pub ignore_case: Option<bool>,
    pub ignore_punctuation: Option<bool>,
    pub ignore_numbers: Option<bool>,
    pub regexes_to_ignore: Option<Vec<String>>,
}

impl RawMatchKwargs {
    pub(super) fn any(&self) -> bool {
        self.ignore_case.is_some()
            || self.ignore_punctuation.is_some()
            || self.ignore_numbers.is_some()
            || self.regexes_to_ignore.is_some()
    }
}

fn err(file: &str, key: &str, message: impl Into<String>, fix: impl Into<String>) -> TaskError {
    TaskError::Spec {
        file: file.to_string(),
        key: key.to_string(),
        message: message.into(),
        fix: fix.into(),
    }
}

/// Checks that `pattern` compiles as a regular expression.
fn check_regex(file: &str, key: &str, pattern: &str) -> Result<(), TaskError> {
    regex::Regex::new(pattern).map(|_| ()).map_err(|e| {
        let reason = e.to_string();
        let reason = reason
            .lines()
            .last()
            .unwrap_or("invalid")
            .trim()
            .to_string();
        err(
            file,
            key,
            format!(
                "`{}` is not a valid regular expression ({reason})",
                shown(pattern)
            ),
            "fix the pattern (Python `re` syntax without look-around or back-references)",
        )
    })
}

/// Validates the generation keys of a `generate_until` task.
pub(super) fn generation_spec(
    file: &str,
    kwargs: Option<RawGenKwargs>,
    filters: Option<Vec<RawFilterPipeline>>,
    exact_match: RawMatchKwargs,
    fewshot_delimiter: &str,
) -> Result<GenerationSpec, TaskError> {
    let kwargs = kwargs.unwrap_or(RawGenKwargs {
        until: None,
        max_gen_toks: None,
        do_sample: None,
        temperature: None,
    });
    let until = match kwargs.until {
        // lm-eval's default stop sequence is the few-shot delimiter.
        None => vec![fewshot_delimiter.to_string()],
        Some(Json::String(s)) => vec![s],
        Some(Json::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Json::String(s) => Ok(s),
                other => Err(err(
                    file,
                    "generation_kwargs.until",
                    format!("item `{other}` is not a string"),
                    "give `until` as a string or a list of strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(err(
                file,
                "generation_kwargs.until",
                format!("`{other}` is not a string or a list of strings"),
                "give `until` as a string or a list of strings",
            ))
        }
    };
    let max_gen_toks = match kwargs.max_gen_toks {
        None => DEFAULT_MAX_GEN_TOKS,
        Some(Json::Number(n)) if n.as_u64().is_some_and(|v| v > 0) => {
            usize::try_from(n.as_u64().unwrap_or(1)).unwrap_or(usize::MAX)
        }
        Some(other) => {
            return Err(err(
                file,
                "generation_kwargs.max_gen_toks",
                format!("`{other}` is not a positive integer"),
                "give the most tokens to generate, e.g. `max_gen_toks: 256`",
            ))
        }
    };
    if kwargs.do_sample == Some(true)
        || (kwargs.do_sample.is_none() && kwargs.temperature.is_some_and(|t| t > 0.0))
    {
        return Err(err(
            file,
            "generation_kwargs.do_sample",
            "sampling is not supported (generation is greedy)",
            "set `do_sample: false` and `temperature: 0.0`",
        ));
    }
    let filters = match filters {
        None => vec![FilterPipeline {
            name: "none".into(),
            steps: vec![FilterStep::TakeFirst],
        }],
        Some(list) if list.is_empty() => {
            return Err(err(
                file,
                "filter_list",
                "empty",
                "list at least one filter pipeline, or leave `filter_list` out",
            ))
        }
        Some(list) => {
            let mut out: Vec<FilterPipeline> = Vec::with_capacity(list.len());
            for p in list {
                if out.iter().any(|q| q.name == p.name) || p.name.contains(',') {
                    return Err(err(
                        file,
                        "filter_list.name",
                        format!("`{}` is repeated or contains a comma", shown(&p.name)),
                        "give each pipeline a distinct name without commas",
                    ));
                }
                let steps = p
                    .filter
                    .into_iter()
                    .map(|s| filter_step(file, s))
                    .collect::<Result<Vec<_>, _>>()?;
                out.push(FilterPipeline {
                    name: p.name,
                    steps,
                });
            }
            out
        }
    };
    let regexes = exact_match.regexes_to_ignore.unwrap_or_default();
    for r in &regexes {
        check_regex(file, "metric_list.regexes_to_ignore", r)?;
    }
    Ok(GenerationSpec {
        until,
        max_gen_toks,
        filters,
        exact_match: ExactMatchSpec {
            ignore_case: exact_match.ignore_case.unwrap_or(false),
            ignore_punctuation: exact_match.ignore_punctuation.unwrap_or(false),
            ignore_numbers: exact_match.ignore_numbers.unwrap_or(false),
            regexes_to_ignore: regexes,
        },
    })
}

fn filter_step(file: &str, s: RawFilterStep) -> Result<FilterStep, TaskError> {
    let only_regex = |what: &str| {
        err(
            file,
            &format!("filter_list.filter.{what}"),
            format!("only the `regex` filter takes `{what}`"),
            "remove it",
        )
    };
    if s.function != "regex" {
        if s.regex_pattern.is_some() {
            return Err(only_regex("regex_pattern"));
        }
        if s.group_select.is_some() {
            return Err(only_regex("group_select"));
        }
        if s.fallback.is_some() {
            return Err(only_regex("fallback"));
        }
    }
    Ok(match s.function.as_str() {
        "regex" => {
            // lm-eval's default pattern is GSM8K's.
            let pattern = s
                .regex_pattern
                .unwrap_or_else(|| r"#### (\-?[0-9\.\,]+)".to_string());
            check_regex(file, "filter_list.filter.regex_pattern", &pattern)?;
            FilterStep::Regex {
                pattern,
                group_select: s.group_select.unwrap_or(0),
                fallback: s.fallback.unwrap_or_else(|| "[invalid]".to_string()),
            }
        }
        "take_first" => FilterStep::TakeFirst,
        "lowercase" => FilterStep::Lowercase,
        "uppercase" => FilterStep::Uppercase,
        "remove_whitespace" => FilterStep::RemoveWhitespace,
        "strip" => FilterStep::Strip,
        other => {
            return Err(err(
                file,
                "filter_list.filter.function",
                format!("unknown filter function `{}`", shown(other)),
                "use one of regex, take_first, lowercase, uppercase, remove_whitespace, strip",
            ))
        }
    })
}
