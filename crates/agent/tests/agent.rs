//! The agent with real child processes (`portico-testserver`, `sh`, `python3 -m
//! http.server`) on the embedded registry: starts and health waits, lease renewal, crash
//! restarts with backoff, failures that name the exit status and the log, idle stop down to
//! `min`, drain then SIGTERM then SIGKILL, leftovers of a previous run.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent::{Agent, AgentConfig};
use registry::{
    AllocReason, AllocationOutcome, AllocationRequest, AnyRegistry, EmbeddedRegistry, Instance,
    InstanceState, Registry, ServiceSpec, View,
};
use service::{Background, DataDir};

struct Harness {
    registry: AnyRegistry,
    view: View,
    agent: Agent,
    background: Background,
    data_dir: PathBuf,
    _temp: tempfile::TempDir,
}

const AGENT_ID: &str = "test-agent";

fn test_config() -> AgentConfig {
    let mut config = AgentConfig::new(AGENT_ID, "127.0.0.1".parse().unwrap());
    config.lease = Duration::from_millis(900);
    config.drain = Duration::from_millis(200);
    config.stop_timeout = Duration::from_millis(800);
    config
}

async fn harness_with(config: AgentConfig, specs: &[ServiceSpec]) -> Harness {
    let temp = tempfile::tempdir().unwrap();
    harness_in(temp, config, specs).await
}

async fn harness_in(
    temp: tempfile::TempDir,
    config: AgentConfig,
    specs: &[ServiceSpec],
) -> Harness {
    let data_dir = temp.path().join("data");
    let (dir, _) = DataDir::open_or_create(&data_dir).unwrap();
    let registry = AnyRegistry::Embedded(EmbeddedRegistry::in_memory());
    for spec in specs {
        registry.put_service(spec).await.unwrap();
    }
    let background = Background::new("agent-test");
    let view = View::start(registry.clone(), &background).await;
    let agent = Agent::start(config, view.clone(), &dir, &background)
        .await
        .unwrap();
    Harness {
        registry,
        view,
        agent,
        background,
        data_dir,
        _temp: temp,
    }
}

fn testserver_spec(name: &str) -> ServiceSpec {
    let bin = testkit::testserver_bin().unwrap().display().to_string();
    let mut spec = ServiceSpec::new(name, &[&bin, "--port", "{port}"]);
    spec.health = "/_health".into();
    spec.start_timeout = Duration::from_secs(5);
    spec
}

impl Harness {
    async fn allocate(&self, service: &str, reason: AllocReason) -> AllocationOutcome {
        let request = AllocationRequest::new(service, reason, "test");
        self.registry
            .request_allocation(AGENT_ID, &request)
            .await
            .unwrap();
        self.registry
            .wait_allocation(&request.id, Duration::from_secs(15))
            .await
            .unwrap()
            .expect("an answer within 15 s")
    }

    async fn allocate_ready(&self, service: &str) -> Instance {
        match self.allocate(service, AllocReason::Cold).await {
            AllocationOutcome::Ready(instance) => instance,
            AllocationOutcome::Failed { reason } => panic!("allocation failed: {reason}"),
        }
    }

    async fn registered(&self, service: &str) -> Vec<Instance> {
        self.registry.instances(Some(service)).await.unwrap()
    }

    /// The pid the agent recorded for an instance.
    fn pid_of(&self, instance: &Instance) -> i32 {
        let path = self
            .data_dir
            .join(format!("agent/{AGENT_ID}/pids/{}.json", instance.id));
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("pid record")).unwrap();
        record["pid"].as_i64().unwrap() as i32
    }

    async fn stop(self) {
        self.agent.stop().await;
        self.background.stop(Duration::from_secs(2)).await;
    }
}

/// Polls `check` every 20 ms until it holds; fails naming `what` after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll_until(limit, what, || {
        let done = check();
        async move { done.await.then_some(()) }
    })
    .await
}

/// Polls `find` every 20 ms until it finds something; fails naming `what` after `limit`.
async fn poll_until<T, F, Fut>(limit: Duration, what: &str, mut find: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = find().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_json(url: &str) -> reqwest::Result<serde_json::Value> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?
        .get(url)
        .send()
        .await?
        .json()
        .await
}

fn alive(pid: i32) -> bool {
    // Signal 0: exists (a zombie counts until reaped, so check its state too).
    let exists = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false);
    exists && !zombie
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_allocation_starts_an_instance_that_answers_and_keeps_its_lease() {
    let harness = harness_with(test_config(), &[testserver_spec("hello")]).await;
    let started = Instant::now();
    let instance = harness.allocate_ready("hello").await;
    eprintln!("allocation to ready: {:?}", started.elapsed());
    assert_eq!(instance.state, InstanceState::Ready);
    assert_eq!(instance.agent, AGENT_ID);
    assert_eq!(instance.addr.ip().to_string(), "127.0.0.1");
    let answer = get_json(&format!("http://{}/x", instance.addr))
        .await
        .unwrap();
    assert_eq!(
        answer["server"],
        instance.id.as_str(),
        "PORTICO_INSTANCE_ID reached the instance"
    );
    assert_eq!(
        answer["port"],
        instance.addr.port(),
        "{{port}} reached the instance"
    );

    // Leases of 900 ms, renewed: still registered well after several leases.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(harness.registered("hello").await, vec![instance.clone()]);
    let agents = harness.registry.agents().await.unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].running, 1);
    let log = harness
        .data_dir
        .join(format!("instances/hello/{}.log", instance.id));
    let text = std::fs::read_to_string(&log).expect("the instance's log");
    assert!(text.contains("listening on port"), "{text}");

    // A cold request while it runs gets the same instance, no second process.
    let again = harness.allocate_ready("hello").await;
    assert_eq!(again.id, instance.id);
    assert_eq!(harness.registered("hello").await.len(), 1);

    let pid = harness.pid_of(&instance);
    harness.stop().await;
    assert!(!alive(pid), "stopping the agent stopped its instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_share_one_start() {
    let harness = harness_with(test_config(), &[testserver_spec("hello")]).await;
    let requests: Vec<AllocationRequest> = (0..5)
        .map(|_| AllocationRequest::new("hello", AllocReason::Cold, "test"))
        .collect();
    for request in &requests {
        harness
            .registry
            .request_allocation(AGENT_ID, request)
            .await
            .unwrap();
    }
    let mut ids = std::collections::HashSet::new();
    for request in &requests {
        let outcome = harness
            .registry
            .wait_allocation(&request.id, Duration::from_secs(15))
            .await
            .unwrap();
        match outcome {
            Some(AllocationOutcome::Ready(instance)) => ids.insert(instance.id),
            other => panic!("{other:?}"),
        };
    }
    assert_eq!(ids.len(), 1, "one instance for every cold request");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_instance_is_deregistered_at_once_and_restarted_with_backoff() {
    let mut spec = testserver_spec("hello");
    spec.min = 1;
    let harness = harness_with(test_config(), &[spec]).await;
    let first = poll_until(
        Duration::from_secs(10),
        "the min instance ready",
        || async { harness.view.instances("hello").first().cloned() },
    )
    .await;
    let pid = harness.pid_of(&first);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();

    eventually(
        Duration::from_millis(500),
        "the killed instance deregistered",
        || async {
            harness
                .registered("hello")
                .await
                .iter()
                .all(|i| i.id != first.id)
        },
    )
    .await;
    eprintln!("deregistered after {:?}", killed.elapsed());
    let second = poll_until(Duration::from_secs(6), "a new instance ready", || async {
        harness
            .registered("hello")
            .await
            .into_iter()
            .find(|i| i.state == InstanceState::Ready)
    })
    .await;
    let restarted_after = killed.elapsed();
    eprintln!("restarted after {restarted_after:?}");
    assert!(
        restarted_after >= Duration::from_millis(900)
            && restarted_after < Duration::from_millis(1800),
        "the first restart waits about 1 s: {restarted_after:?}"
    );
    assert_ne!(second.id, first.id);
    get_json(&format!("http://{}/", second.addr))
        .await
        .expect("the restarted instance answers");

    // A second crash in a row waits about 2 s.
    let pid = harness.pid_of(&second);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    eventually(Duration::from_secs(8), "a third instance ready", || async {
        harness
            .registered("hello")
            .await
            .iter()
            .any(|i| i.id != second.id && i.state == InstanceState::Ready)
    })
    .await;
    let restarted_after = killed.elapsed();
    assert!(
        restarted_after >= Duration::from_millis(1900)
            && restarted_after < Duration::from_millis(2800),
        "the second restart waits about 2 s: {restarted_after:?}"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_exits_fails_the_allocation_with_its_status_and_last_lines() {
    let mut spec = ServiceSpec::new(
        "broken",
        &[
            "sh",
            "-c",
            "echo starting up; echo 'fatal: no config at /etc/x.conf' >&2; exit 3",
        ],
    );
    spec.start_timeout = Duration::from_secs(5);
    let harness = harness_with(test_config(), &[spec]).await;
    let outcome = harness.allocate("broken", AllocReason::Cold).await;
    let AllocationOutcome::Failed { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("exit status: 3"), "{reason}");
    assert!(
        reason.contains("fatal: no config at /etc/x.conf"),
        "{reason}"
    );
    assert!(reason.contains("starting up"), "{reason}");
    assert!(
        reason.contains("instances/broken/"),
        "names the log: {reason}"
    );
    assert!(harness.registered("broken").await.is_empty());
    // Not restarted: nobody wants a service whose first start failed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(harness.registered("broken").await.is_empty());
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_never_answers_fails_after_start_timeout_naming_the_check() {
    let mut spec = ServiceSpec::new("mute", &["sleep", "30"]);
    spec.start_timeout = Duration::from_millis(700);
    spec.health = "/ping".into();
    let harness = harness_with(test_config(), &[spec]).await;
    let started = Instant::now();
    let outcome = harness.allocate("mute", AllocReason::Cold).await;
    let AllocationOutcome::Failed { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert!(reason.contains("did not answer GET /ping"), "{reason}");
    assert!(reason.contains("within 700ms"), "{reason}");
    assert!(
        reason.contains("Connection refused") || reason.contains("connection refused"),
        "{reason}"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_services_and_full_agents_fail_with_the_reason() {
    let mut config = test_config();
    config.max_instances = 1;
    let harness = harness_with(
        config,
        &[testserver_spec("hello"), testserver_spec("other")],
    )
    .await;
    let AllocationOutcome::Failed { reason } = harness.allocate("nope", AllocReason::Cold).await
    else {
        panic!("unknown service allocated")
    };
    assert!(reason.contains("unknown service \"nope\""), "{reason}");
    harness.allocate_ready("hello").await;
    let AllocationOutcome::Failed { reason } = harness.allocate("other", AllocReason::Cold).await
    else {
        panic!("past max_instances")
    };
    assert!(reason.contains("is full (1 of 1 instances)"), "{reason}");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_above_min_are_stopped_and_used_ones_kept() {
    let mut spec = testserver_spec("hello");
    spec.min = 1;
    spec.idle_timeout = Duration::from_millis(1500);
    let harness = harness_with(test_config(), &[spec]).await;
    eventually(Duration::from_secs(10), "the min instance", || async {
        harness.view.instances("hello").len() == 1
    })
    .await;
    let first = harness.view.instances("hello")[0].clone();
    let second = match harness.allocate("hello", AllocReason::SoftLimit).await {
        AllocationOutcome::Ready(instance) => instance,
        other => panic!("{other:?}"),
    };
    assert_ne!(
        first.id, second.id,
        "a soft-limit request starts another instance"
    );

    // The proxy uses only the second one; the first goes idle.
    let marking = {
        let registry = harness.registry.clone();
        let id = second.id.clone();
        tokio::spawn(async move {
            loop {
                registry
                    .mark_used("hello", &id, std::time::SystemTime::now())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let saw_draining = AtomicBool::new(false);
    eventually(
        Duration::from_secs(8),
        "the idle instance stopped",
        || async {
            let list = harness.registered("hello").await;
            if list
                .iter()
                .any(|i| i.id == first.id && i.state == InstanceState::Draining)
            {
                saw_draining.store(true, Ordering::SeqCst);
            }
            !list.iter().any(|i| i.id == first.id)
        },
    )
    .await;
    assert!(
        saw_draining.load(Ordering::SeqCst),
        "the idle instance was draining before it went away"
    );
    assert_eq!(
        harness
            .registered("hello")
            .await
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>(),
        [second.id.as_str()]
    );

    // Nothing uses the last one either, but it is the min: it stays.
    marking.abort();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        harness.registered("hello").await.len(),
        1,
        "min instances are never idle-stopped"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_service_drains_then_terminates_and_kills_a_child_that_ignores_sigterm() {
    let bin = testkit::testserver_bin().unwrap().display().to_string();
    let script = format!("trap '' TERM; exec {bin} --port $PORT");
    let mut stubborn = ServiceSpec::new("stubborn", &["sh", "-c", &script]);
    stubborn.health = "/_health".into();
    let polite = testserver_spec("polite");
    let harness = harness_with(test_config(), &[stubborn, polite]).await;
    let stubborn = harness.allocate_ready("stubborn").await;
    let polite = harness.allocate_ready("polite").await;
    let (stubborn_pid, polite_pid) = (harness.pid_of(&stubborn), harness.pid_of(&polite));

    let removed = Instant::now();
    harness.registry.remove_service("stubborn").await.unwrap();
    harness.registry.remove_service("polite").await.unwrap();
    eventually(Duration::from_secs(2), "the instance draining", || async {
        let list = harness.registered("stubborn").await;
        list.first()
            .is_some_and(|i| i.state == InstanceState::Draining)
    })
    .await;
    // The polite one exits at SIGTERM, right after the drain (200 ms).
    eventually(
        Duration::from_secs(5),
        "the polite instance gone",
        || async { !alive(polite_pid) },
    )
    .await;
    let polite_took = removed.elapsed();
    // The stubborn one ignores SIGTERM: killed after stop_timeout (800 ms) more.
    eventually(
        Duration::from_secs(5),
        "the stubborn instance killed",
        || async { !alive(stubborn_pid) },
    )
    .await;
    let stubborn_took = removed.elapsed();
    eprintln!("polite stopped after {polite_took:?}, stubborn after {stubborn_took:?}");
    assert!(
        polite_took >= Duration::from_millis(200),
        "drained first: {polite_took:?}"
    );
    assert!(polite_took < Duration::from_millis(1000), "{polite_took:?}");
    assert!(
        stubborn_took >= Duration::from_millis(1000),
        "SIGKILL only after stop_timeout: {stubborn_took:?}"
    );
    eventually(Duration::from_secs(2), "both deregistered", || async {
        harness
            .registry
            .instances(Some("stubborn"))
            .await
            .unwrap()
            .is_empty()
            && harness
                .registry
                .instances(Some("polite"))
                .await
                .unwrap()
                .is_empty()
    })
    .await;
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_stops_what_its_previous_run_left_but_not_a_reused_pid() {
    let temp = tempfile::tempdir().unwrap();
    let pids = temp.path().join(format!("data/agent/{AGENT_ID}/pids"));
    std::fs::create_dir_all(&pids).unwrap();
    // What a killed agent leaves: a running instance in its own process group, and its record.
    let leftover = std::process::Command::new("sh")
        .args(["-c", "trap '' TERM; sleep 60 & wait"])
        .process_group(0)
        .spawn()
        .unwrap();
    let leftover_pid = leftover.id();
    let ticks = start_ticks(leftover_pid);
    write_record(&pids, "left1", leftover_pid, ticks);
    // A record whose pid now belongs to another process (this test): must not be touched.
    write_record(
        &pids,
        "reused",
        std::process::id(),
        start_ticks(std::process::id()) + 1,
    );
    let reaper = std::thread::spawn(move || {
        let mut leftover = leftover;
        leftover.wait()
    });

    let started = Instant::now();
    let harness = harness_in(temp, test_config(), &[]).await;
    let status = reaper.join().unwrap().unwrap();
    eprintln!("leftover stopped within {:?}: {status}", started.elapsed());
    assert!(!status.success());
    assert_eq!(
        std::fs::read_dir(&pids).unwrap().count(),
        0,
        "records deleted"
    );
    harness.stop().await;
}

fn write_record(dir: &Path, id: &str, pid: u32, start_ticks: u64) {
    let record =
        serde_json::json!({"id": id, "service": "hello", "pid": pid, "start_ticks": start_ticks});
    std::fs::write(dir.join(format!("{id}.json")), record.to_string()).unwrap();
}

fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_specs_python_example_starts_and_answers() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        testkit::server_missing("python3", "not found");
        return;
    }
    let mut spec = ServiceSpec::new(
        "hello",
        &[
            "python3",
            "-m",
            "http.server",
            "{port}",
            "--bind",
            "127.0.0.1",
        ],
    );
    spec.start_timeout = Duration::from_secs(10);
    let harness = harness_with(test_config(), &[spec]).await;
    let started = Instant::now();
    let instance = harness.allocate_ready("hello").await;
    eprintln!(
        "python3 -m http.server: allocation to ready in {:?}",
        started.elapsed()
    );
    let answer = reqwest::get(format!("http://{}/", instance.addr))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(
        answer
            .text()
            .await
            .unwrap()
            .contains("Directory listing for /"),
        "cwd is /"
    );
    harness.stop().await;
}
