//! Messages service: `POST /messages` stores a message and answers its SHA-256 digest,
//! `GET /messages/<digest>` answers the message. See `shared/specs/messages.md`.
//!
//! The service knows nothing of which store it holds (`store::AnyStore`).

use std::path::Path;

use serde::Deserialize;

/// The `[messages]` section of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `"embedded"` or `"redis://host:port/db"`.
    pub store: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store: "embedded".to_string(),
        }
    }
}

impl Config {
    /// Every problem with this section, each naming its key (`messages.store: ...`).
    pub fn validate(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Errors opening the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("messages store: {0}")]
    Store(String),
}

/// The running service: owns its store.
pub struct MessagesService {}

impl MessagesService {
    /// Opens the configured store (embedded stores live in `data_dir`).
    pub async fn open(_config: &Config, _data_dir: &Path) -> Result<Self, Error> {
        Ok(MessagesService {})
    }

    /// The routes this service owns, with their full paths (`/messages...`).
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
    }
}
