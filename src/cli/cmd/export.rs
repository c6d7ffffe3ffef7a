//! `slmbench export`: a model (a variant is materialized first) written to
//! a GGUF file.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::cli::args::RegistryArgs;

pub fn export(name: &str, out: &Path, force: bool, registry: &RegistryArgs) -> Result<i32> {
    if out.exists() && !force {
        bail!(
            "--out {}: the file exists; pass --force to overwrite it, or another --out",
            out.display()
        );
    }
    let reg = registry.load()?;
    let got = super::obtain(&reg, name)?;
    if !got.path.is_file() {
        bail!("{name}: {} is a folder, not a GGUF file; export a variant of it instead (a variant with no steps is its f32 GGUF)", got.path.display());
    }
    std::fs::copy(&got.path, out).with_context(|| format!("cannot write {}", out.display()))?;
    println!("{name}\t{}", out.display());
    Ok(0)
}
