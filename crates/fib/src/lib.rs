//! Fib service: `GET /fib/<n>` answers the first N Fibonacci numbers, streamed.
//! See `shared/specs/fib.md`.

use serde::Deserialize;

/// Largest N served by default.
pub const DEFAULT_LIMIT: u64 = 100_000;

/// The `[fib]` section of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Largest N served.
    pub limit: u64,
    /// Remote back ends (`host:port`); empty computes in process.
    pub backends: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limit: DEFAULT_LIMIT,
            backends: Vec::new(),
        }
    }
}

impl Config {
    /// Every problem with this section, each naming its key (`fib.limit: ...`).
    pub fn validate(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Errors opening the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("fib back end {0}")]
    Backend(String),
}

/// The running service.
pub struct FibService {}

impl FibService {
    /// Builds the service (cache, back-end client when back ends are configured).
    pub fn open(_config: &Config) -> Result<Self, Error> {
        Ok(FibService {})
    }

    /// The routes this service owns, with their full paths (`/fib/...`).
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
    }
}
