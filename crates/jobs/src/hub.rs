//! `Hub`: tells followers of a job (SSE streams) that its record changed, in process.
//!
//! Every change this process makes to a record is published here after it is stored, so a
//! follower never sees a state that a crash could take back. One broadcast channel carries
//! every change (`Arc<Job>`: no copy per follower); a follower that falls behind re-reads
//! the record, and followers also re-read it every [`REREAD`] while idle, which is how
//! changes made by another gateway (records in Redis) reach them.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast;

use crate::records::Records;
use crate::{Error, Job, JobId};

/// Changes a slow follower may fall behind by before it re-reads the record.
const CAPACITY: usize = 4096;
/// An idle follower re-reads the record this often.
pub const REREAD: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub(crate) struct Hub {
    sender: broadcast::Sender<Arc<Job>>,
}

impl Hub {
    pub(crate) fn new() -> Hub {
        Hub {
            sender: broadcast::channel(CAPACITY).0,
        }
    }

    /// A stored change. Costs nothing but the `Arc` when nobody follows.
    pub(crate) fn publish(&self, job: &Job) {
        if self.sender.receiver_count() > 0 {
            let _ = self.sender.send(Arc::new(job.clone()));
        }
    }

    /// Every version of job `id` after `after`, from the current record on, ending after a
    /// final state; `UnknownJob` (then the end) if there is no such job.
    pub(crate) fn follow(
        &self,
        records: Records,
        id: JobId,
        after: u64,
    ) -> impl Stream<Item = Result<Job, Error>> + Send + 'static {
        let follower = Follower {
            receiver: self.sender.subscribe(),
            records,
            id,
            last: after,
            done: false,
            fresh: true,
        };
        futures::stream::unfold(follower, |mut follower| async move {
            let item = follower.next().await?;
            Some((item, follower))
        })
    }
}

struct Follower {
    receiver: broadcast::Receiver<Arc<Job>>,
    records: Records,
    id: JobId,
    last: u64,
    done: bool,
    /// The current record has not been read yet.
    fresh: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<Result<Job, Error>> {
        loop {
            if self.done {
                return None;
            }
            if std::mem::take(&mut self.fresh) {
                if let Some(item) = self.reread().await {
                    return Some(item);
                }
                continue;
            }
            match tokio::time::timeout(REREAD, self.receiver.recv()).await {
                Ok(Ok(job)) if job.id == self.id => {
                    if let Some(job) = self.newer(&job) {
                        return Some(Ok(job));
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => self.fresh = true,
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    self.done = true;
                    return None;
                }
            }
        }
    }

    /// Reads the record: `Some` when there is something to say (a newer version, or an
    /// error), `None` to keep waiting.
    async fn reread(&mut self) -> Option<Result<Job, Error>> {
        match self.records.get(self.id).await {
            Ok(Some(job)) => self.newer(&job).map(Ok),
            Ok(None) => {
                self.done = true;
                Some(Err(Error::UnknownJob(self.id)))
            }
            Err(error) => {
                // A store that fails now may heal; the caller decides whether to go on.
                Some(Err(error))
            }
        }
    }

    fn newer(&mut self, job: &Job) -> Option<Job> {
        if job.version <= self.last {
            // Nothing new, but a final record already seen ends the stream.
            if job.state.is_final() && job.version == self.last {
                self.done = true;
            }
            return None;
        }
        self.last = job.version;
        self.done = job.state.is_final();
        Some(job.clone())
    }
}
