//! Inputs, parsed and validated: `models.yaml` ([`models`]), the variant
//! step grammar ([`steps`], the `distill` step in [`distill`]), model sources ([`sources`]) and YAML error
//! positions ([`yaml`]).
//!
//! Invariant: nothing here reads a model or a tensor; `spec` imports no
//! module of this crate outside itself.

pub mod distill;
pub mod endpoint;
pub mod models;
pub mod sources;
pub mod steps;
pub mod yaml;
