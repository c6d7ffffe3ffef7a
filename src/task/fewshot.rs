//! Few-shot example selection, replicating lm-eval 0.4.13's `ContextSampler`
//! (`default`: seeded `random.Random(seed).sample`) and `FirstNSampler`
//! (`first_n`), including when and how the evaluated document is excluded.
//!
//! The random draws are CPython's exactly (see [`crate::pyrandom`]): one
//! sampler, seeded once per task, is consumed document after document in
//! evaluation order, so the same seed and `--limit` give lm-eval's prompts.

use serde_json::Value as Json;

use super::spec::{SamplerKind, TaskSpec};
use crate::pyrandom::PyRandom;

/// Draws few-shot examples (as indices into the pool) for successive documents.
pub(crate) struct FewshotSampler<'a> {
    pool: &'a [Json],
    kind: SamplerKind,
    rng: PyRandom,
}

/// Whether lm-eval passes the evaluated document to the sampler to be
/// excluded. lm-eval 0.4.13 does so when `fewshot_split == test_split`,
/// comparing the configured keys (so also when both are unset); we follow
/// that rule rather than comparing the splits actually read, because it also
/// decides whether `n` or `n + 1` documents are drawn.
pub(crate) fn excludes_eval_doc(spec: &TaskSpec) -> bool {
    spec.fewshot_split == spec.test_split
}

impl<'a> FewshotSampler<'a> {
    /// A sampler over `pool` seeded like lm-eval's `set_fewshot_seed(seed)`.
    pub(crate) fn new(pool: &'a [Json], kind: SamplerKind, seed: u64) -> Self {
        FewshotSampler {
            pool,
            kind,
            rng: PyRandom::new(seed),
        }
    }

    /// The few-shot examples for one document, as indices into the pool.
    /// `eval_doc` is the evaluated document when it must be excluded.
    /// The error text says why `n` examples cannot be had.
    pub(crate) fn sample(
        &mut self,
        n: usize,
        eval_doc: Option<&Json>,
    ) -> Result<Vec<usize>, String> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let too_few = |available: usize| {
            format!("{n} few-shot examples requested but the pool has only {available}")
        };
        match self.kind {
            SamplerKind::FirstN => {
                let pool: Vec<usize> = (0..self.pool.len())
                    .filter(|&i| eval_doc.is_none_or(|d| !py_eq(&self.pool[i], d)))
                    .collect();
                if n > pool.len() {
                    return Err(too_few(pool.len()));
                }
                Ok(pool[..n].to_vec())
            }
            SamplerKind::Random => {
                let len = self.pool.len();
                let Some(doc) = eval_doc else {
                    return self.rng.sample_indices(len, n).ok_or_else(|| too_few(len));
                };
                // lm-eval draws n + 1 and drops copies of the evaluated document.
                let drawn = self
                    .rng
                    .sample_indices(len, n + 1)
                    .ok_or_else(|| too_few(len.saturating_sub(1)))?;
                let kept: Vec<usize> = drawn
                    .into_iter()
                    .filter(|&i| !py_eq(&self.pool[i], doc))
                    .take(n)
                    .collect();
                if kept.len() == n {
                    return Ok(kept);
                }
                // Several copies of the document were drawn: resample from the
                // pool without any of them (lm-eval 0.4.13's fallback).
                let rest: Vec<usize> = (0..len).filter(|&i| !py_eq(&self.pool[i], doc)).collect();
                let picks = self
                    .rng
                    .sample_indices(rest.len(), n)
                    .ok_or_else(|| too_few(rest.len()))?;
                Ok(picks.into_iter().map(|i| rest[i]).collect())
            }
        }
    }
}

/// Python's `==` on JSON-like values (`1 == 1.0`, `True == 1`).
pub(crate) fn py_eq(a: &Json, b: &Json) -> bool {
    fn num(v: &Json) -> Option<f64> {
        match v {
            Json::Number(n) => n.as_f64(),
            Json::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            _ => None,
        }
    }
    match (a, b) {
        (Json::Number(x), Json::Number(y)) if x == y => true,
        (Json::Number(x), Json::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(i), Some(j), _, _) => i == j,
                (_, _, Some(i), Some(j)) => i == j,
                _ => num(a) == num(b),
            }
        }
        (Json::Number(_) | Json::Bool(_), Json::Number(_) | Json::Bool(_)) => num(a) == num(b),
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(n: usize) -> Vec<Json> {
        (0..n).map(|i| json!({"i": i})).collect()
    }

    #[test]
    fn random_matches_cpython_sample() {
        // CPython: r = random.Random(1234); r.sample(range(400), 2); r.sample(range(400), 3)
        let docs = pool(400);
        let mut s = FewshotSampler::new(&docs, SamplerKind::Random, 1234);
        assert_eq!(s.sample(2, None), Ok(vec![398, 225]));
        assert_eq!(s.sample(3, None), Ok(vec![59, 3, 46]));
    }

    #[test]
    fn excluding_draws_one_more_and_drops_the_doc() {
        // random.Random(1234).sample(range(400), 3) == [398, 225, 59]
        let docs = pool(400);
        let mut s = FewshotSampler::new(&docs, SamplerKind::Random, 1234);
        assert_eq!(s.sample(2, Some(&json!({"i": 225.0}))), Ok(vec![398, 59]));
        let mut s = FewshotSampler::new(&docs, SamplerKind::Random, 1234);
        assert_eq!(s.sample(2, Some(&json!({"i": 7}))), Ok(vec![398, 225]));
    }

    #[test]
    fn first_n_skips_the_doc() {
        let docs = pool(5);
        let mut s = FewshotSampler::new(&docs, SamplerKind::FirstN, 1234);
        assert_eq!(s.sample(3, Some(&json!({"i": 1}))), Ok(vec![0, 2, 3]));
        assert!(s.sample(6, None).is_err());
    }
}
