//! The job-records conformance suite against both stores: embedded (`jobs.redb`) and Redis
//! (the shared test server, `PORTICO_TEST_REDIS`; with `CI` set a missing Redis fails).

use std::time::Duration;

use jobs::conformance::records::SUITE;
use jobs::records::{LocalDb, Records, RedisRecords};

async fn embedded(dir: &std::path::Path) -> Records {
    let db = LocalDb::open_at(dir).await.unwrap();
    Records::Embedded(db)
}

/// A Redis store under a fresh prefix, or `None` (skip) when Redis is missing without CI.
async fn redis(test: &str) -> Option<(Records, String)> {
    let prefix = testkit::unique_key_prefix(test);
    let store =
        RedisRecords::new(&testkit::test_redis_url(), &prefix, Duration::from_secs(2)).unwrap();
    if let Err(error) = store.ping().await {
        testkit::server_missing("redis", error);
        return None;
    }
    Some((Records::Redis(store), prefix))
}

async fn clean(prefix: &str) {
    let client = redis::Client::open(testkit::test_redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_records_conform() {
    for (name, check) in SUITE {
        let temp = tempfile::tempdir().unwrap();
        eprintln!("embedded: {name}");
        check(embedded(temp.path()).await).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_records_conform() {
    for (name, check) in SUITE {
        let Some((records, prefix)) = redis(name).await else {
            return;
        };
        eprintln!("redis: {name}");
        check(records).await;
        clean(&prefix).await;
    }
}

#[tokio::test]
async fn an_unreachable_redis_is_a_retryable_error_within_the_timeout() {
    // A port nothing listens on.
    let store = RedisRecords::new("redis://127.0.0.1:1", "x:", Duration::from_millis(500)).unwrap();
    let started = std::time::Instant::now();
    let error = Records::Redis(store)
        .get(jobs::JobId::new())
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(error.to_string().contains("redis"), "{error}");
}
