//! The `Broker` seam: how a submitted job reaches a worker, and how its states come back.
//!
//! A broker is handed the job records at open and keeps every job's record up to date; the
//! facade reads records, never the broker's internals. Two brokers fit this seam:
//!
//! - [`EmbeddedBroker`] (this issue): durable per-service queues in `jobs.redb`, dispatch
//!   from memory to local slots and remote long-pollers, leases, redelivery.
//! - [`AmqpBroker`] (issue 11): `submit` stores the record then publishes a Celery message
//!   with publisher confirms; a background task reads states from the result backend and
//!   applies them to the records as [`crate::Change::External`]; `cancel` applies
//!   `Change::Revoke` and broadcasts a pidbox revoke; `active_workers` asks pidbox. Its
//!   workers are Celery processes, or `portico worker --broker`, whose consumer is a
//!   [`crate::runner::JobSource`] like the embedded broker's local source, so the same
//!   conformance suite (`crate::conformance::broker`) drives both.
//!
//! Dispatch goes through the closed enum [`AnyBroker`]; the remote pull API
//! (`lease`/`renew`/`progress`/`finish`) exists only on the embedded broker.

pub mod amqp;
pub mod embedded;

use std::future::Future;

pub use amqp::AmqpBroker;
pub use embedded::{EmbeddedBroker, LocalSource};

use crate::{Error, Job, JobId};

/// What every broker does.
pub trait Broker: Send + Sync + 'static {
    /// Stores the record and queues the job; `Ok` only once both are durable (embedded:
    /// fsync'd; AMQP: confirmed by the broker). Returns the stored record.
    fn submit(&self, job: Job) -> impl Future<Output = Result<Job, Error>> + Send;

    /// Revokes: a queued job never starts, a running one is stopped (its process group
    /// killed). Returns the record as it is after the revoke (a job that was final already
    /// keeps its state); `None`: no such job.
    fn cancel(&self, id: JobId) -> impl Future<Output = Result<Option<Job>, Error>> + Send;

    /// Workers consuming the service's queue now (CANARIE `activeWorkers`).
    fn active_workers(&self, service: &str) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Jobs waiting for a worker.
    fn depth(&self, service: &str) -> usize;

    /// Stop handing out jobs (consumers see the end of their source).
    fn drain(&self);
}

/// The brokers Portico has.
#[derive(Debug, Clone)]
pub enum AnyBroker {
    Embedded(EmbeddedBroker),
    Amqp(AmqpBroker),
}

impl Broker for AnyBroker {
    async fn submit(&self, job: Job) -> Result<Job, Error> {
        match self {
            AnyBroker::Embedded(broker) => broker.submit(job).await,
            AnyBroker::Amqp(broker) => broker.submit(job).await,
        }
    }

    async fn cancel(&self, id: JobId) -> Result<Option<Job>, Error> {
        match self {
            AnyBroker::Embedded(broker) => broker.cancel(id).await,
            AnyBroker::Amqp(broker) => broker.cancel(id).await,
        }
    }

    async fn active_workers(&self, service: &str) -> Result<usize, Error> {
        match self {
            AnyBroker::Embedded(broker) => broker.active_workers(service).await,
            AnyBroker::Amqp(broker) => broker.active_workers(service).await,
        }
    }

    fn depth(&self, service: &str) -> usize {
        match self {
            AnyBroker::Embedded(broker) => Broker::depth(broker, service),
            AnyBroker::Amqp(broker) => Broker::depth(broker, service),
        }
    }

    fn drain(&self) {
        match self {
            AnyBroker::Embedded(broker) => Broker::drain(broker),
            AnyBroker::Amqp(broker) => Broker::drain(broker),
        }
    }
}
