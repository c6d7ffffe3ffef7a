//! `slmbench bench`'s timing on a candle model: prompt processing (one
//! forward over the prompt from an empty cache) and greedy decoding with the
//! KV cache.

use std::time::Instant;

use super::scorer::CandleScorer;
use super::CausalLm;
use crate::backend::{ScoreError, Throughput};

impl Throughput for CandleScorer {
    fn vocab(&self) -> usize {
        self.model.info().vocab
    }

    fn time_pp(&mut self, prompt: &[u32]) -> Result<f64, ScoreError> {
        Ok(pp(self.model.as_mut(), prompt)?)
    }

    fn time_tg(&mut self, first: u32, n: usize) -> Result<(f64, Vec<u32>), ScoreError> {
        Ok(tg(self.model.as_mut(), first, n)?)
    }
}

/// Prompt processing: seconds for one forward over `prompt` from an empty cache.
fn pp(model: &mut dyn CausalLm, prompt: &[u32]) -> candle_core::Result<f64> {
    model.truncate_cache(0)?;
    let t = Instant::now();
    for (i, chunk) in prompt.chunks(512).enumerate() {
        let last = (i + 1) * 512 >= prompt.len();
        model.forward(chunk, usize::from(last))?;
    }
    let s = t.elapsed().as_secs_f64();
    model.truncate_cache(0)?;
    Ok(s)
}

/// Greedy decoding of `n` tokens after `first`; returns seconds and the tokens.
fn tg(model: &mut dyn CausalLm, first: u32, n: usize) -> candle_core::Result<(f64, Vec<u32>)> {
    model.truncate_cache(0)?;
    let mut tok = first;
    let mut out = Vec::with_capacity(n);
    let t = Instant::now();
    for _ in 0..n {
        let logits = model
            .forward(&[tok], 1)?
            .ok_or_else(|| candle_core::Error::Msg("no logits".into()))?;
        tok = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        out.push(tok);
    }
    let s = t.elapsed().as_secs_f64();
    model.truncate_cache(0)?;
    Ok((s, out))
}
