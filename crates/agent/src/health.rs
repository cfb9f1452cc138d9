//! The start-up health check: `GET http://ADDR{health}` until it answers with a status below
//! 500. Polled quickly at first (a small server is up within milliseconds, and cold requests
//! wait for this), then less often. Each attempt has its own timeout; the caller bounds the
//! whole wait by the service's `start_timeout`.

use std::net::SocketAddr;
use std::time::Duration;

/// First pause between attempts.
const FIRST_PAUSE: Duration = Duration::from_millis(2);
/// Longest pause between attempts. A refused connection costs microseconds, and every
/// millisecond here is added to a cold request's wait: a python3 http.server listens ~70 ms
/// after it starts, and with 200 ms steps it was found ready ~270 ms late.
const MAX_PAUSE: Duration = Duration::from_millis(20);
/// Bound on one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// An HTTP client for health checks (no proxy, no pooling across instances needed).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(ATTEMPT_TIMEOUT)
        .pool_max_idle_per_host(0)
        .build()
        .expect("a plain HTTP client always builds")
}

/// Polls until the instance answers below 500; never returns otherwise (the caller races it
/// against the start timeout and the process's exit). `last_error` holds the latest reason
/// for the report when the caller gives up.
pub async fn wait_healthy(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    last_error: &mut String,
) {
    let url = format!("http://{addr}{path}");
    let mut pause = FIRST_PAUSE;
    loop {
        match client.get(&url).send().await {
            Ok(answer) if answer.status().as_u16() < 500 => return,
            Ok(answer) => *last_error = format!("answered {}", answer.status()),
            Err(error) => *last_error = describe(&error),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// reqwest's error with its innermost cause (connection refused, timed out).
fn describe(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if error.is_timeout() {
        return format!("no answer within {ATTEMPT_TIMEOUT:?}");
    }
    cause.to_string()
}
