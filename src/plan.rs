//! A run resolved before anything is scored: the invocation ([`RunConfig`],
//! stored in `results.json` so `--resume` can redo it), the registries it
//! reads, its tasks' documents and requests ([`PreparedTask`]), and the run
//! directory it writes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::models::{Dtype, Registry};
use crate::task::{
    build_instances, BuildOptions, DataDir, Instance, TaskDocs, TaskRegistry, TaskSpec,
};

/// Errors resolving a run, before any model is loaded.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Task(#[from] crate::task::TaskError),
    #[error(transparent)]
    Models(#[from] crate::spec::models::ModelsError),
    #[error("task `{task}` reads {path}: pass --data-dir DIR (a folder laid out as <dataset_path>/<dataset_name>/<split>.jsonl), or run the built-in `smoke` suite")]
    NeedsDataDir { task: String, path: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// The invocation of a run, stored in `results.json` so `--resume` can redo it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunConfig {
    pub models: Vec<String>,
    /// `None` = the built-in registry.
    pub models_file: Option<PathBuf>,
    pub tasks: Vec<String>,
    pub suite_files: Vec<PathBuf>,
    /// `None` = the embedded smoke items only.
    pub data_dir: Option<PathBuf>,
    pub limit: Option<usize>,
    pub num_fewshot: Option<usize>,
    /// Overrides each model's `dtype`.
    pub dtype: Option<Dtype>,
    pub threads: usize,
    pub seed: u64,
    pub bootstrap_iters: usize,
    /// Per-core power for the CPU-time energy estimate (W).
    #[serde(default = "default_cpu_watts")]
    pub cpu_watts: f64,
    /// Grid carbon intensity for CO2e (g/kWh).
    #[serde(default = "default_grid")]
    pub grid_g_per_kwh: f64,
    /// Only this shard of the model × task cells.
    #[serde(default)]
    pub shard: Option<Shard>,
    /// Token budget of one packed forward (0 = one document per forward).
    #[serde(default = "default_pack_tokens")]
    pub pack_tokens: usize,
    /// Render each prompt with the model's chat template.
    #[serde(default)]
    pub apply_chat_template: bool,
    /// Few-shot examples as user/assistant turns (with the chat template).
    #[serde(default)]
    pub fewshot_as_multiturn: bool,
    /// Put before every prompt (a system turn under a chat template).
    #[serde(default)]
    pub system_instruction: Option<String>,
}

fn default_pack_tokens() -> usize {
    crate::backend::DEFAULT_PACK_TOKENS
}

/// Shard `index` (1-based) of `count`: cell k of the model-major list of
/// model × task cells belongs to shard `k % count + 1`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Whether the k-th cell (model-major order) is this shard's.
    pub fn owns(&self, k: usize) -> bool {
        k % self.count + 1 == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}`: write I/N with 1 ≤ I ≤ N, e.g. 1/2");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || count == 0 || index > count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

fn default_cpu_watts() -> f64 {
    crate::measure::energy::DEFAULT_CPU_WATTS_PER_CORE
}

fn default_grid() -> f64 {
    crate::measure::energy::DEFAULT_GRID_G_PER_KWH
}

/// A task ready to score: its spec and instances.
#[derive(Clone)]
pub struct PreparedTask {
    pub spec: TaskSpec,
    pub instances: Vec<Instance>,
    pub num_fewshot: usize,
    /// The data files read (empty for built-in documents).
    pub data_files: Vec<crate::record::DataFile>,
}

/// Reads every task's documents and builds its requests, so bad data fails
/// before any model is loaded.
pub fn prepare_tasks(specs: &[TaskSpec], cfg: &RunConfig) -> Result<Vec<PreparedTask>, PlanError> {
    let opts = BuildOptions {
        limit: cfg.limit,
        num_fewshot: cfg.num_fewshot,
        seed: cfg.seed,
        system_instruction: cfg.system_instruction.clone(),
        chat: cfg.apply_chat_template.then_some(crate::task::ChatOptions {
            fewshot_as_multiturn: cfg.fewshot_as_multiturn,
        }),
    };
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let k = opts.effective_fewshot(spec);
        let docs = if crate::task::smoke::is_smoke(spec) {
            crate::task::smoke::docs(spec)?
        } else {
            let dir = cfg
                .data_dir
                .as_ref()
                .ok_or_else(|| PlanError::NeedsDataDir {
                    task: spec.name.clone(),
                    path: format!(
                        "{}/{}",
                        spec.dataset_path,
                        spec.dataset_name.as_deref().unwrap_or("")
                    ),
                })?;
            TaskDocs::load(spec, &data_dir(dir), k)?
        };
        let instances = build_instances(spec, &docs, &opts)?;
        let smoke = crate::task::smoke::is_smoke(spec);
        let mut data_files: Vec<crate::record::DataFile> = std::iter::once(&docs.eval)
            .chain(docs.fewshot.as_ref())
            .filter(|_| !smoke)
            .map(|d| crate::record::DataFile {
                split: d.split.clone(),
                file: d.file.clone(),
                sha256: d.sha256.clone(),
                docs: d.len(),
            })
            .collect();
        data_files.dedup();
        out.push(PreparedTask {
            spec: spec.clone(),
            instances,
            num_fewshot: k,
            data_files,
        });
    }
    Ok(out)
}

/// A data folder read as JSON Lines, or as the Hub's Parquet shards.
pub fn data_dir(dir: &Path) -> DataDir {
    DataDir::new(dir).with_parquet_reader(std::sync::Arc::new(crate::task::parquet::PolarsParquet))
}

/// Built-in tasks, the smoke suite and any `--suite` files.
pub fn task_registry(suite_files: &[PathBuf]) -> Result<TaskRegistry, PlanError> {
    let mut reg = crate::task::builtin_registry()?;
    crate::task::smoke::register(&mut reg)?;
    reg.seal_builtins();
    for f in suite_files {
        if f.is_dir() {
            reg.add_dir(f)?;
        } else {
            let text = std::fs::read_to_string(f).map_err(|e| PlanError::Io {
                path: f.display().to_string(),
                message: format!("cannot read: {e}"),
            })?;
            reg.add_file(f, &text)?;
        }
    }
    Ok(reg)
}

pub fn model_registry(models_file: Option<&Path>) -> Result<Registry, PlanError> {
    Ok(match models_file {
        Some(p) => Registry::load(p)?,
        None => match Path::new("models.yaml") {
            p if p.is_file() => Registry::load(p)?,
            _ => Registry::builtin()?,
        },
    })
}

pub fn new_run_dir(root: &Path, first_model: &str) -> PathBuf {
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    let base = root.join(format!("{stamp}-{first_model}"));
    let mut dir = base.clone();
    let mut k = 1;
    while dir.exists() {
        k += 1;
        dir = PathBuf::from(format!("{}-{k}", base.display()));
    }
    dir
}
