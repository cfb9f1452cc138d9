//! Region service: answers `GET /regionInfo` with the update servers of the client's region.
//! See `shared/specs/region.md`.

use std::path::PathBuf;

use serde::Deserialize;

/// The `[region]` section of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Path of `regionData.cfg`. Without it the service holds no regions and answers 404.
    pub data: Option<PathBuf>,
}

impl Config {
    /// Every problem with this section, each naming its key (`region.data: ...`).
    pub fn validate(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Errors opening the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("region data: {0}")]
    Data(String),
}

/// The running service: owns the current region data.
pub struct RegionService {}

impl RegionService {
    /// Loads and validates the region data.
    pub fn open(_config: &Config) -> Result<Self, Error> {
        Ok(RegionService {})
    }

    /// The routes this service owns, with their full paths (`/regionInfo`).
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
    }
}
