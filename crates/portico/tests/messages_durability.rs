//! A `201` means durable: clients post distinct messages concurrently, the server is killed
//! with SIGKILL in the middle, restarted on the same data, and every message that got a `201`
//! must be found. Run for the embedded store (redb, group commit) and, when the test Redis is
//! there, for the Redis store (what survives a Portico crash there is Redis's business, but
//! nothing acknowledged may be lost on the way).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use testkit::Portico;

const BIN: &str = env!("CARGO_BIN_EXE_portico");
const WRITERS: usize = 32;
/// Upper bound on posts per writer (the kill normally stops them long before).
const MAX_POSTS_PER_WRITER: usize = 5_000;

/// (digest, message) pairs the server acknowledged with 201.
type Acked = Arc<Mutex<Vec<(String, String)>>>;

/// Posts distinct messages until the server stops answering.
async fn writer(client: reqwest::Client, url: String, id: usize, acked: Acked) {
    for n in 0..MAX_POSTS_PER_WRITER {
        let message = format!("durability writer {id} message {n} ✓");
        let sent = client
            .post(&url)
            .json(&serde_json::json!({ "message": message }))
            .send()
            .await;
        let Ok(response) = sent else { return };
        if response.status() != StatusCode::CREATED {
            return;
        }
        let Ok(body) = response.json::<serde_json::Value>().await else {
            return;
        };
        let digest = body["digest"].as_str().unwrap_or_default().to_string();
        assert_eq!(digest, hex::encode(Sha256::digest(message.as_bytes())));
        acked.lock().expect("lock").push((digest, message));
    }
}

async fn acknowledged_writes_survive_sigkill(toml: &str) {
    let listener = "[[listener]]\naddr = \"127.0.0.1:0\"\ntls = { self_signed = true }\nservices = [\"messages\"]\n";
    let mut server = Portico::builder(BIN)
        .listeners_toml(listener)
        .toml(toml)
        .start()
        .await
        .expect("start portico");
    let acked: Acked = Arc::default();
    let url = server.url("/messages");
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| tokio::spawn(writer(server.client(), url.clone(), id, acked.clone())))
        .collect();

    // Kill once a good number of writes are acknowledged (or after 10 s at most).
    let started = Instant::now();
    while acked.lock().expect("lock").len() < 2_000 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill9();
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(70), writer)
            .await
            .expect("writer stops after the kill")
            .expect("writer task");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 100,
        "only {} writes acknowledged before the kill",
        acked.len()
    );

    server
        .restart()
        .await
        .expect("restart on the same data dir");
    let client = server.client();
    for (digest, message) in &acked {
        let response = client
            .get(server.url(&format!("/messages/{digest}")))
            .send()
            .await
            .expect("GET");
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "acknowledged {message:?} lost"
        );
        let body: serde_json::Value = response.json().await.expect("JSON");
        assert_eq!(body["message"], message.as_str());
    }
    eprintln!(
        "{} acknowledged writes all found after SIGKILL",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_every_acknowledged_write_across_sigkill() {
    acknowledged_writes_survive_sigkill("[messages]\nstore = \"embedded\"\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_keeps_every_acknowledged_write_across_sigkill() {
    let url = testkit::test_redis_url();
    let options = store::RedisOptions {
        url: url.clone(),
        key_prefix: String::new(),
        connections: 1,
        timeout: Duration::from_secs(2),
    };
    let reachable = match store::RedisStore::new(&options) {
        Ok(redis) => redis.ping().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(error) = reachable {
        testkit::server_missing(&format!("Redis at {url}"), error);
        return;
    }
    let prefix = testkit::unique_key_prefix("durability");
    let toml = format!("[messages]\nstore = {url:?}\nkey_prefix = {prefix:?}\n");
    acknowledged_writes_survive_sigkill(&toml).await;
    let keys = std::process::Command::new("redis-cli")
        .args(["-u", &url, "--scan", "--pattern", &format!("{prefix}*")])
        .output();
    if let Ok(keys) = keys {
        let keys: Vec<String> = String::from_utf8_lossy(&keys.stdout)
            .lines()
            .map(String::from)
            .collect();
        for chunk in keys.chunks(500) {
            let _ = std::process::Command::new("redis-cli")
                .args(["-u", &url, "DEL"])
                .args(chunk)
                .output();
        }
    }
}
