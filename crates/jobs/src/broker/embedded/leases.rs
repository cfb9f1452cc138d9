//! The lease reaper: remote runs whose lease ran out go back to the queue (RETRY, or FAILURE
//! past `max_attempts`); with shared (Redis) records, runs whose job was made final through
//! another gateway are stopped.

use std::time::Duration;

use tokio::time::Instant;

use super::writer::Then;
use super::Inner;
use crate::{Change, JobId, LeaseId};

/// Requeues the jobs of remote leases that ran out.
/// With shared (Redis) records: how often the records of the runs under way are read, so a
/// job cancelled through another gateway is stopped here.
const SHARED_CANCEL_CHECK: Duration = Duration::from_secs(2);

pub(super) async fn reap(inner: std::sync::Weak<Inner>) {
    let mut last_shared_check = Instant::now();
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let period = (strong.lease / 4).max(Duration::from_millis(100));
        if !strong.records_local && last_shared_check.elapsed() >= SHARED_CANCEL_CHECK {
            last_shared_check = Instant::now();
            strong.stop_runs_ended_elsewhere().await;
        }
        let expired = strong.expired(Instant::now());
        for (id, lease, service) in expired {
            tracing::warn!(job = %id, %service, "lease ran out (the worker stopped renewing); running the job again");
            let max_attempts = strong.services.get(&service).map_or(1, |s| s.max_attempts);
            let change = Change::Requeue {
                reason: "the worker stopped renewing its lease".into(),
                max_attempts,
                log: String::new(),
            };
            strong.write(id, change, Then::Requeue(Some(lease))).await;
        }
        drop(strong);
        tokio::time::sleep(period).await;
    }
}

impl Inner {
    /// Stops the runs whose job is final in the (shared) records: cancelled, or finished,
    /// through another gateway.
    async fn stop_runs_ended_elsewhere(&self) {
        let ids: Vec<JobId> = self.flights().by_job.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let records = match self.records.get_many(ids.clone()).await {
            Ok(records) => records,
            Err(error) => {
                tracing::debug!(%error, "reading the records of the runs under way failed");
                return;
            }
        };
        let flights = self.flights();
        for (id, record) in ids.iter().zip(records) {
            if record.is_some_and(|job| job.state.is_final()) {
                if let Some(flight) = flights.by_job.get(id) {
                    flight.stop.cancel();
                }
            }
        }
    }

    /// Remote runs whose lease ran out by `now`; their leases stop being renewable at once.
    fn expired(&self, now: Instant) -> Vec<(JobId, LeaseId, String)> {
        let mut flights = self.flights();
        let expired: Vec<(JobId, LeaseId, String)> = flights
            .by_job
            .iter()
            .filter(|(_, f)| f.expires.is_some_and(|at| at <= now))
            .map(|(id, f)| (*id, f.lease, f.service.clone()))
            .collect();
        for (id, _, _) in &expired {
            if let Some(flight) = flights.by_job.get_mut(id) {
                // Kept until the requeue is stored (so the job is not taken twice), but no
                // longer renewable: a late renewal answers Lost.
                flight.expires = None;
                flight.lost = true;
            }
        }
        expired
    }
}
