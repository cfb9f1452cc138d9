//! `portico`: the command line. Parses flags and hands each subcommand to its module; the
//! wiring of services lives in `wire/`, the work in the library crates.

mod cli;
mod wire;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Regioninfo(args) => wire::region::legacy_main(args),
        cli::Command::FibBackend(args) => wire::fib::backend_main(args),
        _ => std::process::ExitCode::SUCCESS,
    }
}
