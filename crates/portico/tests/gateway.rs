//! Gateway behaviour over real sockets: TLS and HTTP versions, certificate names, limits,
//! shutdown, config errors, log rotation, privilege drop. Connection limits against hostile
//! clients (timeouts, slow readers, bodies of unknown length, `max_connections`) are in
//! `connection_limits.rs`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::Portico;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

const PLAIN_AND_TLS: &str = "[[listener]]\naddr = \"127.0.0.1:0\"\ntls = { self_signed = true }\n\
                             [[listener]]\naddr = \"127.0.0.1:0\"\n";

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
    assert!(answer.headers().contains_key("x-request-id"));
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert!(body["services"]
        .as_array()
        .unwrap()
        .contains(&"admin".into()));
}

#[tokio::test]
async fn generated_certificate_is_valid_for_localhost_and_127_0_0_1() {
    let server = Portico::start(BIN, "").await.unwrap();
    let pem = std::fs::read(server.cert_path().unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .resolve("localhost", server.addr())
        .build()
        .unwrap();
    let port = server.addr().port();
    for host in ["localhost", "127.0.0.1"] {
        let answer = client
            .get(format!("https://{host}:{port}/healthz"))
            .send()
            .await;
        assert_eq!(answer.unwrap().status(), 200, "host {host}");
    }
    let untrusting = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let refused = untrusting
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a client that does not trust the certificate must fail"
    );
}

#[tokio::test]
async fn body_over_the_limit_gets_413_and_the_server_stays_healthy() {
    let server = Portico::builder(BIN)
        .toml("[limits]\nmax_body_bytes = 1024\n")
        .start()
        .await
        .unwrap();
    let client = server.client();
    let answer = client
        .post(server.url("/healthz"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    let text = answer.text().await.unwrap();
    assert!(text.contains("over the limit of 1024 bytes"), "{text}");
    let answer = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn an_ipv6_wildcard_listener_is_dual_stack() {
    let server = Portico::builder(BIN)
        .listeners_toml("[[listener]]\naddr = \"[::]:0\"\nservices = [\"admin\"]\n")
        .start()
        .await
        .unwrap();
    let port = server.addr().port();
    for host in ["127.0.0.1", "[::1]"] {
        let answer = reqwest::get(format!("http://{host}:{port}/healthz"))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "over {host}");
    }
    // Access-log lines reach stderr within the workers' 100 ms batching.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !server.stderr().contains(" [::1]:") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.stderr();
    assert!(
        log.contains(" 127.0.0.1:"),
        "IPv4 clients are logged as IPv4: {log}"
    );
}

#[tokio::test]
async fn headers_over_the_limit_get_431_over_http1_and_http2() {
    let server = Portico::builder(BIN)
        .listeners_toml(PLAIN_AND_TLS)
        .toml("[limits]\nmax_header_bytes = 8192\n")
        .start()
        .await
        .unwrap();
    let big = "a".repeat(20_000);
    let plain = server.url_on(false, "/healthz").unwrap();
    let answer = reqwest::Client::new()
        .get(&plain)
        .header("x-big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 431, "HTTP/1.1");
    let answer = server
        .client()
        .get(server.url("/healthz"))
        .header("x-big", &big)
        .send()
        .await;
    assert_eq!(answer.unwrap().status(), 431, "HTTP/2");
    let answer = reqwest::get(&plain).await.unwrap();
    assert_eq!(answer.status(), 200, "still healthy");
}

#[tokio::test]
async fn unknown_path_is_a_json_404() {
    let server = Portico::start(BIN, "").await.unwrap();
    let answer = server
        .client()
        .get(server.url("/no/such/thing"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    assert_eq!(answer.headers()["content-type"], "application/json");
}

/// Reads until EOF or error; returns what was read and when it ended.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return (got, start.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

const PLAIN: &str = "[[listener]]\naddr = \"127.0.0.1:0\"\n";

#[tokio::test]
async fn cleartext_http2_with_prior_knowledge_is_served() {
    let server = Portico::builder(BIN)
        .listeners_toml(PLAIN)
        .start()
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let answer = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.status(), 200);
    assert!(answer.headers().contains_key("x-request-id"));
    let http1 = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(http1.version(), reqwest::Version::HTTP_11);
}

#[tokio::test]
async fn sigterm_exits_zero_and_readyz_reports_ready_before() {
    let mut server = Portico::start(BIN, "").await.unwrap();
    let answer = server
        .client()
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let status = server.terminate(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn metrics_count_requests_per_service_and_status() {
    let server = Portico::builder(BIN)
        .listeners_toml(PLAIN_AND_TLS)
        .start()
        .await
        .unwrap();
    let client = server.client();
    client.get(server.url("/healthz")).send().await.unwrap();
    client
        .get(server.url("/nothing-here"))
        .send()
        .await
        .unwrap();
    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("portico_http_requests_total{service=\"gateway\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("status=\"404\""), "{text}");
    let plain = server.url_on(false, "/healthz").unwrap();
    assert_eq!(reqwest::get(plain).await.unwrap().status(), 200);
}

#[tokio::test]
async fn sigterm_during_a_slow_request_lets_it_finish_then_exits_zero() {
    let mut server = Portico::builder(BIN)
        .listeners_toml("[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"messages\"]\n")
        .toml("[limits]\ndrain_timeout = \"20s\"\n")
        .start()
        .await
        .unwrap();
    let addr = server.addr();
    let body = br#"{"message": "finished during the drain"}"#;
    let head = format!(
        "POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..5]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        TcpStream::connect(addr).is_err(),
        "no new connections once draining"
    );
    let writer = tokio::task::spawn_blocking(move || {
        // The rest of the body, slowly: about 1.5 s more.
        for byte in &body[5..] {
            stream.write_all(&[*byte]).unwrap();
            std::thread::sleep(Duration::from_millis(40));
        }
        read_until_closed(&mut stream, Duration::from_secs(10)).0
    });
    let answer = String::from_utf8(writer.await.unwrap()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(answer.contains("\"digest\""), "{answer}");
    let status = server.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn sighup_does_not_stop_a_server_without_reloadable_services() {
    let server = Portico::builder(BIN)
        .listeners_toml("[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"admin\"]\n")
        .start()
        .await
        .unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(answer.status(), 200);
}

#[test]
fn a_config_with_an_unknown_key_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[limits]\nmax_body = 5\n").unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_body"), "{stderr}");
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    let text =
        "[log]\nlevel = \"loud\"\n[[listener]]\naddr = \"somewhere\"\nservices = [\"nope\"]\n";
    std::fs::write(&config, text).unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in ["log.level", "listener[0].addr", "listener[0].services"] {
        assert!(stderr.contains(key), "{key} missing in: {stderr}");
    }
}

#[test]
fn unknown_command_line_options_exit_2() {
    let output = Command::new(BIN)
        .args(["serve", "--colour"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--colour"));
}

#[tokio::test]
async fn log_rotation_keeps_backups_1_to_n_and_never_more() {
    let logs = tempfile::tempdir().unwrap();
    let mut server = Portico::builder(BIN)
        .toml(&format!(
            "[log]\ndir = {:?}\nmax_bytes = 2000\nbackups = 3\n",
            logs.path().display().to_string()
        ))
        .start()
        .await
        .unwrap();
    let client = server.client();
    for _ in 0..200 {
        client.get(server.url("/healthz")).send().await.unwrap();
    }
    assert!(server
        .terminate(Duration::from_secs(10))
        .await
        .unwrap()
        .success());
    let mut names: Vec<String> = std::fs::read_dir(logs.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("access.log"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["access.log", "access.log.1", "access.log.2", "access.log.3"]
    );
    let newest = std::fs::read_to_string(logs.path().join("access.log.1")).unwrap();
    assert!(newest.contains("\"GET /healthz HTTP/2.0\" 200"), "{newest}");
    assert!(std::fs::metadata(logs.path().join("app.log")).is_ok());
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

#[test]
fn as_root_without_user_it_refuses_to_serve() {
    if !is_root() {
        eprintln!("not root: refusal is for root only");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("root.toml");
    let text = format!(
        "data_dir = {:?}\n[[listener]]\naddr = \"127.0.0.1:0\"\n",
        dir.path().join("data").display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("refusing to serve as root"));
}

#[tokio::test]
async fn as_root_with_user_it_binds_then_runs_as_that_user() {
    if !is_root() {
        eprintln!("not root: privilege drop needs root");
        return;
    }
    let server = Portico::builder(BIN)
        .top_level("user = \"nobody\"")
        .listeners_toml("[[listener]]\naddr = \"127.0.0.1:0\"\ntls = { self_signed = true }\nservices = [\"admin\"]\n")
        .start()
        .await
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    let uids: Vec<u32> = uid_line
        .split_whitespace()
        .skip(1)
        .map(|u| u.parse().unwrap())
        .collect();
    assert_eq!(uids, vec![nobody; 4], "real, effective, saved and fs uid");
    let answer = server
        .client()
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}
