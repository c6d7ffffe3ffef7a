//! `report` and `compare` on hand-built run directories (snapshot tests of
//! the writers, the HTML page in headless Chromium, regression verdicts and
//! JUnit XML), and a sharded real run merged by `report`.

use crate::common;

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use slmbench::measure::energy::EnergyMethod;
use slmbench::measure::{PeakRss, RssScope};
use slmbench::record::{
    samples_path, CellEnergy, CellResult, CellStatus, Environment, LatencyStats, MetricValue,
    ModelRecord, RunRecord, SampleRecord, SampleWriter,
};
use slmbench::report::{self, Run};

const N: usize = 40;

/// Correct on document i when `correct(i)`; the text of document 0 carries
/// markup that the HTML page must show as text.
fn samples(correct: &dyn Fn(usize) -> bool, metric: &str, n: usize) -> Vec<SampleRecord> {
    (0..n)
        .map(|i| {
            let ok = correct(i);
            let pred = if ok { 0 } else { 1 };
            let value = if metric == "acc" {
                Value::from(f64::from(u8::from(ok)))
            } else {
                Value::from(vec![0, pred])
            };
            SampleRecord {
                doc_id: i,
                gold: 0,
                context: if i == 0 {
                    "<script>alert('x')</script> & more".into()
                } else if i == 1 {
                    "</script><script>window.pwned=2</script><img src=x onerror=\"window.pwned=3\"> ok?".into()
                } else {
                    format!("Question {i}?")
                },
                continuations: vec![" yes".into(), " no <b>".into()],
                loglikelihoods: vec![-1.0 - (i % 3) as f64, -1.5],
                is_greedy: vec![ok, !ok],
                pred,
                metrics: Map::from_iter([(metric.to_string(), value)]),
                pred_norm: pred,
                continuation_tokens: vec![1, 2],
                truncated: false,
                latency_ms: Some(10.0),
            }
        })
        .collect()
}

pub(crate) struct CellSpec {
    pub model: &'static str,
    pub task: &'static str,
    pub correct: fn(usize) -> bool,
    pub latency_ms: f64,
    pub rss_mib: u64,
}

fn cell(spec: &CellSpec, samples: &[SampleRecord]) -> CellResult {
    let n = samples.len();
    let k = samples.iter().filter(|s| s.pred == s.gold).count() as f64;
    let p = k / n as f64;
    let metric = if spec.task == "cola" {
        MetricValue {
            name: "mcc".into(),
            value: 2.0 * p - 1.0,
            stderr: Some(0.1),
        }
    } else {
        MetricValue {
            name: "acc".into(),
            value: p,
            stderr: Some((p * (1.0 - p) / (n as f64 - 1.0)).sqrt()),
        }
    };
    CellResult {
        model: spec.model.into(),
        task: spec.task.into(),
        status: CellStatus::Ok,
        metrics: vec![metric],
        n,
        num_fewshot: 0,
        truncated: 0,
        wall_time_s: spec.latency_ms * n as f64 / 1000.0,
        tokens_forwarded: 1000,
        tokens_per_s: Some(2500.0),
        latency: Some(LatencyStats {
            p50_ms: spec.latency_ms,
            p90_ms: spec.latency_ms * 1.5,
            p99_ms: spec.latency_ms * 2.0,
            mean_ms: spec.latency_ms,
            sd_ms: Some(1.0),
            n: n - 1,
            warmup_excluded: 1,
        }),
        peak_rss: Some(PeakRss {
            bytes: spec.rss_mib << 20,
            scope: RssScope::Cell,
            sampled_bytes: None,
        }),
        kv_cache_peak_bytes: Some(4096),
        energy: Some(CellEnergy {
            method: EnergyMethod::Estimate,
            note: "estimated: CPU time × 10 W per core".into(),
            energy_j: spec.latency_ms,
            energy_per_doc_j: Some(spec.latency_ms / n as f64),
            energy_per_1k_tokens_j: Some(1.0),
            energy_per_1k_prompt_tokens_j: Some(1.0),
            energy_per_1k_generated_tokens_j: None,
            split_note: None,
            co2e_g: 0.001,
            grid_g_per_kwh: 475.0,
            gpu: None,
        }),
        resumed_samples: 0,
        error: None,
        served: None,
        generation: None,
    }
}

fn model_record(params: u64) -> ModelRecord {
    ModelRecord {
        backend: "local".into(),
        file: Some("m.gguf".into()),
        sha256: None,
        architecture: Some("llama".into()),
        dtype: "quantized".into(),
        file_bytes: Some(params / 2),
        n_layer: Some(2),
        hidden: Some(8),
        vocab: Some(16),
        context_length: 128,
        load_time_s: 0.5,
        load_rss_delta_bytes: Some(1 << 20),
        quant_type: None,
        weight_types: Default::default(),
        params: Some(params),
        nonzero_params: None,
        weight_bytes_file: Some(params / 2),
        weight_bytes_memory: Some(params / 2),
        bits_per_weight: Some(4.0),
        lineage: None,
        endpoint: None,
    }
}

pub(crate) fn write_run(dir: &Path, run_id: &str, cells: &[CellSpec]) -> PathBuf {
    write_run_n(dir, run_id, cells, N)
}

/// [`write_run`] with `n` documents per cell.
pub(crate) fn write_run_n(dir: &Path, run_id: &str, cells: &[CellSpec], n: usize) -> PathBuf {
    let mut rec = RunRecord {
        run_id: run_id.into(),
        status: "complete".into(),
        started_at: "2026-01-01T00:00:00+00:00".into(),
        finished_at: Some("2026-01-01T00:01:00+00:00".into()),
        wall_time_s: 60.0,
        config: Value::Null,
        environment: Environment {
            slmbench_version: "0.0.0".into(),
            git_hash: "abc".into(),
            build_profile: "release".into(),
            cpu: "Test CPU".into(),
            cores_logical: 2,
            threads: 2,
            os: "Linux".into(),
            total_memory_bytes: Some(1 << 30),
            ..Default::default()
        },
        models: Default::default(),
        cells: Vec::new(),
        versions: Default::default(),
        datasets: Default::default(),
    };
    let run_dir = dir.join(run_id);
    for spec in cells {
        let metric = if spec.task == "cola" { "mcc" } else { "acc" };
        let ss = samples(&spec.correct, metric, n);
        let mut w =
            SampleWriter::open(&samples_path(&run_dir, spec.model, spec.task)).expect("samples");
        for s in &ss {
            w.append(s).expect("append");
        }
        rec.cells.push(cell(spec, &ss));
        let params = if spec.model == "alpha" {
            135_000_000
        } else {
            270_000_000
        };
        rec.models.insert(spec.model.into(), model_record(params));
    }
    rec.write(&run_dir).expect("write run");
    run_dir
}

pub(crate) fn good_cells() -> Vec<CellSpec> {
    vec![
        CellSpec {
            model: "alpha",
            task: "copa",
            correct: |i| i % 4 != 0,
            latency_ms: 20.0,
            rss_mib: 300,
        },
        CellSpec {
            model: "alpha",
            task: "cola",
            correct: |i| i % 3 != 0,
            latency_ms: 22.0,
            rss_mib: 310,
        },
        CellSpec {
            model: "beta",
            task: "copa",
            correct: |i| i % 2 == 0,
            latency_ms: 40.0,
            rss_mib: 500,
        },
        CellSpec {
            model: "beta",
            task: "cola",
            correct: |i| i % 5 != 0,
            latency_ms: 41.0,
            rss_mib: 505,
        },
    ]
}

fn load(dirs: &[PathBuf]) -> Vec<Run> {
    dirs.iter()
        .map(|d| Run::load(d).expect("load run"))
        .collect()
}

#[test]
fn writers_match_snapshots() {
    let tmp = tempfile::tempdir().expect("tmp");
    let runs = load(&[write_run(tmp.path(), "run-a", &good_cells())]);
    let rows = report::long_rows(&runs);
    let points = report::model_points(&runs);
    insta::assert_snapshot!(
        "summary_md",
        report::table::markdown_summary(&rows, &points)
    );
    let mut df = report::table::dataframe(&rows).expect("df");
    let csv = String::from_utf8(report::table::csv_bytes(&mut df).expect("csv")).expect("utf8");
    insta::assert_snapshot!("long_csv", csv);
    let json: Value =
        serde_json::from_slice(&report::table::json_bytes(&mut df).expect("json")).expect("parse");
    insta::assert_json_snapshot!("long_json", json);
}

pub(crate) fn report_cmd(runs: &[&Path], out: &Path) -> std::process::Output {
    let mut cmd = common::bin();
    cmd.arg("report");
    for r in runs {
        cmd.arg(r);
    }
    cmd.arg("--out").arg(out).output().expect("report")
}

#[test]
fn report_writes_every_format_and_escapes_text() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = write_run(tmp.path(), "run-a", &good_cells());
    let out_dir = tmp.path().join("out");
    let out = report_cmd(&[&run], &out_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "results_long.csv",
        "results_long.json",
        "results_long.parquet",
        "summary.md",
        "report.html",
        "score_vs_latency.png",
        "score_vs_latency.svg",
        "score_vs_memory.png",
        "score_vs_energy.svg",
        "score_vs_params.png",
        "score_vs_file_size.png",
        "score_by_task.png",
    ] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    let png = std::fs::read(out_dir.join("score_by_task.png")).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(out_dir.join("score_vs_latency.svg")).expect("svg");
    assert!(svg.contains("<svg") && svg.contains("Pareto frontier") && svg.contains("alpha"));
    let html = std::fs::read_to_string(out_dir.join("report.html")).expect("html");
    // Dataset text sits in the JSON data block with `<` escaped, and the
    // page holds exactly its two script elements.
    assert!(html.contains("\\u003cscript\\u003ealert('x')\\u003c/script\\u003e"));
    assert!(!html.contains("<script>alert") && !html.contains("<img"));
    assert_eq!(html.matches("<script").count(), 2);
    let csv = std::fs::read_to_string(out_dir.join("significance.csv")).expect("csv");
    // copa has per-document correctness for alpha and beta: one pair.
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(
        csv.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("copa,acc,alpha,beta,40,")),
        "{csv}"
    );
    assert!(!html.contains("http://") && !html.contains("https://") || html.contains("xmlns"));
    assert_eq!(html.matches("<figure class=\"chart\"").count(), 6);
    // Parquet reads back with the same rows as the CSV.
    let df = polars::prelude::ParquetReader::new(
        std::fs::File::open(out_dir.join("results_long.parquet")).expect("open"),
    );
    use polars::prelude::SerReader;
    assert_eq!(df.finish().expect("parquet").height(), 4);
}

/// The headless browser check. Without Chromium the test is skipped, unless
/// `CI=true` (`.ci/run` installs it).
#[test]
fn html_renders_in_headless_chromium() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = write_run(tmp.path(), "run-a", &good_cells());
    let out_dir = tmp.path().join("out");
    assert!(report_cmd(&[&run], &out_dir).status.success());
    let Some((dom, log)) = common::chromium_dom(&out_dir.join("report.html")) else {
        return;
    };
    // The page's one script ran and counted six inline SVG charts.
    assert!(dom.contains("data-rendered=\"6\""), "{log}\n{dom:.2000}");
    // The dataset's markup stayed text.
    assert!(dom.contains("data-ready=\"1\""), "{dom:.2000}");
    assert!(!dom.contains("<script>alert") && !dom.contains("<img"));
}

pub(crate) fn compare_cmd(base: &Path, cur: &Path, extra: &[&Path]) -> std::process::Output {
    common::bin()
        .arg("compare")
        .arg(base)
        .arg(cur)
        .args(extra)
        .output()
        .expect("compare")
}

fn compare_junit(base: &Path, cur: &Path, junit: &Path) -> std::process::Output {
    compare_cmd(base, cur, &[Path::new("--junit"), junit])
}

#[test]
fn compare_against_itself_passes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = write_run(tmp.path(), "run-a", &good_cells());
    let junit = tmp.path().join("j.xml");
    let out = compare_junit(&run, &run, &junit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("no regression"), "{stdout}");
    let xml = std::fs::read_to_string(&junit).expect("junit");
    let doc = roxmltree::Document::parse(&xml).expect("valid XML");
    let root = doc.root_element();
    // 4 cells × 5 checks (score, power, latency, memory, energy; energy
    // is off, and 40 documents cannot detect a 1-point drop).
    assert_eq!(root.attribute("tests"), Some("20"));
    assert_eq!(root.attribute("failures"), Some("0"));
    assert_eq!(root.attribute("skipped"), Some("8"));
    assert_eq!(
        doc.descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .count(),
        20
    );
    assert_eq!(
        doc.descendants()
            .filter(|n| n.attribute("type") == Some("underpowered"))
            .count(),
        4
    );
}

#[test]
fn compare_against_a_worse_run_names_the_regressions() {
    let tmp = tempfile::tempdir().expect("tmp");
    let base = write_run(tmp.path(), "base", &good_cells());
    let mut worse = good_cells();
    // alpha/copa: right on 30 of 40 before, 10 now (20 docs flip to wrong).
    worse[0].correct = |i| i % 4 == 1;
    // beta/cola: 40% slower, same answers.
    worse[3].latency_ms = 41.0 * 1.4;
    let cur = write_run(tmp.path(), "cur", &worse);
    let junit = tmp.path().join("j.xml");
    let out = compare_junit(&base, &cur, &junit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("regressed: alpha/copa: score"), "{stderr}");
    assert!(stderr.contains("regressed: beta/cola: latency"), "{stderr}");
    assert!(!stderr.contains("regressed: alpha/cola"), "{stderr}");
    assert!(stdout.contains("2 regressed cell(s)"), "{stdout}");
    let xml = std::fs::read_to_string(&junit).expect("junit");
    let doc = roxmltree::Document::parse(&xml).expect("valid XML");
    assert_eq!(doc.root_element().attribute("failures"), Some("2"));
    let failed: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .filter(|n| n.children().any(|c| c.has_tag_name("failure")))
        .map(|n| {
            format!(
                "{} {}",
                n.attribute("classname").unwrap_or(""),
                n.attribute("name").unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        failed,
        vec!["slmbench.alpha copa score", "slmbench.beta cola latency"]
    );
}

#[test]
fn compare_policy_errors_are_one_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = write_run(tmp.path(), "run-a", &good_cells());
    let policy = tmp.path().join("p.yaml");
    std::fs::write(&policy, "alpha: 2\n").expect("write");
    let out = compare_cmd(&run, &run, &[Path::new("--policy"), &policy]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("alpha 2") && err.lines().count() == 1, "{err}");
    std::fs::write(&policy, "alpha: 0.05\nmax_drop: 1\n").expect("write");
    let out = compare_cmd(&run, &run, &[Path::new("--policy"), &policy]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("p.yaml") && err.contains("line 2") && err.contains("max_drop"),
        "{err}"
    );
    let out = compare_cmd(&run, tmp.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no results.json"), "{err}");
}

/// One cell, `alpha` on `copa`, right where `correct` says.
fn one_cell(correct: fn(usize) -> bool) -> Vec<CellSpec> {
    vec![CellSpec {
        model: "alpha",
        task: "copa",
        correct,
        latency_ms: 20.0,
        rss_mib: 300,
    }]
}

#[test]
fn compare_names_an_underpowered_cell_and_what_it_would_need() {
    let tmp = tempfile::tempdir().expect("tmp");
    // 30 documents, three flips (one lost, two won): nothing regressed,
    // and nothing of a 1-point size could have been seen.
    let base = write_run_n(tmp.path(), "base", &one_cell(|i| i % 3 != 0), 30);
    let cur = write_run_n(
        tmp.path(),
        "cur",
        &one_cell(|i| {
            if i < 4 {
                i % 3 == 0 || i == 1
            } else {
                i % 3 != 0
            }
        }),
        30,
    );
    let junit = tmp.path().join("j.xml");
    let out = compare_cmd(
        &base,
        &cur,
        &[
            Path::new("--junit"),
            &junit,
            Path::new("--max-score-drop"),
            Path::new("1"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("1 underpowered cell(s)"), "{stdout}");
    assert!(stdout.contains("MDE points"), "{stdout}");
    assert!(
        stderr.contains("warning: alpha/copa: underpowered: the minimum detectable drop is")
            && stderr.contains("documents would detect 1 points"),
        "{stderr}"
    );
    let xml = std::fs::read_to_string(&junit).expect("junit");
    let doc = roxmltree::Document::parse(&xml).expect("valid XML");
    let power = doc
        .descendants()
        .find(|n| n.attribute("name") == Some("copa power"))
        .expect("a power testcase");
    let skipped = power
        .children()
        .find(|c| c.has_tag_name("skipped"))
        .expect("underpowered is reported as skipped");
    assert_eq!(skipped.attribute("type"), Some("underpowered"));
    // With `--underpowered fail` the same cell fails the gate.
    let out = compare_cmd(
        &base,
        &cur,
        &[Path::new("--underpowered"), Path::new("fail")],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn compare_catches_a_planted_five_point_drop_over_1000_documents() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Baseline right on 3 of 4 documents (750 of 1000). Current: the same,
    // except 60 right documents turned wrong and 10 wrong ones turned right
    // (a net drop of 5 points, with discordance on both sides).
    let base = write_run_n(tmp.path(), "base", &one_cell(|i| i % 4 != 0), 1000);
    let cur = write_run_n(
        tmp.path(),
        "cur",
        &one_cell(|i| {
            if i < 80 {
                // 60 of the 60 right ones in 0..80 drop; 10 of the 20 wrong ones rise.
                i % 4 == 0 && i < 40
            } else {
                i % 4 != 0
            }
        }),
        1000,
    );
    let out = compare_cmd(
        &base,
        &cur,
        &[Path::new("--max-latency-ratio"), Path::new("0")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("regressed: alpha/copa: score: acc -5.00 points"),
        "{stderr}"
    );
    // 7% discordance over 1000 documents resolves about 2.3 points, so the
    // default 1-point policy is underpowered here and a 3-point one is not.
    assert!(stdout.contains("underpowered"), "{stdout}");
    let out = compare_cmd(
        &base,
        &cur,
        &[Path::new("--max-score-drop"), Path::new("3")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(!stdout.contains("underpowered cell"), "{stdout}");
    // The reverse direction is a suspicious jump: flagged, not failed.
    let out = compare_cmd(&cur, &base, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("jump ↑") && stdout.contains("the score rose +5.00 points"),
        "{stdout}"
    );
}

#[test]
fn holm_correction_can_be_turned_off() {
    let tmp = tempfile::tempdir().expect("tmp");
    let base = write_run(tmp.path(), "base", &good_cells());
    let out = compare_cmd(&base, &base, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Holm-adjusted across the cells"),
        "{stdout}"
    );
    let out = compare_cmd(&base, &base, &[Path::new("--no-holm")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("Holm-adjusted") && !stdout.contains("(Holm "),
        "{stdout}"
    );
}

/// Columns that do not depend on timing.
fn stable_columns(csv: &str) -> Vec<String> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let keep: Vec<usize> = ["model", "task", "metric", "value", "stderr", "n", "status"]
        .iter()
        .map(|k| header.iter().position(|h| h == k).expect("column"))
        .collect();
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            keep.iter().map(|&i| f[i]).collect::<Vec<_>>().join(",")
        })
        .collect()
}

#[test]
fn two_shards_merged_equal_the_unsharded_run() {
    if common::shared_dir().is_none() {
        return;
    }
    common::model_path("smollm2-135m-instruct");
    let tmp = tempfile::tempdir().expect("tmp");
    let run = |extra: &[&str], out: &str| {
        let o = common::bin()
            .args(["run", "--threads", "2", "--out", out])
            .args(extra)
            .current_dir(tmp.path())
            .output()
            .expect("run");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run(&[], "full");
    run(&["--shard", "1/2"], "s1");
    run(&["--shard", "2/2"], "s2");
    let s1 = RunRecord::read(&tmp.path().join("s1")).expect("s1");
    let s2 = RunRecord::read(&tmp.path().join("s2")).expect("s2");
    assert!(!s1.cells.is_empty() && !s2.cells.is_empty());
    let full = tmp.path().join("full");
    let (a, b) = (tmp.path().join("s1"), tmp.path().join("s2"));
    assert!(report_cmd(&[&full], &tmp.path().join("rf"))
        .status
        .success());
    assert!(report_cmd(&[&a, &b], &tmp.path().join("rs"))
        .status
        .success());
    let read = |d: &str| {
        std::fs::read_to_string(tmp.path().join(d).join("results_long.csv")).expect("csv")
    };
    assert_eq!(stable_columns(&read("rf")), stable_columns(&read("rs")));
    let bad = common::bin()
        .args(["run", "--shard", "3/2"])
        .current_dir(tmp.path())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("--shard") && err.contains("I/N"), "{err}");
}

#[test]
fn compare_pair_reports_fidelity() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = write_run(tmp.path(), "run-a", &good_cells());
    let out = compare_cmd(&run, &run, &[Path::new("--pair"), Path::new("alpha=beta")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Fidelity of the current model to the baseline's"),
        "{stdout}"
    );
    // copa: alpha right when i % 4 != 0, beta when i is even; they pick the
    // same choice on i % 4 == 2 only (10 of 40), 30 flips (20 lost, 10
    // won); retention 0.5 / 0.75. Neither reaches MLPerf's marks.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| alpha → beta | copa | 40 |"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains("| 25.0% | 20 / 10 |"), "{row}");
    assert!(
        row.contains("| 0.667 [") && row.ends_with("| fail / fail |"),
        "{row}"
    );
}
