//! The layout ARCHITECTURE.md promises, checked on the sources: no file
//! under `src/` over 800 lines; the engine (`candle`) named only by the
//! backend that runs it and by the model-file and variant code that use
//! candle-core as their tensor and GGUF library; and no import cycle
//! between sibling modules (`crate::`/`super::` paths, tests left out);
//! `unsafe` only in the SIMD kernels, each block with its `// SAFETY:`.
//! Run alone with `cargo test --release --test it layout`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

/// Where `candle` may be named (paths under `src/`).
const CANDLE_HOMES: &[&str] = &["backend/candle/", "backend/mod.rs", "model/", "variant/"];

struct Source {
    /// `src/`-relative path with `/` separators.
    rel: String,
    /// Module path segments (`backend::candle::nn::linear`).
    module: Vec<String>,
    text: String,
}

fn sources() -> Vec<Source> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let rel = p
                .strip_prefix(&root)
                .ok()?
                .to_string_lossy()
                .replace('\\', "/");
            if rel == "main.rs" {
                return None;
            }
            let text = std::fs::read_to_string(&p).ok()?;
            Some(Source {
                module: module_of(&rel),
                rel,
                text,
            })
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn module_of(rel: &str) -> Vec<String> {
    let stem = rel.trim_end_matches(".rs");
    let mut segs: Vec<String> = stem.split('/').map(str::to_string).collect();
    if matches!(segs.last().map(String::as_str), Some("mod" | "lib")) {
        segs.pop();
    }
    segs
}

/// The lines before the file's tests (`#[cfg(test)]` then `mod tests`).
fn non_test_lines(s: &Source) -> Vec<(usize, &str)> {
    if s.rel.ends_with("/tests.rs") {
        return Vec::new();
    }
    let lines: Vec<&str> = s.text.lines().collect();
    let end = (0..lines.len())
        .find(|&i| {
            lines[i].trim() == "#[cfg(test)]"
                && lines
                    .get(i + 1)
                    .is_some_and(|l| l.trim_start().starts_with("mod tests"))
        })
        .unwrap_or(lines.len());
    lines[..end]
        .iter()
        .enumerate()
        .map(|(i, l)| (i + 1, *l))
        .collect()
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with("//")
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Module paths a line refers to through `crate::…` or `super::…`, with
/// one level of `{a::b, c}` groups expanded.
fn referenced_paths(line: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let at_word = i == 0 || !ident_char(bytes[i - 1]);
        let rest: String = bytes[i..].iter().collect();
        let (mut base, mut j) = if at_word && rest.starts_with("crate::") {
            (Vec::new(), i + "crate::".len())
        } else if at_word && rest.starts_with("super::") {
            let mut base: Vec<String> = module.to_vec();
            let mut j = i;
            while bytes[j..].iter().collect::<String>().starts_with("super::") {
                base.pop();
                j += "super::".len();
            }
            (base, j)
        } else {
            i += 1;
            continue;
        };
        // Segments up to a brace or a non-path character.
        loop {
            let start = j;
            while j < bytes.len() && ident_char(bytes[j]) {
                j += 1;
            }
            if j > start {
                base.push(bytes[start..j].iter().collect());
            }
            if bytes[j..].iter().collect::<String>().starts_with("::") {
                j += 2;
                if bytes.get(j) == Some(&'{') {
                    let close = (j..bytes.len())
                        .find(|&k| bytes[k] == '}')
                        .unwrap_or(bytes.len());
                    let group: String = bytes[j + 1..close].iter().collect();
                    for item in group.split(',') {
                        let mut p = base.clone();
                        p.extend(
                            item.trim()
                                .split("::")
                                .take_while(|s| !s.is_empty() && s.chars().all(ident_char))
                                .map(str::to_string),
                        );
                        out.push(p);
                    }
                    j = close;
                    base.clear();
                    break;
                }
                continue;
            }
            break;
        }
        if !base.is_empty() {
            out.push(base);
        }
        i = j.max(i + 1);
    }
    out
}

#[test]
fn no_source_file_is_over_800_lines() {
    let fat: Vec<String> = sources()
        .iter()
        .filter(|s| s.text.lines().count() > MAX_LINES)
        .map(|s| format!("src/{} ({} lines)", s.rel, s.text.lines().count()))
        .collect();
    assert!(
        fat.is_empty(),
        "split these by responsibility: {}",
        fat.join(", ")
    );
}

#[test]
fn only_the_engine_and_the_tensor_users_name_candle() {
    let mut hits = Vec::new();
    for s in sources() {
        if CANDLE_HOMES.iter().any(|h| s.rel.starts_with(h)) {
            continue;
        }
        for (n, line) in non_test_lines(&s) {
            let lower = line.to_ascii_lowercase();
            let named = lower.match_indices("candle").any(|(k, _)| {
                let before = lower[..k].chars().next_back();
                !before.is_some_and(ident_char)
            });
            if named && !is_comment(line) {
                hits.push(format!("src/{}:{n}: {}", s.rel, line.trim()));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "candle named outside backend/candle, model and variant:\n{}",
        hits.join("\n")
    );
}

/// `unsafe` lives in one module: `allow(unsafe_code)` appears only where
/// `kernels/mod.rs` declares `simd`, no file outside `kernels/simd/` holds
/// an `unsafe` block, and every block there has a `// SAFETY:` line right
/// above it (or above its statement).
#[test]
fn unsafe_code_is_confined_to_the_simd_kernels_with_a_safety_line_each() {
    const HOME: &str = "backend/candle/kernels/simd/";
    let mut hits = Vec::new();
    for s in sources() {
        let lines: Vec<&str> = s.text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("allow(unsafe_code)")
                && !(s.rel == "backend/candle/kernels/mod.rs"
                    && lines
                        .get(i + 1)
                        .is_some_and(|l| l.trim() == "pub mod simd;"))
            {
                hits.push(format!("src/{}:{}: allow(unsafe_code)", s.rel, i + 1));
            }
            let block = code.contains("unsafe {") || code.contains("unsafe{");
            if !block {
                continue;
            }
            if !s.rel.starts_with(HOME) {
                hits.push(format!("src/{}:{}: unsafe outside {HOME}", s.rel, i + 1));
                continue;
            }
            let safety = lines[..i]
                .iter()
                .rev()
                .take_while(|l| is_comment(l))
                .any(|l| l.trim_start().starts_with("// SAFETY:"));
            if !safety {
                hits.push(format!("src/{}:{}: no // SAFETY: line", s.rel, i + 1));
            }
        }
    }
    assert!(hits.is_empty(), "{}", hits.join("\n"));
}

#[test]
fn sibling_modules_import_each_other_one_way() {
    let srcs = sources();
    let known: BTreeSet<Vec<String>> = srcs.iter().map(|s| s.module.clone()).collect();
    // (from, to) between siblings → one piece of evidence.
    let mut edges: BTreeMap<(Vec<String>, Vec<String>), String> = BTreeMap::new();
    for s in &srcs {
        for (n, line) in non_test_lines(s) {
            if is_comment(line) {
                continue;
            }
            for mut target in referenced_paths(line, &s.module) {
                while !target.is_empty() && !known.contains(&target) {
                    target.pop();
                }
                let from = &s.module;
                let common = from.iter().zip(&target).take_while(|(a, b)| a == b).count();
                // A module and its ancestor or descendant are one unit.
                if common == from.len() || common == target.len() {
                    continue;
                }
                let a = from[..=common].to_vec();
                let b = target[..=common].to_vec();
                edges
                    .entry((a, b))
                    .or_insert_with(|| format!("src/{}:{n}", s.rel));
            }
        }
    }
    let mut graph: BTreeMap<&Vec<String>, Vec<&Vec<String>>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        graph.entry(a).or_default().push(b);
    }
    let mut cycles = Vec::new();
    for ((a, b), at) in &edges {
        // A cycle through a → b is a path back from b to a.
        if let Some(path) = path_between(&graph, b, a) {
            let names: Vec<String> = std::iter::once(a)
                .chain(path.iter().copied())
                .map(|m| m.join("::"))
                .collect();
            cycles.push(format!("{} (first arrow at {at})", names.join(" → ")));
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles between sibling modules:\n{}",
        cycles.join("\n")
    );
}

fn path_between<'a>(
    graph: &BTreeMap<&'a Vec<String>, Vec<&'a Vec<String>>>,
    from: &'a Vec<String>,
    to: &'a Vec<String>,
) -> Option<Vec<&'a Vec<String>>> {
    let mut prev: BTreeMap<&Vec<String>, &Vec<String>> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([from]);
    let mut seen = BTreeSet::from([from]);
    while let Some(m) = queue.pop_front() {
        if m == to {
            let mut path = vec![m];
            let mut cur = m;
            while let Some(p) = prev.get(cur) {
                path.push(p);
                cur = p;
            }
            path.reverse();
            return Some(path);
        }
        for next in graph.get(m).into_iter().flatten() {
            if seen.insert(next) {
                prev.insert(next, m);
                queue.push_back(next);
            }
        }
    }
    None
}

#[test]
fn paths_in_groups_and_supers_are_read() {
    let m: Vec<String> = ["backend", "candle", "nn", "linear"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let got = referenced_paths(
        "use crate::backend::candle::{pack::DocTree, span::Span}; super::super::kernels::cpu::f()",
        &m,
    );
    let want: Vec<Vec<String>> = [
        vec!["backend", "candle", "pack", "DocTree"],
        vec!["backend", "candle", "span", "Span"],
        vec!["backend", "candle", "kernels", "cpu", "f"],
    ]
    .iter()
    .map(|v| v.iter().map(|s| s.to_string()).collect())
    .collect();
    assert_eq!(got, want);
}
