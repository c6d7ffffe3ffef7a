//! Greedy generation on a candle model: the prompt forwarded in chunks,
//! then one token at a time through the KV cache, stopping at EOS, at
//! `max_gen_toks`, at a full context window, or as soon as the decoded text
//! holds a stop string (cut there, as lm-eval cuts it).

use std::time::Instant;

use candle_core::Tensor;

use super::scorer::CandleScorer;
use crate::backend::request::until_cut;
use crate::backend::{GenRequest, Generation, ScoreError, StopReason};

/// The greedy pick: the first index of the largest logit (torch's argmax).
fn argmax(logits: &Tensor) -> Result<u32, ScoreError> {
    let v: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    let mut best = 0usize;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

impl CandleScorer {
    pub(super) fn greedy(&mut self, req: &GenRequest<'_>) -> Result<Generation, ScoreError> {
        let t0 = Instant::now();
        let mut ids = self.tokenizer.encode(req.prompt)?;
        if let (true, Some(b)) = (self.tokenizer.add_bos, self.tokenizer.bos_id) {
            ids.insert(0, b);
        }
        // lm-eval leaves max_gen_toks of the window for the answer.
        let room = self.max_length.saturating_sub(req.max_gen_toks).max(1);
        let truncated = ids.len() > room;
        if truncated {
            ids.drain(..ids.len() - room);
        }
        if ids.is_empty() {
            // An empty prompt starts from BOS (or EOS), as lm-eval's context does.
            ids.extend(self.tokenizer.bos_id.or(self.tokenizer.eos_id));
        }
        let mut until: Vec<String> = req.until.to_vec();
        if let Some(eos) = self.tokenizer.eos_id {
            // lm-eval adds the EOS token's text to the stop strings.
            until.push(self.tokenizer.decode(&[eos])?);
        }
        self.model.truncate_cache(0)?;
        let n_chunks = ids.len().div_ceil(self.chunk);
        let mut logits = None;
        for (i, piece) in ids.chunks(self.chunk).enumerate() {
            logits = self.model.forward(piece, usize::from(i + 1 == n_chunks))?;
        }
        let mut next = match logits {
            Some(l) => argmax(&l)?,
            None => return Err(ScoreError::backend("the prompt produced no logits")),
        };
        let first_at = t0.elapsed();
        let mut out: Vec<u32> = Vec::new();
        let mut text = String::new();
        let stop = loop {
            if Some(next) == self.tokenizer.eos_id {
                break StopReason::Eos;
            }
            out.push(next);
            text = self.tokenizer.decode_text(&out)?;
            if let Some(cut) = until_cut(&text, &until) {
                text.truncate(cut);
                break StopReason::Until;
            }
            if out.len() >= req.max_gen_toks {
                break StopReason::MaxTokens;
            }
            if self.model.cache_len() + 1 >= self.max_length {
                break StopReason::Context;
            }
            let l = self
                .model
                .forward(&[next], 1)?
                .ok_or_else(|| ScoreError::backend("decoding produced no logits"))?;
            next = argmax(&l)?;
        };
        self.model.truncate_cache(0)?;
        let total = t0.elapsed();
        Ok(Generation {
            text,
            stop,
            prompt_tokens: ids.len(),
            generated_tokens: out.len(),
            truncated,
            ttft_ms: Some(first_at.as_secs_f64() * 1e3),
            decode_ms: Some((total - first_at).as_secs_f64() * 1e3),
            requests: Vec::new(),
        })
    }
}
