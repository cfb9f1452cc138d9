//! `portico worker --gateway`: the HTTP client side of a remote worker. [`GatewaySource`] is
//! a [`JobSource`] over the gateway's pull API ([`crate::pull`]), so the core's runner runs
//! remote jobs exactly as it runs local ones (same command contract, timeouts, process
//! groups).
//!
//! Nothing is lost when the worker dies: a job is held by a lease that this worker renews
//! at a third of its period; once renewals stop (the worker was killed, or cut off) the lease
//! runs out and the gateway gives the job to another worker. The end of a run is delivered
//! with retries until the gateway confirms it (or says the lease is gone); calls that fail
//! make the next attempt wait longer (0.5 s doubling to 10 s), so a gateway that restarts is
//! found again without a storm of requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobs::runner::{JobSource, Task};
use jobs::{Error, LeaseId, Outcome};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::pull::{FinishReport, LeaseGrant, LeaseRequest, ProgressReport};

/// Seconds of one long poll.
const POLL_WAIT: Duration = Duration::from_secs(25);
/// Added to a long poll's wait for its request timeout.
const POLL_SLACK: Duration = Duration::from_secs(10);
/// Timeout of every other call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the end of a run is retried before the worker gives up (the lease then runs
/// out and the job runs again elsewhere).
const FINISH_PERSISTENCE: Duration = Duration::from_secs(120);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Where and as whom the worker pulls.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// `https://host:port` (no trailing slash needed).
    pub gateway: String,
    pub token: String,
    pub service: String,
}

/// The pull API as a job source.
#[derive(Clone)]
pub struct GatewaySource {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    base: String,
    authorization: String,
    service: String,
    /// Renewal loops of the leases held now.
    renewals: Mutex<HashMap<LeaseId, CancellationToken>>,
    /// Consecutive failed calls (the backoff grows with it).
    failures: Mutex<u32>,
    closed: CancellationToken,
}

impl GatewaySource {
    pub fn new(client: reqwest::Client, options: &GatewayOptions) -> GatewaySource {
        GatewaySource {
            inner: Arc::new(Inner {
                client,
                base: options.gateway.trim_end_matches('/').to_string(),
                authorization: format!("Bearer {}", options.token),
                service: options.service.clone(),
                renewals: Mutex::default(),
                failures: Mutex::new(0),
                closed: CancellationToken::new(),
            }),
        }
    }

    /// Stop taking jobs: pending long polls end, `next` answers `None`.
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    /// The service's entry of the gateway's `/info` (version, task and queue names).
    pub async fn service_info(&self) -> Result<Value, Error> {
        let url = format!("{}/info", self.inner.base);
        let response = self
            .inner
            .client
            .get(&url)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| unreachable(&url, e))?;
        let info: Value = response.json().await.map_err(|e| unreachable(&url, e))?;
        info["services"]
            .get(&self.inner.service)
            .cloned()
            .ok_or_else(|| Error::UnknownService(self.inner.service.clone()))
    }
}

fn unreachable(url: &str, error: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        reason: format!("gateway {url}: {error}"),
        disk_full: false,
    }
}

impl Inner {
    async fn post<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<reqwest::Response, Error> {
        let url = format!("{}{path}", self.base);
        let result = self
            .client
            .post(&url)
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .json(body)
            .timeout(timeout)
            .send()
            .await;
        match result {
            Ok(response) if response.status().is_server_error() => {
                let status = response.status();
                self.failed().await;
                Err(unreachable(&url, status))
            }
            Ok(response) => {
                *lock(&self.failures) = 0;
                Ok(response)
            }
            Err(error) => {
                self.failed().await;
                Err(unreachable(&url, error))
            }
        }
    }

    /// Counts a failure and waits the backoff it earns.
    async fn failed(&self) {
        let failures = {
            let mut failures = lock(&self.failures);
            *failures = failures.saturating_add(1);
            *failures
        };
        tokio::time::sleep(backoff(failures)).await;
    }

    fn stop_renewing(&self, lease: &LeaseId) {
        if let Some(token) = lock(&self.renewals).remove(lease) {
            token.cancel();
        }
    }
}

/// The wait after `failures` failed calls in a row: 0.5 s doubling, at most 10 s.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (BACKOFF_MIN * 2u32.pow(doublings)).min(BACKOFF_MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn refused(response: reqwest::Response) -> Error {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    match status {
        StatusCode::UNAUTHORIZED => {
            Error::Invalid(format!("the gateway refused the token: {text}"))
        }
        _ => Error::Invalid(format!("the gateway answered {status}: {text}")),
    }
}

impl JobSource for GatewaySource {
    async fn next(&self, worker: &str) -> Result<Option<Task>, Error> {
        let inner = &self.inner;
        let request = LeaseRequest {
            service: inner.service.clone(),
            worker: worker.to_string(),
            wait: POLL_WAIT.as_secs(),
        };
        loop {
            let response = tokio::select! {
                () = inner.closed.cancelled() => return Ok(None),
                response = inner.post("/jobs/workers/lease", &request, POLL_WAIT + POLL_SLACK) => response?,
            };
            match response.status() {
                StatusCode::NO_CONTENT => continue,
                StatusCode::OK => {
                    let grant: LeaseGrant = response
                        .json()
                        .await
                        .map_err(|e| Error::Invalid(format!("reading a lease: {e}")))?;
                    return Ok(Some(self.hold(grant)?));
                }
                _ => return Err(refused(response).await),
            }
        }
    }

    async fn progress(&self, task: &Task, percent: u8, meta: Value) -> Result<(), Error> {
        let path = format!("/jobs/leases/{}/progress", task.lease);
        let response = self
            .inner
            .post(&path, &ProgressReport { percent, meta }, CALL_TIMEOUT)
            .await?;
        if response.status().is_success() || response.status() == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(refused(response).await)
        }
    }

    async fn finish(&self, task: &Task, outcome: Outcome, log: String) -> Result<(), Error> {
        self.inner.stop_renewing(&task.lease);
        let path = format!("/jobs/leases/{}/finish", task.lease);
        let report = FinishReport { outcome, log };
        let deadline = tokio::time::Instant::now() + FINISH_PERSISTENCE;
        loop {
            match self.inner.post(&path, &report, CALL_TIMEOUT).await {
                // Delivered, or the lease is gone: the job runs (ran) elsewhere.
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) if response.status() == StatusCode::NOT_FOUND => return Ok(()),
                Ok(response) => return Err(refused(response).await),
                Err(error) if tokio::time::Instant::now() > deadline => return Err(error),
                // `post` waited the backoff already.
                Err(_) => continue,
            }
        }
    }

    async fn release(&self, task: &Task) -> Result<(), Error> {
        // Stopping: the lease runs out and the job runs again elsewhere.
        self.inner.stop_renewing(&task.lease);
        Ok(())
    }
}

impl GatewaySource {
    /// Turns a grant into a task and starts renewing its lease.
    fn hold(&self, grant: LeaseGrant) -> Result<Task, Error> {
        let lease: LeaseId = grant.lease.parse()?;
        let stop = CancellationToken::new();
        let renewing = CancellationToken::new();
        lock(&self.inner.renewals).insert(lease, renewing.clone());
        let period = Duration::from_millis(grant.expires_in_ms / 3).max(Duration::from_millis(100));
        tokio::spawn(renew_until_done(
            self.inner.clone(),
            lease,
            period,
            stop.clone(),
            renewing,
        ));
        Ok(Task {
            job: grant.job,
            lease,
            stop,
        })
    }
}

/// Renews `lease` every `period` until the run ends (`renewing` cancelled); stops the job
/// when the gateway says it was cancelled or the lease is lost.
async fn renew_until_done(
    inner: Arc<Inner>,
    lease: LeaseId,
    period: Duration,
    stop: CancellationToken,
    renewing: CancellationToken,
) {
    let path = format!("/jobs/leases/{lease}/renew");
    loop {
        tokio::select! {
            () = renewing.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let Ok(response) = inner.post(&path, &Value::Null, CALL_TIMEOUT).await else {
            continue;
        };
        let status: Value = response.json().await.unwrap_or(Value::Null);
        match status["status"].as_str() {
            Some("held") => {}
            Some(other) => {
                tracing::info!(%lease, status = other, "the gateway took the job back: stopping it");
                stop.cancel();
                inner.stop_renewing(&lease);
                return;
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_to_ten() {
        let waits: Vec<u64> = (1..=7).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, vec![500, 1000, 2000, 4000, 8000, 10000, 10000]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
