//! Reading a samples file for --resume, and repairing its tail: what is
//! kept is a prefix of the file, re-reading it changes nothing, and only
//! a bad last line is ever cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slmbench::record::{read_records, GenSampleRecord, SampleRecord};

mod common;

fn check<T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8], name: &str) {
    let path = common::scratch_file(name, data);
    match read_records::<T>(&path) {
        Ok(first) => {
            let kept = std::fs::read(&path).expect("read back");
            assert!(data.starts_with(&kept), "repair did not keep a prefix");
            if kept.len() < data.len() {
                // Only the last line with content may go.
                let cut = &data[kept.len()..];
                let body = cut.strip_suffix(b"\n").unwrap_or(cut);
                assert!(!body.contains(&b'\n') || body.split(|&b| b == b'\n')
                    .skip(1).all(|l| l.iter().all(u8::is_ascii_whitespace)),
                    "more than the last line was cut");
                assert!(kept.is_empty() || kept.ends_with(b"\n"), "kept a partial line");
            }
            let again = read_records::<T>(&path).expect("re-read after repair");
            assert_eq!(first, again, "a repaired file reads differently");
            assert_eq!(std::fs::read(&path).expect("read back"), kept);
        }
        Err(e) => {
            common::one_line(&e);
            assert_eq!(std::fs::read(&path).expect("read back"), data, "error changed the file");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check::<SampleRecord>(data, "samples.jsonl");
    check::<GenSampleRecord>(data, "gen.jsonl");
});
