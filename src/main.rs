//! The `slmbench` binary: parse, run, map the outcome to an exit code
//! (0 ok, 2 error). Errors print once, on one line, with their context.

use clap::Parser;

/// mimalloc keeps freed pages for the next allocation of their size; with
/// the system allocator every forward's large activations (18 MiB for one
/// of Qwen2.5-1.5B's MLP outputs at 512 tokens) came back as fresh pages
/// from the kernel, and their page faults were ~5% of a prefill's cycles.
/// Built without transparent huge pages (`no_thp`): with them the Gemma 3
/// workload's peak RSS went past its bound (518 MiB) for no speed.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = slmbench::cli::Cli::parse();
    let code = match slmbench::cli::main_with(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", slmbench::cli::error_line(&e));
            2
        }
    };
    std::process::exit(code);
}
