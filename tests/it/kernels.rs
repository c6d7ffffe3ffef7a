//! The kernel set chosen at run time (`SLMBENCH_KERNELS`): every set this
//! CPU supports scores a document to the same bits (scoring never takes
//! the 8-bit-activation kernels, and the AVX2 copies of the f32 loops do
//! the same operations in the same order), the fingerprint names the set,
//! and a set this build or CPU cannot use is a one-line error.

use std::path::Path;

use serde_json::Value;

use crate::common::{assert_error, bin, model_path, read_jsonl, shared_dir};

fn run(out: &Path, kernels: Option<&str>, data: &Path) -> std::process::Output {
    let mut cmd = bin();
    cmd.args(["run", "--model", "smollm2-135m-instruct", "--tasks", "copa"])
        .args(["--limit", "8", "--data-dir"])
        .arg(data)
        .arg("--out")
        .arg(out);
    match kernels {
        Some(k) => cmd.env("SLMBENCH_KERNELS", k),
        None => cmd.env_remove("SLMBENCH_KERNELS"),
    };
    cmd.output().expect("run")
}

fn kernels_of(run: &Path) -> String {
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).expect("results"))
            .expect("json");
    rec["environment"]["kernels"]
        .as_str()
        .expect("environment.kernels")
        .to_string()
}

#[test]
fn every_kernel_set_scores_the_same_bits_and_is_named_in_the_fingerprint() {
    let Some(shared) = shared_dir() else { return };
    model_path("smollm2-135m-instruct");
    let tmp = tempfile::tempdir().expect("tmp");
    let data = shared.join("data");
    let detected = tmp.path().join("detected");
    let o = run(&detected, None, &data);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let best = kernels_of(&detected);
    assert!(best.ends_with(" (detected)"), "{best}");
    let want = read_jsonl(&detected.join("samples/smollm2-135m-instruct/copa.jsonl"));
    assert_eq!(want.len(), 8);
    for set in ["scalar", "avx2"] {
        let dir = tmp.path().join(set);
        let o = run(&dir, Some(set), &data);
        if set == "avx2" && !o.status.success() {
            // A CPU without AVX2: the error names the variable and the sets.
            assert_error(&o, &["SLMBENCH_KERNELS=avx2", "scalar"]);
            continue;
        }
        assert!(
            o.status.success(),
            "{set}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(kernels_of(&dir), format!("{set} (SLMBENCH_KERNELS)"));
        let got = read_jsonl(&dir.join("samples/smollm2-135m-instruct/copa.jsonl"));
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g["doc_id"], w["doc_id"]);
            assert_eq!(
                g["loglikelihoods"], w["loglikelihoods"],
                "{set}: doc {} scored differently than under {best}",
                w["doc_id"]
            );
        }
    }
}

#[test]
fn a_kernel_set_this_build_or_cpu_cannot_use_is_a_one_line_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    for (value, needles) in [
        (
            "avx512",
            &["SLMBENCH_KERNELS=avx512", "no AVX-512 kernels"][..],
        ),
        ("fast", &["SLMBENCH_KERNELS=\"fast\"", "scalar or avx2"][..]),
    ] {
        let o = bin()
            .args([
                "bench",
                "--model",
                "smollm2-135m-instruct",
                "-p",
                "8",
                "-n",
                "0",
            ])
            .env("SLMBENCH_KERNELS", value)
            .env("SLMBENCH_HOME", tmp.path())
            .env("SLMBENCH_OFFLINE", "1")
            .output()
            .expect("bench");
        assert_error(&o, needles);
    }
}
