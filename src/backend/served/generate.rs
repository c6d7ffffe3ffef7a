//! Greedy generation on a served model, one request per document:
//! llama-server's `/completion`, OpenAI-style `/v1/completions` (also
//! vLLM, SGLang, llama-cpp-python), OpenAI-style `/v1/chat/completions`
//! (the prompt as one user message; the server applies its chat template),
//! and TGI's `/generate`. Servers cap stop lists (OpenAI and TGI at four),
//! so the stop strings are also applied here: the text is cut at the first
//! of any of them, as lm-eval cuts it.

use serde_json::{json, Value};

use super::http::Client;
use crate::backend::request::until_cut;
use crate::backend::{GenRequest, Generation, RequestStat, StopReason};
use crate::spec::endpoint::Api;

/// Stop strings a server is sent (OpenAI and TGI accept at most four).
const SERVER_STOPS: usize = 4;

fn text_at<'a>(v: &'a Value, ptr: &str, what: &str) -> Result<&'a str, String> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the response has no `{what}`"))
}

fn count(v: &Value, ptr: &str) -> Option<usize> {
    v.pointer(ptr).and_then(Value::as_u64).map(|n| n as usize)
}

/// One greedy generation.
pub fn generate(
    client: &Client,
    api: Api,
    model: Option<&str>,
    req: &GenRequest<'_>,
) -> Result<Generation, String> {
    let stops: Vec<&String> = req
        .until
        .iter()
        .filter(|u| !u.is_empty())
        .take(SERVER_STOPS)
        .collect();
    let with_model = |mut body: Value| {
        if let (Some(m), Some(o)) = (model, body.as_object_mut()) {
            o.insert("model".into(), m.into());
        }
        body
    };
    let (path, body) = match api {
        Api::LlamaServer => (
            "/completion",
            json!({
                "prompt": req.prompt,
                "n_predict": req.max_gen_toks,
                "temperature": 0.0,
                "stop": req.until.iter().filter(|u| !u.is_empty()).collect::<Vec<_>>(),
                "cache_prompt": true,
            }),
        ),
        Api::Tgi => (
            "/generate",
            json!({
                "inputs": req.prompt,
                "parameters": {
                    "max_new_tokens": req.max_gen_toks,
                    "do_sample": false,
                    "stop": stops,
                    "details": true,
                },
            }),
        ),
        Api::OpenaiChat => (
            "/v1/chat/completions",
            with_model(json!({
                "messages": match req.messages {
                    Some(m) => json!(m),
                    None => json!([{"role": "user", "content": req.prompt}]),
                },
                "max_tokens": req.max_gen_toks,
                "temperature": 0.0,
                "stop": stops,
            })),
        ),
        Api::OpenaiCompletions | Api::Vllm | Api::Sglang => (
            "/v1/completions",
            with_model(json!({
                "prompt": req.prompt,
                "max_tokens": req.max_gen_toks,
                "temperature": 0.0,
                "stop": stops,
            })),
        ),
    };
    let r = client.post(path, &body).map_err(|e| e.to_string())?;
    let v = &r.json;
    // (text, stop, prompt tokens, generated tokens, server's prompt and decode ms)
    let (text, stop, n_prompt, n_gen, timings) = match api {
        Api::LlamaServer => {
            let stop = match v.get("stop_type").and_then(Value::as_str) {
                Some("word") => StopReason::Until,
                Some("limit") => StopReason::MaxTokens,
                _ => StopReason::Eos,
            };
            let timings = v
                .pointer("/timings/prompt_ms")
                .and_then(Value::as_f64)
                .zip(v.pointer("/timings/predicted_ms").and_then(Value::as_f64));
            (
                text_at(v, "/content", "content")?,
                stop,
                count(v, "/tokens_evaluated"),
                count(v, "/tokens_predicted"),
                timings,
            )
        }
        Api::Tgi => {
            let stop = match v.pointer("/details/finish_reason").and_then(Value::as_str) {
                Some("length") => StopReason::MaxTokens,
                Some("stop_sequence") => StopReason::Until,
                _ => StopReason::Eos,
            };
            (
                text_at(v, "/generated_text", "generated_text")?,
                stop,
                v.pointer("/details/prefill")
                    .and_then(Value::as_array)
                    .map(Vec::len),
                count(v, "/details/generated_tokens"),
                None,
            )
        }
        _ => {
            let ptr = if api == Api::OpenaiChat {
                "/choices/0/message/content"
            } else {
                "/choices/0/text"
            };
            // vLLM and SGLang name the stop string matched (`null` at EOS).
            let stop = match v
                .pointer("/choices/0/finish_reason")
                .and_then(Value::as_str)
            {
                Some("length") => StopReason::MaxTokens,
                _ if v
                    .pointer("/choices/0/stop_reason")
                    .is_some_and(Value::is_string) =>
                {
                    StopReason::Until
                }
                _ => StopReason::Eos,
            };
            (
                text_at(v, ptr, &ptr[1..].replace('/', "."))?,
                stop,
                count(v, "/usage/prompt_tokens"),
                count(v, "/usage/completion_tokens"),
                None,
            )
        }
    };
    let mut text = text.to_string();
    let mut stop = stop;
    if let Some(cut) = until_cut(&text, req.until) {
        text.truncate(cut);
        stop = StopReason::Until;
    }
    let n_gen = n_gen.unwrap_or(0);
    Ok(Generation {
        text,
        stop,
        prompt_tokens: n_prompt.unwrap_or(0),
        // llama-server's prompt cache; OpenAI-style servers' usage details.
        cached_tokens: count(v, "/tokens_cached")
            .or_else(|| count(v, "/usage/prompt_tokens_details/cached_tokens"))
            .unwrap_or(0),
        generated_tokens: n_gen,
        truncated: v.get("truncated").and_then(Value::as_bool).unwrap_or(false),
        // The server's own timings where it reports them; else the
        // response's headers stand for the first token (not streamed).
        ttft_ms: Some(timings.map_or(r.ttfb_ms, |t| t.0)),
        decode_ms: timings.map(|t| t.1),
        requests: vec![RequestStat {
            ms: r.ms,
            ttfb_ms: r.ttfb_ms,
            prompt_tokens: n_prompt.unwrap_or(0),
            completion_tokens: n_gen,
        }],
    })
}
