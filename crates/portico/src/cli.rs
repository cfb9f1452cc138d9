//! Command-line flags (see `shared/specs/config.md`). Unknown options exit with status 2.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "portico", version, about = "Fronts, runs and scales small REST services")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway with its services.
    Serve {
        /// Config file (TOML). Without it: embedded defaults.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// The region server's legacy entry point (`regionInfo -f -l -r`).
    Regioninfo(crate::wire::region::LegacyArgs),
    /// Serve the fib back-end wire protocol on TCP.
    FibBackend(crate::wire::fib::BackendArgs),
}
