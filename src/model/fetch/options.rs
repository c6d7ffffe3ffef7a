//! Options of a fetch: progress, offline mode, the Hub endpoint and token, the pip client.

use std::fmt;
use std::fs;
use std::path::PathBuf;

use crate::spec::sources::PipCommand;

/// Options for [`obtain`](super::obtain). [`FetchOptions::default`] reads no environment;
/// [`FetchOptions::from_env`] is what a command-line program should use.
#[derive(Clone, Default)]
pub struct FetchOptions {
    /// Show progress bars (only ever drawn when stderr is a terminal).
    pub progress: bool,
    /// Skip network sources (pip; Hub files not already in hf-hub's cache).
    pub offline: bool,
    /// Hub endpoint (scheme and host, no trailing path); hf-hub's default when `None`.
    pub hf_endpoint: Option<String>,
    /// Hub access token; hf-hub's token file under `<home>` when `None`.
    pub hf_token: Option<String>,
    /// The pip client.
    pub pip: PipCommand,
    /// Where a `distill` step's task corpora are read (`run --data-dir`,
    /// else `SLMBENCH_DATA_DIR`).
    pub data_dir: Option<PathBuf>,
}

impl fmt::Debug for FetchOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchOptions")
            .field("progress", &self.progress)
            .field("offline", &self.offline)
            .field("hf_endpoint", &self.hf_endpoint)
            .field("hf_token", &self.hf_token.as_ref().map(|_| "<redacted>"))
            .field("pip", &self.pip)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl FetchOptions {
    /// Options from the process environment, with progress bars on:
    /// `SLMBENCH_OFFLINE` (`1`/`true`/`yes`/`on`), `HF_ENDPOINT`, `SLMBENCH_PIP`
    /// (a program path), `SLMBENCH_DATA_DIR` (task data for `distill` steps),
    /// and the Hub token from `HF_TOKEN`, else
    /// `HUGGING_FACE_HUB_TOKEN`, else the file `HF_TOKEN_PATH`, else `$HF_HOME/token`,
    /// else `huggingface/token` under `$XDG_CACHE_HOME` or `~/.cache`.
    pub fn from_env() -> Self {
        Self::from_env_with(|key| std::env::var(key).ok())
    }

    /// Like [`FetchOptions::from_env`], reading variables through `lookup`
    /// (empty values count as unset).
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());
        let offline = var("SLMBENCH_OFFLINE")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false);
        let hf_token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path = match (var("HF_TOKEN_PATH"), var("HF_HOME"), var("XDG_CACHE_HOME")) {
                    (Some(p), _, _) => PathBuf::from(p),
                    (None, Some(h), _) => PathBuf::from(h).join("token"),
                    (None, None, Some(c)) => PathBuf::from(c).join("huggingface").join("token"),
                    (None, None, None) => dirs::home_dir()?
                        .join(".cache")
                        .join("huggingface")
                        .join("token"),
                };
                let token = fs::read_to_string(path).ok()?;
                let token = token.trim();
                (!token.is_empty()).then(|| token.to_string())
            });
        FetchOptions {
            progress: true,
            offline,
            hf_endpoint: var("HF_ENDPOINT").map(|e| e.trim().to_string()),
            hf_token: hf_token.map(|t| t.trim().to_string()),
            pip: var("SLMBENCH_PIP")
                .map(PipCommand::program)
                .unwrap_or_default(),
            data_dir: var("SLMBENCH_DATA_DIR").map(PathBuf::from),
        }
    }
}
