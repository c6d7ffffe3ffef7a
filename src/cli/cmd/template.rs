//! `slmbench template`: a model's chat template rendered for a JSON list of
//! messages, printed exactly (no newline added).

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::cli::args::RegistryArgs;
use crate::model::chat::{ChatTemplate, Message};

pub fn template(
    model: &str,
    registry: &RegistryArgs,
    file: &Path,
    add_generation_prompt: bool,
) -> Result<i32> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("stdin: cannot read")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("{}: cannot read", file.display()))?
    };
    let name = if file.as_os_str() == "-" {
        "stdin".to_string()
    } else {
        file.display().to_string()
    };
    let messages: Vec<Message> = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{name}: line {} column {}: {e} — give a JSON array of {{\"role\": …, \"content\": …}} objects",
            e.line(),
            e.column()
        )
    })?;
    let reg = registry.load()?;
    let spec = reg.get(model)?.clone();
    if spec.endpoint.is_some() {
        bail!("{model}: a served model's chat template is applied by its server — render it there");
    }
    let got = super::obtain(&reg, model)?;
    let spec = got.effective_spec(&spec);
    let gguf = crate::model::open::open_weights(&spec, &got.path)?;
    let Some(t) = ChatTemplate::of_model(&spec, &got.path, &gguf)? else {
        bail!("{model}: the model has no chat template — pick a chat model, or run without --apply-chat-template");
    };
    let out = t.render(&messages, add_generation_prompt)?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(0)
}
