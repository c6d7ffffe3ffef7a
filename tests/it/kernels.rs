//! The kernel set chosen at run time (`SLMBENCH_KERNELS`): `scalar` and
//! `avx2` score a document to the same bits (scoring never takes the
//! 8-bit-activation kernels, and the AVX2 copies of the f32 loops do the
//! same operations in the same order); `avx512` multiplies 16-bit
//! activations in integers and stays within the reference's bound (0.02
//! nats a choice) of them; the fingerprint names the set, and a set this
//! build or CPU cannot use is a one-line error.

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
fn every_kernel_set_scores_alike_and_is_named_in_the_fingerprint() {
    let Some(shared) = shared_dir() else { return };
    model_path("smollm2-135m-instruct");
    let tmp = tempfile::tempdir().expect("tmp");
    let data = shared.join("data");
    let detected = tmp.path().join("detected");
    let o = run(&detected, None, &data);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let best = kernels_of(&detected);
    assert!(best.ends_with(" (detected)"), "{best}");
    let samples = |dir: &Path| read_jsonl(&dir.join("samples/smollm2-135m-instruct/copa.jsonl"));
    let scalar = tmp.path().join("scalar");
    let o = run(&scalar, Some("scalar"), &data);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(kernels_of(&scalar), "scalar (SLMBENCH_KERNELS)");
    let want = samples(&scalar);
    assert_eq!(want.len(), 8);
    for set in ["avx2", "avx512"] {
        let dir = tmp.path().join(set);
        let o = run(&dir, Some(set), &data);
        if !o.status.success() {
            // A CPU without the set: the error names the variable and the sets.
            assert_error(
                &o,
                &[&format!("SLMBENCH_KERNELS={set}"), "lacks it", "scalar"],
            );
            continue;
        }
        assert_eq!(kernels_of(&dir), format!("{set} (SLMBENCH_KERNELS)"));
        for (g, w) in samples(&dir).iter().zip(&want) {
            assert_eq!(g["doc_id"], w["doc_id"]);
            if set == "avx2" {
                assert_eq!(
                    g["loglikelihoods"], w["loglikelihoods"],
                    "avx2: doc {} scored differently than under scalar",
                    w["doc_id"]
                );
                continue;
            }
            let (g, w) = (
                g["loglikelihoods"].as_array().expect("lls"),
                w["loglikelihoods"].as_array().expect("lls"),
            );
            assert_eq!(g.len(), w.len());
            for (a, b) in g.iter().zip(w) {
                let (a, b) = (a.as_f64().expect("ll"), b.as_f64().expect("ll"));
                assert!((a - b).abs() <= 0.02, "avx512: {a} vs scalar {b}");
            }
        }
    }
}

#[test]
fn a_kernel_set_this_build_or_cpu_cannot_use_is_a_one_line_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    // An unknown name; a set the CPU lacks is checked in `every_kernel_set…`
    // (it can only happen on a CPU without AVX2 or AVX-512 VNNI).
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
        .env("SLMBENCH_KERNELS", "fast")
        .env("SLMBENCH_HOME", tmp.path())
        .env("SLMBENCH_OFFLINE", "1")
        .output()
        .expect("bench");
    assert_error(&o, &["SLMBENCH_KERNELS=\"fast\"", "scalar, avx2 or avx512"]);
}
