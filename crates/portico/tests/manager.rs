//! The service manager through the real binary: `[manager]` and `[[manager.service]]` in
//! `portico serve` (embedded registry, the agent in process), the `/manager` API on the
//! admin listener, `portico services` against the API and against Redis, `portico agent`
//! (and `allocator`) on Redis, SIGTERM stopping instances, a killed serve's leftovers stopped
//! by the next start, and config errors naming their keys.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{server_missing, test_redis_url, unique_key_prefix, Portico};

const BIN: &str = env!("CARGO_BIN_EXE_portico");

fn testserver() -> String {
    testkit::testserver_bin().unwrap().display().to_string()
}

/// A `[[manager.service]]` entry running the test server.
fn service_toml(name: &str, min: u32) -> String {
    format!(
        "[[manager.service]]\nname = \"{name}\"\ncommand = [{:?}, \"--port\", \"{{port}}\"]\n\
         health = \"/_health\"\nmin = {min}\n",
        testserver()
    )
}

/// One plain-HTTP listener with `admin` (the manager goes with it).
const ADMIN_LISTENER: &str = "[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"admin\"]\n";

async fn start(extra: &str) -> Portico {
    Portico::builder(BIN)
        .listeners_toml(ADMIN_LISTENER)
        .toml(&format!(
            "[manager]\nagent_id = \"test-host\"\ndrain = \"200ms\"\nstop_timeout = \"1s\"\n{extra}"
        ))
        .start()
        .await
        .expect("start")
}

async fn get(server: &Portico, path: &str) -> (u16, Value) {
    let answer = reqwest::get(server.url(path)).await.expect("GET");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// Polls `GET path` until `check` accepts the body; returns it.
async fn until(server: &Portico, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get(server, path).await;
        if status == 200 && check(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within 15 s; last: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ready_instances(body: &Value) -> Vec<Value> {
    body.as_array()
        .map(|list| {
            list.iter()
                .filter(|i| i["state"] == "ready")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The pid the agent recorded for an instance.
fn pid_of(data_dir: &Path, agent: &str, instance: &str) -> i32 {
    let path = data_dir.join(format!("agent/{agent}/pids/{instance}.json"));
    let record: Value = serde_json::from_slice(&std::fs::read(&path).expect("pid record")).unwrap();
    record["pid"].as_i64().unwrap() as i32
}

fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty()
        && !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
}

async fn wait_dead(pid: i32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} still running after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_services_are_in_the_catalog_and_the_api_manages_it() {
    let server = start(&service_toml("hello", 0)).await;
    let listener = &server.listeners()[0];
    assert_eq!(
        listener.services,
        ["admin", "dashboard", "manager"],
        "the manager and the dashboard go with admin"
    );

    let (status, services) = get(&server, "/manager/services").await;
    assert_eq!(status, 200);
    assert_eq!(services[0]["name"], "hello");
    assert_eq!(services[0]["soft_latency"], "100ms");
    let agents = until(&server, "/manager/agents", "the agent registered", |a| {
        a.as_array().is_some_and(|l| l.len() == 1)
    })
    .await;
    assert_eq!(agents[0]["id"], "test-host");
    assert_eq!(agents[0]["advertise"], "127.0.0.1");

    let client = reqwest::Client::new();
    let put = client
        .put(server.url("/manager/services/other"))
        .json(&serde_json::json!({"command": ["x", "{port}"], "max": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let bad = client
        .put(server.url("/manager/services/messages"))
        .json(&serde_json::json!({"command": [], "min": 3, "max": 1, "soft_latency": "2s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    let problems = body["problems"].to_string();
    for field in ["built-in route", "command", "min (3)", "soft_latency (2s)"] {
        assert!(problems.contains(field), "{field}: {problems}");
    }
    let deleted = client
        .delete(server.url("/manager/services/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let missing = client
        .delete(server.url("/manager/services/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"], "unknown service \"other\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_instances_run_inside_serve_and_sigterm_stops_them() {
    let mut server = start(&service_toml("hello", 1)).await;
    let instances = until(
        &server,
        "/manager/instances",
        "the min instance ready",
        |l| ready_instances(l).len() == 1,
    )
    .await;
    let instance = &instances[0];
    assert_eq!(instance["agent"], "test-host");
    let addr = instance["addr"].as_str().unwrap();
    let answer: Value = reqwest::get(format!("http://{addr}/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["server"], instance["id"]);
    let id = instance["id"].as_str().unwrap();
    let log = server.data_dir().join(format!("instances/hello/{id}.log"));
    assert!(log.exists(), "the instance logs to {}", log.display());
    let pid = pid_of(server.data_dir(), "test-host", id);

    let status = server
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit");
    assert!(status.success(), "{status}");
    assert!(!alive(pid), "SIGTERM to serve stopped the instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_service_drains_and_stops_its_instances() {
    let server = start(&service_toml("hello", 1)).await;
    let instances = until(
        &server,
        "/manager/instances",
        "the min instance ready",
        |l| ready_instances(l).len() == 1,
    )
    .await;
    let id = instances[0]["id"].as_str().unwrap();
    let pid = pid_of(server.data_dir(), "test-host", id);
    let client = reqwest::Client::new();
    let deleted: Value = client
        .delete(server.url("/manager/services/hello"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deleted["stopping"], 1, "{deleted}");
    wait_dead(pid, Duration::from_secs(10)).await;
    until(
        &server,
        "/manager/instances?service=hello",
        "the instance deregistered",
        |l| l.as_array().is_some_and(|l| l.is_empty()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_serve_leaves_instances_that_its_next_start_stops() {
    let mut server = start(&service_toml("hello", 1)).await;
    let instances = until(
        &server,
        "/manager/instances",
        "the min instance ready",
        |l| ready_instances(l).len() == 1,
    )
    .await;
    let old_id = instances[0]["id"].as_str().unwrap().to_string();
    let old_pid = pid_of(server.data_dir(), "test-host", &old_id);
    server.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        alive(old_pid),
        "SIGKILL to serve leaves its instance running"
    );

    server.restart().await.expect("restart");
    wait_dead(old_pid, Duration::from_secs(5)).await;
    let instances = until(&server, "/manager/instances", "a new min instance", |l| {
        ready_instances(l).len() == 1
    })
    .await;
    assert_ne!(instances[0]["id"].as_str().unwrap(), old_id);
}

fn portico(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BIN).args(args).output().expect("run portico");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portico_services_manages_an_embedded_catalog_through_the_api() {
    let server = start("").await;
    let url = server.url("");
    let bin = testserver();
    let (ok, stdout, stderr) = portico(&[
        "services",
        "add",
        "hello",
        "--registry",
        &url,
        "--max",
        "2",
        "--health",
        "/_health",
        "--",
        &bin,
        "--port",
        "{port}",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "added hello");
    let (ok, stdout, _) = portico(&["services", "list", "--registry", &url]);
    assert!(ok);
    assert!(stdout.starts_with("hello  min 0 max 2"), "{stdout}");
    let (ok, _, stderr) = portico(&["services", "add", "Bad", "--registry", &url, "--min", "5"]);
    assert!(!ok);
    assert!(
        stderr.contains("name \"Bad\"") && stderr.contains("command"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = portico(&["services", "rm", "hello", "--registry", &url]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("removed hello"), "{stdout}");
    let (ok, _, stderr) = portico(&["services", "rm", "hello", "--registry", &url]);
    assert!(!ok);
    assert!(
        stderr.contains("unknown service \\\"hello\\\"")
            || stderr.contains("unknown service \"hello\""),
        "{stderr}"
    );
    // A config file says where the catalog is: embedded, so its admin listener.
    let config = server.data_dir().parent().unwrap().join("client.toml");
    let listener = format!(
        "[[listener]]\naddr = \"{}\"\nservices = [\"admin\"]\n",
        server.addr()
    );
    std::fs::write(&config, listener).unwrap();
    let (ok, stdout, stderr) = portico(&["services", "list", "--config", config.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "no services");
}

/// The test Redis with a fresh prefix, or `None` (skip) without it and without `CI`.
async fn redis_prefix(test: &str) -> Option<String> {
    let client = redis::Client::open(test_redis_url()).ok()?;
    match client.get_multiplexed_async_connection().await {
        Ok(_) => Some(unique_key_prefix(test)),
        Err(error) => {
            server_missing(&format!("Redis at {}", test_redis_url()), error);
            None
        }
    }
}

async fn clear_prefix(prefix: &str) {
    let client = redis::Client::open(test_redis_url()).unwrap();
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
async fn portico_agent_on_redis_runs_what_portico_services_adds() {
    let Some(prefix) = redis_prefix("manager-agent").await else {
        return;
    };
    let redis = test_redis_url();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    // `allocator` is the original's name for the same command.
    let agent = Portico::builder(BIN)
        .command(&[
            "allocator",
            "--registry",
            &redis,
            "--key-prefix",
            &prefix,
            "--advertise",
            "127.0.0.1",
            "--id",
            "host-a",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_dir,
            "--allow-root",
        ])
        .start()
        .await
        .expect("start the agent");
    assert_eq!(
        agent.listeners()[0].services,
        ["admin", "dashboard", "manager"]
    );

    let bin = testserver();
    let (ok, stdout, stderr) = portico(&[
        "services",
        "add",
        "hello",
        "--registry",
        &redis,
        "--key-prefix",
        &prefix,
        "--min",
        "1",
        "--health",
        "/_health",
        "--",
        &bin,
        "--port",
        "{port}",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "added hello");
    let instances = until(
        &agent,
        "/manager/instances",
        "the agent started the min instance",
        |l| ready_instances(l).len() == 1,
    )
    .await;
    assert_eq!(instances[0]["agent"], "host-a");
    let id = instances[0]["id"].as_str().unwrap();
    let pid = pid_of(data.path(), "host-a", id);
    let (ok, stdout, _) = portico(&[
        "services",
        "list",
        "--registry",
        &redis,
        "--key-prefix",
        &prefix,
    ]);
    assert!(ok);
    assert!(stdout.starts_with("hello  min 1 max 4"), "{stdout}");

    let (ok, stdout, stderr) = portico(&[
        "services",
        "rm",
        "hello",
        "--registry",
        &redis,
        "--key-prefix",
        &prefix,
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "removed hello (1 instance(s) stopping)");
    wait_dead(pid, Duration::from_secs(15)).await;
    drop(agent);
    clear_prefix(&prefix).await;
}

#[tokio::test]
async fn bad_manager_config_is_refused_naming_every_key() {
    let temp = tempfile::tempdir().unwrap();
    let config = temp.path().join("portico.toml");
    std::fs::write(
        &config,
        "[manager]\nregistry = \"mysql://x\"\nlease = \"0s\"\n\
         [[manager.service]]\nname = \"fib\"\ncommand = []\n\
         [[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"admin\"]\n",
    )
    .unwrap();
    let (ok, _, stderr) = portico(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    for key in [
        "manager.registry",
        "manager.lease",
        "manager.service[0].name \"fib\"",
        "manager.service[0].command",
    ] {
        assert!(stderr.contains(key), "{key} not named in:\n{stderr}");
    }
    let (ok, _, stderr) = portico(&["agent", "--registry", "redis://127.0.0.1:1/0"]);
    assert!(!ok);
    assert!(stderr.contains("manager.advertise: required"), "{stderr}");
}
