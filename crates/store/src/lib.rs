//! The `Store` seam: a durable map from a SHA-256 digest to the message it was computed from.
//!
//! Two real implementations, chosen only by the binary's wiring:
//! - [`EmbeddedStore`]: a single redb file (a `durable::Db`); writes are group-committed by one
//!   writer thread, so a successful `put` is on disk (fsync'd) yet concurrent writers share one
//!   commit; after an I/O error (a full disk) it fails fast and reopens itself.
//! - [`RedisStore`]: Redis over pooled multiplexed connections with connect and command
//!   timeouts; it reconnects by itself after Redis restarts.
//!
//! [`MemoryStore`] is for unit tests of code above the seam. Callers hold an [`AnyStore`], a
//! closed enum, and never know which one it is. Knows nothing of HTTP.

#![forbid(unsafe_code)]

mod cache;
mod digest;
mod embedded;
mod error;
mod memory;
mod redis_store;

use std::future::Future;

use tokio::sync::watch;

pub use digest::{Digest, DigestParseError};
pub use durable::Health;
pub use embedded::EmbeddedStore;
pub use error::StoreError;
pub use memory::MemoryStore;
pub use redis_store::{RedisOptions, RedisStore};

/// A durable map from digest to message.
///
/// `put` returns only once the message is as durable as the backend can make it (for the
/// embedded store: fsync'd). Putting the same digest twice is not an error.
pub trait Store: Send + Sync {
    /// The message stored under `digest`, if any.
    fn get(
        &self,
        digest: &Digest,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Stores `message` under `digest`.
    fn put(
        &self,
        digest: &Digest,
        message: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The store a service holds: one of the implementations, dispatched by `match`.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// redb file in the data directory.
    Embedded(EmbeddedStore),
    /// Redis server.
    Redis(RedisStore),
    /// In-memory map, for tests only (not selectable from configuration).
    Memory(MemoryStore),
}

impl AnyStore {
    /// A short name for logs and metrics: `embedded`, `redis` or `memory`.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyStore::Embedded(_) => "embedded",
            AnyStore::Redis(_) => "redis",
            AnyStore::Memory(_) => "memory",
        }
    }

    /// How the store is doing now: the embedded store's disk health; the Redis store is
    /// always `Healthy` (it recovers per request, and a Redis outage is not this instance's
    /// fault: taking every instance out of a load balancer would not help); the memory store
    /// follows `set_unavailable`.
    pub fn health(&self) -> Health {
        match self {
            AnyStore::Embedded(store) => store.health(),
            AnyStore::Redis(store) => store.health(),
            AnyStore::Memory(store) => store.health(),
        }
    }

    /// A receiver that sees every change of [`AnyStore::health`] (for `/readyz`).
    pub fn watch_health(&self) -> watch::Receiver<Health> {
        match self {
            AnyStore::Embedded(store) => store.watch_health(),
            AnyStore::Redis(store) => store.watch_health(),
            AnyStore::Memory(store) => store.watch_health(),
        }
    }
}

impl Store for AnyStore {
    async fn get(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        match self {
            AnyStore::Embedded(store) => store.get(digest).await,
            AnyStore::Redis(store) => store.get(digest).await,
            AnyStore::Memory(store) => store.get(digest).await,
        }
    }

    async fn put(&self, digest: &Digest, message: &str) -> Result<(), StoreError> {
        match self {
            AnyStore::Embedded(store) => store.put(digest, message).await,
            AnyStore::Redis(store) => store.put(digest, message).await,
            AnyStore::Memory(store) => store.put(digest, message).await,
        }
    }
}
