//! Hub sources: files from a Hugging Face Hub model repository, through
//! hf-hub's synchronous API.
//!
//! hf-hub (0.4.3) keeps its own cache under `<home>/hub`
//! (`models--ORG--NAME/{blobs,snapshots,refs}`). A file already there is used
//! without any request (also when offline); otherwise it is downloaded with
//! `GET {endpoint}/{repo}/resolve/{revision}/{file}`: first with
//! `Range: bytes=0-0` and redirects off, whose reply must carry `x-repo-commit`,
//! `x-linked-etag` or `etag`, and either `content-range` or an absolute
//! redirect to a URL that answers with one; then the body, with
//! `Range: bytes=N-` and redirects followed. hf-hub does not read `HF_TOKEN`
//! or `HF_ENDPOINT` by itself here: both come from [`FetchOptions`].
//!
//! One file is hard-linked from hf-hub's blob into the partial file (copied
//! when linking fails), so a large model is not stored twice; several files
//! are concatenated.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};

#[cfg(doc)]
use super::FetchOptions;
use super::{concat_files, link_or_copy, Ctx, HubSource, Materialized, SourceError};

/// Builds the hf-hub client for `<home>/hub` with the endpoint and token from the options.
fn api(ctx: &Ctx<'_>, cache: Cache) -> Result<Api, String> {
    let mut builder = ApiBuilder::from_cache(cache)
        .with_progress(ctx.progress)
        .with_retries(2);
    if let Some(endpoint) = &ctx.opts.hf_endpoint {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    if let Some(token) = &ctx.opts.hf_token {
        builder = builder.with_token(Some(token.clone()));
    }
    builder.build().map_err(|e| e.to_string())
}

/// Puts the concatenation of the source's files into `partial`.
///
/// With `force_download`, files already in hf-hub's cache are downloaded again
/// (used when the cached copy does not match the pinned digest).
pub(super) fn materialize(
    src: &HubSource,
    ctx: &Ctx<'_>,
    partial: &Path,
    force_download: bool,
) -> Result<Materialized, SourceError> {
    if src.files.is_empty() {
        return Err(SourceError::Invalid("hub source lists no files".into()));
    }
    let revision = src.revision.clone().unwrap_or_else(|| "main".to_string());
    let repo = Repo::with_revision(src.repo.clone(), RepoType::Model, revision);
    let cache = Cache::new(ctx.home.join("hub"));
    let hub_err = |file: &str, message: String| SourceError::Hub {
        repo: src.repo.clone(),
        file: file.to_string(),
        message,
    };

    let mut client: Option<Api> = None;
    let mut reused = false;
    let mut paths: Vec<PathBuf> = Vec::with_capacity(src.files.len());
    for file in &src.files {
        if !force_download {
            if let Some(path) = cache.repo(repo.clone()).get(file) {
                reused = true;
                paths.push(path);
                continue;
            }
        }
        if ctx.opts.offline {
            return Err(SourceError::Offline(Some(format!(
                "{file} is not in hf-hub's cache"
            ))));
        }
        let api = match &client {
            Some(api) => api,
            None => client.insert(api(ctx, cache.clone()).map_err(|m| hub_err(file, m))?),
        };
        let path = api
            .repo(repo.clone())
            .download(file)
            .map_err(|e| hub_err(file, e.to_string()))?;
        paths.push(path);
    }

    let mut got = match paths.as_slice() {
        [one] => {
            // hf-hub's snapshot entry is a symlink to the blob: link the blob itself.
            let blob = std::fs::canonicalize(one).unwrap_or_else(|_| one.clone());
            link_or_copy(&blob, partial, ctx)?
        }
        many => Materialized {
            digest: Some(concat_files(many, partial, ctx)?),
            reused_hub_cache: false,
        },
    };
    got.reused_hub_cache = reused;
    Ok(got)
}
