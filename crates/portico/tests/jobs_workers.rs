//! Remote workers over real sockets: `portico worker --gateway` pulls jobs over HTTPS, and a
//! worker SIGKILLed mid-job loses nothing (its lease runs out, the job runs again and
//! completes), while a job that has used its `max_attempts` fails with the reason.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::Portico;

/// One local slot, kept busy by a blocker job, so queued jobs wait for remote workers.
const CONFIG: &str = r#"
[jobs]
lease = "2s"
[jobs.security]
jwt_key = "c2VjcmV0LWtleS1mb3ItdGVzdHM="

[[jobs.service]]
name = "remote"
version = "2.0"
noparams = true
workers = 1
max_attempts = 3
command = ["sh", "-c", "cat >/dev/null; sleep 120; echo '{}'"]

[[jobs.service]]
name = "once"
version = "2.0"
noparams = true
workers = 1
max_attempts = 1
command = ["sh", "-c", "cat >/dev/null; sleep 120; echo '{}'"]
"#;

struct Worker {
    child: Child,
}

impl Worker {
    /// Starts `portico worker` for `service` running `script`; returns once it pulls.
    fn start(server: &Portico, token: &str, service: &str, script: &str) -> Worker {
        let gateway = format!("https://127.0.0.1:{}", server.addr().port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
            .args([
                "worker",
                "--gateway",
                &gateway,
                "--token",
                token,
                "--service",
                service,
            ])
            .arg("--cacert")
            .arg(
                server
                    .cert_path()
                    .expect("the test server has a certificate"),
            )
            .args(["--slots", "1", "--", "sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting portico worker");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(line.contains("worker pulling"), "{line:?}");
        Worker { child }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn submit(server: &Portico, token: &str, service: &str) -> String {
    let response = server
        .client()
        .post(server.url(&format!("/jobs/{service}")))
        .header("Authorization", format!("Bearer {token}"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    job["id"].as_str().unwrap().to_string()
}

async fn job(server: &Portico, id: &str) -> Value {
    let url = server.url(&format!("/jobs/{id}"));
    server
        .client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits (at most `limit`) until the job satisfies `done`; the job.
async fn wait_until(
    server: &Portico,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let job = job(server, id).await;
        if done(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submits a blocker job and waits until the one local slot runs it.
async fn occupy_local_slot(server: &Portico, token: &str, service: &str) {
    let blocker = submit(server, token, service).await;
    let local = wait_until(server, &blocker, Duration::from_secs(10), |j| {
        j["state"] == "STARTED" || j["state"] == "PROGRESS"
    })
    .await;
    assert!(
        !local["worker"].as_str().unwrap_or_default().is_empty(),
        "{local}"
    );
}

#[tokio::test]
async fn a_remote_worker_killed_mid_job_loses_nothing() {
    let server = Portico::start(env!("CARGO_BIN_EXE_portico"), CONFIG)
        .await
        .unwrap();
    let token = server.job_token().unwrap();
    occupy_local_slot(&server, &token, "remote").await;

    let mut first = Worker::start(
        &server,
        &token,
        "remote",
        "cat >/dev/null; echo 'progress 40' >&2; sleep 30; echo '{\"by\":\"first\"}'",
    );
    let id = submit(&server, &token, "remote").await;
    let running = wait_until(&server, &id, Duration::from_secs(10), |j| {
        j["progress"] == 40
    })
    .await;
    assert_eq!(running["attempts"], 1);
    first.kill9();

    let _second = Worker::start(
        &server,
        &token,
        "remote",
        "cat >/dev/null; echo 'progress 90' >&2; echo '{\"by\":\"second\"}'",
    );
    let done = wait_until(&server, &id, Duration::from_secs(20), |j| {
        j["state"] == "SUCCESS"
    })
    .await;
    assert_eq!(done["result"], serde_json::json!({"by": "second"}));
    assert_eq!(done["attempts"], 2, "the lost run counts: {done}");
    assert_eq!(done["progress"], 100);
}

#[tokio::test]
async fn a_job_that_used_its_attempts_fails_with_the_reason() {
    let server = Portico::start(env!("CARGO_BIN_EXE_portico"), CONFIG)
        .await
        .unwrap();
    let token = server.job_token().unwrap();
    occupy_local_slot(&server, &token, "once").await;
    let mut worker = Worker::start(
        &server,
        &token,
        "once",
        "cat >/dev/null; echo 'progress 5' >&2; sleep 30; echo '{}'",
    );
    let id = submit(&server, &token, "once").await;
    wait_until(&server, &id, Duration::from_secs(10), |j| {
        j["progress"] == 5
    })
    .await;
    worker.kill9();
    let failed = wait_until(&server, &id, Duration::from_secs(20), |j| {
        j["state"] == "FAILURE"
    })
    .await;
    let reason = failed["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!reason.is_empty(), "{failed}");
    assert_eq!(failed["attempts"], 1);
    let legacy: Value = server
        .client()
        .get(server.url(&format!("/once/status?uuid={id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(legacy["status"], "FAILURE");
    assert_eq!(legacy["result"]["message"], reason.as_str());
}

#[tokio::test]
async fn a_worker_with_a_bad_token_or_service_says_so() {
    let server = Portico::start(env!("CARGO_BIN_EXE_portico"), CONFIG)
        .await
        .unwrap();
    let gateway = format!("https://127.0.0.1:{}", server.addr().port());
    let output = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args([
            "worker",
            "--gateway",
            &gateway,
            "--token",
            "x",
            "--service",
            "nope",
        ])
        .arg("--cacert")
        .arg(server.cert_path().unwrap())
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nope"), "{stderr}");
}

/// `workers = 0`: no local slot; jobs wait in the durable queue for remote workers.
const REMOTE_ONLY: &str = r#"
[jobs.security]
jwt_key = "c2VjcmV0LWtleS1mb3ItdGVzdHM="

[[jobs.service]]
name = "farm"
version = "1.0"
noparams = true
workers = 0
command = ["sh", "-c", "echo 'this runs only on remote workers' >&2; exit 3"]
"#;

#[tokio::test]
async fn a_service_with_no_local_slots_queues_its_jobs_for_remote_workers() {
    let server = Portico::start(env!("CARGO_BIN_EXE_portico"), REMOTE_ONLY)
        .await
        .unwrap();
    let token = server.job_token().unwrap();
    let id = submit(&server, &token, "farm").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = job(&server, &id).await;
    assert_eq!(
        waiting["state"], "PENDING",
        "no local slot ran it: {waiting}"
    );
    let capacity: Value = server
        .client()
        .get(server.url("/jobs/capacity"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let farm = &capacity["services"][0];
    assert_eq!(farm["queue_depth"], 1, "{capacity}");

    let _worker = Worker::start(
        &server,
        &token,
        "farm",
        "cat >/dev/null; echo '{\"ran\":\"remote\"}'",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        let j = job(&server, &id).await;
        if j["state"] == "SUCCESS" {
            break j;
        }
        if Instant::now() > deadline {
            panic!("SERVER STDERR:\n{}\n{j}", server.stderr());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["result"], serde_json::json!({"ran": "remote"}));
}
