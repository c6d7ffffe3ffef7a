//! `models.yaml`: the model registry. Serde types, validation with errors
//! naming the file, line and key, and lookup by name. No I/O beyond reading
//! the file itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::spec::sources::{FetchSpec, Source};

/// The registry shipped in the binary (the repository's `models.yaml`).
pub const BUILTIN_MODELS_YAML: &str = include_str!("../../models.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: model `{model}`: {message}")]
    Invalid {
        file: String,
        model: String,
        message: String,
    },
    #[error("unknown model `{name}` in {file}; known models: {known} (add it to models.yaml or pass --models FILE)")]
    Unknown {
        name: String,
        file: String,
        known: String,
    },
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
}

/// Storage format of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Gguf,
    Safetensors,
}

/// The engine that runs a model (`engine:` in `models.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// The built-in CPU engine: a GGUF file or safetensors folder scored in
    /// this process.
    #[default]
    Local,
    /// A model behind an HTTP endpoint (set by `endpoint:`).
    Served,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Local => "local",
            Engine::Served => "served",
        }
    }
}

/// How weights are computed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// The file's own (quantized) types kept in memory; matmuls over many
    /// rows dequantize a slab at a time for the f32 GEMM, matmuls over a few
    /// rows use candle's quantized kernels (see
    /// `backend::candle::WeightMode::Auto`).
    #[default]
    Quantized,
    /// Every matmul through the quantized kernels (activations quantized to
    /// 8 bits inside the dot product, as llama.cpp does); slower for
    /// Q4_1/Q5_0/Q5_1, whose candle kernels are scalar.
    #[serde(rename = "quantized-strict")]
    QuantizedStrict,
    /// Dequantize every tensor to f32 at load.
    F32,
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "quantized" | "q" | "native" => Ok(Dtype::Quantized),
            "quantized-strict" => Ok(Dtype::QuantizedStrict),
            "f32" | "float32" => Ok(Dtype::F32),
            _ => Err(format!(
                "unknown dtype `{s}` (use f32, quantized or quantized-strict)"
            )),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::Quantized => "quantized",
            Dtype::QuantizedStrict => "quantized-strict",
            Dtype::F32 => "f32",
        })
    }
}

/// One entry of `models:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default)]
    pub description: Option<String>,
    /// The engine that runs it (default: the built-in one; `served` with
    /// an `endpoint`).
    #[serde(default)]
    pub engine: Engine,
    /// A served model: where and how to reach it (no file of its own).
    #[serde(default)]
    pub endpoint: Option<crate::spec::endpoint::Endpoint>,
    /// What a served model's tokens cost.
    #[serde(default)]
    pub price: Option<crate::spec::endpoint::Price>,
    #[serde(default)]
    pub format: Format,
    /// The model file's name in the cache (empty for a variant).
    #[serde(default)]
    pub file: String,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub dtype: Dtype,
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    #[serde(default)]
    pub context_length: Option<usize>,
    #[serde(default)]
    pub sources: Vec<Source>,
    /// Safetensors folders: sha256 of individual files fetched from the Hub.
    #[serde(default)]
    pub sha256_files: BTreeMap<String, String>,
    /// A compression variant: the model it is derived from …
    #[serde(default)]
    pub parent: Option<String>,
    /// … and the steps applied to it, in order (see `variant::spec`).
    #[serde(default)]
    pub steps: Vec<serde_json::Value>,
    /// A student model: its teacher, for side-by-side comparison.
    #[serde(default)]
    pub distilled_from: Option<String>,
    /// `steps` parsed (filled by validation).
    #[serde(skip)]
    pub parsed_steps: Vec<crate::spec::steps::Step>,
}

impl ModelSpec {
    pub fn is_variant(&self) -> bool {
        self.parent.is_some()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    #[serde(default)]
    default: Option<String>,
    models: BTreeMap<String, ModelSpec>,
}

/// A parsed registry.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Where it came from (a path, or `<built-in models.yaml>`).
    pub origin: String,
    pub default: Option<String>,
    pub models: BTreeMap<String, ModelSpec>,
}

impl Registry {
    pub fn builtin() -> Result<Self, ModelsError> {
        Self::parse(BUILTIN_MODELS_YAML, "<built-in models.yaml>")
    }

    pub fn load(path: &Path) -> Result<Self, ModelsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelsError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ModelsError> {
        let file: ModelsFile = serde_saphyr::from_str(text).map_err(|e| ModelsError::Parse {
            file: origin.to_string(),
            message: crate::spec::yaml::yaml_error_line(origin, &e),
        })?;
        let mut reg = Self {
            origin: origin.to_string(),
            default: file.default,
            models: file.models,
        };
        reg.validate()?;
        Ok(reg)
    }

    fn validate(&mut self) -> Result<(), ModelsError> {
        let invalid = |model: &str, message: String| ModelsError::Invalid {
            file: self.origin.clone(),
            model: model.to_string(),
            message,
        };
        for (name, m) in self.models.iter_mut() {
            if m.parent.is_none() && !m.steps.is_empty() {
                return Err(invalid(
                    name,
                    "field `steps` needs `parent: MODEL` (the model the steps start from)".into(),
                ));
            }
            m.parsed_steps =
                crate::spec::steps::parse_steps(&m.steps).map_err(|e| invalid(name, e))?;
        }
        self.validate_lineage()?;
        for (name, m) in self.models.iter_mut() {
            Self::validate_served(m).map_err(|e| invalid(name, e))?;
        }
        for (name, m) in &self.models {
            if m.engine == Engine::Served {
                self.check_served_tokenizer(m)
                    .map_err(|e| invalid(name, e))?;
            }
        }
        for (name, m) in &self.models {
            let parent = m.parent.as_deref().and_then(|p| self.models.get(p));
            if parent.is_some_and(|p| p.engine == Engine::Served) {
                return Err(invalid(
                    name,
                    "field `parent`: a served model has no weights to build a variant from; name a local model".into(),
                ));
            }
        }
        for (name, m) in &self.models {
            if m.is_variant() || m.engine == Engine::Served {
                continue;
            }
            if let Some(sha) = &m.sha256 {
                if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(invalid(
                        name,
                        format!("field `sha256`: `{sha}` is not 64 hex digits"),
                    ));
                }
            }
            if m.file.is_empty() {
                return Err(invalid(
                    name,
                    "field `file`: missing (name the model file, or give `parent: MODEL` and `steps` for a variant)".into(),
                ));
            }
            if m.file.contains('/') || m.file.contains('\\') {
                return Err(invalid(
                    name,
                    format!(
                        "field `file`: `{}` must be a plain file name (no directories)",
                        m.file
                    ),
                ));
            }
            if m.format == Format::Safetensors && m.sha256.is_some() {
                return Err(invalid(
                    name,
                    "field `sha256`: a safetensors model is a folder; pin files with `sha256_files: {FILE: HEX}`"
                        .into(),
                ));
            }
        }
        if let Some(d) = &self.default {
            if !self.models.contains_key(d) {
                return Err(invalid(
                    d,
                    "field `default` names no model in `models`".into(),
                ));
            }
        }
        Ok(())
    }

    /// A served model: an endpoint that checks out and none of a file's
    /// keys; `engine` follows from `endpoint`.
    fn validate_served(m: &mut ModelSpec) -> Result<(), String> {
        if let Some(p) = &m.price {
            p.check()?;
        }
        let Some(ep) = &m.endpoint else {
            if m.engine == Engine::Served {
                return Err("field `engine`: `served` needs `endpoint: {api, base_url, …}`".into());
            }
            if m.price.is_some() {
                return Err("field `price`: only a served model (with `endpoint`) has a price per token; remove it".into());
            }
            return Ok(());
        };
        ep.check()?;
        let own: Vec<&str> = [
            (!m.file.is_empty()).then_some("file"),
            m.sha256.is_some().then_some("sha256"),
            (!m.sources.is_empty()).then_some("sources"),
            (m.format != Format::Gguf).then_some("format"),
            m.parent.is_some().then_some("parent"),
            (m.dtype != Dtype::default()).then_some("dtype"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let Some(f) = own.first() {
            return Err(format!(
                "field `{f}`: a served model (with `endpoint`) has no {f}; remove it, or remove `endpoint` to run a file locally"
            ));
        }
        m.engine = Engine::Served;
        Ok(())
    }

    /// A served model's `tokenizer`: a local model of this file (its
    /// vocabulary) or a path to a `tokenizer.json`, on an API that takes
    /// token-id prompts.
    fn check_served_tokenizer(&self, m: &ModelSpec) -> Result<(), String> {
        let (Some(t), Some(ep)) = (&m.tokenizer, &m.endpoint) else {
            return Ok(());
        };
        use crate::spec::endpoint::Api;
        match ep.api {
            Api::Vllm | Api::Sglang | Api::OpenaiCompletions => {}
            Api::LlamaServer => {
                return Err(
                    "field `tokenizer`: llama-server tokenizes with its own `/tokenize`; remove it"
                        .into(),
                )
            }
            Api::Tgi => {
                return Err(
                    "field `tokenizer`: TGI's `/generate` takes text, not token ids; remove it"
                        .into(),
                )
            }
            Api::OpenaiChat => {
                return Err(
                    "field `tokenizer`: a chat endpoint takes messages, not token ids; remove it"
                        .into(),
                )
            }
        }
        let name = t.to_string_lossy();
        if let Some(other) = self.models.get(name.as_ref()) {
            if other.engine == Engine::Served {
                return Err(format!(
                    "field `tokenizer`: `{name}` is a served model; name a local model (its vocabulary is read from its file) or a tokenizer.json path"
                ));
            }
        } else if t.extension().is_none_or(|e| e != "json") {
            return Err(format!(
                "field `tokenizer`: `{name}` is neither a model of this file nor a `.json` path; name a local model or a tokenizer.json"
            ));
        }
        Ok(())
    }

    /// Variants: a parent that exists, no file of their own, no cycle;
    /// students: a teacher that exists and is not themselves.
    fn validate_lineage(&self) -> Result<(), ModelsError> {
        let invalid = |model: &str, message: String| ModelsError::Invalid {
            file: self.origin.clone(),
            model: model.to_string(),
            message,
        };
        let known = || self.models.keys().cloned().collect::<Vec<_>>().join(", ");
        for (name, m) in &self.models {
            if let Some(t) = &m.distilled_from {
                if m.is_variant() {
                    return Err(invalid(name, "field `distilled_from`: a variant's relation is its `parent`; declare the student as an ordinary model with its own file".into()));
                }
                if t == name || !self.models.contains_key(t) {
                    return Err(invalid(
                        name,
                        format!("field `distilled_from`: `{t}` is not another model of this file (known: {})", known()),
                    ));
                }
            }
            for (i, step) in m.parsed_steps.iter().enumerate() {
                let crate::spec::steps::Step::Distill(d) = step else {
                    continue;
                };
                let at = format!("field `steps[{i}].distill.teacher`");
                match self.models.get(&d.teacher) {
                    None => {
                        return Err(invalid(
                            name,
                            format!("{at}: no model `{}` in this file (known: {})", d.teacher, known()),
                        ))
                    }
                    Some(t) if t.engine == Engine::Served => {
                        return Err(invalid(
                            name,
                            format!("{at}: `{}` is served; a teacher's full next-token distributions come from local weights", d.teacher),
                        ))
                    }
                    Some(_) if self.depends_on(&d.teacher, name) => {
                        return Err(invalid(
                            name,
                            format!("{at}: `{}` is built from `{name}` itself; name a model that does not depend on the student", d.teacher),
                        ))
                    }
                    Some(_) => {}
                }
            }
            let Some(parent) = &m.parent else { continue };
            let own: Vec<&str> = [
                (!m.file.is_empty()).then_some("file"),
                m.sha256.is_some().then_some("sha256"),
                (!m.sources.is_empty()).then_some("sources"),
                (m.format != Format::Gguf).then_some("format"),
                (!m.sha256_files.is_empty()).then_some("sha256_files"),
                m.tokenizer.is_some().then_some("tokenizer"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if let Some(f) = own.first() {
                return Err(invalid(
                    name,
                    format!("field `{f}`: a variant (with `parent`) is built from its parent and has no {f} of its own; remove it"),
                ));
            }
            if !self.models.contains_key(parent) {
                return Err(invalid(
                    name,
                    format!(
                        "field `parent`: no model `{parent}` in this file (known: {})",
                        known()
                    ),
                ));
            }
            let mut chain = vec![name.as_str()];
            let mut cur = parent.as_str();
            loop {
                if chain.contains(&cur) {
                    chain.push(cur);
                    return Err(invalid(
                        name,
                        format!("field `parent`: cycle {}; a variant chain must end at a model with a file", chain.join(" → ")),
                    ));
                }
                chain.push(cur);
                match self.models.get(cur).and_then(|m| m.parent.as_deref()) {
                    Some(p) => cur = p,
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Whether building `model` needs `other` (through parents and
    /// distillation teachers), or is `other`.
    fn depends_on(&self, model: &str, other: &str) -> bool {
        let mut todo = vec![model];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(m) = todo.pop() {
            if m == other {
                return true;
            }
            if !seen.insert(m) {
                continue;
            }
            let Some(spec) = self.models.get(m) else {
                continue;
            };
            todo.extend(spec.parent.as_deref());
            for s in &spec.parsed_steps {
                if let crate::spec::steps::Step::Distill(d) = s {
                    todo.push(&d.teacher);
                }
            }
        }
        false
    }

    pub fn get(&self, name: &str) -> Result<&ModelSpec, ModelsError> {
        self.models.get(name).ok_or_else(|| ModelsError::Unknown {
            name: name.to_string(),
            file: self.origin.clone(),
            known: self.models.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// What the fetcher needs to obtain `name`'s file.
    pub fn fetch_spec(&self, name: &str) -> Result<FetchSpec, ModelsError> {
        let m = self.get(name)?;
        if let Some(ep) = &m.endpoint {
            return Err(ModelsError::Invalid {
                file: self.origin.clone(),
                model: name.to_string(),
                message: format!(
                    "is served ({} at {}): there is no file to fetch",
                    ep.api.name(),
                    ep.base_url
                ),
            });
        }
        if let Some(p) = &m.parent {
            return Err(ModelsError::Invalid {
                file: self.origin.clone(),
                model: name.to_string(),
                message: format!("is a variant of `{p}`: it is built from its parent (`slmbench variants {name}`), not fetched"),
            });
        }
        Ok(FetchSpec {
            name: name.to_string(),
            file_name: m.file.clone(),
            sha256: m.sha256.clone(),
            sources: m.sources.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registry_parses() {
        let r = Registry::builtin().expect("built-in models.yaml");
        assert_eq!(r.default.as_deref(), Some("smollm2-135m-instruct"));
        for m in [
            "smollm2-135m-instruct",
            "gemma3-270m",
            "qwen2.5-coder-1.5b-instruct",
        ] {
            assert!(r.get(m).is_ok(), "{m}");
        }
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = Registry::parse(
            "models:\n  a:\n    file: x.gguf\n    colour: red\n",
            "m.yaml",
        )
        .expect_err("unknown key");
        let s = e.to_string();
        assert!(
            s.contains("m.yaml") && s.contains("line 4") && s.contains("colour"),
            "{s}"
        );
        assert_eq!(s.lines().count(), 1);
    }

    #[test]
    fn bad_sha_and_unknown_model() {
        let e = Registry::parse(
            "models:\n  a:\n    file: x.gguf\n    sha256: abc\n",
            "m.yaml",
        )
        .expect_err("sha");
        assert!(e.to_string().contains("sha256"));
        let r = Registry::parse("models:\n  a:\n    file: x.gguf\n", "m.yaml").expect("ok");
        let e = r.get("b").expect_err("unknown");
        assert!(e.to_string().contains("known models: a"));
    }
}
