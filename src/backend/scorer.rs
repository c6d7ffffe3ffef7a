//! Scoring multiple-choice documents: lm-eval's request construction
//! (`_encode_pair`) and a shared-context log-likelihood loop over a
//! [`CausalLm`].

use crate::backend::candle::CausalLm;
use crate::tokenizer::{TextTokenizer, TokenizerError};

/// Log-likelihood of one continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceScore {
    /// Sum of the continuation tokens' log-probabilities (nats).
    pub loglikelihood: f64,
    /// Whether every continuation token was the argmax.
    pub is_greedy: bool,
    pub n_tokens: usize,
}

/// Scores of all choices of one document.
#[derive(Debug, Clone, PartialEq)]
pub struct DocScore {
    pub choices: Vec<ChoiceScore>,
    /// The context had to be left-truncated to fit the model's window.
    pub truncated: bool,
    /// Tokens run through the model for this document.
    pub tokens_forwarded: usize,
    /// Most positions held in the KV cache at once for this document.
    pub peak_cached_tokens: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("model forward failed: {0}")]
    Forward(#[from] candle_core::Error),
}

/// Something that scores a context against its candidate continuations.
pub trait Scorer {
    fn score_doc(
        &mut self,
        context: &str,
        continuations: &[String],
    ) -> Result<DocScore, ScoreError>;
    /// Longest token sequence the scorer feeds the model.
    fn max_length(&self) -> usize;
    /// KV-cache bytes one cached position takes, when known.
    fn kv_bytes_per_token(&self) -> Option<usize> {
        None
    }
}

/// Token ids for one (context, continuation) pair, as lm-eval builds them:
/// trailing whitespace of the context moves to the continuation, the pair is
/// tokenized as one string and split at the context's token length.
pub fn encode_pair(
    tok: &TextTokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>), TokenizerError> {
    let trimmed = context.trim_end();
    let (context, continuation) = if trimmed.len() < context.len() {
        (
            trimmed,
            format!("{}{}", &context[trimmed.len()..], continuation),
        )
    } else {
        (context, continuation.to_string())
    };
    let with_bos = |mut ids: Vec<u32>| {
        if let (true, Some(b)) = (tok.add_bos, tok.bos_id) {
            ids.insert(0, b);
        }
        ids
    };
    if context.is_empty() {
        // lm-eval scores an empty context after a single prefix token.
        let prefix = tok.bos_id.or(tok.eos_id).into_iter().collect();
        return Ok((prefix, tok.encode(&continuation)?));
    }
    let whole = with_bos(tok.encode(&format!("{context}{continuation}"))?);
    let ctx = with_bos(tok.encode(context)?);
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    Ok((ctx, cont))
}

/// Scores with a candle model, reusing the context's KV cache across choices.
pub struct CandleScorer {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: TextTokenizer,
    max_length: usize,
    /// Context tokens forwarded per chunk (bounds attention memory).
    chunk: usize,
    /// Score all choices of a document in one forward (branches off the
    /// shared context) instead of one forward per choice.
    pub batch_choices: bool,
}

impl CandleScorer {
    pub fn new(model: Box<dyn CausalLm>, tokenizer: TextTokenizer, max_length: usize) -> Self {
        Self {
            model,
            tokenizer,
            max_length,
            chunk: 512,
            batch_choices: true,
        }
    }

    fn forward_chunked(&mut self, tokens: &[u32]) -> candle_core::Result<()> {
        for piece in tokens.chunks(self.chunk) {
            self.model.forward(piece, 0)?;
        }
        Ok(())
    }

    /// Log-probabilities of `targets` given logits rows (one row per target).
    fn gather(logits: &candle_core::Tensor, targets: &[u32]) -> candle_core::Result<ChoiceScore> {
        let rows = logits.to_vec2::<f32>()?;
        let mut ll = 0f64;
        let mut greedy = true;
        for (row, &t) in rows.iter().zip(targets) {
            let (mut best, mut best_i) = (f32::NEG_INFINITY, 0usize);
            for (i, &v) in row.iter().enumerate() {
                if v > best {
                    best = v;
                    best_i = i;
                }
            }
            let sum: f64 = row.iter().map(|&v| ((v - best) as f64).exp()).sum();
            let lse = best as f64 + sum.ln();
            ll += row[t as usize] as f64 - lse;
            greedy &= best_i == t as usize;
        }
        Ok(ChoiceScore {
            loglikelihood: ll,
            is_greedy: greedy,
            n_tokens: targets.len(),
        })
    }

    /// Scores one continuation from scratch on `ctx ++ cont`, left-truncated
    /// to the window as lm-eval does.
    fn score_alone(
        &mut self,
        ctx: &[u32],
        cont: &[u32],
    ) -> candle_core::Result<(ChoiceScore, usize)> {
        let mut all: Vec<u32> = ctx.iter().chain(cont).copied().collect();
        let keep = self.max_length + 1;
        if all.len() > keep {
            all.drain(..all.len() - keep);
        }
        let inp = &all[..all.len() - 1];
        self.model.truncate_cache(0)?;
        let m = cont.len();
        let (head, tail) = inp.split_at(inp.len() - m);
        self.forward_chunked(head)?;
        let logits = self.model.forward(tail, m)?;
        self.model.truncate_cache(0)?;
        let score = match logits {
            Some(l) => Self::gather(&l, cont)?,
            None => empty_score(),
        };
        Ok((score, inp.len()))
    }
}

fn empty_score() -> ChoiceScore {
    ChoiceScore {
        loglikelihood: 0.0,
        is_greedy: true,
        n_tokens: 0,
    }
}

impl Scorer for CandleScorer {
    fn score_doc(
        &mut self,
        context: &str,
        continuations: &[String],
    ) -> Result<DocScore, ScoreError> {
        let mut pairs = Vec::with_capacity(continuations.len());
        for c in continuations {
            pairs.push(encode_pair(&self.tokenizer, context, c)?);
        }
        let longest = pairs
            .iter()
            .map(|(c, k)| c.len() + k.len())
            .max()
            .unwrap_or(0);
        let mut choices = Vec::with_capacity(pairs.len());
        let mut forwarded = 0;
        if longest > self.max_length + 1 {
            let mut peak = 0;
            for (ctx, cont) in &pairs {
                let (s, n) = self.score_alone(ctx, cont)?;
                forwarded += n;
                peak = peak.max(n);
                choices.push(s);
            }
            return Ok(DocScore {
                choices,
                truncated: true,
                tokens_forwarded: forwarded,
                peak_cached_tokens: peak,
            });
        }
        // The context (identical for every choice) is forwarded once; each
        // choice then runs its last context token plus its own tokens.
        self.model.truncate_cache(0)?;
        let ctx = &pairs.first().map(|p| p.0.clone()).unwrap_or_default();
        let prefix = ctx.len().saturating_sub(1);
        self.forward_chunked(&ctx[..prefix])?;
        forwarded += prefix;
        let inputs: Vec<Vec<u32>> = pairs
            .iter()
            .map(|(c, cont)| {
                let mut inp = c[prefix..].to_vec();
                inp.extend_from_slice(&cont[..cont.len().saturating_sub(1)]);
                inp
            })
            .collect();
        let branch_tokens: usize = inputs.iter().map(Vec::len).sum();
        let batched = self.batch_choices
            && pairs.iter().all(|(_, k)| !k.is_empty())
            && branch_tokens <= self.chunk;
        let peak = prefix
            + if batched {
                branch_tokens
            } else {
                inputs.iter().map(Vec::len).max().unwrap_or(0)
            };
        if batched {
            // All choices in one forward, as branches off the shared context.
            let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
            let logits = self.model.forward_branches(&refs)?;
            forwarded += branch_tokens;
            let mut row = 0;
            for ((_, cont), inp) in pairs.iter().zip(&inputs) {
                choices.push(Self::gather(&logits.narrow(0, row, inp.len())?, cont)?);
                row += inp.len();
            }
        } else {
            for ((_, cont), inp) in pairs.iter().zip(&inputs) {
                if cont.is_empty() {
                    choices.push(empty_score());
                    continue;
                }
                let logits = self.model.forward(inp, cont.len())?;
                forwarded += inp.len();
                self.model.truncate_cache(prefix)?;
                choices.push(match logits {
                    Some(l) => Self::gather(&l, cont)?,
                    None => empty_score(),
                });
            }
        }
        self.model.truncate_cache(0)?;
        Ok(DocScore {
            choices,
            truncated: false,
            tokens_forwarded: forwarded,
            peak_cached_tokens: peak,
        })
    }

    fn max_length(&self) -> usize {
        self.max_length
    }

    fn kv_bytes_per_token(&self) -> Option<usize> {
        Some(self.model.info().kv_bytes_per_token)
    }
}
