//! What a built-in service is, as one value the gateway can run and stop in order.
//!
//! A [`Service`] carries its name, its routes (an `axum::Router` whose routes have their full
//! paths), the background tasks it started (through its [`Background`], never a bare
//! `tokio::spawn`), the checks that say whether it can serve ([`Readiness`]) and two hooks:
//!
//! - `drain`: stop taking new work and give back what was taken (job consumers requeue,
//!   agents stop starting instances). Called when the gateway stops accepting connections,
//!   while in-flight requests still run.
//! - `stop`: release everything (children, stores, connections). Called once in-flight
//!   requests have ended or `drain_timeout` passed; then the service's background tasks are
//!   cancelled and awaited.
//!
//! Services depend on this crate, not on the gateway; the gateway depends on it too and runs
//! what services hand it. The crate also holds what both sides share: the gateway's JSON
//! error answer ([`error_response`]), per-request metric labels that cannot grow without
//! bound ([`Label`]), the data directory as an open handle ([`DataDir`]) that keeps
//! working after Portico switched to an unprivileged user, and what the gateway attaches to
//! each request ([`RequestId`], [`ClientTls`]) or fails its body with ([`BodyTooLarge`]).

#![forbid(unsafe_code)]

mod answer;
mod background;
mod data_dir;
mod label;
mod readiness;
mod request_info;
mod value;

pub use answer::{error_response, json_response, json_string};
pub use background::Background;
pub use data_dir::{DataDir, DataDirError};
pub use label::{Label, RouteLabel, MAX_LABELS};
pub use readiness::{Problem, Readiness};
pub use request_info::{BodyTooLarge, ClientFacts, ClientTls, RequestId};
pub use value::{Direct, DirectFuture, Hook, MetricsText, Service};
