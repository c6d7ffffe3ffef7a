//! The `distill` variant step: the working set so far becomes a trainable
//! [`Student`], the teacher's file another, the declared corpus is
//! tokenized, and the student is trained with checkpoints (resumed after a
//! kill), then written back into the working set. What it did is a
//! [`TrainingReport`] in the variant's sidecar.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, Counters};
use super::train::{zeros_mask, TrainOptions, Trainer};
use super::{distill_loss, Student};
use crate::model::tokenizer::TextTokenizer;
use crate::spec::distill::Distill;
use crate::variant::tensors::{nonzero, rel_error, WTensor, Working};
use crate::variant::TensorRow;

/// Share of exact zeros above which a tensor counts as pruned and keeps
/// its zeros while training (dense weights have next to none).
pub const PRUNED_ZEROS: f64 = 0.1;

/// What a `distill` step reads, gathered by the caller (who knows the
/// registry and the task data) before the cache key is computed.
#[derive(Debug, Clone, Default)]
pub struct DistillData {
    /// The teacher's file (a GGUF, or a safetensors folder).
    pub teacher_path: PathBuf,
    pub teacher_safetensors: bool,
    /// Training texts, in the order declared, and whether each comes from a
    /// text file (split into windows) or a task (cut at `seq_len`).
    pub corpus: Vec<(String, bool)>,
    /// One line per corpus source: `arc_easy/train: 2251 texts`.
    pub sources: Vec<String>,
    /// Held-out texts (may be empty).
    pub held_out: Vec<String>,
}

/// What the step needs besides its spec.
pub struct DistillInputs<'a> {
    pub teacher: Working,
    pub data: &'a DistillData,
    /// Where checkpoints go, and the key they belong to.
    pub checkpoint_dir: PathBuf,
    pub key: String,
    /// Draw a progress bar (stderr, terminals only).
    pub progress: bool,
}

/// A `distill` step's record (part of the variant report).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TrainingReport {
    /// Index of the step in `steps`.
    pub step: usize,
    pub teacher: String,
    pub sources: Vec<String>,
    /// Sequences the corpus gave (after tokenizing and cutting to `seq_len`).
    pub sequences: usize,
    pub steps: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub lr: f64,
    pub temperature: f64,
    pub alpha: f64,
    pub seed: u64,
    /// The loss of every step, before its update.
    pub losses: Vec<f64>,
    pub tokens_seen: usize,
    pub wall_time_s: f64,
    pub energy_j: Option<f64>,
    pub energy_note: Option<String>,
    /// Mean per-token KL(teacher ‖ student) at T = 1 on the held-out texts.
    pub held_out_sequences: usize,
    pub held_out_kl_before: Option<f64>,
    pub held_out_kl_after: Option<f64>,
    /// The step the run resumed from, when a checkpoint was found.
    pub resumed_from: Option<usize>,
    /// Tensors whose zeros were kept (pruned structure).
    pub masked_tensors: usize,
}

/// A problem of the step: a field of it (`teacher`, `data`, `lr`) and what
/// to fix, or anything else.
pub enum StepError {
    Field(&'static str, String),
    Other(String),
}

fn other(e: impl std::fmt::Display) -> StepError {
    StepError::Other(crate::variant::first_line(&e.to_string()))
}

/// `tokenizer.ggml.tokens` as strings.
fn vocabulary(w: &Working) -> Option<Vec<String>> {
    match w.metadata.get("tokenizer.ggml.tokens")? {
        Value::Array(a) => a
            .iter()
            .map(|v| v.to_string().ok().cloned())
            .collect::<Option<Vec<_>>>(),
        _ => None,
    }
}

/// The teacher must share the student's tokens id for id: the loss compares
/// distributions over the same ids.
fn check_vocabulary(student: &Working, teacher: &Working, name: &str) -> Result<(), StepError> {
    let (a, b) = (vocabulary(student), vocabulary(teacher));
    let (Some(a), Some(b)) = (a, b) else {
        return Err(StepError::Field(
            "teacher",
            format!("`{name}` or the student has no tokenizer.ggml.tokens to compare"),
        ));
    };
    if a == b {
        return Ok(());
    }
    let first = a.iter().zip(&b).position(|(x, y)| x != y);
    Err(StepError::Field(
        "teacher",
        format!(
            "`{name}` has another vocabulary ({} tokens vs the student's {}{}); distillation compares next-token distributions id by id, so name a teacher with the student's tokenizer",
            b.len(),
            a.len(),
            first.map_or(String::new(), |i| format!(", first difference at id {i}"))
        ),
    ))
}

/// Token sequences of at most `seq_len` (BOS first when the model wants
/// it): a task example is cut, a long text paragraph split into windows.
pub fn tokenize(
    tok: &TextTokenizer,
    texts: &[String],
    seq_len: usize,
    split_long: bool,
) -> Result<Vec<Vec<u32>>, String> {
    let mut out = Vec::new();
    for t in texts {
        let ids = tok.encode(t).map_err(|e| e.to_string())?;
        let bos = tok.add_bos.then_some(tok.bos_id).flatten();
        let room = seq_len - usize::from(bos.is_some());
        let chunks: Vec<&[u32]> = if split_long {
            ids.chunks(room.max(1)).collect()
        } else {
            vec![&ids[..ids.len().min(room)]]
        };
        for c in chunks {
            let mut s: Vec<u32> = bos.into_iter().collect();
            s.extend_from_slice(c);
            if s.len() >= 2 {
                out.push(s);
            }
        }
    }
    Ok(out)
}

fn mean_kl(student: &Student, teacher: &Student, set: &[Vec<u32>]) -> candle_core::Result<f64> {
    let mut sum = 0.0;
    for q in set {
        let a = student.forward(q)?;
        let b = teacher.forward(q)?.detach();
        sum += distill_loss(&a, &b, 1.0, 1.0, &[])?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(sum / set.len().max(1) as f64)
}

/// Trains the working set `w` (the student) as step `i` says and writes
/// the trained weights back. Text-file paragraphs are split into windows,
/// task examples cut at `seq_len`.
pub fn apply(
    w: &mut Working,
    i: usize,
    d: &Distill,
    inp: DistillInputs,
    tok: &TextTokenizer,
) -> Result<(Vec<TensorRow>, TrainingReport), StepError> {
    check_vocabulary(w, &inp.teacher, &d.teacher)?;
    let student = Student::from_working(w, DType::F32).map_err(StepError::Other)?;
    let teacher = Student::from_working(&inp.teacher, DType::F32)
        .map_err(|e| StepError::Field("teacher", e))?;
    drop(inp.teacher);
    let mut corpus = Vec::new();
    for (t, split) in &inp.data.corpus {
        corpus.extend(tokenize(tok, std::slice::from_ref(t), d.seq_len, *split).map_err(other)?);
    }
    if corpus.is_empty() {
        return Err(StepError::Field(
            "data",
            "the corpus has no text of two or more tokens".into(),
        ));
    }
    let held = tokenize(tok, &inp.data.held_out, d.seq_len, false).map_err(other)?;
    let named = student.named_vars();
    let before: Vec<Tensor> = named
        .iter()
        .map(|(_, v)| v.as_tensor().copy())
        .collect::<candle_core::Result<_>>()
        .map_err(other)?;
    let mut masks = Vec::with_capacity(named.len());
    for (_, v) in &named {
        let t = v.as_tensor();
        let zeros = t.elem_count() as u64 - nonzero(t).map_err(other)?;
        masks.push(if zeros as f64 >= PRUNED_ZEROS * t.elem_count() as f64 {
            Some(zeros_mask(t).map_err(other)?)
        } else {
            None
        });
    }
    let masked_tensors = masks.iter().filter(|m| m.is_some()).count();
    let opts = TrainOptions {
        steps: d.steps,
        batch: d.batch,
        lr: d.lr,
        temperature: d.temperature,
        alpha: d.alpha,
        seed: d.seed,
    };
    let mut trainer = Trainer::new(&student, &teacher, &corpus, masks, &opts).map_err(other)?;
    let vars = student.vars();
    let mut counters = Counters {
        key: inp.key.clone(),
        ..Counters::default()
    };
    let mut resumed_from = None;
    let saved = checkpoint::load(&inp.checkpoint_dir, &inp.key, vars.len()).map_err(other)?;
    if let Some(s) = saved {
        for (v, t) in vars.iter().zip(&s.weights) {
            v.set(t).map_err(other)?;
        }
        trainer
            .resume(s.counters.losses.clone(), s.counters.tokens_seen, s.moments)
            .map_err(other)?;
        resumed_from = Some(s.counters.losses.len());
        eprintln!(
            "resuming {} from its checkpoint at step {}/{}",
            d.teacher,
            s.counters.losses.len(),
            d.steps
        );
        counters = s.counters;
    }
    if counters.held_out_kl_before.is_none() && !held.is_empty() && resumed_from.is_none() {
        counters.held_out_kl_before = Some(mean_kl(&student, &teacher, &held).map_err(other)?);
    }
    let meter = crate::measure::energy::EnergyMeter::start(
        Path::new(crate::measure::POWERCAP_ROOT),
        crate::measure::energy::DEFAULT_CPU_WATTS_PER_CORE,
    );
    let t0 = Instant::now();
    let base_wall = counters.wall_time_s;
    let base_tokens = trainer.tokens_seen;
    let base_energy = counters.energy_j;
    let bar = progress_bar(inp.progress, d.steps, trainer.done());
    let save = |trainer: &Trainer, counters: &mut Counters| -> Result<PathBuf, StepError> {
        counters.losses.clone_from(&trainer.losses);
        counters.tokens_seen = trainer.tokens_seen;
        counters.wall_time_s = base_wall + t0.elapsed().as_secs_f64();
        if let Some(r) = meter.finish() {
            counters.energy_j = Some(base_energy.unwrap_or(0.0) + r.joules);
            counters.energy_note = Some(r.note);
        }
        let weights: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        checkpoint::save(
            &inp.checkpoint_dir,
            counters,
            &weights,
            trainer.optimizer_state().1,
        )
        .map_err(other)
    };
    while trainer.done() < d.steps {
        let k = trainer.done();
        let loss = trainer.step().map_err(other)?;
        if !loss.is_finite() {
            bar.finish_and_clear();
            let kept = if k > 0 {
                let p = save(&trainer, &mut counters)?;
                format!("the state after step {k} is kept in {}", p.display())
            } else {
                "nothing was trained".into()
            };
            return Err(StepError::Field(
                "lr",
                format!(
                    "the loss became {loss} at step {} (lr {} is too high for this model; lower it and rebuild — {kept})",
                    k + 1,
                    d.lr
                ),
            ));
        }
        let done = trainer.done();
        let secs = t0.elapsed().as_secs_f64();
        // This process's throughput (a resumed run's earlier tokens left out).
        let new_tokens = trainer.tokens_seen - base_tokens;
        bar.set_position(done as u64);
        bar.set_message(format!(
            "loss {loss:.4}, {:.0} tokens/s",
            new_tokens as f64 / secs.max(1e-9)
        ));
        if done % d.checkpoint_every == 0 || done == d.steps {
            let p = save(&trainer, &mut counters)?;
            bar.suspend(|| {
                eprintln!(
                    "distill step {done}/{}: loss {loss:.4}, {:.0} tokens/s, checkpoint {}",
                    d.steps,
                    new_tokens as f64 / secs.max(1e-9),
                    p.file_name().unwrap_or_default().to_string_lossy()
                )
            });
        }
    }
    bar.finish_and_clear();
    let held_out_kl_after = if held.is_empty() {
        None
    } else {
        Some(mean_kl(&student, &teacher, &held).map_err(other)?)
    };
    let mut rows = Vec::new();
    for ((name, v), b) in named.iter().zip(&before) {
        let t = v.as_tensor().to_dtype(DType::F32).map_err(other)?;
        let n = t.elem_count() as u64;
        let nz = nonzero(&t).map_err(other)?;
        rows.push(TensorRow {
            step: i,
            op: "distill".into(),
            tensor: name.clone(),
            shape: t.dims().to_vec(),
            sparsity: (n > nz).then(|| (n - nz) as f64 / n as f64),
            rel_error: Some(rel_error(b, &t).map_err(other)?),
            ..TensorRow::default()
        });
        w.tensors.insert(name.clone(), WTensor::dense(t));
    }
    let report = TrainingReport {
        step: i,
        teacher: d.teacher.clone(),
        sources: inp.data.sources.clone(),
        sequences: corpus.len(),
        steps: d.steps,
        batch: d.batch,
        seq_len: d.seq_len,
        lr: d.lr,
        temperature: d.temperature,
        alpha: d.alpha,
        seed: d.seed,
        losses: counters.losses.clone(),
        tokens_seen: counters.tokens_seen,
        wall_time_s: counters.wall_time_s,
        energy_j: counters.energy_j,
        energy_note: counters.energy_note.clone(),
        held_out_sequences: held.len(),
        held_out_kl_before: counters.held_out_kl_before,
        held_out_kl_after,
        resumed_from,
        masked_tensors,
    };
    Ok((rows, report))
}

fn progress_bar(show: bool, steps: usize, done: usize) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(
        Some(steps as u64),
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) =
        ProgressStyle::with_template("distill {bar:30} {pos}/{len} steps, {msg}, ETA {eta}")
    {
        bar.set_style(style);
    }
    bar.set_position(done as u64);
    bar
}

/// One line per training step for `slmbench variants`.
pub fn render(r: &TrainingReport) -> String {
    let first = r.losses.first().copied().unwrap_or(f64::NAN);
    let last = r.losses.last().copied().unwrap_or(f64::NAN);
    let mut s = format!(
        "step {} distill from {}: {} steps × {} sequences (≤ {} tokens; {} sequences from {}), lr {}, T {}, alpha {}, seed {}; loss {first:.4} → {last:.4}; {} tokens in {:.0} s",
        r.step,
        r.teacher,
        r.steps,
        r.batch,
        r.seq_len,
        r.sequences,
        r.sources.join(", "),
        r.lr,
        r.temperature,
        r.alpha,
        r.seed,
        r.tokens_seen,
        r.wall_time_s
    );
    if let Some(e) = r.energy_j {
        s.push_str(&format!(
            ", {:.1} kJ ({})",
            e / 1000.0,
            r.energy_note.as_deref().unwrap_or("")
        ));
    }
    if let (Some(a), Some(b)) = (r.held_out_kl_before, r.held_out_kl_after) {
        s.push_str(&format!(
            "; held-out KL to the teacher {a:.4} → {b:.4} nats ({:+.1}%, {} sequences)",
            (b / a - 1.0) * 100.0,
            r.held_out_sequences
        ));
    }
    if r.masked_tensors > 0 {
        s.push_str(&format!(
            "; zeros kept in {} pruned tensors",
            r.masked_tensors
        ));
    }
    if let Some(k) = r.resumed_from {
        s.push_str(&format!("; resumed from step {k}"));
    }
    s.push('\n');
    s
}
