//! `Background`: the tasks a service runs beside its requests (reload watchers, job
//! dispatchers, agents' supervisors), each named, all cancelled and awaited when the service
//! stops. Replaces bare `tokio::spawn`, whose tasks nobody stops: a task that outlives
//! shutdown can hold a store open or leave a child process behind.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The background tasks of one service. Clones share the same set.
#[derive(Debug, Clone)]
pub struct Background {
    owner: Arc<str>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    running: Arc<Mutex<Vec<Arc<str>>>>,
}

impl Background {
    /// An empty set for the service `owner` (named in logs).
    pub fn new(owner: &str) -> Self {
        Background {
            owner: Arc::from(owner),
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            running: Arc::default(),
        }
    }

    /// Runs `task` on the current runtime until it ends or the service stops (then it is
    /// dropped at its next await point).
    pub fn spawn<F>(&self, name: &str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_with_token(name, |token| async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Runs the task `make` builds from the stop token, for tasks that finish work of their
    /// own when asked to stop (they watch `token.cancelled()`); the task is dropped if it
    /// has not ended when the stop's grace period is over.
    pub fn spawn_with_token<F>(&self, name: &str, make: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let name: Arc<str> = Arc::from(name);
        let task = make(self.cancel.child_token());
        let running = self.running.clone();
        lock(&running).push(name.clone());
        let owner = self.owner.clone();
        self.tracker.spawn(async move {
            task.await;
            tracing::debug!(service = %owner, task = %name, "background task ended");
            lock(&running).retain(|n| !Arc::ptr_eq(n, &name));
        });
    }

    /// The token tasks watch; cancelled when the service stops.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Names of the tasks still running.
    pub fn running(&self) -> Vec<String> {
        lock(&self.running).iter().map(|n| n.to_string()).collect()
    }

    /// Asks every task to stop and waits up to `grace` for them; the ones still running then
    /// are named in a warning (their futures are dropped with the runtime).
    pub async fn stop(&self, grace: Duration) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            let left = self.running();
            tracing::warn!(service = %self.owner, ?grace, tasks = ?left, "background tasks did not stop in time");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Pushes and retains only: a panic elsewhere cannot leave the list half-written.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(start_paused = true)]
    async fn stop_cancels_loops_and_waits_for_tasks_that_finish_their_work() {
        let background = Background::new("test");
        background.spawn("forever", async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let flushed = Arc::new(AtomicBool::new(false));
        let flag = flushed.clone();
        background.spawn_with_token("flusher", move |token| async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            flag.store(true, Ordering::SeqCst);
        });
        tokio::task::yield_now().await;
        assert_eq!(background.running().len(), 2);
        background.stop(Duration::from_secs(5)).await;
        assert!(
            flushed.load(Ordering::SeqCst),
            "the flusher finished its work"
        );
        assert!(
            background.running().is_empty(),
            "{:?}",
            background.running()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_stop_is_given_up_after_the_grace_period() {
        let background = Background::new("test");
        background.spawn_with_token("stubborn", |_token| async {
            // Never awaits the token, and never yields to cancellation: only the runtime's
            // end stops it.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        background.stop(Duration::from_secs(2)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(background.running(), vec!["stubborn".to_string()]);
    }
}
