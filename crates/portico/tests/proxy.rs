//! The proxy on one host, through the real binary: `portico serve` with the embedded registry,
//! its agent in process starting `portico-testserver` instances, and the `proxy` service at
//! `/{service}/{path}`. Cold starts (one shared allocation), SIGKILL under load, the idle
//! stop, a command that fails to start, body limits, headers, streaming both ways,
//! WebSockets (and the slot an upgraded connection keeps), retries and the proxy's errors.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use testkit::Portico;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

/// One plain-HTTP listener with the proxy and admin (the manager API goes with admin).
const PLAIN: &str = "[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"proxy\", \"admin\"]\n";

fn testserver() -> String {
    testkit::testserver_bin().unwrap().display().to_string()
}

/// A `[[manager.service]]` running the test server, with `extra` keys.
fn service(name: &str, extra: &str) -> String {
    format!(
        "[[manager.service]]\nname = \"{name}\"\ncommand = [{:?}, \"--port\", \"{{port}}\"]\n\
         health = \"/_health\"\n{extra}\n",
        testserver()
    )
}

/// `portico serve` with `listeners`, its agent `test-host` in process, and `extra`.
async fn start_with(listeners: &str, extra: &str) -> Served {
    let server = Portico::builder(BIN)
        .listeners_toml(listeners)
        .toml(&format!(
            "[manager]\nagent_id = \"test-host\"\ndrain = \"200ms\"\nstop_timeout = \"1s\"\n{extra}"
        ))
        .start()
        .await
        .expect("portico starts");
    Served(server)
}

async fn start(extra: &str) -> Served {
    start_with(PLAIN, extra).await
}

/// A running `portico serve` whose instances go with it whatever the test's outcome: the
/// harness ends the server with SIGKILL, which leaves its agent's children (each in a process
/// group of its own) running.
struct Served(Portico);

impl std::ops::Deref for Served {
    type Target = Portico;
    fn deref(&self) -> &Portico {
        &self.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.0.kill9();
        stop_instances(self.0.data_dir());
    }
}

/// SIGKILLs the process group of every instance the agents recorded under `data_dir` (when
/// the pid still is that process: its start time matches the record).
fn stop_instances(data_dir: &Path) {
    let Ok(agents) = std::fs::read_dir(data_dir.join("agent")) else {
        return;
    };
    for agent in agents.flatten() {
        let Ok(records) = std::fs::read_dir(agent.path().join("pids")) else {
            continue;
        };
        for record in records.flatten() {
            let Ok(bytes) = std::fs::read(record.path()) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            let (Some(pid), Some(ticks)) = (record["pid"].as_i64(), record["start_ticks"].as_u64())
            else {
                continue;
            };
            let pid = pid as i32;
            if start_ticks(pid) == Some(ticks) {
                let group = nix::unistd::Pid::from_raw(-pid);
                let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// Field 22 of `/proc/PID/stat` (the process's start time), which tells a reused pid apart.
fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn get_json(url: &str) -> (u16, Value) {
    let answer = client().get(url).send().await.expect("GET");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// The instances of `service` in the registry (every state).
async fn instances(server: &Served, service: &str) -> Vec<Value> {
    let (status, body) = get_json(&server.url("/manager/instances")).await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .expect("a list")
        .iter()
        .filter(|i| i["service"] == service)
        .cloned()
        .collect()
}

/// Polls until `service` has exactly `count` ready instances; returns them.
async fn until_ready(server: &Served, service: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = instances(server, service).await;
        let ready: Vec<Value> = all
            .iter()
            .filter(|i| i["state"] == "ready")
            .cloned()
            .collect();
        if ready.len() == count && all.len() == count {
            return ready;
        }
        assert!(
            Instant::now() < deadline,
            "{count} ready instances of {service} within 20 s; have {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn addr_of(instance: &Value) -> SocketAddr {
    instance["addr"]
        .as_str()
        .expect("addr")
        .parse()
        .expect("an address")
}

/// The test server's own counters, asked directly.
async fn stats(addr: SocketAddr) -> Value {
    get_json(&format!("http://{addr}/_stats")).await.1
}

async fn total_requests(addrs: &[SocketAddr]) -> u64 {
    let mut total = 0;
    for addr in addrs {
        total += stats(*addr).await["requests"].as_u64().expect("requests");
    }
    total
}

/// The pid the agent recorded for an instance.
fn pid_of(data_dir: &Path, instance: &Value) -> i32 {
    let id = instance["id"].as_str().expect("id");
    let path = data_dir.join(format!("agent/test-host/pids/{id}.json"));
    let record: Value = serde_json::from_slice(&std::fs::read(&path).expect("pid record")).unwrap();
    record["pid"].as_i64().expect("pid") as i32
}

fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
    !stat.is_empty() && !state.starts_with('Z')
}

/// A metric's value in `/metrics` (the first line starting with `series`).
async fn metric(server: &Served, series: &str) -> Option<f64> {
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
}

// ------------------------------------------------------------------------------ cold start

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_request_starts_an_instance_and_is_answered_by_it() {
    let server = start(&service("hello", "")).await;
    assert!(instances(&server, "hello").await.is_empty());
    let (status, body) = get_json(&server.url("/hello/greet/you?x=1&y=%2F")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["path"], "/greet/you?x=1&y=%2F",
        "the instance's path: {body}"
    );
    let ready = until_ready(&server, "hello", 1).await;
    assert_eq!(
        body["server"], ready[0]["id"],
        "answered by the new instance"
    );
    // `/{service}` alone is the instance's `/`.
    let (status, body) = get_json(&server.url("/hello")).await;
    assert_eq!((status, body["path"].as_str()), (200, Some("/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_cold_requests_start_exactly_one_instance() {
    // The instance takes 300 ms to start, so every request arrives while it is starting.
    let slow_start = format!(
        "[[manager.service]]\nname = \"hello\"\nhealth = \"/_health\"\n\
         command = [\"/bin/sh\", \"-c\", \"sleep 0.3; exec {} --port $PORT\"]\n",
        testserver()
    );
    let server = start(&slow_start).await;
    let client = client();
    let requests = (0..100).map(|n| {
        let url = server.url(&format!("/hello/n{n}"));
        let client = client.clone();
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    let statuses = futures::future::join_all(requests).await;
    let ok = statuses.iter().filter(|s| matches!(s, Ok(200))).count();
    assert_eq!(ok, 100, "{statuses:?}");
    assert_eq!(instances(&server, "hello").await.len(), 1);
    let allocations = "portico_proxy_allocations_total{service=\"hello\",outcome=\"ok\"}";
    assert_eq!(metric(&server, allocations).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_command_fails_gives_503_naming_the_reason() {
    let broken = "[[manager.service]]\nname = \"broken\"\n\
                  command = [\"/bin/sh\", \"-c\", \"echo missing config file >&2; exit 3\"]\n";
    let server = start(broken).await;
    let started = Instant::now();
    let answer = client()
        .get(server.url("/broken/x"))
        .send()
        .await
        .expect("GET");
    assert_eq!(answer.status(), 503);
    assert!(answer.headers().contains_key("retry-after"));
    let body: Value = answer.json().await.expect("JSON");
    let message = body["error"].as_str().expect("error");
    assert!(message.contains("service \"broken\""), "{message}");
    assert!(
        message.contains("missing config file"),
        "the reason: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not the alloc_timeout"
    );
    // Within the cooldown the next request gets the reason at once.
    let again = client()
        .get(server.url("/broken/x"))
        .send()
        .await
        .expect("GET");
    assert_eq!(again.status(), 503);
    let text = again.text().await.expect("body");
    assert!(text.contains("missing config file"), "{text}");
}

// ------------------------------------------------------------------- failures under load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_sigkilled_under_load_loses_no_get() {
    let server = start(&service("hello", "min = 2")).await;
    let ready = until_ready(&server, "hello", 2).await;
    let victim = pid_of(server.data_dir(), &ready[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let client = client();
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let (url, client) = (server.url(&format!("/hello/w{worker}")), client.clone());
            let (stop, sent) = (stop.clone(), sent.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    match client.get(&url).send().await {
                        Ok(answer) if answer.status() == 200 => {}
                        Ok(answer) => {
                            failures.push(format!("{} {:?}", answer.status(), answer.text().await))
                        }
                        Err(error) => failures.push(error.to_string()),
                    }
                }
                failures
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.expect("worker"));
    }
    assert!(failures.is_empty(), "failed GETs: {failures:?}");
    assert!(sent.load(Ordering::Relaxed) > 100, "the load ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_is_stopped_after_its_idle_timeout_and_a_busy_one_is_not() {
    let server = start(&service("hello", "idle_timeout = \"2s\"")).await;
    let (status, _) = get_json(&server.url("/hello/")).await;
    assert_eq!(status, 200);
    let ready = until_ready(&server, "hello", 1).await;
    let pid = pid_of(server.data_dir(), &ready[0]);
    // Busy for twice the idle timeout: the proxy's usage reports keep it.
    let busy_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < busy_until {
        let (status, body) = get_json(&server.url("/hello/")).await;
        assert_eq!(status, 200);
        assert_eq!(body["server"], ready[0]["id"], "the same instance serves");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Idle: stopped (and its process gone) after the idle timeout.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !instances(&server, "hello").await.is_empty() || alive(pid) {
        assert!(Instant::now() < deadline, "the idle instance still runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------------------ body limit

/// Writes a chunked POST of `total` bytes in 500-byte chunks (a pause after the first, so
/// the request's head is on its way to the instance before the body passes any limit) and
/// returns what came back.
fn chunked_post(addr: SocketAddr, path: &str, total: usize) -> String {
    let mut stream = TcpStream::connect(addr).expect("connects");
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    stream.write_all(head.as_bytes()).expect("head");
    let body = vec![b'x'; total];
    for (n, chunk) in body.chunks(500).enumerate() {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).is_err() {
            break; // answered and closed
        }
        if n == 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}\n") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_413_and_the_instance_never_gets_a_complete_request() {
    let server = start(&format!(
        "{}[limits]\nmax_body_bytes = 2000\n",
        service("hello", "")
    ))
    .await;
    let (status, _) = get_json(&server.url("/hello/")).await;
    assert_eq!(status, 200);
    let instance = addr_of(&until_ready(&server, "hello", 1).await[0]);
    let before = stats(instance).await["requests"].as_u64().unwrap();

    // Declared length over the limit: refused before the instance hears of it.
    let answer = client()
        .post(server.url("/hello/_echo"))
        .body(vec![b'x'; 3000])
        .send()
        .await
        .expect("POST");
    assert_eq!(answer.status(), 413);
    assert_eq!(stats(instance).await["requests"].as_u64().unwrap(), before);

    // Chunked under the limit: the instance reads it whole (the control).
    let addr = server.addr();
    let small = tokio::task::spawn_blocking(move || chunked_post(addr, "/hello/_echo", 1500));
    let small = small.await.unwrap();
    assert!(small.starts_with("HTTP/1.1 200"), "{small}");
    assert_eq!(stats(instance).await["bodies"], 1);

    // Chunked over the limit: 413, and the instance never had the whole body.
    let large = tokio::task::spawn_blocking(move || chunked_post(addr, "/hello/_echo", 6000));
    let large = large.await.unwrap();
    assert!(large.starts_with("HTTP/1.1 413"), "{large}");
    assert!(large.contains("over the limit of 2000 bytes"), "{large}");
    let after = stats(instance).await;
    assert_eq!(
        after["bodies"], 1,
        "the instance read no second body: {after}"
    );
    assert_eq!(after["in_flight"], 0, "{after}");
}

/// Status and body of `method path` on `addr`, with a fixed request id (echoed answers
/// carry it) and `addr`'s port written as `PORT` (echoed `Host` headers name it).
async fn answer_on(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
    let answer = client()
        .request(method, format!("http://{addr}{path}"))
        .header("x-request-id", "same-request")
        .send()
        .await
        .expect("an answer");
    let status = answer.status().as_u16();
    let body = answer.text().await.expect("a body");
    (status, body.replace(&addr.port().to_string(), "PORT"))
}

/// A listener that mounts the proxy alone is served without the gateway's router
/// (`service::Service::with_direct`): its answers must be those of a listener that mounts
/// more services, which the router serves, and count as the proxy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_with_the_proxy_alone_answers_as_one_with_more_services() {
    let listeners =
        format!("{PLAIN}[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"proxy\"]\n");
    let extra = format!("{}[limits]\nmax_body_bytes = 2000\n", service("hello", ""));
    let server = start_with(&listeners, &extra).await;
    let (routed, direct) = (server.listeners()[0].addr, server.listeners()[1].addr);

    // A cold start through the direct listener.
    let (status, _) = get_json(&format!("http://{direct}/hello/")).await;
    assert_eq!(status, 200);
    let instance = addr_of(&until_ready(&server, "hello", 1).await[0]);

    let cases = [
        ("GET", "/"),
        ("GET", "//x"),
        ("POST", "/healthz"),
        ("GET", "/healthz/"),
        ("GET", "/nowhere/x"),
        ("GET", "/hello"),
        ("GET", "/hello/_echo?q=%2F"),
        ("HEAD", "/hello/_echo"),
        ("POST", "/hello/_echo"),
        ("DELETE", "/hello/_status/418"),
    ];
    for (method, path) in cases {
        let by_router = answer_on(routed, method, path).await;
        let by_direct = answer_on(direct, method, path).await;
        assert_eq!(by_direct, by_router, "{method} {path}");
    }
    let (status, healthz) = answer_on(direct, "GET", "/healthz").await;
    assert_eq!(
        (status, healthz.as_str()),
        (200, "{\"status\":\"ok\",\"services\":[\"proxy\"]}\n")
    );

    // The body limit holds, chunked too, and the instance never has the whole body.
    let before = stats(instance).await["bodies"].as_u64().expect("bodies");
    let large = tokio::task::spawn_blocking(move || chunked_post(direct, "/hello/_echo", 6000));
    let large = large.await.expect("the POST ran");
    assert!(large.starts_with("HTTP/1.1 413"), "{large}");
    assert_eq!(stats(instance).await["bodies"].as_u64(), Some(before));

    // Its requests count as the proxy's, by route.
    let series = "portico_http_requests_total{service=\"proxy\",route=\"hello\",status=\"200\"}";
    let counted = metric(&server, series).await.expect("the proxy's series");
    let (status, _) = answer_on(direct, "GET", "/hello/_echo").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&server, series).await, Some(counted + 1.0));
}

// ---------------------------------------------------------------------------- pass-through

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_rewritten_and_statuses_and_headers_come_back_unchanged() {
    let server = start(&service("hello", "")).await;
    let answer = client()
        .get(server.url("/hello/_echo?q=1"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "gopher")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-custom", "kept")
        .send()
        .await
        .expect("GET");
    assert_eq!(answer.status(), 200);
    let id = answer.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let echo: Value = answer.json().await.expect("JSON");
    assert_eq!(echo["path"], "/_echo?q=1");
    assert_eq!(echo["version"], "HTTP/1.1");
    let header = |name: &str| -> Vec<String> {
        echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|pair| pair[0] == name)
            .map(|pair| pair[1].as_str().unwrap().to_string())
            .collect()
    };
    let host = format!("{}", server.addr());
    assert_eq!(header("host"), header("x-forwarded-host"));
    assert_eq!(header("host"), [host]);
    assert_eq!(header("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(header("x-forwarded-proto"), ["http"]);
    assert_eq!(header("x-request-id"), [id]);
    assert_eq!(header("x-custom"), ["kept"]);
    for hop in ["connection", "keep-alive", "x-hop"] {
        assert!(header(hop).is_empty(), "{hop} reached the instance: {echo}");
    }
    let teapot = client()
        .delete(server.url("/hello/_status/418"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(teapot.status(), 418);
    assert_eq!(teapot.headers()["content-type"], "text/plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_over_tls_reaches_an_http1_instance_with_https_headers() {
    let listeners = "[[listener]]\naddr = \"127.0.0.1:0\"\ntls = { self_signed = true }\n\
                     services = [\"proxy\"]\n\
                     [[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"admin\"]\n";
    let server = start_with(listeners, &service("hello", "")).await;
    let client = server
        .client_builder()
        .expect("builder")
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let answer = client
        .post(server.url("/hello/_echo"))
        .body("over h2")
        .send()
        .await
        .expect("POST");
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.status(), 200);
    let echo: Value = answer.json().await.expect("JSON");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["body"], "over h2");
    let headers = echo["headers"].as_array().unwrap();
    let value = |name: &str| {
        headers
            .iter()
            .find(|pair| pair[0] == name)
            .map(|pair| pair[1].as_str().unwrap().to_string())
    };
    let port = server.addr().port();
    assert_eq!(value("host"), Some(format!("localhost:{port}")));
    assert_eq!(value("x-forwarded-proto").as_deref(), Some("https"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_streams_both_ways_without_being_buffered() {
    // Ping-pong: each chunk must come back before the next is sent, which only works if
    // neither the request nor the response is held back until it is complete.
    let extra = format!(
        "{}[limits]\nmax_body_bytes = 100000000\n",
        service("hello", "")
    );
    let server = start(&extra).await;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    let answer = client()
        .post(server.url("/hello/_stream"))
        .body(reqwest::Body::wrap_stream(stream));
    let chunk = Bytes::from(vec![b'z'; 1 << 20]);
    sender.send(Ok(chunk.clone())).await.expect("first chunk");
    let answer = tokio::time::timeout(Duration::from_secs(20), answer.send())
        .await
        .expect("the head came before the body ended")
        .expect("POST");
    assert_eq!(answer.status(), 200);
    let mut body = answer;
    let mut received = 0usize;
    for round in 1..=32usize {
        while received < round << 20 {
            let next = tokio::time::timeout(Duration::from_secs(10), body.chunk()).await;
            let part = next
                .expect("chunk came back in time")
                .expect("read")
                .expect("more");
            assert!(part.iter().all(|b| *b == b'z'));
            received += part.len();
        }
        if round < 32 {
            sender.send(Ok(chunk.clone())).await.expect("next chunk");
        }
    }
    drop(sender);
    assert_eq!(body.chunk().await.expect("end"), None);
    assert_eq!(received, 32 << 20);
}

/// A WebSocket client frame (masked) with `payload`.
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [7u8, 1, 3, 9];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Opens a WebSocket to `/hello/_ws` through the proxy; returns the stream after the 101.
fn websocket(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let handshake = "GET /hello/_ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(handshake.as_bytes()).expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("101 head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    stream
}

fn ws_echo(stream: &mut TcpStream, text: &str) -> String {
    stream
        .write_all(&ws_frame(1, text.as_bytes()))
        .expect("frame");
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).expect("echo head");
    let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
    stream.read_exact(&mut payload).expect("echo payload");
    String::from_utf8(payload).expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_passed_through_and_echoes() {
    let server = start(&service("hello", "")).await;
    let addr = server.addr();
    tokio::task::spawn_blocking(move || {
        let mut socket = websocket(addr);
        assert_eq!(ws_echo(&mut socket, "hello"), "hello");
        assert_eq!(
            ws_echo(&mut socket, "again, through the tunnel"),
            "again, through the tunnel"
        );
    })
    .await
    .expect("client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_keeps_its_connection_slot_until_it_is_cut_idle() {
    let listeners = "[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"proxy\"]\n\
                     [[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"admin\"]\n";
    let extra = format!(
        "{}[limits]\nmax_connections = 1\nidle_timeout = \"1s\"\n",
        service("hello", "")
    );
    let server = start_with(listeners, &extra).await;
    let addr = server.addr();
    tokio::task::spawn_blocking(move || {
        let mut socket = websocket(addr);
        assert_eq!(ws_echo(&mut socket, "mine"), "mine");
        // The upgraded connection still holds the listener's only slot.
        let mut second = TcpStream::connect(addr).expect("connects");
        second
            .write_all(b"GET /hello/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        let mut refusal = String::new();
        second
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = second.read_to_string(&mut refusal);
        assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
        // Idle for the idle timeout: the gateway cuts the tunnel.
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let read = socket.read(&mut buf);
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(800), "cut after {waited:?}");
        assert!(waited < Duration::from_secs(4), "cut after {waited:?}");
        // The slot is free again.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut third = websocket(addr);
            if ws_echo(&mut third, "free") == "free" {
                break;
            }
            assert!(Instant::now() < deadline);
        }
    })
    .await
    .expect("client");
}

// --------------------------------------------------------------------------------- retries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_is_retried_on_another_instance_and_a_post_never_is() {
    let server = start(&service("hello", "min = 2")).await;
    let ready = until_ready(&server, "hello", 2).await;
    let addrs: Vec<SocketAddr> = ready.iter().map(addr_of).collect();
    let client = client();

    let before = total_requests(&addrs).await;
    let answer = client
        .get(server.url("/hello/_abort"))
        .send()
        .await
        .expect("GET");
    assert_eq!(answer.status(), 502);
    let body: Value = answer.json().await.expect("JSON");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("service \"hello\""),
        "{body}"
    );
    assert_eq!(
        total_requests(&addrs).await - before,
        2,
        "GET tried on both"
    );

    let before = total_requests(&addrs).await;
    let answer = client
        .post(server.url("/hello/_abort"))
        .body("x")
        .send()
        .await
        .expect("POST");
    assert_eq!(answer.status(), 502);
    assert_eq!(total_requests(&addrs).await - before, 1, "POST sent once");

    // A PUT body within the 64 KiB retry buffer is sent again; a larger one is not.
    let before = total_requests(&addrs).await;
    let small = client
        .put(server.url("/hello/_abort"))
        .body(vec![1u8; 1000])
        .send();
    assert_eq!(small.await.expect("PUT").status(), 502);
    assert_eq!(
        total_requests(&addrs).await - before,
        2,
        "small PUT retried"
    );
    let before = total_requests(&addrs).await;
    let large = client
        .put(server.url("/hello/_abort"))
        .body(vec![1u8; 100_000])
        .send();
    assert_eq!(large.await.expect("PUT").status(), 502);
    assert_eq!(
        total_requests(&addrs).await - before,
        1,
        "large PUT not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_failure_is_retried_on_another_instance_even_for_a_post() {
    // An instance registered at a port nothing listens on, beside a live one.
    let dead = testkit::free_port().expect("port");
    let extra = format!(
        "{}[[proxy.register]]\nservice = \"hello\"\naddr = \"127.0.0.1:{dead}\"\n",
        service("hello", "min = 1")
    );
    let server = start(&extra).await;
    let live = until_ready(&server, "hello", 2)
        .await
        .into_iter()
        .find(|i| i["agent"] == "test-host")
        .expect("the agent's instance");
    // Slower than the unmeasured one's neutral estimate, so the dead one is picked first.
    let client = client();
    let slow = client
        .put(format!("http://{}/_delay", addr_of(&live)))
        .body("150ms")
        .send()
        .await
        .expect("PUT delay");
    assert_eq!(slow.status(), 200);
    for n in 0..5 {
        let answer = client
            .post(server.url(&format!("/hello/_echo?n={n}")))
            .body("once")
            .send()
            .await
            .expect("POST");
        assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    }
    let retries = "portico_proxy_retries_total{service=\"hello\",reason=\"connect\"}";
    assert!(
        metric(&server, retries).await >= Some(3.0),
        "the dead one was tried"
    );
    let ejections = "portico_proxy_ejections_total{service=\"hello\"}";
    assert_eq!(
        metric(&server, ejections).await,
        Some(1.0),
        "3 failures eject it"
    );
}

// ---------------------------------------------------------------------------------- errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_services_get_404_and_slow_instances_504_each_named() {
    let extra = format!(
        "{}[proxy]\nupstream_timeout = \"400ms\"\n",
        service("hello", "")
    );
    let server = start(&extra).await;
    let answer = client()
        .get(server.url("/nowhere/x"))
        .send()
        .await
        .expect("GET");
    assert_eq!(answer.status(), 404);
    assert_eq!(
        answer.text().await.unwrap(),
        "{\"error\":\"unknown service \\\"nowhere\\\"\"}\n"
    );
    // Built-in routes win over the proxy's.
    let (status, _) = get_json(&server.url("/healthz")).await;
    assert_eq!(status, 200);

    let (status, _) = get_json(&server.url("/hello/")).await;
    assert_eq!(status, 200);
    let instance = addr_of(&until_ready(&server, "hello", 1).await[0]);
    let slow = client()
        .put(format!("http://{instance}/_delay"))
        .body("2s")
        .send()
        .await
        .expect("PUT delay");
    assert_eq!(slow.status(), 200);
    let started = Instant::now();
    let answer = client()
        .get(server.url("/hello/slow"))
        .send()
        .await
        .expect("GET");
    assert_eq!(answer.status(), 504);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let text = answer.text().await.unwrap();
    assert!(text.contains(&instance.to_string()), "{text}");
    assert!(text.contains("within 400ms"), "{text}");
}
