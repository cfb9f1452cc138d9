//! The `Store` seam: a durable map from a SHA-256 digest to the message it was computed from.
//!
//! Two real implementations, chosen only by the binary's wiring:
//! - [`EmbeddedStore`]: a single redb file; writes are group-committed by one writer thread,
//!   so a successful `put` is on disk (fsync'd) yet concurrent writers share one commit.
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

pub use digest::{Digest, DigestParseError};
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
