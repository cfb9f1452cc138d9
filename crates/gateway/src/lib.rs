//! Gateway core: listeners (TCP, TLS with HTTP/1.1 and HTTP/2), the middleware every request
//! passes (request id, limits, access log, metrics), the router that mounts built-in services
//! by name, the admin service, logs with size rotation, graceful shutdown and privilege drop.
//!
//! The gateway knows no service: the binary hands it `Services`, a map from name to
//! `axum::Router` whose routes carry their full paths.

mod access_log;
pub mod app;
mod body_limit;
pub mod certs;
pub mod config;
mod connection;
pub mod logging;
mod middleware;
pub mod privilege;
mod request;
pub mod request_metrics;
pub mod rotate;
pub mod server;
mod stream;
pub mod tls;
mod watchdog;

use std::path::PathBuf;

pub use app::Services;
pub use body_limit::BodyTooLarge;
pub use config::{GatewayConfig, LimitsConfig, ListenerConfig, LogConfig, TlsConfig};
pub use middleware::RequestId;
pub use server::{Gateway, ListenerInfo};

/// Name of the admin service (`/readyz`, `/metrics`); `/healthz` is on every listener.
pub const ADMIN: &str = "admin";

/// Errors of the gateway. Each prints its cause and exposes none as `source()`, so a chain
/// printed with `{:#}` names it once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("binding {addr}: {error}")]
    Bind { addr: String, error: std::io::Error },
    #[error("TLS {path}: {problem}")]
    Tls { path: PathBuf, problem: String },
    #[error(transparent)]
    Privilege(#[from] privilege::PrivilegeError),
    #[error("logging: {0}")]
    Logging(String),
}
