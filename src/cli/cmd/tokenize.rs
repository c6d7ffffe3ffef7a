//! `slmbench tokenize`: a model's token ids for a text, as JSON.

use anyhow::Result;

use crate::cli::args::RegistryArgs;

pub fn tokenize(model: &str, registry: &RegistryArgs, text: &str) -> Result<i32> {
    let reg = registry.load()?;
    let spec = reg.get(model)?.clone();
    let got = super::obtain(&reg, model)?;
    let spec = got.effective_spec(&spec);
    let (_, tok) = crate::model::open::open_model(&spec, &got.path)?;
    println!("{}", serde_json::to_string(&tok.encode(text)?)?);
    Ok(0)
}
