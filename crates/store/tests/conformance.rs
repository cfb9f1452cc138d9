//! One conformance suite, run against every `Store` implementation: embedded (redb in a temp
//! dir), Redis (the server at `PORTICO_TEST_REDIS`, default `redis://127.0.0.1:6379`, under a
//! unique key prefix) and memory. Without a Redis server the Redis run is skipped, unless `CI`
//! is set: then it fails.

use std::time::{Duration, Instant};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use store::{
    AnyStore, Digest, EmbeddedStore, Health, MemoryStore, RedisOptions, RedisStore, Store,
};
use testkit::{server_missing, test_redis_url, unique_key_prefix, PrivateRedis};

fn digest_of(n: u64) -> Digest {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    bytes[31] = 0xAB;
    Digest(bytes)
}

/// Runs every behaviour check against `store`.
async fn conformance(store: &AnyStore) {
    missing_digest_is_none(store).await;
    put_then_get_round_trips(store).await;
    repeated_put_is_not_an_error(store).await;
    empty_and_non_ascii_messages_round_trip(store).await;
    large_message_round_trips(store).await;
    concurrent_puts_are_all_found(store).await;
}

async fn missing_digest_is_none(store: &AnyStore) {
    let found = store.get(&digest_of(u64::MAX)).await.expect("get");
    assert_eq!(found, None, "{}: missing digest", store.kind());
}

async fn put_then_get_round_trips(store: &AnyStore) {
    store.put(&digest_of(1), "foo").await.expect("put");
    let found = store.get(&digest_of(1)).await.expect("get");
    assert_eq!(found.as_deref(), Some("foo"), "{}", store.kind());
}

async fn repeated_put_is_not_an_error(store: &AnyStore) {
    store.put(&digest_of(2), "bar").await.expect("first put");
    store.put(&digest_of(2), "bar").await.expect("second put");
    let found = store.get(&digest_of(2)).await.expect("get");
    assert_eq!(found.as_deref(), Some("bar"), "{}", store.kind());
}

async fn empty_and_non_ascii_messages_round_trip(store: &AnyStore) {
    for (n, message) in [(3, ""), (4, "café"), (5, "日本語 ✓ \u{0} \n\"quoted\"")] {
        store.put(&digest_of(n), message).await.expect("put");
        let found = store.get(&digest_of(n)).await.expect("get");
        assert_eq!(found.as_deref(), Some(message), "{}", store.kind());
    }
}

async fn large_message_round_trips(store: &AnyStore) {
    let message = "x".repeat(600_000);
    store.put(&digest_of(6), &message).await.expect("put");
    let found = store.get(&digest_of(6)).await.expect("get");
    assert_eq!(
        found.map(|m| m.len()),
        Some(message.len()),
        "{}",
        store.kind()
    );
}

async fn concurrent_puts_are_all_found(store: &AnyStore) {
    let tasks: Vec<_> = (1000..1300u64)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.put(&digest_of(n), &format!("message {n}")).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("put");
    }
    for n in 1000..1300u64 {
        let found = store.get(&digest_of(n)).await.expect("get");
        assert_eq!(found, Some(format!("message {n}")), "{}", store.kind());
    }
}

/// Read cache of the embedded store in these tests.
const CACHE: usize = 1 << 20;
const FILE: &str = "messages.redb";

fn dir_handle(path: &std::path::Path) -> Dir {
    Dir::open_ambient_dir(path, ambient_authority()).expect("open the directory")
}

async fn open_embedded(
    path: &std::path::Path,
    cache: usize,
) -> Result<EmbeddedStore, store::StoreError> {
    EmbeddedStore::open(dir_handle(path), FILE, cache).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_embedded(dir.path(), CACHE).await.expect("open");
    conformance(&AnyStore::Embedded(store.clone())).await;
    // Again, now that reads are cached.
    conformance(&AnyStore::Embedded(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_without_cache_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_embedded(dir.path(), 0).await.expect("open");
    conformance(&AnyStore::Embedded(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_messages_across_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_embedded(dir.path(), CACHE).await.expect("open");
    store.put(&digest_of(7), "kept").await.expect("put");
    store.close().await.expect("close");
    let reopened = open_embedded(dir.path(), CACHE).await.expect("reopen");
    let found = reopened.get(&digest_of(7)).await.expect("get");
    assert_eq!(found.as_deref(), Some("kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_refuses_a_file_open_elsewhere() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _first = open_embedded(dir.path(), CACHE).await.expect("open");
    let second = open_embedded(dir.path(), CACHE).await;
    let error = second.expect_err("second open of the same file");
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("messages.redb"), "{error}");
}

#[tokio::test]
async fn memory_store_conforms() {
    conformance(&AnyStore::Memory(MemoryStore::new())).await;
}

/// Options that route the embedded store's file through a fault switch, and reopen fast.
fn unreliable(faults: &durable::Faults) -> durable::Options {
    durable::Options {
        faults: Some(faults.clone()),
        reopen_backoff_min: Duration::from_millis(10),
        reopen_backoff_max: Duration::from_millis(200),
        ..EmbeddedStore::default_options()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_behind_a_healthy_fault_switch_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = durable::Faults::new();
    let store = EmbeddedStore::open_with(dir_handle(dir.path()), FILE, CACHE, unreliable(&faults))
        .await
        .expect("open");
    conformance(&AnyStore::Embedded(store)).await;
    assert_eq!(faults.injected(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_answers_disk_full_then_heals_and_keeps_every_put() {
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = durable::Faults::new();
    // No read cache: the gets after healing must come from the reopened file.
    let store = EmbeddedStore::open_with(dir_handle(dir.path()), FILE, 0, unreliable(&faults))
        .await
        .expect("open");
    let store = AnyStore::Embedded(store);
    for n in 0..50 {
        store
            .put(&digest_of(n), &format!("kept {n}"))
            .await
            .expect("put");
    }
    let mut health = store.watch_health();

    faults.fail_all_writes(durable::Fault::NoSpace);
    let error = store
        .put(&digest_of(50), "lost")
        .await
        .expect_err("disk full");
    assert!(error.is_disk_full() && error.is_retryable(), "{error}");
    assert!(error.to_string().contains("no disk space"), "{error}");
    assert!(matches!(store.health(), Health::DiskFull { .. }));
    let error = store.get(&digest_of(1)).await.expect_err("broken");
    assert!(error.is_retryable(), "{error}");

    faults.heal();
    tokio::time::timeout(Duration::from_secs(20), health.wait_for(Health::is_healthy))
        .await
        .expect("healthy again")
        .expect("health channel open");
    for n in 0..50 {
        let found = store.get(&digest_of(n)).await.expect("get");
        assert_eq!(found, Some(format!("kept {n}")));
    }
    store
        .put(&digest_of(51), "new")
        .await
        .expect("put after healing");
    assert_eq!(
        store.get(&digest_of(51)).await.expect("get").as_deref(),
        Some("new")
    );
}

#[tokio::test]
async fn memory_store_can_be_switched_off() {
    let store = MemoryStore::new();
    let health = AnyStore::Memory(store.clone()).watch_health();
    store.set_unavailable(true);
    let error = store.get(&digest_of(1)).await.expect_err("switched off");
    assert!(error.is_retryable());
    assert!(matches!(*health.borrow(), Health::Unavailable { .. }));
    store.set_unavailable(false);
    assert!(health.borrow().is_healthy());
}

fn redis_options(url: String, key_prefix: String) -> RedisOptions {
    RedisOptions {
        url,
        key_prefix,
        connections: 2,
        timeout: Duration::from_secs(1),
    }
}

/// The test Redis, or `None` (skip) when it is not running and `CI` is not set.
async fn test_redis(prefix: &str) -> Option<RedisStore> {
    let store =
        RedisStore::new(&redis_options(test_redis_url(), prefix.into())).expect("valid URL");
    match store.ping().await {
        Ok(()) => Some(store),
        Err(error) => {
            server_missing(&format!("Redis at {}", test_redis_url()), error);
            None
        }
    }
}

/// Deletes every key under `prefix` (never anything else: the server is shared).
async fn delete_prefix(prefix: &str) {
    let client = redis::Client::open(test_redis_url()).expect("valid URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect for cleanup");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection)
        .await
        .expect("KEYS");
    for key in keys {
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .expect("DEL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms() {
    let prefix = unique_key_prefix("store");
    let Some(store) = test_redis(&prefix).await else {
        return;
    };
    conformance(&AnyStore::Redis(store)).await;
    delete_prefix(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_with_a_connection_per_thread_conforms() {
    let prefix = unique_key_prefix("store");
    let Some(shared) = test_redis(&prefix).await else {
        return;
    };
    drop(shared);
    let options = RedisOptions {
        connections: 0,
        ..redis_options(test_redis_url(), prefix.clone())
    };
    let store = RedisStore::new(&options).expect("valid URL");
    conformance(&AnyStore::Redis(store)).await;
    delete_prefix(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_stores_bare_hex_keys_under_its_prefix() {
    let prefix = unique_key_prefix("store");
    let Some(store) = test_redis(&prefix).await else {
        return;
    };
    store.put(&digest_of(9), "raw").await.expect("put");
    let client = redis::Client::open(test_redis_url()).expect("valid URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let raw: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}{}", digest_of(9).to_hex()))
        .query_async(&mut connection)
        .await
        .expect("GET");
    assert_eq!(raw.as_deref(), Some("raw"));
    delete_prefix(&prefix).await;
}

#[tokio::test]
async fn redis_store_that_cannot_connect_fails_fast_and_retryably() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let options = redis_options(format!("redis://127.0.0.1:{port}/0"), String::new());
    let store = RedisStore::new(&options).expect("valid URL");
    let started = Instant::now();
    let error = store.get(&digest_of(1)).await.expect_err("nothing listens");
    assert!(error.is_retryable(), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let error = store
        .put(&digest_of(1), "x")
        .await
        .expect_err("nothing listens");
    assert!(error.is_retryable(), "{error}");
}

#[test]
fn redis_store_rejects_a_bad_url() {
    let options = redis_options("http://example.com".into(), String::new());
    let error = RedisStore::new(&options).expect_err("not a Redis URL");
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("http://example.com"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_recovers_after_redis_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let Some(redis) = PrivateRedis::start_or_skip(port, dir.path()) else {
        return;
    };
    let options = redis_options(format!("redis://127.0.0.1:{port}/0"), String::new());
    let store = RedisStore::new(&options).expect("valid URL");
    store
        .put(&digest_of(1), "before")
        .await
        .expect("put while up");

    drop(redis);
    for _ in 0..3 {
        let started = Instant::now();
        let error = store.get(&digest_of(1)).await.expect_err("Redis is down");
        assert!(error.is_retryable(), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    let _redis = PrivateRedis::start(port, dir.path()).expect("restart redis-server");
    store
        .put(&digest_of(2), "after")
        .await
        .expect("put after restart");
    let found = store.get(&digest_of(2)).await.expect("get after restart");
    assert_eq!(found.as_deref(), Some("after"));
}
