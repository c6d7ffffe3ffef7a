//! One file per subcommand: each takes its parsed flags, calls the library
//! and prints what it returns.

pub mod bench;
pub mod compare;
pub mod export;
pub mod fetch;
pub mod ls;
pub mod report;
pub mod run;
pub mod template;
pub mod tokenize;
pub mod validate;
pub mod variants;

use crate::obtain::Obtained;
use crate::spec::models::Registry;

/// `name`'s file, fetched or materialized into the cache as the
/// environment says (`SLMBENCH_HOME`, `SLMBENCH_OFFLINE`, …).
fn obtain(reg: &Registry, name: &str) -> anyhow::Result<Obtained> {
    Ok(crate::obtain::obtain(
        reg,
        name,
        &crate::model::fetch::default_home(),
        &crate::model::fetch::FetchOptions::from_env(),
    )?)
}
