//! The job queue's core: what a job is, where its record lives, how it reaches a worker and
//! how a worker runs it. No HTTP here: `jobs-api` builds the ServiceGateway and modern APIs
//! on [`Jobs`]; `docs/jobs.md` explains the design (states, leases, why nothing
//! acknowledged is lost and no result is stored twice).
//!
//! - [`model`]: ids, states, the record and the one state machine all stores apply.
//! - [`config`]: `[jobs]`, validated.
//! - [`records`]: the job records seam (embedded `jobs.redb`, Redis).
//! - [`broker`]: the `Broker` seam and the embedded broker.
//! - [`runner`]: local worker slots running a service's command, fed by a `JobSource`.
//! - [`capacity`]: what each service needs (`GET /jobs/capacity`, gauges, autoscaling).
//! - [`conformance`]: the suites every records store and broker must pass.
//! - [`workflow`]: simple workflows, chains of services driven from their records.
//! - [`Jobs`]: the facade, and [`Error`], one error type saying whether a retry can help.
//!
//! Wiring (what `portico serve` does):
//!
//! ```ignore
//! let config = raw_jobs_config.validate()?;              // every problem, each naming its key
//! let background = service::Background::new("jobs");
//! let jobs = jobs::Jobs::open(&config, &data_dir, &background, &readiness).await?;
//! let service = service::Service::new("jobs", router(jobs.clone()))
//!     .with_background(background)
//!     .on_drain({ let jobs = jobs.clone(); move || async move { jobs.drain().await } })
//!     .on_stop(move || async move { jobs.stop().await });
//! ```

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
pub mod workflow;

pub use broker::amqp::events::CeleryWorker;
pub use broker::embedded::WorkerInfo;
pub use capacity::ServiceCapacity;
pub use config::JobsConfig;
pub use error::Error;
pub use facade::{Jobs, OpenOptions, ServiceTotals};
pub use model::{
    Change, Failure, Invocations, Job, JobId, Lease, LeaseId, LeaseStatus, ListFilter, Outcome,
    State,
};
