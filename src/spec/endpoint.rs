//! A served model in `models.yaml`: the API it speaks, where, and what it
//! costs. Checked with the rest of the registry; nothing here opens a
//! connection.

use serde::{Deserialize, Serialize};

/// The HTTP API a served model speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    /// OpenAI's `/v1/completions` with `echo` and `logprobs` (vLLM, SGLang
    /// and llama-cpp-python serve it).
    OpenaiCompletions,
    /// vLLM's OpenAI-compatible server.
    Vllm,
    /// SGLang's OpenAI-compatible server.
    Sglang,
    /// Text Generation Inference (`/generate` with `decoder_input_details`).
    Tgi,
    /// llama.cpp's `llama-server` (`/completion`, `/tokenize`): no echo, so
    /// each continuation token is teacher-forced.
    LlamaServer,
    /// A chat-only endpoint: no prompt log-probabilities.
    OpenaiChat,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::OpenaiCompletions => "openai-completions",
            Api::Vllm => "vllm",
            Api::Sglang => "sglang",
            Api::Tgi => "tgi",
            Api::LlamaServer => "llama-server",
            Api::OpenaiChat => "openai-chat",
        }
    }
}

fn one() -> usize {
    1
}

fn default_timeout_s() -> f64 {
    120.0
}

fn default_retries() -> u32 {
    4
}

/// `endpoint:` of a model entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub api: Api,
    /// Scheme, host and port, e.g. `http://127.0.0.1:8080` (no `/v1`).
    pub base_url: String,
    /// The model id the server expects in requests, where it asks for one.
    #[serde(default)]
    pub model: Option<String>,
    /// The environment variable holding the API key (read at run time,
    /// never written anywhere).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Documents in flight at once.
    #[serde(default = "one")]
    pub concurrency: usize,
    /// Seconds one request may take.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Retries of a request after a connection error, a timeout, a 429 or
    /// a 5xx (other errors fail at once).
    #[serde(default = "default_retries")]
    pub max_retries: u32,
}

/// `price:` of a served model, per million tokens.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    #[serde(default = "usd")]
    pub currency: String,
}

fn usd() -> String {
    "USD".into()
}

impl Endpoint {
    /// The first problem with these settings, as `field: what to fix`.
    pub fn check(&self) -> Result<(), String> {
        let url = self.base_url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            return Err(format!(
                "field `endpoint.base_url`: `{}` is not an http(s) URL; write e.g. http://127.0.0.1:8080",
                self.base_url
            ));
        }
        if url.ends_with("/v1") {
            return Err(format!(
                "field `endpoint.base_url`: `{}`: leave out `/v1` (the path is the API's)",
                self.base_url
            ));
        }
        if !(1..=256).contains(&self.concurrency) {
            return Err(format!(
                "field `endpoint.concurrency`: {} is not between 1 and 256",
                self.concurrency
            ));
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0 && self.timeout_s <= 86_400.0) {
            return Err(format!(
                "field `endpoint.timeout_s`: {} is not a number of seconds between 0 and 86400",
                self.timeout_s
            ));
        }
        if self.max_retries > 20 {
            return Err(format!(
                "field `endpoint.max_retries`: {} is more than 20",
                self.max_retries
            ));
        }
        if let Some(v) = &self.api_key_env {
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "field `endpoint.api_key_env`: `{v}` is not an environment variable name (write the variable's name, never the key)"
                ));
            }
        }
        Ok(())
    }
}

impl Price {
    pub fn check(&self) -> Result<(), String> {
        for (k, v) in [
            ("input_per_mtok", self.input_per_mtok),
            ("output_per_mtok", self.output_per_mtok),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!(
                    "field `price.{k}`: {v} is not a price (a number ≥ 0 per million tokens)"
                ));
            }
        }
        Ok(())
    }
}
