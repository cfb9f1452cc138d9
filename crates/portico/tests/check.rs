//! `portico check`: exit 0 against a healthy server, non-zero with the reason otherwise.

use std::process::Command;

use testkit::Portico;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

fn check(url: &str, cacert: Option<&std::path::Path>) -> std::process::Output {
    let mut command = Command::new(BIN);
    command.args(["check", url]);
    if let Some(cert) = cacert {
        command.arg("--cacert").arg(cert);
    }
    command.output().unwrap()
}

#[tokio::test]
async fn check_passes_against_a_healthy_server() {
    let server = Portico::start(BIN, "").await.unwrap();
    let url = server.url("");
    let cert = server.cert_path().unwrap().to_path_buf();
    let out = tokio::task::spawn_blocking(move || check(&url, Some(&cert)))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("healthy"), "{stdout}");
}

#[tokio::test]
async fn check_fails_without_trusting_the_certificate() {
    let server = Portico::start(BIN, "").await.unwrap();
    let url = server.url("");
    let out = tokio::task::spawn_blocking(move || check(&url, None))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FAILED: healthz"));
}

#[test]
fn check_fails_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = check(&format!("http://127.0.0.1:{port}"), None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FAILED"), "{stderr}");
    // The reason, from deep in reqwest's error chain, named once.
    assert_eq!(stderr.matches("Connection refused").count(), 1, "{stderr}");
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn check_with_timeout(timeout: &str) -> std::process::Output {
    let url = format!("http://127.0.0.1:{}", closed_port());
    Command::new(BIN)
        .args(["check", &url, "--timeout", timeout])
        .output()
        .unwrap()
}

#[test]
fn huge_timeout_is_refused_naming_the_flag_without_a_panic() {
    for huge in [
        "999999999999999999s",
        "999999999999999999m",
        "99999999999999999999999999h",
        "300years",
    ] {
        let out = check_with_timeout(huge);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{huge}: {stderr}");
        assert!(stderr.contains("--timeout"), "{huge}: {stderr}");
        assert!(!stderr.contains("panicked"), "{huge}: {stderr}");
    }
}

#[test]
fn longest_allowed_timeout_works_against_a_closed_port() {
    // The largest value accepted goes through reqwest and tokio's timers without overflow;
    // the refused connection ends the check at once.
    let out = check_with_timeout("1day");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("FAILED"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn timeout_takes_human_durations() {
    let out = check_with_timeout("1m 30s");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
