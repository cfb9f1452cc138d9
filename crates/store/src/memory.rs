//! `MemoryStore`: a map in memory for tests of code above the seam. Not durable, so not
//! selectable from configuration. It can be told to fail, to test how callers handle errors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::{Digest, Store, StoreError};

/// In-memory store; clones share the same map.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    map: Arc<Mutex<HashMap<Digest, String>>>,
    unavailable: Arc<AtomicBool>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// While `true`, every operation fails with a retryable `Unavailable` error.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
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
