//! The served engine: a model behind an HTTP endpoint (vLLM, SGLang, TGI,
//! llama.cpp's `llama-server`, llama-cpp-python, OpenAI-compatible APIs)
//! scored as a [`Scorer`] like a local one. Documents go out `concurrency`
//! at a time; their scores come back in document order.
//!
//! Invariant: the API key is read from its environment variable when the
//! model is opened and goes nowhere but the `Authorization` header.

mod echo;
mod generate;
pub mod http;
mod ids;
mod llama_server;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;

use crate::backend::{BackendError, BackendOptions, DocScore, Loaded, ScoreError, Scorer};
use crate::obtain::Obtained;
use crate::record::{EndpointRecord, ModelRecord};
use crate::spec::endpoint::{Api, Endpoint};
use crate::spec::models::ModelSpec;
use echo::EchoApi;
use http::Client;

/// A served model's scorer.
pub struct ServedScorer {
    client: Client,
    api: Api,
    model: Option<String>,
    concurrency: usize,
    max_length: usize,
    /// The model's tokenizer, when `tokenizer:` names one: prompts then go
    /// out as token ids.
    tokenizer: Option<crate::model::tokenizer::TextTokenizer>,
}

fn engine_error(message: String) -> BackendError {
    BackendError::Engine(message.into())
}

/// Checks the endpoint answers and reads what it says of itself.
pub fn open(
    spec: &ModelSpec,
    got: &Obtained,
    _opts: &BackendOptions,
) -> Result<Loaded, BackendError> {
    let t0 = Instant::now();
    let ep: &Endpoint = spec
        .endpoint
        .as_ref()
        .ok_or_else(|| engine_error("a served model needs `endpoint:`".into()))?;
    let key = match &ep.api_key_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            engine_error(format!(
                "the API key variable `{var}` (endpoint.api_key_env) is not set; export it before the run"
            ))
        })?),
        None => None,
    };
    let tokenizer = match &got.tokenizer {
        Some(p) => Some(
            crate::model::tokenizer::TextTokenizer::open_standalone(p).map_err(|e| {
                engine_error(format!(
                    "the served model's `tokenizer` ({}): {e}",
                    p.display()
                ))
            })?,
        ),
        None => None,
    };
    let prompts = match (&tokenizer, &spec.tokenizer) {
        (Some(t), Some(name)) => format!(
            "token ids ({}, {})",
            name.display(),
            if t.add_bos { "BOS added" } else { "no BOS" }
        ),
        _ => "text".into(),
    };
    let client = Client::new(&ep.base_url, key, ep.timeout_s, ep.max_retries);
    let (server_version, n_ctx) = describe(&client, ep.api)?;
    let context_length = got.context_length.or(n_ctx).unwrap_or(0);
    let record = ModelRecord {
        backend: spec.engine.name().into(),
        dtype: "served".into(),
        context_length,
        load_time_s: t0.elapsed().as_secs_f64(),
        endpoint: Some(EndpointRecord {
            api: ep.api.name().into(),
            base_url: ep.base_url.clone(),
            model: ep.model.clone(),
            server_version,
            concurrency: ep.concurrency,
            prompts: Some(prompts),
        }),
        lineage: got.lineage.clone(),
        ..ModelRecord::default()
    };
    Ok(Loaded {
        scorer: Box::new(ServedScorer {
            client,
            api: ep.api,
            model: ep.model.clone(),
            concurrency: ep.concurrency,
            max_length: if context_length > 0 {
                context_length
            } else {
                usize::MAX
            },
            tokenizer,
        }),
        record,
        chat: None,
    })
}

/// The server's version and context window, where it reports them; an
/// endpoint that does not answer at all is an error here, before any cell.
fn describe(client: &Client, api: Api) -> Result<(Option<String>, Option<usize>), BackendError> {
    let fail = |e: http::HttpError| engine_error(format!("the endpoint does not answer: {e}"));
    // (path, version key, context-window keys) of the APIs that describe themselves.
    let (path, version_key, ctx_keys): (&str, &str, &[&str]) = match api {
        Api::LlamaServer => (
            "/props",
            "/build_info",
            &["/default_generation_settings/n_ctx", "/n_ctx"],
        ),
        Api::Tgi => (
            "/info",
            "/version",
            &["/max_input_tokens", "/max_input_length"],
        ),
        _ => {
            client.get("/v1/models").map_err(fail)?;
            return Ok((None, None));
        }
    };
    let v = client.get(path).map_err(fail)?.json;
    let version = v
        .pointer(version_key)
        .and_then(Value::as_str)
        .map(str::to_string);
    let n_ctx = ctx_keys
        .iter()
        .find_map(|k| v.pointer(k).and_then(Value::as_u64))
        .map(|n| n as usize);
    Ok((version, n_ctx))
}

impl ServedScorer {
    /// All choices of one document, their time and the tokens evaluated.
    fn score_one(&self, context: &str, continuations: &[String]) -> Result<DocScore, String> {
        let mut choices = Vec::with_capacity(continuations.len());
        let mut requests = Vec::new();
        let mut truncated = false;
        match self.api {
            Api::LlamaServer => {
                for c in continuations {
                    let (ctx, cont) = llama_server::encode_pair(&self.client, context, c)?;
                    let (s, stats) = llama_server::score(&self.client, &ctx, &cont)?;
                    choices.push(s);
                    requests.extend(stats);
                }
            }
            Api::OpenaiCompletions | Api::Vllm | Api::Sglang if self.tokenizer.is_some() => {
                let tok = self.tokenizer.as_ref().ok_or("no tokenizer")?;
                let api = match self.api {
                    Api::Vllm => ids::IdsApi::Vllm,
                    Api::Sglang => ids::IdsApi::Sglang,
                    _ => ids::IdsApi::OpenAi,
                };
                for c in continuations {
                    let (mut ctx, cont) = crate::backend::request::encode_pair(tok, context, c)
                        .map_err(|e| e.to_string())?;
                    // The window keeps the prompt's last tokens (lm-eval's
                    // left truncation); the continuation must fit whole.
                    let over = (ctx.len() + cont.len()).saturating_sub(self.max_length);
                    if over > 0 {
                        if over >= ctx.len() {
                            return Err(format!(
                                "the continuation's {} tokens do not fit the server's {}-token window",
                                cont.len(),
                                self.max_length
                            ));
                        }
                        ctx.drain(..over);
                        truncated = true;
                    }
                    let (s, stat) =
                        ids::score(&self.client, api, self.model.as_deref(), &ctx, &cont)?;
                    choices.push(s);
                    requests.push(stat);
                }
            }
            Api::OpenaiCompletions | Api::Vllm | Api::Sglang | Api::Tgi => {
                let api = if self.api == Api::Tgi {
                    EchoApi::Tgi
                } else {
                    EchoApi::OpenAi
                };
                // lm-eval's split: the context's trailing whitespace goes
                // with the continuation.
                let trimmed = context.trim_end();
                for c in continuations {
                    let cont = format!("{}{c}", &context[trimmed.len()..]);
                    let (s, stat) =
                        echo::score(&self.client, api, self.model.as_deref(), trimmed, &cont)?;
                    choices.push(s);
                    requests.push(stat);
                }
            }
            Api::OpenaiChat => {
                return Err(
                    "a chat endpoint returns no prompt log-probabilities, so multiple-choice tasks cannot be scored on it (use a completions endpoint, or generation tasks)"
                        .into(),
                )
            }
        }
        Ok(DocScore {
            choices,
            truncated,
            tokens_forwarded: requests.iter().map(|r| r.prompt_tokens).sum(),
            peak_cached_tokens: 0,
            shared_ms: Some(requests.iter().map(|r| r.ms).sum()),
            requests,
        })
    }
}

/// `f` over `items`, `workers` at a time; the results in order, and the
/// first failure (in order) as the call's error. After a failure no new
/// item starts; those in flight finish.
fn in_parallel<T: Sync, R: Send>(
    workers: usize,
    items: &[T],
    f: impl Fn(&T) -> Result<R, String> + Sync,
) -> Result<Vec<R>, ScoreError> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<Result<R, String>>>> =
        Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers.min(items.len()).max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                let failed = r.is_err();
                if let Ok(mut o) = out.lock() {
                    o[i] = Some(r);
                }
                if failed {
                    next.store(items.len(), Ordering::Relaxed);
                }
            });
        }
    });
    let out = out
        .into_inner()
        .map_err(|_| ScoreError::backend("a worker thread panicked"))?;
    let mut results = Vec::with_capacity(items.len());
    for (i, r) in out.into_iter().enumerate() {
        match r {
            Some(Ok(x)) => results.push(x),
            Some(Err(e)) => {
                return Err(ScoreError::backend(format!(
                    "document {i} of the call: {e}"
                )))
            }
            None => return Err(ScoreError::backend("a document was not answered")),
        }
    }
    Ok(results)
}

impl Scorer for ServedScorer {
    fn score_doc(
        &mut self,
        context: &str,
        continuations: &[String],
    ) -> Result<DocScore, ScoreError> {
        self.score_one(context, continuations)
            .map_err(ScoreError::backend)
    }

    /// Documents go out `concurrency` at a time; the scores come back in
    /// document order, and the first failure (in document order) is the
    /// call's error.
    fn score_docs(&mut self, docs: &[(&str, &[String])]) -> Result<Vec<DocScore>, ScoreError> {
        let this = &*self;
        in_parallel(self.concurrency, docs, |(c, k)| this.score_one(c, k))
    }

    fn max_length(&self) -> usize {
        self.max_length
    }

    fn docs_per_call(&self) -> usize {
        self.concurrency
    }

    /// Requests go out `concurrency` at a time; answers come back in order.
    fn generate(
        &mut self,
        reqs: &[crate::backend::GenRequest<'_>],
    ) -> Result<Vec<crate::backend::Generation>, ScoreError> {
        let this = &*self;
        in_parallel(self.concurrency, reqs, |r| {
            generate::generate(&this.client, this.api, this.model.as_deref(), r)
        })
    }

    fn gen_per_call(&self) -> usize {
        self.concurrency
    }

    fn takes_messages(&self) -> bool {
        self.api == Api::OpenaiChat
    }

    fn computes_locally(&self) -> bool {
        false
    }
}
