//! Running a plan: models × tasks through a scorer, writing samples as they
//! are computed and results after every cell.
//!
//! Invariant: a failure in one cell is recorded and the run goes on; every
//! sample already computed stays on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::backend::candle::layers::WeightMode;
use crate::backend::scorer::{CandleScorer, Scorer};
use crate::fetch::{self, FetchOptions};
use crate::gguf::GgufFile;
use crate::metrics::{aggregate, score_sample, AggregateOptions, Metric, SampleScore};
use crate::models::{Dtype, Format, ModelSpec, Registry};
use crate::record::{
    read_samples, samples_path, CellEnergy, CellResult, CellStatus, LatencyStats, MetricValue,
    ModelRecord, RunRecord, SampleRecord, SampleWriter,
};
use crate::task::{build_instances, BuildOptions, DataDir, Instance, TaskDocs, TaskSpec};
use crate::tokenizer::TextTokenizer;

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
}

fn default_pack_tokens() -> usize {
    crate::backend::scorer::DEFAULT_PACK_TOKENS
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
    crate::energy::DEFAULT_CPU_WATTS_PER_CORE
}

fn default_grid() -> f64 {
    crate::energy::DEFAULT_GRID_G_PER_KWH
}

/// Measurement settings of a cell.
#[derive(Debug, Clone, Copy)]
pub struct MeasureOptions {
    pub cpu_watts: f64,
    pub grid_g_per_kwh: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Task(#[from] crate::task::TaskError),
    #[error(transparent)]
    Models(#[from] crate::models::ModelsError),
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error(transparent)]
    Load(#[from] crate::backend::candle::LoadError),
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    #[error(transparent)]
    Variant(#[from] crate::variant::VariantError),
    #[error("task `{task}` reads {path}: pass --data-dir DIR (a folder laid out as <dataset_path>/<dataset_name>/<split>.jsonl), or run the built-in `smoke` suite")]
    NeedsDataDir { task: String, path: String },
    #[error("{0}")]
    Other(String),
}

/// A task ready to score: its spec and instances.
pub struct PreparedTask {
    pub spec: TaskSpec,
    pub instances: Vec<Instance>,
    pub num_fewshot: usize,
}

/// Reads every task's documents and builds its requests, so bad data fails
/// before any model is loaded.
pub fn prepare_tasks(specs: &[TaskSpec], cfg: &RunConfig) -> Result<Vec<PreparedTask>, EvalError> {
    let opts = BuildOptions {
        limit: cfg.limit,
        num_fewshot: cfg.num_fewshot,
        seed: cfg.seed,
    };
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let k = opts.effective_fewshot(spec);
        let docs = if crate::smoke::is_smoke(spec) {
            crate::smoke::docs(spec)?
        } else {
            let dir = cfg
                .data_dir
                .as_ref()
                .ok_or_else(|| EvalError::NeedsDataDir {
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
        out.push(PreparedTask {
            spec: spec.clone(),
            instances,
            num_fewshot: k,
        });
    }
    Ok(out)
}

/// A data folder read as JSON Lines, or as the Hub's Parquet shards.
pub fn data_dir(dir: &Path) -> DataDir {
    DataDir::new(dir).with_parquet_reader(std::sync::Arc::new(crate::parquet::PolarsParquet))
}

/// A model file located (fetched if needed) and loaded.
pub struct LoadedModel {
    pub scorer: CandleScorer,
    pub record: ModelRecord,
}

/// Obtains `name`'s file (fetching into the cache when missing, or
/// materializing a variant) and loads it.
pub fn load_model(
    registry: &Registry,
    name: &str,
    dtype_override: Option<Dtype>,
    fetch_opts: &FetchOptions,
) -> Result<LoadedModel, EvalError> {
    let spec = registry.get(name)?;
    let got = crate::variant::obtain(registry, name, &fetch::default_home(), fetch_opts)?;
    let path = got.path.clone();
    let rss0 = crate::measure::rss_bytes();
    let t0 = Instant::now();
    let effective = effective_spec(spec, &got);
    let mut gguf = open_weights(&effective, &path)?;
    let dtype = dtype_override.unwrap_or(spec.dtype);
    let mode = weight_mode(dtype);
    let weight_types: BTreeMap<String, (usize, u64)> = gguf
        .weight_types()
        .into_iter()
        .map(|(t, n, b)| (t, (n, b)))
        .collect();
    // The tokenizer (Gemma 3's 262k vocabulary: ~1 s of building maps) and
    // the weights are independent: built side by side on the pool.
    let meta = gguf.split_metadata();
    let (tokenizer, model) = rayon::join(
        || open_tokenizer(&effective, &path, &meta),
        || crate::backend::candle::load(&mut gguf, mode),
    );
    drop(meta);
    let (tokenizer, model) = (tokenizer?, model?);
    let info = model.info().clone();
    let max_len = got.context_length.unwrap_or(info.context_length);
    let weight_bytes_file: u64 = weight_types.values().map(|(_, b)| b).sum();
    let params = info.weights.params;
    let bits_per_weight = (params > 0).then(|| match dtype {
        Dtype::F32 => 32.0,
        _ => weight_bytes_file as f64 * 8.0 / params as f64,
    });
    let record = ModelRecord {
        file: path.display().to_string(),
        sha256: match (&spec.sha256, got.format) {
            (Some(h), _) => Some(h.clone()),
            (None, Format::Gguf) => fetch::sha256_file(&path, false).ok(),
            (None, Format::Safetensors) => None,
        },
        architecture: info.architecture.clone(),
        dtype: dtype.to_string(),
        file_bytes: gguf.file_bytes(),
        n_layer: info.n_layer,
        hidden: info.hidden,
        vocab: info.vocab,
        context_length: max_len,
        load_time_s: t0.elapsed().as_secs_f64(),
        load_rss_delta_bytes: crate::measure::rss_bytes()
            .zip(rss0)
            .map(|(a, b)| a.saturating_sub(b)),
        weight_types,
        params: Some(params),
        nonzero_params: info
            .weights
            .nonzero
            .or_else(|| got.report.as_ref().map(|r| r.totals.nonzero_params)),
        weight_bytes_file: Some(weight_bytes_file),
        weight_bytes_memory: Some(info.weights.held_bytes),
        bits_per_weight,
        lineage: got.lineage.clone(),
    };
    Ok(LoadedModel {
        scorer: CandleScorer::new(model, tokenizer, max_len),
        record,
    })
}

/// The spec to open an obtained model with: a variant is a GGUF, with the
/// tokenizer its root model uses.
pub fn effective_spec(spec: &ModelSpec, got: &crate::variant::Obtained) -> ModelSpec {
    let mut s = spec.clone();
    s.format = got.format;
    s.tokenizer.clone_from(&got.tokenizer);
    s
}

/// The matmul strategy a `dtype` stands for.
pub fn weight_mode(dtype: Dtype) -> WeightMode {
    match dtype {
        Dtype::Quantized => WeightMode::Auto,
        Dtype::QuantizedStrict => WeightMode::Quantized,
        Dtype::F32 => WeightMode::F32,
    }
}

/// Opens a model file (GGUF) or folder (safetensors) and its tokenizer.
pub fn open_model(spec: &ModelSpec, path: &Path) -> Result<(GgufFile, TextTokenizer), EvalError> {
    let gguf = open_weights(spec, path)?;
    let tokenizer = open_tokenizer(spec, path, &gguf)?;
    Ok((gguf, tokenizer))
}

/// A model file (GGUF) or folder (safetensors), metadata read, tensors not.
fn open_weights(spec: &ModelSpec, path: &Path) -> Result<GgufFile, EvalError> {
    Ok(match spec.format {
        Format::Gguf => GgufFile::open(path)?,
        Format::Safetensors => {
            crate::safetensors::open_dir(path).map_err(|e| EvalError::Other(e.to_string()))?
        }
    })
}

/// The model's tokenizer: `spec.tokenizer`, the folder's `tokenizer.json`
/// or the GGUF metadata of `gguf`.
fn open_tokenizer(
    spec: &ModelSpec,
    path: &Path,
    gguf: &GgufFile,
) -> Result<TextTokenizer, EvalError> {
    Ok(match (&spec.tokenizer, spec.format) {
        (Some(p), _) => TextTokenizer::from_json_file(p, Some(gguf))?,
        (None, Format::Safetensors) => {
            TextTokenizer::from_json_file(&path.join("tokenizer.json"), Some(gguf))?
        }
        (None, Format::Gguf) => TextTokenizer::from_gguf(gguf)?,
    })
}

fn sample_metrics(metrics: &[Metric], s: &SampleScore) -> Map<String, Value> {
    metrics
        .iter()
        .map(|m| {
            let v = match m {
                Metric::Acc => Value::from(s.acc()),
                Metric::AccNorm => Value::from(s.acc_norm()),
                Metric::F1 | Metric::Mcc => Value::from(vec![s.gold, s.pred]),
            };
            (m.name().to_string(), v)
        })
        .collect()
}

/// Documents handed to the scorer per call (it packs them into forwards);
/// samples are written after each call.
pub const DOCS_PER_CALL: usize = 64;

/// Progress reporting, kept out of piped output.
fn progress_bar(len: u64, label: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let target = if std::io::stderr().is_terminal() {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    };
    let pb = indicatif::ProgressBar::with_draw_target(Some(len), target);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>32} [{bar:30}] {pos}/{len} docs {per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_prefix(label.to_string());
    pb
}

/// Scores one model × task cell, appending samples to `run_dir`.
pub fn run_cell(
    scorer: &mut dyn Scorer,
    model: &str,
    task: &PreparedTask,
    run_dir: &Path,
    bootstrap_iters: usize,
    measure: MeasureOptions,
) -> Result<CellResult, EvalError> {
    let t0 = Instant::now();
    let rss_scope = crate::measure::start_peak_window();
    let sampler = crate::measure::RssSampler::start();
    let path = samples_path(run_dir, model, &task.spec.name);
    let done = read_samples(&path)?;
    let wanted: BTreeSet<usize> = task.instances.iter().map(|i| i.doc_id).collect();
    let mut scores: BTreeMap<usize, SampleScore> = BTreeMap::new();
    let mut truncated = 0;
    for r in &done {
        if wanted.contains(&r.doc_id) {
            scores.insert(
                r.doc_id,
                SampleScore {
                    gold: r.gold,
                    pred: r.pred,
                    pred_norm: r.pred_norm,
                },
            );
            truncated += usize::from(r.truncated);
        }
    }
    let resumed = scores.len();
    let mut writer = SampleWriter::open(&path)?;
    let todo: Vec<&Instance> = task
        .instances
        .iter()
        .filter(|i| !scores.contains_key(&i.doc_id))
        .collect();
    let pb = progress_bar(todo.len() as u64, &format!("{model}/{}", task.spec.name));
    let mut forwarded = 0;
    let mut peak_cached = 0;
    let mut latencies = Vec::with_capacity(todo.len());
    let n_todo = todo.len();
    let meter =
        crate::energy::EnergyMeter::start(Path::new("/sys/class/powercap"), measure.cpu_watts);
    let gpu_meter = crate::gpu_energy::GpuEnergyMeter::start();
    let scoring = Instant::now();
    for chunk in todo.chunks(DOCS_PER_CALL) {
        let t = Instant::now();
        let requests: Vec<(&str, &[String])> = chunk
            .iter()
            .map(|i| (i.context.as_str(), i.continuations.as_slice()))
            .collect();
        let docs = scorer.score_docs(&requests).map_err(|e| {
            let first = chunk.first().map_or(0, |i| i.doc_id);
            let last = chunk.last().map_or(0, |i| i.doc_id);
            EvalError::Other(format!("docs {first}..={last}: {e}"))
        })?;
        let chunk_ms = t.elapsed().as_secs_f64() * 1e3 / chunk.len().max(1) as f64;
        for (inst, doc) in chunk.iter().zip(docs) {
            let latency_ms = doc.shared_ms.unwrap_or(chunk_ms);
            latencies.push(latency_ms);
            let lls: Vec<f64> = doc.choices.iter().map(|c| c.loglikelihood).collect();
            let chars: Vec<usize> = inst.choices.iter().map(|c| c.chars().count()).collect();
            let s = score_sample(&lls, &chars, inst.gold)
                .map_err(|e| EvalError::Other(format!("doc {}: {e}", inst.doc_id)))?;
            writer.append(&SampleRecord {
                doc_id: inst.doc_id,
                gold: inst.gold,
                context: inst.context.clone(),
                continuations: inst.continuations.clone(),
                loglikelihoods: lls,
                is_greedy: doc.choices.iter().map(|c| c.is_greedy).collect(),
                pred: s.pred,
                metrics: sample_metrics(&task.spec.metrics, &s),
                pred_norm: s.pred_norm,
                continuation_tokens: doc.choices.iter().map(|c| c.n_tokens).collect(),
                truncated: doc.truncated,
                latency_ms: Some(latency_ms),
            })?;
            truncated += usize::from(doc.truncated);
            forwarded += doc.tokens_forwarded;
            peak_cached = peak_cached.max(doc.peak_cached_tokens);
            scores.insert(inst.doc_id, s);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let sampled_rss = sampler.stop();
    let scoring_s = scoring.elapsed().as_secs_f64();
    let energy = (n_todo > 0)
        .then(|| meter.finish())
        .flatten()
        .map(|r| CellEnergy {
            method: r.method,
            note: r.note,
            energy_j: r.joules,
            energy_per_doc_j: Some(r.joules / n_todo as f64),
            energy_per_1k_tokens_j: (forwarded > 0).then(|| r.joules * 1000.0 / forwarded as f64),
            co2e_g: crate::energy::grams_co2e(r.joules, measure.grid_g_per_kwh),
            grid_g_per_kwh: measure.grid_g_per_kwh,
            gpu: gpu_meter.finish().map(|g| crate::record::GpuEnergy {
                energy_j: g.joules,
                note: g.note,
            }),
        });
    let samples: Vec<SampleScore> = scores.values().copied().collect();
    let opts = AggregateOptions { bootstrap_iters };
    let mut metrics = Vec::new();
    for m in &task.spec.metrics {
        let a = aggregate(*m, &samples, &opts)
            .map_err(|e| EvalError::Other(format!("{}: {e}", task.spec.name)))?;
        metrics.push(MetricValue {
            name: m.name().to_string(),
            value: a.value,
            stderr: a.stderr,
        });
    }
    Ok(CellResult {
        model: model.to_string(),
        task: task.spec.name.clone(),
        status: CellStatus::Ok,
        metrics,
        n: samples.len(),
        num_fewshot: task.num_fewshot,
        truncated,
        wall_time_s: t0.elapsed().as_secs_f64(),
        tokens_forwarded: forwarded,
        tokens_per_s: (forwarded > 0 && scoring_s > 0.0).then(|| forwarded as f64 / scoring_s),
        latency: LatencyStats::from_ms(&latencies, WARMUP_DOCS),
        peak_rss: crate::measure::peak_rss(rss_scope).map(|p| crate::measure::PeakRss {
            sampled_bytes: sampled_rss,
            ..p
        }),
        kv_cache_peak_bytes: scorer
            .kv_bytes_per_token()
            .filter(|_| peak_cached > 0)
            .map(|b| (b * peak_cached) as u64),
        energy,
        resumed_samples: resumed,
        error: None,
    })
}

/// Documents at the start of each cell left out of latency statistics.
pub const WARMUP_DOCS: usize = 1;

/// A failed cell, recorded so the run can go on.
pub fn failed_cell(model: &str, task: &PreparedTask, err: &str) -> CellResult {
    CellResult {
        model: model.to_string(),
        task: task.spec.name.clone(),
        status: CellStatus::Failed,
        metrics: Vec::new(),
        n: 0,
        num_fewshot: task.num_fewshot,
        truncated: 0,
        wall_time_s: 0.0,
        tokens_forwarded: 0,
        tokens_per_s: None,
        latency: None,
        peak_rss: None,
        kv_cache_peak_bytes: None,
        energy: None,
        resumed_samples: 0,
        error: Some(err.to_string()),
    }
}

/// Replaces the cell for (model, task) or appends it.
pub fn upsert_cell(record: &mut RunRecord, cell: CellResult) {
    match record
        .cells
        .iter_mut()
        .find(|c| c.model == cell.model && c.task == cell.task)
    {
        Some(c) => *c = cell,
        None => record.cells.push(cell),
    }
}

/// The printed summary: one row per model × task × metric.
pub fn summary_table(record: &RunRecord) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "model".into(),
        "task".into(),
        "metric".into(),
        "value ± stderr".into(),
        "n".into(),
        "time (s)".into(),
        "p50 ms/doc".into(),
    ]];
    for c in &record.cells {
        if c.status == CellStatus::Failed {
            rows.push([
                c.model.clone(),
                c.task.clone(),
                "FAILED".into(),
                c.error.clone().unwrap_or_default(),
                "0".into(),
                String::new(),
                String::new(),
            ]);
            continue;
        }
        for m in &c.metrics {
            let v = match m.stderr {
                Some(e) => format!("{:.4} ± {:.4}", m.value, e),
                None => format!("{:.4} ± n/a", m.value),
            };
            rows.push([
                c.model.clone(),
                c.task.clone(),
                m.name.clone(),
                v,
                c.n.to_string(),
                format!("{:.1}", c.wall_time_s),
                c.latency
                    .as_ref()
                    .map_or("n/a".into(), |l| format!("{:.0}", l.p50_ms)),
            ]);
        }
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    crate::variant::compare::table(&rows)
}
