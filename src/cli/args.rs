//! The flags of each subcommand, and phase one of `run`: flags to a
//! [`RunConfig`] with no I/O except reading a resumed run.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::plan::RunConfig;
use crate::spec::models::{Dtype, Registry};

/// `--models FILE`, shared by every subcommand that reads the registry.
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// Models registry (default: ./models.yaml, else the built-in one)
    #[arg(long)]
    pub models: Option<PathBuf>,
}

impl RegistryArgs {
    /// The registry these flags name.
    pub fn load(&self) -> Result<Registry> {
        Ok(crate::plan::model_registry(self.models.as_deref())?)
    }
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
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
    /// max_memory_ratio, max_energy_ratio, holm, underpowered); flags below
    /// override it
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
    /// Judge each cell at the plain alpha instead of Holm-adjusting the
    /// p-values across cells
    #[arg(long)]
    pub no_holm: bool,
    /// What a cell that cannot detect a drop of --max-score-drop does:
    /// warn (default) or fail
    #[arg(long, value_parser = ["warn", "fail"])]
    pub underpowered: Option<String>,
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
    #[command(flatten)]
    pub registry: RegistryArgs,
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
    /// Start over in an existing --out directory (its samples and results
    /// are deleted first)
    #[arg(long)]
    pub force: bool,
    /// Few-shot sampling seed
    #[arg(long, default_value_t = crate::task::DEFAULT_FEWSHOT_SEED)]
    pub seed: u64,
    /// Bootstrap iterations for the f1/mcc standard errors
    #[arg(long, default_value_t = 1000)]
    pub bootstrap_iters: usize,
    /// Per-core power (W) for the energy estimate used when RAPL is unreadable
    #[arg(long, default_value_t = crate::measure::energy::DEFAULT_CPU_WATTS_PER_CORE)]
    pub cpu_watts: f64,
    /// Grid carbon intensity (g CO2e per kWh)
    #[arg(long, default_value_t = crate::measure::energy::DEFAULT_GRID_G_PER_KWH)]
    pub grid_intensity: f64,
    /// Run only shard I of N of the model × task cells (e.g. 1/2); `report`
    /// merges the shards' directories
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::plan::Shard>,
    /// Tokens per packed forward: several documents share one forward, each
    /// masked from the others (0 = one document per forward, for true
    /// per-document latency)
    #[arg(long, default_value_t = crate::backend::DEFAULT_PACK_TOKENS)]
    pub pack_tokens: usize,
    /// Render every prompt with the model's chat template (as lm-eval's
    /// flag; multiple-choice answers then follow the assistant turn directly)
    #[arg(long)]
    pub apply_chat_template: bool,
    /// With --apply-chat-template: few-shot examples as user/assistant turns
    #[arg(long)]
    pub fewshot_as_multiturn: bool,
    /// Text put before every prompt (the system turn under a chat template)
    #[arg(long, value_name = "TEXT")]
    pub system_instruction: Option<String>,
}

/// Phase one: flags to a config, no I/O except reading a resumed run.
pub(crate) fn run_config(a: &RunArgs) -> Result<RunConfig> {
    if let Some(dir) = &a.resume {
        let rec = crate::record::RunRecord::read(dir)?;
        let stored: RunConfig = serde_json::from_value(rec.config).with_context(|| {
            format!(
                "{}: results.json has no usable `config` to resume",
                dir.display()
            )
        })?;
        if let Some(flag) = resume_conflict(a, &stored) {
            bail!(
                "--resume {}: {flag} differs from the run's own settings (results.json `config`); drop it to resume, or start a new run with --out",
                dir.display()
            );
        }
        return Ok(RunConfig {
            threads: a.threads.unwrap_or(stored.threads),
            ..stored
        });
    }
    let threads = check_threads(a.threads)?;
    if !(a.cpu_watts.is_finite() && a.cpu_watts > 0.0) {
        bail!(
            "--cpu-watts {}: give a positive power in watts",
            a.cpu_watts
        );
    }
    if !(a.grid_intensity.is_finite() && a.grid_intensity >= 0.0) {
        bail!(
            "--grid-intensity {}: give the grid's carbon intensity as a finite number of g CO2e per kWh, 0 or more",
            a.grid_intensity
        );
    }
    if a.fewshot_as_multiturn && !a.apply_chat_template {
        bail!("--fewshot-as-multiturn needs --apply-chat-template (the turns are the chat template's)");
    }
    if a.limit == Some(0) {
        bail!("--limit 0 scores nothing: give at least 1 (or omit it for all documents)");
    }
    let tasks: Vec<String> = if !a.tasks.is_empty() {
        a.tasks.iter().filter(|t| !t.is_empty()).cloned().collect()
    } else if a.data_dir.is_some() {
        vec!["default".to_string()]
    } else {
        vec!["smoke".to_string()]
    };
    if tasks.is_empty() {
        bail!("--tasks names no task: give task or group names, e.g. --tasks copa,arc_easy (`slmbench ls tasks` lists them)");
    }
    Ok(RunConfig {
        models: a.model.clone(),
        models_file: a.registry.models.clone(),
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
        apply_chat_template: a.apply_chat_template,
        fewshot_as_multiturn: a.fewshot_as_multiturn,
        system_instruction: a.system_instruction.clone(),
    })
}

/// More compute threads than this many per logical core are refused: they
/// only add contention (and thousands of them exhaust the machine).
pub(crate) const MAX_THREADS_PER_CORE: usize = 4;

/// `--threads`: at least 1, at most [`MAX_THREADS_PER_CORE`] × the logical
/// cores; all logical cores when not given.
pub(crate) fn check_threads(t: Option<usize>) -> Result<usize> {
    let cores = super::pool::default_threads();
    match t {
        Some(0) => bail!("--threads 0: give at least 1 thread (or omit it for all cores)"),
        Some(n) if n > MAX_THREADS_PER_CORE * cores => bail!(
            "--threads {n}: this machine has {cores} logical cores; give at most {} (more threads only contend)",
            MAX_THREADS_PER_CORE * cores
        ),
        Some(n) => Ok(n),
        None => Ok(cores),
    }
}

/// The first flag given with `--resume` that disagrees with the stored run.
fn resume_conflict(a: &RunArgs, s: &RunConfig) -> Option<&'static str> {
    let differs = |given: bool, same: bool| given && !same;
    let tasks: Vec<String> = a.tasks.iter().filter(|t| !t.is_empty()).cloned().collect();
    [
        (differs(!a.model.is_empty(), a.model == s.models), "--model"),
        (differs(!a.tasks.is_empty(), tasks == s.tasks), "--tasks"),
        (
            differs(!a.suite.is_empty(), a.suite == s.suite_files),
            "--suite",
        ),
        (
            differs(
                a.registry.models.is_some(),
                a.registry.models == s.models_file,
            ),
            "--models",
        ),
        (
            differs(a.data_dir.is_some(), a.data_dir == s.data_dir),
            "--data-dir",
        ),
        (differs(a.limit.is_some(), a.limit == s.limit), "--limit"),
        (
            differs(a.num_fewshot.is_some(), a.num_fewshot == s.num_fewshot),
            "--num-fewshot",
        ),
        (differs(a.dtype.is_some(), a.dtype == s.dtype), "--dtype"),
        (differs(a.shard.is_some(), a.shard == s.shard), "--shard"),
        (
            differs(a.apply_chat_template, s.apply_chat_template),
            "--apply-chat-template",
        ),
        (
            differs(a.fewshot_as_multiturn, s.fewshot_as_multiturn),
            "--fewshot-as-multiturn",
        ),
        (
            differs(
                a.system_instruction.is_some(),
                a.system_instruction == s.system_instruction,
            ),
            "--system-instruction",
        ),
        (differs(a.out.is_some(), false), "--out"),
        (differs(a.force, false), "--force"),
        (
            a.seed != s.seed && a.seed != crate::task::DEFAULT_FEWSHOT_SEED,
            "--seed",
        ),
        (
            a.bootstrap_iters != s.bootstrap_iters && a.bootstrap_iters != 1000,
            "--bootstrap-iters",
        ),
        (
            a.cpu_watts != s.cpu_watts
                && a.cpu_watts != crate::measure::energy::DEFAULT_CPU_WATTS_PER_CORE,
            "--cpu-watts",
        ),
        (
            a.grid_intensity != s.grid_g_per_kwh
                && a.grid_intensity != crate::measure::energy::DEFAULT_GRID_G_PER_KWH,
            "--grid-intensity",
        ),
        (
            a.pack_tokens != s.pack_tokens && a.pack_tokens != crate::backend::DEFAULT_PACK_TOKENS,
            "--pack-tokens",
        ),
    ]
    .into_iter()
    .find_map(|(bad, flag)| bad.then_some(flag))
}
