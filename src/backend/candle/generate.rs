//! Greedy generation on a candle model: the prompt forwarded in chunks,
//! then one token at a time through the KV cache, stopping at EOS, at
//! `max_gen_toks`, at a full context window, or as soon as the decoded text
//! holds a stop string (cut there, as lm-eval cuts it).
//!
//! Prompt reuse: the KV state of the last prompt stays cached, and the next
//! prompt forwards only what follows the longest whole number of
//! [`GEN_CHUNK`](super::scorer::GEN_CHUNK)s it shares with it (few-shot
//! tasks with fixed examples, long system prompts). Prompts are always
//! forwarded in chunks that start at multiples of that size, so a reused
//! chunk was computed by the very forward a fresh start runs — the same
//! tokens, after the same cached positions, in the same groups of rows —
//! and holds the same bits: the generation does not depend on which
//! request came before it.

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

/// How many leading tokens of `ids` can keep the KV state cached for
/// `cached`: whole chunks they share, short of the last token (its logits
/// start the generation).
fn reusable(ids: &[u32], cached: &[u32], chunk: usize) -> usize {
    let same = ids.iter().zip(cached).take_while(|(a, b)| a == b).count();
    let same = same.min(ids.len().saturating_sub(1));
    same / chunk * chunk
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
        // The cache holds `prompt_ids` only if nothing else used it since
        // (every other path empties it).
        let (cached, chunk) = match self.gen_chunk {
            0 => (0, ids.len().max(1)),
            c if self.model.cache_len() == self.prompt_ids.len() => {
                (reusable(&ids, &self.prompt_ids, c), c)
            }
            c => (0, c),
        };
        self.prompt_ids.clear();
        self.model.truncate_cache(cached)?;
        let rest = &ids[cached..];
        let n_chunks = rest.len().div_ceil(chunk);
        let mut logits = None;
        for (i, piece) in rest.chunks(chunk).enumerate() {
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
        // The prompt's KV state stays for the next request to reuse.
        self.model.truncate_cache(ids.len())?;
        let prompt_tokens = ids.len();
        self.prompt_ids = ids;
        let total = t0.elapsed();
        Ok(Generation {
            text,
            stop,
            prompt_tokens,
            cached_tokens: cached,
            generated_tokens: out.len(),
            truncated,
            ttft_ms: Some(first_at.as_secs_f64() * 1e3),
            decode_ms: Some((total - first_at).as_secs_f64() * 1e3),
            requests: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::reusable;

    #[test]
    fn only_whole_shared_chunks_short_of_the_last_token_are_reused() {
        let a: Vec<u32> = (0..10).collect();
        assert_eq!(reusable(&a, &[], 4), 0, "nothing cached");
        assert_eq!(reusable(&a, &a[..7], 4), 4, "7 shared: one chunk");
        assert_eq!(reusable(&a, &a[..8], 4), 8, "8 shared: two");
        let mut b = a.clone();
        b[3] = 99;
        assert_eq!(reusable(&a, &b, 4), 0, "they part in the first chunk");
        assert_eq!(
            reusable(&a, &a, 5),
            5,
            "the same prompt keeps its last token to forward"
        );
        assert_eq!(
            reusable(&a[..8], &a, 4),
            4,
            "a prompt inside the cached one"
        );
        assert_eq!(reusable(&a[..1], &a, 1), 0);
    }
}
