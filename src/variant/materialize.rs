//! Resolving any registry model to a loadable file, materializing variants
//! on demand: the parent is obtained (fetched, or itself materialized), its
//! tensors dequantized to f32, the steps applied in order, and the result
//! written to `<SLMBENCH_HOME>/variants/<name>-<key16>.gguf` with a sidecar
//! report `<…>.gguf.json`.
//!
//! The cache key is `sha256("slmbench-variant" · ALGORITHM_VERSION · parent
//! key · canonical JSON of the steps)`, where a plain model's key is its
//! file's sha256 and a variant's is its own key: any change to the parent
//! file, the steps or the algorithms gives a new file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::quantized::gguf_file::Value;
use sha2::{Digest, Sha256};

use super::distill::step::{self, DistillData, DistillInputs, StepError};
use super::tensors::Working;
use super::{low_rank, prune, quantize, VariantError, VariantReport};
use crate::model::gguf::GgufFile;
use crate::model::tokenizer::TextTokenizer;
use crate::spec::models::{Format, Registry};
use crate::spec::steps::{Prune, Step};

/// Bump when a transformation changes its output for the same input, so
/// cached variants are rebuilt.
pub const ALGORITHM_VERSION: u32 = 1;

/// The parent a variant is built from, as obtained.
pub struct ParentFile<'a> {
    pub path: &'a Path,
    pub format: Format,
    /// The parent's own variant report, when it is a variant.
    pub report: Option<&'a VariantReport>,
    /// What each `distill` step reads (by step index; `None` for others).
    pub distill: &'a [Option<DistillData>],
}

/// Where step `i`'s training checkpoints go while `path` is being built.
pub fn checkpoint_dir(path: &Path, i: usize) -> PathBuf {
    path.with_extension(format!("distill{i}"))
}

fn open_gguf(path: &Path, format: Format) -> Result<GgufFile, VariantError> {
    match format {
        Format::Gguf => Ok(GgufFile::open(path)?),
        Format::Safetensors => {
            crate::model::safetensors::open_dir(path).map_err(|e| VariantError::Io {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        }
    }
}

/// `<file>.gguf.json`.
pub fn sidecar_path(gguf: &Path) -> PathBuf {
    let mut s = gguf.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

pub fn read_report(path: &Path) -> Result<VariantReport, VariantError> {
    let text = std::fs::read_to_string(path).map_err(|e| VariantError::Io {
        path: path.display().to_string(),
        message: format!("cannot read the variant report: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| VariantError::Io {
        path: path.display().to_string(),
        message: format!("not a variant report ({e}); delete it to rebuild the variant"),
    })
}

/// sha256 over the algorithm version, the parent's key and the steps.
pub fn cache_key(parent_key: &str, steps: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(b"slmbench-variant\0");
    h.update(ALGORITHM_VERSION.to_le_bytes());
    h.update(parent_key.as_bytes());
    h.update(b"\0");
    h.update(steps.to_string().as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A plain model's content: its file's sha256, or for a folder the sha256
/// of its `config.json` and weight files' digests.
pub fn content_key(path: &Path) -> Result<String, VariantError> {
    if path.is_file() {
        return Ok(crate::model::fetch::sha256_file(path, false)?);
    }
    let io = |e: std::io::Error| VariantError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| {
            f.extension().is_some_and(|x| x == "safetensors")
                || f.file_name().is_some_and(|n| n == "config.json")
        })
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(crate::model::fetch::sha256_file(&f, false)?.as_bytes());
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn spec_err(reg: &Registry, name: &str, field: String, message: String) -> VariantError {
    VariantError::Spec {
        file: reg.origin.clone(),
        model: name.to_string(),
        field,
        message,
    }
}

/// Builds the variant file `path` (and its sidecar) from the parent `p`.
pub fn materialize(
    reg: &Registry,
    name: &str,
    p: &ParentFile<'_>,
    key: &str,
    path: &Path,
) -> Result<(), VariantError> {
    let t0 = Instant::now();
    let spec = reg.get(name)?;
    let parent = spec.parent.clone().unwrap_or_default();
    let labels: Vec<String> = spec.parsed_steps.iter().map(Step::label).collect();
    eprintln!(
        "materializing {name} from {parent}: {}",
        if labels.is_empty() {
            "no steps (f32 copy)".to_string()
        } else {
            labels.join(", then ")
        }
    );
    let mut g = open_gguf(p.path, p.format)?;
    let (mut w, mut source) = Working::load(&mut g)?;
    // The student's tokenizer, for a corpus to train on.
    let tok = if p.distill.iter().any(Option::is_some) {
        let t = match p.format {
            Format::Gguf => TextTokenizer::from_gguf(&g),
            Format::Safetensors => {
                TextTokenizer::from_json_file(&p.path.join("tokenizer.json"), None)
            }
        };
        Some(t.map_err(|e| VariantError::Io {
            path: p.path.display().to_string(),
            message: format!("the student's tokenizer: {e}"),
        })?)
    } else {
        None
    };
    drop(g);
    // A variant of a variant: where the chain's weights came from.
    if let Some(pr) = &p.report {
        source = format!("{} (via {})", pr.source, pr.name);
    }
    let parent_totals = w.totals()?;
    let mut rows = Vec::new();
    let mut training = Vec::new();
    for (i, step) in spec.parsed_steps.iter().enumerate() {
        let at = |f: &str| format!("steps[{i}].{f}");
        let mut r = match step {
            Step::Quantize { qtype, embeddings } => {
                quantize::apply(&mut w, i, *qtype, *embeddings)?
            }
            Step::Prune(Prune::Magnitude {
                sparsity,
                scope,
                targets,
            }) => prune::magnitude(&mut w, i, *sparsity, *scope, targets)?,
            Step::Prune(Prune::NM { n, m, targets }) => prune::n_m(&mut w, i, *n, *m, targets)
                .map_err(|(f, msg)| spec_err(reg, name, at(&format!("prune.{f}")), msg))?,
            Step::Prune(Prune::Layers { drop }) => prune::drop_layers(&mut w, i, drop)
                .map_err(|msg| spec_err(reg, name, at("prune.drop"), msg))?,
            Step::LowRank { rank, targets } => low_rank::apply(&mut w, i, *rank, targets)?,
            Step::Distill(d) => {
                let (Some(data), Some(tok)) = (p.distill.get(i).and_then(Option::as_ref), &tok)
                else {
                    return Err(spec_err(
                        reg,
                        name,
                        at("distill"),
                        "no corpus was prepared for this step".into(),
                    ));
                };
                let mut tg = open_gguf(
                    &data.teacher_path,
                    if data.teacher_safetensors {
                        Format::Safetensors
                    } else {
                        Format::Gguf
                    },
                )?;
                let (teacher, _) = Working::load(&mut tg)?;
                drop(tg);
                let inputs = DistillInputs {
                    teacher,
                    data,
                    checkpoint_dir: checkpoint_dir(path, i),
                    key: key.to_string(),
                    progress: true,
                };
                let (r, report) = step::apply(&mut w, i, d, inputs, tok).map_err(|e| match e {
                    StepError::Field(f, m) => spec_err(reg, name, at(&format!("distill.{f}")), m),
                    StepError::Other(m) => spec_err(reg, name, at("distill"), m),
                })?;
                training.push(report);
                r
            }
        };
        rows.append(&mut r);
    }
    let mut notes = Vec::new();
    let mut fallbacks: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &rows {
        if let Some(f) = &r.fallback {
            *fallbacks.entry(f.clone()).or_default() += 1;
        }
    }
    for (f, n) in fallbacks {
        notes.push(format!("{n} tensor(s): {f}"));
    }
    let steps_json = serde_json::to_value(&spec.parsed_steps).unwrap_or_default();
    w.metadata.remove("general.file_type");
    for (k, v) in [
        ("slmbench.variant.name", name.to_string()),
        ("slmbench.variant.parent", parent.clone()),
        ("slmbench.variant.steps", steps_json.to_string()),
        ("slmbench.variant.key", key.to_string()),
    ] {
        w.metadata.insert(k.into(), Value::String(v));
    }
    let totals = w.totals()?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| VariantError::Io {
        path: dir.display().to_string(),
        message: format!("cannot create: {e}"),
    })?;
    let tmp = path.with_extension(format!("partial-{}", std::process::id()));
    w.write(&tmp)?;
    let report = VariantReport {
        name: name.to_string(),
        parent,
        cache_key: key.to_string(),
        algorithm_version: ALGORITHM_VERSION,
        source,
        steps: steps_json,
        rows,
        notes,
        parent_totals,
        totals,
        materialize_s: t0.elapsed().as_secs_f64(),
        training,
    };
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    let side_tmp = sidecar_path(&tmp);
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| VariantError::Io {
            path: p,
            message: e.to_string(),
        }
    };
    std::fs::write(&side_tmp, json).map_err(io(&side_tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::rename(&side_tmp, sidecar_path(path)).map_err(io(path))?;
    // The variant is written: its training checkpoints have served.
    for i in 0..spec.parsed_steps.len() {
        let _ = std::fs::remove_dir_all(checkpoint_dir(path, i));
    }
    eprintln!(
        "wrote {} ({:.1} MB, {:.2} bits/weight) in {:.1} s",
        path.display(),
        totals.weight_bytes as f64 / 1e6,
        totals.bits_per_weight(),
        report.materialize_s
    );
    Ok(())
}

/// `slmbench variants`: what each step did to each tensor, then totals.
pub fn render_report(r: &VariantReport, path: &Path, summary: bool) -> String {
    let mut s = format!(
        "## {} (variant of {})\nfile: {}\nsource: {}\n",
        r.name,
        r.parent,
        path.display(),
        r.source
    );
    let pct = |x: Option<f64>| x.map_or(String::new(), |v| format!("{:.2}%", v * 100.0));
    if !summary {
        let mut rows = vec![vec![
            "step".to_string(),
            "tensor".into(),
            "op".into(),
            "type".into(),
            "sparsity".into(),
            "rank kept/full".into(),
            "rel. error".into(),
            "params before → after".into(),
        ]];
        for t in &r.rows {
            rows.push(vec![
                t.step.to_string(),
                t.tensor.clone(),
                t.op.clone(),
                match (&t.qtype, &t.fallback) {
                    (Some(q), Some(_)) => format!("{q} (fallback)"),
                    (Some(q), None) => q.clone(),
                    _ => String::new(),
                },
                pct(t.sparsity),
                t.rank.map_or(String::new(), |(k, f)| format!("{k}/{f}")),
                t.rel_error.map_or(String::new(), |e| format!("{e:.4}")),
                t.params
                    .map_or(String::new(), |(a, b)| format!("{a} → {b}")),
            ]);
        }
        s.push_str(&crate::text_table::table(&rows));
    }
    // Per step and op: tensors touched and the mean relative error.
    let mut per: std::collections::BTreeMap<(usize, String), (usize, f64, f64)> =
        Default::default();
    for t in &r.rows {
        let e = per.entry((t.step, t.op.clone())).or_default();
        e.0 += 1;
        e.1 += t.rel_error.unwrap_or(0.0);
        e.2 += t.sparsity.unwrap_or(0.0);
    }
    for ((step, op), (n, err, sp)) in per {
        s.push_str(&format!(
            "step {step} {op}: {n} tensor(s), mean rel. error {:.4}{}\n",
            err / n as f64,
            if op.starts_with("prune") {
                format!(", mean sparsity {:.2}%", sp / n as f64 * 100.0)
            } else {
                String::new()
            }
        ));
    }
    for t in &r.training {
        s.push_str(&step::render(t));
    }
    for n in &r.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    let (p, t) = (&r.parent_totals, &r.totals);
    s.push_str(&format!(
        "totals: params {} → {} ({:.2}% non-zero → {:.2}%), weight bytes {:.1} MB → {:.1} MB, bits/weight {:.2} → {:.2} (parent as f32), built in {:.1} s\n",
        p.params,
        t.params,
        p.nonzero_params as f64 * 100.0 / p.params.max(1) as f64,
        t.nonzero_params as f64 * 100.0 / t.params.max(1) as f64,
        p.weight_bytes as f64 / 1e6,
        t.weight_bytes as f64 / 1e6,
        p.bits_per_weight(),
        t.bits_per_weight(),
        r.materialize_s
    ));
    s
}
