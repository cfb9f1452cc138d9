//! Wires the messages service.

use std::path::Path;

use anyhow::Context;
use cap_std::fs::Dir;

/// Opens the messages service and returns its routes.
pub async fn mount(config: &messages::Config, data_dir: &Path) -> anyhow::Result<axum::Router> {
    // Opened here, by path, after the privilege drop; `serve` is to hand over the handle it
    // opens before the drop instead (issue 9, finding 1).
    let dir = Dir::open_ambient_dir(data_dir, cap_std::ambient_authority())
        .with_context(|| format!("opening data_dir {}", data_dir.display()))?;
    let service = messages::MessagesService::open(config, &dir).await?;
    Ok(service.router())
}
