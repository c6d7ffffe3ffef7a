//! Chat templates: a model's `tokenizer.chat_template` (GGUF metadata, or
//! `tokenizer_config.json` beside safetensors weights) rendered the way
//! transformers' `apply_chat_template(..., tokenize=False)` renders it:
//! Jinja with `trim_blocks` and `lstrip_blocks`, loop controls, Python
//! string methods, `raise_exception`, `strftime_now`, and a `tojson` that
//! prints as Python's `json.dumps` (no HTML escaping, `", "` and `": "`).
//!
//! transformers' sandbox is Jinja2's; minijinja is the same language, so
//! a template that uses only the language renders identically (checked
//! against transformers' output for SmolLM2 and Qwen2.5).

use std::path::Path;

use crate::model::gguf::GgufFile;
pub use crate::task::Message;
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{source_name}: chat template does not parse: {reason} — fix the template or give the model another `tokenizer:`")]
    Syntax { source_name: String, reason: String },
    #[error("{source_name}: chat template failed: {reason}")]
    Render { source_name: String, reason: String },
    #[error("{path}: {reason}")]
    Config { path: String, reason: String },
}

/// A model's chat template with the special-token strings it is rendered with.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    /// Where the template came from, for messages.
    pub source_name: String,
    pub template: String,
    pub bos_token: String,
    pub eos_token: String,
}

fn reason(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s.replace('\n', " ")
}

/// Python's `json.dumps` separators: `", "` between items, `": "` after keys.
struct PyCompact;

impl serde_json::ser::Formatter for PyCompact {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=…)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    if sort_keys == Some(true) {
        json = sort_json(json);
    }
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let pad = " ".repeat(n);
            let f = serde_json::ser::PrettyFormatter::with_indent(pad.as_bytes());
            serde::Serialize::serialize(
                &json,
                &mut serde_json::Serializer::with_formatter(&mut out, f),
            )
        }
        None => serde::Serialize::serialize(
            &json,
            &mut serde_json::Serializer::with_formatter(&mut out, PyCompact),
        ),
    };
    written.map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

fn sort_json(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut items: Vec<_> = m.into_iter().collect();
            items.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(items.into_iter().map(|(k, v)| (k, sort_json(v))).collect())
        }
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(sort_json).collect())
        }
        other => other,
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| -> Result<Value, Error> {
        use std::fmt::Write as _;
        let mut s = String::new();
        write!(s, "{}", chrono::Local::now().format(&fmt)).map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("strftime_now: bad format `{fmt}`"),
            )
        })?;
        Ok(Value::from(s))
    });
    env.add_filter("tojson", tojson);
    env
}

/// A `bos_token`/`eos_token` entry of `tokenizer_config.json`: a string or
/// an added-token object with `content`.
fn token_text(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// The chat template of an opened model: from a safetensors folder's
    /// `tokenizer_config.json`, else from the GGUF metadata.
    pub fn of_model(
        spec: &crate::spec::models::ModelSpec,
        path: &Path,
        gguf: &GgufFile,
    ) -> Result<Option<Self>, ChatError> {
        match spec.format {
            crate::spec::models::Format::Safetensors => {
                let cfg = path.join("tokenizer_config.json");
                if cfg.is_file() {
                    Self::from_tokenizer_config(&cfg)
                } else {
                    Ok(None)
                }
            }
            crate::spec::models::Format::Gguf => Ok(Self::from_gguf(gguf)),
        }
    }

    /// The template of a GGUF file, with its BOS and EOS token strings;
    /// `None` when the file carries none.
    pub fn from_gguf(g: &GgufFile) -> Option<Self> {
        let template = g.string("tokenizer.chat_template").ok()?;
        let tokens = g.strings("tokenizer.ggml.tokens").unwrap_or_default();
        let tok = |key: &str| {
            g.opt_u32(key)
                .and_then(|id| tokens.get(id as usize).cloned())
                .unwrap_or_default()
        };
        Some(Self {
            source_name: format!("{} (tokenizer.chat_template)", g.path.display()),
            template,
            bos_token: tok("tokenizer.ggml.bos_token_id"),
            eos_token: tok("tokenizer.ggml.eos_token_id"),
        })
    }

    /// The template of a `tokenizer_config.json` (its `chat_template`, or
    /// the `default` entry of a list of named templates); `None` when it
    /// has none.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>, ChatError> {
        let cfg_err = |reason: String| ChatError::Config {
            path: path.display().to_string(),
            reason,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| cfg_err(format!("cannot read: {e}")))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| cfg_err(format!("not JSON: {e}")))?;
        let template = match v.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(items)) => match items
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            {
                Some(t) => t
                    .get("template")
                    .and_then(|s| s.as_str())
                    .unwrap_or_default()
                    .to_string(),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        Ok(Some(Self {
            source_name: format!("{} (chat_template)", path.display()),
            template,
            bos_token: token_text(v.get("bos_token")),
            eos_token: token_text(v.get("eos_token")),
        }))
    }

    /// The rendered conversation, exactly as transformers renders it.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let env = environment();
        let tmpl = env
            .template_from_str(&self.template)
            .map_err(|e| ChatError::Syntax {
                source_name: self.source_name.clone(),
                reason: reason(&e),
            })?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| ChatError::Render {
            source_name: self.source_name.clone(),
            reason: reason(&e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chatml() -> ChatTemplate {
        ChatTemplate {
            source_name: "test".into(),
            template: "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'].strip() + '<|im_end|>' + '\n' }}{% endfor %}\n{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}".into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        }
    }

    #[test]
    fn trim_blocks_and_python_methods() {
        let out = chatml()
            .render(&[Message::new("user", "  hi  ")], true)
            .expect("renders");
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_and_tojson() {
        let t = ChatTemplate {
            template: "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}{{ messages | tojson }}".into(),
            ..chatml()
        };
        let out = t
            .render(&[Message::new("user", "<a> & \"b\" é")], false)
            .expect("renders");
        assert_eq!(out, r#"[{"role": "user", "content": "<a> & \"b\" é"}]"#);
        let err = t
            .render(&[Message::new("system", "x")], false)
            .expect_err("raises")
            .to_string();
        assert!(err.contains("no system") && !err.contains('\n'), "{err}");
    }
}
