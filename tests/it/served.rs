//! Served models against stand-in servers on 127.0.0.1 that answer with
//! the documented response shapes of llama-server, vLLM/OpenAI, SGLang and
//! TGI: scores read and aligned, a misaligned response refused, 429 then
//! 200 retried, 401 failing at once, a 500 storm exhausting the retries,
//! and the API key kept out of every error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde_json::{json, Value};
use slmbench::backend::{BackendOptions, Loaded};
use slmbench::model::fetch::FetchOptions;
use slmbench::spec::models::Registry;

/// A request as the stand-in saw it.
pub struct Req {
    pub path: String,
    pub auth: Option<String>,
    pub body: Value,
}

type Handler = dyn Fn(&Req, usize) -> (u16, Vec<(String, String)>, String) + Send + Sync;

/// An HTTP/1.1 server answering each request with `handler(request, n)`
/// (n counts requests from 0), one connection at a time, until dropped.
pub struct Stand {
    pub port: u16,
    pub hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Stand {
    pub fn start(handler: Box<Handler>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (stop.clone(), hits.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let n = h.fetch_add(1, Ordering::Relaxed);
                serve(conn, &*handler, n);
            }
        });
        Self {
            port,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Stand {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, handler: &Handler, n: usize) {
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (mut len, mut auth) = (0usize, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((h.as_str(), ""));
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().unwrap_or(0),
            "authorization" => auth = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0u8; len];
    let _ = reader.read_exact(&mut body);
    let req = Req {
        path,
        auth,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let (status, headers, text) = handler(&req, n);
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        text.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&text);
    let mut conn = conn;
    let _ = conn.write_all(out.as_bytes());
}

/// The stand-ins' tokenizer: a word with its leading space is a token; its
/// id is its position in this list (unknown words panic the test).
const VOCAB: &[&str] = &["<s>", "The", " sky", " is", " blue", " green", ".", " red"];

fn ids(text: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (i, w) = VOCAB
            .iter()
            .enumerate()
            .filter(|(_, w)| rest.starts_with(**w) && !w.is_empty() && **w != "<s>")
            .max_by_key(|(_, w)| w.len())
            .unwrap_or_else(|| panic!("no token for {rest:?}"));
        out.push(i as u64);
        rest = &rest[w.len()..];
    }
    out
}

/// The stand-in model's log-probability of token `t` (any context).
fn lp(t: u64) -> f64 {
    -(t as f64) / 8.0
}

fn registry(yaml_endpoint: &str) -> Registry {
    let yaml = format!("models:\n  big:\n    endpoint: {yaml_endpoint}\n");
    Registry::parse(&yaml, "test.yaml").expect("registry")
}

fn open(reg: &Registry) -> Result<Loaded, String> {
    let got = slmbench::obtain::obtain(
        reg,
        "big",
        std::path::Path::new("unused"),
        &FetchOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let spec = reg.get("big").map_err(|e| e.to_string())?;
    slmbench::backend::open(spec, &got, &BackendOptions::default()).map_err(|e| e.to_string())
}

fn sky(loaded: &mut Loaded) -> Result<Vec<f64>, String> {
    let conts = vec![" blue.".to_string(), " green.".to_string()];
    let d = loaded
        .scorer
        .score_doc("The sky is", &conts)
        .map_err(|e| e.to_string())?;
    Ok(d.choices.iter().map(|c| c.loglikelihood).collect())
}

fn llama_server_handler(req: &Req, _n: usize) -> (u16, Vec<(String, String)>, String) {
    let ok = |v: Value| (200, vec![], v.to_string());
    match req.path.as_str() {
        "/props" => {
            ok(json!({"build_info": "b1-test", "default_generation_settings": {"n_ctx": 4096}}))
        }
        "/tokenize" => {
            let text = req.body["content"].as_str().unwrap_or("");
            let mut t = ids(text);
            if req.body["add_special"].as_bool() == Some(true) {
                t.insert(0, 0);
            }
            ok(json!({ "tokens": t }))
        }
        "/completion" => {
            let target = req.body["logit_bias"][0][0].as_u64().unwrap_or(0);
            ok(json!({
                "content": "x",
                "completion_probabilities": [{
                    "id": target, "token": VOCAB[target as usize], "logprob": lp(target),
                    "top_logprobs": [{"id": 4, "token": " blue", "logprob": lp(4)}]
                }],
                "timings": {"prompt_n": 1}
            }))
        }
        _ => (404, vec![], "{}".into()),
    }
}

#[test]
fn llama_server_is_teacher_forced_token_by_token() {
    let stand = Stand::start(Box::new(llama_server_handler));
    let reg = registry(&format!(
        "{{api: llama-server, base_url: \"{}\"}}",
        stand.url()
    ));
    let mut loaded = open(&reg).expect("open");
    assert_eq!(loaded.record.backend, "served");
    let ep = loaded.record.endpoint.clone().expect("endpoint");
    assert_eq!(ep.server_version.as_deref(), Some("b1-test"));
    assert_eq!(loaded.record.context_length, 4096);
    assert_eq!(loaded.record.file, None);
    let conts = vec![" blue.".to_string(), " green.".to_string()];
    let d = loaded
        .scorer
        .score_doc("The sky is", &conts)
        .expect("score");
    // " blue" (4) then "." (6); " green" (5) then ".".
    assert_eq!(d.choices[0].loglikelihood, lp(4) + lp(6));
    assert_eq!(d.choices[1].loglikelihood, lp(5) + lp(6));
    assert_eq!(d.choices[0].n_tokens, 2);
    // The stand-in's top token is always " blue": only " blue" is greedy,
    // and "." never is.
    assert!(!d.choices[0].is_greedy && !d.choices[1].is_greedy);
}

fn openai_handler(prompt_tokens_off: i64) -> Box<Handler> {
    Box::new(move |req: &Req, _n| {
        if req.path == "/v1/models" {
            return (200, vec![], json!({"data": [{"id": "big"}]}).to_string());
        }
        let prompt = req.body["prompt"].as_str().unwrap_or("").to_string();
        let mut t = vec![0u64];
        t.extend(ids(&prompt));
        t.push(7); // the generated token
        let texts: Vec<&str> = t.iter().map(|&i| VOCAB[i as usize]).collect();
        let lps: Vec<Value> = t
            .iter()
            .enumerate()
            .map(|(k, &i)| if k == 0 { Value::Null } else { json!(lp(i)) })
            .collect();
        let n_prompt = (t.len() as i64 - 1 + prompt_tokens_off).max(0);
        (
            200,
            vec![],
            json!({
                "choices": [{"text": " red", "logprobs": {
                    "tokens": texts, "token_logprobs": lps, "top_logprobs": Value::Null, "text_offset": []}}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": 1}
            })
            .to_string(),
        )
    })
}

#[test]
fn vllm_and_sglang_echo_prompt_log_probabilities() {
    for api in ["vllm", "sglang", "openai-completions"] {
        let stand = Stand::start(openai_handler(0));
        let reg = registry(&format!(
            "{{api: {api}, base_url: \"{}\", model: big, concurrency: 2}}",
            stand.url()
        ));
        let mut loaded = open(&reg).expect("open");
        assert_eq!(
            sky(&mut loaded).expect("score"),
            vec![lp(4) + lp(6), lp(5) + lp(6)],
            "{api}"
        );
    }
}

#[test]
fn a_misaligned_echo_is_an_error_not_a_score() {
    // usage.prompt_tokens one short: the continuation's last token would be
    // taken for a generated one.
    let stand = Stand::start(openai_handler(-1));
    let reg = registry(&format!("{{api: vllm, base_url: \"{}\"}}", stand.url()));
    let mut loaded = open(&reg).expect("open");
    let e = sky(&mut loaded).expect_err("misaligned");
    assert!(e.contains("spell"), "{e}");
}

#[test]
fn tgi_prefill_details_are_read() {
    let stand = Stand::start(Box::new(|req: &Req, _n| {
        if req.path == "/info" {
            return (
                200,
                vec![],
                json!({"version": "3.0", "max_input_tokens": 2048}).to_string(),
            );
        }
        let prompt = req.body["inputs"].as_str().unwrap_or("").to_string();
        let mut t = vec![0u64];
        t.extend(ids(&prompt));
        let prefill: Vec<Value> = t
            .iter()
            .enumerate()
            .map(|(k, &i)| json!({"id": i, "text": VOCAB[i as usize], "logprob": if k == 0 { Value::Null } else { json!(lp(i)) }}))
            .collect();
        (
            200,
            vec![],
            json!({"generated_text": " red", "details": {"prefill": prefill, "tokens": []}})
                .to_string(),
        )
    }));
    let reg = registry(&format!("{{api: tgi, base_url: \"{}\"}}", stand.url()));
    let mut loaded = open(&reg).expect("open");
    assert_eq!(loaded.record.context_length, 2048);
    assert_eq!(
        sky(&mut loaded).expect("score"),
        vec![lp(4) + lp(6), lp(5) + lp(6)]
    );
}

#[test]
fn a_429_is_retried_after_its_retry_after() {
    let inner = openai_handler(0);
    let stand = Stand::start(Box::new(move |req: &Req, n| {
        if n == 1 {
            return (
                429,
                vec![("Retry-After".into(), "0".into())],
                r#"{"error":"slow down"}"#.into(),
            );
        }
        inner(req, n)
    }));
    let reg = registry(&format!("{{api: vllm, base_url: \"{}\"}}", stand.url()));
    let mut loaded = open(&reg).expect("open");
    assert_eq!(sky(&mut loaded).expect("score").len(), 2);
    // /v1/models, the 429, its retry, the second choice.
    assert_eq!(stand.hits.load(Ordering::Relaxed), 4);
}

#[test]
fn a_401_fails_at_once_and_the_key_is_never_shown() {
    let key = "sk-test-SECRET-1234";
    std::env::set_var("SLMBENCH_TEST_SERVED_KEY", key);
    let stand = Stand::start(Box::new(move |req: &Req, _n| {
        let sent = req.auth.clone().unwrap_or_default();
        if req.path == "/v1/models" && sent == format!("Bearer {key}") {
            return (200, vec![], "{}".into());
        }
        // A careless server that echoes the credentials it refuses.
        (
            401,
            vec![],
            json!({"error": {"message": format!("invalid key {sent}")}}).to_string(),
        )
    }));
    let reg = registry(&format!(
        "{{api: vllm, base_url: \"{}\", api_key_env: SLMBENCH_TEST_SERVED_KEY, max_retries: 3}}",
        stand.url()
    ));
    let mut loaded = open(&reg).expect("open");
    let e = sky(&mut loaded).expect_err("401");
    assert!(e.contains("HTTP 401") && e.contains("invalid key"), "{e}");
    assert!(!e.contains("SECRET"), "the key leaked: {e}");
    assert_eq!(
        stand.hits.load(Ordering::Relaxed),
        2,
        "a 401 is not retried"
    );
}

#[test]
fn a_500_storm_exhausts_the_retries() {
    let stand = Stand::start(Box::new(|req: &Req, _n| {
        if req.path == "/v1/models" {
            return (200, vec![], "{}".into());
        }
        (500, vec![], r#"{"error":{"message":"overloaded"}}"#.into())
    }));
    let reg = registry(&format!(
        "{{api: vllm, base_url: \"{}\", max_retries: 2}}",
        stand.url()
    ));
    let mut loaded = open(&reg).expect("open");
    let e = sky(&mut loaded).expect_err("500s");
    assert!(
        e.contains("gave up after 3 attempts") && e.contains("overloaded"),
        "{e}"
    );
    assert_eq!(stand.hits.load(Ordering::Relaxed), 4);
}

#[test]
fn chat_endpoints_and_bad_endpoint_specs_are_one_line_errors() {
    let stand = Stand::start(Box::new(|_req: &Req, _n| (200, vec![], "{}".into())));
    let reg = registry(&format!(
        "{{api: openai-chat, base_url: \"{}\"}}",
        stand.url()
    ));
    let mut loaded = open(&reg).expect("a chat endpoint opens (for generation)");
    let e = sky(&mut loaded).expect_err("no log-probabilities on chat");
    assert!(e.contains("no prompt log-probabilities"), "{e}");
    for (yaml, want) in [
        (
            "{api: vllm, base_url: \"localhost:8000\"}",
            "endpoint.base_url",
        ),
        (
            "{api: vllm, base_url: \"http://h:1/v1\"}",
            "leave out `/v1`",
        ),
        (
            "{api: vllm, base_url: \"http://h:1\", concurrency: 0}",
            "endpoint.concurrency",
        ),
        (
            "{api: vllm, base_url: \"http://h:1\", api_key_env: \"sk-abc 1\"}",
            "endpoint.api_key_env",
        ),
        ("{api: nosuch, base_url: \"http://h:1\"}", "nosuch"),
    ] {
        let text = format!("models:\n  big:\n    endpoint: {yaml}\n");
        let Err(e) = Registry::parse(&text, "m.yaml") else {
            panic!("{yaml}: accepted");
        };
        let e = e.to_string();
        assert!(e.contains(want) && e.contains("m.yaml"), "{yaml}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    let text =
        "models:\n  big:\n    file: x.gguf\n    endpoint: {api: vllm, base_url: \"http://h:1\"}\n";
    let Err(e) = Registry::parse(text, "m.yaml") else {
        panic!("a file and an endpoint accepted");
    };
    let e = e.to_string();
    assert!(e.contains("field `file`"), "{e}");
}

#[test]
fn an_endpoint_that_does_not_answer_fails_when_opened() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let reg = registry(&format!(
        "{{api: llama-server, base_url: \"http://127.0.0.1:{port}\", max_retries: 0, timeout_s: 2}}"
    ));
    let e = open(&reg).err().expect("nothing listens");
    assert!(e.contains("does not answer"), "{e}");
}

/// A llama-server stand-in for any text: a byte is a token (id = byte + 1,
/// BOS = 0), and the model's log-probability of token t is `-(t % 13) / 10 - 0.1`.
fn byte_server(req: &Req, _n: usize) -> (u16, Vec<(String, String)>, String) {
    let ok = |v: Value| (200, vec![], v.to_string());
    match req.path.as_str() {
        "/props" => ok(json!({"build_info": "bytes", "n_ctx": 8192})),
        "/tokenize" => {
            let text = req.body["content"].as_str().unwrap_or("");
            let mut t: Vec<u64> = text.bytes().map(|b| u64::from(b) + 1).collect();
            if req.body["add_special"].as_bool() == Some(true) {
                t.insert(0, 0);
            }
            ok(json!({ "tokens": t }))
        }
        "/completion" => {
            let target = req.body["logit_bias"][0][0].as_u64().unwrap_or(0);
            ok(json!({"completion_probabilities": [{
                "id": target, "logprob": -((target % 13) as f64) / 10.0 - 0.1,
                "top_logprobs": [{"id": 33, "logprob": -0.1}]}]}))
        }
        _ => (404, vec![], "{}".into()),
    }
}

#[test]
fn a_served_run_records_requests_tokens_and_cost_and_no_local_figures() {
    let stand = Stand::start(Box::new(byte_server));
    let tmp = tempfile::tempdir().expect("tmp");
    let yaml = format!(
        "models:\n  big:\n    endpoint: {{api: llama-server, base_url: \"{}\", concurrency: 3}}\n    price: {{input_per_mtok: 2.0, output_per_mtok: 8.0}}\n",
        stand.url()
    );
    std::fs::write(tmp.path().join("models.yaml"), yaml).expect("write");
    let out = tmp.path().join("run");
    let o = crate::common::bin()
        .args([
            "run",
            "--models",
            "models.yaml",
            "--model",
            "big",
            "--tasks",
            "smoke_copa",
            "--out",
        ])
        .arg(&out)
        .current_dir(tmp.path())
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let samples = crate::common::read_jsonl(&out.join("samples/big/smoke_copa.jsonl"));
    assert_eq!(samples.len(), 12);
    // Each continuation token is one request, so the requests are the
    // continuation tokens; each sends its prefix and generates one token.
    let tokens: u64 = samples
        .iter()
        .flat_map(|s| s["continuation_tokens"].as_array().expect("tokens").clone())
        .map(|t| t.as_u64().expect("n"))
        .sum();
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("results"))
            .expect("json");
    let cell = &results["cells"][0];
    let served = &cell["served"];
    assert_eq!(served["requests"].as_u64(), Some(tokens));
    assert_eq!(served["completion_tokens"].as_u64(), Some(tokens));
    let prompt = served["prompt_tokens"].as_f64().expect("prompt tokens");
    let cost = served["cost"].as_f64().expect("cost");
    assert!(
        (cost - (prompt * 2.0 + tokens as f64 * 8.0) / 1e6).abs() < 1e-12,
        "{cost}"
    );
    assert_eq!(served["currency"], "USD");
    assert!(served["request_latency"]["p50_ms"].as_f64().is_some());
    // The harness's own CPU time is measured, as a share of the wall time
    // (two cores at most: this process's threads on a 2-core machine).
    let share = served["harness_cpu_share"].as_f64().expect("harness share");
    let cpu = served["harness_cpu_s"].as_f64().expect("harness cpu");
    assert!(cpu >= 0.0 && (0.0..=64.0).contains(&share), "{served}");
    // The printed summary says what the requests were and cost.
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(
        printed.contains("served:") && printed.contains("req/s") && printed.contains("USD"),
        "{printed}"
    );
    // This process only waited: no peak RSS or energy of its own.
    assert!(
        cell["peak_rss"].is_null() && cell["energy"].is_null(),
        "{cell}"
    );
    assert_eq!(results["models"]["big"]["backend"], "served");
    // The report draws score against cost for a model with a price.
    let rep = tmp.path().join("rep");
    let o = crate::common::bin()
        .args(["report"])
        .arg(&out)
        .arg("--out")
        .arg(&rep)
        .output()
        .expect("report");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(rep.join("score_vs_cost.svg").is_file());
    let html = std::fs::read_to_string(rep.join("report.html")).expect("html");
    assert!(html.contains("Score vs cost"));
    // The cost columns: in the summary, the HTML and the long table.
    assert!(html.contains("cost /1k docs") && html.contains("harness CPU"));
    let summary = std::fs::read_to_string(rep.join("summary.md")).expect("summary");
    assert!(
        summary.contains("cost /1k docs") && summary.contains("USD"),
        "{summary}"
    );
    let csv = std::fs::read_to_string(rep.join("results_long.csv")).expect("csv");
    let header = csv.lines().next().expect("header");
    for col in [
        "requests",
        "prompt_tokens",
        "cost",
        "cost_per_1k_docs",
        "currency",
        "harness_cpu_share",
    ] {
        assert!(header.split(',').any(|h| h == col), "{col} not in {header}");
    }
    // The stand-in's scores, summed per choice as the model gives them.
    for s in &samples {
        let conts = s["continuations"].as_array().expect("conts");
        let ctx = s["context"].as_str().expect("ctx");
        let lls = s["loglikelihoods"].as_array().expect("lls");
        for (c, ll) in conts.iter().zip(lls) {
            let c = c.as_str().expect("c");
            let trimmed = ctx.trim_end();
            let cont = format!("{}{c}", &ctx[trimmed.len()..]);
            let want: f64 = cont
                .bytes()
                .map(|b| -(((u64::from(b) + 1) % 13) as f64) / 10.0 - 0.1)
                .sum();
            assert!((ll.as_f64().expect("ll") - want).abs() < 1e-9);
        }
    }
}

/// A `tokenizer.json` for the stand-ins' vocabulary (byte-level words,
/// `<s>` added before every text, as Gemma-style models do).
fn vocab_tokenizer(dir: &std::path::Path) -> std::path::PathBuf {
    let vocab: serde_json::Map<String, Value> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, w)| (w.replace(' ', "\u{120}"), json!(i)))
        .collect();
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<s>"}
    });
    let p = dir.join("tokenizer.json");
    std::fs::write(&p, tok.to_string()).expect("write tokenizer.json");
    p
}

/// Stand-ins for the token-id APIs: each checks that the prompt is the
/// ids of "<s>The sky is" + a continuation and answers in its API's shape;
/// `off` shifts the ids the reply names (a reply that does not line up).
fn ids_handler(off: u64) -> Box<Handler> {
    Box::new(move |req: &Req, _n| {
        if req.path == "/v1/models" {
            return (200, vec![], json!({"data": [{"id": "big"}]}).to_string());
        }
        let key = if req.path == "/generate" {
            "input_ids"
        } else {
            "prompt"
        };
        let ids: Vec<u64> = req.body[key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        assert_eq!(&ids[..4], &[0, 1, 2, 3], "BOS, then the context's ids");
        let v = match req.path.as_str() {
            "/generate" => {
                let start = req.body["logprob_start_len"].as_u64().expect("start") as usize;
                let lps: Vec<Value> = ids[start..]
                    .iter()
                    .map(|&i| json!([lp(i), i + off, null]))
                    .collect();
                let tops: Vec<Value> = ids[start..]
                    .iter()
                    .map(|&i| json!([[lp(i), if i == 4 { 4 } else { 1 }, null]]))
                    .collect();
                json!({"text": " red", "meta_info": {
                    "prompt_tokens": ids.len(), "completion_tokens": 1,
                    "input_token_logprobs": lps, "input_top_logprobs": tops}})
            }
            _ if req.body.get("prompt_logprobs").is_some() => {
                let mut pl = vec![Value::Null];
                for &i in &ids[1..] {
                    pl.push(json!({(i + off).to_string(): {"logprob": lp(i), "rank": 1, "decoded_token": VOCAB[i as usize]}}));
                }
                json!({"choices": [{"text": " red", "prompt_logprobs": pl}],
                       "usage": {"prompt_tokens": ids.len(), "completion_tokens": 1}})
            }
            _ => {
                let mut lps: Vec<Value> = vec![Value::Null];
                lps.extend(ids[1..].iter().map(|&i| json!(lp(i))));
                lps.push(json!(lp(7)));
                json!({"choices": [{"text": " red", "logprobs": {"token_logprobs": lps}}],
                       "usage": {"prompt_tokens": ids.len() as u64 + off, "completion_tokens": 1}})
            }
        };
        (200, vec![], v.to_string())
    })
}

#[test]
fn with_a_tokenizer_prompts_go_out_as_token_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = vocab_tokenizer(dir.path());
    for api in ["vllm", "sglang", "openai-completions"] {
        let stand = Stand::start(ids_handler(0));
        let yaml = format!(
            "models:\n  big:\n    tokenizer: \"{}\"\n    endpoint: {{api: {api}, base_url: \"{}\", model: big}}\n",
            tok.display(),
            stand.url()
        );
        let reg = Registry::parse(&yaml, "test.yaml").expect("registry");
        let mut loaded = open(&reg).expect("open");
        let ep = loaded.record.endpoint.clone().expect("endpoint record");
        assert!(
            ep.prompts
                .as_deref()
                .is_some_and(|p| p.starts_with("token ids") && p.contains("BOS added")),
            "{api}: {:?}",
            ep.prompts
        );
        assert_eq!(
            sky(&mut loaded).expect("score"),
            vec![lp(4) + lp(6), lp(5) + lp(6)],
            "{api}"
        );
    }
}

#[test]
fn a_token_id_reply_that_does_not_line_up_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = vocab_tokenizer(dir.path());
    for api in ["vllm", "sglang", "openai-completions"] {
        let stand = Stand::start(ids_handler(1));
        let yaml = format!(
            "models:\n  big:\n    tokenizer: \"{}\"\n    endpoint: {{api: {api}, base_url: \"{}\"}}\n",
            tok.display(),
            stand.url()
        );
        let reg = Registry::parse(&yaml, "test.yaml").expect("registry");
        let mut loaded = open(&reg).expect("open");
        let e = sky(&mut loaded).expect_err("misaligned");
        assert!(e.contains("does not line up"), "{api}: {e}");
    }
}

#[test]
fn a_served_tokenizer_is_checked_against_the_api() {
    for (endpoint, tokenizer, want) in [
        (
            "{api: llama-server, base_url: \"http://h:1\"}",
            "t.json",
            "/tokenize",
        ),
        (
            "{api: tgi, base_url: \"http://h:1\"}",
            "t.json",
            "takes text",
        ),
        (
            "{api: vllm, base_url: \"http://h:1\"}",
            "nosuch",
            "neither a model",
        ),
        (
            "{api: vllm, base_url: \"http://h:1\"}",
            "other",
            "is a served model",
        ),
    ] {
        let text = format!(
            "models:\n  big:\n    tokenizer: {tokenizer}\n    endpoint: {endpoint}\n  other:\n    endpoint: {{api: vllm, base_url: \"http://h:2\"}}\n"
        );
        let Err(e) = Registry::parse(&text, "m.yaml") else {
            panic!("{endpoint} with {tokenizer}: accepted");
        };
        let e = e.to_string();
        assert!(e.contains(want) && e.contains("field `tokenizer`"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}
