//! Scoring by echo: the server scores the prompt `context + continuation`
//! and returns each prompt token with its log-probability (OpenAI's
//! `/v1/completions` with `echo`, vLLM, SGLang, llama-cpp-python; TGI's
//! `/generate` with `decoder_input_details`). The continuation's tokens are
//! found by the prompt's token count and the tokens' text, never by
//! dropping the last entry; a response that does not line up is an error.

use serde_json::{json, Value};

use super::http::Client;
use crate::backend::{ChoiceScore, RequestStat};

/// One prompt token as the server returned it.
#[derive(Debug, Clone, PartialEq)]
pub struct EchoToken {
    pub text: String,
    /// `None` for the first token (nothing predicts it).
    pub logprob: Option<f64>,
    /// Whether it was the most likely token there, when the server says.
    pub greedy: Option<bool>,
}

/// The request and response shapes of an echo API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoApi {
    OpenAi,
    Tgi,
}

/// The scores of `continuation` after `context`, from one request.
pub fn score(
    client: &Client,
    api: EchoApi,
    model: Option<&str>,
    context: &str,
    continuation: &str,
) -> Result<(ChoiceScore, RequestStat), String> {
    let prompt = format!("{context}{continuation}");
    let (path, body) = match api {
        EchoApi::OpenAi => (
            "/v1/completions",
            json!({
                "model": model.unwrap_or(""),
                "prompt": prompt,
                "echo": true,
                "logprobs": 1,
                "max_tokens": 1,
                "temperature": 0.0,
            }),
        ),
        EchoApi::Tgi => (
            "/generate",
            json!({
                "inputs": prompt,
                "parameters": {"max_new_tokens": 1, "details": true, "decoder_input_details": true},
            }),
        ),
    };
    let reply = client.post(path, &body).map_err(|e| e.to_string())?;
    let (tokens, n_prompt) = match api {
        EchoApi::OpenAi => {
            let (tokens, n) = openai_tokens(&reply.json)?;
            check_generation_echoed(&reply.json, &tokens, &prompt)?;
            (tokens, n)
        }
        EchoApi::Tgi => tgi_tokens(&reply.json)?,
    };
    let choice = align(&tokens, n_prompt, context, continuation)?;
    let completion_tokens = reply
        .json
        .pointer("/usage/completion_tokens")
        .and_then(Value::as_u64)
        .map_or(1, |n| n as usize);
    Ok((
        choice,
        RequestStat {
            ms: reply.ms,
            ttfb_ms: reply.ttfb_ms,
            prompt_tokens: n_prompt,
            completion_tokens,
        },
    ))
}

/// OpenAI's `choices[0].logprobs` and `usage.prompt_tokens`.
pub fn openai_tokens(v: &Value) -> Result<(Vec<EchoToken>, usize), String> {
    let lp = v
        .pointer("/choices/0/logprobs")
        .filter(|l| !l.is_null())
        .ok_or("no `choices[0].logprobs` (does the server support `echo` with `logprobs`?)")?;
    let texts = lp
        .get("tokens")
        .and_then(Value::as_array)
        .ok_or("no `logprobs.tokens`")?;
    let lps = lp
        .get("token_logprobs")
        .and_then(Value::as_array)
        .ok_or("no `logprobs.token_logprobs`")?;
    if texts.len() != lps.len() {
        return Err(format!(
            "{} tokens but {} token_logprobs",
            texts.len(),
            lps.len()
        ));
    }
    let tops = lp.get("top_logprobs").and_then(Value::as_array);
    let tokens: Vec<EchoToken> = texts
        .iter()
        .zip(lps)
        .enumerate()
        .map(|(i, (t, l))| {
            let text = t.as_str().unwrap_or("").to_string();
            let greedy = tops
                .and_then(|tt| tt.get(i))
                .and_then(Value::as_object)
                .and_then(|m| {
                    let best = m
                        .iter()
                        .filter_map(|(k, v)| v.as_f64().map(|f| (k, f)))
                        .max_by(|a, b| a.1.total_cmp(&b.1))?;
                    Some(best.0 == &text)
                });
            EchoToken {
                text,
                logprob: l.as_f64(),
                greedy,
            }
        })
        .collect();
    // The prompt's tokens are the first `prompt_tokens`; the rest were generated.
    let n_prompt = v
        .pointer("/usage/prompt_tokens")
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .ok_or(
            "no `usage.prompt_tokens`: cannot tell the prompt's tokens from the generated ones",
        )?;
    if n_prompt > tokens.len() {
        return Err(format!(
            "usage.prompt_tokens is {n_prompt} but only {} tokens came back",
            tokens.len()
        ));
    }
    Ok((tokens, n_prompt))
}

/// An OpenAI echo lists the generated tokens after the prompt's. When the
/// reply's text runs past the prompt but its tokens stop at the prompt's
/// end, the server has dropped one entry and paired every other token
/// with the distribution of the position after it: llama-cpp-python on a
/// model that adds no BOS (its issue #1983; measured with SmolLM2 and
/// 0.3.36: each prompt token's value is the next position's). Every score
/// would be one position off, so the reply is refused.
pub fn check_generation_echoed(
    v: &Value,
    tokens: &[EchoToken],
    prompt: &str,
) -> Result<(), String> {
    let Some(text) = v.pointer("/choices/0/text").and_then(Value::as_str) else {
        return Ok(());
    };
    let joined: String = tokens.iter().map(|t| t.text.as_str()).collect();
    if text.len() > prompt.len() && text.starts_with(prompt) && joined.ends_with(prompt) {
        return Err(format!(
            "the reply's text goes on after the prompt ({:?}) but its echoed tokens stop at the prompt's end: this server pairs each echoed token with the next position's distribution (llama-cpp-python on a model without BOS, its issue #1983), so every score would be one position off; serve a model that adds BOS, or use llama-server",
            clip(&text[prompt.len()..])
        ));
    }
    Ok(())
}

/// TGI's `details.prefill` (the prompt, each with its log-probability).
pub fn tgi_tokens(v: &Value) -> Result<(Vec<EchoToken>, usize), String> {
    let v = if v.is_array() { &v[0] } else { v };
    let prefill = v
        .pointer("/details/prefill")
        .and_then(Value::as_array)
        .ok_or("no `details.prefill` (send `decoder_input_details: true`)")?;
    let tokens: Vec<EchoToken> = prefill
        .iter()
        .map(|t| EchoToken {
            text: t
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            logprob: t.get("logprob").and_then(Value::as_f64),
            greedy: None,
        })
        .collect();
    let n = tokens.len();
    Ok((tokens, n))
}

/// The continuation's tokens among the prompt's: the tokens that spell
/// `context + continuation` exactly (after any leading special tokens the
/// server echoes, such as a BOS), checked against the server's count of
/// prompt tokens `n_prompt` — equal to it, or one less when the server
/// counts a BOS it does not echo (llama-cpp-python). Then those after the
/// context's text, which must spell the continuation exactly.
pub fn align(
    tokens: &[EchoToken],
    n_prompt: usize,
    context: &str,
    continuation: &str,
) -> Result<ChoiceScore, String> {
    let full = format!("{context}{continuation}");
    // (start, end): the first run of tokens whose text is the prompt.
    let span = (0..tokens.len()).find_map(|i| {
        let mut acc = String::new();
        for (k, t) in tokens.iter().enumerate().skip(i) {
            acc.push_str(&t.text);
            if acc == full {
                return Some((i, k + 1));
            }
            if !full.starts_with(acc.as_str()) {
                return None;
            }
        }
        None
    });
    let Some((start, end)) = span else {
        let joined: String = tokens.iter().map(|t| t.text.as_str()).collect();
        return Err(format!(
            "the {} returned tokens spell {:?}, not the prompt {:?}",
            tokens.len(),
            clip(&joined),
            clip(&full)
        ));
    };
    let unechoed_bos = start == 0 && n_prompt == end + 1;
    if n_prompt != end && !unechoed_bos {
        return Err(format!(
            "the server counts {n_prompt} prompt tokens but {} returned tokens spell the prompt",
            end - start
        ));
    }
    // Nothing precedes the prompt's first token, so a correct echo gives it
    // no log-probability (null, or 0). A number there means the server
    // paired each echoed token with the distribution of the position after
    // it: every score would be one position off and cannot be corrected.
    if start == 0 && !unechoed_bos && tokens[0].logprob.is_some_and(|x| x != 0.0) {
        return Err("the prompt's first token came back with a log-probability though nothing precedes it: this server pairs each echoed token with the next position's distribution, so every score would be one position off".into());
    }
    let prompt = &tokens[..end];
    let mut at = 0usize;
    let mut first = None;
    for (i, t) in prompt.iter().enumerate().skip(start) {
        if at == context.len() {
            first = Some(i);
            break;
        }
        if at > context.len() {
            return Err(format!(
                "a token ({:?}) spans the end of the context and the start of the continuation",
                t.text
            ));
        }
        at += t.text.len();
    }
    let first = match first {
        Some(f) => f,
        None if at == context.len() && continuation.is_empty() => prompt.len(),
        None => {
            return Err("the last token spans the end of the context".into());
        }
    };
    let cont = &prompt[first..];
    if cont.is_empty() {
        return Err("the continuation has no tokens".into());
    }
    let mut sum = 0.0;
    let mut greedy = true;
    for (k, t) in cont.iter().enumerate() {
        let lp = t.logprob.ok_or_else(|| {
            format!(
                "continuation token {k} ({:?}) has no log-probability",
                t.text
            )
        })?;
        sum += lp;
        greedy &= t.greedy.unwrap_or(false);
    }
    Ok(ChoiceScore {
        loglikelihood: sum,
        is_greedy: greedy,
        n_tokens: cont.len(),
    })
}

fn clip(s: &str) -> String {
    let c: String = s.chars().take(60).collect();
    if c.len() < s.len() {
        format!("{c}…")
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(text: &str, lp: Option<f64>) -> EchoToken {
        EchoToken {
            text: text.into(),
            logprob: lp,
            greedy: Some(true),
        }
    }

    #[test]
    fn the_continuation_is_found_by_text_and_prompt_count() {
        // BOS, the context, the continuation, then one generated token.
        let t = vec![
            tok("<s>", None),
            tok("The", Some(-1.0)),
            tok(" sky", Some(-2.0)),
            tok(" is", Some(-0.5)),
            tok(" blue", Some(-0.25)),
            tok(".", Some(-0.125)),
            tok(" And", Some(-9.0)),
        ];
        let c = align(&t, 6, "The sky is", " blue.").expect("aligned");
        assert_eq!(c.n_tokens, 2);
        assert_eq!(c.loglikelihood, -0.375);
        assert!(c.is_greedy);
    }

    #[test]
    fn misaligned_responses_are_errors() {
        let t = vec![
            tok("The", None),
            tok(" sky is", Some(-1.0)),
            tok(" blue", Some(-1.0)),
        ];
        // A token spans the context's end.
        assert!(align(&t, 3, "The sky", " is blue").is_err());
        // The tokens spell another text.
        assert!(align(&t, 3, "The sea is", " blue").is_err());
        // The server's prompt count disagrees with the tokens that spell it.
        assert!(align(&t, 2, "The sky is", " blue").is_err());
        assert!(align(&t, 5, "The sky is", " blue").is_err());
        // The first token has no log-probability and cannot be scored.
        assert!(align(&t[..1], 1, "", "The").is_err());
    }

    #[test]
    fn a_bos_counted_but_not_echoed_is_accepted() {
        // llama-cpp-python: usage counts BOS, the tokens start at the text.
        let t = vec![
            tok("The", None),
            tok(" sky", Some(-2.0)),
            tok(" blue", Some(-0.25)),
            tok(" The", Some(-1.0)),
        ];
        let c = align(&t, 4, "The sky", " blue").expect("aligned");
        assert_eq!((c.n_tokens, c.loglikelihood), (1, -0.25));
        // Two more than the spelled prompt is not a BOS: refused.
        assert!(align(&t, 5, "The sky", " blue").is_err());
    }

    #[test]
    fn an_echo_one_position_off_is_refused() {
        // llama-cpp-python on a model without BOS: the prompt's first token
        // has a number, and usage counts exactly the echoed prompt.
        let t = vec![
            tok("The", Some(-3.0)),
            tok(" sky", Some(-2.0)),
            tok(" blue", Some(-0.25)),
            tok(" The", Some(-1.0)),
        ];
        let e = align(&t, 3, "The sky", " blue").expect_err("one position off");
        assert!(e.contains("one position off"), "{e}");
        // The same echo with a null (or 0) first value is a correct one.
        let mut ok = t.clone();
        ok[0].logprob = None;
        assert!(align(&ok, 3, "The sky", " blue").is_ok());
        ok[0].logprob = Some(0.0);
        assert!(align(&ok, 3, "The sky", " blue").is_ok());
    }

    /// What llama-cpp-python 0.3.36 returned for SmolLM2 (no BOS), cut
    /// down: the text has the generated " the", the tokens stop at the
    /// prompt, the first is null and the rest are one position off.
    #[test]
    fn a_llama_cpp_python_echo_without_bos_is_refused() {
        let v: Value = serde_json::from_str(
            r#"{"choices":[{"text":"The sky is the","logprobs":{"tokens":["The"," sky"," is"],
               "token_logprobs":[null,-8.34,-11.62],"top_logprobs":[null,{" sky":-8.34},{" is":-11.62}]}}],
               "usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
        )
        .expect("json");
        let (t, n) = openai_tokens(&v).expect("read");
        // align alone cannot tell: the tokens spell the prompt and match the count.
        assert!(align(&t, n, "The sky", " is").is_ok());
        let e = check_generation_echoed(&v, &t, "The sky is").expect_err("refused");
        assert!(e.contains("#1983") && e.contains("\" the\""), "{e}");
        // The same server on a model with BOS lists the generated token.
        let v: Value = serde_json::from_str(
            r#"{"choices":[{"text":"The sky is the","logprobs":{"tokens":["The"," sky"," is"," the"],
               "token_logprobs":[null,-11.41,-1.14,-1.07]}}],"usage":{"prompt_tokens":4,"completion_tokens":1}}"#,
        )
        .expect("json");
        let (t, n) = openai_tokens(&v).expect("read");
        assert!(check_generation_echoed(&v, &t, "The sky is").is_ok());
        assert!(align(&t, n, "The sky", " is").is_ok());
        // A generation that is only an end-of-sequence token adds no text.
        let v: Value = serde_json::from_str(
            r#"{"choices":[{"text":"The sky is","logprobs":{"tokens":["The"," sky"," is",""],
               "token_logprobs":[null,-1.0,-1.0,-0.5]}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
        )
        .expect("json");
        let (t, _) = openai_tokens(&v).expect("read");
        assert!(check_generation_echoed(&v, &t, "The sky is").is_ok());
    }

    #[test]
    fn openai_and_tgi_shapes_are_read() {
        let v: Value = serde_json::from_str(
            r#"{"choices":[{"text":" x","logprobs":{"tokens":["A"," b"," x"],"token_logprobs":[null,-0.5,-2.0],
            "top_logprobs":[null,{" b":-0.5," c":-1.0},{" y":-0.1," x":-2.0}],"text_offset":[0,1,3]}}],
            "usage":{"prompt_tokens":2,"completion_tokens":1}}"#,
        )
        .expect("json");
        let (t, n) = openai_tokens(&v).expect("tokens");
        assert_eq!(n, 2);
        assert_eq!(t[1].greedy, Some(true));
        assert_eq!(t[2].greedy, Some(false));
        let c = align(&t, n, "A", " b").expect("aligned");
        assert_eq!(c.loglikelihood, -0.5);
        let v: Value = serde_json::from_str(
            r#"{"generated_text":"!","details":{"prefill":[{"id":1,"text":"<s>","logprob":null},
            {"id":5,"text":"A","logprob":-3.0},{"id":6,"text":" b","logprob":-0.5}],"tokens":[]}}"#,
        )
        .expect("json");
        let (t, n) = tgi_tokens(&v).expect("tokens");
        assert_eq!(n, 3);
        assert_eq!(
            align(&t, n, "A", " b").expect("aligned").loglikelihood,
            -0.5
        );
    }
}
