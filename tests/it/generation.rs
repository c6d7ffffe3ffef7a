//! Generation tasks and chat templates: GSM8K's prompts, generations and
//! exact_match against lm-eval's on the same weights, resume after a kill,
//! chat templates rendered as transformers renders them, and generation on
//! served completions and chat endpoints (stand-ins on 127.0.0.1).

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use slmbench::task::{build_instances, BuildOptions, DataDir, TaskDocs};

use crate::common::{bin, model_path, read_jsonl, shared_dir};
use crate::served::{Req, Stand};

/// The binary run with `input` on its standard input.
fn with_stdin(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    child.wait_with_output().expect("wait")
}

#[test]
fn chat_templates_render_as_transformers() {
    let Some(shared) = shared_dir() else { return };
    let rows = read_jsonl(&shared.join("reference/chat_templates.jsonl"));
    assert_eq!(rows.len(), 16);
    for r in &rows {
        let model = r["model"].as_str().expect("model");
        model_path(model);
        let mut args = vec!["template", "--model", model];
        if r["add_generation_prompt"].as_bool() == Some(true) {
            args.push("--add-generation-prompt");
        }
        args.push("-");
        let o = with_stdin(&args, r["messages"].to_string().as_bytes());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            String::from_utf8(o.stdout).expect("utf-8"),
            r["rendered"].as_str().expect("rendered"),
            "{model}: {}",
            r["messages"]
        );
    }
    // A model without a template is a one-line error naming it.
    model_path("gemma3-270m");
    let o = with_stdin(
        &["template", "--model", "gemma3-270m", "-"],
        b"[{\"role\": \"user\", \"content\": \"hi\"}]",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("gemma3-270m") && err.contains("no chat template"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn gsm8k_prompts_and_targets_match_lm_eval() {
    let Some(shared) = shared_dir() else { return };
    let reg = slmbench::task::builtin_registry().expect("registry");
    let spec = reg.task("gsm8k").expect("gsm8k").clone();
    let docs = TaskDocs::load(&spec, &DataDir::new(shared.join("data")), 5).expect("data");
    let opts = BuildOptions {
        limit: Some(100),
        ..BuildOptions::default()
    };
    let inst = build_instances(&spec, &docs, &opts).expect("instances");
    let rows = read_jsonl(&shared.join("reference/smollm2-135m-instruct/gsm8k.jsonl"));
    assert_eq!(rows.len(), 100);
    for (i, r) in inst.iter().zip(&rows) {
        assert_eq!(i.doc_id as u64, r["doc_id"].as_u64().expect("id"));
        assert_eq!(
            i.context,
            r["prompt"].as_str().expect("prompt"),
            "doc {}",
            i.doc_id
        );
        assert_eq!(
            i.target.as_deref(),
            r["target"].as_str(),
            "doc {}",
            i.doc_id
        );
    }
}

/// Lines of `path` (0 when it does not exist yet).
fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

#[test]
fn gsm8k_generations_match_lm_eval_and_survive_a_kill() {
    let Some(shared) = shared_dir() else { return };
    model_path("smollm2-135m-instruct");
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("run");
    let data = shared.join("data");
    let n = 4;
    let limit = n.to_string();
    let args = [
        "run",
        "--model",
        "smollm2-135m-instruct",
        "--tasks",
        "gsm8k",
        "--dtype",
        "f32",
        "--limit",
        &limit,
        "--data-dir",
    ];
    let mut child = bin()
        .args(args)
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let samples = out.join("samples/smollm2-135m-instruct/gsm8k.jsonl");
    let t0 = Instant::now();
    while lines(&samples) < 1 && t0.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("kill");
    let _ = child.wait();
    let kept = lines(&samples);
    assert!(
        (1..n).contains(&kept),
        "{kept} documents written before the kill"
    );
    let o = bin()
        .arg("run")
        .arg("--resume")
        .arg(&out)
        .output()
        .expect("resume");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("results"))
            .expect("json");
    let cell = &results["cells"][0];
    assert_eq!(cell["resumed_samples"].as_u64(), Some(kept as u64));
    assert_eq!(cell["n"].as_u64(), Some(n as u64));
    let gen = &cell["generation"];
    assert!(gen["ttft"]["p50_ms"].as_f64().is_some(), "{gen}");
    assert!(gen["decode_tokens_per_s_p50"].as_f64().is_some(), "{gen}");
    let lm = &results["results"]["smollm2-135m-instruct"]["gsm8k"];
    assert!(lm["exact_match,strict-match"].is_number(), "{lm}");
    assert!(
        lm["exact_match_stderr,flexible-extract"].is_number(),
        "{lm}"
    );
    // Every document once, generated as lm-eval generated it.
    let rows = read_jsonl(&shared.join("reference/smollm2-135m-instruct/gsm8k.jsonl"));
    let got = read_jsonl(&samples);
    assert_eq!(got.len(), n);
    for s in &got {
        let id = s["doc_id"].as_u64().expect("id") as usize;
        let r = &rows[id];
        assert_eq!(s["generation"], r["generation"], "doc {id}");
        for f in ["strict-match", "flexible-extract"] {
            assert_eq!(s["filtered"][f], r["filtered"][f], "doc {id} {f}");
            assert_eq!(
                s[format!("exact_match,{f}")].as_f64(),
                r["exact_match"][f].as_f64(),
                "doc {id} {f}"
            );
        }
    }
}

const ARITH: &str = r#"task: arith
dataset_path: t/arith
output_type: generate_until
test_split: test
doc_to_text: "Q: {{q}}\nA:"
doc_to_target: "{{a}}"
generation_kwargs:
  until: ["\n", "Q:", "x1", "x2", "STOP"]
  max_gen_toks: 8
filter_list:
  - name: num
    filter:
      - function: regex
        regex_pattern: "(-?[0-9]+)"
      - function: take_first
"#;

/// A completions and chat stand-in: "1+1" is answered with a stop string
/// past the four a server is sent, "2+2" wrongly, and it records that no
/// request carried more than four stop strings.
fn arith_server(req: &Req, _n: usize) -> (u16, Vec<(String, String)>, String) {
    let ok = |v: Value| (200, vec![], v.to_string());
    let stops = req.body["stop"].as_array().map_or(0, Vec::len);
    if stops > 4 {
        return (
            400,
            vec![],
            json!({"error": "too many stop strings"}).to_string(),
        );
    }
    let prompt = req.body["prompt"]
        .as_str()
        .or(req.body["messages"][0]["content"].as_str())
        .unwrap_or("");
    let text = if prompt.contains("Answer with the letter") {
        // Multiple choice by letter: a letter for COPA's "because"
        // questions, no letter for the others.
        if prompt.contains("because") {
            "I think (B)."
        } else {
            "no idea"
        }
    } else if prompt.contains("1+1") {
        " 2 STOP 3"
    } else {
        " 5"
    };
    let usage = json!({"prompt_tokens": 7, "completion_tokens": 3});
    match req.path.as_str() {
        "/v1/models" => ok(json!({"data": []})),
        "/v1/completions" => {
            ok(json!({"choices": [{"text": text, "finish_reason": "stop"}], "usage": usage}))
        }
        "/v1/chat/completions" => ok(
            json!({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}], "usage": usage}),
        ),
        _ => (404, vec![], "{}".into()),
    }
}

#[test]
fn served_completions_and_chat_generate_with_client_side_stops() {
    let stand = Stand::start(Box::new(arith_server));
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    std::fs::write(dir.join("arith.yaml"), ARITH).expect("write");
    std::fs::create_dir_all(dir.join("data/t/arith")).expect("mkdir");
    std::fs::write(
        dir.join("data/t/arith/test.jsonl"),
        "{\"q\": \"1+1\", \"a\": \"2\"}\n{\"q\": \"2+2\", \"a\": \"4\"}\n",
    )
    .expect("write");
    let yaml = format!(
        "models:\n  comp:\n    endpoint: {{api: openai-completions, base_url: \"{u}\", model: m}}\n  chat:\n    endpoint: {{api: openai-chat, base_url: \"{u}\", model: m}}\n",
        u = stand.url()
    );
    std::fs::write(dir.join("models.yaml"), yaml).expect("write");
    let o = bin()
        .args([
            "run",
            "--models",
            "models.yaml",
            "--model",
            "comp",
            "--model",
            "chat",
            "--suite",
            "arith.yaml",
            "--tasks",
            "arith",
            "--data-dir",
            "data",
            "--out",
            "run",
        ])
        .current_dir(dir)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for model in ["comp", "chat"] {
        let s = read_jsonl(&dir.join(format!("run/samples/{model}/arith.jsonl")));
        assert_eq!(s.len(), 2, "{model}");
        assert_eq!(s[0]["generation"], " 2 ", "{model}: cut at STOP here");
        assert_eq!(s[0]["filtered"]["num"], "2");
        assert_eq!(s[0]["exact_match,num"], 1.0);
        assert_eq!(s[1]["generation"], " 5");
        assert_eq!(s[1]["exact_match,num"], 0.0);
        assert_eq!(s[0]["stop"], "until");
    }
    let results: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("run/results.json")).expect("results"),
    )
    .expect("json");
    let em = &results["results"]["comp"]["arith"];
    assert_eq!(em["exact_match,num"], 0.5);
    // Sample stddev of [1, 0] over sqrt(2).
    assert!((em["exact_match_stderr,num"].as_f64().expect("stderr") - 0.5).abs() < 1e-12);
    let served = &results["cells"][0]["served"];
    assert_eq!(served["requests"], 2);
    assert_eq!(served["completion_tokens"], 6);
    // The report shows generation cells and their first wrong answers.
    let o = bin()
        .args(["report", "run", "--out", "rep"])
        .current_dir(dir)
        .output()
        .expect("report");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(dir.join("rep/report.html")).expect("html");
    // The page's data holds each document's generation, the answer the
    // metric's filter extracted and the target, for the explorer.
    let start = html.find("id=\"slm-data\">").expect("data block") + 14;
    let end = start + html[start..].find("</script>").expect("end");
    let data: serde_json::Value = serde_json::from_str(&html[start..end]).expect("data JSON");
    let task = &data["tasks"][0];
    assert_eq!(task["name"], "arith");
    assert_eq!(task["gen"], true);
    let comp = data["models"]
        .as_array()
        .and_then(|m| m.iter().position(|x| x == "comp"))
        .expect("comp");
    let cell = data["cells"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["m"] == comp))
        .expect("comp's cell");
    let wrong = cell["ok"]
        .as_array()
        .and_then(|ok| ok.iter().position(|v| v == 0))
        .expect("one wrong document");
    assert_eq!(
        (
            &cell["gen"][wrong],
            &cell["ext"][wrong],
            &task["gold"][wrong]
        ),
        (
            &serde_json::json!(" 5"),
            &serde_json::json!("5"),
            &serde_json::json!("4")
        ),
        "{data}"
    );
    let md = std::fs::read_to_string(dir.join("rep/summary.md")).expect("md");
    assert!(md.contains("0.500 ± 0.500 (exact_match,num)"), "{md}");
}

#[test]
fn a_chat_endpoint_answers_multiple_choice_by_letter() {
    let stand = Stand::start(Box::new(arith_server));
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let yaml = format!(
        "models:\n  chat:\n    endpoint: {{api: openai-chat, base_url: \"{}\", model: m}}\n",
        stand.url()
    );
    std::fs::write(dir.join("models.yaml"), yaml).expect("write");
    let o = bin()
        .args(["run", "--models", "models.yaml", "--model", "chat"])
        .args(["--tasks", "smoke_copa", "--out", "run"])
        .current_dir(dir)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = read_jsonl(&dir.join("run/samples/chat/smoke_copa.jsonl"));
    assert_eq!(s.len(), 12);
    let (mut invalid, mut right) = (0, 0.0);
    for r in &s {
        let prompt = r["prompt"].as_str().expect("prompt");
        assert!(
            prompt.contains("\nA. ") && prompt.contains("\nB. "),
            "{prompt}"
        );
        let letter = r["filtered"]["letter"].as_str().expect("letter");
        if prompt.contains("because") {
            assert_eq!(letter, "B");
            assert_eq!(r["acc"], f64::from(u8::from(r["target"] == "B")));
        } else {
            assert_eq!(letter, "[invalid]");
            assert_eq!(r["acc"], 0.0);
            invalid += 1;
        }
        right += r["acc"].as_f64().expect("acc");
    }
    assert!(invalid > 0 && invalid < 12, "{invalid}");
    let results: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("run/results.json")).expect("results"),
    )
    .expect("json");
    let cell = &results["cells"][0];
    assert_eq!(cell["generation"]["invalid"], invalid);
    assert_eq!(cell["metrics"][0]["name"], "acc");
    assert!((cell["metrics"][0]["value"].as_f64().expect("acc") - right / 12.0).abs() < 1e-12);
    // Under --apply-chat-template the lettered prompt is still what is sent
    // (as one user turn), not the task's own conversation.
    let o = bin()
        .args(["run", "--models", "models.yaml", "--model", "chat"])
        .args([
            "--tasks",
            "smoke_copa",
            "--apply-chat-template",
            "--out",
            "run2",
        ])
        .current_dir(dir)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s2 = read_jsonl(&dir.join("run2/samples/chat/smoke_copa.jsonl"));
    let lettered = s2.iter().filter(|r| r["filtered"]["letter"] == "B").count();
    assert_eq!(lettered, 12 - invalid);
}

#[test]
fn bad_generation_keys_are_one_line_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    for (from, to, key) in [
        ("\"(-?[0-9]+)\"", "\"(-?[0-9]+\"", "regex_pattern"),
        (
            "function: take_first",
            "function: majority_vote",
            "filter_list.filter.function",
        ),
        (
            "until: [\"\\n\", \"Q:\", \"x1\", \"x2\", \"STOP\"]",
            "until: {a: 1}",
            "generation_kwargs.until",
        ),
        (
            "max_gen_toks: 8",
            "max_gen_toks: 0",
            "generation_kwargs.max_gen_toks",
        ),
    ] {
        let text = ARITH.replace(from, to);
        assert_ne!(text, ARITH, "{from}");
        let f = tmp.path().join("bad.yaml");
        std::fs::write(&f, text).expect("write");
        let o = bin()
            .args(["ls", "tasks", "--suite"])
            .arg(&f)
            .output()
            .expect("ls");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{to}: accepted");
        assert!(err.contains("bad.yaml") && err.contains(key), "{to}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

#[test]
fn chat_requests_follow_lm_eval_fewshot_context() {
    let Some(shared) = shared_dir() else { return };
    let reg = slmbench::task::builtin_registry().expect("registry");
    let data = DataDir::new(shared.join("data"));
    let build = |task: &str, k: usize, multiturn: Option<bool>, system: Option<&str>| {
        let spec = reg.task(task).expect("task").clone();
        let docs = TaskDocs::load(&spec, &data, k).expect("data");
        let opts = BuildOptions {
            limit: Some(2),
            num_fewshot: Some(k),
            system_instruction: system.map(str::to_string),
            chat: multiturn.map(|m| slmbench::task::ChatOptions {
                fewshot_as_multiturn: m,
            }),
            ..BuildOptions::default()
        };
        build_instances(&spec, &docs, &opts).expect("instances")
    };
    let plain = build("gsm8k", 2, None, None);
    let roles = |i: &slmbench::task::Instance| -> Vec<String> {
        i.messages
            .as_ref()
            .expect("messages")
            .iter()
            .map(|m| m.role.clone())
            .collect()
    };
    // Few-shot examples and the question share one user turn: its text is
    // the plain prompt.
    let one = build("gsm8k", 2, Some(false), None);
    assert_eq!(roles(&one[0]), ["user"]);
    assert_eq!(
        one[0].messages.as_ref().expect("m")[0].content,
        plain[0].context
    );
    // A system instruction is its own turn (and the plain prompt's head).
    let sys = build("gsm8k", 2, Some(false), Some("Be brief."));
    assert_eq!(roles(&sys[0]), ["system", "user"]);
    assert!(build("gsm8k", 2, None, Some("Be brief."))[0]
        .context
        .starts_with("Be brief.Question:"));
    // Multi-turn: question and answer turns, answers without the delimiter.
    let multi = build("gsm8k", 2, Some(true), Some("Be brief."));
    assert_eq!(
        roles(&multi[0]),
        ["system", "user", "assistant", "user", "assistant", "user"]
    );
    let m = multi[0].messages.as_ref().expect("m");
    assert!(m[1].content.starts_with("Question: ") && m[1].content.ends_with("\nAnswer:"));
    assert!(!m[2].content.starts_with(' ') && m[2].content.contains("#### "));
    // Multiple choice under a chat template: no target delimiter.
    let mc = build("arc_easy", 0, Some(false), None);
    let plain_mc = build("arc_easy", 0, None, None);
    for (c, p) in mc[0].continuations.iter().zip(&plain_mc[0].continuations) {
        assert_eq!(format!(" {c}"), *p);
    }
}

#[test]
fn apply_chat_template_on_a_model_without_one_fails_its_cells() {
    let Some(shared) = shared_dir() else { return };
    model_path("gemma3-270m");
    let tmp = tempfile::tempdir().expect("tmp");
    let o = bin()
        .args([
            "run",
            "--model",
            "gemma3-270m",
            "--tasks",
            "copa",
            "--limit",
            "2",
        ])
        .args(["--apply-chat-template", "--data-dir"])
        .arg(shared.join("data"))
        .arg("--out")
        .arg(tmp.path().join("run"))
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("gemma3-270m: the model has no chat template"),
        "{err}"
    );
    let o = bin()
        .args(["run", "--fewshot-as-multiturn", "--tasks", "copa"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--apply-chat-template"),
        "{err}"
    );
}
