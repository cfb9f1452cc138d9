//! `Shared`: the state every handle, reader and the writer thread see: the open database or
//! why it is broken, and the health channel.
//!
//! The hot paths only load the state (`ArcSwap`, no lock): a read clones the open database's
//! `Arc`, a write checks that it is not broken. Transitions (open -> broken -> open) are rare
//! and take a mutex, so one I/O error seen by many readers at once breaks the database once,
//! and an error from a database that was already replaced cannot break its successor.

use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use redb::Database;
use tokio::sync::watch;

use crate::error::{classify, Failure};
use crate::{Error, Health, RedbError};

pub(crate) enum State {
    Open(Arc<Database>),
    /// Never `Health::Healthy`.
    Broken(Health),
}

pub(crate) struct Shared {
    /// The file name, for messages.
    pub(crate) file: Arc<str>,
    state: ArcSwap<State>,
    health: watch::Sender<Health>,
    /// The database an I/O error broke, until the writer thread drops it (it must wait for
    /// readers to let go of it: redb locks the file until the last handle is dropped).
    /// Locked for every transition (state and health change together).
    retired: Mutex<Option<Arc<Database>>>,
}

impl Shared {
    pub(crate) fn new(file: Arc<str>, db: Database) -> Shared {
        Shared {
            file,
            state: ArcSwap::from_pointee(State::Open(Arc::new(db))),
            health: watch::Sender::new(Health::Healthy),
            retired: Mutex::new(None),
        }
    }

    /// The open database, or the error every operation fails with while it is broken.
    pub(crate) fn current(&self) -> Result<Arc<Database>, Error> {
        match &**self.state.load() {
            State::Open(db) => Ok(Arc::clone(db)),
            State::Broken(health) => Err(broken_error(health)),
        }
    }

    /// Fails at once while the database is broken.
    pub(crate) fn check(&self) -> Result<(), Error> {
        match &**self.state.load() {
            State::Open(_) => Ok(()),
            State::Broken(health) => Err(broken_error(health)),
        }
    }

    /// The error a write that arrives while the database is being reopened is answered with.
    pub(crate) fn refusal(&self) -> Error {
        match &**self.state.load() {
            State::Broken(health) => broken_error(health),
            State::Open(_) => Error::Unavailable {
                reason: Arc::from(format!("{} is being reopened", self.file)),
            },
        }
    }

    pub(crate) fn is_broken(&self) -> bool {
        matches!(&**self.state.load(), State::Broken(_))
    }

    pub(crate) fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    pub(crate) fn watch_health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    /// Turns an error `db` returned while `doing` something into the caller's error. An I/O
    /// error breaks `db` (if it is still the current database); the answer says whether this
    /// call broke it, so the caller can wake the writer thread to reopen it.
    pub(crate) fn failed(
        &self,
        db: &Arc<Database>,
        doing: &str,
        error: RedbError,
    ) -> (Error, bool) {
        let reason = format!("{doing} {}: {error}", self.file);
        let health = match classify(&error) {
            Failure::Other => return (Error::failed(reason), false),
            Failure::Io { disk_full } => Health::broken(disk_full, reason),
            Failure::PreviousIo => match &**self.state.load() {
                // Broken by someone else already: answer with their (better) reason.
                State::Broken(health) => return (broken_error(health), false),
                State::Open(_) => Health::broken(false, reason),
            },
        };
        let broke = self.break_db(db, &health);
        (broken_error(&health), broke)
    }

    /// Marks `db` broken with `health`, unless it is no longer the current database.
    fn break_db(&self, db: &Arc<Database>, health: &Health) -> bool {
        let mut retired = self.lock_retired();
        match &**self.state.load() {
            State::Open(current) if Arc::ptr_eq(current, db) => {}
            _ => return false,
        }
        *retired = Some(Arc::clone(db));
        self.state.store(Arc::new(State::Broken(health.clone())));
        // Published under the lock, so a reopen cannot overtake it.
        self.health.send_replace(health.clone());
        drop(retired);
        tracing::error!(file = %self.file, %health, "database broken; reopening it");
        true
    }

    /// The broken database, for the writer thread to drop.
    pub(crate) fn take_retired(&self) -> Option<Arc<Database>> {
        self.lock_retired().take()
    }

    /// While broken: a new reason (a reopen attempt failed).
    pub(crate) fn still_broken(&self, health: Health) {
        let _transition = self.lock_retired();
        if !self.is_broken() || health.is_healthy() {
            return;
        }
        self.state.store(Arc::new(State::Broken(health.clone())));
        self.health.send_if_modified(|current| {
            let changed = *current != health;
            *current = health;
            changed
        });
    }

    /// The database was reopened.
    pub(crate) fn reopened(&self, db: Database) {
        let _transition = self.lock_retired();
        self.state.store(Arc::new(State::Open(Arc::new(db))));
        self.health.send_replace(Health::Healthy);
        tracing::info!(file = %self.file, "database reopened; healthy again");
    }

    fn lock_retired(&self) -> MutexGuard<'_, Option<Arc<Database>>> {
        // The critical sections only move `Arc`s; a poisoned lock still holds a valid value.
        self.retired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn broken_error(health: &Health) -> Error {
    health
        .error()
        .expect("a broken state never holds Health::Healthy")
}
