//! Scoring documents with a candle model: a shared-context log-likelihood
//! loop that packs documents' prefix trees into forwards and reuses each
//! context's KV state for every choice.

use candle_core::Tensor;

use super::kernels::streamed::F32Activations;
use super::nn::head::TokenScore;
use super::pack::DocTree;
use super::{CausalLm, PackedHidden};
use crate::backend::request::encode_pair;
use crate::backend::{ChoiceScore, DocScore, ScoreError, Scorer, DEFAULT_PACK_TOKENS};
use crate::model::tokenizer::TextTokenizer;

impl From<candle_core::Error> for ScoreError {
    fn from(e: candle_core::Error) -> Self {
        ScoreError::Backend(Box::new(e))
    }
}

/// Scores with a candle model, reusing the context's KV cache across choices.
pub struct CandleScorer {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: TextTokenizer,
    pub(super) max_length: usize,
    /// Context tokens forwarded per chunk (bounds attention memory).
    pub(super) chunk: usize,
    /// Score all choices of a document in one forward (branches off the
    /// shared context) instead of one forward per choice.
    pub batch_choices: bool,
    /// Token budget of one packed forward in [`Scorer::score_docs`]; 0
    /// scores one document per forward.
    pub pack_tokens: usize,
    /// Prompt tokens per forward when generating (see [`GEN_CHUNK`]); 0
    /// forwards each prompt whole and
    /// reuses nothing.
    pub gen_chunk: usize,
    /// The prompt whose KV state the cache holds after a generation.
    pub(super) prompt_ids: Vec<u32>,
}

/// Prompt tokens per forward when generating, and the unit of prompt reuse
/// (see `generate`): the scoring chunk's size, so a prompt is forwarded as
/// it was before reuse existed, and each forward amortises the weights'
/// decoding over many tokens (128-token chunks made GSM8K's time to first
/// token ~20% longer).
pub const GEN_CHUNK: usize = 512;

/// A document's (context, continuation) token pairs, one per choice.
type Pairs = Vec<(Vec<u32>, Vec<u32>)>;

/// A document ready to score: its (context, continuation) token pairs and
/// the prefix tree that forwards them.
struct Encoded {
    pairs: Pairs,
    tree: DocTree,
}

impl Encoded {
    fn tokens(&self) -> usize {
        self.tree.len()
    }
}

/// A pack forwarded, waiting for the output head.
struct Forwarded {
    ids: Vec<usize>,
    pack: Vec<Encoded>,
    hidden: PackedHidden,
    /// Its forward's time.
    ms: f64,
}

/// Output-head rows gathered from several packs for one pass over the
/// head: the head's dequantization and GEMM packing (its whole vocabulary,
/// 168M weights for Gemma 3) are paid per pass, not per row.
const HEAD_ROWS: usize = 1024;

/// The scores of a pack's documents from `rest` (their targets in order),
/// each document's share of the pack's `ms` by the tokens it brought to the
/// forward (`tokens`, one per document).
fn doc_scores(
    pack: &[Encoded],
    tokens: &[usize],
    rest: &mut &[TokenScore],
    ms: f64,
) -> Vec<DocScore> {
    let total: usize = tokens.iter().sum();
    pack.iter()
        .zip(tokens)
        .map(|(e, &n)| DocScore {
            choices: e
                .pairs
                .iter()
                .map(|(_, cont)| choice_score(rest, cont.len()))
                .collect(),
            truncated: false,
            tokens_forwarded: n,
            peak_cached_tokens: total,
            shared_ms: Some(ms * n as f64 / total.max(1) as f64),
            requests: Vec::new(),
        })
        .collect()
}

impl CandleScorer {
    pub fn new(model: Box<dyn CausalLm>, tokenizer: TextTokenizer, max_length: usize) -> Self {
        Self {
            model,
            tokenizer,
            max_length,
            chunk: 512,
            batch_choices: true,
            pack_tokens: DEFAULT_PACK_TOKENS,
            gen_chunk: GEN_CHUNK,
            prompt_ids: Vec::new(),
        }
    }

    fn encode(&self, context: &str, continuations: &[String]) -> Result<Pairs, ScoreError> {
        continuations
            .iter()
            .map(|c| encode_pair(&self.tokenizer, context, c).map_err(ScoreError::from))
            .collect()
    }

    /// A document that fits the window with non-empty continuations, laid out
    /// for packing; `None` for the others (scored one by one).
    fn packable(&self, pairs: Pairs) -> Result<Encoded, Pairs> {
        let longest = pairs
            .iter()
            .map(|(c, k)| c.len() + k.len())
            .max()
            .unwrap_or(0);
        if pairs.is_empty()
            || longest > self.max_length + 1
            || pairs.iter().any(|(_, k)| k.is_empty())
        {
            return Err(pairs);
        }
        let tree = DocTree::new(pairs.iter().map(|(c, k)| (c.as_slice(), k.as_slice())));
        match tree {
            Some(tree) => Ok(Encoded { pairs, tree }),
            None => Err(pairs),
        }
    }

    /// One document alone, its compute time recorded.
    fn score_timed(&mut self, pairs: Pairs) -> Result<DocScore, ScoreError> {
        let t = std::time::Instant::now();
        let mut d = self.score_encoded(pairs)?;
        d.shared_ms = Some(t.elapsed().as_secs_f64() * 1e3);
        Ok(d)
    }

    /// Forwards the pending pack (if any) into `waiting` and empties it;
    /// runs the head over the waiting packs once they hold [`HEAD_ROWS`].
    fn flush_pack(
        &mut self,
        pack: &mut Vec<Encoded>,
        ids: &mut Vec<usize>,
        waiting: &mut Vec<Forwarded>,
        out: &mut [Option<DocScore>],
    ) -> Result<(), ScoreError> {
        if !pack.is_empty() {
            let trees: Vec<&DocTree> = pack.iter().map(|e| &e.tree).collect();
            let t0 = std::time::Instant::now();
            let hidden = self.model.hidden_packed(&trees)?;
            waiting.push(Forwarded {
                ids: std::mem::take(ids),
                pack: std::mem::take(pack),
                hidden,
                ms: t0.elapsed().as_secs_f64() * 1e3,
            });
        }
        let rows: usize = waiting.iter().map(|f| f.hidden.h.dims()[0]).sum();
        if rows >= HEAD_ROWS {
            self.finish_packs(waiting, out)?;
        }
        Ok(())
    }

    /// One pass of the output head over the rows of every waiting pack;
    /// their documents' scores go to `out`.
    fn finish_packs(
        &mut self,
        waiting: &mut Vec<Forwarded>,
        out: &mut [Option<DocScore>],
    ) -> Result<(), ScoreError> {
        if waiting.is_empty() {
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        let h = Tensor::cat(&waiting.iter().map(|f| &f.hidden.h).collect::<Vec<_>>(), 0)?;
        let (mut rows, mut targets, mut offset) = (Vec::new(), Vec::new(), 0u32);
        for f in waiting.iter() {
            rows.extend(f.hidden.rows.iter().map(|r| r + offset));
            targets.extend_from_slice(&f.hidden.targets);
            offset += f.hidden.h.dim(0)? as u32;
        }
        let scores = self.model.head().token_scores_at(&h, &rows, &targets)?;
        let head_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut rest = scores.as_slice();
        for f in waiting.drain(..) {
            // The head's time shared by targets, the pack's by tokens.
            let share = head_ms * f.hidden.targets.len() as f64 / targets.len().max(1) as f64;
            for (i, d) in f.ids.iter().zip(doc_scores(
                &f.pack,
                &f.hidden.doc_tokens,
                &mut rest,
                f.ms + share,
            )) {
                out[*i] = Some(d);
            }
        }
        Ok(())
    }

    /// Scores documents end to end in one forward.
    fn score_pack(&mut self, pack: &[Encoded]) -> Result<Vec<DocScore>, ScoreError> {
        let trees: Vec<&DocTree> = pack.iter().map(|e| &e.tree).collect();
        let t0 = std::time::Instant::now();
        let p = self.model.hidden_packed(&trees)?;
        let scores = self
            .model
            .head()
            .token_scores_at(&p.h, &p.rows, &p.targets)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(doc_scores(pack, &p.doc_tokens, &mut scores.as_slice(), ms))
    }

    fn forward_chunked(&mut self, tokens: &[u32]) -> candle_core::Result<()> {
        for piece in tokens.chunks(self.chunk) {
            self.model.forward(piece, 0)?;
        }
        Ok(())
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
        let scores = self.model.score_next(tail, cont)?;
        self.model.truncate_cache(0)?;
        Ok((choice_score(&mut scores.as_slice(), cont.len()), inp.len()))
    }
}

/// Hands `out`'s scores from `next` on to `sink` while they are there.
fn emit_ready(
    out: &mut [Option<DocScore>],
    next: &mut usize,
    sink: &mut dyn FnMut(usize, DocScore) -> Result<(), ScoreError>,
) -> Result<(), ScoreError> {
    while let Some(d) = out.get_mut(*next).and_then(Option::take) {
        sink(*next, d)?;
        *next += 1;
    }
    Ok(())
}

fn empty_score() -> ChoiceScore {
    ChoiceScore {
        loglikelihood: 0.0,
        is_greedy: true,
        n_tokens: 0,
    }
}

/// Sums the next `n` token scores (taken off the front of `rest`) into one
/// continuation's score.
fn choice_score(rest: &mut &[TokenScore], n: usize) -> ChoiceScore {
    let (mine, tail) = rest.split_at(n.min(rest.len()));
    *rest = tail;
    ChoiceScore {
        loglikelihood: mine.iter().map(|s| s.logprob).sum(),
        is_greedy: mine.iter().all(|s| s.greedy),
        n_tokens: n,
    }
}

impl Scorer for CandleScorer {
    fn score_docs(&mut self, docs: &[(&str, &[String])]) -> Result<Vec<DocScore>, ScoreError> {
        let mut all = Vec::with_capacity(docs.len());
        self.score_docs_into(docs, &mut |_, d| {
            all.push(d);
            Ok(())
        })?;
        Ok(all)
    }

    fn score_docs_into(
        &mut self,
        docs: &[(&str, &[String])],
        sink: &mut dyn FnMut(usize, DocScore) -> Result<(), ScoreError>,
    ) -> Result<(), ScoreError> {
        // Scores never come through 8-bit activations, however few rows a
        // forward has: they must not depend on packing.
        let _f32 = F32Activations::hold();
        if self.pack_tokens == 0 {
            for (i, (c, k)) in docs.iter().enumerate() {
                let pairs = self.encode(c, k)?;
                sink(i, self.score_timed(pairs)?)?;
            }
            return Ok(());
        }
        // Scores are handed over in document order as soon as they exist.
        let mut next = 0;
        let mut out: Vec<Option<DocScore>> = vec![None; docs.len()];
        let mut pack: Vec<Encoded> = Vec::new();
        let mut pack_ids: Vec<usize> = Vec::new();
        let mut waiting: Vec<Forwarded> = Vec::new();
        for (i, (context, continuations)) in docs.iter().enumerate() {
            let pairs = self.encode(context, continuations)?;
            match self.packable(pairs) {
                Ok(e) => {
                    let used: usize = pack.iter().map(Encoded::tokens).sum();
                    if !pack.is_empty() && used + e.tokens() > self.pack_tokens {
                        self.flush_pack(&mut pack, &mut pack_ids, &mut waiting, &mut out)?;
                    }
                    pack.push(e);
                    pack_ids.push(i);
                }
                Err(pairs) => out[i] = Some(self.score_timed(pairs)?),
            }
            emit_ready(&mut out, &mut next, sink)?;
        }
        self.flush_pack(&mut pack, &mut pack_ids, &mut waiting, &mut out)?;
        self.finish_packs(&mut waiting, &mut out)?;
        emit_ready(&mut out, &mut next, sink)?;
        if next < out.len() {
            return Err(ScoreError::backend("a document was not scored"));
        }
        Ok(())
    }

    fn score_doc(
        &mut self,
        context: &str,
        continuations: &[String],
    ) -> Result<DocScore, ScoreError> {
        let _f32 = F32Activations::hold();
        let pairs = self.encode(context, continuations)?;
        self.score_encoded(pairs)
    }

    fn max_length(&self) -> usize {
        self.max_length
    }

    fn kv_bytes_per_token(&self) -> Option<usize> {
        Some(self.model.info().kv_bytes_per_token)
    }

    fn throughput(&mut self) -> Option<&mut dyn crate::backend::Throughput> {
        Some(self)
    }

    fn generate(
        &mut self,
        reqs: &[crate::backend::GenRequest<'_>],
    ) -> Result<Vec<crate::backend::Generation>, ScoreError> {
        reqs.iter().map(|r| self.greedy(r)).collect()
    }
}

impl CandleScorer {
    /// One document: its choices' prefix tree in one forward; or, when that
    /// does not fit, the shared context forwarded once, then its choices as
    /// branches (or one by one when they do not fit or a choice is empty).
    fn score_encoded(&mut self, mut pairs: Pairs) -> Result<DocScore, ScoreError> {
        if self.batch_choices {
            // The choices' prefix tree in one forward, when it fits a chunk.
            match self.packable(pairs) {
                Ok(e) if e.tokens() <= self.chunk => {
                    let mut one = self.score_pack(std::slice::from_ref(&e))?;
                    return one.pop().ok_or_else(|| ScoreError::backend("no score"));
                }
                Ok(e) => pairs = e.pairs,
                Err(p) => pairs = p,
            }
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
                shared_ms: None,
                requests: Vec::new(),
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
            let targets: Vec<u32> = pairs.iter().flat_map(|(_, k)| k.iter().copied()).collect();
            let scores = self.model.score_branches(&refs, &targets)?;
            forwarded += branch_tokens;
            let mut rest = scores.as_slice();
            choices.extend(pairs.iter().map(|(_, k)| choice_score(&mut rest, k.len())));
        } else {
            for ((_, cont), inp) in pairs.iter().zip(&inputs) {
                if cont.is_empty() {
                    choices.push(empty_score());
                    continue;
                }
                let scores = self.model.score_next(inp, cont)?;
                forwarded += inp.len();
                self.model.truncate_cache(prefix)?;
                choices.push(choice_score(&mut scores.as_slice(), cont.len()));
            }
        }
        self.model.truncate_cache(0)?;
        Ok(DocScore {
            choices,
            truncated: false,
            tokens_forwarded: forwarded,
            peak_cached_tokens: peak,
            shared_ms: None,
            requests: Vec::new(),
        })
    }
}
