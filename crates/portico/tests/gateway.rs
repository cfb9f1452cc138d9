//! Gateway behaviour over real sockets: TLS and HTTP versions, limits, shutdown, config errors.

use std::time::Duration;

use testkit::Portico;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

#[tokio::test]
async fn healthz_answers_over_https_with_http1_and_http2() {
    let server = Portico::start(BIN, "").await.unwrap();
    let http1 = server
        .client_builder()
        .unwrap()
        .http1_only()
        .build()
        .unwrap();
    let answer = http1.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.version(), reqwest::Version::HTTP_11);
    let answer = server
        .client()
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.version(),
        reqwest::Version::HTTP_2,
        "ALPN should pick h2"
    );
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert!(answer_has_request_id(&server).await);
}

async fn answer_has_request_id(server: &Portico) -> bool {
    let answer = server
        .client()
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    answer.headers().contains_key("x-request-id")
}

#[tokio::test]
async fn sigterm_exits_zero() {
    let mut server = Portico::start(BIN, "").await.unwrap();
    let status = server.terminate(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{status}");
}
