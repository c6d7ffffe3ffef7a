//! `slmbench run`: resolves the invocation into a plan, then runs it cell by
//! cell, rewriting `results.json` after each, and prints the summary.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::eval::{
    failed_cell, load_model, prepare_tasks, run_cell, summary_table, upsert_cell, EvalError,
    RunConfig,
};
use crate::fetch::FetchOptions;
use crate::models::Registry;
use crate::record::{CellStatus, RunRecord};
use crate::task::TaskRegistry;

/// The outcome of a run for the exit code.
pub struct RunOutcome {
    pub run_dir: PathBuf,
    pub failed_cells: usize,
}

/// Built-in tasks, the smoke suite and any `--suite` files.
pub fn task_registry(suite_files: &[PathBuf]) -> Result<TaskRegistry, EvalError> {
    let mut reg = crate::task::builtin_registry()?;
    crate::smoke::register(&mut reg)?;
    for f in suite_files {
        if f.is_dir() {
            reg.add_dir(f)?;
        } else {
            let text = std::fs::read_to_string(f)
                .map_err(|e| EvalError::Other(format!("{}: cannot read: {e}", f.display())))?;
            reg.add_yaml(&f.display().to_string(), &text)?;
        }
    }
    Ok(reg)
}

pub fn model_registry(models_file: Option<&Path>) -> Result<Registry, EvalError> {
    Ok(match models_file {
        Some(p) => Registry::load(p)?,
        None => match Path::new("models.yaml") {
            p if p.is_file() => Registry::load(p)?,
            _ => Registry::builtin()?,
        },
    })
}

/// Each model of the run in `dir` with a parent (or teacher) in the same
/// run, compared with it from `results.json` and the sample files.
pub fn comparison(dir: &Path) -> Result<crate::variant::compare::Comparison, EvalError> {
    let rec = RunRecord::read(dir)?;
    let mut samples = crate::variant::compare::Samples::new();
    let related: std::collections::BTreeSet<&str> = rec
        .models
        .iter()
        .filter_map(|(n, m)| {
            let p = &m.lineage.as_ref()?.parent;
            rec.models
                .contains_key(p)
                .then_some([n.as_str(), p.as_str()])
        })
        .flatten()
        .collect();
    for c in rec
        .cells
        .iter()
        .filter(|c| related.contains(c.model.as_str()))
    {
        let path = crate::record::samples_path(dir, &c.model, &c.task);
        samples.insert(
            (c.model.clone(), c.task.clone()),
            crate::record::read_samples(&path)?,
        );
    }
    Ok(crate::variant::compare::compare(&rec, &samples))
}

fn new_run_dir(root: &Path, first_model: &str) -> PathBuf {
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
                config: serde_json::to_value(&cfg).map_err(|e| EvalError::Other(e.to_string()))?,
                environment: crate::environment::fingerprint(cfg.threads),
                models: Default::default(),
                cells: Vec::new(),
                versions: prepared
                    .iter()
                    .map(|p| (p.spec.name.clone(), p.spec.version()))
                    .collect(),
            };
            (dir, rec)
        }
    };
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| EvalError::Other(format!("{}: cannot create: {e}", run_dir.display())))?;
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
        let mut loaded = match load_model(&models, model, cfg.dtype, fetch_opts) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {model}: {e}");
                for (ti, p) in prepared.iter().enumerate() {
                    if mine(ti) {
                        upsert_cell(&mut record, failed_cell(model, p, &e.to_string()));
                    }
                }
                record.write(&run_dir)?;
                continue;
            }
        };
        eprintln!(
            "loaded {model} ({}, {}) in {:.2} s",
            loaded.record.architecture, loaded.record.dtype, loaded.record.load_time_s
        );
        loaded.scorer.pack_tokens = cfg.pack_tokens;
        record.models.insert(model.clone(), loaded.record.clone());
        for (ti, p) in prepared.iter().enumerate() {
            if done(&record, ti, &p.spec.name) {
                continue;
            }
            let measure = crate::eval::MeasureOptions {
                cpu_watts: cfg.cpu_watts,
                grid_g_per_kwh: cfg.grid_g_per_kwh,
            };
            let cell = match run_cell(
                &mut loaded.scorer,
                model,
                p,
                &run_dir,
                cfg.bootstrap_iters,
                measure,
            ) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {model}/{}: {e}", p.spec.name);
                    failed_cell(model, p, &e.to_string())
                }
            };
            upsert_cell(&mut record, cell);
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
    print!("{}", summary_table(&record));
    let cmp = comparison(&run_dir)?;
    if !cmp.models.is_empty() {
        println!("\nvariants vs parents (paired over the same documents):\n");
        print!("{}", crate::variant::compare::render(&cmp));
    }
    println!(
        "wall time {:.1} s; results in {}",
        record.wall_time_s,
        run_dir.display()
    );
    Ok(RunOutcome {
        run_dir,
        failed_cells: failed,
    })
}
