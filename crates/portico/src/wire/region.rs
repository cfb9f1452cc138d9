//! Wires the region service, its reloads and the legacy `regioninfo` entry point.

use std::process::ExitCode;

/// Flags of the original region server (`-f -l -r -h`) plus Portico's listener options.
#[derive(Debug, clap::Args)]
pub struct LegacyArgs {
    /// Service config file (regionInfo.cfg).
    #[arg(
        short = 'f',
        long = "file",
        default_value = "/etc/regionService/regionInfo.cfg"
    )]
    pub file: std::path::PathBuf,
}

/// Opens the region service and returns its routes.
pub async fn mount(config: &region::Config) -> anyhow::Result<axum::Router> {
    let service = region::RegionService::open(config)?;
    Ok(service.router())
}

/// `portico regioninfo`.
pub fn legacy_main(_args: LegacyArgs) -> ExitCode {
    ExitCode::FAILURE
}
