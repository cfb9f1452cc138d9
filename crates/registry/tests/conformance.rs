//! One conformance suite, run against both registries: embedded (in memory, and with its
//! catalog in a temporary data directory) and Redis (the server at `PORTICO_TEST_REDIS`,
//! default `redis://127.0.0.1:6379`, under a unique key prefix). Without a Redis server the
//! Redis run is skipped, unless `CI` is set: then it fails.
//!
//! Leases and waits are real time here (Redis expires keys on its own clock), kept short.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use registry::{
    AgentInfo, AllocReason, AllocationOutcome, AllocationRequest, AnyRegistry, Change,
    EmbeddedRegistry, Instance, InstanceState, RedisOptions, RedisRegistry, Registry, ServiceSpec,
};
use service::DataDir;
use testkit::{server_missing, test_redis_url, unique_key_prefix};
use tokio::sync::broadcast;

/// Every behaviour check, against `registry`.
async fn conformance(registry: &AnyRegistry) {
    catalog_puts_replaces_and_removes(registry).await;
    agents_live_while_their_lease_is_renewed(registry).await;
    instances_are_listed_by_service_and_expire(registry).await;
    changes_are_announced_and_silent_renewals_are_not(registry).await;
    an_allocation_is_taken_once_and_answered_once(registry).await;
    a_waiting_agent_is_woken_by_a_request(registry).await;
    an_outcome_wakes_its_waiter(registry).await;
    use_marks_are_kept_per_instance(registry).await;
}

fn agent(id: &str, running: u32) -> AgentInfo {
    AgentInfo {
        id: id.into(),
        advertise: "10.0.0.1".parse().unwrap(),
        max_instances: 8,
        running,
        started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    }
}

fn instance(service: &str, id: &str, state: InstanceState) -> Instance {
    Instance {
        id: id.into(),
        service: service.into(),
        agent: "a1".into(),
        addr: "10.0.0.1:4001".parse().unwrap(),
        state,
        started_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
    }
}

async fn catalog_puts_replaces_and_removes(registry: &AnyRegistry) {
    let kind = registry.kind();
    let mut hello = ServiceSpec::new("hello", &["python3", "-m", "http.server", "{port}"]);
    hello.env.insert("GREETING".into(), "hi".into());
    registry.put_service(&hello).await.expect("put");
    registry
        .put_service(&ServiceSpec::new("alpha", &["a"]))
        .await
        .expect("put");
    let names: Vec<String> = registry
        .services()
        .await
        .expect("services")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["alpha", "hello"], "{kind}");
    hello.max = 9;
    registry.put_service(&hello).await.expect("replace");
    assert_eq!(
        registry.service("hello").await.unwrap(),
        Some(hello),
        "{kind}"
    );
    assert!(
        registry.remove_service("alpha").await.expect("remove"),
        "{kind}"
    );
    assert!(
        !registry
            .remove_service("alpha")
            .await
            .expect("remove again"),
        "{kind}"
    );
    assert_eq!(registry.services().await.unwrap().len(), 1, "{kind}");
}

async fn agents_live_while_their_lease_is_renewed(registry: &AnyRegistry) {
    let kind = registry.kind();
    let lease = Duration::from_millis(400);
    registry
        .heartbeat_agent(&agent("a1", 0), lease)
        .await
        .expect("heartbeat");
    registry
        .heartbeat_agent(&agent("a2", 1), lease)
        .await
        .expect("heartbeat");
    let mut found = registry.agents().await.expect("agents");
    found.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(found, vec![agent("a1", 0), agent("a2", 1)], "{kind}");
    // a1 is renewed, a2 is not.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        registry
            .heartbeat_agent(&agent("a1", 2), lease)
            .await
            .expect("renew");
    }
    let found = registry.agents().await.expect("agents");
    assert_eq!(found, vec![agent("a1", 2)], "{kind}: a2's lease ran out");
    registry.remove_agent("a1").await.expect("remove");
    assert!(registry.agents().await.unwrap().is_empty(), "{kind}");
}

async fn instances_are_listed_by_service_and_expire(registry: &AnyRegistry) {
    let kind = registry.kind();
    registry
        .put_service(&ServiceSpec::new("other", &["o"]))
        .await
        .unwrap();
    let long = Duration::from_secs(30);
    let short = Duration::from_millis(300);
    registry
        .put_instance(&instance("hello", "i1", InstanceState::Starting), long)
        .await
        .unwrap();
    registry
        .put_instance(&instance("hello", "i2", InstanceState::Ready), short)
        .await
        .unwrap();
    registry
        .put_instance(&instance("other", "i3", InstanceState::Ready), long)
        .await
        .unwrap();
    // Not in the catalog: only listed when asked for by name.
    registry
        .put_instance(&instance("ghost", "i4", InstanceState::Ready), long)
        .await
        .unwrap();
    let ids = |list: Vec<Instance>| -> HashSet<String> { list.into_iter().map(|i| i.id).collect() };
    let hello = registry.instances(Some("hello")).await.unwrap();
    assert_eq!(
        ids(hello),
        HashSet::from(["i1".into(), "i2".into()]),
        "{kind}"
    );
    let all = registry.instances(None).await.unwrap();
    assert_eq!(
        ids(all),
        HashSet::from(["i1".into(), "i2".into(), "i3".into()]),
        "{kind}"
    );
    assert_eq!(
        registry.instances(Some("ghost")).await.unwrap().len(),
        1,
        "{kind}"
    );

    // A state change replaces the record.
    registry
        .put_instance(&instance("hello", "i1", InstanceState::Ready), long)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hello = registry.instances(Some("hello")).await.unwrap();
    assert_eq!(
        hello,
        vec![instance("hello", "i1", InstanceState::Ready)],
        "{kind}: i2 expired"
    );

    registry.remove_instance("hello", "i1").await.unwrap();
    registry.remove_instance("other", "i3").await.unwrap();
    registry.remove_instance("ghost", "i4").await.unwrap();
    assert!(registry.instances(None).await.unwrap().is_empty(), "{kind}");
    registry.remove_service("other").await.unwrap();
}

/// Notices received within `limit`, until one equal to `wanted` arrives; fails without it.
async fn expect_notice(changes: &mut broadcast::Receiver<Change>, wanted: Change, kind: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline, changes.recv()).await {
            Ok(Ok(change)) if change == wanted => return,
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("{kind}: notices failed: {error}"),
            Err(_) => panic!("{kind}: no {wanted:?} notice within 3 s"),
        }
    }
}

async fn changes_are_announced_and_silent_renewals_are_not(registry: &AnyRegistry) {
    let kind = registry.kind();
    let mut changes = registry.subscribe();
    // Redis: the listener subscribes in the background; give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    registry
        .put_service(&ServiceSpec::new("notice", &["n"]))
        .await
        .unwrap();
    expect_notice(&mut changes, Change::Service("notice".into()), kind).await;
    let ready = instance("notice", "n1", InstanceState::Ready);
    registry
        .put_instance(&ready, Duration::from_secs(5))
        .await
        .unwrap();
    expect_notice(&mut changes, Change::Instance("notice".into()), kind).await;
    registry
        .heartbeat_agent(&agent("n-agent", 0), Duration::from_secs(5))
        .await
        .unwrap();
    expect_notice(&mut changes, Change::Agent("n-agent".into()), kind).await;

    // Renewing with the same content says nothing.
    registry
        .put_instance(&ready, Duration::from_secs(5))
        .await
        .unwrap();
    registry
        .heartbeat_agent(&agent("n-agent", 0), Duration::from_secs(5))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = Vec::new();
    while let Ok(change) = changes.try_recv() {
        extra.push(change);
    }
    assert!(extra.is_empty(), "{kind}: renewals announced {extra:?}");

    registry.remove_instance("notice", "n1").await.unwrap();
    expect_notice(&mut changes, Change::Instance("notice".into()), kind).await;
    registry.remove_agent("n-agent").await.unwrap();
    expect_notice(&mut changes, Change::Agent("n-agent".into()), kind).await;
    registry.remove_service("notice").await.unwrap();
    expect_notice(&mut changes, Change::Service("notice".into()), kind).await;
}

async fn an_allocation_is_taken_once_and_answered_once(registry: &AnyRegistry) {
    let kind = registry.kind();
    let none = registry
        .next_allocation("alloc-a1", Duration::from_millis(50))
        .await
        .expect("empty queue");
    assert_eq!(none, None, "{kind}");
    let first = AllocationRequest::new("hello", AllocReason::Cold, "proxy-1");
    let second = AllocationRequest::new("hello", AllocReason::SoftLimit, "proxy-2");
    registry
        .request_allocation("alloc-a1", &first)
        .await
        .unwrap();
    registry
        .request_allocation("alloc-a1", &second)
        .await
        .unwrap();

    let wait = Duration::from_millis(100);
    let taken = registry
        .next_allocation("alloc-a1", wait)
        .await
        .unwrap()
        .expect("first");
    assert_eq!(
        (taken.id.as_str(), taken.reason),
        (first.id.as_str(), AllocReason::Cold),
        "{kind}"
    );
    assert_eq!(taken.requested_by, "proxy-1", "{kind}");
    assert_eq!(
        registry.next_allocation("alloc-a2", wait).await.unwrap(),
        None,
        "{kind}: another agent's queue is empty"
    );
    let taken_second = registry
        .next_allocation("alloc-a1", wait)
        .await
        .unwrap()
        .expect("second");
    assert_eq!(taken_second.id, second.id, "{kind}");
    assert_eq!(
        registry.next_allocation("alloc-a1", wait).await.unwrap(),
        None,
        "{kind}"
    );

    let ready = AllocationOutcome::Ready(instance("hello", "i9", InstanceState::Ready));
    registry
        .finish_allocation("alloc-a1", &taken, &ready)
        .await
        .unwrap();
    let failed = AllocationOutcome::Failed {
        reason: "exit status 3".into(),
    };
    registry
        .finish_allocation("alloc-a1", &taken_second, &failed)
        .await
        .unwrap();
    let quick = Duration::from_millis(100);
    assert_eq!(
        registry.wait_allocation(&first.id, quick).await.unwrap(),
        Some(ready),
        "{kind}"
    );
    assert_eq!(
        registry.wait_allocation(&second.id, quick).await.unwrap(),
        Some(failed),
        "{kind}"
    );
    let started = Instant::now();
    assert_eq!(
        registry.wait_allocation("unknown", quick).await.unwrap(),
        None,
        "{kind}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{kind}: {:?}",
        started.elapsed()
    );
}

async fn a_waiting_agent_is_woken_by_a_request(registry: &AnyRegistry) {
    let kind = registry.kind();
    let request = AllocationRequest::new("hello", AllocReason::Min, "test");
    let requester = registry.clone();
    let sent = request.clone();
    let sender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        requester
            .request_allocation("wake-a1", &sent)
            .await
            .unwrap();
    });
    let started = Instant::now();
    let taken = registry
        .next_allocation("wake-a1", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("woken by the request");
    assert_eq!(taken.id, request.id, "{kind}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{kind}: {:?}",
        started.elapsed()
    );
    sender.await.unwrap();
    registry
        .finish_allocation(
            "wake-a1",
            &taken,
            &AllocationOutcome::Failed {
                reason: "test".into(),
            },
        )
        .await
        .unwrap();
}

async fn an_outcome_wakes_its_waiter(registry: &AnyRegistry) {
    let kind = registry.kind();
    let request = AllocationRequest::new("hello", AllocReason::Cold, "test");
    registry
        .request_allocation("outcome-a1", &request)
        .await
        .unwrap();
    let waiter = {
        let registry = registry.clone();
        let id = request.id.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = registry.wait_allocation(&id, Duration::from_secs(5)).await;
            (outcome, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let taken = registry
        .next_allocation("outcome-a1", Duration::from_millis(500))
        .await
        .unwrap()
        .expect("request");
    let outcome = AllocationOutcome::Failed {
        reason: "no room".into(),
    };
    let answered = Instant::now();
    registry
        .finish_allocation("outcome-a1", &taken, &outcome)
        .await
        .unwrap();
    let (got, _) = waiter.await.unwrap();
    assert_eq!(got.unwrap(), Some(outcome), "{kind}");
    assert!(
        answered.elapsed() < Duration::from_millis(400),
        "{kind}: woken after {:?}",
        answered.elapsed()
    );
}

async fn use_marks_are_kept_per_instance(registry: &AnyRegistry) {
    let kind = registry.kind();
    let ids = vec!["u1".to_string(), "u2".to_string()];
    assert_eq!(
        registry.last_used("hello", &ids).await.unwrap(),
        vec![None, None],
        "{kind}"
    );
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
    registry
        .put_instance(
            &instance("hello", "u1", InstanceState::Ready),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    registry.mark_used("hello", "u1", at).await.unwrap();
    assert_eq!(
        registry.last_used("hello", &ids).await.unwrap(),
        vec![Some(at), None],
        "{kind}"
    );
    registry.remove_instance("hello", "u1").await.unwrap();
    assert_eq!(
        registry.last_used("hello", &ids).await.unwrap(),
        vec![None, None],
        "{kind}: removed with the instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_registry_in_memory_conforms() {
    conformance(&AnyRegistry::Embedded(EmbeddedRegistry::in_memory())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_registry_with_a_catalog_file_conforms_and_keeps_the_catalog() {
    let temp = tempfile::tempdir().unwrap();
    let (dir, _) = DataDir::open_or_create(temp.path()).unwrap();
    let registry = EmbeddedRegistry::open(dir.clone()).await.expect("open");
    conformance(&AnyRegistry::Embedded(registry.clone())).await;
    registry
        .put_service(&ServiceSpec::new("kept", &["k"]))
        .await
        .unwrap();
    registry
        .heartbeat_agent(&agent("gone", 0), Duration::from_secs(30))
        .await
        .unwrap();
    drop(registry);
    let reopened = EmbeddedRegistry::open(dir).await.expect("reopen");
    let names: Vec<String> = reopened
        .services()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["hello", "kept"]);
    assert!(
        reopened.agents().await.unwrap().is_empty(),
        "leases are not persisted"
    );
}

#[tokio::test]
async fn embedded_registry_with_a_damaged_catalog_fails_to_open_naming_the_file() {
    let temp = tempfile::tempdir().unwrap();
    std::fs::write(temp.path().join("catalog.json"), "{not json").unwrap();
    let (dir, _) = DataDir::open_or_create(temp.path()).unwrap();
    let error = EmbeddedRegistry::open(dir)
        .await
        .expect_err("damaged catalog");
    assert!(error.to_string().contains("catalog.json"), "{error}");
}

/// The test Redis under a fresh prefix, or `None` (skip) without a server and without `CI`.
async fn test_redis(test: &str) -> Option<RedisRegistry> {
    let options = RedisOptions {
        key_prefix: unique_key_prefix(test),
        ..RedisOptions::new(&test_redis_url())
    };
    let registry = RedisRegistry::new(&options).expect("valid URL");
    match registry.ping().await {
        Ok(()) => Some(registry),
        Err(error) => {
            server_missing(&format!("Redis at {}", test_redis_url()), error);
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_registry_conforms() {
    let Some(registry) = test_redis("registry-conformance").await else {
        return;
    };
    conformance(&AnyRegistry::Redis(registry.clone())).await;
    registry.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_registry_uses_the_documented_keys() {
    let Some(registry) = test_redis("registry-keys").await else {
        return;
    };
    let prefix = unique_key_prefix("registry-keys-layout");
    let options = RedisOptions {
        key_prefix: prefix.clone(),
        ..RedisOptions::new(&test_redis_url())
    };
    let registry2 = RedisRegistry::new(&options).unwrap();
    drop(registry);
    registry2
        .put_service(&ServiceSpec::new("hello", &["h"]))
        .await
        .unwrap();
    registry2
        .heartbeat_agent(&agent("a1", 0), Duration::from_secs(10))
        .await
        .unwrap();
    registry2
        .put_instance(
            &instance("hello", "i1", InstanceState::Ready),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let client = redis::Client::open(test_redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let spec: String = redis::cmd("GET")
        .arg(format!("{prefix}svc:hello"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(spec.contains("\"command\":[\"h\"]"), "{spec}");
    let names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{prefix}svcs"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(names, ["hello"]);
    for key in [
        format!("{prefix}agent:a1"),
        format!("{prefix}inst:hello:i1"),
    ] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(ttl > 5000 && ttl <= 10_000, "{key}: TTL {ttl} ms");
    }
    let instance: String = redis::cmd("GET")
        .arg(format!("{prefix}inst:hello:i1"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(instance.contains("\"state\":\"ready\""), "{instance}");
    registry2
        .request_allocation(
            "a1",
            &AllocationRequest::new("hello", AllocReason::Cold, "t"),
        )
        .await
        .unwrap();
    let kind: String = redis::cmd("TYPE")
        .arg(format!("{prefix}alloc:a1"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(kind, "stream");
    registry2.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_request_taken_by_a_killed_agent_is_delivered_to_its_next_run() {
    let Some(first_run) = test_redis("registry-pending").await else {
        return;
    };
    let request = AllocationRequest::new("hello", AllocReason::Cold, "proxy");
    first_run.request_allocation("a1", &request).await.unwrap();
    let wait = Duration::from_millis(100);
    let taken = first_run
        .next_allocation("a1", wait)
        .await
        .unwrap()
        .expect("taken");
    assert_eq!(taken.id, request.id);
    // The agent dies before answering. Its next run (a new process: a new registry client
    // with the same prefix) gets the request again, first.
    let options = RedisOptions {
        key_prefix: first_run.key_prefix().to_string(),
        ..RedisOptions::new(&test_redis_url())
    };
    let next_run = RedisRegistry::new(&options).unwrap();
    let again = next_run
        .next_allocation("a1", wait)
        .await
        .unwrap()
        .expect("redelivered");
    assert_eq!(again.id, request.id);
    next_run
        .finish_allocation(
            "a1",
            &again,
            &AllocationOutcome::Failed { reason: "x".into() },
        )
        .await
        .unwrap();
    // Answered: no run gets it again.
    let third_run = RedisRegistry::new(&options).unwrap();
    assert_eq!(third_run.next_allocation("a1", wait).await.unwrap(), None);
    first_run.clear().await.unwrap();
}

#[tokio::test]
async fn redis_registry_that_cannot_connect_fails_fast_and_retryably() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let options = RedisOptions {
        timeout: Duration::from_millis(500),
        ..RedisOptions::new(&format!("redis://127.0.0.1:{port}/0"))
    };
    let registry = RedisRegistry::new(&options).unwrap();
    let started = Instant::now();
    let error = registry.services().await.expect_err("nothing listens");
    assert!(error.is_retryable(), "{error}");
    let error = registry
        .next_allocation("a1", Duration::from_secs(5))
        .await
        .expect_err("nothing listens");
    assert!(error.is_retryable(), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn redis_registry_rejects_a_bad_url_naming_it() {
    let error = RedisRegistry::new(&RedisOptions::new("http://example.com")).expect_err("bad URL");
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("http://example.com"), "{error}");
}
