//! Exact teacher forcing on llama.cpp's `llama-server`, which refuses
//! `echo`: the pair is tokenized by the server's `/tokenize` as lm-eval
//! builds it, then for each continuation token one `/completion` request
//! sends the context and the continuation so far as token ids, asks for one
//! token with `n_probs: 1`, and forces the target with `logit_bias`. The
//! server reports the target's log-probability under the raw distribution
//! (before any sampler, so the bias does not touch it) and the most likely
//! token, which says whether the target was greedy. The shared prefix stays
//! in the server's prompt cache, so each request computes one new token.
//! Cost: one request per continuation token.

use serde_json::{json, Value};

use super::http::Client;
use crate::backend::{ChoiceScore, RequestStat};

/// A bias that makes the target the sampled token whatever its logit.
const FORCE: f64 = 1.0e4;

/// The server's token ids for `text`; `special` adds BOS when the model
/// asks for it.
pub fn tokenize(client: &Client, text: &str, special: bool) -> Result<Vec<u32>, String> {
    let r = client
        .post(
            "/tokenize",
            &json!({"content": text, "add_special": special, "parse_special": false}),
        )
        .map_err(|e| e.to_string())?;
    r.json
        .get("tokens")
        .and_then(Value::as_array)
        .ok_or("`/tokenize` returned no `tokens`")?
        .iter()
        .map(|t| {
            t.as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| format!("`/tokenize` returned a token that is not an id: {t}"))
        })
        .collect()
}

/// lm-eval's `_encode_pair` on the server's tokenizer: trailing whitespace
/// of the context moves to the continuation; the pair is tokenized whole
/// and split at the context's length. BOS comes from the server's own
/// `add_special` (what the model's metadata asks for).
pub fn encode_pair(
    client: &Client,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>), String> {
    let trimmed = context.trim_end();
    let (context, continuation) = (
        trimmed,
        format!("{}{continuation}", &context[trimmed.len()..]),
    );
    let ctx = tokenize(client, context, true)?;
    if ctx.is_empty() {
        return Err(
            "the context has no tokens and the model adds no BOS: nothing predicts the first token"
                .into(),
        );
    }
    let whole = tokenize(client, &format!("{context}{continuation}"), true)?;
    if whole.len() <= ctx.len() {
        return Err(format!(
            "the pair has {} tokens, no more than the context's {}: the continuation has none",
            whole.len(),
            ctx.len()
        ));
    }
    let cont = whole[ctx.len()..].to_vec();
    Ok((ctx, cont))
}

/// One forced step: the log-probability of `target` after `prefix`, and
/// whether it was the most likely token, with the request's figures.
pub fn step(
    client: &Client,
    prefix: &[u32],
    target: u32,
) -> Result<(f64, bool, RequestStat), String> {
    let body = json!({
        "prompt": prefix,
        "n_predict": 1,
        "n_probs": 1,
        "temperature": 0.0,
        "logit_bias": [[target, FORCE]],
        "cache_prompt": true,
        "post_sampling_probs": false,
    });
    let r = client
        .post("/completion", &body)
        .map_err(|e| e.to_string())?;
    let p = r
        .json
        .pointer("/completion_probabilities/0")
        .ok_or("no `completion_probabilities` (is this llama-server with `n_probs`?)")?;
    let id = p.get("id").and_then(Value::as_u64);
    if id != Some(u64::from(target)) {
        return Err(format!(
            "asked to force token {target}, the server produced {}",
            id.map_or("none".into(), |i| i.to_string())
        ));
    }
    let logprob = p
        .get("logprob")
        .and_then(Value::as_f64)
        .ok_or("no `logprob` for the forced token")?;
    let top = p
        .pointer("/top_logprobs/0/id")
        .and_then(Value::as_u64)
        .ok_or("no `top_logprobs`")?;
    let stat = RequestStat {
        ms: r.ms,
        ttfb_ms: r.ttfb_ms,
        prompt_tokens: prefix.len(),
        completion_tokens: 1,
    };
    Ok((logprob, top == u64::from(target), stat))
}

/// A continuation's score, token by token after `ctx`, with one request's
/// figures per token.
pub fn score(
    client: &Client,
    ctx: &[u32],
    cont: &[u32],
) -> Result<(ChoiceScore, Vec<RequestStat>), String> {
    let mut prefix = ctx.to_vec();
    let (mut sum, mut greedy, mut stats) = (0.0, true, Vec::with_capacity(cont.len()));
    for &t in cont {
        let (lp, g, stat) = step(client, &prefix, t)?;
        sum += lp;
        greedy &= g;
        stats.push(stat);
        prefix.push(t);
    }
    Ok((
        ChoiceScore {
            loglikelihood: sum,
            is_greedy: greedy,
            n_tokens: cont.len(),
        },
        stats,
    ))
}
