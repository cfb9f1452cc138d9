//! A redb database that survives its disk.
//!
//! redb refuses all work after one I/O error (`PreviousIo`) until the database is dropped and
//! opened again; a full disk therefore used to break the message store until Portico was
//! restarted. [`Db`] wraps one redb file so that its users never have to care:
//!
//! - **Opened through a directory handle** ([`cap_std::fs::Dir`] plus a file name), never a
//!   path: Portico started as root opens its data directory, then switches to a user who may
//!   not be able to resolve that path; every later reopen goes through the handle.
//! - **Group commit**: writes are [`Schema::Op`]s sent through a bounded queue to one writer
//!   thread, which applies everything waiting (up to [`Options::max_batch`]) in one write
//!   transaction, commits it with an fsync and only then answers each waiter. A success answer
//!   means the data is on disk. See `writer.rs`.
//! - **Survives I/O errors**: any I/O error (write, fsync, a failed read, redb's `PreviousIo`)
//!   marks the database broken. From then on every operation fails at once with a retryable
//!   [`Error`] that says whether the disk is full, while the writer thread drops the broken
//!   database, reopens it through the directory handle with backoff, proves it with a write
//!   and marks it healthy again, without a restart. See `recovery.rs`.
//! - **Observable health**: [`Db::health`] and a [`tokio::sync::watch`] receiver of it, so a
//!   readiness probe can follow.
//! - **Fault injection for tests**: [`UnreliableBackend`] and its [`Faults`] switch make
//!   writes, `set_len`, fsyncs or reads fail with ENOSPC or EIO at run time, so every user of
//!   this crate can test its failure handling on a real file.
//!
//! Reads ([`Db::read`]) and [`Db::open`] block on file I/O: call them from a blocking thread
//! (`spawn_blocking`), never on an async runtime's worker. [`Db::write`] is async and only
//! waits for the writer thread.

#![forbid(unsafe_code)]

mod backoff;
mod db;
mod error;
mod faults;
mod open;
mod recovery;
mod shared;
mod writer;

use std::time::Duration;

pub use db::Db;
pub use error::{is_disk_full, Error, Health, RedbError};
pub use faults::{Fault, Faults, UnreliableBackend};

/// What a database holds and how one batch of writes is applied to it.
///
/// Ops are plain values, not closures, so the writer thread can batch thousands of them
/// without boxing; the schema decides how a batch uses its one write transaction (open each
/// table once, then insert every op).
pub trait Schema: Send + 'static {
    /// One write a caller asks for.
    type Op: Send + 'static;
    /// What the caller gets back once the write is on disk.
    type Output: Send + 'static;

    /// Creates the tables the schema uses if they are missing. Called inside the write
    /// transaction that opens (and after an I/O error, reopens) the database, so readers never
    /// find a table missing.
    fn create_tables(&self, txn: &redb::WriteTransaction) -> Result<(), RedbError>;

    /// Applies `ops` in order inside `txn`, pushing exactly one output per op onto `outputs`.
    /// An error aborts the whole batch: every op of it is answered with the error.
    fn apply(
        &self,
        txn: &redb::WriteTransaction,
        ops: &[Self::Op],
        outputs: &mut Vec<Self::Output>,
    ) -> Result<(), RedbError>;
}

/// Most ops committed in one transaction by default.
pub const DEFAULT_MAX_BATCH: usize = 1024;
/// Default linger of the writer under load (see [`Options::linger`]).
pub const DEFAULT_LINGER: Duration = Duration::from_micros(250);
/// Default capacity of the write queue.
pub const DEFAULT_QUEUE_CAPACITY: usize = 8192;
/// Default first delay before reopening a broken database.
pub const DEFAULT_REOPEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Default longest delay between two attempts to reopen a broken database.
pub const DEFAULT_REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How a [`Db`] runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Name of the writer thread (shows in `top -H` and panics).
    pub thread_name: String,
    /// Name of the histogram that records how many ops each commit carried.
    pub batch_metric: &'static str,
    /// Most ops committed in one transaction. Bounds the latency one commit adds to the ops
    /// queued behind it.
    pub max_batch: usize,
    /// Under load (the previous commit carried more than one op) the writer waits this long
    /// for more ops before committing: each commit costs an fsync whose kernel-side CPU
    /// competes with request handling, so fuller batches leave more CPU for requests. An idle
    /// writer (previous batch of one) commits at once, so a lone op pays no extra latency.
    pub linger: Duration,
    /// Ops waiting for the writer. When full, callers wait (backpressure) instead of
    /// queueing without bound.
    pub queue_capacity: usize,
    /// First delay before reopening a broken database; doubled after each failed attempt.
    pub reopen_backoff_min: Duration,
    /// Longest delay between two reopen attempts.
    pub reopen_backoff_max: Duration,
    /// redb's page cache in bytes (`None`: redb's default, which only grows as pages are read).
    pub cache_bytes: Option<usize>,
    /// For tests: every (re)opened file goes through an [`UnreliableBackend`] driven by these
    /// faults. `None` in production.
    pub faults: Option<Faults>,
}

impl Options {
    /// The defaults, with the writer thread's name and the batch-size metric's name.
    pub fn new(thread_name: impl Into<String>, batch_metric: &'static str) -> Options {
        Options {
            thread_name: thread_name.into(),
            batch_metric,
            max_batch: DEFAULT_MAX_BATCH,
            linger: DEFAULT_LINGER,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            reopen_backoff_min: DEFAULT_REOPEN_BACKOFF_MIN,
            reopen_backoff_max: DEFAULT_REOPEN_BACKOFF_MAX,
            cache_bytes: None,
            faults: None,
        }
    }
}
