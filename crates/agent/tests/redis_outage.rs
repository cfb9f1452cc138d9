//! An agent on Redis through a Redis outage (a private `redis-server`): its instance keeps
//! running and answering while Redis is gone for longer than the leases, and when Redis is
//! back the agent and its instance are registered again and a view of another process heals.
//! Without `redis-server` the test is skipped, unless `CI` is set: then it fails.

use std::time::{Duration, Instant};

use agent::{Agent, AgentConfig};
use registry::{
    AllocReason, AllocationOutcome, AllocationRequest, AnyRegistry, RedisOptions, RedisRegistry,
    Registry, ServiceSpec, View,
};
use service::{Background, DataDir};
use testkit::{free_port, PrivateRedis};

async fn answers(url: &str) -> bool {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    matches!(client.get(url).send().await, Ok(r) if r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_keep_running_through_a_redis_outage_and_are_registered_again() {
    let temp = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let Some(redis) = PrivateRedis::start_or_skip(port, temp.path()) else {
        return;
    };
    let options = RedisOptions {
        timeout: Duration::from_millis(300),
        ..RedisOptions::new(&format!("redis://127.0.0.1:{port}/0"))
    };
    let registry = AnyRegistry::Redis(RedisRegistry::new(&options).unwrap());
    let bin = testkit::testserver_bin().unwrap().display().to_string();
    let mut spec = ServiceSpec::new("hello", &[&bin, "--port", "{port}"]);
    spec.health = "/_health".into();
    registry.put_service(&spec).await.unwrap();

    let (data_dir, _) = DataDir::open_or_create(&temp.path().join("data")).unwrap();
    let background = Background::new("agent-test");
    let view = View::start(registry.clone(), &background).await;
    let mut config = AgentConfig::new("host-a", "127.0.0.1".parse().unwrap());
    config.lease = Duration::from_secs(1);
    let agent = Agent::start(config, view, &data_dir, &background)
        .await
        .unwrap();
    let request = AllocationRequest::new("hello", AllocReason::Cold, "test");
    registry
        .request_allocation("host-a", &request)
        .await
        .unwrap();
    let outcome = registry
        .wait_allocation(&request.id, Duration::from_secs(10))
        .await
        .unwrap();
    let Some(AllocationOutcome::Ready(instance)) = outcome else {
        panic!("{outcome:?}")
    };
    let url = format!("http://{}/", instance.addr);
    assert!(answers(&url).await);

    // A proxy elsewhere, with its own connection and view.
    let proxy_background = Background::new("proxy-test");
    let proxy_view = View::start(
        AnyRegistry::Redis(RedisRegistry::new(&options).unwrap()),
        &proxy_background,
    )
    .await;
    assert_eq!(proxy_view.instances("hello").len(), 1);

    let client = redis::Client::open(options.url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SAVE")
        .query_async(&mut connection)
        .await
        .unwrap();
    drop(redis);
    // Three leases without Redis: the instance runs on, the proxy's view keeps it.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            answers(&url).await,
            "the instance answers during the outage"
        );
    }
    assert_eq!(
        proxy_view.instances("hello").len(),
        1,
        "the view kept the instance"
    );
    assert!(!proxy_view.reachable());

    let _redis = PrivateRedis::start(port, temp.path()).expect("restart redis-server");
    let back = Instant::now();
    loop {
        let agents = registry.agents().await.unwrap_or_default();
        let instances = registry.instances(Some("hello")).await.unwrap_or_default();
        let healed = proxy_view.reachable() && proxy_view.instances("hello").len() == 1;
        if agents.len() == 1 && instances.iter().any(|i| i.id == instance.id) && healed {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "re-registered within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("registered again {:?} after Redis returned", back.elapsed());
    assert!(answers(&url).await);
    agent.stop().await;
    background.stop(Duration::from_secs(2)).await;
    proxy_background.stop(Duration::from_secs(1)).await;
}
