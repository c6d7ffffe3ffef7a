//! Embeds the git commit of the source tree (for provenance in results).
use std::process::Command;

fn main() {
    let hash = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let hash = if dirty { format!("{hash}-dirty") } else { hash };
    println!("cargo:rustc-env=SLMBENCH_GIT_HASH={hash}");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SLMBENCH_RUSTC_VERSION={rustc_version}");
    println!(
        "cargo:rustc-env=SLMBENCH_CRATE_VERSIONS={}",
        crate_versions()
    );
    let profile = std::env::var("PROFILE").unwrap_or_default();
    println!("cargo:rustc-env=SLMBENCH_BUILD_PROFILE={profile}");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
    // Moves on every commit, also when HEAD names a branch.
    println!("cargo:rerun-if-changed=.git/logs/HEAD");
}

/// `name version` pairs of the crates that shape the numbers, from Cargo.lock.
fn crate_versions() -> String {
    const CRATES: [&str; 5] = [
        "candle-core",
        "candle-nn",
        "tokenizers",
        "minijinja",
        "polars",
    ];
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut out = Vec::new();
    let mut name: Option<&str> = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"'));
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            if CRATES.contains(&n) {
                out.push(format!("{n} {}", v.trim_matches('"')));
            }
        }
    }
    out.join(", ")
}
