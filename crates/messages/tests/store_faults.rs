//! The messages API over the real embedded store (redb in a temp dir) whose file goes through
//! `durable`'s fault switch: what a client sees while the disk fails (EIO: 503 with
//! `Retry-After`; full: 507 on POST, 503 on GET) and that the service heals by itself, every
//! acknowledged message served again, without being reopened. The same on a real full tmpfs
//! through the binary: `crates/portico/tests/messages_disk_full.rs`.

use std::time::{Duration, Instant};

use axum::body::Body;
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use durable::{Fault, Faults};
use http::{header, Request, StatusCode};
use messages::{Config, MessagesService, EMBEDDED_FILE};
use sha2::{Digest as _, Sha256};
use store::{AnyStore, EmbeddedStore, Health};
use tower::ServiceExt;

/// Longest the store may take to heal once the fault is gone.
const HEAL_LIMIT: Duration = Duration::from_secs(20);

struct Answer {
    status: StatusCode,
    json: serde_json::Value,
    retry_after: Option<String>,
}

/// The service over an embedded store without read cache (every GET reads the file), whose
/// file goes through `faults`.
async fn service(dir: &tempfile::TempDir, faults: &Faults) -> MessagesService {
    let options = durable::Options {
        faults: Some(faults.clone()),
        reopen_backoff_min: Duration::from_millis(10),
        reopen_backoff_max: Duration::from_millis(200),
        ..EmbeddedStore::default_options()
    };
    let handle = Dir::open_ambient_dir(dir.path(), ambient_authority()).expect("open dir");
    let store = EmbeddedStore::open_with(handle, EMBEDDED_FILE, 0, options)
        .await
        .expect("open the store");
    MessagesService::with_store(AnyStore::Embedded(store), &Config::default())
}

async fn send(service: &MessagesService, request: Request<Body>) -> Answer {
    let response = service.router().oneshot(request).await.expect("infallible");
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().expect("ASCII").to_string());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        json,
        retry_after,
    }
}

fn post(message: &str) -> Request<Body> {
    Request::post("/messages")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            serde_json::json!({ "message": message }).to_string(),
        ))
        .expect("request")
}

fn get(message: &str) -> Request<Body> {
    let digest = hex::encode(Sha256::digest(message.as_bytes()));
    Request::get(format!("/messages/{digest}"))
        .body(Body::empty())
        .expect("request")
}

fn err_msg(answer: &Answer) -> &str {
    answer.json["err_msg"].as_str().unwrap_or("<no err_msg>")
}

/// Posts `messages`, each must be acknowledged.
async fn post_all(service: &MessagesService, messages: &[String]) {
    for message in messages {
        let answer = send(service, post(message)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", err_msg(&answer));
    }
}

async fn assert_all_served(service: &MessagesService, messages: &[String]) {
    for message in messages {
        let answer = send(service, get(message)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", err_msg(&answer));
        assert_eq!(answer.json["message"], message.as_str());
    }
}

async fn healthy_within(service: &MessagesService, limit: Duration) {
    let mut health = service.watch_health();
    let healed = tokio::time::timeout(limit, health.wait_for(Health::is_healthy)).await;
    assert!(healed.is_ok(), "still {} after {limit:?}", service.health());
}

fn messages(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("{prefix} {n} ✓")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_answers_503_with_retry_after_then_heals_by_itself() {
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = Faults::new();
    let service = service(&dir, &faults).await;
    let acked = messages("before", 20);
    post_all(&service, &acked).await;

    faults.fail_syncs(Fault::Io);
    let started = Instant::now();
    for request in [post("during"), get(&acked[0]), post("during 2")] {
        let answer = send(&service, request).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.retry_after.as_deref(), Some("1"));
        assert_eq!(
            err_msg(&answer),
            "message store is unavailable, try again later"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(service.health(), Health::Unavailable { .. }));

    faults.heal();
    healthy_within(&service, HEAL_LIMIT).await;
    assert_all_served(&service, &acked).await;
    let after = messages("after", 5);
    post_all(&service, &after).await;
    assert_all_served(&service, &after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_507_on_post_and_503_on_get_then_heals_by_itself() {
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = Faults::new();
    let service = service(&dir, &faults).await;
    let acked = messages("before", 20);
    post_all(&service, &acked).await;

    faults.fail_all_writes(Fault::NoSpace);
    let answer = send(&service, post("too much")).await;
    assert_eq!(answer.status, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(answer.retry_after, None);
    assert!(
        err_msg(&answer).contains("out of disk space"),
        "{}",
        err_msg(&answer)
    );
    let answer = send(&service, get(&acked[3])).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    assert!(
        err_msg(&answer).contains("full disk"),
        "{}",
        err_msg(&answer)
    );
    assert!(matches!(service.health(), Health::DiskFull { .. }));

    faults.heal();
    healthy_within(&service, HEAL_LIMIT).await;
    assert_all_served(&service, &acked).await;
    post_all(&service, &["too much".to_string()]).await;
    assert_all_served(&service, &["too much".to_string()]).await;
}
