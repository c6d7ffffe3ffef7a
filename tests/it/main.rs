//! The integration tests, one binary (one link of the library per
//! `cargo test`): each module drives the library or the real binary.

mod browser;
mod cdp;
mod cli;
mod common;
mod distill;
mod durability;
mod fetch;
mod fidelity;
mod generation;
mod invariance;
mod kernels;
mod layout;
mod measure;
mod parquet;
mod prompt_reuse;
mod report;
mod safetensors;
mod served;
mod served_real;
mod task_reference;
mod variants;
