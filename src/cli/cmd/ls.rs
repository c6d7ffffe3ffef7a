//! `slmbench ls models|tasks`: the registry's models (and whether each is
//! cached) or the known tasks and groups.

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::args::{ListWhat, RegistryArgs};

pub fn ls(what: ListWhat, registry: &RegistryArgs, suite: &[PathBuf]) -> Result<i32> {
    match what {
        ListWhat::Models => models(registry),
        ListWhat::Tasks => tasks(suite),
    }
}

fn models(registry: &RegistryArgs) -> Result<i32> {
    let reg = registry.load()?;
    let home = crate::model::fetch::default_home();
    println!("# {}", reg.origin);
    for (name, m) in &reg.models {
        let cached = match &m.parent {
            Some(p) if m.parsed_steps.is_empty() => {
                format!("variant of {p}: no steps (its f32 tensors)")
            }
            Some(p) => format!(
                "variant of {p}: {}",
                m.parsed_steps
                    .iter()
                    .map(crate::spec::steps::Step::label)
                    .collect::<Vec<_>>()
                    .join(", then ")
            ),
            None if m.endpoint.is_some() => {
                let ep = m.endpoint.as_ref().map_or(String::new(), |e| {
                    format!("served: {} at {}", e.api.name(), e.base_url)
                });
                ep
            }
            None => {
                let spec = reg.fetch_spec(name)?;
                let c = crate::model::fetch::cached_path(&spec, &home).exists();
                let mut s = if c { "cached" } else { "not fetched" }.to_string();
                if let Some(t) = &m.distilled_from {
                    s.push_str(&format!("; distilled from {t}"));
                }
                s
            }
        };
        let default = if reg.default.as_deref() == Some(name) {
            " (default)"
        } else {
            ""
        };
        println!(
            "{name}{default}\t{}\t{}\t{cached}",
            m.description.as_deref().unwrap_or(""),
            m.dtype,
        );
    }
    Ok(0)
}

fn tasks(suite: &[PathBuf]) -> Result<i32> {
    let reg = crate::plan::task_registry(suite)?;
    for name in reg.names() {
        if let Some(t) = reg.task(&name) {
            let data = match &t.dataset_name {
                Some(n) => format!("{}/{n}", t.dataset_path),
                None => t.dataset_path.clone(),
            };
            println!(
                "{name}\t{data}:{}\t{}",
                t.eval_split(),
                match &t.generation {
                    Some(g) => g
                        .filters
                        .iter()
                        .map(|f| format!("exact_match,{}", f.name))
                        .collect::<Vec<_>>()
                        .join(" "),
                    None => t
                        .metrics
                        .iter()
                        .map(|m| m.name())
                        .collect::<Vec<_>>()
                        .join(","),
                }
            );
        } else if let Some(g) = reg.group(&name) {
            println!("{name}\tgroup: {}", g.tasks.join(","));
        }
    }
    Ok(0)
}
