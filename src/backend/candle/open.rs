//! Opening a local model file in the candle engine: weights and tokenizer
//! built side by side, the scorer configured, the model's record filled from
//! the file and the loaded weights.

use std::collections::BTreeMap;
use std::time::Instant;

use super::scorer::CandleScorer;
use super::WeightMode;
use crate::backend::{BackendError, BackendOptions, Loaded};
use crate::model::open::{open_tokenizer, open_weights};
use crate::obtain::Obtained;
use crate::record::ModelRecord;
use crate::spec::models::{Dtype, Format, ModelSpec};

/// The matmul strategy a `dtype` stands for.
pub fn weight_mode(dtype: Dtype) -> WeightMode {
    match dtype {
        Dtype::Quantized => WeightMode::Auto,
        Dtype::QuantizedStrict => WeightMode::Quantized,
        Dtype::F32 => WeightMode::F32,
    }
}

/// Loads `got` (a GGUF file or safetensors folder) for scoring.
pub fn open(
    spec: &ModelSpec,
    got: &Obtained,
    opts: &BackendOptions,
) -> Result<Loaded, BackendError> {
    let path = got.path.clone();
    let rss0 = crate::measure::rss_bytes();
    let t0 = Instant::now();
    let effective = got.effective_spec(spec);
    let mut gguf = open_weights(&effective, &path)?;
    let dtype = opts.dtype.unwrap_or(spec.dtype);
    let mode = weight_mode(dtype);
    let quant_type = crate::model::gguf::file_type_name(&gguf).unwrap_or_else(|| {
        gguf.weight_types()
            .into_iter()
            .filter(|(t, _, _)| !matches!(t.as_str(), "F32" | "F16" | "BF16"))
            .max_by_key(|(_, _, bytes)| *bytes)
            .map_or_else(|| "F32".to_string(), |(t, _, _)| t)
    });
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
        || super::load(&mut gguf, mode),
    );
    let chat = crate::model::chat::ChatTemplate::of_model(&effective, &path, &meta)
        .map_err(|e| BackendError::Engine(Box::new(e)))?;
    drop(meta);
    let tokenizer = tokenizer?;
    let model = model.map_err(|e| BackendError::Engine(Box::new(e)))?;
    let info = model.info().clone();
    let max_len = got.context_length.unwrap_or(info.context_length);
    let weight_bytes_file: u64 = weight_types.values().map(|(_, b)| b).sum();
    let params = info.weights.params;
    let bits_per_weight = (params > 0).then(|| match dtype {
        Dtype::F32 => 32.0,
        _ => weight_bytes_file as f64 * 8.0 / params as f64,
    });
    let record = ModelRecord {
        backend: spec.engine.name().into(),
        file: Some(path.display().to_string()),
        sha256: match (&spec.sha256, got.format) {
            (Some(h), _) => Some(h.clone()),
            (None, Format::Gguf) => crate::model::fetch::sha256_file(&path, false).ok(),
            (None, Format::Safetensors) => None,
        },
        architecture: Some(info.architecture.clone()),
        dtype: dtype.to_string(),
        file_bytes: Some(gguf.file_bytes()),
        n_layer: Some(info.n_layer),
        hidden: Some(info.hidden),
        vocab: Some(info.vocab),
        context_length: max_len,
        load_time_s: t0.elapsed().as_secs_f64(),
        load_rss_delta_bytes: crate::measure::rss_bytes()
            .zip(rss0)
            .map(|(a, b)| a.saturating_sub(b)),
        quant_type: Some(quant_type),
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
        endpoint: None,
    };
    let mut scorer = CandleScorer::new(model, tokenizer, max_len);
    scorer.pack_tokens = opts.pack_tokens;
    Ok(Loaded {
        scorer: Box::new(scorer),
        record,
        chat,
    })
}
