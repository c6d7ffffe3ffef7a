//! The candle backend: loads GGUF models on CPU and scores continuations
//! with an all-positions forward, reusing each document's context KV state
//! for every choice.
//!
//! Add a model family: write `models/<family>.rs` with a `Model`
//! implementing [`CausalLm`], then map its `general.architecture` in
//! [`load`].

pub mod bench;
mod generate;
pub mod kernels;
pub mod models;
pub mod nn;
pub mod open;
pub mod pack;
pub mod scorer;
pub mod span;
#[cfg(test)]
mod tests;

pub use nn::loader::WeightMode;

use std::path::Path;

use candle_core::Tensor;

use crate::model::gguf::{GgufError, GgufFile};
use nn::head::TokenScore;
use nn::linear::Linear;
use nn::loader::Loader;
use pack::DocTree;
use span::Span;

/// Errors raised while loading a model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: architecture `{arch}` is not supported (supported: llama, qwen2, gemma3)")]
    Architecture { path: String, arch: String },
    #[error("model setup failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Facts about a loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub architecture: String,
    pub n_layer: usize,
    pub hidden: usize,
    pub vocab: usize,
    pub context_length: usize,
    /// KV-cache bytes one token occupies (f32 keys and values, all layers).
    pub kv_bytes_per_token: usize,
    /// Weights as loaded (count, bytes held, non-zeros).
    pub weights: nn::loader::WeightStats,
}

/// Hidden states of a packed forward, ready for the output head.
pub struct PackedHidden {
    /// `[rows, hidden]`: each row that predicts a target, once.
    pub h: Tensor,
    /// For each target, its row of `h`.
    pub rows: Vec<u32>,
    /// The targets, documents and then choices in order.
    pub targets: Vec<u32>,
    /// Tokens forwarded for each document (see [`pack::Packed::doc_tokens`]).
    pub doc_tokens: Vec<usize>,
}

/// A causal LM with a KV cache that can be cut back to a shared prefix.
pub trait CausalLm: Send {
    /// Runs `tokens` placed as `span` says after the cached positions,
    /// appending them to the cache, and returns the final-normed hidden
    /// states `[n_out, hidden]` of the span's output rows, or else of the
    /// last `n_out` tokens: the input of [`Self::head`].
    fn forward_hidden(
        &mut self,
        tokens: &[u32],
        span: &Span,
        n_out: usize,
    ) -> candle_core::Result<Option<Tensor>>;

    /// The output head (hidden states to logits).
    fn head(&self) -> &Linear;

    /// Runs `tokens` right after the cached positions and returns the logits
    /// `[n_out, vocab]` of the last `n_out` of them.
    fn forward(&mut self, tokens: &[u32], n_out: usize) -> candle_core::Result<Option<Tensor>> {
        let span = Span::causal(self.cache_len(), tokens.len());
        match self.forward_hidden(tokens, &span, n_out)? {
            Some(h) => self.head().forward(&h).map(Some),
            None => Ok(None),
        }
    }

    /// Runs `tokens` right after the cached positions; the last
    /// `targets.len()` of them are scored against `targets` (the token that
    /// follows each), the head's logits folded away slab by slab.
    fn score_next(
        &mut self,
        tokens: &[u32],
        targets: &[u32],
    ) -> candle_core::Result<Vec<TokenScore>> {
        let span = Span::causal(self.cache_len(), tokens.len());
        match self.forward_hidden(tokens, &span, targets.len())? {
            Some(h) => self.head().token_scores(&h, targets),
            None => Ok(Vec::new()),
        }
    }

    /// Runs several continuations of the cached prefix in one forward (each
    /// sees the cache and its own earlier tokens) and scores every token
    /// against `targets` (branches concatenated, one target per token); the
    /// cache is left as it was.
    fn score_branches(
        &mut self,
        branches: &[&[u32]],
        targets: &[u32],
    ) -> candle_core::Result<Vec<TokenScore>> {
        let past = self.cache_len();
        let lens: Vec<usize> = branches.iter().map(|b| b.len()).collect();
        let tokens: Vec<u32> = branches.iter().flat_map(|b| b.iter().copied()).collect();
        let span = Span::branches(past, &lens)?;
        let out = self.forward_hidden(&tokens, &span, tokens.len());
        self.truncate_cache(past)?;
        match out? {
            Some(h) => self.head().token_scores(&h, targets),
            None => candle_core::bail!("no tokens to score"),
        }
    }

    /// The final-normed hidden states of several documents' prefix trees
    /// (see [`DocTree`], merged by [`Span::packed`]) forwarded
    /// together with nothing cached, at the rows that predict a target
    /// (the head runs on them later, over several packs' rows at once).
    /// The cache is left empty.
    fn hidden_packed(&mut self, docs: &[&DocTree]) -> candle_core::Result<PackedHidden> {
        self.truncate_cache(0)?;
        let p = Span::packed(docs)?;
        let out = self.forward_hidden(&p.tokens, &p.span, 0);
        self.truncate_cache(0)?;
        match out? {
            Some(h) => Ok(PackedHidden {
                h,
                rows: p.rows,
                targets: p.targets,
                doc_tokens: p.doc_tokens,
            }),
            None => candle_core::bail!("no tokens to score"),
        }
    }

    /// Number of cached positions.
    fn cache_len(&self) -> usize;
    /// Drops cached positions from `len` on.
    fn truncate_cache(&mut self, len: usize) -> candle_core::Result<()>;
    fn info(&self) -> &ModelInfo;
}

/// Sets candle's compute thread count.
///
/// candle's quantized kernels run on a pool whose idle workers spin 25,000
/// times before parking; between those and rayon's workers (GEMM,
/// dequantization) that oversubscribes small machines, so the spin is kept
/// short; an explicit `CANDLE_BARRIER_POOL_SPIN_LIMIT` wins.
pub fn set_threads(n: usize) {
    std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
}

/// `cause`'s message, without the backtrace candle appends to its errors
/// when `RUST_BACKTRACE` is set.
pub fn error_text(cause: &(dyn std::error::Error + 'static)) -> String {
    match cause.downcast_ref::<candle_core::Error>() {
        Some(candle_core::Error::WithBacktrace { inner, .. }) => inner.to_string(),
        _ => cause.to_string(),
    }
}

/// The kernel set in use and how it was chosen (see [`kernels::simd`]).
pub fn kernels() -> String {
    let set = kernels::simd::active();
    let how = if std::env::var_os(kernels::simd::ENV).is_some_and(|v| !v.is_empty()) {
        kernels::simd::ENV
    } else {
        "detected"
    };
    format!("{} ({how})", set.name())
}

/// Loads a GGUF model, choosing the model file by `general.architecture`.
pub fn load(gguf: &mut GgufFile, mode: WeightMode) -> Result<Box<dyn CausalLm>, LoadError> {
    let arch = gguf.architecture()?;
    let mut loader = Loader::new(gguf, mode);
    Ok(match arch.as_str() {
        "llama" | "qwen2" => Box::new(models::llama::Model::load(&mut loader, &arch)?),
        "gemma3" => Box::new(models::gemma3::Model::load(&mut loader)?),
        _ => {
            return Err(LoadError::Architecture {
                path: loader.gguf.path.display().to_string(),
                arch,
            })
        }
    })
}

/// Reads only the header to tell a file's architecture.
pub fn architecture_of(path: &Path) -> Result<String, GgufError> {
    GgufFile::open(path)?.architecture()
}
