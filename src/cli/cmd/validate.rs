//! `slmbench validate FILE...`: models registries and task/group files,
//! each checked alone, without running anything.

use std::path::PathBuf;

use anyhow::Result;

/// `validate`: models registries and task/group files, each checked alone.
pub fn validate(files: &[PathBuf]) -> Result<i32> {
    let mut bad = 0;
    for f in files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {}: cannot read: {e}", f.display());
                bad += 1;
                continue;
            }
        };
        let is_models = text.lines().any(|l| l.trim_end() == "models:");
        let res: Result<String> = if is_models {
            crate::spec::models::Registry::parse(&text, &f.display().to_string())
                .map(|r| format!("models registry, {} models", r.models.len()))
                .map_err(Into::into)
        } else {
            let mut reg = crate::task::TaskRegistry::new();
            reg.add_file(f, &text)
                .map(|_| "task file".to_string())
                .map_err(Into::into)
        };
        match res {
            Ok(what) => println!("{}: ok ({what})", f.display()),
            Err(e) => {
                eprintln!(
                    "error: {}",
                    format!("{e:#}").lines().collect::<Vec<_>>().join(" ")
                );
                bad += 1;
            }
        }
    }
    Ok(if bad > 0 { 2 } else { 0 })
}
