//! Every row of the spec's HTTP behaviour, through the router with no socket
//! (`Router::oneshot`) over a `MemoryStore`. The same rows run over HTTPS against both real
//! stores in `crates/portico/tests/messages_api.rs`.

use axum::body::Body;
use http::{header, Request, StatusCode};
use messages::{Config, MessagesService};
use store::{AnyStore, MemoryStore};
use tower::ServiceExt;

const FOO: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
const BAR: &str = "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9";
const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const CAFE: &str = "850f7dc43910ff890f8879c0ed26fe697c93a067ad93a7d50f466a7028a9bf4e";

struct Answer {
    status: StatusCode,
    json: serde_json::Value,
    raw: String,
    headers: http::HeaderMap,
}

fn service() -> (MessagesService, MemoryStore) {
    let memory = MemoryStore::new();
    let service = MessagesService::with_store(AnyStore::Memory(memory.clone()), &Config::default());
    (service, memory)
}

async fn send(service: &MessagesService, request: Request<Body>) -> Answer {
    let response = service.router().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let raw = String::from_utf8(bytes.to_vec()).expect("UTF-8 body");
    let json = serde_json::from_str(&raw).unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        json,
        raw,
        headers,
    }
}

fn post_raw(content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::post("/messages");
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    request.body(body.into()).expect("request")
}

fn post(message: &str) -> Request<Body> {
    let body = serde_json::json!({ "message": message }).to_string();
    post_raw(Some("application/json"), body)
}

fn get(digest: &str) -> Request<Body> {
    Request::get(format!("/messages/{digest}"))
        .body(Body::empty())
        .expect("request")
}

#[tokio::test]
async fn post_answers_201_with_the_sha256_digest_and_get_finds_it() {
    let (service, _) = service();
    let answer = send(&service, post("foo")).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.json["digest"], FOO);
    assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(answer.raw, format!("{{\n  \"digest\": \"{FOO}\"\n}}\n"));

    let answer = send(&service, get(FOO)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.raw, "{\n  \"message\": \"foo\"\n}\n");
}

#[tokio::test]
async fn repeated_post_answers_201_with_the_same_digest() {
    let (service, _) = service();
    for _ in 0..3 {
        let answer = send(&service, post("bar")).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(answer.json["digest"], BAR);
    }
}

#[tokio::test]
async fn empty_and_non_ascii_messages_round_trip() {
    let (service, _) = service();
    for (message, digest) in [("", EMPTY), ("café", CAFE)] {
        let answer = send(&service, post(message)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{message:?}");
        assert_eq!(answer.json["digest"], digest);
        let answer = send(&service, get(digest)).await;
        assert_eq!(answer.status, StatusCode::OK, "{message:?}");
        assert_eq!(answer.json["message"], message);
    }
}

#[tokio::test]
async fn uppercase_digest_finds_the_message() {
    let (service, _) = service();
    send(&service, post("foo")).await;
    let answer = send(&service, get(&FOO.to_uppercase())).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["message"], "foo");
}

#[tokio::test]
async fn unknown_bad_and_short_digests_answer_404_naming_the_hash() {
    let (service, _) = service();
    for digest in [
        "a".repeat(64),
        "aaaaaaaaaaaaaaaaaaa".into(),
        "z".repeat(64),
        "%C3%A9".into(),
    ] {
        let answer = send(&service, get(&digest)).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{digest}");
        let shown = if digest == "%C3%A9" {
            "é".to_string()
        } else {
            digest.clone()
        };
        assert_eq!(
            answer.json["err_msg"],
            format!("Message not found for hash: {shown}")
        );
    }
}

#[tokio::test]
async fn bad_bodies_answer_400_saying_what_is_wrong() {
    let (service, _) = service();
    let cases = [
        ("{not json", "request body is not valid JSON"),
        ("", "request body is not valid JSON"),
        ("[\"foo\"]", "must be a JSON object"),
        ("\"foo\"", "must be a JSON object"),
        ("{\"msg\": \"foo\"}", "missing field \"message\""),
        (
            "{\"message\": 42}",
            "field \"message\" must be a string, got a number",
        ),
        (
            "{\"message\": [\"foo\"]}",
            "field \"message\" must be a string, got an array",
        ),
    ];
    for (body, expected) in cases {
        let answer = send(&service, post_raw(Some("application/json"), body)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        let err_msg = answer.json["err_msg"].as_str().expect("err_msg");
        assert!(err_msg.contains(expected), "{body}: {err_msg}");
    }
}

#[tokio::test]
async fn non_json_content_type_answers_415() {
    let (service, _) = service();
    let body = r#"{"message":"foo"}"#;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let answer = send(&service, post_raw(content_type, body)).await;
        assert_eq!(
            answer.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        assert!(answer.json["err_msg"]
            .as_str()
            .is_some_and(|m| m.contains("application/json")));
    }
    let answer = send(
        &service,
        post_raw(Some("application/json; charset=utf-8"), body),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED);
}

#[tokio::test]
async fn oversize_body_answers_413() {
    let memory = MemoryStore::new();
    let config = Config {
        max_body_bytes: 100,
        ..Config::default()
    };
    let service = MessagesService::with_store(AnyStore::Memory(memory), &config);
    let big = serde_json::json!({ "message": "x".repeat(200) }).to_string();
    let answer = send(&service, post_raw(Some("application/json"), big.clone())).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(answer.json["err_msg"]
        .as_str()
        .is_some_and(|m| m.contains("100 bytes")));

    // Without a Content-Length (streamed body) the limit holds while reading.
    let stream = streamed(big);
    let answer = send(&service, post_raw(Some("application/json"), stream)).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);

    let small = serde_json::json!({ "message": "x".repeat(50) }).to_string();
    let answer = send(&service, post_raw(Some("application/json"), small)).await;
    assert_eq!(answer.status, StatusCode::CREATED);
}

/// A body with no known length, in 10-byte chunks.
fn streamed(text: String) -> Body {
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = text
        .into_bytes()
        .chunks(10)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    Body::from_stream(futures::stream::iter(chunks))
}

#[tokio::test]
async fn other_methods_answer_405_with_allow() {
    let (service, _) = service();
    let cases = [
        (http::Method::GET, "/messages".to_string(), "POST"),
        (http::Method::PUT, "/messages".to_string(), "POST"),
        (
            http::Method::DELETE,
            format!("/messages/{FOO}"),
            "GET, HEAD",
        ),
        (http::Method::POST, format!("/messages/{FOO}"), "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let request = Request::builder().method(method.clone()).uri(&path);
        let answer = send(&service, request.body(Body::empty()).expect("request")).await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(answer.headers[header::ALLOW], allow);
        assert!(answer.json["err_msg"]
            .as_str()
            .is_some_and(|m| m.contains(method.as_str())));
    }
}

#[tokio::test]
async fn store_down_answers_503_and_nothing_is_reported_stored() {
    let (service, memory) = service();
    memory.set_unavailable(true);
    let answer = send(&service, post("foo")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.headers[header::RETRY_AFTER], "1");
    assert!(answer.json["err_msg"]
        .as_str()
        .is_some_and(|m| m.contains("unavailable")));
    let answer = send(&service, get(FOO)).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);

    memory.set_unavailable(false);
    assert_eq!(send(&service, get(FOO)).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        send(&service, post("foo")).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn embedded_store_serves_the_same_api() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = MessagesService::open(
        &Config {
            store: Some("embedded".into()),
            ..Config::default()
        },
        &cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority())
            .expect("open the directory"),
    )
    .await
    .expect("open");
    assert_eq!(service.store().kind(), "embedded");
    assert!(service.health().is_healthy());
    assert_eq!(
        send(&service, post("foo")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(send(&service, get(FOO)).await.json["message"], "foo");
    assert!(dir.path().join(messages::EMBEDDED_FILE).exists());
}
