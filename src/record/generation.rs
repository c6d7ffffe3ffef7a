//! What a generation task writes: one [`GenSampleRecord`] per document
//! (keys as `../shared/tools/compare_gen.py` and lm-eval's sample logs read
//! them) and a cell's [`GenerationStats`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::LatencyStats;

/// One generated document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenSampleRecord {
    pub doc_id: usize,
    /// The full prompt as sent (before any chat template).
    pub prompt: String,
    /// The raw generation, cut at the first stop string.
    pub generation: String,
    /// `doc_to_target` as text.
    pub target: String,
    /// Each filter pipeline's answer: `{name: answer}`.
    pub filtered: Map<String, Value>,
    /// `exact_match,<filter>`: 0 or 1 per pipeline.
    #[serde(flatten)]
    pub metrics: Map<String, Value>,
    /// `eos`, `until`, `max_tokens` or `context`.
    pub stop: String,
    pub prompt_tokens: usize,
    /// Leading prompt tokens reused from an earlier request's KV state.
    #[serde(default)]
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    /// The prompt was left-truncated to leave room for the answer.
    #[serde(default)]
    pub truncated: bool,
    /// Time to the first generated token.
    pub ttft_ms: Option<f64>,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_s: Option<f64>,
    /// Wall time of the whole generation.
    pub latency_ms: Option<f64>,
}

/// How many generations ended each way.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StopCounts {
    pub eos: usize,
    pub until: usize,
    pub max_tokens: usize,
    pub context: usize,
}

impl StopCounts {
    /// Counts one stop, by its recorded name.
    pub fn add(&mut self, stop: &str) {
        match stop {
            "eos" => self.eos += 1,
            "until" => self.until += 1,
            "max_tokens" => self.max_tokens += 1,
            _ => self.context += 1,
        }
    }
}

/// A generation cell's speed and stops, over the documents generated in
/// this invocation (time to first token) and all documents (stops).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerationStats {
    /// Time to first token per document (ms; warm-up excluded).
    pub ttft: Option<LatencyStats>,
    /// Decode speed per document (tokens/s after the first token):
    /// p10, p50 and p90 over the documents that generated two or more.
    pub decode_tokens_per_s_p10: Option<f64>,
    pub decode_tokens_per_s_p50: Option<f64>,
    pub decode_tokens_per_s_p90: Option<f64>,
    /// Tokens generated in this invocation.
    pub generated_tokens: u64,
    /// How the generations ended (all documents of the cell).
    pub stops: StopCounts,
    /// Documents whose answer the first filter could not read (`[invalid]`).
    #[serde(default)]
    pub invalid: usize,
}
