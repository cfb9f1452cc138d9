//! `RedisStore`: key = digest (64 lowercase hex characters, after an optional prefix),
//! value = message, exactly as the original app stored them, so Portico can take over its
//! Redis data.
//!
//! By default (`connections = 0`) each thread that uses the store gets its own multiplexed
//! connection, made on first use on that thread's runtime, so a gateway worker's requests and
//! their connection's driver stay on one thread (no cross-thread wake-up per command: 65.5k -> 84.1k
//! GETs/s in bench/messages). With `connections = N` the store keeps N shared
//! connections used round-robin. Every operation, connecting included, is bounded by one
//! timeout, so a Redis that is down or stuck turns into a retryable error quickly. A
//! connection that failed is dropped and the next operation connects afresh: when Redis comes
//! back, the store recovers by itself.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError};

use tokio::sync::watch;

use crate::{Digest, Health, Store, StoreError};

const BACKEND: &str = "redis";

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port/db`.
    pub url: String,
    /// Prepended to every key (empty: keys are bare digests, as in the original app).
    pub key_prefix: String,
    /// Shared multiplexed connections used round-robin; 0: one per thread using the store.
    pub connections: usize,
    /// Bound on one operation, including (re)connecting.
    pub timeout: Duration,
}

/// The Redis-backed store. Clones share the connections.
#[derive(Debug, Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Tells this store's per-thread connections from other stores' (unlike an address, never
    /// reused).
    id: u64,
    client: redis::Client,
    prefix: Vec<u8>,
    timeout: Duration,
    slots: Vec<Slot>,
    next: AtomicUsize,
    /// Always `Healthy` (see `AnyStore::health`); kept so receivers never see it closed.
    health: watch::Sender<Health>,
}

/// One connection: the live one if any, and a lock so only one task connects at a time.
#[derive(Default)]
struct Slot {
    live: Mutex<Option<ConnectionManager>>,
    connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("server", &self.client.get_connection_info().addr)
            .field("db", &self.client.get_connection_info().redis.db)
            .field("connections", &self.slots.len())
            .finish()
    }
}

impl RedisStore {
    /// Checks the URL; connects lazily (see [`RedisStore::ping`] to connect now).
    pub fn new(options: &RedisOptions) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(options.url.as_str()).map_err(|e| {
            StoreError::failed(BACKEND, format!("invalid Redis URL {:?}: {e}", options.url))
        })?;
        let slots = (0..options.connections).map(|_| Slot::default()).collect();
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let inner = Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            client,
            prefix: options.key_prefix.as_bytes().to_vec(),
            timeout: options.timeout,
            slots,
            next: AtomicUsize::new(0),
            health: watch::Sender::new(Health::Healthy),
        };
        Ok(RedisStore {
            inner: Arc::new(inner),
        })
    }

    /// Sends `PING`: succeeds when Redis answers within the timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(redis::cmd("PING")).await
    }

    /// Always `Healthy`: the store recovers per request (see `AnyStore::health`).
    pub fn health(&self) -> Health {
        Health::Healthy
    }

    /// A receiver of [`RedisStore::health`], which never changes.
    pub fn watch_health(&self) -> watch::Receiver<Health> {
        self.inner.health.subscribe()
    }

    /// Runs one command on the next connection, within the timeout. On a connection-level
    /// failure the connection is dropped so the next use of its slot reconnects.
    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let slot = self.pick();
        let attempt = async {
            let mut connection = match slot {
                Some(slot) => self.connection(slot).await?,
                None => self.thread_connection().await?,
            };
            cmd.query_async::<T>(&mut connection)
                .await
                .map_err(classify)
        };
        let outcome = match tokio::time::timeout(self.inner.timeout, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => Err(StoreError::unavailable(
                BACKEND,
                format!("no answer within {:?}", self.inner.timeout),
            )),
        };
        if matches!(&outcome, Err(e) if e.is_retryable()) {
            self.forget(slot);
        }
        outcome
    }

    /// The next shared slot, or `None` when each thread has its own connection.
    fn pick(&self) -> Option<&Slot> {
        if self.inner.slots.is_empty() {
            return None;
        }
        let index = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        Some(&self.inner.slots[index])
    }

    /// This thread's connection to this store's Redis, made on first use.
    async fn thread_connection(&self) -> Result<ConnectionManager, StoreError> {
        let id = self.inner.id;
        if let Some(live) = THREAD_CONNECTIONS.with_borrow(|map| map.get(&id).cloned()) {
            return Ok(live);
        }
        let fresh = self.connect().await?;
        THREAD_CONNECTIONS.with_borrow_mut(|map| map.insert(id, fresh.clone()));
        Ok(fresh)
    }

    async fn connect(&self) -> Result<ConnectionManager, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.inner.timeout)
            .set_response_timeout(self.inner.timeout)
            .set_number_of_retries(0);
        ConnectionManager::new_with_config(self.inner.client.clone(), config)
            .await
            .map_err(classify)
    }

    /// The slot's live connection, connecting first if it has none.
    async fn connection(&self, slot: &Slot) -> Result<ConnectionManager, StoreError> {
        if let Some(live) = lock(&slot.live).clone() {
            return Ok(live);
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(live) = lock(&slot.live).clone() {
            return Ok(live);
        }
        let fresh = self.connect().await?;
        *lock(&slot.live) = Some(fresh.clone());
        Ok(fresh)
    }

    fn forget(&self, slot: Option<&Slot>) {
        match slot {
            Some(slot) => drop(lock(&slot.live).take()),
            None => drop(THREAD_CONNECTIONS.with_borrow_mut(|map| map.remove(&self.inner.id))),
        }
    }

    fn key(&self, digest: &Digest) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.inner.prefix.len() + Digest::HEX_LEN);
        key.extend_from_slice(&self.inner.prefix);
        key.extend_from_slice(digest.to_hex().as_bytes());
        key
    }
}

impl Store for RedisStore {
    async fn get(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(digest));
        let found: Option<Vec<u8>> = self.run(cmd).await?;
        found
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|_| {
                    StoreError::failed(BACKEND, format!("value of {digest} is not UTF-8 text"))
                })
            })
            .transpose()
    }

    async fn put(&self, digest: &Digest, message: &str) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(digest)).arg(message);
        self.run(cmd).await
    }
}

thread_local! {
    /// Per-thread connections by store id (see the module doc).
    static THREAD_CONNECTIONS: RefCell<HashMap<u64, ConnectionManager>> =
        RefCell::new(HashMap::new());
}

/// Connection trouble and "try again" answers are retryable; anything else is not.
fn classify(error: RedisError) -> StoreError {
    let transient = error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::BusyLoadingError
                | ErrorKind::TryAgain
                | ErrorKind::ClusterDown
                | ErrorKind::MasterDown
                | ErrorKind::ReadOnly
        );
    if transient {
        StoreError::unavailable(BACKEND, error)
    } else {
        StoreError::failed(BACKEND, error)
    }
}

/// Locks a slot's connection cell; the critical sections only clone or replace an `Arc`, so
/// a poisoned lock still holds a valid value.
fn lock(
    cell: &Mutex<Option<ConnectionManager>>,
) -> std::sync::MutexGuard<'_, Option<ConnectionManager>> {
    cell.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
