//! `slmbench bench`: one child process per thread count (`--worker`), each
//! timing the model in its backend; rows merged and rendered.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::backend::BackendOptions;
use crate::cli::args::BenchArgs;
use crate::cli::pool::{default_threads, in_pool};
use crate::model::fetch::FetchOptions;

/// `bench`: one child process per thread count, rows merged and rendered.
pub fn bench(a: &BenchArgs) -> Result<i32> {
    for &t in &a.threads {
        crate::cli::args::check_threads(Some(t))?;
    }
    if a.reps == 0 {
        bail!("-r 0: give at least 1 repetition");
    }
    let threads = if a.threads.is_empty() {
        vec![default_threads()]
    } else {
        a.threads.clone()
    };
    let join = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    if a.worker {
        let t = threads[0];
        let rows = in_pool(t, || {
            let reg = a.registry.load()?;
            let opts = BackendOptions {
                dtype: a.dtype,
                ..BackendOptions::default()
            };
            let mut loaded =
                crate::eval::load_model(&reg, &a.model, &opts, &FetchOptions::from_env())?;
            let rec = &loaded.record;
            // Checked before any timing: a prompt or a generation past the
            // window would fail (or wrap) minutes into the run.
            let window = loaded.scorer.max_length();
            let longest = a.prompts.iter().chain(&a.gens).copied().max().unwrap_or(0);
            if longest > window {
                bail!(
                    "{}: -p/-n {longest} tokens exceed the model's context window of {window}; give at most {window}",
                    a.model
                );
            }
            let ctx = crate::bench::RowContext {
                model: a.model.clone(),
                model_file: rec
                    .file
                    .as_deref()
                    .and_then(|f| Path::new(f).file_name())
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                architecture: rec.architecture.clone().unwrap_or_default(),
                quant_type: rec.quant_type.clone().unwrap_or_default(),
                dtype: rec.dtype.clone(),
                threads: t,
            };
            let Some(timing) = loaded.scorer.throughput() else {
                bail!(
                    "{}: its backend `{}` has no throughput timing",
                    a.model,
                    rec.backend
                );
            };
            Ok(crate::bench::run_tests(
                timing, &ctx, &a.prompts, &a.gens, a.reps,
            )?)
        })?;
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(0);
    }
    let exe = std::env::current_exe().context("cannot find the slmbench executable")?;
    let mut rows = Vec::new();
    for t in threads {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["bench", "--worker", "--model", &a.model])
            .args(["-p", &join(&a.prompts), "-n", &join(&a.gens)])
            .args(["-t", &t.to_string(), "-r", &a.reps.to_string()]);
        if let Some(m) = &a.registry.models {
            cmd.arg("--models").arg(m);
        }
        if let Some(d) = a.dtype {
            cmd.args(["--dtype", &d.to_string()]);
        }
        let out = cmd
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("cannot start the bench worker")?;
        if !out.status.success() {
            bail!("bench with {t} threads failed (see the error above)");
        }
        let mut part: Vec<crate::bench::BenchRow> =
            serde_json::from_slice(&out.stdout).context("bench worker printed no rows")?;
        rows.append(&mut part);
    }
    print!("{}", crate::bench::render(&rows, a.output));
    Ok(0)
}
