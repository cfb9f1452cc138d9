//! `portico migrate servicegateway`: the original's Python config module to `[jobs]` TOML
//! (the work is in `jobs_api::migrate`).

use std::path::PathBuf;

use anyhow::Context as _;

/// What `portico migrate` reads.
#[derive(Debug, clap::Subcommand)]
pub enum MigrateCommand {
    /// The CRIM ServiceGateway's Python config module (the file VRP_CONFIGURATION named):
    /// writes the equivalent [jobs] TOML, with a comment for each key it could not carry over.
    Servicegateway(MigrateArgs),
}

/// Flags of `portico migrate servicegateway`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The config module (python3 runs it once)
    #[arg(value_name = "CONF.py")]
    pub module: PathBuf,
    /// Write the TOML here instead of standard output
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `portico migrate ...`.
pub fn migrate(command: MigrateCommand) -> anyhow::Result<()> {
    let MigrateCommand::Servicegateway(args) = command;
    let names = jobs_api::migrate::load_module(&args.module)?;
    let toml = jobs_api::migrate::translate(&names, &args.module.display().to_string());
    match &args.output {
        Some(path) => {
            std::fs::write(path, toml).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{toml}"),
    }
    Ok(())
}
