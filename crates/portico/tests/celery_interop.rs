//! Portico in front of real Celery workers (issue 11): every slow interop test is here.
//!
//! A Celery 5 worker from PyPI (a venv the test makes, see `testkit::Venv`) consumes the
//! queue Portico publishes to on the machine's RabbitMQ (`PORTICO_TEST_AMQP`); its task
//! reports `update_state(state="PROGRESS", meta={"current": n, "total": 100, ...})`. Through
//! the ServiceGateway API the client sees PROGRESS rise then SUCCESS, a failing task's
//! FAILURE body, REVOKED after a cancel, and `/info` counting the worker; with the `rpc` and
//! `redis://` result backends, with `portico worker --broker` in place of the Python worker,
//! and both on one queue. With `CI` set, a missing RabbitMQ, Redis or Python fails.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::{Portico, Venv};

const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHM=";

/// Tests share the machine's RabbitMQ; the one that restarts it holds this for writing.
static RABBITMQ: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
const LIMIT: Duration = Duration::from_secs(60);

/// The Celery app the Python worker runs: task `worker.progress`.
const TASKS: &str = r#"
import os, socket, time
from celery import Celery

app = Celery("worker", broker=os.environ["BROKER"], backend=os.environ["BACKEND"])
app.conf.task_acks_late = os.environ.get("ACKS_LATE", "1") == "1"
app.conf.task_reject_on_worker_lost = app.conf.task_acks_late
app.conf.worker_prefetch_multiplier = 1
# The original deployment's CELERY_TASK_RESULT_EXPIRES: the amqp backend's queue x-expires.
app.conf.result_expires = 7200
app.conf.broker_connection_retry_on_startup = True

@app.task(name="worker.progress", bind=True)
def progress(self, message):
    misc = message["service"]["misc"]
    if misc.get("fail"):
        raise ValueError("asked to fail")
    steps = int(misc.get("steps", 4))
    delay = float(misc.get("delay", 0.3))
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    for n in range(steps):
        current = (n + 1) * 100 // (steps + 1)
        self.update_state(state="PROGRESS", meta={
            "current": current, "total": 100, "worker_id_version": "1.0",
            "start_time": start, "host": socket.gethostname(), "type": "progress"})
        time.sleep(delay)
    return {"done": True, "steps": steps, "by": "python", "node": self.request.hostname}
"#;

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("portico-interop.{what}.{}-{nanos}", std::process::id())
}

/// RabbitMQ, Redis and a Celery venv, or `None` (skip; a failure with `CI` set).
fn prerequisites() -> Option<Venv> {
    let servers = [
        ("rabbitmq", server_address(&testkit::test_amqp_url(), 5672)),
        ("redis", server_address(&testkit::test_redis_url(), 6379)),
    ];
    for (what, address) in servers {
        if let Err(error) = std::net::TcpStream::connect(address.as_str()) {
            testkit::server_missing(what, format!("{address}: {error}"));
            return None;
        }
    }
    Venv::with_packages(&["celery>=5.3,<6", "redis>=4"])
}

/// `host:port` of a server URL (`scheme://[user:pass@]host[:port][/path]`), the tests use
/// (`PORTICO_TEST_AMQP`, `PORTICO_TEST_REDIS`), with the scheme's default port.
fn server_address(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    match host_port.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => host_port.to_string(),
        _ => format!("{host_port}:{default_port}"),
    }
}

#[test]
fn server_addresses_come_from_the_test_urls() {
    assert_eq!(
        server_address("amqp://guest:guest@10.0.0.5:5673/%2f", 5672),
        "10.0.0.5:5673"
    );
    assert_eq!(server_address("amqp://rabbit/%2f", 5672), "rabbit:5672");
    assert_eq!(
        server_address("redis://127.0.0.1:6379", 6379),
        "127.0.0.1:6379"
    );
    assert_eq!(server_address("redis://cache", 6379), "cache:6379");
}

/// A process group killed on drop.
struct Group {
    child: Child,
}

impl Group {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL to the whole group (the main process and its pool), at once.
    fn kill9(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

/// A Celery 5 worker on `queue` (prefork, 2 processes, events on, late acks).
fn python_worker(venv: &Venv, dir: &Path, queue: &str, backend: &str, name: &str) -> Group {
    python_worker_acking(venv, dir, queue, backend, name, true)
}

/// A Celery 5 worker; `late`: acks after the task (else Celery's default, before it).
fn python_worker_acking(
    venv: &Venv,
    dir: &Path,
    queue: &str,
    backend: &str,
    name: &str,
    late: bool,
) -> Group {
    std::fs::write(dir.join("tasks.py"), TASKS).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = std::os::unix::process::CommandExt::process_group(
        Command::new(venv.python())
            .args([
                "-m", "celery", "-A", "tasks", "worker", "-Q", queue, "-c", "2",
            ])
            // A node name of its own: workers of one name share a pidbox queue, and each
            // broadcast would reach only one of them.
            .args([
                "-E",
                "--without-gossip",
                "-n",
                &format!("{name}-{queue}@%h"),
            ])
            .args(["--loglevel", "INFO"])
            .current_dir(dir)
            .env("BROKER", testkit::test_amqp_url())
            .env("BACKEND", backend)
            .env("ACKS_LATE", if late { "1" } else { "0" })
            .stdout(log.try_clone().unwrap())
            .stderr(log),
        0,
    )
    .spawn()
    .expect("starting the celery worker");
    Group { child }
}

/// `portico worker --broker` on `queue`; returns once it consumes.
fn portico_worker(queue: &str, backend: &str, script: &str) -> Group {
    let mut child = std::os::unix::process::CommandExt::process_group(
        Command::new(env!("CARGO_BIN_EXE_portico"))
            .args([
                "worker",
                "--broker",
                &testkit::test_amqp_url(),
                "--queue",
                queue,
            ])
            .args(["--result-backend", backend, "--service-version", "1.0"])
            .args(["--slots", "2", "--", "sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
        0,
    )
    .spawn()
    .expect("starting portico worker");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.contains("consuming"), "{line:?}");
    Group { child }
}

/// A `portico worker --broker` command: progress lines, then a result (or failure).
const PORTICO_SCRIPT: &str = r#"msg=$(cat)
case "$msg" in *'"fail":true'*) echo 'asked to fail' >&2; exit 3;; esac
for p in 20 40 60 80; do echo "progress $p" >&2; sleep 0.3; done
echo '{"done":true,"by":"portico"}'"#;

/// Deletes the test's task queue and the gateway's reply queue (both durable).
async fn clean_up(server: &Portico, queue: &str) {
    let mut queues = vec![queue.to_string()];
    if let Ok(reply) = std::fs::read_to_string(server.data_dir().join("amqp-reply-queue")) {
        queues.push(reply.trim().to_string());
    }
    let _ = jobs::broker::amqp::link::delete_queues(&testkit::test_amqp_url(), &queues).await;
}

async fn gateway(queue: &str, backend: &str) -> Portico {
    let config = format!(
        r#"
[jobs]
broker = "{broker}"
result_backend = "{backend}"
celery_app = "worker"
broker_timeout = "2s"
[jobs.security]
jwt_key = "{KEY}"

[[jobs.service]]
name = "interop"
celery_task_name = "progress"
celery_queue_name = "{queue}"
version = "1.0"
noparams = true
"#,
        broker = testkit::test_amqp_url(),
    );
    Portico::start(env!("CARGO_BIN_EXE_portico"), &config)
        .await
        .unwrap()
}

/// `POST /interop/process` with `misc`; the uuid.
async fn submit(server: &Portico, token: &str, misc: Value) -> String {
    let response = server
        .client()
        .post(server.url("/interop/process"))
        .header("Authorization", token)
        .json(&misc)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["uuid"].as_str().unwrap().to_string()
}

async fn status(server: &Portico, uuid: &str) -> Value {
    server
        .client()
        .get(server.url(&format!("/interop/status?uuid={uuid}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls the status until it is final; every status seen, in order.
async fn follow(server: &Portico, uuid: &str) -> Vec<Value> {
    let deadline = Instant::now() + LIMIT;
    let mut seen: Vec<Value> = Vec::new();
    loop {
        let now = status(server, uuid).await;
        if seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        let state = now["status"].as_str().unwrap_or_default();
        if ["SUCCESS", "FAILURE", "REVOKED"].contains(&state) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "not final in {LIMIT:?}: {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn active_workers(server: &Portico) -> i64 {
    let info: Value = server
        .client()
        .get(server.url("/interop/info"))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    info["activeWorkers"].as_i64().unwrap_or(-1)
}

async fn wait_workers(server: &Portico, n: i64) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let seen = active_workers(server).await;
        if seen == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "activeWorkers {seen}, wanted {n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// PROGRESS rises, then SUCCESS with the task's value.
async fn progress_then_success(server: &Portico, token: &str, by: &str) {
    let uuid = submit(server, token, json!({"steps": 4, "delay": 0.3})).await;
    let seen = follow(server, &uuid).await;
    let currents: Vec<i64> = seen
        .iter()
        .filter(|s| s["status"] == "PROGRESS")
        .map(|s| s["result"]["current"].as_i64().unwrap())
        .collect();
    assert!(
        currents.len() >= 2,
        "PROGRESS seen at least twice: {seen:#?}"
    );
    assert!(currents.windows(2).all(|w| w[0] < w[1]), "{currents:?}");
    let last = seen.last().unwrap();
    assert_eq!(last["status"], "SUCCESS", "{seen:#?}");
    assert_eq!(last["result"]["done"], true, "{last}");
    assert_eq!(last["result"]["by"], by, "{last}");
    assert_eq!(last["uuid"], uuid.as_str());
}

/// A failing task gives the FAILURE body.
async fn failure_body(server: &Portico, token: &str) {
    let uuid = submit(server, token, json!({"fail": true})).await;
    let last = follow(server, &uuid).await.pop().unwrap();
    assert_eq!(last["status"], "FAILURE", "{last}");
    let message = last["result"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("asked to fail"), "{last}");
    assert!(last["result"]["code"].is_number(), "{last}");
}

/// Cancel of a running task gives REVOKED, and it stays so.
async fn cancel_running(server: &Portico, token: &str) {
    let uuid = submit(server, token, json!({"steps": 200, "delay": 0.2})).await;
    let deadline = Instant::now() + LIMIT;
    while status(server, &uuid).await["status"] != "PROGRESS" {
        assert!(Instant::now() < deadline, "never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled: Value = server
        .client()
        .get(server.url(&format!("/interop/cancel?uuid={uuid}")))
        .header("Authorization", token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "REVOKED", "{cancelled}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(status(server, &uuid).await["status"], "REVOKED");
}

async fn python_worker_interop(backend: &str, celery_backend: &str) {
    let Some(venv) = prerequisites() else { return };
    interop_with(&venv, backend, celery_backend).await;
}

/// PROGRESS then SUCCESS, FAILURE, cancel, `/info` with the worker of `venv`.
async fn interop_with(venv: &Venv, backend: &str, celery_backend: &str) {
    let _shared = RABBITMQ.read().await;
    let queue = unique("python");
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(&queue, backend).await;
    let token = server.job_token().unwrap();
    let _worker = python_worker(venv, dir.path(), &queue, celery_backend, "w1");
    wait_workers(&server, 1).await;
    progress_then_success(&server, &token, "python").await;
    failure_body(&server, &token).await;
    cancel_running(&server, &token).await;
    // The worker survived the revoke (SIGKILL to its pool child) and runs the next job.
    progress_then_success(&server, &token, "python").await;
    dashboard_lists_the_celery_worker(&server, &format!("w1-{queue}@")).await;
    clean_up(&server, &queue).await;
}

/// The dashboard's worker table has the Celery worker whose hostname starts with `node` (from
/// its heartbeats and task events), beating, with the jobs it finished counted. `node` holds
/// the test's own queue name: every test shares RabbitMQ's event exchange, so the table also
/// lists other tests' workers, some of them already gone.
async fn dashboard_lists_the_celery_worker(server: &Portico, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let workers: Value = server
            .client()
            .get(server.url("/dashboard/api/workers"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let celery = workers.as_object().and_then(|all| {
            all.iter()
                .find(|(name, row)| name.starts_with(node) && row["kind"] == "celery")
        });
        if let Some((_, row)) = celery {
            if row["processed"].as_u64().unwrap_or(0) >= 3 {
                assert_ne!(row["status"], "lost", "{row}");
                assert!(row["heartbeat_seconds"].as_f64().unwrap() < 8.0, "{row}");
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no celery worker {node} in {workers}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_celery_5_worker_behind_portico_with_rpc_states() {
    python_worker_interop("rpc", "rpc://").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_celery_5_worker_behind_portico_with_redis_states() {
    let redis = testkit::test_redis_url();
    python_worker_interop(&redis, &redis).await;
}

/// VestaService's workers: Celery 4.3 on Python 3.7, with the original deployment's `amqp`
/// result backend (per-task queues on `celeryresults`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_celery_4_3_worker_behind_portico_with_amqp_states() {
    if prerequisites().is_none() {
        return;
    }
    let Some(python) = testkit::python37() else {
        return;
    };
    let packages = ["celery==4.3.*", "importlib-metadata<5"];
    let Some(venv) = Venv::with_interpreter(&python, &packages) else {
        return;
    };
    interop_with(&venv, "amqp", "amqp://").await;
}

async fn portico_worker_interop(backend: &str) {
    let _shared = RABBITMQ.read().await;
    if prerequisites().is_none() {
        return;
    }
    let queue = unique("portico");
    let server = gateway(&queue, backend).await;
    let token = server.job_token().unwrap();
    let _worker = portico_worker(&queue, backend, PORTICO_SCRIPT);
    wait_workers(&server, 1).await;
    progress_then_success(&server, &token, "portico").await;
    failure_body(&server, &token).await;
    let uuid = submit(&server, &token, json!({})).await;
    let last = follow(&server, &uuid).await.pop().unwrap();
    assert_eq!(last["status"], "SUCCESS");
    clean_up(&server, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portico_worker_behind_portico_with_rpc_states() {
    portico_worker_interop("rpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portico_worker_behind_portico_with_amqp_states() {
    portico_worker_interop("amqp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portico_worker_behind_portico_with_redis_states() {
    portico_worker_interop(&testkit::test_redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_and_a_portico_worker_share_a_queue() {
    let _shared = RABBITMQ.read().await;
    let Some(venv) = prerequisites() else { return };
    let queue = unique("shared");
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(&queue, "rpc").await;
    let token = server.job_token().unwrap();
    let _python = python_worker(&venv, dir.path(), &queue, "rpc://", "shared");
    let _portico = portico_worker(&queue, "rpc", PORTICO_SCRIPT);
    wait_workers(&server, 2).await;
    let mut uuids = Vec::new();
    for _ in 0..8 {
        uuids.push(submit(&server, &token, json!({"steps": 2, "delay": 0.3})).await);
    }
    let mut by = std::collections::BTreeSet::new();
    for uuid in &uuids {
        let last = follow(&server, uuid).await.pop().unwrap();
        assert_eq!(last["status"], "SUCCESS", "{last}");
        by.insert(last["result"]["by"].as_str().unwrap().to_string());
    }
    assert_eq!(by.len(), 2, "both workers ran jobs: {by:?}");
    clean_up(&server, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_celery_worker_killed_mid_task_loses_nothing() {
    let _shared = RABBITMQ.read().await;
    let Some(venv) = prerequisites() else { return };
    let queue = unique("killed");
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(&queue, "rpc").await;
    let token = server.job_token().unwrap();
    let mut first = python_worker(&venv, dir.path(), &queue, "rpc://", "first");
    wait_workers(&server, 1).await;
    let uuid = submit(&server, &token, json!({"steps": 6, "delay": 0.5})).await;
    let deadline = Instant::now() + LIMIT;
    while status(&server, &uuid).await["status"] != "PROGRESS" {
        assert!(Instant::now() < deadline, "never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill9();
    let _second = python_worker(&venv, dir.path(), &queue, "rpc://", "second");
    let last = follow(&server, &uuid).await.pop().unwrap();
    assert_eq!(last["status"], "SUCCESS", "{last}");
    let node = last["result"]["node"].as_str().unwrap_or_default();
    assert!(
        node.starts_with("second-"),
        "run again by the second worker: {last}"
    );
    clean_up(&server, &queue).await;
}

fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| format!("running rabbitmqctl: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// One submission: `Ok(uuid)` on 200; `Err(elapsed)` on 503 vesta 205.
async fn try_submit(server: &Portico, token: &str) -> Result<String, Duration> {
    let started = Instant::now();
    let response = server
        .client()
        .post(server.url("/interop/process"))
        .header("Authorization", token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    match status.as_u16() {
        200 => Ok(body["uuid"].as_str().unwrap().to_string()),
        503 => {
            assert_eq!(body["vesta"]["code"], 205, "{body}");
            Err(started.elapsed())
        }
        other => panic!("{other}: {body}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarted_under_submissions_loses_nothing_acknowledged() {
    if prerequisites().is_none() {
        return;
    }
    if let Err(error) = rabbitmqctl(&["status"]) {
        testkit::server_missing("rabbitmqctl (to restart RabbitMQ)", error);
        return;
    }
    let _alone = RABBITMQ.write().await;
    let queue = unique("restart");
    let server = gateway(&queue, "rpc").await;
    let token = server.job_token().unwrap();
    let _worker = portico_worker(&queue, "rpc", "cat >/dev/null; echo '{\"ok\":1}'");
    wait_workers(&server, 1).await;
    let stopper = tokio::task::spawn_blocking(|| {
        std::thread::sleep(Duration::from_secs(2));
        rabbitmqctl(&["stop_app"]).expect("stop_app");
        std::thread::sleep(Duration::from_secs(4));
        rabbitmqctl(&["start_app"]).expect("start_app");
    });
    let mut accepted = Vec::new();
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(14);
    while Instant::now() < deadline {
        match try_submit(&server, &token).await {
            Ok(uuid) => accepted.push(uuid),
            Err(elapsed) => {
                refused += 1;
                // broker_timeout is 2 s.
                assert!(elapsed < Duration::from_secs(3), "503 after {elapsed:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stopper.await.unwrap();
    assert!(refused > 0, "some submissions met the outage");
    let after = try_submit(&server, &token)
        .await
        .expect("accepted again after the restart");
    accepted.push(after);
    for uuid in &accepted {
        let last = follow(&server, uuid).await.pop().unwrap();
        assert_eq!(last["status"], "SUCCESS", "acknowledged {uuid}: {last}");
    }
    eprintln!(
        "{} accepted, {refused} refused during the outage",
        accepted.len()
    );
    clean_up(&server, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_resume_after_the_redis_result_backend_restarts() {
    let _shared = RABBITMQ.read().await;
    if prerequisites().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = testkit::free_port().unwrap();
    let Some(redis) = testkit::PrivateRedis::start_or_skip(port, dir.path()) else {
        return;
    };
    let backend = format!("redis://127.0.0.1:{port}/0");
    let queue = unique("redis-restart");
    let server = gateway(&queue, &backend).await;
    let token = server.job_token().unwrap();
    let slow = "cat >/dev/null; for p in 10 20 30 40 50 60 70 80 90; do echo \"progress $p\" >&2; sleep 0.5; done; echo '{\"done\":true,\"by\":\"portico\"}'";
    let _worker = portico_worker(&queue, &backend, slow);
    wait_workers(&server, 1).await;
    let uuid = submit(&server, &token, json!({})).await;
    let deadline = Instant::now() + LIMIT;
    while status(&server, &uuid).await["status"] != "PROGRESS" {
        assert!(Instant::now() < deadline, "never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(redis);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let redis = testkit::PrivateRedis::start(port, dir.path()).expect("restarting redis");
    let seen = follow(&server, &uuid).await;
    let last = seen.last().unwrap();
    assert_eq!(last["status"], "SUCCESS", "{seen:#?}");
    // The backend forgets (no persistence here, or its expiry); Portico's records do not.
    drop(redis);
    assert_eq!(status(&server, &uuid).await["status"], "SUCCESS");
    clean_up(&server, &queue).await;
}

/// Celery's default early ack: the message is gone once the task starts, and Celery leaves
/// the job STARTED forever when the worker dies. Portico sees the heartbeats stop and
/// publishes the job again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_early_ack_task_is_published_again_after_the_heartbeats_stop() {
    let _shared = RABBITMQ.read().await;
    let Some(venv) = prerequisites() else { return };
    let queue = unique("early");
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(&queue, "rpc").await;
    let token = server.job_token().unwrap();
    let mut first = python_worker_acking(&venv, dir.path(), &queue, "rpc://", "early1", false);
    wait_workers(&server, 1).await;
    let uuid = submit(&server, &token, json!({"steps": 8, "delay": 0.5})).await;
    let deadline = Instant::now() + LIMIT;
    while status(&server, &uuid).await["status"] != "PROGRESS" {
        assert!(Instant::now() < deadline, "never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill9();
    let _second = python_worker_acking(&venv, dir.path(), &queue, "rpc://", "early2", false);
    let last = follow(&server, &uuid).await.pop().unwrap();
    assert_eq!(last["status"], "SUCCESS", "{last}");
    let node = last["result"]["node"].as_str().unwrap_or_default();
    assert!(node.starts_with("early2-"), "{last}");
    let job: Value = server
        .client()
        .get(server.url(&format!("/jobs/{uuid}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["attempts"], 2, "{job}");
    clean_up(&server, &queue).await;
}
