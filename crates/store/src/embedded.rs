//! `EmbeddedStore`: one redb file, group commit, surviving its disk: a [`durable::Db`] whose
//! ops are `put`s.
//!
//! Every `put` goes to the database's one writer thread, which commits whatever is waiting in
//! one fsync'd transaction and only then answers (see the `durable` crate). After an I/O error
//! (a full disk, a failed fsync) the store answers at once with a retryable error that says
//! whether the disk is full ([`StoreError::DiskFull`]) and reopens itself in the background;
//! [`EmbeddedStore::watch_health`] follows it.
//!
//! Reads first look in a byte-bounded in-memory cache of messages read before (see
//! `cache.rs`: the store is content-addressed, so cached entries are never stale, and serving
//! one while the disk is broken is still right); misses use redb read transactions on tokio's
//! blocking pool, because a read that misses redb's page cache does file I/O, which must not
//! stall the async runtime.

use std::sync::Arc;

use cap_std::fs::Dir;
use durable::{Db, Health, RedbError, Schema};
use redb::{TableDefinition, WriteTransaction};
use tokio::sync::watch;

use crate::cache::MessageCache;
use crate::{Digest, Store, StoreError};

/// Digest bytes -> message text.
const MESSAGES: TableDefinition<&[u8; 32], &str> = TableDefinition::new("messages");

const BACKEND: &str = "embedded";

/// Name of the writer thread.
const WRITER_THREAD: &str = "messages-writer";
/// Histogram of puts per commit.
const BATCH_METRIC: &str = "portico_messages_commit_batch_size";

/// The redb-backed store. Clones share the database and its writer thread.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Db<Messages>,
    cache: MessageCache,
}

/// The store's schema: one table, and a put is an insert.
struct Messages;

/// One `put`.
struct Put {
    digest: Digest,
    message: String,
}

impl Schema for Messages {
    type Op = Put;
    type Output = ();

    fn create_tables(&self, txn: &WriteTransaction) -> Result<(), RedbError> {
        txn.open_table(MESSAGES)?;
        Ok(())
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        puts: &[Put],
        outputs: &mut Vec<()>,
    ) -> Result<(), RedbError> {
        let mut table = txn.open_table(MESSAGES)?;
        for put in puts {
            table.insert(put.digest.as_bytes(), put.message.as_str())?;
            outputs.push(());
        }
        Ok(())
    }
}

impl EmbeddedStore {
    /// The database options the store uses: its writer thread's name, its batch-size metric,
    /// and `durable`'s defaults. Tests change them (e.g. to inject faults) and call
    /// [`EmbeddedStore::open_with`].
    pub fn default_options() -> durable::Options {
        durable::Options::new(WRITER_THREAD, BATCH_METRIC)
    }

    /// Opens (creating if missing) the redb file `file` inside `dir` and starts its writer
    /// thread. Every later reopen goes through `dir` too, never a path. `cache_bytes` bounds
    /// the in-memory cache of read messages (0: no cache). Fails if another process has the
    /// file open.
    pub async fn open(
        dir: Dir,
        file: &str,
        cache_bytes: usize,
    ) -> Result<EmbeddedStore, StoreError> {
        Self::open_with(dir, file, cache_bytes, Self::default_options()).await
    }

    /// [`EmbeddedStore::open`] with other database options.
    pub async fn open_with(
        dir: Dir,
        file: &str,
        cache_bytes: usize,
        options: durable::Options,
    ) -> Result<EmbeddedStore, StoreError> {
        let file = file.to_owned();
        let db = tokio::task::spawn_blocking(move || Db::open(dir, &file, Messages, options))
            .await
            .map_err(|e| StoreError::failed(BACKEND, format!("opening task failed: {e}")))?
            .map_err(from_durable)?;
        let inner = Inner {
            db,
            cache: MessageCache::new(cache_bytes),
        };
        Ok(EmbeddedStore {
            inner: Arc::new(inner),
        })
    }

    /// The database file's name inside its directory.
    pub fn file(&self) -> &str {
        self.inner.db.file()
    }

    /// How the database is doing now.
    pub fn health(&self) -> Health {
        self.inner.db.health()
    }

    /// A receiver that sees every change of [`EmbeddedStore::health`].
    pub fn watch_health(&self) -> watch::Receiver<Health> {
        self.inner.db.watch_health()
    }

    /// Stops the writer after it has committed everything queued and closes the file, so it
    /// can be opened again. Fails if other clones of this store are still alive.
    pub async fn close(self) -> Result<(), StoreError> {
        let inner = Arc::try_unwrap(self.inner).map_err(|_| {
            StoreError::failed(BACKEND, "cannot close: other handles to the store are open")
        })?;
        tokio::task::spawn_blocking(move || inner.db.close())
            .await
            .map_err(|e| StoreError::failed(BACKEND, format!("closing task failed: {e}")))?
            .map_err(from_durable)
    }
}

impl Store for EmbeddedStore {
    async fn get(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        if let Some(message) = self.inner.cache.get(digest) {
            return Ok(Some(message.to_string()));
        }
        let db = self.inner.db.clone();
        let key = *digest;
        let found = tokio::task::spawn_blocking(move || db.read(|txn| read(txn, &key)))
            .await
            .map_err(|e| StoreError::failed(BACKEND, format!("read task failed: {e}")))?
            .map_err(from_durable)?;
        if let Some(message) = &found {
            self.inner.cache.insert(digest, Arc::from(message.as_str()));
        }
        Ok(found)
    }

    async fn put(&self, digest: &Digest, message: &str) -> Result<(), StoreError> {
        let put = Put {
            digest: *digest,
            message: message.to_owned(),
        };
        self.inner.db.write(put).await.map_err(from_durable)
    }
}

fn read(txn: &redb::ReadTransaction, key: &Digest) -> Result<Option<String>, RedbError> {
    let table = txn.open_table(MESSAGES)?;
    let found = table.get(key.as_bytes())?;
    Ok(found.map(|guard| guard.value().to_owned()))
}

/// Disk full -> `DiskFull`, other storage trouble -> `Unavailable` (both retryable), the rest
/// -> `Failed`.
fn from_durable(error: durable::Error) -> StoreError {
    match error {
        durable::Error::DiskFull { reason } => StoreError::disk_full(BACKEND, reason),
        durable::Error::Unavailable { reason } => StoreError::unavailable(BACKEND, reason),
        durable::Error::Failed { reason } => StoreError::failed(BACKEND, reason),
        stopped @ durable::Error::Stopped { .. } => StoreError::failed(BACKEND, stopped),
    }
}
