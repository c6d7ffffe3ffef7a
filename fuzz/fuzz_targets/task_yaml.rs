//! Task YAML and the Jinja layer behind it: a suite file, then documents
//! (JSON Lines after a `\n---\n` line) built into requests as `run` builds
//! them, plain and as chat conversations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slmbench::task::{
    build_instances, parse_suite_yaml, BuildOptions, ChatOptions, SplitDocs, SuiteFile, TaskDocs,
};

mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (yaml, docs) = text.split_once("\n---\n").unwrap_or((text, ""));
    let spec = match parse_suite_yaml("task.yaml", yaml) {
        Ok(SuiteFile::Task(spec)) => spec,
        Ok(SuiteFile::Group(_)) => return,
        Err(e) => return common::one_line(&e),
    };
    let split = match SplitDocs::from_jsonl_str("docs.jsonl", "test", docs) {
        Ok(s) => s,
        Err(e) => return common::one_line(&e),
    };
    let docs = TaskDocs {
        eval: split.clone(),
        fewshot: Some(split),
    };
    for (shots, chat) in [(Some(0), None), (Some(2), None), (Some(2), Some(true))] {
        let opts = BuildOptions {
            limit: Some(4),
            num_fewshot: shots,
            system_instruction: chat.map(|_| "Be brief.".to_string()),
            chat: chat.map(|m| ChatOptions {
                fewshot_as_multiturn: m,
            }),
            ..BuildOptions::default()
        };
        if let Err(e) = build_instances(&spec, &docs, &opts) {
            common::one_line(&e);
        }
    }
});
