//! `portico`: one program that fronts, runs and scales small REST services. This file only
//! parses the command line and hands each subcommand to its module; the work is in the
//! library crates, the wiring of services in `wire/`.

mod cert;
mod check_cmd;
mod cli;
mod config;
mod manager;
mod proxy_cmd;
mod serve;
mod wire;

use std::process::ExitCode;

use clap::Parser;

// glibc malloc was ~15% of the gateway's CPU under load (bench/gateway). Without the
// `mimalloc` feature the system allocator is used (less memory, see Cargo.toml).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Serve { config } => report(serve::run(config.as_deref())),
        cli::Command::Cert(args) => report(cert::run(args)),
        cli::Command::Check(args) => match check_cmd::run(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(error) => report(Err(error)),
        },
        cli::Command::Regioninfo(args) => wire::region::legacy_main(args),
        cli::Command::FibBackend(args) => wire::fib::backend_main(args),
        cli::Command::Worker(args) => report(wire::worker::run(args)),
        cli::Command::Token(args) => report(wire::jobs::token(args)),
        cli::Command::Migrate(command) => report(wire::migrate::migrate(command)),
        cli::Command::Agent(args) => report(manager::agent_cmd::run(args)),
        cli::Command::Services(args) => report(manager::services_cmd::run(args)),
        cli::Command::Proxy(args) => report(proxy_cmd::run(args)),
    }
}

/// Exit 0 on success; on failure print the error with its causes and exit 1.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("portico: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
