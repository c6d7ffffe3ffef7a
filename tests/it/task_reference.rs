//! Fidelity tests of `slmbench::task` and `slmbench::metrics` against
//! lm-evaluation-harness 0.4.13: the zero-shot requests and the aggregate
//! metrics in `../shared/reference/smollm2-135m-instruct/`, built from the
//! data in `../shared/data/`; plus few-shot construction and error messages
//! on small inline fixtures.

use std::path::PathBuf;

use serde_json::Value as Json;
use slmbench::metrics::{aggregate, score_sample, AggregateOptions, Metric, SampleScore};
use slmbench::task::{
    build_instances, builtin_registry, BuildOptions, DataDir, Instance, SplitDocs, TaskDocs,
    TaskError, TaskRegistry, TaskSpec,
};

const REFERENCE_TASKS: [&str; 8] = [
    "copa",
    "arc_easy",
    "arc_challenge",
    "sst2",
    "rte",
    "mrpc",
    "cola",
    "wnli",
];

/// `../shared` relative to the crate, or `None` (with a notice) when absent
/// outside CI. In CI (`CI=true`) a missing directory fails the test.
fn shared_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if dir.join("data").is_dir() && dir.join("reference").is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{} is missing (required when CI=true)", dir.display());
    }
    eprintln!(
        "notice: {} not found; skipping reference test",
        dir.display()
    );
    None
}

fn reference_rows(shared: &std::path::Path, task: &str) -> Vec<Json> {
    let path = shared.join(format!("reference/smollm2-135m-instruct/{task}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("reference line is JSON"))
        .collect()
}

fn zero_shot(
    reg: &TaskRegistry,
    shared: &std::path::Path,
    task: &str,
) -> (TaskSpec, Vec<Instance>) {
    let spec = reg
        .resolve(&[task.to_string()])
        .expect("known task")
        .remove(0);
    let opts = BuildOptions {
        num_fewshot: Some(0),
        ..BuildOptions::default()
    };
    let docs = TaskDocs::load(&spec, &DataDir::new(shared.join("data")), 0).expect("data loads");
    let instances = build_instances(&spec, &docs, &opts).expect("instances build");
    (spec, instances)
}

#[test]
fn zero_shot_requests_match_lm_eval_byte_for_byte() {
    let Some(shared) = shared_dir() else { return };
    let reg = builtin_registry().expect("builtin suites load");
    let mut total = 0;
    for task in REFERENCE_TASKS {
        let (_, instances) = zero_shot(&reg, &shared, task);
        let rows = reference_rows(&shared, task);
        assert_eq!(instances.len(), rows.len(), "{task}: document count");
        let mut mismatches = Vec::new();
        for row in &rows {
            let id = row["doc_id"].as_u64().expect("doc_id") as usize;
            let inst = &instances[id];
            assert_eq!(inst.doc_id, id);
            let conts: Vec<&str> = row["continuations"]
                .as_array()
                .expect("continuations")
                .iter()
                .map(|c| c.as_str().expect("string"))
                .collect();
            let same = inst.context == row["context"].as_str().expect("context")
                && inst
                    .continuations
                    .iter()
                    .map(String::as_str)
                    .eq(conts.iter().copied())
                && inst.gold as u64 == row["gold"].as_u64().expect("gold");
            if !same {
                mismatches.push(id);
            }
        }
        println!(
            "{task}: {}/{} documents identical to lm-eval",
            rows.len() - mismatches.len(),
            rows.len()
        );
        assert!(
            mismatches.is_empty(),
            "{task}: documents differing from lm-eval: {mismatches:?}"
        );
        total += rows.len();
    }
    println!("all: {total} documents identical");
}

/// (value, stderr) of `metric` in results.json for `task`.
fn reference_metric(results: &Json, task: &str, metric: Metric) -> (f64, Option<f64>) {
    let r = &results["results"][task];
    let value = r[format!("{},none", metric.name())]
        .as_f64()
        .expect("metric value");
    let stderr = r[format!("{}_stderr,none", metric.name())].as_f64();
    (value, stderr)
}

#[test]
fn metrics_match_lm_eval_results() {
    let Some(shared) = shared_dir() else { return };
    let reg = builtin_registry().expect("builtin suites load");
    let results: Json = serde_json::from_str(
        &std::fs::read_to_string(shared.join("reference/smollm2-135m-instruct/results.json"))
            .expect("results.json"),
    )
    .expect("results.json is JSON");
    for task in REFERENCE_TASKS {
        let (spec, instances) = zero_shot(&reg, &shared, task);
        let rows = reference_rows(&shared, task);
        let mut samples: Vec<SampleScore> = Vec::new();
        for row in &rows {
            let inst = &instances[row["doc_id"].as_u64().expect("doc_id") as usize];
            let lls: Vec<f64> = row["loglikelihoods"]
                .as_array()
                .expect("lls")
                .iter()
                .map(|v| v.as_f64().expect("f64"))
                .collect();
            let lens: Vec<usize> = inst.choices.iter().map(|c| c.chars().count()).collect();
            let s = score_sample(&lls, &lens, inst.gold).expect("scores");
            assert_eq!(
                s.pred as u64,
                row["pred"].as_u64().expect("pred"),
                "{task} doc {}",
                inst.doc_id
            );
            for (key, got) in [("acc", s.acc()), ("acc_norm", s.acc_norm())] {
                if let Some(want) = row.get(key).and_then(Json::as_f64) {
                    assert_eq!(got, want, "{task} doc {} {key}", inst.doc_id);
                }
            }
            samples.push(s);
        }
        for &metric in &spec.metrics {
            let (want, want_se) = reference_metric(&results, task, metric);
            let got =
                aggregate(metric, &samples, &AggregateOptions::default()).expect("aggregates");
            assert!(
                (got.value - want).abs() <= 1e-12,
                "{task} {metric}: {} vs lm-eval {want}",
                got.value
            );
            let (got_se, want_se) = (
                got.stderr.expect("stderr"),
                want_se.expect("reference stderr"),
            );
            match metric {
                Metric::Acc | Metric::AccNorm => {
                    assert!(
                        (got_se - want_se).abs() <= 1e-12,
                        "{task} {metric}_stderr: {got_se} vs {want_se}"
                    )
                }
                Metric::F1 | Metric::Mcc => {
                    let ok = if want_se == 0.0 {
                        got_se == 0.0
                    } else {
                        (got_se / want_se - 1.0).abs() <= 0.15
                    };
                    assert!(
                        ok,
                        "{task} {metric}_stderr (1000 draws): {got_se} vs {want_se}"
                    );
                }
            }
            println!(
                "{task} {metric}: {} (lm-eval {want}), stderr {got_se} (lm-eval {want_se})",
                got.value
            );
        }
    }
}

/// lm-eval runs 100000 bootstrap draws by default; with the same count our
/// CPython-compatible draws reproduce its f1/mcc stderr. About 40 s in an
/// unoptimised build: run with `cargo test -- --ignored` (or `--release`).
#[test]
#[ignore = "slow without optimisation; run with --ignored"]
fn bootstrap_with_lm_eval_draw_count_reproduces_its_stderr() {
    let Some(shared) = shared_dir() else { return };
    let results: Json = serde_json::from_str(
        &std::fs::read_to_string(shared.join("reference/smollm2-135m-instruct/results.json"))
            .expect("results.json"),
    )
    .expect("results.json is JSON");
    let rows = reference_rows(&shared, "cola");
    let samples: Vec<SampleScore> = rows
        .iter()
        .map(|r| SampleScore {
            gold: r["gold"].as_u64().expect("gold") as usize,
            pred: r["pred"].as_u64().expect("pred") as usize,
            pred_norm: 0,
        })
        .collect();
    let (_, want) = reference_metric(&results, "cola", Metric::Mcc);
    let got = aggregate(
        Metric::Mcc,
        &samples,
        &AggregateOptions {
            bootstrap_iters: 100_000,
        },
    )
    .expect("aggregates");
    let (got, want) = (got.stderr.expect("stderr"), want.expect("reference stderr"));
    println!("cola mcc_stderr with 100000 draws: {got} (lm-eval {want})");
    assert!((got - want).abs() <= 1e-9, "{got} vs {want}");
}

const FEWSHOT_TASK: &str = "task: toy
dataset_path: toy
output_type: multiple_choice
training_split: train
validation_split: validation
description: \"Answer {{kind}}.\\n\\n\"
doc_to_text: \"Q: {{q}}\\nA:\"
doc_to_choice: \"{{options}}\"
doc_to_target: \"{{options.index(answer)}}\"
target_delimiter: \" \"
fewshot_delimiter: \"\\n\\n\"
num_fewshot: 2
metric_list:
  - metric: acc
";

fn toy_docs(n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"kind\": \"briefly\", \"q\": \"q{i}\", \"options\": [\"a{i}\", \"b{i}\"], \"answer\": \"b{i}\"}}\n"))
        .collect()
}

fn toy_spec(yaml: &str) -> TaskSpec {
    let mut reg = TaskRegistry::new();
    reg.add_yaml("toy.yaml", yaml).expect("toy task parses");
    reg.resolve(&["toy".to_string()])
        .expect("resolves")
        .remove(0)
}

#[test]
fn fewshot_context_follows_lm_eval() {
    let spec = toy_spec(FEWSHOT_TASK);
    let docs = TaskDocs {
        eval: SplitDocs::from_jsonl_str("toy/validation.jsonl", "validation", &toy_docs(2))
            .expect("eval"),
        fewshot: Some(
            SplitDocs::from_jsonl_str("toy/train.jsonl", "train", &toy_docs(10)).expect("train"),
        ),
    };
    let inst = build_instances(&spec, &docs, &BuildOptions::default()).expect("builds");
    // fewshot_split == test_split (both unset), so lm-eval passes the evaluated
    // document to the sampler: it draws n + 1 = 3 and keeps the first 2 that
    // differ from it (eval doc i is identical to train doc i here).
    // CPython: r = random.Random(1234); r.sample(range(10), 3) == [7, 1, 0];
    // then r.sample(range(10), 3) == [1, 0, 9].
    assert_eq!(
        inst[0].context,
        "Answer briefly.\n\nQ: q7\nA: b7\n\nQ: q1\nA: b1\n\nQ: q0\nA:"
    );
    assert_eq!(
        inst[1].context,
        "Answer briefly.\n\nQ: q0\nA: b0\n\nQ: q9\nA: b9\n\nQ: q1\nA:"
    );
    assert_eq!(inst[1].continuations, vec![" a1", " b1"]);
    assert_eq!(inst[1].gold, 1);

    // first_n takes the first documents of the pool, skipping the evaluated one.
    let spec = toy_spec(&format!(
        "{FEWSHOT_TASK}fewshot_config:\n  sampler: first_n\n"
    ));
    let docs = TaskDocs {
        eval: SplitDocs::from_jsonl_str("toy/validation.jsonl", "validation", &toy_docs(1))
            .expect("eval"),
        fewshot: docs.fewshot.clone(),
    };
    let inst = build_instances(&spec, &docs, &BuildOptions::default()).expect("builds");
    assert_eq!(
        inst[0].context,
        "Answer briefly.\n\nQ: q1\nA: b1\n\nQ: q2\nA: b2\n\nQ: q0\nA:"
    );

    // --limit and a num_fewshot override.
    let opts = BuildOptions {
        limit: Some(1),
        num_fewshot: Some(0),
        ..BuildOptions::default()
    };
    let inst = build_instances(&spec, &docs, &opts).expect("builds");
    assert_eq!(
        (inst.len(), inst[0].context.as_str()),
        (1, "Answer briefly.\n\nQ: q0\nA:")
    );
}

#[test]
fn template_error_names_file_line_and_field() {
    let spec = toy_spec(FEWSHOT_TASK);
    let eval = "{\"kind\": \"x\", \"q\": \"q0\", \"options\": [\"a\", \"b\"], \"answer\": \"a\"}\n\n{\"kind\": \"x\", \"options\": [\"a\", \"b\"], \"answer\": \"a\"}\n";
    let docs = TaskDocs {
        eval: SplitDocs::from_jsonl_str("toy/validation.jsonl", "validation", eval).expect("eval"),
        fewshot: None,
    };
    let opts = BuildOptions {
        num_fewshot: Some(0),
        ..BuildOptions::default()
    };
    let err = build_instances(&spec, &docs, &opts)
        .expect_err("doc 2 lacks q")
        .to_string();
    assert!(
        err.starts_with(
            "toy/validation.jsonl line 3: doc_to_text: undefined value (missing field?)"
        ),
        "{err}"
    );
    assert!(
        err.contains("fix the template or the data") && !err.contains('\n'),
        "{err}"
    );
}

#[test]
fn gold_out_of_range_is_an_error() {
    let yaml = FEWSHOT_TASK.replace("\"{{options.index(answer)}}\"", "label");
    let spec = toy_spec(&yaml);
    let eval = "{\"kind\": \"x\", \"q\": \"q\", \"options\": [\"a\", \"b\"], \"label\": 7}\n";
    let docs = TaskDocs {
        eval: SplitDocs::from_jsonl_str("toy/validation.jsonl", "validation", eval).expect("eval"),
        fewshot: None,
    };
    let opts = BuildOptions {
        num_fewshot: Some(0),
        ..BuildOptions::default()
    };
    let err = build_instances(&spec, &docs, &opts)
        .expect_err("label 7")
        .to_string();
    assert_eq!(
        err,
        "toy/validation.jsonl line 1: doc_to_target: gold label 7 out of range for 2 choices — fix the template or the data"
    );
}

#[test]
fn unknown_yaml_key_is_an_error() {
    let mut reg = TaskRegistry::new();
    let err = reg
        .add_yaml(
            "suites/toy.yaml",
            &format!("{FEWSHOT_TASK}doc_to_txt: oops\n"),
        )
        .expect_err("unknown key")
        .to_string();
    assert!(
        err.starts_with("suites/toy.yaml line 15 column 1: unknown field `doc_to_txt`"),
        "{err}"
    );
    assert!(matches!(
        reg.add_yaml(
            "t.yaml",
            &FEWSHOT_TASK.replace("multiple_choice", "loglikelihood")
        ),
        Err(TaskError::Spec { .. })
    ));
}

#[test]
fn registry_groups_and_unknown_names() {
    let reg = builtin_registry().expect("builtin suites load");
    let glue: Vec<String> = reg
        .resolve(&["glue".to_string()])
        .expect("glue")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(glue, ["sst2", "rte", "mrpc", "cola", "qnli", "wnli"]);
    let both = reg
        .resolve(&["copa".to_string(), "glue".to_string(), "copa".to_string()])
        .expect("resolves");
    assert_eq!(both.len(), 7);
    let err = reg
        .resolve(&["nope".to_string()])
        .expect_err("unknown")
        .to_string();
    assert!(
        err.starts_with("unknown task or group `nope` — use one of: ") && err.contains("arc_easy"),
        "{err}"
    );
    for name in [
        "copa",
        "arc_easy",
        "arc_challenge",
        "hellaswag",
        "sst2",
        "rte",
        "mrpc",
        "cola",
        "qnli",
        "wnli",
        "piqa",
    ] {
        assert!(reg.task(name).is_some(), "{name} is shipped");
    }
    assert_eq!(
        reg.task("wnli").and_then(TaskSpec::version).as_deref(),
        Some("2.0")
    );
}

/// The suites without a reference file still build from the shared data.
#[test]
fn other_shipped_suites_build() {
    let Some(shared) = shared_dir() else { return };
    let reg = builtin_registry().expect("builtin suites load");
    for (task, n) in [("qnli", 5463), ("hellaswag", 10042)] {
        let (_, instances) = zero_shot(&reg, &shared, task);
        assert_eq!(instances.len(), n, "{task}");
    }
    let (_, pq) = zero_shot(&reg, &shared, "piqa");
    assert_eq!(pq.len(), 1838);
    assert!(pq[0].context.starts_with("Question: ") && pq[0].context.ends_with("\nAnswer:"));
    assert_eq!(pq[0].continuations.len(), 2);
    let (_, hs) = zero_shot(&reg, &shared, "hellaswag");
    assert_eq!(
        hs[0].context,
        "Roof shingle removal: A man is sitting on a roof. he"
    );
    assert_eq!(
        hs[0].continuations[3],
        " starts pulling up roofing on a roof."
    );
    assert_eq!(hs[0].gold, 3);
}

#[test]
fn user_dir_on_top_of_builtin_and_missing_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toy = dir.path().join("toy.yaml");
    std::fs::write(&toy, FEWSHOT_TASK).expect("write");
    let copa = "task: copa\ndataset_path: mine\noutput_type: multiple_choice\nvalidation_split: validation\ndoc_to_text: \"{{premise}}\"\ndoc_to_choice: \"{{[choice1, choice2]}}\"\ndoc_to_target: label\n";
    let clash = tempfile::tempdir().expect("tempdir");
    std::fs::write(clash.path().join("my_copa.yaml"), copa).expect("write");
    let mut reg = builtin_registry().expect("builtin suites load");
    // A user task may not silently shadow a built-in one.
    let err = reg
        .add_dir(clash.path())
        .expect_err("clash refused")
        .to_string();
    assert!(
        err.contains("my_copa.yaml") && err.contains("`copa` is already a built-in name"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("my_copa.yaml"),
        copa.replace("task: copa", "task: my_copa"),
    )
    .expect("write");
    reg.add_dir(dir.path()).expect("user dir loads");
    assert_eq!(
        reg.task("my_copa").map(|t| t.dataset_path.as_str()),
        Some("mine")
    );
    assert_eq!(
        reg.task("arc_easy").map(|t| t.source.as_str()),
        Some("suites/arc_easy.yaml")
    );
    let spec = slmbench::task::load_task_file(&toy).expect("task file");
    assert_eq!(spec.name, "toy");
    assert_eq!(
        slmbench::task::load_suite_dir(dir.path())
            .expect("dir")
            .task_names(),
        ["my_copa", "toy"]
    );

    let err = DataDir::new(dir.path().join("data"))
        .load_split(&spec, "validation")
        .expect_err("no data")
        .to_string();
    assert!(
        err.starts_with("toy: split `validation` not found (tried "),
        "{err}"
    );
    assert!(
        err.contains("validation.jsonl") && err.contains("--data-dir"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("bad.yaml"),
        "task: bad\ninclude: arc_easy.yaml\n",
    )
    .expect("write");
    let err = TaskRegistry::default()
        .add_dir(dir.path())
        .expect_err("include of a missing file")
        .to_string();
    assert!(
        err.contains("bad.yaml: include: cannot read `arc_easy.yaml`"),
        "{err}"
    );
}
