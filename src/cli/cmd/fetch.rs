//! `slmbench fetch`: obtain model files into the cache (a variant named here
//! is built from its parent) and print where each is.

use anyhow::Result;

use crate::cli::args::RegistryArgs;
use crate::model::fetch::FetchOptions;

pub fn fetch(names: &[String], registry: &RegistryArgs, all: bool) -> Result<i32> {
    let reg = registry.load()?;
    let names: Vec<String> = if all {
        // Variants are built from these; name one to build it.
        reg.models
            .iter()
            .filter(|(_, m)| !m.is_variant() && m.endpoint.is_none())
            .map(|(n, _)| n.clone())
            .collect()
    } else if names.is_empty() {
        reg.default.clone().into_iter().collect()
    } else {
        names.to_vec()
    };
    let opts = FetchOptions::from_env();
    let home = crate::model::fetch::default_home();
    for n in &names {
        reg.get(n)?;
        let got = crate::obtain::obtain(&reg, n, &home, &opts)?;
        println!("{n}\t{}", got.path.display());
    }
    Ok(0)
}
