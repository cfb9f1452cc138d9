//! The state writer: one task that stores the runs' state changes in order, many per write.
//!
//! Starts, progress reports and the results of local slots are not waited for by the slot
//! (waiting for an fsync per job would cap a slot at one job per commit); they are sent
//! here, in order, through a bounded channel (a slow disk slows the slots down instead of
//! queueing without bound). The task takes everything waiting, stores it as one batch of
//! changes (embedded records: one op of the group commit; its order is the order of the
//! changes) and only then publishes the new records and runs what follows each change
//! (a finished run leaves the in-flight table, a lost one goes back to the queue...). So a
//! result is visible only once durable, and a job's changes are applied in the order made.
//!
//! When the store refuses a batch (full disk), final changes that nobody waits for are kept
//! and tried again after [`RETRY_DELAY`] until they are stored (the database heals itself);
//! starts and progress reports are dropped (the next report supersedes them).

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::Inner;
use crate::records::Applied;
use crate::{Change, Error, JobId, LeaseId};

/// Changes taken from the channel for one store call.
const BATCH: usize = 1024;
const RETRY_DELAY: Duration = Duration::from_millis(250);
/// Changes that may wait for the writer.
pub(super) const CHANNEL: usize = 16 * 1024;

/// One change to store, and what follows once it is stored.
pub(super) struct Write {
    pub(super) id: JobId,
    pub(super) change: Change,
    pub(super) then: Then,
    pub(super) done: Option<oneshot::Sender<Result<Option<Applied>, Error>>>,
}

/// What follows a stored change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Then {
    Nothing,
    /// The run of this lease ended (finished, released): it leaves the in-flight table.
    Ended(LeaseId),
    /// The run of this lease was lost: it leaves the in-flight table and, unless the job is
    /// final now, the job goes back to the front of its queue.
    Requeue(Option<LeaseId>),
}

impl Write {
    fn is_final(&self) -> bool {
        !matches!(self.change, Change::Start { .. } | Change::Progress { .. })
    }
}

pub(super) async fn run(inner: std::sync::Arc<Inner>, mut receiver: mpsc::Receiver<Write>) {
    let mut batch: Vec<Write> = Vec::with_capacity(BATCH);
    let mut retry: Vec<Write> = Vec::new();
    loop {
        batch.append(&mut retry);
        if batch.len() < BATCH {
            let room = BATCH - batch.len();
            if batch.is_empty() {
                if receiver.recv_many(&mut batch, room).await == 0 {
                    return;
                }
            } else {
                while batch.len() < BATCH {
                    match receiver.try_recv() {
                        Ok(write) => batch.push(write),
                        Err(_) => break,
                    }
                }
            }
        }
        let changes = batch.iter().map(|w| (w.id, w.change.clone())).collect();
        match inner.records.apply(changes).await {
            Ok(applied) => inner.stored(batch.drain(..), applied).await,
            Err(error) => {
                tracing::warn!(%error, changes = batch.len(), "storing job states failed; results are kept and tried again");
                for write in batch.drain(..) {
                    match write.done {
                        Some(done) => {
                            let _ = done.send(Err(error.clone()));
                        }
                        None if write.is_final() => retry.push(write),
                        None => {}
                    }
                }
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }
}
