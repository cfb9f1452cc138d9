//! The messages service over HTTPS through the real `portico` binary, against both real
//! stores: embedded (redb in the server's data dir) and Redis (`PORTICO_TEST_REDIS`, default
//! `redis://127.0.0.1:6379`, under a unique key prefix; skipped when absent unless `CI` is
//! set). Also `portico check` against fresh and already-populated servers, the
//! `MESSAGES_REDIS_HOST` variable, and a private `redis-server` stopped and started under a
//! running Portico.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use testkit::{server_missing, test_redis_url, unique_key_prefix, Portico, PrivateRedis};

const FOO: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
const BAR: &str = "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9";
const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const CAFE: &str = "850f7dc43910ff890f8879c0ed26fe697c93a067ad93a7d50f466a7028a9bf4e";
const BIN: &str = env!("CARGO_BIN_EXE_portico");

/// Body limit of the test configs: small, so 413 is cheap to provoke.
const LIMIT: usize = 4096;

// ---------------------------------------------------------------------------------------
// helpers

struct Answer {
    status: StatusCode,
    json: serde_json::Value,
    raw: String,
    content_type: String,
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let raw = response.text().await.expect("body");
    let json = serde_json::from_str(&raw).unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        json,
        raw,
        content_type,
    }
}

async fn post(server: &Portico, message: &str) -> Answer {
    let request = server
        .client()
        .post(server.url("/messages"))
        .json(&serde_json::json!({ "message": message }));
    answer(request.send().await.expect("POST")).await
}

async fn post_raw(server: &Portico, content_type: &str, body: impl Into<reqwest::Body>) -> Answer {
    let request = server
        .client()
        .post(server.url("/messages"))
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body);
    answer(request.send().await.expect("POST")).await
}

async fn get(server: &Portico, digest: &str) -> Answer {
    let url = server.url(&format!("/messages/{digest}"));
    answer(server.client().get(url).send().await.expect("GET")).await
}

fn err_msg(answer: &Answer) -> &str {
    answer.json["err_msg"].as_str().unwrap_or("<no err_msg>")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Whether the test Redis answers; when it does not, skip (or fail under `CI`).
async fn redis_available() -> bool {
    let options = store::RedisOptions {
        url: test_redis_url(),
        key_prefix: String::new(),
        connections: 1,
        timeout: Duration::from_secs(2),
    };
    let reachable = match store::RedisStore::new(&options) {
        Ok(store) => store.ping().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match reachable {
        Ok(()) => true,
        Err(error) => {
            server_missing(&format!("Redis at {}", test_redis_url()), error);
            false
        }
    }
}

/// Deletes the keys under `prefix` (only those: the server is shared). Best effort.
fn delete_prefix(url: &str, prefix: &str) {
    let keys = Command::new("redis-cli")
        .args(["-u", url, "--scan", "--pattern", &format!("{prefix}*")])
        .output();
    let Ok(keys) = keys else { return };
    for key in String::from_utf8_lossy(&keys.stdout).lines() {
        let _ = Command::new("redis-cli")
            .args(["-u", url, "DEL", key])
            .output();
    }
}

fn messages_toml(store: &str, prefix: &str) -> String {
    format!(
        "[messages]\nstore = {store:?}\nkey_prefix = {prefix:?}\nmax_body_bytes = {LIMIT}\nredis_timeout = \"1s\"\n"
    )
}

/// One HTTPS listener mounting only `messages` (other services' configs play no part).
const LISTENER: &str =
    "[[listener]]\naddr = \"127.0.0.1:0\"\ntls = { self_signed = true }\nservices = [\"messages\"]\n";

/// Starts Portico serving only messages, with `toml` sections.
async fn start_messages(toml: &str) -> Portico {
    Portico::builder(BIN)
        .listeners_toml(LISTENER)
        .toml(toml)
        .start()
        .await
        .expect("start portico")
}

async fn start_embedded() -> Portico {
    start_messages(&messages_toml("embedded", "")).await
}

/// `portico check https://127.0.0.1:PORT --cacert CERT`; (success, stdout + stderr).
fn run_check(server: &Portico) -> (bool, String) {
    let base = format!("https://127.0.0.1:{}", server.addr().port());
    let cert = server.cert_path().expect("TLS listener certificate");
    let output = Command::new(BIN)
        .args(["check", &base, "--timeout", "5s", "--cacert"])
        .arg(cert)
        .output()
        .expect("run portico check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

// ---------------------------------------------------------------------------------------
// every row of the spec

async fn serves_every_spec_row(server: &Portico) {
    digests_and_round_trips(server).await;
    lookups_are_case_insensitive_and_exact(server).await;
    bad_requests_are_named(server).await;
    methods_and_media_types(server).await;
    oversize_bodies(server).await;
}

async fn digests_and_round_trips(server: &Portico) {
    let absent = get(server, &"a".repeat(64)).await;
    assert_eq!(absent.status, StatusCode::NOT_FOUND);
    assert_eq!(
        err_msg(&absent),
        format!("Message not found for hash: {}", "a".repeat(64))
    );

    for _ in 0..2 {
        let created = post(server, "foo").await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.raw);
        assert_eq!(created.raw, format!("{{\n  \"digest\": \"{FOO}\"\n}}\n"));
        assert_eq!(created.content_type, "application/json");
    }
    let found = get(server, FOO).await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(found.raw, "{\n  \"message\": \"foo\"\n}\n");

    for (message, digest) in [("bar", BAR), ("", EMPTY), ("café", CAFE)] {
        let created = post(server, message).await;
        assert_eq!(created.status, StatusCode::CREATED, "{message:?}");
        assert_eq!(created.json["digest"], digest, "{message:?}");
        let found = get(server, digest).await;
        assert_eq!(found.status, StatusCode::OK, "{message:?}");
        assert_eq!(found.json["message"], message);
    }
}

async fn lookups_are_case_insensitive_and_exact(server: &Portico) {
    let upper = get(server, &FOO.to_uppercase()).await;
    assert_eq!(upper.status, StatusCode::OK);
    assert_eq!(upper.json["message"], "foo");
    let mixed = format!("{}{}", &CAFE[..32].to_uppercase(), &CAFE[32..]);
    assert_eq!(get(server, &mixed).await.json["message"], "café");

    for digest in [
        "aaaaaaaaaaaaaaaaaaa".to_string(),
        "g".repeat(64),
        format!("{FOO}0"),
    ] {
        let absent = get(server, &digest).await;
        assert_eq!(absent.status, StatusCode::NOT_FOUND, "{digest}");
        assert_eq!(
            err_msg(&absent),
            format!("Message not found for hash: {digest}")
        );
    }
}

async fn bad_requests_are_named(server: &Portico) {
    let cases = [
        ("{\"message\": ", "request body is not valid JSON"),
        ("[\"foo\"]", "must be a JSON object"),
        ("42", "must be a JSON object"),
        ("{\"text\": \"foo\"}", "missing field \"message\""),
        (
            "{\"message\": 1}",
            "field \"message\" must be a string, got a number",
        ),
        (
            "{\"message\": {\"a\": 1}}",
            "field \"message\" must be a string, got an object",
        ),
    ];
    for (body, expected) in cases {
        let answer = post_raw(server, "application/json", body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            err_msg(&answer).contains(expected),
            "{body}: {}",
            err_msg(&answer)
        );
        assert_eq!(answer.content_type, "application/json");
    }
}

async fn methods_and_media_types(server: &Portico) {
    let body = "{\"message\": \"foo\"}";
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let answer = post_raw(server, content_type, body).await;
        assert_eq!(
            answer.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type}"
        );
        assert!(
            err_msg(&answer).contains("application/json"),
            "{}",
            err_msg(&answer)
        );
    }
    let answer = post_raw(server, "application/json; charset=utf-8", body).await;
    assert_eq!(answer.status, StatusCode::CREATED);

    let client = server.client();
    let put = client
        .put(server.url("/messages"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(put.headers()[reqwest::header::ALLOW], "POST");
    let delete = client
        .delete(server.url(&format!("/messages/{FOO}")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(delete.status(), StatusCode::METHOD_NOT_ALLOWED);
    let get_all = answer_of(client.get(server.url("/messages"))).await;
    assert_eq!(get_all.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(err_msg(&get_all).contains("GET"), "{}", err_msg(&get_all));
}

async fn answer_of(request: reqwest::RequestBuilder) -> Answer {
    answer(request.send().await.expect("request")).await
}

async fn oversize_bodies(server: &Portico) {
    let big = serde_json::json!({ "message": "x".repeat(LIMIT) }).to_string();
    let answer = post_raw(server, "application/json", big).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        err_msg(&answer).contains(&LIMIT.to_string()),
        "{}",
        err_msg(&answer)
    );
    // Over the gateway's own limit too: still 413.
    let huge = serde_json::json!({ "message": "x".repeat(2 << 20) }).to_string();
    let answer = post_raw(server, "application/json", huge).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Just under the limit is fine.
    let fits = serde_json::json!({ "message": "y".repeat(LIMIT - 20) }).to_string();
    assert_eq!(
        post_raw(server, "application/json", fits).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_serves_every_spec_row() {
    let server = start_embedded().await;
    serves_every_spec_row(&server).await;
    assert!(server.data_dir().join("messages.redb").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_serves_every_spec_row() {
    if !redis_available().await {
        return;
    }
    let prefix = unique_key_prefix("rows");
    let server = start_messages(&messages_toml(&test_redis_url(), &prefix)).await;
    serves_every_spec_row(&server).await;
    delete_prefix(&test_redis_url(), &prefix);
}

// ---------------------------------------------------------------------------------------
// portico check

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_fresh_and_populated_embedded_server() {
    let mut server = start_embedded().await;
    let (ok, output) = run_check(&server);
    assert!(ok, "fresh server: {output}");
    assert!(
        output.contains(&format!("/messages/{FOO} correctly found")),
        "{output}"
    );
    let (ok, output) = run_check(&server);
    assert!(ok, "second run: {output}");
    server.restart().await.expect("restart");
    let (ok, output) = run_check(&server);
    assert!(ok, "after restart on the same data: {output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_fresh_and_populated_redis_server() {
    if !redis_available().await {
        return;
    }
    let prefix = unique_key_prefix("check");
    let server = start_messages(&messages_toml(&test_redis_url(), &prefix)).await;
    for run in ["fresh", "populated"] {
        let (ok, output) = run_check(&server);
        assert!(ok, "{run}: {output}");
    }
    delete_prefix(&test_redis_url(), &prefix);
}

// ---------------------------------------------------------------------------------------
// MESSAGES_REDIS_HOST

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_host_variable_selects_redis_on_port_6379_db_0() {
    if test_redis_url().trim_end_matches('/') != "redis://127.0.0.1:6379"
        || !redis_available().await
    {
        eprintln!("skipping: needs the test Redis at 127.0.0.1:6379");
        return;
    }
    let prefix = unique_key_prefix("env");
    let toml = format!("[messages]\nkey_prefix = {prefix:?}\n");
    let server = Portico::builder(BIN)
        .listeners_toml(LISTENER)
        .toml(&toml)
        .env("MESSAGES_REDIS_HOST", "127.0.0.1")
        .start()
        .await
        .expect("start");
    assert_eq!(post(&server, "foo").await.status, StatusCode::CREATED);
    // The key is in Redis db 0 (not in the embedded file).
    let options = store::RedisOptions {
        url: "redis://127.0.0.1:6379/0".into(),
        key_prefix: prefix.clone(),
        connections: 1,
        timeout: Duration::from_secs(2),
    };
    let redis = store::RedisStore::new(&options).expect("url");
    let digest = store::Digest::from_hex(FOO).expect("digest");
    use store::Store;
    assert_eq!(
        redis.get(&digest).await.expect("get").as_deref(),
        Some("foo")
    );
    assert!(!server.data_dir().join("messages.redb").exists());
    delete_prefix("redis://127.0.0.1:6379/0", &prefix);
}

// ---------------------------------------------------------------------------------------
// a private Redis stopped and started under a running Portico

/// Asserts the request answers 503 (JSON, Retry-After) within 3 s.
async fn assert_quick_503(request: reqwest::RequestBuilder, what: &str) {
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(5), request.send())
        .await
        .unwrap_or_else(|_| panic!("{what}: hung while Redis is down"))
        .expect("request");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "{what}: took {elapsed:?}");
    assert_eq!(
        response.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let answer = answer(response).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {}",
        answer.raw
    );
    assert!(
        err_msg(&answer).contains("unavailable"),
        "{}",
        err_msg(&answer)
    );
}

/// POSTs until one succeeds (at most `limit`); returns how long it took.
async fn wait_for_recovery(server: &Portico, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let answer = post(server, "back").await;
        if answer.status == StatusCode::CREATED {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not recovered after {limit:?}: {}",
            answer.raw
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_503_quickly_and_recovers_without_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let Some(redis) = PrivateRedis::start_or_skip(port, dir.path()) else {
        return;
    };
    let url = format!("redis://127.0.0.1:{port}/0");
    let server = start_messages(&messages_toml(&url, "")).await;
    assert_eq!(post(&server, "foo").await.status, StatusCode::CREATED);
    assert_eq!(get(&server, FOO).await.status, StatusCode::OK);

    drop(redis);
    let client = server.client();
    for round in 0..3 {
        let body = serde_json::json!({ "message": format!("down {round}") });
        assert_quick_503(client.post(server.url("/messages")).json(&body), "POST").await;
        assert_quick_503(client.get(server.url(&format!("/messages/{FOO}"))), "GET").await;
    }
    // Many at once: none hangs.
    let started = Instant::now();
    let burst: Vec<_> = (0..50)
        .map(|_| tokio::spawn(client.get(server.url(&format!("/messages/{FOO}"))).send()))
        .collect();
    for request in burst {
        let response = request.await.expect("task").expect("request");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "burst took {:?}",
        started.elapsed()
    );
    let (ok, output) = run_check(&server);
    assert!(!ok, "check must fail while Redis is down: {output}");

    let _redis = PrivateRedis::start(port, dir.path()).expect("restart redis-server");
    let took = wait_for_recovery(&server, Duration::from_secs(5)).await;
    eprintln!("recovered {took:?} after Redis came back");
    assert_eq!(post(&server, "foo").await.status, StatusCode::CREATED);
    assert_eq!(get(&server, FOO).await.json["message"], "foo");
    let (ok, output) = run_check(&server);
    assert!(ok, "check after recovery: {output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portico_starts_while_redis_is_down_and_serves_once_it_is_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let server = start_messages(&messages_toml(&url, "")).await;
    let client = server.client();
    assert_quick_503(client.get(server.url(&format!("/messages/{FOO}"))), "GET").await;
    let Some(_redis) = PrivateRedis::start_or_skip(port, dir.path()) else {
        return;
    };
    wait_for_recovery(&server, Duration::from_secs(5)).await;
    assert_eq!(get(&server, FOO).await.status, StatusCode::NOT_FOUND);
}
