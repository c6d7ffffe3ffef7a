//! Scoring with token-id prompts, for a served model given a `tokenizer`:
//! the pair is tokenized here exactly as lm-eval builds it
//! ([`crate::backend::request::encode_pair`], BOS by the tokenizer's own
//! rule) and sent as ids, so the server re-tokenizes nothing and the
//! continuation is the last `cont.len()` prompt positions by construction.
//! Each reply is still checked: as many positions as ids sent, and, where
//! the server names the token at a position, the id that was sent there.
//!
//! - vLLM: `/v1/completions` with `prompt_logprobs` (the prompt token's
//!   log-probability and rank at every position);
//! - SGLang: `/generate` with `input_ids`, `return_logprob` and
//!   `logprob_start_len` (only the positions from the context's last
//!   token on are computed and returned);
//! - OpenAI-compatible completions: token-array `prompt` with `echo`.

use serde_json::{json, Value};

use super::http::Client;
use crate::backend::{ChoiceScore, RequestStat};

/// The request and response shapes of a token-id API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdsApi {
    Vllm,
    Sglang,
    OpenAi,
}

/// One continuation position as the server scored it.
#[derive(Debug, Clone, PartialEq)]
struct Scored {
    logprob: f64,
    /// Whether the token was the most likely one there, when the reply says.
    greedy: Option<bool>,
}

/// The score of `cont` after `ctx` (both token ids), from one request.
pub fn score(
    client: &Client,
    api: IdsApi,
    model: Option<&str>,
    ctx: &[u32],
    cont: &[u32],
) -> Result<(ChoiceScore, RequestStat), String> {
    if ctx.is_empty() || cont.is_empty() {
        return Err(format!(
            "a pair of {} context and {} continuation tokens: nothing to score",
            ctx.len(),
            cont.len()
        ));
    }
    let ids: Vec<u32> = ctx.iter().chain(cont).copied().collect();
    let (path, body) = match api {
        IdsApi::Vllm => (
            "/v1/completions",
            json!({
                "model": model.unwrap_or(""),
                "prompt": ids,
                "max_tokens": 1,
                "temperature": 0.0,
                "prompt_logprobs": 1,
            }),
        ),
        IdsApi::Sglang => (
            "/generate",
            json!({
                "input_ids": ids,
                "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
                "return_logprob": true,
                "logprob_start_len": ctx.len() - 1,
                "top_logprobs_num": 1,
            }),
        ),
        IdsApi::OpenAi => (
            "/v1/completions",
            json!({
                "model": model.unwrap_or(""),
                "prompt": ids,
                "echo": true,
                "logprobs": 1,
                "max_tokens": 1,
                "temperature": 0.0,
            }),
        ),
    };
    let reply = client.post(path, &body).map_err(|e| e.to_string())?;
    let (scored, completion_tokens) = match api {
        IdsApi::Vllm => vllm(&reply.json, &ids, ctx.len())?,
        IdsApi::Sglang => sglang(&reply.json, &ids, ctx.len())?,
        IdsApi::OpenAi => openai_echo(&reply.json, ids.len(), ctx.len())?,
    };
    let choice = ChoiceScore {
        loglikelihood: scored.iter().map(|s| s.logprob).sum(),
        is_greedy: scored.iter().all(|s| s.greedy.unwrap_or(false)),
        n_tokens: cont.len(),
    };
    Ok((
        choice,
        RequestStat {
            ms: reply.ms,
            ttfb_ms: reply.ttfb_ms,
            prompt_tokens: ids.len(),
            completion_tokens,
        },
    ))
}

fn finite(v: Option<&Value>, what: &str) -> Result<f64, String> {
    v.and_then(Value::as_f64)
        .filter(|x| x.is_finite() && *x <= 1e-6)
        .ok_or_else(|| {
            format!(
                "{what} is not a log-probability: {}",
                v.unwrap_or(&Value::Null)
            )
        })
}

fn usage_completion(v: &Value, pointer: &str) -> usize {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .map_or(1, |n| n as usize)
}

/// vLLM's `prompt_logprobs`: one entry per prompt position (`null` first),
/// each an object from token id (as a string) to `{logprob, rank, …}`
/// holding the prompt's own token.
fn vllm(v: &Value, ids: &[u32], n_ctx: usize) -> Result<(Vec<Scored>, usize), String> {
    let arr = v
        .pointer("/choices/0/prompt_logprobs")
        .or_else(|| v.get("prompt_logprobs"))
        .and_then(Value::as_array)
        .ok_or("the reply has no `prompt_logprobs` (a vLLM server returns them; for another OpenAI-compatible server use `api: openai-completions`)")?;
    if arr.len() != ids.len() {
        return Err(format!(
            "`prompt_logprobs` has {} positions for the {} prompt tokens sent: the reply does not line up",
            arr.len(),
            ids.len()
        ));
    }
    let mut out = Vec::with_capacity(ids.len() - n_ctx);
    for (p, &id) in ids.iter().enumerate().skip(n_ctx) {
        let entry = arr[p]
            .as_object()
            .ok_or_else(|| format!("`prompt_logprobs[{p}]` is not an object"))?;
        let own = entry.get(&id.to_string()).ok_or_else(|| {
            format!("`prompt_logprobs[{p}]` does not hold the token sent there ({id}): the reply does not line up")
        })?;
        let logprob = finite(
            own.get("logprob"),
            &format!("`prompt_logprobs[{p}][{id}].logprob`"),
        )?;
        let greedy = match own.get("rank").and_then(Value::as_u64) {
            Some(rank) => Some(rank == 1),
            None => Some(
                entry
                    .values()
                    .filter_map(|e| e.get("logprob").and_then(Value::as_f64))
                    .all(|lp| lp <= logprob),
            ),
        };
        out.push(Scored { logprob, greedy });
    }
    Ok((out, usage_completion(v, "/usage/completion_tokens")))
}

/// SGLang's `meta_info.input_token_logprobs`: `[logprob, id, text]` per
/// prompt position from `logprob_start_len` on, and `input_top_logprobs`
/// the same positions' most likely tokens.
fn sglang(v: &Value, ids: &[u32], n_ctx: usize) -> Result<(Vec<Scored>, usize), String> {
    // A single request may come back as a list of one.
    let v = match v.as_array() {
        Some(a) if a.len() == 1 => &a[0],
        _ => v,
    };
    let meta = v
        .get("meta_info")
        .ok_or("the reply has no `meta_info` (is this SGLang's `/generate`?)")?;
    let lps = meta
        .get("input_token_logprobs")
        .and_then(Value::as_array)
        .ok_or("`meta_info` has no `input_token_logprobs` (was `return_logprob` ignored?)")?;
    let start = n_ctx - 1;
    if let Some(n) = meta.get("prompt_tokens").and_then(Value::as_u64) {
        if n as usize != ids.len() {
            return Err(format!(
                "`meta_info.prompt_tokens` is {n} for the {} prompt tokens sent: the reply does not line up",
                ids.len()
            ));
        }
    }
    if start + lps.len() != ids.len() {
        return Err(format!(
            "`input_token_logprobs` has {} positions from position {start} for {} prompt tokens: the reply does not line up",
            lps.len(),
            ids.len()
        ));
    }
    let tops = meta.get("input_top_logprobs").and_then(Value::as_array);
    let mut out = Vec::with_capacity(ids.len() - n_ctx);
    for (p, &id) in ids.iter().enumerate().skip(n_ctx) {
        let k = p - start;
        let e = lps[k]
            .as_array()
            .ok_or_else(|| format!("`input_token_logprobs[{k}]` is not [logprob, id, text]"))?;
        if let Some(got) = e.get(1).and_then(Value::as_u64) {
            if got != u64::from(id) {
                return Err(format!(
                    "`input_token_logprobs[{k}]` is token {got}, but {id} was sent there: the reply does not line up"
                ));
            }
        }
        let logprob = finite(e.first(), &format!("`input_token_logprobs[{k}]`"))?;
        let greedy = tops
            .and_then(|t| t.get(k))
            .and_then(|t| t.pointer("/0/1"))
            .and_then(Value::as_u64)
            .map(|top| top == u64::from(id));
        out.push(Scored { logprob, greedy });
    }
    Ok((out, usage_completion(meta, "/completion_tokens")))
}

/// OpenAI's echo of a token-array prompt: `logprobs.token_logprobs` per
/// prompt position (`null` first), then the generated token.
fn openai_echo(v: &Value, n_ids: usize, n_ctx: usize) -> Result<(Vec<Scored>, usize), String> {
    let lp = v
        .pointer("/choices/0/logprobs/token_logprobs")
        .and_then(Value::as_array)
        .ok_or("the reply has no `choices[0].logprobs.token_logprobs` (does the server support `echo` with `logprobs`?)")?;
    if let Some(n) = v.pointer("/usage/prompt_tokens").and_then(Value::as_u64) {
        if n as usize != n_ids {
            return Err(format!(
                "`usage.prompt_tokens` is {n} for the {n_ids} prompt tokens sent: the reply does not line up"
            ));
        }
    }
    if lp.len() < n_ids {
        return Err(format!(
            "the echo has {} tokens for the {n_ids} prompt tokens sent: the reply does not line up",
            lp.len()
        ));
    }
    let tops = v
        .pointer("/choices/0/logprobs/top_logprobs")
        .and_then(Value::as_array);
    let mut out = Vec::with_capacity(n_ids - n_ctx);
    for (p, entry) in lp.iter().enumerate().take(n_ids).skip(n_ctx) {
        let logprob = finite(Some(entry), &format!("`token_logprobs[{p}]`"))?;
        let greedy = tops
            .and_then(|t| t.get(p))
            .and_then(Value::as_object)
            .map(|o| o.values().filter_map(Value::as_f64).all(|x| x <= logprob));
        out.push(Scored { logprob, greedy });
    }
    Ok((out, usage_completion(v, "/usage/completion_tokens")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_positions_are_read_by_the_ids_sent() {
        let v = json!({"choices": [{"prompt_logprobs": [
            null,
            {"5": {"logprob": -1.0, "rank": 3}, "9": {"logprob": -0.5, "rank": 1}},
            {"7": {"logprob": -0.25, "rank": 1}},
        ]}]});
        let (s, _) = vllm(&v, &[1, 5, 7], 1).expect("aligned");
        assert_eq!(
            s,
            vec![
                Scored {
                    logprob: -1.0,
                    greedy: Some(false)
                },
                Scored {
                    logprob: -0.25,
                    greedy: Some(true)
                }
            ]
        );
        // The id sent is not at its position: refused.
        let e = vllm(&v, &[1, 6, 7], 1).expect_err("misaligned");
        assert!(e.contains("does not line up"), "{e}");
        // One position short: refused.
        let e = vllm(&v, &[1, 5, 7, 8], 1).expect_err("short");
        assert!(e.contains("4 prompt tokens"), "{e}");
    }

    #[test]
    fn sglang_positions_start_at_logprob_start_len() {
        // ids [2, 3 | 4, 5]; logprob_start_len = 1.
        let v = json!({"meta_info": {
            "prompt_tokens": 4, "completion_tokens": 1,
            "input_token_logprobs": [[-9.0, 3, null], [-1.5, 4, null], [-0.5, 5, null]],
            "input_top_logprobs": [[[-0.1, 8, null]], [[-1.0, 7, null]], [[-0.5, 5, null]]],
        }});
        let (s, n) = sglang(&v, &[2, 3, 4, 5], 2).expect("aligned");
        assert_eq!(n, 1);
        assert_eq!(
            s,
            vec![
                Scored {
                    logprob: -1.5,
                    greedy: Some(false)
                },
                Scored {
                    logprob: -0.5,
                    greedy: Some(true)
                }
            ]
        );
        let e = sglang(&v, &[2, 3, 4, 6], 2).expect_err("wrong id");
        assert!(e.contains("does not line up"), "{e}");
        let e = sglang(&v, &[1, 2, 3, 4, 5], 3).expect_err("count");
        assert!(e.contains("prompt_tokens"), "{e}");
    }
}
