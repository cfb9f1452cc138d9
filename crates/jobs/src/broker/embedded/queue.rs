//! `ServiceQueue`: one service's jobs ready to run, in memory, and the workers waiting for
//! them. The durable copy is the `queue` table; this is what dispatch reads, so handing a
//! job to a waiting slot or long-poller never touches the database.
//!
//! A submission goes straight to the longest-waiting taker when there is one (a oneshot
//! channel per waiter), else to the back of the ready list. A job handed over travels as a
//! [`Delivery`], which puts the job back at the front if it is dropped before the taker
//! claimed it (the long poll timed out, the slot was stopped at that very moment): a job
//! can be late, never lost.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::{Job, JobId};

/// A job waiting to run.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) job: Job,
    /// When it became ready (submitted, or given back): wait times start here.
    pub(crate) since: Instant,
}

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<Queued>,
    waiters: VecDeque<oneshot::Sender<Delivery>>,
    closed: bool,
}

/// One service's queue. Clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServiceQueue {
    state: Arc<Mutex<State>>,
}

/// A job on its way to a taker; back to the front of the queue if dropped unclaimed.
#[derive(Debug)]
pub(crate) struct Delivery {
    queued: Option<Queued>,
    queue: ServiceQueue,
}

impl Delivery {
    pub(crate) fn claim(mut self) -> Queued {
        self.queued.take().expect("a delivery is claimed once")
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(queued) = self.queued.take() {
            self.queue.push_front(queued);
        }
    }
}

impl ServiceQueue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections move values in and out of deques; a poisoned lock is still whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new job, at the back (or straight to a waiting taker).
    pub(crate) fn push_back(&self, queued: Queued) {
        self.push(queued, false);
    }

    /// A job given back (lost run, unclaimed delivery), at the front.
    pub(crate) fn push_front(&self, queued: Queued) {
        self.push(queued, true);
    }

    fn push(&self, mut queued: Queued, front: bool) {
        let mut state = self.lock();
        while let Some(waiter) = state.waiters.pop_front() {
            let delivery = Delivery {
                queued: Some(queued),
                queue: self.clone(),
            };
            match waiter.send(delivery) {
                Ok(()) => return,
                // That taker left; disarm (we hold the lock) and try the next one.
                Err(mut back) => queued = back.queued.take().expect("just put in"),
            }
        }
        if front {
            state.ready.push_front(queued);
        } else {
            state.ready.push_back(queued);
        }
    }

    /// The next job: at once if one is ready, else the first one pushed within `wait`
    /// (`None`: wait until one comes). `None` when the wait ran out or the queue is closed.
    pub(crate) async fn pop(&self, wait: Option<Duration>) -> Option<Queued> {
        let receiver = {
            let mut state = self.lock();
            if state.closed {
                return None;
            }
            if let Some(queued) = state.ready.pop_front() {
                return Some(queued);
            }
            let (sender, receiver) = oneshot::channel();
            state.waiters.push_back(sender);
            receiver
        };
        let delivery = match wait {
            Some(wait) => tokio::time::timeout(wait, receiver).await.ok()?.ok()?,
            None => receiver.await.ok()?,
        };
        Some(delivery.claim())
    }

    /// Removes a ready job (cancelled); whether it was there.
    pub(crate) fn remove(&self, id: JobId) -> bool {
        let mut state = self.lock();
        let before = state.ready.len();
        state.ready.retain(|q| q.job.id != id);
        state.ready.len() != before
    }

    /// Whether [`ServiceQueue::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Jobs ready and not taken.
    pub(crate) fn depth(&self) -> usize {
        self.lock().ready.len()
    }

    /// From now on `pop` answers `None` (waiting takers are released at once): no job is
    /// handed out any more; pushes still queue, for the next start.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.waiters.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use time::OffsetDateTime;

    fn queued() -> Queued {
        Queued {
            job: Job::new("s", Value::Null, OffsetDateTime::UNIX_EPOCH),
            since: Instant::now(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_taker_gets_the_next_job_and_order_is_kept() {
        let queue = ServiceQueue::default();
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.pop(None).await.map(|q| q.job.id) }
        });
        tokio::task::yield_now().await;
        let (a, b) = (queued(), queued());
        let (a_id, b_id) = (a.job.id, b.job.id);
        queue.push_back(a);
        queue.push_back(b);
        assert_eq!(waiter.await.unwrap(), Some(a_id));
        assert_eq!(queue.pop(None).await.map(|q| q.job.id), Some(b_id));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_times_out_and_a_job_sent_to_a_taker_that_left_is_not_lost() {
        let queue = ServiceQueue::default();
        assert!(queue.pop(Some(Duration::from_secs(1))).await.is_none());
        // A taker whose receiver is dropped after the job was sent to it.
        let (sender, receiver) = oneshot::channel();
        queue.lock().waiters.push_back(sender);
        let job = queued();
        let id = job.job.id;
        queue.push_back(job);
        drop(receiver);
        assert_eq!(queue.depth(), 1, "the delivery came back");
        assert_eq!(queue.pop(None).await.map(|q| q.job.id), Some(id));
    }

    #[tokio::test(start_paused = true)]
    async fn close_releases_waiters_and_cancelled_jobs_are_removed() {
        let queue = ServiceQueue::default();
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.pop(None).await.is_none() }
        });
        tokio::task::yield_now().await;
        queue.close();
        assert!(waiter.await.unwrap());
        let job = queued();
        let id = job.job.id;
        queue.push_back(job);
        assert!(queue.remove(id));
        assert!(!queue.remove(id));
        assert!(queue.pop(None).await.is_none());
    }
}
