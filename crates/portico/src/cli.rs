//! Command-line flags (see `shared/specs/config.md`). Unknown options and bad values exit
//! with status 2 and a message naming the option (clap's behaviour).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "portico",
    version,
    about = "Fronts, runs and scales small REST services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway with its services (embedded defaults without --config).
    Serve {
        /// Config file (TOML); see portico.example.toml.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Write a self-signed certificate for pinned clients: HOST.crt, HOST.key, HOST.pem.
    Cert(crate::cert::CertArgs),
    /// Probe a running Portico end to end (exit 0 healthy, 1 otherwise).
    Check(crate::check_cmd::CheckArgs),
    /// The region server's legacy entry point (regionInfo -f -l -r).
    Regioninfo(crate::wire::region::LegacyArgs),
    /// Serve the fib back-end wire protocol on TCP.
    FibBackend(crate::wire::fib::BackendArgs),
    /// Print a JWT the job API accepts (as the original's `python -m VestaRestPackage.jwt_`).
    Token(crate::wire::jobs::TokenArgs),
    /// Run a service's jobs on this machine, pulled from a gateway.
    Worker(crate::wire::worker::WorkerArgs),
    /// Convert an original system's config to Portico's TOML.
    #[command(subcommand)]
    Migrate(crate::wire::migrate::MigrateCommand),
    /// This host's agent: starts, watches and stops service instances (see `[manager]`).
    #[command(alias = "allocator")]
    Agent(crate::manager::agent_cmd::AgentArgs),
    /// The service catalog: list, add or remove services.
    Services(crate::manager::services_cmd::ServicesArgs),
    /// The original proxy's entry point: PORT [SERVICE IP[:PORT]] (see `[proxy]`).
    Proxy(crate::proxy_cmd::ProxyArgs),
}
