//! Jinja rendering of `doc_to_text`, `doc_to_choice`, `doc_to_target` and
//! `description` against one document, matching lm-eval's Jinja2 setup:
//! strict undefined, trailing newlines kept, a `regex_replace` filter, the
//! Python methods lm-eval templates call (`list.index`, `str.strip`, ...),
//! and Python-style printing of values (`True`, `None`, `['a', 'b']`).
//!
//! A key that names a document field is used as that field's value, as
//! lm-eval does. A template that is exactly one `{{ expr }}` is evaluated as
//! an expression, so `{{choices.text}}` yields a list directly instead of
//! going through Python's repr and `ast.literal_eval`.

use std::fmt::Write as _;

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::Value as Json;

use super::error::{one_line, DocLocation, TaskError};
use super::pyjinja::{make_env, parse_python_list, py_repr, py_str};
use super::spec::{ChoiceSpec, TargetSpec, TaskSpec};

const TEMPLATE_FIX: &str = "fix the template or the data";

/// The compiled templates of one task.
pub(crate) struct TaskTemplates {
    env: Environment<'static>,
    text: String,
    choices: ChoicesT,
    target: TargetSpec,
    description: String,
}

enum ChoicesT {
    List(Vec<String>),
    One(String),
}

/// Template name of the `i`-th item of a `doc_to_choice` list.
fn choice_item_name(i: usize) -> String {
    format!("doc_to_choice[{i}]")
}

/// Checks that every template of `spec` compiles; errors name the file and key.
pub(crate) fn check_spec_templates(spec: &TaskSpec) -> Result<(), TaskError> {
    TaskTemplates::new(spec).map(|_| ())
}

impl TaskTemplates {
    /// Compiles the templates of `spec`.
    pub(crate) fn new(spec: &TaskSpec) -> Result<Self, TaskError> {
        let mut env = make_env();
        let syntax = |key: &str, src: &str, e: Error| TaskError::Spec {
            file: spec.source.clone(),
            key: key.to_string(),
            message: format!("invalid template: {}", error_text(&e, Some(src))),
            fix: "fix the Jinja template".to_string(),
        };
        let add =
            |env: &mut Environment<'static>, key: String, src: &str| -> Result<(), TaskError> {
                if let Some(expr) = single_expression(src) {
                    env.compile_expression(expr)
                        .map_err(|e| syntax(&key, expr, e))?;
                }
                env.add_template_owned(key.clone(), src.to_string())
                    .map_err(|e| syntax(&key, src, e))
            };
        add(&mut env, "doc_to_text".into(), &spec.doc_to_text)?;
        add(&mut env, "description".into(), &spec.description)?;
        let choices = match &spec.doc_to_choice {
            None => ChoicesT::List(Vec::new()),
            Some(ChoiceSpec::List(items)) => {
                for (i, item) in items.iter().enumerate() {
                    add(&mut env, choice_item_name(i), item)?;
                }
                ChoicesT::List(items.clone())
            }
            Some(ChoiceSpec::Template(t)) => {
                add(&mut env, "doc_to_choice".into(), t)?;
                ChoicesT::One(t.clone())
            }
        };
        if let TargetSpec::Template(t) = &spec.doc_to_target {
            add(&mut env, "doc_to_target".into(), t)?;
        }
        Ok(TaskTemplates {
            env,
            text: spec.doc_to_text.clone(),
            choices,
            target: spec.doc_to_target.clone(),
            description: spec.description.clone(),
        })
    }

    fn fail(&self, loc: &DocLocation, field: &str, src: Option<&str>, e: &Error) -> TaskError {
        let mut message = error_text(e, src);
        if e.kind() == ErrorKind::UndefinedError {
            message = message.replacen("undefined value", "undefined value (missing field?)", 1);
        }
        doc_err(loc, field, message, TEMPLATE_FIX)
    }

    fn render(
        &self,
        name: &str,
        src: &str,
        ctx: &Value,
        loc: &DocLocation,
    ) -> Result<String, TaskError> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| self.fail(loc, name, Some(src), &e))
    }

    fn eval(
        &self,
        field: &str,
        expr: &str,
        ctx: &Value,
        loc: &DocLocation,
    ) -> Result<Value, TaskError> {
        self.env
            .compile_expression(expr)
            .and_then(|e| e.eval(ctx))
            .map_err(|e| self.fail(loc, field, Some(expr), &e))
    }

    /// `description`, rendered against the evaluated document (empty when unset).
    pub(crate) fn description(
        &self,
        doc: &Json,
        ctx: &Value,
        loc: &DocLocation,
    ) -> Result<String, TaskError> {
        if self.description.is_empty() {
            return Ok(String::new());
        }
        if let Some(v) = doc.get(&self.description) {
            return Ok(json_to_text(v));
        }
        self.render("description", &self.description, ctx, loc)
    }

    /// `doc_to_text` for one document.
    pub(crate) fn text(
        &self,
        doc: &Json,
        ctx: &Value,
        loc: &DocLocation,
    ) -> Result<String, TaskError> {
        let text = match doc.get(&self.text) {
            Some(Json::String(s)) => s.clone(),
            Some(other) => {
                return Err(doc_err(
                    loc,
                    "doc_to_text",
                    format!(
                        "field `{}` is {}, not a string",
                        self.text,
                        json_kind(other)
                    ),
                    "point doc_to_text at a text field or write a template",
                ))
            }
            None => self.render("doc_to_text", &self.text, ctx, loc)?,
        };
        if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
            // lm-eval reads an all-digit doc_to_text as an index into the choices
            // (multiple-input tasks such as winogrande).
            return Err(doc_err(
                loc,
                "doc_to_text",
                format!("rendered to the number `{text}`, which lm-eval treats as a multiple-input task"),
                "multiple-input tasks are not supported; make doc_to_text produce the prompt text",
            ));
        }
        Ok(text)
    }

    /// `doc_to_target` as text, for a `generate_until` task: a field's value
    /// as Python's `str` prints it, else the rendered template.
    pub(crate) fn target_text(
        &self,
        doc: &Json,
        ctx: &Value,
        loc: &DocLocation,
    ) -> Result<String, TaskError> {
        match &self.target {
            TargetSpec::Index(i) => Ok(i.to_string()),
            TargetSpec::Template(src) => match doc.get(src) {
                Some(v) => Ok(json_to_text(v)),
                None => self.render("doc_to_target", src, ctx, loc),
            },
        }
    }

    /// `doc_to_choice` for one document.
    pub(crate) fn choices(
        &self,
        doc: &Json,
        ctx: &Value,
        loc: &DocLocation,
    ) -> Result<Vec<String>, TaskError> {
        let field = "doc_to_choice";
        let choices = match &self.choices {
            ChoicesT::List(sources) => sources
                .iter()
                .enumerate()
                .map(|(i, src)| self.render(&choice_item_name(i), src, ctx, loc))
                .collect::<Result<Vec<_>, _>>()?,
            ChoicesT::One(src) => {
                if let Some(v) = doc.get(src) {
                    json_string_list(v).map_err(|m| {
                        doc_err(loc, field, format!("field `{src}`: {m}"), TEMPLATE_FIX)
                    })?
                } else if let Some(expr) = single_expression(src) {
                    let v = self.eval(field, expr, ctx, loc)?;
                    if let Some(s) = v.as_str() {
                        parse_python_list(s).map_err(|m| doc_err(loc, field, m, TEMPLATE_FIX))?
                    } else {
                        value_string_list(&v).map_err(|m| doc_err(loc, field, m, TEMPLATE_FIX))?
                    }
                } else {
                    let s = self.render(field, src, ctx, loc)?;
                    parse_python_list(&s).map_err(|m| doc_err(loc, field, m, TEMPLATE_FIX))?
                }
            }
        };
        if choices.is_empty() {
            return Err(doc_err(loc, field, "no choices", TEMPLATE_FIX));
        }
        Ok(choices)
    }

    /// The gold index (`doc_to_target`) for one document with its `choices`.
    pub(crate) fn gold(
        &self,
        doc: &Json,
        ctx: &Value,
        choices: &[String],
        loc: &DocLocation,
    ) -> Result<usize, TaskError> {
        let field = "doc_to_target";
        let target = match &self.target {
            TargetSpec::Index(i) => Target::Index(*i as i128),
            TargetSpec::Template(src) => {
                if let Some(v) = doc.get(src) {
                    match v {
                        Json::Number(n) if n.is_i64() || n.is_u64() => {
                            Target::Index(n.as_i64().map(i128::from).unwrap_or(i128::MAX))
                        }
                        Json::String(s) => Target::Text(s.clone()),
                        // Python's bool is an int: lm-eval indexes with it.
                        Json::Bool(b) => Target::Index(i128::from(*b)),
                        other => {
                            return Err(doc_err(
                                loc,
                                field,
                                format!(
                                    "field `{src}` is {}, not an integer or a string",
                                    json_kind(other)
                                ),
                                TEMPLATE_FIX,
                            ))
                        }
                    }
                } else if let Some(expr) = single_expression(src) {
                    let v = self.eval(field, expr, ctx, loc)?;
                    if v.is_integer() {
                        Target::Index(i128::try_from(v).unwrap_or(i128::MAX))
                    } else if let Some(s) = v.as_str() {
                        Target::Text(s.to_string())
                    } else if v.kind() == ValueKind::Bool {
                        // Jinja2 renders it as `True`/`False`, matched against the choices.
                        Target::Text(py_str(&v))
                    } else {
                        return Err(doc_err(
                            loc,
                            field,
                            format!(
                                "evaluated to {} `{}`, not an index or a choice",
                                v.kind(),
                                py_str(&v)
                            ),
                            TEMPLATE_FIX,
                        ));
                    }
                } else {
                    Target::Text(self.render(field, src, ctx, loc)?)
                }
            }
        };
        let index = match target {
            Target::Index(i) => i,
            Target::Text(s) => {
                if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
                    s.parse::<i128>().unwrap_or(i128::MAX)
                } else if s.starts_with('[') && s.ends_with(']') && s.len() >= 2 {
                    return Err(doc_err(
                        loc,
                        field,
                        format!("`{s}` is a list (multiple gold targets are not supported)"),
                        TEMPLATE_FIX,
                    ));
                } else if let Some(i) = choices.iter().position(|c| *c == s) {
                    i as i128
                } else {
                    return Err(doc_err(
                        loc,
                        field,
                        format!(
                            "target `{s}` is neither an index nor one of the {} choices",
                            choices.len()
                        ),
                        TEMPLATE_FIX,
                    ));
                }
            }
        };
        match usize::try_from(index) {
            Ok(i) if i < choices.len() => Ok(i),
            _ => Err(doc_err(
                loc,
                field,
                format!(
                    "gold label {index} out of range for {} choices",
                    choices.len()
                ),
                TEMPLATE_FIX,
            )),
        }
    }
}

enum Target {
    Index(i128),
    Text(String),
}

fn doc_err(loc: &DocLocation, field: &str, message: impl Into<String>, fix: &str) -> TaskError {
    TaskError::Doc {
        location: loc.clone(),
        field: field.to_string(),
        message: one_line(&message.into()),
        fix: fix.to_string(),
    }
}

/// One-line description of a minijinja error, quoting the failing part of `src`.
fn error_text(e: &Error, src: Option<&str>) -> String {
    let mut msg = e.kind().to_string();
    if let Some(detail) = e.detail() {
        let _ = write!(msg, ": {detail}");
    }
    if let (Some(range), Some(src)) = (e.range(), src) {
        if let Some(snippet) = src.get(range) {
            if !snippet.trim().is_empty() {
                let _ = write!(msg, " at `{}`", one_line(snippet));
            }
        }
    }
    one_line(&msg)
}

/// The inner expression when `src` is exactly one `{{ ... }}`.
pub(crate) fn single_expression(src: &str) -> Option<&str> {
    let inner = src.strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix(['-', '+']).unwrap_or(inner);
    let inner = inner.strip_suffix(['-', '+']).unwrap_or(inner);
    let nested = ["{{", "}}", "{%", "%}", "{#", "#}"];
    if nested.iter().any(|n| inner.contains(n)) || inner.trim().is_empty() {
        return None;
    }
    Some(inner.trim())
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

fn json_to_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => py_repr(&Value::from_serialize(other)),
    }
}

fn json_string_list(v: &Json) -> Result<Vec<String>, String> {
    match v {
        Json::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, it)| match it {
                Json::String(s) => Ok(s.clone()),
                other => Err(format!("choice {i} is {}, not a string", json_kind(other))),
            })
            .collect(),
        other => Err(format!("is {}, not a list of strings", json_kind(other))),
    }
}

fn value_string_list(v: &Value) -> Result<Vec<String>, String> {
    if !matches!(v.kind(), ValueKind::Seq | ValueKind::Iterable) {
        return Err(format!(
            "evaluated to {} `{}`, not a list of strings",
            v.kind(),
            py_str(v)
        ));
    }
    let iter = v.try_iter().map_err(|e| one_line(&e.to_string()))?;
    iter.enumerate()
        .map(|(i, item)| match item.as_str() {
            Some(s) => Ok(s.to_string()),
            None => Err(format!(
                "choice {i} is {} `{}`, not a string",
                item.kind(),
                py_str(&item)
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_expression_detection() {
        assert_eq!(single_expression("{{choices.text}}"), Some("choices.text"));
        assert_eq!(single_expression("{{- x -}}"), Some("x"));
        assert_eq!(single_expression("{{a}} {{b}}"), None);
        assert_eq!(single_expression("Q: {{a}}"), None);
    }
}
