//! Wires the fib service and the `fib-backend` mode.

use std::process::ExitCode;

/// Flags of `portico fib-backend`.
#[derive(Debug, clap::Args)]
pub struct BackendArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:2003")]
    pub listen: String,
}

/// Builds the fib service and returns its routes.
pub async fn mount(config: &fib::Config) -> anyhow::Result<axum::Router> {
    let service = fib::FibService::open(config)?;
    Ok(service.router())
}

/// `portico fib-backend`.
pub fn backend_main(_args: BackendArgs) -> ExitCode {
    ExitCode::FAILURE
}
