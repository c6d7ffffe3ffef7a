//! Runs that lose nothing: killed with SIGKILL after 1, 5 and 30 documents,
//! every document on disk survives, `--resume` recomputes none of them and
//! the final samples equal an uninterrupted run's; SIGINT and SIGTERM stop
//! after the document in flight with the status `interrupted`, the resume
//! hint, and exit 130 / 143.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{bin, model_path, read_jsonl, shared_dir};

const LIMIT: &str = "60";

fn start(data: &Path, out: &Path) -> Child {
    bin()
        .args([
            "run",
            "--model",
            "smollm2-135m-instruct",
            "--tasks",
            "arc_easy",
        ])
        .args([
            "--limit",
            LIMIT,
            "--pack-tokens",
            "0",
            "--threads",
            "1",
            "--data-dir",
        ])
        .arg(data)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

fn samples(out: &Path) -> std::path::PathBuf {
    out.join("samples/smollm2-135m-instruct/arc_easy.jsonl")
}

fn lines(out: &Path) -> usize {
    std::fs::read_to_string(samples(out)).map_or(0, |s| s.lines().count())
}

fn wait_for(out: &Path, n: usize) {
    let t0 = Instant::now();
    while lines(out) < n && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// doc_id → (pred, log-likelihoods).
fn by_doc(out: &Path) -> std::collections::BTreeMap<u64, (u64, Vec<f64>)> {
    read_jsonl(&samples(out))
        .into_iter()
        .map(|r| {
            let lls = r["loglikelihoods"]
                .as_array()
                .expect("lls")
                .iter()
                .map(|v| v.as_f64().expect("ll"))
                .collect();
            (
                r["doc_id"].as_u64().expect("id"),
                (r["pred"].as_u64().expect("pred"), lls),
            )
        })
        .collect()
}

fn resume(out: &Path) -> Value {
    let o = bin()
        .arg("run")
        .arg("--resume")
        .arg(out)
        .output()
        .expect("resume");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("results"))
        .expect("json")
}

fn same_as(full: &std::collections::BTreeMap<u64, (u64, Vec<f64>)>, out: &Path, what: &str) {
    let got = by_doc(out);
    assert_eq!(got.len(), full.len(), "{what}: every document once");
    for (id, (pred, lls)) in full {
        let (p, l) = &got[id];
        assert_eq!(p, pred, "{what}: doc {id}");
        for (a, b) in lls.iter().zip(l) {
            // Scored alone either way: the same forward, the same numbers.
            assert_eq!(a, b, "{what}: doc {id}");
        }
    }
}

#[test]
fn a_killed_run_keeps_every_written_document_and_resumes_without_recomputing() {
    let Some(shared) = shared_dir() else { return };
    model_path("smollm2-135m-instruct");
    let data = shared.join("data");
    let tmp = tempfile::tempdir().expect("tmp");
    let full_dir = tmp.path().join("full");
    let o = start(&data, &full_dir)
        .wait_with_output()
        .expect("full run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let full = by_doc(&full_dir);
    assert_eq!(full.len(), 60);
    for n in [1, 5, 30] {
        let out = tmp.path().join(format!("kill{n}"));
        let mut child = start(&data, &out);
        wait_for(&out, n);
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let before = std::fs::read_to_string(samples(&out)).unwrap_or_default();
        let kept = before.lines().count();
        assert!(kept >= n && kept < 60, "killed after {n}: {kept} on disk");
        let rec = resume(&out);
        let after = std::fs::read_to_string(samples(&out)).expect("samples");
        assert!(
            after.starts_with(&before),
            "killed after {n}: resume rewrote documents"
        );
        assert_eq!(rec["cells"][0]["resumed_samples"], kept);
        assert_eq!(rec["status"], "complete");
        same_as(&full, &out, &format!("killed after {n}"));
    }
}

#[test]
fn sigint_and_sigterm_stop_cleanly_with_status_interrupted() {
    let Some(shared) = shared_dir() else { return };
    model_path("smollm2-135m-instruct");
    let data = shared.join("data");
    let tmp = tempfile::tempdir().expect("tmp");
    for (sig, code) in [("-INT", 130), ("-TERM", 143)] {
        let out = tmp.path().join(format!("sig{code}"));
        let child = start(&data, &out);
        wait_for(&out, 5);
        let status = std::process::Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        let o = child.wait_with_output().expect("wait");
        assert_eq!(o.status.code(), Some(code), "{sig}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("interrupted — resume with `slmbench run --resume"),
            "{sig}: {err}"
        );
        let rec: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("results.json")).expect("results"),
        )
        .expect("json");
        assert_eq!(rec["status"], "interrupted", "{sig}");
        // A report of it says the run is unfinished.
        let o = bin()
            .arg("report")
            .arg(&out)
            .arg("--out")
            .arg(tmp.path().join(format!("rep{code}")))
            .output()
            .expect("report");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("is interrupted (0 cells finished)"), "{err}");
        let kept = lines(&out);
        assert!((5..60).contains(&kept), "{sig}: {kept}");
        let rec = resume(&out);
        assert_eq!(rec["cells"][0]["resumed_samples"], kept);
        assert_eq!(lines(&out), 60);
    }
}

#[test]
fn a_second_process_on_one_run_directory_is_refused_and_a_dead_ones_lock_is_not() {
    let Some(shared) = shared_dir() else { return };
    model_path("smollm2-135m-instruct");
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("run");
    let mut child = start(&shared.join("data"), &out);
    wait_for(&out, 1);
    let o = bin()
        .arg("run")
        .arg("--resume")
        .arg(&out)
        .output()
        .expect("second");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("another slmbench run is using this directory"),
        "{err}"
    );
    // SIGKILL leaves the lock file, not the lock.
    child.kill().expect("kill");
    let _ = child.wait();
    let rec = resume(&out);
    assert_eq!(rec["status"], "complete");
    assert_eq!(lines(&out), 60);
}
