//! Region service: answers `GET /regionInfo` with the update servers of the client's region,
//! a drop-in replacement for SUSE's cloud region server (see `shared/specs/region.md`).
//!
//! The way a request travels: [`client`] finds the hint and the client address, the current
//! [`RegionData`] (swapped atomically on reload) picks the region by name or by the longest
//! prefix in its [`prefix`] tables, and [`xml`] writes the answer from lines rendered at load.
//! Loading goes [`ini`] (the Python `RawConfigParser` dialect) -> [`data`] (regions, pairing
//! rules, every start-up error).

#![forbid(unsafe_code)]

pub mod client;
mod config;
pub mod data;
pub mod ini;
pub mod legacy;
pub mod net;
pub mod prefix;
mod service;
pub mod watch;
pub mod xml;

pub use config::{Config, DEFAULT_WATCH_INTERVAL_SECS};
pub use data::{BuildOptions, DataError, DataProblem, Region, RegionData, Server};
pub use service::{Error, RegionService, Summary, ALLOW, NOT_FOUND, PATH};
