//! The dashboard over real sockets: the page and its assets on listeners that mount `admin`
//! (and only there), the Flower-shaped JSON API over real jobs, cancel with and without a
//! token, and the event stream (ids, replay after `Last-Event-ID`).

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use testkit::Portico;

const JOBS: &str = r#"
[[jobs.service]]
name = "echo"
version = "1.0"
noparams = true
command = ["sh", "-c", "input=$(cat); echo 'progress 30' >&2; sleep 0.2; echo 'progress 60' >&2; echo 'a log line' >&2; printf '%s' \"$input\""]

[[jobs.service]]
name = "slow"
version = "1.0"
noparams = true
command = ["sh", "-c", "cat >/dev/null; echo 'progress 10' >&2; sleep 60; echo '{}'"]
"#;

async fn start(bypass: bool) -> Portico {
    let security = format!("[jobs.security]\nbypass = {bypass}\n");
    Portico::builder(env!("CARGO_BIN_EXE_portico"))
        .listeners_toml(
            "[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"admin\", \"jobs\"]\n\
             [[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"jobs\"]\n",
        )
        .toml(&security)
        .toml(JOBS)
        .toml("[dashboard]\ninterval = \"200ms\"\n")
        .start()
        .await
        .expect("portico starts")
}

fn admin_url(server: &Portico, path: &str) -> String {
    let listener = server
        .listeners()
        .iter()
        .find(|l| l.services.iter().any(|s| s == "admin"))
        .expect("a listener mounts admin");
    format!("{}{path}", listener.url)
}

fn other_url(server: &Portico, path: &str) -> String {
    let listener = server
        .listeners()
        .iter()
        .find(|l| !l.services.iter().any(|s| s == "admin"))
        .expect("a listener without admin");
    format!("{}{path}", listener.url)
}

async fn get_json(server: &Portico, path: &str) -> Value {
    let response = server
        .client()
        .get(admin_url(server, path))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

async fn submit(server: &Portico, service: &str, token: Option<&str>) -> String {
    let mut request = server
        .client()
        .post(admin_url(server, &format!("/jobs/{service}")))
        .json(&serde_json::json!({"text": "hello"}));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 202);
    let job: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    job["id"].as_str().unwrap().to_string()
}

async fn wait_state(server: &Portico, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = get_json(server, &format!("/dashboard/api/task/info/{id}")).await;
        if info["state"] == state {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never reached {state}: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_page_is_served_where_admin_is_mounted_and_nowhere_else() {
    let server = start(true).await;
    let response = server
        .client()
        .get(admin_url(&server, "/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let page = response.text().await.unwrap();
    assert!(page.contains("/dashboard/assets/app.js"), "{page}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no CDN"
    );
    for (asset, kind) in [("app.js", "text/javascript"), ("app.css", "text/css")] {
        let response = server
            .client()
            .get(admin_url(&server, &format!("/dashboard/assets/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{content_type}");
    }
    for path in ["/dashboard", "/dashboard/api/overview", "/dashboard/events"] {
        let response = server
            .client()
            .get(other_url(&server, path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path} on a listener without admin");
    }
    let overview = get_json(&server, "/dashboard/api/overview").await;
    assert_eq!(overview["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(overview["listeners"].as_array().unwrap().len(), 2);
    assert_eq!(overview["jobs"], true);
    assert_eq!(overview["cancel_needs_token"], false);
}

#[tokio::test]
async fn jobs_are_listed_keyed_by_id_filtered_limited_and_detailed() {
    let server = start(true).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit(&server, "echo", None).await);
    }
    for id in &ids {
        let info = wait_state(&server, id, "SUCCESS").await;
        assert_eq!(info["name"], "echo");
        assert!(info["result"].to_string().contains("hello"), "{info}");
        assert!(
            info["log"].as_str().unwrap().contains("a log line"),
            "{info}"
        );
        assert!(info["runtime"].as_f64().unwrap() > 0.0);
        assert!(info["worker"].as_str().is_some());
    }
    let slow = submit(&server, "slow", None).await;

    let all = get_json(&server, "/dashboard/api/tasks").await;
    assert_eq!(all.as_object().unwrap().len(), 4);
    for id in &ids {
        assert_eq!(all[id]["uuid"], id.as_str());
    }
    let echo = get_json(&server, "/dashboard/api/tasks?service=echo&limit=2").await;
    let echo = echo.as_object().unwrap();
    assert_eq!(echo.len(), 2);
    assert!(
        echo.contains_key(&ids[2]) && echo.contains_key(&ids[1]),
        "newest first"
    );
    let done = get_json(&server, "/dashboard/api/tasks?state=SUCCESS").await;
    assert_eq!(done.as_object().unwrap().len(), 3);
    assert!(done.get(&slow).is_none());
    let bad = server
        .client()
        .get(admin_url(&server, "/dashboard/api/tasks?limit=many"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let workers = get_json(&server, "/dashboard/api/workers").await;
    let processed: u64 = workers
        .as_object()
        .unwrap()
        .values()
        .filter(|w| w["services"][0] == "echo")
        .map(|w| w["processed"].as_u64().unwrap())
        .sum();
    assert_eq!(processed, 3, "{workers}");

    let summary = get_json(&server, "/dashboard/api/jobs").await;
    let echo = summary
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "echo")
        .unwrap();
    assert!(echo["arrival_rate"].as_f64().unwrap() > 0.0, "{summary}");
    let capacity = get_json(&server, "/dashboard/api/capacity").await;
    assert!(capacity["now"].as_array().unwrap().len() == 2, "{capacity}");
    assert!(capacity["history"]["echo"].is_array(), "{capacity}");
    let missing = server
        .client()
        .get(admin_url(
            &server,
            "/dashboard/api/task/info/0190d4c8-0000-7000-8000-000000000000",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn cancel_needs_the_job_api_token_when_bypass_is_off() {
    let server = start(false).await;
    let token = server.job_token().unwrap();
    let overview = get_json(&server, "/dashboard/api/overview").await;
    assert_eq!(overview["cancel_needs_token"], true);
    let id = submit(&server, "slow", Some(&token)).await;
    wait_state(&server, &id, "PROGRESS").await;
    let revoke = admin_url(&server, &format!("/dashboard/api/task/revoke/{id}"));
    let refused = server.client().post(&revoke).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let wrong = server
        .client()
        .post(&revoke)
        .header("Authorization", "Bearer not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let revoked = server
        .client()
        .post(&revoke)
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    wait_state(&server, &id, "REVOKED").await;
    // The run is killed: its worker goes idle.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let workers = get_json(&server, "/dashboard/api/workers").await;
        let busy = workers
            .as_object()
            .unwrap()
            .values()
            .filter(|w| w["status"] == "busy")
            .count();
        if busy == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run was not killed: {workers}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads SSE events (`id`, `event`, `data`) from a response until `count` events came.
async fn read_events(response: reqwest::Response, count: usize) -> Vec<(u64, String, Value)> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.len() < count {
        let chunk = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .expect("events in time")
            .expect("the stream goes on")
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut id = None;
            let mut name = String::new();
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v).unwrap());
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                events.push((id, name, data));
            }
        }
    }
    events
}

#[tokio::test]
async fn the_event_stream_ticks_with_ids_and_replays_after_last_event_id() {
    let server = start(true).await;
    let url = admin_url(&server, "/dashboard/events");
    let response = server.client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = read_events(response, 3).await;
    let (first, name, data) = &events[0];
    assert_eq!(name, "tick");
    assert_eq!(data["overview"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(data["jobs"].is_array() && data["recent"].is_array());
    assert!(
        events.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "ids follow"
    );

    // Away for a second (five ticks of 200 ms), then back with the last id seen.
    let last = events.last().unwrap().0;
    let id = submit(&server, "echo", None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let response = server
        .client()
        .get(&url)
        .header("Last-Event-ID", last.to_string())
        .send()
        .await
        .unwrap();
    let replayed = read_events(response, 4).await;
    assert_eq!(replayed[0].0, last + 1, "the first missed event first");
    assert!(replayed.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    assert!(*first < replayed[0].0);
    let seen = replayed.iter().any(|(_, _, data)| {
        data["recent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["uuid"] == id.as_str())
    });
    assert!(seen, "the job submitted meanwhile is in the live list");
}

/// A `portico serve` with a managed service `hello` (the test server, none running) behind
/// the proxy; its instances are killed with it (each runs in a process group of its own).
struct Managed(Portico);

impl Drop for Managed {
    fn drop(&mut self) {
        self.0.kill9();
        kill_instances(self.0.data_dir());
    }
}

/// SIGKILLs the process group of every instance an agent recorded under `data_dir`.
fn kill_instances(data_dir: &std::path::Path) {
    let Ok(agents) = std::fs::read_dir(data_dir.join("agent")) else {
        return;
    };
    for agent in agents.flatten() {
        let Ok(records) = std::fs::read_dir(agent.path().join("pids")) else {
            continue;
        };
        for record in records.flatten() {
            let record: Option<Value> = std::fs::read(record.path())
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            if let Some(pid) = record.and_then(|r| r["pid"].as_i64()) {
                let group = nix::unistd::Pid::from_raw(-(pid as i32));
                let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

async fn start_managed() -> Managed {
    let testserver = testkit::testserver_bin().unwrap().display().to_string();
    let server = Portico::builder(env!("CARGO_BIN_EXE_portico"))
        .listeners_toml("[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"proxy\", \"admin\"]\n")
        .toml(&format!(
            "[manager]\nagent_id = \"test-host\"\ndrain = \"200ms\"\nstop_timeout = \"1s\"\n\
             [[manager.service]]\nname = \"hello\"\ncommand = [{testserver:?}, \"--port\", \"{{port}}\"]\n\
             health = \"/_health\"\n"
        ))
        .toml("[dashboard]\ninterval = \"200ms\"\n")
        .start()
        .await
        .expect("portico starts");
    Managed(server)
}

#[tokio::test]
async fn a_cold_request_makes_an_instance_appear_with_its_allocation_and_latency() {
    let server = start_managed().await;
    let server = &server.0;
    let manager = get_json(server, "/dashboard/api/manager").await;
    let hello = &manager["services"][0];
    assert_eq!(hello["name"], "hello", "{manager}");
    assert_eq!(hello["instances"].as_array().unwrap().len(), 0);
    assert_eq!(manager["agents"][0]["id"], "test-host", "{manager}");

    let response = server
        .client()
        .get(admin_url(server, "/hello/"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let manager = get_json(server, "/dashboard/api/manager").await;
        let hello = &manager["services"][0];
        let instance = &hello["instances"][0];
        let allocation = &hello["allocations"][0];
        // The agent's load follows at its next report.
        let running = manager["agents"][0]["running"] == 1;
        if instance["state"] == "ready" && allocation["reason"] == "cold" && running {
            assert_eq!(instance["agent"], "test-host");
            assert!(instance["latency_ms"].as_f64().unwrap() > 0.0, "{manager}");
            assert_eq!(instance["in_flight"], 0);
            assert_eq!(instance["ejections"], 0);
            assert_eq!(allocation["outcome"], "ok");
            assert!(allocation["seconds"].as_f64().unwrap() > 0.0);
            break;
        }
        assert!(Instant::now() < deadline, "no instance shown: {manager}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The overview shows the proxied requests under the managed service's name.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let overview = get_json(server, "/dashboard/api/overview").await;
        let proxied = overview["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == "proxy" && s["route"] == "hello")
            .cloned();
        if let Some(series) = proxied {
            assert!(series["total"].as_u64().unwrap() >= 1);
            assert!(series["p50_ms"].as_f64().is_some(), "{series}");
            break;
        }
        assert!(Instant::now() < deadline, "no proxied series: {overview}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fills a fresh data directory's job store with `count` finished `echo` jobs (every 1000th
/// a FAILURE), oldest first, straight through the records store (submitting them would take
/// minutes).
async fn store_with_jobs(dir: &std::path::Path, count: usize) {
    let (data_dir, _) = service::DataDir::open_or_create(dir).unwrap();
    let db = jobs::records::LocalDb::open(data_dir.dir().try_clone().unwrap(), None).unwrap();
    let records = jobs::records::Records::Embedded(db.clone());
    let now = time::OffsetDateTime::now_utc();
    let mut batch = Vec::new();
    for n in 0..count {
        let mut job = jobs::Job::new("echo", serde_json::json!({"n": n}), now);
        job.state = if n % 1000 == 0 {
            jobs::State::Failure
        } else {
            jobs::State::Success
        };
        job.finished_at = Some(now);
        batch.push(job);
        if batch.len() == 5000 || n + 1 == count {
            let writes = batch.iter().map(|job| records.insert(job));
            for result in futures::future::join_all(writes).await {
                result.unwrap();
            }
            batch.clear();
        }
    }
    drop(records);
    db.close().unwrap();
}

async fn timed_tasks(server: &Portico, query: &str) -> (Duration, Value) {
    let started = Instant::now();
    let page = get_json(server, &format!("/dashboard/api/tasks?{query}")).await;
    (started.elapsed(), page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_from_the_store_and_stays_fast_with_100000_jobs() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("data");
    store_with_jobs(&dir, 100_000).await;
    let server = Portico::builder(env!("CARGO_BIN_EXE_portico"))
        .listeners_toml("[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"admin\", \"jobs\"]\n")
        .toml("[jobs.security]\nbypass = true\n")
        .toml(JOBS)
        .data_dir(&dir)
        .start()
        .await
        .expect("portico starts");

    let (took, newest) = timed_tasks(&server, "limit=50").await;
    assert_eq!(newest.as_object().unwrap().len(), 50);
    assert!(took < Duration::from_millis(500), "newest 50 took {took:?}");
    let (took, page) = timed_tasks(&server, "service=echo&state=SUCCESS&limit=100").await;
    assert_eq!(page.as_object().unwrap().len(), 100);
    assert!(
        took < Duration::from_millis(500),
        "a filtered page took {took:?}"
    );
    // The next page starts after the oldest of this one.
    let oldest = page
        .as_object()
        .unwrap()
        .values()
        .min_by(|a, b| {
            a["received"]
                .as_f64()
                .partial_cmp(&b["received"].as_f64())
                .unwrap()
        })
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, next) = timed_tasks(&server, &format!("limit=100&after={oldest}")).await;
    assert_eq!(next.as_object().unwrap().len(), 100);
    assert!(next.get(&oldest).is_none());
    // A rare state means scanning many records: still bounded, reported, not asserted tight.
    let (took, failures) = timed_tasks(&server, "state=FAILURE&limit=20").await;
    assert_eq!(failures.as_object().unwrap().len(), 20);
    eprintln!("20 FAILURE jobs among 20,000 newest took {took:?}");

    // The live stream still sends its picture at once.
    let response = server
        .client()
        .get(admin_url(&server, "/dashboard/events"))
        .send()
        .await
        .unwrap();
    let started = Instant::now();
    let events = read_events(response, 1).await;
    assert_eq!(events[0].2["recent"].as_array().unwrap().len(), 50);
    assert!(started.elapsed() < Duration::from_secs(3));
}
