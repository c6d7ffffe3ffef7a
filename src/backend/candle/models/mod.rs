//! One file per model family, each the same shape (as candle-transformers):
//! `Config`, the layer's parts, then the public `Model` implementing
//! [`super::CausalLm`].
//!
//! Invariant: a model file imports only `nn`, `span` and `pack`.

pub mod gemma3;
pub mod llama;
