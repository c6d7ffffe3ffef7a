//! Backends compute log-likelihoods of continuations given a context.
//!
//! The request construction shared by all backends (lm-eval's `_encode_pair`)
//! lives here; a backend only sees token ids.

pub mod candle;
pub mod scorer;

pub use scorer::{ChoiceScore, DocScore, Scorer};
