//! Reopening a broken database, in the writer thread (never on an async runtime).
//!
//! 1. Drop the broken `redb::Database`. redb holds an exclusive lock on the file until its
//!    last handle is dropped, so first wait for readers still inside a read to let go.
//! 2. Wait the backoff delay, then open the file again through the directory handle; redb
//!    repairs it from its last durable commit (so nothing acknowledged is lost), and the
//!    opener proves the database with a durable write.
//! 3. On success publish the new database and `Health::Healthy`; on failure publish why (the
//!    disk may still be full) and go back to 2 with a longer delay.
//!
//! Throughout, writes that arrive are answered at once with the current error: the queue is
//! driven with a timeout on the thread's small timer runtime instead of a blind sleep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::is_disk_full;
use crate::writer::{Flow, Message, Writer};
use crate::{Health, Schema};

/// How often the thread looks whether readers released the broken database.
const RELEASE_POLL: Duration = Duration::from_millis(1);
/// Readers holding the broken database longer than this get a warning in the log.
const RELEASE_WARNING: Duration = Duration::from_secs(1);

impl<S: Schema> Writer<S> {
    /// Drops the broken database and reopens it, until it opens or every handle is gone.
    pub(crate) fn recover(&mut self) -> Flow {
        self.backoff.broke(Instant::now());
        if self.release_broken() == Flow::Closed {
            return Flow::Closed;
        }
        loop {
            let delay = self.backoff.next_delay();
            if self.refuse_for(delay) == Flow::Closed {
                return Flow::Closed;
            }
            match self.opener.open(&self.schema) {
                Ok(db) => {
                    self.backoff.healed(Instant::now());
                    self.shared.reopened(db);
                    return Flow::Continue;
                }
                Err(error) => {
                    let file = &self.shared.file;
                    tracing::warn!(%file, %error, "reopening the database failed; trying again");
                    let reason = format!("reopening {file}: {error}");
                    let health = Health::broken(is_disk_full(&error), reason);
                    self.shared.still_broken(health);
                }
            }
        }
    }

    /// Waits until no reader holds the broken database any more, then drops it (which
    /// releases the file lock).
    fn release_broken(&mut self) -> Flow {
        let Some(mut broken) = self.shared.take_retired() else {
            return Flow::Continue;
        };
        let started = Instant::now();
        let mut warned = false;
        loop {
            match Arc::try_unwrap(broken) {
                Ok(db) => {
                    drop(db);
                    return Flow::Continue;
                }
                Err(still_shared) => broken = still_shared,
            }
            if !warned && started.elapsed() > RELEASE_WARNING {
                warned = true;
                tracing::warn!(file = %self.shared.file, "readers still hold the broken database; waiting");
            }
            if self.refuse_for(RELEASE_POLL) == Flow::Closed {
                return Flow::Closed;
            }
        }
    }

    /// For `wait`, answers every write that arrives with the broken database's error.
    fn refuse_for(&mut self, wait: Duration) -> Flow {
        let deadline = tokio::time::Instant::now() + wait;
        let shared = Arc::clone(&self.shared);
        let queue = &mut self.queue;
        self.timer.block_on(async {
            loop {
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(Message::Write(pending))) => {
                        let _ = pending.done.send(Err(shared.refusal()));
                    }
                    Ok(Some(Message::Wake)) => {}
                    Ok(None) => return Flow::Closed,
                    Err(_elapsed) => return Flow::Continue,
                }
            }
        })
    }
}
