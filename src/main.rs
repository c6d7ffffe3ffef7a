//! The `slmbench` binary: parse, run, map the outcome to an exit code
//! (0 ok, 2 error). Errors print once, on one line, with their context.

use clap::Parser;

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
