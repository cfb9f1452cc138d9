//! Nothing lost: Portico SIGKILLed while submissions stream in and jobs are queued and
//! running, then restarted on the same data directory: every submission that was answered
//! `200 {"uuid"}` reaches SUCCESS with its own result, and its result is never replaced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::Portico;

/// Submissions per client loop at most.
const PER_CLIENT: usize = 100;

/// Two slots; each job takes a little while, so jobs are queued and running at the kill.
/// The result is the job's own id, so a result given to the wrong job would show.
const CONFIG: &str = r#"
[jobs.security]
bypass = true

[[jobs.service]]
name = "work"
version = "1.0"
noparams = true
workers = 2
command = ["sh", "-c", "cat >/dev/null; echo 'progress 50' >&2; sleep 0.1; printf '\"%s\"' \"$PORTICO_JOB_ID\""]
"#;

/// Starts `clients` loops submitting until `stop` or an error; they record each uuid that
/// was acknowledged.
fn stream_submissions(
    server: &Portico,
    clients: usize,
    stop: &Arc<Mutex<bool>>,
) -> Arc<Mutex<Vec<String>>> {
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..clients {
        let (client, url) = (server.client(), server.url("/work/annotate"));
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        tokio::spawn(async move {
            // Enough to keep both slots busy and a queue behind them at the kill, few
            // enough that the restart drains them quickly.
            for _ in 0..PER_CLIENT {
                if *stop.lock().unwrap() {
                    break;
                }
                let sent = client.post(&url).form(&[("n", "1")]).send().await;
                let Ok(response) = sent else { break };
                if response.status() != 200 {
                    break;
                }
                let Ok(body) = response.json::<Value>().await else {
                    break;
                };
                acknowledged
                    .lock()
                    .unwrap()
                    .push(body["uuid"].as_str().unwrap().to_string());
            }
        });
    }
    acknowledged
}

#[tokio::test]
async fn every_acknowledged_job_finishes_once_after_a_sigkill() {
    let mut server = Portico::start(env!("CARGO_BIN_EXE_portico"), CONFIG)
        .await
        .unwrap();
    let stop = Arc::new(Mutex::new(false));
    let answered = stream_submissions(&server, 4, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Killed while the loops are still submitting: answers in flight are lost with the
    // process (those submissions may or may not exist); every answered one must.
    server.kill9();
    *stop.lock().unwrap() = true;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let acknowledged = answered.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 10,
        "only {} submissions answered",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() < 4 * PER_CLIENT,
        "the kill came after the stream ended"
    );
    eprintln!(
        "{} submissions acknowledged before the kill",
        acknowledged.len()
    );

    server.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut finished: HashMap<String, Value> = HashMap::new();
    while finished.len() < acknowledged.len() {
        for id in &acknowledged {
            if finished.contains_key(id) {
                continue;
            }
            let url = server.url(&format!("/jobs/{id}"));
            let job: Value = server
                .client()
                .get(url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_ne!(job["state"], "FAILURE", "{job}");
            if job["state"] == "SUCCESS" {
                finished.insert(id.clone(), job);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged jobs finished",
            finished.len(),
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (id, job) in &finished {
        assert_eq!(
            job["result"],
            Value::String(id.clone()),
            "its own result: {job}"
        );
    }
    // A finished job's result is never replaced: read again after more time passed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (id, job) in &finished {
        let url = server.url(&format!("/jobs/{id}"));
        let again: Value = server
            .client()
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(again["result"], job["result"]);
        assert_eq!(again["finished_at"], job["finished_at"]);
    }
}
