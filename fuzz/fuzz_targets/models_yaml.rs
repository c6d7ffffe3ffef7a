//! models.yaml: the registry of models and variant recipes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slmbench::spec::models::Registry;

mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Registry::parse(text, "models.yaml") {
        Ok(reg) => {
            for name in reg.models.keys() {
                let _ = reg.get(name);
                if let Err(e) = reg.fetch_spec(name) {
                    common::one_line(&e);
                }
            }
        }
        Err(e) => common::one_line(&e),
    }
});
