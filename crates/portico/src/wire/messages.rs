//! Wires the messages service.

use service::{DataDir, Readiness, Service};

/// Opens the messages service (its embedded store in the data directory).
pub async fn mount(
    config: &messages::Config,
    data_dir: &DataDir,
    _readiness: &Readiness,
) -> anyhow::Result<Service> {
    let service = messages::MessagesService::open(config, data_dir.path()).await?;
    Ok(Service::new("messages", service.router()))
}
