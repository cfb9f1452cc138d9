//! Fib service: `GET /fib/<n>` answers the first N Fibonacci numbers, exact, streamed. See
//! `shared/specs/fib.md` and `docs/fib.md`.
//!
//! Code map, from the numbers up:
//! - [`decimal`]: base-10^18 limb integers (addition, fast decimal formatting);
//! - [`length`]: digit counts known up front, for exact lengths before streaming;
//! - [`text`]: the text of a range of numbers as chunks, produced on a blocking thread;
//! - [`cache`]: the shared, budgeted cache of the first K numbers' text, grown one at a time;
//! - [`parse`]: strict parsing of N;
//! - [`service`], [`body`], [`error`]: the REST face;
//! - [`protocol`], [`server`]: the original back-end wire protocol and `fib-backend`;
//! - [`client`], [`backend`], [`reply_cache`]: the REST tier's pooled client of back ends,
//!   choosing among them with the `balance` crate (peak-EWMA latency, power of two choices,
//!   ejection with backoff).
#![forbid(unsafe_code)]

pub mod backend;
pub mod body;
pub mod cache;
pub mod client;
mod config;
pub mod decimal;
pub mod error;
pub mod length;
pub mod metrics;
pub mod parse;
pub mod protocol;
pub mod reply_cache;
pub mod server;
pub mod service;
pub mod text;

pub use cache::FibCache;
pub use config::{
    Config, DEFAULT_BACKEND_TIMEOUT, DEFAULT_CACHE_BYTES, DEFAULT_CLIENT_CACHE_BYTES,
    DEFAULT_LIMIT, DEFAULT_POOL_SIZE,
};
pub use server::{serve as serve_backend, ServerOptions};
pub use service::FibService;

/// Errors opening the service or the back-end server. Each prints its cause and exposes none
/// as `source()`, so a chain printed with `{:#}` names it once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid [fib] config: {0}")]
    Config(String),
    #[error("fib-backend cannot listen on {address}: {error}")]
    Bind {
        address: String,
        error: std::io::Error,
    },
}
