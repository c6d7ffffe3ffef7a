//! One model × task cell: its documents through a [`Scorer`], samples
//! appended as they are computed, metrics aggregated, and the cell's
//! latency, memory and energy measured around it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use serde_json::{Map, Value};

use super::EvalError;
use crate::backend::{RequestStat, Scorer};
use crate::measure::{CellProbe, MeasureOptions};
use crate::metrics::{aggregate, score_sample, AggregateOptions, Metric, SampleScore};
use crate::plan::PreparedTask;
use crate::record::{
    read_samples, samples_path, CellEnergy, CellResult, CellStatus, LatencyStats, MetricValue,
    SampleRecord, SampleWriter, ServedStats,
};
use crate::spec::endpoint::Price;
use crate::task::Instance;

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
pub(super) fn progress_bar(len: u64, label: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let target = if std::io::stderr().is_terminal() {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    };
    let pb = indicatif::ProgressBar::with_draw_target(Some(len), target);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>32} [{bar:30}] {pos}/{len} docs {per_sec} {msg} ETA {eta}",
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
    price: Option<&Price>,
) -> Result<CellResult, EvalError> {
    let t0 = Instant::now();
    let probe = CellProbe::start(&measure);
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
    let mut request_stats: Vec<RequestStat> = Vec::new();
    let n_todo = todo.len();
    let scoring = Instant::now();
    let harness = HarnessClock::start();
    for chunk in todo.chunks(scorer.docs_per_call().clamp(1, DOCS_PER_CALL)) {
        if let Some(sig) = super::interrupt::requested() {
            return Err(EvalError::Interrupted(sig));
        }
        let t = Instant::now();
        let requests: Vec<(&str, &[String])> = chunk
            .iter()
            .map(|i| (i.context.as_str(), i.continuations.as_slice()))
            .collect();
        // Each document is written as soon as it is scored; a failure
        // writing it (or a signal) stops the call.
        let mut failed: Option<EvalError> = None;
        let mut sink = |k: usize, doc: crate::backend::DocScore| {
            let inst = chunk[k];
            let chunk_ms = t.elapsed().as_secs_f64() * 1e3 / (k + 1) as f64;
            let latency_ms = doc.shared_ms.unwrap_or(chunk_ms);
            latencies.push(latency_ms);
            let lls: Vec<f64> = doc.choices.iter().map(|c| c.loglikelihood).collect();
            let chars: Vec<usize> = inst.choices.iter().map(|c| c.chars().count()).collect();
            let s = match score_sample(&lls, &chars, inst.gold) {
                Ok(s) => s,
                Err(e) => {
                    failed = Some(EvalError::Metric {
                        context: format!("doc {}", inst.doc_id),
                        message: e.to_string(),
                    });
                    return Err(crate::backend::ScoreError::Interrupted);
                }
            };
            if let Err(e) = writer.append(&SampleRecord {
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
            }) {
                failed = Some(e.into());
                return Err(crate::backend::ScoreError::Interrupted);
            }
            truncated += usize::from(doc.truncated);
            forwarded += doc.tokens_forwarded;
            request_stats.extend_from_slice(&doc.requests);
            peak_cached = peak_cached.max(doc.peak_cached_tokens);
            scores.insert(inst.doc_id, s);
            if !doc.requests.is_empty() {
                request_rate(&pb, request_stats.len(), scoring);
            }
            pb.inc(1);
            match super::interrupt::requested() {
                Some(_) => Err(crate::backend::ScoreError::Interrupted),
                None => Ok(()),
            }
        };
        let result = scorer.score_docs_into(&requests, &mut sink);
        if let Some(e) = failed {
            return Err(e);
        }
        match result {
            Ok(()) => {}
            Err(crate::backend::ScoreError::Interrupted) => {
                return Err(EvalError::Interrupted(
                    super::interrupt::requested().unwrap_or(2),
                ))
            }
            Err(source) => {
                let first = chunk.first().map_or(0, |i| i.doc_id);
                let last = chunk.last().map_or(0, |i| i.doc_id);
                return Err(EvalError::Score {
                    docs: format!("docs {first}..={last}"),
                    source,
                });
            }
        }
    }
    pb.finish_and_clear();
    let scoring_s = scoring.elapsed().as_secs_f64();
    let harness_cpu_s = harness.cpu_s();
    let (peak_rss, energy) = finish_probe(probe, scorer, n_todo, forwarded, &measure);
    let samples: Vec<SampleScore> = scores.values().copied().collect();
    let opts = AggregateOptions { bootstrap_iters };
    let mut metrics = Vec::new();
    for m in &task.spec.metrics {
        let a = aggregate(*m, &samples, &opts).map_err(|e| EvalError::Metric {
            context: task.spec.name.clone(),
            message: e.to_string(),
        })?;
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
        peak_rss,
        kv_cache_peak_bytes: scorer
            .kv_bytes_per_token()
            .filter(|_| peak_cached > 0)
            .map(|b| (b * peak_cached) as u64),
        energy,
        resumed_samples: resumed,
        error: None,
        served: served_stats(&request_stats, n_todo, scoring_s, harness_cpu_s, price),
        generation: None,
    })
}

/// Ends a cell's measurement: its peak RSS and energy, or `None` for both
/// when the model did not compute in this process.
pub(super) fn finish_probe(
    probe: CellProbe,
    scorer: &dyn Scorer,
    n_todo: usize,
    forwarded: usize,
    measure: &MeasureOptions,
) -> (Option<crate::measure::PeakRss>, Option<CellEnergy>) {
    let mut measured = probe.finish(n_todo > 0);
    if !scorer.computes_locally() {
        // This process only waited on the model: its memory and energy
        // are not the model's.
        measured.peak_rss = None;
        measured.energy = None;
        measured.gpu_energy = None;
    }
    let gpu = measured.gpu_energy;
    let energy = measured.energy.map(|r| CellEnergy {
        method: r.method,
        note: r.note,
        energy_j: r.joules,
        energy_per_doc_j: Some(r.joules / n_todo as f64),
        energy_per_1k_tokens_j: (forwarded > 0).then(|| r.joules * 1000.0 / forwarded as f64),
        // Every token of a log-likelihood cell is a prompt token; a
        // generation cell splits its energy afterwards (`split_generation_energy`).
        energy_per_1k_prompt_tokens_j: (forwarded > 0)
            .then(|| r.joules * 1000.0 / forwarded as f64),
        energy_per_1k_generated_tokens_j: None,
        split_note: None,
        co2e_g: crate::measure::energy::grams_co2e(r.joules, measure.grid_g_per_kwh),
        grid_g_per_kwh: measure.grid_g_per_kwh,
        gpu: gpu.map(|g| crate::record::GpuEnergy {
            energy_j: g.joules,
            note: g.note,
        }),
    });
    (measured.peak_rss, energy)
}

/// The requests of a served model's cell summed up; `None` for a local one.
pub(super) fn served_stats(
    requests: &[RequestStat],
    docs: usize,
    scoring_s: f64,
    harness_cpu_s: Option<f64>,
    price: Option<&Price>,
) -> Option<ServedStats> {
    if requests.is_empty() {
        return None;
    }
    let prompt_tokens: u64 = requests.iter().map(|r| r.prompt_tokens as u64).sum();
    let completion_tokens: u64 = requests.iter().map(|r| r.completion_tokens as u64).sum();
    let cost = price.map(|p| {
        (prompt_tokens as f64 * p.input_per_mtok + completion_tokens as f64 * p.output_per_mtok)
            / 1e6
    });
    let ms: Vec<f64> = requests.iter().map(|r| r.ms).collect();
    let ttfb: Vec<f64> = requests.iter().map(|r| r.ttfb_ms).collect();
    Some(ServedStats {
        requests: requests.len(),
        prompt_tokens,
        completion_tokens,
        request_latency: LatencyStats::from_ms(&ms, 0),
        ttfb_p50_ms: LatencyStats::from_ms(&ttfb, 0).map(|l| l.p50_ms),
        requests_per_s: (scoring_s > 0.0).then(|| requests.len() as f64 / scoring_s),
        cost,
        cost_per_1k_docs: cost.filter(|_| docs > 0).map(|c| c * 1000.0 / docs as f64),
        currency: price.map(|p| p.currency.clone()),
        harness_cpu_s,
        harness_cpu_share: harness_cpu_s
            .filter(|_| scoring_s > 0.0)
            .map(|c| c / scoring_s),
    })
}

/// Process CPU time at the start of a cell's scoring, to measure what the
/// harness itself costs while a served model answers.
pub(super) struct HarnessClock(Option<f64>);

impl HarnessClock {
    pub(super) fn start() -> Self {
        Self(crate::measure::energy::process_cpu_time_s())
    }

    /// CPU seconds since [`HarnessClock::start`], where the OS reports them.
    pub(super) fn cpu_s(&self) -> Option<f64> {
        Some(crate::measure::energy::process_cpu_time_s()? - self.0?)
    }
}

/// The progress bar's message for a served model: requests answered per
/// second so far (a local model's bar shows documents per second only).
pub(super) fn request_rate(pb: &indicatif::ProgressBar, requests: usize, since: Instant) {
    let s = since.elapsed().as_secs_f64();
    if requests > 0 && s > 0.0 {
        pb.set_message(format!("{:.1} req/s", requests as f64 / s));
    }
}

/// Documents at the start of each cell left out of latency statistics.
pub const WARMUP_DOCS: usize = 1;
