//! One model × `generate_until` task cell: each document's prompt through
//! [`Scorer::generate`], the answer extracted by every filter pipeline and
//! scored by `exact_match` against the target, a sample line appended per
//! document, and metrics keyed `exact_match,<filter>` with lm-eval's stderr.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use serde_json::{Map, Value};

use super::cell::{finish_probe, progress_bar, served_stats, WARMUP_DOCS};
use super::EvalError;
use crate::backend::{GenRequest, RequestStat, Scorer, StopReason};
use crate::measure::{CellProbe, MeasureOptions};
use crate::metrics::{mean, mean_stderr};
use crate::plan::PreparedTask;
use crate::record::{
    read_records, samples_path, CellResult, CellStatus, GenSampleRecord, GenerationStats,
    LatencyStats, MetricValue, SampleWriter, StopCounts,
};
use crate::spec::endpoint::Price;
use crate::task::filter::{CompiledFilters, CompiledMatch};
use crate::task::GenerationSpec;

fn stop_name(s: StopReason) -> &'static str {
    match s {
        StopReason::Eos => "eos",
        StopReason::Until => "until",
        StopReason::MaxTokens => "max_tokens",
        StopReason::Context => "context",
    }
}

/// Percentile by linear interpolation (numpy's default) of sorted `xs`.
fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let h = p * (xs.len() - 1) as f64;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    Some(xs[lo] + (xs[hi] - xs[lo]) * (h - lo as f64))
}

/// Generates one model × task cell, appending samples to `run_dir`.
pub fn run_gen_cell(
    scorer: &mut dyn Scorer,
    model: &str,
    task: &PreparedTask,
    gen: &GenerationSpec,
    run_dir: &Path,
    measure: MeasureOptions,
    price: Option<&Price>,
) -> Result<CellResult, EvalError> {
    let t0 = Instant::now();
    let metric_err = |message: String| EvalError::Metric {
        context: task.spec.name.clone(),
        message,
    };
    let filters = CompiledFilters::new(&gen.filters).map_err(|e| metric_err(e.to_string()))?;
    let matcher = CompiledMatch::new(&gen.exact_match).map_err(|e| metric_err(e.to_string()))?;
    let keys: Vec<String> = gen
        .filters
        .iter()
        .map(|f| format!("exact_match,{}", f.name))
        .collect();
    let probe = CellProbe::start(&measure);
    let path = samples_path(run_dir, model, &task.spec.name);
    let wanted: BTreeSet<usize> = task.instances.iter().map(|i| i.doc_id).collect();
    // Per document: its exact_match per filter, and how it stopped.
    let mut done: BTreeMap<usize, (Vec<f64>, String)> = BTreeMap::new();
    let mut truncated = 0;
    for r in read_records::<GenSampleRecord>(&path)? {
        if wanted.contains(&r.doc_id) {
            let ems = keys
                .iter()
                .map(|k| r.metrics.get(k).and_then(Value::as_f64).unwrap_or(0.0))
                .collect();
            truncated += usize::from(r.truncated);
            done.insert(r.doc_id, (ems, r.stop));
        }
    }
    let resumed = done.len();
    let mut writer = SampleWriter::open(&path)?;
    let todo: Vec<_> = task
        .instances
        .iter()
        .filter(|i| !done.contains_key(&i.doc_id))
        .collect();
    let takes_messages = scorer.takes_messages();
    let pb = progress_bar(todo.len() as u64, &format!("{model}/{}", task.spec.name));
    let (mut forwarded, mut generated) = (0usize, 0u64);
    let (mut latencies, mut ttfts, mut speeds) = (Vec::new(), Vec::new(), Vec::new());
    let mut request_stats: Vec<RequestStat> = Vec::new();
    let scoring = Instant::now();
    for chunk in todo.chunks(scorer.gen_per_call().max(1)) {
        let t = Instant::now();
        let reqs: Vec<GenRequest<'_>> = chunk
            .iter()
            .map(|inst| GenRequest {
                prompt: &inst.context,
                until: &gen.until,
                max_gen_toks: gen.max_gen_toks,
                messages: inst.messages.as_deref().filter(|_| takes_messages),
            })
            .collect();
        let gens = scorer.generate(&reqs).map_err(|source| {
            let first = chunk.first().map_or(0, |i| i.doc_id);
            let last = chunk.last().map_or(0, |i| i.doc_id);
            EvalError::Score {
                docs: format!("docs {first}..={last}"),
                source,
            }
        })?;
        let chunk_ms = t.elapsed().as_secs_f64() * 1e3;
        for (inst, g) in chunk.iter().zip(gens) {
            // A served request's own time; else the call's, shared.
            let latency_ms = if g.requests.is_empty() {
                chunk_ms / chunk.len() as f64
            } else {
                g.requests.iter().map(|r| r.ms).sum()
            };
            let target = inst.target.clone().unwrap_or_default();
            let mut filtered = Map::new();
            let mut metrics = Map::new();
            let mut ems = Vec::with_capacity(keys.len());
            for ((name, answer), key) in filters.apply(&g.text).into_iter().zip(&keys) {
                let em = matcher.score(&answer, &target);
                metrics.insert(key.clone(), Value::from(em));
                filtered.insert(name, Value::from(answer));
                ems.push(em);
            }
            let stop = stop_name(g.stop).to_string();
            writer.append(&GenSampleRecord {
                doc_id: inst.doc_id,
                prompt: inst.context.clone(),
                generation: g.text.clone(),
                target,
                filtered,
                metrics,
                stop: stop.clone(),
                prompt_tokens: g.prompt_tokens,
                generated_tokens: g.generated_tokens,
                truncated: g.truncated,
                ttft_ms: g.ttft_ms,
                decode_tokens_per_s: g.decode_tokens_per_s(),
                latency_ms: Some(latency_ms),
            })?;
            latencies.push(latency_ms);
            ttfts.extend(g.ttft_ms);
            speeds.extend(g.decode_tokens_per_s());
            truncated += usize::from(g.truncated);
            forwarded += g.prompt_tokens + g.generated_tokens;
            generated += g.generated_tokens as u64;
            request_stats.extend_from_slice(&g.requests);
            done.insert(inst.doc_id, (ems, stop));
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let n_todo = todo.len();
    let scoring_s = scoring.elapsed().as_secs_f64();
    let (peak_rss, energy) = finish_probe(probe, scorer, n_todo, forwarded, &measure);
    let mut metrics = Vec::with_capacity(keys.len());
    for (k, key) in keys.iter().enumerate() {
        let xs: Vec<f64> = done.values().map(|(ems, _)| ems[k]).collect();
        metrics.push(MetricValue {
            name: key.clone(),
            value: if xs.is_empty() { f64::NAN } else { mean(&xs) },
            stderr: mean_stderr(&xs),
        });
    }
    let mut stops = StopCounts::default();
    for (_, s) in done.values() {
        stops.add(s);
    }
    speeds.sort_by(f64::total_cmp);
    Ok(CellResult {
        model: model.to_string(),
        task: task.spec.name.clone(),
        status: CellStatus::Ok,
        metrics,
        n: done.len(),
        num_fewshot: task.num_fewshot,
        truncated,
        wall_time_s: t0.elapsed().as_secs_f64(),
        tokens_forwarded: forwarded,
        tokens_per_s: (forwarded > 0 && scoring_s > 0.0).then(|| forwarded as f64 / scoring_s),
        latency: LatencyStats::from_ms(&latencies, WARMUP_DOCS),
        peak_rss,
        kv_cache_peak_bytes: None,
        energy,
        resumed_samples: resumed,
        error: None,
        served: served_stats(&request_stats, n_todo, scoring_s, price),
        generation: Some(GenerationStats {
            ttft: LatencyStats::from_ms(&ttfts, WARMUP_DOCS),
            decode_tokens_per_s_p10: percentile(&speeds, 0.1),
            decode_tokens_per_s_p50: percentile(&speeds, 0.5),
            decode_tokens_per_s_p90: percentile(&speeds, 0.9),
            generated_tokens: generated,
            stops,
        }),
    })
}
