//! One model × task cell by generation: each document's prompt through
//! [`Scorer::generate`], the answer judged ([`Judge`]), a sample line
//! appended per document, and a mean with lm-eval's stderr per metric.
//! A `generate_until` task is judged by its filters and `exact_match`
//! (metrics `exact_match,<filter>`); a multiple-choice task on an engine
//! with no log-probabilities (a chat endpoint) by the letter its reply
//! names (`super::lettered`).

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
    percentile, read_records, samples_path, CellResult, CellStatus, GenSampleRecord,
    GenerationStats, LatencyStats, MetricValue, SampleWriter, StopCounts,
};
use crate::spec::endpoint::Price;
use crate::task::filter::{CompiledFilters, CompiledMatch};
use crate::task::{GenerationSpec, Instance};

fn stop_name(s: StopReason) -> &'static str {
    match s {
        StopReason::Eos => "eos",
        StopReason::Until => "until",
        StopReason::MaxTokens => "max_tokens",
        StopReason::Context => "context",
    }
}

/// The answer of a judged generation: the target as text, each filter's
/// answer, and one value per metric key.
pub type Judged = (String, Vec<(String, String)>, Vec<f64>);

/// Judges one document's generation.
pub type JudgeFn<'a> = Box<dyn Fn(&Instance, &str) -> Judged + 'a>;

/// How a cell's documents are asked and their answers judged.
pub struct Judge<'a> {
    /// Metric names, one value per document each.
    pub keys: Vec<String>,
    pub until: Vec<String>,
    pub max_gen_toks: usize,
    /// The prompt sent for a document.
    pub prompt: Box<dyn Fn(&Instance) -> String + 'a>,
    /// Whether an engine that takes messages gets the document's
    /// conversation (true when the prompt is the document's own; a judge
    /// that rewrites the prompt sends it as one user turn).
    pub conversation: bool,
    /// A document's generation judged.
    pub judge: JudgeFn<'a>,
}

/// The answer no filter could read (lm-eval's fallback, and a reply that
/// names no letter).
pub const INVALID: &str = "[invalid]";

impl<'a> Judge<'a> {
    /// A `generate_until` task: its filters, then `exact_match` against
    /// `doc_to_target`.
    pub fn exact_match(gen: &'a GenerationSpec) -> Result<Self, String> {
        let filters = CompiledFilters::new(&gen.filters).map_err(|e| e.to_string())?;
        let matcher = CompiledMatch::new(&gen.exact_match).map_err(|e| e.to_string())?;
        Ok(Self {
            keys: gen
                .filters
                .iter()
                .map(|f| format!("exact_match,{}", f.name))
                .collect(),
            until: gen.until.clone(),
            max_gen_toks: gen.max_gen_toks,
            prompt: Box::new(|inst| inst.context.clone()),
            conversation: true,
            judge: Box::new(move |inst, text| {
                let target = inst.target.clone().unwrap_or_default();
                let answers = filters.apply(text);
                let ems = answers
                    .iter()
                    .map(|(_, a)| matcher.score(a, &target))
                    .collect();
                (target, answers, ems)
            }),
        })
    }
}

/// Whether the first filter's answer is the fallback.
fn first_invalid(filtered: &Map<String, Value>) -> bool {
    filtered
        .values()
        .next()
        .and_then(Value::as_str)
        .is_some_and(|a| a == INVALID)
}

/// Generates one model × task cell, appending samples to `run_dir`.
pub fn run_gen_cell(
    scorer: &mut dyn Scorer,
    model: &str,
    task: &PreparedTask,
    judge: &Judge<'_>,
    run_dir: &Path,
    measure: MeasureOptions,
    price: Option<&Price>,
) -> Result<CellResult, EvalError> {
    let t0 = Instant::now();
    let keys = &judge.keys;
    let probe = CellProbe::start(&measure);
    let path = samples_path(run_dir, model, &task.spec.name);
    let wanted: BTreeSet<usize> = task.instances.iter().map(|i| i.doc_id).collect();
    // Per document: its value per metric, how it stopped, and whether its
    // first filter found no answer.
    let mut done: BTreeMap<usize, (Vec<f64>, String, bool)> = BTreeMap::new();
    let mut truncated = 0;
    for r in read_records::<GenSampleRecord>(&path)? {
        if wanted.contains(&r.doc_id) {
            let ems = keys
                .iter()
                .map(|k| r.metrics.get(k).and_then(Value::as_f64).unwrap_or(0.0))
                .collect();
            truncated += usize::from(r.truncated);
            let invalid = first_invalid(&r.filtered);
            done.insert(r.doc_id, (ems, r.stop, invalid));
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
    // Prefill time (time to first token), all of the documents' time, and
    // prompt tokens: what splits the cell's energy.
    let (mut prefill_ms, mut total_ms, mut prompt_tokens) = (0.0f64, 0.0f64, 0usize);
    let (mut latencies, mut ttfts, mut speeds) = (Vec::new(), Vec::new(), Vec::new());
    let mut request_stats: Vec<RequestStat> = Vec::new();
    let scoring = Instant::now();
    let harness = super::cell::HarnessClock::start();
    for chunk in todo.chunks(scorer.gen_per_call().max(1)) {
        if let Some(sig) = super::interrupt::requested() {
            return Err(EvalError::Interrupted(sig));
        }
        let t = Instant::now();
        let prompts: Vec<String> = chunk.iter().map(|inst| (judge.prompt)(inst)).collect();
        let reqs: Vec<GenRequest<'_>> = chunk
            .iter()
            .zip(&prompts)
            .map(|(inst, prompt)| GenRequest {
                prompt,
                until: &judge.until,
                max_gen_toks: judge.max_gen_toks,
                messages: inst
                    .messages
                    .as_deref()
                    .filter(|_| takes_messages && judge.conversation),
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
        for ((inst, g), prompt) in chunk.iter().zip(gens).zip(prompts) {
            // A served request's own time; else the call's, shared.
            let latency_ms = if g.requests.is_empty() {
                chunk_ms / chunk.len() as f64
            } else {
                g.requests.iter().map(|r| r.ms).sum()
            };
            let (target, answers, ems) = (judge.judge)(inst, &g.text);
            let mut filtered = Map::new();
            let mut metrics = Map::new();
            for ((name, answer), (key, em)) in answers.into_iter().zip(keys.iter().zip(&ems)) {
                metrics.insert(key.clone(), Value::from(*em));
                filtered.insert(name, Value::from(answer));
            }
            let invalid = first_invalid(&filtered);
            let stop = stop_name(g.stop).to_string();
            writer.append(&GenSampleRecord {
                doc_id: inst.doc_id,
                prompt,
                generation: g.text.clone(),
                target,
                filtered,
                metrics,
                stop: stop.clone(),
                prompt_tokens: g.prompt_tokens,
                cached_tokens: g.cached_tokens,
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
            forwarded += g.prompt_tokens.saturating_sub(g.cached_tokens) + g.generated_tokens;
            generated += g.generated_tokens as u64;
            prompt_tokens += g.prompt_tokens;
            prefill_ms += g.ttft_ms.unwrap_or(0.0);
            total_ms += latency_ms;
            request_stats.extend_from_slice(&g.requests);
            if !g.requests.is_empty() {
                super::cell::request_rate(&pb, request_stats.len(), scoring);
            }
            done.insert(inst.doc_id, (ems, stop, invalid));
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let n_todo = todo.len();
    let scoring_s = scoring.elapsed().as_secs_f64();
    let harness_cpu_s = harness.cpu_s();
    let (peak_rss, mut energy) = finish_probe(probe, scorer, n_todo, forwarded, &measure);
    if let Some(e) = energy.as_mut() {
        split_generation_energy(e, prefill_ms, total_ms, prompt_tokens, generated);
    }
    let mut metrics = Vec::with_capacity(keys.len());
    for (k, key) in keys.iter().enumerate() {
        let xs: Vec<f64> = done.values().map(|(ems, _, _)| ems[k]).collect();
        metrics.push(MetricValue {
            name: key.clone(),
            value: if xs.is_empty() { f64::NAN } else { mean(&xs) },
            stderr: mean_stderr(&xs),
        });
    }
    let mut stops = StopCounts::default();
    for (_, s, _) in done.values() {
        stops.add(s);
    }
    let invalid = done.values().filter(|d| d.2).count();
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
        served: served_stats(&request_stats, n_todo, scoring_s, harness_cpu_s, price),
        generation: Some(GenerationStats {
            ttft: LatencyStats::from_ms(&ttfts, WARMUP_DOCS),
            decode_tokens_per_s_p10: percentile(&speeds, 0.1),
            decode_tokens_per_s_p50: percentile(&speeds, 0.5),
            decode_tokens_per_s_p90: percentile(&speeds, 0.9),
            generated_tokens: generated,
            stops,
            invalid,
        }),
    })
}

/// Splits a generation cell's energy between its prompt and generated
/// tokens by time: the prefill's share is the documents' time to first
/// token over their whole time (the meter gives one total per cell, so the
/// power is taken as equal in both phases).
pub(super) fn split_generation_energy(
    e: &mut crate::record::CellEnergy,
    prefill_ms: f64,
    total_ms: f64,
    prompt_tokens: usize,
    generated: u64,
) {
    if total_ms.is_nan() || total_ms <= 0.0 {
        e.energy_per_1k_prompt_tokens_j = None;
        return;
    }
    let share = (prefill_ms / total_ms).clamp(0.0, 1.0);
    e.energy_per_1k_prompt_tokens_j =
        (prompt_tokens > 0).then(|| e.energy_j * share * 1000.0 / prompt_tokens as f64);
    e.energy_per_1k_generated_tokens_j =
        (generated > 0).then(|| e.energy_j * (1.0 - share) * 1000.0 / generated as f64);
    e.split_note = Some(format!(
        "prefill {:.1}% of the documents' time (time to first token), decode the rest; the cell's energy split in that ratio",
        share * 100.0
    ));
}

#[cfg(test)]
mod energy_tests {
    use super::*;

    #[test]
    fn generation_energy_splits_by_prefill_time() {
        let mut e = crate::record::CellEnergy {
            method: crate::measure::energy::EnergyMethod::Estimate,
            note: String::new(),
            energy_j: 100.0,
            energy_per_doc_j: Some(10.0),
            energy_per_1k_tokens_j: None,
            energy_per_1k_prompt_tokens_j: Some(1.0),
            energy_per_1k_generated_tokens_j: None,
            split_note: None,
            co2e_g: 0.0,
            grid_g_per_kwh: 475.0,
            gpu: None,
        };
        // A quarter of the time in prefill: 25 J over 5,000 prompt tokens,
        // 75 J over 500 generated tokens.
        split_generation_energy(&mut e, 250.0, 1000.0, 5000, 500);
        assert_eq!(e.energy_per_1k_prompt_tokens_j, Some(5.0));
        assert_eq!(e.energy_per_1k_generated_tokens_j, Some(150.0));
        assert!(e.split_note.as_deref().is_some_and(|n| n.contains("25.0%")));
    }
}
