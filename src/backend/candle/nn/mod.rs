//! The shared blocks the model files compose, one per file (as candle-nn):
//! weight loading, linear layers and the output head, the MLP, embedding,
//! norm, RoPE, the KV cache and attention.
//!
//! Invariant: nothing here knows a model family; `nn` imports only
//! `kernels`, `span` and the model file's reader.

pub mod attention;
pub mod embedding;
pub mod head;
pub mod kv_cache;
pub mod linear;
pub mod loader;
pub mod mlp;
pub mod norm;
pub mod rope;
