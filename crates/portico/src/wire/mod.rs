//! Wiring of each built-in service into the gateway: one file per service, so the service's
//! owner changes only its own file. `build` opens every service the config enables.

pub mod fib;
pub mod messages;
pub mod region;

use std::path::Path;

use anyhow::Context;

use crate::config::Config;

/// Names of the built-in services a listener may mount (besides `*`).
pub const SERVICE_NAMES: &[&str] = &["admin", "fib", "messages", "region"];

/// Opens the services that at least one listener mounts.
pub async fn build(config: &Config, data_dir: &Path) -> anyhow::Result<gateway::Services> {
    let mut services = gateway::Services::new();
    if mounted(config, "messages") {
        let router = messages::mount(&config.messages, data_dir)
            .await
            .context("messages service")?;
        services.insert("messages", router);
    }
    if mounted(config, "region") {
        services.insert(
            "region",
            region::mount(&config.region)
                .await
                .context("region service")?,
        );
    }
    if mounted(config, "fib") {
        services.insert("fib", fib::mount(&config.fib).await.context("fib service")?);
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
