//! The writer thread: batch, commit, answer; until every handle is gone.
//!
//! Every write goes through a bounded channel to this one thread. It takes whatever is
//! waiting (up to `max_batch`), applies it all in one write transaction, commits it with
//! immediate durability (fsync) and only then answers every waiter. While one commit is on its
//! way to disk the next batch queues up, so under load many writes share one fsync, and no
//! write is acknowledged before its data is on disk.
//!
//! When a commit fails with an I/O error (or a reader wakes it after one), the thread answers
//! the batch with the error and turns to reopening the database (`recovery.rs`); it answers
//! whatever arrives meanwhile at once with the broken database's error.

use std::sync::Arc;
use std::time::Duration;

use redb::Database;
use tokio::sync::{mpsc, oneshot};

use crate::backoff::Backoff;
use crate::open::Opener;
use crate::shared::Shared;
use crate::{Error, Options, RedbError, Schema};

/// What travels through the write queue.
pub(crate) enum Message<S: Schema> {
    Write(Pending<S>),
    /// A reader broke the database: start reopening it (no write to answer).
    Wake,
}

/// One op waiting to be committed, with the way to tell its caller the outcome.
pub(crate) struct Pending<S: Schema> {
    pub(crate) op: S::Op,
    pub(crate) done: oneshot::Sender<Result<S::Output, Error>>,
}

pub(crate) type Queue<S> = mpsc::Receiver<Message<S>>;

/// The settings the thread needs from [`Options`].
struct Settings {
    max_batch: usize,
    linger: Duration,
    batch_metric: &'static str,
}

/// Whether the thread goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// Every handle is gone: the thread ends.
    Closed,
}

pub(crate) struct Writer<S: Schema> {
    pub(crate) schema: S,
    pub(crate) shared: Arc<Shared>,
    pub(crate) queue: Queue<S>,
    pub(crate) opener: Opener,
    settings: Settings,
    pub(crate) backoff: Backoff,
    /// Drives the queue with a timeout while the database is broken (the hot path uses
    /// `blocking_recv` and never touches it).
    pub(crate) timer: tokio::runtime::Runtime,
    batch: Batch<S>,
}

/// The batch being built: ops, their waiters and their outputs, in the same order.
struct Batch<S: Schema> {
    ops: Vec<S::Op>,
    waiters: Vec<oneshot::Sender<Result<S::Output, Error>>>,
    outputs: Vec<S::Output>,
}

impl<S: Schema> Writer<S> {
    /// The thread's state; fails only if its timer runtime cannot be built.
    pub(crate) fn new(
        schema: S,
        shared: Arc<Shared>,
        queue: Queue<S>,
        opener: Opener,
        options: &Options,
    ) -> std::io::Result<Writer<S>> {
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let capacity = options.max_batch.max(1);
        Ok(Writer {
            schema,
            shared,
            queue,
            opener,
            settings: Settings {
                max_batch: capacity,
                linger: options.linger,
                batch_metric: options.batch_metric,
            },
            backoff: Backoff::new(options.reopen_backoff_min, options.reopen_backoff_max),
            timer,
            batch: Batch {
                ops: Vec::with_capacity(capacity),
                waiters: Vec::with_capacity(capacity),
                outputs: Vec::with_capacity(capacity),
            },
        })
    }

    pub(crate) fn run(mut self) {
        let mut previous = 0;
        while let Some(first) = self.queue.blocking_recv() {
            self.push(first);
            self.fill();
            if previous > 1 && self.batch.ops.len() < self.settings.max_batch {
                std::thread::sleep(self.settings.linger);
                self.fill();
            }
            previous = self.batch.ops.len();
            if previous > 0 {
                self.commit_batch();
            }
            if self.shared.is_broken() && self.recover() == Flow::Closed {
                return;
            }
        }
    }

    fn push(&mut self, message: Message<S>) {
        if let Message::Write(pending) = message {
            self.batch.ops.push(pending.op);
            self.batch.waiters.push(pending.done);
        }
    }

    /// Moves what is waiting in the queue into the batch, up to `max_batch`.
    fn fill(&mut self) {
        while self.batch.ops.len() < self.settings.max_batch {
            match self.queue.try_recv() {
                Ok(next) => self.push(next),
                Err(_) => break,
            }
        }
    }

    /// Commits the batch (or fails it at once if the database is broken) and answers it.
    fn commit_batch(&mut self) {
        let outcome = match self.shared.current() {
            Ok(db) => self.commit(&db).map_err(|error| {
                tracing::error!(%error, ops = self.batch.ops.len(), "commit failed");
                error
            }),
            Err(broken) => Err(broken),
        };
        metrics::histogram!(self.settings.batch_metric).record(self.batch.ops.len() as f64);
        self.answer(outcome);
    }

    fn commit(&mut self, db: &Arc<Database>) -> Result<(), Error> {
        self.batch.outputs.clear();
        let written = apply_and_commit(&self.schema, db, &self.batch.ops, &mut self.batch.outputs);
        if let Err(error) = written {
            return Err(self.shared.failed(db, "writing", error).0);
        }
        if self.batch.outputs.len() != self.batch.ops.len() {
            // A bug in the schema; the data is committed but the answers cannot be matched.
            return Err(Error::failed(format!(
                "writing {}: the schema gave {} outputs for {} ops",
                self.shared.file,
                self.batch.outputs.len(),
                self.batch.ops.len()
            )));
        }
        Ok(())
    }

    /// Answers every waiter of the batch and empties it.
    fn answer(&mut self, outcome: Result<(), Error>) {
        self.batch.ops.clear();
        let waiters = self.batch.waiters.drain(..);
        // A caller that went away (client disconnected) no longer needs the answer.
        match outcome {
            Ok(()) => {
                for (done, output) in waiters.zip(self.batch.outputs.drain(..)) {
                    let _ = done.send(Ok(output));
                }
            }
            Err(error) => {
                self.batch.outputs.clear();
                for done in waiters {
                    let _ = done.send(Err(error.clone()));
                }
            }
        }
    }
}

/// One write transaction: the schema applies the ops, then a durable commit.
fn apply_and_commit<S: Schema>(
    schema: &S,
    db: &Database,
    ops: &[S::Op],
    outputs: &mut Vec<S::Output>,
) -> Result<(), RedbError> {
    let txn = db.begin_write()?;
    schema.apply(&txn, ops, outputs)?;
    txn.commit()?;
    Ok(())
}
