//! The engine seam. A backend scores a document's continuations given its
//! context ([`Scorer`]), on strings: it owns its tokenizer and its model.
//! [`open`] turns an obtained model into a [`Loaded`] scorer and its record;
//! it is the only place that names an engine.
//!
//! Add an engine: a folder beside `candle/` with a type implementing
//! [`Scorer`], one arm in [`open`] (see ARCHITECTURE.md).

pub mod candle;
pub mod request;
pub mod served;

use crate::model::tokenizer::TokenizerError;
use crate::obtain::Obtained;
use crate::record::ModelRecord;
use crate::spec::models::{Dtype, Engine, ModelSpec};

/// Log-likelihood of one continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceScore {
    /// Sum of the continuation tokens' log-probabilities (nats).
    pub loglikelihood: f64,
    /// Whether every continuation token was the argmax.
    pub is_greedy: bool,
    pub n_tokens: usize,
}

/// One request a served model answered for a document.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RequestStat {
    /// From sending the request to the end of the response.
    pub ms: f64,
    /// From sending the request to the response's headers.
    pub ttfb_ms: f64,
    /// Tokens of the prompt sent (what a per-token price bills).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
}

/// Scores of all choices of one document.
#[derive(Debug, Clone, PartialEq)]
pub struct DocScore {
    pub choices: Vec<ChoiceScore>,
    /// The context had to be left-truncated to fit the model's window.
    pub truncated: bool,
    /// Tokens run through the model for this document.
    pub tokens_forwarded: usize,
    /// Most positions held in the KV cache at once for this document.
    pub peak_cached_tokens: usize,
    /// Compute time attributed to this document by [`Scorer::score_docs`]:
    /// its own forwards' time, or, when it shared a packed forward, that
    /// forward's time × its share of the tokens.
    pub shared_ms: Option<f64>,
    /// The requests a served model answered for this document (empty for
    /// a local engine).
    pub requests: Vec<RequestStat>,
}

/// A scoring failure, engine-neutral: the tokenizer's, or the engine's own
/// error boxed.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("model forward failed: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The run was interrupted (SIGINT/SIGTERM); what was reported is kept.
    #[error("interrupted")]
    Interrupted,
}

impl ScoreError {
    /// An engine's error (or a message) as a scoring failure.
    pub fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ScoreError::Backend(e.into())
    }
}

/// One greedy generation asked of a backend.
#[derive(Debug, Clone, Copy)]
pub struct GenRequest<'a> {
    /// The prompt, sent as text (a local engine adds BOS as the model expects).
    pub prompt: &'a str,
    /// Stop strings: the text is cut at the first occurrence of any.
    pub until: &'a [String],
    /// Most tokens to generate.
    pub max_gen_toks: usize,
    /// The conversation behind the prompt, for an engine that takes
    /// messages ([`Scorer::takes_messages`]) under `--apply-chat-template`.
    pub messages: Option<&'a [crate::task::Message]>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced its end-of-sequence token.
    Eos,
    /// A stop string appeared; the text is cut there.
    Until,
    /// `max_gen_toks` tokens were generated.
    MaxTokens,
    /// The model's context window was full.
    Context,
}

/// One generated answer and its timing.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated text, cut at the first stop string (not included).
    pub text: String,
    pub stop: StopReason,
    /// Tokens of the prompt as the model saw it.
    pub prompt_tokens: usize,
    /// Leading prompt tokens whose KV state came from an earlier request's
    /// (a local engine's prompt reuse, or a server's prompt cache where it
    /// reports one) instead of being forwarded again.
    pub cached_tokens: usize,
    /// Tokens generated (the EOS token not counted).
    pub generated_tokens: usize,
    /// The prompt was left-truncated to leave room for `max_gen_toks`.
    pub truncated: bool,
    /// From the start of the request to the first generated token.
    pub ttft_ms: Option<f64>,
    /// From the first generated token to the last.
    pub decode_ms: Option<f64>,
    /// The requests a served model answered (empty for a local engine).
    pub requests: Vec<RequestStat>,
}

impl Generation {
    /// Tokens per second after the first token, when measurable.
    pub fn decode_tokens_per_s(&self) -> Option<f64> {
        let ms = self.decode_ms?;
        (self.generated_tokens > 1 && ms > 0.0)
            .then(|| (self.generated_tokens - 1) as f64 * 1e3 / ms)
    }
}

/// Something that scores a context against its candidate continuations.
pub trait Scorer {
    fn score_doc(
        &mut self,
        context: &str,
        continuations: &[String],
    ) -> Result<DocScore, ScoreError>;
    /// Scores several documents, in order; a scorer may pack them into
    /// fewer forwards. The default scores them one at a time.
    fn score_docs(&mut self, docs: &[(&str, &[String])]) -> Result<Vec<DocScore>, ScoreError> {
        docs.iter().map(|(c, k)| self.score_doc(c, k)).collect()
    }
    /// Scores several documents, handing each score to `sink` (document
    /// index, score) as soon as it and every earlier one are done, so the
    /// caller can write it before the next is computed. A sink error stops
    /// the call. The default scores them all, then hands them over.
    fn score_docs_into(
        &mut self,
        docs: &[(&str, &[String])],
        sink: &mut dyn FnMut(usize, DocScore) -> Result<(), ScoreError>,
    ) -> Result<(), ScoreError> {
        for (i, d) in self.score_docs(docs)?.into_iter().enumerate() {
            sink(i, d)?;
        }
        Ok(())
    }
    /// Longest token sequence the scorer feeds the model.
    fn max_length(&self) -> usize;
    /// KV-cache bytes one cached position takes, when known.
    fn kv_bytes_per_token(&self) -> Option<usize> {
        None
    }
    /// Whether the model computes in this process, so that this process's
    /// memory and energy are the model's. `false` for a served model: its
    /// cells record them as unavailable, never as the client's.
    fn computes_locally(&self) -> bool {
        true
    }
    /// Documents to hand over per [`Self::score_docs`] call: results are
    /// written after each call, so a failure loses at most these.
    fn docs_per_call(&self) -> usize {
        64
    }
    /// Greedy generation, one answer per request, in order. The default
    /// says the engine cannot generate.
    fn generate(&mut self, reqs: &[GenRequest<'_>]) -> Result<Vec<Generation>, ScoreError> {
        let _ = reqs;
        Err(ScoreError::backend(
            "this engine does not generate text; run generate_until tasks on a local model or a completions endpoint",
        ))
    }
    /// Whether the engine takes conversations and applies the chat template
    /// itself (a chat endpoint); else prompts come rendered.
    fn takes_messages(&self) -> bool {
        false
    }
    /// Requests to hand over per [`Self::generate`] call (samples are
    /// written after each call).
    fn gen_per_call(&self) -> usize {
        1
    }
    /// The engine's throughput timing for `slmbench bench`, when it has one.
    fn throughput(&mut self) -> Option<&mut dyn Throughput> {
        None
    }
}

/// Prompt-processing and greedy-decoding timing, llama-bench style.
pub trait Throughput {
    /// Token ids are drawn from `[10, vocab)`.
    fn vocab(&self) -> usize;
    /// Seconds for one forward over `prompt` from an empty cache.
    fn time_pp(&mut self, prompt: &[u32]) -> Result<f64, ScoreError>;
    /// Greedy decoding of `n` tokens after `first`: seconds and the tokens.
    fn time_tg(&mut self, first: u32, n: usize) -> Result<(f64, Vec<u32>), ScoreError>;
}

/// What a backend is opened with, besides the model itself.
#[derive(Debug, Clone, Copy)]
pub struct BackendOptions {
    /// Overrides the spec's `dtype` (how the weights are computed with).
    pub dtype: Option<Dtype>,
    /// Token budget of one packed forward (0 = one document per forward),
    /// for engines that pack documents.
    pub pack_tokens: usize,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            dtype: None,
            pack_tokens: DEFAULT_PACK_TOKENS,
        }
    }
}

/// Default token budget of a packed forward: past the point where the
/// matmuls run at full speed, short of where the block-diagonal attention
/// (quadratic in the packed length) costs more than it saves.
pub const DEFAULT_PACK_TOKENS: usize = 512;

/// A model opened by a backend: its scorer and its provenance record.
pub struct Loaded {
    pub scorer: Box<dyn Scorer + Send>,
    pub record: ModelRecord,
    /// The model's chat template, when it has one and prompts are rendered
    /// here (not for a served model).
    pub chat: Option<crate::model::chat::ChatTemplate>,
}

/// Errors opening a model in a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Open(#[from] crate::model::open::OpenError),
    #[error(transparent)]
    Engine(Box<dyn std::error::Error + Send + Sync>),
}

/// Sizes the compute threads to `n`: rayon's pool (GEMM, dequantization)
/// and each engine's own.
pub fn set_threads(n: usize) {
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    candle::set_threads(n);
}

/// `cause`'s message without the stack trace an engine may attach to it
/// (candle does when `RUST_BACKTRACE` is set).
pub fn error_text(cause: &(dyn std::error::Error + 'static)) -> String {
    candle::error_text(cause)
}

/// The local engine's kernel set and how it was chosen, for fingerprints
/// (`avx2 (detected)`, `scalar (SLMBENCH_KERNELS)`).
pub fn kernels() -> String {
    candle::kernels()
}

/// `Err` with a one-line message when `SLMBENCH_KERNELS` names a kernel
/// set this build or CPU cannot use.
pub fn check_kernels() -> Result<(), String> {
    candle::kernels::simd::check_env().map(|_| ())
}

/// Opens an obtained model in the engine its spec names.
pub fn open(
    spec: &ModelSpec,
    got: &Obtained,
    opts: &BackendOptions,
) -> Result<Loaded, BackendError> {
    match spec.engine {
        Engine::Local => candle::open::open(spec, got, opts),
        Engine::Served => served::open(spec, got, opts),
    }
}
