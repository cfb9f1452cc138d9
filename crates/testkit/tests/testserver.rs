//! The test server answers as its doc says: identity, delay set at start and at run time,
//! stats, echo, streaming, statuses, abort and a WebSocket echo.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use testkit::TestServer;

#[tokio::test]
async fn it_names_itself_counts_requests_and_takes_a_delay_at_run_time() {
    let server = TestServer::start(&["--id", "alpha"]).unwrap();
    let client = reqwest::Client::new();
    let body: serde_json::Value = client
        .get(server.url("/hello?x=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["server"], "alpha");
    assert_eq!(body["port"], server.port());
    assert_eq!(body["path"], "/hello?x=1");
    let health = client.get(server.url("/_health")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let set = client
        .put(server.url("/_delay"))
        .body("300ms")
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let started = Instant::now();
    client.get(server.url("/slow")).send().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    let bad = client
        .put(server.url("/_delay"))
        .body("soon")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let stats: serde_json::Value = client
        .get(server.url("/_stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests"], 3, "{stats}");
    assert_eq!(stats["in_flight"], 0, "{stats}");
}

#[tokio::test]
async fn a_delay_given_at_start_applies_to_every_request() {
    let server = TestServer::start(&["--delay", "200ms"]).unwrap();
    let started = Instant::now();
    let answer = reqwest::get(server.url("/")).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn echo_stream_status_and_abort() {
    let server = TestServer::start(&[]).unwrap();
    let client = reqwest::Client::new();
    let echoed: serde_json::Value = client
        .post(server.url("/_echo/a?b=c"))
        .header("x-test", "yes")
        .body("payload")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path"], "/_echo/a?b=c");
    assert_eq!(echoed["body"], "payload");
    let headers = echoed["headers"].as_array().unwrap();
    assert!(
        headers.iter().any(|h| h[0] == "x-test" && h[1] == "yes"),
        "{headers:?}"
    );

    let large = vec![b'z'; 3 * 1024 * 1024];
    let streamed = client
        .post(server.url("/_stream"))
        .body(large.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.bytes().await.unwrap().len(), large.len());

    let status = client.get(server.url("/_status/503")).send().await.unwrap();
    assert_eq!(status.status(), 503);
    let aborted = client.get(server.url("/_abort")).send().await;
    assert!(aborted.is_err(), "{aborted:?}");
}

#[test]
fn the_websocket_endpoint_echoes_frames() {
    let server = TestServer::start(&[]).unwrap();
    let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let request = "GET /_ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The RFC 6455 example key and its accept value.
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    // A masked text frame "hello".
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 5];
    frame.extend_from_slice(&mask);
    frame.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).unwrap();
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"\x81\x05hello");
}
