//! Messages service: `POST /messages` stores a message and answers its SHA-256 digest,
//! `GET /messages/<digest>` answers the message. See `shared/specs/messages.md` and
//! `docs/messages.md`.
//!
//! The service knows nothing of which store it holds (`store::AnyStore`); [`MessagesService::open`]
//! picks one from the config ([`config`] documents the precedence).

#![forbid(unsafe_code)]

pub mod config;
mod request;
mod response;
mod routes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use store::{AnyStore, EmbeddedStore, RedisStore};

pub use config::{Config, StoreChoice, REDIS_HOST_ENV};
pub use response::ApiError;

/// File name of the embedded store inside the data directory.
pub const EMBEDDED_FILE: &str = "messages.redb";

/// Errors opening the service. Each prints its cause and exposes none as `source()`, so a
/// chain printed with `{:#}` names it once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid [messages] config: {0}")]
    Config(String),
    #[error("creating data directory {path}: {error}")]
    DataDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("opening the message store: {0}")]
    Store(store::StoreError),
}

impl From<store::StoreError> for Error {
    fn from(error: store::StoreError) -> Self {
        Error::Store(error)
    }
}

/// The running service: owns its store.
#[derive(Debug, Clone)]
pub struct MessagesService {
    app: Arc<routes::App>,
}

impl MessagesService {
    /// Opens the configured store (the embedded one lives in `data_dir/messages.redb`).
    /// A Redis that is down at start is not fatal: requests answer 503 until it is up.
    pub async fn open(config: &Config, data_dir: &Path) -> Result<Self, Error> {
        let store = match config.store_choice().map_err(Error::Config)? {
            StoreChoice::Embedded => {
                AnyStore::Embedded(open_embedded(data_dir, config.cache_bytes).await?)
            }
            StoreChoice::Redis { url, from_env } => {
                AnyStore::Redis(open_redis(config, url, from_env).await?)
            }
        };
        Ok(Self::with_store(store, config))
    }

    /// The service over a store the caller opened (tests, or wiring of its own).
    pub fn with_store(store: AnyStore, config: &Config) -> Self {
        let app = routes::App {
            store,
            max_body_bytes: config.max_body_bytes,
        };
        MessagesService { app: Arc::new(app) }
    }

    /// The store this service holds.
    pub fn store(&self) -> &AnyStore {
        &self.app.store
    }

    /// The routes this service owns, with their full paths (`/messages...`).
    pub fn router(&self) -> axum::Router {
        routes::router(Arc::clone(&self.app))
    }
}

async fn open_embedded(data_dir: &Path, cache_bytes: usize) -> Result<EmbeddedStore, Error> {
    std::fs::create_dir_all(data_dir).map_err(|error| Error::DataDir {
        path: data_dir.to_path_buf(),
        error,
    })?;
    let path = data_dir.join(EMBEDDED_FILE);
    let store = EmbeddedStore::open(&path, cache_bytes).await?;
    tracing::info!(path = %path.display(), "messages: embedded store");
    Ok(store)
}

async fn open_redis(config: &Config, url: String, from_env: bool) -> Result<RedisStore, Error> {
    let source = if from_env {
        REDIS_HOST_ENV
    } else {
        "messages.store"
    };
    let store = RedisStore::new(&config.redis_options(url))?;
    match store.ping().await {
        Ok(()) => tracing::info!(?store, source, "messages: Redis store"),
        Err(error) => {
            tracing::warn!(?store, source, %error, "messages: Redis not reachable yet; answering 503 until it is")
        }
    }
    Ok(store)
}
