//! lm-eval's answer extraction and `exact_match`, on one generation: the
//! filter pipelines of a `generate_until` task ([`CompiledFilters`]) and
//! the HF-evaluate port lm-eval scores with ([`CompiledMatch`]).
//!
//! Python's `re` is followed where the `regex` crate allows: `findall`'s
//! shapes (whole match, one group, or the tuple of all groups), negative
//! `group_select`, `str.strip` with Python's whitespace. Patterns with
//! look-around or back-references are refused when the task is read.

use regex::Regex;

use super::pyjinja::py_space;
use super::spec::{ExactMatchSpec, FilterPipeline, FilterStep};

/// A regex of a task spec that failed to compile (checked when the task
/// file is read, so only a spec built by hand gets here).
#[derive(Debug, thiserror::Error)]
#[error("invalid regular expression `{pattern}`: {reason}")]
pub struct RegexError {
    pub pattern: String,
    pub reason: String,
}

fn compile(pattern: &str) -> Result<Regex, RegexError> {
    Regex::new(pattern).map_err(|e| RegexError {
        pattern: super::error::shown(pattern),
        reason: super::error::one_line(&e.to_string()),
    })
}

enum Step {
    Regex {
        re: Regex,
        group_select: i64,
        fallback: String,
    },
    TakeFirst,
    Lowercase,
    Uppercase,
    RemoveWhitespace,
    Strip,
}

/// A task's filter pipelines, compiled.
pub struct CompiledFilters {
    pipelines: Vec<(String, Vec<Step>)>,
}

impl CompiledFilters {
    pub fn new(pipelines: &[FilterPipeline]) -> Result<Self, RegexError> {
        let mut out = Vec::with_capacity(pipelines.len());
        for p in pipelines {
            let steps = p
                .steps
                .iter()
                .map(|s| {
                    Ok(match s {
                        FilterStep::Regex {
                            pattern,
                            group_select,
                            fallback,
                        } => Step::Regex {
                            re: compile(pattern)?,
                            group_select: *group_select,
                            fallback: fallback.clone(),
                        },
                        FilterStep::TakeFirst => Step::TakeFirst,
                        FilterStep::Lowercase => Step::Lowercase,
                        FilterStep::Uppercase => Step::Uppercase,
                        FilterStep::RemoveWhitespace => Step::RemoveWhitespace,
                        FilterStep::Strip => Step::Strip,
                    })
                })
                .collect::<Result<Vec<_>, RegexError>>()?;
            out.push((p.name.clone(), steps));
        }
        Ok(Self { pipelines: out })
    }

    /// Each pipeline's name and its answer for one generation, in order.
    pub fn apply(&self, generation: &str) -> Vec<(String, String)> {
        self.pipelines
            .iter()
            .map(|(name, steps)| {
                let mut s = generation.to_string();
                for step in steps {
                    s = apply_step(step, s);
                }
                (name.clone(), s)
            })
            .collect()
    }
}

fn apply_step(step: &Step, s: String) -> String {
    match step {
        Step::Regex {
            re,
            group_select,
            fallback,
        } => regex_filter(re, *group_select, fallback, &s),
        // One response per document: taking the first keeps it.
        Step::TakeFirst => s,
        Step::Lowercase => s.to_lowercase(),
        Step::Uppercase => s.to_uppercase(),
        Step::RemoveWhitespace => s.trim_start_matches(py_space).to_string(),
        Step::Strip => s.trim_matches(py_space).to_string(),
    }
}

/// Python's `re.findall`: per match, the whole match (no groups), the
/// group (one group), or every group with `""` for one that did not take
/// part (several groups).
fn findall(re: &Regex, s: &str) -> Vec<Vec<String>> {
    let groups = re.captures_len() - 1;
    re.captures_iter(s)
        .map(|c| {
            if groups == 0 {
                vec![c.get(0).map_or("", |m| m.as_str()).to_string()]
            } else {
                (1..=groups)
                    .map(|i| c.get(i).map_or("", |m| m.as_str()).to_string())
                    .collect()
            }
        })
        .collect()
}

/// lm-eval's `RegexFilter` on one response. A `group_select` past either
/// end (an IndexError in Python) gives the fallback.
fn regex_filter(re: &Regex, group_select: i64, fallback: &str, s: &str) -> String {
    let matches = findall(re, s);
    let n = matches.len() as i64;
    let idx = if group_select < 0 {
        n + group_select
    } else {
        group_select
    };
    if matches.is_empty() || idx < 0 || idx >= n {
        return fallback.to_string();
    }
    let m = &matches[idx as usize];
    let picked = if m.len() == 1 {
        Some(m[0].as_str())
    } else {
        m.iter().map(String::as_str).find(|g| !g.is_empty())
    };
    match picked {
        Some(p) => p.trim_matches(py_space).to_string(),
        None => fallback.to_string(),
    }
}

/// `exact_match` with its keyword arguments, compiled.
pub struct CompiledMatch {
    ignore: Vec<Regex>,
    spec: ExactMatchSpec,
}

/// Python's `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

impl CompiledMatch {
    pub fn new(spec: &ExactMatchSpec) -> Result<Self, RegexError> {
        Ok(Self {
            ignore: spec
                .regexes_to_ignore
                .iter()
                .map(|p| compile(p))
                .collect::<Result<_, _>>()?,
            spec: spec.clone(),
        })
    }

    fn normalize(&self, s: &str) -> String {
        let mut s = s.to_string();
        for re in &self.ignore {
            s = re.replace_all(&s, "").into_owned();
        }
        if self.spec.ignore_case {
            s = s.to_lowercase();
        }
        if self.spec.ignore_punctuation {
            s.retain(|c| !PUNCTUATION.contains(c));
        }
        if self.spec.ignore_numbers {
            s.retain(|c| !c.is_ascii_digit());
        }
        s
    }

    /// 1.0 when prediction and reference are equal after normalization, else 0.0.
    pub fn score(&self, prediction: &str, reference: &str) -> f64 {
        f64::from(u8::from(
            self.normalize(prediction) == self.normalize(reference),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gsm8k_filters() -> CompiledFilters {
        CompiledFilters::new(&[
            FilterPipeline {
                name: "strict-match".into(),
                steps: vec![
                    FilterStep::Regex {
                        pattern: r"#### (\-?[0-9\.\,]+)".into(),
                        group_select: 0,
                        fallback: "[invalid]".into(),
                    },
                    FilterStep::TakeFirst,
                ],
            },
            FilterPipeline {
                name: "flexible-extract".into(),
                steps: vec![
                    FilterStep::Regex {
                        pattern: r"(-?[$0-9.,]{2,})|(-?[0-9]+)".into(),
                        group_select: -1,
                        fallback: "[invalid]".into(),
                    },
                    FilterStep::TakeFirst,
                ],
            },
        ])
        .expect("compiles")
    }

    #[test]
    fn gsm8k_filters_as_lm_eval() {
        let f = gsm8k_filters();
        // Values worked out with Python's re.findall on the same strings.
        let got = f.apply(" She has 16 - 3 = <<16-3=13>>13 eggs.\n#### 13\n\n");
        assert_eq!(got[0], ("strict-match".into(), "13".into()));
        assert_eq!(got[1], ("flexible-extract".into(), "13".into()));
        let got = f.apply(" The answer is 5 apples and $1,200.");
        assert_eq!(got[0].1, "[invalid]");
        assert_eq!(got[1].1, "$1,200.");
        // The last match is a one-digit number: the second group.
        let got = f.apply(" 12 then 7");
        assert_eq!(got[1].1, "7");
        let got = f.apply("no numbers");
        assert_eq!(got[1].1, "[invalid]");
    }

    #[test]
    fn group_select_out_of_range_falls_back() {
        let re = Regex::new(r"(\d)").expect("regex");
        assert_eq!(regex_filter(&re, 3, "[x]", "1 2"), "[x]");
        assert_eq!(regex_filter(&re, -2, "[x]", "1 2"), "1");
        assert_eq!(regex_filter(&re, -3, "[x]", "1 2"), "[x]");
    }

    #[test]
    fn whitespace_and_case_steps() {
        let f = CompiledFilters::new(&[FilterPipeline {
            name: "p".into(),
            steps: vec![
                FilterStep::RemoveWhitespace,
                FilterStep::Uppercase,
                FilterStep::Strip,
                FilterStep::Lowercase,
            ],
        }])
        .expect("compiles");
        assert_eq!(f.apply("\n  Paris \x1c")[0].1, "paris");
    }

    #[test]
    fn exact_match_order_as_hf_evaluate() {
        let m = CompiledMatch::new(&ExactMatchSpec {
            ignore_case: true,
            ignore_punctuation: false,
            ignore_numbers: false,
            regexes_to_ignore: vec![
                ",".into(),
                r"\$".into(),
                "(?s).*#### ".into(),
                r"\.$".into(),
            ],
        })
        .expect("compiles");
        let gold = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n#### 18";
        assert_eq!(m.score("18", gold), 1.0);
        assert_eq!(m.score("$18.", gold), 1.0);
        assert_eq!(m.score("1,8", gold), 1.0);
        assert_eq!(m.score("54", gold), 0.0);
        let p = CompiledMatch::new(&ExactMatchSpec {
            ignore_punctuation: true,
            ignore_numbers: true,
            ..Default::default()
        })
        .expect("compiles");
        assert_eq!(p.score("a.b!1", "ab"), 1.0);
        assert_eq!(p.score("A", "a"), 0.0);
    }
}
