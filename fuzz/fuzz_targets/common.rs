// Shared by the targets that need their input as a file (the GGUF reader
// and the samples reader work on paths, as the harness uses them).

use std::path::PathBuf;

#[allow(dead_code)] // not every target reads a file
/// A per-process scratch file under the system's temporary directory,
/// overwritten with `bytes`.
pub fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "slmbench-fuzz-{}-{name}",
        std::process::id()
    ));
    std::fs::write(&path, bytes).expect("write the scratch file");
    path
}

/// Every error the harness shows a user is one line.
pub fn one_line(e: &dyn std::fmt::Display) {
    let s = e.to_string();
    assert!(!s.trim().is_empty(), "empty error message");
    assert!(!s.trim_end().contains('\n'), "multi-line error: {s:?}");
}
