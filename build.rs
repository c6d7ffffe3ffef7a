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
    let profile = std::env::var("PROFILE").unwrap_or_default();
    println!("cargo:rustc-env=SLMBENCH_BUILD_PROFILE={profile}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
}
