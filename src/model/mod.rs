//! Model files: fetching them ([`fetch`]), reading them ([`gguf`],
//! [`safetensors`] into one [`file::ModelFile`]-like view), and their
//! tokenizer ([`tokenizer`]). [`open`] opens a fetched file for a spec.
//!
//! Invariant: nothing here runs a model; candle-core serves only as the
//! tensor and GGUF library.

pub mod chat;
pub mod fetch;
pub mod file;
pub mod gguf;
pub mod open;
pub mod safetensors;
pub mod tokenizer;
