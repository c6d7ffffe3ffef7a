//! Running a plan: models × tasks through a backend's [`Scorer`], writing
//! samples as they are computed and `results.json` after every cell. Never
//! names an engine and never prints results: [`execute`] returns a
//! [`RunOutcome`] for `cli` to show.
//!
//! Invariant: a failure in one cell is recorded and the run goes on; every
//! sample already computed stays on disk.

mod cell;
mod error;
mod generate;
pub mod interrupt;
mod lettered;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use cell::{run_cell, DOCS_PER_CALL, WARMUP_DOCS};
pub use error::EvalError;
pub use generate::{run_gen_cell, Judge};

use crate::backend::{BackendOptions, Loaded};
use crate::model::chat::ChatTemplate;
use crate::model::fetch::FetchOptions;
use crate::plan::{
    model_registry, new_run_dir, prepare_tasks, task_registry, PreparedTask, RunConfig,
};
use crate::record::{CellResult, CellStatus, RunRecord};
use crate::spec::models::Registry;

/// A task's prompts for one model: under `--apply-chat-template`, each
/// request's conversation rendered with the model's chat template (with
/// the generation prompt, as lm-eval renders it); otherwise as built.
fn render_prompts<'a>(
    p: &'a PreparedTask,
    chat: Option<&ChatTemplate>,
) -> Result<Cow<'a, PreparedTask>, String> {
    let Some(t) = chat else {
        return Ok(Cow::Borrowed(p));
    };
    if p.instances.iter().all(|i| i.messages.is_none()) {
        return Ok(Cow::Borrowed(p));
    }
    let mut out = p.clone();
    for inst in &mut out.instances {
        if let Some(m) = &inst.messages {
            inst.context = t
                .render(m, true)
                .map_err(|e| format!("doc {}: {e}", inst.doc_id))?;
        }
    }
    Ok(Cow::Owned(out))
}

/// What a run leaves for the caller to show.
pub struct RunOutcome {
    pub run_dir: PathBuf,
    pub failed_cells: usize,
    pub record: RunRecord,
    /// The signal that stopped the run (status `interrupted`), if one did.
    pub interrupted: Option<i32>,
}

/// Obtains `name` (fetching it into the cache, or materializing a variant)
/// and opens it in its backend.
pub fn load_model(
    registry: &Registry,
    name: &str,
    opts: &BackendOptions,
    fetch_opts: &FetchOptions,
) -> Result<Loaded, EvalError> {
    let spec = registry.get(name)?;
    let got = crate::obtain::obtain(
        registry,
        name,
        &crate::model::fetch::default_home(),
        fetch_opts,
    )?;
    Ok(crate::backend::open(spec, &got, opts)?)
}

/// Runs (or resumes) a plan and writes the run directory.
pub fn execute(
    cfg: RunConfig,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    fetch_opts: &FetchOptions,
) -> Result<RunOutcome, EvalError> {
    let t0 = Instant::now();
    let models = model_registry(cfg.models_file.as_deref())?;
    for m in &cfg.models {
        models.get(m)?;
    }
    let tasks = task_registry(&cfg.suite_files)?;
    let specs = tasks.resolve(&cfg.tasks)?;
    let prepared = prepare_tasks(&specs, &cfg)?;

    let (run_dir, mut record) = match resume {
        Some(dir) => {
            let mut rec = RunRecord::read(&dir)?;
            rec.status = "running".into();
            (dir, rec)
        }
        None => {
            let first = cfg.models.first().cloned().unwrap_or_default();
            let dir = out.unwrap_or_else(|| new_run_dir(Path::new("reports"), &first));
            let rec = RunRecord {
                run_id: dir
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                status: "running".into(),
                started_at: chrono::Local::now().to_rfc3339(),
                finished_at: None,
                wall_time_s: 0.0,
                config: serde_json::to_value(&cfg)?,
                environment: crate::measure::environment::Environment {
                    kernels: crate::backend::kernels(),
                    ..crate::measure::environment::fingerprint(cfg.threads)
                },
                models: Default::default(),
                cells: Vec::new(),
                versions: prepared
                    .iter()
                    .map(|p| (p.spec.name.clone(), p.spec.version()))
                    .collect(),
                datasets: prepared
                    .iter()
                    .filter(|p| !p.data_files.is_empty())
                    .map(|p| (p.spec.name.clone(), p.data_files.clone()))
                    .collect(),
            };
            (dir, rec)
        }
    };
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| EvalError::io(&run_dir, format!("cannot create: {e}")))?;
    // One process per run directory: an advisory lock, released when this
    // process ends however it ends.
    let lock_path = run_dir.join(".lock");
    let _lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| EvalError::io(&lock_path, format!("cannot create: {e}")))?;
    match _lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(EvalError::io(
                &run_dir,
                "another slmbench run is using this directory; wait for it to end, or pass another --out",
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(EvalError::io(&lock_path, format!("cannot lock: {e}")))
        }
    }
    let prior_wall = record.wall_time_s;
    record.write(&run_dir)?;
    eprintln!("run directory: {}", run_dir.display());

    for (mi, model) in cfg.models.iter().enumerate() {
        // Cells of other shards count as done here.
        let mine = |ti: usize| cfg.shard.is_none_or(|s| s.owns(mi * prepared.len() + ti));
        let done = |record: &RunRecord, ti: usize, task: &str| {
            !mine(ti)
                || record
                    .cells
                    .iter()
                    .any(|c| &c.model == model && c.task == task && c.status == CellStatus::Ok)
        };
        if prepared
            .iter()
            .enumerate()
            .all(|(ti, p)| done(&record, ti, &p.spec.name))
        {
            continue;
        }
        let backend_opts = BackendOptions {
            dtype: cfg.dtype,
            pack_tokens: cfg.pack_tokens,
        };
        let mut loaded = match load_model(&models, model, &backend_opts, fetch_opts) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {model}: {e}");
                for (ti, p) in prepared.iter().enumerate() {
                    if mine(ti) {
                        record.upsert(CellResult::failed(
                            model,
                            &p.spec.name,
                            p.num_fewshot,
                            &e.to_string(),
                        ));
                    }
                }
                record.write(&run_dir)?;
                continue;
            }
        };
        eprintln!(
            "loaded {model} ({}, {}) in {:.2} s",
            loaded
                .record
                .architecture
                .as_deref()
                .unwrap_or(&loaded.record.backend),
            loaded.record.dtype,
            loaded.record.load_time_s
        );
        record.models.insert(model.clone(), loaded.record.clone());
        let chat_gap = (cfg.apply_chat_template
            && loaded.chat.is_none()
            && !loaded.scorer.takes_messages())
        .then(|| {
            format!(
                "{model}: the model has no chat template, so --apply-chat-template cannot render its prompts (pick a chat model, or run without the flag)"
            )
        });
        for (ti, p) in prepared.iter().enumerate() {
            if done(&record, ti, &p.spec.name) {
                continue;
            }
            let rendered = match &chat_gap {
                Some(e) => Err(e.clone()),
                None => render_prompts(p, loaded.chat.as_ref()),
            };
            let p = match rendered {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {model}/{}: {e}", p.spec.name);
                    record.upsert(CellResult::failed(model, &p.spec.name, p.num_fewshot, &e));
                    record.write(&run_dir)?;
                    continue;
                }
            };
            let p = p.as_ref();
            let measure = crate::measure::MeasureOptions::new(cfg.cpu_watts, cfg.grid_g_per_kwh);
            let price = models.get(model).ok().and_then(|s| s.price.as_ref());
            let scorer = loaded.scorer.as_mut();
            let takes_messages = scorer.takes_messages();
            let result = match &p.spec.generation {
                Some(gen) => match Judge::exact_match(gen) {
                    Ok(j) => run_gen_cell(scorer, model, p, &j, &run_dir, measure, price),
                    Err(e) => Err(EvalError::Metric {
                        context: p.spec.name.clone(),
                        message: e,
                    }),
                },
                // A chat endpoint has no log-probabilities: ask for the letter.
                None if takes_messages => run_gen_cell(
                    scorer,
                    model,
                    p,
                    &lettered::judge(),
                    &run_dir,
                    measure,
                    price,
                ),
                None => run_cell(
                    scorer,
                    model,
                    p,
                    &run_dir,
                    cfg.bootstrap_iters,
                    measure,
                    price,
                ),
            };
            let cell = match result {
                Err(EvalError::Interrupted(sig)) => {
                    // The cell is unfinished: its samples stay for --resume.
                    record.status = "interrupted".into();
                    record.wall_time_s = prior_wall + t0.elapsed().as_secs_f64();
                    record.write(&run_dir)?;
                    return Ok(RunOutcome {
                        run_dir,
                        failed_cells: 0,
                        record,
                        interrupted: Some(sig),
                    });
                }
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {model}/{}: {e}", p.spec.name);
                    CellResult::failed(model, &p.spec.name, p.num_fewshot, &e.to_string())
                }
            };
            record.upsert(cell);
            record.wall_time_s = prior_wall + t0.elapsed().as_secs_f64();
            record.write(&run_dir)?;
        }
    }
    let failed = record
        .cells
        .iter()
        .filter(|c| c.status == CellStatus::Failed)
        .count();
    record.status = if failed == 0 { "complete" } else { "failed" }.into();
    record.finished_at = Some(chrono::Local::now().to_rfc3339());
    record.wall_time_s = prior_wall + t0.elapsed().as_secs_f64();
    record.write(&run_dir)?;
    Ok(RunOutcome {
        run_dir,
        failed_cells: failed,
        record,
        interrupted: None,
    })
}
