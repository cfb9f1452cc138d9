//! The job queue's core: what a job is, where its record lives, how it reaches a worker and
//! how a worker runs it. No HTTP here: `jobs-api` builds the ServiceGateway API on [`Jobs`].
//!
//! - [`model`]: ids, states, the record and the one state machine all stores apply.
//! - [`config`]: `[jobs]`, validated.
//! - [`Error`]: one error type, with whether a retry can help.

#![forbid(unsafe_code)]

pub mod broker;
pub mod capacity;
pub mod config;
pub mod conformance;
mod error;
mod facade;
mod hub;
pub mod model;
pub mod records;
pub mod runner;

pub use config::JobsConfig;
pub use error::Error;
pub use facade::{Jobs, OpenOptions};
pub use model::{
    Change, Failure, Invocations, Job, JobId, Lease, LeaseId, LeaseStatus, ListFilter, Outcome,
    State,
};
