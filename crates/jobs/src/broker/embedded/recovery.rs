//! Redelivery after a restart: every job still in the durable queue runs again.
//!
//! A job leaves the queue only in the transaction that makes its record final, so after a
//! crash (SIGKILL, power loss) the queue holds exactly the jobs that still owe a result.
//! For each: a final record (possible with Redis records, stored before the queue entry was
//! removed) drops the entry; a record that says a run was under way is a lost run
//! ([`Change::Requeue`]: RETRY, or FAILURE "worker lost" once `max_attempts` runs were
//! made); the rest go back to their service's ready queue in submission order.

use std::sync::Arc;

use tokio::time::Instant;

use super::{Inner, Queued};
use crate::records::Op;
use crate::{Change, Error, Job, JobId};

/// The reason a run under way at the last stop is recorded with.
pub(crate) const RESTART_REASON: &str = "Portico stopped while the job ran";

pub(super) async fn recover(inner: &Arc<Inner>) -> Result<(), Error> {
    let entries = inner.db.queued().await?;
    if entries.is_empty() {
        return Ok(());
    }
    let ids = entries.iter().map(|(_, id)| *id).collect();
    let records = inner.records.get_many(ids).await?;
    let mut dequeue = Vec::new();
    let mut ready: Vec<Job> = Vec::new();
    let mut lost: Vec<(JobId, Change)> = Vec::new();
    for ((service, id), record) in entries.into_iter().zip(records) {
        let Some(max_attempts) = inner.services.get(&service).map(|s| s.max_attempts) else {
            tracing::warn!(job = %id, %service, "a queued job's service is no longer configured; it stays queued");
            continue;
        };
        match record {
            None => dequeue.push((service, id)),
            Some(job) if job.state.is_final() => dequeue.push((service, id)),
            Some(job) if job.state.is_running() => {
                let change = Change::Requeue {
                    reason: RESTART_REASON.into(),
                    max_attempts,
                    log: String::new(),
                };
                lost.push((job.id, change));
            }
            Some(job) => ready.push(job),
        }
    }
    let lost_count = lost.len();
    for applied in inner.records.apply(lost).await?.into_iter().flatten() {
        if applied.job.state.is_final() {
            if !inner.records_local {
                dequeue.push((applied.job.service.clone(), applied.job.id));
            }
        } else {
            ready.push(applied.job);
        }
    }
    ready.sort_by_key(|job| job.id);
    let requeued = ready.len();
    let now = Instant::now();
    for job in ready {
        if let Some(service) = inner.services.get(&job.service) {
            service.queue.push_back(Queued { job, since: now });
        }
    }
    if !dequeue.is_empty() {
        inner.db.write(Op::Dequeue { entries: dequeue }).await?;
    }
    tracing::info!(
        requeued,
        lost = lost_count,
        "jobs queued before the restart are queued again"
    );
    Ok(())
}
