//! `Db`: the handle users hold. Clones share the database and its writer thread.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use cap_std::fs::Dir;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::is_disk_full;
use crate::open::Opener;
use crate::shared::Shared;
use crate::writer::{Message, Pending, Writer};
use crate::{Error, Health, Options, RedbError, Schema};

/// A redb database that survives its disk (see the crate documentation).
pub struct Db<S: Schema> {
    inner: Arc<Inner<S>>,
}

struct Inner<S: Schema> {
    shared: Arc<Shared>,
    writes: mpsc::Sender<Message<S>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl<S: Schema> Clone for Db<S> {
    fn clone(&self) -> Self {
        Db {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: Schema> std::fmt::Debug for Db<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("file", &self.inner.shared.file)
            .field("health", &self.inner.shared.health())
            .finish()
    }
}

impl<S: Schema> Db<S> {
    /// Opens (creating if missing) `file` inside `dir`, creates the schema's tables and starts
    /// the writer thread. Blocks on file I/O: call it from a blocking thread. Fails if the
    /// file cannot be opened, e.g. when another process has it open.
    pub fn open(dir: Dir, file: &str, schema: S, options: Options) -> Result<Db<S>, Error> {
        let file: Arc<str> = Arc::from(file);
        let opener = Opener::new(
            dir,
            Arc::clone(&file),
            options.cache_bytes,
            options.faults.clone(),
        );
        let db = opener.open(&schema).map_err(|error| {
            let reason = Arc::from(format!("opening {file}: {error}"));
            if is_disk_full(&error) {
                Error::DiskFull { reason }
            } else {
                Error::Failed { reason }
            }
        })?;
        let shared = Arc::new(Shared::new(Arc::clone(&file), db));
        let (writes, queue) = mpsc::channel(options.queue_capacity.max(1));
        let writer = Writer::new(schema, Arc::clone(&shared), queue, opener, &options);
        let thread = writer
            .and_then(|writer| {
                std::thread::Builder::new()
                    .name(options.thread_name.clone())
                    .spawn(move || writer.run())
            })
            .map_err(|e| Error::failed(format!("starting the writer of {file}: {e}")))?;
        let inner = Inner {
            shared,
            writes,
            writer: Mutex::new(Some(thread)),
        };
        Ok(Db {
            inner: Arc::new(inner),
        })
    }

    /// The database file's name inside its directory.
    pub fn file(&self) -> &str {
        &self.inner.shared.file
    }

    /// Applies `op` in the next group commit; answers once it is on disk (fsync'd). Fails at
    /// once while the database is broken.
    pub async fn write(&self, op: S::Op) -> Result<S::Output, Error> {
        self.inner.shared.check()?;
        let (done, outcome) = oneshot::channel();
        let stopped = || Error::Stopped {
            file: Arc::clone(&self.inner.shared.file),
        };
        self.inner
            .writes
            .send(Message::Write(Pending { op, done }))
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    /// Runs `read` in a read transaction (a snapshot of the last commit). Blocks on file I/O:
    /// call it from a blocking thread. Fails at once while the database is broken; an I/O
    /// error breaks it (and starts its reopening).
    pub fn read<T>(
        &self,
        read: impl FnOnce(&redb::ReadTransaction) -> Result<T, RedbError>,
    ) -> Result<T, Error> {
        let db = self.inner.shared.current()?;
        let outcome = db
            .begin_read()
            .map_err(RedbError::from)
            .and_then(|txn| read(&txn));
        outcome.map_err(|error| {
            let (error, broke) = self.inner.shared.failed(&db, "reading", error);
            drop(db);
            if broke {
                // Nobody may be writing: wake the writer thread so it reopens the database.
                // A full queue means it is awake anyway.
                let _ = self.inner.writes.try_send(Message::Wake);
            }
            error
        })
    }

    /// How the database is doing now.
    pub fn health(&self) -> Health {
        self.inner.shared.health()
    }

    /// A receiver that sees every change of [`Db::health`].
    pub fn watch_health(&self) -> watch::Receiver<Health> {
        self.inner.shared.watch_health()
    }

    /// Commits everything queued, stops the writer thread and closes the file, so it can be
    /// opened again. Blocks until the writer is done: call it from a blocking thread. Fails
    /// if other clones of this handle are still alive.
    pub fn close(self) -> Result<(), Error> {
        let file = Arc::clone(&self.inner.shared.file);
        let inner = Arc::try_unwrap(self.inner).map_err(|_| {
            Error::failed(format!(
                "closing {file}: other handles to the database are open"
            ))
        })?;
        let Inner {
            shared,
            writes,
            writer,
        } = inner;
        drop(writes);
        let thread = writer
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let joined = thread.map(JoinHandle::join);
        drop(shared);
        match joined {
            Some(Err(_)) => Err(Error::Stopped { file }),
            _ => Ok(()),
        }
    }
}
