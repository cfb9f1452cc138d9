//! A Redis outage, on a private `redis-server` (the shared one must never be stopped): while
//! Redis is down the view keeps serving what it had and calls fail fast with retryable
//! errors; when Redis is back (its saved catalog reloaded, the leases long expired) the
//! agent's renewals register it and its instance again and every view heals by itself.
//! Without `redis-server` the test is skipped, unless `CI` is set: then it fails.

use std::time::{Duration, Instant, SystemTime};

use registry::{
    AgentInfo, AnyRegistry, Instance, InstanceState, RedisOptions, RedisRegistry, Registry,
    ServiceSpec, View,
};
use service::Background;
use testkit::PrivateRedis;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn agent() -> AgentInfo {
    AgentInfo {
        id: "host-a".into(),
        advertise: "127.0.0.1".parse().unwrap(),
        max_instances: 4,
        running: 1,
        started_at: SystemTime::now(),
    }
}

fn instance() -> Instance {
    Instance {
        id: "i1".into(),
        service: "hello".into(),
        agent: "host-a".into(),
        addr: "127.0.0.1:4000".parse().unwrap(),
        state: InstanceState::Ready,
        started_at: SystemTime::now(),
    }
}

/// Waits until `check` holds, polling every 50 ms, failing with `what` after `limit`.
async fn eventually(limit: Duration, what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What an agent does: renew itself and its instance every `every`, ignoring failures.
fn renewals(
    registry: RedisRegistry,
    lease: Duration,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let _ = registry.heartbeat_agent(&agent(), lease).await;
            let _ = registry.put_instance(&instance(), lease).await;
            tokio::time::sleep(every).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_serves_through_a_redis_outage_and_heals_when_redis_returns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let Some(redis) = PrivateRedis::start_or_skip(port, dir.path()) else {
        return;
    };
    let options = RedisOptions {
        timeout: Duration::from_millis(300),
        ..RedisOptions::new(&format!("redis://127.0.0.1:{port}/0"))
    };
    let agent_side = RedisRegistry::new(&options).unwrap();
    let proxy_side = RedisRegistry::new(&options).unwrap();
    agent_side
        .put_service(&ServiceSpec::new("hello", &["x"]))
        .await
        .unwrap();
    let lease = Duration::from_secs(2);
    let renewing = renewals(agent_side.clone(), lease, lease / 3);
    let background = Background::new("test");
    let view = View::start(AnyRegistry::Redis(proxy_side.clone()), &background).await;
    eventually(Duration::from_secs(3), "the instance in the view", || {
        view.instances("hello").len() == 1 && view.agents().len() == 1
    })
    .await;

    // Persist the catalog, then take Redis away for longer than the leases.
    let client = redis::Client::open(options.url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SAVE")
        .query_async(&mut connection)
        .await
        .unwrap();
    drop(redis);
    let outage = Instant::now();
    let started = Instant::now();
    let error = proxy_side.services().await.expect_err("Redis is down");
    assert!(error.is_retryable(), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "failed in {:?}",
        started.elapsed()
    );
    tokio::time::sleep(lease * 2).await;
    assert!(!view.reachable(), "the view knows Redis is unreachable");
    assert_eq!(
        view.instances("hello").len(),
        1,
        "the view kept its instance"
    );
    assert!(view.service("hello").is_some(), "the view kept the catalog");

    // Redis returns with the saved catalog; the saved leases have expired meanwhile.
    let _redis = PrivateRedis::start(port, dir.path()).expect("restart redis-server");
    eprintln!("outage lasted {:?}", outage.elapsed());
    eventually(
        Duration::from_secs(6),
        "the view healed (reachable, agent and instance back)",
        || view.reachable() && view.instances("hello").len() == 1 && view.agents().len() == 1,
    )
    .await;
    let registered = proxy_side
        .instances(Some("hello"))
        .await
        .expect("read after the outage");
    assert_eq!(registered.len(), 1, "the agent re-registered its instance");

    // Notices flow again: a change made now shows up without waiting for a re-read.
    let mut changed = view.changed();
    changed.borrow_and_update();
    agent_side
        .put_service(&ServiceSpec::new("second", &["y"]))
        .await
        .unwrap();
    let started = Instant::now();
    eventually(
        Duration::from_secs(3),
        "the new service in the view",
        || view.service("second").is_some(),
    )
    .await;
    eprintln!("new service seen after {:?}", started.elapsed());
    renewing.abort();
    background.stop(Duration::from_secs(1)).await;
}
