//! `MemoryStore`: a map in memory for tests of code above the seam. Not durable, so not
//! selectable from configuration. It can be told to fail (and then reports itself unhealthy),
//! to test how callers handle errors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::{Digest, Health, Store, StoreError};

/// In-memory store; clones share the same map.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    map: Arc<Mutex<HashMap<Digest, String>>>,
    unavailable: Arc<AtomicBool>,
    health: Arc<watch::Sender<Health>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            map: Arc::default(),
            unavailable: Arc::default(),
            health: Arc::new(watch::Sender::new(Health::Healthy)),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// While `true`, every operation fails with a retryable `Unavailable` error and the
    /// store's health is `Unavailable`.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
        self.health.send_replace(if unavailable {
            Health::Unavailable {
                reason: Arc::from("switched off by the test"),
            }
        } else {
            Health::Healthy
        });
    }

    /// `Unavailable` while switched off, else `Healthy`.
    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    /// A receiver that sees every change of [`MemoryStore::health`].
    pub fn watch_health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    fn check_available(&self) -> Result<(), StoreError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable(
                "memory",
                "switched off by the test",
            ));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, String>> {
        // A panic while holding this lock is a test bug; the map itself stays consistent.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    async fn get(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        self.check_available()?;
        Ok(self.lock().get(digest).cloned())
    }

    async fn put(&self, digest: &Digest, message: &str) -> Result<(), StoreError> {
        self.check_available()?;
        self.lock().insert(*digest, message.to_owned());
        Ok(())
    }
}
