//! Conformance suites: the behaviour every implementation of a seam must show, written once
//! and run against each (neon's `remote_storage` tests are the model).
//!
//! - [`records`]: the job records (embedded and Redis; `tests/records_conformance.rs`).
//! - [`broker`]: a broker with a consumer-side [`crate::runner::JobSource`] (the embedded
//!   broker with its local source, over embedded and Redis records, in
//!   `tests/broker_conformance.rs`; the AMQP broker with its Celery consumer next).
//!
//! Each check is a public async function that panics on a violation; the suites are lists
//! of them, so a test file runs each on a fresh store.

pub mod broker;
pub mod records;

use std::future::Future;
use std::time::Duration;

/// Polls `check` until it returns `Some` or `limit` passes (then panics naming `what`).
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
