//! Run records: per-sample lines, per-cell results, provenance, and the
//! files of a run directory (`results.json`, `results.csv`,
//! `samples/<model>/<task>.jsonl`). The serialization boundary: nothing
//! here knows a model or a tensor.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod generation;
pub use generation::{GenSampleRecord, GenerationStats, StopCounts};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RecordError + '_ {
    move |source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One scored document, with the same keys as lm-eval's per-sample logs
/// (and `../shared/reference`), plus what slmbench adds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
///
/// A generation task's lines ([`GenSampleRecord`]) read as this type too,
/// for reports: the multiple-choice fields then take their defaults and
/// everything else (`generation`, `filtered`, `exact_match,<filter>`, …)
/// lands in `metrics`.
pub struct SampleRecord {
    pub doc_id: usize,
    #[serde(default)]
    pub gold: usize,
    #[serde(default)]
    pub context: String,
    #[serde(default)]
    pub continuations: Vec<String>,
    #[serde(default)]
    pub loglikelihoods: Vec<f64>,
    #[serde(default)]
    pub is_greedy: Vec<bool>,
    #[serde(default)]
    pub pred: usize,
    /// Per-sample metric values: `acc`/`acc_norm` as 0/1, `f1`/`mcc` as `[gold, pred]`.
    #[serde(flatten)]
    pub metrics: Map<String, Value>,
    /// Index of the best length-normalized choice.
    #[serde(default)]
    pub pred_norm: usize,
    /// Number of tokens of each continuation.
    #[serde(default)]
    pub continuation_tokens: Vec<usize>,
    /// The context was left-truncated to fit the model's window.
    #[serde(default)]
    pub truncated: bool,
    /// Wall time spent scoring this document.
    #[serde(default)]
    pub latency_ms: Option<f64>,
}

/// Appends sample lines, flushing each so a killed run keeps them.
pub struct SampleWriter {
    path: PathBuf,
    file: File,
}

impl SampleWriter {
    pub fn open(path: &Path) -> Result<Self, RecordError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn append<T: Serialize>(&mut self, rec: &T) -> Result<(), RecordError> {
        let mut line = serde_json::to_string(rec).map_err(|e| RecordError::Format {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(io_err(&self.path))
    }
}

/// Reads the samples already written (for `--resume`). A torn last line
/// (the run was killed mid-write) is dropped and cut from the file.
pub fn read_samples(path: &Path) -> Result<Vec<SampleRecord>, RecordError> {
    read_records(path)
}

/// [`read_samples`] for any line type (a generation task's
/// [`GenSampleRecord`]s).
pub fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, RecordError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let last_content = lines
        .iter()
        .rposition(|l| !l.iter().all(u8::is_ascii_whitespace));
    let mut out = Vec::new();
    let mut good_bytes = 0u64;
    let mut torn = false;
    for (i, line) in lines.iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            good_bytes += line.len() as u64 + 1;
            continue;
        }
        match serde_json::from_slice::<T>(line) {
            Ok(r) => {
                out.push(r);
                good_bytes += line.len() as u64 + 1;
            }
            // Only a torn final line (a run killed mid-write) is tolerated;
            // the file is cut right after the last good line.
            Err(_) if Some(i) == last_content => {
                torn = true;
                break;
            }
            Err(e) => {
                return Err(RecordError::Format {
                    path: path.to_path_buf(),
                    message: format!(
                        "line {}: not a sample record ({e}); delete the line or the file to recompute it",
                        i + 1
                    ),
                })
            }
        }
    }
    let good_bytes = good_bytes.min(bytes.len() as u64);
    if torn {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        f.set_len(good_bytes).map_err(io_err(path))?;
    }
    Ok(out)
}

/// One aggregated metric of a cell.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricValue {
    pub name: String,
    pub value: f64,
    pub stderr: Option<f64>,
}

/// The outcome of one model × task cell.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CellResult {
    pub model: String,
    pub task: String,
    pub status: CellStatus,
    pub metrics: Vec<MetricValue>,
    pub n: usize,
    pub num_fewshot: usize,
    pub truncated: usize,
    pub wall_time_s: f64,
    pub tokens_forwarded: usize,
    /// Tokens forwarded per second of scoring in this invocation.
    #[serde(default)]
    pub tokens_per_s: Option<f64>,
    /// Per-document scoring latency in this invocation (warm-up excluded).
    #[serde(default)]
    pub latency: Option<LatencyStats>,
    /// Peak resident memory while the cell ran (kernel high-water mark).
    #[serde(default)]
    pub peak_rss: Option<crate::measure::PeakRss>,
    /// KV-cache bytes at the longest sequence scored (f32 keys and values).
    #[serde(default)]
    pub kv_cache_peak_bytes: Option<u64>,
    /// Energy of the cell's scoring, with its method.
    #[serde(default)]
    pub energy: Option<CellEnergy>,
    /// Samples scored in an earlier, resumed invocation.
    pub resumed_samples: usize,
    pub error: Option<String>,
    /// A served model's requests, tokens and cost in this invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<ServedStats>,
    /// A generation task's time to first token, decode speed and stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationStats>,
}

/// Energy of a cell: total, per document, per 1k tokens, and CO2e.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CellEnergy {
    pub method: crate::measure::energy::EnergyMethod,
    /// How it was measured or estimated, in words.
    pub note: String,
    pub energy_j: f64,
    pub energy_per_doc_j: Option<f64>,
    /// Per 1,000 tokens forwarded, prompt and generated together.
    pub energy_per_1k_tokens_j: Option<f64>,
    /// Per 1,000 prompt tokens: all of a log-likelihood cell's energy; in a
    /// generation cell the prefill's share (see `split_note`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_per_1k_prompt_tokens_j: Option<f64>,
    /// Per 1,000 generated tokens: the decode's share of a generation
    /// cell's energy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_per_1k_generated_tokens_j: Option<f64>,
    /// How a generation cell's energy was split between prefill and decode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_note: Option<String>,
    pub co2e_g: f64,
    pub grid_g_per_kwh: f64,
    /// GPU energy over the same interval (NVML), when measured; not in `energy_j`.
    #[serde(default)]
    pub gpu: Option<GpuEnergy>,
}

/// Energy of the GPUs during a cell, from NVML.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GpuEnergy {
    pub energy_j: f64,
    pub note: String,
}

/// What a served model's cell cost: requests, tokens, latency per request
/// and money, over the documents scored in this invocation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServedStats {
    pub requests: usize,
    /// Prompt tokens sent and tokens generated, as billed per token.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Per request, from sending it to the end of the response.
    pub request_latency: Option<LatencyStats>,
    /// Median time to the response's headers.
    pub ttfb_p50_ms: Option<f64>,
    /// Requests answered per second of the cell's scoring, at the
    /// configured concurrency.
    pub requests_per_s: Option<f64>,
    /// From the model's `price`, when it has one.
    pub cost: Option<f64>,
    pub cost_per_1k_docs: Option<f64>,
    pub currency: Option<String>,
    /// CPU seconds this process spent while the cell's requests were
    /// being answered: the harness's own work (building requests,
    /// tokenizing, parsing replies, writing samples), not the server's.
    #[serde(default)]
    pub harness_cpu_s: Option<f64>,
    /// `harness_cpu_s` over the cell's scoring wall time: the share of
    /// the run the harness itself was busy (small when the server is the
    /// bottleneck, as it should be).
    #[serde(default)]
    pub harness_cpu_share: Option<f64>,
}

/// The `p`-quantile of sorted `xs` by linear interpolation between order
/// statistics (numpy's default); `None` for no values.
pub fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    let n = xs.len();
    if n == 0 {
        return None;
    }
    let h = p * (n - 1) as f64;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    Some(xs[lo] + (h - lo as f64) * (xs[hi] - xs[lo]))
}

/// Summary of per-document latencies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LatencyStats {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// Sample standard deviation; `None` for a single document.
    pub sd_ms: Option<f64>,
    pub n: usize,
    /// Leading documents left out as warm-up.
    pub warmup_excluded: usize,
}

impl LatencyStats {
    /// Percentiles by linear interpolation between order statistics (numpy's
    /// default); the first `warmup` latencies are left out. `None` when
    /// nothing is left.
    pub fn from_ms(latencies: &[f64], warmup: usize) -> Option<Self> {
        let warmup = warmup.min(latencies.len().saturating_sub(1));
        let mut xs: Vec<f64> = latencies[warmup..].to_vec();
        if xs.is_empty() {
            return None;
        }
        xs.sort_by(f64::total_cmp);
        let n = xs.len();
        let q = |p: f64| percentile(&xs, p).unwrap_or(f64::NAN);
        let mean = xs.iter().sum::<f64>() / n as f64;
        let sd = (n > 1)
            .then(|| (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
        Some(Self {
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            mean_ms: mean,
            sd_ms: sd,
            n,
            warmup_excluded: warmup,
        })
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CellStatus {
    Ok,
    Failed,
}

impl CellResult {
    /// A failed cell, recorded so the run can go on.
    pub fn failed(model: &str, task: &str, num_fewshot: usize, err: &str) -> CellResult {
        CellResult {
            model: model.to_string(),
            task: task.to_string(),
            status: CellStatus::Failed,
            metrics: Vec::new(),
            n: 0,
            num_fewshot,
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
            served: None,
            generation: None,
        }
    }
}

impl RunRecord {
    /// Replaces the cell for (model, task) or appends it.
    pub fn upsert(&mut self, cell: CellResult) {
        match self
            .cells
            .iter_mut()
            .find(|c| c.model == cell.model && c.task == cell.task)
        {
            Some(c) => *c = cell,
            None => self.cells.push(cell),
        }
    }
}

/// Facts about a loaded model for provenance. File and architecture facts
/// are `None` where the engine cannot know them (a model behind an endpoint).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ModelRecord {
    /// The engine that ran the model (`engine:` of its spec, e.g. `local`);
    /// empty in records written before engines were named (all ran the
    /// built-in engine).
    #[serde(default)]
    pub backend: String,
    pub file: Option<String>,
    pub sha256: Option<String>,
    pub architecture: Option<String>,
    pub dtype: String,
    pub file_bytes: Option<u64>,
    pub n_layer: Option<usize>,
    pub hidden: Option<usize>,
    pub vocab: Option<usize>,
    pub context_length: usize,
    pub load_time_s: f64,
    /// Resident memory added by loading the model.
    #[serde(default)]
    pub load_rss_delta_bytes: Option<u64>,
    /// The file's quantization as llama.cpp names it (`general.file_type`,
    /// e.g. `Q4_K_M`), else its weights' most common type.
    #[serde(default)]
    pub quant_type: Option<String>,
    /// GGML type → (tensor count, bytes).
    #[serde(default)]
    pub weight_types: BTreeMap<String, (usize, u64)>,
    /// Number of weights (all tensors; a low-rank pair counts its factors).
    #[serde(default)]
    pub params: Option<u64>,
    /// Weights that are not zero (counted where the values were at hand:
    /// dense weights at load, or a variant's report).
    #[serde(default)]
    pub nonzero_params: Option<u64>,
    /// Tensor data bytes in the file.
    #[serde(default)]
    pub weight_bytes_file: Option<u64>,
    /// Bytes of weights held in memory after loading (dequantized tensors at 4 bytes).
    #[serde(default)]
    pub weight_bytes_memory: Option<u64>,
    /// Bits per weight of the weights as computed with: the file's types, or
    /// 32 when every tensor is dequantized (`dtype: f32`).
    #[serde(default)]
    pub bits_per_weight: Option<f64>,
    /// Parent (compression variant) or teacher (distilled student).
    #[serde(default)]
    pub lineage: Option<Lineage>,
    /// A served model's endpoint (never its API key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointRecord>,
}

/// Where a served model was reached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EndpointRecord {
    /// `llama-server`, `vllm`, `openai-completions`, …
    pub api: String,
    pub base_url: String,
    /// The model id sent in requests.
    pub model: Option<String>,
    /// The server's version or build, where it reports one.
    pub server_version: Option<String>,
    /// Documents in flight at once.
    pub concurrency: usize,
    /// How prompts were sent: `text`, or token ids from the named
    /// tokenizer with its BOS rule (`… (BOS added)` / `(no BOS)`).
    #[serde(default)]
    pub prompts: Option<String>,
}

/// Where a model comes from: a variant's parent and steps, or a student's teacher.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Lineage {
    /// `variant` or `distilled_from`.
    pub relation: String,
    /// The parent or teacher model's name.
    pub parent: String,
    /// The steps as written (canonical JSON), for a variant.
    #[serde(default)]
    pub steps: Value,
    /// The variant's content hash (its cache file name).
    #[serde(default)]
    pub cache_key: Option<String>,
    /// How the starting weights were obtained (full precision or requantized).
    #[serde(default)]
    pub source: Option<String>,
    /// What its `distill` steps cost (the bill of producing the variant).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub training: Vec<TrainingCost>,
}

/// One `distill` step of a variant, as its report states it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TrainingCost {
    pub teacher: String,
    pub steps: usize,
    pub tokens_seen: usize,
    pub wall_time_s: f64,
    pub energy_j: Option<f64>,
    /// How the energy was obtained (RAPL or the CPU-time estimate).
    pub energy_note: Option<String>,
    /// Mean per-token KL(teacher ‖ student) on the held-out texts.
    pub held_out_kl_before: Option<f64>,
    pub held_out_kl_after: Option<f64>,
    /// The loss of every step, before its update (the loss curve).
    #[serde(default)]
    pub losses: Vec<f64>,
}

pub use crate::measure::environment::Environment;

/// Everything `results.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RunRecord {
    pub run_id: String,
    pub status: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub wall_time_s: f64,
    /// The invocation, enough to `--resume` it.
    pub config: Value,
    pub environment: Environment,
    pub models: BTreeMap<String, ModelRecord>,
    pub cells: Vec<CellResult>,
    /// Task → `metadata.version`.
    pub versions: BTreeMap<String, Option<String>>,
    /// Task → the data files it read, with their hashes (absent in runs
    /// written before slmbench recorded them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub datasets: BTreeMap<String, Vec<DataFile>>,
}

/// One data file a task read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataFile {
    pub split: String,
    /// The path as given (under `--data-dir`).
    pub file: String,
    pub sha256: Option<String>,
    pub docs: usize,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl RunRecord {
    /// lm-eval-style `results`: model → task → `"acc,none"`, `"acc_stderr,none"`, …
    pub fn lm_eval_results(&self) -> Value {
        let mut by_model: Map<String, Value> = Map::new();
        for c in &self.cells {
            let mut m = Map::new();
            m.insert("alias".into(), c.task.clone().into());
            for mv in &c.metrics {
                // A generation metric is named `metric,filter` already.
                let (metric, filter) = mv.name.split_once(',').unwrap_or((&mv.name, "none"));
                m.insert(format!("{metric},{filter}"), mv.value.into());
                m.insert(
                    format!("{metric}_stderr,{filter}"),
                    mv.stderr.map_or(Value::from("N/A"), Value::from),
                );
            }
            m.insert("n".into(), c.n.into());
            m.insert("truncated".into(), c.truncated.into());
            m.insert(
                "status".into(),
                serde_json::to_value(c.status).unwrap_or(Value::Null),
            );
            let entry = by_model
                .entry(c.model.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(tasks) = entry {
                tasks.insert(c.task.clone(), Value::Object(m));
            }
        }
        Value::Object(by_model)
    }

    fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(o) = &mut v {
            o.insert("results".into(), self.lm_eval_results());
            let nshot: Map<String, Value> = self
                .cells
                .iter()
                .map(|c| (c.task.clone(), c.num_fewshot.into()))
                .collect();
            o.insert("n-shot".into(), Value::Object(nshot));
        }
        v
    }

    /// Writes `results.json` and `results.csv` atomically (temp file + rename).
    pub fn write(&self, dir: &Path) -> Result<(), RecordError> {
        let json =
            serde_json::to_string_pretty(&self.to_json()).map_err(|e| RecordError::Format {
                path: dir.join("results.json"),
                message: e.to_string(),
            })?;
        write_atomic(&dir.join("results.json"), json.as_bytes())?;
        write_atomic(&dir.join("results.csv"), self.csv().as_bytes())
    }

    pub fn read(dir: &Path) -> Result<Self, RecordError> {
        let path = dir.join("results.json");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        serde_json::from_str(&text).map_err(|e| RecordError::Format {
            path,
            message: format!("not a slmbench results file: {e}"),
        })
    }

    /// One row per model × task × metric.
    pub fn csv(&self) -> String {
        let mut s = String::from(
            "model,task,metric,value,stderr,n,num_fewshot,truncated,status,wall_time_s,tokens_forwarded,tokens_per_s,latency_p50_ms,latency_p90_ms,latency_p99_ms,peak_rss_bytes,energy_j,energy_method\n",
        );
        for c in &self.cells {
            let rows: Vec<(String, String, String)> = if c.metrics.is_empty() {
                vec![(String::new(), String::new(), String::new())]
            } else {
                c.metrics
                    .iter()
                    .map(|m| {
                        (
                            m.name.clone(),
                            format!("{}", m.value),
                            m.stderr.map(|e| format!("{e}")).unwrap_or_default(),
                        )
                    })
                    .collect()
            };
            for (name, value, stderr) in rows {
                let opt = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_default();
                let lat = c.latency.as_ref();
                s.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{},{:.3},{},{},{},{},{},{},{},{}\n",
                    csv_field(&c.model),
                    csv_field(&c.task),
                    name,
                    value,
                    stderr,
                    c.n,
                    c.num_fewshot,
                    c.truncated,
                    serde_json::to_value(c.status)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    c.wall_time_s,
                    c.tokens_forwarded,
                    opt(c.tokens_per_s),
                    opt(lat.map(|l| l.p50_ms)),
                    opt(lat.map(|l| l.p90_ms)),
                    opt(lat.map(|l| l.p99_ms)),
                    c.peak_rss.map(|p| p.bytes.to_string()).unwrap_or_default(),
                    opt(c.energy.as_ref().map(|e| e.energy_j)),
                    c.energy
                        .as_ref()
                        .and_then(|e| serde_json::to_value(e.method).ok())
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                ));
            }
        }
        s
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RecordError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// `samples/<model>/<task>.jsonl` inside a run directory.
pub fn samples_path(run_dir: &Path, model: &str, task: &str) -> PathBuf {
    run_dir
        .join("samples")
        .join(model)
        .join(format!("{task}.jsonl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(doc_id: usize) -> SampleRecord {
        SampleRecord {
            doc_id,
            gold: 1,
            context: "c".into(),
            continuations: vec![" a".into(), " b".into()],
            loglikelihoods: vec![-1.0, -0.5],
            is_greedy: vec![false, true],
            pred: 1,
            metrics: Map::from_iter([("acc".to_string(), Value::from(1.0))]),
            pred_norm: 1,
            continuation_tokens: vec![1, 1],
            truncated: false,
            latency_ms: Some(1.5),
        }
    }

    #[test]
    fn samples_round_trip_and_torn_line_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s/m/t.jsonl");
        let mut w = SampleWriter::open(&p).expect("open");
        w.append(&rec(0)).expect("append");
        w.append(&rec(1)).expect("append");
        drop(w);
        let mut f = OpenOptions::new().append(true).open(&p).expect("open");
        f.write_all(b"{\"doc_id\": 2, \"go").expect("write");
        drop(f);
        let got = read_samples(&p).expect("read");
        assert_eq!(got, vec![rec(0), rec(1)]);
        // The torn tail is gone, so appending continues cleanly.
        let mut w = SampleWriter::open(&p).expect("open");
        w.append(&rec(2)).expect("append");
        assert_eq!(read_samples(&p).expect("read").len(), 3);
    }

    #[test]
    fn a_bad_last_line_ending_in_a_newline_is_cut_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t.jsonl");
        let mut w = SampleWriter::open(&p).expect("open");
        w.append(&rec(0)).expect("append");
        drop(w);
        let good = std::fs::read(&p).expect("read");
        let mut f = OpenOptions::new().append(true).open(&p).expect("open");
        f.write_all(b"garbage\n").expect("write");
        drop(f);
        assert_eq!(read_samples(&p).expect("read"), vec![rec(0)]);
        // Not one byte of the bad line is left to glue onto the next record.
        assert_eq!(std::fs::read(&p).expect("read"), good);
        let mut w = SampleWriter::open(&p).expect("open");
        w.append(&rec(1)).expect("append");
        assert_eq!(read_samples(&p).expect("read"), vec![rec(0), rec(1)]);
    }

    #[test]
    fn latency_percentiles_interpolate_like_numpy() {
        let xs: Vec<f64> = (1..=11).map(f64::from).collect();
        // The first value (warm-up) is left out: 2..=11.
        let l = LatencyStats::from_ms(&xs, 1).expect("stats");
        assert_eq!(l.n, 10);
        assert!((l.p50_ms - 6.5).abs() < 1e-12);
        assert!((l.p90_ms - 10.1).abs() < 1e-12);
        assert!((l.mean_ms - 6.5).abs() < 1e-12);
        assert!((l.sd_ms.expect("sd") - 3.0276503540974917).abs() < 1e-12);
        let one = LatencyStats::from_ms(&[4.0], 1).expect("one");
        assert_eq!((one.n, one.sd_ms, one.warmup_excluded), (1, None, 0));
        assert!(LatencyStats::from_ms(&[], 1).is_none());
    }

    #[test]
    fn sample_line_has_reference_keys() {
        let v = serde_json::to_value(rec(0)).expect("json");
        for k in [
            "doc_id",
            "gold",
            "context",
            "continuations",
            "loglikelihoods",
            "is_greedy",
            "pred",
            "acc",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }
}
