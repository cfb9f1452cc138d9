//! Wires the messages service.

use std::path::Path;

/// Opens the messages service and returns its routes.
pub async fn mount(config: &messages::Config, data_dir: &Path) -> anyhow::Result<axum::Router> {
    let service = messages::MessagesService::open(config, data_dir).await?;
    Ok(service.router())
}
