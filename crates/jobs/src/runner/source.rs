//! The job-source seam: where a runner's slots get jobs and where their reports go.
//!
//! One runner serves every kind of worker; only the source differs:
//! - local slots of `portico serve`: the embedded broker's [`crate::broker::LocalSource`];
//! - `portico worker --gateway`: an HTTP client of the gateway's pull API (long-poll lease,
//!   renewals, progress and result uploads), written in `jobs-api` against this trait;
//! - `portico worker --broker amqp://` (issue 11): a Celery consumer.

use std::future::Future;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{Error, Job, LeaseId, Outcome};

/// A job handed to a slot.
#[derive(Debug, Clone)]
pub struct Task {
    /// The job as the run starts (STARTED; `attempts` counts this run).
    pub job: Job,
    pub lease: LeaseId,
    /// Cancelled when the job must stop: revoked, or the lease was lost. The runner then
    /// kills the command's process group.
    pub stop: CancellationToken,
}

/// Where a runner's jobs come from.
pub trait JobSource: Send + Sync + 'static {
    /// The next job for the slot `worker`; waits for one. `Ok(None)`: the source is closed
    /// (draining), the slot ends. Errors are retried by the slot after a pause.
    fn next(&self, worker: &str) -> impl Future<Output = Result<Option<Task>, Error>> + Send;

    /// A progress report (may be stored lazily: progress is not worth an fsync).
    fn progress(
        &self,
        task: &Task,
        percent: u8,
        meta: Value,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The run ended. Final states are stored durably before anyone can read them; the
    /// source decides whether this call waits for that.
    fn finish(
        &self,
        task: &Task,
        outcome: Outcome,
        log: String,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The run was stopped unfinished because Portico is stopping: give the job back
    /// without counting the attempt.
    fn release(&self, task: &Task) -> impl Future<Output = Result<(), Error>> + Send;
}
