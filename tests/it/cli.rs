//! The binary on bad input: one clear line naming the file/line/field and
//! the fix, exit code 2, no panic — and the default smoke run end to end.

use crate::common;

use crate::common::{assert_error, run_offline as run};

use std::path::{Path, PathBuf};
use std::process::Output;

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }
    fn run(&self, args: &[&str]) -> Output {
        run(args, &self.path().join("home"), self.path())
    }
}

#[test]
fn threads_zero_is_refused() {
    let s = Sandbox::new();
    assert_error(&s.run(&["run", "--threads", "0"]), &["--threads"]);
}

#[test]
fn malformed_and_unknown_key_models_yaml() {
    let s = Sandbox::new();
    s.write("m1.yaml", "models:\n  a:\n    file: [x\n");
    assert_error(
        &s.run(&["ls", "models", "--models", "m1.yaml"]),
        &["m1.yaml", "line 3"],
    );
    s.write(
        "m2.yaml",
        "models:\n  a:\n    file: x.gguf\n    colour: red\n",
    );
    assert_error(
        &s.run(&["validate", "m2.yaml"]),
        &["m2.yaml", "line 4", "colour"],
    );
}

#[test]
fn unknown_model_and_unknown_task() {
    let s = Sandbox::new();
    assert_error(
        &s.run(&["run", "--model", "nope"]),
        &["nope", "smollm2-135m-instruct"],
    );
    assert_error(&s.run(&["run", "--tasks", "nope"]), &["nope"]);
}

#[test]
fn unknown_key_in_task_file() {
    let s = Sandbox::new();
    let yaml = "task: t1\ndataset_path: x\noutput_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: [a, b]\ndoc_to_target: 0\nbogus_key: 1\n";
    s.write("t1.yaml", yaml);
    assert_error(&s.run(&["validate", "t1.yaml"]), &["t1.yaml", "bogus_key"]);
}

fn tiny_task(s: &Sandbox, data: &str) {
    s.write(
        "suite/t1.yaml",
        "task: t1\ndataset_path: my/data\nvalidation_split: validation\noutput_type: multiple_choice\ndoc_to_text: \"{{question}}\"\ndoc_to_choice: [\"no\", \"yes\"]\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n",
    );
    s.write("data/my/data/validation.jsonl", data);
}

#[test]
fn missing_data_dir_and_split() {
    let s = Sandbox::new();
    tiny_task(&s, "{\"question\": \"q\", \"label\": 0}\n");
    assert_error(
        &s.run(&["run", "--suite", "suite", "--tasks", "t1"]),
        &["--data-dir"],
    );
    assert_error(
        &s.run(&[
            "run",
            "--suite",
            "suite",
            "--tasks",
            "t1",
            "--data-dir",
            "nowhere",
        ]),
        &["nowhere"],
    );
    assert_error(
        &s.run(&["run", "--tasks", "copa", "--data-dir", "data"]),
        &["copa", "validation"],
    );
}

fn run_t1(s: &Sandbox) -> Output {
    s.run(&[
        "run",
        "--suite",
        "suite",
        "--tasks",
        "t1",
        "--data-dir",
        "data",
    ])
}

#[test]
fn bad_jsonl_lines_name_file_and_line() {
    let s = Sandbox::new();
    tiny_task(&s, "{\"question\": \"q\", \"label\": 0}\nnot json\n");
    assert_error(&run_t1(&s), &["validation.jsonl", "line 2"]);
    tiny_task(&s, "{\"question\": \"q\", \"label\": 0}\n{\"label\": 1}\n");
    assert_error(&run_t1(&s), &["validation.jsonl", "line 2", "doc_to_text"]);
    tiny_task(&s, "{\"question\": \"q\", \"label\": 7}\n");
    assert_error(&run_t1(&s), &["line 1", "7"]);
}

fn path_model(s: &Sandbox, file: &Path, sha: Option<&str>) {
    let sha = sha
        .map(|h| format!("    sha256: {h}\n"))
        .unwrap_or_default();
    s.write(
        "models.yaml",
        &format!(
            "default: bad\nmodels:\n  bad:\n    file: bad.gguf\n{sha}    sources:\n      - path: {}\n",
            file.display()
        ),
    );
}

#[test]
fn non_gguf_and_truncated_model_files() {
    let s = Sandbox::new();
    let junk = s.write("junk.bin", "this is not a gguf file at all, just text\n");
    path_model(&s, &junk, None);
    assert_error(
        &s.run(&["tokenize", "--model", "bad", "hi"]),
        &["bad.gguf", "GGUF"],
    );
    // A smoke run records the failure, keeps going and exits 2.
    let out = s.run(&["run", "--out", "r"]);
    assert_error(&out, &["bad"]);
    assert!(s.path().join("r/results.json").exists());

    // A real GGUF cut short: the header parses, the tensor data is missing.
    let real = std::fs::read(common::model_path("smollm2-135m-instruct")).expect("model");
    let cut = s.path().join("cut.gguf");
    std::fs::write(&cut, &real[..4 << 20]).expect("write");
    path_model(&s, &cut, None);
    assert_error(
        &s.run(&["tokenize", "--model", "bad", "hi"]),
        &["bad.gguf", "truncated"],
    );
}

#[test]
fn sha256_mismatch_is_an_error() {
    let s = Sandbox::new();
    let junk = s.write("junk.bin", "x");
    path_model(&s, &junk, Some(&"0".repeat(64)));
    assert_error(&s.run(&["fetch", "bad"]), &["sha256"]);
}

#[test]
fn unknown_pre_tokenizer_is_an_error() {
    use candle_core::quantized::gguf_file::{write, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    let s = Sandbox::new();
    let path = s.path().join("tok.gguf");
    let toks = Value::Array(vec![Value::String("a".into()), Value::String("b".into())]);
    let meta = [
        ("general.architecture", Value::String("llama".into())),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("mystery".into())),
        ("tokenizer.ggml.tokens", toks),
        ("tokenizer.ggml.merges", Value::Array(vec![])),
    ];
    let t = candle_core::Tensor::zeros((2, 32), candle_core::DType::F32, &candle_core::Device::Cpu)
        .expect("tensor");
    let q = QTensor::quantize(&t, GgmlDType::F32).expect("qtensor");
    let mut f = std::fs::File::create(&path).expect("create");
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    write(&mut f, &meta_refs, &[("token_embd.weight", &q)]).expect("write gguf");
    drop(f);
    path_model(&s, &path, None);
    assert_error(
        &s.run(&["tokenize", "--model", "bad", "hi"]),
        &["mystery", "pre-tokenizer"],
    );
}

#[test]
fn default_run_writes_results_and_samples() {
    if common::shared_dir().is_none() {
        return;
    }
    // The real default model, fetched into the user's cache (not the sandbox).
    common::model_path("smollm2-135m-instruct");
    let s = Sandbox::new();
    let out = common::bin()
        .args(["run", "--out", "r", "--threads", "2"])
        .current_dir(s.path())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("smoke_copa") && stdout.contains("± "),
        "{stdout}"
    );
    let r = s.path().join("r");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.join("results.json")).expect("json"))
            .expect("parse");
    let copa = &results["results"]["smollm2-135m-instruct"]["smoke_copa"];
    assert!(
        copa["acc,none"].is_f64() && copa["acc_stderr,none"].is_f64(),
        "{copa}"
    );
    assert_eq!(copa["n"], 12);
    // Measurements: present where measurable, with their method.
    let cell = &results["cells"][0];
    let kv = cell["kv_cache_peak_bytes"].as_u64().expect("kv bytes");
    // SmolLM2: 30 layers × 3 KV heads × 64 dims × (K+V) × 4 bytes per cached token.
    assert!(kv > 0 && kv.is_multiple_of(30 * 3 * 64 * 2 * 4), "{kv}");
    assert!(cell["latency"]["p50_ms"].as_f64().expect("p50") > 0.0);
    assert!(cell["tokens_per_s"].as_f64().expect("t/s") > 0.0);
    assert!(cell["energy"]["energy_j"].as_f64().expect("energy") > 0.0);
    let method = cell["energy"]["method"].as_str().expect("method");
    assert!(method == "rapl" || method == "estimate");
    assert!(results["environment"]["isa_flags"].is_array());
    assert!(r.join("results.csv").exists());
    let samples = common::read_jsonl(&r.join("samples/smollm2-135m-instruct/smoke_arc.jsonl"));
    assert_eq!(samples.len(), 12);
    assert_eq!(
        samples[0]["loglikelihoods"].as_array().map(Vec::len),
        Some(4)
    );

    // Resume after losing the last samples: only they are recomputed.
    let p = r.join("samples/smollm2-135m-instruct/smoke_sst2.jsonl");
    let keep: Vec<String> = std::fs::read_to_string(&p)
        .expect("read")
        .lines()
        .take(5)
        .map(String::from)
        .collect();
    std::fs::write(&p, keep.join("\n") + "\n{\"doc_id\": 5, \"go").expect("truncate");
    let mut rec = results.clone();
    rec["cells"] = serde_json::json!([]);
    std::fs::write(r.join("results.json"), rec.to_string()).expect("rewrite");
    let out = common::bin()
        .args(["run", "--resume", "r"])
        .current_dir(s.path())
        .output()
        .expect("resume");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = common::read_jsonl(&p);
    assert_eq!(again.len(), 12);
    let resumed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.join("results.json")).expect("json"))
            .expect("parse");
    let cells = resumed["cells"].as_array().expect("cells");
    let sst2 = cells
        .iter()
        .find(|c| c["task"] == "smoke_sst2")
        .expect("sst2 cell");
    assert_eq!(sst2["resumed_samples"], 5);
    assert_eq!(
        resumed["results"]["smollm2-135m-instruct"]["smoke_sst2"]["acc,none"],
        results["results"]["smollm2-135m-instruct"]["smoke_sst2"]["acc,none"]
    );
}

#[test]
fn bench_prints_rows_in_every_format() {
    common::model_path("smollm2-135m-instruct");
    let run = |fmt: &str| {
        let out = common::bin()
            .args(["bench", "--model", "smollm2-135m-instruct"])
            .args(["-p", "16", "-n", "4", "-t", "1", "-r", "2", "-o", fmt])
            .output()
            .expect("bench");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    };
    let rows: serde_json::Value = serde_json::from_str(&run("json")).expect("json rows");
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["test"], "pp16");
    assert_eq!(rows[1]["test"], "tg4");
    assert_eq!(rows[0]["quant_type"], "Q4_1");
    assert_eq!(rows[0]["threads"], 1);
    assert!(rows[0]["tokens_per_s_mean"].as_f64().expect("t/s") > 0.0);
    assert!(rows[0]["ttft_ms_mean"].as_f64().is_some());
    assert!(rows[1]["ttft_ms_mean"].is_null());
    let csv = run("csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    let cols = lines[0].split(',').count();
    assert!(lines[0].starts_with("model,model_file,architecture,quant_type"));
    // The CPU column is quoted; no other field holds a comma.
    assert_eq!(lines[1].split(',').count(), cols, "{}", lines[1]);
    assert!(run("table").contains("| tg4 |"));
}

/// A run directory holding only its `results.json`, as a run interrupted
/// before its first sample leaves it.
fn stored_run(s: &Sandbox, dir: &str) -> PathBuf {
    let cfg = slmbench::plan::RunConfig {
        models: vec!["smollm2-135m-instruct".into()],
        models_file: None,
        tasks: vec!["smoke".into()],
        suite_files: vec![],
        data_dir: None,
        limit: Some(3),
        num_fewshot: None,
        dtype: None,
        threads: 1,
        seed: slmbench::task::DEFAULT_FEWSHOT_SEED,
        bootstrap_iters: 1000,
        cpu_watts: slmbench::measure::energy::DEFAULT_CPU_WATTS_PER_CORE,
        grid_g_per_kwh: slmbench::measure::energy::DEFAULT_GRID_G_PER_KWH,
        shard: None,
        pack_tokens: slmbench::backend::DEFAULT_PACK_TOKENS,
        apply_chat_template: false,
        fewshot_as_multiturn: false,
        system_instruction: None,
    };
    let rec = slmbench::record::RunRecord {
        run_id: dir.into(),
        status: "running".into(),
        started_at: "2026-12-07T00:00:00+00:00".into(),
        finished_at: None,
        wall_time_s: 0.0,
        config: serde_json::to_value(&cfg).expect("config"),
        environment: Default::default(),
        models: Default::default(),
        cells: vec![],
        versions: Default::default(),
        datasets: Default::default(),
    };
    let path = s.path().join(dir);
    std::fs::create_dir_all(&path).expect("mkdir");
    rec.write(&path).expect("write results.json");
    path
}

#[test]
fn out_on_an_existing_run_directory_needs_resume_or_force() {
    let s = Sandbox::new();
    stored_run(&s, "r");
    assert_error(
        &s.run(&["run", "--out", "r", "--limit", "2"]),
        &["--out r", "--resume r", "--force"],
    );
    // The refused run left the directory as it was.
    assert!(s.path().join("r/results.json").is_file());
}

#[test]
fn resume_with_a_conflicting_flag_names_it() {
    let s = Sandbox::new();
    stored_run(&s, "r");
    assert_error(
        &s.run(&["run", "--resume", "r", "--num-fewshot", "2"]),
        &["--resume r", "--num-fewshot"],
    );
    assert_error(
        &s.run(&["run", "--resume", "r", "--limit", "5"]),
        &["--limit"],
    );
    assert_error(
        &s.run(&["run", "--resume", "r", "--dtype", "f32"]),
        &["--dtype"],
    );
    assert_error(
        &s.run(&["run", "--resume", "r", "--out", "other"]),
        &["--out"],
    );
}

#[test]
fn an_os_error_is_printed_once() {
    let s = Sandbox::new();
    // Was "…results.json: No such file or directory (os error 2): No such
    // file or directory (os error 2)".
    assert_error(
        &s.run(&["run", "--resume", "no-such-run"]),
        &["no-such-run", "os error 2"],
    );
    assert_error(
        &s.run(&["run", "--suite", "no-such-dir", "--tasks", "copa"]),
        &["no-such-dir"],
    );
}

#[test]
fn thread_counts_past_the_machine_are_refused() {
    let s = Sandbox::new();
    assert_error(
        &s.run(&["run", "--threads", "10000"]),
        &["--threads 10000", "logical cores"],
    );
    assert_error(
        &s.run(&["bench", "--model", "smollm2-135m-instruct", "-t", "100000"]),
        &["--threads 100000"],
    );
}

#[test]
fn grid_intensity_must_be_finite_and_not_negative() {
    let s = Sandbox::new();
    for v in ["inf", "NaN", "1e309", "-100"] {
        assert_error(
            &s.run(&["run", &format!("--grid-intensity={v}")]),
            &["--grid-intensity"],
        );
    }
}

#[test]
fn an_empty_task_selection_is_an_error() {
    let s = Sandbox::new();
    assert_error(&s.run(&["run", "--tasks", ""]), &["--tasks", "no task"]);
}

#[test]
fn task_names_that_are_not_file_names_are_refused() {
    let s = Sandbox::new();
    for name in ["../../../x", "/tmp/abs", ".hidden", "a\\\\b"] {
        let yaml = format!("task: \"{name}\"\ndataset_path: x\noutput_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: [a, b]\ndoc_to_target: 0\n");
        s.write("t.yaml", &yaml);
        assert_error(&s.run(&["validate", "t.yaml"]), &["t.yaml", "file name"]);
    }
}

#[test]
fn export_does_not_overwrite_without_force() {
    let s = Sandbox::new();
    s.write("exists.gguf", "keep me");
    assert_error(
        &s.run(&["export", "smollm2-135m-instruct", "--out", "exists.gguf"]),
        &["exists.gguf", "--force"],
    );
    assert_eq!(
        std::fs::read_to_string(s.path().join("exists.gguf")).expect("read"),
        "keep me"
    );
}

/// The binary in the sandbox with the user's model cache.
fn cached(s: &Sandbox, args: &[&str]) -> Output {
    common::model_path("smollm2-135m-instruct");
    common::bin()
        .args(args)
        .current_dir(s.path())
        .output()
        .expect("run")
}

#[test]
fn report_reads_a_run_given_twice_once() {
    let s = Sandbox::new();
    let o = cached(&s, &["run", "--tasks", "smoke_copa", "--out", "r"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let one = cached(&s, &["report", "r", "--out", "rep1"]);
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    let two = cached(&s, &["report", "r", "r/", "--out", "rep2"]);
    assert!(
        two.status.success(),
        "{}",
        String::from_utf8_lossy(&two.stderr)
    );
    assert!(String::from_utf8_lossy(&two.stderr).contains("given more than once"));
    let read = |d: &str| std::fs::read_to_string(s.path().join(d).join("summary.md")).expect("md");
    assert_eq!(read("rep1"), read("rep2"));
}

#[test]
fn bench_refuses_lengths_past_the_context_window_up_front() {
    let s = Sandbox::new();
    let o = cached(
        &s,
        &[
            "bench",
            "--model",
            "smollm2-135m-instruct",
            "-p",
            "100000",
            "-t",
            "1",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("exceed the model's context window of 8192"),
        "{err}"
    );
}
