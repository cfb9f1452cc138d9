//! `EmbeddedStore`: one redb file, group commit.
//!
//! Every `put` goes through a bounded channel to one writer thread. The thread takes whatever
//! is waiting (up to [`MAX_BATCH`]), inserts it all in one write transaction, commits it with
//! immediate durability (fsync) and only then answers every waiter. While one commit is on
//! its way to disk the next batch queues up, so under load many requests share one fsync, and
//! no request is acknowledged before its data is on disk.
//!
//! Reads first look in a byte-bounded in-memory cache of messages read before (see
//! `cache.rs`: the store is content-addressed, so cached entries are never stale); misses use
//! redb read transactions on tokio's blocking pool, because a read that misses redb's page
//! cache does file I/O, which must not stall the async runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use redb::{Database, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::cache::MessageCache;
use crate::{Digest, Store, StoreError};

/// Digest bytes -> message text.
const MESSAGES: TableDefinition<&[u8; 32], &str> = TableDefinition::new("messages");

/// Most puts committed in one transaction. Bounds the latency one commit adds to the
/// requests queued behind it.
const MAX_BATCH: usize = 1024;

/// Under load (the previous commit carried more than one put), the writer waits this long for
/// more puts before committing: each commit costs an fsync whose kernel-side CPU competes
/// with request handling, so fuller batches leave more CPU for requests. An idle server
/// (previous batch of one) commits at once, so a lone request pays no extra latency.
const LINGER: std::time::Duration = std::time::Duration::from_micros(250);

/// Puts waiting for the writer. When full, callers wait (backpressure) instead of queueing
/// without bound.
const QUEUE_CAPACITY: usize = 8192;

const BACKEND: &str = "embedded";

/// The redb-backed store. Clones share the database and its writer thread.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Arc<Database>,
    cache: MessageCache,
    path: PathBuf,
    writes: mpsc::Sender<PendingPut>,
    writer: JoinHandle<()>,
}

/// One `put` waiting to be committed, with the way to tell its caller the outcome.
#[derive(Debug)]
struct PendingPut {
    digest: Digest,
    message: String,
    done: oneshot::Sender<Result<(), StoreError>>,
}

impl EmbeddedStore {
    /// Opens (creating if missing) the redb file at `path` and starts its writer thread.
    /// `cache_bytes` bounds the in-memory cache of read messages (0: no cache). Fails if
    /// another process has the file open.
    pub async fn open(path: &Path, cache_bytes: usize) -> Result<EmbeddedStore, StoreError> {
        let owned = path.to_path_buf();
        let db = tokio::task::spawn_blocking(move || open_database(&owned))
            .await
            .map_err(|e| StoreError::failed(BACKEND, format!("opening task failed: {e}")))??;
        let db = Arc::new(db);
        let (writes, queue) = mpsc::channel(QUEUE_CAPACITY);
        let writer_db = Arc::clone(&db);
        let writer = std::thread::Builder::new()
            .name("messages-writer".into())
            .spawn(move || writer_loop(&writer_db, queue))
            .map_err(|e| StoreError::failed(BACKEND, format!("starting writer thread: {e}")))?;
        let inner = Inner {
            db,
            cache: MessageCache::new(cache_bytes),
            path: path.to_path_buf(),
            writes,
            writer,
        };
        Ok(EmbeddedStore {
            inner: Arc::new(inner),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Stops the writer after it has committed everything queued and closes the file, so it
    /// can be opened again. Fails if other clones of this store are still alive.
    pub async fn close(self) -> Result<(), StoreError> {
        let inner = Arc::try_unwrap(self.inner).map_err(|_| {
            StoreError::failed(BACKEND, "cannot close: other handles to the store are open")
        })?;
        let Inner {
            db, writes, writer, ..
        } = inner;
        drop(writes);
        drop(db);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(|e| StoreError::failed(BACKEND, format!("closing task failed: {e}")))?
            .map_err(|_| StoreError::failed(BACKEND, "writer thread panicked"))
    }
}

impl Store for EmbeddedStore {
    async fn get(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        if let Some(message) = self.inner.cache.get(digest) {
            return Ok(Some(message.to_string()));
        }
        let db = Arc::clone(&self.inner.db);
        let key = *digest;
        let found = tokio::task::spawn_blocking(move || read(&db, &key))
            .await
            .map_err(|e| StoreError::failed(BACKEND, format!("read task failed: {e}")))??;
        if let Some(message) = &found {
            self.inner.cache.insert(digest, Arc::from(message.as_str()));
        }
        Ok(found)
    }

    async fn put(&self, digest: &Digest, message: &str) -> Result<(), StoreError> {
        let (done, outcome) = oneshot::channel();
        let pending = PendingPut {
            digest: *digest,
            message: message.to_owned(),
            done,
        };
        let stopped = || StoreError::failed(BACKEND, "writer thread stopped");
        self.inner
            .writes
            .send(pending)
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

/// Opens the file and makes sure the table exists, so readers never see it missing.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    let named = |e: &dyn std::fmt::Display| {
        StoreError::failed(BACKEND, format!("opening {}: {e}", path.display()))
    };
    let db = Database::create(path).map_err(|e| named(&e))?;
    let txn = db.begin_write().map_err(|e| named(&e))?;
    txn.open_table(MESSAGES).map_err(|e| named(&e))?;
    txn.commit().map_err(|e| named(&e))?;
    Ok(db)
}

fn read(db: &Database, key: &Digest) -> Result<Option<String>, StoreError> {
    let failed = |e: redb::Error| StoreError::failed(BACKEND, format!("reading: {e}"));
    let txn = db.begin_read().map_err(|e| failed(e.into()))?;
    let table = txn.open_table(MESSAGES).map_err(|e| failed(e.into()))?;
    let found = table.get(key.as_bytes()).map_err(|e| failed(e.into()))?;
    Ok(found.map(|guard| guard.value().to_owned()))
}

/// The writer thread: batch, commit, answer; until every sender is gone.
fn writer_loop(db: &Database, mut queue: mpsc::Receiver<PendingPut>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut previous = 0;
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        drain(&mut queue, &mut batch);
        if previous > 1 && batch.len() < MAX_BATCH {
            std::thread::sleep(LINGER);
            drain(&mut queue, &mut batch);
        }
        previous = batch.len();
        let outcome = commit(db, &batch);
        if let Err(error) = &outcome {
            tracing::error!(%error, puts = batch.len(), "messages commit failed");
        }
        metrics::histogram!("portico_messages_commit_batch_size").record(batch.len() as f64);
        for pending in batch.drain(..) {
            // A caller that went away (client disconnected) no longer needs the answer.
            let _ = pending.done.send(outcome.clone());
        }
    }
}

/// Moves what is waiting in the queue into the batch, up to `MAX_BATCH`.
fn drain(queue: &mut mpsc::Receiver<PendingPut>, batch: &mut Vec<PendingPut>) {
    while batch.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
}

/// Inserts the batch in one transaction and commits it durably (redb's default `Immediate`).
fn commit(db: &Database, batch: &[PendingPut]) -> Result<(), StoreError> {
    let failed = |e: redb::Error| StoreError::failed(BACKEND, format!("writing: {e}"));
    let txn = db.begin_write().map_err(|e| failed(e.into()))?;
    {
        let mut table = txn.open_table(MESSAGES).map_err(|e| failed(e.into()))?;
        for pending in batch {
            table
                .insert(pending.digest.as_bytes(), pending.message.as_str())
                .map_err(|e| failed(e.into()))?;
        }
    }
    txn.commit().map_err(|e| failed(e.into()))
}
