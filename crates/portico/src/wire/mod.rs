//! Wiring of each built-in service into the gateway: one file per service, so the service's
//! owner changes only its own file. `build` opens every service the config enables.

pub mod fib;
pub mod jobs;
pub mod messages;
pub mod region;

use anyhow::Context;
use service::{DataDir, Readiness};

use crate::config::Config;

/// Names of the built-in services a listener may mount (besides `*`).
pub const SERVICE_NAMES: &[&str] = &["admin", "fib", "messages", "region"];

/// Opens the services that at least one listener mounts.
pub async fn build(
    config: &Config,
    data_dir: &DataDir,
    readiness: &Readiness,
) -> anyhow::Result<gateway::Services> {
    let mut services = gateway::Services::new();
    if mounted(config, "messages") {
        let service = messages::mount(&config.messages, data_dir, readiness)
            .await
            .context("messages service")?;
        services.insert(service);
    }
    if mounted(config, "region") {
        services.insert(
            region::mount(&config.region)
                .await
                .context("region service")?,
        );
    }
    if mounted(config, "fib") {
        services.insert(fib::mount(&config.fib).await.context("fib service")?);
    }
    Ok(services)
}

/// Whether any listener mounts `name` (by name or `*`).
pub fn mounted(config: &Config, name: &str) -> bool {
    config
        .listeners
        .iter()
        .any(|l| l.services.iter().any(|s| s == "*" || s == name))
}
